//! A test mesh: WireGuard devices in a full mesh that send numbered packets to each other, an
//! attacker, and the checks over what they recorded.
//!
//! It is shared by this crate's simulation test (`tests/sim_mesh.rs`) and the harness's
//! `wireguard-mesh` scenario; it lives here because systems never depend on the harness.
//! Every peer sends one IPv4 packet to every other peer each `SEND_INTERVAL`, whose payload is
//! `| sender u8 | target u8 | generation u8 | sequence u32 LE | sent_nanos u64 LE |`; the
//! attacker is nobody's peer: it handshakes under its own key, spoofs member 0's tunnel address
//! and sends garbage. Keys derive from the seed, so a run is a function of the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use sim::{Env, Instant, UdpSocket};
use zeroize::Zeroizing;

use crate::ip::ipv4_packet;
use crate::{Device, DeviceConfig, DeviceHandle, IpNet, PeerConfig, PlantedBug};

/// The UDP port every mesh device listens on.
pub const PORT: u16 = 51820;
/// How often a peer sends to every other peer.
pub const SEND_INTERVAL: Duration = Duration::from_millis(100);
const IPV4_HEADER_BYTES: usize = 20;
const PAYLOAD_BYTES: usize = 3 + 4 + 8;

/// The node address of peer `index` (the attacker is `index == peer_count`).
pub fn node_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + index as u8))
}

/// The tunnel address of peer `index`.
pub fn tunnel_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, 1 + index as u8)
}

/// Peer `index`'s private key for the run seeded with `seed`.
pub fn private_key(seed: u64, index: usize) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = index as u8;
    key[9] = 0x77;
    key
}

/// The public key of `private`.
pub fn public_key(private: [u8; 32]) -> [u8; 32] {
    crate::crypto::public_key(&x25519_dalek::StaticSecret::from(private))
}

/// One delivered packet, as the receiving peer saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When it was delivered.
    pub at: Instant,
    /// The receiving peer.
    pub receiver: usize,
    /// The public key that authenticated it.
    pub peer: [u8; 32],
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// Everything the peers recorded.
#[derive(Debug, Default)]
pub struct MeshHistory {
    /// (sender, target, generation, sequence) of every packet handed to a device.
    pub sent: BTreeSet<(u8, u8, u8, u32)>,
    /// Every delivery.
    pub deliveries: Vec<Delivery>,
    /// Drop counters per (peer, reason), as last read.
    pub drops: BTreeMap<(usize, &'static str), u64>,
}

/// The fields of a mesh payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Sending peer.
    pub sender: usize,
    /// Target peer.
    pub target: usize,
    /// The sender's incarnation (restart count), truncated.
    pub generation: u8,
    /// The sender's sequence number.
    pub sequence: u32,
    /// When it was sent, in simulated nanoseconds.
    pub sent_nanos: u64,
}

impl Payload {
    /// Parses the payload of a delivered packet; `None` if it is not a mesh packet.
    pub fn parse(packet: &[u8]) -> Option<Payload> {
        let payload = packet.get(IPV4_HEADER_BYTES..IPV4_HEADER_BYTES + PAYLOAD_BYTES)?;
        Some(Payload {
            sender: usize::from(payload[0]),
            target: usize::from(payload[1]),
            generation: payload[2],
            sequence: u32::from_le_bytes(payload[3..7].try_into().ok()?),
            sent_nanos: u64::from_le_bytes(payload[7..15].try_into().ok()?),
        })
    }

    fn id(&self) -> (u8, u8, u8, u32) {
        (self.sender as u8, self.target as u8, self.generation, self.sequence)
    }
}

/// Peer `index`'s device configuration: every other peer, with its tunnel address.
pub fn device_config(seed: u64, index: usize, peer_count: usize) -> DeviceConfig {
    let peers = (0..peer_count)
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
        listen_addr: None,
        peers,
        handshake_load_limit_per_sec: 50,
        mtu: 1420,
    }
}

/// A peer's life: start the device, send to every other peer each interval, record arrivals.
/// `generation` tells this incarnation's packets from an earlier one's.
pub async fn peer_main<E: Env>(
    env: E,
    seed: u64,
    index: usize,
    peer_count: usize,
    generation: u8,
    history: Arc<Mutex<MeshHistory>>,
) {
    peer_main_planted(env, seed, index, peer_count, generation, history, None).await;
}

/// As `peer_main`, with `bug` planted in the device (inert without feature `planted-bugs`).
pub async fn peer_main_planted<E: Env>(
    env: E,
    seed: u64,
    index: usize,
    peer_count: usize,
    generation: u8,
    history: Arc<Mutex<MeshHistory>>,
    bug: Option<PlantedBug>,
) {
    let config = device_config(seed, index, peer_count);
    let Ok(mut device) = Device::start_planted(env.clone(), config, bug).await else { return };
    let mut sequence = 0u32;
    let mut next_send = env.now();
    loop {
        let wake = {
            let sleep = env.sleep_until(next_send).fuse();
            let received = device.recv().fuse();
            futures::pin_mut!(sleep, received);
            futures::select_biased! {
                received = received => Some(received),
                () = sleep => None,
            }
        };
        match wake {
            Some(None) => return,
            Some(Some(received)) => lock(&history).deliveries.push(Delivery {
                at: env.now(),
                receiver: index,
                peer: received.peer,
                packet: received.packet,
            }),
            None => {
                next_send = env.now() + SEND_INTERVAL;
                let round = Round { index, peer_count, generation, sequence };
                send_round(&env, &mut device, round, &history).await;
                sequence += 1;
            }
        }
    }
}

fn lock(history: &Mutex<MeshHistory>) -> std::sync::MutexGuard<'_, MeshHistory> {
    history.lock().unwrap_or_else(|poison| poison.into_inner())
}

struct Round {
    index: usize,
    peer_count: usize,
    generation: u8,
    sequence: u32,
}

async fn send_round<E: Env>(
    env: &E,
    device: &mut DeviceHandle,
    round: Round,
    history: &Mutex<MeshHistory>,
) {
    let Round { index, peer_count, generation, sequence } = round;
    for target in (0..peer_count).filter(|target| *target != index) {
        let mut payload = vec![index as u8, target as u8, generation];
        payload.extend_from_slice(&sequence.to_le_bytes());
        payload.extend_from_slice(&env.now().as_nanos().to_le_bytes());
        let packet = ipv4_packet(tunnel_ip(index), tunnel_ip(target), &payload);
        lock(history).sent.insert((index as u8, target as u8, generation, sequence));
        if device.send(packet).await.is_err() {
            return;
        }
    }
    let mut history = lock(history);
    for (reason, count) in device.stats().drops {
        history.drops.insert((index, reason), count);
    }
}

/// Knows every member's public key but is nobody's peer: handshakes under its own key, spoofs
/// member 0's tunnel address, sends garbage, every 500 ms.
pub async fn attacker_main<E: Env>(env: E, seed: u64, peer_count: usize) {
    let mut config = device_config(seed, 0, peer_count);
    config.private_key = Zeroizing::new(private_key(seed, 99));
    config.peers.push(PeerConfig {
        public_key: public_key(private_key(seed, 0)),
        preshared_key: None,
        allowed_ips: vec!["172.16.0.0/24".parse().expect("valid")],
        endpoint: Some(SocketAddr::new(node_ip(0), PORT)),
        persistent_keepalive: None,
    });
    config.listen_port = PORT + 1;
    let Ok(mut device) = Device::start(env.clone(), config).await else { return };
    let Ok(socket) = env.bind_udp(SocketAddr::new(node_ip(peer_count), 9)).await else { return };
    let mut round = 0u8;
    loop {
        env.sleep(Duration::from_millis(500)).await;
        round = round.wrapping_add(1);
        for target in 1..peer_count {
            let spoofed = ipv4_packet(tunnel_ip(0), tunnel_ip(target), &[0xee, round]);
            if device.send(spoofed).await.is_err() {
                return;
            }
            let garbage = [[4, 0, 0, 0, round, 0, 0, 0].as_slice(), &[round; 40]].concat();
            // A lost datagram is fine: the attacker does not care.
            let _ = socket.send_to(&garbage, SocketAddr::new(node_ip(target), PORT)).await;
        }
    }
}

/// Which mesh invariant a delivery broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshViolation {
    /// Not sent by the peer whose key authenticated it, to this receiver, from its address.
    Authenticity(String),
    /// Delivered a second time.
    Duplicate(String),
}

/// Authenticity and no duplicates over a whole history.
pub fn check_deliveries(
    history: &MeshHistory,
    seed: u64,
    peer_count: usize,
) -> Result<(), MeshViolation> {
    let keys: Vec<[u8; 32]> = (0..peer_count).map(|i| public_key(private_key(seed, i))).collect();
    let mut delivered = BTreeSet::new();
    for delivery in &history.deliveries {
        let at = delivery.at;
        let fail = |message: String| MeshViolation::Authenticity(format!("at {at}: {message}"));
        let packet = &delivery.packet;
        let Some(payload) = Payload::parse(packet) else {
            return Err(fail(format!("peer {} got a foreign packet", delivery.receiver)));
        };
        if payload.sender >= peer_count || delivery.peer != keys[payload.sender] {
            return Err(fail(format!("packet of {} authenticated as another", payload.sender)));
        }
        if payload.target != delivery.receiver {
            let message =
                format!("packet for {} delivered to {}", payload.target, delivery.receiver);
            return Err(fail(message));
        }
        if packet[12..16] != tunnel_ip(payload.sender).octets() {
            return Err(fail(format!("spoofed source {:?} delivered", &packet[12..16])));
        }
        if !history.sent.contains(&payload.id()) {
            return Err(fail(format!("delivered {:?}, never sent", payload.id())));
        }
        if !delivered.insert(payload.id()) {
            let message = format!("at {at}: delivered {:?} twice", payload.id());
            return Err(MeshViolation::Duplicate(message));
        }
    }
    Ok(())
}

/// Per ordered pair (sender, receiver), when the first packet sent at or after `heal` arrived.
pub fn first_deliveries_after(
    history: &MeshHistory,
    heal: Instant,
) -> BTreeMap<(usize, usize), Instant> {
    let mut first = BTreeMap::new();
    for delivery in &history.deliveries {
        let Some(payload) = Payload::parse(&delivery.packet) else { continue };
        if Instant::from_nanos(payload.sent_nanos) >= heal {
            first.entry((payload.sender, delivery.receiver)).or_insert(delivery.at);
        }
    }
    first
}
