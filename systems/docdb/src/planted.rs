//! Deliberately broken commits, for the simulation harness to prove it catches the bug classes
//! (feature `planted-bugs` only; never built into production).
//!
//! `Transaction::commit_with_planted_bug` commits like `commit`, except for one bug:
//!
//! - `IndexOutsideBatch`: the transaction's index entries leave the atomic batch: the
//!   documents, catalog and change events commit first, and the index puts and deletes follow
//!   in a second write with buffered durability. A crash before a later synced write then loses
//!   them, and the recovered index disagrees with its documents: exactly what the module doc of
//!   `ops` promises can never happen.
//! - `AloneBeforeWrite`: the commit's "am I the only open transaction?" shortcut (which skips
//!   recording the written keys for write-write conflict checks, since no open transaction
//!   could conflict with them) is asked before the commit's write, across its `await`, instead
//!   of after it. A transaction that begins while the write goes on reads a snapshot without
//!   the commit's writes, yet finds no conflict entries, so it overwrites them without a
//!   `WriteConflict`: a lost update, which snapshot isolation forbids (G-single in Adya's
//!   graph when it read the key first; a stale index entry when both changed an indexed
//!   field, since each deleted only the entry its own snapshot showed).

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
    /// The commit decides it is alone before its write, so a transaction begun during the
    /// write finds no conflict entries and commits over it.
    AloneBeforeWrite,
}

impl<E: Env> Transaction<E> {
    /// Commits with `bug` planted (module doc). Same results as `commit` otherwise.
    pub async fn commit_with_planted_bug(self, bug: PlantedBug) -> Result<CommitInfo> {
        match bug {
            PlantedBug::IndexOutsideBatch => self.commit_index_outside_batch().await,
            PlantedBug::AloneBeforeWrite => self.commit_alone_before_write().await,
        }
    }

    /// `commit` with the commit's shortcut asked before its write.
    async fn commit_alone_before_write(mut self) -> Result<CommitInfo> {
        let sequence = self.snapshot.sequence();
        let writes = std::mem::take(&mut self.writes);
        let db = self.db.clone();
        let result = db.commit_writes_planted(sequence, writes, true).await;
        // Releases the snapshot only now, as `commit` does after its write.
        self.abort();
        Ok(CommitInfo { commit: result?, snapshot_sequence: sequence })
    }

    /// `commit` with the index entries written after the batch, unsynced.
    async fn commit_index_outside_batch(mut self) -> Result<CommitInfo> {
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
