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

use crate::types::NodeId;

/// The most nodes (slots) the matrices hold: 2 x 2 GiB at the limit.
pub const SLOTS_MAX: usize = 1 << 17;

/// The bit matrices.
#[derive(Clone, Debug, Default)]
pub struct Adjacency {
    /// Node -> its slot, sorted by node: one contiguous array, so that a sorted peer list
    /// finds its slots by galloping forward through it rather than by a tree walk per peer
    /// (in a large tailnet each walk is several cache misses). New ids are the largest, so
    /// adding appends.
    slot_of: Vec<(NodeId, u32)>,
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
}

fn bit(slot: u32) -> (usize, u64) {
    (slot as usize / 64, 1u64 << (slot % 64))
}

impl Adjacency {
    /// Gives `node` a slot with an empty row and column; `false` if it is full.
    pub fn add(&mut self, node: NodeId) -> bool {
        let at = self.slot_of.partition_point(|&(id, _)| id < node);
        assert!(self.slot_of.get(at).is_none_or(|&(id, _)| id != node), "node {node} added twice");
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
        self.slot_of.insert(at, (node, slot));
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
        let Some(slot) = self.slot(node) else { return };
        self.set_row(node, &[]);
        for watcher in self.watchers(node) {
            let watcher_slot = self.slot(watcher).expect("a watcher has a slot");
            self.flip(watcher_slot, slot, false);
        }
        let at = self.slot_of.partition_point(|&(id, _)| id < node);
        self.slot_of.remove(at);
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
        let (Some(row), Some(col)) = (self.slot(node), self.slot(peer)) else {
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
        let Some(slot) = self.slot(node) else { return Vec::new() };
        self.members(&self.rows, slot)
    }

    /// The nodes whose rows hold `node`, sorted by id.
    pub fn watchers(&self, node: NodeId) -> Vec<NodeId> {
        let Some(slot) = self.slot(node) else { return Vec::new() };
        self.members(&self.cols, slot)
    }

    /// `node`'s slot.
    fn slot(&self, node: NodeId) -> Option<u32> {
        let at = self.slot_of.binary_search_by_key(&node, |&(id, _)| id).ok()?;
        Some(self.slot_of[at].1)
    }

    /// `peers` (unknown ids skipped) as a row of bits. A sorted list gallops forward through
    /// `slot_of` (each step costs the log of the gap to the next peer, in memory read in
    /// order); an unsorted one is looked up peer by peer.
    fn bits_of(&self, peers: &[NodeId]) -> Vec<u64> {
        let mut row = vec![0u64; self.words];
        let mut set = |slot: u32| {
            let (word, bit) = bit(slot);
            row[word] |= bit;
        };
        if !peers.is_sorted() {
            peers.iter().filter_map(|&peer| self.slot(peer)).for_each(set);
            return row;
        }
        let mut rest = self.slot_of.as_slice();
        for &peer in peers {
            let mut reach = 1;
            while reach < rest.len() && rest[reach].0 < peer {
                reach *= 2;
            }
            let window = &rest[reach / 2..rest.len().min(reach + 1)];
            rest = &rest[reach / 2 + window.partition_point(|&(id, _)| id < peer)..];
            match rest.first() {
                Some(&(id, slot)) if id == peer => {
                    set(slot);
                    rest = &rest[1..];
                }
                _ => {}
            }
        }
        row
    }

    /// Sets `node`'s row to `peers` (sorted; unknown ids are skipped); returns `(peer, added)`
    /// for each peer that entered or left the row, sorted by id.
    pub fn set_row(&mut self, node: NodeId, peers: &[NodeId]) -> Vec<(NodeId, bool)> {
        let Some(slot) = self.slot(node) else { return Vec::new() };
        let row = self.bits_of(peers);
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
            let Some(slot) = self.slot(node) else { continue };
            let row = self.bits_of(&peers);
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
        matrices + self.id_of.capacity() * 16 + self.slot_of.capacity() * 16
    }

    /// Checks that `cols` is the transpose of `rows` (costs `capacity^2` bit tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.slot_of.is_sorted_by(|a, b| a.0 < b.0) {
            return Err("the slot index is out of order".into());
        }
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

    /// Rows set from sorted lists (galloping) and from unsorted ones (one lookup per peer),
    /// with unknown ids among them, hold exactly the known peers.
    #[test]
    fn sorted_and_unsorted_peer_lists_give_the_same_rows() {
        let mut adjacency = Adjacency::default();
        let known: Vec<NodeId> = (0..3000).map(|n| n * 7 + n % 5).collect();
        for &node in &known {
            assert!(adjacency.add(node));
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..40 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let stride = 1 + (state >> 40) as usize % 97;
            let mut peers: Vec<NodeId> = (0..21_000).step_by(stride).collect();
            let node = known[round * 11];
            peers.retain(|&peer| peer != node);
            let expected: Vec<NodeId> =
                peers.iter().copied().filter(|peer| known.binary_search(peer).is_ok()).collect();
            if round % 2 == 1 {
                peers.reverse();
            }
            adjacency.set_row(node, &peers);
            assert_eq!(adjacency.row(node), expected, "round {round}");
        }
        assert_eq!(adjacency.check_invariants(), Ok(()));
    }
}
