//! The replicated key-value state of a node. Each key holds one typed CRDT value (`Value`):
//! a last-writer-wins register stamped by the node's hybrid logical clock (a delete writes a
//! tombstone, a register holding `None`, purged once older than the tombstone TTL), a
//! grow-only counter, a counter that goes up and down, or an observed-remove set of byte
//! strings (whose remove tombstones are purged after the same TTL). Local updates (`Update`)
//! return the delta to gossip; merges of deltas or whole values are the CRDT joins. A Merkle
//! Search Tree mirrors every entry (key, digest of its value) for anti-entropy.
//!
//! Two replicas that create one key with different kinds resolve it deterministically: the
//! kind ranked later in `Value` wins (register < g-counter < pn-counter < set), which keeps the
//! merge a join (kind first, then the kind's own join). A local update of the wrong kind for an
//! existing key is refused with `StoreError::KindMismatch`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crdt::{Crdt, GCounter, LwwRegister, OrSet, PnCounter, ReplicaId};
use crate::hash::{Digest, Hasher};
use crate::hlc::{ClockError, Hlc, Timestamp};
use crate::mst::Mst;

/// A stored value: one CRDT per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A last-writer-wins register; content `None` is a tombstone.
    Register(LwwRegister<Option<Vec<u8>>>),
    /// A grow-only counter.
    GCounter(GCounter),
    /// A counter that goes up and down.
    PnCounter(PnCounter),
    /// An observed-remove (add-wins) set of byte strings.
    Set(OrSet<Vec<u8>>),
}

/// The kind of a `Value`, in merge rank order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `Value::Register`.
    Register,
    /// `Value::GCounter`.
    GCounter,
    /// `Value::PnCounter`.
    PnCounter,
    /// `Value::Set`.
    Set,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Kind::Register => "register",
            Kind::GCounter => "g-counter",
            Kind::PnCounter => "pn-counter",
            Kind::Set => "set",
        };
        f.write_str(name)
    }
}

impl Value {
    /// A register holding `content` (`None`: a tombstone) written at `stamp` by `replica`.
    pub fn register(stamp: Timestamp, replica: ReplicaId, content: Option<Vec<u8>>) -> Value {
        Value::Register(LwwRegister::new(stamp, replica, content))
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Register(_) => Kind::Register,
            Value::GCounter(_) => Kind::GCounter,
            Value::PnCounter(_) => Kind::PnCounter,
            Value::Set(_) => Kind::Set,
        }
    }

    /// An empty value of `kind`.
    pub fn empty(kind: Kind) -> Value {
        match kind {
            Kind::Register => Value::Register(LwwRegister::default()),
            Kind::GCounter => Value::GCounter(GCounter::new()),
            Kind::PnCounter => Value::PnCounter(PnCounter::new()),
            Kind::Set => Value::Set(OrSet::new()),
        }
    }

    /// The register's live content (`None` for other kinds, tombstones and unwritten ones).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Register(register) => register.value()?.as_deref(),
            _ => None,
        }
    }

    /// The counter's value (`None` for registers and sets).
    pub fn count(&self) -> Option<i128> {
        match self {
            Value::GCounter(counter) => Some(i128::from(counter.value())),
            Value::PnCounter(counter) => Some(counter.value()),
            _ => None,
        }
    }

    /// The set's elements in order (`None` for other kinds).
    pub fn elements(&self) -> Option<Vec<&[u8]>> {
        match self {
            Value::Set(set) => Some(set.elements().map(Vec::as_slice).collect()),
            _ => None,
        }
    }

    /// Whether this is a register tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Value::Register(register) if matches!(register.value(), Some(None)))
    }

    /// Joins `other` into `self` (kind rank first, then the kind's join); returns whether
    /// `self` changed.
    pub fn merge(&mut self, other: &Value) -> bool {
        if other.kind() > self.kind() {
            *self = other.clone();
            return true;
        }
        match (&mut *self, other) {
            (Value::Register(ours), Value::Register(theirs)) => ours.join(theirs),
            (Value::GCounter(ours), Value::GCounter(theirs)) => ours.join(theirs),
            (Value::PnCounter(ours), Value::PnCounter(theirs)) => ours.join(theirs),
            (Value::Set(ours), Value::Set(theirs)) => ours.join(theirs),
            // `other` ranks lower: the join is `self`.
            _ => false,
        }
    }
}

/// A local change to one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Write (`Some`) or delete (`None`) a register.
    Register(Option<Vec<u8>>),
    /// Add to a grow-only counter.
    Increment(u64),
    /// Add (or, negative, subtract) to a PN-counter.
    Add(i64),
    /// Insert an element into a set.
    Insert(Vec<u8>),
    /// Remove an element (every add of it this replica has seen) from a set.
    Remove(Vec<u8>),
}

impl Update {
    /// The kind of value it applies to.
    pub fn kind(&self) -> Kind {
        match self {
            Update::Register(_) => Kind::Register,
            Update::Increment(_) => Kind::GCounter,
            Update::Add(_) => Kind::PnCounter,
            Update::Insert(_) | Update::Remove(_) => Kind::Set,
        }
    }
}

/// The largest key.
pub const KEY_SIZE_BYTES_MAX: usize = 128;
/// The largest register value or set element (so any one write's delta fits a datagram).
pub const VALUE_SIZE_BYTES_MAX: usize = 1024;
/// The largest encoded counter or set. A local update that would grow one past it is refused,
/// and so is a merge (counted by the node): anti-entropy moves a value in fragments, which this
/// keeps within `sync::FRAGMENTS_MAX`.
pub const TYPED_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Why a write or a merge was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The key exceeds `KEY_SIZE_BYTES_MAX`.
    KeyTooLarge {
        /// Its size.
        size_bytes: usize,
    },
    /// The value (register content, set element, or whole encoded counter or set) is too large.
    ValueTooLarge {
        /// Its size.
        size_bytes: usize,
    },
    /// A register that was never written.
    Unwritten,
    /// The key holds a value of another kind.
    KindMismatch {
        /// What the key holds.
        held: Kind,
        /// What the update needs.
        wanted: Kind,
    },
    /// The timestamp is too far in the future.
    Clock(ClockError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::KeyTooLarge { size_bytes } => write!(f, "key of {size_bytes} bytes"),
            StoreError::ValueTooLarge { size_bytes } => write!(f, "value of {size_bytes} bytes"),
            StoreError::Unwritten => write!(f, "unwritten register"),
            StoreError::KindMismatch { held, wanted } => {
                write!(f, "the key holds a {held}, not a {wanted}")
            }
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
    let Value::Register(register) = value else {
        // Counters and sets: their postcard encoding is canonical (ordered maps).
        let encoded = postcard::to_stdvec(value).expect("serializable");
        return hasher.write(&[2]).write(&encoded).digest();
    };
    if let Some((stamp, replica)) = register.stamp() {
        hasher.write_u64(stamp.wall_ms).write_u64(u64::from(stamp.logical)).write_u64(replica.0);
    }
    match register.value() {
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

    /// Sets the replica id stamped on local writes. Drivers give every boot of a node a fresh
    /// random id, so counter slots and set dots of a boot that crashed before persisting its
    /// last updates are never reused.
    pub fn set_replica(&mut self, replica: ReplicaId) {
        self.replica = replica;
    }

    /// The replica id stamped on local writes.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Resumes the HLC after `last` (restored from disk).
    pub fn resume_clock(&mut self, last: Timestamp) {
        self.hlc = Hlc::resume(last.max(self.hlc.last()));
    }

    /// Writes (`Some`) or deletes (`None`) register `key`; returns the delta.
    pub fn put(
        &mut self,
        wall_ms: u64,
        key: &[u8],
        value: Option<Vec<u8>>,
    ) -> Result<Value, StoreError> {
        self.apply(wall_ms, key, Update::Register(value))
    }

    /// Applies a local update to `key`; returns the delta to gossip.
    pub fn apply(&mut self, wall_ms: u64, key: &[u8], update: Update) -> Result<Value, StoreError> {
        check_key(key)?;
        let wanted = update.kind();
        let held = self.entries.get(key).map(Value::kind);
        if let Some(held) = held
            && held != wanted
            // A tombstone may be overwritten by any kind that outranks registers.
            && !(held == Kind::Register && self.entries.get(key).is_some_and(Value::is_tombstone))
        {
            return Err(StoreError::KindMismatch { held, wanted });
        }
        let mut current = match self.entries.get(key) {
            Some(value) if value.kind() == wanted => value.clone(),
            _ => Value::empty(wanted),
        };
        let delta = self.mutate(wall_ms, &mut current, update)?;
        let changed = self.merge_checked(key, &delta);
        debug_assert!(changed || !matches!(delta, Value::Register(_)), "fresh stamps win");
        Ok(delta)
    }

    fn mutate(
        &mut self,
        wall_ms: u64,
        current: &mut Value,
        update: Update,
    ) -> Result<Value, StoreError> {
        let replica = self.replica;
        let delta = match (&mut *current, update) {
            (_, Update::Register(content)) => {
                check_value(content.as_deref().map_or(0, <[u8]>::len))?;
                return Ok(Value::register(self.hlc.now(wall_ms), replica, content));
            }
            (Value::GCounter(counter), Update::Increment(amount)) => {
                Value::GCounter(counter.increment(replica, amount))
            }
            (Value::PnCounter(counter), Update::Add(amount)) => {
                Value::PnCounter(counter.add(replica, amount))
            }
            (Value::Set(set), Update::Insert(element)) => {
                check_value(element.len())?;
                Value::Set(set.insert(replica, element))
            }
            (Value::Set(set), Update::Remove(element)) => {
                Value::Set(set.remove(self.hlc.now(wall_ms), &element))
            }
            (current, update) => {
                let (held, wanted) = (current.kind(), update.kind());
                return Err(StoreError::KindMismatch { held, wanted });
            }
        };
        check_encoded(current_size(current))?;
        Ok(delta)
    }

    /// Merges a value learnt from a peer; returns whether it changed anything.
    pub fn merge(&mut self, wall_ms: u64, key: &[u8], value: &Value) -> Result<bool, StoreError> {
        check_key(key)?;
        match value {
            Value::Register(register) => {
                let Some(content) = register.value() else { return Err(StoreError::Unwritten) };
                check_value(content.as_deref().map_or(0, <[u8]>::len))?;
                let (stamp, _) = register.stamp().expect("written");
                self.hlc.observe(wall_ms, stamp)?;
            }
            typed => {
                let incoming = current_size(typed);
                check_encoded(incoming)?;
                // A join is no larger than its parts: check it only when they could overflow.
                if let Some(held) = self.entries.get(key)
                    && held.kind() == typed.kind()
                    && current_size(held) + incoming > TYPED_VALUE_BYTES_MAX
                {
                    let mut joined = held.clone();
                    if !joined.merge(typed) {
                        return Ok(false);
                    }
                    check_encoded(current_size(&joined))?;
                }
            }
        }
        Ok(self.merge_checked(key, value))
    }

    fn merge_checked(&mut self, key: &[u8], value: &Value) -> bool {
        // Look up before allocating: nearly every merge is of a key already held.
        let Some(entry) = self.entries.get_mut(key) else {
            self.entries.insert(key.to_vec(), value.clone());
            self.mst.insert(key, entry_digest(key, value));
            return true;
        };
        if !entry.merge(value) {
            return false;
        }
        self.mst.insert(key, entry_digest(key, entry));
        true
    }

    /// The live content of register `key` (`None` if absent, deleted or not a register).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).and_then(Value::bytes)
    }

    /// The value of `key`, tombstones included.
    pub fn value(&self, key: &[u8]) -> Option<&Value> {
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

    /// Drops register tombstones written, and set remove-tombstones stamped, before
    /// `wall_ms - ttl_ms`; returns how many entries it dropped or changed.
    pub fn purge(&mut self, wall_ms: u64, ttl_ms: u64) -> usize {
        let horizon = wall_ms.saturating_sub(ttl_ms);
        let mut expired = Vec::new();
        let mut changed = Vec::new();
        for (key, value) in &mut self.entries {
            match value {
                Value::Register(register) => {
                    let old = register.stamp().is_some_and(|(stamp, _)| stamp.wall_ms < horizon);
                    if old && matches!(register.value(), Some(None)) {
                        expired.push(key.clone());
                    }
                }
                Value::Set(set) => {
                    let before = set.tombstone_count();
                    set.purge(Timestamp { wall_ms, logical: 0 }, ttl_ms);
                    if set.tombstone_count() != before {
                        changed.push(key.clone());
                    }
                }
                Value::GCounter(_) | Value::PnCounter(_) => {}
            }
        }
        for key in &expired {
            self.entries.remove(key);
            self.mst.remove(key);
        }
        for key in &changed {
            let digest = entry_digest(key, &self.entries[key]);
            self.mst.insert(key, digest);
        }
        expired.len() + changed.len()
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

/// The encoded size of a counter or set (registers are bounded by their parts).
fn current_size(value: &Value) -> usize {
    match value {
        Value::Register(_) => 0,
        typed => postcard::experimental::serialized_size(typed).unwrap_or(usize::MAX),
    }
}

fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > KEY_SIZE_BYTES_MAX {
        return Err(StoreError::KeyTooLarge { size_bytes: key.len() });
    }
    Ok(())
}

fn check_value(size_bytes: usize) -> Result<(), StoreError> {
    if size_bytes > VALUE_SIZE_BYTES_MAX {
        return Err(StoreError::ValueTooLarge { size_bytes });
    }
    Ok(())
}

fn check_encoded(size_bytes: usize) -> Result<(), StoreError> {
    if size_bytes > TYPED_VALUE_BYTES_MAX {
        return Err(StoreError::ValueTooLarge { size_bytes });
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
        let future = Timestamp { wall_ms: 10_000_000, logical: 0 };
        let future = Value::register(future, ReplicaId(2), None);
        assert!(matches!(store.merge(0, b"k", &future), Err(StoreError::Clock(_))));
        let unwritten = Value::Register(LwwRegister::default());
        assert!(matches!(store.merge(0, b"k", &unwritten), Err(StoreError::Unwritten)));
    }

    /// Applies `update` at `store` and merges the delta into every store in `others`.
    fn gossip(store: &mut Store, others: &mut [&mut Store], key: &[u8], update: Update) {
        let delta = store.apply(1_000, key, update).expect("apply");
        for other in others.iter_mut() {
            other.merge(1_000, key, &delta).expect("merge");
        }
    }

    #[test]
    fn counters_and_sets_replicate_by_delta() {
        let mut a = Store::new(ReplicaId(1));
        let mut b = Store::new(ReplicaId(2));
        gossip(&mut a, &mut [&mut b], b"hits", Update::Increment(3));
        gossip(&mut b, &mut [&mut a], b"hits", Update::Increment(4));
        gossip(&mut a, &mut [&mut b], b"load", Update::Add(10));
        gossip(&mut b, &mut [&mut a], b"load", Update::Add(-3));
        gossip(&mut a, &mut [&mut b], b"tags", Update::Insert(b"x".to_vec()));
        gossip(&mut b, &mut [&mut a], b"tags", Update::Insert(b"y".to_vec()));
        gossip(&mut a, &mut [&mut b], b"tags", Update::Remove(b"x".to_vec()));
        for store in [&mut a, &mut b] {
            assert_eq!(store.value(b"hits").and_then(Value::count), Some(7));
            assert_eq!(store.value(b"load").and_then(Value::count), Some(7));
            let tags = store.value(b"tags").and_then(Value::elements);
            assert_eq!(tags, Some(vec![&b"y"[..]]));
        }
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn updates_of_the_wrong_kind_are_refused_and_kind_conflicts_resolve_by_rank() {
        let mut a = Store::new(ReplicaId(1));
        a.put(1_000, b"k", Some(b"v".to_vec())).expect("put");
        let refused = a.apply(1_000, b"k", Update::Increment(1));
        assert!(matches!(refused, Err(StoreError::KindMismatch { .. })), "{refused:?}");
        a.put(1_000, b"k", None).expect("delete");
        a.apply(1_000, b"k", Update::Increment(1)).expect("a tombstone may change kind");
        let mut b = Store::new(ReplicaId(2));
        let set = b.apply(1_000, b"k", Update::Insert(b"e".to_vec())).expect("insert");
        let counter = a.value(b"k").expect("held").clone();
        assert!(a.merge(1_000, b"k", &set).expect("merge"), "a set outranks a counter");
        assert!(!b.merge(1_000, b"k", &counter).expect("merge"));
        assert_eq!(a.root(), b.root());
    }

    #[test]
    fn oversized_sets_are_refused() {
        let mut store = Store::new(ReplicaId(1));
        let mut refused = None;
        for index in 0..200u32 {
            let element = [index.to_le_bytes().as_slice(), &[0; 1000]].concat();
            if let Err(error) = store.apply(1_000, b"s", Update::Insert(element)) {
                refused = Some(error);
                break;
            }
        }
        assert!(matches!(refused, Some(StoreError::ValueTooLarge { .. })), "{refused:?}");
        let size = current_size(store.value(b"s").expect("held"));
        assert!(size <= TYPED_VALUE_BYTES_MAX, "{size}");
    }

    #[test]
    fn set_tombstones_are_purged_after_the_ttl() {
        let mut store = Store::new(ReplicaId(1));
        store.apply(1_000, b"s", Update::Insert(b"x".to_vec())).expect("insert");
        store.apply(2_000, b"s", Update::Remove(b"x".to_vec())).expect("remove");
        let before = store.root();
        assert_eq!(store.purge(2_500, 1_000), 0);
        assert_eq!(store.purge(3_001, 1_000), 1);
        assert_ne!(store.root(), before);
        let mut fresh = Store::new(ReplicaId(2));
        fresh.merge(0, b"s", store.value(b"s").expect("held")).expect("merge");
        assert_eq!(fresh.root(), store.root());
    }

    /// (replica, op, element, deliver-to mask) steps of a three-replica run.
    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<(usize, u8, u8, u8)>> {
        use proptest::prelude::*;
        prop::collection::vec((0usize..3, 0u8..5, 0u8..4, 0u8..8), 0..40)
    }

    proptest::proptest! {
        /// Deltas delivered to arbitrary subsets, then whole values exchanged: every replica
        /// ends identical (same MST root), and both counters equal the sum of every update.
        #[test]
        fn typed_values_converge_to_the_sum_of_updates(steps in steps()) {
            let mut stores: Vec<Store> = (0..3).map(|r| Store::new(ReplicaId(r + 1))).collect();
            let (mut g_sum, mut pn_sum) = (0u64, 0i64);
            for (replica, op, element, mask) in steps {
                let (amount, signed) = (u64::from(element), i64::from(element) - 2);
                let element = vec![element];
                let (key, update) = match op {
                    0 => {
                        g_sum += amount;
                        (&b"g"[..], Update::Increment(amount))
                    }
                    1 => {
                        pn_sum += signed;
                        (&b"p"[..], Update::Add(signed))
                    }
                    2 => (&b"s"[..], Update::Insert(element)),
                    3 => (&b"s"[..], Update::Remove(element)),
                    _ => (&b"r"[..], Update::Register(Some(element))),
                };
                let delta = stores[replica].apply(1_000, key, update).expect("apply");
                for (other, store) in stores.iter_mut().enumerate() {
                    if mask & (1 << other) != 0 {
                        store.merge(1_000, key, &delta).expect("merge");
                    }
                }
            }
            for from in 0..3 {
                let entries: Vec<(Vec<u8>, Value)> =
                    stores[from].entries().map(|(k, v)| (k.to_vec(), v.clone())).collect();
                for store in &mut stores {
                    for (key, value) in &entries {
                        store.merge(1_000, key, value).expect("merge");
                    }
                }
            }
            let root = stores[0].root();
            for store in &mut stores {
                proptest::prop_assert_eq!(store.root(), root);
                let g = store.value(b"g").and_then(Value::count).unwrap_or(0);
                let p = store.value(b"p").and_then(Value::count).unwrap_or(0);
                proptest::prop_assert_eq!(g, i128::from(g_sum));
                proptest::prop_assert_eq!(p, i128::from(pn_sum));
            }
        }
    }
}
