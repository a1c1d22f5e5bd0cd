//! What a run ends with: a verdict, the violated invariant if any, the trace fingerprint, the
//! history and the metrics.
//!
//! Verdicts are distinct, as TigerBeetle's VOPR keeps them distinct, because they mean different
//! things to the person reading them: a safety violation is a correctness bug seen during the
//! faulty phase or after it, a liveness failure is a system that did not recover after the heal,
//! a panic is a failed assertion (or crash) inside the simulated system, and no-progress is a
//! deadlock or a runaway run. The CLI exits with a distinct code for each.

use std::collections::BTreeMap;

use invariants::Violation;
use serde::{Deserialize, Serialize};

use crate::coverage::Coverage;
use crate::plan::PlanFile;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every invariant held.
    Pass,
    /// A safety invariant was violated.
    SafetyViolation,
    /// The system did not make progress within the bound after the heal.
    LivenessFailure,
    /// A task of the simulated system panicked.
    Panic,
    /// The run deadlocked or exceeded its event or time budget.
    NoProgress,
}

impl Verdict {
    /// Every verdict, in report order.
    pub const ALL: [Verdict; 5] = [
        Verdict::Pass,
        Verdict::SafetyViolation,
        Verdict::LivenessFailure,
        Verdict::Panic,
        Verdict::NoProgress,
    ];

    /// The `ghostmesh` exit code for a run (or the worst run of a sweep) with this verdict.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::SafetyViolation => 3,
            Verdict::LivenessFailure => 4,
            Verdict::Panic => 5,
            Verdict::NoProgress => 6,
        }
    }

    /// A short human name.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::SafetyViolation => "safety violation",
            Verdict::LivenessFailure => "liveness failure",
            Verdict::Panic => "panic",
            Verdict::NoProgress => "no progress",
        }
    }

    /// Whether the run failed.
    pub fn is_failure(self) -> bool {
        self != Verdict::Pass
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Events the simulator processed (timers, packets, disk completions).
    pub event_count: u64,
    /// Task polls.
    pub poll_count: u64,
    /// Simulated time the run covered, in nanoseconds.
    pub simulated_nanos: u64,
    /// Wall-clock time the run took, in nanoseconds (the only number that varies between runs).
    pub wall_nanos: u64,
    /// Operations the workload issued.
    pub op_count: u64,
    /// Operations acknowledged as done.
    pub op_ok_count: u64,
    /// Faults the nemesis began.
    pub fault_count: u64,
    /// Node crashes.
    pub crash_count: u64,
    /// Datagrams sent.
    pub datagram_sent_count: u64,
}

/// One BUGGIFY site in one run: whether the seed made it active, and how often it fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteFires {
    /// The seed made the site active (it may fire) in this run.
    pub active: bool,
    /// How many times it fired.
    pub fire_count: u64,
}

/// The BUGGIFY sites a run reached, by name (sites no code reached are absent).
pub type BuggifyFires = BTreeMap<String, SiteFires>;

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// The violated invariant (or the panic or deadlock), if any.
    pub violation: Option<Violation>,
    /// Running hash of every trace event: equal hashes mean identical runs.
    pub trace_hash: u64,
    /// Trace events.
    pub trace_count: u64,
    /// Counters.
    pub metrics: Metrics,
    /// The exact plan that ran (scenario, seed, swarm, faults).
    pub plan: PlanFile,
    /// The recorded history, as the scenario renders it.
    pub history: serde_json::Value,
    /// The BUGGIFY sites the run reached, with their fire counts.
    #[serde(default)]
    pub buggify: BuggifyFires,
    /// The kinds of fault the nemesis began, and the situations of the nodes they hit.
    #[serde(default)]
    pub coverage: Coverage,
}

impl Outcome {
    /// One line: verdict, seed and the violation's first line.
    pub fn headline(&self) -> String {
        let mut line =
            format!("{} seed {:#x}: {}", self.plan.scenario, self.plan.seed, self.verdict.label());
        if let Some(violation) = &self.violation {
            let first = violation.to_string();
            line.push_str(": ");
            line.push_str(first.lines().next().unwrap_or_default());
        }
        line
    }

    /// A stable, multi-line summary without wall time (for snapshots and logs).
    pub fn summary(&self) -> String {
        let metrics = &self.metrics;
        format!(
            "scenario {}\nseed {:#x}\nverdict {}\ntrace_hash {:#018x}\ntrace_count {}\n\
             simulated {}.{:03}s\nevents {}\nops {} ({} ok)\nfaults {}\ncrashes {}\n",
            self.plan.scenario,
            self.plan.seed,
            self.verdict.label(),
            self.trace_hash,
            self.trace_count,
            metrics.simulated_nanos / 1_000_000_000,
            metrics.simulated_nanos / 1_000_000 % 1_000,
            metrics.event_count,
            metrics.op_count,
            metrics.op_ok_count,
            metrics.fault_count,
            metrics.crash_count,
        )
    }

    /// The BUGGIFY sites the run reached, one line each: how often each active site fired, or
    /// that the seed left it inactive. Sorted by name, so the same run prints the same lines.
    pub fn buggify_report(&self) -> String {
        let fired = self.buggify.values().filter(|site| site.fire_count > 0).count();
        let active = self.buggify.values().filter(|site| site.active).count();
        let mut text = format!(
            "buggify: {} sites reached, {active} active, {fired} fired\n",
            self.buggify.len()
        );
        let width = self.buggify.keys().map(String::len).max().unwrap_or(0);
        for (name, site) in &self.buggify {
            let what = match (site.active, site.fire_count) {
                (false, _) => "inactive".to_string(),
                (true, 0) => "active, never fired".to_string(),
                (true, 1) => "fired 1 time".to_string(),
                (true, count) => format!("fired {count} times"),
            };
            text.push_str(&format!("  {name:<width$}  {what}\n"));
        }
        text
    }

    /// The faults the run began and the situations they hit: one line per fault kind, with
    /// the faults of that kind begun and, per state of a node such a fault hit, how often.
    pub fn coverage_report(&self) -> String {
        let coverage = &self.coverage;
        let mut text = format!(
            "faults: {} begun, {} situations (fault kind (faults): node state hits)\n",
            coverage.fault_count(),
            coverage.situation_count()
        );
        for (kind, states) in &coverage.situations {
            let count = coverage.faults.get(kind).copied().unwrap_or(0);
            let hits: Vec<String> =
                states.iter().map(|(state, hits)| format!("{state} {hits}")).collect();
            text.push_str(&format!("  {kind} ({count}): {}\n", hits.join(", ")));
        }
        text
    }
}
