//! Our SWIM + Lifeguard next to the `foca` crate on the same simulated network and seed.
//!
//! Goal: the comparison harness works: both detectors see a crash on the same network and seed.
//! Method: 16 nodes each, 1% loss, crash one node, record when each live node declared it down.
//! Our detector is allowed to be slower (Lifeguard starts a suspicion at its longest timeout and
//! shrinks it with confirmations, trading detection time for false positives) but must stay
//! within its SWIM bound. The full-size comparison is in `examples/measure.rs`.

mod common;

use std::time::Duration;

use common::foca_peer::foca_cluster;
use common::{Cluster, Event, Options, addr};
use gossip::swim::MemberState;

const NODES: usize = 16;
const SEED: u64 = 0x5eed_0600;

/// (observers that declared `victim` down, seconds from the crash until the last did).
fn ours(victim: usize) -> (usize, f64) {
    let cluster = Cluster::new(SEED, &Options::new(NODES, 0.01));
    cluster.run(Duration::from_secs(20));
    let crashed_at = cluster.world.now();
    cluster.crash(victim);
    cluster.run(Duration::from_secs(90));
    let mut observers = std::collections::BTreeMap::new();
    for event in cluster.events() {
        if let Event::Member { at, observer, member, state: MemberState::Dead } = event
            && member == victim
        {
            observers.entry(observer).or_insert(at);
        }
    }
    let last = observers.values().max().copied().unwrap_or(crashed_at);
    (observers.len(), last.saturating_duration_since(crashed_at).as_secs_f64())
}

/// The same for foca.
fn foca(victim: usize) -> (usize, f64) {
    let (world, nodes, downs) = foca_cluster(SEED, NODES, 0.01);
    world.run_for(Duration::from_secs(20)).expect("runs");
    let crashed_at = world.now();
    world.crash(nodes[victim]);
    world.run_for(Duration::from_secs(90)).expect("runs");
    let mut observers = std::collections::BTreeMap::new();
    for (at, observer, member) in downs.lock().expect("lock").iter() {
        if *member == addr(victim) && *at >= crashed_at {
            observers.entry(*observer).or_insert(*at);
        }
    }
    let last = observers.values().max().copied().unwrap_or(crashed_at);
    (observers.len(), last.saturating_duration_since(crashed_at).as_secs_f64())
}

#[test]
fn both_detectors_see_a_crash() {
    let (ours_count, ours_seconds) = ours(5);
    let (foca_count, foca_seconds) = foca(5);
    println!(
        "crash of 1 of {NODES} at 1% loss: ours {ours_count} observers in {ours_seconds:.1}s, \
         foca {foca_count} observers in {foca_seconds:.1}s"
    );
    assert_eq!(ours_count, NODES - 1, "every live node declares the crashed one dead");
    assert!(ours_seconds <= 45.0, "ours took {ours_seconds:.1}s");
    assert!(foca_count >= NODES / 2, "foca: {foca_count} observers");
}
