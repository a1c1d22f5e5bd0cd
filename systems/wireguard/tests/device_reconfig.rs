//! Peers added, updated and removed while the sans-IO device (`DeviceCore`) runs, on a
//! hand-driven network of three devices and one key with no device (the phantom).
//!
//! Promises checked: an update keeps the peer's session unless its pre-shared key changed (then
//! a new handshake goes out at once); a removal touches no other peer's session; a removed
//! peer's late messages end at the device (`unknown_index`, `unknown_peer`) and never reach a
//! peer that took its place, because a freed index slot rests for `SLOT_REST`; networks move
//! to the latest claimant and back; limits and bad lists are typed errors that change nothing;
//! and a model test over random reconfigurations with traffic. The device's invariants are
//! checked after every step.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sim::Instant;
use wireguard::device::{Outbox, SLOT_REST};
use wireguard::ip::ipv4_packet;
use wireguard::timers::{REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};
use wireguard::{DeviceConfig, DeviceCore, Faults, IpNet, PeerChange, PeerConfig, PeersChanged};
use wireguard::{ReconfigureError, TunnelStats};
use zeroize::Zeroizing;

/// Devices on the network.
const NODE_COUNT: usize = 3;
/// The key of a node that has no device (its datagrams go nowhere).
const PHANTOM: usize = 3;
/// Datagrams one `pump` may carry before it is declared a loop.
const STEP_MAX: usize = 10_000;
/// The network two peers may claim at once.
const SHARED_NET: &str = "10.9.0.0/16";

fn addr(node: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + node as u8], 51820))
}

fn private(node: usize) -> [u8; 32] {
    [0x50 + node as u8; 32]
}

fn public(node: usize) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private(node))).to_bytes()
}

fn v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, node as u8, 1)
}

fn shared_addr() -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, 5)
}

fn net(text: &str) -> IpNet {
    text.parse().expect("valid network")
}

/// How `node` is configured as a peer: its own /24, and the shared /16 when `shared`.
fn peer(node: usize, shared: bool) -> PeerConfig {
    let mut allowed_ips = vec![net(&format!("10.0.{node}.0/24"))];
    if shared {
        allowed_ips.push(net(SHARED_NET));
    }
    PeerConfig {
        public_key: public(node),
        preshared_key: None,
        allowed_ips,
        endpoint: Some(addr(node)),
        persistent_keepalive: None,
    }
}

fn config(node: usize) -> DeviceConfig {
    DeviceConfig {
        private_key: Zeroizing::new(private(node)),
        listen_port: 51820,
        listen_addr: None,
        peers: (0..NODE_COUNT).filter(|other| *other != node).map(|o| peer(o, false)).collect(),
        handshake_load_limit_per_sec: 100,
        mtu: 1420,
    }
}

/// A delivery: at which node, from which key, what.
type Delivered = (usize, [u8; 32], Vec<u8>);

struct Net {
    devices: Vec<DeviceCore>,
    now: Instant,
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    delivered: Vec<Delivered>,
}

impl Net {
    fn new() -> Net {
        let devices = (0..NODE_COUNT)
            .map(|node| DeviceCore::new(&config(node), Duration::ZERO, [node as u8; 32]))
            .collect();
        Net { devices, now: Instant::from_nanos(1), wire: VecDeque::new(), delivered: Vec::new() }
    }

    /// Moves an outbox's effects onto the wire and into `delivered`, naming each sender by
    /// the key its slot holds right now (as the driver does).
    fn collect(&mut self, node: usize, outbox: &mut Outbox) {
        for (to, datagram) in outbox.sends() {
            self.wire.push_back((node, to, datagram.to_vec()));
        }
        for (slot, packet) in outbox.delivers() {
            let key = *self.devices[node].peer(slot).expect("a live sender").peer_public();
            self.delivered.push((node, key, packet.to_vec()));
        }
        outbox.clear();
        self.devices[node].check_invariants();
    }

    fn send(&mut self, node: usize, packet: &[u8]) {
        let mut outbox = Outbox::default();
        self.devices[node].send_packet(self.now, packet, &mut outbox);
        self.collect(node, &mut outbox);
    }

    fn pump(&mut self) {
        let mut outbox = Outbox::default();
        for _ in 0..STEP_MAX {
            let Some((from, to, mut datagram)) = self.wire.pop_front() else { return };
            let Some(target) = (0..NODE_COUNT).find(|node| addr(*node) == to) else { continue };
            self.devices[target].receive_datagram(self.now, addr(from), &mut datagram, &mut outbox);
            self.collect(target, &mut outbox);
        }
        panic!("pump did not settle");
    }

    /// Moves time on one second at a time, running timers and the network.
    fn advance(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now = (self.now + Duration::from_secs(1)).min(end);
            let mut outbox = Outbox::default();
            for node in 0..NODE_COUNT {
                self.devices[node].tick(self.now, &mut outbox);
                self.collect(node, &mut outbox);
            }
            self.pump();
        }
    }

    /// Runs `change` on `node`'s device at the current time and carries its effects.
    fn reconfigure<R>(
        &mut self,
        node: usize,
        change: impl FnOnce(&mut DeviceCore, Instant, &mut Outbox) -> R,
    ) -> R {
        let mut outbox = Outbox::default();
        let result = change(&mut self.devices[node], self.now, &mut outbox);
        self.collect(node, &mut outbox);
        result
    }

    fn upsert(&mut self, node: usize, config: PeerConfig) -> Result<PeerChange, ReconfigureError> {
        self.reconfigure(node, |device, now, outbox| device.upsert_peer(now, config, outbox))
    }

    fn remove(&mut self, node: usize, peer: usize) -> bool {
        self.reconfigure(node, |device, now, _| device.remove_peer(now, &public(peer)))
    }

    /// `at`'s counters for `peer`.
    fn stats(&self, at: usize, peer: usize) -> TunnelStats {
        let slot = self.devices[at].peer_slot(&public(peer)).expect("a peer");
        self.devices[at].peer(slot).expect("live").stats().clone()
    }

    fn drops(&self, node: usize, reason: &str) -> u64 {
        self.devices[node].drops().get(reason).copied().unwrap_or(0)
    }

    /// Sends `from -> to` and runs the network; returns the packet.
    fn exchange(&mut self, from: usize, to: usize, payload: &[u8]) -> Vec<u8> {
        let packet = ipv4_packet(v4(from), v4(to), payload);
        self.send(from, &packet);
        self.pump();
        packet
    }

    /// A mesh in which 0 has a session with 1 and with 2.
    fn established() -> Net {
        let mut net = Net::new();
        for other in 1..NODE_COUNT {
            let packet = net.exchange(0, other, b"hello");
            assert_eq!(net.delivered.last(), Some(&(other, public(0), packet)));
            let packet = net.exchange(other, 0, b"hello back");
            assert_eq!(net.delivered.last(), Some(&(0, public(other), packet)));
        }
        net.delivered.clear();
        net
    }
}

#[test]
fn an_update_keeps_the_session_and_moves_the_networks() {
    let mut net = Net::established();
    let (one_before, two_before) = (net.stats(0, 1), net.stats(0, 2));
    let mut update = peer(1, true);
    update.persistent_keepalive = Some(Duration::from_secs(25));
    assert_eq!(net.upsert(0, update.clone()), Ok(PeerChange::Updated));
    assert_eq!(net.upsert(0, update), Ok(PeerChange::Unchanged));
    let route = net.devices[0].route(IpAddr::V4(shared_addr()));
    assert_eq!(route, Some(&public(1)));
    // The new keepalive went out at once, over the session it kept.
    let one_after = net.stats(0, 1);
    assert_eq!(one_after.initiation_count, one_before.initiation_count);
    assert_eq!(one_after.handshake_count, one_before.handshake_count);
    assert_eq!(one_after.tx_packets, one_before.tx_packets + 1);
    assert_eq!(net.stats(0, 2), two_before);
    net.pump();
    let packet = ipv4_packet(v4(0), shared_addr(), b"to the shared network");
    net.send(0, &packet);
    net.pump();
    assert_eq!(net.delivered, vec![(1, public(0), packet)]);
    assert_eq!(net.stats(0, 1).initiation_count, one_before.initiation_count);
    assert_eq!(net.stats(1, 0).handshake_count, 1);
    let counts = net.devices[0].reconfigure_counts();
    assert_eq!((counts.added_count, counts.updated_count, counts.removed_count), (2, 1, 0));
}

#[test]
fn a_new_preshared_key_ends_the_session_and_handshakes_at_once() {
    let mut net = Net::established();
    // Past node 1's initiation flood guard (its last handshake was at this instant).
    net.now += Duration::from_secs(1);
    let before = net.stats(0, 1);
    let two_before = net.stats(0, 2);
    let mut with_psk = peer(1, false);
    with_psk.preshared_key = Some(Zeroizing::new([7; 32]));
    assert_eq!(net.upsert(0, with_psk.clone()), Ok(PeerChange::Updated));
    let slot = net.devices[0].peer_slot(&public(1)).expect("still a peer");
    let tunnel = net.devices[0].peer(slot).expect("live");
    assert!(!tunnel.is_established(net.now) && tunnel.is_handshake_pending());
    assert_eq!(net.stats(0, 1).initiation_count, before.initiation_count + 1);
    assert_eq!(net.devices[0].reconfigure_counts().psk_rehandshake_count, 1);
    // Node 1 still has no PSK: its response does not authenticate under ours.
    net.pump();
    assert_eq!(net.drops(0, "handshake_failed"), 1);
    // The map reaches node 1 too; the next retry gets through.
    let mut with_psk = peer(0, false);
    with_psk.preshared_key = Some(Zeroizing::new([7; 32]));
    assert_eq!(net.upsert(1, with_psk), Ok(PeerChange::Updated));
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let packet = net.exchange(0, 1, b"under the new key");
    assert_eq!(net.delivered.last(), Some(&(1, public(0), packet)));
    assert_eq!(net.stats(0, 2), two_before, "node 2 was not touched");
}

#[test]
fn a_removed_peer_is_gone_and_the_others_keep_their_sessions() {
    let mut net = Net::established();
    let two_before = net.stats(0, 2);
    assert!(net.remove(0, 1));
    assert!(!net.remove(0, 1));
    assert_eq!(net.devices[0].peer_count(), 1);
    assert_eq!(net.devices[0].route(IpAddr::V4(v4(1))), None);
    // Node 1 does not know: its data on the old session ends at node 0's empty slot.
    net.exchange(1, 0, b"late");
    assert_eq!(net.drops(0, "unknown_index"), 1);
    // Its next handshake names a key node 0 no longer has.
    net.advance(Duration::from_secs(20));
    assert!(net.drops(0, "unknown_peer") >= 1);
    net.send(0, &ipv4_packet(v4(0), v4(1), b"nowhere"));
    assert_eq!(net.drops(0, "tx_no_route"), 1);
    assert!(net.delivered.iter().all(|(at, _, _)| *at != 0));
    // Node 2's session with node 0 went on, with no new handshake on either side.
    let packet = net.exchange(2, 0, b"still here");
    assert_eq!(net.delivered.last(), Some(&(0, public(2), packet)));
    let two_after = net.stats(0, 2);
    assert_eq!(two_after.initiation_count, two_before.initiation_count);
    assert_eq!(two_after.handshake_count, two_before.handshake_count);
    assert_eq!(net.stats(2, 0).handshake_count, 1);
}

#[test]
fn a_removed_peers_staged_packets_are_counted() {
    let mut net = Net::new();
    // No session with node 1 yet: the packets wait for a handshake that never answers.
    for _ in 0..3 {
        net.send(0, &ipv4_packet(v4(0), v4(1), b"staged"));
    }
    net.wire.clear();
    assert!(net.remove(0, 1));
    assert_eq!(net.drops(0, "tx_staged_peer_removed"), 3);
    assert_eq!(net.devices[0].next_deadline(), None, "node 2 has no timers, node 1 is gone");
}

#[test]
fn a_freed_slot_rests_before_another_peer_takes_it() {
    let mut net = Net::established();
    let old_slot = net.devices[0].peer_slot(&public(1)).expect("a peer");
    assert!(net.remove(0, 1));
    assert_eq!(net.upsert(0, peer(PHANTOM, false)), Ok(PeerChange::Added));
    let phantom_slot = net.devices[0].peer_slot(&public(PHANTOM)).expect("added");
    assert_ne!(phantom_slot, old_slot);
    // Re-added at once, node 1 gets a fresh slot too: its old indices stay dead.
    assert_eq!(net.upsert(0, peer(1, false)), Ok(PeerChange::Added));
    let new_slot = net.devices[0].peer_slot(&public(1)).expect("added");
    assert!(new_slot != old_slot && new_slot != phantom_slot);
    net.exchange(1, 0, b"on the old session");
    assert_eq!(net.drops(0, "unknown_index"), 1);
    assert!(net.delivered.is_empty());
    // Once rested, the slot is taken again.
    net.advance(SLOT_REST);
    assert!(net.remove(0, PHANTOM));
    assert_eq!(net.upsert(0, peer(PHANTOM, false)), Ok(PeerChange::Added));
    assert_eq!(net.devices[0].peer_slot(&public(PHANTOM)), Some(old_slot));
    assert_eq!(net.devices[0].reconfigure_counts().slot_reused_early_count, 0);
}

#[test]
fn a_rekeyed_node_is_a_removal_and_an_addition_and_its_network_follows() {
    let mut net = Net::established();
    let two_before = net.stats(0, 2);
    let mut rekeyed = peer(PHANTOM, false);
    rekeyed.allowed_ips = peer(1, false).allowed_ips;
    let list = vec![peer(2, false), rekeyed];
    let changed = net.reconfigure(0, |device, now, outbox| device.set_peers(now, list, outbox));
    let expected = PeersChanged {
        added_count: 1,
        unchanged_count: 1,
        removed_count: 1,
        ..PeersChanged::default()
    };
    assert_eq!(changed, Ok(expected));
    assert_eq!(net.devices[0].route(IpAddr::V4(v4(1))), Some(&public(PHANTOM)));
    assert_eq!(net.devices[0].peer_slot(&public(1)), None);
    assert_eq!(net.stats(0, 2), two_before);
}

#[test]
fn a_network_returns_to_its_earlier_claimant_when_the_later_one_leaves() {
    let mut net = Net::new();
    let shared = IpAddr::V4(shared_addr());
    assert_eq!(net.upsert(0, peer(1, true)), Ok(PeerChange::Updated));
    assert_eq!(net.upsert(0, peer(2, true)), Ok(PeerChange::Updated));
    assert_eq!(net.devices[0].route(shared), Some(&public(2)));
    assert!(net.remove(0, 2));
    assert_eq!(net.devices[0].route(shared), Some(&public(1)));
    assert_eq!(net.upsert(0, peer(1, false)), Ok(PeerChange::Updated));
    assert_eq!(net.devices[0].route(shared), None);
    assert_eq!(net.devices[0].route(IpAddr::V4(v4(1))), Some(&public(1)));
}

#[test]
fn limits_and_bad_lists_are_typed_errors_that_change_nothing() {
    let mut net = Net::established();
    net.devices[0].set_peer_count_max(2);
    let (one, two) = (net.stats(0, 1), net.stats(0, 2));
    let full = ReconfigureError::PeerLimit { peer_count_max: 2 };
    assert_eq!(net.upsert(0, peer(PHANTOM, false)), Err(full));
    assert_eq!(net.upsert(0, peer(0, false)), Err(ReconfigureError::LocalKey));
    let lists = [
        (
            vec![peer(1, true), peer(1, false)],
            ReconfigureError::DuplicatePeer { public_key: public(1) },
        ),
        (vec![peer(1, true), peer(0, false)], ReconfigureError::LocalKey),
        (vec![peer(1, true), peer(2, true), peer(PHANTOM, false)], full),
    ];
    for (list, expected) in lists {
        let result = net.reconfigure(0, |device, now, outbox| device.set_peers(now, list, outbox));
        assert_eq!(result.err(), Some(expected));
        assert_eq!(net.devices[0].peer_count(), 2);
        assert_eq!(net.devices[0].route(IpAddr::V4(shared_addr())), None);
        assert_eq!((net.stats(0, 1), net.stats(0, 2)), (one.clone(), two.clone()));
    }
    // Swapping one peer for another fits within the limit.
    let list = vec![peer(1, false), peer(PHANTOM, false)];
    let result = net.reconfigure(0, |device, now, outbox| device.set_peers(now, list, outbox));
    assert_eq!(result.map(|changed| changed.added_count), Ok(1));
    assert_eq!(ReconfigureError::LocalKey.to_string(), "a peer has the device's own public key");
}

#[test]
fn buggify_a_reconfiguration_lands_mid_handshake_and_the_session_recovers() {
    let mut net = Net::new();
    let hook: wireguard::faults::BuggifyHook =
        Arc::new(|site| site == "wireguard.device.reconfig_mid_handshake");
    // Faults go in before traffic.
    net.devices[0].set_faults(&Faults::with_hook(hook));
    let packet = net.exchange(0, 1, b"first");
    assert_eq!(net.delivered.last(), Some(&(1, public(0), packet)));
    let (one, two) = (net.stats(0, 1), net.stats(0, 2));
    net.now += REKEY_TIMEOUT * 2;
    assert_eq!(net.upsert(0, peer(1, true)), Ok(PeerChange::Updated));
    assert_eq!(net.stats(0, 1).initiation_count, one.initiation_count + 1);
    assert_eq!(net.stats(0, 2), two, "only the updated peer handshakes");
    net.pump();
    let packet = ipv4_packet(v4(0), shared_addr(), b"after the race");
    net.send(0, &packet);
    net.pump();
    assert_eq!(net.delivered.last(), Some(&(1, public(0), packet)));
    assert_eq!(net.stats(0, 1).handshake_count, one.handshake_count + 1);
}

/// One step of the model test. Reconfigurations happen at node 0; nodes 1 and 2 keep node 0
/// and each other as peers throughout.
#[derive(Clone, Debug)]
enum Op {
    Upsert { peer: usize, shared: bool },
    Remove { peer: usize },
    SetPeers { present: [bool; 3], shared: [bool; 3] },
    Send { from: usize, to: usize, to_shared: bool },
    Advance { seconds: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 1..=PHANTOM;
    prop_oneof![
        1 => (peer.clone(), any::<bool>()).prop_map(|(peer, shared)| Op::Upsert { peer, shared }),
        1 => peer.prop_map(|peer| Op::Remove { peer }),
        1 => (any::<[bool; 3]>(), any::<[bool; 3]>())
            .prop_map(|(present, shared)| Op::SetPeers { present, shared }),
        3 => (0..NODE_COUNT, 0..NODE_COUNT, any::<bool>())
            .prop_map(|(from, to, to_shared)| Op::Send { from, to, to_shared }),
        1 => (1u64..20).prop_map(|seconds| Op::Advance { seconds }),
    ]
}

/// Node 0's peers in the model: whether each claims the shared network, and when it
/// (re)claimed its networks.
#[derive(Default)]
struct Model {
    peers: BTreeMap<usize, (bool, u64)>,
    claim_seq: u64,
}

impl Model {
    fn upsert(&mut self, peer: usize, shared: bool) -> bool {
        let touched = self.peers.get(&peer).is_none_or(|(had, _)| *had != shared);
        if touched {
            self.claim_seq += 1;
            self.peers.insert(peer, (shared, self.claim_seq));
        }
        touched
    }

    fn shared_owner(&self) -> Option<usize> {
        let claimants = self.peers.iter().filter(|(_, (shared, _))| *shared);
        claimants.max_by_key(|(_, (_, seq))| *seq).map(|(peer, _)| *peer)
    }

    /// Where node 0's packet to `destination` should arrive.
    fn target(&self, destination: Ipv4Addr) -> Option<usize> {
        if destination == shared_addr() {
            return self.shared_owner();
        }
        (1..=PHANTOM).find(|peer| v4(*peer) == destination && self.peers.contains_key(peer))
    }
}

/// Applies a reconfiguration to device and model; returns the peers it touched.
fn reconfigure(net: &mut Net, model: &mut Model, op: &Op) -> Vec<usize> {
    match *op {
        Op::Upsert { peer: node, shared } => {
            let touched = model.upsert(node, shared);
            let change = net.upsert(0, peer(node, shared)).expect("below the limit");
            assert_eq!(change == PeerChange::Unchanged, !touched);
            if touched { vec![node] } else { vec![] }
        }
        Op::Remove { peer } => {
            assert_eq!(net.remove(0, peer), model.peers.remove(&peer).is_some());
            vec![peer]
        }
        Op::SetPeers { present, shared } => {
            let mut touched = Vec::new();
            let mut list = Vec::new();
            for node in 1..=PHANTOM {
                if !present[node - 1] {
                    touched.extend(model.peers.remove(&node).map(|_| node));
                    continue;
                }
                if model.upsert(node, shared[node - 1]) {
                    touched.push(node);
                }
                list.push(peer(node, shared[node - 1]));
            }
            let result =
                net.reconfigure(0, |device, now, outbox| device.set_peers(now, list, outbox));
            assert!(result.is_ok());
            touched
        }
        Op::Send { .. } | Op::Advance { .. } => vec![],
    }
}

/// What node 0 knows of each peer: its slot and counters.
fn snapshot(net: &Net) -> BTreeMap<[u8; 32], (usize, TunnelStats, Vec<u32>)> {
    let device = &net.devices[0];
    let peers = device.peers().map(|(slot, tunnel)| {
        (*tunnel.peer_public(), (slot, tunnel.stats().clone(), tunnel.local_indices().collect()))
    });
    peers.collect()
}

/// Every delivery since `from` was authentic at the time and is the only copy.
fn check_deliveries(net: &Net, model: &Model, from: usize, sent: &BTreeMap<u32, (usize, usize)>) {
    for (at, key, packet) in &net.delivered[from..] {
        let id = u32::from_le_bytes(packet[20..24].try_into().expect("an id"));
        let (sender, _) = sent[&id];
        assert_eq!(*key, public(sender), "delivered at {at} under the wrong key");
        if *at == 0 {
            assert!(model.peers.contains_key(&sender), "a removed peer's packet got through");
        }
        let copies = net.delivered.iter().filter(|(_, _, other)| other == packet).count();
        assert_eq!(copies, 1, "packet {id} delivered twice");
    }
}

/// Sends one packet; node 0's packets to a live peer arrive within a few retries.
fn send(net: &mut Net, model: &Model, sent: &mut BTreeMap<u32, (usize, usize)>, op: &Op) {
    let Op::Send { from, to, to_shared } = *op else { return };
    let destination = if from == 0 && to_shared { shared_addr() } else { v4(to) };
    let id = sent.len() as u32;
    sent.insert(id, (from, to));
    let packet = ipv4_packet(v4(from), destination, &id.to_le_bytes());
    let expected = if from == 0 { model.target(destination) } else { None };
    let start = net.delivered.len();
    net.send(from, &packet);
    net.pump();
    let arrived = |net: &Net| net.delivered[start..].iter().any(|(_, _, p)| *p == packet);
    for _ in 0..30 {
        if arrived(net) || expected.is_none_or(|peer| peer == PHANTOM) {
            break;
        }
        net.advance(Duration::from_secs(1));
    }
    let at = net.delivered[start..].iter().find(|(_, _, p)| *p == packet).map(|(at, _, _)| *at);
    if from == 0 {
        assert_eq!(at, expected.filter(|peer| *peer != PHANTOM), "packet {id} to {destination}");
    } else if to != 0 && to != from {
        assert_eq!(at, Some(to), "untouched pair {from} -> {to}");
    }
}

fn run_model(ops: &[Op], buggify: bool) {
    let mut net = Net::new();
    if buggify {
        let hook: wireguard::faults::BuggifyHook =
            Arc::new(|site| site == "wireguard.device.reconfig_mid_handshake");
        net.devices[0].set_faults(&Faults::with_hook(hook));
    }
    let mut model = Model::default();
    for node in 1..NODE_COUNT {
        model.upsert(node, false);
    }
    let mut sent = BTreeMap::new();
    for op in ops {
        let before = snapshot(&net);
        let delivered_before = net.delivered.len();
        let touched = reconfigure(&mut net, &mut model, op);
        // Peers the step did not touch kept everything: slot, indices, counters.
        let after = snapshot(&net);
        for (key, state) in &before {
            let node = (1..=PHANTOM).find(|node| public(*node) == *key).expect("a known key");
            if !touched.contains(&node) {
                assert_eq!(after.get(key), Some(state), "{op:?} touched peer {node}");
            }
        }
        send(&mut net, &model, &mut sent, op);
        if let Op::Advance { seconds } = op {
            net.advance(Duration::from_secs(*seconds));
        }
        net.pump();
        check_deliveries(&net, &model, delivered_before, &sent);
        for peer in 1..=PHANTOM {
            let routed = net.devices[0].route(IpAddr::V4(v4(peer)));
            assert_eq!(routed.is_some(), model.peers.contains_key(&peer));
        }
        let shared = net.devices[0].route(IpAddr::V4(shared_addr())).copied();
        assert_eq!(shared, model.shared_owner().map(public));
        for device in &net.devices {
            device.check_invariants();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_random_reconfigurations_with_traffic(
        ops in prop::collection::vec(op(), 1..24),
        buggify in any::<bool>(),
    ) {
        run_model(&ops, buggify);
    }
}
