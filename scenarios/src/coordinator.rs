//! `coordinator-churn`: the control plane and its agents under churn, crashes and partitions.
//!
//! One coordinator node (the coordinator over docdb, and an admin task on the same node that
//! creates users and pre-auth keys and cycles the policy through fixed versions) and 3-6 agent
//! nodes, each with a fixed identity (user odin, user thor, `tag:server`, `tag:db`), that
//! register, hold the map stream and apply every map to a WireGuard device. The nemesis crashes
//! and restarts the coordinator and the agents, splits and cuts links, pauses nodes and jumps
//! clocks.
//!
//! Policy versions are contiguous (the admin sets a policy only on top of the version it read),
//! so version `v` is always `POLICIES[(v - 1) % 2]`, and the checker knows every version's text
//! without being told; version 0 is "no policy" (everyone reaches everyone). The checker's
//! oracle is a hand-written evaluation of the three policies over the four identities,
//! independent of the policy compiler.
//!
//! Safety (whole run): every map an agent held was allowed by the policy of its version (no
//! peer the policy forbids); no two nodes ever got the same address; every acknowledged
//! registration is in the registry after a final crash and restart of the coordinator;
//! no agent's private key appears anywhere on the coordinator's disk.
//! Liveness (after the heal): every agent holds the map the coordinator computes for it now,
//! its peers are exactly the registered nodes the current policy lets it reach, and its
//! WireGuard device has exactly those peers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coordinator::agent::{self, AgentConfig, AgentStatus};
use coordinator::netmap::NetMap;
use coordinator::ratelimit::RateLimit;
use coordinator::registry::{PreAuthKeyOptions, RegistryOptions};
use coordinator::server::{Coordinator, CoordinatorConfig};
use coordinator::{Key, NodeId, UserId};
use invariants::Violation;
use rand::{RngCore, SeedableRng};
use sim::Env;
use sim::world::{NodeId as SimNode, SimConfig, SimEnv, SimError, World};
use zeroize::Zeroizing;

use crate::nemesis::at;
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const FAULTS: &[FaultClass] = &[
    FaultClass::Crash,
    FaultClass::Split,
    FaultClass::Oneway,
    FaultClass::Pause,
    FaultClass::Clog,
    FaultClass::ClockJump,
];

/// The coordinator's agent-protocol port.
const PORT: u16 = 7000;
/// How long after the healed phase every agent must hold its true map.
const CONVERGENCE_MAX: Duration = Duration::from_secs(20);
/// Between two policy edits.
const POLICY_EVERY: Duration = Duration::from_millis(1500);
/// The policies the admin cycles through (version v is `POLICIES[(v - 1) % 2]`).
const POLICIES: [&str; 2] = [
    r#"{
  // version 1, 3, 5, ...: admins reach everything, thor the servers' 443, servers the db.
  "groups": {"group:admins": ["odin@example.com"]},
  "tagOwners": {"tag:server": ["group:admins"], "tag:db": ["group:admins"]},
  "acls": [
    {"action": "accept", "src": ["group:admins"], "dst": ["*:*"]},
    {"action": "accept", "src": ["thor@example.com"], "dst": ["tag:server:443"]},
    {"action": "accept", "src": ["tag:server"], "dst": ["tag:db:5432"]},
  ],
}"#,
    r#"{
  // version 2, 4, 6, ...: everyone reaches the servers' 443, users their own devices.
  "tagOwners": {"tag:server": ["odin@example.com"], "tag:db": ["odin@example.com"]},
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["tag:server:443"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
}"#,
];

/// Who a node is, as far as the policies care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Ident {
    Odin,
    Thor,
    Server,
    Db,
}

/// Agent `i`'s identity.
pub(crate) fn ident_of(index: usize) -> Ident {
    [Ident::Odin, Ident::Thor, Ident::Server, Ident::Db, Ident::Odin, Ident::Thor][index % 6]
}

/// Whether `src` may send to `dst` under policy version `version` (the oracle).
fn allows(version: u64, src: Ident, dst: Ident) -> bool {
    use Ident::*;
    if version == 0 {
        return true;
    }
    if version % 2 == 1 {
        src == Odin || (src == Thor && dst == Server) || (src == Server && dst == Db)
    } else {
        dst == Server || (src == dst && matches!(src, Odin | Thor))
    }
}

/// Whether two distinct nodes are each other's peers under `version`.
fn visible(version: u64, a: Ident, b: Ident) -> bool {
    allows(version, a, b) || allows(version, b, a)
}

#[derive(Default)]
pub(crate) struct History {
    /// Pre-auth keys per identity (known once the admin created them).
    keys: BTreeMap<Ident, String>,
    /// The users' ids.
    users: BTreeMap<String, UserId>,
    /// The running coordinator (replaced at every boot).
    coordinator: Option<Coordinator<SimEnv>>,
    /// Agent index -> its latest status handle (replaced at every boot).
    pub(crate) agents: BTreeMap<usize, Arc<Mutex<AgentStatus>>>,
    /// Agent index -> its private keys' bytes (never to be seen on the coordinator).
    secrets: BTreeMap<usize, Vec<[u8; 32]>>,
    /// Acknowledged registrations: node id -> (agent index, IPv4, IPv6).
    pub(crate) registered: BTreeMap<NodeId, (usize, IpAddr, IpAddr)>,
    /// Nodes the admin deleted (or tried to).
    deleted: BTreeSet<NodeId>,
    /// Policy versions acknowledged to the admin.
    policy_acks: Vec<u64>,
    /// Maps agents held: (agent index, policy version, peers' ids, peers' identities).
    maps_checked: u64,
    pub(crate) violations: Vec<Violation>,
    /// The registry's nodes at the end of the healed phase.
    pub(crate) current_nodes: Option<Vec<coordinator::NodeInfo>>,
    /// The registry's nodes after the final crash and restart.
    final_nodes: Option<Vec<coordinator::NodeInfo>>,
    leaked: Vec<String>,
    /// The end of the faulty phase (agents rotate keys only before it).
    pub(crate) faulty_until: Option<sim::Instant>,
    /// What the applications sent and received (scenario `mesh`).
    pub(crate) mesh: crate::mesh::MeshHistory,
}

pub(crate) type Shared = Arc<Mutex<History>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, History> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The coordinator's private key and its public half, from the run's seed.
fn coordinator_keys(seed: u64) -> ([u8; 32], Key) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xc0_0d_1a_7e);
    let mut private = [0u8; 32];
    rng.fill_bytes(&mut private);
    (private, agent::public_of(&private))
}

fn coordinator_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
}

fn agent_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, u8::try_from(index + 1).expect("few agents")))
}

/// The `coordinator-churn` scenario (and its planted-bug twin, and `mesh`, which adds gossip
/// and application traffic through the tunnels: `mesh.rs`).
#[derive(Clone, Copy, Debug)]
pub struct CoordinatorChurn {
    name: &'static str,
    planted: Option<Planted>,
    mesh: bool,
}

/// The bug planted in the coordinator (feature `planted-bugs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planted {
    /// The map engine does not tell a removed node's peers (`plant_stale_removal`).
    StaleRemoval,
    /// The registry hands out a deleted node's address again
    /// (`RegistryOptions::planted_reuse_freed_addresses`).
    ReuseFreedAddresses,
}

impl CoordinatorChurn {
    /// The correct coordinator.
    pub const CORRECT: CoordinatorChurn =
        CoordinatorChurn { name: "coordinator-churn", planted: None, mesh: false };
    /// The map engine that forgets to tell a removed node's peers (`planted-bugs`).
    pub const PLANTED_STALE_REMOVAL: CoordinatorChurn = CoordinatorChurn {
        name: "planted-coord-stale-peer",
        planted: Some(Planted::StaleRemoval),
        mesh: false,
    };
    /// The registry whose allocator hands a deleted node's address out again (`planted-bugs`).
    pub const PLANTED_ADDRESS_REUSE: CoordinatorChurn = CoordinatorChurn {
        name: "planted-coord-address-reuse",
        planted: Some(Planted::ReuseFreedAddresses),
        mesh: false,
    };
    /// The whole mesh: `coordinator-churn` plus gossip and traffic through the tunnels.
    pub const MESH: CoordinatorChurn = CoordinatorChurn { name: "mesh", planted: None, mesh: true };
}

impl Scenario for CoordinatorChurn {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        match self.planted {
            Some(Planted::StaleRemoval) => {
                return "planted bug: a deleted node stays in its peers' maps";
            }
            Some(Planted::ReuseFreedAddresses) => {
                return "planted bug: a new node gets the address of a deleted one";
            }
            None => {}
        }
        if self.mesh {
            return "the whole mesh from one seed: coordinator on docdb on the LSM store, 3-6 \
                    agents with WireGuard devices, gossip inside the tunnels and application \
                    traffic through them, under crashes, splits, one-way cuts, pauses, clogs, \
                    clock jumps, policy edits and node deletions";
        }
        "a coordinator on docdb and 3-6 agents with WireGuard devices: registration, map \
         streams, policy edits and node deletions under crashes of both, splits, one-way cuts, \
         pauses, clogs and clock jumps"
    }

    fn feature(&self) -> Option<&'static str> {
        self.planted.map(|_| "planted-bugs")
    }

    fn checks(&self) -> &'static [&'static str] {
        if self.mesh {
            return &[
                "policy-safety",
                "unique-addresses",
                "durability",
                "key-secrecy",
                "convergence",
                "filter-safety",
                "authenticity",
                "reachability",
                "gossip-convergence",
            ];
        }
        &["policy-safety", "unique-addresses", "durability", "key-secrecy", "convergence"]
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::new(3, 6),
            client_count: Span::exactly(0),
            key_count: Span::exactly(0),
            faulty_ms: Span::new(4_000, 15_000),
            healed_ms: 12_000,
            liveness_bound_ms: 12_000,
            fault_count: Span::new(1, 6),
            fault_classes: FAULTS,
            link_loss_percent_max: 2,
            think_ms: Span::exactly(0),
            read_percent: Span::exactly(0),
        }
    }

    fn configure(&self, config: &mut SimConfig, _: &Swarm) {
        config.clock_offset_max = Duration::from_secs(5);
    }

    fn topology(&self, swarm: &Swarm) -> Topology {
        let mut servers = vec!["coord".to_string()];
        servers.extend((1..=swarm.node_count).map(|i| format!("n{i}")));
        Topology { servers, clients: Vec::new() }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let seed = world.seed();
        let shared: Shared = Arc::default();
        let stop_at = at(swarm.faulty_ms);
        lock(&shared).faulty_until = Some(stop_at);
        let boot_shared = Arc::clone(&shared);
        let planted = self.planted;
        let coord = world.add_node_with("coord", coordinator_ip(), move |env| {
            coordinator_main(env, seed, planted, stop_at, Arc::clone(&boot_shared))
        });
        let agent_count = swarm.node_count as usize;
        let mesh = self.mesh;
        for index in 0..agent_count {
            let boot_shared = Arc::clone(&shared);
            world.add_node_with(&format!("n{}", index + 1), agent_ip(index), move |env| {
                agent_main(env, seed, index, mesh, Arc::clone(&boot_shared))
            });
        }
        Box::new(ChurnRun { coord, agent_count, shared, mesh })
    }
}

fn config(seed: u64, planted: Option<Planted>) -> CoordinatorConfig {
    let (private, _) = coordinator_keys(seed);
    CoordinatorConfig {
        private_key: Zeroizing::new(private),
        data_dir: "coordinator".to_string(),
        domain: "mesh.test".to_string(),
        registry: RegistryOptions {
            node_key_expiry_secs: None,
            planted_reuse_freed_addresses: planted == Some(Planted::ReuseFreedAddresses),
            ..RegistryOptions::default()
        },
        db: docdb::Options { lsm: lsm::Options::tiny(), ..docdb::Options::default() },
        request_rate: RateLimit { per_second: 50, burst: 100 },
        keepalive: Duration::from_millis(500),
        agent_silence_max: Duration::from_secs(3),
        planted_stale_removal: planted == Some(Planted::StaleRemoval),
    }
}

async fn coordinator_main(
    env: SimEnv,
    seed: u64,
    planted: Option<Planted>,
    stop_at: sim::Instant,
    shared: Shared,
) {
    let coordinator = match Coordinator::open(env.clone(), config(seed, planted)).await {
        Ok(coordinator) => coordinator,
        Err(error) => {
            // Opening after a crash must work: the store recovers.
            let message = format!("coordinator failed to open: {error}");
            lock(&shared).violations.push(Violation::new("durability", message));
            return;
        }
    };
    lock(&shared).coordinator = Some(coordinator.clone());
    let listen = SocketAddr::new(coordinator_ip(), PORT);
    env.spawn(coordinator.clone().listen_and_serve(listen));
    while bootstrap(&coordinator, &shared).await.is_err() {
        env.sleep(Duration::from_millis(100)).await;
    }
    // The admin: a policy edit every `POLICY_EVERY` until the faulty phase ends, and now and
    // then a node deleted (its agent registers again as a new node).
    while env.now() < stop_at {
        env.sleep(POLICY_EVERY).await;
        if env.rng().next_u32().is_multiple_of(3) {
            delete_a_node(&env, &coordinator, &shared).await;
        }
        let Ok(current) = coordinator.registry().policy().await else { continue };
        let version = current.map_or(0, |record| record.version);
        let text = POLICIES[(version % 2) as usize];
        if let Ok(record) = coordinator.registry().set_policy(text, Some(version)).await {
            assert_eq!(record.version, version + 1, "policy versions are contiguous");
            lock(&shared).policy_acks.push(record.version);
        }
    }
}

/// Deletes a registered node chosen by the seed; it counts as deleted from before the call,
/// since a crash may cut the call after its commit.
async fn delete_a_node(env: &SimEnv, coordinator: &Coordinator<SimEnv>, shared: &Shared) {
    let Ok(nodes) = coordinator.registry().list_nodes().await else { return };
    if nodes.is_empty() {
        return;
    }
    let node = nodes[env.rng().next_u32() as usize % nodes.len()].id;
    lock(shared).deleted.insert(node);
    let _ = coordinator.registry().delete_node(node).await;
}

/// Creates the users and one reusable pre-auth key per identity (again after a restart: the
/// old keys still work, new ones are simply added).
async fn bootstrap(coordinator: &Coordinator<SimEnv>, shared: &Shared) -> Result<(), ()> {
    if lock(shared).keys.len() == 4 {
        return Ok(());
    }
    let registry = coordinator.registry();
    let mut users = BTreeMap::new();
    for (name, email) in [("odin", "odin@example.com"), ("thor", "thor@example.com")] {
        let user = match registry.user_by_name(name).await.map_err(|_| ())? {
            Some(user) => user,
            None => registry.create_user(name, Some(email)).await.map_err(|_| ())?,
        };
        users.insert(name.to_string(), user.id);
    }
    let mut keys = BTreeMap::new();
    for (ident, user, tags) in [
        (Ident::Odin, "odin", vec![]),
        (Ident::Thor, "thor", vec![]),
        (Ident::Server, "odin", vec!["tag:server".to_string()]),
        (Ident::Db, "odin", vec!["tag:db".to_string()]),
    ] {
        let options = PreAuthKeyOptions { reusable: true, tags, ..PreAuthKeyOptions::default() };
        let created = registry.create_preauth_key(users[user], options).await.map_err(|_| ())?;
        keys.insert(ident, created.key);
    }
    let mut history = lock(shared);
    history.users = users;
    history.keys = keys;
    Ok(())
}

async fn agent_main(env: SimEnv, seed: u64, index: usize, mesh: bool, shared: Shared) {
    let ident = ident_of(index);
    let preauth_key = loop {
        if let Some(key) = lock(&shared).keys.get(&ident).cloned() {
            break key;
        }
        env.sleep(Duration::from_millis(50)).await;
    };
    let (_, coordinator_key) = coordinator_keys(seed);
    let observer_shared = Arc::clone(&shared);
    let config = AgentConfig {
        coordinator: SocketAddr::new(coordinator_ip(), PORT),
        coordinator_key,
        preauth_key,
        hostname: format!("n{}", index + 1),
        state_dir: "agent".to_string(),
        listen_port: 51820,
        endpoint_ip: agent_ip(index),
        advertise_routes: Vec::new(),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        keepalive: Duration::from_millis(500),
        silence_max: Duration::from_secs(3),
        gossip_port: mesh.then_some(coordinator::tunnel_gossip::GOSSIP_PORT),
        observer: Some(Arc::new(move |status: &AgentStatus| {
            check_map(&observer_shared, index, status);
        })),
    };
    let mut handle = match agent::start(env.clone(), config).await {
        Ok(handle) => handle,
        Err(error) => {
            let message = format!("agent n{} failed to start: {error}", index + 1);
            lock(&shared).violations.push(Violation::new("durability", message));
            return;
        }
    };
    {
        let mut history = lock(&shared);
        history.agents.insert(index, handle.status_handle());
        history.secrets.insert(index, handle.private_keys_for_checks());
    }
    // Keep the handle (dropping it stops the agent) and record the registration once known.
    loop {
        let status = handle.status();
        if let Some(node) = status.node {
            let mut history = lock(&shared);
            let entry = (index, IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6));
            history.registered.entry(node.id).or_insert(entry);
        }
        // Keys made by rotations count as the agent's secrets too.
        lock(&shared).secrets.insert(index, handle.private_keys_for_checks());
        if mesh {
            crate::mesh::app_round(&env, index, &mut handle, &shared).await;
        } else {
            env.sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The identity of a node from its owner and tags.
pub(crate) fn ident_of_node(
    history: &History,
    user: Option<UserId>,
    tags: &[String],
) -> Option<Ident> {
    if tags.iter().any(|tag| tag == "tag:server") {
        return Some(Ident::Server);
    }
    if tags.iter().any(|tag| tag == "tag:db") {
        return Some(Ident::Db);
    }
    let user = user?;
    if history.users.get("odin") == Some(&user) {
        Some(Ident::Odin)
    } else if history.users.get("thor") == Some(&user) {
        Some(Ident::Thor)
    } else {
        None
    }
}

/// Policy safety, checked on every map an agent applies.
fn check_map(shared: &Shared, index: usize, status: &AgentStatus) {
    let Some(map) = status.map.as_ref() else { return };
    let mut history = lock(shared);
    history.maps_checked += 1;
    // Before any packet leaves under a new key (a rotated device applies its map first).
    history.mesh.note_key(index, status.node_key);
    if let Some(node) = &status.node {
        let entry = (index, IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6));
        history.registered.entry(node.id).or_insert(entry);
    }
    let me = ident_of(index);
    for peer in &map.peers {
        let Some(them) = ident_of_node(&history, peer.user, &peer.tags) else {
            let message = format!("n{}: peer {} has no known identity", index + 1, peer.id);
            history.violations.push(Violation::new("policy-safety", message));
            continue;
        };
        if !visible(status.policy_version, me, them) {
            let message = format!(
                "n{} ({me:?}) was given peer {} ({them:?}) under policy version {}",
                index + 1,
                peer.id,
                status.policy_version
            );
            history.violations.push(Violation::new("policy-safety", message));
        }
    }
}

struct ChurnRun {
    coord: SimNode,
    agent_count: usize,
    shared: Shared,
    mesh: bool,
}

impl Workload for ChurnRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        // Convergence is judged first, on the running system, against the registry's nodes:
        // it must hold within `CONVERGENCE_MAX` of the end of the healed phase.
        let shared = Arc::clone(&self.shared);
        let env = world.env(self.coord);
        let agent_count = self.agent_count;
        let mesh = self.mesh;
        let budget = CONVERGENCE_MAX + Duration::from_secs(1);
        world.block_on(self.coord, budget, async move {
            let healed = env.now().as_nanos();
            let deadline = env.now() + CONVERGENCE_MAX;
            loop {
                let running = lock(&shared).coordinator.clone();
                let nodes = match running {
                    Some(coordinator) => coordinator.registry().list_nodes().await.ok(),
                    None => None,
                };
                lock(&shared).current_nodes = nodes;
                let mut verdict = check_convergence(&shared, agent_count);
                if mesh && verdict.is_ok() {
                    let history = lock(&shared);
                    let version = history.coordinator.as_ref().map_or(0, |c| c.policy_version());
                    verdict = crate::mesh::check_mesh(&history, version, healed);
                }
                if verdict.is_ok() || env.now() >= deadline {
                    if let Err(violation) = verdict {
                        lock(&shared).violations.push(violation);
                    }
                    return;
                }
                env.sleep(Duration::from_millis(100)).await;
            }
        })?;
        // Then a final crash: only what the registry made durable may count.
        lock(&self.shared).coordinator = None;
        world.crash(self.coord);
        world.restart(self.coord);
        let shared = Arc::clone(&self.shared);
        let env = world.env(self.coord);
        world.block_on(self.coord, Duration::from_secs(30), async move {
            let coordinator = loop {
                let running = lock(&shared).coordinator.clone();
                if let Some(coordinator) = running {
                    break coordinator;
                }
                env.sleep(Duration::from_millis(10)).await;
            };
            let nodes = coordinator.registry().list_nodes().await.ok();
            let secrets = lock(&shared).secrets.clone();
            let leaked = scan_disk(&env, "coordinator", &secrets).await;
            let mut history = lock(&shared);
            history.final_nodes = nodes;
            history.leaked = leaked;
        })
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let history = lock(&self.shared);
        if let Some(violation) = history.violations.first() {
            return Err(violation.clone());
        }
        check_addresses(&history)?;
        let Some(nodes) = history.final_nodes.as_ref() else {
            return Err(Violation::new("durability", "the final registry could not be read"));
        };
        let stored: BTreeSet<NodeId> = nodes.iter().map(|node| node.id).collect();
        for (node, (index, ..)) in &history.registered {
            if !stored.contains(node) && !history.deleted.contains(node) {
                let message = format!("n{}'s acknowledged node {node} is gone", index + 1);
                return Err(Violation::new("durability", message));
            }
        }
        if let Some(leak) = history.leaked.first() {
            return Err(Violation::new("key-secrecy", leak.clone()));
        }
        Ok(())
    }

    fn check_liveness(&self, _healed_nanos: u64, _bound_nanos: u64) -> Result<(), Violation> {
        // Convergence was checked in `finish`, at the end of the healed phase.
        Ok(())
    }

    fn history(&self) -> serde_json::Value {
        let history = lock(&self.shared);
        let agents: Vec<serde_json::Value> = history
            .agents
            .iter()
            .map(|(index, status)| {
                let status = status.lock().unwrap_or_else(|poison| poison.into_inner());
                serde_json::json!({
                    "agent": format!("n{}", index + 1),
                    "full_maps": status.full_maps,
                    "deltas": status.deltas,
                    "disconnects": status.disconnects,
                    "peers": status.map.as_ref().map(|map| map.peers.len()),
                    "boots": status.boots,
                    "rotations": status.rotations,
                    "delivered": status.delivered,
                    "filtered": status.filtered,
                    "gossip_members": status.gossip.members,
                    "gossip_health": status.gossip.health,
                    "gossip_sent": status.gossip.sent,
                    "gossip_received": status.gossip.received,
                    "node": status.map.as_ref().map(|map| map.self_node.id),
                    "map_peers": status.map.as_ref().map(|map| {
                        map.peers.iter().map(|peer| peer.id).collect::<Vec<_>>()
                    }),
                    "device_drops": status.device_drops,
                })
            })
            .collect();
        serde_json::json!({
            "registered": history.registered.len(),
            "policy_versions_acked": history.policy_acks.len(),
            "maps_checked": history.maps_checked,
            "agents": agents,
            "mesh": self.mesh.then(|| crate::mesh::summary(&history)),
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = lock(&self.shared);
        (history.maps_checked, history.registered.len() as u64)
    }
}

/// Every agent holds the coordinator's current map for it, whose peers are exactly what
/// the policy allows among the registered nodes, and its device has exactly those peers.
fn check_convergence(shared: &Shared, agent_count: usize) -> Result<(), Violation> {
    let history = lock(shared);
    let Some(coordinator) = history.coordinator.clone() else {
        return Err(Violation::new("convergence", "no coordinator is running"));
    };
    let version = coordinator.policy_version();
    let fail = |message: String| Err(Violation::new("convergence", message));
    for index in 0..agent_count {
        let Some(status) = history.agents.get(&index) else {
            return fail(format!("n{} never started", index + 1));
        };
        let status = status.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        let Some(map) = status.map.as_ref() else {
            return fail(format!(
                "n{} holds no map (registered: {}, connected: {}, full maps {}, deltas {}, \
                 disconnects {}, last refusal {:?})",
                index + 1,
                status.node.is_some(),
                status.connected,
                status.full_maps,
                status.deltas,
                status.disconnects,
                status.refused
            ));
        };
        let node = map.self_node.id;
        let Some(truth) = coordinator.full_map(node) else {
            return fail(format!("n{}'s node {node} is unknown to the coordinator", index + 1));
        };
        if !same_map(map, &truth) {
            return fail(format!(
                "n{} holds map version {} with peers {:?}; the coordinator's is version {} \
                 with peers {:?}",
                index + 1,
                map.version,
                map.peers.iter().map(|peer| peer.id).collect::<Vec<_>>(),
                truth.version,
                truth.peers.iter().map(|peer| peer.id).collect::<Vec<_>>()
            ));
        }
        let Some(current) = history.current_nodes.as_ref() else {
            return fail("the registry's nodes could not be read".to_string());
        };
        let expected: BTreeSet<NodeId> = current
            .iter()
            .filter(|other| other.id != node)
            .filter(|other| {
                ident_of_node(&history, other.user, &other.tags)
                    .is_some_and(|them| visible(version, ident_of(index), them))
            })
            .map(|other| other.id)
            .collect();
        let held: BTreeSet<NodeId> = map.peers.iter().map(|peer| peer.id).collect();
        if held != expected {
            return fail(format!(
                "n{} under policy {version} has peers {held:?}, the policy allows {expected:?}",
                index + 1
            ));
        }
        let keys: Vec<Key> = {
            let mut keys: Vec<Key> = map.peers.iter().map(|peer| peer.node_key).collect();
            keys.sort();
            keys
        };
        if status.device_peers != keys {
            return fail(format!("n{}'s WireGuard peers differ from its map", index + 1));
        }
    }
    Ok(())
}

/// Maps equal up to the order of lists the protocol does not order.
fn same_map(held: &NetMap, truth: &NetMap) -> bool {
    held.peers == truth.peers && held.filter == truth.filter && held.self_node == truth.self_node
}

fn check_addresses(history: &History) -> Result<(), Violation> {
    let mut owners: BTreeMap<IpAddr, NodeId> = BTreeMap::new();
    let nodes = history.final_nodes.iter().flatten();
    let all =
        history
            .registered
            .iter()
            .flat_map(|(node, (_, v4, v6))| [(*v4, *node), (*v6, *node)])
            .chain(nodes.flat_map(|node| {
                [(IpAddr::V4(node.ipv4), node.id), (IpAddr::V6(node.ipv6), node.id)]
            }));
    for (address, node) in all {
        if let Some(owner) = owners.insert(address, node)
            && owner != node
        {
            let message = format!("{address} was given to nodes {owner} and {node}");
            return Err(Violation::new("unique-addresses", message));
        }
    }
    Ok(())
}

/// Reads every file under `dir` on the coordinator's disk and reports any that holds an agent's
/// private key.
async fn scan_disk(
    env: &SimEnv,
    dir: &str,
    secrets: &BTreeMap<usize, Vec<[u8; 32]>>,
) -> Vec<String> {
    let mut leaks = Vec::new();
    let Ok(names) = env.list(dir).await else { return leaks };
    for name in names {
        let path = format!("{dir}/{name}");
        let Ok(file) = env.open(&path, sim::OpenOptions::EXISTING).await else { continue };
        let mut bytes = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        while let Ok(count) = sim::File::read_at(&file, bytes.len() as u64, &mut buffer).await {
            if count == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..count]);
        }
        for (index, keys) in secrets {
            for key in keys {
                if bytes.windows(32).any(|window| window == key) {
                    leaks.push(format!(
                        "n{}'s private key is in the coordinator's {path}",
                        index + 1
                    ));
                }
            }
        }
    }
    leaks
}
