//! `ghostmesh-kv`: command-line client of `lsm-server` (feature `tokio`).
//!
//! Usage: `ghostmesh-kv [--addr HOST:PORT] get KEY | put KEY VALUE [--buffered] |
//! delete KEY | scan [--start KEY] [--end KEY] [--limit N] [--reverse] |
//! batch put:KEY=VALUE del:KEY ...`. Keys and values are UTF-8 arguments.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lsm::Durability;
use lsm::batch::BatchOp;
use lsm::client::Client;
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Talk to an lsm-server.
#[derive(Parser, Debug)]
struct Args {
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Acknowledge writes before they are fsynced.
    #[arg(long)]
    buffered: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the value of KEY.
    Get { key: String },
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Remove KEY.
    Delete { key: String },
    /// Print pairs in [start, end).
    Scan {
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        reverse: bool,
    },
    /// Apply `put:KEY=VALUE` and `del:KEY` operations atomically.
    Batch { ops: Vec<String> },
}

fn parse_op(text: &str) -> anyhow::Result<BatchOp> {
    if let Some(rest) = text.strip_prefix("put:") {
        let Some((key, value)) = rest.split_once('=') else { bail!("expected put:KEY=VALUE") };
        return Ok(BatchOp::Put { key: key.into(), value: value.into() });
    }
    if let Some(key) = text.strip_prefix("del:") {
        return Ok(BatchOp::Delete { key: key.into() });
    }
    bail!("expected put:KEY=VALUE or del:KEY, got {text}")
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let durability = if args.buffered { Durability::Buffered } else { Durability::Sync };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::new(".");
        let stream = env.connect_tcp(args.addr).await.context("connecting")?;
        let mut client = Client::new(stream);
        match args.command {
            Command::Get { key } => match client.get(key.as_bytes()).await? {
                Some(value) => println!("{}", show(&value)),
                None => println!("(not found)"),
            },
            Command::Put { key, value } => {
                client.put(key.as_bytes(), value.as_bytes(), durability).await?;
            }
            Command::Delete { key } => client.delete(key.as_bytes(), durability).await?,
            Command::Scan { start, end, limit, reverse } => {
                let (start, end) =
                    (start.as_deref().map(str::as_bytes), end.as_deref().map(str::as_bytes));
                for (key, value) in client.scan(start, end, limit, reverse).await? {
                    println!("{}\t{}", show(&key), show(&value));
                }
            }
            Command::Batch { ops } => {
                let ops = ops.iter().map(|op| parse_op(op)).collect::<anyhow::Result<Vec<_>>>()?;
                client.batch(ops, durability).await?;
            }
        }
        Ok(())
    })
}
