//! `wireguard-mesh`: WireGuard devices in a full mesh under a hostile network.
//!
//! Every peer sends a numbered IP packet to every other peer each `SEND_INTERVAL` through its
//! `wireguard::Device` over simulated UDP. An attacker node that is nobody's peer handshakes
//! under its own key, spoofs a member's tunnel address and sends garbage. The nemesis splits,
//! cuts one direction, crashes, pauses and clogs peers, raises loss, duplication and
//! reordering, and jumps wall clocks (TAI64N timestamps come from them).
//!
//! Safety (whole run): every delivered packet was sent by the peer whose key authenticated it,
//! to the node that received it, from that peer's tunnel address (authenticity), and no packet
//! is delivered twice. Liveness (healed phase): every ordered pair of peers delivers a packet
//! sent after the heal within `REKEY_TIMEOUT` + jitter + 1 s + `KEEPALIVE_TIMEOUT` (the time a
//! peer needs to notice that a crashed peer's old session is dead).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use invariants::Violation;
use sim::world::{SimConfig, SimEnv, SimError, World};
use sim::{Env, Instant, UdpSocket};
use wireguard::ip::ipv4_packet;
use wireguard::timers::{KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};
use wireguard::{Device, DeviceConfig, DeviceHandle, IpNet, PeerConfig};
use zeroize::Zeroizing;

use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const PORT: u16 = 51820;
const SEND_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of our payload inside the IPv4 packet: sender, target, generation, sequence, sent-at.
const PAYLOAD_BYTES: usize = 3 + 4 + 8;
const IPV4_HEADER_BYTES: usize = 20;

const FAULTS: &[FaultClass] = &[
    FaultClass::Split,
    FaultClass::Oneway,
    FaultClass::Crash,
    FaultClass::Pause,
    FaultClass::Clog,
    FaultClass::LinkSpike,
    FaultClass::ClockJump,
];

fn liveness_bound() -> Duration {
    REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_secs(1) + KEEPALIVE_TIMEOUT
}

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
    wireguard::crypto::public_key(&x25519_dalek::StaticSecret::from(private))
}

/// One delivered packet, as the receiving node saw it.
#[derive(Clone, Debug)]
struct Delivery {
    at: Instant,
    receiver: usize,
    peer: [u8; 32],
    packet: Vec<u8>,
}

/// Everything the peers recorded.
#[derive(Default)]
struct MeshHistory {
    sent: BTreeSet<(u8, u8, u8, u32)>,
    deliveries: Vec<Delivery>,
    drops: BTreeMap<(usize, &'static str), u64>,
}

type Shared = Arc<Mutex<MeshHistory>>;

fn device_config(seed: u64, index: usize, peer_count: usize) -> DeviceConfig {
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
        peers,
        handshake_load_limit_per_sec: 50,
        mtu: 1420,
    }
}

/// A peer's life: start the device, send to every other peer each interval, record arrivals.
async fn peer_main(env: SimEnv, seed: u64, index: usize, peer_count: usize, history: Shared) {
    let config = device_config(seed, index, peer_count);
    let Ok(mut device) = Device::start(env.clone(), config).await else { return };
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
            Some(Some(received)) => history.lock().expect("lock").deliveries.push(Delivery {
                at: env.now(),
                receiver: index,
                peer: received.peer,
                packet: received.packet,
            }),
            None => {
                next_send = env.now() + SEND_INTERVAL;
                send_round(&env, &mut device, index, peer_count, sequence, &history).await;
                sequence += 1;
            }
        }
    }
}

async fn send_round(
    env: &SimEnv,
    device: &mut DeviceHandle,
    index: usize,
    peer_count: usize,
    sequence: u32,
    history: &Mutex<MeshHistory>,
) {
    for target in (0..peer_count).filter(|target| *target != index) {
        let generation = env.generation() as u8;
        let mut payload = vec![index as u8, target as u8, generation];
        payload.extend_from_slice(&sequence.to_le_bytes());
        payload.extend_from_slice(&env.now().as_nanos().to_le_bytes());
        let packet = ipv4_packet(tunnel_ip(index), tunnel_ip(target), &payload);
        history.lock().expect("lock").sent.insert((
            index as u8,
            target as u8,
            generation,
            sequence,
        ));
        if device.send(packet).await.is_err() {
            return;
        }
    }
    let mut history = history.lock().expect("lock");
    for (reason, count) in device.stats().drops {
        history.drops.insert((index, reason), count);
    }
}

/// Knows every member's public key but is nobody's peer: handshakes under its own key, spoofs
/// member 0's tunnel address, sends garbage.
async fn attacker_main(env: SimEnv, seed: u64, peer_count: usize) {
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

/// The `wireguard-mesh` scenario.
#[derive(Clone, Copy, Debug)]
pub struct WireguardMesh;

impl Scenario for WireguardMesh {
    fn name(&self) -> &'static str {
        "wireguard-mesh"
    }

    fn summary(&self) -> &'static str {
        "3-6 WireGuard peers in a full mesh plus an attacker: splits, one-way cuts, crashes, \
         pauses, clogs, loss/duplication/reordering spikes, clock jumps"
    }

    fn checks(&self) -> &'static [&'static str] {
        &["authenticity", "no-duplicates", "liveness"]
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::new(3, 6),
            client_count: Span::exactly(1),
            key_count: Span::exactly(0),
            faulty_ms: Span::new(20_000, 240_000),
            healed_ms: 30_000,
            liveness_bound_ms: liveness_bound().as_millis() as u64,
            fault_count: Span::new(1, 8),
            fault_classes: FAULTS,
            link_loss_percent_max: 5,
            think_ms: Span::exactly(0),
            read_percent: Span::exactly(0),
        }
    }

    fn configure(&self, config: &mut SimConfig, _: &Swarm) {
        // A device that spins at one instant is a bug: fail fast, not after ten million polls.
        config.polls_per_instant_max = 100_000;
        // Skewed, drifting wall clocks: TAI64N timestamps come from them.
        config.clock_offset_max = Duration::from_secs(30);
        config.clock_drift_ppm_max = 200;
    }

    fn topology(&self, swarm: &Swarm) -> Topology {
        Topology {
            servers: (1..=swarm.node_count).map(|i| format!("wg{i}")).collect(),
            clients: vec!["attacker".to_string()],
        }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let seed = world.seed();
        let peer_count = swarm.node_count as usize;
        let history: Shared = Arc::default();
        for index in 0..peer_count {
            let history = Arc::clone(&history);
            world.add_node_with(&format!("wg{}", index + 1), node_ip(index), move |env| {
                peer_main(env, seed, index, peer_count, Arc::clone(&history))
            });
        }
        world.add_node_with("attacker", node_ip(peer_count), move |env| {
            attacker_main(env, seed, peer_count)
        });
        Box::new(MeshRun { seed, peer_count, history })
    }
}

struct MeshRun {
    seed: u64,
    peer_count: usize,
    history: Shared,
}

/// The fields of our payload in a delivered packet, if it is one of ours.
fn parse_payload(packet: &[u8]) -> Option<(usize, usize, u8, u32, u64)> {
    let payload = packet.get(IPV4_HEADER_BYTES..IPV4_HEADER_BYTES + PAYLOAD_BYTES)?;
    let sequence = u32::from_le_bytes(payload[3..7].try_into().ok()?);
    let sent_nanos = u64::from_le_bytes(payload[7..15].try_into().ok()?);
    Some((usize::from(payload[0]), usize::from(payload[1]), payload[2], sequence, sent_nanos))
}

impl MeshRun {
    fn check_delivery(
        &self,
        delivery: &Delivery,
        keys: &[[u8; 32]],
        sent: &BTreeSet<(u8, u8, u8, u32)>,
        delivered: &mut BTreeSet<(u8, u8, u8, u32)>,
    ) -> Result<(), String> {
        let packet = &delivery.packet;
        let Some((sender, target, generation, sequence, _)) = parse_payload(packet) else {
            return Err(format!("node {} got a foreign packet {packet:?}", delivery.receiver));
        };
        if sender >= self.peer_count || delivery.peer != keys[sender] {
            return Err(format!("packet from {sender} authenticated as another peer"));
        }
        if target != delivery.receiver {
            return Err(format!("packet for {target} delivered to {}", delivery.receiver));
        }
        if packet[12..16] != tunnel_ip(sender).octets() {
            return Err(format!("spoofed source {:?} delivered", &packet[12..16]));
        }
        let key = (sender as u8, target as u8, generation, sequence);
        if !sent.contains(&key) {
            return Err(format!("delivered {key:?}, never sent"));
        }
        if !delivered.insert(key) {
            return Err(format!("delivered {key:?} twice"));
        }
        Ok(())
    }
}

impl Workload for MeshRun {
    fn finish(&mut self, _: &World) -> Result<(), SimError> {
        Ok(())
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let keys: Vec<[u8; 32]> =
            (0..self.peer_count).map(|i| public_key(private_key(self.seed, i))).collect();
        let history = self.history.lock().expect("lock");
        let mut delivered = BTreeSet::new();
        for delivery in &history.deliveries {
            self.check_delivery(delivery, &keys, &history.sent, &mut delivered).map_err(
                |message| {
                    let name =
                        if message.contains("twice") { "no-duplicates" } else { "authenticity" };
                    Violation::new(name, format!("at {}: {message}", delivery.at))
                },
            )?;
        }
        Ok(())
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let history = self.history.lock().expect("lock");
        let mut first: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for delivery in &history.deliveries {
            let Some((sender, _, _, _, sent_nanos)) = parse_payload(&delivery.packet) else {
                continue;
            };
            if sent_nanos >= healed_nanos {
                first.entry((sender, delivery.receiver)).or_insert(delivery.at.as_nanos());
            }
        }
        for sender in 0..self.peer_count {
            for receiver in (0..self.peer_count).filter(|receiver| *receiver != sender) {
                let progress: Vec<u64> =
                    first.get(&(sender, receiver)).copied().into_iter().collect();
                invariants::liveness::check_progress_after_heal(
                    healed_nanos,
                    &progress,
                    bound_nanos,
                )
                .map_err(|violation| {
                    let message =
                        format!("wg{} -> wg{}: {}", sender + 1, receiver + 1, violation.message);
                    Violation::new(violation.invariant, message)
                })?;
            }
        }
        Ok(())
    }

    fn history(&self) -> serde_json::Value {
        let history = self.history.lock().expect("lock");
        let drops: BTreeMap<String, u64> = history
            .drops
            .iter()
            .map(|((node, reason), count)| (format!("wg{} {reason}", node + 1), *count))
            .collect();
        serde_json::json!({
            "sent": history.sent.len(),
            "delivered": history.deliveries.len(),
            "drops": drops,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = self.history.lock().expect("lock");
        (history.sent.len() as u64, history.deliveries.len() as u64)
    }
}
