//! The memtable: recent writes in a sorted map keyed by (user key, newest sequence first).
//!
//! Writers insert under a short lock; readers look up one key or copy out bounded chunks for
//! iterators, so no lock is ever held across an `await`. Once full, a memtable becomes
//! immutable (no more inserts) and is flushed to an SSTable by the background task.
//!
//! Short keys live inside the map slot and values are packed into 64 KiB arena blocks, so a
//! write allocates nothing of its own in the common case and the whole memtable is freed in
//! a few large pieces.

use std::cmp::{Ordering as KeyOrdering, Reverse};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::batch::{BatchOp, WriteBatch};
use crate::key::Entry;

/// Bytes charged per entry on top of its key and value, so the memtable budget is close to
/// the memory really held: a 56-byte map slot (inline key, sequence, value reference) in
/// 11-slot B-tree leaves that stay 55% (sequential inserts) to about 70% (random ones) full:
/// 85-105 bytes an entry.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// Keys up to this long live inside the map slot; longer ones get their own allocation.
const INLINE_KEY_BYTES_MAX: usize = 30;

/// Size of one block of the value arena.
const ARENA_BLOCK_BYTES: usize = 64 * 1024;

/// A user key, stored inline when short. Ordered as its bytes.
#[derive(Clone, Debug)]
enum MemKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES_MAX] },
    Heap(Box<[u8]>),
}

impl MemKey {
    fn new(key: &[u8]) -> MemKey {
        if key.len() <= INLINE_KEY_BYTES_MAX {
            let mut bytes = [0; INLINE_KEY_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            MemKey::Inline { len: key.len() as u8, bytes }
        } else {
            MemKey::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            MemKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            MemKey::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for MemKey {}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<KeyOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> KeyOrdering {
        self.as_slice().cmp(other.as_slice())
    }
}

/// Where a value lives in the arena.
#[derive(Clone, Copy, Debug)]
struct ValueRef {
    block: u32,
    offset: u32,
    len: u32,
}

/// Values packed into large blocks, freed together with the memtable. One small allocation
/// per write would be freed by the flush thread, never back into the writer's allocator
/// cache, so every write would pay the allocator's slow path.
#[derive(Debug, Default)]
struct Arena {
    blocks: Vec<Vec<u8>>,
    // The block small values are appended to.
    current: Option<usize>,
}

impl Arena {
    fn push(&mut self, value: &[u8]) -> ValueRef {
        if value.len() > ARENA_BLOCK_BYTES / 4 {
            // Large values get a block of their own; the current block keeps filling.
            self.blocks.push(value.to_vec());
            let block = self.blocks.len() - 1;
            return ValueRef { block: block as u32, offset: 0, len: value.len() as u32 };
        }
        let block = match self.current {
            Some(block)
                if self.blocks[block].capacity() - self.blocks[block].len() >= value.len() =>
            {
                block
            }
            _ => {
                self.blocks.push(Vec::with_capacity(ARENA_BLOCK_BYTES));
                self.current = Some(self.blocks.len() - 1);
                self.blocks.len() - 1
            }
        };
        let offset = self.blocks[block].len();
        self.blocks[block].extend_from_slice(value);
        ValueRef { block: block as u32, offset: offset as u32, len: value.len() as u32 }
    }

    fn get(&self, value: ValueRef) -> &[u8] {
        let start = value.offset as usize;
        &self.blocks[value.block as usize][start..start + value.len as usize]
    }
}

/// The map and the arena its values point into.
#[derive(Debug, Default)]
struct Tables {
    map: BTreeMap<(MemKey, Reverse<u64>), Option<ValueRef>>,
    arena: Arena,
}

impl Tables {
    fn insert(&mut self, key: &[u8], sequence: u64, value: Option<&[u8]>) {
        let value = value.map(|value| self.arena.push(value));
        self.map.insert((MemKey::new(key), Reverse(sequence)), value);
    }

    fn entry(
        &self,
        (key, Reverse(sequence)): &(MemKey, Reverse<u64>),
        value: &Option<ValueRef>,
    ) -> Entry {
        let value = value.map(|value| self.arena.get(value).to_vec());
        Entry { key: key.as_slice().to_vec(), sequence: *sequence, value }
    }
}

/// A sorted in-memory table of versions.
#[derive(Debug)]
pub struct Memtable {
    tables: Mutex<Tables>,
    bytes: AtomicUsize,
    /// The write-ahead log holding this memtable's writes.
    wal_number: u64,
}

fn probe(bound: &Bound<(Vec<u8>, u64)>) -> Bound<(MemKey, Reverse<u64>)> {
    match bound {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included((key, sequence)) => Bound::Included((MemKey::new(key), Reverse(*sequence))),
        Bound::Excluded((key, sequence)) => Bound::Excluded((MemKey::new(key), Reverse(*sequence))),
    }
}

impl Memtable {
    /// An empty memtable logged to WAL `wal_number`.
    pub fn new(wal_number: u64) -> Memtable {
        Memtable { tables: Mutex::default(), bytes: AtomicUsize::new(0), wal_number }
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
        self.lock().map.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Inserts (copies) every op of `batch` with sequence numbers from `first_sequence`.
    pub fn apply(&self, first_sequence: u64, batch: &WriteBatch) {
        let mut tables = self.lock();
        let mut added = 0;
        for (index, op) in batch.ops().iter().enumerate() {
            let sequence = first_sequence + index as u64;
            let (key, value) = match op {
                BatchOp::Put { key, value } => (key, Some(value.as_slice())),
                BatchOp::Delete { key } => (key, None),
            };
            added += key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD_BYTES;
            tables.insert(key, sequence, value);
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    /// The newest version of `key` at or below `sequence`: `Some(None)` is a tombstone.
    pub fn get(&self, key: &[u8], sequence: u64) -> Option<(u64, Option<Vec<u8>>)> {
        if self.bytes() == 0 {
            return None; // Empty (just rotated or flushed): skip building a lookup key.
        }
        let tables = self.lock();
        let start = (MemKey::new(key), Reverse(sequence));
        let ((found, Reverse(found_sequence)), value) = tables.map.range(start..).next()?;
        (found.as_slice() == key)
            .then(|| (*found_sequence, value.map(|value| tables.arena.get(value).to_vec())))
    }

    /// Up to `count_max` entries after `after` (forward) in internal order.
    pub fn chunk_forward(&self, after: &Bound<(Vec<u8>, u64)>, count_max: usize) -> Vec<Entry> {
        let tables = self.lock();
        let range = tables.map.range((probe(after), Bound::Unbounded));
        range.take(count_max).map(|(key, value)| tables.entry(key, value)).collect()
    }

    /// Up to `count_max` entries before `before`, walking backwards in internal order.
    pub fn chunk_reverse(&self, before: &Bound<(Vec<u8>, u64)>, count_max: usize) -> Vec<Entry> {
        let tables = self.lock();
        let range = tables.map.range((Bound::Unbounded, probe(before)));
        range.rev().take(count_max).map(|(key, value)| tables.entry(key, value)).collect()
    }

    /// Every entry in internal order (for a flush; the memtable is immutable by then).
    pub fn entries(&self) -> Vec<Entry> {
        let tables = self.lock();
        tables.map.iter().map(|(key, value)| tables.entry(key, value)).collect()
    }
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

    proptest::proptest! {
        /// Inline and heap keys sort as their bytes, and values in shared, full and private
        /// arena blocks read back whole, against a `BTreeMap` of owned copies.
        #[test]
        fn entries_match_a_model_across_key_and_value_sizes(
            writes in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 0..40), proptest::option::of(0usize..20_000)),
                1..200,
            ),
        ) {
            let memtable = Memtable::new(1);
            let mut model = BTreeMap::new();
            for (index, (key, value_len)) in writes.iter().enumerate() {
                let sequence = index as u64 + 1;
                let value = value_len.map(|len| vec![(index % 251) as u8; len]);
                let mut batch = WriteBatch::new();
                match &value {
                    Some(value) => batch.put(key.clone(), value.clone()),
                    None => batch.delete(key.clone()),
                };
                memtable.apply(sequence, &batch);
                model.insert((key.clone(), Reverse(sequence)), value);
            }
            let expected: Vec<Entry> = model
                .iter()
                .map(|((key, Reverse(sequence)), value)| {
                    Entry { key: key.clone(), sequence: *sequence, value: value.clone() }
                })
                .collect();
            proptest::prop_assert_eq!(memtable.entries(), expected.clone());
            let mut reverse = memtable.chunk_reverse(&Bound::Unbounded, usize::MAX);
            reverse.reverse();
            proptest::prop_assert_eq!(reverse, expected.clone());
            for entry in &expected {
                let newest = expected.iter().find(|found| found.key == entry.key).expect("own");
                let got = memtable.get(&entry.key, u64::MAX);
                proptest::prop_assert_eq!(got, Some((newest.sequence, newest.value.clone())));
            }
        }
    }
}
