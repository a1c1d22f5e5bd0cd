//! The vocabulary every part of the coordinator and the agent share.
//!
//! Ids are dense integers handed out by the coordinator and never reused. Keys are 32-byte
//! public keys (X25519), printed in the `nodekey:`/`mkey:` hex form Tailscale uses. A
//! `FilterRule` is Tailscale's wire form of one packet-filter rule, so the golden ACL cases
//! compare field by field.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use wireguard::IpNet;

/// A node's id: assigned at registration, never reused.
pub type NodeId = u64;
/// A user's id: assigned at creation, never reused.
pub type UserId = u64;

/// A 32-byte public key (a node key, a machine key). Never a private key. The default (all
/// zeros) stands for "none yet".
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("..")
    }
}

/// A user: owns untagged nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Its login name (`odin`).
    pub name: String,
    /// Its e-mail address, how policies name it (`odin@example.com`), if it has one.
    pub email: Option<String>,
}

/// What the coordinator knows about one node: everything a policy, a route decision or a peer's
/// network map needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Its host name as the node reported it.
    pub hostname: String,
    /// Its DNS label in the tailnet (unique; `hostname` made unique, or an admin's rename).
    pub given_name: String,
    /// The owning user; `None` for a tagged node (tagged nodes belong to no user).
    pub user: Option<UserId>,
    /// Its ACL tags (`tag:server`), sorted.
    pub tags: Vec<String>,
    /// Its address in 100.64.0.0/10.
    pub ipv4: Ipv4Addr,
    /// Its address in fd7a:115c:a1e0::/48.
    pub ipv6: Ipv6Addr,
    /// Its WireGuard public key (rotated by the node).
    pub node_key: Key,
    /// The key its control channel is authenticated with (stable for the machine).
    pub machine_key: Key,
    /// Where peers can reach its WireGuard socket, as it reported.
    pub endpoints: Vec<SocketAddr>,
    /// Routes it advertises (subnets, `0.0.0.0/0` and `::/0` for an exit node).
    #[serde(with = "ipnets")]
    pub advertised_routes: Vec<IpNet>,
    /// The advertised routes an admin or `autoApprovers` approved.
    #[serde(with = "ipnets")]
    pub approved_routes: Vec<IpNet>,
    /// Whether it holds a map stream now.
    pub online: bool,
    /// Removed automatically once it goes away.
    pub ephemeral: bool,
    /// When its key expires (unix seconds); `None` never.
    pub expiry: Option<u64>,
}

/// An inclusive port range (`*` is 0-65535).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    #[serde(rename = "First")]
    pub first: u16,
    /// The last port (inclusive).
    #[serde(rename = "Last")]
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ANY: PortRange = PortRange { first: 0, last: 65535 };
}

/// One destination of a filter rule: an address set in Tailscale's string form and ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetPortRange {
    /// `*`, an address, a CIDR or an inclusive range `a-b`.
    #[serde(rename = "IP")]
    pub ip: String,
    /// The ports.
    #[serde(rename = "Ports")]
    pub ports: PortRange,
}

/// One packet-filter rule in Tailscale's wire form (`tailcfg.FilterRule`): packets from any of
/// `src_ips` to any of `dst_ports` with one of `ip_proto` are accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    /// Sources: `*`, addresses, CIDRs or ranges `a-b`.
    #[serde(rename = "SrcIPs")]
    pub src_ips: Sources,
    /// Destinations with their ports.
    #[serde(rename = "DstPorts")]
    pub dst_ports: Vec<NetPortRange>,
    /// IANA protocol numbers; empty means TCP, UDP, ICMP and ICMPv6.
    #[serde(rename = "IPProto", default, skip_serializing_if = "Vec::is_empty")]
    pub ip_proto: Vec<u8>,
}

/// A filter rule's sources (`SrcIPs`), shared.
///
/// One policy entry gives the same sources to every node it reaches: at 50,000 nodes a group of
/// 1,000 hands the same 1,000 strings to 1,000 filters. Rules therefore hold their sources
/// behind an `Arc`, and maps put them on the wire from one cached encoding
/// (`Sources::wire_bytes`), so a change that gives 1,000 nodes a new filter formats and
/// encodes each source list once, not once per node. Compares, orders, hashes and serializes
/// (as a list of strings) by its strings alone.
#[derive(Clone, Default)]
pub struct Sources(Arc<SourceList>);

#[derive(Default)]
struct SourceList {
    strings: Vec<String>,
    /// `postcard(strings)`, made on first use.
    wire: OnceLock<Vec<u8>>,
}

impl Sources {
    /// Sources holding `strings`.
    pub fn new(strings: Vec<String>) -> Sources {
        Sources(Arc::new(SourceList { strings, wire: OnceLock::new() }))
    }

    /// The strings.
    pub fn as_slice(&self) -> &[String] {
        &self.0.strings
    }

    /// The postcard encoding of the strings (a `Vec<String>`), made once per shared list.
    pub fn wire_bytes(&self) -> &[u8] {
        self.0.wire.get_or_init(|| {
            let bytes = postcard::to_allocvec(&self.0.strings).expect("strings always encode");
            debug_assert!(bytes.len() > self.0.strings.len());
            bytes
        })
    }

    /// Whether `self` and `other` are the same shared list (not only equal strings).
    pub fn shares(&self, other: &Sources) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for Sources {
    type Target = [String];

    fn deref(&self) -> &[String] {
        self.as_slice()
    }
}

impl From<Vec<String>> for Sources {
    fn from(strings: Vec<String>) -> Sources {
        Sources::new(strings)
    }
}

impl FromIterator<String> for Sources {
    fn from_iter<I: IntoIterator<Item = String>>(strings: I) -> Sources {
        Sources::new(strings.into_iter().collect())
    }
}

impl PartialEq for Sources {
    fn eq(&self, other: &Sources) -> bool {
        self.shares(other) || self.as_slice() == other.as_slice()
    }
}

impl Eq for Sources {}

impl PartialOrd for Sources {
    fn partial_cmp(&self, other: &Sources) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sources {
    fn cmp(&self, other: &Sources) -> std::cmp::Ordering {
        // One shared list is equal to itself without reading its strings (a rule key looked
        // up with its own sources would otherwise compare every string).
        if self.shares(other) {
            return std::cmp::Ordering::Equal;
        }
        self.as_slice().cmp(other.as_slice())
    }
}

impl Hash for Sources {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Serialize for Sources {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Sources {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sources, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Sources::new)
    }
}

/// Serde for `Vec<IpNet>` as CIDR strings (`wireguard::IpNet` has no serde of its own).
pub mod ipnets {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use wireguard::IpNet;

    /// Writes the networks as `10.0.0.0/8` strings.
    pub fn serialize<S: Serializer>(nets: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> =
            nets.iter().map(|net| format!("{}/{}", net.addr, net.prefix_len)).collect();
        texts.serialize(serializer)
    }

    /// Reads CIDR strings; a malformed one is an error naming it.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts.iter().map(|text| text.parse().map_err(serde::de::Error::custom)).collect()
    }
}

/// Which nodes a change may have touched, as the policy sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    /// Nodes whose peer set (who they may exchange packets with) may have changed.
    pub peers: BTreeSet<NodeId>,
    /// Nodes whose packet filter may have changed.
    pub filters: BTreeSet<NodeId>,
}

/// What the network-map engine asks of the compiled access policy.
///
/// The policy keeps its own index of the nodes; the map engine tells it of every node that
/// appears, changes or goes, and asks per node. Contract:
/// - `peers_of(n)` is sorted, excludes `n`, and holds `m` exactly when some rule lets `n` send to
///   `m` or `m` send to `n` (on any port and protocol), or `m` is a subnet router or exit node
///   whose approved routes a rule lets `n` reach.
/// - `filter_for(n)` equals what the golden ACL cases expect for `n` (reduced to `n`).
/// - `upsert_node` and `remove_node` report every node whose answers changed (a superset is
///   allowed, but its size is the cost of a change: keep it close to the truth). Changes to
///   fields the policy does not read (endpoints, online, keys, expiry) report nothing.
pub trait PolicyView: Send + Sync {
    /// Adds a node or replaces the one with the same id.
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected;
    /// Removes a node (unknown ids report nothing).
    fn remove_node(&mut self, node: NodeId) -> Affected;
    /// Adds or replaces a user (their e-mail and name are how policies name them).
    fn upsert_user(&mut self, user: &User) -> Affected;
    /// The nodes `node` may exchange packets with, sorted.
    fn peers_of(&self, node: NodeId) -> Vec<NodeId>;
    /// The packet-filter rules `node` enforces on what arrives from its peers.
    fn filter_for(&self, node: NodeId) -> Vec<FilterRule>;

    /// Tells the policy of many nodes at once (a coordinator's start), as one `upsert_node`
    /// each would, but without reporting what they affect. A policy that can rebuild its
    /// indexes in one pass overrides it, so a start costs the tailnet once, not once per node.
    fn load_nodes(&mut self, nodes: &[NodeInfo]) {
        for node in nodes {
            self.upsert_node(node);
        }
    }

    /// Replaces the policy in place (`None`: no policy, everyone reaches everyone) and reports
    /// the nodes whose peers or filter the edit may change. `None` if this view cannot: the
    /// map engine is then handed a new view and checks every node
    /// (`MapEngine::replace_policy`).
    fn set_policy(&mut self, _policy: Option<&crate::policy::Policy>) -> Option<Affected> {
        None
    }

    /// A digest of `filter_for(node)`, to tell whether a node's filter changed without building
    /// it: equal filters give equal digests and different ones, but for hash collisions,
    /// different digests. Only comparable with digests of the same policy object.
    fn filter_digest(&self, node: NodeId) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.filter_for(node).hash(&mut hasher);
        hasher.finish()
    }
}
