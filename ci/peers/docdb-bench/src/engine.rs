//! The interface the three engines are driven through, and which engine and durability.
//!
//! Every workload method takes all of its arguments up front, builds its inputs in the
//! engine's own form, and times only the loop of operations itself (docdb's runs inside one
//! `block_on`, so entering the runtime is not what is measured). Each returns the elapsed time
//! and a count of what it did (documents found, returned or matched), which the callers check,
//! so no engine is measured doing nothing.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

/// How durable a commit is when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Written to the OS (survives a process crash), not fsynced per commit.
    Buffered,
    /// fsynced before the commit returns (survives a power loss).
    Synced,
}

/// The engines, in the order of every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    DocDb,
    PoloDb,
    Sqlite,
}

/// Every engine, in table order.
pub const KINDS: [Kind; 3] = [Kind::DocDb, Kind::PoloDb, Kind::Sqlite];

impl Kind {
    /// The engine's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::DocDb => "docdb",
            Kind::PoloDb => "polodb",
            Kind::Sqlite => "sqlite",
        }
    }

    /// Whether this engine is in this build (PoloDB only with the `polodb` feature).
    pub fn available(self) -> bool {
        self != Kind::PoloDb || cfg!(feature = "polodb")
    }

    /// Whether this engine can run `tier` as asked: PoloDB 5.3.0 fsyncs every commit whatever
    /// it is told (`db/rocksdb_transaction.rs` sets `sync` on every transaction's write options).
    pub fn honours(self, tier: Tier) -> bool {
        self != Kind::PoloDb || tier == Tier::Synced
    }

    /// The durability settings used for `tier`, as printed with the results.
    pub fn durability(self, tier: Tier) -> &'static str {
        match (self, tier) {
            (Kind::DocDb, Tier::Buffered) => {
                "Durability::Buffered (WAL written per commit, no fsync)"
            }
            (Kind::DocDb, Tier::Synced) => "Durability::Sync (WAL fsynced per commit)",
            (Kind::PoloDb, _) => "RocksDB WAL fsynced per commit (sync=true, hard-coded in 5.3.0)",
            (Kind::Sqlite, Tier::Buffered) => "journal_mode=WAL, synchronous=NORMAL",
            (Kind::Sqlite, Tier::Synced) => "journal_mode=WAL, synchronous=FULL",
        }
    }

    /// Opens (or creates) this engine's database under `dir`; the handle and the time the open
    /// itself took.
    pub fn open(self, dir: &Path, tier: Tier) -> (Box<dyn Engine>, Duration) {
        match self {
            Kind::DocDb => crate::docdb_engine::DocDbEngine::open(dir, tier),
            #[cfg(feature = "polodb")]
            Kind::PoloDb => crate::polodb_engine::PoloDbEngine::open(dir),
            #[cfg(not(feature = "polodb"))]
            Kind::PoloDb => panic!("built without the `polodb` feature"),
            Kind::Sqlite => crate::sqlite_engine::SqliteEngine::open(dir, tier),
        }
    }
}

/// One open database with the benchmark's collection.
pub trait Engine {
    /// Creates the indexes on `name` and `score` (before the documents go in).
    fn create_indexes(&mut self);
    /// Inserts documents `ids` of a collection of `count`, one transaction each.
    fn insert_single(&mut self, ids: Range<i64>, count: i64) -> Duration;
    /// Inserts documents `ids` of a collection of `count`, `batch` per transaction.
    fn insert_batched(&mut self, ids: Range<i64>, count: i64, batch: usize) -> Duration;
    /// The number of documents.
    fn count(&mut self) -> u64;
    /// Finds each `_id` of `ids`; how many were found.
    fn find_by_id(&mut self, ids: &[i64]) -> (Duration, u64);
    /// Finds by the indexed `name` of each of `ids`; documents returned.
    fn find_by_name(&mut self, ids: &[i64]) -> (Duration, u64);
    /// Finds `score` in `start..start + RANGE_WIDTH` for each start; documents returned.
    fn find_score_range(&mut self, starts: &[i64]) -> (Duration, u64);
    /// The unindexed filter over every document; documents returned.
    fn scan(&mut self) -> (Duration, u64);
    /// Sets `address.street` of each `_id` in its own transaction; documents matched.
    fn update_by_id(&mut self, ids: &[i64], round: u64) -> (Duration, u64);
    /// Transactions of 10 documents each (consecutive tens of `ids`), each setting
    /// `address.street` of its 10 by `_id` and committing; documents matched.
    fn transactions(&mut self, ids: &[i64], round: u64) -> (Duration, u64);
    /// Waits until background work after a load has finished (or a bounded time).
    fn settle(&mut self);
    /// What the engine can tell about itself (fsync counts, shape), for the log.
    fn diagnostics(&self) -> String {
        String::new()
    }
    /// Closes the database (flushing what the engine flushes on close).
    fn close(self: Box<Self>);
}

/// Bytes of every file under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.len() };
    }
    total
}
