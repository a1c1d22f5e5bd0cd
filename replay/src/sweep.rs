//! `ghostmesh run`: a parallel seed sweep with a progress bar, a summary table and a JSON report.
//!
//! Workers are plain threads (each run is its own `World`, a value with no global state); they
//! take seeds from a shared counter and send outcomes back to the main thread, which draws the
//! progress bar. The report sorts runs by seed, so its content does not depend on which thread
//! finished first; only wall-clock figures vary between two sweeps of the same seeds.

#![allow(clippy::disallowed_methods, reason = "a CLI: wall time and worker threads are its job")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use scenarios::{Outcome, RunOptions, Scenario, Verdict, run_seed};
use serde::Serialize;

/// One run in the report (the history is left out: replay the seed to see it).
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// The seed.
    pub seed: u64,
    /// How it ended.
    pub verdict: Verdict,
    /// The violation, if any.
    pub violation: Option<String>,
    /// Determinism fingerprint.
    pub trace_hash: String,
    /// Simulator events.
    pub event_count: u64,
    /// Simulated nanoseconds.
    pub simulated_nanos: u64,
    /// Wall nanoseconds.
    pub wall_nanos: u64,
    /// Operations issued and acknowledged.
    pub op_count: u64,
    /// Faults begun.
    pub fault_count: u64,
    /// The paste-able replay command (failures only).
    pub replay: Option<String>,
}

/// A whole sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// First seed.
    pub start: u64,
    /// Seeds run.
    pub seed_count: u64,
    /// Seeds asked for; more than `seed_count` when the time budget ran out first.
    pub seed_count_requested: u64,
    /// Worker threads.
    pub jobs: usize,
    /// Wall time of the sweep, in seconds.
    pub wall_secs: f64,
    /// Simulated time of all runs, in seconds.
    pub simulated_secs: f64,
    /// Seeds per minute of wall time.
    pub seeds_per_minute: f64,
    /// Simulated seconds per wall second.
    pub sim_secs_per_wall_sec: f64,
    /// Runs per verdict, in `Verdict::ALL` order.
    pub counts: Vec<(Verdict, u64)>,
    /// Every run, by seed.
    pub runs: Vec<RunRecord>,
}

impl SweepReport {
    /// The failed runs.
    pub fn failures(&self) -> impl Iterator<Item = &RunRecord> {
        self.runs.iter().filter(|run| run.verdict.is_failure())
    }

    /// The exit code: the most important failure's (safety first), or 0.
    pub fn exit_code(&self) -> u8 {
        self.failures().map(|run| run.verdict.exit_code()).min().unwrap_or(0)
    }
}

fn record(scenario: &dyn Scenario, outcome: &Outcome) -> RunRecord {
    let failed = outcome.verdict.is_failure();
    RunRecord {
        seed: outcome.plan.seed,
        verdict: outcome.verdict,
        violation: outcome.violation.as_ref().map(ToString::to_string),
        trace_hash: format!("{:#018x}", outcome.trace_hash),
        event_count: outcome.metrics.event_count,
        simulated_nanos: outcome.metrics.simulated_nanos,
        wall_nanos: outcome.metrics.wall_nanos,
        op_count: outcome.metrics.op_count,
        fault_count: outcome.metrics.fault_count,
        replay: failed.then(|| scenarios::replay_command(scenario, outcome.plan.seed)),
    }
}

/// What to sweep.
#[derive(Clone, Copy, Debug)]
pub struct SweepOptions {
    /// First seed.
    pub start: u64,
    /// Seeds to run.
    pub count: u64,
    /// Worker threads.
    pub jobs: usize,
    /// No new seed starts after this much wall time.
    pub budget: Option<Duration>,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Runs seeds `start..start + count` of `scenario` on `jobs` threads, within the budget.
pub fn sweep(scenario: &dyn Scenario, options: SweepOptions) -> SweepReport {
    let SweepOptions { start, count, jobs, budget, progress } = options;
    let begun = std::time::Instant::now();
    let bar = if progress { ProgressBar::new(count) } else { ProgressBar::hidden() };
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} seeds, {msg} (eta {eta})",
    )
    .expect("valid template");
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(scenario.name().to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let next = AtomicU64::new(0);
    let (sender, receiver) = mpsc::channel::<RunRecord>();
    let mut runs = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let over_budget = budget.is_some_and(|budget| begun.elapsed() >= budget);
                    if index >= count || over_budget {
                        break;
                    }
                    let outcome = run_seed(scenario, start + index, &RunOptions::default());
                    if sender.send(record(scenario, &outcome)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut failed = 0;
        for run in receiver {
            failed += u64::from(run.verdict.is_failure());
            bar.set_message(format!("{failed} failed"));
            if run.verdict.is_failure() {
                let headline = run.violation.as_deref().unwrap_or("").lines().next().unwrap_or("");
                bar.println(format!("seed {:#x}: {} {headline}", run.seed, run.verdict.label()));
            }
            bar.inc(1);
            runs.push(run);
        }
    });
    bar.finish_and_clear();
    runs.sort_by_key(|run| run.seed);
    let counts = Verdict::ALL
        .iter()
        .map(|verdict| (*verdict, runs.iter().filter(|run| run.verdict == *verdict).count() as u64))
        .collect();
    let wall_secs = begun.elapsed().as_secs_f64().max(1e-9);
    let simulated_secs: f64 = runs.iter().map(|run| run.simulated_nanos as f64 / 1e9).sum();
    SweepReport {
        scenario: scenario.name().to_string(),
        start,
        seed_count: runs.len() as u64,
        seed_count_requested: count,
        jobs,
        wall_secs,
        simulated_secs,
        seeds_per_minute: runs.len() as f64 * 60.0 / wall_secs,
        sim_secs_per_wall_sec: simulated_secs / wall_secs,
        counts,
        runs,
    }
}

/// The summary table printed after a sweep.
pub fn render(report: &SweepReport, color: bool) -> String {
    let paint = |text: String, verdict: Verdict| -> String {
        if !color {
            return text;
        }
        let styled = console::style(text).force_styling(true);
        match verdict {
            Verdict::Pass => styled.green().to_string(),
            _ => styled.red().bold().to_string(),
        }
    };
    let end = report.start + report.seed_count.saturating_sub(1);
    let mut text = format!(
        "{}: {} seeds ({:#x}..={end:#x}) on {} jobs\n",
        report.scenario, report.seed_count, report.start, report.jobs
    );
    if report.seed_count < report.seed_count_requested {
        let line = format!(
            "  time budget spent after {} of {} seeds\n",
            report.seed_count, report.seed_count_requested
        );
        text.push_str(&line);
    }
    for (verdict, count) in &report.counts {
        if *count > 0 || *verdict == Verdict::Pass {
            let line = format!("  {:<18} {count:>6}", verdict.label());
            text.push_str(&paint(line, *verdict));
            text.push('\n');
        }
    }
    text.push_str(&format!(
        "  {:<18} {:>6.1}\n  {:<18} {:>6.0}\n",
        "seeds/minute", report.seeds_per_minute, "sim-s/wall-s", report.sim_secs_per_wall_sec
    ));
    for run in report.failures() {
        let violation = run.violation.as_deref().unwrap_or("").lines().next().unwrap_or("");
        let headline = format!("seed {:#x}: {}: {violation}", run.seed, run.verdict.label());
        text.push_str(&format!("\n{}\n", paint(headline, run.verdict)));
        text.push_str(&format!("  {}\n", run.replay.as_deref().unwrap_or("")));
    }
    text
}
