//! The memtable: recent writes in a sorted map keyed by (user key, newest sequence first).
//!
//! Writers insert under a short lock; readers look up one key or copy out bounded chunks for
//! iterators, so no lock is ever held across an `await`. Once full, a memtable becomes
//! immutable (no more inserts) and is flushed to an SSTable by the background task.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::batch::{BatchOp, WriteBatch};
use crate::key::Entry;

/// Bytes charged per entry on top of its key and value: the map slot (key and value vectors,
/// sequence), node slack and allocator rounding, measured to be about this much, so the
/// memtable budget is close to the memory really held.
const ENTRY_OVERHEAD_BYTES: usize = 96;

type MemKey = (Vec<u8>, Reverse<u64>);

/// A sorted in-memory table of versions.
#[derive(Debug)]
pub struct Memtable {
    map: Mutex<BTreeMap<MemKey, Option<Vec<u8>>>>,
    bytes: AtomicUsize,
    /// The write-ahead log holding this memtable's writes.
    wal_number: u64,
}

impl Memtable {
    /// An empty memtable logged to WAL `wal_number`.
    pub fn new(wal_number: u64) -> Memtable {
        Memtable { map: Mutex::new(BTreeMap::new()), bytes: AtomicUsize::new(0), wal_number }
    }

    /// The write-ahead log number of this memtable.
    pub fn wal_number(&self) -> u64 {
        self.wal_number
    }

    /// Approximate memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<MemKey, Option<Vec<u8>>>> {
        self.map.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Inserts every op of `batch` with sequence numbers from `first_sequence`.
    pub fn apply(&self, first_sequence: u64, batch: &WriteBatch) {
        let mut map = self.lock();
        let mut added = 0;
        for (index, op) in batch.ops().iter().enumerate() {
            let sequence = first_sequence + index as u64;
            let (key, value) = match op {
                BatchOp::Put { key, value } => (key.clone(), Some(value.clone())),
                BatchOp::Delete { key } => (key.clone(), None),
            };
            added += key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES;
            map.insert((key, Reverse(sequence)), value);
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    /// Like `apply`, moving the keys and values in instead of copying them.
    pub fn apply_owned(&self, first_sequence: u64, batch: WriteBatch) {
        let mut map = self.lock();
        let mut added = 0;
        for (index, op) in batch.into_ops().into_iter().enumerate() {
            let sequence = first_sequence + index as u64;
            let (key, value) = match op {
                BatchOp::Put { key, value } => (key, Some(value)),
                BatchOp::Delete { key } => (key, None),
            };
            added += key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES;
            map.insert((key, Reverse(sequence)), value);
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    /// The newest version of `key` at or below `sequence`: `Some(None)` is a tombstone.
    pub fn get(&self, key: &[u8], sequence: u64) -> Option<(u64, Option<Vec<u8>>)> {
        if self.bytes() == 0 {
            return None; // Empty (just rotated or flushed): skip building a lookup key.
        }
        let map = self.lock();
        let start = (key.to_vec(), Reverse(sequence));
        let ((found, Reverse(found_sequence)), value) = map.range(start..).next()?;
        (found.as_slice() == key).then(|| (*found_sequence, value.clone()))
    }

    /// Up to `count_max` entries after `after` (forward) in internal order.
    pub fn chunk_forward(&self, after: &Bound<(Vec<u8>, u64)>, count_max: usize) -> Vec<Entry> {
        let map = self.lock();
        let start = match after {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included((key, sequence)) => Bound::Included((key.clone(), Reverse(*sequence))),
            Bound::Excluded((key, sequence)) => Bound::Excluded((key.clone(), Reverse(*sequence))),
        };
        map.range((start, Bound::Unbounded)).take(count_max).map(to_entry).collect()
    }

    /// Up to `count_max` entries before `before`, walking backwards in internal order.
    pub fn chunk_reverse(&self, before: &Bound<(Vec<u8>, u64)>, count_max: usize) -> Vec<Entry> {
        let map = self.lock();
        let end = match before {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included((key, sequence)) => Bound::Included((key.clone(), Reverse(*sequence))),
            Bound::Excluded((key, sequence)) => Bound::Excluded((key.clone(), Reverse(*sequence))),
        };
        map.range((Bound::Unbounded, end)).rev().take(count_max).map(to_entry).collect()
    }

    /// Every entry in internal order (for a flush; the memtable is immutable by then).
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().iter().map(to_entry).collect()
    }
}

fn to_entry(((key, Reverse(sequence)), value): (&MemKey, &Option<Vec<u8>>)) -> Entry {
    Entry { key: key.clone(), sequence: *sequence, value: value.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_sees_the_newest_version_at_a_sequence() {
        let memtable = Memtable::new(1);
        let mut batch = WriteBatch::new();
        batch.put(b"k".to_vec(), b"old".to_vec());
        memtable.apply(1, &batch);
        let mut batch = WriteBatch::new();
        batch.delete(b"k".to_vec());
        memtable.apply(2, &batch);
        assert_eq!(memtable.get(b"k", 1), Some((1, Some(b"old".to_vec()))));
        assert_eq!(memtable.get(b"k", 5), Some((2, None)));
        assert_eq!(memtable.get(b"j", 5), None);
        assert_eq!(memtable.entries().len(), 2);
        let reverse = memtable.chunk_reverse(&Bound::Unbounded, 10);
        assert_eq!(reverse[0].sequence, 1);
    }
}
