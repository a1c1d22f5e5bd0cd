//! Report mode: plain timings of every workload, one engine after the other, each on fresh
//! directories, then the table of absolute figures and ratios.
//!
//! Per engine: N single inserts (one transaction each) into a fresh database; N batched inserts
//! (1,000 per transaction) into another, which then serves the reads, the unindexed scan
//! (median of 3), the updates and transactions, and after a close its bytes on disk and its
//! open time (median of 3, each open followed by one `_id` lookup); last, a third database
//! with fsync per commit for the write workloads at equal durability with PoloDB.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::engine::{Engine, KINDS, Kind, Tier, disk_bytes};
use crate::person::{self, RANGE_WIDTH};

/// Documents per batched insert.
pub const BATCH: usize = 1_000;
/// PoloDB's single inserts in the buffered tier (each one fsyncs: about 4 ms here).
const POLODB_SINGLE_MAX: i64 = 2_000;
/// Operations of each write workload when every commit fsyncs.
const SYNCED_OPS: usize = 300;
/// Range queries PoloDB runs (each one scans the collection: no range use of its indexes).
const POLODB_RANGE_QUERIES: usize = 5;
/// Scans timed per engine (the median is reported).
const SCAN_RUNS: usize = 3;

/// The run's sizes, from the environment.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Documents (`DOCDB_BENCH_DOCS`, default 100,000).
    pub count: i64,
    /// Operations of each per-operation workload (`DOCDB_BENCH_OPS`, default 10,000).
    pub ops: usize,
}

impl Config {
    pub fn from_env() -> Config {
        let read = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
        };
        let config = Config {
            count: read("DOCDB_BENCH_DOCS", 100_000) as i64,
            ops: read("DOCDB_BENCH_OPS", 10_000) as usize,
        };
        assert!(config.count >= 1_000, "DOCDB_BENCH_DOCS below 1,000");
        assert!(
            config.ops >= 10 && config.ops.is_multiple_of(10),
            "DOCDB_BENCH_OPS: a multiple of 10"
        );
        config
    }
}

/// How a row's figures are shown and compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Nanoseconds per operation; lower is better.
    Time,
    /// Bytes; lower is better.
    Bytes,
}

/// The rows of the table: key, label, unit.
const ROWS: [(&str, &str, Unit); 13] = [
    ("insert_single", "insert N single, per doc", Unit::Time),
    ("insert_batched", "insert N batched (1,000/txn), per doc", Unit::Time),
    ("find_id", "find by _id", Unit::Time),
    ("find_name", "indexed equality (name)", Unit::Time),
    ("find_range", "indexed range of 100 (score)", Unit::Time),
    ("scan", "unindexed filtered scan over N", Unit::Time),
    ("update", "update by _id", Unit::Time),
    ("txn10", "10-document transaction", Unit::Time),
    ("open", "open N-doc db + first _id read", Unit::Time),
    ("bytes", "bytes on disk after close", Unit::Bytes),
    ("sync_insert", "fsync tier: insert single, per doc", Unit::Time),
    ("sync_update", "fsync tier: update by _id", Unit::Time),
    ("sync_txn10", "fsync tier: 10-document transaction", Unit::Time),
];

/// Rows whose PoloDB figure is at a stronger durability than the others' (it always fsyncs).
const POLODB_FSYNCS: [&str; 4] = ["insert_single", "insert_batched", "update", "txn10"];

/// One engine's figures by row key.
type Figures = BTreeMap<&'static str, f64>;

/// Nanoseconds per operation.
fn per_op(elapsed: Duration, ops: u64) -> f64 {
    assert!(ops > 0, "no operations");
    elapsed.as_nanos() as f64 / ops as f64
}

/// Records and logs one timed workload.
fn record(figures: &mut Figures, kind: Kind, key: &'static str, elapsed: Duration, ops: u64) {
    let nanos = per_op(elapsed, ops);
    println!("  {} {key}: {ops} ops in {elapsed:.3?}, {} per op", kind.name(), time(nanos));
    figures.insert(key, nanos);
}

/// A time for the table.
pub fn time(nanos: f64) -> String {
    match nanos {
        n if n < 10_000.0 => format!("{n:.0} ns"),
        n if n < 10_000_000.0 => format!("{:.1} µs", n / 1e3),
        n if n < 10_000_000_000.0 => format!("{:.1} ms", n / 1e6),
        n => format!("{:.1} s", n / 1e9),
    }
}

/// N single inserts into a fresh database (PoloDB: at most `POLODB_SINGLE_MAX`).
fn measure_single(kind: Kind, config: Config, figures: &mut Figures) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, _) = kind.open(dir.path(), Tier::Buffered);
    engine.create_indexes();
    let count =
        if kind == Kind::PoloDb { config.count.min(POLODB_SINGLE_MAX) } else { config.count };
    let elapsed = engine.insert_single(0..count, config.count);
    assert_eq!(engine.count(), count as u64, "{} single inserts", kind.name());
    record(figures, kind, "insert_single", elapsed, count as u64);
    println!("  {} after single inserts: {}", kind.name(), engine.diagnostics());
    engine.close();
}

/// The read workloads on a loaded database; the scan's document count.
fn measure_reads(
    kind: Kind,
    config: Config,
    engine: &mut dyn Engine,
    figures: &mut Figures,
) -> u64 {
    let ids = person::draws(1, config.ops, config.count);
    let (elapsed, found) = engine.find_by_id(&ids);
    assert_eq!(found, ids.len() as u64, "{} find by _id", kind.name());
    record(figures, kind, "find_id", elapsed, found);
    let (elapsed, returned) = engine.find_by_name(&ids);
    assert_eq!(returned, ids.len() as u64, "{} find by name", kind.name());
    record(figures, kind, "find_name", elapsed, returned);
    let queries = if kind == Kind::PoloDb { POLODB_RANGE_QUERIES } else { config.ops.min(1_000) };
    let starts = person::draws(2, queries, config.count - RANGE_WIDTH);
    let (elapsed, returned) = engine.find_score_range(&starts);
    assert_eq!(returned, queries as u64 * RANGE_WIDTH as u64, "{} range", kind.name());
    record(figures, kind, "find_range", elapsed, queries as u64);
    let mut scans: Vec<(Duration, u64)> = (0..SCAN_RUNS).map(|_| engine.scan()).collect();
    scans.sort();
    let (elapsed, returned) = scans[SCAN_RUNS / 2];
    assert!(scans.iter().all(|scan| scan.1 == returned) && returned > 0, "scan counts");
    println!("  {} scan returned {returned} documents", kind.name());
    record(figures, kind, "scan", elapsed, 1);
    returned
}

/// Updates and transactions in `tier`, under the row keys `keys`.
fn measure_writes(
    kind: Kind,
    config: Config,
    engine: &mut dyn Engine,
    figures: &mut Figures,
    keys: [&'static str; 2],
    ops: usize,
) {
    let ids = person::draws(3, ops, config.count);
    let (elapsed, matched) = engine.update_by_id(&ids, 1);
    assert_eq!(matched, ops as u64, "{} updates", kind.name());
    record(figures, kind, keys[0], elapsed, matched);
    let ids = person::draws(4, ops, config.count);
    let (elapsed, matched) = engine.transactions(&ids, 2);
    assert_eq!(matched, ops as u64, "{} transactions", kind.name());
    record(figures, kind, keys[1], elapsed, matched / 10);
}

/// Opens the closed database in `dir` three times; the median open plus first read.
fn measure_open(kind: Kind, config: Config, dir: &Path, figures: &mut Figures) {
    let mut opens = Vec::new();
    for round in 0..3 {
        let (mut engine, open) = kind.open(dir, Tier::Buffered);
        let (first_read, found) = engine.find_by_id(&[config.count / 2 + round]);
        assert_eq!(found, 1, "{} first read", kind.name());
        opens.push(open + first_read);
        engine.close();
    }
    opens.sort();
    record(figures, kind, "open", opens[1], 1);
}

/// Batched load, then reads, writes, close, bytes and open time; the scan's count.
fn measure_loaded(kind: Kind, config: Config, figures: &mut Figures) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, _) = kind.open(dir.path(), Tier::Buffered);
    engine.create_indexes();
    let elapsed = engine.insert_batched(0..config.count, config.count, BATCH);
    assert_eq!(engine.count(), config.count as u64, "{} batched inserts", kind.name());
    record(figures, kind, "insert_batched", elapsed, config.count as u64);
    engine.settle();
    println!("  {} after load and settle: {}", kind.name(), engine.diagnostics());
    let scanned = measure_reads(kind, config, engine.as_mut(), figures);
    let ops = if kind == Kind::PoloDb { SYNCED_OPS } else { config.ops };
    measure_writes(kind, config, engine.as_mut(), figures, ["update", "txn10"], ops);
    println!("  {} after writes: {}", kind.name(), engine.diagnostics());
    engine.close();
    let bytes = disk_bytes(dir.path());
    println!("  {} bytes on disk: {bytes}", kind.name());
    figures.insert("bytes", bytes as f64);
    measure_open(kind, config, dir.path(), figures);
    scanned
}

/// The write workloads with an fsync per commit, on a small fresh database.
fn measure_synced(kind: Kind, figures: &mut Figures) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, _) = kind.open(dir.path(), Tier::Synced);
    engine.create_indexes();
    let count = SYNCED_OPS as i64 * 10;
    engine.insert_batched(0..count, count, BATCH);
    let elapsed = engine.insert_single(count..count + SYNCED_OPS as i64, count + SYNCED_OPS as i64);
    record(figures, kind, "sync_insert", elapsed, SYNCED_OPS as u64);
    let config = Config { count, ops: SYNCED_OPS };
    measure_writes(
        kind,
        config,
        engine.as_mut(),
        figures,
        ["sync_update", "sync_txn10"],
        SYNCED_OPS,
    );
    println!("  {} after the fsync tier: {}", kind.name(), engine.diagnostics());
    engine.close();
}

/// The whole report: every engine, then the table.
pub fn run(config: Config) {
    let mut encoded = Vec::new();
    person::person(1, config.count).bson().to_writer(&mut encoded).expect("bson");
    let size = encoded.len();
    println!("docdb-bench report: N = {} documents of about {size} bytes (BSON)", config.count);
    for kind in KINDS.into_iter().filter(|kind| kind.available()) {
        println!("  {} durability: {}", kind.name(), kind.durability(Tier::Buffered));
    }
    let mut all: Vec<Figures> = Vec::new();
    let mut scans = Vec::new();
    for kind in KINDS {
        println!("{}:", kind.name());
        if !kind.available() {
            println!("  not in this build (feature `polodb`)");
            all.push(Figures::new());
            continue;
        }
        let mut figures = Figures::new();
        measure_single(kind, config, &mut figures);
        scans.push(measure_loaded(kind, config, &mut figures));
        measure_synced(kind, &mut figures);
        all.push(figures);
    }
    assert!(scans.iter().all(|&scan| scan == scans[0]), "scan counts differ: {scans:?}");
    print_table(config, &all);
}

/// One cell of the table.
fn cell(value: Option<f64>, unit: Unit) -> String {
    match (value, unit) {
        (None, _) => "-".to_string(),
        (Some(nanos), Unit::Time) => time(nanos),
        (Some(bytes), Unit::Bytes) => format!("{:.1} MB", bytes / 1e6),
    }
}

/// Prints the table: figures per engine, then peer/docdb (above 1: docdb faster or smaller).
pub fn print_table(config: Config, all: &[Figures]) {
    println!();
    println!(
        "N = {}; ratios are peer/docdb: above 1 means docdb is faster (smaller)",
        config.count
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>13} {:>13}",
        "workload", "docdb", "polodb", "sqlite", "polodb/docdb", "sqlite/docdb"
    );
    for (key, label, unit) in ROWS {
        let values: Vec<Option<f64>> =
            all.iter().map(|figures| figures.get(key).copied()).collect();
        let ratio = |peer: usize| match (values[0], values[peer]) {
            (Some(ours), Some(theirs)) if ours > 0.0 => format!("{:.2}x", theirs / ours),
            _ => "-".to_string(),
        };
        let mark = if POLODB_FSYNCS.contains(&key) { "*" } else { "" };
        println!(
            "{label:<40} {:>10} {:>10} {:>10} {:>13} {:>13}",
            cell(values[0], unit),
            cell(values[1], unit),
            cell(values[2], unit),
            format!("{}{mark}", ratio(1)),
            ratio(2)
        );
    }
    println!("* PoloDB 5.3.0 fsyncs every commit (no setting turns it off); docdb and SQLite do");
    println!(
        "  not in these rows. The fsync-tier rows compare all three with an fsync per commit."
    );
}
