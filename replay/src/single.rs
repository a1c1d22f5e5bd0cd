//! The one-seed commands: `replay` (full trace and history to files, violation on screen),
//! `shrink` (delta debugging to a minimal plan file) and `check-determinism` (two runs, first
//! diverging trace event).

#![allow(clippy::disallowed_methods, reason = "a CLI: it writes the files people asked for")]

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use scenarios::{Outcome, PlanFile, RunOptions, Scenario, draw_plan, run_plan};
use sim::world::TraceRecord;

/// Where `replay` and `shrink` write their files by default.
pub const OUTPUT_DIR: &str = "target/ghostmesh";

/// The plan to run: read from `plan_path`, or drawn from `seed`.
pub fn load_plan(
    scenario: &dyn Scenario,
    seed: Option<u64>,
    plan_path: Option<&Path>,
) -> anyhow::Result<PlanFile> {
    let Some(path) = plan_path else {
        let Some(seed) = seed else { bail!("give --seed or --plan") };
        return Ok(draw_plan(scenario, seed));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let plan = PlanFile::from_json(&text).with_context(|| format!("reading {}", path.display()))?;
    if plan.scenario != scenario.name() {
        bail!("{} is a plan for {}, not {}", path.display(), plan.scenario, scenario.name());
    }
    if let Some(seed) = seed.filter(|seed| *seed != plan.seed) {
        bail!("{} is a plan for seed {:#x}, not {seed:#x}", path.display(), plan.seed);
    }
    plan.validate(&scenario.topology(&plan.swarm))?;
    Ok(plan)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn stem(plan: &PlanFile) -> PathBuf {
    PathBuf::from(OUTPUT_DIR).join(format!("{}-{:#x}", plan.scenario, plan.seed))
}

/// Re-runs one plan with every trace record kept; writes trace, history and plan files.
/// `no_buggify` turns the BUGGIFY sites off, as the sweep that found the seed had them.
pub fn replay(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    trace_path: Option<PathBuf>,
    no_buggify: bool,
) -> anyhow::Result<Outcome> {
    let options = RunOptions { record_trace: true, no_buggify };
    let (outcome, world) = run_plan(scenario, plan, &options);
    let records = world.trace_records().unwrap_or_default();
    let trace_path = trace_path.unwrap_or_else(|| stem(plan).with_extension("trace"));
    let trace: String = records.iter().map(|record| format!("{record}\n")).collect();
    write(&trace_path, &trace)?;
    let history_path = stem(plan).with_extension("history.json");
    write(&history_path, &serde_json::to_string_pretty(&outcome.history)?)?;
    let plan_path = stem(plan).with_extension("plan.json");
    write(&plan_path, &plan.to_json())?;
    print!("{}", outcome.summary());
    if let Some(violation) = &outcome.violation {
        println!("\nviolated: {violation}");
    }
    print!("\n{}", outcome.buggify_report());
    println!("\ntrace   {} ({} events)", trace_path.display(), records.len());
    println!("history {}", history_path.display());
    println!("plan    {}", plan_path.display());
    Ok(outcome)
}

/// Shrinks a failing plan and writes the minimal one.
pub fn shrink(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    out: Option<PathBuf>,
) -> anyhow::Result<scenarios::shrink::ShrinkReport> {
    println!("shrinking {} faults, faulty phase {} ms", plan.faults.len(), plan.swarm.faulty_ms);
    let mut on_step = |candidate: &PlanFile, runs: u32| {
        println!(
            "  run {runs:>3}: still fails with {} faults, faulty phase {} ms, {} clients",
            candidate.faults.len(),
            candidate.swarm.faulty_ms,
            candidate.swarm.client_count
        );
    };
    let report = scenarios::shrink::shrink(scenario, plan, &mut on_step)?;
    let out = out.unwrap_or_else(|| stem(plan).with_extension("min.plan.json"));
    write(&out, &report.minimal.to_json())?;
    println!(
        "\n{} after {} runs{}: {} of {} faults remain",
        report.verdict.label(),
        report.run_count,
        if report.exhausted { " (run budget spent)" } else { "" },
        report.minimal.faults.len(),
        report.original.faults.len()
    );
    for fault in &report.minimal.faults {
        println!("  {}", serde_json::to_string(fault)?);
    }
    if let Some(violation) = &report.outcome.violation {
        println!("violated: {}", violation.to_string().lines().next().unwrap_or(""));
    }
    let replay =
        format!("{} --plan {}", scenarios::replay_command(scenario, plan.seed), out.display());
    println!("minimal plan {}\nreplay: {replay}", out.display());
    Ok(report)
}

/// Runs a plan twice; on a mismatch, names the first diverging trace event.
pub fn check_determinism(scenario: &dyn Scenario, plan: &PlanFile) -> anyhow::Result<bool> {
    let options = RunOptions { record_trace: true, ..RunOptions::default() };
    let (first, first_world) = run_plan(scenario, plan, &options);
    let (second, second_world) = run_plan(scenario, plan, &options);
    let first_records = first_world.trace_records().unwrap_or_default();
    let second_records = second_world.trace_records().unwrap_or_default();
    println!(
        "run 1: trace {:#018x}, {} events, {}",
        first.trace_hash,
        first.trace_count,
        first.verdict.label()
    );
    println!(
        "run 2: trace {:#018x}, {} events, {}",
        second.trace_hash,
        second.trace_count,
        second.verdict.label()
    );
    if first.trace_hash == second.trace_hash && first_records == second_records {
        println!("deterministic: both runs produced the identical trace");
        return Ok(true);
    }
    match first_divergence(&first_records, &second_records) {
        Some((index, left, right)) => {
            println!("NOT deterministic: first divergence at event {index}");
            println!("  run 1: {}", left.map_or("<end of trace>".to_string(), |r| r.to_string()));
            println!("  run 2: {}", right.map_or("<end of trace>".to_string(), |r| r.to_string()));
        }
        None => println!("NOT deterministic: records agree but the outcomes differ"),
    }
    Ok(false)
}

/// The first index where two traces differ, with the records there.
pub fn first_divergence<'a>(
    left: &'a [TraceRecord],
    right: &'a [TraceRecord],
) -> Option<(usize, Option<&'a TraceRecord>, Option<&'a TraceRecord>)> {
    let length = left.len().max(right.len());
    (0..length)
        .find(|index| left.get(*index) != right.get(*index))
        .map(|index| (index, left.get(index), right.get(index)))
}
