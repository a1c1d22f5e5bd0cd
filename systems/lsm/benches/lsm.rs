//! Side-by-side benchmark of this store (on real files through `TokioEnv`) and fjall 3.1.
//!
//! Workloads (db_bench names): fillseq, fillrandom, readrandom (hits), readmissing,
//! seekrandom+next10, on `KEY_COUNT` keys of 16 bytes with 100-byte values, buffered durability
//! (no fsync per write; fjall's default journal mode, which also writes to OS buffers), both
//! engines with the same block cache budget and memtable size and no compression. Each engine
//! works in its own temporary directory, in one process. Also fillrandom with `Sync` durability
//! from 8 concurrent writers (fjall: `PersistMode::SyncAll` after each insert, 8 threads).
//! Run: `cargo bench -p lsm --features tokio`; `LSM_BENCH_KEYS` overrides the key count (the
//! issue's figures use `LSM_BENCH_KEYS=1000000`: about 10 minutes on 2 busy cores). After the
//! missing-key reads it prints our bloom filter's measured false-positive rate. The read
//! workloads start once both engines' background work has settled (each keeps the level shape
//! its own policy left; the shapes are printed: seeks cost about one block per level-0 table in
//! both engines). `LSM_BENCH_SEEK_ROUNDS=n` adds n alternating rounds of seek+next10 per engine
//! timed by thread CPU time, steadier than wall time on a shared machine;
//! `LSM_BENCH_FILL_ROUNDS=n` does the same for the fills (fresh directories each).
//! Memory and write amplification, one engine per process:
//! `LSM_BENCH_REPORT=lsm LSM_BENCH_REPORT_KEYS=1000000 cargo bench -p lsm --features tokio --
//! report-only` (and `=fjall`).
//! `LSM_BENCH_ENCRYPT=1` runs our store encrypted at rest (Argon2id at its testing cost, so
//! only the sealing is measured); run it and a plain run back to back for the overhead.

// A benchmark measures real time and uses real files and threads: it is not simulation code.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use lsm::{Db, Durability, Options};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::tokio_env::TokioEnv;

const KEY_COUNT_DEFAULT: u32 = 100_000;
const VALUE_BYTES: usize = 100;
const CACHE_BYTES: usize = 16 << 20;
const MEMTABLE_BYTES: usize = 8 << 20;

fn key_count() -> u32 {
    std::env::var("LSM_BENCH_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(KEY_COUNT_DEFAULT)
}

/// A 16-byte key; `missing` keys sort among the present ones but are never written.
fn key(index: u32, missing: bool) -> [u8; 16] {
    let mut out = [0u8; 16];
    let text = format!("{:015}{}", index, if missing { 'x' } else { 'k' });
    out.copy_from_slice(text.as_bytes());
    out
}

fn value(index: u32) -> Vec<u8> {
    let mut out = vec![0u8; VALUE_BYTES];
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(index));
    rng.fill(&mut out[..]);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn our_options() -> Options {
    Options {
        memtable_bytes_max: MEMTABLE_BYTES,
        block_cache_bytes: CACHE_BYTES,
        table_bytes_target: 8 << 20,
        level1_bytes_max: 64 << 20,
        encryption: std::env::var("LSM_BENCH_ENCRYPT")
            .is_ok_and(|value| value == "1")
            .then(|| lsm::Encryption::new("bench", lsm::KdfParams::TESTING)),
        ..Options::default()
    }
}

async fn open_ours(dir: &std::path::Path) -> Db<TokioEnv> {
    Db::open(TokioEnv::new(dir), "db", our_options()).await.expect("open ours")
}

fn open_fjall(dir: &std::path::Path) -> (Database, Keyspace) {
    let db = Database::builder(dir).cache_size(CACHE_BYTES as u64).open().expect("open fjall");
    let keyspace = db
        .keyspace("bench", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES as u64)
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        })
        .expect("keyspace");
    (db, keyspace)
}

fn order(random: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..key_count()).collect();
    if random {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(42));
    }
    order
}

/// Runs `run` `iters` times, each on a fresh temp dir, and sums the times it reports (setup
/// and teardown inside `run` stay outside its own timing).
fn on_fresh_dirs(iters: u64, mut run: impl FnMut(&std::path::Path) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = tempfile::tempdir().expect("tempdir");
        total += run(dir.path());
    }
    total
}

/// One fill of ours into `dir` in `order`: (wall, this thread's CPU) time of the puts.
fn fill_ours(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    order: &[u32],
    values: &[Vec<u8>],
) -> (Duration, Duration) {
    runtime.block_on(async {
        let db = open_ours(dir).await;
        let (start, cpu) = (Instant::now(), thread_cpu());
        for &index in order {
            let value = &values[index as usize];
            db.put(&key(index, false), value, Durability::Buffered).await.expect("put");
        }
        let elapsed = (start.elapsed(), thread_cpu() - cpu);
        db.close().await.expect("close");
        elapsed
    })
}

/// `fill_ours` for fjall.
fn fill_fjall(dir: &std::path::Path, order: &[u32], values: &[Vec<u8>]) -> (Duration, Duration) {
    let (db, keyspace) = open_fjall(dir);
    let (start, cpu) = (Instant::now(), thread_cpu());
    for &index in order {
        keyspace.insert(key(index, false), values[index as usize].as_slice()).expect("insert");
    }
    let elapsed = (start.elapsed(), thread_cpu() - cpu);
    drop(keyspace);
    drop(db);
    elapsed
}

/// With `LSM_BENCH_FILL_ROUNDS=n`: n alternating fills per engine on fresh directories,
/// printing per-put wall time and the CPU time of the thread making the puts (system calls
/// included; the engines' background threads excluded).
fn fill_rounds(name: &str, runtime: &tokio::runtime::Runtime, order: &[u32], values: &[Vec<u8>]) {
    let rounds: u32 =
        std::env::var("LSM_BENCH_FILL_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(0);
    let per_op = |time: Duration| time.as_nanos() as f64 / order.len() as f64;
    for round in 0..rounds {
        let ours = on_fresh_dir(|dir| fill_ours(runtime, dir, order, values));
        let fjall = on_fresh_dir(|dir| fill_fjall(dir, order, values));
        let (ours_wall, ours_cpu, fjall_wall, fjall_cpu) =
            (per_op(ours.0), per_op(ours.1), per_op(fjall.0), per_op(fjall.1));
        println!(
            "{name} round {round}: ns/op wall (cpu): ours {ours_wall:.0} ({ours_cpu:.0}), fjall \
             {fjall_wall:.0} ({fjall_cpu:.0}); ours/fjall throughput by wall {:.2}, by cpu {:.2}",
            fjall_wall / ours_wall,
            fjall_cpu / ours_cpu
        );
    }
}

/// Runs `run` once on a fresh temp dir.
fn on_fresh_dir<T>(run: impl FnOnce(&std::path::Path) -> T) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    run(dir.path())
}

fn bench_fill(criterion: &mut Criterion, name: &str, random: bool) {
    let runtime = runtime();
    let order = order(random);
    let values: Vec<Vec<u8>> = (0..key_count()).map(value).collect();
    fill_rounds(name, &runtime, &order, &values);
    let mut group = criterion.benchmark_group(name);
    group.throughput(Throughput::Elements(u64::from(key_count())));
    group.sample_size(10);
    group.bench_function("lsm", |bencher| {
        bencher.iter_custom(|iters| {
            on_fresh_dirs(iters, |dir| fill_ours(&runtime, dir, &order, &values).0)
        });
    });
    group.bench_function("fjall", |bencher| {
        bencher.iter_custom(|iters| on_fresh_dirs(iters, |dir| fill_fjall(dir, &order, &values).0));
    });
    group.finish();
}

/// Writes per run of the sync benchmark (each one fsynced before it is acknowledged).
const SYNC_WRITE_COUNT: u32 = 4_000;
/// Concurrent writers of the sync benchmark.
const SYNC_WRITER_COUNT: u32 = 8;

/// fillrandom with `Durability::Sync` from 8 concurrent writers (group commit), next to fjall
/// with `PersistMode::SyncAll` after every insert from 8 threads.
fn fillsync(criterion: &mut Criterion) {
    let runtime = runtime();
    let mut group = criterion.benchmark_group("fillrandom_sync_8_writers");
    group.throughput(Throughput::Elements(u64::from(SYNC_WRITE_COUNT)));
    group.sample_size(10);
    let per_writer = SYNC_WRITE_COUNT / SYNC_WRITER_COUNT;
    group.bench_function("lsm", |bencher| {
        bencher.iter_custom(|iters| {
            on_fresh_dirs(iters, |dir| {
                runtime.block_on(async {
                    let db = open_ours(dir).await;
                    let start = Instant::now();
                    let mut writers = Vec::new();
                    for writer in 0..SYNC_WRITER_COUNT {
                        let db = db.clone();
                        writers.push(tokio::spawn(async move {
                            for index in 0..per_writer {
                                let index = index * SYNC_WRITER_COUNT + writer;
                                let (key, value) = (key(index, false), value(index));
                                db.put(&key, &value, Durability::Sync).await.expect("put");
                            }
                        }));
                    }
                    for writer in writers {
                        writer.await.expect("writer");
                    }
                    let elapsed = start.elapsed();
                    let stats = db.stats();
                    println!(
                        "ours sync: {} fsyncs for {SYNC_WRITE_COUNT} writes",
                        stats.wal_sync_count
                    );
                    db.close().await.expect("close");
                    elapsed
                })
            })
        });
    });
    group.bench_function("fjall", |bencher| {
        bencher.iter_custom(|iters| {
            on_fresh_dirs(iters, |dir| {
                let (db, keyspace) = open_fjall(dir);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for writer in 0..SYNC_WRITER_COUNT {
                        let (db, keyspace) = (&db, &keyspace);
                        scope.spawn(move || {
                            for index in 0..per_writer {
                                let index = index * SYNC_WRITER_COUNT + writer;
                                keyspace.insert(key(index, false), value(index)).expect("insert");
                                db.persist(PersistMode::SyncAll).expect("persist");
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Peak resident memory of this process (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Not timed, and only when `LSM_BENCH_REPORT` is `lsm` or `fjall` (run each in its own
/// process, so the peak memory is that engine's): fills `LSM_BENCH_REPORT_KEYS` (default
/// 500,000) random keys, flushes, waits for compaction, and prints throughput, peak memory and
/// (ours) write amplification and level shape.
fn report(_criterion: &mut Criterion) {
    let engine = std::env::var("LSM_BENCH_REPORT").unwrap_or_default();
    if engine != "lsm" && engine != "fjall" {
        return;
    }
    let count: u32 = std::env::var("LSM_BENCH_REPORT_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(500_000);
    let mut order: Vec<u32> = (0..count).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(43));
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    if engine == "lsm" {
        runtime().block_on(async {
            let db = open_ours(dir.path()).await;
            for &index in &order {
                db.put(&key(index, false), &value(index), Durability::Buffered).await.expect("put");
            }
            db.flush().await.expect("flush");
            let rate = f64::from(count) / start.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let stats = db.stats();
            let amplification = stats.write_amplification();
            println!(
                "lsm fillrandom {count}: {rate:.0} ops/s, write amplification {amplification:.2}"
            );
            println!("lsm stats: {stats:?}");
            db.close().await.expect("close");
        });
    } else {
        let (db, keyspace) = open_fjall(dir.path());
        for &index in &order {
            keyspace.insert(key(index, false), value(index)).expect("insert");
        }
        keyspace.rotate_memtable_and_wait().expect("flush");
        let rate = f64::from(count) / start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        println!("fjall fillrandom {count}: {rate:.0} ops/s");
        drop(keyspace);
        drop(db);
    }
    println!("{engine} peak resident memory: {} KiB", peak_rss_kib().unwrap_or(0));
}

fn fillseq(criterion: &mut Criterion) {
    bench_fill(criterion, "fillseq", false);
}

fn fillrandom(criterion: &mut Criterion) {
    bench_fill(criterion, "fillrandom", true);
}

/// Both engines filled in random order and flushed to tables, for the read workloads.
struct Loaded {
    runtime: tokio::runtime::Runtime,
    ours: Db<TokioEnv>,
    fjall: Keyspace,
    _fjall_db: Database,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Waits (up to 30 s) until neither engine's background work changed anything for two seconds,
/// so the read workloads do not share the cores with a compaction still running. Each engine
/// keeps the shape its own compaction policy left (nothing is forced).
fn settle(ours: &Db<TokioEnv>, fjall: &Keyspace) {
    let shape = || {
        let stats = ours.stats();
        let ours_work = (stats.flush_bytes, stats.compaction_bytes, stats.level_table_counts);
        (ours_work, fjall.table_count(), fjall.l0_table_count(), fjall.disk_space())
    };
    let (mut last, mut unchanged_seconds) = (shape(), 0);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = shape();
        unchanged_seconds = if now == last { unchanged_seconds + 1 } else { 0 };
        last = now;
        if unchanged_seconds == 2 {
            return;
        }
    }
}

fn load() -> Loaded {
    let runtime = runtime();
    let (ours_dir, fjall_dir) =
        (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let order = order(true);
    let ours = runtime.block_on(async {
        let db = open_ours(ours_dir.path()).await;
        for &index in &order {
            db.put(&key(index, false), &value(index), Durability::Buffered).await.expect("put");
        }
        db.flush().await.expect("flush");
        db
    });
    let (fjall_db, fjall) = open_fjall(fjall_dir.path());
    for &index in &order {
        fjall.insert(key(index, false), value(index)).expect("insert");
    }
    fjall.rotate_memtable_and_wait().expect("flush fjall");
    settle(&ours, &fjall);
    println!("ours after load: {:?}", ours.stats());
    let (tables, level0) = (fjall.table_count(), fjall.l0_table_count());
    println!("fjall after load: {tables} tables, {level0} in level 0");
    Loaded { runtime, ours, fjall, _fjall_db: fjall_db, _dirs: (ours_dir, fjall_dir) }
}

/// This thread's CPU time so far (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = text.split_whitespace().next().and_then(|field| field.parse().ok());
    Duration::from_nanos(nanos.unwrap_or(0))
}

/// Seeks `count` random keys in ours and reads up to 10 pairs from each; (wall, CPU) time.
fn seek_rounds_ours(loaded: &Loaded, rng: &mut ChaCha8Rng, count: u32) -> (Duration, Duration) {
    let (start, cpu) = (Instant::now(), thread_cpu());
    loaded.runtime.block_on(async {
        for _ in 0..count {
            let from = key(rng.random_range(0..key_count()), false).to_vec();
            let mut iter = loaded.ours.range(from..).await.expect("range");
            black_box(iter.collect_max(10).await.expect("scan"));
        }
    });
    (start.elapsed(), thread_cpu() - cpu)
}

/// `seek_rounds_ours` for fjall.
fn seek_rounds_fjall(loaded: &Loaded, rng: &mut ChaCha8Rng, count: u32) -> (Duration, Duration) {
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..count {
        let from = key(rng.random_range(0..key_count()), false);
        for item in loaded.fjall.range(from..).take(10) {
            black_box(item.into_inner().expect("item"));
        }
    }
    (start.elapsed(), thread_cpu() - cpu)
}

/// With `LSM_BENCH_SEEK_ROUNDS=n`: n alternating rounds of 100,000 seek+next10 per engine on
/// the loaded state, printing per-operation wall and thread CPU time (CPU time is steadier than
/// criterion's wall time on a shared machine).
fn seek_rounds<'a>(loaded: impl FnOnce() -> &'a Loaded) {
    let rounds: u32 =
        std::env::var("LSM_BENCH_SEEK_ROUNDS").ok().and_then(|text| text.parse().ok()).unwrap_or(0);
    if rounds == 0 {
        return;
    }
    let loaded = loaded();
    const PER_ROUND: u32 = 100_000;
    let (mut ours_rng, mut fjall_rng) =
        (ChaCha8Rng::seed_from_u64(11), ChaCha8Rng::seed_from_u64(11));
    let per_op = |time: Duration| time.as_nanos() as f64 / f64::from(PER_ROUND);
    for round in 0..rounds {
        let ours = seek_rounds_ours(loaded, &mut ours_rng, PER_ROUND);
        let fjall = seek_rounds_fjall(loaded, &mut fjall_rng, PER_ROUND);
        let (ours_wall, ours_cpu, fjall_wall, fjall_cpu) =
            (per_op(ours.0), per_op(ours.1), per_op(fjall.0), per_op(fjall.1));
        println!(
            "seek round {round}: ns/op wall (cpu): ours {ours_wall:.0} ({ours_cpu:.0}), fjall \
             {fjall_wall:.0} ({fjall_cpu:.0}); ours/fjall throughput by cpu {:.2}",
            fjall_cpu / ours_cpu
        );
    }
}

/// Prints our bloom filter's measured false-positive rate.
fn print_bloom(loaded: &Loaded) {
    let stats = loaded.ours.stats();
    println!(
        "ours bloom filter: {} absent-key probes, {} false positives, rate {:.3}%",
        stats.bloom_negative_count + stats.bloom_false_positive_count,
        stats.bloom_false_positive_count,
        100.0 * stats.bloom_false_positive_rate()
    );
}

/// Prints our level-0 table count and read-triggered compactions after the seek workloads.
fn print_after_seeks(loaded: &Loaded) {
    let stats = loaded.ours.stats();
    println!(
        "ours after the seeks: {} level-0 tables, {} read-triggered compactions, {} compaction \
         bytes written in all",
        stats.level_table_counts[0], stats.seek_compaction_count, stats.compaction_bytes
    );
}

fn reads(criterion: &mut Criterion) {
    // Loaded on first use, so a filtered run that skips the reads does not pay for it.
    let cell = std::cell::OnceCell::new();
    let loaded = || cell.get_or_init(load);
    let count = key_count();
    for (name, missing) in [("readrandom", false), ("readmissing", true)] {
        let mut group = criterion.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter("lsm"), |bencher| {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let loaded = loaded();
            bencher.iter_custom(|iters| {
                loaded.runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let got = loaded.ours.get(&key(rng.random_range(0..count), missing)).await;
                        assert_eq!(got.expect("get").is_some(), !missing);
                    }
                    start.elapsed()
                })
            });
        });
        group.bench_function(BenchmarkId::from_parameter("fjall"), |bencher| {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let loaded = loaded();
            bencher.iter(|| {
                let got = loaded.fjall.get(key(rng.random_range(0..count), missing)).expect("get");
                assert_eq!(got.is_some(), !missing);
            });
        });
        group.finish();
    }
    if let Some(loaded) = cell.get() {
        print_bloom(loaded);
    }
    seek_rounds(loaded);
    let mut group = criterion.benchmark_group("seekrandom_next10");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lsm", |bencher| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let loaded = loaded();
        bencher.iter_custom(|iters| {
            loaded.runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let from = key(rng.random_range(0..count), false).to_vec();
                    let mut iter = loaded.ours.range(from..).await.expect("range");
                    black_box(iter.collect_max(10).await.expect("scan"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("fjall", |bencher| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let loaded = loaded();
        bencher.iter(|| {
            let from = key(rng.random_range(0..count), false);
            for item in loaded.fjall.range(from..).take(10) {
                black_box(item.into_inner().expect("item"));
            }
        });
    });
    group.finish();
    if let Some(loaded) = cell.get() {
        print_after_seeks(loaded);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = report, fillseq, fillrandom, reads, fillsync
}
criterion_main!(benches);
