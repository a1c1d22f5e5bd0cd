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

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use docdb::wire::scram::{SALT_BYTES, Users};
use docdb::wire::{WireOptions, WireServer, serve};
use docdb::{DocDb, Options};
use lsm::{Encryption, KdfParams};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Serve a docdb database over the MongoDB wire protocol.
#[derive(Parser, Debug)]
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
    eprintln!("docdb-server: rotated the passphrase of {}", dir.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let encryption = args.passphrase_file.as_deref().map(read_passphrase).transpose()?;
    if let Some(Command::RotatePassphrase { new_passphrase_file }) = &args.command {
        return rotate(&args.dir, encryption, read_passphrase(new_passphrase_file)?);
    }
    let users = match &args.users {
        None => None,
        Some(path) => {
            // The user file is configuration read once at start-up, outside any Env.
            #[allow(clippy::disallowed_methods)]
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the user file {}", path.display()))?;
            Some(text)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::new(&args.dir);
        let users = users.map(|text| parse_users(&env, &text)).transpose()?;
        let encrypted = encryption.is_some();
        let db = DocDb::open(env.clone(), "", Options { encryption, ..Options::default() })
            .await
            .with_context(|| format!("opening the database in {}", args.dir.display()))?;
        let listener = env.listen_tcp(args.listen).await.context("listening")?;
        let authentication = if users.is_some() { "SCRAM-SHA-256" } else { "off" };
        let at_rest = if encrypted { "encrypted" } else { "unencrypted" };
        eprintln!(
            "docdb-server: serving {} ({at_rest}) on {} (authentication {authentication})",
            args.dir.display(),
            args.listen
        );
        let options =
            WireOptions { connection_count_max: args.connections_max, users, ..Default::default() };
        serve(WireServer::new(env, db, options), listener).await.context("accepting")?;
        Ok(())
    })
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
