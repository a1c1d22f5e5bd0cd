//! Model test of the network-map engine: agents that follow deltas end where a fresh engine is.
//!
//! Random sequences of changes (joins, leaves, endpoint changes, online flips, key rotations,
//! route advertisements and approvals, tag changes, node and user renames, DNS records, policy
//! replacements) run on one engine, under random `coordinator.netmap.*` faults. Each node has
//! an agent that took a full map once and then applies every delta it is given; some agents
//! disconnect and later ask for a delta from their old version (or take a full map if it is
//! gone). After every step each connected agent's map must equal the engine's `full_map`, hold
//! only peers the policy allows, and the engine's invariants must hold; at the end every
//! agent's map must equal, versions aside, the full map of a fresh engine restored from the
//! final state (users, nodes, DNS records and the primaries, which depend on history).
//!
//! The policy is `NaivePolicy`: a test `PolicyView` that recomputes every answer from scratch
//! on each change and reports exactly the nodes whose answers changed, so its contract holds
//! by construction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use coordinator::netmap::{Faults, MapEngine, NetMap};
use coordinator::{Affected, FilterRule, Key, NetPortRange, NodeId, NodeInfo, PolicyView};
use coordinator::{PortRange, User, UserId};
use proptest::prelude::*;
use wireguard::IpNet;

const DOMAIN: &str = "example.ts.net";
const ROUTES: [&str; 4] = ["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0", "fd00::/64"];
const USER_NAMES: [&str; 4] = ["alice", "bob", "admin-root", "carol"];
const NODES_MAX: usize = 30;

/// Which rules the naive policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rules {
    /// Everyone talks to everyone.
    AllowAll,
    /// Same user, a shared tag, user nodes to `tag:server`, admins to all; user nodes reach
    /// every subnet router.
    Groups,
    /// Nobody talks to anybody.
    Isolated,
}

/// A `PolicyView` that recomputes everything on each change (see the module docs).
struct NaivePolicy {
    rules: Rules,
    users: BTreeMap<UserId, User>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    peers: BTreeMap<NodeId, Vec<NodeId>>,
    filters: BTreeMap<NodeId, Vec<FilterRule>>,
}

impl NaivePolicy {
    fn new(rules: Rules) -> NaivePolicy {
        let (users, nodes) = (BTreeMap::new(), BTreeMap::new());
        NaivePolicy { rules, users, nodes, peers: BTreeMap::new(), filters: BTreeMap::new() }
    }

    fn is_admin(&self, node: &NodeInfo) -> bool {
        let user = node.user.and_then(|user| self.users.get(&user));
        user.is_some_and(|user| user.name.starts_with("admin"))
    }

    fn can_send(&self, from: &NodeInfo, to: &NodeInfo) -> bool {
        match self.rules {
            Rules::AllowAll => true,
            Rules::Isolated => false,
            Rules::Groups => {
                (from.user.is_some() && from.user == to.user)
                    || from.tags.iter().any(|tag| to.tags.contains(tag))
                    || (from.user.is_some() && to.tags.iter().any(|tag| tag == "tag:server"))
                    || self.is_admin(from)
            }
        }
    }

    fn reaches_routes_of(&self, from: &NodeInfo, router: &NodeInfo) -> bool {
        self.rules == Rules::Groups && from.user.is_some() && !router.approved_routes.is_empty()
    }

    fn compute(&self, node: &NodeInfo) -> (Vec<NodeId>, Vec<FilterRule>) {
        let others = self.nodes.values().filter(|other| other.id != node.id);
        let peers = others
            .filter(|other| {
                self.can_send(node, other)
                    || self.can_send(other, node)
                    || self.reaches_routes_of(node, other)
            })
            .map(|other| other.id)
            .collect();
        let senders: BTreeSet<String> = self
            .nodes
            .values()
            .filter(|other| other.id != node.id && self.can_send(other, node))
            .map(|other| other.ipv4.to_string())
            .collect();
        let filter = if senders.is_empty() {
            Vec::new()
        } else {
            let dst = NetPortRange { ip: node.ipv4.to_string(), ports: PortRange::ANY };
            vec![FilterRule {
                src_ips: senders.into_iter().collect(),
                dst_ports: vec![dst],
                ..Default::default()
            }]
        };
        (peers, filter)
    }

    /// Recomputes everything; reports exactly the nodes whose answers changed.
    fn recompute(&mut self) -> Affected {
        let mut affected = Affected::default();
        let mut peers = BTreeMap::new();
        let mut filters = BTreeMap::new();
        for node in self.nodes.values() {
            let (node_peers, filter) = self.compute(node);
            if self.peers.get(&node.id) != Some(&node_peers) {
                affected.peers.insert(node.id);
            }
            if self.filters.get(&node.id) != Some(&filter) {
                affected.filters.insert(node.id);
            }
            peers.insert(node.id, node_peers);
            filters.insert(node.id, filter);
        }
        for gone in self.peers.keys().filter(|id| !self.nodes.contains_key(id)) {
            affected.peers.insert(*gone);
            affected.filters.insert(*gone);
        }
        (self.peers, self.filters) = (peers, filters);
        affected
    }
}

impl PolicyView for NaivePolicy {
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected {
        self.nodes.insert(node.id, node.clone());
        self.recompute()
    }

    fn remove_node(&mut self, node: NodeId) -> Affected {
        self.nodes.remove(&node);
        self.recompute()
    }

    fn upsert_user(&mut self, user: &User) -> Affected {
        self.users.insert(user.id, user.clone());
        self.recompute()
    }

    fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        self.peers.get(&node).cloned().unwrap_or_default()
    }

    fn filter_for(&self, node: NodeId) -> Vec<FilterRule> {
        self.filters.get(&node).cloned().unwrap_or_default()
    }
}

/// One change the test makes; node and user numbers pick among the live ones.
#[derive(Clone, Debug)]
enum Op {
    Join {
        user: u8,
        online: bool,
    },
    Leave(u8),
    Endpoint(u8, u16),
    Online(u8, bool),
    RotateKey(u8, u8),
    Advertise(u8, u8),
    Approve(u8, u8),
    /// Advertise and approve together (an auto-approver), or withdraw both.
    Route(u8, u8),
    SetTags(u8, u8),
    RenameUser(u8, u8),
    RenameNode(u8, u8),
    DnsRecords(u8),
    ReplacePolicy(u8),
    Disconnect(u8),
    Reconnect(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>()).prop_map(|(user, online)| Op::Join { user, online }),
        1 => any::<u8>().prop_map(Op::Leave),
        3 => (any::<u8>(), any::<u16>()).prop_map(|(node, port)| Op::Endpoint(node, port)),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(node, online)| Op::Online(node, online)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(node, key)| Op::RotateKey(node, key)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(node, route)| Op::Advertise(node, route)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(node, route)| Op::Approve(node, route)),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(node, route)| Op::Route(node, route)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(node, tags)| Op::SetTags(node, tags)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(user, name)| Op::RenameUser(user, name)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(node, name)| Op::RenameNode(node, name)),
        1 => any::<u8>().prop_map(Op::DnsRecords),
        1 => any::<u8>().prop_map(Op::ReplacePolicy),
        1 => any::<u8>().prop_map(Op::Disconnect),
        1 => any::<u8>().prop_map(Op::Reconnect),
    ]
}

/// Fault settings: which `coordinator.netmap.*` points may fire, and the seed deciding when.
#[derive(Clone, Copy, Debug)]
struct FaultPlan {
    seed: u64,
    /// A bit per fault point: coalesce, drop_log, patch_as_full.
    enabled: u8,
    /// Whether the engine may treat the policy as pairwise (`set_pairwise_policy`).
    pairwise: bool,
    /// Whether the planted bug is planted (acts only with feature `planted-bugs`).
    planted: bool,
}

fn faults(plan: FaultPlan) -> Faults {
    let mut state = plan.seed | 1;
    Faults::new(Box::new(move |name| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bit = match name {
            "coordinator.netmap.coalesce" => 1,
            "coordinator.netmap.drop_log" => 2,
            _ => 4,
        };
        plan.enabled & bit != 0 && state.is_multiple_of(4)
    }))
}

fn rules(choice: u8) -> Rules {
    [Rules::Groups, Rules::AllowAll, Rules::Isolated][usize::from(choice) % 3]
}

fn new_node(id: NodeId, user: u8, online: bool) -> NodeInfo {
    let (user, tags) = match user % 4 {
        3 => (None, vec!["tag:server".to_string()]),
        user => (Some(UserId::from(user) + 1), Vec::new()),
    };
    NodeInfo {
        id,
        hostname: format!("Host {id}"),
        given_name: format!("host-{id}"),
        user,
        tags,
        ipv4: Ipv4Addr::new(100, 64, (id >> 8) as u8, id as u8),
        ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16),
        node_key: Key([id as u8; 32]),
        machine_key: Key([!(id as u8); 32]),
        endpoints: vec![SocketAddr::from(([192, 0, 2, id as u8], 41641))],
        advertised_routes: Vec::new(),
        approved_routes: Vec::new(),
        online,
        ephemeral: false,
        expiry: None,
    }
}

fn route(choice: u8) -> IpNet {
    ROUTES[usize::from(choice) % ROUTES.len()].parse().expect("valid route")
}

/// The test's own record of the state and the agents.
struct World {
    engine: MapEngine,
    rules: Rules,
    users: BTreeMap<UserId, User>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    agents: BTreeMap<NodeId, (NetMap, bool)>,
    records: BTreeMap<String, Vec<std::net::IpAddr>>,
    next_id: NodeId,
}

impl World {
    fn new(plan: FaultPlan) -> Result<World, String> {
        let mut engine = MapEngine::new(Box::new(NaivePolicy::new(Rules::Groups)), DOMAIN);
        engine.set_faults(faults(plan));
        engine.set_pairwise_policy(plan.pairwise);
        if plan.planted {
            engine.plant_stale_removal();
        }
        let mut users = BTreeMap::new();
        for id in 1..=3 {
            let name = USER_NAMES[id as usize - 1].to_string();
            let user = User { id, name, email: Some(format!("user{id}@example.com")) };
            engine.upsert_user(user.clone()).map_err(|e| e.to_string())?;
            users.insert(id, user);
        }
        let (nodes, agents) = (BTreeMap::new(), BTreeMap::new());
        let (rules, records) = (Rules::Groups, BTreeMap::new());
        Ok(World { engine, rules, users, nodes, agents, records, next_id: 1 })
    }

    fn pick(&self, choice: u8) -> Option<NodeId> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[usize::from(choice) % ids.len()])
    }

    fn change(&mut self, choice: u8, edit: impl FnOnce(&mut NodeInfo)) -> Result<(), String> {
        let Some(id) = self.pick(choice) else { return Ok(()) };
        let node = self.nodes.get_mut(&id).expect("picked a live node");
        edit(node);
        self.engine.upsert_node(node.clone()).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Join { user, online } => {
                if self.nodes.len() >= NODES_MAX {
                    return Ok(());
                }
                let node = new_node(self.next_id, *user, *online);
                self.next_id += 1;
                self.engine.upsert_node(node.clone()).map_err(|e| e.to_string())?;
                let map = self.engine.full_map(node.id).map_err(|e| e.to_string())?;
                self.agents.insert(node.id, (map, true));
                self.nodes.insert(node.id, node);
            }
            Op::Leave(choice) => {
                let Some(id) = self.pick(*choice) else { return Ok(()) };
                self.engine.remove_node(id).map_err(|e| e.to_string())?;
                self.nodes.remove(&id);
                self.agents.remove(&id);
            }
            Op::Endpoint(choice, port) => self.change(*choice, |node| {
                node.endpoints = vec![SocketAddr::from(([192, 0, 2, 1], *port))];
            })?,
            Op::Online(choice, online) => self.change(*choice, |node| node.online = *online)?,
            Op::RotateKey(choice, key) => self.change(*choice, |node| {
                node.node_key = Key([*key; 32]);
                node.expiry = Some(u64::from(*key));
            })?,
            Op::Advertise(choice, which) => self.change(*choice, |node| {
                toggle(&mut node.advertised_routes, route(*which));
            })?,
            Op::Approve(choice, which) => self.change(*choice, |node| {
                toggle(&mut node.approved_routes, route(*which));
            })?,
            Op::Route(choice, which) => self.change(*choice, |node| {
                let net = route(*which);
                let serving = node.advertised_routes.contains(&net);
                node.advertised_routes.retain(|have| *have != net);
                node.approved_routes.retain(|have| *have != net);
                if !serving {
                    node.advertised_routes.push(net);
                    node.approved_routes.push(net);
                }
            })?,
            Op::SetTags(choice, tags) => self.change(*choice, |node| match tags % 3 {
                0 => (node.user, node.tags) = (Some(1), Vec::new()),
                1 => (node.user, node.tags) = (None, vec!["tag:server".to_string()]),
                _ => (node.user, node.tags) = (None, vec!["tag:db".to_string()]),
            })?,
            _ => self.step_other(op)?,
        }
        Ok(())
    }

    fn step_other(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::RenameUser(user, name) => {
                let id = UserId::from(*user % 3) + 1;
                let user = self.users.get_mut(&id).expect("three users");
                user.name = USER_NAMES[usize::from(*name) % USER_NAMES.len()].to_string();
                self.engine.upsert_user(user.clone()).map_err(|e| e.to_string())?;
            }
            Op::RenameNode(choice, name) => {
                let name = format!("renamed-{}", name % 4);
                self.change(*choice, |node| node.given_name = name)?;
            }
            Op::DnsRecords(count) => {
                let record = |index: u8| {
                    let address = std::net::IpAddr::from([10, 0, 0, index]);
                    (format!("db{index}.internal"), vec![address])
                };
                self.records = (0..count % 3).map(record).collect();
                let records = self.records.clone();
                self.engine.set_dns_records(records).map_err(|e| e.to_string())?;
            }
            Op::ReplacePolicy(choice) => {
                self.rules = rules(*choice);
                self.engine.replace_policy(Box::new(NaivePolicy::new(self.rules)));
            }
            Op::Disconnect(choice) => {
                let Some(id) = self.pick(*choice) else { return Ok(()) };
                self.agents.get_mut(&id).expect("every node has an agent").1 = false;
            }
            Op::Reconnect(choice) => {
                let Some(id) = self.pick(*choice) else { return Ok(()) };
                self.agents.get_mut(&id).expect("every node has an agent").1 = true;
            }
            _ => unreachable!("handled by step"),
        }
        Ok(())
    }

    /// Brings every connected agent up to date and checks it against the engine.
    fn sync(&mut self) -> Result<(), String> {
        for (id, (map, connected)) in &mut self.agents {
            if !*connected {
                continue;
            }
            match self.engine.delta_since(*id, map.version) {
                Some(delta) => map.apply(&delta).map_err(|e| format!("node {id}: {e}"))?,
                None => *map = self.engine.full_map(*id).map_err(|e| e.to_string())?,
            }
            let full = self.engine.full_map(*id).map_err(|e| e.to_string())?;
            if *map != full {
                return Err(format!("node {id}: agent {map:#?}\nengine {full:#?}"));
            }
            let allowed = self.engine.policy().peers_of(*id);
            if let Some(peer) = map.peers.iter().find(|peer| !allowed.contains(&peer.id)) {
                return Err(format!("node {id}: holds peer {} the policy forbids", peer.id));
            }
        }
        self.engine.check_invariants().map_err(|e| e.to_string())
    }

    /// Reconnects everyone and compares with a fresh engine restored from the final state.
    fn finish(&mut self) -> Result<(), String> {
        for agent in self.agents.values_mut() {
            agent.1 = true;
        }
        self.sync()?;
        let users: Vec<User> = self.users.values().cloned().collect();
        let nodes: Vec<NodeInfo> = self.nodes.values().cloned().collect();
        let policy = Box::new(NaivePolicy::new(self.rules));
        let primaries = self.engine.routes().primaries().clone();
        let mut fresh = MapEngine::restore(policy, DOMAIN, &users, &nodes, &primaries)
            .map_err(|e| e.to_string())?;
        fresh.set_dns_records(self.records.clone()).map_err(|e| e.to_string())?;
        fresh.check_invariants().map_err(|e| e.to_string())?;
        for (id, (map, _)) in &self.agents {
            let mut expected = fresh.full_map(*id).map_err(|e| e.to_string())?;
            expected.version = map.version;
            if *map != expected {
                return Err(format!("node {id}: agent {map:#?}\nfresh engine {expected:#?}"));
            }
        }
        Ok(())
    }
}

fn toggle(routes: &mut Vec<IpNet>, net: IpNet) {
    match routes.iter().position(|have| *have == net) {
        Some(index) => {
            routes.remove(index);
        }
        None => routes.push(net),
    }
}

/// Runs `ops` and checks everything; the first discrepancy is the error.
fn run(ops: &[Op], plan: FaultPlan) -> Result<(), String> {
    let mut world = World::new(plan)?;
    for (index, op) in ops.iter().enumerate() {
        world.step(op).map_err(|e| format!("step {index} {op:?}: {e}"))?;
        world.sync().map_err(|e| format!("after step {index} {op:?}: {e}"))?;
    }
    world.finish().map_err(|e| format!("at the end: {e}"))
}

fn plan() -> impl Strategy<Value = FaultPlan> {
    let plan = |(seed, enabled, pairwise)| FaultPlan { seed, enabled, pairwise, planted: false };
    (any::<u64>(), 0u8..8, any::<bool>()).prop_map(plan)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn agents_following_deltas_match_a_fresh_engine(
        ops in proptest::collection::vec(op(), 1..80),
        plan in plan(),
    ) {
        let result = run(&ops, plan);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// A fixed story: routes fail over while an agent is away, and it catches up from its version.
#[test]
fn a_disconnected_agent_catches_up_across_a_failover() {
    let ops = [
        Op::Join { user: 0, online: true },
        Op::Join { user: 1, online: true },
        Op::Join { user: 2, online: true },
        Op::Advertise(1, 0),
        Op::Approve(1, 0),
        Op::Advertise(2, 0),
        Op::Approve(2, 0),
        Op::Disconnect(0),
        Op::Online(1, false),
        Op::Endpoint(2, 9),
        Op::Leave(1),
        Op::Reconnect(0),
    ];
    let plan = FaultPlan { seed: 1, enabled: 0, pairwise: true, planted: false };
    let result = run(&ops, plan);
    assert!(result.is_ok(), "{}", result.unwrap_err());
    if cfg!(feature = "planted-bugs") {
        // Node 2 leaves; with the planted bug node 3's agent keeps it.
        let result = run(&ops, FaultPlan { planted: true, ..plan });
        assert!(result.as_ref().is_err_and(|e| e.contains("Leave(1)")), "{result:?}");
    }
}

/// With the planted bug (a removal not sent to the removed node's peers), the model test must
/// find a failing case.
#[cfg(feature = "planted-bugs")]
#[test]
fn the_model_test_catches_the_planted_bug() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config { cases: 256, ..Config::default() });
    let strategy = (proptest::collection::vec(op(), 1..80), plan());
    let outcome = runner.run(&strategy, |(ops, plan)| {
        let result = run(&ops, FaultPlan { planted: true, ..plan });
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
        Ok(())
    });
    assert!(outcome.is_err(), "the planted bug went unnoticed");
}
