//! Which peers each node's published map holds: a bit matrix over dense slots, and its
//! transpose.
//!
//! Row `n` of `rows` is the peer set last published to node `n`; row `x` of `cols` (the
//! transpose) is the set of nodes whose maps hold `x`, the nodes to tell when `x` changes.
//! Node ids are never reused and grow without bound, so each node gets a slot, and a removed
//! node's slot (its rows and columns cleared) is reused. Each matrix costs `capacity^2 / 8`
//! bytes: about 312 MB each at 50,000 nodes whatever the policy, where sorted id lists would
//! cost 20 GB for an allow-all policy. Reading a row or a column is `capacity / 64` words plus
//! one step per member; changing a row costs the same plus one bit per flip in `cols`.

use std::collections::BTreeMap;

use crate::types::NodeId;

/// The most nodes (slots) the matrices hold: 2 x 2 GiB at the limit.
pub const SLOTS_MAX: usize = 1 << 17;

/// The bit matrices.
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
    /// The transpose of `rows`.
    // Invariant: bit (a, b) of `cols` equals bit (b, a) of `rows`.
    cols: Vec<u64>,
    /// `slot_of` as a sorted vector, for merging long peer lists; rebuilt when stale.
    sorted: Vec<(NodeId, u32)>,
    sorted_fresh: bool,
}

fn bit(slot: u32) -> (usize, u64) {
    (slot as usize / 64, 1u64 << (slot % 64))
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
                // Grow by an eighth, not by Vec's doubling: a matrix is hundreds of megabytes.
                let more = self.words * (self.id_of.len() / 8).max(64);
                for matrix in [&mut self.rows, &mut self.cols] {
                    if matrix.capacity() < self.id_of.len() * self.words {
                        matrix.reserve_exact(more);
                    }
                    matrix.resize(self.id_of.len() * self.words, 0);
                }
                slot as u32
            }
        };
        self.id_of[slot as usize] = Some(node);
        self.slot_of.insert(node, slot);
        self.sorted_fresh = false;
        true
    }

    /// Reserves room for `nodes` slots up front (a bulk load).
    pub fn reserve(&mut self, nodes: usize) {
        if nodes > self.words * 64 {
            self.grow(nodes.min(SLOTS_MAX));
        }
        let more = nodes.saturating_sub(self.id_of.len()) * self.words;
        self.rows.reserve(more);
        self.cols.reserve(more);
    }

    /// Widens rows to hold at least `slots` columns (a quarter more, to amortise).
    fn grow(&mut self, slots: usize) {
        let words = slots.max(self.words * 64 * 5 / 4).div_ceil(64);
        for matrix in [&mut self.rows, &mut self.cols] {
            let existing = matrix.len().checked_div(self.words).unwrap_or(0);
            let mut wider = vec![0; existing * words];
            for slot in 0..existing {
                let old = &matrix[slot * self.words..(slot + 1) * self.words];
                wider[slot * words..slot * words + self.words].copy_from_slice(old);
            }
            *matrix = wider;
        }
        self.words = words;
    }

    fn members(&self, matrix: &[u64], slot: u32) -> Vec<NodeId> {
        let start = slot as usize * self.words;
        let mut members = Vec::new();
        for (index, word) in matrix[start..start + self.words].iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let member = index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                members.extend(self.id_of[member]);
            }
        }
        members.sort_unstable();
        members
    }

    /// Frees `node`'s slot, clearing its row and column.
    pub fn remove(&mut self, node: NodeId) {
        let Some(&slot) = self.slot_of.get(&node) else { return };
        self.set_row(node, &[]);
        for watcher in self.watchers(node) {
            let watcher_slot = self.slot_of[&watcher];
            self.flip(watcher_slot, slot, false);
        }
        self.slot_of.remove(&node);
        self.sorted_fresh = false;
        self.id_of[slot as usize] = None;
        self.free.push(slot);
        let range = slot as usize * self.words..(slot as usize + 1) * self.words;
        assert!(self.rows[range.clone()].iter().chain(&self.cols[range]).all(|word| *word == 0));
    }

    /// Sets bit (`row`, `col`) of `rows` and its mirror in `cols`.
    fn flip(&mut self, row: u32, col: u32, on: bool) {
        let (col_word, col_bit) = bit(col);
        let (row_word, row_bit) = bit(row);
        let at_row = row as usize * self.words + col_word;
        let at_col = col as usize * self.words + row_word;
        if on {
            self.rows[at_row] |= col_bit;
            self.cols[at_col] |= row_bit;
        } else {
            self.rows[at_row] &= !col_bit;
            self.cols[at_col] &= !row_bit;
        }
    }

    /// Sets whether `node`'s row holds `peer`; returns whether that changed it (unknown ids
    /// change nothing).
    pub fn set(&mut self, node: NodeId, peer: NodeId, on: bool) -> bool {
        let (Some(&row), Some(&col)) = (self.slot_of.get(&node), self.slot_of.get(&peer)) else {
            return false;
        };
        let (word, bit) = bit(col);
        let before = self.rows[row as usize * self.words + word] & bit != 0;
        if before != on {
            self.flip(row, col, on);
        }
        before != on
    }

    /// The peers in `node`'s row, sorted by id.
    pub fn row(&self, node: NodeId) -> Vec<NodeId> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        self.members(&self.rows, slot)
    }

    /// The nodes whose rows hold `node`, sorted by id.
    pub fn watchers(&self, node: NodeId) -> Vec<NodeId> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        self.members(&self.cols, slot)
    }

    /// Whether `peers` is long enough to merge with the sorted slot index; if so, freshens it.
    fn prepare_merge(&mut self, peers: &[NodeId]) -> bool {
        let merge = peers.len() * 8 >= self.slot_of.len() && peers.is_sorted();
        if merge && !self.sorted_fresh {
            self.sorted = self.slot_of.iter().map(|(id, slot)| (*id, *slot)).collect();
            self.sorted_fresh = true;
        }
        merge
    }

    /// `peers` (unknown ids skipped) as a row of bits: merged with the sorted slot index if
    /// `merge` (see `prepare_merge`), else looked up one by one.
    fn bits_of(&self, peers: &[NodeId], merge: bool) -> Vec<u64> {
        let mut row = vec![0u64; self.words];
        let mut set = |slot: u32| {
            let (word, bit) = bit(slot);
            row[word] |= bit;
        };
        if merge {
            assert!(self.sorted_fresh && self.sorted.len() == self.slot_of.len());
            let mut index = 0;
            for peer in peers {
                while index < self.sorted.len() && self.sorted[index].0 < *peer {
                    index += 1;
                }
                if index < self.sorted.len() && self.sorted[index].0 == *peer {
                    set(self.sorted[index].1);
                }
            }
        } else {
            peers.iter().filter_map(|peer| self.slot_of.get(peer)).for_each(|slot| set(*slot));
        }
        row
    }

    /// Sets `node`'s row to `peers` (sorted; unknown ids are skipped); returns `(peer, added)`
    /// for each peer that entered or left the row, sorted by id.
    pub fn set_row(&mut self, node: NodeId, peers: &[NodeId]) -> Vec<(NodeId, bool)> {
        let Some(&slot) = self.slot_of.get(&node) else { return Vec::new() };
        let merge = self.prepare_merge(peers);
        let row = self.bits_of(peers, merge);
        let start = slot as usize * self.words;
        let mut flips = Vec::new();
        for (index, new) in row.iter().enumerate() {
            let old = self.rows[start + index];
            let mut changed = old ^ new;
            while changed != 0 {
                let peer_slot = (index * 64) as u32 + changed.trailing_zeros();
                changed &= changed - 1;
                let peer = self.id_of[peer_slot as usize].expect("a set bit names a live slot");
                let added = new & bit(peer_slot).1 != 0;
                self.flip(slot, peer_slot, added);
                flips.push((peer, added));
            }
        }
        flips.sort_unstable();
        flips
    }

    /// Sets many rows at once, then rebuilds the transpose in 64 x 64 blocks (a bulk load:
    /// setting transpose bits one by one would jump across memory for each).
    pub fn load_rows(&mut self, rows: impl Iterator<Item = (NodeId, Vec<NodeId>)>) {
        for (node, peers) in rows {
            let Some(&slot) = self.slot_of.get(&node) else { continue };
            let merge = self.prepare_merge(&peers);
            let row = self.bits_of(&peers, merge);
            let start = slot as usize * self.words;
            self.rows[start..start + self.words].copy_from_slice(&row);
        }
        self.cols.fill(0);
        let slots = self.id_of.len();
        for row_block in 0..slots.div_ceil(64) {
            for word in 0..self.words {
                let mut block = [0u64; 64];
                for offset in 0..64.min(slots - row_block * 64) {
                    let mut bits = self.rows[(row_block * 64 + offset) * self.words + word];
                    while bits != 0 {
                        block[bits.trailing_zeros() as usize] |= 1 << offset;
                        bits &= bits - 1;
                    }
                }
                for (offset, bits) in block.iter().enumerate() {
                    let col = word * 64 + offset;
                    if *bits != 0 {
                        self.cols[col * self.words + row_block] = *bits;
                    }
                }
            }
        }
    }

    /// The approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        let matrices = (self.rows.capacity() + self.cols.capacity()) * 8;
        matrices + self.id_of.capacity() * 16 + self.slot_of.len() * 40
    }

    /// Checks that `cols` is the transpose of `rows` (costs `capacity^2` bit tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        for (node, slot) in &self.slot_of {
            for peer in self.row(*node) {
                if !self.watchers(peer).contains(node) {
                    return Err(format!("{node} holds {peer} but is not among its watchers"));
                }
            }
            let watchers = self.members(&self.cols, *slot);
            if watchers.iter().any(|watcher| !self.row(*watcher).contains(node)) {
                return Err(format!("a watcher of {node} does not hold it"));
            }
        }
        Ok(())
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
        assert_eq!(adjacency.check_invariants(), Ok(()));
        // A bulk load gives the same rows and transpose as row-by-row setting.
        let rows: Vec<(NodeId, Vec<NodeId>)> = (10..200)
            .map(|node| (node, (10..200).filter(|p| (p + node) % 3 == 0).collect()))
            .collect();
        let mut loaded = adjacency.clone();
        loaded.load_rows(rows.clone().into_iter());
        for (node, peers) in rows {
            adjacency.set_row(node, &peers);
        }
        assert_eq!(loaded.check_invariants(), Ok(()));
        for node in 10..200 {
            assert_eq!(loaded.row(node), adjacency.row(node), "row {node}");
            assert_eq!(loaded.watchers(node), adjacency.watchers(node), "column {node}");
        }
    }
}
