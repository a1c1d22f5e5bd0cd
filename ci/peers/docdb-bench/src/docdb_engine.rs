//! docdb on real files through `sim::tokio_env::TokioEnv`, on a 2-worker tokio runtime.
//!
//! Each workload runs all of its operations inside one `block_on` on the calling thread; the
//! store's background work (flushes, compactions) runs on the runtime's workers.

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use bson::{Document, doc};
use docdb::{Collection, DocDb, FindOptions, IndexSpec, Options, UpdateOptions};
use sim::tokio_env::TokioEnv;

use crate::engine::{Engine, Tier};
use crate::person::{self, RANGE_WIDTH, SCAN_AGE_MIN, SCAN_CITY};

const DATABASE: &str = "bench";
const COLLECTION: &str = "people";

/// The LSM options: those of the LSM benchmark (`systems/lsm/benches/lsm.rs`), a 32 MiB
/// block cache.
fn lsm_options() -> lsm::Options {
    lsm::Options {
        memtable_bytes_max: 8 << 20,
        block_cache_bytes: 32 << 20,
        table_bytes_target: 8 << 20,
        level1_bytes_max: 64 << 20,
        ..lsm::Options::default()
    }
}

/// An open docdb.
pub struct DocDbEngine {
    runtime: tokio::runtime::Runtime,
    db: DocDb<TokioEnv>,
    people: Collection<TokioEnv>,
}

impl DocDbEngine {
    /// Opens `dir/docdb`; the time of `DocDb::open` alone.
    pub fn open(dir: &Path, tier: Tier) -> (Box<dyn Engine>, Duration) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let durability = match tier {
            Tier::Buffered => lsm::Durability::Buffered,
            Tier::Synced => lsm::Durability::Sync,
        };
        let options = Options { lsm: lsm_options(), durability, ..Options::default() };
        let (db, elapsed) = runtime.block_on(async {
            let env = TokioEnv::new(dir);
            let start = Instant::now();
            let db = DocDb::open(env, "docdb", options).await.expect("open docdb");
            (db, start.elapsed())
        });
        let people = db.collection(DATABASE, COLLECTION);
        (Box::new(DocDbEngine { runtime, db, people }), elapsed)
    }

    /// Runs `find` for each filter; documents returned.
    fn find_all(&mut self, filters: Vec<Document>) -> (Duration, u64) {
        let people = &self.people;
        self.runtime.block_on(async {
            let start = Instant::now();
            let mut returned = 0;
            for filter in filters {
                let cursor = people.find(filter, FindOptions::default()).await.expect("find");
                returned += cursor.collect_all().len() as u64;
            }
            (start.elapsed(), returned)
        })
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

impl Engine for DocDbEngine {
    fn create_indexes(&mut self) {
        let people = &self.people;
        self.runtime.block_on(async {
            for keys in [doc! {"name": 1}, doc! {"score": 1}] {
                let spec = IndexSpec { keys, ..IndexSpec::default() };
                people.create_index(spec).await.expect("create index");
            }
        });
    }

    fn insert_single(&mut self, ids: Range<i64>, count: i64) -> Duration {
        let documents: Vec<Document> = ids.map(|id| person::person(id, count).bson()).collect();
        let people = &self.people;
        self.runtime.block_on(async {
            let start = Instant::now();
            for document in documents {
                people.insert_one(document).await.expect("insert");
            }
            start.elapsed()
        })
    }

    fn insert_batched(&mut self, ids: Range<i64>, count: i64, batch: usize) -> Duration {
        let documents: Vec<Document> = ids.map(|id| person::person(id, count).bson()).collect();
        let batches: Vec<Vec<Document>> = documents.chunks(batch).map(<[_]>::to_vec).collect();
        let people = &self.people;
        self.runtime.block_on(async {
            let start = Instant::now();
            for batch in batches {
                let result = people.insert_many(batch, true).await.expect("insert many");
                assert!(result.errors.is_empty(), "refused: {:?}", result.errors);
            }
            start.elapsed()
        })
    }

    fn count(&mut self) -> u64 {
        let people = &self.people;
        self.runtime.block_on(async { people.count(doc! {}).await.expect("count") })
    }

    fn find_by_id(&mut self, ids: &[i64]) -> (Duration, u64) {
        let filters: Vec<Document> = ids.iter().map(|id| doc! {"_id": *id}).collect();
        let people = &self.people;
        self.runtime.block_on(async {
            let start = Instant::now();
            let mut found = 0;
            for filter in filters {
                found += u64::from(people.find_one(filter, None).await.expect("find").is_some());
            }
            (start.elapsed(), found)
        })
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
        let people = &self.people;
        self.runtime.block_on(async {
            let start = Instant::now();
            let mut matched = 0;
            for (filter, update) in updates {
                let options = UpdateOptions::default();
                matched +=
                    people.update_one(filter, update, options).await.expect("update").matched_count;
            }
            (start.elapsed(), matched)
        })
    }

    fn transactions(&mut self, ids: &[i64], round: u64) -> (Duration, u64) {
        assert!(ids.len().is_multiple_of(10), "transactions of 10");
        let updates = Self::street_updates(ids, round);
        let db = &self.db;
        self.runtime.block_on(async {
            let start = Instant::now();
            let (mut matched, options) = (0, UpdateOptions::default());
            for group in updates.chunks(10) {
                let mut txn = db.begin();
                let mut people = txn.collection(DATABASE, COLLECTION);
                for (filter, update) in group {
                    let result = people.update(filter, update, &options, false).await;
                    matched += result.expect("update").matched_count;
                }
                txn.commit().await.expect("commit");
            }
            (start.elapsed(), matched)
        })
    }

    /// Until the store's flush and compaction counters and level shape stay unchanged for two
    /// seconds (at most 30 s), as the LSM benchmark settles.
    fn settle(&mut self) {
        let storage = self.db.storage();
        let shape = || {
            let stats = storage.stats();
            (stats.flush_bytes, stats.compaction_bytes, stats.level_table_counts)
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

    fn diagnostics(&self) -> String {
        let stats = self.db.storage().stats();
        format!("{} WAL fsyncs, level tables {:?}", stats.wal_sync_count, stats.level_table_counts)
    }

    fn close(self: Box<Self>) {
        let DocDbEngine { runtime, db, people } = *self;
        drop(people);
        runtime.block_on(async { db.close().await.expect("close") });
    }
}
