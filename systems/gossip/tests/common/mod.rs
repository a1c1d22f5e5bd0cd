//! Shared harness of the gossip simulation tests: a `sim::World` of gossip nodes with fixed
//! seeds, an effect log (membership changes and entry arrivals with their times), and the
//! checks the scenarios share.

#![allow(dead_code)]

pub mod foca_peer;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip::driver::{Handle, Observer, start, start_persistent};
use gossip::node::{Effect, Node, NodeConfig};
use gossip::store::{Update, Value};
use gossip::swim::{MemberId, MemberState};
use sim::Instant;
use sim::world::{LinkConfig, NodeId, SimConfig, SimEnv, World};

/// The gossip port.
pub const PORT: u16 = 7946;

/// The address of node `index`.
pub fn addr(index: usize) -> SocketAddr {
    let [high, low] = (index as u16 + 1).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, high, low)), PORT)
}

/// One observed effect.
#[derive(Clone, Debug)]
pub enum Event {
    /// `observer` changed its view of `member` to `state`.
    Member { at: Instant, observer: usize, member: usize, state: MemberState },
    /// `observer`'s register of `key` changed.
    Entry { at: Instant, observer: usize, key: Vec<u8> },
}

/// Each node's current handle (replaced on restart).
pub type Handles = Arc<Mutex<Vec<Option<Arc<Handle<SimEnv>>>>>>;

/// A simulated gossip cluster.
pub struct Cluster {
    /// The world.
    pub world: World,
    /// Simulation node ids, by index.
    pub nodes: Vec<NodeId>,
    /// Each node's current handle (replaced on restart).
    pub handles: Handles,
    /// Everything observed.
    pub events: Arc<Mutex<Vec<Event>>>,
}

/// Options of a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes.
    pub node_count: usize,
    /// Loss on every link.
    pub loss: f64,
    /// Node configuration adjustments.
    pub configure: fn(&mut NodeConfig),
    /// Keep state on the simulated disk (snapshot every this often) and restore it on restart.
    pub snapshot_interval: Option<Duration>,
}

impl Options {
    /// `node_count` nodes, `loss` on every link, default configuration.
    pub fn new(node_count: usize, loss: f64) -> Options {
        Options { node_count, loss, configure: |_| {}, snapshot_interval: None }
    }
}

impl Cluster {
    /// Builds and boots the cluster; every node joins through the first three.
    pub fn new(seed: u64, options: &Options) -> Cluster {
        let mut config = SimConfig::new(seed);
        config.net.link = LinkConfig { loss: options.loss, ..LinkConfig::default() };
        config.buggify = sim::world::BuggifyConfig::DISABLED;
        let world = World::new(config);
        let handles = Arc::new(Mutex::new(vec![None; options.node_count]));
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut nodes = Vec::new();
        for index in 0..options.node_count {
            let (handles, events) = (Arc::clone(&handles), Arc::clone(&events));
            let configure = options.configure;
            let snapshot_interval = options.snapshot_interval;
            let name = format!("n{index}");
            let node = world.add_node_with(&name, addr(index).ip(), move |env| {
                let (handles, events) = (Arc::clone(&handles), Arc::clone(&events));
                async move {
                    let mut config = NodeConfig::new(MemberId(index as u64), addr(index));
                    configure(&mut config);
                    let seeds: Vec<SocketAddr> =
                        (0..3).filter(|seed| *seed != index).map(addr).collect();
                    let observer = Some(observer(index, events));
                    let handle = match snapshot_interval {
                        None => start(env, Node::new(config), seeds, observer).await.expect("bind"),
                        Some(interval) => {
                            start_persistent(env, config, seeds, observer, "gossip", interval)
                                .await
                                .expect("restore")
                        }
                    };
                    handles.lock().expect("lock")[index] = Some(handle);
                }
            });
            nodes.push(node);
        }
        Cluster { world, nodes, handles, events }
    }

    /// The handle of node `index`.
    pub fn handle(&self, index: usize) -> Arc<Handle<SimEnv>> {
        self.handles.lock().expect("lock")[index].clone().expect("booted")
    }

    /// Runs for `duration`.
    pub fn run(&self, duration: Duration) {
        self.world.run_for(duration).expect("simulation runs");
    }

    /// Writes `key` on node `index` now.
    pub fn put(&self, index: usize, key: &[u8], value: &[u8]) {
        let handle = self.handle(index);
        let (key, value) = (key.to_vec(), value.to_vec());
        self.world.spawn(self.nodes[index], async move { handle.put(&key, Some(value)).await });
    }

    /// Applies a typed update to `key` on node `index` now.
    pub fn update(&self, index: usize, key: &[u8], update: Update) {
        let handle = self.handle(index);
        let key = key.to_vec();
        self.world.spawn(self.nodes[index], async move { handle.update(&key, update).await });
    }

    /// Node `index`'s value of `key`.
    pub fn value(&self, index: usize, key: &[u8]) -> Option<Value> {
        self.handle(index).with_node(|node| node.store().value(key).cloned())
    }

    /// Crashes node `index`.
    pub fn crash(&self, index: usize) {
        self.world.crash(self.nodes[index]);
        self.handles.lock().expect("lock")[index] = None;
    }

    /// Restarts node `index` from its disk.
    pub fn restart(&self, index: usize) {
        self.world.restart(self.nodes[index]);
    }

    /// Whether node `index` is up.
    pub fn is_up(&self, index: usize) -> bool {
        !self.world.is_crashed(self.nodes[index])
    }

    /// The live nodes' view of who is a live member (alive or, transiently, suspect).
    pub fn alive_views(&self) -> BTreeMap<usize, Vec<u64>> {
        let mut views = BTreeMap::new();
        for index in (0..self.nodes.len()).filter(|index| self.is_up(*index)) {
            let view = self.handle(index).with_node(|node| {
                node.swim()
                    .members()
                    .filter(|member| {
                        matches!(member.state, MemberState::Alive | MemberState::Suspect)
                    })
                    .map(|member| member.id.0)
                    .collect::<Vec<_>>()
            });
            views.insert(index, view);
        }
        views
    }

    /// The live nodes' MST roots.
    pub fn roots(&self) -> BTreeMap<usize, u128> {
        (0..self.nodes.len())
            .filter(|index| self.is_up(*index))
            .map(|index| (index, self.handle(index).with_node(|node| node.store_mut().root().0)))
            .collect()
    }

    /// A copy of the event log.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }
}

fn observer(index: usize, events: Arc<Mutex<Vec<Event>>>) -> Observer {
    Arc::new(move |at, _, effect| {
        let event = match effect {
            Effect::MemberChanged(member) => Event::Member {
                at,
                observer: index,
                member: member.id.0 as usize,
                state: member.state,
            },
            Effect::EntryChanged { key } => Event::Entry { at, observer: index, key: key.clone() },
            _ => return,
        };
        events.lock().expect("lock").push(event);
    })
}

/// Asserts every live node sees exactly the live nodes alive and all roots are equal.
#[track_caller]
pub fn assert_converged(cluster: &Cluster, seed: u64) {
    let live: Vec<u64> =
        (0..cluster.nodes.len()).filter(|index| cluster.is_up(*index)).map(|i| i as u64).collect();
    for (index, view) in cluster.alive_views() {
        let missing: Vec<_> = live
            .iter()
            .filter(|id| !view.contains(id))
            .map(|id| {
                let held = cluster.handle(index).with_node(|node| {
                    node.swim()
                        .member(MemberId(*id))
                        .map(|member| (member.incarnation, member.state))
                });
                let own = cluster.handle(*id as usize).with_node(|node| node.swim().own());
                (*id, held, own.incarnation, own.state)
            })
            .collect();
        let extra: Vec<_> = view.iter().filter(|id| !live.contains(id)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "seed {seed:#x}: node {index}'s view misses (id, held, own incarnation, own state) \
             {missing:?} and has extra {extra:?}"
        );
    }
    let roots = cluster.roots();
    let first = *roots.values().next().expect("a live node");
    for (index, root) in roots {
        assert_eq!(root, first, "seed {seed:#x}: node {index}'s MST root");
    }
}

/// Seeds to run: `SIM_SEEDS=n` raises the count from `default_count`.
pub fn seeds(base: u64, default_count: u64) -> Vec<u64> {
    let count =
        std::env::var("SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(default_count);
    (0..count).map(|offset| base + offset).collect()
}

/// Nodes to run: `SIM_NODES=n` overrides `default_count`.
pub fn node_count(default_count: usize) -> usize {
    std::env::var("SIM_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(default_count)
}

/// The p-th percentile (0..=100) of `values`.
pub fn percentile(values: &mut [Duration], p: usize) -> Duration {
    assert!(!values.is_empty());
    values.sort();
    let rank = (values.len() * p).div_ceil(100).max(1) - 1;
    values[rank.min(values.len() - 1)]
}
