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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use sim::world::{LinkConfig, NodeId, SimConfig, World};
use sim::{Env, Instant, UdpSocket};
use wireguard::ip::ipv4_packet;
use wireguard::timers::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};
use wireguard::{Device, DeviceConfig, DeviceHandle, IpNet, PeerConfig};
use zeroize::Zeroizing;

const PEER_COUNT: usize = 4;
const PORT: u16 = 51820;
const SEND_INTERVAL: Duration = Duration::from_millis(100);
const FAULTY_PHASE: Duration = Duration::from_secs(30);
const CUT_PHASE: Duration = Duration::from_secs(200);
const HEALED_PHASE: Duration = Duration::from_secs(20);

const _: () = assert!(CUT_PHASE.as_secs() > REJECT_AFTER_TIME.as_secs());

fn node_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index as u8))
}

fn tunnel_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, 1 + index as u8)
}

fn private_key(seed: u64, index: usize) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = index as u8;
    key[9] = 0x77;
    key
}

fn public_key(private: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes()
}

/// One delivered packet, as the receiving node saw it.
#[derive(Clone, Debug)]
struct Delivery {
    at: Instant,
    receiver: usize,
    peer: [u8; 32],
    packet: Vec<u8>,
}

/// Everything the nodes recorded.
#[derive(Default)]
struct History {
    sent: BTreeSet<(u8, u8, u8, u32)>,
    deliveries: Vec<Delivery>,
    drops: BTreeMap<(usize, &'static str), u64>,
}

fn device_config(seed: u64, index: usize) -> DeviceConfig {
    let peers = (0..PEER_COUNT)
        .filter(|other| *other != index)
        .map(|other| PeerConfig {
            public_key: public_key(private_key(seed, other)),
            preshared_key: None,
            allowed_ips: vec![IpNet::new(IpAddr::V4(tunnel_ip(other)), 32).expect("valid")],
            endpoint: Some(SocketAddr::new(node_ip(other), PORT)),
            persistent_keepalive: None,
        })
        .collect();
    DeviceConfig {
        private_key: Zeroizing::new(private_key(seed, index)),
        listen_port: PORT,
        peers,
        handshake_load_limit_per_sec: 50,
        mtu: 1420,
    }
}

/// A peer's life: start the device, send to every other peer every `SEND_INTERVAL`, record
/// what arrives.
async fn peer_main(env: sim::world::SimEnv, seed: u64, index: usize, history: Arc<Mutex<History>>) {
    let mut device = Device::start(env.clone(), device_config(seed, index)).await.expect("start");
    let mut sequence = 0u32;
    let mut next_send = env.now();
    loop {
        let wake = {
            let sleep = env.sleep_until(next_send).fuse();
            let received = device.recv().fuse();
            futures::pin_mut!(sleep, received);
            futures::select_biased! {
                received = received => Some(received.expect("device runs")),
                () = sleep => None,
            }
        };
        let Some(received) = wake else {
            next_send = env.now() + SEND_INTERVAL;
            send_round(&env, &mut device, index, sequence, &history).await;
            sequence += 1;
            continue;
        };
        history.lock().expect("lock").deliveries.push(Delivery {
            at: env.now(),
            receiver: index,
            peer: received.peer,
            packet: received.packet,
        });
    }
}

/// Sends packet `sequence` to every other peer and snapshots the drop counters.
async fn send_round(
    env: &sim::world::SimEnv,
    device: &mut DeviceHandle,
    index: usize,
    sequence: u32,
    history: &Mutex<History>,
) {
    for target in (0..PEER_COUNT).filter(|target| *target != index) {
        let generation = env.generation() as u8;
        let mut payload = vec![index as u8, target as u8, generation];
        payload.extend_from_slice(&sequence.to_le_bytes());
        payload.extend_from_slice(&env.now().as_nanos().to_le_bytes());
        let packet = ipv4_packet(tunnel_ip(index), tunnel_ip(target), &payload);
        let key = (index as u8, target as u8, generation, sequence);
        history.lock().expect("lock").sent.insert(key);
        device.send(packet).await.expect("device runs");
    }
    let mut history = history.lock().expect("lock");
    for (reason, count) in device.stats().drops {
        history.drops.insert((index, reason), count);
    }
}

/// A node that knows every member's public key but is nobody's peer: it handshakes under its
/// own key, spoofs member 0's tunnel address, and sends garbage.
async fn attacker_main(env: sim::world::SimEnv, seed: u64) {
    let mut config = device_config(seed, 0);
    config.private_key = Zeroizing::new(private_key(seed, 99));
    config.peers.push(PeerConfig {
        public_key: public_key(private_key(seed, 0)),
        preshared_key: None,
        allowed_ips: vec!["172.16.0.0/24".parse().expect("valid")],
        endpoint: Some(SocketAddr::new(node_ip(0), PORT)),
        persistent_keepalive: None,
    });
    config.listen_port = PORT + 1;
    let mut device = Device::start(env.clone(), config).await.expect("start");
    let socket = env.bind_udp(SocketAddr::new(node_ip(PEER_COUNT), 9)).await.expect("bind");
    let mut round = 0u8;
    loop {
        env.sleep(Duration::from_millis(500)).await;
        round = round.wrapping_add(1);
        for target in 1..PEER_COUNT {
            let spoofed = ipv4_packet(tunnel_ip(0), tunnel_ip(target), &[0xee, round]);
            device.send(spoofed).await.expect("device runs");
            let garbage = [[4, 0, 0, 0, round, 0, 0, 0].as_slice(), &[round; 40]].concat();
            let to = SocketAddr::new(node_ip(target), PORT);
            // A dropped datagram is fine: the attacker does not care.
            let _ = socket.send_to(&garbage, to).await;
        }
    }
}

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
    history: History,
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
    let history = Arc::new(Mutex::new(History::default()));
    let nodes: Vec<NodeId> = (0..PEER_COUNT)
        .map(|index| {
            let history = Arc::clone(&history);
            world.add_node_with(&format!("wg{index}"), node_ip(index), move |env| {
                peer_main(env, seed, index, Arc::clone(&history))
            })
        })
        .collect();
    world.add_node_with("attacker", node_ip(PEER_COUNT), move |env| attacker_main(env, seed));
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
    let keys: Vec<[u8; 32]> = (0..PEER_COUNT).map(|i| public_key(private_key(seed, i))).collect();
    let mut delivered = BTreeSet::new();
    for delivery in &run.history.deliveries {
        let packet = &delivery.packet;
        let sender = usize::from(packet[20]);
        let target = usize::from(packet[21]);
        let generation = packet[22];
        let sequence = u32::from_le_bytes(packet[23..27].try_into().expect("payload"));
        assert!(sender < PEER_COUNT, "seed {seed:#x}: foreign packet {packet:?}");
        assert_eq!(delivery.peer, keys[sender], "seed {seed:#x}: wrong authenticated peer");
        assert_eq!(target, delivery.receiver, "seed {seed:#x}: delivered to the wrong node");
        assert_eq!(packet[12..16], tunnel_ip(sender).octets(), "seed {seed:#x}: spoofed source");
        let key = (sender as u8, target as u8, generation, sequence);
        assert!(run.history.sent.contains(&key), "seed {seed:#x}: never sent {key:?}");
        assert!(delivered.insert(key), "seed {seed:#x}: delivered twice {key:?}");
    }
}

/// Every ordered pair delivers a packet sent after the heal within `bound` of the heal.
#[track_caller]
fn check_liveness(seed: u64, run: &Run, bound: Duration) {
    let mut first: BTreeMap<(usize, usize), Instant> = BTreeMap::new();
    for delivery in &run.history.deliveries {
        let sent_nanos = u64::from_le_bytes(delivery.packet[27..35].try_into().expect("payload"));
        if Instant::from_nanos(sent_nanos) < run.heal_at {
            continue;
        }
        let pair = (usize::from(delivery.packet[20]), delivery.receiver);
        first.entry(pair).or_insert(delivery.at);
    }
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
