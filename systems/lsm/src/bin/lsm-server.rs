//! `lsm-server`: the key-value store served over TCP on real files (feature `tokio`).
//!
//! Usage: `lsm-server --dir DATA_DIR --listen 127.0.0.1:7878 [--connections-max 256]`.
//! The protocol is in `lsm::protocol`; `ghostmesh-kv` is its command-line client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lsm::server::{ServerOptions, serve};
use lsm::{Db, Options};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Serve an lsm store over TCP.
#[derive(Parser, Debug)]
struct Args {
    /// Directory holding the store's files (created if missing).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
    /// Seconds before an idle connection is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::new(&args.dir);
        let db = Db::open(env.clone(), "", Options::default())
            .await
            .with_context(|| format!("opening the store in {}", args.dir.display()))?;
        let listener = env.listen_tcp(args.listen).await.context("listening")?;
        eprintln!("lsm-server: serving {} on {}", args.dir.display(), args.listen);
        let options = ServerOptions {
            connection_count_max: args.connections_max,
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            ..ServerOptions::default()
        };
        serve(env, db, listener, options).await.context("accepting connections")?;
        Ok(())
    })
}
