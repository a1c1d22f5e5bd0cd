//! `gossip-node`: runs one gossip node on real UDP (tokio), sharing every line of protocol code
//! with the simulation. It joins through `--seed` addresses, keeps its state (snapshot + WAL)
//! under `--data-dir` so it survives restarts, applies the updates it is given (`--put k=v`
//! registers, `--add k=n` counters, `--insert k=e` / `--remove k=e` sets), and prints its
//! membership and store as one JSON line every `--status-secs`:
//! `{"id":2,"alive":[1,2,3],"root":"…","entries":{"a":"1","hits":7,"tags":["x","y"]}}`
//! (a register is a string, a counter a number, a set an array; tombstones are left out).
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
use gossip::node::{Node, NodeConfig};
use gossip::store::{Update, Value};
use gossip::swim::{MemberId, MemberState};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "A gossip node: SWIM membership, replicated CRDT key-value state")]
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
    /// `key=value`: write a register at start (repeatable).
    #[arg(long)]
    put: Vec<String>,
    /// `key=n`: add the integer n (may be negative) to a PN-counter at start (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    add: Vec<String>,
    /// `key=element`: insert an element into a set at start (repeatable).
    #[arg(long)]
    insert: Vec<String>,
    /// `key=element`: remove an element from a set at start (repeatable).
    #[arg(long)]
    remove: Vec<String>,
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
    for (key, update) in updates(&flags)? {
        handle.update(key.as_bytes(), update).await.with_context(|| format!("updating {key}"))?;
    }
    let started = env.now();
    loop {
        env.sleep(Duration::from_secs(flags.status_secs)).await;
        let status = handle.with_node(|node| status_line(flags.id, node));
        println!("{status}");
        let elapsed = env.now().saturating_duration_since(started);
        if flags.run_secs.is_some_and(|secs| elapsed >= Duration::from_secs(secs)) {
            handle.leave().await;
            env.sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
    }
}

/// The updates the flags ask for, in flag order per kind.
fn updates(flags: &Flags) -> anyhow::Result<Vec<(String, Update)>> {
    let mut updates = Vec::new();
    let kinds: [(&str, &[String]); 4] = [
        ("put", &flags.put),
        ("add", &flags.add),
        ("insert", &flags.insert),
        ("remove", &flags.remove),
    ];
    for (flag, pairs) in kinds {
        for pair in pairs {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--{flag} wants key=value, got {pair:?}");
            };
            let bytes = value.as_bytes().to_vec();
            let update = match flag {
                "put" => Update::Register(Some(bytes)),
                "add" => Update::Add(
                    value
                        .parse()
                        .with_context(|| format!("--add {key}: {value:?} is no integer"))?,
                ),
                "insert" => Update::Insert(bytes),
                _ => Update::Remove(bytes),
            };
            updates.push((key.to_string(), update));
        }
    }
    Ok(updates)
}

/// One JSON status line: live members, MST root, and every live entry by kind.
fn status_line(id: u64, node: &mut Node) -> String {
    let alive: Vec<u64> = node
        .swim()
        .members()
        .filter(|member| member.state == MemberState::Alive)
        .map(|member| member.id.0)
        .collect();
    let mut entries = serde_json::Map::new();
    for (key, value) in node.store().entries() {
        let json = match value {
            Value::Register(_) => match value.bytes() {
                Some(bytes) => serde_json::json!(String::from_utf8_lossy(bytes)),
                None => continue,
            },
            Value::GCounter(_) | Value::PnCounter(_) => {
                let count = value.count().unwrap_or_default();
                i64::try_from(count)
                    .map_or_else(|_| serde_json::json!(count.to_string()), |n| n.into())
            }
            Value::Set(_) => {
                let elements = value.elements().unwrap_or_default();
                elements.iter().map(|element| String::from_utf8_lossy(element)).collect()
            }
        };
        entries.insert(String::from_utf8_lossy(key).into_owned(), json);
    }
    let root = format!("{:032x}", node.store_mut().root().0);
    serde_json::json!({ "id": id, "alive": alive, "root": root, "entries": entries }).to_string()
}
