//! The fault plan (the nemesis) as data: what goes wrong, to whom, when and for how long.
//!
//! A plan is generated from the seed (on its own rng stream, so the world's streams do not
//! depend on it), but once generated it is plain serde data: `PlanFile` holds the scenario, the
//! seed, the swarm and the faults, can be written to JSON, edited, read back and replayed
//! exactly. Every fault is self-contained (it begins at `at_ms` and is undone `duration_ms`
//! later), so removing one fault from a plan leaves a valid plan; that is what makes shrinking
//! by delta debugging possible.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sim::world::DiskFaults;
use sim::world::trace::splitmix64;

use crate::swarm::{Bounds, Swarm};

/// Version of the plan file format; bumped on any incompatible change.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// Salt separating the plan's rng stream from the world's streams of the same seed.
const PLAN_STREAM_SALT: u64 = 0x706c_616e_0000_0001;

/// The classes of fault a scenario may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FaultClass {
    /// Split the nodes in two sides that cannot reach each other.
    Split,
    /// Cut one direction of one link.
    Oneway,
    /// Crash a server, restart it when the fault ends.
    Crash,
    /// Pause a server (a long GC pause).
    Pause,
    /// Hold every packet of a server, release them in order when the fault ends.
    Clog,
    /// Raise loss, latency, duplication and reordering on every link.
    LinkSpike,
    /// Jump a server's wall clock.
    ClockJump,
    /// Make a server's disk fail reads, writes and syncs.
    DiskFaults,
    /// Flip bits in what a server's disk reads (checksummed storage must notice).
    DiskCorruption,
}

impl FaultClass {
    /// Every class.
    pub const ALL: &[FaultClass] = &[
        FaultClass::Split,
        FaultClass::Oneway,
        FaultClass::Crash,
        FaultClass::Pause,
        FaultClass::Clog,
        FaultClass::LinkSpike,
        FaultClass::ClockJump,
        FaultClass::DiskFaults,
        FaultClass::DiskCorruption,
    ];

    /// Everything that happens to a cluster's network and nodes (no disk faults): what a
    /// networked system must survive.
    pub const CLUSTER: &[FaultClass] = &[
        FaultClass::Split,
        FaultClass::Oneway,
        FaultClass::Crash,
        FaultClass::Pause,
        FaultClass::Clog,
        FaultClass::LinkSpike,
        FaultClass::ClockJump,
    ];

    /// The class's name in reports (`snake_case`, as a plan file's `kind`, with disk faults
    /// split into errors and corruption).
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Split => "split",
            FaultClass::Oneway => "oneway",
            FaultClass::Crash => "crash",
            FaultClass::Pause => "pause",
            FaultClass::Clog => "clog",
            FaultClass::LinkSpike => "link_spike",
            FaultClass::ClockJump => "clock_jump",
            FaultClass::DiskFaults => "disk_faults",
            FaultClass::DiskCorruption => "disk_corruption",
        }
    }
}

/// What one fault does while it lasts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// The named nodes cannot reach the others, nor the others them.
    Split {
        /// One side; the other side is every other node.
        side: Vec<String>,
    },
    /// Packets from `source` to `target` are dropped; the reverse direction works.
    Oneway {
        /// Sending node.
        source: String,
        /// Receiving node.
        target: String,
    },
    /// The node crashes (unsynced writes lost or torn) and restarts at the end.
    Crash {
        /// The node.
        node: String,
    },
    /// The node stops running and resumes at the end.
    Pause {
        /// The node.
        node: String,
    },
    /// The node's packets are held and released at the end.
    Clog {
        /// The node.
        node: String,
    },
    /// Every link gets worse.
    LinkSpike {
        /// Packet loss, from 0 to 1.
        loss: f64,
        /// Extra one-way latency, in milliseconds.
        latency_ms: u64,
        /// Duplication probability.
        duplicate: f64,
        /// Reordering probability.
        reorder: f64,
    },
    /// The node's wall clock jumps by `offset_ms` (and back at the end).
    ClockJump {
        /// The node.
        node: String,
        /// The jump, in milliseconds; may be negative.
        offset_ms: i64,
    },
    /// The node's disk fails operations with these probabilities.
    DiskFaults {
        /// The node.
        node: String,
        /// Fault probabilities.
        faults: DiskFaults,
    },
}

impl FaultKind {
    /// The class of fault this is: disk faults that only flip bits on read are
    /// `DiskCorruption`, any other disk faults `DiskFaults`.
    pub fn class(&self) -> FaultClass {
        match self {
            FaultKind::Split { .. } => FaultClass::Split,
            FaultKind::Oneway { .. } => FaultClass::Oneway,
            FaultKind::Crash { .. } => FaultClass::Crash,
            FaultKind::Pause { .. } => FaultClass::Pause,
            FaultKind::Clog { .. } => FaultClass::Clog,
            FaultKind::LinkSpike { .. } => FaultClass::LinkSpike,
            FaultKind::ClockJump { .. } => FaultClass::ClockJump,
            FaultKind::DiskFaults { faults, .. } => {
                let only_flips = faults.read_corruption > 0.0
                    && DiskFaults { read_corruption: 0.0, ..faults.clone() }
                        == DiskFaults::default();
                if only_flips { FaultClass::DiskCorruption } else { FaultClass::DiskFaults }
            }
        }
    }
}

/// One fault of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// When it begins, in milliseconds from the start of the run.
    pub at_ms: u64,
    /// How long it lasts; the heal at the end of the faulty phase ends it at the latest.
    pub duration_ms: u64,
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// Everything a run is a function of: a plan file replays exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanFile {
    /// `PLAN_FORMAT_VERSION` of the writer.
    pub format_version: u32,
    /// Scenario name.
    pub scenario: String,
    /// The world's seed.
    pub seed: u64,
    /// The run's shape.
    pub swarm: Swarm,
    /// The faults, in order of `at_ms`.
    pub faults: Vec<Fault>,
}

/// Errors reading a plan file.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlanError {
    /// Not valid JSON for a plan.
    Parse(serde_json::Error),
    /// Written by an incompatible version.
    Version {
        /// The version found.
        found: u32,
    },
    /// A fault names a node the swarm does not have, or lies outside the faulty phase.
    Invalid(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Parse(error) => write!(f, "not a plan file: {error}"),
            PlanError::Version { found } => write!(
                f,
                "plan format version {found} is not supported (this build reads \
                 {PLAN_FORMAT_VERSION})"
            ),
            PlanError::Invalid(reason) => write!(f, "invalid plan: {reason}"),
        }
    }
}

impl std::error::Error for PlanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlanError::Parse(error) => Some(error),
            _ => None,
        }
    }
}

/// The nodes of a run, as the nemesis sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Server nodes: they may be crashed, paused, clogged, skewed and given bad disks.
    pub servers: Vec<String>,
    /// Client nodes: only the network around them fails.
    pub clients: Vec<String>,
}

impl Topology {
    /// Every node, servers first.
    pub fn all(&self) -> Vec<String> {
        self.servers.iter().chain(&self.clients).cloned().collect()
    }

    /// Whether `node` is one of this run's nodes.
    pub fn contains(&self, node: &str) -> bool {
        self.servers.iter().chain(&self.clients).any(|name| name == node)
    }
}

impl PlanFile {
    /// Draws the swarm and the faults of `scenario` for `seed`.
    pub fn draw(
        scenario: &str,
        seed: u64,
        bounds: &Bounds,
        topology: impl Fn(&Swarm) -> Topology,
    ) -> PlanFile {
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ PLAN_STREAM_SALT));
        let swarm = Swarm::draw(bounds, &mut rng);
        let topology = topology(&swarm);
        let fault_count = rng.random_range(bounds.fault_count.min..=bounds.fault_count.max);
        let mut faults = Vec::new();
        if !bounds.fault_classes.is_empty() {
            for _ in 0..fault_count {
                faults.push(draw_fault(&mut rng, &swarm, &topology, bounds.fault_classes));
            }
        }
        faults.sort_by_key(|fault| fault.at_ms);
        PlanFile {
            format_version: PLAN_FORMAT_VERSION,
            scenario: scenario.to_string(),
            seed,
            swarm,
            faults,
        }
    }

    /// Reads a plan from JSON and checks it against the run's topology.
    pub fn from_json(text: &str) -> Result<PlanFile, PlanError> {
        let plan: PlanFile = serde_json::from_str(text).map_err(PlanError::Parse)?;
        if plan.format_version != PLAN_FORMAT_VERSION {
            return Err(PlanError::Version { found: plan.format_version });
        }
        Ok(plan)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }

    /// Checks that every fault names nodes of `topology` with the right role.
    pub fn validate(&self, topology: &Topology) -> Result<(), PlanError> {
        for (index, fault) in self.faults.iter().enumerate() {
            let names: Vec<&String> = match &fault.kind {
                FaultKind::Split { side } => side.iter().collect(),
                FaultKind::Oneway { source, target } => vec![source, target],
                FaultKind::LinkSpike { .. } => Vec::new(),
                FaultKind::Crash { node }
                | FaultKind::Pause { node }
                | FaultKind::Clog { node }
                | FaultKind::ClockJump { node, .. }
                | FaultKind::DiskFaults { node, .. } => {
                    if !topology.servers.contains(node) {
                        let reason = format!("fault {index} targets {node}, not a server");
                        return Err(PlanError::Invalid(reason));
                    }
                    vec![node]
                }
            };
            if let Some(name) = names.iter().find(|name| !topology.contains(name)) {
                let reason = format!("fault {index} names {name}, not a node of this run");
                return Err(PlanError::Invalid(reason));
            }
        }
        Ok(())
    }
}

fn draw_fault(
    rng: &mut ChaCha8Rng,
    swarm: &Swarm,
    topology: &Topology,
    classes: &[FaultClass],
) -> Fault {
    let at_ms = rng.random_range(0..swarm.faulty_ms.max(1));
    let duration_ms = rng.random_range(1..=(swarm.faulty_ms / 2).max(1));
    let class = *classes.choose(rng).expect("classes are not empty");
    let server = topology.servers.choose(rng).expect("a run has a server").clone();
    let kind = match class {
        FaultClass::Split => {
            let all = topology.all();
            let side_count = rng.random_range(1..all.len().max(2));
            let side = all.choose_multiple(rng, side_count.min(all.len())).cloned().collect();
            FaultKind::Split { side: sorted(side) }
        }
        FaultClass::Oneway => {
            let all = topology.all();
            let pair: Vec<String> = all.choose_multiple(rng, 2).cloned().collect();
            let target = pair.get(1).unwrap_or(&pair[0]).clone();
            FaultKind::Oneway { source: pair[0].clone(), target }
        }
        FaultClass::Crash => FaultKind::Crash { node: server },
        FaultClass::Pause => FaultKind::Pause { node: server },
        FaultClass::Clog => FaultKind::Clog { node: server },
        FaultClass::LinkSpike => FaultKind::LinkSpike {
            loss: rng.random_range(1..=20) as f64 / 100.0,
            latency_ms: rng.random_range(0..=200),
            duplicate: rng.random_range(0..=5) as f64 / 100.0,
            reorder: rng.random_range(0..=20) as f64 / 100.0,
        },
        FaultClass::ClockJump => {
            FaultKind::ClockJump { node: server, offset_ms: rng.random_range(-60_000..=60_000) }
        }
        FaultClass::DiskFaults => {
            let faults = DiskFaults {
                read_error: rng.random_range(0..=10) as f64 / 100.0,
                write_error: rng.random_range(0..=10) as f64 / 100.0,
                sync_error: rng.random_range(0..=10) as f64 / 100.0,
                ..DiskFaults::default()
            };
            FaultKind::DiskFaults { node: server, faults }
        }
        FaultClass::DiskCorruption => {
            let faults = DiskFaults {
                read_corruption: rng.random_range(1..=5) as f64 / 100.0,
                ..DiskFaults::default()
            };
            FaultKind::DiskFaults { node: server, faults }
        }
    };
    Fault { at_ms, duration_ms, kind }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::Span;

    fn bounds() -> Bounds {
        Bounds {
            node_count: Span::new(3, 5),
            client_count: Span::new(1, 2),
            key_count: Span::exactly(1),
            faulty_ms: Span::new(1_000, 5_000),
            healed_ms: 1_000,
            liveness_bound_ms: 1_000,
            fault_count: Span::new(5, 10),
            fault_classes: FaultClass::ALL,
            link_loss_percent_max: 2,
            think_ms: Span::new(0, 5),
            read_percent: Span::new(50, 50),
        }
    }

    fn topology(swarm: &Swarm) -> Topology {
        Topology {
            servers: (1..=swarm.node_count).map(|i| format!("r{i}")).collect(),
            clients: (1..=swarm.client_count).map(|i| format!("c{i}")).collect(),
        }
    }

    #[test]
    fn drawn_plans_are_valid_sorted_and_reproducible() {
        for seed in 0..100 {
            let plan = PlanFile::draw("test", seed, &bounds(), topology);
            assert_eq!(plan, PlanFile::draw("test", seed, &bounds(), topology));
            assert!((5..=10).contains(&plan.faults.len()));
            assert!(plan.faults.windows(2).all(|pair| pair[0].at_ms <= pair[1].at_ms));
            assert!(plan.faults.iter().all(|fault| fault.at_ms < plan.swarm.faulty_ms));
            plan.validate(&topology(&plan.swarm)).expect("drawn plans are valid");
        }
    }

    /// A drawn fault's kind names the class it was drawn as.
    #[test]
    fn kinds_know_their_class() {
        let all = bounds();
        for class in FaultClass::ALL {
            let bounds = Bounds { fault_classes: std::slice::from_ref(class), ..all.clone() };
            let plan = PlanFile::draw("test", 3, &bounds, topology);
            assert!(plan.faults.iter().all(|fault| fault.kind.class() == *class), "{class:?}");
        }
        let names: std::collections::BTreeSet<_> =
            FaultClass::ALL.iter().map(|class| class.name()).collect();
        assert_eq!(names.len(), FaultClass::ALL.len());
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plan = PlanFile::draw("test", 7, &bounds(), topology);
        assert_eq!(PlanFile::from_json(&plan.to_json()).expect("parses"), plan);
    }

    #[test]
    fn bad_plans_are_typed_errors() {
        assert!(matches!(PlanFile::from_json("{"), Err(PlanError::Parse(_))));
        let mut plan = PlanFile::draw("test", 7, &bounds(), topology);
        plan.format_version = 99;
        let error = PlanFile::from_json(&plan.to_json()).expect_err("wrong version");
        assert_eq!(
            error.to_string(),
            "plan format version 99 is not supported (this build reads 1)"
        );
        plan.format_version = PLAN_FORMAT_VERSION;
        let kind = FaultKind::Crash { node: "c1".to_string() };
        plan.faults = vec![Fault { at_ms: 0, duration_ms: 1, kind }];
        let error = plan.validate(&topology(&plan.swarm)).expect_err("client crash");
        assert_eq!(error.to_string(), "invalid plan: fault 0 targets c1, not a server");
    }
}
