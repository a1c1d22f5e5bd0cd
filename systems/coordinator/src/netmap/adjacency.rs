//! Which peers each node's published map holds: a bit matrix over dense slots.
//!
//! Row `n` is the peer set last published to node `n`; column `x` is the set of nodes whose
//! maps hold `x` (the nodes to tell when `x` changes). Node ids are never reused and grow
//! without bound, so each node gets a slot, and a removed node's slot (row and column cleared)
//! is reused. A row costs `capacity / 8` bytes: about 312 MB at 50,000 nodes whatever the
//! policy, where sorted id lists would cost 20 GB for an allow-all policy. Finding the
//! watchers of `x` scans one column, `capacity` bit tests (tens of microseconds at 50,000).

use std::collections::BTreeMap;

use crate::types::NodeId;

/// The most nodes (slots) the matrix holds.
pub const SLOTS_MAX: usize = 1 << 20;

/// The bit matrix.
#[derive(Clone, Debug, Default)]
pub struct Adjacency {
    slot_of: BTreeMap<NodeId, u32>,
    /// Slot -> the node in it.
    id_of: Vec<Option<NodeId>>,
    free: Vec<u32>,
    /// 64-bit words per row.
    words: usize,
    /// Row-major bits: `rows[slot * words + peer_slot / 64]`.
    rows: Vec<u64>,
}

impl Adjacency {
    /// Gives `node` a slot with an empty row and column; `false` if it is full.
    pub fn add(&mut self, node: NodeId) -> bool {
        assert!(!self.slot_of.contains_key(&node), "node {node} added twice");
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self.id_of.len() >= SLOTS_MAX {
                    return false;
                }
                self.id_of.push(None);
                let slot = self.id_of.len() - 1;
                if slot >= self.words * 64 {
                    self.grow(slot + 1);
                }
                self.rows.resize(self.id_of.len() * self.words, 0);
                slot as u32
            }
        };
        self.id_of[slot as usize] = Some(node);
        self.slot_of.insert(node, slot);
        true
    }

    /// Reserves room for `nodes` slots up front (a bulk load).
    pub fn reserve(&mut self, nodes: usize) {
        if nodes > self.words * 64 {
            self.grow(nodes);
        }
        self.rows.reserve(nodes.saturating_sub(self.id_of.len()) * self.words);
    }

    /// Widens rows to hold at least `slots` columns (a quarter more, to amortise).
    fn grow(&mut self, slots: usize) {
        let words = slots.max(self.words * 64 * 5 / 4).div_ceil(64);
        let existing = self.rows.len().checked_div(self.words).unwrap_or(0);
        let mut rows = vec![0; existing * words];
        for slot in 0..existing {
            let old = &self.rows[slot * self.words..(slot + 1) * self.words];
            rows[slot * words..slot * words + self.words].copy_from_slice(old);
        }
        self.words = words;
        self.rows = rows;
    }

    /// Frees `node`'s slot, clearing its row and column.
    pub fn remove(&mut self, node: NodeId) {
        let Some(slot) = self.slot_of.remove(&node) else { return };
        let slot = slot as usize;
        self.rows[slot * self.words..(slot + 1) * self.words].fill(0);
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        for row in 0..self.id_of.len() {
            self.rows[row * self.words + word] &= !bit;
        }
        self.id_of[slot] = None;
        self.free.push(slot as u32);
        assert!(self.watchers(node).is_empty());
    }

    /// The peers in `node`'s row, sorted by id.
    pub fn row(&self, node: NodeId) -> Vec<NodeId> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        let mut peers = Vec::new();
        let row = &self.rows[slot as usize * self.words..(slot as usize + 1) * self.words];
        for (index, word) in row.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let peer_slot = index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                peers.extend(self.id_of[peer_slot]);
            }
        }
        peers.sort_unstable();
        peers
    }

    /// The nodes whose rows hold `node`, sorted by id.
    pub fn watchers(&self, node: NodeId) -> Vec<NodeId> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let mut watchers: Vec<NodeId> = (0..self.id_of.len())
            .filter(|row| self.rows[row * self.words + word] & bit != 0)
            .filter_map(|row| self.id_of[row])
            .collect();
        watchers.sort_unstable();
        watchers
    }

    /// Sets `node`'s row to `peers` (unknown ids are skipped); returns `(peer, added)` for each
    /// peer that entered or left the row, sorted by id.
    pub fn set_row(&mut self, node: NodeId, peers: &[NodeId]) -> Vec<(NodeId, bool)> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        let mut row = vec![0u64; self.words];
        for peer in peers {
            if let Some(&peer_slot) = self.slot_of.get(peer) {
                row[peer_slot as usize / 64] |= 1 << (peer_slot % 64);
            }
        }
        let start = slot as usize * self.words;
        let mut flips = Vec::new();
        for (index, new) in row.iter().enumerate() {
            let old = self.rows[start + index];
            let mut changed = old ^ new;
            while changed != 0 {
                let bit = changed.trailing_zeros() as usize;
                changed &= changed - 1;
                let peer = self.id_of[index * 64 + bit].expect("a set bit names a live slot");
                flips.push((peer, new & (1 << bit) != 0));
            }
            self.rows[start + index] = *new;
        }
        flips.sort_unstable();
        flips
    }

    /// The approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.rows.capacity() * 8 + self.id_of.capacity() * 16 + self.slot_of.len() * 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_columns_and_slot_reuse() {
        let mut adjacency = Adjacency::default();
        for node in 10..200 {
            assert!(adjacency.add(node));
        }
        assert_eq!(adjacency.set_row(10, &[11, 150, 999]), vec![(11, true), (150, true)]);
        assert_eq!(adjacency.set_row(20, &[150]), vec![(150, true)]);
        assert_eq!(adjacency.watchers(150), vec![10, 20]);
        assert_eq!(adjacency.set_row(10, &[12, 150]), vec![(11, false), (12, true)]);
        assert_eq!(adjacency.row(10), vec![12, 150]);
        adjacency.remove(150);
        assert_eq!(adjacency.row(10), vec![12]);
        assert!(adjacency.add(500));
        assert_eq!(adjacency.watchers(500), Vec::<NodeId>::new());
        assert_eq!(adjacency.row(500), Vec::<NodeId>::new());
        assert_eq!(adjacency.set_row(500, &[10]), vec![(10, true)]);
        assert_eq!(adjacency.watchers(10), vec![500]);
    }
}
