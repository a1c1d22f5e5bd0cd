//! The replicated key-value state of a node: keys map to last-writer-wins registers stamped by
//! the node's hybrid logical clock; a delete writes a tombstone (a register holding `None`)
//! that is purged once older than the tombstone TTL. A Merkle Search Tree mirrors every entry
//! (key, digest of its register) for anti-entropy.

use std::collections::BTreeMap;

use crate::crdt::{Crdt, LwwRegister, ReplicaId};
use crate::hash::{Digest, Hasher};
use crate::hlc::{ClockError, Hlc, Timestamp};
use crate::mst::Mst;

/// A stored value: an LWW register whose content `None` is a tombstone.
pub type Value = LwwRegister<Option<Vec<u8>>>;

/// The largest key.
pub const KEY_SIZE_BYTES_MAX: usize = 128;
/// The largest value (so any one entry fits a datagram).
pub const VALUE_SIZE_BYTES_MAX: usize = 1024;

/// Why a write or a merge was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The key exceeds `KEY_SIZE_BYTES_MAX`.
    KeyTooLarge {
        /// Its size.
        size_bytes: usize,
    },
    /// The value exceeds `VALUE_SIZE_BYTES_MAX`.
    ValueTooLarge {
        /// Its size.
        size_bytes: usize,
    },
    /// A register that was never written.
    Unwritten,
    /// The timestamp is too far in the future.
    Clock(ClockError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::KeyTooLarge { size_bytes } => write!(f, "key of {size_bytes} bytes"),
            StoreError::ValueTooLarge { size_bytes } => write!(f, "value of {size_bytes} bytes"),
            StoreError::Unwritten => write!(f, "unwritten register"),
            StoreError::Clock(error) => write!(f, "clock: {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Clock(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ClockError> for StoreError {
    fn from(error: ClockError) -> StoreError {
        StoreError::Clock(error)
    }
}

/// The digest of one entry, as the MST holds it.
pub fn entry_digest(key: &[u8], value: &Value) -> Digest {
    let mut hasher = Hasher::new();
    hasher.write(key);
    if let Some((stamp, replica)) = value.stamp() {
        hasher.write_u64(stamp.wall_ms).write_u64(u64::from(stamp.logical)).write_u64(replica.0);
    }
    match value.value() {
        Some(Some(bytes)) => hasher.write(&[1]).write(bytes),
        _ => hasher.write(&[0]),
    };
    hasher.digest()
}

/// A node's key-value state.
#[derive(Clone, Debug)]
pub struct Store {
    replica: ReplicaId,
    hlc: Hlc,
    // Invariant: `mst` holds exactly one entry per key here, with `entry_digest`.
    entries: BTreeMap<Vec<u8>, Value>,
    mst: Mst,
}

impl Store {
    /// An empty store written by `replica`.
    pub fn new(replica: ReplicaId) -> Store {
        Store { replica, hlc: Hlc::new(), entries: BTreeMap::new(), mst: Mst::new() }
    }

    /// Sets the replica id stamped on local writes (a node restored from disk takes its id).
    pub fn set_replica(&mut self, replica: ReplicaId) {
        self.replica = replica;
    }

    /// Resumes the HLC after `last` (restored from disk).
    pub fn resume_clock(&mut self, last: Timestamp) {
        self.hlc = Hlc::resume(last.max(self.hlc.last()));
    }

    /// Writes (`Some`) or deletes (`None`) `key`; returns the new register (the delta).
    pub fn put(
        &mut self,
        wall_ms: u64,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<Value, StoreError> {
        check_sizes(key, value.as_deref())?;
        let stamp = self.hlc.now(wall_ms);
        let delta = Value::new(stamp, self.replica, value);
        let changed = self.merge_checked(key, &delta);
        assert!(changed, "a fresh HLC stamp always wins");
        Ok(delta)
    }

    /// Merges a register learnt from a peer; returns whether it changed anything.
    pub fn merge(&mut self, wall_ms: u64, key: &[u8], value: &Value) -> Result<bool, StoreError> {
        let Some(content) = value.value() else { return Err(StoreError::Unwritten) };
        check_sizes(key, content.as_deref())?;
        let (stamp, _) = value.stamp().expect("written");
        self.hlc.observe(wall_ms, stamp)?;
        Ok(self.merge_checked(key, value))
    }

    fn merge_checked(&mut self, key: &[u8], value: &Value) -> bool {
        // Look up before allocating: nearly every merge is of a key already held.
        if !self.entries.contains_key(key) {
            self.entries.insert(key.to_vec(), Value::default());
        }
        let entry = self.entries.get_mut(key).expect("just ensured");
        let before = entry.stamp();
        entry.merge(value);
        if entry.stamp() == before {
            return false;
        }
        self.mst.insert(key, entry_digest(key, entry));
        true
    }

    /// The live value of `key` (`None` if absent or deleted).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).and_then(|value| value.value()).and_then(|value| value.as_deref())
    }

    /// The register of `key`, tombstones included.
    pub fn register(&self, key: &[u8]) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Value)> {
        self.entries.iter().map(|(key, value)| (key.as_slice(), value))
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops tombstones written before `wall_ms - ttl_ms`; returns how many.
    pub fn purge(&mut self, wall_ms: u64, ttl_ms: u64) -> usize {
        let horizon = wall_ms.saturating_sub(ttl_ms);
        let expired: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, value)| matches!(value.value(), Some(None)))
            .filter(|(_, value)| value.stamp().is_some_and(|(stamp, _)| stamp.wall_ms < horizon))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.entries.remove(key);
            self.mst.remove(key);
        }
        expired.len()
    }

    /// The Merkle Search Tree of the entries.
    pub fn mst(&mut self) -> &mut Mst {
        &mut self.mst
    }

    /// The MST root digest.
    pub fn root(&mut self) -> Digest {
        self.mst.root()
    }

    /// The latest HLC timestamp (persist it to resume the clock after a restart).
    pub fn clock(&self) -> Timestamp {
        self.hlc.last()
    }
}

fn check_sizes(key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    if key.len() > KEY_SIZE_BYTES_MAX {
        return Err(StoreError::KeyTooLarge { size_bytes: key.len() });
    }
    let value_size = value.map_or(0, <[u8]>::len);
    if value_size > VALUE_SIZE_BYTES_MAX {
        return Err(StoreError::ValueTooLarge { size_bytes: value_size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_writer_wins_and_roots_converge() {
        let mut a = Store::new(ReplicaId(1));
        let mut b = Store::new(ReplicaId(2));
        let first = a.put(1_000, b"k", Some(b"a".to_vec())).expect("put");
        let second = b.put(1_000, b"k", Some(b"b".to_vec())).expect("put");
        assert!(a.merge(1_000, b"k", &second).expect("merge"));
        assert!(!b.merge(1_000, b"k", &first).expect("merge"));
        assert_eq!(a.get(b"k"), Some(&b"b"[..]));
        assert_eq!(b.get(b"k"), Some(&b"b"[..]));
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn tombstones_hide_values_and_expire() {
        let mut store = Store::new(ReplicaId(1));
        store.put(1_000, b"k", Some(b"v".to_vec())).expect("put");
        store.put(2_000, b"k", None).expect("delete");
        assert_eq!(store.get(b"k"), None);
        assert_eq!(store.purge(2_500, 1_000), 0);
        assert_eq!(store.purge(3_001, 1_000), 1);
        assert!(store.is_empty());
        assert_eq!(store.root(), Digest::ZERO);
    }

    #[test]
    fn oversized_and_far_future_writes_are_refused() {
        let mut store = Store::new(ReplicaId(1));
        assert!(store.put(0, &[0; 200], None).is_err());
        assert!(store.put(0, b"k", Some(vec![0; 2000])).is_err());
        let future = Value::new(Timestamp { wall_ms: 10_000_000, logical: 0 }, ReplicaId(2), None);
        assert!(matches!(store.merge(0, b"k", &future), Err(StoreError::Clock(_))));
        assert!(matches!(store.merge(0, b"k", &Value::default()), Err(StoreError::Unwritten)));
    }
}
