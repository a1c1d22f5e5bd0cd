//! `ghostmesh-kv`: command-line client of `lsm-server` (feature `tokio`).
//!
//! Usage: `ghostmesh-kv [--addr HOST:PORT] [--buffered] get KEY | put KEY VALUE |
//! delete KEY | scan [--start KEY] [--end KEY] [--limit N] [--reverse] |
//! batch put:KEY=VALUE del:KEY ...`; flags go before or after the subcommand. Keys and values
//! are UTF-8 arguments. The exit code tells a script what happened (see `EXIT CODES` in
//! `--help`); a closed stdout (`scan | head -1`) ends quietly with 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lsm::batch::BatchOp;
use lsm::client::{Client, ClientError};
use lsm::protocol::SCAN_COUNT_MAX;
use lsm::{Durability, protocol::ProtocolError};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Exit codes, as `--help` lists them.
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_FAILED: u8 = 3;
const EXIT_UNKNOWN: u8 = 4;

const EXIT_CODES: &str = "EXIT CODES:
  0  done (get: the key was found)
  1  get: the key was not found
  2  bad usage
  3  failed: not applied (the server refused it, or could not be reached)
  4  outcome unknown: the connection broke after a write was sent; it may have been applied";

/// Talk to an lsm-server.
#[derive(Parser, Debug)]
#[command(name = "ghostmesh-kv", version = service::VERSION, after_help = EXIT_CODES)]
struct Args {
    /// The server's address (a host name is resolved; every address is tried in turn).
    #[arg(long, default_value = "127.0.0.1:7878", global = true)]
    addr: String,
    /// Acknowledge writes before they are fsynced.
    #[arg(long, global = true)]
    buffered: bool,
    #[command(flatten)]
    log: service::LogOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the value of KEY (exit 1 if there is none).
    Get { key: String },
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Remove KEY.
    Delete { key: String },
    /// Print `KEY<TAB>VALUE` lines in [start, end), fetched in pages of at most 10000.
    Scan {
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        /// Pairs to print at most (any number: pages are fetched as needed).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[arg(long)]
        reverse: bool,
    },
    /// Apply `put:KEY=VALUE` and `del:KEY` operations atomically.
    Batch { ops: Vec<String> },
}

/// Why a command did not end with 0.
#[derive(Debug)]
enum Failure {
    NotFound,
    /// Not applied, with the reason.
    Failed(anyhow::Error),
    /// May or may not have been applied.
    Unknown(anyhow::Error),
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

fn main() -> ExitCode {
    let args = Args::parse();
    service::init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return report(Failure::Failed(error.into())),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    match failure {
        Failure::NotFound => ExitCode::from(EXIT_NOT_FOUND),
        Failure::Failed(error) if service::is_output_closed(&error) => ExitCode::SUCCESS,
        Failure::Failed(error) => {
            eprintln!("ghostmesh-kv: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
        Failure::Unknown(error) => {
            eprintln!("ghostmesh-kv: outcome unknown: {error:#}");
            ExitCode::from(EXIT_UNKNOWN)
        }
    }
}

/// Resolves `addr` (`localhost:7878` included) and connects to the first address that answers.
async fn connect(env: &TokioEnv, addr: &str) -> anyhow::Result<<TokioEnv as Env>::TcpStream> {
    let candidates: Vec<SocketAddr> =
        addr.to_socket_addrs().with_context(|| format!("resolving {addr}"))?.collect();
    let mut last = None;
    for candidate in &candidates {
        match env.connect_tcp(*candidate).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some((candidate, error)),
        }
    }
    match last {
        Some((candidate, error)) => {
            let named =
                if candidate.to_string() == addr { String::new() } else { format!(" ({addr})") };
            Err(anyhow::Error::new(error)).with_context(|| {
                format!("connecting to {candidate}{named}: is lsm-server running?")
            })
        }
        None => bail!("{addr} resolved to no address"),
    }
}

/// Whether a write that failed with `error` may still have been applied: the request may have
/// reached the server when the stream broke; a server's answer or a bad frame means it did not.
fn write_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Protocol(ProtocolError::Io(_)) => Failure::Unknown(error.into()),
        other => Failure::Failed(other.into()),
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let durability = if args.buffered { Durability::Buffered } else { Durability::Sync };
    let env = TokioEnv::try_new(".").map_err(|error| Failure::Failed(error.into()))?;
    let stream = connect(&env, &args.addr).await.map_err(Failure::Failed)?;
    let mut client = Client::new(stream);
    match args.command {
        Command::Get { key } => match client.get(key.as_bytes()).await {
            Ok(Some(value)) => service::println(show(&value)).map_err(Failure::Failed),
            Ok(None) => Err(Failure::NotFound),
            Err(error) => Err(Failure::Failed(error.into())),
        },
        Command::Put { key, value } => {
            client.put(key.as_bytes(), value.as_bytes(), durability).await.map_err(write_failure)
        }
        Command::Delete { key } => {
            client.delete(key.as_bytes(), durability).await.map_err(write_failure)
        }
        Command::Scan { start, end, limit, reverse } => {
            scan(&mut client, start, end, limit, reverse).await.map_err(Failure::Failed)
        }
        Command::Batch { ops } => {
            let ops = ops.iter().map(|op| parse_op(op)).collect::<anyhow::Result<Vec<_>>>();
            let ops = ops.map_err(Failure::Failed)?;
            client.batch(ops, durability).await.map_err(write_failure)
        }
    }
}

/// Prints up to `limit` pairs, fetching pages of at most `SCAN_COUNT_MAX` and resuming after
/// the last key of each (ascending: from its successor; descending: below it).
async fn scan<S: sim::TcpStream>(
    client: &mut Client<S>,
    mut start: Option<String>,
    mut end: Option<String>,
    limit: u64,
    reverse: bool,
) -> anyhow::Result<()> {
    let (mut start, mut end) =
        (start.take().map(String::into_bytes), end.take().map(String::into_bytes));
    let mut remaining = limit;
    while remaining > 0 {
        let page =
            u32::try_from(remaining.min(u64::from(SCAN_COUNT_MAX))).unwrap_or(SCAN_COUNT_MAX);
        let items = client.scan(start.as_deref(), end.as_deref(), page, reverse).await?;
        let count = items.len() as u64;
        for (key, value) in &items {
            service::println(format_args!("{}\t{}", show(key), show(value)))?;
        }
        remaining -= count.min(remaining);
        let Some((last, _)) = items.into_iter().last() else { break };
        if count < u64::from(page) {
            break;
        }
        if reverse {
            end = Some(last);
        } else {
            let mut next = last;
            next.push(0);
            start = Some(next);
        }
    }
    Ok(())
}
