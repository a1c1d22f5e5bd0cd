//! `gossip-node`: runs one gossip node on real UDP (tokio), sharing every line of protocol code
//! with the simulation. It joins through `--seed` addresses, keeps its state (snapshot + WAL)
//! under `--data-dir` so it survives restarts, applies the updates it is given (`--put k=v`
//! registers, `--add k=n` counters, `--insert k=e` / `--remove k=e` sets), and prints its
//! membership and store as one JSON line every `--status-secs`:
//! `{"id":2,"alive":[1,2,3],"suspect":[],"dead":[],"left":[4],"root":"…",
//! "entries":{"a":"1","hits":7,"tags":["x","y"]}}` (a register is a string, a counter a number,
//! a set an array; tombstones are left out).
//!
//! The data directory is locked (`LOCK`), so a second process on it is refused. Start-flag
//! updates are applied once per data directory: each applied flag is recorded in
//! `applied-flags`, and rerunning the same command skips it (a flag given twice is applied
//! twice, once per occurrence). SIGTERM or SIGINT leaves the cluster gracefully (peers see
//! `left` at once), snapshots the state and exits 0; logs, `--metrics` and `--version` are the
//! `service` crate's; a closed stdout (`... | head -1`) is a clean shutdown too.
//!
//! A three-node cluster on one machine:
//! `gossip-node --id 1 --listen 127.0.0.1:7946 --data-dir /tmp/g1`,
//! `gossip-node --id 2 --listen 127.0.0.1:7947 --seed 127.0.0.1:7946 --data-dir /tmp/g2 --put a=1`,
//! and a third like the second.

#![allow(
    clippy::disallowed_methods,
    reason = "a production binary: it runs on real time and real sockets"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use gossip::driver::{Handle, start_persistent};
use gossip::node::{Node, NodeConfig};
use gossip::persist::PersistError;
use gossip::store::{Update, Value};
use gossip::swim::{MemberId, MemberState};
use service::tracing::{info, warn};
use service::{Concerning, Samples, Service, Shutdown};
use sim::tokio_env::TokioEnv;
use sim::{Env, File, OpenOptions};

mod control;

/// The lock file that keeps a second process off a data directory.
const LOCK_NAME: &str = "LOCK";
/// The record of start-flag updates already applied to a data directory, one per line.
const APPLIED_NAME: &str = "applied-flags";
/// How long a leaving node keeps answering so that its leave reaches its peers.
const LEAVE_LINGER: Duration = Duration::from_millis(500);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "gossip-node",
    version = service::VERSION,
    about = "A gossip node: SWIM membership, replicated CRDT key-value state"
)]
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
    #[command(flatten)]
    service: service::Options,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let options = flags.service.clone();
    service::run("gossip-node", &options, |service| run(flags, service))
}

async fn run(flags: Flags, service: Service) -> anyhow::Result<()> {
    let data_dir = flags.data_dir.display().to_string();
    let env = TokioEnv::try_new(&flags.data_dir).context("seeding the random number generator")?;
    let _lock = lock_directory(&env, &data_dir).await?;
    let config = NodeConfig::new(MemberId(flags.id), flags.listen);
    let interval = Duration::from_secs(5);
    let started =
        start_persistent(env.clone(), config, flags.seed.clone(), None, "gossip", interval).await;
    let handle = started.map_err(|error| match &error {
        PersistError::Io(io) if is_address_error(io.kind()) => {
            anyhow::Error::new(error).context(format!("binding {}", flags.listen))
        }
        _ => anyhow::Error::new(error).context(format!("loading the state in {data_dir}")),
    });
    let handle = handle.map_err(|error| error.context("starting the node"))?;
    info!(id = flags.id, addr = %flags.listen, dir = %data_dir, "node running");
    let metrics = Arc::clone(&handle);
    service.set_collector(move |samples| metrics.with_node(|node| collect(node, samples)));
    service.set_routes(control::routes(Arc::clone(&handle)));
    let applied = apply_start_flags(&env, &handle, &flags).await;
    let outcome = match applied {
        Ok(()) => report_status(&env, &handle, &flags, &service.shutdown()).await,
        Err(error) => Err(error),
    };
    // However the run ends (signal, --run-secs, closed stdout, a failed update): leave, keep
    // answering a moment so the leave spreads, and snapshot the state.
    handle.leave().await;
    env.sleep(LEAVE_LINGER).await;
    let saved = handle.snapshot().await.concerning("snapshotting the state in", &data_dir);
    handle.stop();
    info!(id = flags.id, "left the cluster");
    outcome.and(saved)
}

fn is_address_error(kind: std::io::ErrorKind) -> bool {
    matches!(kind, std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable)
}

/// Takes the data directory's lock, held as long as the returned file lives.
async fn lock_directory(env: &TokioEnv, dir: &str) -> anyhow::Result<<TokioEnv as Env>::File> {
    env.create_dir_all("").await.concerning("creating the data directory", dir)?;
    let file = env.open(LOCK_NAME, OpenOptions::CREATE).await.concerning("opening", LOCK_NAME)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            bail!("{dir} is in use by another gossip-node (its {LOCK_NAME} file is locked)")
        }
        Err(error) => Err(error).concerning("locking the data directory", dir),
    }
}

/// Applies the start-flag updates this data directory has not seen yet, recording each.
async fn apply_start_flags(
    env: &TokioEnv,
    handle: &Handle<TokioEnv>,
    flags: &Flags,
) -> anyhow::Result<()> {
    let updates = updates(flags)?;
    if updates.is_empty() {
        return Ok(());
    }
    let record =
        env.open(APPLIED_NAME, OpenOptions::CREATE).await.concerning("opening", APPLIED_NAME)?;
    let length = record.len().await?;
    let mut text = vec![0; usize::try_from(length)?];
    record.read_exact_at(0, &mut text).await.concerning("reading", APPLIED_NAME)?;
    // How often each flag was applied before: the n-th occurrence runs once the file holds
    // fewer than n.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in String::from_utf8_lossy(&text).lines() {
        *seen.entry(line.to_string()).or_default() += 1;
    }
    for (flag, key, update) in updates {
        let count = seen.entry(flag.clone()).or_default();
        if *count > 0 {
            *count -= 1;
            info!(%flag, "already applied to this data directory; skipped");
            continue;
        }
        handle.update(key.as_bytes(), update).await.with_context(|| format!("applying {flag}"))?;
        // Recorded after the update is in the synced WAL: a crash between the two applies the
        // flag again on the next start (at least once, as before; never lost).
        record.append(format!("{flag}\n").as_bytes()).await?;
        record.sync().await.concerning("recording", APPLIED_NAME)?;
        info!(%flag, "applied");
    }
    Ok(())
}

/// Prints a status line every `--status-secs` until shutdown, `--run-secs` or a closed stdout.
async fn report_status(
    env: &TokioEnv,
    handle: &Handle<TokioEnv>,
    flags: &Flags,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let started = env.now();
    loop {
        tokio::select! {
            () = env.sleep(Duration::from_secs(flags.status_secs)) => {}
            () = shutdown.requested() => return Ok(()),
        }
        let status = handle.with_node(|node| status_line(flags.id, node));
        if let Err(error) = service::println(status) {
            warn!("status output closed; leaving");
            return Err(error);
        }
        let elapsed = env.now().saturating_duration_since(started);
        if flags.run_secs.is_some_and(|secs| elapsed >= Duration::from_secs(secs)) {
            return Ok(());
        }
    }
}

/// Membership by state, traffic and the store's size as Prometheus samples.
fn collect(node: &mut Node, samples: &mut Samples) {
    let help = "Members by the state this node believes (itself included).";
    for (state, name) in STATES {
        let count = node.swim().members().filter(|member| member.state == state).count();
        samples.gauge_with("gossip_members", help, &[("state", name)], count as f64);
    }
    let help = "Changes of a member's state in this node's view, by the state entered.";
    let swim = node.swim().stats();
    for (state, name) in STATES {
        let count = swim.transitions_to(state);
        samples.counter_with("gossip_member_transitions_total", help, &[("to", name)], count);
    }
    samples.gauge(
        "gossip_store_entries",
        "Keys in the replicated store.",
        node.store().len() as f64,
    );
    let stats = node.stats();
    let counters = [
        ("gossip_datagrams_received_total", "Datagrams received.", stats.received_count),
        ("gossip_datagrams_malformed_total", "Datagrams dropped as malformed.", {
            stats.malformed_count
        }),
        ("gossip_datagrams_oversized_total", "Datagrams dropped as oversized.", {
            stats.oversized_count
        }),
        ("gossip_push_sent_total", "Broadcast (push) datagrams sent.", stats.push_sent_count),
        ("gossip_push_received_total", "Broadcast (push) datagrams received.", {
            stats.push_received_count
        }),
        ("gossip_push_duplicates_total", "Pushed entries already known.", {
            stats.push_duplicate_count
        }),
        ("gossip_merges_refused_total", "Merges refused (clock or size).", {
            stats.merge_refused_count
        }),
    ];
    samples.counters(&counters);
    let help = "Anti-entropy pull sessions, by outcome.";
    for (outcome, value) in [
        ("started", stats.session_started_count),
        ("done", stats.session_done_count),
        ("failed", stats.session_failed_count),
    ] {
        samples.counter_with("gossip_sync_sessions_total", help, &[("outcome", outcome)], value);
    }
}

/// The member states as they appear in the status line and the metrics.
const STATES: [(MemberState, &str); 4] = [
    (MemberState::Alive, "alive"),
    (MemberState::Suspect, "suspect"),
    (MemberState::Dead, "dead"),
    (MemberState::Left, "left"),
];

/// The updates the flags ask for, in flag order per kind, each with its flag as given.
fn updates(flags: &Flags) -> anyhow::Result<Vec<(String, String, Update)>> {
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
            updates.push((format!("--{flag} {pair}"), key.to_string(), update));
        }
    }
    Ok(updates)
}

/// One JSON status line: members by state, MST root, and every live entry by kind.
fn status_line(id: u64, node: &mut Node) -> String {
    let mut line = serde_json::Map::new();
    line.insert("id".into(), id.into());
    for (state, name) in STATES {
        let ids: Vec<u64> = node
            .swim()
            .members()
            .filter(|member| member.state == state)
            .map(|member| member.id.0)
            .collect();
        line.insert(name.into(), ids.into());
    }
    let mut entries = serde_json::Map::new();
    for (key, value) in node.store().entries() {
        let Some(json) = value_json(value) else { continue };
        entries.insert(String::from_utf8_lossy(key).into_owned(), json);
    }
    let root = format!("{:032x}", node.store_mut().root().0);
    line.insert("root".into(), root.into());
    line.insert("entries".into(), entries.into());
    serde_json::Value::Object(line).to_string()
}

/// A live value as JSON: a register a string, a counter a number, a set an array; `None` for a
/// tombstone.
fn value_json(value: &Value) -> Option<serde_json::Value> {
    Some(match value {
        Value::Register(_) => serde_json::json!(String::from_utf8_lossy(value.bytes()?)),
        Value::GCounter(_) | Value::PnCounter(_) => {
            let count = value.count().unwrap_or_default();
            i64::try_from(count).map_or_else(|_| serde_json::json!(count.to_string()), |n| n.into())
        }
        Value::Set(_) => {
            let elements = value.elements().unwrap_or_default();
            elements.iter().map(|element| String::from_utf8_lossy(element)).collect()
        }
    })
}
