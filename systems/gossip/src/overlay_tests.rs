//! Tests of HyParView + Plumtree: many state machines wired together in-process through a tiny
//! deterministic network (fixed latency plus seeded jitter, crashed nodes drop everything).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use sim::Instant;

use crate::hyparview::{HvConfig, HvEffect, HvInput, HvMessage, HyParView, Peer};
use crate::plumtree::{Plumtree, PtConfig, PtEffect, PtInput, PtMessage};
use crate::swim::MemberId;

const EVENTS_MAX: usize = 20_000_000;

fn peer(index: usize) -> Peer {
    let [high, low] = (index as u16 + 1).to_be_bytes();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, high, low)), 1);
    Peer { id: MemberId(index as u64), addr }
}

fn index_of(addr: SocketAddr) -> usize {
    match addr.ip() {
        IpAddr::V4(ip) => usize::from(u16::from_be_bytes([ip.octets()[2], ip.octets()[3]])) - 1,
        IpAddr::V6(_) => unreachable!(),
    }
}

enum Wire {
    Hv(HvMessage),
    Pt(Peer, PtMessage),
}

struct Overlay {
    views: Vec<HyParView>,
    trees: Vec<Plumtree>,
    rng: ChaCha8Rng,
    now: Instant,
    wire: Vec<(Instant, u64, usize, Wire)>,
    sequence: u64,
    down: BTreeSet<usize>,
    // message id -> nodes that delivered it
    delivered: BTreeMap<u128, BTreeSet<usize>>,
    payload_count: u64,
}

impl Overlay {
    fn new(count: usize, seed: u64) -> Overlay {
        let mut overlay = Overlay {
            views: (0..count)
                .map(|index| HyParView::new(HvConfig::default(), peer(index)))
                .collect(),
            trees: (0..count).map(|_| Plumtree::new(PtConfig::default())).collect(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Instant::ZERO,
            wire: Vec::new(),
            sequence: 0,
            down: BTreeSet::new(),
            delivered: BTreeMap::new(),
            payload_count: 0,
        };
        for index in 1..count {
            overlay.hv(index, HvInput::Join(&[peer(0).addr]));
            overlay.run_for(Duration::from_millis(50));
        }
        overlay
    }

    fn post(&mut self, to: usize, wire: Wire) {
        self.sequence += 1;
        let latency = Duration::from_micros(self.rng.random_range(1_000..3_000));
        self.wire.push((self.now + latency, self.sequence, to, wire));
    }

    fn hv(&mut self, index: usize, input: HvInput<'_>) {
        let mut effects = Vec::new();
        self.views[index].step(self.now, &mut self.rng, input, &mut effects);
        for effect in effects {
            match effect {
                HvEffect::Send { to, message } => self.post(index_of(to), Wire::Hv(message)),
                HvEffect::NeighborUp(peer) => self.pt(index, PtInput::NeighborUp(peer)),
                HvEffect::NeighborDown(peer) => self.pt(index, PtInput::NeighborDown(peer.id)),
            }
        }
    }

    fn pt(&mut self, index: usize, input: PtInput) {
        let mut effects = Vec::new();
        self.trees[index].step(self.now, input, &mut effects);
        for effect in effects {
            match effect {
                PtEffect::Send { to, message } => {
                    if matches!(message, PtMessage::Gossip { .. }) {
                        self.payload_count += 1;
                    }
                    self.post(index_of(to.addr), Wire::Pt(peer(index), message));
                }
                PtEffect::Deliver { id, .. } => {
                    assert!(self.delivered.entry(id.0).or_default().insert(index), "twice");
                }
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        for _ in 0..EVENTS_MAX {
            let live = (0..self.views.len()).filter(|index| !self.down.contains(index));
            let timer = live
                .map(|index| {
                    (self.views[index].deadline().min(self.trees[index].deadline()), index)
                })
                .min();
            let packet = self.wire.iter().enumerate().min_by_key(|(_, p)| (p.0, p.1));
            let packet_at = packet.map_or(Instant::MAX, |(_, p)| p.0);
            let timer_at = timer.map_or(Instant::MAX, |t| t.0);
            if packet_at.min(timer_at) > end {
                self.now = end;
                return;
            }
            if packet_at <= timer_at {
                let position = packet.expect("packet").0;
                let (at, _, to, wire) = self.wire.swap_remove(position);
                self.now = at;
                if self.down.contains(&to) {
                    continue;
                }
                match wire {
                    Wire::Hv(message) => {
                        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
                        self.hv(to, HvInput::Message { from, message });
                    }
                    Wire::Pt(from, message) => self.pt(to, PtInput::Message { from, message }),
                }
            } else {
                let (at, index) = timer.expect("timer");
                self.now = at;
                self.hv(index, HvInput::Tick);
                self.pt(index, PtInput::Tick);
            }
        }
        panic!("event budget exhausted");
    }

    fn live(&self) -> Vec<usize> {
        (0..self.views.len()).filter(|index| !self.down.contains(index)).collect()
    }

    /// Whether the live nodes' active views connect them all.
    fn is_connected(&self) -> bool {
        let live = self.live();
        let mut seen = BTreeSet::from([live[0]]);
        let mut frontier = vec![live[0]];
        while let Some(index) = frontier.pop() {
            for neighbor in self.views[index].active() {
                let next = neighbor.id.0 as usize;
                if !self.down.contains(&next) && seen.insert(next) {
                    frontier.push(next);
                }
            }
        }
        seen.len() == live.len()
    }

    /// Broadcasts from `origin`; returns payload messages sent for it.
    fn broadcast(&mut self, origin: usize, payload: &[u8]) -> u64 {
        let before = self.payload_count;
        self.pt(origin, PtInput::Broadcast(payload.to_vec()));
        self.run_for(Duration::from_secs(2));
        self.payload_count - before
    }
}

#[test]
fn views_are_bounded_symmetric_and_connected() {
    let mut overlay = Overlay::new(40, 11);
    overlay.run_for(Duration::from_secs(60));
    assert!(overlay.is_connected());
    let mut asymmetric = 0;
    for index in 0..40 {
        let view = &overlay.views[index];
        assert!((1..=5).contains(&view.active().count()), "node {index}");
        assert!(view.passive().count() > 0, "node {index} passive view empty");
        for neighbor in view.active() {
            let back = overlay.views[neighbor.id.0 as usize].neighbor(MemberId(index as u64));
            asymmetric += usize::from(back.is_none());
        }
    }
    assert!(asymmetric <= 4, "{asymmetric} one-way links");
}

#[test]
fn plumtree_delivers_everything_once_and_settles_into_a_tree() {
    let mut overlay = Overlay::new(40, 12);
    overlay.run_for(Duration::from_secs(30));
    let mut costs = Vec::new();
    for round in 0..20u32 {
        let origin = (round as usize * 13) % 40;
        costs.push(overlay.broadcast(origin, &round.to_le_bytes()));
    }
    for (id, nodes) in &overlay.delivered {
        assert_eq!(nodes.len(), 40, "message {id:x}");
    }
    // A tree over 40 nodes carries exactly 39 payloads; allow a few grafts.
    let settled: u64 = costs[10..].iter().sum();
    let factor = settled as f64 / (10.0 * 39.0);
    assert!(factor < 1.2, "duplication factor {factor:.2}, costs {costs:?}");
    println!("duplication factor {factor:.3}, costs {costs:?}");
    assert!(costs[0] > 39, "the first broadcast floods");
}

#[test]
fn the_tree_repairs_after_failures() {
    let mut overlay = Overlay::new(40, 13);
    overlay.run_for(Duration::from_secs(30));
    for round in 0..5u32 {
        overlay.broadcast(0, &round.to_le_bytes());
    }
    let failed = [3usize, 7, 19, 22, 31];
    overlay.down.extend(failed);
    for index in overlay.live() {
        for dead in failed {
            overlay.hv(index, HvInput::PeerFailed(MemberId(dead as u64)));
        }
    }
    overlay.run_for(Duration::from_secs(10));
    assert!(overlay.is_connected());
    overlay.delivered.clear();
    for round in 100..110u32 {
        overlay.broadcast(1, &round.to_le_bytes());
    }
    let live: BTreeSet<usize> = overlay.live().into_iter().collect();
    assert_eq!(overlay.delivered.len(), 10);
    for nodes in overlay.delivered.values() {
        assert_eq!(nodes, &live);
    }
}
