//! Shrinking a failing plan: delta debugging (Zeller's ddmin) over its faults, then a pass that
//! tries every single fault again, then shorter workloads and fewer clients.
//!
//! A candidate "still fails" when it ends with the same verdict as the original run and breaks
//! the same invariant on the same key or node (`Violation::same_invariant`: the same typed kind
//! and subject): a safety violation stays a linearizability violation on key "k3", a panic stays
//! a panic on node r2; a different failure is a different bug. The seed never changes: the
//! world draws the same randomness, only the nemesis does less. The result is 1-minimal:
//! removing any one remaining fault makes the failure go away.

use invariants::Violation;

use crate::outcome::{Outcome, Verdict};
use crate::plan::PlanFile;
use crate::runner::{RunOptions, Scenario, run_plan};

/// Runs a shrink may spend before it stops with the smallest plan found so far.
pub const SHRINK_RUNS_MAX: u32 = 500;

/// The result of a shrink.
#[derive(Clone, Debug)]
pub struct ShrinkReport {
    /// The plan that was shrunk.
    pub original: PlanFile,
    /// The smallest plan that still fails the same way.
    pub minimal: PlanFile,
    /// The failure kept throughout.
    pub verdict: Verdict,
    /// The violation kept throughout (its kind and subject; messages may differ).
    pub violation: Option<Violation>,
    /// Runs spent.
    pub run_count: u32,
    /// Whether `SHRINK_RUNS_MAX` stopped the search early.
    pub exhausted: bool,
    /// The outcome of the minimal plan.
    pub outcome: Outcome,
}

/// Errors of a shrink.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShrinkError {
    /// The plan passes: there is no failure to keep.
    Passes,
}

impl std::fmt::Display for ShrinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShrinkError::Passes => f.write_str("the plan passes; there is nothing to shrink"),
        }
    }
}

impl std::error::Error for ShrinkError {}

struct Shrinker<'a> {
    scenario: &'a dyn Scenario,
    verdict: Verdict,
    violation: Option<Violation>,
    best: PlanFile,
    best_outcome: Outcome,
    run_count: u32,
    on_step: &'a mut dyn FnMut(&PlanFile, u32),
}

impl Shrinker<'_> {
    /// Whether `candidate` still fails the same way; keeps it as the best if so.
    fn try_plan(&mut self, candidate: PlanFile) -> bool {
        if self.run_count >= SHRINK_RUNS_MAX {
            return false;
        }
        if candidate.validate(&self.scenario.topology(&candidate.swarm)).is_err() {
            return false;
        }
        self.run_count += 1;
        let (outcome, _) = run_plan(self.scenario, &candidate, &RunOptions::default());
        let fails = outcome.verdict == self.verdict && self.same_invariant(&outcome);
        if fails {
            self.best = candidate;
            self.best_outcome = outcome;
            (self.on_step)(&self.best, self.run_count);
        }
        fails
    }

    /// Whether `outcome` breaks the invariant the original run broke, on the same subject.
    fn same_invariant(&self, outcome: &Outcome) -> bool {
        match (&self.violation, &outcome.violation) {
            (Some(kept), Some(seen)) => kept.same_invariant(seen),
            (None, None) => true,
            _ => false,
        }
    }

    fn with_faults(&self, keep: impl Fn(usize) -> bool) -> PlanFile {
        let mut plan = self.best.clone();
        plan.faults =
            plan.faults.into_iter().enumerate().filter(|(i, _)| keep(*i)).map(|f| f.1).collect();
        plan
    }

    fn ddmin(&mut self) {
        let mut granularity = 2usize;
        while self.best.faults.len() >= 2 && self.run_count < SHRINK_RUNS_MAX {
            let length = self.best.faults.len();
            let chunk = length.div_ceil(granularity);
            let mut reduced = false;
            for start in (0..length).step_by(chunk) {
                let end = (start + chunk).min(length);
                if self.try_plan(self.with_faults(|i| (start..end).contains(&i))) {
                    granularity = 2;
                    reduced = true;
                    break;
                }
                if granularity > 2
                    && self.try_plan(self.with_faults(|i| !(start..end).contains(&i)))
                {
                    granularity = (granularity - 1).max(2);
                    reduced = true;
                    break;
                }
            }
            if !reduced {
                if granularity >= length {
                    break;
                }
                granularity = (granularity * 2).min(length);
            }
        }
    }

    fn one_by_one(&mut self) {
        let mut index = 0;
        while index < self.best.faults.len() && self.run_count < SHRINK_RUNS_MAX {
            if !self.try_plan(self.with_faults(|i| i != index)) {
                index += 1;
            }
        }
    }

    fn shorten(&mut self) {
        loop {
            let last_end =
                self.best.faults.iter().map(|f| f.at_ms + f.duration_ms).max().unwrap_or(0);
            let faulty_ms = (self.best.swarm.faulty_ms / 2).max(last_end).max(1);
            if faulty_ms >= self.best.swarm.faulty_ms {
                break;
            }
            let mut candidate = self.best.clone();
            candidate.swarm.faulty_ms = faulty_ms;
            if !self.try_plan(candidate) {
                break;
            }
        }
        while self.best.swarm.client_count > 1 {
            let mut candidate = self.best.clone();
            candidate.swarm.client_count -= 1;
            if !self.try_plan(candidate) {
                break;
            }
        }
    }
}

/// Shrinks `plan`, which must fail; `on_step` hears of every smaller failing plan found.
pub fn shrink(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    on_step: &mut dyn FnMut(&PlanFile, u32),
) -> Result<ShrinkReport, ShrinkError> {
    let (outcome, _) = run_plan(scenario, plan, &RunOptions::default());
    if !outcome.verdict.is_failure() {
        return Err(ShrinkError::Passes);
    }
    let mut shrinker = Shrinker {
        scenario,
        verdict: outcome.verdict,
        violation: outcome.violation.clone(),
        best: plan.clone(),
        best_outcome: outcome,
        run_count: 1,
        on_step,
    };
    shrinker.ddmin();
    shrinker.one_by_one();
    shrinker.shorten();
    Ok(ShrinkReport {
        original: plan.clone(),
        minimal: shrinker.best,
        verdict: shrinker.verdict,
        violation: shrinker.violation,
        run_count: shrinker.run_count,
        exhausted: shrinker.run_count >= SHRINK_RUNS_MAX,
        outcome: shrinker.best_outcome,
    })
}
