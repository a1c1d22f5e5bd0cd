//! PoloDB 5.3.0 (`polodb_core`, on RocksDB) on real files.
//!
//! PoloDB has no durability setting: every transaction it begins, including the one around each
//! auto-commit call, gets RocksDB write options with `sync = true`
//! (`polodb_core-5.3.0/db/rocksdb_transaction.rs`, `RocksDBTransactionInner::new`), so every
//! commit fsyncs the WAL. Its `Config` is stored but never reaches RocksDB, which it opens with
//! default options (`db/rocksdb_wrapper.rs`). Its planner uses an index only for equality
//! (`vm/codegen.rs`, `try_query_by_index`): a range on an indexed field scans the collection.

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use polodb_core::bson::{Document, doc};
use polodb_core::{CollectionT, Database, IndexModel};

use crate::engine::Engine;
use crate::person::{self, RANGE_WIDTH, SCAN_AGE_MIN, SCAN_CITY};

const COLLECTION: &str = "people";

/// An open PoloDB.
pub struct PoloDbEngine {
    db: Database,
}

impl PoloDbEngine {
    /// Opens `dir/polodb`; the time of the open.
    pub fn open(dir: &Path) -> (Box<dyn Engine>, Duration) {
        let start = Instant::now();
        let db = Database::open_path(dir.join("polodb")).expect("open polodb");
        (Box::new(PoloDbEngine { db }), start.elapsed())
    }

    /// Runs `find` for each filter; documents returned.
    fn find_all(&mut self, filters: Vec<Document>) -> (Duration, u64) {
        let people = self.db.collection::<Document>(COLLECTION);
        let start = Instant::now();
        let mut returned = 0;
        for filter in filters {
            for document in people.find(filter).run().expect("find") {
                document.expect("document");
                returned += 1;
            }
        }
        (start.elapsed(), returned)
    }

    /// (filter, update) pairs that set `address.street` of each of `ids`.
    fn street_updates(ids: &[i64], round: u64) -> Vec<(Document, Document)> {
        let street = |position| person::updated_street(round, position);
        let pair = |(position, id): (usize, &i64)| {
            (doc! {"_id": *id}, doc! {"$set": {"address.street": street(position)}})
        };
        ids.iter().enumerate().map(pair).collect()
    }
}

impl Engine for PoloDbEngine {
    fn create_indexes(&mut self) {
        let people = self.db.collection::<Document>(COLLECTION);
        for keys in [doc! {"name": 1}, doc! {"score": 1}] {
            people.create_index(IndexModel { keys, options: None }).expect("create index");
        }
    }

    fn insert_single(&mut self, ids: Range<i64>, count: i64) -> Duration {
        let documents: Vec<Document> = ids.map(|id| person::person(id, count).polodb()).collect();
        let people = self.db.collection::<Document>(COLLECTION);
        let start = Instant::now();
        for document in &documents {
            people.insert_one(document).expect("insert");
        }
        start.elapsed()
    }

    fn insert_batched(&mut self, ids: Range<i64>, count: i64, batch: usize) -> Duration {
        let documents: Vec<Document> = ids.map(|id| person::person(id, count).polodb()).collect();
        let people = self.db.collection::<Document>(COLLECTION);
        let start = Instant::now();
        for chunk in documents.chunks(batch) {
            let result = people.insert_many(chunk).expect("insert many");
            assert_eq!(result.inserted_ids.len(), chunk.len());
        }
        start.elapsed()
    }

    fn count(&mut self) -> u64 {
        self.db.collection::<Document>(COLLECTION).count_documents().expect("count")
    }

    fn find_by_id(&mut self, ids: &[i64]) -> (Duration, u64) {
        let filters: Vec<Document> = ids.iter().map(|id| doc! {"_id": *id}).collect();
        let people = self.db.collection::<Document>(COLLECTION);
        let start = Instant::now();
        let mut found = 0;
        for filter in filters {
            found += u64::from(people.find_one(filter).expect("find").is_some());
        }
        (start.elapsed(), found)
    }

    fn find_by_name(&mut self, ids: &[i64]) -> (Duration, u64) {
        self.find_all(ids.iter().map(|id| doc! {"name": person::name(*id)}).collect())
    }

    fn find_score_range(&mut self, starts: &[i64]) -> (Duration, u64) {
        let filter = |start: &i64| doc! {"score": {"$gte": *start, "$lt": start + RANGE_WIDTH}};
        self.find_all(starts.iter().map(filter).collect())
    }

    fn scan(&mut self) -> (Duration, u64) {
        self.find_all(vec![doc! {"city": SCAN_CITY, "age": {"$gte": SCAN_AGE_MIN}}])
    }

    fn update_by_id(&mut self, ids: &[i64], round: u64) -> (Duration, u64) {
        let updates = Self::street_updates(ids, round);
        let people = self.db.collection::<Document>(COLLECTION);
        let start = Instant::now();
        let mut matched = 0;
        for (filter, update) in updates {
            matched += people.update_one(filter, update).expect("update").matched_count;
        }
        (start.elapsed(), matched)
    }

    fn transactions(&mut self, ids: &[i64], round: u64) -> (Duration, u64) {
        assert!(ids.len().is_multiple_of(10), "transactions of 10");
        let mut updates = Self::street_updates(ids, round).into_iter();
        let groups: Vec<Vec<_>> =
            (0..ids.len() / 10).map(|_| updates.by_ref().take(10).collect()).collect();
        let start = Instant::now();
        let mut matched = 0;
        for group in groups {
            let txn = self.db.start_transaction().expect("begin");
            let people = txn.collection::<Document>(COLLECTION);
            for (filter, update) in group {
                let result = people.update_one(filter, update);
                matched += result.expect("update").matched_count;
            }
            txn.commit().expect("commit");
        }
        (start.elapsed(), matched)
    }

    /// RocksDB exposes no settled state through PoloDB: a fixed 3 s for its background work.
    fn settle(&mut self) {
        std::thread::sleep(Duration::from_secs(3));
    }

    /// Dropping the database waits for RocksDB's compactions, flushes the memtable and the WAL.
    fn close(self: Box<Self>) {
        drop(self);
    }
}
