//! Deterministic simulation of a WireGuard mesh on `sim::world::World`.
//!
//! Goal: devices keep their promises under a hostile network. Four peers in a full mesh send
//! numbered IP packets to each other every 100 ms over links with loss, duplication and
//! reordering; a fifth node, unknown to the others, floods them with initiations under its own
//! key, packets spoofing a member's tunnel address, and garbage. The fault plan then splits the
//! mesh in two (or crashes a peer, or cuts links in one direction only) for longer than
//! `REJECT_AFTER_TIME`, and heals. Wall clocks are skewed and drift per node.
//!
//! Invariants checked over the recorded history:
//! - authenticity: every delivered packet was sent by the peer whose key authenticated it, to
//!   the node that received it, with that peer's tunnel source address;
//! - no duplicates: no packet is delivered twice;
//! - liveness: after the heal (faults removed), every ordered pair of live peers delivers a
//!   packet sent after the heal within `REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX` plus a
//!   one-second allowance for the network and the send interval (or, after a crash,
//!   `KEEPALIVE_TIMEOUT` more, the time a peer takes to notice its old session is dead).
//!
//! Seeds are fixed; a failure prints the seed. The same seed twice gives the same trace hash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::Instant;
use sim::world::{LinkConfig, NodeId, SimConfig, World};
use wireguard::mesh::{MeshHistory, attacker_main, check_deliveries, first_deliveries_after};
use wireguard::mesh::{node_ip, peer_main};
use wireguard::timers::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};

const PEER_COUNT: usize = 4;
const FAULTY_PHASE: Duration = Duration::from_secs(30);
const CUT_PHASE: Duration = Duration::from_secs(200);
const HEALED_PHASE: Duration = Duration::from_secs(20);

const _: () = assert!(CUT_PHASE.as_secs() > REJECT_AFTER_TIME.as_secs());

fn faulty_link() -> LinkConfig {
    LinkConfig {
        loss: 0.1,
        duplicate: 0.1,
        reorder: 0.2,
        reorder_delay: Duration::from_millis(30),
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    }
}

/// What to do to the mesh between the faulty phase and the heal.
#[derive(Clone, Copy)]
enum Fault {
    /// Split {0, 1} from {2, 3}.
    Split,
    /// Crash peer 3, restart it just before the heal.
    Crash,
    /// Cut 0 -> 2 and 3 -> 1 in one direction only.
    OneWay,
}

struct Run {
    history: MeshHistory,
    heal_at: Instant,
    trace_hash: u64,
}

fn run(seed: u64, fault: Fault) -> Run {
    println!("seed {seed:#x}");
    let mut config = SimConfig::new(seed);
    // A device that spins at one instant is a bug: fail fast instead of after ten million polls.
    config.polls_per_instant_max = 100_000;
    // Skewed, drifting wall clocks: TAI64N timestamps come from them.
    config.clock_offset_max = Duration::from_secs(30);
    config.clock_drift_ppm_max = 200;
    let world = World::new(config);
    let history = Arc::new(Mutex::new(MeshHistory::default()));
    let nodes: Vec<NodeId> = (0..PEER_COUNT)
        .map(|index| {
            let history = Arc::clone(&history);
            world.add_node_with(&format!("wg{index}"), node_ip(index), move |env| {
                let generation = env.generation() as u8;
                peer_main(env, seed, index, PEER_COUNT, generation, Arc::clone(&history))
            })
        })
        .collect();
    world.add_node_with("attacker", node_ip(PEER_COUNT), move |env| {
        attacker_main(env, seed, PEER_COUNT)
    });
    world.set_all_links(faulty_link());
    world.run_for(FAULTY_PHASE).expect("faulty phase");
    match fault {
        Fault::Split => world.split(&nodes[..2], &nodes[2..]),
        Fault::Crash => world.crash(nodes[3]),
        Fault::OneWay => {
            world.partition_oneway(nodes[0], nodes[2]);
            world.partition_oneway(nodes[3], nodes[1]);
        }
    }
    world.run_for(CUT_PHASE).expect("cut phase");
    if let Fault::Crash = fault {
        world.restart(nodes[3]);
    }
    world.heal();
    world.set_all_links(LinkConfig::default());
    let heal_at = world.now();
    world.run_for(HEALED_PHASE).expect("healed phase");
    let trace_hash = world.trace_hash();
    drop(world);
    let history = std::mem::take(&mut *history.lock().expect("lock"));
    Run { history, heal_at, trace_hash }
}

/// Authenticity and no duplicates, over the whole history.
#[track_caller]
fn check_safety(seed: u64, run: &Run) {
    if let Err(violation) = check_deliveries(&run.history, seed, PEER_COUNT) {
        panic!("seed {seed:#x}: {violation:?}");
    }
}

/// Every ordered pair delivers a packet sent after the heal within `bound` of the heal.
#[track_caller]
fn check_liveness(seed: u64, run: &Run, bound: Duration) {
    let first = first_deliveries_after(&run.history, run.heal_at);
    for sender in 0..PEER_COUNT {
        for receiver in (0..PEER_COUNT).filter(|receiver| *receiver != sender) {
            let at = first.get(&(sender, receiver)).copied();
            let late = at.is_none_or(|at| at.saturating_duration_since(run.heal_at) > bound);
            assert!(
                !late,
                "seed {seed:#x}: {sender} -> {receiver} first at {at:?}, heal at {}",
                run.heal_at
            );
        }
    }
}

fn heal_bound() -> Duration {
    REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_secs(1)
}

/// Two seeds by default; `SIM_SEEDS=N` runs N.
fn seeds(base: u64) -> impl Iterator<Item = u64> {
    let count = std::env::var("SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(2u64);
    (0..count).map(move |offset| base + offset)
}

#[test]
fn mesh_survives_loss_duplication_reordering_and_a_long_partition() {
    for seed in seeds(0x5eed_0001) {
        let run = run(seed, Fault::Split);
        check_safety(seed, &run);
        check_liveness(seed, &run, heal_bound());
        let drops = &run.history.drops;
        let unknown_peer: u64 = drops
            .iter()
            .filter(|((_, reason), _)| *reason == "unknown_peer")
            .map(|(_, count)| count)
            .sum();
        assert!(unknown_peer > 0, "{drops:?}");
        assert!(run.history.deliveries.len() > 10_000, "{}", run.history.deliveries.len());
    }
}

#[test]
fn mesh_recovers_from_a_crashed_and_restarted_peer() {
    for seed in seeds(0x5eed_1001).take(1 + usize::from(std::env::var("SIM_SEEDS").is_ok()) * 1000)
    {
        let run = run(seed, Fault::Crash);
        check_safety(seed, &run);
        check_liveness(seed, &run, heal_bound() + KEEPALIVE_TIMEOUT);
    }
}

#[test]
fn mesh_recovers_from_one_way_partitions() {
    for seed in seeds(0x5eed_2001).take(1 + usize::from(std::env::var("SIM_SEEDS").is_ok()) * 1000)
    {
        let run = run(seed, Fault::OneWay);
        check_safety(seed, &run);
        check_liveness(seed, &run, heal_bound());
    }
}

#[test]
fn same_seed_same_trace() {
    let seed = 0x5eed_0004;
    let first = run(seed, Fault::Split);
    let second = run(seed, Fault::Split);
    assert_eq!(first.trace_hash, second.trace_hash, "seed {seed:#x} diverged");
    assert_eq!(first.history.deliveries.len(), second.history.deliveries.len());
}

/// Seed 0x5eed0003: after a long partition both ends of a pair initiated at once; each
/// dropped its own initiation on consuming the other's, so both responses were refused and
/// the pair waited a full retry (7.7 s, past the bound). Fixed by keeping our pending
/// initiation while answering theirs.
#[test]
fn seed_5eed0003_simultaneous_initiations_after_heal() {
    let seed = 0x5eed_0003;
    let run = run(seed, Fault::Split);
    check_safety(seed, &run);
    check_liveness(seed, &run, heal_bound());
}
