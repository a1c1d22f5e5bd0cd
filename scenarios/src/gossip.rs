//! `gossip-cluster`: SWIM + Lifeguard membership, Plumtree push and MST anti-entropy on a
//! cluster under splits, one-way cuts, crashes with restarts from disk, pauses, clogs, loss
//! spikes and clock jumps.
//!
//! Every node writes unique values to a small shared keyspace at random intervals until the
//! workload stops. Nodes persist their state (snapshot + WAL) and restore it on restart.
//!
//! Safety: no node ever holds a value that no node wrote (no invented data). Liveness (end of
//! the healed phase): every live node sees exactly the live nodes as alive, and all live nodes
//! hold the same MST root (convergence), so every write survived anti-entropy and the last
//! writer won everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gossip::driver::{Handle, start_persistent};
use gossip::node::NodeConfig;
use gossip::swim::{MemberId, MemberState};
use invariants::Violation;
use rand::Rng;
use sim::world::{NodeId, SimConfig, SimEnv, SimError, World};
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
    /// Every (key, value) any node wrote.
    written: BTreeSet<(Vec<u8>, Vec<u8>)>,
    /// When each acknowledged write returned.
    acked_nanos: Vec<u64>,
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
}

async fn node_main(env: SimEnv, config: Config, shared: Shared) {
    let index = config.index;
    let node_config = NodeConfig::new(MemberId(index as u64), addr(index));
    let seeds: Vec<SocketAddr> = (0..SEED_NODE_COUNT).filter(|s| *s != index).map(addr).collect();
    let started =
        start_persistent(env.clone(), node_config, seeds, None, "gossip", SNAPSHOT_INTERVAL).await;
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
        let key = format!("k{}", rng.random_range(0..config.key_count)).into_bytes();
        let value = format!("n{index}-g{}-{counter}", env.generation()).into_bytes();
        lock(&shared).written.insert((key.clone(), value.clone()));
        if handle.put(&key, Some(value)).await.is_ok() {
            lock(&shared).acked_nanos.push(env.now().as_nanos());
        }
    }
}

/// A gossip cluster scenario: `gossip-cluster` (8-40 nodes, quick enough for every
/// `cargo test`) and `gossip-large` (50-200 nodes, for sweeps).
#[derive(Clone, Copy, Debug)]
pub struct GossipCluster {
    /// Its name.
    pub name: &'static str,
    /// Nodes a seed may choose.
    pub node_count: Span,
}

impl GossipCluster {
    /// 8-40 nodes.
    pub const SMALL: GossipCluster =
        GossipCluster { name: "gossip-cluster", node_count: Span::new(8, 40) };
    /// 50-200 nodes.
    pub const LARGE: GossipCluster =
        GossipCluster { name: "gossip-large", node_count: Span::new(50, 200) };
}

impl Scenario for GossipCluster {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        if self.node_count.max > 40 {
            "gossip-cluster with 50-200 nodes (for sweeps; too slow for every cargo test)"
        } else {
            "8-40 gossip nodes (SWIM + Lifeguard, Plumtree, MST anti-entropy, persisted state) \
             under splits, one-way cuts, crashes, pauses, clogs, loss spikes and clock jumps"
        }
    }

    fn checks(&self) -> &'static [&'static str] {
        &["no-invented-values", "membership-agreement", "convergence"]
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

    fn configure(&self, config: &mut SimConfig, _: &Swarm) {
        // Protocol timers, not buggify sites, are under test here.
        config.buggify = sim::world::BuggifyConfig::DISABLED;
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
        for index in &live {
            let Some(handle) = state.handles[*index].clone() else { continue };
            let (view, root, values) = handle.with_node(|node| {
                let view: Vec<u64> = node
                    .swim()
                    .members()
                    .filter(|member| {
                        matches!(member.state, MemberState::Alive | MemberState::Suspect)
                    })
                    .map(|member| member.id.0)
                    .collect();
                let values: Vec<(Vec<u8>, Vec<u8>)> = node
                    .store()
                    .entries()
                    .filter_map(|(key, value)| {
                        Some((key.to_vec(), value.value()?.as_ref()?.clone()))
                    })
                    .collect();
                (view, node.store_mut().root().0, values)
            });
            if let Some((key, value)) = values.iter().find(|entry| !state.written.contains(entry)) {
                let (key, value) = (String::from_utf8_lossy(key), String::from_utf8_lossy(value));
                invented.get_or_insert(format!("n{index} holds {key}={value}, which nobody wrote"));
            }
            views.insert(*index, view);
            roots.insert(*index, root);
        }
        FinalState { views, roots, invented }
    }
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
                return Err(Violation::new("membership-agreement", message));
            }
        }
        let digests: Vec<(String, u64)> = final_state
            .roots
            .iter()
            .map(|(index, root)| (format!("n{index}"), (*root as u64) ^ ((*root >> 64) as u64)))
            .collect();
        invariants::convergence::check_convergence(&digests)
    }

    fn history(&self) -> serde_json::Value {
        let state = lock(&self.shared);
        let roots: BTreeSet<String> = self
            .final_state
            .iter()
            .flat_map(|final_state| final_state.roots.values().map(|root| format!("{root:#034x}")))
            .collect();
        serde_json::json!({
            "writes": state.written.len(),
            "writes_acked": state.acked_nanos.len(),
            "distinct_final_roots": roots,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let state = lock(&self.shared);
        (state.written.len() as u64, state.acked_nanos.len() as u64)
    }
}
