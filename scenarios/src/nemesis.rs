//! The nemesis: applies a fault plan to a world as simulated time passes.
//!
//! Faults may overlap (two splits, a crash inside a split, two spikes), so the nemesis never
//! undoes a fault blindly. After every begin or end it computes the state the active faults
//! ask for (cut links, crashed, paused and clogged nodes, link quality, clocks, disks) and moves
//! the world from the state it is in to that one. Ending a fault therefore restores exactly what
//! no other active fault still wants, and the final heal is "no fault active".
//!
//! As each fault begins, the nemesis records its kind and the situation of every node it hits
//! (`coverage`): what the world knows of the node, and what the node's system says it does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sim::Instant;
use sim::world::{DiskConfig, LinkConfig, NodeId, SimError, World};

use crate::coverage::{Coverage, WorldState, situation_label};
use crate::plan::{Fault, FaultKind};

/// What a node's system says it does, by node name (`Workload::node_state`).
pub type StateProbe<'p> = &'p dyn Fn(&str) -> Option<&'static str>;

/// One begin or end of a fault, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    at_ms: u64,
    // Ends sort before begins at the same instant, so a fault that ends as another begins
    // does not overlap it.
    begin: bool,
    index: usize,
}

/// The world state the active faults ask for.
#[derive(Clone, Debug, Default, PartialEq)]
struct Desired {
    cuts: BTreeSet<(NodeId, NodeId)>,
    crashed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    clogged: BTreeSet<NodeId>,
    link: Option<LinkConfig>,
    clocks: BTreeMap<NodeId, i64>,
    disks: BTreeMap<NodeId, DiskConfig>,
}

/// Drives one world through one plan's faulty phase.
pub struct Nemesis<'a> {
    world: &'a World,
    faults: &'a [Fault],
    base_link: LinkConfig,
    base_disk: DiskConfig,
    ids: BTreeMap<String, NodeId>,
    active: Vec<bool>,
    current: Desired,
    applied_count: u64,
    coverage: Coverage,
}

impl<'a> Nemesis<'a> {
    /// A nemesis for `faults` over `world`, whose links and disks are `base_link`/`base_disk`
    /// when no fault is active.
    pub fn new(
        world: &'a World,
        faults: &'a [Fault],
        base_link: LinkConfig,
        base_disk: DiskConfig,
    ) -> Nemesis<'a> {
        let ids = world.nodes().into_iter().map(|id| (world.node_name(id), id)).collect();
        Nemesis {
            world,
            faults,
            base_link,
            base_disk,
            ids,
            active: vec![false; faults.len()],
            current: Desired::default(),
            applied_count: 0,
            coverage: Coverage::default(),
        }
    }

    /// Runs the world from its start to `faulty_ms`, beginning and ending faults on time; as a
    /// fault begins, asks `probe` what the nodes it hits do (see `coverage`).
    pub fn run_faulty_phase(&mut self, faulty_ms: u64, probe: StateProbe) -> Result<(), SimError> {
        let mut edges = Vec::new();
        for (index, fault) in self.faults.iter().enumerate() {
            if fault.at_ms >= faulty_ms {
                continue;
            }
            let end_ms = fault.at_ms.saturating_add(fault.duration_ms).min(faulty_ms);
            edges.push(Edge { at_ms: fault.at_ms, begin: true, index });
            edges.push(Edge { at_ms: end_ms, begin: false, index });
        }
        edges.sort();
        for edge in edges {
            self.world.run_until(at(edge.at_ms))?;
            self.active[edge.index] = edge.begin;
            if edge.begin {
                self.applied_count += 1;
                let faults = self.faults;
                self.observe(&faults[edge.index].kind, probe);
                tracing::info!(target: "nemesis", fault = ?self.faults[edge.index], "begin");
            }
            self.reconcile();
        }
        self.world.run_until(at(faulty_ms))
    }

    /// Ends every fault: the network heals, crashed nodes restart, paused nodes resume,
    /// clocks and disks return to normal.
    pub fn heal(&mut self) {
        self.active.iter_mut().for_each(|active| *active = false);
        self.reconcile();
        self.world.heal();
        tracing::info!(target: "nemesis", "healed");
    }

    /// Faults begun so far.
    pub fn applied_count(&self) -> u64 {
        self.applied_count
    }

    /// What the run explored so far: the kinds of fault begun and the situations they hit.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// Records a fault of `kind` beginning, before it changes the world. Reads only the
    /// nemesis's own state, the world's node status and `probe`: no randomness, no trace.
    fn observe(&mut self, kind: &FaultKind, probe: StateProbe) {
        let hit: Vec<&str> = match kind {
            // Both sides of a split lose links, and a spike worsens every link.
            FaultKind::Split { .. } | FaultKind::LinkSpike { .. } => {
                self.ids.keys().map(String::as_str).collect()
            }
            FaultKind::Oneway { source, target } if source == target => vec![source],
            FaultKind::Oneway { source, target } => vec![source, target],
            FaultKind::Crash { node }
            | FaultKind::Pause { node }
            | FaultKind::Clog { node }
            | FaultKind::ClockJump { node, .. }
            | FaultKind::DiskFaults { node, .. } => vec![node],
        };
        let labels: Vec<String> =
            hit.iter().map(|name| situation_label(self.world_state(name), probe(name))).collect();
        assert_eq!(labels.len(), hit.len());
        self.coverage.record(kind.class().name(), &labels);
    }

    /// What the world knows of `name` now.
    fn world_state(&self, name: &str) -> WorldState {
        let id = self.id(name);
        if self.world.is_crashed(id) {
            WorldState::Down
        } else if self.current.paused.contains(&id) {
            WorldState::Paused
        } else if self.current.clogged.contains(&id) {
            WorldState::Clogged
        } else if self.current.cuts.iter().any(|(a, b)| *a == id || *b == id) {
            WorldState::Cut
        } else {
            WorldState::Up
        }
    }

    fn id(&self, name: &str) -> NodeId {
        *self.ids.get(name).unwrap_or_else(|| panic!("plan names unknown node {name}"))
    }

    fn desired(&self) -> Desired {
        let mut desired = Desired::default();
        let active = self.faults.iter().zip(&self.active).filter(|(_, active)| **active);
        for (fault, _) in active {
            match &fault.kind {
                FaultKind::Split { side } => {
                    let side: BTreeSet<NodeId> = side.iter().map(|name| self.id(name)).collect();
                    for a in &side {
                        for b in self.ids.values().filter(|b| !side.contains(b)) {
                            desired.cuts.insert((*a, *b));
                            desired.cuts.insert((*b, *a));
                        }
                    }
                }
                FaultKind::Oneway { source, target } => {
                    let (source, target) = (self.id(source), self.id(target));
                    if source != target {
                        desired.cuts.insert((source, target));
                    }
                }
                FaultKind::Crash { node } => _ = desired.crashed.insert(self.id(node)),
                FaultKind::Pause { node } => _ = desired.paused.insert(self.id(node)),
                FaultKind::Clog { node } => _ = desired.clogged.insert(self.id(node)),
                FaultKind::LinkSpike { loss, latency_ms, duplicate, reorder } => {
                    let mut link = self.base_link.clone();
                    link.loss = link.loss.max(*loss);
                    link.latency += Duration::from_millis(*latency_ms);
                    link.duplicate = link.duplicate.max(*duplicate);
                    link.reorder = link.reorder.max(*reorder);
                    desired.link = Some(link);
                }
                FaultKind::ClockJump { node, offset_ms } => {
                    desired.clocks.insert(self.id(node), offset_ms.saturating_mul(1_000_000));
                }
                FaultKind::DiskFaults { node, faults } => {
                    let mut disk = self.base_disk.clone();
                    disk.faults = faults.clone();
                    desired.disks.insert(self.id(node), disk);
                }
            }
        }
        desired
    }

    fn reconcile(&mut self) {
        let desired = self.desired();
        self.reconcile_cuts(&desired);
        let world = self.world;
        for node in desired.crashed.difference(&self.current.crashed) {
            world.crash(*node);
        }
        for node in self.current.crashed.difference(&desired.crashed) {
            world.restart(*node);
        }
        for node in desired.paused.difference(&self.current.paused) {
            world.pause(*node);
        }
        for node in self.current.paused.difference(&desired.paused) {
            world.resume(*node);
        }
        for node in desired.clogged.difference(&self.current.clogged) {
            world.clog(*node);
        }
        for node in self.current.clogged.difference(&desired.clogged) {
            world.unclog(*node);
        }
        if desired.link != self.current.link {
            world.set_all_links(desired.link.clone().unwrap_or_else(|| self.base_link.clone()));
        }
        self.reconcile_nodes(&desired);
        self.current = desired;
    }

    fn reconcile_cuts(&self, desired: &Desired) {
        for (source, target) in self.current.cuts.difference(&desired.cuts) {
            // `repair` mends both directions: cut the reverse again if it is still wanted.
            self.world.repair(*source, *target);
            if desired.cuts.contains(&(*target, *source)) {
                self.world.partition_oneway(*target, *source);
            }
        }
        for (source, target) in desired.cuts.difference(&self.current.cuts) {
            self.world.partition_oneway(*source, *target);
        }
    }

    fn reconcile_nodes(&self, desired: &Desired) {
        for node in self.ids.values() {
            let clock = desired.clocks.get(node).copied().unwrap_or(0);
            if clock != self.current.clocks.get(node).copied().unwrap_or(0) {
                self.world.set_clock(*node, clock, 0);
            }
            let disk = desired.disks.get(node);
            if disk != self.current.disks.get(node) {
                self.world.set_disk(*node, disk.cloned().unwrap_or_else(|| self.base_disk.clone()));
            }
        }
    }
}

/// The instant `ms` milliseconds after the start of the run.
pub fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms.saturating_mul(1_000_000))
}
