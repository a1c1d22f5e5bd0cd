//! `ghostmesh`: the command line of the testbed.
//!
//! Today it runs the simulator's ping worlds from a seed (`ghostmesh ping`), reporting datagrams,
//! simulated seconds per wall second and the trace hash, and checks a seed's determinism by
//! running it twice. Sweeps, replay with full traces, and shrinking arrive with the scenarios.
//! Every run prints its seed first.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sim::workloads::{PING_WORKLOADS, PingWorkload, run_ping};
use sim::world::SimConfig;

#[derive(Parser)]
#[command(name = "ghostmesh", about = "Deterministic simulation testbed for distributed systems")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("not a seed: {error}"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ping { seed, workload, loss, check_determinism } => {
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
                ping(workload, seed, loss, check_determinism)?;
            }
            Ok(())
        }
    }
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
