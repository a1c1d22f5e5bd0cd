//! `docdb-server`: the document database served over MongoDB's wire protocol on real files and
//! sockets (feature `tokio`), so MongoDB drivers and `mongosh` can connect.
//!
//! Usage: `docdb-server --dir DATA_DIR --listen 127.0.0.1:27017 [--users FILE]
//! [--connections-max 256] [--passphrase-file FILE]`. The user file holds `name:password`
//! lines; with it, clients must authenticate with SCRAM-SHA-256. With a passphrase file (its
//! contents, without a trailing newline, are the passphrase; never on the command line, where
//! other users see it), the database is encrypted at rest: created so if new, unlocked with it
//! if not. `docdb-server --dir D --passphrase-file OLD rotate-passphrase --new-passphrase-file
//! NEW` rewraps the key of the (closed) database under a new passphrase and exits.
//!
//! SIGTERM or SIGINT stops accepting, lets the commit in flight finish and closes the database
//! (its LSM store synced and unlocked); a second signal exits at once. Logs, `--metrics` (the
//! LSM's `lsm_*` families and `docdb_last_commit`) and `--version` are the `service` crate's.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use docdb::wire::scram::{SALT_BYTES, Users};
use docdb::wire::{WireOptions, WireServer, serve};
use docdb::{DocDb, Options};
use lsm::{Encryption, KdfParams};
use service::tracing::info;
use service::{Concerning, Service};
use sim::tokio_env::TokioEnv;
use sim::{Env, TcpListener};

/// Serve a docdb database over the MongoDB wire protocol.
#[derive(Parser, Debug)]
#[command(name = "docdb-server", version = service::VERSION)]
struct Args {
    /// Directory holding the database's files (created if missing).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:27017")]
    listen: SocketAddr,
    /// File of `name:password` lines; when given, clients must authenticate (SCRAM-SHA-256).
    #[arg(long)]
    users: Option<std::path::PathBuf>,
    /// Connections served at once; more are answered with an error and closed.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
    /// File holding the passphrase of an encrypted database (created encrypted if new).
    #[arg(long, global = true)]
    passphrase_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    service: service::Options,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Subcommand, Debug)]
enum Command {
    /// Re-encrypt the database's key under a new passphrase (the database must not be open).
    RotatePassphrase {
        /// File holding the new passphrase.
        #[arg(long)]
        new_passphrase_file: std::path::PathBuf,
    },
}

/// The passphrase in `path`: the file's bytes without a trailing newline (a configuration
/// file read once at start-up, outside any Env).
fn read_passphrase(path: &std::path::Path) -> anyhow::Result<Encryption> {
    #[allow(clippy::disallowed_methods)]
    let mut bytes = std::fs::read(path)
        .with_context(|| format!("reading the passphrase file {}", path.display()))?;
    while bytes.last().is_some_and(|byte| *byte == b'\n' || *byte == b'\r') {
        bytes.pop();
    }
    anyhow::ensure!(!bytes.is_empty(), "the passphrase file {} is empty", path.display());
    Ok(Encryption::new(bytes, KdfParams::RECOMMENDED))
}

/// Rotates the passphrase of the closed database in `dir`.
fn rotate(dir: &std::path::Path, old: Option<Encryption>, new: Encryption) -> anyhow::Result<()> {
    let old = old.context("rotate-passphrase needs --passphrase-file with the old passphrase")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::new(dir);
        lsm::rotate_passphrase(&env, "", &old.passphrase, &new.passphrase, new.kdf)
            .await
            .with_context(|| format!("rotating the passphrase of {}", dir.display()))
    })?;
    info!(dir = %dir.display(), "rotated the passphrase");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = args.service.clone();
    if args.command.is_some() {
        service::init_logging(&options.log);
        return service::exit_code("docdb-server", rotate_command(&args));
    }
    service::run("docdb-server", &options, |service| serve_database(args, service))
}

fn rotate_command(args: &Args) -> anyhow::Result<()> {
    let encryption = args.passphrase_file.as_deref().map(read_passphrase).transpose()?;
    let Some(Command::RotatePassphrase { new_passphrase_file }) = &args.command else {
        anyhow::bail!("no command");
    };
    rotate(&args.dir, encryption, read_passphrase(new_passphrase_file)?)
}

async fn serve_database(args: Args, service: Service) -> anyhow::Result<()> {
    let encryption = args.passphrase_file.as_deref().map(read_passphrase).transpose()?;
    let users = match &args.users {
        None => None,
        Some(path) => {
            // The user file is configuration read once at start-up, outside any Env.
            #[allow(clippy::disallowed_methods)]
            let text = std::fs::read_to_string(path)
                .concerning("reading the user file", path.display())?;
            Some(text)
        }
    };
    let dir = args.dir.display().to_string();
    let env = TokioEnv::try_new(&args.dir).context("seeding the random number generator")?;
    let users = users.map(|text| parse_users(&env, &text)).transpose()?;
    let encrypted = encryption.is_some();
    let db = DocDb::open(env.clone(), "", Options { encryption, ..Options::default() })
        .await
        .concerning("opening the database in", &dir)?;
    let listener = env.listen_tcp(args.listen).await.concerning("listening on", args.listen)?;
    let addr = listener.local_addr().context("the listener's address")?;
    lsm::metrics::log_recovery(&dir, db.storage().recovery_report());
    let stats_db = db.clone();
    service.set_collector(move |samples| {
        lsm::metrics::collect(&stats_db.storage_stats(), samples);
        lsm::metrics::collect_recovery(stats_db.storage().recovery_report(), samples);
        let help = "The last commit number.";
        samples.gauge("docdb_last_commit", help, stats_db.last_commit() as f64);
    });
    let authentication = if users.is_some() { "SCRAM-SHA-256" } else { "off" };
    let at_rest = if encrypted { "encrypted" } else { "unencrypted" };
    info!(%dir, %addr, at_rest, authentication, "serving the database");
    let options =
        WireOptions { connection_count_max: args.connections_max, users, ..Default::default() };
    let shutdown = service.shutdown();
    tokio::select! {
        served = serve(WireServer::new(env, db.clone(), options), listener) => {
            served.concerning("accepting connections on", addr)?;
        }
        () = shutdown.requested() => {}
    }
    info!(%dir, "closing the database");
    db.close().await.concerning("closing the database in", &dir)?;
    info!(%dir, "database closed");
    Ok(())
}

fn parse_users(env: &TokioEnv, text: &str) -> anyhow::Result<Users> {
    let mut rng = env.rng();
    let users = Users::parse(text, || {
        let mut salt = [0u8; SALT_BYTES];
        rand_core::RngCore::fill_bytes(&mut rng, &mut salt);
        salt
    })?;
    Ok(users)
}
