//! Runs the "ping" workload on turmoil and prints one JSON line per workload, for
//! `ci/bench-peers`, which sets these numbers beside our world's (`examples/ping.rs`) and
//! madsim's (`ci/peers/madsim-ping`).
//!
//! Usage: `cargo run --release -p sim --example ping_turmoil -- [--workload NAME] [--seed S]`,
//! S decimal or 0x-hex, default 1. Stdout holds only the JSON lines, e.g.
//! `{"backend":"turmoil","workload":"ping-10x100ms","datagrams":11980,"sim_secs":60.0,...}`;
//! the seed and errors go to stderr. Wall time spans building and running the simulation.

#[path = "../benches/peers/turmoil_ping.rs"]
mod turmoil_ping;

use std::time::{Duration, Instant};

/// One named workload; the same three exist on every backend.
struct Workload {
    name: &'static str,
    host_count: usize,
    interval: Duration,
    duration: Duration,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "ping-10x100ms",
        host_count: 10,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    Workload {
        name: "ping-50x100ms",
        host_count: 50,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    Workload {
        name: "ping-10x1s",
        host_count: 10,
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(600),
    },
];

fn main() {
    let (seed, only) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("ping_turmoil: {message}");
            eprintln!("usage: ping_turmoil [--workload NAME] [--seed S]");
            std::process::exit(2);
        }
    };
    eprintln!("ping_turmoil: seed {seed}");
    for workload in WORKLOADS.iter().filter(|w| only.as_deref().is_none_or(|n| n == w.name)) {
        #[allow(clippy::disallowed_methods, reason = "the benchmark measures real wall time")]
        let start = Instant::now();
        let datagrams =
            turmoil_ping::run(workload.host_count, workload.interval, workload.duration, seed);
        let wall_secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"backend\":\"turmoil\",\"workload\":\"{}\",\"datagrams\":{},\
             \"sim_secs\":{:.1},\"wall_secs\":{:.6}}}",
            workload.name,
            datagrams,
            workload.duration.as_secs_f64(),
            wall_secs
        );
    }
}

/// Returns (seed, only this workload).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(u64, Option<String>), String> {
    let mut seed = 1;
    let mut only = None;
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seed" => {
                let parsed = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
                    None => value.replace('_', "").parse(),
                };
                seed = parsed.map_err(|error| format!("bad seed {value:?}: {error}"))?;
            }
            "--workload" => {
                if !WORKLOADS.iter().any(|w| w.name == value) {
                    return Err(format!("unknown workload {value:?}"));
                }
                only = Some(value);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((seed, only))
}
