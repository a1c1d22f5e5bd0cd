//! Model tests of the policy: random small policies, tailnets and packets.
//!
//! - `CompiledFilter::allows` over a node's compiled rules against a naive evaluator that reads
//!   the policy directly (aliases resolved node by node, no ranges, no merging, no reduction),
//!   for packets addressed to the node itself, into its subnet routes, or (for an exit node) to
//!   the internet.
//! - `PolicyEngine` after random upserts and removals against a fresh engine built from the
//!   final nodes (and against the one-shot compiler), with every answer that changed covered
//!   by the reported `Affected`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coordinator::policy::{
    Alias, CompiledFilter, IpRange, Policy, PolicyEngine, alias_names_node, compile_node, internet,
    wildcard_source_ranges,
};
use coordinator::{Affected, Key, NodeId, NodeInfo, PolicyView, User};
use proptest::prelude::*;
use serde_json::json;

const SOURCES: [&str; 12] = [
    "*",
    "odin@example.com",
    "thor@",
    "group:one",
    "group:two",
    "tag:a",
    "tag:b",
    "autogroup:member",
    "autogroup:tagged",
    "lan",
    "100.64.0.0/29",
    "10.0.0.0/24",
];
const DESTINATIONS: [&str; 15] = [
    "*",
    "odin@example.com",
    "thor@",
    "group:one",
    "tag:a",
    "tag:b",
    "tag:c",
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:self",
    "lan",
    "100.64.0.4/30",
    "10.0.0.0/16",
    "autogroup:internet",
    "8.8.8.0/24",
];
const PORTS: [&str; 4] = ["*", "22", "80-443", "22,8080"];
const PROTOCOLS: [&str; 4] = ["", "tcp", "udp", "1"];
const ROUTES: [&str; 4] = ["10.0.0.0/24", "10.1.0.0/16", "0.0.0.0/0", "192.168.0.0/24"];

fn users() -> Vec<User> {
    [(1, "odin", "odin@example.com"), (2, "thor", "thor@example.org"), (3, "freya", "f@x.com")]
        .into_iter()
        .map(|(id, name, email)| User { id, name: name.into(), email: Some(email.into()) })
        .collect()
}

/// (sources, destinations with ports, protocol) per ACL, as indexes into the pools.
type AclSpec = (Vec<usize>, Vec<(usize, usize)>, usize);

fn acl_strategy() -> impl Strategy<Value = AclSpec> {
    (
        prop::collection::vec(0..SOURCES.len(), 1..3),
        prop::collection::vec((0..DESTINATIONS.len(), 0..PORTS.len()), 1..3),
        0..PROTOCOLS.len(),
    )
}

fn policy_text(acls: &[AclSpec]) -> String {
    let acls: Vec<serde_json::Value> = acls
        .iter()
        .map(|(sources, destinations, protocol)| {
            let src: Vec<&str> = sources.iter().map(|&index| SOURCES[index]).collect();
            let dst: Vec<String> = destinations
                .iter()
                .map(|&(alias, ports)| format!("{}:{}", DESTINATIONS[alias], PORTS[ports]))
                .collect();
            let mut acl = json!({"action": "accept", "src": src, "dst": dst});
            if !PROTOCOLS[*protocol].is_empty() {
                acl["proto"] = json!(PROTOCOLS[*protocol]);
            }
            acl
        })
        .collect();
    json!({
        "groups": {"group:one": ["odin@example.com"], "group:two": ["thor@", "f@x.com"]},
        "tagOwners": {"tag:a": ["odin@example.com"], "tag:b": [], "tag:c": []},
        "hosts": {"lan": "100.64.0.8/30"},
        "acls": acls,
    })
    .to_string()
}

/// (id, owner or tag choice, address slot, routes bitmask).
type NodeSpec = (NodeId, usize, u8, usize);

fn node_strategy() -> impl Strategy<Value = NodeSpec> {
    (1..7u64, 0..6usize, 0..16u8, 0..16usize)
}

fn node_of(spec: NodeSpec) -> NodeInfo {
    let (id, owner, slot, routes) = spec;
    let tags: Vec<String> = match owner {
        3 => vec!["tag:a".into()],
        4 => vec!["tag:a".into(), "tag:b".into()],
        5 => vec!["tag:c".into()],
        _ => Vec::new(),
    };
    let routes: Vec<wireguard::IpNet> = (0..ROUTES.len())
        .filter(|bit| routes & (1 << bit) != 0 && *bit != 3)
        .map(|bit| ROUTES[bit].parse().expect("a route"))
        .collect();
    NodeInfo {
        id,
        hostname: format!("n{id}"),
        given_name: format!("n{id}"),
        user: tags.is_empty().then_some(owner as u64 + 1),
        tags,
        ipv4: Ipv4Addr::new(100, 64, 0, slot),
        ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, u16::from(slot) + 1),
        node_key: Key([id as u8; 32]),
        machine_key: Key([id as u8; 32]),
        endpoints: Vec::new(),
        advertised_routes: routes.clone(),
        approved_routes: routes,
        online: true,
        ephemeral: false,
        expiry: None,
    }
}

/// Nodes with distinct ids and addresses (later specs for a taken id or address are dropped).
fn tailnet(specs: &[NodeSpec]) -> BTreeMap<NodeId, NodeInfo> {
    let mut nodes: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
    for &spec in specs {
        let node = node_of(spec);
        if !nodes.contains_key(&node.id) && nodes.values().all(|other| other.ipv4 != node.ipv4) {
            nodes.insert(node.id, node);
        }
    }
    nodes
}

fn node_addrs(node: &NodeInfo) -> [IpAddr; 2] {
    [IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6)]
}

/// Whether `alias` holds `addr` as a source, naively.
fn source_holds(
    policy: &Policy,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    alias: &Alias,
    addr: IpAddr,
) -> bool {
    let users = users();
    match alias {
        Alias::Wildcard => {
            let routes = nodes.values().flat_map(|node| &node.approved_routes);
            wildcard_source_ranges().iter().any(|range| range.contains(addr))
                || routes.filter(|net| net.prefix_len > 0).any(|net| net.contains(addr))
        }
        Alias::Host(name) => policy.hosts[name].contains(addr),
        Alias::Prefix(range) => range.contains(addr),
        _ => nodes.values().any(|node| {
            node_addrs(node).contains(&addr) && alias_names_node(policy, alias, node, &users)
        }),
    }
}

/// Whether a destination alias holds `addr` for a packet arriving at `node`, naively.
fn destination_holds(
    policy: &Policy,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    alias: &Alias,
    addr: IpAddr,
) -> bool {
    match alias {
        Alias::Wildcard => true,
        Alias::Internet => internet().contains(addr),
        Alias::SelfDevices => false,
        _ => source_holds(policy, nodes, alias, addr),
    }
}

fn naive_allows(
    policy: &Policy,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    node: &NodeInfo,
    packet: (IpAddr, IpAddr, u8, u16),
) -> bool {
    let (src, dst, protocol, port) = packet;
    let users = users();
    policy.acls.iter().any(|acl| {
        let protocols: &[u8] =
            if acl.protocols.is_empty() { &[6, 17, 1, 58] } else { &acl.protocols };
        if !protocols.contains(&protocol) {
            return false;
        }
        let port_ok = |ports: &[coordinator::PortRange]| {
            !matches!(protocol, 6 | 17 | 132)
                || ports.iter().any(|r| r.first <= port && port <= r.last)
        };
        acl.destinations.iter().any(|destination| {
            if !port_ok(&destination.ports) {
                return false;
            }
            if destination.alias == Alias::SelfDevices {
                let Some(user) = node.user.filter(|_| node.tags.is_empty()) else { return false };
                let devices = nodes.values().filter(|m| m.tags.is_empty() && m.user == Some(user));
                return devices.clone().any(|m| node_addrs(m).contains(&dst))
                    && devices.clone().any(|m| {
                        node_addrs(m).contains(&src)
                            && acl.sources.iter().any(|s| {
                                *s == Alias::Wildcard || alias_names_node(policy, s, m, &users)
                            })
                    });
            }
            destination_holds(policy, nodes, &destination.alias, dst)
                && acl.sources.iter().any(|alias| source_holds(policy, nodes, alias, src))
        })
    })
}

/// Destinations a packet arriving at `node` may carry: its addresses, its routes, the internet.
fn destinations_for(node: &NodeInfo) -> Vec<IpAddr> {
    let mut out = node_addrs(node).to_vec();
    for net in &node.approved_routes {
        match net.prefix_len {
            0 => out.push("8.8.8.8".parse().expect("an address")),
            _ => out.push(
                IpRange::prefix(*net)
                    .to_string()
                    .replace(".0/24", ".7")
                    .replace(".0.0/16", ".2.3")
                    .parse()
                    .expect("an address"),
            ),
        }
    }
    out
}

const SOURCE_ADDRS: [&str; 6] =
    ["100.64.0.1", "100.64.0.9", "10.0.0.5", "8.8.8.8", "100.64.0.3", "fd7a:115c:a1e0::2"];

/// The first node whose peers or filter differ between `before` and `after` although
/// `affected` does not report them.
fn unreported(before: &Answers, after: &Answers, affected: &Affected) -> Option<String> {
    for (id, (peers, filter)) in before {
        if after[id].0 != *peers && !affected.peers.contains(id) {
            return Some(format!("peers of {id} unreported"));
        }
        if after[id].1 != *filter && !affected.filters.contains(id) {
            return Some(format!("filter of {id} unreported"));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn compiled_filter_agrees_with_the_policy(
        acls in prop::collection::vec(acl_strategy(), 1..5),
        specs in prop::collection::vec(node_strategy(), 1..7),
        picks in prop::collection::vec((0..8usize, 0..4usize, 0..5usize, 0..4usize), 1..24),
    ) {
        let parsed = Policy::parse(&policy_text(&acls));
        let Ok(policy) = parsed else {
            let message = parsed.expect_err("checked").message;
            prop_assert!(message.contains("autogroup:self can only be used"), "{message}");
            return Ok(());
        };
        let nodes = tailnet(&specs);
        for node in nodes.values() {
            let rules = compile_node(&policy, &users(), &nodes, node.id);
            let filter = CompiledFilter::from_rules(&rules).expect("compiled rules parse");
            let destinations = destinations_for(node);
            for &(src, dst, protocol, port) in &picks {
                let mut src: IpAddr = SOURCE_ADDRS[src % SOURCE_ADDRS.len()].parse().expect("addr");
                let dst = destinations[dst % destinations.len()];
                if src.is_ipv4() != dst.is_ipv4() {
                    let first = nodes.values().next().expect("a node");
                    src = node_addrs(first)[usize::from(dst.is_ipv6())];
                }
                let protocol = [6, 17, 1, 47, 58][protocol];
                let port = [22, 80, 443, 8080][port];
                let packet = (src, dst, protocol, port);
                let expected = naive_allows(&policy, &nodes, node, packet);
                prop_assert_eq!(filter.allows(src, dst, protocol, port), expected,
                    "node {} packet {:?} rules {:?}", node.id, packet, rules);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(NodeSpec),
    Remove(NodeId),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => node_strategy().prop_map(Op::Upsert),
        1 => (1..7u64).prop_map(Op::Remove),
    ]
}

fn engine_for(allow_all: bool, policy: &Policy) -> PolicyEngine {
    if allow_all { PolicyEngine::allow_all() } else { PolicyEngine::new(policy.clone(), users()) }
}

type Answers = BTreeMap<NodeId, (Vec<NodeId>, Vec<coordinator::FilterRule>)>;

fn answers(engine: &PolicyEngine, ids: impl Iterator<Item = NodeId>) -> Answers {
    ids.map(|id| (id, (engine.peers_of(id), engine.filter_for(id)))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn engine_is_incremental(
        acls in prop::collection::vec(acl_strategy(), 1..5),
        ops in prop::collection::vec(op_strategy(), 1..16),
        allow_all in any::<bool>(),
    ) {
        let Ok(policy) = Policy::parse(&policy_text(&acls)) else { return Ok(()) };
        let mut engine =
            engine_for(allow_all, &policy);
        let mut nodes: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
        for op in ops {
            let before = answers(&engine, 1..7);
            let affected = match op {
                Op::Upsert(spec) => {
                    let node = node_of(spec);
                    if nodes.values().any(|other| other.id != node.id && other.ipv4 == node.ipv4) {
                        continue;
                    }
                    nodes.insert(node.id, node.clone());
                    engine.upsert_node(&node)
                }
                Op::Remove(id) => {
                    nodes.remove(&id);
                    engine.remove_node(id)
                }
            };
            let after = answers(&engine, 1..7);
            prop_assert_eq!(unreported(&before, &after, &affected), None);
        }
        let mut fresh =
            engine_for(allow_all, &policy);
        for node in nodes.values() {
            fresh.upsert_node(node);
        }
        prop_assert_eq!(answers(&engine, 1..7), answers(&fresh, 1..7));
        // The same nodes, the policy set last: the full rebuild gives the same answers.
        let mut rebuilt = PolicyEngine::allow_all();
        for user in users() {
            rebuilt.upsert_user(&user);
        }
        for node in nodes.values() {
            rebuilt.upsert_node(node);
        }
        if !allow_all {
            rebuilt.set_policy(policy.clone());
        }
        prop_assert_eq!(answers(&engine, 1..7), answers(&rebuilt, 1..7));
        for &id in nodes.keys() {
            for peer in engine.peers_of(id) {
                prop_assert!(engine.peers_of(peer).contains(&id), "peers are mutual");
            }
            if !allow_all {
                prop_assert_eq!(engine.filter_for(id), compile_node(&policy, &users(), &nodes, id));
            }
        }
    }
}

/// A small edit of a policy: one entry removed, inserted or replaced.
#[derive(Clone, Debug)]
enum Edit {
    Remove(usize),
    Insert(usize, AclSpec),
    Replace(usize, AclSpec),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..6usize).prop_map(Edit::Remove),
        (0..6usize, acl_strategy()).prop_map(|(at, acl)| Edit::Insert(at, acl)),
        (0..6usize, acl_strategy()).prop_map(|(at, acl)| Edit::Replace(at, acl)),
    ]
}

fn edited(acls: &[AclSpec], edit: Edit) -> Vec<AclSpec> {
    let mut acls = acls.to_vec();
    match edit {
        Edit::Remove(at) if !acls.is_empty() => {
            acls.remove(at % acls.len());
        }
        Edit::Remove(_) => {}
        Edit::Insert(at, acl) => acls.insert(at % (acls.len() + 1), acl),
        Edit::Replace(at, acl) if !acls.is_empty() => {
            let at = at % acls.len();
            acls[at] = acl;
        }
        Edit::Replace(_, acl) => acls.push(acl),
    }
    acls
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// `set_policy` reports every node whose peers or filter an edit changed (the map engine
    /// compares only those again), and leaves the engine as a fresh one for the new policy;
    /// so do a node's change after the edit (the engine keeps entry ids across in-place
    /// edits) and the edit undone.
    #[test]
    fn an_edit_reports_every_node_it_changes(
        acls in prop::collection::vec(acl_strategy(), 1..5),
        edit in edit_strategy(),
        specs in prop::collection::vec(node_strategy(), 0..7),
        change in node_strategy(),
    ) {
        let Ok(before_policy) = Policy::parse(&policy_text(&acls)) else { return Ok(()) };
        let Ok(after_policy) = Policy::parse(&policy_text(&edited(&acls, edit))) else {
            return Ok(());
        };
        let mut nodes = tailnet(&specs);
        let mut engine = PolicyEngine::new(before_policy.clone(), users());
        engine.load_nodes(&nodes.values().cloned().collect::<Vec<_>>());
        let before = answers(&engine, 1..7);
        let affected = engine.set_policy(after_policy.clone());
        let after = answers(&engine, 1..7);
        prop_assert_eq!(unreported(&before, &after, &affected), None);
        prop_assert_eq!(&after, &answers(&fresh_engine(&after_policy, &nodes), 1..7));
        let changed = node_of(change);
        if nodes.values().all(|other| other.id == changed.id || other.ipv4 != changed.ipv4) {
            nodes.insert(changed.id, changed.clone());
            engine.upsert_node(&changed);
        } else {
            nodes.remove(&changed.id);
            engine.remove_node(changed.id);
        }
        let before = answers(&engine, 1..7);
        prop_assert_eq!(&before, &answers(&fresh_engine(&after_policy, &nodes), 1..7));
        let affected = engine.set_policy(before_policy.clone());
        let after = answers(&engine, 1..7);
        prop_assert_eq!(unreported(&before, &after, &affected), None);
        prop_assert_eq!(after, answers(&fresh_engine(&before_policy, &nodes), 1..7));
    }
}

/// An engine for `policy` built from scratch with `nodes`.
fn fresh_engine(policy: &Policy, nodes: &BTreeMap<NodeId, NodeInfo>) -> PolicyEngine {
    let mut fresh = PolicyEngine::new(policy.clone(), users());
    fresh.load_nodes(&nodes.values().cloned().collect::<Vec<_>>());
    fresh
}

/// An entry added between two tags reaches the nodes of those tags and no one else.
#[test]
fn an_edit_of_one_entry_reaches_only_its_nodes() {
    let entry = |src: &str, dst: &str| json!({"action": "accept", "src": [src], "dst": [dst]});
    let policy = |acls: Vec<serde_json::Value>| {
        let text = json!({"tagOwners": {"tag:a": [], "tag:b": [], "tag:c": []}, "acls": acls});
        Policy::parse(&text.to_string()).expect("a valid policy")
    };
    let kept = entry("tag:a", "tag:a:*");
    // Two users' devices (1, 2), two tag:a nodes (3, 4), two tag:c nodes (5, 6).
    let specs =
        [(1, 0, 1, 0), (2, 1, 2, 0), (3, 3, 3, 0), (4, 3, 4, 0), (5, 5, 5, 0), (6, 5, 6, 0)];
    let nodes: Vec<NodeInfo> = specs.into_iter().map(node_of).collect();
    let mut engine = PolicyEngine::new(policy(vec![kept.clone()]), users());
    engine.load_nodes(&nodes);
    let affected = engine.set_policy(policy(vec![entry("tag:c", "tag:c:22"), kept.clone()]));
    assert_eq!(affected.peers, BTreeSet::from([5, 6]));
    assert_eq!(affected.filters, BTreeSet::from([5, 6]));
    assert_eq!(engine.peers_of(5), vec![6]);
    // The same policy again reaches no one; a `*` entry reaches everyone.
    let again = engine.set_policy(policy(vec![entry("tag:c", "tag:c:22"), kept.clone()]));
    assert!(again.peers.is_empty() && again.filters.is_empty());
    let everyone = engine.set_policy(policy(vec![entry("*", "tag:c:22"), kept]));
    assert_eq!(everyone.peers.len(), 6);
}
