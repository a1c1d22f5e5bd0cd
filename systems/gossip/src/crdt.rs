//! State-based CRDTs with delta mutators: every mutation returns a small delta of the same type,
//! and `merge` of a delta or of a whole state is the same join. Merges are commutative,
//! associative and idempotent (property-tested below), so deltas and full states can be
//! gossiped, duplicated and reordered freely.
//!
//! - `LwwRegister`: last writer wins by (HLC timestamp, replica id, value).
//! - `GCounter` / `PnCounter`: per-replica maxima.
//! - `OrSet`: observed-remove, add-wins set with unique dots; removes leave tombstones stamped
//!   with an HLC time and purged after a TTL (`OrSet::purge`).
//!
//! Tombstone TTL safety: a tombstone may be purged only once every replica has seen it. With
//! anti-entropy sessions every `I` and every live pair reconciling within `R` sessions, a TTL
//! of at least `TOMBSTONE_TTL_SESSIONS_MIN * I` covers that, plus the clock-drift bound. A
//! replica partitioned away longer than the TTL must rejoin with a full state pull.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;

/// Identifies the replica that made a change (a node id).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ReplicaId(pub u64);

/// A tombstone TTL must span at least this many anti-entropy intervals.
pub const TOMBSTONE_TTL_SESSIONS_MIN: u32 = 32;

/// A join-semilattice: `merge` is commutative, associative and idempotent.
pub trait Crdt: Clone + PartialEq {
    /// Joins `other` into `self`; returns whether `self` changed.
    fn join(&mut self, other: &Self) -> bool;

    /// Joins `other` into `self`.
    fn merge(&mut self, other: &Self) {
        self.join(other);
    }
}

/// A last-writer-wins register. Ties on timestamp break by replica id, then by value, so the
/// order is total and merge is commutative even for forged duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    // Invariant: `None` only for a register that was never written.
    entry: Option<(Timestamp, ReplicaId, T)>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister { entry: None }
    }
}

impl<T: Ord + Clone> LwwRegister<T> {
    /// A register holding `value` written at `timestamp` by `replica`.
    pub fn new(timestamp: Timestamp, replica: ReplicaId, value: T) -> Self {
        LwwRegister { entry: Some((timestamp, replica, value)) }
    }

    /// Writes `value`; returns the delta (the register as written).
    pub fn set(&mut self, timestamp: Timestamp, replica: ReplicaId, value: T) -> Self {
        let delta = LwwRegister::new(timestamp, replica, value);
        self.merge(&delta);
        delta
    }

    /// The current value.
    pub fn value(&self) -> Option<&T> {
        self.entry.as_ref().map(|(_, _, value)| value)
    }

    /// The timestamp and writer of the current value.
    pub fn stamp(&self) -> Option<(Timestamp, ReplicaId)> {
        self.entry.as_ref().map(|(timestamp, replica, _)| (*timestamp, *replica))
    }
}

impl<T: Ord + Clone> Crdt for LwwRegister<T> {
    fn join(&mut self, other: &Self) -> bool {
        let Some(theirs) = &other.entry else { return false };
        let newer = match &self.entry {
            None => true,
            Some(ours) => (theirs.0, theirs.1, &theirs.2) > (ours.0, ours.1, &ours.2),
        };
        if newer {
            self.entry = Some(theirs.clone());
        }
        newer
    }
}

/// What `join_max` did.
struct JoinMax {
    /// Some value rose or a key was added.
    changed: bool,
    /// A key was added.
    inserted: bool,
}

/// Joins two maps pointwise by maximum (the join of G-Counter slots, set tombstones and add
/// counters).
fn join_max<K: Ord + Copy, V: Ord + Copy>(
    ours: &mut BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
) -> JoinMax {
    let mut outcome = JoinMax { changed: false, inserted: false };
    for (key, value) in theirs {
        match ours.get_mut(key) {
            Some(held) if *held >= *value => {}
            Some(held) => {
                *held = *value;
                outcome.changed = true;
            }
            None => {
                ours.insert(*key, *value);
                outcome = JoinMax { changed: true, inserted: true };
            }
        }
    }
    outcome
}

/// A grow-only counter: one monotonic count per replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounter {
    counts: BTreeMap<ReplicaId, u64>,
}

impl GCounter {
    /// A zero counter.
    pub fn new() -> GCounter {
        GCounter::default()
    }

    /// Adds `amount` on behalf of `replica`; returns the delta. Saturates at `u64::MAX`.
    pub fn increment(&mut self, replica: ReplicaId, amount: u64) -> GCounter {
        let count = self.counts.entry(replica).or_insert(0);
        *count = count.saturating_add(amount);
        GCounter { counts: BTreeMap::from([(replica, *count)]) }
    }

    /// The total (saturating).
    pub fn value(&self) -> u64 {
        self.counts.values().fold(0u64, |sum, count| sum.saturating_add(*count))
    }
}

impl Crdt for GCounter {
    fn join(&mut self, other: &GCounter) -> bool {
        join_max(&mut self.counts, &other.counts).changed
    }
}

/// A counter that goes up and down: two grow-only counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PnCounter {
    /// A zero counter.
    pub fn new() -> PnCounter {
        PnCounter::default()
    }

    /// Adds `amount` (may be negative) on behalf of `replica`; returns the delta.
    pub fn add(&mut self, replica: ReplicaId, amount: i64) -> PnCounter {
        let mut delta = PnCounter::new();
        if amount >= 0 {
            delta.increments = self.increments.increment(replica, amount.unsigned_abs());
        } else {
            delta.decrements = self.decrements.increment(replica, amount.unsigned_abs());
        }
        delta
    }

    /// Increments minus decrements.
    pub fn value(&self) -> i128 {
        i128::from(self.increments.value()) - i128::from(self.decrements.value())
    }
}

impl Crdt for PnCounter {
    fn join(&mut self, other: &PnCounter) -> bool {
        let up = self.increments.join(&other.increments);
        let down = self.decrements.join(&other.decrements);
        up || down
    }
}

/// A unique tag of one add: the adding replica and its add sequence number.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Dot {
    /// The replica that added.
    pub replica: ReplicaId,
    /// That replica's add counter.
    pub counter: u64,
}

/// An observed-remove set (add wins over a concurrent remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet<T: Ord> {
    // Invariant: no element maps to an empty set, and no live dot is tombstoned.
    adds: BTreeMap<T, BTreeSet<Dot>>,
    // Removed dots and when they were removed (the largest time seen).
    tombstones: BTreeMap<Dot, Timestamp>,
    // The largest add counter seen per replica, so new dots are unique.
    counters: BTreeMap<ReplicaId, u64>,
}

impl<T: Ord> Default for OrSet<T> {
    fn default() -> Self {
        OrSet { adds: BTreeMap::new(), tombstones: BTreeMap::new(), counters: BTreeMap::new() }
    }
}

impl<T: Ord + Clone> OrSet<T> {
    /// An empty set.
    pub fn new() -> Self {
        OrSet::default()
    }

    /// Adds `element` with a fresh dot of `replica`; returns the delta.
    pub fn insert(&mut self, replica: ReplicaId, element: T) -> Self {
        let counter = self.counters.get(&replica).copied().unwrap_or(0) + 1;
        let dot = Dot { replica, counter };
        let mut delta = OrSet::new();
        delta.adds.insert(element, BTreeSet::from([dot]));
        delta.counters.insert(replica, counter);
        self.merge(&delta);
        delta
    }

    /// Removes every observed add of `element`, stamping the tombstones `now`; returns the delta.
    pub fn remove(&mut self, now: Timestamp, element: &T) -> Self {
        let mut delta = OrSet::new();
        if let Some(dots) = self.adds.get(element) {
            delta.tombstones = dots.iter().map(|dot| (*dot, now)).collect();
        }
        self.merge(&delta);
        delta
    }

    /// Whether `element` is in the set.
    pub fn contains(&self, element: &T) -> bool {
        self.adds.contains_key(element)
    }

    /// The elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &T> {
        self.adds.keys()
    }

    /// Tombstones held.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Drops tombstones older than `ttl_ms` at `now` (see the module doc for when that is safe).
    pub fn purge(&mut self, now: Timestamp, ttl_ms: u64) {
        let horizon = now.wall_ms.saturating_sub(ttl_ms);
        self.tombstones.retain(|_, removed| removed.wall_ms >= horizon);
    }
}

impl<T: Ord + Clone> Crdt for OrSet<T> {
    fn join(&mut self, other: &Self) -> bool {
        let tombstones = join_max(&mut self.tombstones, &other.tombstones);
        let mut changed = tombstones.changed;
        for (element, dots) in &other.adds {
            for dot in dots.iter().filter(|dot| !self.tombstones.contains_key(dot)) {
                match self.adds.get_mut(element) {
                    Some(ours) => changed |= ours.insert(*dot),
                    None => {
                        self.adds.insert(element.clone(), BTreeSet::from([*dot]));
                        changed = true;
                    }
                }
            }
        }
        changed |= join_max(&mut self.counters, &other.counters).changed;
        if tombstones.inserted {
            // Only a new tombstone can hide a dot this set already held.
            let tombstones = &self.tombstones;
            self.adds.retain(|_, dots| {
                dots.retain(|dot| !tombstones.contains_key(dot));
                !dots.is_empty()
            });
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stamp(wall_ms: u64) -> Timestamp {
        Timestamp { wall_ms, logical: 0 }
    }

    /// `join` reports a change exactly when the state changed.
    #[track_caller]
    fn check_join_reports_change<C: Crdt + std::fmt::Debug>(a: &C, b: &C) {
        let mut joined = a.clone();
        let changed = joined.join(b);
        assert_eq!(changed, joined != *a, "{a:?} join {b:?}");
    }

    #[track_caller]
    fn check_laws<C: Crdt + std::fmt::Debug>(a: &C, b: &C, c: &C) {
        check_join_reports_change(a, b);
        check_join_reports_change(b, c);
        let mut ab = a.clone();
        ab.merge(b);
        let mut ba = b.clone();
        ba.merge(a);
        assert_eq!(ab, ba, "commutative");
        let mut ab_c = ab.clone();
        ab_c.merge(c);
        let mut bc = b.clone();
        bc.merge(c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        assert_eq!(ab_c, a_bc, "associative");
        let mut aa = a.clone();
        aa.merge(a);
        assert_eq!(&aa, a, "idempotent");
    }

    /// A replica's history of operations, applied to build a state: (op, replica, element).
    type Ops = Vec<(u8, u8, u8)>;

    fn ops() -> impl Strategy<Value = Ops> {
        prop::collection::vec((0u8..3, 0u8..3, 0u8..6), 0..12)
    }

    fn lww(ops: &Ops) -> LwwRegister<u8> {
        let mut register = LwwRegister::default();
        for (time, replica, value) in ops {
            register.set(stamp(u64::from(*time)), ReplicaId(u64::from(*replica)), *value);
        }
        register
    }

    fn pn(ops: &Ops) -> PnCounter {
        let mut counter = PnCounter::new();
        for (sign, replica, amount) in ops {
            let amount = i64::from(*amount) * if *sign == 0 { -1 } else { 1 };
            counter.add(ReplicaId(u64::from(*replica)), amount);
        }
        counter
    }

    /// Builds an OR-Set by one replica's ops, after first merging `seen` (shared history).
    fn orset(ops: &Ops, me: u64, seen: &OrSet<u8>) -> OrSet<u8> {
        let mut set = seen.clone();
        for (index, (op, _, element)) in ops.iter().enumerate() {
            if *op == 0 {
                set.remove(stamp(index as u64), element);
            } else {
                set.insert(ReplicaId(me), *element);
            }
        }
        set
    }

    proptest! {
        #[test]
        fn lww_register_laws(a in ops(), b in ops(), c in ops()) {
            check_laws(&lww(&a), &lww(&b), &lww(&c));
        }

        #[test]
        fn pn_counter_laws(a in ops(), b in ops(), c in ops()) {
            check_laws(&pn(&a), &pn(&b), &pn(&c));
        }

        #[test]
        fn or_set_laws(shared in ops(), a in ops(), b in ops(), c in ops()) {
            let base = orset(&shared, 9, &OrSet::new());
            check_laws(&orset(&a, 0, &base), &orset(&b, 1, &base), &orset(&c, 2, &base));
        }

        #[test]
        fn deltas_reproduce_the_state(a in ops()) {
            let mut state = OrSet::new();
            let mut rebuilt = OrSet::new();
            for (index, (op, _, element)) in a.iter().enumerate() {
                let delta = if *op == 0 {
                    state.remove(stamp(index as u64), element)
                } else {
                    state.insert(ReplicaId(1), *element)
                };
                rebuilt.merge(&delta);
            }
            prop_assert_eq!(state.elements().collect::<Vec<_>>(),
                rebuilt.elements().collect::<Vec<_>>());
        }
    }

    #[test]
    fn add_wins_over_a_concurrent_remove() {
        let mut a = OrSet::new();
        a.insert(ReplicaId(1), "x");
        let mut b = a.clone();
        b.remove(stamp(5), &"x");
        a.insert(ReplicaId(1), "x");
        a.merge(&b);
        assert!(a.contains(&"x"));
        b.merge(&a);
        assert!(b.contains(&"x"));
    }

    #[test]
    fn tombstones_expire_after_the_ttl() {
        let mut set = OrSet::new();
        set.insert(ReplicaId(1), 7u8);
        set.remove(stamp(1_000), &7);
        set.purge(stamp(1_500), 1_000);
        assert_eq!(set.tombstone_count(), 1);
        set.purge(stamp(2_001), 1_000);
        assert_eq!(set.tombstone_count(), 0);
        assert!(!set.contains(&7));
    }

    #[test]
    fn lww_tiebreaks_by_replica() {
        let mut register = LwwRegister::new(stamp(1), ReplicaId(2), "b");
        register.merge(&LwwRegister::new(stamp(1), ReplicaId(1), "a"));
        assert_eq!(register.value(), Some(&"b"));
        register.merge(&LwwRegister::new(stamp(2), ReplicaId(1), "c"));
        assert_eq!(register.value(), Some(&"c"));
    }

    #[test]
    fn g_counter_sums_replicas() {
        let mut a = GCounter::new();
        a.increment(ReplicaId(1), 3);
        let mut b = GCounter::new();
        let delta = b.increment(ReplicaId(2), 4);
        a.merge(&delta);
        a.merge(&delta);
        assert_eq!(a.value(), 7);
    }
}
