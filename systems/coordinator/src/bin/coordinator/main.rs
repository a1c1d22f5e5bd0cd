//! `coordinator`: the mesh control plane on real files and sockets (feature `tokio`), and the
//! command-line client of its admin API, in the manner of Headscale's.
//!
//! Server: `coordinator serve --data-dir DIR --listen ADDR --admin ADDR [--domain D]
//! [--key-file F]` serves agents on `--listen` and the admin API (HTTP, JSON) on `--admin`. The
//! static key is generated on first start into `DIR/coordinator.key` (mode 0600, hex) unless
//! `--key-file` names another file; its public half is logged (`public_key=`) and served at
//! `GET /key`. Every other admin route needs `Authorization: Bearer <api key>`; the first key
//! is made with `coordinator apikeys create --data-dir DIR` while the server is stopped.
//!
//! Client: `coordinator [--server URL] [--api-key KEY] users|nodes|preauthkeys|routes|policy
//! ...` (the key also from `GHOSTMESH_API_KEY`) prints the server's JSON answers.
//!
//! Logs, `--metrics`, signals and `--version` are the `service` crate's.

mod admin;
mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::registry::{Registry, RegistryOptions};
use coordinator::server::{Coordinator, CoordinatorConfig, CoordinatorStats};
use service::tracing::info;
use service::{Concerning, Samples, Service};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// The docdb store's directory inside the data directory.
const DB_DIR: &str = "db";
/// The static key's file name inside the data directory.
const KEY_FILE: &str = "coordinator.key";

/// The mesh coordinator and its admin client.
#[derive(Parser, Debug)]
#[command(name = "coordinator", version = service::VERSION)]
struct Args {
    #[command(flatten)]
    service: service::Options,
    #[command(flatten)]
    client: client::ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve agents and the admin API.
    Serve(ServeArgs),
    /// API keys of the admin API (run while the server is stopped).
    Apikeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Admin API client commands.
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory holding the store and the static key (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address agents connect to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address of the admin API (HTTP).
    #[arg(long)]
    admin: SocketAddr,
    /// The tailnet's base domain.
    #[arg(long, default_value = "ghostmesh.internal")]
    domain: String,
    /// The static private key (hex); generated there if missing (default DATA_DIR/coordinator.key).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ApiKeysCommand {
    /// Create an API key in the (closed) store and print it once.
    Create {
        /// Directory holding the store.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = args.service.clone();
    match args.command {
        Command::Serve(serve) => service::run("coordinator", &options, |s| run_server(serve, s)),
        Command::Apikeys { command: ApiKeysCommand::Create { data_dir } } => {
            service::init_logging(&options.log);
            service::exit_code("coordinator", one_shot(create_api_key(data_dir)))
        }
        Command::Client(command) => {
            service::init_logging(&options.log);
            service::exit_code("coordinator", one_shot(client::run(args.client, command)))
        }
    }
}

/// Runs a one-shot command on a small runtime.
fn one_shot(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(work)
}

async fn create_api_key(data_dir: PathBuf) -> anyhow::Result<()> {
    // Before the first `serve` the data directory may not exist yet.
    #[allow(clippy::disallowed_methods, reason = "the data directory, once at start-up")]
    std::fs::create_dir_all(&data_dir)
        .concerning("creating the data directory", data_dir.display())?;
    let env = TokioEnv::try_new(&data_dir).context("seeding the random number generator")?;
    let dir = data_dir.display().to_string();
    let db = docdb::DocDb::open(env.clone(), DB_DIR, docdb::Options::default())
        .await
        .concerning("opening the store in (is the server running?)", &dir)?;
    let registry = Registry::open(env, db.clone(), RegistryOptions::default())
        .await
        .concerning("opening the registry in", &dir)?;
    let created = registry.create_api_key(None).await.context("creating an API key")?;
    db.close().await.concerning("closing the store in", &dir)?;
    service::println(&created.key)?;
    Ok(())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// 32 bytes from 64 hex digits (surrounding white space ignored).
pub(crate) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The static private key in `path`, generated (mode 0600) if the file does not exist.
#[allow(clippy::disallowed_methods, reason = "configuration read once at start-up")]
fn load_or_create_key(env: &TokioEnv, path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        let text =
            std::fs::read_to_string(path).concerning("reading the key file", path.display())?;
        return unhex32(&text)
            .with_context(|| format!("the key file {} holds no 64 hex digits", path.display()));
    }
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut env.rng(), &mut key);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .concerning("creating the key file", path.display())?;
    file.write_all(format!("{}\n", hex(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .concerning("writing the key file", path.display())?;
    info!(path = %path.display(), "generated the coordinator's static key");
    Ok(key)
}

async fn run_server(args: ServeArgs, service: Service) -> anyhow::Result<()> {
    let dir = args.data_dir.display().to_string();
    #[allow(clippy::disallowed_methods, reason = "the data directory, once at start-up")]
    std::fs::create_dir_all(&args.data_dir).concerning("creating the data directory", &dir)?;
    let env = TokioEnv::try_new(&args.data_dir).context("seeding the random number generator")?;
    let key_path = args.key_file.clone().unwrap_or_else(|| args.data_dir.join(KEY_FILE));
    let private = load_or_create_key(&env, &key_path)?;
    let public = hex(&coordinator::agent::public_of(&private).0);
    let config = CoordinatorConfig::new(private, DB_DIR, &args.domain);
    let coordinator = Coordinator::open(env.clone(), config)
        .await
        .concerning("opening the coordinator's store in", &dir)?;
    let listener = env.listen_tcp(args.listen).await.concerning("listening on", args.listen)?;
    let addr = sim::TcpListener::local_addr(&listener).context("the listener's address")?;
    let stats = coordinator.clone();
    service.set_collector(move |samples| {
        let nodes = stats.with_engine(|engine| engine.node_count()) as u64;
        collect(&stats.stats(), nodes, samples);
    });
    let admin_addr =
        admin::serve(&env, coordinator.clone(), public.clone(), args.admin, service.shutdown())
            .await?;
    info!(%addr, admin = %admin_addr, public_key = %public, "serving agents");
    let shutdown = service.shutdown();
    tokio::select! {
        () = coordinator.clone().serve(listener) => {}
        () = shutdown.requested() => {}
    }
    info!(%dir, "closing the store");
    coordinator.registry().db().close().await.concerning("closing the store in", &dir)?;
    info!(%dir, "store closed");
    Ok(())
}

/// The coordinator's counters as metrics.
fn collect(stats: &CoordinatorStats, nodes: u64, samples: &mut Samples) {
    // A node is online while it holds a session on this run.
    let online = stats.sessions_open.min(nodes);
    let help = "Registered nodes by online state.";
    samples.gauge_with("coordinator_nodes", help, &[("state", "online")], online as f64);
    samples.gauge_with("coordinator_nodes", help, &[("state", "offline")], (nodes - online) as f64);
    let counters = [
        ("coordinator_full_maps_sent_total", "Full maps sent.", stats.full_maps_sent),
        ("coordinator_deltas_sent_total", "Map deltas sent.", stats.deltas_sent),
        ("coordinator_map_bytes_sent_total", "Bytes of map messages sent.", stats.map_bytes_sent),
        ("coordinator_changes_applied_total", "Change events applied.", stats.changes_applied),
        ("coordinator_sessions_failed_total", "Sessions refused or failed.", stats.sessions_failed),
        ("coordinator_rate_limited_total", "Requests refused by rate.", stats.rate_limited),
    ];
    for (name, help, value) in counters {
        samples.counter(name, help, value);
    }
    samples.gauge("coordinator_sessions_open", "Sessions open now.", stats.sessions_open as f64);
}
