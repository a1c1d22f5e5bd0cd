//! A compact open-addressing index from content digests to `u64` tickets, for Plumtree's
//! "have I seen this message?" check.
//!
//! Why not a `BTreeMap`: every gossip, `IHave` id and graft asks this question, and a node
//! remembers tens of thousands of ids; a B-tree walk is a chain of cache misses, a probe of
//! this table is usually one. Why it stays deterministic: the table is never iterated, so the
//! slot layout cannot leak into any decision; lookups, inserts and removals give the same
//! answers as a map would. Keys are digests (already well mixed), spread once more by a
//! multiplicative hash; linear probing with backward-shift deletion keeps no tombstones.
//! A hostile peer that crafts colliding digests only lengthens its own probe runs.

use crate::hash::Digest;

/// Slots the table starts with (a power of two).
const SLOTS_MIN: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Slot {
    id: Digest,
    // `EMPTY` marks a free slot.
    ticket: u64,
}

const EMPTY: u64 = u64::MAX;

/// Digest -> ticket, at most half full (it doubles before that).
#[derive(Clone, Debug)]
pub struct IdIndex {
    // Invariant: a power of two long, and more than twice `len`.
    slots: Vec<Slot>,
    len: usize,
}

impl Default for IdIndex {
    fn default() -> IdIndex {
        IdIndex::new()
    }
}

impl IdIndex {
    /// An empty index.
    pub fn new() -> IdIndex {
        IdIndex { slots: vec![Slot { id: Digest::ZERO, ticket: EMPTY }; SLOTS_MIN], len: 0 }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, id: Digest) -> usize {
        let folded = (id.0 as u64) ^ ((id.0 >> 64) as u64);
        let spread = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bits = self.slots.len().trailing_zeros();
        (spread >> (64 - bits)) as usize
    }

    fn find(&self, id: Digest) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut index = self.home(id);
        loop {
            let slot = self.slots[index];
            if slot.ticket == EMPTY {
                return Err(index);
            }
            if slot.id == id {
                return Ok(index);
            }
            index = (index + 1) & mask;
        }
    }

    /// The ticket of `id`, if held.
    pub fn get(&self, id: Digest) -> Option<u64> {
        self.find(id).ok().map(|index| self.slots[index].ticket)
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: Digest) -> bool {
        self.find(id).is_ok()
    }

    /// Maps `id` to `ticket` (replacing an older ticket).
    pub fn insert(&mut self, id: Digest, ticket: u64) {
        assert_ne!(ticket, EMPTY, "ticket reserved for empty slots");
        match self.find(id) {
            Ok(index) => self.slots[index].ticket = ticket,
            Err(index) => {
                self.slots[index] = Slot { id, ticket };
                self.len += 1;
                if self.len * 2 >= self.slots.len() {
                    self.grow();
                }
            }
        }
    }

    /// Removes `id`; returns its ticket if it was held.
    pub fn remove(&mut self, id: Digest) -> Option<u64> {
        let mut hole = self.find(id).ok()?;
        let ticket = self.slots[hole].ticket;
        self.len -= 1;
        // Backward-shift deletion: pull later members of the probe run into the hole when
        // the hole lies between their home and their slot.
        let mask = self.slots.len() - 1;
        let mut index = hole;
        loop {
            self.slots[hole].ticket = EMPTY;
            loop {
                index = (index + 1) & mask;
                let slot = self.slots[index];
                if slot.ticket == EMPTY {
                    return Some(ticket);
                }
                let home = self.home(slot.id);
                // Distance from home to the slot, and from home to the hole (cyclic).
                if (index.wrapping_sub(home) & mask) >= (hole.wrapping_sub(home) & mask) {
                    self.slots[hole] = slot;
                    hole = index;
                    break;
                }
            }
        }
    }

    fn grow(&mut self) {
        let slot_count = self.slots.len() * 2;
        let old = std::mem::replace(
            &mut self.slots,
            vec![Slot { id: Digest::ZERO, ticket: EMPTY }; slot_count],
        );
        for slot in old.into_iter().filter(|slot| slot.ticket != EMPTY) {
            let index = self.find(slot.id).expect_err("ids are unique");
            self.slots[index] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut index = IdIndex::new();
        assert!(index.is_empty());
        for n in 0..1000u64 {
            index.insert(Digest(u128::from(n) * 7919), n);
        }
        assert_eq!(index.len(), 1000);
        assert_eq!(index.get(Digest(7919 * 5)), Some(5));
        assert_eq!(index.remove(Digest(7919 * 5)), Some(5));
        assert_eq!(index.remove(Digest(7919 * 5)), None);
        assert!(!index.contains(Digest(7919 * 5)));
        assert!(index.contains(Digest(7919 * 6)));
        assert_eq!(index.len(), 999);
    }

    proptest! {
        // Small id spaces force collisions, long probe runs and wrap-around.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((0u8..3, 0u128..200, 0u64..5), 1..400),
                              shift in prop_oneof![Just(0u32), Just(64), Just(120)]) {
            let mut index = IdIndex::new();
            let mut model = BTreeMap::new();
            for (op, key, ticket) in ops {
                let id = Digest(key << shift);
                match op {
                    0 => {
                        index.insert(id, ticket);
                        model.insert(id, ticket);
                    }
                    1 => prop_assert_eq!(index.remove(id), model.remove(&id)),
                    _ => prop_assert_eq!(index.get(id), model.get(&id).copied()),
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for (id, ticket) in &model {
                prop_assert_eq!(index.get(*id), Some(*ticket));
            }
        }
    }
}
