//! `lsm-server`: the key-value store served over TCP on real files (feature `tokio`).
//!
//! Usage: `lsm-server --dir DATA_DIR --listen 127.0.0.1:7878 [--connections-max 256]
//! [--metrics 127.0.0.1:9100] [--log-format json]`. The protocol is in `lsm::protocol`;
//! `ghostmesh-kv` is its command-line client. SIGTERM or SIGINT stops accepting, lets the
//! requests in flight finish and closes the store (its lock released, its log synced); a second
//! signal exits at once. Logs, metrics and signals are the `service` crate's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lsm::server::{ServerOptions, serve};
use lsm::{Db, Options};
use service::tracing::info;
use service::{Concerning, Service};
use sim::tokio_env::TokioEnv;
use sim::{Env, TcpListener};

/// Serve an lsm store over TCP.
#[derive(Parser, Debug)]
#[command(name = "lsm-server", version = service::VERSION)]
struct Args {
    /// Directory holding the store's files (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on (port 0 picks one; the log says which).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
    /// Seconds before an idle connection is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout_secs: u64,
    #[command(flatten)]
    service: service::Options,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = args.service.clone();
    service::run("lsm-server", &options, |service| serve_store(args, service))
}

async fn serve_store(args: Args, service: Service) -> anyhow::Result<()> {
    let dir = args.dir.display().to_string();
    let env = TokioEnv::try_new(&args.dir).concerning("opening the data directory", &dir)?;
    let db = Db::open(env.clone(), "", Options::default())
        .await
        .concerning("opening the store in", &dir)?;
    let listener = env.listen_tcp(args.listen).await.concerning("listening on", args.listen)?;
    let addr = listener.local_addr().context("the listener's address")?;
    lsm::metrics::log_recovery(&dir, db.recovery_report());
    let stats_db = db.clone();
    service.set_collector(move |samples| {
        lsm::metrics::collect(&stats_db.stats(), samples);
        lsm::metrics::collect_recovery(stats_db.recovery_report(), samples);
    });
    let tables: usize = db.stats().level_table_counts.iter().sum();
    let sequence = db.snapshot().sequence();
    info!(%dir, %addr, tables, sequence, "serving the store");
    let options = ServerOptions {
        connection_count_max: args.connections_max,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        ..ServerOptions::default()
    };
    let shutdown = service.shutdown();
    tokio::select! {
        served = serve(env, db.clone(), listener, options) => {
            served.concerning("accepting connections on", addr)?;
        }
        () = shutdown.requested() => {}
    }
    // No new connections; `close` waits out the operations in flight, then syncs the log and
    // releases the directory's lock. Later requests on open connections get "closed".
    info!(%dir, "closing the store");
    db.close().await.concerning("closing the store in", &dir)?;
    info!(%dir, "store closed");
    Ok(())
}
