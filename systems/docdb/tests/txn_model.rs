//! Model test of transactions: interleaved transactions on the database and on a serial
//! reference of snapshot isolation must agree on every read and every commit verdict.
//!
//! Goal: the snapshot, the read-your-own-writes overlay and first-committer-wins behave exactly
//! as specified. Method: proptest draws steps for up to three concurrent transaction slots over
//! four documents (begin, read, put, delete, commit, abort); the reference keeps every committed
//! version and the commit index that last wrote each key.

mod common;

use std::collections::BTreeMap;

use bson::doc;
use common::{options, run, world};
use docdb::{DocDb, Error, FindOptions, IndexSpec, Transaction};
use proptest::prelude::*;

const SLOTS: usize = 3;
const KEYS: i32 = 4;

#[derive(Clone, Debug)]
enum Step {
    Begin(usize),
    Read(usize, i32),
    Put(usize, i32, i32),
    Delete(usize, i32),
    Commit(usize),
    Abort(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let slot = 0..SLOTS;
    let key = 0..KEYS;
    prop_oneof![
        slot.clone().prop_map(Step::Begin),
        (slot.clone(), key.clone()).prop_map(|(s, k)| Step::Read(s, k)),
        (slot.clone(), key.clone(), 0..3i32).prop_map(|(s, k, v)| Step::Put(s, k, v)),
        (slot.clone(), key).prop_map(|(s, k)| Step::Delete(s, k)),
        slot.clone().prop_map(Step::Commit),
        slot.prop_map(Step::Abort),
    ]
}

/// The reference: committed states, and per open slot its snapshot and own writes.
#[derive(Default)]
struct Model {
    states: Vec<BTreeMap<i32, i32>>,
    last_writer: BTreeMap<i32, usize>,
    open: BTreeMap<usize, (usize, BTreeMap<i32, Option<i32>>)>,
}

impl Model {
    fn view(&self, slot: usize, key: i32) -> Option<i32> {
        let (snapshot, writes) = &self.open[&slot];
        match writes.get(&key) {
            Some(value) => *value,
            None => self.states[*snapshot].get(&key).copied(),
        }
    }

    fn write(&mut self, slot: usize, key: i32, value: Option<i32>) {
        if self.view(slot, key) != value {
            self.open.get_mut(&slot).expect("open").1.insert(key, value);
        }
    }

    /// `true` if the commit succeeds.
    fn commit(&mut self, slot: usize) -> bool {
        let (snapshot, writes) = self.open.remove(&slot).expect("open");
        if writes.keys().any(|key| self.last_writer.get(key).is_some_and(|&at| at > snapshot)) {
            return false;
        }
        if writes.is_empty() {
            return true;
        }
        let mut state = self.states.last().expect("initial state").clone();
        for (key, value) in writes {
            match value {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
            self.last_writer.insert(key, self.states.len());
        }
        self.states.push(state);
        true
    }
}

async fn read<E: sim::Env>(txn: &mut Transaction<E>, key: i32) -> Option<i32> {
    let output = txn
        .collection("m", "docs")
        .query(&doc! {"_id": key}, &FindOptions::default())
        .await
        .expect("read");
    output.documents.first().map(|document| document.get_i32("v").expect("v"))
}

async fn apply<E: sim::Env>(
    db: &DocDb<E>,
    txns: &mut BTreeMap<usize, Transaction<E>>,
    model: &mut Model,
    step: &Step,
) {
    match *step {
        Step::Begin(slot) if !txns.contains_key(&slot) => {
            txns.insert(slot, db.begin());
            model.open.insert(slot, (model.states.len() - 1, BTreeMap::new()));
        }
        Step::Read(slot, key) if txns.contains_key(&slot) => {
            let actual = read(txns.get_mut(&slot).expect("open"), key).await;
            assert_eq!(actual, model.view(slot, key), "slot {slot} read {key}");
        }
        Step::Put(slot, key, value) if txns.contains_key(&slot) => {
            let txn = txns.get_mut(&slot).expect("open");
            let mut collection = txn.collection("m", "docs");
            collection.replace_one(&doc! {"_id": key}, doc! {"v": value}, true).await.expect("put");
            model.write(slot, key, Some(value));
        }
        Step::Delete(slot, key) if txns.contains_key(&slot) => {
            let txn = txns.get_mut(&slot).expect("open");
            txn.collection("m", "docs").delete(&doc! {"_id": key}, false).await.expect("delete");
            model.write(slot, key, None);
        }
        Step::Commit(slot) if txns.contains_key(&slot) => {
            let result = txns.remove(&slot).expect("open").commit().await;
            let expected = model.commit(slot);
            match result {
                Ok(_) => assert!(expected, "slot {slot} committed but the model conflicts"),
                Err(Error::WriteConflict { .. }) => assert!(!expected, "slot {slot} conflicted"),
                Err(error) => panic!("commit: {error}"),
            }
        }
        Step::Abort(slot) if txns.contains_key(&slot) => {
            txns.remove(&slot).expect("open").abort();
            model.open.remove(&slot);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn transactions_match_the_snapshot_isolation_model(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        let (world, node) = world(7);
        run(&world, node, |env| async move {
            let db = DocDb::open(env, "db", options()).await.expect("open");
            // The collection exists before the transactions, so creating it is not a conflict.
            db.create_collection("m", "docs", None).await.expect("create");
            let mut model = Model { states: vec![BTreeMap::new()], ..Model::default() };
            let mut txns = BTreeMap::new();
            for step in &steps {
                apply(&db, &mut txns, &mut model, step).await;
            }
        });
    }
}

#[test]
fn unique_index_holds_under_concurrent_transactions() {
    let (world, node) = world(8);
    run(&world, node, |env| async move {
        let db = DocDb::open(env, "db", options()).await.expect("open");
        let spec = IndexSpec { keys: doc! {"email": 1}, unique: true, ..IndexSpec::default() };
        db.collection("app", "users").create_index(spec).await.expect("index");
        let mut first = db.begin();
        let mut second = db.begin();
        first
            .collection("app", "users")
            .insert_one(doc! {"_id": 1, "email": "a@x"})
            .await
            .expect("insert");
        second
            .collection("app", "users")
            .insert_one(doc! {"_id": 2, "email": "a@x"})
            .await
            .expect("insert");
        first.commit().await.expect("first commits");
        assert!(matches!(second.commit().await, Err(Error::WriteConflict { .. })));
        let third = db.collection("app", "users").insert_one(doc! {"_id": 3, "email": "a@x"}).await;
        assert!(matches!(third, Err(Error::DuplicateKey { .. })));
        assert_eq!(db.collection("app", "users").count(doc! {}).await.expect("count"), 1);
    });
}
