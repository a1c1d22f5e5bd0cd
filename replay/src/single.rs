//! The one-seed commands: `replay` (full trace and history to files, written as the run goes,
//! an optional HTML picture of the run, violation on screen), `shrink` (delta debugging to a
//! minimal plan file) and `check-determinism` (two runs compared by hash log, first diverging
//! trace event; see `determinism`).

#![allow(clippy::disallowed_methods, reason = "a CLI: it writes the files people asked for")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use scenarios::runner::run_plan_with_sink;
use scenarios::{Outcome, PlanFile, RunOptions, Scenario, draw_plan};
use sim::world::{TraceRecord, TraceSink};

use crate::{determinism, html};

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

/// Where `replay` writes: the trace file (default under `OUTPUT_DIR`) and an optional page.
pub struct ReplayFiles {
    /// The trace file, one line per record.
    pub trace: Option<PathBuf>,
    /// The HTML picture of the run (`--html`).
    pub html: Option<PathBuf>,
}

/// Re-runs one plan writing every trace record to the trace file as it happens; then writes
/// the history and plan files and, if asked, the HTML page. `no_buggify` turns the BUGGIFY
/// sites off, as the sweep that found the seed had them.
pub fn replay(
    scenario: &dyn Scenario,
    plan: &PlanFile,
    files: ReplayFiles,
    no_buggify: bool,
) -> anyhow::Result<Outcome> {
    let trace_path = files.trace.unwrap_or_else(|| stem(plan).with_extension("trace"));
    let trace = TraceFile::create(&trace_path)?;
    let options = RunOptions { no_buggify, ..RunOptions::default() };
    let (outcome, world) = run_plan_with_sink(scenario, plan, &options, Some(trace.sink()));
    drop(world);
    let event_count = trace.finish()?;
    assert_eq!(event_count, outcome.trace_count, "the file holds every record");
    let history_path = stem(plan).with_extension("history.json");
    write(&history_path, &serde_json::to_string_pretty(&outcome.history)?)?;
    let plan_path = stem(plan).with_extension("plan.json");
    write(&plan_path, &plan.to_json())?;
    if let Some(html_path) = &files.html {
        write(html_path, &html::render(&outcome, &scenario.topology(&plan.swarm)))?;
    }
    print!("{}", outcome.summary());
    if let Some(violation) = &outcome.violation {
        println!("\nviolated: {violation}");
    }
    print!("\n{}", outcome.buggify_report());
    print!("{}", outcome.coverage_report());
    println!("\ntrace   {} ({event_count} events)", trace_path.display());
    println!("history {}", history_path.display());
    println!("plan    {}", plan_path.display());
    if let Some(html_path) = &files.html {
        println!("html    {}", html_path.display());
    }
    Ok(outcome)
}

/// A trace file written record by record while the run goes, so no trace is kept in memory.
struct TraceFile {
    path: PathBuf,
    shared: Arc<Mutex<TraceWriter>>,
}

struct TraceWriter {
    writer: std::io::BufWriter<std::fs::File>,
    count: u64,
    /// The first write error; later records are counted but not written.
    error: Option<std::io::Error>,
}

impl TraceFile {
    fn create(path: &Path) -> anyhow::Result<TraceFile> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        let writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let shared = Arc::new(Mutex::new(TraceWriter { writer, count: 0, error: None }));
        Ok(TraceFile { path: path.to_path_buf(), shared })
    }

    fn sink(&self) -> TraceSink {
        let shared = Arc::clone(&self.shared);
        Box::new(move |record: &TraceRecord| {
            let mut trace = shared.lock().expect("trace file lock");
            trace.count += 1;
            if trace.error.is_none()
                && let Err(error) = writeln!(trace.writer, "{record}")
            {
                trace.error = Some(error);
            }
        })
    }

    /// Flushes the file; returns how many records the run made.
    fn finish(self) -> anyhow::Result<u64> {
        let mut trace = self.shared.lock().expect("trace file lock");
        let flushed = trace.writer.flush();
        let error = trace.error.take().map_or(flushed, Err);
        error.with_context(|| format!("writing {}", self.path.display()))?;
        Ok(trace.count)
    }
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

/// Runs a plan twice, comparing hash logs rather than traces (`determinism`); on a mismatch,
/// runs both again for the window of records around the first diverging event and names it.
pub fn check_determinism(scenario: &dyn Scenario, plan: &PlanFile) -> anyhow::Result<bool> {
    let mut run = |sink: TraceSink| {
        // The world is dropped at once: only one run's world is alive at a time.
        let outcome = run_plan_with_sink(scenario, plan, &RunOptions::default(), Some(sink)).0;
        let headline = format!(
            "trace {:#018x}, {} events, {}",
            outcome.trace_hash,
            outcome.trace_count,
            outcome.verdict.label()
        );
        let history = serde_json::to_string(&outcome.history).unwrap_or_default();
        determinism::RunEnd { headline, digest: format!("{}{history}", outcome.summary()) }
    };
    let mut out = std::io::stdout().lock();
    Ok(determinism::check(&mut run, &mut out)?)
}
