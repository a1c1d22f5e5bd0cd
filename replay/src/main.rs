//! `ghostmesh`: the command line of the testbed.
//!
//! - `list`: the scenarios and what each checks.
//! - `run SCENARIO --seeds N`: a parallel seed sweep with a progress bar, a summary table, a
//!   paste-able replay command per failure, and an optional JSON report; `--shard I/K` runs one
//!   of K interleaved parts of the range, so K machines share a sweep without talking.
//! - `merge REPORT...`: shard reports (JSON) combined into the report of the whole range.
//! - `replay SCENARIO --seed S`: one seed (or a plan file) with tracing output, the full trace
//!   written to a file as the run goes, the violated invariant on screen; `--html FILE` also
//!   writes a self-contained page picturing the run (`html`).
//! - `shrink SCENARIO --seed S`: delta debugging down to a minimal failing plan.
//! - `check-determinism SCENARIO --seed S`: two runs compared by running hashes at checkpoints
//!   (bounded memory); the first diverging event, with its neighbours, if they differ.
//! - `ping`: the simulator's raw speed on ping worlds.
//!
//! Every run prints its seed first. Exit codes: 0 pass, 1 error, 2 usage, 3 safety violation,
//! 4 liveness failure, 5 panic, 6 no progress (for a sweep, the most important failure's code).

mod coverage;
mod determinism;
mod html;
mod merge;
mod single;
mod sweep;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use scenarios::Scenario;
use sim::workloads::{PING_WORKLOADS, PingWorkload, run_ping};
use sim::world::SimConfig;

#[derive(Parser)]
#[command(
    name = "ghostmesh",
    about = "Deterministic simulation testbed for distributed systems",
    after_help = "Every run prints its seed first. Exit codes: 0 pass, 1 error, 2 usage, \
                  3 safety violation, 4 liveness failure, 5 panic, 6 no progress."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios and what each checks.
    List,
    /// Sweep seeds of a scenario (or `all`) in parallel and report every failure.
    Run {
        /// Scenario name, or `all`.
        scenario: String,
        /// How many seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed (decimal or 0x-hex).
        #[arg(long, default_value = "1", value_parser = parse_seed)]
        start: u64,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Start no new seed after this many wall-clock seconds (shared by `all`'s scenarios).
        #[arg(long)]
        time_budget: Option<u64>,
        /// Run only shard I of K (0 <= I < K): the seeds START+i with i % K == I.
        #[arg(long, value_name = "I/K", value_parser = sweep::Shard::parse)]
        shard: Option<sweep::Shard>,
        /// Turn every BUGGIFY site off (to measure what the sites add).
        #[arg(long)]
        no_buggify: bool,
    },
    /// Combine the JSON reports of a sharded sweep into the report of the whole range.
    Merge {
        /// The shards' `--json` files, in any order (each may hold several scenarios).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Also write the merged report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Re-run one seed with tracing output and write its full trace to a file.
    Replay {
        /// Scenario name.
        scenario: String,
        /// The seed (decimal or 0x-hex).
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
        /// Run this plan file (from `replay` or `shrink`) instead of the seed's own plan.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// tracing-subscriber filter, e.g. `info`, `nemesis=info,register=debug`, `sim=trace`.
        #[arg(long, default_value = "nemesis=info,scenarios=info")]
        log: String,
        /// Where to write the trace (default target/ghostmesh/SCENARIO-SEED.trace).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Also write a self-contained HTML page of the run: node lanes, faults, operations.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Turn every BUGGIFY site off, as `run --no-buggify` did.
        #[arg(long)]
        no_buggify: bool,
    },
    /// Shrink a failing seed's fault plan to a minimal one that still fails the same way.
    Shrink {
        /// Scenario name.
        scenario: String,
        /// The seed (decimal or 0x-hex).
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
        /// Shrink this plan file instead of the seed's own plan.
        #[arg(long)]
        plan: Option<PathBuf>,
        /// Where to write the minimal plan (default target/ghostmesh/SCENARIO-SEED.min.plan.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one seed twice and compare the traces; name the first diverging event.
    CheckDeterminism {
        /// Scenario name.
        scenario: String,
        /// The seed (decimal or 0x-hex).
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
        /// Check this plan file instead of the seed's own plan.
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// Run ping worlds: hosts ping their neighbour every interval and answer every ping.
    Ping {
        /// The seed (decimal or 0x-hex). Every random choice of the run derives from it.
        #[arg(long, default_value = "1", value_parser = parse_seed)]
        seed: u64,
        /// One of ping-10x100ms, ping-50x100ms, ping-10x1s; all three if omitted.
        #[arg(long)]
        workload: Option<String>,
        /// Packet loss on every link, from 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Run every world twice and fail unless both traces are identical.
        #[arg(long)]
        check_determinism: bool,
    },
}

fn parse_seed(text: &str) -> Result<u64, String> {
    scenarios::testing::parse_seed(text).ok_or_else(|| format!("not a seed: {text:?}"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn find(name: &str) -> anyhow::Result<Box<dyn Scenario>> {
    scenarios::find(name).with_context(|| {
        let names: Vec<_> = scenarios::all().iter().map(|s| s.name()).collect();
        format!("no scenario {name:?}; choose one of {} (see `ghostmesh list`)", names.join(", "))
    })
}

fn list() -> String {
    let mut text = String::new();
    for scenario in scenarios::all() {
        text.push_str(&format!("{}\n  {}\n", scenario.name(), scenario.summary()));
        text.push_str(&format!("  checks: {}\n", scenario.checks().join(", ")));
        if scenario.sweep_only() {
            text.push_str("  sweep only: cargo test runs it only with SIM_SEED or SIM_SEEDS\n");
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::List => print!("{}", list()),
        Command::Run { scenario, seeds, start, jobs, json, time_budget, shard, no_buggify } => {
            let jobs =
                jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
            let options = sweep::SweepOptions {
                start,
                count: seeds,
                shard: shard.unwrap_or(sweep::Shard::WHOLE),
                jobs,
                budget: time_budget.map(Duration::from_secs),
                progress: std::io::stderr().is_terminal(),
                no_buggify,
            };
            return run_sweep(&scenario, options, json);
        }
        Command::Merge { reports, json } => return merge::run(&reports, json.as_deref()),
        Command::Replay { scenario, seed, plan, log, trace, html, no_buggify } => {
            let scenario = find(&scenario)?;
            let plan = single::load_plan(scenario.as_ref(), seed, plan.as_deref())?;
            println!("seed {:#x}", plan.seed);
            init_tracing(&log)?;
            let files = single::ReplayFiles { trace, html };
            let outcome = single::replay(scenario.as_ref(), &plan, files, no_buggify)?;
            return Ok(outcome.verdict.exit_code());
        }
        Command::Shrink { scenario, seed, plan, out } => {
            let scenario = find(&scenario)?;
            let plan = single::load_plan(scenario.as_ref(), seed, plan.as_deref())?;
            println!("seed {:#x}", plan.seed);
            let report = single::shrink(scenario.as_ref(), &plan, out)?;
            return Ok(report.verdict.exit_code());
        }
        Command::CheckDeterminism { scenario, seed, plan } => {
            let scenario = find(&scenario)?;
            let plan = single::load_plan(scenario.as_ref(), seed, plan.as_deref())?;
            println!("seed {:#x}", plan.seed);
            return Ok(if single::check_determinism(scenario.as_ref(), &plan)? { 0 } else { 1 });
        }
        Command::Ping { seed, workload, loss, check_determinism } => {
            run_pings(seed, workload, loss, check_determinism)?;
        }
    }
    Ok(0)
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log {filter:?} is not a tracing filter"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    Ok(())
}

fn run_sweep(
    name: &str,
    mut options: sweep::SweepOptions,
    json: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let selected = if name == "all" { scenarios::all() } else { vec![find(name)?] };
    let color = std::io::stdout().is_terminal();
    let (start, count) = (options.start, options.count);
    let shard = options.shard;
    let part = if shard == sweep::Shard::WHOLE {
        String::new()
    } else {
        format!(", shard {}/{} ({} seeds)", shard.index, shard.count, shard.size(count))
    };
    println!("seeds {start:#x}..={:#x}{part}", start + count.saturating_sub(1));
    // Each scenario gets an equal share of the budget.
    options.budget = options.budget.map(|budget| budget / selected.len().max(1) as u32);
    let mut reports = Vec::new();
    for scenario in &selected {
        let report = sweep::sweep(scenario.as_ref(), options);
        println!("{}", sweep::render(&report, color));
        reports.push(report);
    }
    if let Some(path) = json {
        write_reports(&reports, &path)?;
    }
    Ok(exit_code(&reports))
}

/// Writes sweep reports as the JSON array that `run --json` writes and `merge` reads.
fn write_reports(reports: &[sweep::SweepReport], path: &std::path::Path) -> anyhow::Result<()> {
    #[allow(clippy::disallowed_methods, reason = "the CLI writes the report it was asked for")]
    std::fs::write(path, serde_json::to_string_pretty(reports)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("report {}", path.display());
    Ok(())
}

/// The most important failure's exit code over several reports (safety first), or 0.
fn exit_code(reports: &[sweep::SweepReport]) -> u8 {
    reports.iter().map(sweep::SweepReport::exit_code).filter(|c| *c != 0).min().unwrap_or(0)
}

fn run_pings(seed: u64, workload: Option<String>, loss: f64, check: bool) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&loss) {
        bail!("--loss must be between 0 and 1, not {loss}");
    }
    println!("seed {seed:#x}");
    let selected: Vec<&PingWorkload> = PING_WORKLOADS
        .iter()
        .filter(|candidate| workload.as_deref().is_none_or(|name| name == candidate.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = PING_WORKLOADS.iter().map(|w| w.name).collect();
        bail!("no workload named {workload:?}; choose one of {}", names.join(", "));
    }
    for workload in selected {
        ping(workload, seed, loss, check)?;
    }
    Ok(())
}

fn ping(workload: &PingWorkload, seed: u64, loss: f64, check: bool) -> anyhow::Result<()> {
    let config = || {
        let mut config = SimConfig::new(seed);
        config.net.link.loss = loss;
        config
    };
    #[allow(clippy::disallowed_methods)] // Wall time is what this report measures.
    let start = std::time::Instant::now();
    let report = run_ping(workload, config())
        .with_context(|| format!("replay: ghostmesh ping --seed {seed:#x} --loss {loss}"))?;
    let wall = start.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
    println!(
        "{:<14} {:>8} datagrams  {:>9.0} sim-s/wall-s  {:>10.0} datagrams/s  trace {:#018x}",
        workload.name,
        report.datagram_count,
        workload.duration.as_secs_f64() / wall,
        report.datagram_count as f64 / wall,
        report.trace_hash,
    );
    if check {
        let again = run_ping(workload, config())?;
        if again != report {
            bail!(
                "seed {seed:#x} is not deterministic: trace {:#018x} then {:#018x}",
                report.trace_hash,
                again.trace_hash
            );
        }
        println!("{:<14} deterministic: the second run's trace is identical", workload.name);
    }
    Ok(())
}
