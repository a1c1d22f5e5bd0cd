//! `gossip-cluster`: SWIM + Lifeguard membership, Plumtree push and MST anti-entropy on a
//! cluster under splits, one-way cuts, crashes with restarts from disk, pauses, clogs, loss
//! spikes and clock jumps.
//!
//! Every node updates a small shared keyspace at random intervals until the workload stops:
//! unique values into LWW registers (`k*`), amounts in -3..=5 added to PN-counters (`c*`), and
//! unique elements inserted into, or its own earlier elements removed from, OR-Sets (`s*`).
//! Nodes persist their state (snapshot + WAL) and restore it on restart.
//!
//! Safety: no node holds a register value or set element that no node wrote, and no counter
//! lies outside what the attempted updates allow (no invented data). Liveness (end of the
//! healed phase): every live node sees exactly the live nodes as alive; all live nodes hold
//! the same MST root (convergence), so the last writer won everywhere; and every acknowledged
//! (WAL-synced) update survived: each counter is at least the acknowledged sum plus every
//! unacknowledged decrement, each acknowledged insert nobody tried to remove is present, and
//! each acknowledged remove's element is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gossip::driver::{Durability, Handle, start_persistent_planted};
use gossip::faults::PlantedBug;
use gossip::node::NodeConfig;
use gossip::store::{Update, Value};
use gossip::swim::{MemberId, MemberState};
use invariants::{Subject, Violation};
use rand::Rng;
use sim::world::{NodeId, SimEnv, SimError, World};
use sim::{Env, Instant};

use crate::nemesis::at;
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const PORT: u16 = 7946;
const SEED_NODE_COUNT: usize = 3;
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

fn addr(index: usize) -> SocketAddr {
    let [high, low] = (index as u16 + 1).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, high, low)), PORT)
}

#[derive(Default)]
struct State {
    /// Each node's current handle (replaced on restart).
    handles: Vec<Option<Arc<Handle<SimEnv>>>>,
    /// Every (key, value) any node wrote to a register.
    written: BTreeSet<(Vec<u8>, Vec<u8>)>,
    /// When each acknowledged update returned.
    acked_nanos: Vec<u64>,
    /// Updates attempted, of every kind.
    attempted_count: u64,
    /// Per counter key: what its value may be.
    counters: BTreeMap<Vec<u8>, CounterBounds>,
    /// Per set element (key, element): what happened to it.
    elements: BTreeMap<(Vec<u8>, Vec<u8>), ElementFate>,
}

/// The sums that bound a counter: acknowledged updates must count, unacknowledged ones may.
#[derive(Clone, Copy, Debug, Default)]
struct CounterBounds {
    acked: i128,
    /// The acknowledged increments alone: a replica that has not yet heard of some
    /// acknowledged decrements may legally hold up to this plus `pending_up`.
    acked_up: i128,
    pending_up: i128,
    pending_down: i128,
}

/// What the workload did to one set element (each is inserted once, by one node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ElementFate {
    /// The insert was tried but not acknowledged.
    MaybeInserted,
    /// The insert was acknowledged and no remove was tried.
    Inserted,
    /// A remove was tried but not acknowledged.
    MaybeRemoved,
    /// The remove was acknowledged.
    Removed,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Clone, Copy, Debug)]
struct Config {
    index: usize,
    key_count: u32,
    write_interval_ms_max: u64,
    stop_at: Instant,
    bug: Option<PlantedBug>,
}

async fn node_main(env: SimEnv, config: Config, shared: Shared) {
    let index = config.index;
    let node_config = NodeConfig::new(MemberId(index as u64), addr(index));
    let seeds: Vec<SocketAddr> = (0..SEED_NODE_COUNT).filter(|s| *s != index).map(addr).collect();
    let durability = Durability { dir: "gossip", interval: SNAPSHOT_INTERVAL };
    let started =
        start_persistent_planted(env.clone(), node_config, seeds, None, durability, config.bug)
            .await;
    let Ok(handle) = started else {
        tracing::warn!(target: "gossip", index, "restore failed");
        return;
    };
    lock(&shared).handles[index] = Some(Arc::clone(&handle));
    let mut rng = env.rng();
    let mut counter = 0u64;
    while env.now() < config.stop_at {
        env.sleep(Duration::from_millis(rng.random_range(1..=config.write_interval_ms_max))).await;
        if env.now() >= config.stop_at {
            break;
        }
        counter += 1;
        let slot = rng.random_range(0..config.key_count);
        let unique = format!("n{index}-g{}-{counter}", env.generation()).into_bytes();
        let (key, update) = match rng.random_range(0..4u8) {
            0 | 1 => {
                let key = format!("k{slot}").into_bytes();
                lock(&shared).written.insert((key.clone(), unique.clone()));
                (key, Update::Register(Some(unique)))
            }
            2 => (format!("c{slot}").into_bytes(), Update::Add(rng.random_range(-3..=5))),
            _ => {
                let key = format!("s{slot}").into_bytes();
                let owned = own_elements(&lock(&shared), &key, index);
                match owned.get(rng.random_range(0..owned.len().max(1))) {
                    Some(element) if rng.random_bool(0.4) => (key, Update::Remove(element.clone())),
                    _ => (key, Update::Insert(unique)),
                }
            }
        };
        record(&mut lock(&shared), &key, &update, Ack::Pending);
        let acked = handle.update(&key, update.clone()).await.is_ok();
        if acked {
            let mut state = lock(&shared);
            state.acked_nanos.push(env.now().as_nanos());
            record(&mut state, &key, &update, Ack::Done);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ack {
    Pending,
    Done,
}

/// Notes an update before it is tried (`Pending`) and once acknowledged (`Done`).
fn record(state: &mut State, key: &[u8], update: &Update, ack: Ack) {
    if ack == Ack::Pending {
        state.attempted_count += 1;
    }
    match update {
        Update::Add(amount) => {
            let bounds = state.counters.entry(key.to_vec()).or_default();
            let amount = i128::from(*amount);
            let pending =
                if amount >= 0 { &mut bounds.pending_up } else { &mut bounds.pending_down };
            match ack {
                Ack::Pending => *pending += amount,
                Ack::Done => {
                    *pending -= amount;
                    bounds.acked += amount;
                    bounds.acked_up += amount.max(0);
                }
            }
        }
        Update::Insert(element) | Update::Remove(element) => {
            let fate = match (update, ack) {
                (Update::Insert(_), Ack::Pending) => ElementFate::MaybeInserted,
                (Update::Insert(_), Ack::Done) => ElementFate::Inserted,
                (_, Ack::Pending) => ElementFate::MaybeRemoved,
                (_, Ack::Done) => ElementFate::Removed,
            };
            state.elements.insert((key.to_vec(), element.clone()), fate);
        }
        _ => {}
    }
}

/// Elements of set `key` that node `index` inserted (acknowledged) and never tried to remove.
fn own_elements(state: &State, key: &[u8], index: usize) -> Vec<Vec<u8>> {
    let prefix = format!("n{index}-");
    state
        .elements
        .iter()
        .filter(|((set, element), fate)| {
            set == key && **fate == ElementFate::Inserted && element.starts_with(prefix.as_bytes())
        })
        .map(|((_, element), _)| element.clone())
        .collect()
}

/// A gossip cluster scenario: `gossip-cluster` (8-40 nodes, quick enough for every
/// `cargo test`) and `gossip-large` (50-200 nodes, for sweeps).
#[derive(Clone, Copy, Debug)]
pub struct GossipCluster {
    /// Its name.
    pub name: &'static str,
    /// Nodes a seed may choose.
    pub node_count: Span,
    /// The bug planted in every node, if any (feature `planted-bugs`).
    pub bug: Option<PlantedBug>,
}

impl GossipCluster {
    /// 8-40 nodes.
    pub const SMALL: GossipCluster =
        GossipCluster { name: "gossip-cluster", node_count: Span::new(8, 40), bug: None };
    /// 50-200 nodes.
    pub const LARGE: GossipCluster =
        GossipCluster { name: "gossip-large", node_count: Span::new(50, 200), bug: None };
    /// `gossip-cluster` whose nodes refute suspicions at the suspected incarnation.
    pub const PLANTED_STALE_REFUTE: GossipCluster = GossipCluster {
        name: "planted-gossip-stale-refute",
        node_count: Span::new(8, 40),
        bug: Some(PlantedBug::RefuteWithStaleIncarnation),
    };
    /// `gossip-cluster` whose nodes purge tombstones after 3.6 s instead of an hour.
    pub const PLANTED_PURGE_TTL: GossipCluster = GossipCluster {
        name: "planted-gossip-purge-ttl",
        node_count: Span::new(8, 40),
        bug: Some(PlantedBug::PurgeTtlInSeconds),
    };
}

impl Scenario for GossipCluster {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        if let Some(bug) = self.bug {
            return match bug {
                PlantedBug::RefuteWithStaleIncarnation => {
                    "planted bug: a suspected gossip node refutes at the suspected incarnation"
                }
                _ => "planted bug: gossip tombstones purged after 3.6 s instead of an hour",
            };
        }
        if self.node_count.max > 40 {
            "gossip-cluster with 50-200 nodes (for sweeps; too slow for every cargo test)"
        } else {
            "8-40 gossip nodes (SWIM + Lifeguard, Plumtree, MST anti-entropy, persisted \
             registers, counters and sets) under splits, one-way cuts, crashes, pauses, clogs, \
             loss spikes and clock jumps"
        }
    }

    fn checks(&self) -> &'static [&'static str] {
        &[
            "no-invented-values",
            "membership-agreement",
            "convergence",
            "acknowledged-updates-survive",
        ]
    }

    fn feature(&self) -> Option<&'static str> {
        self.bug.map(|_| "planted-bugs")
    }

    fn sweep_only(&self) -> bool {
        self.node_count.max > 40
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: self.node_count,
            client_count: Span::exactly(0),
            key_count: Span::new(4, 64),
            faulty_ms: Span::new(10_000, 60_000),
            healed_ms: 60_000,
            liveness_bound_ms: 60_000,
            fault_count: Span::new(1, 8),
            fault_classes: FaultClass::CLUSTER,
            link_loss_percent_max: 5,
            think_ms: Span::new(200, 2_000),
            read_percent: Span::exactly(0),
        }
    }

    fn topology(&self, swarm: &Swarm) -> Topology {
        Topology {
            servers: (0..swarm.node_count).map(|i| format!("n{i}")).collect(),
            clients: Vec::new(),
        }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let node_count = swarm.node_count as usize;
        let shared: Shared =
            Arc::new(Mutex::new(State { handles: vec![None; node_count], ..State::default() }));
        // Writes stop with the faulty phase, so the healed phase is all settling.
        let stop_at = at(swarm.faulty_ms);
        let mut nodes = Vec::new();
        for index in 0..node_count {
            let config = Config {
                index,
                key_count: swarm.key_count,
                write_interval_ms_max: swarm.think_ms_max,
                stop_at,
                bug: self.bug,
            };
            let boot_shared = Arc::clone(&shared);
            let node = world.add_node_with(&format!("n{index}"), addr(index).ip(), move |env| {
                lock(&boot_shared).handles[index] = None;
                node_main(env, config, Arc::clone(&boot_shared))
            });
            nodes.push(node);
        }
        Box::new(GossipRun { nodes, shared, final_state: None })
    }
}

/// What the live nodes held at the end.
struct FinalState {
    views: BTreeMap<usize, Vec<u64>>,
    roots: BTreeMap<usize, u128>,
    invented: Option<String>,
    lost: Option<String>,
}

struct GossipRun {
    nodes: Vec<NodeId>,
    shared: Shared,
    final_state: Option<FinalState>,
}

impl GossipRun {
    fn live(&self, world: &World) -> Vec<usize> {
        (0..self.nodes.len()).filter(|index| !world.is_crashed(self.nodes[*index])).collect()
    }

    fn observe(&self, world: &World) -> FinalState {
        let live = self.live(world);
        let state = lock(&self.shared);
        let mut views = BTreeMap::new();
        let mut roots = BTreeMap::new();
        let mut invented = None;
        let mut lost = None;
        for index in &live {
            let Some(handle) = state.handles[*index].clone() else { continue };
            let (view, root, entries) = handle.with_node(|node| {
                let view: Vec<u64> = node
                    .swim()
                    .members()
                    .filter(|member| {
                        matches!(member.state, MemberState::Alive | MemberState::Suspect)
                    })
                    .map(|member| member.id.0)
                    .collect();
                let entries: Vec<(Vec<u8>, Value)> = node
                    .store()
                    .entries()
                    .map(|(key, value)| (key.to_vec(), value.clone()))
                    .collect();
                (view, node.store_mut().root().0, entries)
            });
            for (key, value) in &entries {
                if let Some(message) = invented_in(&state, key, value) {
                    invented.get_or_insert(format!("n{index} holds {message}"));
                }
            }
            if let Some(message) = lost_in(&state, &entries) {
                lost.get_or_insert(format!("n{index}: {message}"));
            }
            views.insert(*index, view);
            roots.insert(*index, root);
        }
        FinalState { views, roots, invented, lost }
    }
}

/// Something in `value` that no update allows: a register value or set element nobody wrote,
/// or a counter beyond every attempted update.
fn invented_in(state: &State, key: &[u8], value: &Value) -> Option<String> {
    let name = String::from_utf8_lossy(key);
    if let Some(bytes) = value.bytes()
        && !state.written.contains(&(key.to_vec(), bytes.to_vec()))
    {
        return Some(format!("{name}={}, which nobody wrote", String::from_utf8_lossy(bytes)));
    }
    for element in value.elements().unwrap_or_default() {
        if !state.elements.contains_key(&(key.to_vec(), element.to_vec())) {
            let element = String::from_utf8_lossy(element);
            return Some(format!("{element} in set {name}, which nobody inserted"));
        }
    }
    let count = value.count()?;
    let bounds = state.counters.get(key).copied().unwrap_or_default();
    // Not `acked + pending_up`: a replica behind on acknowledged decrements holds more than
    // that without inventing anything (convergence, a liveness check, says whether it catches
    // up). Issue 17's BUGGIFY sites found this false safety verdict.
    let high = bounds.acked_up + bounds.pending_up;
    (count > high).then(|| format!("counter {name}={count}, above every attempted sum {high}"))
}

/// An acknowledged update missing from a node's final entries.
fn lost_in(state: &State, entries: &[(Vec<u8>, Value)]) -> Option<String> {
    let find = |key: &[u8]| entries.iter().find(|(held, _)| held == key).map(|(_, value)| value);
    for (key, bounds) in &state.counters {
        let count = find(key).and_then(Value::count).unwrap_or(0);
        let low = bounds.acked + bounds.pending_down;
        if count < low {
            let name = String::from_utf8_lossy(key);
            return Some(format!("counter {name}={count}, below the acknowledged sum {low}"));
        }
    }
    for ((key, element), fate) in &state.elements {
        let elements = find(key).and_then(Value::elements).unwrap_or_default();
        let present = elements.contains(&element.as_slice());
        let (name, element) = (String::from_utf8_lossy(key), String::from_utf8_lossy(element));
        match fate {
            ElementFate::Inserted if !present => {
                return Some(format!("acknowledged insert of {element} into {name} is gone"));
            }
            ElementFate::Removed if present => {
                return Some(format!("acknowledged remove of {element} from {name} undone"));
            }
            _ => {}
        }
    }
    None
}

impl Workload for GossipRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        self.final_state = Some(self.observe(world));
        Ok(())
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let final_state = self.final_state.as_ref().expect("finish ran");
        match &final_state.invented {
            Some(message) => Err(Violation::new("no-invented-values", message.clone())),
            None => Ok(()),
        }
    }

    fn check_liveness(&self, _healed_nanos: u64, _bound_nanos: u64) -> Result<(), Violation> {
        let final_state = self.final_state.as_ref().expect("finish ran");
        let live: Vec<u64> = final_state.views.keys().map(|index| *index as u64).collect();
        if live.len() < self.nodes.len() {
            let message = format!(
                "{} of {} nodes never came back",
                self.nodes.len() - live.len(),
                self.nodes.len()
            );
            return Err(Violation::new("membership-agreement", message));
        }
        for (index, view) in &final_state.views {
            if *view != live {
                let missing: Vec<_> = live.iter().filter(|id| !view.contains(id)).collect();
                let extra: Vec<_> = view.iter().filter(|id| !live.contains(id)).collect();
                let message = format!(
                    "n{index} sees the wrong members alive: missing {missing:?}, extra {extra:?}"
                );
                let node = Subject::Node(format!("n{index}"));
                return Err(Violation::new("membership-agreement", message).concerning(node));
            }
        }
        let digests: Vec<(String, u64)> = final_state
            .roots
            .iter()
            .map(|(index, root)| (format!("n{index}"), (*root as u64) ^ ((*root >> 64) as u64)))
            .collect();
        invariants::convergence::check_convergence(&digests)?;
        match &final_state.lost {
            Some(message) => Err(Violation::new("acknowledged-updates-survive", message.clone())),
            None => Ok(()),
        }
    }

    fn history(&self) -> serde_json::Value {
        let state = lock(&self.shared);
        let roots: BTreeSet<String> = self
            .final_state
            .iter()
            .flat_map(|final_state| final_state.roots.values().map(|root| format!("{root:#034x}")))
            .collect();
        serde_json::json!({
            "updates": state.attempted_count,
            "updates_acked": state.acked_nanos.len(),
            "register_values": state.written.len(),
            "counters": state.counters.len(),
            "set_elements": state.elements.len(),
            "distinct_final_roots": roots,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let state = lock(&self.shared);
        (state.attempted_count, state.acked_nanos.len() as u64)
    }
}
