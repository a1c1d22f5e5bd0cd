//! docdb beside PoloDB 5.3.0 and SQLite (rusqlite 0.43, bundled) on real files: issue 15.
//!
//! `cargo bench` here first runs the report (plain timings of every workload, bulk ones
//! included, and a table of ratios; `report::run`), then criterion's per-operation workloads
//! (find by `_id`, indexed equality, indexed range of 100, update by `_id`, 10-document
//! transaction) on one database per engine loaded with N documents, and prints their ratios.
//! `-- report-only` runs only the report; a criterion filter (`-- find_by_id`) only criterion.
//! `DOCDB_BENCH_DOCS` sets N (default 100,000), `DOCDB_BENCH_OPS` the report's operations per
//! workload (default 10,000). Use `ci/bench-docdb`, which installs libclang for RocksDB first.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use docdb_bench::engine::{Engine, KINDS, Kind, Tier};
use docdb_bench::person::{self, RANGE_WIDTH};
use docdb_bench::report::{self, BATCH, Config};

/// One loaded database per engine in this build, in `KINDS` order, with their directories.
struct Loaded {
    engines: Vec<Option<Box<dyn Engine>>>,
    _dirs: Vec<tempfile::TempDir>,
}

fn load(config: Config) -> Loaded {
    let (mut engines, mut dirs) = (Vec::new(), Vec::new());
    for kind in KINDS {
        if !kind.available() {
            engines.push(None);
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut engine, _) = kind.open(dir.path(), Tier::Buffered);
        engine.create_indexes();
        engine.insert_batched(0..config.count, config.count, BATCH);
        assert_eq!(engine.count(), config.count as u64, "{} load", kind.name());
        engine.settle();
        engines.push(Some(engine));
        dirs.push(dir);
    }
    Loaded { engines, _dirs: dirs }
}

/// Total time and operations per (workload, engine), summed over every criterion call.
type Totals = RefCell<BTreeMap<(&'static str, usize), (Duration, u64)>>;

/// A per-operation workload: runs `iters` operations (or `iters` transactions) on an engine,
/// drawing arguments from the round number; (time, documents counted).
type Workload = fn(&mut dyn Engine, u64, usize, i64) -> (Duration, u64);

fn find_by_id(engine: &mut dyn Engine, round: u64, iters: usize, count: i64) -> (Duration, u64) {
    let ids = person::draws(round, iters, count);
    let (elapsed, found) = engine.find_by_id(&ids);
    assert_eq!(found, iters as u64);
    (elapsed, found)
}

fn find_by_name(engine: &mut dyn Engine, round: u64, iters: usize, count: i64) -> (Duration, u64) {
    let ids = person::draws(round, iters, count);
    let (elapsed, returned) = engine.find_by_name(&ids);
    assert_eq!(returned, iters as u64);
    (elapsed, returned)
}

fn find_range(engine: &mut dyn Engine, round: u64, iters: usize, count: i64) -> (Duration, u64) {
    let starts = person::draws(round, iters, count - RANGE_WIDTH);
    let (elapsed, returned) = engine.find_score_range(&starts);
    assert_eq!(returned, iters as u64 * RANGE_WIDTH as u64);
    (elapsed, returned)
}

fn update(engine: &mut dyn Engine, round: u64, iters: usize, count: i64) -> (Duration, u64) {
    let ids = person::draws(round, iters, count);
    let (elapsed, matched) = engine.update_by_id(&ids, round);
    assert_eq!(matched, iters as u64);
    (elapsed, matched)
}

fn txn10(engine: &mut dyn Engine, round: u64, iters: usize, count: i64) -> (Duration, u64) {
    let ids = person::draws(round, iters * 10, count);
    let (elapsed, matched) = engine.transactions(&ids, round);
    assert_eq!(matched, iters as u64 * 10);
    (elapsed, matched)
}

const WORKLOADS: [(&str, Workload); 5] = [
    ("find_by_id", find_by_id),
    ("indexed_equality", find_by_name),
    ("indexed_range_100", find_range),
    ("update_by_id", update),
    ("transaction_10_docs", txn10),
];

fn per_operation(criterion: &mut Criterion, config: Config, totals: &Totals) {
    let mut loaded: Option<Loaded> = None;
    let mut round = 1_000;
    for (name, workload) in WORKLOADS {
        let mut group = criterion.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        for (index, kind) in KINDS.into_iter().enumerate() {
            if !kind.available() {
                continue;
            }
            group.bench_function(kind.name(), |bencher| {
                let engine = &mut loaded.get_or_insert_with(|| load(config)).engines[index];
                let engine = engine.as_mut().expect("loaded");
                bencher.iter_custom(|iters| {
                    round += 1;
                    let (elapsed, _) =
                        workload(engine.as_mut(), round, iters as usize, config.count);
                    let mut totals = totals.borrow_mut();
                    let total = totals.entry((name, index)).or_default();
                    *total = (total.0 + elapsed, total.1 + iters);
                    elapsed
                });
            });
        }
        group.finish();
    }
}

fn print_ratios(config: Config, totals: &Totals) {
    println!();
    println!(
        "criterion, N = {}: mean per operation over every call (warm-up included)",
        config.count
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>13} {:>13}",
        "workload", "docdb", "polodb", "sqlite", "polodb/docdb", "sqlite/docdb"
    );
    let totals = totals.borrow();
    for (name, _) in WORKLOADS {
        let nanos: Vec<Option<f64>> = (0..KINDS.len())
            .map(|index| {
                totals.get(&(name, index)).map(|(time, ops)| time.as_nanos() as f64 / *ops as f64)
            })
            .collect();
        let show = |value: Option<f64>| value.map_or("-".to_string(), report::time);
        let ratio = |peer: usize| match (nanos[0], nanos[peer]) {
            (Some(ours), Some(theirs)) => format!("{:.2}x", theirs / ours),
            _ => "-".to_string(),
        };
        let mark =
            if name.starts_with("update") || name.starts_with("transaction") { "*" } else { "" };
        println!(
            "{name:<22} {:>10} {:>10} {:>10} {:>13} {:>13}",
            show(nanos[0]),
            show(nanos[1]),
            show(nanos[2]),
            format!("{}{mark}", ratio(1)),
            ratio(2)
        );
    }
    println!(
        "* PoloDB fsyncs every commit; docdb ({}) and SQLite ({}) do not.",
        Kind::DocDb.durability(Tier::Buffered),
        Kind::Sqlite.durability(Tier::Buffered)
    );
}

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let report_only = arguments.iter().any(|argument| argument == "report-only");
    let filtered = arguments.iter().any(|argument| !argument.starts_with('-'));
    let config = Config::from_env();
    if report_only || !filtered {
        report::run(config);
    }
    if report_only {
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let totals = Totals::default();
    per_operation(&mut criterion, config, &totals);
    criterion.final_summary();
    print_ratios(config, &totals);
}
