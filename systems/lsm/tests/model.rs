//! Model test: the store against a `BTreeMap`, under random operations.
//!
//! Goal: for any sequence of puts, deletes, batches, reads, forward and reverse range scans,
//! runs of seeks (which trigger read-driven compactions), snapshots, flushes, compactions and
//! reopens, the store answers exactly like a `BTreeMap` (and each snapshot like a copy of the
//! map taken when it was made). Method: proptest draws the operations; each case runs on a
//! fresh one-node `World` with tiny store options so that flushes, compactions and
//! multi-level reads happen within a few dozen writes.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound;

use common::{run, small_options, world};
use lsm::{Db, Durability, WriteBatch};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Seeks per `Op::Seeks`: two and a half times a small table's seek allowance.
const SEEK_RUN_COUNT: u32 = 250;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    Batch(Vec<(u8, Option<u16>)>),
    Get(u8),
    Range(u8, u8, bool),
    /// A run of short seeks from key `.0` on, stepping by `.1`: enough to spend a level-0
    /// table's seek allowance, so read-triggered compactions run among the checked reads.
    Seeks(u8, u8),
    Prefix(u8, bool),
    TakeSnapshot,
    SnapshotGet(usize, u8),
    SnapshotRange(usize, u8, u8),
    DropSnapshot(usize),
    Flush,
    Compact(u8, u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..48, any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0u8..48).prop_map(Op::Delete),
        2 => prop::collection::vec((0u8..48, prop::option::of(any::<u16>())), 1..8)
            .prop_map(Op::Batch),
        4 => (0u8..50).prop_map(Op::Get),
        2 => (0u8..50, 0u8..50, any::<bool>()).prop_map(|(a, b, r)| Op::Range(a, b, r)),
        1 => (0u8..50, 1u8..50).prop_map(|(start, step)| Op::Seeks(start, step)),
        1 => (0u8..5, any::<bool>()).prop_map(|(p, r)| Op::Prefix(p, r)),
        1 => Just(Op::TakeSnapshot),
        2 => (0usize..4, 0u8..50).prop_map(|(s, k)| Op::SnapshotGet(s, k)),
        1 => (0usize..4, 0u8..50, 0u8..50).prop_map(|(s, a, b)| Op::SnapshotRange(s, a, b)),
        1 => (0usize..4).prop_map(Op::DropSnapshot),
        1 => Just(Op::Flush),
        1 => (0u8..50, 0u8..50).prop_map(|(a, b)| Op::Compact(a, b)),
        1 => Just(Op::Reopen),
    ]
}

fn key(index: u8) -> Vec<u8> {
    format!("k{index:02}").into_bytes()
}

/// A value long enough to fill blocks, unique per (key, draw).
fn value(index: u8, draw: u16) -> Vec<u8> {
    format!("value-{index}-{draw}-{}", "x".repeat(usize::from(draw % 40))).into_bytes()
}

/// Keys and value lengths, readable in a failure message.
fn show(items: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).chars().take(20).collect();
    items.iter().map(|(k, v)| (text(k), text(v))).collect()
}

fn model_range(model: &Model, low: &[u8], high: &[u8], reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    if low > high {
        return Vec::new();
    }
    let items = model.range::<[u8], _>((Bound::Included(low), Bound::Excluded(high)));
    let mut items: Vec<_> = items.map(|(k, v)| (k.clone(), v.clone())).collect();
    if reverse {
        items.reverse();
    }
    items
}

type SimSnapshot = lsm::Snapshot<sim::world::SimEnv>;

/// The store under test and its model.
struct Harness {
    env: sim::world::SimEnv,
    db: Db<sim::world::SimEnv>,
    model: Model,
    snapshots: Vec<(SimSnapshot, Model)>,
}

impl Harness {
    /// Applies a write, flush, compaction or reopen to both the store and the model.
    async fn change(&mut self, op: Op) {
        let (db, model) = (&self.db, &mut self.model);
        match op {
            Op::Put(k, v) => {
                db.put(&key(k), &value(k, v), Durability::Buffered).await.expect("put");
                model.insert(key(k), value(k, v));
            }
            Op::Delete(k) => {
                db.delete(&key(k), Durability::Sync).await.expect("delete");
                model.remove(&key(k));
            }
            Op::Batch(items) => {
                let mut batch = WriteBatch::new();
                for (k, v) in items {
                    if let Some(v) = v {
                        batch.put(key(k), value(k, v));
                        model.insert(key(k), value(k, v));
                    } else {
                        batch.delete(key(k));
                        model.remove(&key(k));
                    }
                }
                db.write(batch, Durability::Sync).await.expect("batch");
            }
            Op::TakeSnapshot => self.snapshots.push((db.snapshot(), model.clone())),
            Op::DropSnapshot(index) => {
                if index < self.snapshots.len() {
                    self.snapshots.remove(index);
                }
            }
            Op::Flush => db.flush().await.expect("flush"),
            Op::Compact(a, b) => db.compact_range(key(a)..=key(b)).await.expect("compact"),
            Op::Reopen => {
                self.snapshots.clear();
                self.db.close().await.expect("close");
                let reopened = Db::open(self.env.clone(), "db", small_options()).await;
                self.db = reopened.expect("reopen");
            }
            read => self.read(read).await,
        }
    }

    /// Checks a read against the model.
    async fn read(&self, op: Op) {
        let (db, model) = (&self.db, &self.model);
        match op {
            Op::Get(k) => {
                let got = db.get(&key(k)).await.expect("get");
                assert_eq!(got.as_ref(), model.get(&key(k)), "get {k}");
            }
            Op::Range(a, b, reverse) => {
                let (low, high) = (key(a), key(b));
                let mut iter = if reverse {
                    db.range_rev(low.clone()..high.clone()).await.expect("range")
                } else {
                    db.range(low.clone()..high.clone()).await.expect("range")
                };
                let got = iter.collect_max(1000).await.expect("scan");
                let expected = model_range(model, &low, &high, reverse);
                assert_eq!(show(&got), show(&expected), "range {a}..{b}");
            }
            Op::Seeks(start, step) => self.check_seeks(start, step).await,
            Op::Prefix(p, reverse) => self.check_prefix(p, reverse).await,
            Op::SnapshotGet(index, k) => {
                if let Some((snapshot, frozen)) = self.snapshots.get(index) {
                    let got = snapshot.get(&key(k)).await.expect("snapshot get");
                    assert_eq!(got.as_ref(), frozen.get(&key(k)), "snapshot get {k}");
                }
            }
            Op::SnapshotRange(index, a, b) => {
                if let Some((snapshot, frozen)) = self.snapshots.get(index) {
                    let (low, high) = (key(a), key(b));
                    let mut iter = snapshot.range(low.clone()..high.clone()).await.expect("range");
                    let got = iter.collect_max(1000).await.expect("scan");
                    let expected = model_range(frozen, &low, &high, false);
                    assert_eq!(show(&got), show(&expected), "snapshot range {a}..{b}");
                }
            }
            other => unreachable!("{other:?} is not a read"),
        }
    }

    /// `SEEK_RUN_COUNT` seeks, each reading up to 3 pairs. A run spends a small level-0
    /// table's allowance (100 seeks) when level 0 and a deeper level both hold tables; in
    /// 600 cases, 85 ran at least one read-triggered compaction after their last reopen.
    async fn check_seeks(&self, start: u8, step: u8) {
        for index in 0..SEEK_RUN_COUNT {
            let from = key(((u32::from(start) + index * u32::from(step)) % 50) as u8);
            let mut iter = self.db.range(from.clone()..).await.expect("seek");
            let got = iter.collect_max(3).await.expect("scan");
            let expected: Vec<_> = self
                .model
                .range(from.clone()..)
                .take(3)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(show(&got), show(&expected), "seek {} of a run", index);
        }
    }

    async fn check_prefix(&self, p: u8, reverse: bool) {
        let prefix = format!("k{p}").into_bytes();
        let mut iter = if reverse {
            self.db.prefix_rev(&prefix).await.expect("prefix")
        } else {
            self.db.prefix(&prefix).await.expect("prefix")
        };
        let got = iter.collect_max(1000).await.expect("scan");
        let mut expected: Vec<_> = self
            .model
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if reverse {
            expected.reverse();
        }
        assert_eq!(show(&got), show(&expected), "prefix {p}");
    }
}

async fn check_ops(env: sim::world::SimEnv, ops: Vec<Op>) {
    let db = Db::open(env.clone(), "db", small_options()).await.expect("open");
    let mut harness = Harness { env, db, model: Model::new(), snapshots: Vec::new() };
    for op in ops {
        harness.change(op).await;
    }
    let all = harness.db.iter().await.expect("iter").collect_max(1000).await.expect("scan");
    let expected: Vec<_> = harness.model.into_iter().collect();
    assert_eq!(show(&all), show(&expected), "final scan");
}

/// Cases per run: `PROPTEST_CASES`, or 64.
fn case_count() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|text| text.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: case_count(), ..ProptestConfig::default() })]

    #[test]
    fn store_matches_btreemap_model(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let (world, node) = world(seed);
        run(&world, node, |env| check_ops(env, ops));
    }
}
