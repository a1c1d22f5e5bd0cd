//! `mesh`: the whole mesh as one system from one seed.
//!
//! Everything `coordinator-churn` runs (the coordinator on docdb on the LSM store, 3-6 agents
//! with WireGuard devices, policy edits, node deletions, crashes, splits, one-way cuts, pauses,
//! clogs and clock jumps), and on top: every agent joins the gossip layer (SWIM with Lifeguard,
//! Plumtree, anti-entropy) inside its tunnels, and an application on every agent sends UDP
//! packets through the tunnels to each of its peers on ports 22, 443 and 5432. During the
//! faulty phase agents now and then rotate their node keys (their devices restart under the
//! new key and every peer must learn it).
//!
//! Safety (whole run), besides `coordinator-churn`'s:
//! - `filter-safety`: every packet an application received was allowed, port included, by the
//!   policy version the receiving agent enforced when it arrived (a hand-written oracle);
//! - `authenticity`: every packet received was sent, unchanged, by the agent it names, and came
//!   through the WireGuard session of that agent's node key.
//!
//! Liveness (within 20 s of the heal), besides `coordinator-churn`'s:
//! - `reachability`: for every ordered pair of current nodes and port the current policy
//!   allows, a packet sent after the heal arrived;
//! - `gossip-convergence`: no agent believes a current node it has a tunnel to dead or gone
//!   (nodes in neither direction's map cannot probe each other, so their beliefs about each
//!   other are not judged), every agent's store holds every current node's latest boot count,
//!   and all stores have the same root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use coordinator::agent::{AgentHandle, AgentStatus, udp_packet};
use coordinator::{Key, NodeId};
use gossip::swim::MemberState;
use invariants::Violation;
use rand::RngCore;
use sim::Env;
use sim::world::SimEnv;

use crate::coordinator::{History, Ident, Shared, ident_of, lock};

/// The ports the applications use (those the policies name, and one none names).
pub(crate) const PORTS: [u16; 3] = [22, 443, 5432];
/// Between two rounds of packets (one to every peer on every port).
const ROUND_EVERY: Duration = Duration::from_millis(300);
/// An agent asks for a new node key in one round out of this many (faulty phase only).
const ROTATE_ONE_IN: u32 = 40;
/// The packets' magic prefix.
const MAGIC: &[u8; 2] = b"gm";
/// The payload's length: magic, sender, boot, sequence number, receiver, port.
const PAYLOAD_LEN: usize = 2 + 1 + 4 + 8 + 1 + 2;

/// What the applications did.
#[derive(Default)]
pub(crate) struct MeshHistory {
    /// (sender, boot, seq) -> what was sent.
    sent: BTreeMap<(usize, u32, u64), Sent>,
    /// (sender, receiver, port) -> when a packet last arrived (simulated nanoseconds).
    arrived: BTreeMap<(usize, usize, u16), u64>,
    /// Packets received by the applications.
    pub(crate) received: u64,
    /// Every node key each agent has used (rotations add keys).
    keys: BTreeMap<usize, BTreeSet<Key>>,
}

impl MeshHistory {
    /// Agent `index` uses (or used) `key`.
    pub(crate) fn note_key(&mut self, index: usize, key: Key) {
        self.keys.entry(index).or_default().insert(key);
    }
}

/// One sent packet.
struct Sent {
    /// The packet's bytes.
    packet: Vec<u8>,
}

/// Whether `src` may send to `dst` on `port` under policy version `version` (the oracle,
/// written from the policy texts in `coordinator.rs`, independent of the policy compiler).
pub(crate) fn allows_port(version: u64, src: Ident, dst: Ident, port: u16) -> bool {
    use Ident::*;
    if version == 0 {
        return true;
    }
    if version % 2 == 1 {
        src == Odin
            || (src == Thor && dst == Server && port == 443)
            || (src == Server && dst == Db && port == 5432)
    } else {
        (dst == Server && port == 443) || (src == dst && matches!(src, Odin | Thor))
    }
}

fn payload(from: usize, boot: u32, seq: u64, to: usize, port: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PAYLOAD_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.push(u8::try_from(from).unwrap_or(u8::MAX));
    bytes.extend_from_slice(&boot.to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.push(u8::try_from(to).unwrap_or(u8::MAX));
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes
}

/// (sender, boot, seq, receiver, port) from a packet's UDP payload.
fn parse(packet: &[u8]) -> Option<(usize, u32, u64, usize, u16)> {
    let (_, body) = coordinator::tunnel_gossip::udp_payload(packet)?;
    if body.len() != PAYLOAD_LEN || &body[..2] != MAGIC {
        return None;
    }
    let boot = u32::from_be_bytes(body[3..7].try_into().ok()?);
    let seq = u64::from_be_bytes(body[7..15].try_into().ok()?);
    let port = u16::from_be_bytes(body[16..18].try_into().ok()?);
    Some((usize::from(body[2]), boot, seq, usize::from(body[15]), port))
}

/// One application round on agent `index`: a packet to every peer of its map on every port,
/// then whatever arrives for `ROUND_EVERY`.
pub(crate) async fn app_round(
    env: &SimEnv,
    index: usize,
    handle: &mut AgentHandle,
    shared: &Shared,
) {
    let status = handle.status();
    let faulty = lock(shared).faulty_until.is_some_and(|until| env.now() < until);
    if faulty && env.rng().next_u32().is_multiple_of(ROTATE_ONE_IN) {
        handle.rotate_node_key();
    }
    lock(shared).mesh.note_key(index, handle.node_key());
    for (packet, key) in round_packets(index, &status, shared) {
        // Recorded before it leaves, so an arrival always finds it.
        lock(shared).mesh.sent.insert(key, Sent { packet: packet.clone() });
        let _ = handle.send(packet).await;
    }
    let deadline = env.now() + ROUND_EVERY;
    while let Ok(Some(arrived)) =
        env.timeout(deadline.saturating_duration_since(env.now()), handle.recv_detailed()).await
    {
        check_arrival(env, index, arrived, shared);
    }
}

/// The packets of one round, each with its (sender, boot, seq) key.
fn round_packets(
    index: usize,
    status: &AgentStatus,
    shared: &Shared,
) -> Vec<(Vec<u8>, (usize, u32, u64))> {
    // The map, not `status.node`: an agent restarted on its state has no registration reply.
    let Some(map) = status.map.as_ref() else { return Vec::new() };
    let Some(source) = ipv4_of(&map.self_node.addresses) else { return Vec::new() };
    let history = lock(shared);
    let mut seq = history
        .mesh
        .sent
        .range((index, status.boots, 0)..=(index, status.boots, u64::MAX))
        .next_back()
        .map_or(0, |((_, _, seq), _)| seq + 1);
    let mut packets = Vec::new();
    for peer in &map.peers {
        let Some(to) = receiver_of(&history, peer.id) else { continue };
        let Some(destination) = ipv4_of(&peer.addresses) else { continue };
        for port in PORTS {
            let body = payload(index, status.boots, seq, to, port);
            packets
                .push((udp_packet(source, destination, port, &body), (index, status.boots, seq)));
            seq += 1;
        }
    }
    packets
}

fn ipv4_of(addresses: &[wireguard::IpNet]) -> Option<Ipv4Addr> {
    addresses.iter().find_map(|net| match net.addr {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}

/// The agent index that registered `node`.
fn receiver_of(history: &History, node: NodeId) -> Option<usize> {
    history.registered.get(&node).map(|(index, ..)| *index)
}

fn check_arrival(
    env: &SimEnv,
    index: usize,
    arrived: coordinator::agent::Arrived,
    shared: &Shared,
) {
    let mut history = lock(shared);
    history.mesh.received += 1;
    let Some((from, boot, seq, to, port)) = parse(&arrived.packet) else {
        let message = format!("n{} received a packet no application sent", index + 1);
        history.violations.push(Violation::new("authenticity", message));
        return;
    };
    // The packet may have left through a key the sender rotated to after queueing it: any
    // key the sending agent has held is its own.
    let sender_key = history.mesh.keys.get(&from).is_some_and(|keys| keys.contains(&arrived.peer));
    let authentic = history
        .mesh
        .sent
        .get(&(from, boot, seq))
        .is_some_and(|sent| sent.packet == arrived.packet && sender_key && to == index);
    if !authentic {
        let message = format!(
            "n{} received packet {seq} of n{} (boot {boot}) through key {:?}, not as sent",
            index + 1,
            from + 1,
            arrived.peer
        );
        history.violations.push(Violation::new("authenticity", message));
        return;
    }
    let version = arrived.policy_version;
    if !allows_port(version, ident_of(from), ident_of(index), port) {
        let message = format!(
            "n{} ({:?}) accepted a packet from n{} ({:?}) to port {port} under policy \
             version {version}, which forbids it",
            index + 1,
            ident_of(index),
            from + 1,
            ident_of(from)
        );
        history.violations.push(Violation::new("filter-safety", message));
    }
    history.mesh.arrived.insert((from, index, port), env.now().as_nanos());
}

/// Liveness of the data path and the gossip layer, judged at `now` for a heal at `healed`.
pub(crate) fn check_mesh(history: &History, version: u64, healed: u64) -> Result<(), Violation> {
    let Some(current) = history.current_nodes.as_ref() else {
        return Err(Violation::new("reachability", "the registry's nodes could not be read"));
    };
    // The current node of every agent (the registry's, which the agent's map must match).
    let mut nodes: BTreeMap<usize, NodeId> = BTreeMap::new();
    for node in current {
        if let Some(index) = receiver_of(history, node.id) {
            nodes.insert(index, node.id);
        }
    }
    for &from in nodes.keys() {
        for &to in nodes.keys() {
            for port in PORTS {
                if from == to || !allows_port(version, ident_of(from), ident_of(to), port) {
                    continue;
                }
                let last = history.mesh.arrived.get(&(from, to, port)).copied().unwrap_or(0);
                if last < healed {
                    let message = format!(
                        "no packet from n{} reached n{} on port {port} since the heal, though \
                         policy version {version} allows it",
                        from + 1,
                        to + 1
                    );
                    return Err(Violation::new("reachability", message));
                }
            }
        }
    }
    check_gossip(history, &nodes)
}

fn check_gossip(history: &History, nodes: &BTreeMap<usize, NodeId>) -> Result<(), Violation> {
    let fail = |message: String| Err(Violation::new("gossip-convergence", message));
    let mut roots = BTreeSet::new();
    let mut boots: BTreeMap<NodeId, u32> = BTreeMap::new();
    for (&index, &node) in nodes {
        let Some(status) = history.agents.get(&index) else { continue };
        let status = status.lock().unwrap_or_else(|poison| poison.into_inner());
        boots.insert(node, status.boots);
    }
    for &index in nodes.keys() {
        let Some(status) = history.agents.get(&index) else { continue };
        let status = status.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        let gossip = &status.gossip;
        let peers: BTreeSet<NodeId> =
            status.map.iter().flat_map(|map| map.peers.iter().map(|peer| peer.id)).collect();
        for (&other, &node) in nodes {
            if !peers.contains(&node) {
                // Health is judged over the tunnels a node has: nodes that are in neither
                // direction's map cannot probe each other (`tunnel_gossip`'s decisions).
                continue;
            }
            let state = gossip.members.iter().find(|(id, ..)| *id == node).map(|m| m.1);
            if matches!(state, None | Some(MemberState::Dead | MemberState::Left)) {
                return fail(format!(
                    "n{} believes n{} (node {node}) is {state:?}",
                    index + 1,
                    other + 1
                ));
            }
        }
        let health: BTreeMap<NodeId, u32> = gossip.health.iter().copied().collect();
        for (&node, &boot) in &boots {
            if health.get(&node) != Some(&boot) {
                return fail(format!(
                    "n{}'s store has boot {:?} for node {node}, which is on boot {boot} (its \
                     store: {health:?}; its gossip peers {peers:?})",
                    index + 1,
                    health.get(&node)
                ));
            }
        }
        roots.insert(gossip.store_root);
    }
    if roots.len() > 1 {
        return fail(format!("the agents' stores differ: {} distinct roots", roots.len()));
    }
    Ok(())
}

/// The mesh's figures for the run's history.
pub(crate) fn summary(history: &History) -> serde_json::Value {
    serde_json::json!({
        "packets_sent": history.mesh.sent.len(),
        "packets_received": history.mesh.received,
    })
}
