//! The sans-IO device (`DeviceCore`) with three peers on a hand-driven network: cryptokey
//! routing by longest prefix for IPv4 and IPv6, the source-address check on receive, unknown
//! initiators, and the device-wide cookie defence under load.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sim::Instant;
use wireguard::device::{DeviceCore, Outbox};
use wireguard::ip::{ipv4_packet, ipv6_packet};
use wireguard::{DeviceConfig, DropOrigin, IpNet, PeerConfig};
use zeroize::Zeroizing;

const NODE_COUNT: usize = 3;
const STEP_MAX: usize = 10_000;

fn addr(node: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + node as u8], 51820))
}

fn private(node: usize) -> [u8; 32] {
    [0x40 + node as u8; 32]
}

fn public(private: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes()
}

fn v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, node as u8, 1)
}

fn v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, node as u16, 0, 0, 0, 0, 0, 1)
}

fn net(text: &str) -> IpNet {
    text.parse().expect("valid network")
}

/// Node `node`'s view: every other node owns `10.0.N.0/24` and `fd00:N::/32`; node 0 also
/// routes the /16 around node 2's /24 to node 1 (the longer prefix must win).
fn config(node: usize, load_limit: u32) -> DeviceConfig {
    let peers = (0..NODE_COUNT)
        .filter(|other| *other != node)
        .map(|other| {
            let mut allowed_ips =
                vec![net(&format!("10.0.{other}.0/24")), net(&format!("fd00:{other}::/32"))];
            if node == 0 && other == 1 {
                allowed_ips.push(net("10.0.0.0/16"));
            }
            PeerConfig {
                public_key: public(private(other)),
                preshared_key: None,
                allowed_ips,
                endpoint: Some(addr(other)),
                persistent_keepalive: None,
            }
        })
        .collect();
    DeviceConfig {
        private_key: Zeroizing::new(private(node)),
        listen_port: 51820,
        listen_addr: None,
        peers,
        handshake_load_limit_per_sec: load_limit,
        mtu: 1420,
    }
}

struct Mesh {
    devices: Vec<DeviceCore>,
    now: Instant,
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    delivered: Vec<(usize, usize, Vec<u8>)>,
}

impl Mesh {
    fn new(load_limits: [u32; NODE_COUNT]) -> Mesh {
        let devices = (0..NODE_COUNT)
            .map(|node| {
                DeviceCore::new(&config(node, load_limits[node]), Duration::ZERO, [node as u8; 32])
            })
            .collect();
        Mesh { devices, now: Instant::from_nanos(1), wire: VecDeque::new(), delivered: Vec::new() }
    }

    fn collect(&mut self, node: usize, outbox: &mut Outbox) {
        for (to, datagram) in outbox.sends() {
            self.wire.push_back((node, to, datagram.to_vec()));
        }
        for (peer, packet) in outbox.delivers() {
            self.delivered.push((node, peer, packet.to_vec()));
        }
        outbox.clear();
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

    fn advance(&mut self, duration: Duration) {
        self.now += duration;
        let mut outbox = Outbox::default();
        for node in 0..NODE_COUNT {
            self.devices[node].tick(self.now, &mut outbox);
            self.collect(node, &mut outbox);
        }
    }

    fn drops(&self, node: usize, reason: &str) -> u64 {
        self.devices[node].drops().get(reason).copied().unwrap_or(0)
    }
}

#[test]
fn routes_by_longest_prefix_in_both_families() {
    let mut mesh = Mesh::new([100; NODE_COUNT]);
    let to_two = ipv4_packet(v4(0), v4(2), b"to node 2 by its /24");
    mesh.send(0, &to_two);
    mesh.pump();
    let to_one = ipv6_packet(v6(0), v6(1), b"to node 1 over IPv6");
    mesh.send(0, &to_one);
    mesh.pump();
    // 10.0.3.1 is outside both /24s but inside node 1's /16.
    let to_sixteen = ipv4_packet(v4(0), Ipv4Addr::new(10, 0, 3, 1), b"via the /16");
    mesh.send(0, &to_sixteen);
    mesh.pump();
    // Peer indices at node 2: node 0 is its peer 0; at node 1: node 0 is its peer 0.
    assert_eq!(mesh.delivered, vec![(2, 0, to_two), (1, 0, to_one), (1, 0, to_sixteen)],);
    mesh.send(0, &ipv4_packet(v4(0), Ipv4Addr::new(192, 168, 1, 1), b"nowhere"));
    assert_eq!(mesh.drops(0, "tx_no_route"), 1);
    mesh.send(0, b"not an IP packet");
    assert_eq!(mesh.drops(0, "tx_not_ip"), 1);
    let nowhere = DropOrigin::Destination(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));
    let origins = mesh.devices[0].drop_origins();
    assert_eq!(origins.get(&("tx_no_route", nowhere)), Some(&1), "{origins:?}");
    assert_eq!(origins.get(&("tx_not_ip", DropOrigin::Unnamed)), Some(&1), "{origins:?}");
}

#[test]
fn receiver_drops_sources_the_sending_peer_does_not_own() {
    let mut mesh = Mesh::new([100; NODE_COUNT]);
    mesh.send(1, &ipv4_packet(v4(1), v4(0), b"honest"));
    mesh.pump();
    // Node 1 claims node 2's address; node 0 decrypts it but must not deliver it.
    mesh.send(1, &ipv4_packet(v4(2), v4(0), b"spoofed"));
    mesh.send(1, &ipv6_packet(v6(2), v6(0), b"spoofed v6"));
    mesh.pump();
    assert_eq!(mesh.delivered.len(), 1);
    assert_eq!(mesh.drops(0, "rx_source_not_allowed"), 2);
    // The drops name the peer that sent them.
    let sender = DropOrigin::Peer(*mesh.devices[1].local_public());
    let origins = mesh.devices[0].drop_origins();
    assert_eq!(origins.get(&("rx_source_not_allowed", sender)), Some(&2), "{origins:?}");
}

#[test]
fn initiations_from_unknown_keys_are_dropped() {
    let mut mesh = Mesh::new([100; NODE_COUNT]);
    // A stranger who knows node 0's public key but is not its peer.
    let mut stranger_config = config(1, 100);
    stranger_config.private_key = Zeroizing::new([0x99; 32]);
    let mut stranger = DeviceCore::new(&stranger_config, Duration::ZERO, [9; 32]);
    let mut outbox = Outbox::default();
    stranger.send_packet(mesh.now, &ipv4_packet(v4(1), v4(0), b"let me in"), &mut outbox);
    let (to, initiation) = outbox.sends().next().expect("initiation");
    assert_eq!(to, addr(0));
    let mut initiation = initiation.to_vec();
    let mut sink = Outbox::default();
    mesh.devices[0].receive_datagram(mesh.now, addr(1), &mut initiation, &mut sink);
    assert_eq!(sink.sends().count(), 0);
    assert_eq!(mesh.drops(0, "unknown_peer"), 1);
    mesh.devices[0].receive_datagram(mesh.now, addr(1), &mut initiation[..100], &mut sink);
    assert_eq!(mesh.drops(0, "parse"), 1);
    // The drops name the stranger's key and address, and the address of the garbage.
    let key = *stranger.local_public();
    let origins = mesh.devices[0].drop_origins();
    let unknown = ("unknown_peer", DropOrigin::UnknownKey(key, addr(1)));
    assert_eq!(origins.get(&unknown), Some(&1), "{origins:?}");
    assert_eq!(origins.get(&("parse", DropOrigin::Endpoint(addr(1)))), Some(&1), "{origins:?}");
}

#[test]
fn device_under_load_answers_with_cookies_and_the_retry_gets_through() {
    let mut mesh = Mesh::new([0, 100, 100]);
    let packet = ipv4_packet(v4(1), v4(0), b"under load");
    mesh.send(1, &packet);
    mesh.pump();
    assert_eq!(mesh.drops(0, "rx_cookie_reply_sent"), 1);
    assert!(mesh.delivered.is_empty());
    mesh.advance(wireguard::timers::REKEY_TIMEOUT + wireguard::timers::REKEY_TIMEOUT_JITTER_MAX);
    mesh.pump();
    assert_eq!(mesh.drops(0, "rx_cookie_reply_sent"), 1);
    assert_eq!(mesh.delivered, vec![(0, 0, packet)]);
    // Node 0 answers over the same session: data is not subject to the load check.
    let reply = ipv4_packet(v4(0), v4(1), b"reply");
    mesh.send(0, &reply);
    mesh.pump();
    assert_eq!(mesh.delivered.last(), Some(&(1, 0, reply)));
    let _ = IpAddr::V4(v4(0));
}
