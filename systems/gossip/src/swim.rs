//! SWIM membership and failure detection (Das et al., 2002) with the Lifeguard refinements
//! (Dadgar et al., 2018), as a sans-IO state machine.
//!
//! Each probe period a node pings one member (round-robin over a shuffled list). Without an
//! ack within the probe timeout it asks `indirect_count` others to ping the target for it
//! (ping-req); relays that hear nothing send a nack. A member that stays silent for the whole
//! period becomes *suspect*; a suspicion that nobody refutes before its timeout turns into
//! *dead*. A member refutes a suspicion about itself by raising its incarnation number. Every
//! change is piggybacked on pings and acks, and on `Gossip` rounds to `gossip_count` members every
//! `gossip_interval` while updates are queued, a bounded number of times (infection-style
//! dissemination); a periodic push-pull `Sync` with a random member (sometimes a dead one)
//! repairs what gossip missed, including views split by a healed partition.
//!
//! Lifeguard:
//! - Local health multiplier (`awareness`): failed probes with missing nacks and refutations
//!   raise it, successful probes lower it; probe interval and timeout scale with it, so a slow
//!   node stops accusing healthy ones.
//! - Dogpile: a suspicion's timeout starts at `suspicion_max` and shrinks towards
//!   `suspicion_min` logarithmically with each independent confirmation.
//! - Buddy system: a ping to a member we suspect carries that suspicion first, so the member
//!   learns of it (and refutes) at once.
//!
//! Joining: send `Sync` to seed addresses until one answers. Leaving: mark self `Left` at a
//! higher incarnation and tell a few members directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sim::Instant;

use crate::faults::{Faults, PlantedBug};

/// A member's identity (stable across restarts of the same node).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct MemberId(pub u64);

/// What a node believes about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; dead unless it refutes in time.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

/// A member as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Identity.
    pub id: MemberId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its incarnation number (only the member itself raises it, to refute).
    pub incarnation: u32,
    /// Believed state.
    pub state: MemberState,
}

/// One membership fact in flight: `reporter` claims `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member the update is about.
    pub member: Member,
    /// Who concluded it (for independent suspicion confirmations).
    pub reporter: MemberId,
}

/// SWIM messages. Updates ride along on every ping and ack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimMessage {
    /// Are you alive? `target` guards against a different member at a reused address.
    Ping {
        /// Sequence number the ack echoes.
        seq: u32,
        /// Sender.
        from: MemberId,
        /// Intended receiver.
        target: MemberId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Please ping `target` for me and forward its ack.
    PingReq {
        /// The origin's sequence number, echoed in the forwarded ack or nack.
        seq: u32,
        /// The origin.
        from: MemberId,
        /// The member to probe.
        target: Member,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// I am alive (answering `seq`).
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// Who is alive.
        from: MemberId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// A relay did not hear from the target (Lifeguard): the relay itself is reachable.
    Nack {
        /// The origin's sequence number.
        seq: u32,
        /// The relay.
        from: MemberId,
    },
    /// Updates only, sent every gossip interval to a few members (memberlist's gossip).
    Gossip {
        /// Sender.
        from: MemberId,
        /// The updates.
        updates: Vec<Update>,
    },
    /// Push-pull state exchange (one page of the sender's view). Joins use it too.
    Sync {
        /// Sender.
        from: MemberId,
        /// Whether the receiver should answer with its own view.
        reply: bool,
        /// A page of the sender's members.
        members: Vec<Member>,
    },
}

/// What drives the state machine.
#[derive(Clone, Debug)]
pub enum SwimInput<'a> {
    /// Time passed; run due timers.
    Tick,
    /// A message arrived from `from`.
    Message {
        /// The sender's address.
        from: SocketAddr,
        /// The message.
        message: SwimMessage,
    },
    /// Join via these seed addresses (retried until a member answers).
    Join(&'a [SocketAddr]),
    /// Leave gracefully.
    Leave,
}

/// What the state machine asks its driver to do or tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwimEffect {
    /// Send `message` to `to`.
    Send {
        /// Destination.
        to: SocketAddr,
        /// Message.
        message: SwimMessage,
    },
    /// Our view of a member changed.
    Changed(Member),
}

/// Tunables, defaulting to memberlist's LAN profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwimConfig {
    /// Time between probes at full health.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking for indirect probes.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly (also the expected confirmation count).
    pub indirect_count: usize,
    /// Suspicion timeout floor = `suspicion_mult * max(1, log10(n)) * probe_interval`.
    pub suspicion_mult: u32,
    /// Suspicion timeout ceiling = floor times this.
    pub suspicion_max_mult: u32,
    /// Largest local health multiplier (Lifeguard).
    pub awareness_max: u32,
    /// Each update is piggybacked `retransmit_mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Time between gossip rounds (sent only while updates are queued).
    pub gossip_interval: Duration,
    /// Members each gossip round goes to.
    pub gossip_count: usize,
    /// Time between push-pull syncs.
    pub sync_interval: Duration,
    /// Time between join attempts while no seed has answered.
    pub join_retry_interval: Duration,
}

impl Default for SwimConfig {
    fn default() -> SwimConfig {
        SwimConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_count: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            awareness_max: 8,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_count: 3,
            sync_interval: Duration::from_secs(15),
            join_retry_interval: Duration::from_secs(1),
        }
    }
}

/// Updates piggybacked on one message at most.
pub const UPDATES_PER_MESSAGE_MAX: usize = 12;
/// Members in one `Sync` page at most (keeps a page under a 1472-byte MTU).
pub const SYNC_PAGE_MEMBERS_MAX: usize = 32;
/// Members a node tracks at most; more are dropped and counted.
pub const MEMBERS_MAX: usize = 4096;
/// Queued outgoing updates at most.
pub const BROADCAST_QUEUE_MAX: usize = 1024;
/// Indirect probes a relay keeps open at most.
pub const RELAYS_MAX: usize = 256;
/// Members told directly about a graceful leave.
pub const LEAVE_FANOUT: usize = 4;

/// Counters, for tests and measurements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwimStats {
    /// Probes sent.
    pub probe_count: u64,
    /// Probes that got no ack in their period.
    pub probe_failed_count: u64,
    /// Ping-reqs sent.
    pub ping_req_count: u64,
    /// Suspicions started by our own failed probes.
    pub suspect_count: u64,
    /// Suspicions that timed out into dead here.
    pub dead_declared_count: u64,
    /// Refutations of suspicions about ourselves.
    pub refute_count: u64,
    /// Members not added because `MEMBERS_MAX` was reached.
    pub member_overflow_count: u64,
    /// Changes of a member's state in this node's view, by the state entered (in the order
    /// alive, suspect, dead, left): a member first heard of enters its state; a refutation at a
    /// higher incarnation that keeps the state is no change. This node's own changes count.
    #[serde(default)]
    pub transition_counts: [u64; 4],
}

impl SwimStats {
    /// Changes into `state` in this node's view.
    pub fn transitions_to(&self, state: MemberState) -> u64 {
        self.transition_counts[usize::from(state_rank(state))]
    }
}

#[derive(Clone, Debug)]
struct Probe {
    target: MemberId,
    seq: u32,
    timeout_at: Instant,
    indirect_sent: bool,
    nack_expected: u32,
    nack_count: u32,
    acked: bool,
}

#[derive(Clone, Debug)]
struct Relay {
    origin: SocketAddr,
    origin_seq: u32,
    nack_at: Instant,
}

#[derive(Clone, Debug)]
struct Suspicion {
    incarnation: u32,
    started: Instant,
    confirmations: BTreeSet<MemberId>,
    deadline: Instant,
}

#[derive(Clone, Debug)]
struct Broadcast {
    update: Update,
    transmit_count: u32,
}

/// The SWIM + Lifeguard state machine of one node.
#[derive(Clone, Debug)]
pub struct Swim {
    config: SwimConfig,
    me: MemberId,
    // Invariant: holds `me`, with our own incarnation and state.
    members: BTreeMap<MemberId, Member>,
    // Invariant: equals `members[&me]` (read on every deadline and tick; a copy saves a walk).
    own: Member,
    // Invariant: how many of `members` are live (read per piggyback; a count saves a walk).
    live_count: usize,
    // Invariant: at most `config.awareness_max`.
    awareness: u32,
    probe: Option<Probe>,
    probe_order: Vec<MemberId>,
    next_probe_at: Instant,
    relays: BTreeMap<u32, Relay>,
    suspicions: BTreeMap<MemberId, Suspicion>,
    // Invariant: exactly the `(deadline, id)` pairs of `suspicions`, so the earliest is first.
    suspicion_timers: BTreeSet<(Instant, MemberId)>,
    broadcasts: Vec<Broadcast>,
    seeds: Vec<SocketAddr>,
    joined: bool,
    next_join_at: Instant,
    next_sync_at: Instant,
    next_gossip_at: Instant,
    seq: u32,
    stats: SwimStats,
    faults: Faults,
    /// The addresses this node can send to, when it cannot send to every member (a partial
    /// mesh, as the coordinator's agents form): only those are probed, asked to relay,
    /// gossiped and synced with; the others' states come from what the reachable ones say.
    /// `None`: every member is reachable.
    reachable: Option<BTreeSet<SocketAddr>>,
}

/// Precedence of states at equal incarnation: a later state in this order wins.
fn state_rank(state: MemberState) -> u8 {
    match state {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Dead => 2,
        MemberState::Left => 3,
    }
}

fn is_live(state: MemberState) -> bool {
    matches!(state, MemberState::Alive | MemberState::Suspect)
}

impl Swim {
    /// A node `me` at `addr`, starting at `incarnation` (persisted incarnation + 1 on restart).
    pub fn new(config: SwimConfig, me: MemberId, addr: SocketAddr, incarnation: u32) -> Swim {
        assert!(config.indirect_count >= 1);
        assert!(config.probe_timeout < config.probe_interval);
        let own = Member { id: me, addr, incarnation, state: MemberState::Alive };
        Swim {
            config,
            me,
            members: BTreeMap::from([(me, own)]),
            own,
            live_count: 1,
            awareness: 0,
            probe: None,
            probe_order: Vec::new(),
            next_probe_at: Instant::ZERO,
            relays: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            suspicion_timers: BTreeSet::new(),
            broadcasts: Vec::new(),
            seeds: Vec::new(),
            joined: true,
            next_join_at: Instant::MAX,
            next_sync_at: Instant::ZERO,
            next_gossip_at: Instant::ZERO,
            seq: 0,
            stats: SwimStats::default(),
            faults: Faults::default(),
            reachable: None,
        }
    }

    /// Restricts probes, relays, gossip and syncs to members at these addresses (`None`: all).
    pub fn set_reachable(&mut self, reachable: Option<BTreeSet<SocketAddr>>) {
        self.reachable = reachable;
        // A probe order built for the old set is rebuilt at its next round.
        self.probe_order.clear();
    }

    /// Whether this node can send to `member`.
    fn reaches(&self, member: &Member) -> bool {
        self.reachable.as_ref().is_none_or(|reachable| reachable.contains(&member.addr))
    }

    /// Hands the state machine the driver's BUGGIFY hook and planted bug.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The state's invariants: `own` mirrors `members[&me]`, `live_count` counts the live
    /// members, and `suspicion_timers` holds exactly the suspicions' deadlines. Walks every
    /// member: `step` runs it only in builds with debug assertions.
    pub fn check_invariants(&self) {
        assert_eq!(self.members.get(&self.me), Some(&self.own));
        assert!(self.awareness <= self.config.awareness_max);
        let live = self.members.values().filter(|member| is_live(member.state)).count();
        assert_eq!(self.live_count, live);
        assert_eq!(self.suspicion_timers.len(), self.suspicions.len());
        for (id, suspicion) in &self.suspicions {
            assert!(self.suspicion_timers.contains(&(suspicion.deadline, *id)));
            assert!(suspicion.deadline >= suspicion.started);
        }
        assert!(self.relays.len() <= RELAYS_MAX);
        assert!(self.members.len() <= MEMBERS_MAX);
    }

    /// This node's id.
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// This node as it presents itself.
    pub fn own(&self) -> Member {
        self.own
    }

    /// Every known member, including this node, by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Members believed alive or suspect, this node included.
    pub fn live_count(&self) -> usize {
        self.live_count
    }

    /// Records `member` (the one write path of `members`, keeping `own` and `live_count`).
    fn put_member(&mut self, member: Member) {
        let old = self.members.insert(member.id, member);
        if old.is_none_or(|old| old.state != member.state) {
            self.stats.transition_counts[usize::from(state_rank(member.state))] += 1;
        }
        let was_live = old.is_some_and(|old| is_live(old.state));
        self.live_count =
            self.live_count + usize::from(is_live(member.state)) - usize::from(was_live);
        if member.id == self.me {
            self.own = member;
        }
    }

    /// The Lifeguard local health multiplier (0 = healthy).
    pub fn awareness(&self) -> u32 {
        self.awareness
    }

    /// Counters.
    pub fn stats(&self) -> &SwimStats {
        &self.stats
    }

    /// Whether a seed (or any member) has answered since the last `Join`.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// When `step(Tick)` next has work to do.
    pub fn deadline(&self) -> Instant {
        let mut deadline = Instant::MAX;
        if self.own().state != MemberState::Left {
            deadline = deadline.min(self.next_probe_at).min(self.next_sync_at);
            if !self.broadcasts.is_empty() {
                deadline = deadline.min(self.next_gossip_at);
            }
            if !self.joined {
                deadline = deadline.min(self.next_join_at);
            }
        }
        if let Some(probe) = &self.probe
            && !probe.acked
            && !probe.indirect_sent
        {
            deadline = deadline.min(probe.timeout_at);
        }
        if let Some((earliest, _)) = self.suspicion_timers.first() {
            deadline = deadline.min(*earliest);
        }
        for relay in self.relays.values() {
            deadline = deadline.min(relay.nack_at);
        }
        deadline
    }

    /// The one transition function.
    pub fn step(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        input: SwimInput<'_>,
        effects: &mut Vec<SwimEffect>,
    ) {
        match input {
            SwimInput::Tick => self.tick(now, rng, effects),
            SwimInput::Message { from, message } => {
                self.on_message(now, rng, from, message, effects);
            }
            SwimInput::Join(seeds) => {
                self.seeds = seeds.to_vec();
                self.joined = seeds.is_empty();
                self.next_join_at = now;
                // Real nodes boot and tick out of phase: the first probe waits a random part
                // of a period (memberlist staggers its probe loop the same way).
                self.next_probe_at = now.max(self.next_probe_at) + self.probe_jitter(rng, 1);
                self.tick(now, rng, effects);
            }
            SwimInput::Leave => self.leave(now, rng, effects),
        }
        assert!(self.awareness <= self.config.awareness_max);
        assert!(self.broadcasts.len() <= BROADCAST_QUEUE_MAX);
        assert_eq!(self.suspicion_timers.len(), self.suspicions.len());
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    fn scaled(&self, duration: Duration) -> Duration {
        duration * (self.awareness + 1)
    }

    fn tick(&mut self, now: Instant, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        let leaving = self.own().state == MemberState::Left;
        if !leaving && !self.joined && now >= self.next_join_at {
            let page = vec![self.own()];
            for seed in self.seeds.clone() {
                let message =
                    SwimMessage::Sync { from: self.me, reply: true, members: page.clone() };
                effects.push(SwimEffect::Send { to: seed, message });
            }
            self.next_join_at = now + self.config.join_retry_interval;
        }
        let indirect_due = self
            .probe
            .as_ref()
            .is_some_and(|probe| !probe.acked && !probe.indirect_sent && now >= probe.timeout_at);
        if indirect_due {
            self.send_ping_reqs(rng, effects);
        }
        if !leaving && now >= self.next_probe_at {
            self.finish_probe(now, effects);
            self.start_probe(now, rng, effects);
        }
        // Due suspicions in id order, as a scan of `suspicions` would find them.
        let mut due: Vec<MemberId> = self
            .suspicion_timers
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect();
        due.sort_unstable();
        for id in due {
            self.declare_dead(now, id, effects);
        }
        self.expire_relays(now, effects);
        if !leaving && now >= self.next_sync_at {
            self.push_pull(now, rng, effects);
        }
        if !self.broadcasts.is_empty() && now >= self.next_gossip_at {
            self.gossip(rng, effects);
            self.next_gossip_at = now + self.config.gossip_interval;
        }
    }

    fn gossip(&mut self, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        let live: Vec<Member> = self
            .members
            .values()
            .filter(|member| member.id != self.me && is_live(member.state))
            .filter(|member| self.reaches(member))
            .copied()
            .collect();
        for target in live.choose_multiple(rng, self.config.gossip_count) {
            let updates = self.piggyback(Some(target.id));
            if updates.is_empty() {
                break;
            }
            let message = SwimMessage::Gossip { from: self.me, updates };
            effects.push(SwimEffect::Send { to: target.addr, message });
        }
    }

    fn expire_relays(&mut self, now: Instant, effects: &mut Vec<SwimEffect>) {
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, relay)| relay.nack_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            let relay = self.relays.remove(&seq).expect("listed");
            let message = SwimMessage::Nack { seq: relay.origin_seq, from: self.me };
            effects.push(SwimEffect::Send { to: relay.origin, message });
        }
    }

    fn push_pull(&mut self, now: Instant, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        self.next_sync_at = now + self.config.sync_interval;
        let others = |wanted: fn(MemberState) -> bool| -> Vec<Member> {
            self.members
                .values()
                .filter(|member| member.id != self.me && wanted(member.state))
                .filter(|member| self.reaches(member))
                .copied()
                .collect()
        };
        let live = others(is_live);
        let dead = others(|state| state == MemberState::Dead);
        // Half the time try a dead member: this is how views split by a partition reconnect.
        let pool =
            if !dead.is_empty() && (live.is_empty() || rng.random_bool(0.5)) { dead } else { live };
        if let Some(target) = pool.choose(rng) {
            self.send_view(target.addr, true, effects);
        }
    }

    fn send_view(&self, to: SocketAddr, reply: bool, effects: &mut Vec<SwimEffect>) {
        let members: Vec<Member> = self.members.values().copied().collect();
        for page in members.chunks(SYNC_PAGE_MEMBERS_MAX) {
            let message = SwimMessage::Sync { from: self.me, reply, members: page.to_vec() };
            effects.push(SwimEffect::Send { to, message });
        }
    }

    /// A random delay of up to `1 / divisor` of a probe period, in whole milliseconds.
    fn probe_jitter(&self, rng: &mut impl RngCore, divisor: u32) -> Duration {
        assert!(divisor >= 1);
        let bound_ms = (self.config.probe_interval.as_millis() as u64 / u64::from(divisor)).max(1);
        Duration::from_millis(rng.next_u64() % bound_ms)
    }

    fn start_probe(&mut self, now: Instant, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        // Each period is stretched by up to a tenth at random, so probes drift out of phase.
        let period = self.scaled(self.config.probe_interval) + self.probe_jitter(rng, 10);
        self.next_probe_at = now + period;
        let Some(target) = self.next_target(rng) else { return };
        self.seq = self.seq.wrapping_add(1);
        let updates = self.piggyback(Some(target.id));
        let message =
            SwimMessage::Ping { seq: self.seq, from: self.me, target: target.id, updates };
        effects.push(SwimEffect::Send { to: target.addr, message });
        self.stats.probe_count += 1;
        self.probe = Some(Probe {
            target: target.id,
            seq: self.seq,
            timeout_at: now + self.scaled(self.config.probe_timeout),
            indirect_sent: false,
            nack_expected: 0,
            nack_count: 0,
            acked: false,
        });
    }

    /// The next live member in a shuffled round-robin order (reshuffled each round).
    fn next_target(&mut self, rng: &mut impl RngCore) -> Option<Member> {
        for _ in 0..2 {
            while let Some(id) = self.probe_order.pop() {
                if let Some(member) = self.members.get(&id)
                    && is_live(member.state)
                    && self.reaches(member)
                {
                    return Some(*member);
                }
            }
            self.probe_order = self
                .members
                .values()
                .filter(|member| member.id != self.me && is_live(member.state))
                .filter(|member| self.reaches(member))
                .map(|member| member.id)
                .collect();
            self.probe_order.shuffle(rng);
        }
        None
    }

    fn finish_probe(&mut self, now: Instant, effects: &mut Vec<SwimEffect>) {
        let Some(probe) = self.probe.take() else { return };
        if probe.acked {
            self.awareness = self.awareness.saturating_sub(1);
            return;
        }
        self.stats.probe_failed_count += 1;
        // Lifeguard: missing nacks mean the fault may be ours; no relays at all too.
        let delta = if probe.nack_expected > 0 {
            probe.nack_expected.saturating_sub(probe.nack_count)
        } else {
            1
        };
        self.awareness = (self.awareness + delta).min(self.config.awareness_max);
        let Some(target) = self.members.get(&probe.target).copied() else { return };
        if target.state == MemberState::Alive {
            self.stats.suspect_count += 1;
            let member = Member { state: MemberState::Suspect, ..target };
            self.apply(now, Update { member, reporter: self.me }, effects);
        }
    }

    fn send_ping_reqs(&mut self, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        let probe = self.probe.as_ref().expect("probe in flight");
        let (target_id, seq) = (probe.target, probe.seq);
        let Some(target) = self.members.get(&target_id).copied() else { return };
        let relays: Vec<Member> = self
            .members
            .values()
            .filter(|member| member.id != self.me && member.id != target_id)
            .filter(|member| member.state == MemberState::Alive && self.reaches(member))
            .copied()
            .collect();
        let chosen: Vec<Member> =
            relays.choose_multiple(rng, self.config.indirect_count).copied().collect();
        for relay in &chosen {
            let updates = self.piggyback(None);
            let message = SwimMessage::PingReq { seq, from: self.me, target, updates };
            effects.push(SwimEffect::Send { to: relay.addr, message });
        }
        self.stats.ping_req_count += chosen.len() as u64;
        let probe = self.probe.as_mut().expect("probe in flight");
        probe.indirect_sent = true;
        probe.nack_expected = chosen.len() as u32;
    }
}

impl Swim {
    fn on_message(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        source: SocketAddr,
        message: SwimMessage,
        effects: &mut Vec<SwimEffect>,
    ) {
        match message {
            SwimMessage::Ping { seq, from, target, updates } => {
                self.apply_all(now, &updates, effects);
                if target == self.me {
                    let updates = self.piggyback(Some(from));
                    let message = SwimMessage::Ack { seq, from: self.me, updates };
                    effects.push(SwimEffect::Send { to: source, message });
                }
            }
            SwimMessage::PingReq { seq, target, updates, .. } => {
                self.apply_all(now, &updates, effects);
                self.relay(now, source, seq, target, effects);
            }
            SwimMessage::Ack { seq, from, updates } => {
                self.apply_all(now, &updates, effects);
                self.on_ack(source, seq, from, effects);
            }
            SwimMessage::Gossip { updates, .. } => self.apply_all(now, &updates, effects),
            SwimMessage::Nack { seq, .. } => {
                if let Some(probe) = self.probe.as_mut().filter(|probe| probe.seq == seq) {
                    probe.nack_count = (probe.nack_count + 1).min(probe.nack_expected);
                }
            }
            SwimMessage::Sync { from, reply, members } => {
                self.joined = true;
                for member in members.into_iter().take(SYNC_PAGE_MEMBERS_MAX) {
                    // A dead verdict learnt in bulk is only a suspicion here (memberlist).
                    let member = if member.state == MemberState::Dead && member.id != self.me {
                        Member { state: MemberState::Suspect, ..member }
                    } else {
                        member
                    };
                    self.apply(now, Update { member, reporter: from }, effects);
                }
                if reply {
                    self.send_view(source, false, effects);
                }
            }
        }
        let _ = rng;
    }

    fn relay(
        &mut self,
        now: Instant,
        origin: SocketAddr,
        origin_seq: u32,
        target: Member,
        effects: &mut Vec<SwimEffect>,
    ) {
        if self.relays.len() >= RELAYS_MAX {
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        let nack_at = now + self.config.probe_timeout * 4 / 5;
        self.relays.insert(self.seq, Relay { origin, origin_seq, nack_at });
        let updates = self.piggyback(Some(target.id));
        let message =
            SwimMessage::Ping { seq: self.seq, from: self.me, target: target.id, updates };
        effects.push(SwimEffect::Send { to: target.addr, message });
    }

    fn on_ack(
        &mut self,
        _source: SocketAddr,
        seq: u32,
        from: MemberId,
        effects: &mut Vec<SwimEffect>,
    ) {
        if let Some(relay) = self.relays.remove(&seq) {
            let message = SwimMessage::Ack { seq: relay.origin_seq, from, updates: Vec::new() };
            effects.push(SwimEffect::Send { to: relay.origin, message });
            return;
        }
        // Simulates an ack that arrives just after its probe's period ended (a slow relay, a
        // queue in a switch): the probe counts as failed although the target is alive.
        if self.faults.buggify("gossip.swim.ack_late") {
            return;
        }
        if let Some(probe) = self.probe.as_mut()
            && probe.seq == seq
            && probe.target == from
        {
            probe.acked = true;
        }
    }

    fn apply_all(&mut self, now: Instant, updates: &[Update], effects: &mut Vec<SwimEffect>) {
        for update in updates.iter().take(UPDATES_PER_MESSAGE_MAX) {
            self.apply(now, *update, effects);
        }
    }

    /// Folds one update into the view; returns whether it changed anything.
    fn apply(&mut self, now: Instant, update: Update, effects: &mut Vec<SwimEffect>) -> bool {
        let new = update.member;
        if new.id == self.me {
            self.about_me(new);
            return false;
        }
        let Some(old) = self.members.get(&new.id).copied() else {
            // Unknown members are recorded in any state (a dead one too), so every view
            // converges to the same set whatever order the updates came in.
            if self.members.len() >= MEMBERS_MAX {
                self.stats.member_overflow_count += 1;
                return false;
            }
            self.put_member(new);
            if new.state == MemberState::Suspect {
                self.start_suspicion(now, update);
            }
            self.queue(update);
            effects.push(SwimEffect::Changed(new));
            return true;
        };
        let newer =
            (new.incarnation, state_rank(new.state)) > (old.incarnation, state_rank(old.state));
        if !newer {
            let same = new.incarnation == old.incarnation && new.state == old.state;
            if same && new.state == MemberState::Suspect {
                self.confirm(now, new.id, update);
            }
            return false;
        }
        self.put_member(new);
        self.remove_suspicion(new.id);
        if new.state == MemberState::Suspect {
            self.start_suspicion(now, update);
        }
        self.queue(update);
        effects.push(SwimEffect::Changed(new));
        true
    }

    fn start_suspicion(&mut self, now: Instant, update: Update) {
        let suspicion = Suspicion {
            incarnation: update.member.incarnation,
            started: now,
            confirmations: BTreeSet::new(),
            deadline: now,
        };
        self.remove_suspicion(update.member.id);
        self.suspicion_timers.insert((suspicion.deadline, update.member.id));
        self.suspicions.insert(update.member.id, suspicion);
        self.confirm(now, update.member.id, update);
    }

    fn remove_suspicion(&mut self, id: MemberId) -> Option<Suspicion> {
        let suspicion = self.suspicions.remove(&id)?;
        self.suspicion_timers.remove(&(suspicion.deadline, id));
        Some(suspicion)
    }

    /// Counts an independent confirmation of a suspicion and shrinks its timeout (Lifeguard).
    fn confirm(&mut self, now: Instant, id: MemberId, update: Update) {
        let (minimum, maximum) = self.suspicion_bounds();
        let expected = self.config.indirect_count as f64;
        let Some(suspicion) = self.suspicions.get_mut(&id) else { return };
        assert_eq!(suspicion.incarnation, update.member.incarnation);
        let fresh = suspicion.confirmations.len() < self.config.indirect_count + 1
            && suspicion.confirmations.insert(update.reporter);
        if !fresh {
            return;
        }
        // The first report is the suspicion itself; later ones are confirmations.
        let count = suspicion.confirmations.len().saturating_sub(1) as f64;
        let fraction = ((count + 1.0).ln() / (expected + 1.0).ln()).min(1.0);
        let mut timeout = maximum.saturating_sub(maximum.saturating_sub(minimum).mul_f64(fraction));
        // Simulates a suspicion that reaches its floor early, as if every confirmation Lifeguard
        // expects had come in at once.
        if self.faults.buggify("gossip.swim.suspect_early") {
            timeout = minimum;
        }
        self.suspicion_timers.remove(&(suspicion.deadline, id));
        suspicion.deadline = suspicion.started + timeout.max(minimum);
        self.suspicion_timers.insert((suspicion.deadline, id));
        let _ = now;
        if count > 0.0 {
            self.queue(update);
        }
    }

    /// (floor, ceiling) of the suspicion timeout for the current cluster size.
    pub fn suspicion_bounds(&self) -> (Duration, Duration) {
        let size = self.live_count().max(1) as f64;
        let scale = size.log10().max(1.0);
        let minimum =
            self.config.probe_interval.mul_f64(f64::from(self.config.suspicion_mult) * scale);
        (minimum, minimum * self.config.suspicion_max_mult)
    }

    fn about_me(&mut self, claim: Member) {
        let own = self.own();
        if own.state == MemberState::Left || claim.state == MemberState::Alive {
            return;
        }
        if claim.incarnation < own.incarnation {
            // A stale accusation (we refuted it already, but the accuser missed that): tell
            // it again, first thing on our next messages, so the accuser's timer cannot expire.
            self.queue(Update { member: own, reporter: self.me });
            return;
        }
        // Refute: only we raise our incarnation.
        let mut incarnation = claim.incarnation.saturating_add(1);
        if self.faults.planted(PlantedBug::RefuteWithStaleIncarnation) {
            incarnation = claim.incarnation;
        }
        let refuted = Member { incarnation, ..own };
        self.put_member(refuted);
        self.stats.refute_count += 1;
        self.awareness = (self.awareness + 1).min(self.config.awareness_max);
        self.queue(Update { member: refuted, reporter: self.me });
    }

    fn declare_dead(&mut self, now: Instant, id: MemberId, effects: &mut Vec<SwimEffect>) {
        let suspicion = self.remove_suspicion(id).expect("due suspicion");
        let Some(member) = self.members.get(&id).copied() else { return };
        if member.state != MemberState::Suspect || member.incarnation != suspicion.incarnation {
            return;
        }
        self.stats.dead_declared_count += 1;
        let member = Member { state: MemberState::Dead, ..member };
        self.apply(now, Update { member, reporter: self.me }, effects);
    }

    fn leave(&mut self, now: Instant, rng: &mut impl RngCore, effects: &mut Vec<SwimEffect>) {
        let own = self.own();
        if own.state == MemberState::Left {
            return;
        }
        let left = Member {
            incarnation: own.incarnation.saturating_add(1),
            state: MemberState::Left,
            ..own
        };
        self.put_member(left);
        self.queue(Update { member: left, reporter: self.me });
        let live: Vec<Member> = self
            .members
            .values()
            .filter(|member| member.id != self.me && member.state == MemberState::Alive)
            .copied()
            .collect();
        for member in live.choose_multiple(rng, LEAVE_FANOUT) {
            let message = SwimMessage::Sync { from: self.me, reply: false, members: vec![left] };
            effects.push(SwimEffect::Send { to: member.addr, message });
        }
        self.probe = None;
        let _ = now;
    }

    fn retransmit_limit(&self) -> u32 {
        let size = (self.live_count() + 1) as f64;
        self.config.retransmit_mult * (size.log10().ceil().max(1.0) as u32)
    }

    /// Updates to piggyback: a suspicion about the receiver first (buddy system), then the
    /// least-sent queued updates.
    fn piggyback(&mut self, receiver: Option<MemberId>) -> Vec<Update> {
        let mut updates = Vec::new();
        if let Some(member) = receiver.and_then(|id| self.members.get(&id))
            && member.state == MemberState::Suspect
        {
            updates.push(Update { member: *member, reporter: self.me });
        }
        self.broadcasts.sort_by_key(|broadcast| broadcast.transmit_count);
        let limit = self.retransmit_limit();
        for broadcast in &mut self.broadcasts {
            if updates.len() >= UPDATES_PER_MESSAGE_MAX {
                break;
            }
            broadcast.transmit_count += 1;
            updates.push(broadcast.update);
        }
        self.broadcasts.retain(|broadcast| broadcast.transmit_count < limit);
        updates
    }

    fn queue(&mut self, update: Update) {
        let id = update.member.id;
        self.broadcasts.retain(|broadcast| {
            broadcast.update.member.id != id
                || (broadcast.update.member.state == MemberState::Suspect
                    && update.member.state == MemberState::Suspect
                    && broadcast.update.member.incarnation == update.member.incarnation)
        });
        if self.broadcasts.len() >= BROADCAST_QUEUE_MAX {
            self.broadcasts.sort_by_key(|broadcast| broadcast.transmit_count);
            self.broadcasts.pop();
        }
        self.broadcasts.push(Broadcast { update, transmit_count: 0 });
    }
}

impl Swim {
    /// Restores a persisted view after a restart. Suspects come back alive at their
    /// incarnation (a live peer's suspicion, carrying the same incarnation, still wins), and
    /// the probes that follow find out who is really there.
    pub fn restore(&mut self, members: &[Member]) {
        let me = self.me;
        for member in members.iter().filter(|member| member.id != me) {
            if self.members.len() >= MEMBERS_MAX {
                self.stats.member_overflow_count += 1;
                break;
            }
            let state = match member.state {
                MemberState::Suspect => MemberState::Alive,
                state => state,
            };
            if !self.members.contains_key(&member.id) {
                self.put_member(Member { state, ..*member });
            }
        }
    }

    /// When the suspicion of `id` times out, if `id` is suspected.
    pub fn suspicion_deadline(&self, id: MemberId) -> Option<Instant> {
        self.suspicions.get(&id).map(|suspicion| suspicion.deadline)
    }
}
