//! Unit tests of maps, deltas and the engine's cost per change, with a small test policy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::types::{Affected, NodeInfo, PolicyView, User};

/// Nodes see the nodes of their own user and nothing else (tagged nodes see nobody); each
/// change reports exactly the nodes of the users it touched.
#[derive(Default)]
struct SameUser {
    nodes: BTreeMap<NodeId, Option<UserId>>,
}

impl SameUser {
    fn of_user(&self, user: Option<UserId>) -> BTreeSet<NodeId> {
        let same = self.nodes.iter().filter(|(_, owner)| user.is_some() && **owner == user);
        same.map(|(id, _)| *id).collect()
    }
}

impl PolicyView for SameUser {
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected {
        let old = self.nodes.insert(node.id, node.user).flatten();
        let mut peers = self.of_user(old);
        peers.extend(self.of_user(node.user));
        peers.insert(node.id);
        Affected { filters: peers.clone(), peers }
    }

    fn remove_node(&mut self, node: NodeId) -> Affected {
        let Some(user) = self.nodes.remove(&node) else { return Affected::default() };
        let peers = self.of_user(user);
        Affected { filters: peers.clone(), peers }
    }

    fn upsert_user(&mut self, _user: &User) -> Affected {
        Affected::default()
    }

    fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        let user = self.nodes.get(&node).copied().flatten();
        self.of_user(user).into_iter().filter(|peer| *peer != node).collect()
    }

    fn filter_for(&self, node: NodeId) -> Vec<FilterRule> {
        let peers = self.peers_of(node);
        let src_ips = peers.iter().map(|peer| format!("100.64.0.{peer}")).collect();
        vec![FilterRule { src_ips, ..FilterRule::default() }]
    }
}

fn node(id: NodeId, user: Option<UserId>) -> NodeInfo {
    NodeInfo {
        id,
        hostname: format!("Host {id}"),
        given_name: format!("Host_{id}"),
        user,
        tags: if user.is_none() { vec!["tag:server".to_string()] } else { Vec::new() },
        ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
        ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16),
        node_key: Key([id as u8; 32]),
        machine_key: Key([id as u8; 32]),
        endpoints: Vec::new(),
        advertised_routes: Vec::new(),
        approved_routes: Vec::new(),
        online: true,
        ephemeral: false,
        expiry: None,
    }
}

/// Two users with nodes 1-3 (user 1) and 4-5 (user 2), and a tagged node 6.
fn engine() -> MapEngine {
    let mut engine = MapEngine::new(Box::new(SameUser::default()), "example.ts.net");
    for (id, name) in [(1, "Odin"), (2, "thor@example.com")] {
        let user = User { id, name: name.to_string(), email: None };
        engine.upsert_user(user).expect("user");
    }
    for (id, user) in [(1, Some(1)), (2, Some(1)), (3, Some(1)), (4, Some(2)), (5, Some(2))] {
        engine.upsert_node(node(id, user)).expect("node");
    }
    engine.upsert_node(node(6, None)).expect("node");
    engine
}

#[track_caller]
fn check(changed: Changed, engine: &MapEngine, expected: &[NodeId]) {
    assert_eq!(changed.nodes.iter().copied().collect::<Vec<_>>(), expected);
    assert_eq!(engine.check_invariants(), Ok(()));
}

#[test]
fn names_follow_magicdns() {
    let engine = engine();
    let map = engine.full_map(1).expect("known");
    assert_eq!(map.self_node.name, "host_1.odin.example.ts.net".replace('_', "-"));
    assert_eq!(map.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(map.peers[0].name, "host-2.odin.example.ts.net");
    let map = engine.full_map(4).expect("known");
    assert_eq!(map.self_node.name, "host-4.thor-example-com.example.ts.net");
    let map = engine.full_map(6).expect("known");
    assert_eq!(map.self_node.name, "host-6.tagged-devices.example.ts.net");
    assert!(map.peers.is_empty());
    assert_eq!(engine.full_map(9), Err(MapError::UnknownNode(9)));
}

#[test]
fn an_endpoint_change_patches_only_the_nodes_that_see_it() {
    let mut engine = engine();
    let before = engine.full_map(2).expect("known");
    let mut moved = node(1, Some(1));
    moved.endpoints = vec![SocketAddr::from(([192, 0, 2, 1], 41641))];
    let changed = engine.upsert_node(moved.clone()).expect("upsert");
    check(changed, &engine, &[1, 2, 3]);
    let delta = engine.delta_since(2, before.version).expect("in the log");
    let patch =
        PeerPatch { id: 1, endpoints: Some(moved.endpoints.clone()), ..PeerPatch::default() };
    assert_eq!(delta.peers_patched, vec![patch]);
    assert!(delta.peers_changed.is_empty() && delta.filter.is_none());
    let mut map = before;
    map.apply(&delta).expect("chains");
    assert_eq!(map, engine.full_map(2).expect("known"));
    // The same state again changes nothing.
    check(engine.upsert_node(moved).expect("upsert"), &engine, &[]);
}

#[test]
fn moving_a_node_to_another_user_changes_both_groups() {
    let mut engine = engine();
    let before = engine.full_map(4).expect("known");
    let changed = engine.upsert_node(node(3, Some(2))).expect("upsert");
    check(changed, &engine, &[1, 2, 3, 4, 5]);
    let delta = engine.delta_since(4, before.version).expect("in the log");
    assert_eq!(delta.peers_changed.iter().map(|p| p.id).collect::<Vec<_>>(), vec![3]);
    assert!(delta.filter.is_some());
    let delta = engine.delta_since(1, 1).expect("in the log");
    assert_eq!(delta.peers_removed, vec![3]);
}

#[test]
fn a_removal_reaches_exactly_its_watchers() {
    let mut engine = engine();
    check(engine.remove_node(5).expect("remove"), &engine, &[4]);
    let removed = engine.delta_since(4, 1).expect("in the log").peers_removed;
    assert_eq!(removed, [5]);
    check(engine.remove_node(5).expect("remove"), &engine, &[]);
    assert_eq!(engine.delta_since(5, 1), None);
}

#[test]
fn a_renamed_user_renames_its_nodes_for_their_watchers() {
    let mut engine = engine();
    let user = User { id: 2, name: "Freya".to_string(), email: None };
    check(engine.upsert_user(user).expect("user"), &engine, &[4, 5]);
    let delta = engine.delta_since(4, 1).expect("in the log");
    assert_eq!(delta.peers_changed[0].name, "host-5.freya.example.ts.net");
    assert_eq!(delta.self_node.expect("renamed").name, "host-4.freya.example.ts.net");
}

#[test]
fn unknown_users_and_long_lists_are_refused() {
    let mut engine = engine();
    assert_eq!(engine.upsert_node(node(7, Some(9))), Err(MapError::UnknownUser(9)));
    let mut chatty = node(7, Some(1));
    chatty.endpoints = vec![SocketAddr::from(([192, 0, 2, 1], 1)); 65];
    let refused = engine.upsert_node(chatty);
    assert_eq!(refused, Err(MapError::TooMany { node: 7, what: "endpoints", count: 65 }));
    assert_eq!(engine.node(7), None);
}

#[test]
fn deltas_that_do_not_chain_are_refused() {
    let engine = engine();
    let mut map = engine.full_map(1).expect("known");
    let before = map.clone();
    let delta = MapDelta { from_version: 0, to_version: 5, ..MapDelta::default() };
    let mismatch = DeltaError::VersionMismatch { map_version: map.version, from_version: 0 };
    assert_eq!(map.apply(&delta), Err(mismatch));
    let from_version = map.version;
    let delta = MapDelta { from_version, to_version: 0, ..MapDelta::default() };
    let backwards = DeltaError::Backwards { from_version, to_version: 0 };
    assert_eq!(map.apply(&delta), Err(backwards));
    let patch = PeerPatch { id: 5, online: Some(false), ..PeerPatch::default() };
    let delta = MapDelta {
        from_version,
        to_version: from_version + 1,
        peers_patched: vec![patch],
        ..MapDelta::default()
    };
    assert_eq!(map.apply(&delta), Err(DeltaError::UnknownPeer(5)));
    let delta = MapDelta {
        from_version,
        to_version: from_version,
        peers_removed: vec![3, 2],
        ..MapDelta::default()
    };
    assert_eq!(map.apply(&delta), Err(DeltaError::Unsorted));
    assert_eq!(map, before);
    let delta = MapDelta {
        from_version,
        to_version: from_version + 1,
        peers_removed: vec![2, 9],
        ..MapDelta::default()
    };
    assert_eq!(map.apply(&delta), Ok(()));
    assert_eq!(map.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn maps_and_deltas_round_trip_through_postcard() {
    let mut engine = engine();
    let mut moved = node(2, Some(1));
    moved.online = false;
    engine.upsert_node(moved).expect("upsert");
    let map = engine.full_map(1).expect("known");
    let bytes = postcard::to_allocvec(&map).expect("encodes");
    assert_eq!(postcard::from_bytes::<NetMap>(&bytes).expect("decodes"), map);
    let delta = engine.delta_since(1, 1).expect("in the log");
    let bytes = postcard::to_allocvec(&delta).expect("encodes");
    assert_eq!(postcard::from_bytes::<MapDelta>(&bytes).expect("decodes"), delta);
    assert!(!delta.is_empty());
}

/// The wire form of a filter is a sequence of (sources, destinations, protocols) tuples, the
/// sources as a byte string of their own encoding; the same bytes whether the rules are
/// borrowed or owned, in a map or in a delta.
#[test]
fn filters_encode_as_tuples() {
    let rule = |source: &str, protocols: Vec<u8>| FilterRule {
        src_ips: vec![source.to_string(), "fd7a:115c:a1e0::/48".to_string()].into(),
        dst_ports: vec![crate::types::NetPortRange {
            ip: "100.64.0.1".to_string(),
            ports: crate::types::PortRange { first: 22, last: 443 },
        }],
        ip_proto: protocols,
    };
    let rules = vec![rule("*", Vec::new()), rule("100.64.0.0/10", vec![6, 17])];
    // A byte string and a `Vec<u8>` are the same bytes in postcard: a length, then the bytes.
    type Wire = (Vec<u8>, Vec<crate::types::NetPortRange>, Vec<u8>);
    let tuples: Vec<Wire> = rules
        .iter()
        .map(|rule| {
            let sources = postcard::to_allocvec(&rule.src_ips.to_vec()).expect("encodes");
            (sources, rule.dst_ports.clone(), rule.ip_proto.clone())
        })
        .collect();
    let delta = MapDelta { filter: Some(rules.clone()), ..MapDelta::default() };
    let expected = (0u64, 0u64, None::<Peer>, Vec::<Peer>::new(), Vec::<NodeId>::new());
    let expected = (expected, Vec::<PeerPatch>::new(), Some(tuples.clone()), None::<DnsConfig>);
    let bytes = postcard::to_allocvec(&delta).expect("encodes");
    assert_eq!(bytes, postcard::to_allocvec(&expected).expect("encodes"));
    assert_eq!(postcard::from_bytes::<MapDelta>(&bytes).expect("decodes"), delta);
    // Sources whose byte string holds more than one list are refused, not truncated.
    let mut padded = tuples;
    padded[0].0.push(0);
    let expected = (0u64, 0u64, None::<Peer>, Vec::<Peer>::new(), Vec::<NodeId>::new());
    let expected = (expected, Vec::<PeerPatch>::new(), Some(padded), None::<DnsConfig>);
    let bytes = postcard::to_allocvec(&expected).expect("encodes");
    assert!(postcard::from_bytes::<MapDelta>(&bytes).is_err());
}

/// Rules that share one source list encode it once: every copy writes the cached bytes.
#[test]
fn shared_sources_encode_once() {
    let sources = crate::types::Sources::new((0..100).map(|i| format!("100.64.0.{i}")).collect());
    let copy = sources.clone();
    assert!(copy.shares(&sources));
    assert_eq!(copy.wire_bytes().as_ptr(), sources.wire_bytes().as_ptr());
    let fresh = crate::types::Sources::new(sources.to_vec());
    assert_eq!(fresh, sources);
    assert!(!fresh.shares(&sources));
    assert_eq!(fresh.wire_bytes(), sources.wire_bytes());
    let json = serde_json::to_string(&sources).expect("encodes");
    assert!(json.starts_with(r#"["100.64.0.0","#), "{json}");
}

/// Every map holding a node shares its one entry, encoded once; a change to the node gives
/// its peers a new entry, and the old one stays as it was in the maps already handed out.
#[test]
fn peer_entries_are_shared_and_renewed_on_change() {
    let mut engine = engine();
    let (map_2, map_3) = (engine.full_map(2).expect("known"), engine.full_map(3).expect("known"));
    assert!(map_2.peers[0].shares(&map_3.peers[0]), "node 1's entry is shared");
    assert_eq!(map_2.peers[0].wire_bytes().as_ptr(), map_3.peers[0].wire_bytes().as_ptr());
    let mut moved = node(1, Some(1));
    moved.endpoints = vec![SocketAddr::from(([192, 0, 2, 1], 41641))];
    check(engine.upsert_node(moved.clone()).expect("upsert"), &engine, &[1, 2, 3]);
    let after = engine.full_map(2).expect("known");
    assert_eq!(after.peers[0].endpoints, moved.endpoints);
    assert!(map_2.peers[0].endpoints.is_empty(), "an entry handed out never changes");
    // A rename reaches the entry through `announce`, which drops the cached one.
    let renamed = User { id: 1, name: "Frigg".to_string(), email: None };
    check(engine.upsert_user(renamed).expect("user"), &engine, &[1, 2, 3]);
    assert_eq!(engine.full_map(2).expect("known").peers[0].name, "host-1.frigg.example.ts.net");
}

/// An entry goes on the wire as a byte string of its cached encoding; in JSON it is the
/// plain entry; bytes after the entry inside its string are refused.
#[test]
fn shared_peers_encode_as_byte_strings() {
    let map = engine().full_map(2).expect("known");
    let peer = map.peers[0].clone();
    let bytes = postcard::to_allocvec(&peer).expect("encodes");
    let inner = postcard::to_allocvec(&Peer::clone(&peer)).expect("encodes");
    assert_eq!(bytes, postcard::to_allocvec(&inner).expect("encodes"));
    assert_eq!(postcard::from_bytes::<SharedPeer>(&bytes).expect("decodes"), peer);
    let mut padded = inner.clone();
    padded.push(0);
    let padded = postcard::to_allocvec(&padded).expect("encodes");
    assert!(postcard::from_bytes::<SharedPeer>(&padded).is_err());
    let json = serde_json::to_string(&peer).expect("encodes");
    assert_eq!(json, serde_json::to_string(&Peer::clone(&peer)).expect("encodes"));
    assert_eq!(serde_json::from_str::<SharedPeer>(&json).expect("decodes"), peer);
}
