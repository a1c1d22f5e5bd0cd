//! `ghostmesh merge`: the JSON reports of a sharded sweep combined into the whole range's report.
//!
//! Shards run on machines that never talk to each other (`run --shard I/K`), so the merge is
//! where a missing, repeated or mismatched shard shows: it refuses to merge unless the reports
//! of a scenario are exactly shards 0..K of one range (same start, same K, same range size) and
//! every run's seed belongs to the shard that reported it. The merged report is the report the
//! unsharded sweep would have written, timing aside: runs sorted by seed, counts per verdict and
//! simulated time recomputed from the runs in seed order, requested seeds, per-site BUGGIFY
//! counts and the coverage counts (fault kinds, situations) added up. Only the wall-clock
//! figures differ: the merged wall time is the longest shard's (the shards ran side by side)
//! and the jobs are every shard's together.

#![allow(clippy::disallowed_methods, reason = "a CLI: it reads the report files it is given")]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::coverage::{self, FaultCounts, SituationCounts};
use crate::sweep::{Shard, SiteCounts, SweepReport, render, summarize};

/// Reads the reports, merges them per scenario, prints the summaries and returns the exit code.
pub fn run(paths: &[impl AsRef<Path>], json: Option<&Path>) -> anyhow::Result<u8> {
    let mut reports = Vec::new();
    for path in paths {
        reports.extend(read(path.as_ref())?);
    }
    let merged = merge(reports)?;
    let color = console::colors_enabled();
    for report in &merged {
        println!("{}", render(report, color));
    }
    if let Some(path) = json {
        crate::write_reports(&merged, path)?;
    }
    Ok(crate::exit_code(&merged))
}

/// One `--json` file: the array `run --json` writes, or a single report.
fn read(path: &Path) -> anyhow::Result<Vec<SweepReport>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let reports = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|report| vec![report])
    };
    reports.with_context(|| format!("{} is not a `ghostmesh run --json` report", path.display()))
}

/// Merges reports per scenario, scenarios in the order they first appear.
pub fn merge(reports: Vec<SweepReport>) -> anyhow::Result<Vec<SweepReport>> {
    let mut groups: Vec<(String, Vec<SweepReport>)> = Vec::new();
    for report in reports {
        match groups.iter_mut().find(|(name, _)| *name == report.scenario) {
            Some((_, group)) => group.push(report),
            None => groups.push((report.scenario.clone(), vec![report])),
        }
    }
    let merged: Vec<SweepReport> = groups
        .into_iter()
        .map(|(name, group)| merge_scenario(group).with_context(|| format!("merging {name}")))
        .collect::<anyhow::Result<_>>()?;
    assert!(merged.iter().all(|report| report.shard.is_none()));
    Ok(merged)
}

/// Merges one scenario's reports: a lone whole-range report as it is, otherwise shards 0..K.
fn merge_scenario(mut group: Vec<SweepReport>) -> anyhow::Result<SweepReport> {
    assert!(!group.is_empty());
    if group.len() == 1 && group[0].shard.is_none() {
        return Ok(group.remove(0));
    }
    let first = &group[0];
    let Some(layout) = first.shard else { bail!("a whole-range report among other reports") };
    let start = first.start;
    let mut indices = BTreeSet::new();
    for report in &group {
        let Some(shard) = report.shard else { bail!("a whole-range report among shard reports") };
        ensure!(
            report.start == start
                && shard.count == layout.count
                && shard.range_seed_count == layout.range_seed_count,
            "shard {}/{} from {:#x} of {} seeds is not part of shard {}/{}'s range \
             ({:#x}, {} seeds)",
            shard.index,
            shard.count,
            report.start,
            shard.range_seed_count,
            layout.index,
            layout.count,
            start,
            layout.range_seed_count
        );
        ensure!(indices.insert(shard.index), "shard {}/{} given twice", shard.index, shard.count);
        check_runs(report, Shard { index: shard.index, count: shard.count })?;
    }
    let missing: Vec<String> = (0..layout.count)
        .filter(|index| !indices.contains(index))
        .map(|index| format!("{index}/{}", layout.count))
        .collect();
    ensure!(missing.is_empty(), "shards missing: {}", missing.join(", "));
    combine(group, layout.range_seed_count)
}

/// Every run of a shard's report has a seed of that shard, in the range, once.
fn check_runs(report: &SweepReport, shard: Shard) -> anyhow::Result<()> {
    let range = report.shard.map_or(report.seed_count, |record| record.range_seed_count);
    let mut seeds = BTreeSet::new();
    for run in &report.runs {
        let offset = run.seed.wrapping_sub(report.start);
        ensure!(
            run.seed >= report.start && offset < range && shard.contains(offset),
            "seed {:#x} is not in shard {}/{} of {:#x}..+{range}",
            run.seed,
            shard.index,
            shard.count,
            report.start
        );
        ensure!(seeds.insert(run.seed), "seed {:#x} reported twice", run.seed);
    }
    ensure!(
        seeds.len() as u64 == report.seed_count
            && report.seed_count <= report.seed_count_requested
            && report.seed_count_requested == shard.size(range),
        "shard {}/{} reports {} of {} seeds but holds {} runs and should ask for {}",
        shard.index,
        shard.count,
        report.seed_count,
        report.seed_count_requested,
        seeds.len(),
        shard.size(range)
    );
    Ok(())
}

/// The checked shards of one range as one report.
fn combine(group: Vec<SweepReport>, range_seed_count: u64) -> anyhow::Result<SweepReport> {
    let scenario = group[0].scenario.clone();
    let start = group[0].start;
    let requested: u64 = group.iter().map(|report| report.seed_count_requested).sum();
    let jobs = group.iter().map(|report| report.jobs).sum();
    let wall = group.iter().map(|report| report.wall_secs).fold(0.0, f64::max);
    let mut added = vec![0; group[0].counts.len()];
    let mut sites = SiteCounts::new();
    let (mut faults, mut situations) = (FaultCounts::new(), SituationCounts::new());
    let group_no_buggify: Vec<bool> = group.iter().map(|report| report.no_buggify).collect();
    for report in &group {
        for (slot, (_, count)) in added.iter_mut().zip(&report.counts) {
            *slot += count;
        }
        for (name, site) in &report.buggify {
            sites.entry(name.clone()).or_default().add(*site);
        }
        coverage::add(&mut faults, &mut situations, (&report.faults, &report.situations));
    }
    let runs = group.into_iter().flat_map(|report| report.runs).collect();
    let wall = Duration::try_from_secs_f64(wall).unwrap_or(Duration::ZERO);
    let mut merged = summarize(&scenario, start, None, runs, jobs, wall);
    merged.seed_count_requested = requested;
    merged.buggify = sites;
    merged.faults = faults;
    merged.situations = situations;
    ensure!(
        group_no_buggify.iter().all(|off| *off == group_no_buggify[0]),
        "some shards ran with BUGGIFY and some without"
    );
    merged.no_buggify = group_no_buggify[0];
    ensure!(
        requested == range_seed_count,
        "the shards asked for {requested} seeds, not the range's {range_seed_count}"
    );
    // The shards' own counts, added, agree with the counts of their runs.
    let recounted: Vec<u64> = merged.counts.iter().map(|(_, count)| *count).collect();
    ensure!(
        added == recounted,
        "the shards' counts {added:?} disagree with their runs' {recounted:?}"
    );
    Ok(merged)
}
