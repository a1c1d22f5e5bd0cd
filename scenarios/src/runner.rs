//! Runs one scenario for one seed: the two phases, the checks, the outcome.
//!
//! A run is a pure function of its plan (scenario, seed, swarm, faults): the world is seeded
//! with the seed, the scenario builds its nodes and workload from the swarm, the nemesis plays
//! the faults during the faulty phase, then everything heals and the healed phase runs. Safety
//! invariants are checked over the whole history; liveness is checked over the healed phase.
//! Only the wall time in the metrics differs between two runs of the same plan.

use std::time::Duration;

use invariants::{InvariantKind, Subject, Violation};
use sim::world::{DiskConfig, SimConfig, SimError, SimErrorKind, TraceSink, World};

use crate::coverage::Coverage;
use crate::nemesis::{Nemesis, at};
use crate::outcome::{BuggifyFires, Metrics, Outcome, SiteFires, Verdict};
use crate::plan::{PlanFile, Topology};
use crate::swarm::{Bounds, Swarm};

/// A scenario: topology, workload and checks, with bounds for its swarm and fault plan.
pub trait Scenario: Send + Sync {
    /// Its name on the command line (`kebab-case`).
    fn name(&self) -> &'static str;
    /// One sentence: what runs.
    fn summary(&self) -> &'static str;
    /// The invariants it checks.
    fn checks(&self) -> &'static [&'static str];
    /// The cargo feature the scenario needs, if any (planted-bug scenarios do).
    fn feature(&self) -> Option<&'static str> {
        None
    }
    /// Too slow for every `cargo test` in a debug build: only sweeps and `SIM_SEED` run it.
    fn sweep_only(&self) -> bool {
        false
    }
    /// What a seed may choose.
    fn bounds(&self) -> Bounds;
    /// Adjusts the world's configuration (clock skew, budgets) before the world is built.
    fn configure(&self, _config: &mut SimConfig, _swarm: &Swarm) {}
    /// The run's nodes, for a swarm.
    fn topology(&self, swarm: &Swarm) -> Topology;
    /// Adds the nodes to `world` and starts the workload.
    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload>;
}

/// The live part of one run: gathers the history and judges it.
pub trait Workload {
    /// Runs after the healed phase (final reads, for example); the world is healed.
    fn finish(&mut self, world: &World) -> Result<(), SimError>;
    /// Safety invariants over the whole history.
    fn check_safety(&self) -> Result<(), Violation>;
    /// Liveness: progress within `bound_nanos` after `healed_nanos`.
    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation>;
    /// The history, for reports and replays.
    fn history(&self) -> serde_json::Value;
    /// Operations issued and acknowledged.
    fn op_counts(&self) -> (u64, u64);
    /// What node `node`'s system does now, as a short label (`syncing`, `flushing`), for the
    /// coverage of a run; `None` (the default) leaves only what the world knows of the node.
    /// Called as a fault begins; it must draw no randomness and touch no part of the world.
    fn node_state(&self, _node: &str) -> Option<&'static str> {
        None
    }
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep every trace record (for `check-determinism` and trace files).
    pub record_trace: bool,
    /// Turn every BUGGIFY site off (`ghostmesh run --no-buggify`): to measure what the sites
    /// add, a sweep with and without them. A seed found this way replays only this way.
    pub no_buggify: bool,
}

/// The plan a seed gives `scenario`.
pub fn draw_plan(scenario: &dyn Scenario, seed: u64) -> PlanFile {
    PlanFile::draw(scenario.name(), seed, &scenario.bounds(), |swarm| scenario.topology(swarm))
}

/// Runs `seed` of `scenario` with the plan the seed gives.
pub fn run_seed(scenario: &dyn Scenario, seed: u64, options: &RunOptions) -> Outcome {
    run_plan(scenario, &draw_plan(scenario, seed), options).0
}

/// Runs `plan`; also returns the world, for trace records and digests.
pub fn run_plan(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    options: &RunOptions,
) -> (Outcome, World) {
    run_plan_with_sink(scenario, plan, options, None)
}

/// Runs `plan` as `run_plan` does, sending every trace record to `sink` as it happens (a trace
/// file written as it goes, a hash log), so that no caller needs to keep the records.
pub fn run_plan_with_sink(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    options: &RunOptions,
    sink: Option<TraceSink>,
) -> (Outcome, World) {
    assert_eq!(plan.scenario, scenario.name(), "plan belongs to another scenario");
    let wall_start = wall_now();
    let mut config = SimConfig::new(plan.seed);
    config.net.link = plan.swarm.link.clone();
    config.record_trace = options.record_trace;
    scenario.configure(&mut config, &plan.swarm);
    if options.no_buggify {
        config.buggify.enabled = false;
    }
    let base_disk = config.disk.clone();
    let world = World::new(config);
    if let Some(sink) = sink {
        assert_eq!(world.trace_count(), 0, "the sink sees the whole trace");
        world.set_trace_sink(sink);
    }
    let _span = tracing::info_span!("run", scenario = scenario.name(), seed = plan.seed).entered();
    let mut workload = scenario.start(&world, &plan.swarm);
    let (failure, coverage) = run_phases(&world, plan, base_disk, workload.as_mut());
    let fault_count = coverage.fault_count();
    let (verdict, violation) = match failure {
        Some(error) => sim_failure(&error),
        None => judge(workload.as_ref(), &plan.swarm),
    };
    let stats = world.stats();
    let (op_count, op_ok_count) = workload.op_counts();
    let metrics = Metrics {
        event_count: stats.event_count,
        poll_count: stats.poll_count,
        simulated_nanos: world.now().as_nanos(),
        wall_nanos: wall_elapsed_nanos(wall_start),
        op_count,
        op_ok_count,
        fault_count,
        crash_count: stats.crash_count,
        datagram_sent_count: stats.datagram_sent_count,
    };
    let outcome = Outcome {
        verdict,
        violation,
        trace_hash: world.trace_hash(),
        trace_count: world.trace_count(),
        metrics,
        plan: plan.clone(),
        history: workload.history(),
        buggify: buggify_fires(&world),
        coverage,
    };
    (outcome, world)
}

/// The sites the world's code asked, by name, with their activation and fire counts.
fn buggify_fires(world: &World) -> BuggifyFires {
    let sites = world.buggify_sites();
    let fires: BuggifyFires = sites
        .iter()
        .map(|(name, site)| {
            let active = site.fire_probability.is_some();
            (name.to_string(), SiteFires { active, fire_count: site.fire_count })
        })
        .collect();
    assert_eq!(fires.len(), sites.len(), "site names are unique");
    fires
}

fn run_phases(
    world: &World,
    plan: &PlanFile,
    base_disk: DiskConfig,
    workload: &mut dyn Workload,
) -> (Option<SimError>, Coverage) {
    let mut nemesis = Nemesis::new(world, &plan.faults, plan.swarm.link.clone(), base_disk);
    let probe = |node: &str| workload.node_state(node);
    let faulty = nemesis.run_faulty_phase(plan.swarm.faulty_ms, &probe);
    nemesis.heal();
    let coverage = nemesis.coverage().clone();
    assert_eq!(coverage.fault_count(), nemesis.applied_count());
    let result = faulty
        .and_then(|()| world.run_until(at(plan.swarm.total_ms())))
        .and_then(|()| workload.finish(world));
    (result.err(), coverage)
}

fn judge(workload: &dyn Workload, swarm: &Swarm) -> (Verdict, Option<Violation>) {
    if let Err(violation) = workload.check_safety() {
        return (Verdict::SafetyViolation, Some(violation));
    }
    let healed_nanos = at(swarm.faulty_ms).as_nanos();
    let bound_nanos = Duration::from_millis(swarm.liveness_bound_ms).as_nanos() as u64;
    if let Err(violation) = workload.check_liveness(healed_nanos, bound_nanos) {
        return (Verdict::LivenessFailure, Some(violation));
    }
    (Verdict::Pass, None)
}

fn sim_failure(error: &SimError) -> (Verdict, Option<Violation>) {
    let verdict = match error.kind {
        SimErrorKind::TaskPanicked { .. } => Verdict::Panic,
        _ => Verdict::NoProgress,
    };
    let kind =
        if verdict == Verdict::Panic { InvariantKind::Panic } else { InvariantKind::Progress };
    // The outcome's headline already names the seed; the violation says when and what.
    let message = format!("at {}: {}", error.time, error.kind);
    let violation = Violation::new(kind, message);
    // A panic concerns the node whose task panicked: shrinking keeps it on that node.
    let violation = match &error.kind {
        SimErrorKind::TaskPanicked { node, .. } => {
            violation.concerning(Subject::Node(node.clone()))
        }
        _ => violation,
    };
    (verdict, Some(violation))
}

// The wall time of a run is a metric for people; it never reaches the simulation.
#[allow(clippy::disallowed_methods, reason = "wall-clock metric outside the simulation")]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn wall_elapsed_nanos(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
