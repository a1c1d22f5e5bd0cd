//! Merkle Search Tree (Auvolat & Taïani, 2019): a Merkle tree over an ordered keyspace whose
//! shape depends only on the set of keys, so two replicas holding the same entries have the
//! same root digest whatever order they learnt them in.
//!
//! Shape: a key's level is the number of leading zero base-16 digits of its hash. A node at
//! level `L` holds, in key order, the keys of level `L` within its range; between and around
//! them hang subtrees of the lower-level keys of each gap. A gap with no key of level `L - 1`
//! collapses to the node of its highest level (so the shape is a pure function of the range's
//! keys). Node digests hash level, entries and child digests; an empty subtree is
//! `Digest::ZERO`.
//!
//! Sync (`PullSession`): fetch the remote root; for each fetched node, every entry we lack (or
//! hold with another digest) is missing here, and every child digest we do not hold as a node
//! of our own tree is a differing subtree to fetch. Subtrees we hold are identical and skipped.
//! Pulling both ways finds exactly the symmetric difference.
//!
//! Maintenance: entries live in a sorted map with their levels; changed keys are remembered and
//! the node index is brought up to date lazily when a root is asked for: only nodes whose range
//! holds a change are rebuilt (old children are reused by matching separators), then nodes no
//! longer reachable are dropped. Node lookups serve the tree as of the last refresh, so a
//! responder answers one consistent tree even while writes land.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::hash::{Digest, Hasher, hash_bytes};

/// Bits per digit of the level function: base 16, so about 15 entries per node.
pub const LEVEL_DIGIT_BITS: u32 = 4;
/// The largest key a tree accepts.
pub const KEY_SIZE_BYTES_MAX: usize = 256;
/// The most nodes one pull session may fetch before it gives up.
pub const SESSION_NODES_MAX: u64 = 1 << 22;
/// The most entries one received node may hold.
pub const NODE_ENTRIES_MAX: usize = 4096;

/// The level of `key` in every tree.
pub fn key_level(key: &[u8]) -> u8 {
    let level = hash_bytes(key).0.leading_zeros() / LEVEL_DIGIT_BITS;
    level as u8
}

/// One key and the digest of its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MstEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The digest of its value (a version fingerprint).
    pub digest: Digest,
}

/// One tree node: `children.len() == entries.len() + 1`, entries in strictly ascending key
/// order, every key at `level`, and child `i` holding the keys between entries `i - 1` and `i`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MstNode {
    /// The level of every entry here.
    pub level: u8,
    /// This node's keys.
    pub entries: Vec<MstEntry>,
    /// Subtree digests (`Digest::ZERO` for empty).
    pub children: Vec<Digest>,
}

impl MstNode {
    /// The node's digest.
    pub fn digest(&self) -> Digest {
        let mut hasher = Hasher::new();
        hasher.write(&[self.level]);
        hasher.write_u64(self.entries.len() as u64);
        for entry in &self.entries {
            hasher.write(&entry.key).write_digest(entry.digest);
        }
        for child in &self.children {
            hasher.write_digest(*child);
        }
        hasher.digest()
    }

    fn is_well_formed(&self) -> bool {
        self.children.len() == self.entries.len() + 1
            && !self.entries.is_empty()
            && self.entries.len() <= NODE_ENTRIES_MAX
            && self.entries.windows(2).all(|pair| pair[0].key < pair[1].key)
    }
}

/// A Merkle Search Tree over byte keys.
#[derive(Clone, Debug, Default)]
pub struct Mst {
    // Each key's digest and level.
    items: BTreeMap<Vec<u8>, (Digest, u8)>,
    // Invariant: when `dirty` is empty, `index` holds exactly the nodes of the tree of
    // `items` and `root` is its root. Otherwise they describe the items as they were before
    // the keys in `dirty` changed.
    index: Index,
    root: Digest,
    dirty: BTreeSet<Vec<u8>>,
    built_count: u64,
}

impl Mst {
    /// An empty tree.
    pub fn new() -> Mst {
        Mst::default()
    }

    /// Sets `key`'s digest.
    pub fn insert(&mut self, key: &[u8], digest: Digest) {
        assert!(key.len() <= KEY_SIZE_BYTES_MAX, "key too long");
        assert_ne!(digest, Digest::ZERO);
        if self.get(key) != Some(digest) {
            self.items.insert(key.to_vec(), (digest, key_level(key)));
            self.dirty.insert(key.to_vec());
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) {
        if self.items.remove(key).is_some() {
            self.dirty.insert(key.to_vec());
        }
    }

    /// The digest stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Digest> {
        self.items.get(key).map(|(digest, _)| *digest)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the tree has no keys.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every entry in key order.
    pub fn items(&self) -> impl Iterator<Item = (&[u8], Digest)> {
        self.items.iter().map(|(key, (digest, _))| (key.as_slice(), *digest))
    }

    /// Brings the node index up to date: rebuilds only the nodes on the paths to changed keys
    /// (reusing every subtree whose range holds no change), and drops the nodes that fell out.
    pub fn refresh(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty: Vec<&[u8]> = self.dirty.iter().map(Vec::as_slice).collect();
        let before = self.index.built_count;
        let old = Some(self.root);
        let root = rebuild(old, Bounds::default(), &dirty, &self.items, &mut self.index);
        self.built_count += self.index.built_count - before;
        self.index.hold(root);
        self.index.release(self.root);
        self.root = root;
        self.dirty.clear();
        assert_eq!(self.root == Digest::ZERO, self.items.is_empty());
        if cfg!(debug_assertions) {
            self.check_refreshed();
        }
    }

    /// Refreshes, then checks the tree against its invariants, panicking on a violation (a
    /// bug): the nodes reachable from the root hold exactly `items`, in key order, each key at
    /// its level and within its node's separators; each node's level is above its children's
    /// and is the highest level among the keys of its range, all of which it holds (so the
    /// shape is the pure function of the keys); every digest matches its node; and the index
    /// holds exactly the reachable nodes, each counted once per parent (and once as the root).
    /// `refresh` runs it in builds with debug assertions (the `sim` profile). O(nodes x depth).
    pub fn check_invariants(&mut self) {
        self.refresh();
        self.check_refreshed();
    }

    fn check_refreshed(&self) {
        assert!(self.dirty.is_empty(), "checked only when refreshed");
        let mut entries = Vec::with_capacity(self.items.len());
        let mut references: BTreeMap<Digest, u32> = BTreeMap::new();
        if self.root != Digest::ZERO {
            references.insert(self.root, 1);
        }
        self.check_subtree(self.root, Bounds::default(), None, &mut entries, &mut references);
        assert_eq!(entries.len(), self.items.len(), "the tree holds every item once");
        for ((key, digest), (item_key, (item_digest, level))) in entries.iter().zip(&self.items) {
            assert!(*key == item_key.as_slice() && digest == item_digest, "tree entry = item");
            assert_eq!(*level, key_level(key), "an item's cached level");
        }
        assert_eq!(self.index.nodes.len(), references.len(), "the index holds only the tree");
        for (digest, (node, count)) in &self.index.nodes {
            assert_eq!(node.digest(), *digest, "an index node under its own digest");
            assert_eq!(references.get(digest), Some(count), "node {digest:?} reference count");
        }
    }

    /// Checks the subtree `digest` between `bounds`, under a node of level `above`; appends its
    /// entries in key order and counts one reference to each of its nodes' children.
    fn check_subtree<'a>(
        &'a self,
        digest: Digest,
        bounds: Bounds<'a>,
        above: Option<u8>,
        entries: &mut Vec<(&'a [u8], Digest)>,
        references: &mut BTreeMap<Digest, u32>,
    ) {
        if digest == Digest::ZERO {
            return;
        }
        let node = self.node(digest).expect("every child of the tree is in the index");
        assert!(node.is_well_formed(), "node {digest:?} is well formed");
        assert!(above.is_none_or(|above| node.level < above), "levels fall toward the leaves");
        let in_range = self.items.range::<[u8], _>(bounds.range());
        let (mut highest, mut at_level) = (0, 0);
        for (_, (_, level)) in in_range {
            highest = highest.max(*level);
            at_level += usize::from(*level == node.level);
        }
        assert_eq!(highest, node.level, "a node is at its range's highest level");
        assert_eq!(at_level, node.entries.len(), "a node holds every key of its level");
        for (position, child) in node.children.iter().enumerate() {
            let low = position.checked_sub(1).map(|before| node.entries[before].key.as_slice());
            let high = node.entries.get(position).map(|entry| entry.key.as_slice());
            if *child != Digest::ZERO {
                *references.entry(*child).or_insert(0) += 1;
            }
            let child_bounds = Bounds { low: low.or(bounds.low), high: high.or(bounds.high) };
            self.check_subtree(*child, child_bounds, Some(node.level), entries, references);
            if let Some(entry) = node.entries.get(position) {
                assert_eq!(key_level(&entry.key), node.level, "a key at its node's level");
                assert!(bounds.low.is_none_or(|low| low < entry.key.as_slice()), "above low");
                assert!(bounds.high.is_none_or(|high| entry.key.as_slice() < high), "below high");
                entries.push((&entry.key, entry.digest));
            }
        }
    }

    /// The root digest (refreshing first).
    pub fn root(&mut self) -> Digest {
        self.refresh();
        self.root
    }

    /// The node with `digest`, if this tree had it at the last refresh. A responder serves
    /// nodes from that snapshot, so a session sees one consistent tree even while writes land.
    pub fn node(&self, digest: Digest) -> Option<&MstNode> {
        self.index.nodes.get(&digest).map(|(node, _)| node)
    }

    /// Nodes newly built by refreshes so far (how much work incremental updates did).
    pub fn built_count(&self) -> u64 {
        self.built_count
    }

    /// Nodes in the tree (as of the last refresh).
    pub fn node_count(&self) -> usize {
        self.index.nodes.len()
    }
}

/// Nodes by digest, each with the number of parents (or roots) holding it; a node whose
/// count drops to zero is dropped with whatever it alone held.
#[derive(Clone, Debug, Default)]
struct Index {
    nodes: BTreeMap<Digest, (MstNode, u32)>,
    built_count: u64,
}

impl Index {
    /// Registers `node` (holding its children) unless present; returns its digest.
    fn add(&mut self, node: MstNode) -> Digest {
        assert!(node.is_well_formed());
        let digest = node.digest();
        if !self.nodes.contains_key(&digest) {
            for child in &node.children {
                self.hold(*child);
            }
            self.nodes.insert(digest, (node, 0));
            self.built_count += 1;
        }
        digest
    }

    fn hold(&mut self, digest: Digest) {
        if let Some((_, count)) = self.nodes.get_mut(&digest) {
            *count += 1;
        }
    }

    fn release(&mut self, digest: Digest) {
        let mut stack = vec![digest];
        while let Some(digest) = stack.pop() {
            let Some((_, count)) = self.nodes.get_mut(&digest) else { continue };
            *count -= 1;
            if *count == 0 {
                let (node, _) = self.nodes.remove(&digest).expect("present");
                stack.extend(node.children);
            }
        }
    }
}

/// The separator keys around a subtree (`None`: unbounded on that side).
#[derive(Clone, Copy, Debug, Default)]
struct Bounds<'a> {
    low: Option<&'a [u8]>,
    high: Option<&'a [u8]>,
}

impl<'a> Bounds<'a> {
    /// The part of the sorted `keys` strictly inside.
    fn within<'k>(&self, keys: &'k [&'a [u8]]) -> &'k [&'a [u8]] {
        let first = keys.partition_point(|key| self.low.is_some_and(|low| *key <= low));
        let last = keys.partition_point(|key| self.high.is_none_or(|high| *key < high));
        &keys[first..last.max(first)]
    }

    fn range(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        let low = self.low.map_or(Bound::Unbounded, Bound::Excluded);
        let high = self.high.map_or(Bound::Unbounded, Bound::Excluded);
        (low, high)
    }
}

/// The subtree of the old node `old` between `bounds`, if `old` had separators exactly there.
fn old_child(old: Option<&MstNode>, bounds: Bounds<'_>) -> Option<Digest> {
    let old = old?;
    let index = match bounds.low {
        None => 0,
        Some(low) => old.entries.binary_search_by(|entry| entry.key.as_slice().cmp(low)).ok()? + 1,
    };
    let high_matches = match bounds.high {
        None => index == old.entries.len(),
        Some(high) => old.entries.get(index).is_some_and(|entry| entry.key == high),
    };
    high_matches.then(|| old.children[index])
}

type Items = BTreeMap<Vec<u8>, (Digest, u8)>;

/// Builds the subtree of the items within `bounds`; returns its digest. `old` is the digest
/// this range had before the keys in `dirty` (sorted, all within `bounds`) changed, if known.
fn rebuild<'a>(
    old: Option<Digest>,
    bounds: Bounds<'a>,
    dirty: &[&'a [u8]],
    items: &'a Items,
    index: &mut Index,
) -> Digest {
    if dirty.is_empty()
        && let Some(old) = old
    {
        return old;
    }
    let old_node = old.and_then(|digest| index.nodes.get(&digest)).map(|(node, _)| node.clone());
    if let Some(old_node) = old_node {
        let level_of = |key: &[u8]| items.get(key).map_or_else(|| key_level(key), |item| item.1);
        if dirty.iter().all(|key| level_of(key) < old_node.level) {
            // The separators stay: only children with changes in their range are rebuilt.
            let mut node = old_node.clone();
            for (position, child) in node.children.iter_mut().enumerate() {
                let low = position.checked_sub(1).map(|i| old_node.entries[i].key.as_slice());
                let high = old_node.entries.get(position).map(|entry| entry.key.as_slice());
                let gap = Bounds { low: low.or(bounds.low), high: high.or(bounds.high) };
                *child = rebuild(Some(*child), gap, gap.within(dirty), items, index);
            }
            return index.add(node);
        }
    }
    rebuild_range(old, bounds, dirty, items, index)
}

/// The slow path of `rebuild`: the separators themselves changed, so scan the range.
fn rebuild_range<'a>(
    old: Option<Digest>,
    bounds: Bounds<'a>,
    dirty: &[&'a [u8]],
    items: &'a Items,
    index: &mut Index,
) -> Digest {
    let in_range: Vec<(&[u8], Digest, u8)> = items
        .range::<[u8], _>(bounds.range())
        .map(|(key, (digest, level))| (key.as_slice(), *digest, *level))
        .collect();
    let Some(level) = in_range.iter().map(|item| item.2).max() else {
        return Digest::ZERO;
    };
    let old_node = old.and_then(|digest| index.nodes.get(&digest)).map(|(node, _)| node.clone());
    let old_node = old_node.filter(|node| node.level == level);
    let mut node = MstNode { level, entries: Vec::new(), children: Vec::new() };
    let mut low = bounds.low;
    let separators = in_range.iter().filter(|item| item.2 == level).map(|item| Some(*item));
    for separator in separators.chain([None]) {
        let high = separator.map_or(bounds.high, |(key, _, _)| Some(key));
        let gap = Bounds { low, high };
        let old = old_child(old_node.as_ref(), gap);
        node.children.push(rebuild(old, gap, gap.within(dirty), items, index));
        if let Some((key, digest, _)) = separator {
            node.entries.push(MstEntry { key: key.to_vec(), digest });
            low = Some(key);
        }
    }
    index.add(node)
}

/// Why a pull session failed: the peer sent something that cannot belong to the tree it named.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiffError {
    /// A node whose digest is not the one requested.
    DigestMismatch {
        /// What we asked for.
        expected: Digest,
        /// What the node hashes to.
        actual: Digest,
    },
    /// A node we never asked for.
    Unrequested(Digest),
    /// A node that breaks the node invariants.
    Malformed(Digest),
    /// More than `SESSION_NODES_MAX` nodes.
    TooManyNodes,
}

impl std::fmt::Display for DiffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffError::DigestMismatch { expected, actual } => {
                write!(f, "node digest {actual:?} does not match requested {expected:?}")
            }
            DiffError::Unrequested(digest) => write!(f, "unrequested node {digest:?}"),
            DiffError::Malformed(digest) => write!(f, "malformed node {digest:?}"),
            DiffError::TooManyNodes => write!(f, "more than {SESSION_NODES_MAX} nodes"),
        }
    }
}

impl std::error::Error for DiffError {}

/// One pull of a remote tree into a local one: finds the remote entries the local tree lacks or
/// holds with another digest, transferring only differing subtrees. Sans-IO: the caller ships
/// `next_request` digests to the peer and feeds the nodes back with `on_node`.
///
/// The local tree may change during a session: skipping a subtree we hold is right whenever
/// we hold it, and entries are compared against the tree as it is when their node arrives.
#[derive(Clone, Debug, Default)]
pub struct PullSession {
    wanted: Vec<Digest>,
    in_flight: BTreeSet<Digest>,
    seen: BTreeSet<Digest>,
    missing: Vec<MstEntry>,
    /// Nodes received.
    pub node_count: u64,
    /// Entries in the nodes received.
    pub entry_count: u64,
}

impl PullSession {
    /// Starts pulling the remote tree whose root is `remote_root`.
    pub fn new(local: &mut Mst, remote_root: Digest) -> PullSession {
        local.refresh();
        let mut session = PullSession::default();
        session.want(local, remote_root);
        session
    }

    fn want(&mut self, local: &Mst, digest: Digest) {
        if digest != Digest::ZERO && local.node(digest).is_none() && self.seen.insert(digest) {
            self.wanted.push(digest);
        }
    }

    /// The next at most `batch_max` node digests to ask the peer for (now in flight).
    pub fn next_request(&mut self, batch_max: usize) -> Vec<Digest> {
        let keep = self.wanted.len().saturating_sub(batch_max);
        let batch = self.wanted.split_off(keep);
        self.in_flight.extend(batch.iter().copied());
        batch
    }

    /// Whether every requested node has arrived and nothing more is wanted.
    pub fn is_done(&self) -> bool {
        self.wanted.is_empty() && self.in_flight.is_empty()
    }

    /// Digests requested and not yet received (to re-request after a loss).
    pub fn in_flight(&self) -> impl Iterator<Item = &Digest> {
        self.in_flight.iter()
    }

    /// Whether `digest` is requested and not yet received.
    pub fn is_in_flight(&self, digest: Digest) -> bool {
        self.in_flight.contains(&digest)
    }

    /// The peer no longer has `digest` (its tree changed): give up on that subtree.
    pub fn on_unavailable(&mut self, digest: Digest) {
        self.in_flight.remove(&digest);
    }

    /// Feeds a node the peer sent.
    pub fn on_node(&mut self, local: &mut Mst, node: &MstNode) -> Result<(), DiffError> {
        let digest = node.digest();
        if !self.in_flight.remove(&digest) {
            return Err(DiffError::Unrequested(digest));
        }
        if !node.is_well_formed() {
            return Err(DiffError::Malformed(digest));
        }
        self.node_count += 1;
        if self.node_count > SESSION_NODES_MAX {
            return Err(DiffError::TooManyNodes);
        }
        self.entry_count += node.entries.len() as u64;
        for entry in &node.entries {
            if local.get(&entry.key) != Some(entry.digest) {
                self.missing.push(entry.clone());
            }
        }
        for child in &node.children {
            self.want(local, *child);
        }
        Ok(())
    }

    /// The remote entries missing or different here, in no particular order.
    pub fn missing(&self) -> &[MstEntry] {
        &self.missing
    }
}

/// Runs a pull of `remote` into `local` in-process; returns the session (for its counters).
pub fn pull_in_process(local: &mut Mst, remote: &mut Mst, batch_max: usize) -> PullSession {
    remote.refresh();
    let mut session = PullSession::new(local, remote.root());
    let mut round_count = 0u64;
    while !session.is_done() {
        round_count += 1;
        assert!(round_count <= SESSION_NODES_MAX);
        for digest in session.next_request(batch_max) {
            let node = remote.node(digest).expect("remote has every node it names").clone();
            session.on_node(local, &node).expect("honest peer");
        }
    }
    session
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tree(items: &BTreeMap<u16, u8>) -> Mst {
        let mut tree = Mst::new();
        for (key, value) in items {
            tree.insert(&key.to_be_bytes(), hash_bytes(&[*value]));
        }
        tree
    }

    fn model(items: &BTreeMap<u16, u8>) -> BTreeSet<MstEntry> {
        items
            .iter()
            .map(|(key, value)| MstEntry {
                key: key.to_be_bytes().to_vec(),
                digest: hash_bytes(&[*value]),
            })
            .collect()
    }

    fn map() -> impl Strategy<Value = BTreeMap<u16, u8>> {
        prop::collection::btree_map(0u16..2000, 0u8..3, 0..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn root_is_independent_of_history(items in map(), extra in map(), seed in 0u64..1000) {
            // Insert in a scrambled order with extra keys inserted and removed again.
            let mut scrambled: Vec<_> = items.iter().chain(extra.iter()).collect();
            scrambled.sort_by_key(|(key, _)| ((u64::from(**key) * 2_654_435_761) ^ seed) % 9973);
            let mut history = Mst::new();
            for (index, (key, value)) in scrambled.into_iter().enumerate() {
                history.insert(&key.to_be_bytes(), hash_bytes(&[value + 10]));
                if index % 32 == 0 {
                    history.root();
                }
            }
            for key in extra.keys().filter(|key| !items.contains_key(key)) {
                history.remove(&key.to_be_bytes());
            }
            for (key, value) in &items {
                history.insert(&key.to_be_bytes(), hash_bytes(&[*value]));
            }
            prop_assert_eq!(history.root(), tree(&items).root());
        }

        #[test]
        fn incremental_refresh_matches_a_fresh_build(
            start in map(),
            operations in prop::collection::vec(
                (any::<bool>(), 0u16..2000, 0u8..3, 0u8..8),
                0..200,
            ),
        ) {
            let mut incremental = tree(&start);
            incremental.refresh();
            let mut model = start.clone();
            for (insert, key, value, refresh_roll) in operations {
                if insert {
                    incremental.insert(&key.to_be_bytes(), hash_bytes(&[value]));
                    model.insert(key, value);
                } else {
                    incremental.remove(&key.to_be_bytes());
                    model.remove(&key);
                }
                if refresh_roll == 0 {
                    incremental.refresh();
                }
            }
            let mut fresh = tree(&model);
            // Also in release test builds, where `refresh` does not run it.
            incremental.check_invariants();
            fresh.check_invariants();
            prop_assert_eq!(incremental.root(), fresh.root());
            prop_assert_eq!(incremental.node_count(), fresh.node_count());
            let nodes: Vec<&Digest> = incremental.index.nodes.keys().collect();
            let fresh_nodes: Vec<&Digest> = fresh.index.nodes.keys().collect();
            prop_assert_eq!(nodes, fresh_nodes);
        }

        #[test]
        fn pull_both_ways_finds_the_symmetric_difference(a in map(), b in map()) {
            let (mut left, mut right) = (tree(&a), tree(&b));
            let into_left = pull_in_process(&mut left, &mut right, 16);
            let into_right = pull_in_process(&mut right, &mut left, 16);
            let found: BTreeSet<MstEntry> =
                into_left.missing().iter().chain(into_right.missing()).cloned().collect();
            let expected: BTreeSet<MstEntry> =
                model(&a).symmetric_difference(&model(&b)).cloned().collect();
            prop_assert_eq!(found.len(), into_left.missing().len() + into_right.missing().len());
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn identical_trees_transfer_nothing() {
        let items: BTreeMap<u16, u8> = (0..500).map(|key| (key, 1)).collect();
        let (mut left, mut right) = (tree(&items), tree(&items));
        let session = pull_in_process(&mut left, &mut right, 16);
        assert_eq!(session.node_count, 0);
        assert!(session.missing().is_empty());
    }

    #[test]
    fn one_change_rebuilds_and_transfers_one_path() {
        let items: BTreeMap<u16, u8> = (0..5000).map(|key| (key, 1)).collect();
        let (mut left, mut right) = (tree(&items), tree(&items));
        right.refresh();
        let built = right.built_count();
        right.insert(&1234u16.to_be_bytes(), hash_bytes(&[2]));
        right.refresh();
        let depth = usize::from(right.node(right.root).expect("root").level) + 1;
        let rebuilt = (right.built_count() - built) as usize;
        assert!(rebuilt <= depth, "{rebuilt} nodes rebuilt, depth {depth}");
        let session = pull_in_process(&mut left, &mut right, 16);
        assert_eq!(session.missing().len(), 1);
        assert!(session.node_count as usize <= depth, "{} > {depth}", session.node_count);
    }

    #[test]
    fn check_invariants_finds_a_stale_index() {
        let items: BTreeMap<u16, u8> = (0..300).map(|key| (key, 1)).collect();
        let mut broken = tree(&items);
        broken.check_invariants();
        // A key changed behind the tree's back: its entry no longer matches the item.
        let (key, _) = broken.items.iter().next().map(|(k, v)| (k.clone(), *v)).expect("items");
        broken.items.insert(key, (hash_bytes(b"other"), key_level(&0u16.to_be_bytes())));
        let caught = std::panic::catch_unwind(move || broken.check_invariants());
        assert!(caught.is_err(), "a tree entry that differs from its item is a violation");
    }

    #[test]
    fn forged_nodes_are_refused() {
        let mut local = Mst::new();
        let mut remote = tree(&(0..50).map(|key| (key, 1)).collect());
        let root = remote.root();
        let mut session = PullSession::new(&mut local, root);
        let mut node = remote.node(root).expect("root").clone();
        node.entries[0].digest = hash_bytes(b"forged");
        assert!(matches!(session.on_node(&mut local, &node), Err(DiffError::Unrequested(_))));
    }
}
