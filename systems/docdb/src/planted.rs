//! A deliberately broken commit, for the simulation harness to prove it catches the bug class
//! (feature `planted-bugs` only; never built into production).
//!
//! `Transaction::commit_with_planted_bug` commits like `commit`, except that the transaction's
//! index entries leave the atomic batch: the documents, catalog and change events commit first,
//! and the index puts and deletes follow in a second write with buffered durability. A crash
//! before a later synced write then loses them, and the recovered index disagrees with its
//! documents: exactly what the module doc of `ops` promises can never happen.

use sim::Env;

use crate::error::Result;
use crate::txn::{CommitInfo, Transaction};

/// The first byte of every index entry's key (`layout`'s table).
const INDEX_KEY_PREFIX: u8 = 0x03;

/// Which bug a planted commit carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedBug {
    /// Index entries are written after the commit's batch, outside it, unsynced.
    IndexOutsideBatch,
}

impl<E: Env> Transaction<E> {
    /// Commits with `bug` planted (module doc). Same results as `commit` otherwise.
    pub async fn commit_with_planted_bug(mut self, bug: PlantedBug) -> Result<CommitInfo> {
        assert_eq!(bug, PlantedBug::IndexOutsideBatch);
        let sequence = self.snapshot.sequence();
        let mut writes = std::mem::take(&mut self.writes);
        let (index_keys, other_keys): (Vec<_>, Vec<_>) = std::mem::take(&mut writes.keys)
            .into_iter()
            .partition(|(key, _)| key.first() == Some(&INDEX_KEY_PREFIX));
        writes.keys = other_keys.into_iter().collect();
        assert!(writes.keys.keys().all(|key| key.first() != Some(&INDEX_KEY_PREFIX)));
        let db = self.db.clone();
        let commit = db.commit_writes(sequence, writes).await;
        let mut batch = lsm::WriteBatch::new();
        for (key, value) in index_keys {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            };
        }
        let trailing = match (&commit, batch.is_empty()) {
            (Ok(_), false) => db.inner.lsm.write(batch, lsm::Durability::Buffered).await,
            _ => Ok(()),
        };
        // Releases the snapshot only now, as `commit` does after its write.
        self.abort();
        let commit = commit?;
        trailing?;
        Ok(CommitInfo { commit, snapshot_sequence: sequence })
    }
}
