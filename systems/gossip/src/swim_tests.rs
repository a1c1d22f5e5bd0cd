//! Tests of the SWIM core: several state machines wired together in-process through a tiny
//! deterministic network (fixed latency, a drop predicate), no runtime involved.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use sim::Instant;

use crate::swim::{
    MemberId, MemberState, Swim, SwimConfig, SwimEffect, SwimInput, SwimMessage, Update,
};

const LATENCY: Duration = Duration::from_millis(2);
const EVENTS_MAX: usize = 10_000_000;

fn addr(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1)), 7946)
}

struct Cluster {
    nodes: Vec<Swim>,
    rng: ChaCha8Rng,
    now: Instant,
    // (deliver_at, sequence, from, to, message)
    wire: Vec<(Instant, u64, usize, usize, SwimMessage)>,
    sequence: u64,
    down: BTreeSet<usize>,
    cut: BTreeSet<(usize, usize)>,
    // (time, observer, member, state)
    changes: Vec<(Instant, usize, MemberId, MemberState)>,
}

impl Cluster {
    /// `count` nodes; node 0 is the seed and every other node joins through it.
    fn new(count: usize, seed: u64) -> Cluster {
        let config = SwimConfig::default();
        let nodes = (0..count)
            .map(|index| Swim::new(config.clone(), MemberId(index as u64), addr(index), 0))
            .collect();
        let mut cluster = Cluster {
            nodes,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Instant::ZERO,
            wire: Vec::new(),
            sequence: 0,
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            changes: Vec::new(),
        };
        for index in 1..count {
            cluster.input(index, SwimInput::Join(&[addr(0)]));
        }
        cluster
    }

    fn input(&mut self, index: usize, input: SwimInput<'_>) {
        let mut effects = Vec::new();
        self.nodes[index].step(self.now, &mut self.rng, input, &mut effects);
        for effect in effects {
            match effect {
                SwimEffect::Send { to, message } => {
                    let target = usize::from(match to.ip() {
                        IpAddr::V4(ip) => ip.octets()[3],
                        IpAddr::V6(_) => unreachable!(),
                    }) - 1;
                    self.sequence += 1;
                    let at = self.now + LATENCY;
                    self.wire.push((at, self.sequence, index, target, message));
                }
                SwimEffect::Changed(member) => {
                    self.changes.push((self.now, index, member.id, member.state));
                }
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        for _ in 0..EVENTS_MAX {
            let timer = (0..self.nodes.len())
                .filter(|index| !self.down.contains(index))
                .map(|index| (self.nodes[index].deadline(), index))
                .min();
            let packet = self.wire.iter().enumerate().min_by_key(|(_, p)| (p.0, p.1));
            let packet_at = packet.map(|(_, p)| p.0).unwrap_or(Instant::MAX);
            let timer_at = timer.map(|t| t.0).unwrap_or(Instant::MAX);
            if packet_at.min(timer_at) > end {
                self.now = end;
                return;
            }
            if packet_at <= timer_at {
                let position = packet.expect("packet").0;
                let (at, _, from, to, message) = self.wire.swap_remove(position);
                self.now = at;
                let blocked = self.down.contains(&from)
                    || self.down.contains(&to)
                    || self.cut.contains(&(from, to));
                if !blocked {
                    self.input(to, SwimInput::Message { from: addr(from), message });
                }
            } else {
                let (at, index) = timer.expect("timer");
                self.now = at;
                self.input(index, SwimInput::Tick);
            }
        }
        panic!("event budget exhausted");
    }

    fn state(&self, observer: usize, member: usize) -> Option<MemberState> {
        self.nodes[observer].member(MemberId(member as u64)).map(|member| member.state)
    }

    fn live_view(&self, observer: usize) -> Vec<MemberId> {
        self.nodes[observer]
            .members()
            .filter(|member| member.state == MemberState::Alive)
            .map(|member| member.id)
            .collect()
    }
}

#[test]
fn nodes_join_through_a_seed_and_agree() {
    let mut cluster = Cluster::new(8, 1);
    cluster.run_for(Duration::from_secs(20));
    let everyone: Vec<MemberId> = (0..8).map(MemberId).collect();
    for index in 0..8 {
        assert_eq!(cluster.live_view(index), everyone, "node {index}");
        assert!(cluster.nodes[index].is_joined());
    }
    let failed: u64 = cluster.nodes.iter().map(|node| node.stats().probe_failed_count).sum();
    assert_eq!(failed, 0);
    for node in &cluster.nodes {
        // Seven others entered the view alive; nothing else happened.
        assert_eq!(node.stats().transition_counts, [7, 0, 0, 0], "{:?}", node.stats());
    }
}

#[test]
fn a_crashed_member_is_declared_dead_by_everyone() {
    let mut cluster = Cluster::new(6, 2);
    cluster.run_for(Duration::from_secs(10));
    cluster.down.insert(5);
    let crashed_at = cluster.now;
    cluster.run_for(Duration::from_secs(60));
    for index in 0..5 {
        assert_eq!(cluster.state(index, 5), Some(MemberState::Dead), "node {index}");
        let stats = cluster.nodes[index].stats();
        assert_eq!(stats.transitions_to(MemberState::Dead), 1, "node {index}: {stats:?}");
        assert!(stats.transitions_to(MemberState::Suspect) >= 1, "node {index}: {stats:?}");
        assert_eq!(stats.transitions_to(MemberState::Left), 0, "node {index}: {stats:?}");
    }
    let (_, maximum) = cluster.nodes[0].suspicion_bounds();
    let last = cluster
        .changes
        .iter()
        .filter(|change| change.2 == MemberId(5) && change.3 == MemberState::Dead)
        .map(|change| change.0)
        .max()
        .expect("declared dead");
    let bound = maximum + Duration::from_secs(10);
    assert!(last.saturating_duration_since(crashed_at) <= bound);
}

#[test]
fn a_briefly_unreachable_member_refutes_and_survives() {
    let mut cluster = Cluster::new(6, 3);
    cluster.run_for(Duration::from_secs(10));
    cluster.down.insert(4);
    cluster.run_for(Duration::from_millis(2500));
    cluster.down.remove(&4);
    cluster.run_for(Duration::from_secs(40));
    let dead = cluster.changes.iter().any(|change| change.3 == MemberState::Dead);
    assert!(!dead, "nobody may be declared dead");
    for index in 0..6 {
        assert_eq!(cluster.state(index, 4), Some(MemberState::Alive));
    }
    assert!(cluster.nodes[4].stats().refute_count >= 1);
    assert!(cluster.nodes[4].own().incarnation >= 1);
}

#[test]
fn indirect_probes_mask_a_single_broken_link() {
    let mut cluster = Cluster::new(5, 4);
    cluster.run_for(Duration::from_secs(10));
    cluster.cut.insert((0, 1));
    cluster.cut.insert((1, 0));
    cluster.run_for(Duration::from_secs(60));
    assert!(cluster.nodes[0].stats().ping_req_count > 0);
    let suspected = cluster.changes.iter().any(|change| change.3 != MemberState::Alive);
    assert!(!suspected, "indirect acks keep node 1 alive in node 0's view");
}

#[test]
fn a_leaving_member_is_marked_left() {
    let mut cluster = Cluster::new(5, 5);
    cluster.run_for(Duration::from_secs(10));
    cluster.input(2, SwimInput::Leave);
    cluster.run_for(Duration::from_secs(5));
    for index in [0, 1, 3, 4] {
        assert_eq!(cluster.state(index, 2), Some(MemberState::Left), "node {index}");
        let stats = cluster.nodes[index].stats();
        assert_eq!(stats.transitions_to(MemberState::Left), 1, "node {index}: {stats:?}");
    }
    // The leaver's own change counts in its own view.
    assert_eq!(cluster.nodes[2].stats().transitions_to(MemberState::Left), 1);
}

#[test]
fn a_healed_partition_merges_views() {
    let mut cluster = Cluster::new(8, 6);
    cluster.run_for(Duration::from_secs(10));
    for a in 0..4 {
        for b in 4..8 {
            cluster.cut.insert((a, b));
            cluster.cut.insert((b, a));
        }
    }
    cluster.run_for(Duration::from_secs(90));
    assert_eq!(cluster.state(0, 7), Some(MemberState::Dead));
    cluster.cut.clear();
    cluster.run_for(Duration::from_secs(120));
    let everyone: Vec<MemberId> = (0..8).map(MemberId).collect();
    for index in 0..8 {
        assert_eq!(cluster.live_view(index), everyone, "node {index}");
    }
}

#[test]
fn awareness_rises_when_nobody_answers() {
    let mut cluster = Cluster::new(4, 7);
    cluster.run_for(Duration::from_secs(5));
    cluster.down.extend([1, 2, 3]);
    cluster.run_for(Duration::from_secs(8));
    assert!(cluster.nodes[0].awareness() >= 2, "awareness {}", cluster.nodes[0].awareness());
}

#[test]
fn confirmations_shrink_the_suspicion_timeout() {
    let mut cluster = Cluster::new(6, 8);
    cluster.run_for(Duration::from_secs(10));
    let now = cluster.now;
    let mut suspect = *cluster.nodes[0].member(MemberId(5)).expect("known");
    suspect.state = MemberState::Suspect;
    let mut deadlines = Vec::new();
    for reporter in 1..5 {
        let update = Update { member: suspect, reporter: MemberId(reporter) };
        let message = SwimMessage::Ack { seq: 0, from: MemberId(reporter), updates: vec![update] };
        let mut effects = Vec::new();
        let input = SwimInput::Message { from: addr(reporter as usize), message };
        cluster.nodes[0].step(now, &mut cluster.rng, input, &mut effects);
        deadlines.push(cluster.nodes[0].suspicion_deadline(MemberId(5)).expect("suspected"));
    }
    let (minimum, maximum) = cluster.nodes[0].suspicion_bounds();
    assert_eq!(deadlines[0], now + maximum);
    assert!(deadlines.windows(2).all(|pair| pair[1] < pair[0]), "{deadlines:?}");
    assert_eq!(deadlines[3], now + minimum);
}
