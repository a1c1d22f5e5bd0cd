//! Network maps: what each node is told about itself and its peers, as a full map or a delta.
//!
//! This follows Tailscale's map protocol: a node first gets a full `NetMap`, then `MapDelta`s
//! that carry only what changed: full peer entries added or replaced (`PeersChanged`), removed
//! ids (`PeersRemoved`), small patches of one peer's endpoints, online state, key or expiry
//! (`PeersChangedPatch`), and a new packet filter or DNS configuration when those changed.
//! An agent applies a delta with `NetMap::apply`; versions must chain.
//!
//! `engine::MapEngine` computes maps and deltas without I/O (see its docs for the versioning
//! scheme and the cost of a change); `delta` holds its bounded per-node change logs.
//!
//! Names: a peer's `name` is its MagicDNS name `given_name.user.tailnet` (labels lowered, any
//! character outside `[a-z0-9-]` made `-`, no trailing dot). A tagged node belongs to no user
//! and takes Tailscale's pseudo-user `tagged-devices`: `given_name.tagged-devices.tailnet`.

mod adjacency;
pub mod delta;
pub mod engine;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use wireguard::IpNet;

use crate::types::{FilterRule, Key, NodeId, UserId, ipnets};

pub use engine::{Changed, Faults, InvariantViolation, MapEngine, MapError};

/// One node as its peers (and itself) see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its id.
    pub id: NodeId,
    /// Its MagicDNS name (see the module docs).
    pub name: String,
    /// Its owner; `None` for a tagged node.
    pub user: Option<UserId>,
    /// Its ACL tags, sorted.
    pub tags: Vec<String>,
    /// Its WireGuard public key.
    pub node_key: Key,
    /// Its tailnet addresses: its IPv4 `/32` and IPv6 `/128`.
    #[serde(with = "ipnets")]
    pub addresses: Vec<IpNet>,
    /// What WireGuard routes to it: its addresses, the subnet prefixes it is primary for and
    /// the exit routes it serves, sorted.
    #[serde(with = "ipnets")]
    pub allowed_ips: Vec<IpNet>,
    /// Where its WireGuard socket can be reached.
    pub endpoints: Vec<SocketAddr>,
    /// Whether it holds a map stream now.
    pub online: bool,
    /// When its key expires (unix seconds); `None` never.
    pub expiry: Option<u64>,
}

/// A peer entry shared by every map that holds it, with its encoding cached.
///
/// A node's entry is the same in each of its peers' maps: at 50,000 nodes a join puts one new
/// entry into 1,000 deltas, and a full map is 1,000 entries that other maps hold too. The
/// engine keeps each node's entry once (`Arc`) and maps put it on the wire from one cached
/// postcard encoding, as a byte string (so a full map of 1,000 peers is 1,000 copies, not
/// 1,000 entries formatted and encoded). In a human-readable format (JSON) it is the plain
/// entry. Compares and prints as its `Peer`.
#[derive(Clone)]
pub struct SharedPeer(Arc<PeerEntry>);

struct PeerEntry {
    peer: Peer,
    /// `postcard(peer)`, made on first use.
    wire: OnceLock<Vec<u8>>,
}

impl SharedPeer {
    /// `peer`, shareable.
    pub fn new(peer: Peer) -> SharedPeer {
        SharedPeer(Arc::new(PeerEntry { peer, wire: OnceLock::new() }))
    }

    /// The postcard encoding of the entry, made once per shared entry.
    pub fn wire_bytes(&self) -> &[u8] {
        self.0.wire.get_or_init(|| postcard::to_allocvec(&self.0.peer).expect("a peer encodes"))
    }

    /// Whether `self` and `other` are the same shared entry (not only equal ones).
    pub fn shares(&self, other: &SharedPeer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for SharedPeer {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        &self.0.peer
    }
}

impl From<Peer> for SharedPeer {
    fn from(peer: Peer) -> SharedPeer {
        SharedPeer::new(peer)
    }
}

impl PartialEq for SharedPeer {
    fn eq(&self, other: &SharedPeer) -> bool {
        self.shares(other) || self.0.peer == other.0.peer
    }
}

impl Eq for SharedPeer {}

impl fmt::Debug for SharedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.peer.fmt(f)
    }
}

impl Serialize for SharedPeer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.0.peer.serialize(serializer)
        } else {
            serializer.serialize_bytes(self.wire_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for SharedPeer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SharedPeer, D::Error> {
        if deserializer.is_human_readable() {
            return Peer::deserialize(deserializer).map(SharedPeer::new);
        }
        deserializer.deserialize_bytes(PeerBytes)
    }
}

/// Reads a peer entry from the byte string `SharedPeer` writes.
struct PeerBytes;

impl serde::de::Visitor<'_> for PeerBytes {
    type Value = SharedPeer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string holding an encoded peer entry")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<SharedPeer, E> {
        let (peer, rest) = postcard::take_from_bytes::<Peer>(bytes)
            .map_err(|e| E::custom(format_args!("a peer entry: {e}")))?;
        if !rest.is_empty() {
            return Err(E::custom(format_args!("{} bytes after a peer entry", rest.len())));
        }
        Ok(SharedPeer::new(peer))
    }
}

/// A small change to one peer already in the map: only the fields that are `Some` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPatch {
    /// The peer.
    pub id: NodeId,
    /// Its new endpoints.
    pub endpoints: Option<Vec<SocketAddr>>,
    /// Its new online state.
    pub online: Option<bool>,
    /// Its new WireGuard key.
    pub node_key: Option<Key>,
    /// Its new key expiry.
    pub expiry: Option<Option<u64>>,
}

/// The tailnet's DNS configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// The tailnet's base domain (MagicDNS names end with it).
    pub domain: String,
    /// Extra records an admin set (`name -> addresses`); peers' own names come with the peers.
    pub names: BTreeMap<String, Vec<IpAddr>>,
}

/// A node's whole network map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMap {
    /// Its version for this node: deltas from this version apply to it.
    pub version: u64,
    /// The node itself.
    pub self_node: Peer,
    /// Its peers, sorted by id.
    pub peers: Vec<SharedPeer>,
    /// The packet filter it enforces on what arrives.
    #[serde(with = "filter_wire")]
    pub filter: Vec<FilterRule>,
    /// DNS.
    pub dns: DnsConfig,
}

/// The change from one version of a node's map to a later one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDelta {
    /// The version it applies to.
    pub from_version: u64,
    /// The version it leads to.
    pub to_version: u64,
    /// The node's own entry, if it changed.
    pub self_node: Option<Peer>,
    /// Peers added or replaced whole, sorted by id.
    pub peers_changed: Vec<SharedPeer>,
    /// Peers removed, sorted (removing an absent id is allowed and does nothing).
    pub peers_removed: Vec<NodeId>,
    /// Patches to peers present in the map, sorted by id.
    pub peers_patched: Vec<PeerPatch>,
    /// The new packet filter, if it changed.
    #[serde(with = "filter_wire::option")]
    pub filter: Option<Vec<FilterRule>>,
    /// The new DNS configuration, if it changed.
    pub dns: Option<DnsConfig>,
}

impl MapDelta {
    /// Whether it changes nothing but the version.
    pub fn is_empty(&self) -> bool {
        self.self_node.is_none()
            && self.peers_changed.is_empty()
            && self.peers_removed.is_empty()
            && self.peers_patched.is_empty()
            && self.filter.is_none()
            && self.dns.is_none()
    }
}

/// Why a delta does not apply to a map.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaError {
    /// The delta starts from another version than the map's.
    VersionMismatch {
        /// The map's version.
        map_version: u64,
        /// The delta's `from_version`.
        from_version: u64,
    },
    /// The delta goes backwards (`to_version < from_version`).
    Backwards {
        /// The delta's `from_version`.
        from_version: u64,
        /// The delta's `to_version`.
        to_version: u64,
    },
    /// A patch names a peer the map does not hold.
    UnknownPeer(NodeId),
    /// A changed entry names the map's own node.
    SelfAsPeer(NodeId),
    /// `peers_removed` is not sorted and free of duplicates.
    Unsorted,
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::VersionMismatch { map_version, from_version } => {
                write!(f, "delta from version {from_version} does not apply to {map_version}")
            }
            DeltaError::Backwards { from_version, to_version } => {
                write!(f, "delta goes back from version {from_version} to {to_version}")
            }
            DeltaError::UnknownPeer(id) => write!(f, "delta patches peer {id} not in the map"),
            DeltaError::SelfAsPeer(id) => write!(f, "delta lists the node itself ({id}) as a peer"),
            DeltaError::Unsorted => f.write_str("delta's removed peers are not sorted"),
        }
    }
}

impl std::error::Error for DeltaError {}

impl NetMap {
    /// Applies `delta`: removals, then whole entries, then patches. Atomic: on an error the
    /// map is unchanged.
    pub fn apply(&mut self, delta: &MapDelta) -> Result<(), DeltaError> {
        self.validate(delta)?;
        let version_before = self.version;
        self.peers.retain(|peer| delta.peers_removed.binary_search(&peer.id).is_err());
        for peer in &delta.peers_changed {
            match self.peers.binary_search_by_key(&peer.id, |p| p.id) {
                Ok(index) => self.peers[index] = peer.clone(),
                Err(index) => self.peers.insert(index, peer.clone()),
            }
        }
        for patch in &delta.peers_patched {
            let index = self.peers.binary_search_by_key(&patch.id, |p| p.id);
            let Ok(index) = index else { return Err(DeltaError::UnknownPeer(patch.id)) };
            let mut peer = Peer::clone(&self.peers[index]);
            patch_peer(&mut peer, patch);
            self.peers[index] = SharedPeer::new(peer);
        }
        if let Some(self_node) = &delta.self_node {
            self.self_node = self_node.clone();
        }
        if let Some(filter) = &delta.filter {
            self.filter = filter.clone();
        }
        if let Some(dns) = &delta.dns {
            self.dns = dns.clone();
        }
        self.version = delta.to_version;
        assert!(self.version >= version_before);
        assert!(self.peers.windows(2).all(|pair| pair[0].id < pair[1].id));
        Ok(())
    }

    /// Everything `apply` refuses, checked before anything changes.
    fn validate(&self, delta: &MapDelta) -> Result<(), DeltaError> {
        if delta.from_version != self.version {
            let (map_version, from_version) = (self.version, delta.from_version);
            return Err(DeltaError::VersionMismatch { map_version, from_version });
        }
        if delta.to_version < delta.from_version {
            let (from_version, to_version) = (delta.from_version, delta.to_version);
            return Err(DeltaError::Backwards { from_version, to_version });
        }
        if !delta.peers_removed.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(DeltaError::Unsorted);
        }
        let own = self.self_node.id;
        if let Some(peer) = delta.peers_changed.iter().find(|peer| peer.id == own) {
            return Err(DeltaError::SelfAsPeer(peer.id));
        }
        for patch in &delta.peers_patched {
            let removed = delta.peers_removed.binary_search(&patch.id).is_ok();
            let present = self.peers.binary_search_by_key(&patch.id, |p| p.id).is_ok();
            let replaced = delta.peers_changed.iter().any(|peer| peer.id == patch.id);
            if removed || !(present || replaced) {
                return Err(DeltaError::UnknownPeer(patch.id));
            }
        }
        Ok(())
    }
}

/// Writes the fields `patch` carries into `peer`.
pub fn patch_peer(peer: &mut Peer, patch: &PeerPatch) {
    assert_eq!(peer.id, patch.id);
    if let Some(endpoints) = &patch.endpoints {
        peer.endpoints = endpoints.clone();
    }
    if let Some(online) = patch.online {
        peer.online = online;
    }
    if let Some(node_key) = patch.node_key {
        peer.node_key = node_key;
    }
    if let Some(expiry) = patch.expiry {
        peer.expiry = expiry;
    }
}

/// Serde for filters in maps: every field always written, in order, sources from their cache.
///
/// `FilterRule` leaves out an empty `IPProto` (Tailscale's JSON does), which a format without
/// field names such as postcard cannot read back; maps go on the wire as postcard, so they
/// carry each rule as the tuple `(sources, dst_ports, ip_proto)`. The sources go as a byte
/// string holding their own postcard encoding (`Sources::wire_bytes`): written by copying the
/// shared list's cached bytes, so 1,000 nodes given the same 1,000 sources cost one encoding
/// and 1,000 copies. Reading checks that the bytes hold exactly one list of strings.
pub mod filter_wire {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::types::{FilterRule, NetPortRange, Sources};

    type Wire = (SourcesWire, Vec<NetPortRange>, Vec<u8>);
    /// `Wire` borrowed from a rule: serializes to the same bytes without copying the rule.
    type WireRef<'r> = (SourcesRef<'r>, &'r [NetPortRange], &'r [u8]);

    /// Sources written as the byte string of their cached encoding.
    struct SourcesRef<'r>(&'r Sources);

    impl Serialize for SourcesRef<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0.wire_bytes())
        }
    }

    /// Sources read back from such a byte string.
    struct SourcesWire(Sources);

    impl<'de> Deserialize<'de> for SourcesWire {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SourcesWire, D::Error> {
            deserializer.deserialize_bytes(SourcesVisitor)
        }
    }

    struct SourcesVisitor;

    impl Visitor<'_> for SourcesVisitor {
        type Value = SourcesWire;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string holding a rule's encoded sources")
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<SourcesWire, E> {
            let (strings, rest) = postcard::take_from_bytes::<Vec<String>>(bytes)
                .map_err(|e| E::custom(format_args!("a rule's sources: {e}")))?;
            if !rest.is_empty() {
                let count = rest.len();
                return Err(E::custom(format_args!("{count} bytes after a rule's sources")));
            }
            Ok(SourcesWire(Sources::new(strings)))
        }
    }

    fn to_wire(rule: &FilterRule) -> WireRef<'_> {
        (SourcesRef(&rule.src_ips), &rule.dst_ports, &rule.ip_proto)
    }

    fn from_wire((SourcesWire(src_ips), dst_ports, ip_proto): Wire) -> FilterRule {
        FilterRule { src_ips, dst_ports, ip_proto }
    }

    /// Writes the rules as tuples.
    pub fn serialize<S: Serializer>(
        rules: &[FilterRule],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(rules.iter().map(to_wire))
    }

    /// Reads the rules from tuples.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<FilterRule>, D::Error> {
        Ok(Vec::<Wire>::deserialize(deserializer)?.into_iter().map(from_wire).collect())
    }

    /// Rules that serialize as `serialize` writes them.
    struct Borrowed<'r>(&'r [FilterRule]);

    impl Serialize for Borrowed<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, serializer)
        }
    }

    /// The same for an optional filter.
    pub mod option {
        use super::*;

        /// Writes the rules, if any, as tuples.
        pub fn serialize<S: Serializer>(
            rules: &Option<Vec<FilterRule>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match rules {
                Some(rules) => serializer.serialize_some(&Borrowed(rules)),
                None => serializer.serialize_none(),
            }
        }

        /// Reads optional rules from tuples.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Vec<FilterRule>>, D::Error> {
            let wire = Option::<Vec<Wire>>::deserialize(deserializer)?;
            Ok(wire.map(|rules| rules.into_iter().map(from_wire).collect()))
        }
    }
}

#[cfg(test)]
mod tests;
