//! Simulator speed, side by side: the ping workloads on our world and on turmoil, in one run.
//!
//! Each criterion group is one workload; its two functions are `ghostmesh` (our `World`, with
//! trace hashing on) and `turmoil` (native turmoil code, `benches/peers/turmoil_ping.rs`).
//! Throughput is in datagrams received, so criterion's `elem/s` figures are directly comparable
//! and their ratio is the speed-up. turmoil cannot skip idle time (1 ms ticks), so its side runs
//! a tenth of the simulated duration to keep the bench short; datagrams per wall second is a
//! rate and does not depend on the duration. `ci/bench-peers` runs the full durations on all
//! three simulators, madsim included, and prints the ratios.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sim::workloads::{PING_WORKLOADS, run_ping};
use sim::world::SimConfig;

#[path = "peers/turmoil_ping.rs"]
mod turmoil_ping;

const SEED: u64 = 1;
const TURMOIL_DURATION_DIVISOR: u32 = 10;

fn ping(criterion: &mut Criterion) {
    for workload in PING_WORKLOADS {
        let mut group = criterion.benchmark_group(workload.name);
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(5));

        let ours = run_ping(&workload, SimConfig::new(SEED)).expect("runs").datagram_count;
        group.throughput(Throughput::Elements(ours));
        group.bench_function("ghostmesh", |bencher| {
            bencher.iter(|| run_ping(&workload, SimConfig::new(SEED)).expect("runs"));
        });

        let duration = workload.duration / TURMOIL_DURATION_DIVISOR;
        let hosts = workload.host_count as usize;
        let theirs = turmoil_ping::run(hosts, workload.interval, duration, SEED);
        group.throughput(Throughput::Elements(theirs));
        group.bench_function("turmoil", |bencher| {
            bencher.iter(|| turmoil_ping::run(hosts, workload.interval, duration, SEED));
        });
        group.finish();
    }
}

criterion_group!(benches, ping);
criterion_main!(benches);
