//! Per-node change logs: what changed in a node's map at each version, as ids, not entries.
//!
//! A log entry records, for one version step of one node's map, which peers were added or
//! replaced whole (`Change::Full`), patched (`Change::Patch` with the fields), or removed, and
//! whether the node's own entry, filter or DNS changed. Entries hold ids and flags only: the
//! delta is materialised from the current state when an agent asks, so a merged run of entries
//! is always correct for an agent at any version the run covers (a `Full` sends the current
//! entry, a `Patch` the current values of its fields, a removal of an absent peer is a no-op).
//! That is also why entries can be coalesced freely (`coordinator.netmap.coalesce`).
//!
//! Bounds: at most `LOG_ENTRIES_MAX` entries and `LOG_PEER_CHANGES_MAX` peer changes summed
//! over a node's entries (16 bytes each). Past either, the oldest entries go and the node's
//! `floor` rises: an agent older than the floor gets a full map instead. So at 50,000 nodes the
//! logs hold at most 50,000 x 1,024 x 16 bytes (about 820 MB) in the worst case, and a few
//! entries per node in the ordinary case.

use std::collections::{BTreeMap, VecDeque};

use crate::types::NodeId;

/// The most log entries (versions) kept per node.
pub const LOG_ENTRIES_MAX: usize = 32;
/// The most peer changes kept per node, summed over its entries.
pub const LOG_PEER_CHANGES_MAX: usize = 1024;

/// Which patchable fields of a peer changed (a bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fields(pub u8);

impl Fields {
    /// Endpoints.
    pub const ENDPOINTS: Fields = Fields(1);
    /// Online state.
    pub const ONLINE: Fields = Fields(2);
    /// WireGuard key.
    pub const NODE_KEY: Fields = Fields(4);
    /// Key expiry.
    pub const EXPIRY: Fields = Fields(8);

    /// Both sets.
    pub fn union(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }

    /// Whether every field of `other` is in `self`.
    pub fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no field is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What happened to one peer of a node's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Added or replaced whole.
    Full,
    /// These fields changed on a peer already in the map.
    Patch(Fields),
    /// Removed from the map.
    Removed,
}

impl Change {
    /// The change equivalent to `self` followed by `later`.
    pub fn then(self, later: Change) -> Change {
        match (self, later) {
            (Change::Patch(first), Change::Patch(second)) => Change::Patch(first.union(second)),
            (Change::Full, Change::Patch(_)) => Change::Full,
            // A patch after a removal cannot happen (patches go to present peers only); a full
            // entry is the safe reading.
            (Change::Removed, Change::Patch(_)) => Change::Full,
            (_, later) => later,
        }
    }
}

/// What changed in one node's map during one engine step, before it becomes a log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Peer id -> its change.
    pub peers: BTreeMap<NodeId, Change>,
    /// The node's own entry changed.
    pub self_node: bool,
    /// Its filter changed.
    pub filter: bool,
    /// Its DNS configuration changed.
    pub dns: bool,
}

impl Pending {
    /// Records `change` to `peer`, merged with what is already recorded.
    pub fn peer(&mut self, peer: NodeId, change: Change) {
        let merged = match self.peers.get(&peer) {
            Some(before) => before.then(change),
            None => change,
        };
        self.peers.insert(peer, merged);
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && !self.self_node && !self.filter && !self.dns
    }

    /// Merges `later` into `self`.
    pub fn extend(&mut self, later: &Pending) {
        for (peer, change) in &later.peers {
            self.peer(*peer, *change);
        }
        self.self_node |= later.self_node;
        self.filter |= later.filter;
        self.dns |= later.dns;
    }
}

/// One version step of a node's map.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// The version it leads to.
    version: u64,
    /// Peer changes, sorted by id.
    peers: Vec<(NodeId, Change)>,
    self_node: bool,
    filter: bool,
    dns: bool,
}

impl Entry {
    fn to_pending(&self) -> Pending {
        let peers = self.peers.iter().copied().collect();
        Pending { peers, self_node: self.self_node, filter: self.filter, dns: self.dns }
    }
}

/// How a push may be disturbed (fault injection; see `engine::Faults`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushFaults {
    /// Merge the new entry into the previous one.
    pub coalesce: bool,
    /// Drop the whole log: agents behind must take a full map.
    pub drop_log: bool,
}

/// One node's version counter and its bounded log of changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLog {
    /// The current version of the node's map.
    version: u64,
    /// The oldest version a delta can start from.
    // Invariant: floor <= version, and every entry's version is in (floor, version].
    floor: u64,
    entries: VecDeque<Entry>,
    /// Peer changes summed over `entries`.
    peer_changes: usize,
}

impl NodeLog {
    /// A log whose map starts at `version`, with nothing to replay.
    pub fn new(version: u64) -> NodeLog {
        NodeLog { version, floor: version, entries: VecDeque::new(), peer_changes: 0 }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The oldest version a delta can start from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Appends a step; returns the new version. Empty steps are not pushed.
    pub fn push(&mut self, pending: &Pending, faults: PushFaults) -> u64 {
        assert!(!pending.is_empty(), "an empty step changes no map");
        let version_before = self.version;
        self.version += 1;
        let mut merged = pending.clone();
        if faults.coalesce
            && let Some(last) = self.entries.pop_back()
        {
            self.peer_changes -= last.peers.len();
            let mut earlier = last.to_pending();
            earlier.extend(pending);
            merged = earlier;
        }
        let peers: Vec<(NodeId, Change)> = merged.peers.into_iter().collect();
        self.peer_changes += peers.len();
        let (self_node, filter, dns) = (merged.self_node, merged.filter, merged.dns);
        self.entries.push_back(Entry { version: self.version, peers, self_node, filter, dns });
        if faults.drop_log {
            self.entries.clear();
            self.peer_changes = 0;
            self.floor = self.version;
        }
        while self.entries.len() > LOG_ENTRIES_MAX || self.peer_changes > LOG_PEER_CHANGES_MAX {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.peer_changes -= oldest.peers.len();
            self.floor = oldest.version;
        }
        assert!(self.version == version_before + 1 && self.floor <= self.version);
        self.version
    }

    /// Everything that changed after `version`, merged; `None` if `version` is older than the
    /// floor or newer than the current version.
    pub fn since(&self, version: u64) -> Option<Pending> {
        if version < self.floor || version > self.version {
            return None;
        }
        let mut merged = Pending::default();
        for entry in self.entries.iter().filter(|entry| entry.version > version) {
            merged.extend(&entry.to_pending());
        }
        assert!(version < self.version || merged.is_empty());
        Some(merged)
    }

    /// Checks the log's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.floor > self.version {
            return Err(format!("floor {} above version {}", self.floor, self.version));
        }
        let mut previous = self.floor;
        for entry in &self.entries {
            if entry.version <= previous || entry.version > self.version {
                return Err(format!("entry version {} out of order", entry.version));
            }
            previous = entry.version;
        }
        let peer_changes: usize = self.entries.iter().map(|entry| entry.peers.len()).sum();
        if peer_changes != self.peer_changes || peer_changes > LOG_PEER_CHANGES_MAX {
            return Err(format!("{peer_changes} peer changes, counted {}", self.peer_changes));
        }
        if self.entries.len() > LOG_ENTRIES_MAX {
            return Err(format!("{} entries", self.entries.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(peers: &[(NodeId, Change)]) -> Pending {
        Pending { peers: peers.iter().copied().collect(), ..Pending::default() }
    }

    #[track_caller]
    fn check(log: &NodeLog, since: u64, expected: Option<&[(NodeId, Change)]>) {
        let got = log.since(since).map(|pending| pending.peers.into_iter().collect::<Vec<_>>());
        assert_eq!(got.as_deref(), expected, "since {since}");
        assert_eq!(log.check_invariants(), Ok(()));
    }

    #[test]
    fn changes_merge_in_order() {
        let patch = |bits| Change::Patch(Fields(bits));
        assert_eq!(patch(1).then(patch(2)), patch(3));
        assert_eq!(Change::Full.then(patch(2)), Change::Full);
        assert_eq!(patch(2).then(Change::Full), Change::Full);
        assert_eq!(Change::Full.then(Change::Removed), Change::Removed);
        assert_eq!(Change::Removed.then(Change::Full), Change::Full);
    }

    #[test]
    fn log_replays_and_forgets() {
        let mut log = NodeLog::new(1);
        check(&log, 1, Some(&[]));
        assert_eq!(log.push(&step(&[(7, Change::Full)]), PushFaults::default()), 2);
        assert_eq!(log.push(&step(&[(7, Change::Removed)]), PushFaults::default()), 3);
        check(&log, 1, Some(&[(7, Change::Removed)]));
        check(&log, 2, Some(&[(7, Change::Removed)]));
        check(&log, 3, Some(&[]));
        check(&log, 4, None);
        check(&log, 0, None);
        let coalesce = PushFaults { coalesce: true, drop_log: false };
        assert_eq!(log.push(&step(&[(8, Change::Full)]), coalesce), 4);
        check(&log, 2, Some(&[(7, Change::Removed), (8, Change::Full)]));
        check(&log, 3, Some(&[(7, Change::Removed), (8, Change::Full)]));
        let drop_log = PushFaults { coalesce: false, drop_log: true };
        assert_eq!(log.push(&step(&[(9, Change::Full)]), drop_log), 5);
        check(&log, 4, None);
        check(&log, 5, Some(&[]));
    }

    #[test]
    fn log_stays_within_bounds() {
        let mut log = NodeLog::new(1);
        for version in 0..(LOG_ENTRIES_MAX as u64 * 2) {
            log.push(&step(&[(version, Change::Full)]), PushFaults::default());
        }
        assert_eq!(log.floor(), log.version() - LOG_ENTRIES_MAX as u64);
        check(&log, log.floor() - 1, None);
        let big: Vec<(NodeId, Change)> =
            (0..LOG_PEER_CHANGES_MAX as u64 + 1).map(|id| (id, Change::Full)).collect();
        log.push(&step(&big), PushFaults::default());
        assert_eq!(log.floor(), log.version());
        check(&log, log.version(), Some(&[]));
    }
}
