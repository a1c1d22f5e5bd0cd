//! `gossip-node`: runs one gossip node on real UDP (tokio), sharing every line of protocol code
//! with the simulation. It joins through `--seed` addresses, keeps its state (snapshot + WAL)
//! under `--data-dir` so it survives restarts, writes the `--put key=value` pairs it is given,
//! and prints its membership and store as one JSON line every `--status-secs`.
//!
//! A three-node cluster on one machine:
//! `gossip-node --id 1 --listen 127.0.0.1:7946 --data-dir /tmp/g1`,
//! `gossip-node --id 2 --listen 127.0.0.1:7947 --seed 127.0.0.1:7946 --data-dir /tmp/g2 --put a=1`,
//! and a third like the second.

#![allow(
    clippy::disallowed_methods,
    reason = "a production binary: it runs on real time and real sockets"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use gossip::driver::start_persistent;
use gossip::node::NodeConfig;
use gossip::swim::{MemberId, MemberState};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "A gossip node: SWIM membership, replicated LWW key-value state")]
struct Flags {
    /// This node's id (unique in the cluster, stable across restarts).
    #[arg(long)]
    id: u64,
    /// The UDP address to listen on (and advertise).
    #[arg(long)]
    listen: SocketAddr,
    /// Seed addresses to join through (repeatable).
    #[arg(long)]
    seed: Vec<SocketAddr>,
    /// Directory for the node's durable state.
    #[arg(long)]
    data_dir: PathBuf,
    /// `key=value` pairs to write at start (repeatable).
    #[arg(long)]
    put: Vec<String>,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 2)]
    status_secs: u64,
    /// Exit after this many seconds (run forever if absent).
    #[arg(long)]
    run_secs: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(flags))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let env = TokioEnv::new(&flags.data_dir);
    let config = NodeConfig::new(MemberId(flags.id), flags.listen);
    let interval = Duration::from_secs(5);
    let handle =
        start_persistent(env.clone(), config, flags.seed.clone(), None, "gossip", interval)
            .await
            .context("starting the node")?;
    for pair in &flags.put {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--put wants key=value, got {pair:?}");
        };
        handle.put(key.as_bytes(), Some(value.as_bytes().to_vec())).await?;
    }
    let started = env.now();
    loop {
        env.sleep(Duration::from_secs(flags.status_secs)).await;
        let status = handle.with_node(|node| {
            let alive: Vec<u64> = node
                .swim()
                .members()
                .filter(|member| member.state == MemberState::Alive)
                .map(|member| member.id.0)
                .collect();
            let entries: Vec<String> = node
                .store()
                .entries()
                .filter_map(|(key, value)| {
                    let value = value.value()?.as_ref()?;
                    Some(format!(
                        "{:?}:{:?}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(value)
                    ))
                })
                .collect();
            let root = node.store_mut().root().0;
            format!(
                "{{\"id\":{},\"alive\":{alive:?},\"root\":\"{root:032x}\",\"entries\":{{{}}}}}",
                flags.id,
                entries.join(",")
            )
        });
        println!("{status}");
        let elapsed = env.now().saturating_duration_since(started);
        if flags.run_secs.is_some_and(|secs| elapsed >= Duration::from_secs(secs)) {
            handle.leave().await;
            env.sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
    }
}
