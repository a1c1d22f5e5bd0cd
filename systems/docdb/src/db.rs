//! `DocDb`: the database handle. Opens the LSM store, loads the catalog, hands out
//! transactions and collections, and commits: first committer wins, one commit at a time.
//!
//! Concurrency: `shared` (a short std mutex, never held across an await) holds the catalog, the
//! conflict table and the commit counter; `commit_lock` (async) serialises commits, so commit
//! numbers, LSM sequence numbers and change events follow one order.
//!
//! Invariant: `last_write[key]` is the LSM sequence of the last commit that wrote `key`, for
//! every key written after the oldest active snapshot; a commit that wrote a key another
//! transaction committed after its snapshot is refused (first committer wins).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use sim::Env;

use crate::catalog::CollectionInfo;
use crate::error::{Error, Result};
use crate::layout;
use crate::txn::{Transaction, TxnWrites};

/// How a database is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// Options of the LSM store underneath.
    pub lsm: lsm::Options,
    /// Durability of every commit (`Sync`: on disk before the commit returns).
    pub durability: lsm::Durability,
    /// Commits whose change events are kept for change streams to resume from.
    pub change_history_commits: u64,
    /// How many times an auto-commit operation is retried after a write conflict.
    pub conflict_retries_max: u32,
    /// Encryption at rest, passed down to the LSM store (it takes precedence over
    /// `lsm.encryption` when set): documents, index keys, change events, log records and table
    /// blocks are all sealed there. A wrong passphrase fails `open` with
    /// `Error::Storage(lsm::Error::WrongPassphrase)`.
    pub encryption: Option<lsm::Encryption>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lsm: lsm::Options::default(),
            durability: lsm::Durability::Sync,
            change_history_commits: 100_000,
            conflict_retries_max: 64,
            encryption: None,
        }
    }
}

/// Entries of the conflict table kept before pruning is attempted.
const LAST_WRITE_PRUNE_LEN: usize = 4096;

/// Catalog, conflict table and counters behind the short lock.
pub(crate) struct Shared {
    /// Collections by (database, name).
    pub collections: BTreeMap<(String, String), Arc<CollectionInfo>>,
    /// Per index (collection id, index id): the LSM sequence from which its entries are
    /// complete; a snapshot older than that must not read it.
    pub index_ready: BTreeMap<(u32, u32), u64>,
    pub next_collection_id: u32,
    /// The last commit number handed out (change events are keyed by it).
    pub last_commit: u64,
    /// LSM sequence of the last commit that wrote each key (see the module invariant).
    pub last_write: BTreeMap<Vec<u8>, u64>,
    /// LSM sequence of the last commit that wrote any document of a collection.
    pub collection_write: BTreeMap<u32, u64>,
    /// Snapshot sequences of open transactions, with counts.
    pub active: BTreeMap<u64, usize>,
    /// LSM sequence of the last commit (0 before the first since open).
    pub last_sequence: u64,
    /// How many change events each recent commit of this process wrote.
    pub event_counts: EventCounts,
}

/// The change-event counts of this process's recent commits, oldest first, so expiring a
/// commit's events needs no scan of the history. Bounded by the history length.
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    counts: std::collections::VecDeque<(u64, u32)>,
}

impl EventCounts {
    /// Remembers `commit`'s event count; forgets counts older than `history` commits.
    fn record(&mut self, commit: u64, count: u32, history: u64) {
        assert!(self.counts.back().is_none_or(|&(last, _)| last < commit));
        self.counts.push_back((commit, count));
        while self.counts.front().is_some_and(|&(oldest, _)| oldest + history <= commit) {
            self.counts.pop_front();
        }
    }

    /// The event count of `commit` if this process made it and still remembers it; the
    /// entries before it are dropped (their events were expired by earlier commits).
    fn expired_count(&mut self, commit: u64) -> Option<u32> {
        while self.counts.front().is_some_and(|&(oldest, _)| oldest < commit) {
            self.counts.pop_front();
        }
        match self.counts.front() {
            Some(&(oldest, count)) if oldest == commit => Some(count),
            _ => None,
        }
    }
}

impl Shared {
    /// Checks the invariants of the catalog and the conflict table (run after every commit in
    /// builds with debug assertions, as the simulation profile is).
    pub fn check_invariants(&self) {
        for ((database, name), info) in &self.collections {
            assert!(info.database == *database && info.name == *name, "catalog key mismatch");
            assert!(info.id < self.next_collection_id, "collection id {} not below next", info.id);
            assert!(info.indexes.iter().all(|index| index.id < info.next_index_id));
        }
        assert!(self.active.values().all(|&count| count > 0), "an empty active slot");
        let newest = self.last_sequence;
        assert!(self.last_write.values().all(|&sequence| sequence <= newest));
        assert!(self.collection_write.values().all(|&sequence| sequence <= newest));
        assert!(self.index_ready.values().all(|&sequence| sequence <= newest));
    }
}

pub(crate) struct Inner<E: Env> {
    pub env: E,
    pub lsm: lsm::Db<E>,
    pub options: Options,
    pub shared: Mutex<Shared>,
    pub commit_lock: futures::lock::Mutex<()>,
    /// Rung after every commit, for change streams.
    pub committed: lsm::signal::Signal,
    /// Process-unique part of generated ObjectIds, drawn from the node's rng at open.
    pub object_id_process: [u8; 5],
    pub object_id_counter: std::sync::atomic::AtomicU32,
}

/// A document database on one LSM store directory.
pub struct DocDb<E: Env> {
    pub(crate) inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for DocDb<E> {
    fn clone(&self) -> Self {
        DocDb { inner: Arc::clone(&self.inner) }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl<E: Env> DocDb<E> {
    /// Opens (or creates) the database in `dir`: the LSM store, then the catalog.
    pub async fn open(env: E, dir: &str, options: Options) -> Result<DocDb<E>> {
        let mut lsm_options = options.lsm.clone();
        if let Some(encryption) = &options.encryption {
            lsm_options.encryption = Some(encryption.clone());
        }
        let lsm = lsm::Db::open(env.clone(), dir, lsm_options).await?;
        match lsm.get(&layout::format_key()).await? {
            None => {
                lsm.put(&layout::format_key(), &[layout::FORMAT_VERSION], options.durability)
                    .await?
            }
            Some(version) if version == [layout::FORMAT_VERSION] => {}
            Some(version) => {
                return Err(Error::Corruption(format!("unknown docdb format version {version:?}")));
            }
        }
        let shared = load_shared(&lsm).await?;
        let mut rng = env.rng();
        let mut process = [0u8; 5];
        rand_core::RngCore::fill_bytes(&mut rng, &mut process);
        let counter = rand_core::RngCore::next_u32(&mut rng) & 0x00FF_FFFF;
        let inner = Inner {
            env,
            lsm,
            options,
            shared: Mutex::new(shared),
            commit_lock: futures::lock::Mutex::new(()),
            committed: lsm::signal::Signal::default(),
            object_id_process: process,
            object_id_counter: std::sync::atomic::AtomicU32::new(counter),
        };
        Ok(DocDb { inner: Arc::new(inner) })
    }

    /// Starts a multi-document transaction on a snapshot of now.
    pub fn begin(&self) -> Transaction<E> {
        let mut shared = lock(&self.inner.shared);
        let snapshot = self.inner.lsm.snapshot();
        *shared.active.entry(snapshot.sequence()).or_insert(0) += 1;
        drop(shared);
        Transaction::new(self.clone(), snapshot)
    }

    /// The names of the databases that hold at least one collection, sorted.
    pub fn list_databases(&self) -> Vec<String> {
        let shared = lock(&self.inner.shared);
        let names: BTreeSet<String> = shared.collections.keys().map(|(db, _)| db.clone()).collect();
        names.into_iter().collect()
    }

    /// The collections of `database`, sorted by name.
    pub fn list_collections(&self, database: &str) -> Vec<Arc<CollectionInfo>> {
        let shared = lock(&self.inner.shared);
        shared
            .collections
            .iter()
            .filter(|((db, _), _)| db == database)
            .map(|(_, info)| Arc::clone(info))
            .collect()
    }

    /// The catalog entry of a collection, if it exists.
    pub fn collection_info(&self, database: &str, name: &str) -> Option<Arc<CollectionInfo>> {
        let shared = lock(&self.inner.shared);
        shared.collections.get(&(database.to_string(), name.to_string())).cloned()
    }

    /// The LSM store underneath (for its statistics).
    pub fn storage(&self) -> &lsm::Db<E> {
        &self.inner.lsm
    }

    /// Rotates the passphrase of this open, encrypted database (`lsm::Db::rotate_passphrase`):
    /// afterwards only `new_passphrase` opens it. For a closed one, `lsm::rotate_passphrase`.
    pub async fn rotate_passphrase(
        &self,
        old_passphrase: &[u8],
        new_passphrase: &[u8],
        kdf: lsm::KdfParams,
    ) -> Result<()> {
        self.inner.lsm.rotate_passphrase(old_passphrase, new_passphrase, kdf).await?;
        Ok(())
    }

    /// The last commit number.
    pub fn last_commit(&self) -> u64 {
        lock(&self.inner.shared).last_commit
    }

    /// The LSM store's counters (for the production binary's metrics).
    pub fn storage_stats(&self) -> lsm::Stats {
        self.inner.lsm.stats()
    }

    /// Closes the store. Later operations fail with a storage `Closed` error.
    pub async fn close(&self) -> Result<()> {
        let _commits = self.inner.commit_lock.lock().await;
        self.inner.lsm.close().await?;
        self.inner.committed.notify();
        Ok(())
    }

    /// A new ObjectId from the environment's wall clock and random stream (never the OS's).
    pub fn new_object_id(&self) -> bson::oid::ObjectId {
        let seconds = self
            .inner
            .env
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let counter =
            self.inner.object_id_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&(seconds as u32).to_be_bytes());
        bytes[4..9].copy_from_slice(&self.inner.object_id_process);
        bytes[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
        bson::oid::ObjectId::from_bytes(bytes)
    }

    /// The wall clock as a BSON date (for `$currentDate`).
    pub(crate) fn now_date(&self) -> bson::DateTime {
        let millis = self
            .inner
            .env
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0);
        bson::DateTime::from_millis(millis)
    }

    /// Forgets an open transaction's snapshot (commit, abort or drop).
    pub(crate) fn release_snapshot(&self, sequence: u64) {
        let mut shared = lock(&self.inner.shared);
        if let Some(count) = shared.active.get_mut(&sequence) {
            *count -= 1;
            if *count == 0 {
                shared.active.remove(&sequence);
            }
        }
        prune_conflicts(&mut shared);
    }

    /// Commits a transaction's writes: checks conflicts, writes one atomic batch with the
    /// change events, then publishes the new catalog and conflict entries. Returns the commit
    /// number (0 for a transaction that wrote nothing).
    pub(crate) async fn commit_writes(
        &self,
        snapshot_sequence: u64,
        writes: TxnWrites,
    ) -> Result<u64> {
        self.commit_writes_planted(snapshot_sequence, writes, false).await
    }

    /// `commit_writes`; `alone_before_write` is the planted bug `PlantedBug::AloneBeforeWrite`
    /// (module `planted`), false otherwise.
    pub(crate) async fn commit_writes_planted(
        &self,
        snapshot_sequence: u64,
        writes: TxnWrites,
        alone_before_write: bool,
    ) -> Result<u64> {
        if writes.is_empty() {
            return Ok(0);
        }
        let _commits = self.inner.commit_lock.lock().await;
        let (commit, alone_early) = {
            let shared = lock(&self.inner.shared);
            check_conflicts(&shared, snapshot_sequence, &writes)?;
            (shared.last_commit + 1, is_alone(&shared, snapshot_sequence))
        };
        let batch = self.commit_batch(commit, &writes).await?;
        if self.inner.env.buggify("docdb.commit.slow_write") {
            // A commit whose write takes long: other transactions pile up behind the lock.
            self.inner.env.sleep(std::time::Duration::from_millis(50)).await;
        }
        self.inner.lsm.write(batch, self.inner.options.durability).await?;
        let sequence = self.inner.lsm.snapshot().sequence();
        let history = self.inner.options.change_history_commits;
        let mut shared = lock(&self.inner.shared);
        let event_count = u32::try_from(writes.events.len()).expect("events per commit fit u32");
        shared.event_counts.record(commit, event_count, history);
        // With no other transaction open, none can conflict with these writes: every later
        // transaction's snapshot includes them. Asked now, after the write: one begun while
        // it went on has a snapshot without them.
        let alone =
            if alone_before_write { alone_early } else { is_alone(&shared, snapshot_sequence) };
        publish_commit(&mut shared, commit, sequence, writes, alone);
        drop(shared);
        self.inner.committed.notify();
        Ok(commit)
    }

    async fn commit_batch(&self, commit: u64, writes: &TxnWrites) -> Result<lsm::WriteBatch> {
        let mut batch = lsm::WriteBatch::new();
        for (key, value) in &writes.keys {
            match value {
                Some(value) => batch.put(key.clone(), value.clone()),
                None => batch.delete(key.clone()),
            };
        }
        for (index, event) in writes.events.iter().enumerate() {
            let index = u32::try_from(index).expect("events per commit fit u32");
            batch.put(layout::change_key(commit, index), layout::encode_record(event)?);
        }
        batch.put(layout::commit_key(), commit.to_be_bytes().to_vec());
        let history = self.inner.options.change_history_commits;
        if commit > history {
            let expired = commit - history;
            let known = lock(&self.inner.shared).event_counts.expired_count(expired);
            match known {
                // This process made that commit: its events are numbered 0..count.
                Some(count) => {
                    for index in 0..count {
                        batch.delete(layout::change_key(expired, index));
                    }
                }
                // A commit of an earlier run of the process: find its events.
                None => {
                    let key = layout::change_key(expired, 0);
                    let mut old = self.inner.lsm.prefix(&key[..9]).await?;
                    while let Some(entry) = old.next().await {
                        batch.delete(entry?.0);
                    }
                }
            }
        }
        Ok(batch)
    }
}

fn check_conflicts(shared: &Shared, snapshot_sequence: u64, writes: &TxnWrites) -> Result<()> {
    for (namespace, epoch) in &writes.epochs {
        let current = shared.collections.get(namespace).map(|info| info.epoch);
        if current != *epoch {
            return Err(Error::WriteConflict {
                reason: format!(
                    "collection {}.{} changed during the transaction",
                    namespace.0, namespace.1
                ),
            });
        }
    }
    for key in writes.keys.keys() {
        if shared.last_write.get(key).is_some_and(|&sequence| sequence > snapshot_sequence) {
            return Err(Error::WriteConflict { reason: describe_key(key) });
        }
    }
    for collection_id in &writes.whole_collections {
        if shared.collection_write.get(collection_id).is_some_and(|&s| s > snapshot_sequence) {
            return Err(Error::WriteConflict {
                reason: format!("collection {collection_id} was written during an index build"),
            });
        }
    }
    Ok(())
}

/// Whether the transaction on `snapshot_sequence` is the only open one.
fn is_alone(shared: &Shared, snapshot_sequence: u64) -> bool {
    shared.active.len() == 1 && shared.active.get(&snapshot_sequence) == Some(&1)
}

fn describe_key(key: &[u8]) -> String {
    let hex: String = key.iter().take(40).map(|byte| format!("{byte:02x}")).collect();
    format!("key {hex} was written by a transaction that committed first")
}

fn publish_commit(shared: &mut Shared, commit: u64, sequence: u64, writes: TxnWrites, alone: bool) {
    assert_eq!(commit, shared.last_commit + 1, "commits are numbered without gaps");
    assert!(sequence > shared.last_sequence, "a commit's LSM sequence goes forward");
    shared.last_commit = commit;
    shared.last_sequence = sequence;
    for key in writes.keys.into_keys().filter(|_| !alone) {
        if key.first() == Some(&0x02) && key.len() >= 5 {
            let id = u32::from_be_bytes(key[1..5].try_into().expect("4 bytes"));
            shared.collection_write.insert(id, sequence);
        }
        shared.last_write.insert(key, sequence);
    }
    for (namespace, info) in writes.catalog {
        match info {
            Some(info) => {
                for index in &info.indexes {
                    shared.index_ready.entry((info.id, index.id)).or_insert(sequence);
                }
                shared.next_collection_id = shared.next_collection_id.max(info.id + 1);
                shared.collections.insert(namespace, info);
            }
            None => {
                shared.collections.remove(&namespace);
            }
        }
    }
    prune_conflicts(shared);
    if cfg!(debug_assertions) {
        shared.check_invariants();
    }
}

/// Drops conflict entries no open transaction can conflict with.
fn prune_conflicts(shared: &mut Shared) {
    match shared.active.keys().next().copied() {
        None => {
            shared.last_write.clear();
            shared.collection_write.clear();
        }
        Some(oldest) if shared.last_write.len() > LAST_WRITE_PRUNE_LEN => {
            shared.last_write.retain(|_, sequence| *sequence > oldest);
            shared.collection_write.retain(|_, sequence| *sequence > oldest);
        }
        Some(_) => {}
    }
}

async fn load_shared<E: Env>(lsm: &lsm::Db<E>) -> Result<Shared> {
    let mut collections = BTreeMap::new();
    let mut next_collection_id = 1;
    let mut entries = lsm.prefix(&layout::catalog_prefix()).await?;
    while let Some(entry) = entries.next().await {
        let (key, value) = entry?;
        let id = layout::parse_catalog_key(&key)?;
        let info = CollectionInfo::from_document(&layout::decode_record(&value, "catalog entry")?)?;
        if info.id != id {
            return Err(Error::Corruption(format!(
                "catalog entry {id} names collection {}",
                info.id
            )));
        }
        next_collection_id = next_collection_id.max(id + 1);
        collections.insert((info.database.clone(), info.name.clone()), Arc::new(info));
    }
    let last_commit = match lsm.get(&layout::commit_key()).await? {
        None => 0,
        Some(bytes) => u64::from_be_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corruption("bad commit record".into()))?,
        ),
    };
    Ok(Shared {
        collections,
        index_ready: BTreeMap::new(),
        next_collection_id,
        last_commit,
        last_write: BTreeMap::new(),
        collection_write: BTreeMap::new(),
        active: BTreeMap::new(),
        last_sequence: 0,
        event_counts: EventCounts::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_counts_answer_only_for_remembered_commits() {
        let mut counts = EventCounts::default();
        for commit in 1..=5 {
            counts.record(commit, commit as u32 * 2, 3);
        }
        // Commits 3, 4 and 5 are remembered (a history of 3); 1 and 2 are forgotten.
        assert_eq!(counts.expired_count(1), None);
        assert_eq!(counts.expired_count(3), Some(6));
        assert_eq!(counts.expired_count(4), Some(8));
        assert_eq!(counts.expired_count(9), None);
    }
}
