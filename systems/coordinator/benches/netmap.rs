//! The network-map engine beside what Headscale does: recompute every node's full map.
//!
//! Two test policies written for the bench, `allow-all` (`AllowAll`: everyone sees everyone) and
//! `groups` (`Groups`: nodes in 100 groups by id, each seeing only its own group, with a filter
//! listing the group's addresses), and the same two shapes on the real `PolicyEngine`:
//! `engine-allow-all` (no policy) and `engine-groups` (nodes tagged `tag:gN` by id, one ACL
//! entry per tag from the tag to itself, plus `*` to `tag:g0:443`, so the 1% of nodes in
//! `tag:g0` see every join and removal). At 1k,
//! 10k and 50k nodes: criterion times one node's full map and one endpoint change (with its
//! deltas built and encoded); then a summary times one endpoint change, one join and one
//! removal, counts the nodes they touch and the postcard bytes of their deltas, and times, on
//! the same code, recomputing and encoding every node's full map (Headscale's way), sampled and
//! scaled by the node count where doing all of them would take minutes. Ratios are Headscale's
//! way over ours.
//!
//! Run briefly with `cargo bench -p coordinator --bench netmap -- --warm-up-time 1
//! --measurement-time 3`; `NETMAP_BENCH_SIZES=1000,10000` picks the sizes and
//! `NETMAP_BENCH_POLICIES=groups,engine-groups` the policies; `NETMAP_BENCH_RECOMPUTE=0` skips
//! the Headscale estimate (for profiling). Each summary change is made 5 times (the median
//! is shown), and its time is split into the step and the building and encoding of its deltas.
//! Under the `engine-*` policies a policy edit is timed last (once; see `edited_policy`;
//! `NETMAP_BENCH_EDIT=0` skips it): `policy` edits the policy engine in place as the
//! coordinator does (`engine-groups` only: an entry from one group to another, so two groups'
//! maps change), `policy 1:1` the same with an entry from one node to another (two maps),
//! `policy*` hands the map engine a new view, which compares every node again.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use coordinator::netmap::{Changed, MapEngine};
use coordinator::policy::{Policy, PolicyEngine};
use coordinator::{Affected, FilterRule, Key, NetPortRange, NodeId, NodeInfo, PolicyView};
use coordinator::{PortRange, User};
use criterion::{BatchSize, Criterion};

const GROUP_COUNT: u64 = 100;
const USER_COUNT: u64 = 10;
/// Full maps actually built for the Headscale estimate beyond which it is sampled.
const RECOMPUTE_PEERS_MAX: usize = 20_000_000;
/// Nodes sampled for the Headscale estimate when sampling.
const RECOMPUTE_SAMPLE_COUNT: usize = 40;
/// Times each change of the summary is made (join and removal alternate); the median counts.
const CHANGE_ROUNDS: usize = 5;

/// Everyone sees everyone; the filter accepts everything.
#[derive(Default)]
struct AllowAll {
    nodes: BTreeSet<NodeId>,
}

impl PolicyView for AllowAll {
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected {
        if !self.nodes.insert(node.id) {
            return Affected::default();
        }
        Affected { peers: self.nodes.clone(), filters: BTreeSet::from([node.id]) }
    }

    fn remove_node(&mut self, node: NodeId) -> Affected {
        if !self.nodes.remove(&node) {
            return Affected::default();
        }
        Affected { peers: self.nodes.clone(), filters: BTreeSet::new() }
    }

    fn upsert_user(&mut self, _user: &User) -> Affected {
        Affected::default()
    }

    fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        self.nodes.iter().copied().filter(|peer| *peer != node).collect()
    }

    fn filter_for(&self, _node: NodeId) -> Vec<FilterRule> {
        let dst = NetPortRange { ip: "*".to_string(), ports: PortRange::ANY };
        let src_ips = vec!["*".to_string()].into();
        vec![FilterRule { src_ips, dst_ports: vec![dst], ip_proto: vec![] }]
    }
}

/// Nodes in `GROUP_COUNT` groups by id; a node sees its group and accepts from its addresses.
#[derive(Default)]
struct Groups {
    members: BTreeMap<u64, BTreeSet<NodeId>>,
    addresses: BTreeMap<NodeId, Ipv4Addr>,
}

impl PolicyView for Groups {
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected {
        let group = self.members.entry(node.id % GROUP_COUNT).or_default();
        let new = group.insert(node.id);
        let moved = self.addresses.insert(node.id, node.ipv4) != Some(node.ipv4);
        if !new && !moved {
            return Affected::default();
        }
        let peers = if new { group.clone() } else { BTreeSet::new() };
        Affected { peers, filters: group.clone() }
    }

    fn remove_node(&mut self, node: NodeId) -> Affected {
        let group = self.members.entry(node % GROUP_COUNT).or_default();
        if !group.remove(&node) {
            return Affected::default();
        }
        self.addresses.remove(&node);
        Affected { peers: group.clone(), filters: group.clone() }
    }

    fn upsert_user(&mut self, _user: &User) -> Affected {
        Affected::default()
    }

    fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        let group = self.members.get(&(node % GROUP_COUNT)).into_iter().flatten();
        group.copied().filter(|peer| *peer != node && self.addresses.contains_key(&node)).collect()
    }

    fn filter_for(&self, node: NodeId) -> Vec<FilterRule> {
        let Some(own) = self.addresses.get(&node) else { return Vec::new() };
        let peers = self.peers_of(node);
        let src_ips = peers.iter().map(|peer| self.addresses[peer].to_string()).collect();
        let dst = NetPortRange { ip: own.to_string(), ports: PortRange::ANY };
        vec![FilterRule { src_ips, dst_ports: vec![dst], ip_proto: vec![] }]
    }
}

fn node(id: NodeId) -> NodeInfo {
    let bits = 0x6440_0000 + id as u32;
    NodeInfo {
        id,
        hostname: format!("host-{id}"),
        given_name: format!("host-{id}"),
        user: Some(id % USER_COUNT + 1),
        tags: Vec::new(),
        ipv4: Ipv4Addr::from(bits),
        ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, (id >> 16) as u16, id as u16),
        node_key: Key([id as u8; 32]),
        machine_key: Key([id as u8; 32]),
        endpoints: vec![SocketAddr::from(([198, 51, 100, id as u8], 41641))],
        advertised_routes: Vec::new(),
        approved_routes: Vec::new(),
        online: true,
        ephemeral: false,
        expiry: None,
    }
}

/// A node as `policy` wants it: under `engine-groups` tagged with its group, owned by nobody.
fn node_for(policy: &str, id: NodeId) -> NodeInfo {
    let mut node = node(id);
    if policy == "engine-groups" {
        node.user = None;
        node.tags = vec![format!("tag:g{}", id % GROUP_COUNT)];
    }
    node
}

/// The policy edits of the summary: `policy` adds `tag:g1` to `tag:g2:22` (two groups' maps
/// gain a group of peers each), `policy 1:1` lets node 7 reach node 13 on port 22.
#[derive(Clone, Copy, PartialEq)]
enum Edit {
    None,
    Groups,
    Pair,
}

/// The `engine-groups` policy: each tag reaches itself, and everyone reaches `tag:g0:443`;
/// with `edit`'s entry added last.
fn groups_policy(edit: Edit) -> Policy {
    let tags: Vec<String> = (0..GROUP_COUNT).map(|group| format!("tag:g{group}")).collect();
    let owners: BTreeMap<&String, Vec<String>> = tags.iter().map(|tag| (tag, vec![])).collect();
    let entry = |tag: &String| {
        let destination = format!("{tag}:*");
        serde_json::json!({"action": "accept", "src": [tag], "dst": [destination]})
    };
    let mut acls: Vec<serde_json::Value> = tags.iter().map(entry).collect();
    acls.push(serde_json::json!({"action": "accept", "src": ["*"], "dst": ["tag:g0:443"]}));
    let (src, dst) = match edit {
        Edit::None => ("", ""),
        Edit::Groups => ("tag:g1", "tag:g2:22"),
        Edit::Pair => ("100.64.0.7/32", "100.64.0.13/32:22"),
    };
    if edit != Edit::None {
        acls.push(serde_json::json!({"action": "accept", "src": [src], "dst": [dst]}));
    }
    let text = serde_json::json!({"tagOwners": owners, "acls": acls}).to_string();
    Policy::parse(&text).expect("a valid policy")
}

fn users() -> Vec<User> {
    let user = |id| User { id, name: format!("user{id}"), email: None };
    (1..=USER_COUNT).map(user).collect()
}

/// An engine of `count` nodes under `policy` (see the module docs), loaded in bulk.
fn engine(policy: &str, count: u64) -> MapEngine {
    let nodes: Vec<NodeInfo> = (1..=count).map(|id| node_for(policy, id)).collect();
    // The policy learns the nodes first, so the engine's restore replaces rather than adds
    // (a join's `Affected` would list everyone, 50k times over).
    let view: Box<dyn PolicyView> = match policy {
        "allow-all" => Box::new(AllowAll { nodes: nodes.iter().map(|node| node.id).collect() }),
        "engine-allow-all" => Box::new(PolicyEngine::allow_all()),
        "engine-groups" => Box::new(PolicyEngine::new(groups_policy(Edit::None), users())),
        _ => {
            let mut groups = Groups::default();
            for node in &nodes {
                groups.upsert_node(node);
            }
            Box::new(groups)
        }
    };
    let engine = MapEngine::restore(view, "example.ts.net", &users(), &nodes, &BTreeMap::new());
    engine.expect("a valid state")
}

/// Encodes the deltas of every node a step changed; returns their total bytes.
#[inline(never)]
fn encode_deltas(engine: &MapEngine, changed: &Changed) -> usize {
    let mut bytes = 0;
    for node in &changed.nodes {
        let version = engine.version(*node).expect("a changed node is known");
        let delta = engine.delta_since(*node, version - 1).expect("the last step is in the log");
        bytes += postcard::to_allocvec(&delta).expect("encodes").len();
    }
    bytes
}

fn move_endpoint(engine: &mut MapEngine, id: NodeId, port: u16) -> Changed {
    let mut moved = engine.node(id).expect("known").clone();
    moved.endpoints = vec![SocketAddr::from(([203, 0, 113, 7], port))];
    engine.upsert_node(moved).expect("valid")
}

fn criterion_benches(criterion: &mut Criterion, engine: &mut MapEngine, name: &str) {
    let mut group = criterion.benchmark_group(name);
    group.sample_size(10);
    let count = engine.node_count() as NodeId;
    let mut target = 0;
    group.bench_function("full_map", |b| {
        b.iter(|| {
            target = target % count + 1;
            let map = engine.full_map(target).expect("known");
            black_box(postcard::to_allocvec(&map).expect("encodes").len())
        })
    });
    let mut port = 0u16;
    group.bench_function("endpoint_change_with_deltas", |b| {
        b.iter_batched(
            || {
                port = port.wrapping_add(1);
                port
            },
            |port| {
                let changed = move_endpoint(engine, count / 2, port);
                black_box(encode_deltas(engine, &changed))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Runs `work` and says how long it took.
#[allow(clippy::disallowed_methods, reason = "a benchmark measures real time")]
fn timed<T>(work: impl FnOnce() -> T) -> (Duration, T) {
    let start = std::time::Instant::now();
    let result = work();
    (start.elapsed(), result)
}

/// One change's cost: time of the step with its deltas encoded, of the step alone, nodes
/// touched, delta bytes.
struct Cost {
    time: Duration,
    step: Duration,
    nodes: usize,
    bytes: usize,
}

#[inline(never)] // A root for `valgrind --tool=callgrind --toggle-collect='*change_cost*'`.
fn change_cost(engine: &mut MapEngine, step: impl FnOnce(&mut MapEngine) -> Changed) -> Cost {
    let (step_time, changed) = timed(|| step(engine));
    let (encode_time, bytes) = timed(|| encode_deltas(engine, &changed));
    Cost { time: step_time + encode_time, step: step_time, nodes: changed.nodes.len(), bytes }
}

/// Headscale's way: every node's full map, built and encoded. Sampled and scaled past
/// `RECOMPUTE_PEERS_MAX` peers in all; returns (time, bytes, sampled).
fn recompute_all(engine: &MapEngine) -> (Duration, usize, bool) {
    let count = engine.node_count();
    let peers_total = count * engine.full_map(1).expect("known").peers.len();
    let sampled = peers_total > RECOMPUTE_PEERS_MAX;
    let step = if sampled { count / RECOMPUTE_SAMPLE_COUNT } else { 1 };
    let targets: Vec<NodeId> = (1..=count as NodeId).step_by(step).collect();
    let (time, bytes) = timed(|| {
        let encode = |id: &NodeId| {
            let map = engine.full_map(*id).expect("known");
            postcard::to_allocvec(&map).expect("encodes").len()
        };
        targets.iter().map(encode).sum::<usize>()
    });
    let scale = count as f64 / targets.len() as f64;
    (time.mul_f64(scale), (bytes as f64 * scale) as usize, sampled)
}

/// The policy edit of the summary, for the `engine-*` policies: `tag:g1` to `tag:g2:22` added
/// under `engine-groups`; under `engine-allow-all` the same (no) policy again, which costs the
/// check of every map all the same. The engine is told every node again (`replace_policy`).
fn edited_policy(policy: &str) -> Option<Box<dyn PolicyView>> {
    match policy {
        "engine-allow-all" => Some(Box::new(PolicyEngine::allow_all())),
        "engine-groups" => Some(Box::new(PolicyEngine::new(groups_policy(Edit::Groups), users()))),
        _ => None,
    }
}

/// A join (not inlined, so that callgrind counts it on its own: `--toggle-collect=*join_step`).
#[inline(never)]
fn join_step(engine: &mut MapEngine, joiner: NodeInfo) -> Changed {
    engine.upsert_node(joiner).expect("valid")
}

/// A removal (not inlined, for callgrind as `join_step`).
#[inline(never)]
fn removal_step(engine: &mut MapEngine, node: NodeId) -> Changed {
    engine.remove_node(node).expect("valid")
}

/// The median by time of `costs` (not empty).
fn median(mut costs: Vec<Cost>) -> Cost {
    costs.sort_by_key(|cost| cost.time);
    costs.swap_remove(costs.len() / 2)
}

fn summary_row(policy: &str, count: u64, engine: &mut MapEngine, setup: Duration) -> Vec<String> {
    let skip = std::env::var("NETMAP_BENCH_RECOMPUTE").is_ok_and(|value| value == "0");
    let (all_time, all_bytes, sampled) =
        if skip { (Duration::ZERO, 0, false) } else { recompute_all(engine) };
    let middle = count / 2 + 1;
    let (mut endpoints, mut joins, mut removals) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..CHANGE_ROUNDS {
        let port = round as u16 + 1;
        endpoints.push(change_cost(engine, |engine| move_endpoint(engine, middle, port)));
        let joiner = node_for(policy, count + 1);
        joins.push(change_cost(engine, |engine| join_step(engine, joiner)));
        removals.push(change_cost(engine, |engine| removal_step(engine, count + 1)));
    }
    let (endpoint, join, leave) = (median(endpoints), median(joins), median(removals));
    assert_eq!(engine.node_count() as u64, count);
    let mut costs = vec![("endpoint", endpoint), ("join", join), ("removal", leave)];
    let edit = std::env::var("NETMAP_BENCH_EDIT").map_or(true, |value| value != "0");
    if edit && policy == "engine-groups" {
        // What the coordinator does: the policy engine edited in place (`MapEngine::set_policy`).
        let restored = groups_policy(Edit::None);
        for (name, edit) in [("policy", Edit::Groups), ("policy 1:1", Edit::Pair)] {
            let edited = groups_policy(edit);
            let in_place =
                |engine: &mut MapEngine| engine.set_policy(Some(&edited)).expect("in place");
            costs.push((name, change_cost(engine, in_place)));
            let back =
                |engine: &mut MapEngine| engine.set_policy(Some(&restored)).expect("in place");
            change_cost(engine, back);
        }
    }
    if let Some(edited) = edited_policy(policy).filter(|_| edit) {
        // A new policy view: every node's peers and filter compared again.
        costs.push(("policy*", change_cost(engine, |engine| engine.replace_policy(edited))));
    }
    let memory_mb = engine.heap_bytes_estimate() as f64 / 1e6;
    let queries = peer_queries(engine);
    let mut lines = vec![format!(
        "{policy} {count} nodes: setup {setup:.2?}, engine ~{memory_mb:.0} MB; recompute all \
         {all_time:.2?} {:.1} MB{}",
        all_bytes as f64 / 1e6,
        if sampled { " (sampled, scaled)" } else { "" }
    )];
    for (name, cost) in costs {
        let ratio = all_time.as_secs_f64() / cost.time.as_secs_f64();
        lines.push(format!(
            "  {name:<10} {:>10.2?} (step {:>10.2?}) {:>6} nodes {:>10} B   recompute-all/ours \
             {ratio:>9.0}x",
            cost.time, cost.step, cost.nodes, cost.bytes
        ));
    }
    lines.push(queries);
    lines
}

/// Nodes sampled, evenly spaced, for the peer-query percentiles.
const QUERY_SAMPLE_COUNT: u64 = 1000;
/// Times each sampled query is repeated; the fastest counts (see `peer_queries`).
const QUERY_REPEATS: usize = 3;

/// A peer query: what the coordinator does when an agent asks for its peers from scratch (a
/// first connection, or a reconnection from a version its log no longer holds): the node's
/// full map built and postcard-encoded. Timed for `QUERY_SAMPLE_COUNT` nodes spread over
/// the ids, each `QUERY_REPEATS` times: the first pass is the cold one (after a restart, no
/// peer entry made yet), and the fastest pass per node is the warm cost without the
/// preemptions a shared machine adds. The line gives the 50th and 99th percentiles of both,
/// the slowest warm query, and the largest map.
fn peer_queries(engine: &MapEngine) -> String {
    let count = engine.node_count() as u64;
    let stride = (count / QUERY_SAMPLE_COUNT).max(1);
    let ids: Vec<NodeId> = (1..=count).step_by(stride as usize).collect();
    let query = |id: NodeId| {
        timed(|| {
            let map = engine.full_map(id).expect("known");
            postcard::to_allocvec(&map).expect("encodes").len()
        })
    };
    let mut cold = Vec::new();
    let mut warm = vec![Duration::MAX; ids.len()];
    let mut bytes_max = 0;
    for pass in 0..QUERY_REPEATS {
        for (index, &id) in ids.iter().enumerate() {
            let (time, bytes) = query(id);
            if pass == 0 {
                cold.push(time);
            }
            warm[index] = warm[index].min(time);
            bytes_max = bytes_max.max(bytes);
        }
    }
    let at = |times: &mut Vec<Duration>, quantile: f64| {
        times.sort();
        times[((times.len() - 1) as f64 * quantile).round() as usize]
    };
    format!(
        "  peer query (full map built and encoded, {} nodes): warm p50 {:.2?} p99 {:.2?} max \
         {:.2?}; cold p50 {:.2?} p99 {:.2?}; largest {bytes_max} B",
        ids.len(),
        at(&mut warm, 0.5),
        at(&mut warm, 0.99),
        at(&mut warm, 1.0),
        at(&mut cold, 0.5),
        at(&mut cold, 0.99),
    )
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let sizes: Vec<u64> = std::env::var("NETMAP_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,50000".to_string())
        .split(',')
        .map(|size| size.trim().parse().expect("a node count"))
        .collect();
    let policies = std::env::var("NETMAP_BENCH_POLICIES")
        .unwrap_or_else(|_| "groups,allow-all,engine-groups,engine-allow-all".into());
    let mut summary = Vec::new();
    for count in sizes {
        for policy in policies.split(',') {
            let (setup, mut engine) = timed(|| engine(policy, count));
            criterion_benches(&mut criterion, &mut engine, &format!("netmap/{policy}/{count}"));
            let row = summary_row(policy, count, &mut engine, setup);
            println!("{}", row.join("\n"));
            summary.extend(row);
        }
    }
    println!("\nsummary (one change, its deltas built and postcard-encoded):");
    for line in summary {
        println!("{line}");
    }
    criterion.final_summary();
}
