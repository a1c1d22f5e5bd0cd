//! `Transaction`: a snapshot of the store plus a buffer of writes, committed as one atomic LSM
//! batch (documents, index entries, catalog entries and change events together).
//!
//! Reads see the snapshot overlaid with the transaction's own writes. Snapshot isolation: a
//! transaction never sees another's uncommitted or later-committed writes, and of two
//! concurrent transactions writing one key the second to commit gets `WriteConflict`.
//!
//! Invariant: every key in `writes.keys` belongs to a collection recorded in `writes.epochs`
//! (or is a catalog key), so the commit can check the catalog did not change under it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bson::Document;
use sim::Env;

use crate::catalog::CollectionInfo;
use crate::db::{DocDb, lock};
use crate::error::Result;
use crate::layout;

/// What a transaction will commit.
#[derive(Debug, Default)]
pub(crate) struct TxnWrites {
    /// LSM keys to put (`Some`) or delete (`None`).
    pub keys: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Change events, in the order the operations made them.
    pub events: Vec<Document>,
    /// Catalog epoch each touched collection had when first touched (`None`: did not exist).
    pub epochs: BTreeMap<(String, String), Option<u64>>,
    /// New catalog entries (`None`: dropped), published at commit.
    pub catalog: BTreeMap<(String, String), Option<Arc<CollectionInfo>>>,
    /// Collections any of whose documents written by another commit after the snapshot is a
    /// conflict (an index build read them all).
    pub whole_collections: BTreeSet<u32>,
}

impl TxnWrites {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.catalog.is_empty()
    }
}

/// What `commit` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit number (also the change-stream position); 0 when nothing was written.
    pub commit: u64,
    /// The LSM sequence number the transaction read at.
    pub snapshot_sequence: u64,
}

/// A multi-document, multi-collection transaction with snapshot isolation.
pub struct Transaction<E: Env> {
    pub(crate) db: DocDb<E>,
    pub(crate) snapshot: lsm::Snapshot<E>,
    pub(crate) writes: TxnWrites,
    finished: bool,
}

impl<E: Env> Drop for Transaction<E> {
    fn drop(&mut self) {
        if !self.finished {
            self.db.release_snapshot(self.snapshot.sequence());
        }
    }
}

impl<E: Env> Transaction<E> {
    pub(crate) fn new(db: DocDb<E>, snapshot: lsm::Snapshot<E>) -> Transaction<E> {
        Transaction { db, snapshot, writes: TxnWrites::default(), finished: false }
    }

    /// The LSM sequence number this transaction reads at.
    pub fn snapshot_sequence(&self) -> u64 {
        self.snapshot.sequence()
    }

    /// Commits: every write becomes visible and durable at once, or (on error) none does.
    /// `WriteConflict` means another transaction committed a write to the same document or
    /// unique key first; the caller may retry the whole transaction.
    pub async fn commit(mut self) -> Result<CommitInfo> {
        self.finished = true;
        let sequence = self.snapshot.sequence();
        let writes = std::mem::take(&mut self.writes);
        let result = self.db.commit_writes(sequence, writes).await;
        self.db.release_snapshot(sequence);
        Ok(CommitInfo { commit: result?, snapshot_sequence: sequence })
    }

    /// Drops every write of the transaction.
    pub fn abort(mut self) {
        self.finished = true;
        self.db.release_snapshot(self.snapshot.sequence());
    }

    /// The catalog entry of a collection as this transaction sees it.
    pub(crate) fn collection_info(
        &self,
        database: &str,
        name: &str,
    ) -> Option<Arc<CollectionInfo>> {
        let namespace = (database.to_string(), name.to_string());
        if let Some(pending) = self.writes.catalog.get(&namespace) {
            return pending.clone();
        }
        let shared = lock(&self.db.inner.shared);
        shared.collections.get(&namespace).cloned()
    }

    /// Whether an index's entries are complete in this transaction's snapshot.
    pub(crate) fn index_usable(&self, collection_id: u32, index_id: u32) -> bool {
        let shared = lock(&self.db.inner.shared);
        match shared.index_ready.get(&(collection_id, index_id)) {
            Some(&ready) => ready <= self.snapshot.sequence(),
            None => true,
        }
    }

    /// Records that this transaction writes to a collection (first touch only).
    pub(crate) fn touch(&mut self, database: &str, name: &str) {
        let namespace = (database.to_string(), name.to_string());
        if self.writes.epochs.contains_key(&namespace) {
            return;
        }
        let epoch = {
            let shared = lock(&self.db.inner.shared);
            shared.collections.get(&namespace).map(|info| info.epoch)
        };
        self.writes.epochs.insert(namespace, epoch);
    }

    /// Creates a collection inside this transaction (its id is reserved now).
    pub(crate) fn create_collection_entry(
        &mut self,
        database: &str,
        name: &str,
        validator: Option<Document>,
    ) -> Arc<CollectionInfo> {
        self.touch(database, name);
        let id = {
            let mut shared = lock(&self.db.inner.shared);
            let id = shared.next_collection_id;
            shared.next_collection_id = id.checked_add(1).expect("collection ids exhausted");
            id
        };
        let info = CollectionInfo {
            id,
            database: database.to_string(),
            name: name.to_string(),
            epoch: 1,
            next_index_id: 1,
            indexes: Vec::new(),
            validator,
        };
        self.put_catalog(info)
    }

    /// Stages a new catalog entry (its epoch already bumped by the caller); returns it shared.
    pub(crate) fn put_catalog(&mut self, info: CollectionInfo) -> Arc<CollectionInfo> {
        let namespace = (info.database.clone(), info.name.clone());
        self.touch(&info.database, &info.name);
        let record = layout::encode_record(&info.to_document()).expect("catalog entries encode");
        self.writes.keys.insert(layout::catalog_key(info.id), Some(record));
        let info = Arc::new(info);
        self.writes.catalog.insert(namespace, Some(Arc::clone(&info)));
        info
    }

    /// Stages the removal of a catalog entry.
    pub(crate) fn remove_catalog(&mut self, info: &CollectionInfo) {
        self.touch(&info.database, &info.name);
        self.writes.keys.insert(layout::catalog_key(info.id), None);
        self.writes.catalog.insert((info.database.clone(), info.name.clone()), None);
    }

    /// The value of `key` as this transaction sees it.
    pub(crate) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(value) = self.writes.keys.get(key) {
            return Ok(value.clone());
        }
        Ok(self.snapshot.get(key).await?)
    }

    /// Stages a put.
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.keys.insert(key, Some(value));
    }

    /// Stages a delete.
    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.writes.keys.insert(key, None);
    }

    /// Opens a forward scan over `[start, end)` as this transaction sees it.
    pub(crate) async fn scan(&self, start: Vec<u8>, end: Option<Vec<u8>>) -> Result<Scan<E>> {
        let upper = match &end {
            Some(end) => Bound::Excluded(end.clone()),
            None => Bound::Unbounded,
        };
        let base = self
            .snapshot
            .range::<Vec<u8>, _>((Bound::Included(start.clone()), upper.clone()))
            .await?;
        let overlay: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .writes
            .keys
            .range((Bound::Included(start), upper))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(Scan {
            base,
            base_next: None,
            base_done: false,
            overlay: overlay.into_iter().peekable(),
            last: None,
        })
    }

    /// Stages a change event.
    pub(crate) fn record_event(&mut self, event: Document) {
        self.writes.events.push(event);
    }

    /// The database this transaction belongs to.
    pub fn database(&self) -> &DocDb<E> {
        &self.db
    }
}

/// A key the transaction wrote: its new value, or `None` for a delete.
type OverlayEntry = (Vec<u8>, Option<Vec<u8>>);

/// A forward scan merging the snapshot with the transaction's own writes.
pub(crate) struct Scan<E: Env> {
    base: lsm::Iter<E::File>,
    base_next: Option<(Vec<u8>, Vec<u8>)>,
    base_done: bool,
    overlay: std::iter::Peekable<std::vec::IntoIter<OverlayEntry>>,
    /// The last key returned (debug builds check the scan only goes forward).
    last: Option<Vec<u8>>,
}

impl<E: Env> Scan<E> {
    /// The next live key and value, ascending.
    pub async fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            if self.base_next.is_none() && !self.base_done {
                match self.base.next().await {
                    Some(entry) => self.base_next = Some(entry?),
                    None => self.base_done = true,
                }
            }
            let overlay_key = self.overlay.peek().map(|(key, _)| key.clone());
            let take_overlay = match (&self.base_next, &overlay_key) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((base_key, _)), Some(overlay_key)) => {
                    let order = overlay_key.cmp(base_key);
                    if order == std::cmp::Ordering::Equal {
                        // The transaction's write shadows the snapshot's version.
                        self.base_next = None;
                    }
                    order != std::cmp::Ordering::Greater
                }
            };
            if take_overlay {
                let (key, value) = self.overlay.next().expect("peeked");
                debug_assert!(
                    self.last.as_ref().is_none_or(|last| *last < key),
                    "scan goes forward"
                );
                self.last = Some(key.clone());
                match value {
                    Some(value) => return Ok(Some((key, value))),
                    None => continue,
                }
            }
            let entry = self.base_next.take();
            if let Some((key, _)) = &entry {
                debug_assert!(
                    self.last.as_ref().is_none_or(|last| last < key),
                    "scan goes forward"
                );
                self.last = Some(key.clone());
            }
            return Ok(entry);
        }
    }
}
