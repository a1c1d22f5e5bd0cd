//! Crash and disk-fault tests: the store on a simulated node that crashes at random moments,
//! with torn and dropped unsynced writes and injected I/O errors and bit flips.
//!
//! Goal: every write acknowledged with `Durability::Sync` (and every write acknowledged before
//! it) is present after recovery; nothing that was never written appears; and a damaged read is
//! an error, never wrong data. Method: per seed, several rounds; each round opens the store,
//! runs a random workload (puts, deletes, batches, flushes, compactions) with a seed-chosen
//! disk-fault mix, crashes the node at a random simulated moment (the simulator's default crash
//! fates drop, keep or tear each unsynced write), then recovers and checks every key against the
//! history: the recovered value must be the outcome of some write at or after the last durable
//! one. Reads are first checked with read faults on (an error is fine, a wrong value is not),
//! then with a healthy disk (everything must read back). `SIM_SEEDS=N` runs more seeds.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{seeds, small_options, world};
use lsm::{Db, Durability, Error, WriteBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::Env;
use sim::world::{DiskConfig, NodeId, SimEnv, World};

const KEY_COUNT: u32 = 24;
const ROUND_COUNT: usize = 10;
const OPEN_ATTEMPTS_MAX: usize = 20;
const REOPEN_COUNT_MAX: usize = 5;
const WRITER_COUNT: u32 = 3;
const STEP_COUNT_MAX: usize = 10_000;

fn key(index: u32) -> Vec<u8> {
    format!("key-{index:03}").into_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    AckedSync,
    AckedBuffered,
    Failed,
}

/// One write to one key as the workload attempted it.
#[derive(Clone, Debug)]
struct Write {
    global: usize,
    value: Option<Vec<u8>>,
}

/// What one round did: per key its writes in order; per global write its status.
#[derive(Debug, Default)]
struct History {
    writes: BTreeMap<Vec<u8>, Vec<Write>>,
    statuses: Vec<(u32, Status)>,
}

type Shared = Arc<Mutex<History>>;

fn history(shared: &Shared) -> std::sync::MutexGuard<'_, History> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The workload of one round: `WRITER_COUNT` concurrent writers, each on its own keys. When a
/// write fails (the store stopped taking writes), the writers stop, the store is closed and
/// opened again (as an operator would), and they go on.
async fn workload(env: SimEnv, seed: u64, round: usize, shared: Shared) {
    for attempt in 0..=REOPEN_COUNT_MAX {
        let Ok(db) = Db::open(env.clone(), "db", small_options()).await else { return };
        let mut writers = Vec::new();
        for task in 0..WRITER_COUNT {
            let stream = seed ^ (round as u64) << 32 ^ (attempt as u64) << 16 ^ u64::from(task);
            let writer = writer(db.clone(), stream, task, Arc::clone(&shared));
            writers.push(env.spawn(writer));
        }
        let mut failed = false;
        for writer in writers {
            failed |= writer.await.unwrap_or(true);
        }
        let _ = db.close().await;
        if !failed {
            return;
        }
    }
}

/// One writer: random puts, deletes, batches, flushes and compactions on the keys congruent to
/// `task`. Returns whether a write failed.
async fn writer(db: Db<SimEnv>, stream: u64, task: u32, shared: Shared) -> bool {
    let mut rng = ChaCha8Rng::seed_from_u64(stream);
    for step in 0..STEP_COUNT_MAX {
        let choice = rng.random_range(0..100);
        if choice < 2 {
            let _ = db.flush().await;
            continue;
        }
        if choice < 3 {
            let _ = db.compact_all().await;
            continue;
        }
        let durability = if rng.random_bool(0.5) { Durability::Sync } else { Durability::Buffered };
        let op_count = if choice < 20 { rng.random_range(2..5) } else { 1 };
        let mut batch = WriteBatch::new();
        let global = {
            let mut history = history(&shared);
            let global = history.statuses.len();
            history.statuses.push((task, Status::Pending));
            for index in 0..op_count {
                let key = key(task + WRITER_COUNT * rng.random_range(0..KEY_COUNT / WRITER_COUNT));
                let value = rng
                    .random_bool(0.8)
                    .then(|| format!("{stream:x}-s{step}-o{index}-{}", "v".repeat(step % 50)));
                match &value {
                    Some(value) => batch.put(key.clone(), value.clone().into_bytes()),
                    None => batch.delete(key.clone()),
                };
                let value = value.map(String::into_bytes);
                history.writes.entry(key).or_default().push(Write { global, value });
            }
            global
        };
        let result = db.write(batch, durability).await;
        let status = match (&result, durability) {
            (Ok(()), Durability::Sync) => Status::AckedSync,
            (Ok(()), Durability::Buffered) => Status::AckedBuffered,
            (Err(_), _) => Status::Failed,
        };
        history(&shared).statuses[global].1 = status;
        if result.is_err() {
            return true;
        }
    }
    false
}

/// The values `key` may hold after recovery, given its value before the round.
fn allowed_values(history: &History, key: &[u8], before: Option<&Vec<u8>>) -> Vec<Option<Vec<u8>>> {
    let writes = history.writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
    // The last write to this key that is certainly durable: acknowledged, and followed (or
    // made) by a sync-acknowledged write of the same writer. One writer's writes are sequential
    // and a sync makes the whole log before it durable. Every key belongs to one writer.
    let durable = |write: &Write| {
        let (task, status) = history.statuses[write.global];
        let acked = matches!(status, Status::AckedSync | Status::AckedBuffered);
        let synced_later = history.statuses[write.global..]
            .iter()
            .any(|(other, status)| *other == task && *status == Status::AckedSync);
        acked && synced_later
    };
    let floor = writes.iter().rposition(durable);
    let mut allowed = Vec::new();
    if floor.is_none() {
        allowed.push(before.cloned());
    }
    for write in &writes[floor.unwrap_or(0)..] {
        allowed.push(write.value.clone());
    }
    allowed
}

/// Opens the store, retrying while injected faults make it fail; panics on corruption only if
/// the disk is healthy.
async fn open_retrying(env: &SimEnv, healthy: bool) -> Option<Db<SimEnv>> {
    for _ in 0..OPEN_ATTEMPTS_MAX {
        match Db::open(env.clone(), "db", small_options()).await {
            Ok(db) => return Some(db),
            Err(error) if healthy => panic!("open on a healthy disk failed: {error}"),
            Err(_) => env.sleep(Duration::from_millis(1)).await,
        }
    }
    None
}

/// Reads every key; each read is an error or an allowed value. Returns what was read.
async fn check_keys(
    db: &Db<SimEnv>,
    shared: &Shared,
    before: &BTreeMap<Vec<u8>, Vec<u8>>,
    healthy: bool,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for index in 0..KEY_COUNT {
        let key = key(index);
        let got = match db.get(&key).await {
            Ok(got) => got,
            Err(error) if !healthy => {
                assert!(matches!(error, Error::Io(_) | Error::Corruption { .. }), "{error}");
                continue;
            }
            Err(error) => panic!("read on a healthy disk failed: {error}"),
        };
        let allowed = allowed_values(&history(shared), &key, before.get(&key));
        assert!(
            allowed.contains(&got),
            "key {}: recovered {:?}, allowed {:?}",
            String::from_utf8_lossy(&key),
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
            allowed.len()
        );
        if let Some(value) = got {
            state.insert(key, value);
        }
    }
    state
}

fn fault_config(rng: &mut ChaCha8Rng) -> DiskConfig {
    let mut config = DiskConfig::default();
    match rng.random_range(0..5) {
        0 => {}
        1 => config.faults.write_error = 0.01,
        2 => config.faults.sync_error = 0.02,
        3 => config.faults.read_error = 0.02,
        _ => config.faults.read_corruption = 0.02,
    }
    config
}

fn read_faults() -> DiskConfig {
    let mut config = DiskConfig::default();
    config.faults.read_error = 0.05;
    config.faults.read_corruption = 0.05;
    config
}

fn recover_and_check(
    world: &World,
    node: NodeId,
    shared: &Shared,
    before: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    world.set_disk(node, read_faults());
    let (check_shared, check_before) = (Arc::clone(shared), before.clone());
    common::run(world, node, move |env| async move {
        if let Some(db) = open_retrying(&env, false).await {
            check_keys(&db, &check_shared, &check_before, false).await;
        }
    });
    world.crash(node);
    world.restart(node);
    world.set_disk(node, DiskConfig::default());
    let (check_shared, check_before) = (Arc::clone(shared), before.clone());
    common::run(world, node, move |env| async move {
        let db = open_retrying(&env, true).await.expect("opens on a healthy disk");
        let state = check_keys(&db, &check_shared, &check_before, true).await;
        let scanned = db.iter().await.expect("iter").collect_max(1000).await.expect("scan");
        let scanned: BTreeMap<_, _> = scanned.into_iter().collect();
        assert_eq!(scanned, state, "a full scan agrees with point reads");
        db.close().await.expect("close");
        state
    })
}

/// Runs the rounds of one seed; returns the world's trace hash.
fn crash_rounds(seed: u64) -> u64 {
    let (world, node) = world(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = BTreeMap::new();
    for round in 0..ROUND_COUNT {
        let shared: Shared = Arc::default();
        world.set_disk(node, fault_config(&mut rng));
        let env = world.env(node);
        let _task = world.spawn(node, workload(env, seed, round, Arc::clone(&shared)));
        let crash_after = Duration::from_micros(rng.random_range(500..60_000));
        if let Err(error) = world.run_for(crash_after) {
            panic!("seed {seed:#x} round {round}: {error}");
        }
        world.crash(node);
        world.restart(node);
        state = recover_and_check(&world, node, &shared, &state);
        let statuses = history(&shared).statuses.clone();
        let count =
            |wanted: Status| statuses.iter().filter(|(_, status)| *status == wanted).count();
        println!(
            "seed {seed:#x} round {round}: {} sync acks, {} buffered acks, {} failed, {} pending; \
             {} keys recovered",
            count(Status::AckedSync),
            count(Status::AckedBuffered),
            count(Status::Failed),
            count(Status::Pending),
            state.len()
        );
    }
    world.trace_hash()
}

#[test]
fn acknowledged_writes_survive_random_crashes_and_faults() {
    for seed in seeds(24) {
        println!("seed {seed:#x}");
        crash_rounds(seed);
    }
}

/// Goal: a crash run is a pure function of its seed (so any failure replays exactly).
#[test]
fn crash_runs_are_deterministic() {
    let seed = 0x5eed_15a0;
    assert_eq!(crash_rounds(seed), crash_rounds(seed), "seed {seed:#x} diverged");
}
