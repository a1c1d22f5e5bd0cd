//! Runs the ping speed workloads on one simulator and prints, per workload, datagrams, simulated
//! seconds and wall seconds: a table by default, or one JSON line each with `--json` (the format
//! `ci/bench-peers` collects from every backend, madsim's included).
//!
//! Backends: `ghostmesh` (our `World`, trace hashing on) and `turmoil` (native turmoil code,
//! `benches/peers/turmoil_ping.rs`). Wall time covers building and running one simulation.
//!
//! Usage: `cargo run --release -p sim --example ping -- [--backend ghostmesh|turmoil] [--json]
//! [--seed S] [--workload NAME]`

#[path = "../benches/peers/turmoil_ping.rs"]
mod turmoil_ping;

use sim::workloads::{PING_WORKLOADS, PingWorkload, run_ping};
use sim::world::SimConfig;

struct Args {
    turmoil: bool,
    json: bool,
    seed: u64,
    only: Option<String>,
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("ping: {message}");
            eprintln!(
                "usage: ping [--backend ghostmesh|turmoil] [--json] [--seed S] [--workload NAME]"
            );
            std::process::exit(2);
        }
    };
    let backend = if args.turmoil { "turmoil" } else { "ghostmesh" };
    eprintln!("ping: {backend}, seed {:#x}", args.seed);
    for workload in
        PING_WORKLOADS.iter().filter(|w| args.only.as_deref().is_none_or(|n| n == w.name))
    {
        #[allow(clippy::disallowed_methods, reason = "the benchmark measures real wall time")]
        let start = std::time::Instant::now();
        let (datagrams, trace_hash) = run(workload, &args);
        let wall_secs = start.elapsed().as_secs_f64();
        let sim_secs = workload.duration.as_secs_f64();
        if args.json {
            println!(
                "{{\"backend\":\"{backend}\",\"workload\":\"{}\",\"datagrams\":{datagrams},\
                 \"sim_secs\":{sim_secs:.1},\"wall_secs\":{wall_secs:.6}}}",
                workload.name
            );
        } else {
            let trace = trace_hash.map_or(String::new(), |hash| format!("  trace {hash:#018x}"));
            println!(
                "{:<14} {datagrams:>8} datagrams  {:>10.0} msgs/s  {:>8.0} sim-s/wall-s{trace}",
                workload.name,
                datagrams as f64 / wall_secs,
                sim_secs / wall_secs,
            );
        }
    }
}

/// Runs one workload; returns the datagrams received and, for our world, the trace hash.
fn run(workload: &PingWorkload, args: &Args) -> (u64, Option<u64>) {
    if args.turmoil {
        let hosts = workload.host_count as usize;
        (turmoil_ping::run(hosts, workload.interval, workload.duration, args.seed), None)
    } else {
        let report = run_ping(workload, SimConfig::new(args.seed)).expect("the ping world runs");
        (report.datagram_count, Some(report.trace_hash))
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args { turmoil: false, json: false, seed: 1, only: None };
    while let Some(arg) = args.next() {
        if arg == "--json" {
            parsed.json = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--backend" if value == "ghostmesh" || value == "turmoil" => {
                parsed.turmoil = value == "turmoil";
            }
            "--seed" => {
                let seed = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
                    None => value.replace('_', "").parse(),
                };
                parsed.seed = seed.map_err(|error| format!("bad seed {value:?}: {error}"))?;
            }
            "--workload" if PING_WORKLOADS.iter().any(|w| w.name == value) => {
                parsed.only = Some(value);
            }
            _ => return Err(format!("bad argument {arg} {value:?}")),
        }
    }
    Ok(parsed)
}
