//! The agent's gossip membership, carried inside the WireGuard tunnels.
//!
//! Each agent runs one `gossip::node::Node` (SWIM with Lifeguard for health, Plumtree and
//! anti-entropy for a small replicated store) whose address is its own tunnel IPv4 address and
//! `port`. Gossip datagrams travel as UDP packets through the device, so they are encrypted and
//! authenticated by WireGuard: a datagram from tunnel address `a` came from the peer whose
//! allowed IPs hold `a`. This module is sans-IO: it takes the map, the packets and the time, and
//! returns the IP packets to send; the agent's run loop carries them out.
//!
//! Decisions, written down:
//! - Gossip packets are the agent's own traffic and are not subject to the map's packet filter,
//!   as Tailscale's disco pings are not; the device already admits only peers in the map. A
//!   policy therefore cannot cut gossip between two nodes that are in each other's map, and
//!   nodes in neither direction's map never exchange
//!   gossip at all. Each node is told which members it has tunnels to
//!   (`Node::set_reachable`): it probes, relays for, syncs and pulls from only those, and takes
//!   the others' states from what its peers say, so a policy that leaves the mesh partial
//!   does not make nodes suspect each other for the lack of a tunnel.
//! - The member id is the node id; a node deleted and registered again is a new member (the
//!   old one is declared dead by the others).
//! - The incarnation starts at the agent's boot count (kept in its state file), so a restarted
//!   agent refutes what the others believed about its previous life.
//! - Each agent publishes `health/<node id>` = its boot count in the store (a grow-only counter
//!   only it adds to, so the latest life wins whatever the clocks say), which makes the
//!   anti-entropy path carry something checkable.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use gossip::node::{Effect, Input, Node, NodeConfig, Now};
use gossip::store::Update;
use gossip::swim::{Member, MemberId, MemberState};
use rand_core::RngCore;
use sim::Instant;

use crate::netmap::NetMap;
use crate::types::NodeId;

/// The default gossip port inside the tunnel.
pub const GOSSIP_PORT: u16 = 7946;
/// Between two SWIM push-pull syncs.
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Between two anti-entropy pulls.
const ANTI_ENTROPY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// The store key prefix an agent publishes its boot count under.
pub const HEALTH_PREFIX: &str = "health/";

/// One agent's gossip over its tunnels.
pub struct TunnelGossip {
    port: u16,
    boot: u32,
    node: Option<Node>,
    /// Packets sent into the tunnel.
    sent: u64,
    /// The gossip layer's BUGGIFY sites (`gossip.*`) ask this; none fire without it.
    buggify: Option<gossip::faults::BuggifyHook>,
}

/// What the agent reports about its gossip membership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipStatus {
    /// Every member this agent knows of, with the state it believes, sorted by id.
    pub members: Vec<(NodeId, MemberState, u32)>,
    /// The store's `health/<id>` values (boot counts), sorted by id.
    pub health: Vec<(NodeId, u32)>,
    /// The store's root digest (equal on two agents that hold the same entries).
    pub store_root: u128,
    /// Gossip datagrams received (for operators and checks).
    pub received: u64,
    /// Gossip packets sent into the tunnel.
    pub sent: u64,
}

impl TunnelGossip {
    /// Gossip on `port`; `boot` is the agent's boot count (its first incarnation).
    pub fn new(port: u16, boot: u32) -> TunnelGossip {
        TunnelGossip { port, boot, node: None, sent: 0, buggify: None }
    }

    /// Lets the gossip layer's BUGGIFY sites fire when `hook` says so (the agent passes
    /// `Env::buggify`, which never fires in production).
    pub fn set_buggify(&mut self, hook: gossip::faults::BuggifyHook) {
        self.buggify = Some(hook);
    }

    /// Takes a new map: starts the node at the first map (or anew when the node id changed)
    /// and joins through tunnel peers it does not know as live members. Returns the packets
    /// to send.
    pub fn on_map(&mut self, now: Now, rng: &mut impl RngCore, map: &NetMap) -> Vec<Vec<u8>> {
        let Some(own) = ipv4_of(&map.self_node.addresses) else { return Vec::new() };
        let id = MemberId(map.self_node.id);
        let mut effects = Vec::new();
        if self.node.as_ref().is_none_or(|node| node.config().id != id) {
            let mut config = NodeConfig::new(id, SocketAddr::new(IpAddr::V4(own), self.port));
            config.incarnation = self.boot;
            // A tailnet is small beside a gossip cluster and its views are partial (a node
            // reaches only its map's peers), so the push-pull that reconnects split views runs
            // three times as often as SWIM's default.
            config.swim.sync_interval = SYNC_INTERVAL;
            // A restarted agent's store starts empty and only pulls refill it (what was pushed
            // is not pushed again); a node pulls from one random tunnel peer per interval, so
            // with a short interval a star-shaped mesh (everyone reaches only the servers)
            // still fills every store within seconds. A pull of an equal store is one digest.
            config.anti_entropy_interval = ANTI_ENTROPY_INTERVAL;
            let mut node = Node::new(config);
            if let Some(hook) = &self.buggify {
                node.set_faults(&gossip::faults::Faults::with_hook(hook.clone()));
            }
            // A grow-only counter only this node adds to, by its boot count on a fresh store:
            // merged by maximum, so a later life always wins. A register would not: its
            // timestamps come from a clock that may be behind the previous life's.
            let key = format!("{HEALTH_PREFIX}{}", id.0).into_bytes();
            let update = Update::Increment(u64::from(self.boot));
            node.step(now, rng, Input::Update { key: &key, update }, &mut effects);
            self.node = Some(node);
        }
        let reachable: BTreeSet<SocketAddr> = map
            .peers
            .iter()
            .filter_map(|peer| ipv4_of(&peer.addresses))
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), self.port))
            .collect();
        if let Some(node) = self.node.as_mut() {
            // Join through every tunnel peer this node does not know as a live member: new
            // peers, and peers it lost track of (a peer that restarted, rotated its key or was
            // out of reach while the views moved on).
            let known: BTreeSet<SocketAddr> = node
                .swim()
                .members()
                .filter(|member| matches!(member.state, MemberState::Alive | MemberState::Suspect))
                .map(|member| member.addr)
                .collect();
            let seeds: Vec<SocketAddr> = reachable.difference(&known).copied().collect();
            // Only the map's peers have tunnels: gossip goes only there (see the module doc).
            node.set_reachable(Some(reachable));
            if !seeds.is_empty() {
                node.step(now, rng, Input::Join(&seeds), &mut effects);
            }
        }
        self.packets(effects)
    }

    /// Takes an arrived UDP payload for the gossip port; returns the packets to send.
    pub fn on_datagram(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Vec<u8>> {
        let mut effects = Vec::new();
        if let Some(node) = self.node.as_mut() {
            node.step(now, rng, Input::Datagram { from, bytes }, &mut effects);
        }
        self.packets(effects)
    }

    /// Runs the node's timers if due; returns the packets to send.
    pub fn tick(&mut self, now: Now, rng: &mut impl RngCore) -> Vec<Vec<u8>> {
        let mut effects = Vec::new();
        if let Some(node) = self.node.as_mut()
            && node.deadline() <= now.monotonic
        {
            node.step(now, rng, Input::Tick, &mut effects);
        }
        self.packets(effects)
    }

    /// When `tick` next has work (`None` before the first map).
    pub fn deadline(&self) -> Option<Instant> {
        self.node.as_ref().map(Node::deadline)
    }

    /// The gossip port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether a packet with these headers is gossip for this agent.
    pub fn is_gossip(&self, protocol: u8, port: u16) -> bool {
        protocol == UDP && port == self.port
    }

    /// The membership and store as this agent sees them.
    pub fn status(&mut self) -> GossipStatus {
        let Some(node) = self.node.as_mut() else { return GossipStatus::default() };
        let mut members: Vec<(NodeId, MemberState, u32)> = node
            .swim()
            .members()
            .map(|member: &Member| (member.id.0, member.state, member.incarnation))
            .collect();
        members.sort_unstable();
        let mut health: Vec<(NodeId, u32)> = node
            .store()
            .entries()
            .filter_map(|(key, value)| {
                let id = std::str::from_utf8(key.strip_prefix(HEALTH_PREFIX.as_bytes())?).ok()?;
                let boot = u32::try_from(value.count()?).ok()?;
                Some((id.parse().ok()?, boot))
            })
            .collect();
        health.sort_unstable();
        let store_root = node.store_mut().root().0;
        let received = node.stats().received_count;
        GossipStatus { members, health, store_root, received, sent: self.sent }
    }

    /// Checks the node's own invariants (SWIM's membership table).
    pub fn check_invariants(&self) {
        if let Some(node) = &self.node {
            node.swim().check_invariants();
        }
    }

    fn packets(&mut self, effects: Vec<Effect>) -> Vec<Vec<u8>> {
        let Some(node) = &self.node else { return Vec::new() };
        let IpAddr::V4(own) = node.config().addr.ip() else { return Vec::new() };
        let packets: Vec<Vec<u8>> = effects
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Send(datagram) => match datagram.to.ip() {
                    IpAddr::V4(to) => Some(udp_packet_between(
                        SocketAddr::new(IpAddr::V4(own), self.port),
                        SocketAddr::new(IpAddr::V4(to), datagram.to.port()),
                        &datagram.bytes,
                    )),
                    IpAddr::V6(_) => None,
                },
                _ => None,
            })
            .collect();
        self.sent += packets.len() as u64;
        packets
    }
}

/// The clocks a gossip step sees, from `env`.
pub fn now_of<E: sim::Env>(env: &E) -> Now {
    let since = env.wall().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Now { monotonic: env.now(), wall_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX) }
}

/// The IANA protocol number of UDP.
const UDP: u8 = 17;

fn ipv4_of(addresses: &[wireguard::IpNet]) -> Option<Ipv4Addr> {
    addresses.iter().find_map(|net| match net.addr {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}

/// Builds an IPv4 UDP packet from `source` to `destination` (checksum zero, which UDP over
/// IPv4 allows). Both addresses must be IPv4; an IPv6 one gives an empty packet.
pub fn udp_packet_between(source: SocketAddr, destination: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(from), IpAddr::V4(to)) = (source.ip(), destination.ip()) else {
        return Vec::new();
    };
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&source.port().to_be_bytes());
    datagram.extend_from_slice(&destination.port().to_be_bytes());
    let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    datagram.extend_from_slice(&len.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    let mut packet = wireguard::ip::ipv4_packet(from, to, &datagram);
    packet[9] = UDP;
    packet
}

/// A UDP packet's source port and payload (`None` if it is not an IPv4 UDP packet or is cut
/// short).
pub fn udp_payload(packet: &[u8]) -> Option<(u16, &[u8])> {
    if packet.first()? >> 4 != 4 || *packet.get(9)? != UDP {
        return None;
    }
    let at = usize::from(packet[0] & 0x0f) * 4;
    let header = packet.get(at..at + 8)?;
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let end = (at + length.max(8)).min(packet.len());
    Some((u16::from_be_bytes([header[0], header[1]]), packet.get(at + 8..end)?))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::netmap::{DnsConfig, Peer};
    use crate::types::Key;

    fn peer(id: NodeId) -> Peer {
        let ip = Ipv4Addr::new(100, 64, 0, u8::try_from(id).expect("small id"));
        let net = wireguard::IpNet { addr: IpAddr::V4(ip), prefix_len: 32 };
        Peer {
            id,
            name: format!("n{id}"),
            user: None,
            tags: Vec::new(),
            node_key: Key([u8::try_from(id).expect("small id"); 32]),
            addresses: vec![net],
            allowed_ips: vec![net],
            endpoints: Vec::new(),
            online: true,
            expiry: None,
        }
    }

    fn map(me: NodeId, peers: &[NodeId]) -> NetMap {
        NetMap {
            version: 1,
            self_node: peer(me),
            peers: peers.iter().map(|id| peer(*id).into()).collect(),
            filter: Vec::new(),
            dns: DnsConfig::default(),
        }
    }

    /// Delivers packets between in-memory agents whose tunnels are `links` (both ways).
    fn run(
        agents: &mut BTreeMap<NodeId, TunnelGossip>,
        links: &[(NodeId, NodeId)],
        seconds: u64,
    ) -> u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let linked = |a: NodeId, b: NodeId| links.contains(&(a, b)) || links.contains(&(b, a));
        let mut queue: Vec<(NodeId, Vec<u8>)> = Vec::new();
        for (id, agent) in agents.iter_mut() {
            let peers: Vec<NodeId> = (1..=3).filter(|p| *p != *id && linked(*id, *p)).collect();
            let now = Now { monotonic: Instant::ZERO, wall_ms: 1 };
            queue.extend(
                agent.on_map(now, &mut rng, &map(*id, &peers)).into_iter().map(|p| (*id, p)),
            );
        }
        let mut dropped = 0;
        for step in 0..seconds * 100 {
            let now = Now {
                monotonic: Instant::ZERO + Duration::from_millis(step * 10),
                wall_ms: 1 + step * 10,
            };
            for (from, packet) in std::mem::take(&mut queue) {
                let to = match wireguard::ip::header(&packet).map(|header| header.destination) {
                    Some(IpAddr::V4(ip)) => NodeId::from(ip.octets()[3]),
                    _ => continue,
                };
                if !linked(from, to) {
                    dropped += 1;
                    continue;
                }
                let (port, payload) = udp_payload(&packet).expect("a UDP packet");
                let source =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, from as u8)), port);
                let agent = agents.get_mut(&to).expect("agent");
                let out = agent.on_datagram(now, &mut rng, source, payload);
                queue.extend(out.into_iter().map(|p| (to, p)));
            }
            for (id, agent) in agents.iter_mut() {
                queue.extend(agent.tick(now, &mut rng).into_iter().map(|p| (*id, p)));
            }
        }
        dropped
    }

    #[test]
    fn a_partial_mesh_converges_without_sending_where_there_is_no_tunnel() {
        // 1 - 2 - 3: nodes 1 and 3 have no tunnel to each other.
        let mut agents: BTreeMap<NodeId, TunnelGossip> =
            (1..=3).map(|id| (id, TunnelGossip::new(GOSSIP_PORT, 2))).collect();
        let dropped = run(&mut agents, &[(1, 2), (2, 3)], 30);
        assert_eq!(dropped, 0, "nothing is sent where no tunnel is");
        let statuses: Vec<GossipStatus> = agents.values_mut().map(TunnelGossip::status).collect();
        for status in &statuses {
            let states: Vec<MemberState> = status.members.iter().map(|m| m.1).collect();
            assert_eq!(states, vec![MemberState::Alive; 3], "{status:?}");
            assert_eq!(status.health, vec![(1, 2), (2, 2), (3, 2)]);
            assert_eq!(status.store_root, statuses[0].store_root);
        }
    }

    #[test]
    fn udp_packets_round_trip_and_short_ones_are_refused() {
        let from: SocketAddr = "100.64.0.1:7946".parse().expect("address");
        let to: SocketAddr = "100.64.0.2:7946".parse().expect("address");
        let packet = udp_packet_between(from, to, b"hello");
        assert_eq!(udp_payload(&packet), Some((7946, &b"hello"[..])));
        for cut in 0..28 {
            assert_eq!(udp_payload(&packet[..cut]), None, "cut at {cut}");
        }
        let v6: SocketAddr = "[fd7a::1]:1".parse().expect("address");
        assert!(udp_packet_between(v6, to, b"x").is_empty());
    }
}
