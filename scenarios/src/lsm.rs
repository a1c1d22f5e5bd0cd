//! `lsm-crash`: the LSM store on one node under crashes, torn writes, I/O errors and bit flips.
//!
//! Writers (one task per swarm client) each own a slice of the keys and issue puts, deletes and
//! atomic batches with sync or buffered durability, reads, flushes and compactions. The nemesis
//! crashes the node (each unsynced write dropped, kept or torn), pauses it, and makes its disk
//! fail reads, writes and syncs or flip bits on read. When a write fails the store stops taking
//! writes; the node closes and reopens it, as an operator would.
//!
//! Safety: a read returns the writer's own last acknowledged value (read-your-writes within one
//! opening of the store) or an error, never anything else; and after a final crash and
//! recovery on a healthy disk, every key holds the value of a write at or after its last
//! durable one (acknowledged, and followed or made by a sync-acknowledged write of the same
//! writer), never an older or invented value, and a full scan agrees with point reads.
//! Liveness: acknowledged writes resume within the bound after the heal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use invariants::Violation;
use invariants::durability::{KeyHistory, WriteRecord, check_durability};
use lsm::{Db, Durability, Options, WriteBatch};
use rand::Rng;
use sim::world::{NodeId, SimEnv, SimError, World};
use sim::{Env, Instant};

use crate::nemesis::at;
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const DB_DIR: &str = "db";
const OPEN_ATTEMPTS_MAX: u32 = 2_000;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Openings of the store per boot of the node (each after a failed write).
const REOPEN_COUNT_MAX: u32 = 10_000;
const FAULTS: &[FaultClass] =
    &[FaultClass::Crash, FaultClass::DiskFaults, FaultClass::DiskCorruption, FaultClass::Pause];

fn key(index: u32) -> Vec<u8> {
    format!("key-{index:03}").into_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
enum Status {
    Pending,
    AckedSync,
    AckedBuffered,
    Failed,
}

/// One attempted write (a batch counts once), in global issue order.
#[derive(Clone, Debug, serde::Serialize)]
struct WriteStatus {
    writer: u32,
    /// Which opening of the store it went to.
    epoch: u32,
    status: Status,
    acked_nanos: Option<u64>,
}

/// One key's writes: (index into `History::statuses`, value written; None = delete).
type KeyWrites = Vec<(usize, Option<Vec<u8>>)>;

#[derive(Debug, Default)]
struct History {
    /// Per key, its writes in issue order.
    writes: BTreeMap<Vec<u8>, KeyWrites>,
    statuses: Vec<WriteStatus>,
    /// Openings of the store so far.
    epoch: u32,
    read_count: u64,
    violations: Vec<String>,
    /// The final reads after the last recovery (None until done).
    final_reads: Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

type Shared = Arc<Mutex<History>>;

fn lock(shared: &Shared) -> MutexGuard<'_, History> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Clone, Copy, Debug)]
struct Config {
    writer_count: u32,
    key_count: u32,
    think_ms_max: u64,
    stop_at: Instant,
}

async fn open(env: &SimEnv) -> Option<Db<SimEnv>> {
    for _ in 0..OPEN_ATTEMPTS_MAX {
        match Db::open(env.clone(), DB_DIR, Options::tiny()).await {
            Ok(db) => return Some(db),
            Err(error) => {
                tracing::debug!(target: "lsm", %error, "open failed, retrying");
                env.sleep(OPEN_RETRY_DELAY).await;
            }
        }
    }
    None
}

/// The node's main task: open, run the writers until one fails or time is up, close, reopen.
/// Once the workload has stopped, a boot reads every key for the final check instead.
async fn db_main(env: SimEnv, config: Config, shared: Shared) {
    for _ in 0..REOPEN_COUNT_MAX {
        let Some(db) = open(&env).await else { return };
        if env.now() >= config.stop_at {
            final_reads(&db, config, &shared).await;
            let _ = db.close().await;
            return;
        }
        let epoch = {
            let mut history = lock(&shared);
            history.epoch += 1;
            history.epoch
        };
        let mut writers = Vec::new();
        for writer in 0..config.writer_count {
            let task = writer_main(env.clone(), db.clone(), config, writer, epoch, shared.clone());
            writers.push(env.spawn(task));
        }
        for writer in writers {
            let _ = writer.await;
        }
        let _ = db.close().await;
        if env.now() >= config.stop_at {
            return;
        }
    }
}

/// What a writer knows its key holds in this opening of the store.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    /// Exactly this (after an acknowledged write).
    Value(Option<Vec<u8>>),
    /// Unknown (nothing written yet in this opening, or a write failed).
    Unknown,
}

async fn writer_main(
    env: SimEnv,
    db: Db<SimEnv>,
    config: Config,
    writer: u32,
    epoch: u32,
    shared: Shared,
) {
    let mut rng = env.rng();
    let own_keys: Vec<u32> =
        (0..config.key_count).filter(|k| k % config.writer_count == writer).collect();
    let mut known: BTreeMap<u32, Known> = BTreeMap::new();
    let mut step = 0u64;
    while env.now() < config.stop_at && !own_keys.is_empty() {
        env.sleep(Duration::from_millis(rng.random_range(0..=config.think_ms_max))).await;
        step += 1;
        let choice = rng.random_range(0..100);
        if choice < 2 {
            let _ = db.flush().await;
        } else if choice < 3 {
            let _ = db.compact_all().await;
        } else if choice < 30 {
            let index = own_keys[rng.random_range(0..own_keys.len())];
            read_own(&db, index, known.get(&index), &shared).await;
        } else {
            let ops = draw_batch(&mut rng, &own_keys, writer, epoch, step);
            if !write(&env, &db, &mut rng, ops, writer, epoch, &mut known, &shared).await {
                return;
            }
        }
    }
}

fn draw_batch(
    rng: &mut impl Rng,
    own_keys: &[u32],
    writer: u32,
    epoch: u32,
    step: u64,
) -> Vec<(u32, Option<Vec<u8>>)> {
    let op_count = if rng.random_bool(0.2) { rng.random_range(2..5) } else { 1 };
    (0..op_count)
        .map(|op| {
            let index = own_keys[rng.random_range(0..own_keys.len())];
            let padding = "v".repeat(rng.random_range(0..50));
            let value = rng
                .random_bool(0.8)
                .then(|| format!("w{writer}-e{epoch}-s{step}-o{op}-{padding}").into_bytes());
            (index, value)
        })
        .collect()
}

/// Issues one batch; records it; returns false if it failed (the store stops taking writes).
#[allow(clippy::too_many_arguments, reason = "one call site; a struct would only rename them")]
async fn write(
    env: &SimEnv,
    db: &Db<SimEnv>,
    rng: &mut impl Rng,
    ops: Vec<(u32, Option<Vec<u8>>)>,
    writer: u32,
    epoch: u32,
    known: &mut BTreeMap<u32, Known>,
    shared: &Shared,
) -> bool {
    let durability = if rng.random_bool(0.5) { Durability::Sync } else { Durability::Buffered };
    let mut batch = WriteBatch::new();
    let global = {
        let mut history = lock(shared);
        let global = history.statuses.len();
        let status = WriteStatus { writer, epoch, status: Status::Pending, acked_nanos: None };
        history.statuses.push(status);
        for (index, value) in &ops {
            match value {
                Some(value) => batch.put(key(*index), value.clone()),
                None => batch.delete(key(*index)),
            };
            history.writes.entry(key(*index)).or_default().push((global, value.clone()));
        }
        global
    };
    let result = db.write(batch, durability).await;
    let mut history = lock(shared);
    let entry = &mut history.statuses[global];
    entry.status = match (&result, durability) {
        (Ok(()), Durability::Sync) => Status::AckedSync,
        (Ok(()), Durability::Buffered) => Status::AckedBuffered,
        (Err(_), _) => Status::Failed,
    };
    if result.is_ok() {
        entry.acked_nanos = Some(env.now().as_nanos());
    }
    for (index, value) in ops {
        let state = if result.is_ok() { Known::Value(value) } else { Known::Unknown };
        known.insert(index, state);
    }
    result.is_ok()
}

async fn read_own(db: &Db<SimEnv>, index: u32, known: Option<&Known>, shared: &Shared) {
    let result = db.get(&key(index)).await;
    let mut history = lock(shared);
    history.read_count += 1;
    let Ok(got) = result else { return };
    if let Some(Known::Value(expected)) = known
        && *expected != got
    {
        let message = format!(
            "read of key-{index:03} returned {} but the writer's last acknowledged write was {}",
            show(got.as_deref()),
            show(expected.as_deref())
        );
        history.violations.push(message);
    }
}

fn show(value: Option<&[u8]>) -> String {
    value.map_or("<absent>".to_string(), |v| format!("{:?}", String::from_utf8_lossy(v)))
}

async fn final_reads(db: &Db<SimEnv>, config: Config, shared: &Shared) {
    let mut reads = BTreeMap::new();
    let mut errors = Vec::new();
    for index in 0..config.key_count {
        match db.get(&key(index)).await {
            Ok(value) => _ = reads.insert(key(index), value),
            Err(error) => errors.push(format!("final read of key-{index:03} failed: {error}")),
        }
    }
    let scanned = match db.iter().await {
        Ok(mut iter) => iter.collect_max(config.key_count as usize + 1).await,
        Err(error) => Err(error),
    };
    let mut history = lock(shared);
    match scanned {
        Ok(scanned) => {
            let point: Vec<_> =
                reads.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
            if scanned != point {
                history.violations.push("a full scan disagrees with point reads".to_string());
            }
        }
        Err(error) => errors.push(format!("final scan failed: {error}")),
    }
    history.violations.extend(errors);
    history.final_reads = Some(reads);
}

/// The `lsm-crash` scenario.
#[derive(Clone, Copy, Debug)]
pub struct LsmCrash;

impl Scenario for LsmCrash {
    fn name(&self) -> &'static str {
        "lsm-crash"
    }

    fn summary(&self) -> &'static str {
        "the LSM store on one node, 1-4 writers, under crashes (torn and lost unsynced writes), \
         pauses, read/write/sync errors and bit flips; final crash and recovery"
    }

    fn checks(&self) -> &'static [&'static str] {
        &["read-your-writes", "durability", "scan-consistency", "liveness"]
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::exactly(1),
            client_count: Span::new(1, 4),
            key_count: Span::new(8, 32),
            faulty_ms: Span::new(2_000, 20_000),
            healed_ms: 5_000,
            liveness_bound_ms: 3_000,
            fault_count: Span::new(1, 8),
            fault_classes: FAULTS,
            link_loss_percent_max: 0,
            think_ms: Span::new(0, 20),
            read_percent: Span::exactly(30),
        }
    }

    fn topology(&self, _: &Swarm) -> Topology {
        Topology { servers: vec!["db".to_string()], clients: Vec::new() }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let config = Config {
            writer_count: swarm.client_count.max(1),
            key_count: swarm.key_count,
            think_ms_max: swarm.think_ms_max,
            stop_at: at(swarm.total_ms()),
        };
        let shared: Shared = Arc::default();
        let boot_shared = shared.clone();
        let node = world.add_node_with("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), move |env| {
            db_main(env, config, boot_shared.clone())
        });
        Box::new(LsmRun { node, config, shared })
    }
}

struct LsmRun {
    node: NodeId,
    config: Config,
    shared: Shared,
}

impl LsmRun {
    /// Acknowledged, and followed (or made) by a sync-acknowledged write of the same writer in
    /// the same opening: one writer's writes are sequential, and a sync makes the log before it
    /// durable.
    fn durable(history: &History, global: usize) -> bool {
        let write = &history.statuses[global];
        let acked = matches!(write.status, Status::AckedSync | Status::AckedBuffered);
        acked
            && history.statuses[global..].iter().any(|later| {
                later.writer == write.writer
                    && later.epoch == write.epoch
                    && later.status == Status::AckedSync
            })
    }
}

/// Values as numbers for the durability checker: the index of the write that wrote them.
fn key_history(history: &History, key: &[u8], observed: Option<&Vec<u8>>) -> KeyHistory {
    let writes = history.writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
    let records = writes
        .iter()
        .enumerate()
        .map(|(position, (global, value))| WriteRecord {
            value: value.as_ref().map(|_| position as u64),
            acknowledged: LsmRun::durable(history, *global),
        })
        .collect();
    // The observed value as the position of the write that wrote it; an invented value gets a
    // position no write has.
    let observed = observed.map(|value| {
        writes
            .iter()
            .rposition(|(_, written)| written.as_ref() == Some(value))
            .map_or(u64::MAX, |position| position as u64)
    });
    KeyHistory { key: String::from_utf8_lossy(key).into_owned(), writes: records, observed }
}

impl Workload for LsmRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        // A final crash: only what was made durable may count.
        world.crash(self.node);
        world.restart(self.node);
        let shared = self.shared.clone();
        let env = world.env(self.node);
        let budget = OPEN_RETRY_DELAY * OPEN_ATTEMPTS_MAX + Duration::from_secs(60);
        world.block_on(self.node, budget, async move {
            while lock(&shared).final_reads.is_none() {
                env.sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let history = lock(&self.shared);
        if let Some(first) = history.violations.first() {
            let name =
                if first.starts_with("read of") { "read-your-writes" } else { "scan-consistency" };
            return Err(Violation::new(name, first.clone()));
        }
        let Some(final_reads) = &history.final_reads else {
            return Err(Violation::new("durability", "the store never recovered for final reads"));
        };
        let keys: Vec<KeyHistory> = (0..self.config.key_count)
            .map(|index| {
                let observed = final_reads.get(&key(index)).and_then(Option::as_ref);
                key_history(&history, &key(index), observed)
            })
            .collect();
        check_durability(&keys)
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let history = lock(&self.shared);
        let progress: Vec<u64> = history.statuses.iter().filter_map(|w| w.acked_nanos).collect();
        invariants::liveness::check_progress_after_heal(healed_nanos, &progress, bound_nanos)
    }

    fn history(&self) -> serde_json::Value {
        let history = lock(&self.shared);
        let count = |wanted: Status| history.statuses.iter().filter(|w| w.status == wanted).count();
        let recovered = history.final_reads.as_ref().map(|reads| reads.values().flatten().count());
        serde_json::json!({
            "writes_acked_sync": count(Status::AckedSync),
            "writes_acked_buffered": count(Status::AckedBuffered),
            "writes_failed": count(Status::Failed),
            "writes_pending": count(Status::Pending),
            "reads": history.read_count,
            "openings": history.epoch,
            "keys_recovered": recovered,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = lock(&self.shared);
        let acked = history.statuses.iter().filter(|w| w.acked_nanos.is_some()).count();
        (history.statuses.len() as u64 + history.read_count, acked as u64 + history.read_count)
    }
}
