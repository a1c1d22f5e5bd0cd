//! `ghostmesh run`: a parallel seed sweep with a progress bar, a summary table and a JSON report.
//!
//! Workers are plain threads (each run is its own `World`, a value with no global state); they
//! take seeds from a shared counter and send outcomes back to the main thread, which draws the
//! progress bar. The report sorts runs by seed, so its content does not depend on which thread
//! finished first; only wall-clock figures vary between two sweeps of the same seeds.
//!
//! Sharding splits a range among machines with no coordination: seed `start + i` (`i` in
//! `0..seeds`) belongs to shard `i % K` of `K`, shards numbered from 0, so the shards interleave
//! and share the range's slow and fast seeds alike. `merge.rs` puts the shard reports together.

#![allow(clippy::disallowed_methods, reason = "a CLI: wall time and worker threads are its job")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use scenarios::{BuggifyFires, Coverage, Outcome, RunOptions, Scenario, Verdict, run_seed};
use serde::{Deserialize, Serialize};

use crate::coverage::{self, FaultCounts, SituationCounts};

/// One run in the report (the history is left out: replay the seed to see it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// One BUGGIFY site over a sweep: in how many seeds it was reached, active and fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSeeds {
    /// Seeds whose run asked the site at least once.
    pub seeds_reached: u64,
    /// Seeds that made the site active (it may fire).
    pub seeds_active: u64,
    /// Seeds in which it fired at least once.
    pub seeds_fired: u64,
    /// Fires over all seeds.
    pub fire_count: u64,
}

impl SiteSeeds {
    /// Adds one run's view of the site.
    pub fn add_run(&mut self, site: scenarios::SiteFires) {
        self.seeds_reached += 1;
        self.seeds_active += u64::from(site.active);
        self.seeds_fired += u64::from(site.fire_count > 0);
        self.fire_count += site.fire_count;
        assert!(self.seeds_fired <= self.seeds_active && self.seeds_active <= self.seeds_reached);
    }

    /// Adds another part of the range (a shard's counts).
    pub fn add(&mut self, other: SiteSeeds) {
        self.seeds_reached += other.seeds_reached;
        self.seeds_active += other.seeds_active;
        self.seeds_fired += other.seeds_fired;
        self.fire_count += other.fire_count;
    }
}

/// Per BUGGIFY site, by name, the seeds of a sweep that reached it, made it active, fired it.
pub type SiteCounts = BTreeMap<String, SiteSeeds>;

/// Adds one run's sites to a sweep's counts.
fn count_sites(counts: &mut SiteCounts, fires: &BuggifyFires) {
    for (name, site) in fires {
        counts.entry(name.clone()).or_default().add_run(*site);
    }
}

/// Shard `index` of `count` (from 0): the seeds `start + i` of the range with `i % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, from 0 to `count - 1`.
    pub index: u64,
    /// How many shards split the range.
    pub count: u64,
}

impl Shard {
    /// The whole range as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/K` with `I < K`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let usage = || format!("not a shard: {text:?} (want I/K with 0 <= I < K, e.g. 0/4)");
        let (index, count) = text.split_once('/').ok_or_else(usage)?;
        let index: u64 = index.trim().parse().map_err(|_| usage())?;
        let count: u64 = count.trim().parse().map_err(|_| usage())?;
        if count == 0 || index >= count {
            return Err(usage());
        }
        Ok(Shard { index, count })
    }

    /// How many of a range's `seed_count` seeds fall in this shard.
    pub fn size(self, seed_count: u64) -> u64 {
        assert!(self.index < self.count, "shard {}/{}", self.index, self.count);
        let size = seed_count.saturating_sub(self.index).div_ceil(self.count);
        assert!(size <= seed_count);
        size
    }

    /// The offset in the range (seed minus start) of this shard's `position`-th seed.
    pub fn offset(self, position: u64) -> u64 {
        assert!(self.index < self.count);
        position * self.count + self.index
    }

    /// Whether the seed at `offset` in the range belongs to this shard.
    pub fn contains(self, offset: u64) -> bool {
        offset % self.count == self.index
    }
}

/// The shard a report covers, with the size of the whole range it is a part of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// This shard, from 0.
    pub index: u64,
    /// How many shards split the range.
    pub count: u64,
    /// Seeds in the whole range, all shards together.
    pub range_seed_count: u64,
}

/// A whole sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// First seed of the range.
    pub start: u64,
    /// The shard this report covers; `None` for the whole range (an unsharded or merged sweep).
    #[serde(default)]
    pub shard: Option<ShardRecord>,
    /// Seeds run.
    pub seed_count: u64,
    /// Seeds asked for (this shard's part of the range); more than `seed_count` when the time
    /// budget ran out first.
    pub seed_count_requested: u64,
    /// Worker threads (for a merged report, those of every shard together).
    pub jobs: usize,
    /// Wall time of the sweep, in seconds (for a merged report, the longest shard's).
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
    /// Per BUGGIFY site the runs reached, the seeds in which it was active and fired; a site
    /// reached but never fired shows `seeds_fired: 0`.
    #[serde(default)]
    pub buggify: SiteCounts,
    /// Whether the sweep ran with every BUGGIFY site off (`run --no-buggify`).
    #[serde(default)]
    pub no_buggify: bool,
    /// Per fault kind the scenario allows or a plan applied, the seeds that began one and the
    /// faults begun; a kind no seed applied shows `seeds_applied: 0`.
    #[serde(default)]
    pub faults: FaultCounts,
    /// Per fault kind, per state of a node such a fault hit (`up/syncing`, `down`), the seeds
    /// that met that situation and how often.
    #[serde(default)]
    pub situations: SituationCounts,
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

fn record(scenario: &dyn Scenario, outcome: &Outcome, no_buggify: bool) -> RunRecord {
    let failed = outcome.verdict.is_failure();
    let flag = if no_buggify { " --no-buggify" } else { "" };
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
        replay: failed
            .then(|| format!("{}{flag}", scenarios::replay_command(scenario, outcome.plan.seed))),
    }
}

/// What to sweep.
#[derive(Clone, Copy, Debug)]
pub struct SweepOptions {
    /// First seed of the range.
    pub start: u64,
    /// Seeds in the range.
    pub count: u64,
    /// Which part of the range to run.
    pub shard: Shard,
    /// Worker threads.
    pub jobs: usize,
    /// No new seed starts after this much wall time.
    pub budget: Option<Duration>,
    /// Draw a progress bar.
    pub progress: bool,
    /// Turn every BUGGIFY site off.
    pub no_buggify: bool,
}

/// Runs the seeds of `options.shard` in `start..start + count` of `scenario` on `jobs` threads,
/// within the budget.
pub fn sweep(scenario: &dyn Scenario, options: SweepOptions) -> SweepReport {
    let SweepOptions { start, count, shard, jobs, budget, progress, no_buggify } = options;
    let run_options = RunOptions { no_buggify, ..RunOptions::default() };
    let shard_count = shard.size(count);
    let begun = std::time::Instant::now();
    let bar = if progress { ProgressBar::new(shard_count) } else { ProgressBar::hidden() };
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} seeds, {msg} (eta {eta})",
    )
    .expect("valid template");
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(scenario.name().to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let next = AtomicU64::new(0);
    let (sender, receiver) = mpsc::channel::<Finished>();
    let mut runs = Vec::new();
    let mut tally = Tally {
        sites: SiteCounts::new(),
        faults: coverage::allowed(scenario.bounds().fault_classes),
        situations: SituationCounts::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let sender = sender.clone();
            let (next, run_options) = (&next, &run_options);
            scope.spawn(move || {
                loop {
                    let position = next.fetch_add(1, Ordering::Relaxed);
                    let over_budget = budget.is_some_and(|budget| begun.elapsed() >= budget);
                    if position >= shard_count || over_budget {
                        break;
                    }
                    let seed = start + shard.offset(position);
                    let outcome = run_seed(scenario, seed, run_options);
                    let run = record(scenario, &outcome, no_buggify);
                    let sent = (run, outcome.buggify, outcome.coverage);
                    if sender.send(sent).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        collect(&bar, receiver, &mut runs, &mut tally);
    });
    bar.finish_and_clear();
    let shard = (shard != Shard::WHOLE).then_some(ShardRecord {
        index: shard.index,
        count: shard.count,
        range_seed_count: count,
    });
    let mut report = summarize(scenario.name(), start, shard, runs, jobs, begun.elapsed());
    report.seed_count_requested = shard_count;
    report.buggify = tally.sites;
    report.no_buggify = no_buggify;
    report.faults = tally.faults;
    report.situations = tally.situations;
    report
}

/// What a worker sends back per run: its record, the sites it reached, what it explored.
type Finished = (RunRecord, BuggifyFires, Coverage);

/// The per-seed counts of a sweep so far.
struct Tally {
    sites: SiteCounts,
    faults: FaultCounts,
    situations: SituationCounts,
}

/// Receives the workers' records, drawing progress and printing failures as they come.
fn collect(
    bar: &ProgressBar,
    receiver: mpsc::Receiver<Finished>,
    runs: &mut Vec<RunRecord>,
    tally: &mut Tally,
) {
    let mut failed = 0;
    for (run, fires, explored) in receiver {
        count_sites(&mut tally.sites, &fires);
        coverage::add_run(&mut tally.faults, &mut tally.situations, &explored);
        failed += u64::from(run.verdict.is_failure());
        bar.set_message(format!("{failed} failed"));
        if run.verdict.is_failure() {
            let headline = run.violation.as_deref().unwrap_or("").lines().next().unwrap_or("");
            bar.println(format!("seed {:#x}: {} {headline}", run.seed, run.verdict.label()));
        }
        bar.inc(1);
        runs.push(run);
    }
}

/// A report over `runs` (in any order): sorted by seed, counted per verdict, simulated time
/// summed in seed order (so the same runs always give the same figure), rates over `wall`.
/// `seed_count_requested` is the number of runs; the caller corrects it if more were asked for.
pub fn summarize(
    scenario: &str,
    start: u64,
    shard: Option<ShardRecord>,
    mut runs: Vec<RunRecord>,
    jobs: usize,
    wall: Duration,
) -> SweepReport {
    runs.sort_by_key(|run| run.seed);
    let counts = Verdict::ALL
        .iter()
        .map(|verdict| (*verdict, runs.iter().filter(|run| run.verdict == *verdict).count() as u64))
        .collect();
    let wall_secs = wall.as_secs_f64().max(1e-9);
    let simulated_secs: f64 = runs.iter().map(|run| run.simulated_nanos as f64 / 1e9).sum();
    SweepReport {
        scenario: scenario.to_string(),
        start,
        shard,
        seed_count: runs.len() as u64,
        seed_count_requested: runs.len() as u64,
        jobs,
        wall_secs,
        simulated_secs,
        seeds_per_minute: runs.len() as f64 * 60.0 / wall_secs,
        sim_secs_per_wall_sec: simulated_secs / wall_secs,
        counts,
        runs,
        buggify: SiteCounts::new(),
        no_buggify: false,
        faults: FaultCounts::new(),
        situations: SituationCounts::new(),
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
    let range = report.shard.map_or(report.seed_count, |shard| shard.range_seed_count);
    let end = report.start + range.saturating_sub(1);
    let part = match report.shard {
        Some(shard) => format!("shard {}/{} of ", shard.index, shard.count),
        None => String::new(),
    };
    let off = if report.no_buggify { ", BUGGIFY off" } else { "" };
    let mut text = format!(
        "{}: {} seeds ({part}{:#x}..={end:#x}) on {} jobs{off}\n",
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
    text.push_str(&render_sites(&report.buggify, report.seed_count));
    text.push_str(&coverage::render(&report.faults, &report.situations, report.seed_count));
    for run in report.failures() {
        let violation = run.violation.as_deref().unwrap_or("").lines().next().unwrap_or("");
        let headline = format!("seed {:#x}: {}: {violation}", run.seed, run.verdict.label());
        text.push_str(&format!("\n{}\n", paint(headline, run.verdict)));
        text.push_str(&format!("  {}\n", run.replay.as_deref().unwrap_or("")));
    }
    text
}

/// Two lines on the BUGGIFY sites: how many the runs reached and fired, and which never fired.
fn render_sites(sites: &SiteCounts, seed_count: u64) -> String {
    if sites.is_empty() {
        return String::new();
    }
    let fired = sites.values().filter(|site| site.seeds_fired > 0).count();
    let mut text = format!(
        "  {:<18} {:>6} reached, {fired} fired (per-site seed counts in the JSON report)\n",
        "buggify sites",
        sites.len()
    );
    let silent: Vec<&str> = sites
        .iter()
        .filter(|(_, site)| site.seeds_fired == 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if !silent.is_empty() {
        let names = silent.join(", ");
        text.push_str(&format!("  never fired in {seed_count} seeds: {names}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[track_caller]
    fn check(text: &str, expected: Option<(u64, u64)>) {
        let parsed = Shard::parse(text).ok().map(|shard| (shard.index, shard.count));
        assert_eq!(parsed, expected, "{text:?}");
    }

    #[test]
    fn parse_shards() {
        check("0/1", Some((0, 1)));
        check("2/3", Some((2, 3)));
        check(" 4 / 5 ", Some((4, 5)));
        check("3/3", None);
        check("0/0", None);
        check("1", None);
        check("-1/3", None);
        check("a/b", None);
    }

    /// Every seed of a range lies in exactly one shard, and the shard sizes add up to the range.
    #[test]
    fn shards_cover_the_range_once() {
        for range in [0_u64, 1, 2, 7, 12, 100] {
            for count in 1..=13 {
                let mut owners = vec![0_u32; range as usize];
                let mut total = 0;
                for index in 0..count {
                    let shard = Shard { index, count };
                    let size = shard.size(range);
                    total += size;
                    for position in 0..size {
                        let offset = shard.offset(position);
                        assert!(offset < range && shard.contains(offset));
                        owners[offset as usize] += 1;
                    }
                }
                assert_eq!(total, range);
                assert!(owners.iter().all(|owners| *owners == 1), "{range} seeds, {count} shards");
            }
        }
    }
}
