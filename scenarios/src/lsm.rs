//! `lsm-crash`: the LSM store on one node under crashes, torn writes, I/O errors, bit flips and
//! misdirected writes, with closes racing work on clones and write bursts against user flushes.
//!
//! Writers (one task per swarm client) each own a slice of the keys and issue puts, deletes and
//! atomic batches with sync or buffered durability, reads, flushes and compactions. The nemesis
//! crashes the node (each unsynced write dropped, kept or torn), pauses it, and makes its disk
//! fail reads, writes and syncs or flip bits on read. When a write fails the store stops taking
//! writes; the node closes and reopens it, as an operator would. Beyond the plan, each seed
//! draws (on its own stream, so a replay or a shrunk plan draws the same): misdirected writes
//! on the store's disk during the run, or only for a few `Sync` writes just before the final
//! crash; openings that end with `close` called while flushes and compactions run on clones
//! and a second opener races the close, then reopen in the same boot; and a burst of writes
//! without pause in the healed phase while a clone asks for flushes and compactions.
//!
//! Safety: a read returns the writer's own last acknowledged value (read-your-writes within one
//! opening of the store) or an error, never anything else; no operation of a store ends after
//! its `close` returned, and no second opener gets the directory before that (close
//! quiescence); and after a final crash and recovery on a healthy disk, every key holds the
//! value of a write at or after its last durable one (acknowledged, and followed or made by a
//! sync-acknowledged write of the same writer), never an older or invented value, and a full
//! scan agrees with point reads. Where the disk misdirected writes, `Corruption` from open or
//! a read is the correct answer (the store noticed), and the keys it hides are not checked; a
//! silent loss still is a violation.
//! Liveness: acknowledged writes resume within the bound after the heal (unless the store
//! reported corruption from misdirected writes: an operator must restore it), and every user
//! flush or compaction during the burst ends within `USER_WORK_BOUND`.
//!
//! The history also keeps an op log (`oplog`) of the writers' and the burst flusher's
//! operations, which `replay --html` draws as bars; no check reads it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use invariants::Violation;
use invariants::durability::{KeyHistory, WriteRecord, check_durability};
use lsm::{Db, Durability, Error, Options, PlantedBug, WriteBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::world::trace::splitmix64;
use sim::world::{DiskConfig, NodeId, SimConfig, SimEnv, SimError, World};
use sim::{Env, Instant};

use crate::coverage::{NodeState, StateGuard};
use crate::nemesis::at;
use crate::oplog::{OpLog, OpOutcome};
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const DB_DIR: &str = "db";
const OPEN_ATTEMPTS_MAX: u32 = 2_000;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Openings of the store per boot of the node (each after a failed write or a close race).
const REOPEN_COUNT_MAX: u32 = 10_000;
/// Tries of the opener that races a close (every `RACE_OPEN_DELAY`).
const RACE_OPEN_ATTEMPTS_MAX: u32 = 20_000;
const RACE_OPEN_DELAY: Duration = Duration::from_micros(100);
/// The longest a user flush or compaction may take during the healed write burst.
pub const USER_WORK_BOUND: Duration = Duration::from_millis(300);
/// Salt of the stream the per-seed options below the plan are drawn from.
const DRAWN_STREAM_SALT: u64 = 0x6c73_6d2d_6472_6177;
const FAULTS: &[FaultClass] =
    &[FaultClass::Crash, FaultClass::DiskFaults, FaultClass::DiskCorruption, FaultClass::Pause];

fn key(index: u32) -> Vec<u8> {
    format!("key-{index:03}").into_bytes()
}

/// What a seed draws beyond its plan: a pure function of the seed.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Drawn {
    /// Probability that the disk misdirects a write, all run long (0 in most seeds).
    misdirect_rate: f64,
    /// Before the final crash: this many `Sync` writes, each write of the disk misdirected
    /// with the given probability.
    tail: Option<(u32, f64)>,
    /// Probability that an opening ends in a close racing work on clones and a second opener.
    close_race: f64,
    /// A burst of writes without pause: (start after the heal, length), in milliseconds.
    burst_ms: Option<(u64, u64)>,
}

impl Drawn {
    fn draw(seed: u64) -> Drawn {
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ DRAWN_STREAM_SALT));
        // Low: the first misdirected write usually ends the store (it reports the damage).
        let misdirect_rate =
            if rng.random_bool(0.15) { rng.random_range(1..=10) as f64 / 10_000.0 } else { 0.0 };
        let tail = rng
            .random_bool(0.5)
            .then(|| (rng.random_range(1..=3), if rng.random_bool(0.5) { 1.0 } else { 0.5 }));
        let close_race =
            if rng.random_bool(0.5) { rng.random_range(3..=10) as f64 / 10.0 } else { 0.0 };
        let burst_ms = rng
            .random_bool(0.35)
            .then(|| (rng.random_range(300..=2_000), rng.random_range(600..=1_500)));
        Drawn { misdirect_rate, tail, close_race, burst_ms }
    }

    /// Whether the disk may misdirect a write at some point of the run.
    fn misdirects(&self) -> bool {
        self.misdirect_rate > 0.0 || self.tail.is_some()
    }
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
    violations: Vec<Violation>,
    /// A logical clock: every operation's start and end, every close's return, in order.
    tick: u64,
    /// Per opening whose `close` returned: the tick it returned at.
    close_returned: BTreeMap<u32, u64>,
    /// The first corruption the store reported, if any.
    corruption: Option<String>,
    /// Open failed with corruption on a disk that misdirected writes: the store is lost, and
    /// said so.
    store_lost: bool,
    /// Open failed `OPEN_ATTEMPTS_MAX` times in a row: the last error.
    open_given_up: Option<String>,
    /// Keys whose final read reported corruption (on a disk that misdirected writes).
    keys_hidden: u32,
    /// The slowest user flush or compaction during the burst: (time, what).
    user_work_slowest: Option<(Duration, String)>,
    /// The final reads after the last recovery (None until done).
    final_reads: Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// What the node says it does, for the coverage of a run (`NODE_STATES`).
    state: Option<NodeState>,
    /// The writers' and the burst flusher's operations, for the picture of a run only.
    ops: OpLog,
}

impl History {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

type Shared = Arc<Mutex<History>>;

/// What the node running the store reports doing (`NodeState`): the activities, the one
/// listed first winning when several run (closing the store, a flush or a compaction a user
/// asked for, a `Sync` write, any write, a read); with none running, the base state:
/// `opening` (recovery, retried on errors), `idle` (open, between operations), `final-reads`.
const NODE_STATES: &[&str] =
    &["closing", "user-flush", "user-compaction", "writing-sync", "writing", "reading"];

/// The activity of an operation `tracked` runs, by its description.
fn activity(what: &str) -> &'static str {
    if what.contains("close") {
        "closing"
    } else if what.contains("flush") {
        "user-flush"
    } else if what.contains("compaction") {
        "user-compaction"
    } else if what.contains("write") {
        "writing"
    } else {
        assert!(what.contains("read"), "{what}");
        "reading"
    }
}

/// Sets the node's base state.
fn set_state(shared: &Shared, base: &'static str) {
    if let Some(state) = &lock(shared).state {
        state.set(base);
    }
}

/// Counts `activity` as running on the node until the guard drops.
fn doing(shared: &Shared, activity: &'static str) -> Option<StateGuard> {
    lock(shared).state.as_ref().map(|state| state.during(activity))
}

fn lock(shared: &Shared) -> MutexGuard<'_, History> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Clone, Debug)]
struct Config {
    writer_count: u32,
    key_count: u32,
    think_ms_max: u64,
    stop_at: Instant,
    drawn: Drawn,
    /// The healed write burst: (start, end).
    burst: Option<(Instant, Instant)>,
    options: Options,
}

impl Config {
    fn in_burst(&self, now: Instant) -> bool {
        self.burst.is_some_and(|(start, end)| start <= now && now < end)
    }
}

/// Runs one operation of opening `epoch` of the store on the logical clock: an operation that
/// began before that opening's `close` returned must not end after it (unless refused with
/// `Closed`). Records the first corruption the store reports.
async fn tracked<T>(
    shared: &Shared,
    epoch: u32,
    what: &str,
    operation: impl Future<Output = lsm::Result<T>>,
) -> lsm::Result<T> {
    let started = lock(shared).next_tick();
    let running = doing(shared, activity(what));
    let result = operation.await;
    drop(running);
    let mut history = lock(shared);
    let ended = history.next_tick();
    assert!(started < ended);
    if let Some(&closed) = history.close_returned.get(&epoch)
        && closed > started
        && !matches!(result, Err(Error::Closed))
    {
        let message = format!("{what} on opening {epoch} ran on after its close returned");
        history.violations.push(Violation::new("close-quiescence", message));
    }
    if let Err(error @ Error::Corruption { .. }) = &result
        && history.corruption.is_none()
    {
        history.corruption = Some(error.to_string());
    }
    result
}

/// An operation as the op log records it (`recorded`).
struct Call {
    /// The writer or task issuing it (`writer 0`).
    lane: String,
    /// The operation, in a few words.
    what: String,
    keys: Vec<String>,
    /// Its activity's description, as `tracked` takes it.
    activity: &'static str,
    /// Whether an error leaves its effect open (a failed write may be in the log) rather than
    /// certainly absent.
    error_is_unknown: bool,
}

impl Call {
    /// A call that touches no key and whose error means it did nothing (a flush, a compaction).
    fn keyless(lane: String, activity: &'static str) -> Call {
        let what = activity.to_string();
        Call { lane, what, keys: Vec::new(), activity, error_is_unknown: false }
    }
}

/// Runs `operation` as `tracked` does and records it in the op log. An operation cut off by a
/// crash never returns and stays `unknown` there. Reads the clock only: no change to the run.
async fn recorded<T>(
    env: &SimEnv,
    shared: &Shared,
    epoch: u32,
    call: Call,
    operation: impl Future<Output = lsm::Result<T>>,
) -> lsm::Result<T> {
    let Call { lane, what, keys, activity, error_is_unknown } = call;
    let slot = lock(shared).ops.call(&lane, what, keys, env.now().as_nanos());
    let result = tracked(shared, epoch, activity, operation).await;
    let outcome = match &result {
        Ok(_) => OpOutcome::Ok,
        Err(_) if error_is_unknown => OpOutcome::Unknown,
        Err(_) => OpOutcome::Failed,
    };
    lock(shared).ops.returned(slot, env.now().as_nanos(), outcome);
    result
}

/// Opens the store, retrying; `None` if it never opens, or (on a disk that misdirected
/// writes) if it reports corruption: then the store is lost, and said so.
async fn open(env: &SimEnv, config: &Config, shared: &Shared) -> Option<Db<SimEnv>> {
    let mut last_error = None;
    set_state(shared, "opening");
    for _ in 0..OPEN_ATTEMPTS_MAX {
        match Db::open(env.clone(), DB_DIR, config.options.clone()).await {
            Ok(db) => {
                set_state(shared, "idle");
                return Some(db);
            }
            Err(error) if error.is_corruption() && config.drawn.misdirects() => {
                let mut history = lock(shared);
                history.corruption.get_or_insert(error.to_string());
                history.store_lost = true;
                return None;
            }
            Err(error) => {
                tracing::debug!(target: "lsm", %error, "open failed, retrying");
                last_error = Some(error.to_string());
                env.sleep(OPEN_RETRY_DELAY).await;
            }
        }
    }
    lock(shared).open_given_up = last_error;
    None
}

/// The node's main task. A boot after the workload stopped (the final crash) reads every key
/// for the final check; any other runs openings of the store until the workload stops.
async fn db_main(env: SimEnv, config: Config, shared: Shared) {
    if let Some(state) = &lock(&shared).state {
        state.boot("opening");
    }
    if env.now() >= config.stop_at {
        let Some(db) = open(&env, &config, &shared).await else { return };
        set_state(&shared, "final-reads");
        final_reads(&db, &config, &shared).await;
        let _ = db.close().await;
        return;
    }
    let mut rng = env.rng();
    let mut next = None;
    for _ in 0..REOPEN_COUNT_MAX {
        let db = match next.take() {
            Some(db) => db,
            None => match open(&env, &config, &shared).await {
                Some(db) => db,
                None => return,
            },
        };
        if env.now() >= config.stop_at {
            let _ = db.close().await;
            return;
        }
        let racing = rng.random_bool(config.drawn.close_race);
        next = run_opening(&env, &db, &config, &shared, racing).await;
    }
}

/// Runs one opening: its writers, the burst's flusher, and (if `racing`) a close racing work
/// on clones; returns the store the racing opener got, if any.
async fn run_opening(
    env: &SimEnv,
    db: &Db<SimEnv>,
    config: &Config,
    shared: &Shared,
    racing: bool,
) -> Option<Db<SimEnv>> {
    let epoch = {
        let mut history = lock(shared);
        history.epoch += 1;
        history.epoch
    };
    let mut tasks = Vec::new();
    for writer in 0..config.writer_count {
        let task =
            writer_main(env.clone(), db.clone(), config.clone(), writer, epoch, shared.clone());
        tasks.push(env.spawn(task));
    }
    if config.burst.is_some() {
        tasks.push(env.spawn(burst_flusher(
            env.clone(),
            db.clone(),
            config.clone(),
            epoch,
            shared.clone(),
        )));
    }
    let writers_done = Arc::new(AtomicBool::new(false));
    let race = racing.then(|| {
        let context = (config.clone(), epoch, shared.clone());
        env.spawn(close_race(env.clone(), db.clone(), context, writers_done.clone()))
    });
    for task in tasks {
        let _ = task.await;
    }
    writers_done.store(true, Ordering::Release);
    match race {
        Some(race) => race.await.ok().flatten(),
        None => {
            let _ = tracked(shared, epoch, "close", db.close()).await;
            let mut history = lock(shared);
            let tick = history.next_tick();
            history.close_returned.insert(epoch, tick);
            None
        }
    }
}

/// Closes the store while flushes and compactions run on clones and a second opener tries
/// the directory; returns the store the opener got.
async fn close_race(
    env: SimEnv,
    db: Db<SimEnv>,
    (config, epoch, shared): (Config, u32, Shared),
    writers_done: Arc<AtomicBool>,
) -> Option<Db<SimEnv>> {
    let mut rng = env.rng();
    // Close after a while, or at once when the opening's writers have all stopped.
    let close_at = env.now() + Duration::from_millis(rng.random_range(0..=1_000));
    while env.now() < close_at && !writers_done.load(Ordering::Acquire) {
        env.sleep(Duration::from_millis(10)).await;
    }
    for index in 0..rng.random_range(1..=3u32) {
        let (clone, shared) = (db.clone(), shared.clone());
        env.spawn(async move {
            if index % 2 == 0 {
                let _ = tracked(&shared, epoch, "flush on a clone", clone.flush()).await;
            } else {
                let _ = tracked(&shared, epoch, "compaction on a clone", clone.compact_all()).await;
            }
        });
    }
    env.sleep(Duration::from_micros(rng.random_range(0..=300))).await;
    let opener = env.spawn(race_open(env.clone(), config, epoch, shared.clone()));
    let closing = doing(&shared, "closing");
    let _ = db.close().await;
    drop(closing);
    {
        let mut history = lock(&shared);
        let tick = history.next_tick();
        history.close_returned.insert(epoch, tick);
    }
    opener.await.ok().flatten()
}

/// A second opener racing the close of opening `epoch`: it must get `Locked` until the close
/// returned.
async fn race_open(env: SimEnv, config: Config, epoch: u32, shared: Shared) -> Option<Db<SimEnv>> {
    for _ in 0..RACE_OPEN_ATTEMPTS_MAX {
        match Db::open(env.clone(), DB_DIR, config.options.clone()).await {
            Ok(db) => {
                let mut history = lock(&shared);
                if !history.close_returned.contains_key(&epoch) {
                    let message = format!(
                        "a second store opened opening {epoch}'s directory \
                                           before its close returned"
                    );
                    history.violations.push(Violation::new("close-quiescence", message));
                }
                return Some(db);
            }
            Err(Error::Locked { .. }) => env.sleep(RACE_OPEN_DELAY).await,
            // Disk faults and corruption: the regular opener deals with them.
            Err(_) => return None,
        }
    }
    None
}

/// What a writer knows its key holds in this opening of the store.
#[derive(Clone, Debug, PartialEq)]
enum Known {
    /// Exactly this (after an acknowledged write).
    Value(Option<Vec<u8>>),
    /// Unknown (nothing written yet in this opening, or a write failed).
    Unknown,
}

/// One writer of one opening.
struct Writer {
    db: Db<SimEnv>,
    writer: u32,
    epoch: u32,
    shared: Shared,
    known: BTreeMap<u32, Known>,
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
    let mut state = Writer { db, writer, epoch, shared, known: BTreeMap::new() };
    let mut step = 0u64;
    while env.now() < config.stop_at && !own_keys.is_empty() {
        // A burst is uninterrupted writes: no think time, no reads.
        let burst = config.in_burst(env.now());
        if !burst {
            env.sleep(Duration::from_millis(rng.random_range(0..=config.think_ms_max))).await;
        }
        step += 1;
        let choice = if burst { 99 } else { rng.random_range(0..100) };
        let (db, shared) = (&state.db, &state.shared);
        let lane = format!("writer {writer}");
        if choice < 2 {
            let _ = recorded(&env, shared, epoch, Call::keyless(lane, "flush"), db.flush()).await;
        } else if choice < 3 {
            let call = Call::keyless(lane, "compaction");
            let _ = recorded(&env, shared, epoch, call, db.compact_all()).await;
        } else if choice < 30 {
            let index = own_keys[rng.random_range(0..own_keys.len())];
            state.read_own(&env, index).await;
        } else {
            let ops = draw_batch(&mut rng, &own_keys, writer, epoch, step);
            let durability =
                if rng.random_bool(0.5) { Durability::Sync } else { Durability::Buffered };
            if !state.write(&env, ops, durability).await {
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

impl Writer {
    /// Issues one batch; records it; returns false if it failed (the store stops taking
    /// writes, or was closed).
    async fn write(
        &mut self,
        env: &SimEnv,
        ops: Vec<(u32, Option<Vec<u8>>)>,
        durability: Durability,
    ) -> bool {
        let call = self.write_call(&ops, durability);
        let mut batch = WriteBatch::new();
        let global = {
            let mut history = lock(&self.shared);
            let global = history.statuses.len();
            let (writer, epoch) = (self.writer, self.epoch);
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
        let sync = (durability == Durability::Sync).then(|| doing(&self.shared, "writing-sync"));
        let write = self.db.write(batch, durability);
        let result = recorded(env, &self.shared, self.epoch, call, write).await;
        drop(sync);
        let mut history = lock(&self.shared);
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
            self.known.insert(index, state);
        }
        result.is_ok()
    }

    /// A batch as the op log records it: `put key-003, delete key-007 (sync)`.
    fn write_call(&self, ops: &[(u32, Option<Vec<u8>>)], durability: Durability) -> Call {
        let keys: Vec<String> = ops.iter().map(|(index, _)| format!("key-{index:03}")).collect();
        let verbs = ops.iter().map(|(_, value)| if value.is_some() { "put" } else { "delete" });
        let words: Vec<String> =
            verbs.zip(&keys).map(|(verb, key)| format!("{verb} {key}")).collect();
        let sync = if durability == Durability::Sync { "sync" } else { "buffered" };
        let what = format!("{} ({sync})", words.join(", "));
        let lane = format!("writer {}", self.writer);
        // A write that failed may still be in the log: its effect is open.
        Call { lane, what, keys, activity: "write", error_is_unknown: true }
    }

    async fn read_own(&self, env: &SimEnv, index: u32) {
        let key_name = format!("key-{index:03}");
        let what = format!("get {key_name}");
        let call = Call {
            what,
            keys: vec![key_name],
            activity: "read",
            error_is_unknown: false,
            lane: format!("writer {}", self.writer),
        };
        let result = recorded(env, &self.shared, self.epoch, call, self.db.get(&key(index))).await;
        let mut history = lock(&self.shared);
        history.read_count += 1;
        let Ok(got) = result else { return };
        if let Some(Known::Value(expected)) = self.known.get(&index)
            && *expected != got
        {
            let (got, expected) = (show(got.as_deref()), show(expected.as_deref()));
            let message = format!(
                "read of key-{index:03} returned {got} but the writer's last acknowledged \
                 write was {expected}"
            );
            history.violations.push(Violation::new("read-your-writes", message));
        }
    }
}

fn show(value: Option<&[u8]>) -> String {
    value.map_or("<absent>".to_string(), |v| format!("{:?}", String::from_utf8_lossy(v)))
}

/// During the burst, asks for a flush or a compaction every 20 ms through a clone and notes
/// the slowest.
async fn burst_flusher(env: SimEnv, db: Db<SimEnv>, config: Config, epoch: u32, shared: Shared) {
    let Some((start, end)) = config.burst else { return };
    if env.now() < start {
        env.sleep(start - env.now()).await;
    }
    let mut round = 0u32;
    while env.now() < end {
        env.sleep(Duration::from_millis(20)).await;
        let began = env.now();
        let lane = "flusher".to_string();
        let (what, result) = if round.is_multiple_of(2) {
            let call = Call::keyless(lane, "burst flush");
            ("flush", recorded(&env, &shared, epoch, call, db.flush()).await)
        } else {
            let call = Call::keyless(lane, "burst compaction");
            ("compaction", recorded(&env, &shared, epoch, call, db.compact_all()).await)
        };
        // Any error ends this opening's part of the burst (the store was closed or stopped
        // taking writes, and the node reopens it): holding the opening open would delay that.
        if result.is_err() {
            return;
        }
        let took = env.now() - began;
        let mut history = lock(&shared);
        if history.user_work_slowest.as_ref().is_none_or(|(slowest, _)| took > *slowest) {
            let at = began.as_nanos() as f64 / 1e9;
            history.user_work_slowest = Some((took, format!("a user {what} asked at {at:.3}s")));
        }
        round += 1;
    }
}

/// Reads every key after the final recovery. On a disk that misdirected writes, corruption
/// reported for a key hides it from the durability check (the store said so).
async fn final_reads(db: &Db<SimEnv>, config: &Config, shared: &Shared) {
    let mut reads = BTreeMap::new();
    let mut errors = Vec::new();
    let mut hidden = 0;
    let excused = |error: &Error| error.is_corruption() && config.drawn.misdirects();
    for index in 0..config.key_count {
        match db.get(&key(index)).await {
            Ok(value) => _ = reads.insert(key(index), value),
            Err(error) if excused(&error) => hidden += 1,
            Err(error) => errors.push(format!("final read of key-{index:03} failed: {error}")),
        }
    }
    let scanned = match db.iter().await {
        Ok(mut iter) => iter.collect_max(config.key_count as usize + 1).await,
        Err(error) => Err(error),
    };
    let mut history = lock(shared);
    match scanned {
        Ok(scanned) if hidden == 0 => {
            let point: Vec<_> =
                reads.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
            if scanned != point {
                errors.push("a full scan disagrees with point reads".to_string());
            }
        }
        Ok(_) => {}
        Err(error) if excused(&error) => {}
        Err(error) => errors.push(format!("final scan failed: {error}")),
    }
    let violations = errors.into_iter().map(|error| Violation::new("scan-consistency", error));
    history.violations.extend(violations);
    history.keys_hidden = hidden;
    history.final_reads = Some(reads);
}

/// The `lsm-crash` scenario, or one of its planted-bug variants.
#[derive(Clone, Copy, Debug)]
pub struct LsmCrash {
    name: &'static str,
    bug: Option<PlantedBug>,
}

/// Every lsm scenario of this build (the planted-bug variants with feature `planted-bugs`).
pub fn scenarios() -> Vec<LsmCrash> {
    let mut list = vec![LsmCrash { name: "lsm-crash", bug: None }];
    if cfg!(feature = "planted-bugs") {
        for (name, bug) in [
            ("planted-lsm-misdirect", PlantedBug::MisplacedRecordIsTornTail),
            ("planted-lsm-close", PlantedBug::CloseIgnoresClonedWork),
            ("planted-lsm-starve", PlantedBug::FlushYieldsToWriters),
        ] {
            list.push(LsmCrash { name, bug: Some(bug) });
        }
    }
    list
}

impl LsmCrash {
    /// The store's options, with this variant's planted bug.
    fn options(&self) -> Options {
        #[cfg_attr(not(feature = "planted-bugs"), allow(unused_mut))]
        let mut options = Options::tiny();
        #[cfg(feature = "planted-bugs")]
        {
            options.planted_bug = self.bug;
        }
        options
    }
}

impl Scenario for LsmCrash {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        match self.bug {
            None => {
                "the LSM store on one node, 1-4 writers, under crashes (torn and lost unsynced \
                 writes), pauses, read/write/sync errors, bit flips and misdirected writes, closes \
                 racing work on clones and a second opener, write bursts against user flushes; \
                 final crash and recovery"
            }
            Some(PlantedBug::MisplacedRecordIsTornTail) => {
                "planted bug: the store's recovery takes a misdirected log record for a torn tail"
            }
            Some(PlantedBug::CloseIgnoresClonedWork) => {
                "planted bug: the store's close does not wait for work started through a clone"
            }
            Some(_) => "planted bug: the store's user flush is starved by writers",
        }
    }

    fn checks(&self) -> &'static [&'static str] {
        &[
            "read-your-writes",
            "close-quiescence",
            "durability",
            "scan-consistency",
            "liveness",
            "user-work-bound",
        ]
    }

    fn feature(&self) -> Option<&'static str> {
        self.bug.map(|_| "planted-bugs")
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

    fn configure(&self, config: &mut SimConfig, _: &Swarm) {
        // Misdirected writes all run long: the base disk the nemesis returns to.
        config.disk.faults.misdirected_write = Drawn::draw(config.seed).misdirect_rate;
    }

    fn topology(&self, _: &Swarm) -> Topology {
        Topology { servers: vec!["db".to_string()], clients: Vec::new() }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let drawn = Drawn::draw(world.seed());
        let activity = lsm::Activity::new();
        let burst = drawn.burst_ms.map(|(start_ms, length_ms)| {
            let start = swarm.faulty_ms + start_ms;
            (at(start), at((start + length_ms).min(swarm.total_ms())))
        });
        let config = Config {
            writer_count: swarm.client_count.max(1),
            key_count: swarm.key_count,
            think_ms_max: swarm.think_ms_max,
            stop_at: at(swarm.total_ms()),
            drawn,
            burst,
            options: lsm::Options { activity: Some(activity.clone()), ..self.options() },
        };
        let shared: Shared = Arc::default();
        lock(&shared).state = Some(NodeState::new("opening", NODE_STATES));
        let (boot_config, boot_shared) = (config.clone(), shared.clone());
        let node = world.add_node_with("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), move |env| {
            db_main(env, boot_config.clone(), boot_shared.clone())
        });
        Box::new(LsmRun { node, config, shared, activity })
    }
}

struct LsmRun {
    node: NodeId,
    config: Config,
    shared: Shared,
    /// The store's own work running now (`lsm::activity`), shared by every opening.
    activity: lsm::Activity,
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

    /// Before the final crash, on a seed that draws it: a few `Sync` writes while the disk
    /// misdirects writes (the fault of issue 14 that lost the last synced record silently).
    fn misdirected_tail(&self, world: &World, count: u32, rate: f64) -> Result<(), SimError> {
        let (config, shared) = (self.config.clone(), self.shared.clone());
        let env = world.env(self.node);
        let budget = RACE_OPEN_DELAY * RACE_OPEN_ATTEMPTS_MAX + Duration::from_secs(10);
        let opened = world.block_on(self.node, budget, async move {
            for _ in 0..RACE_OPEN_ATTEMPTS_MAX {
                match Db::open(env.clone(), DB_DIR, config.options.clone()).await {
                    Ok(db) => return Some(db),
                    Err(Error::Locked { .. }) => env.sleep(RACE_OPEN_DELAY).await,
                    Err(_) => return None,
                }
            }
            None
        })?;
        let Some(db) = opened else { return Ok(()) };
        let mut disk = DiskConfig::default();
        disk.faults.misdirected_write = rate;
        world.set_disk(self.node, disk);
        let env = world.env(self.node);
        let key_count = self.config.key_count;
        world.block_on(self.node, Duration::from_secs(10), async move {
            let epoch = {
                let mut history = lock(&shared);
                history.epoch += 1;
                history.epoch
            };
            let mut writer = Writer { db, writer: 0, epoch, shared, known: BTreeMap::new() };
            let mut rng = env.rng();
            for step in 0..count {
                let index = rng.random_range(0..key_count);
                let value = format!("tail-e{epoch}-s{step}").into_bytes();
                writer.write(&env, vec![(index, Some(value))], Durability::Sync).await;
            }
            // No close: the final crash follows.
            drop(writer);
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
        if let Some((count, rate)) = self.config.drawn.tail {
            self.misdirected_tail(world, count, rate)?;
        }
        // A final crash: only what was made durable may count. Recovery runs on a healthy disk,
        // and only its own failure to open counts.
        lock(&self.shared).open_given_up = None;
        world.set_disk(self.node, DiskConfig::default());
        world.crash(self.node);
        world.restart(self.node);
        let shared = self.shared.clone();
        let env = world.env(self.node);
        let budget = OPEN_RETRY_DELAY * OPEN_ATTEMPTS_MAX + Duration::from_secs(60);
        world.block_on(self.node, budget, async move {
            loop {
                let done = {
                    let history = lock(&shared);
                    history.final_reads.is_some()
                        || history.store_lost
                        || history.open_given_up.is_some()
                };
                if done {
                    return;
                }
                env.sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let history = lock(&self.shared);
        if let Some(first) = history.violations.first() {
            return Err(first.clone());
        }
        let Some(final_reads) = &history.final_reads else {
            if history.store_lost {
                return Ok(());
            }
            let why = history.open_given_up.as_deref().unwrap_or("open never returned");
            let message = format!("the store never recovered for final reads: {why}");
            return Err(Violation::new("durability", message));
        };
        let keys: Vec<KeyHistory> = (0..self.config.key_count)
            .filter(|index| final_reads.contains_key(&key(*index)))
            .map(|index| {
                let observed = final_reads.get(&key(index)).and_then(Option::as_ref);
                key_history(&history, &key(index), observed)
            })
            .collect();
        check_durability(&keys)
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let history = lock(&self.shared);
        if let Some((took, what)) = &history.user_work_slowest
            && *took > USER_WORK_BOUND
        {
            let message =
                format!("{what} took {took:?} under a write burst (bound {USER_WORK_BOUND:?})");
            return Err(Violation::new("user-work-bound", message));
        }
        if self.config.drawn.misdirects() && history.corruption.is_some() {
            // The store reported the damage misdirected writes did; it waits for an operator.
            return Ok(());
        }
        let progress: Vec<u64> = history.statuses.iter().filter_map(|w| w.acked_nanos).collect();
        invariants::liveness::check_progress_after_heal(healed_nanos, &progress, bound_nanos)
    }

    fn history(&self) -> serde_json::Value {
        let history = lock(&self.shared);
        let count = |wanted: Status| history.statuses.iter().filter(|w| w.status == wanted).count();
        let recovered = history.final_reads.as_ref().map(|reads| reads.values().flatten().count());
        let slowest = history.user_work_slowest.as_ref().map(|(took, _)| took.as_nanos() as u64);
        let (ops, ops_not_recorded) = history.ops.to_json();
        serde_json::json!({
            "writes_acked_sync": count(Status::AckedSync),
            "writes_acked_buffered": count(Status::AckedBuffered),
            "writes_failed": count(Status::Failed),
            "writes_pending": count(Status::Pending),
            "reads": history.read_count,
            "openings": history.epoch,
            "keys_recovered": recovered,
            "keys_hidden_by_reported_corruption": history.keys_hidden,
            "corruption_reported": history.corruption,
            "store_lost_with_error": history.store_lost,
            "user_work_slowest_nanos": slowest,
            "drawn": format!("{:?}", self.config.drawn),
            "ops": ops,
            "ops_not_recorded": ops_not_recorded,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = lock(&self.shared);
        let acked = history.statuses.iter().filter(|w| w.acked_nanos.is_some()).count();
        (history.statuses.len() as u64 + history.read_count, acked as u64 + history.read_count)
    }

    /// The store's own work if any runs (`manifest`, `flush`, `compaction`, `log-sync`,
    /// `recovery`), else what the node's tasks do (`NODE_STATES`, or the base state).
    fn node_state(&self, node: &str) -> Option<&'static str> {
        assert_eq!(node, "db", "the store's one node");
        let tasks = lock(&self.shared).state.as_ref().map(NodeState::get);
        self.activity.label().or(tasks)
    }
}
