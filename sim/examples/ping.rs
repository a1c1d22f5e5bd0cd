//! Runs the ping speed workloads on the simulated world and prints, per workload, datagrams,
//! simulated seconds and wall seconds (`--json` gives one JSON line each, the format
//! `ci/bench-peers` collects from every backend).
//!
//! Usage: `cargo run --release -p sim --example ping -- [--json] [--seed S] [--workload NAME]`

use sim::workloads::{PING_WORKLOADS, run_ping};
use sim::world::SimConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut json, mut seed, mut only) = (false, 1u64, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--seed" => seed = args.next().and_then(|text| parse_seed(&text)).expect("--seed S"),
            "--workload" => only = Some(args.next().expect("--workload NAME")),
            other => panic!("unknown argument {other}"),
        }
    }
    eprintln!("seed {seed:#x}");
    for workload in PING_WORKLOADS.iter().filter(|w| only.as_deref().is_none_or(|n| n == w.name)) {
        #[allow(clippy::disallowed_methods)] // Measuring wall time is this program's purpose.
        let start = std::time::Instant::now();
        let report = run_ping(workload, SimConfig::new(seed)).expect("the ping workload runs");
        let wall_secs = start.elapsed().as_secs_f64();
        let sim_secs = workload.duration.as_secs_f64();
        let datagrams = report.datagram_count;
        if json {
            println!(
                "{{\"backend\":\"ghostmesh\",\"workload\":\"{}\",\"datagrams\":{datagrams},\
                 \"sim_secs\":{sim_secs:.1},\"wall_secs\":{wall_secs:.6}}}",
                workload.name
            );
        } else {
            println!(
                "{:<14} {datagrams:>8} datagrams  {:>10.0} msgs/s  {:>8.0} sim-s/wall-s  \
                 trace {:#018x}",
                workload.name,
                datagrams as f64 / wall_secs,
                sim_secs / wall_secs,
                report.trace_hash
            );
        }
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}
