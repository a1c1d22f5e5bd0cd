//! HyParView (Leitão, Pereira, Rodrigues, 2007): a membership overlay with a small symmetric
//! *active* view (the broadcast neighbours) and a larger *passive* view (backups), as a
//! sans-IO state machine.
//!
//! - Join: the newcomer sends `Join` to a contact, which takes it into its active view and
//!   sends `ForwardJoin` random walks (length `active_walk_length`) through the overlay; the
//!   walk's end takes the newcomer into its active view, and the node at hop
//!   `passive_walk_length` into its passive view.
//! - Repair: when an active neighbour fails (SWIM tells us, `HvInput::PeerFailed`) or
//!   disconnects, a random passive peer is asked to become a neighbour (with high priority when
//!   the active view is empty, which may not be refused).
//! - Shuffle: every `shuffle_interval` a sample of our views walks the overlay; its end answers
//!   with a sample of its passive view, and both fold what they got into their passive views.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::{IndexedRandom, IteratorRandom};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sim::Instant;

use crate::swim::MemberId;

/// A peer: identity and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// Identity.
    pub id: MemberId,
    /// Address.
    pub addr: SocketAddr,
}

/// HyParView messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HvMessage {
    /// A newcomer asks a contact to join.
    Join {
        /// The newcomer.
        from: Peer,
    },
    /// The contact took the newcomer in (so it takes the contact in too).
    JoinReply {
        /// The node that took the newcomer.
        from: Peer,
    },
    /// A random walk announcing a newcomer.
    ForwardJoin {
        /// The sender.
        from: Peer,
        /// The newcomer.
        joiner: Peer,
        /// Hops left.
        ttl: u8,
    },
    /// Please become my active neighbour.
    Neighbor {
        /// The asker.
        from: Peer,
        /// High priority (the asker has no neighbours): may not be refused.
        high_priority: bool,
    },
    /// Answer to `Neighbor`.
    NeighborReply {
        /// The answering node.
        from: Peer,
        /// Whether it took the asker.
        accepted: bool,
    },
    /// I dropped you from my active view.
    Disconnect {
        /// The sender.
        from: Peer,
    },
    /// A view sample walking the overlay.
    Shuffle {
        /// The shuffle's origin.
        origin: Peer,
        /// Hops left.
        ttl: u8,
        /// The sample.
        peers: Vec<Peer>,
    },
    /// The end of a shuffle walk answers the origin with a passive sample.
    ShuffleReply {
        /// The sample.
        peers: Vec<Peer>,
    },
}

/// Inputs.
#[derive(Clone, Debug)]
pub enum HvInput<'a> {
    /// Time passed.
    Tick,
    /// A message arrived from `from`.
    Message {
        /// Sender address.
        from: SocketAddr,
        /// The message.
        message: HvMessage,
    },
    /// Join through these seeds (retried while the active view is empty).
    Join(&'a [SocketAddr]),
    /// The failure detector declared this peer dead or gone.
    PeerFailed(MemberId),
    /// The membership layer knows this peer alive: a passive-view candidate (this keeps the
    /// passive view rich enough for repairs to bridge overlay components).
    Discovered(Peer),
    /// Pushes are missing data that anti-entropy had to bring: the overlay may be split, so
    /// ask this peer (from the membership layer) to become a neighbour, at high priority.
    Reach(Peer),
}

/// Outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HvEffect {
    /// Send a message.
    Send {
        /// Destination.
        to: SocketAddr,
        /// Message.
        message: HvMessage,
    },
    /// A peer joined the active view.
    NeighborUp(Peer),
    /// A peer left the active view.
    NeighborDown(Peer),
}

/// Tunables (the paper's defaults for about 10,000 nodes, scaled down).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HvConfig {
    /// Active view size (fanout + 1).
    pub active_max: usize,
    /// Passive view size.
    pub passive_max: usize,
    /// Active random walk length.
    pub active_walk_length: u8,
    /// The hop at which a join walk adds the newcomer to a passive view.
    pub passive_walk_length: u8,
    /// Active peers in a shuffle sample.
    pub shuffle_active_count: usize,
    /// Passive peers in a shuffle sample.
    pub shuffle_passive_count: usize,
    /// Time between shuffles.
    pub shuffle_interval: Duration,
    /// Time between repair attempts while the active view is short.
    pub repair_interval: Duration,
    /// Time between join attempts while the active view is empty.
    pub join_retry_interval: Duration,
}

impl Default for HvConfig {
    fn default() -> HvConfig {
        HvConfig {
            active_max: 5,
            passive_max: 30,
            active_walk_length: 6,
            passive_walk_length: 3,
            shuffle_active_count: 3,
            shuffle_passive_count: 4,
            shuffle_interval: Duration::from_secs(10),
            repair_interval: Duration::from_millis(500),
            join_retry_interval: Duration::from_secs(1),
        }
    }
}

/// One node's HyParView state.
#[derive(Clone, Debug)]
pub struct HyParView {
    config: HvConfig,
    me: Peer,
    // Invariant: at most `active_max`, never `me`, disjoint from `passive`.
    active: BTreeMap<MemberId, Peer>,
    // Invariant: at most `passive_max`, never `me`.
    passive: BTreeMap<MemberId, Peer>,
    pending: Option<(MemberId, Instant)>,
    seeds: Vec<SocketAddr>,
    next_join_at: Instant,
    next_shuffle_at: Instant,
    next_repair_at: Instant,
}

impl HyParView {
    /// A node `me` with empty views.
    pub fn new(config: HvConfig, me: Peer) -> HyParView {
        assert!(config.active_max >= 1 && config.passive_max >= 1);
        assert!(config.passive_walk_length <= config.active_walk_length);
        HyParView {
            config,
            me,
            active: BTreeMap::new(),
            passive: BTreeMap::new(),
            pending: None,
            seeds: Vec::new(),
            next_join_at: Instant::MAX,
            next_shuffle_at: Instant::ZERO,
            next_repair_at: Instant::ZERO,
        }
    }

    /// The active view (broadcast neighbours).
    pub fn active(&self) -> impl Iterator<Item = &Peer> {
        self.active.values()
    }

    /// The passive view.
    pub fn passive(&self) -> impl Iterator<Item = &Peer> {
        self.passive.values()
    }

    /// The active neighbour with `id`.
    pub fn neighbor(&self, id: MemberId) -> Option<Peer> {
        self.active.get(&id).copied()
    }

    /// When `step(Tick)` next has work.
    pub fn deadline(&self) -> Instant {
        let mut deadline = self.next_shuffle_at;
        if self.active.is_empty() && !self.seeds.is_empty() {
            deadline = deadline.min(self.next_join_at);
        }
        if self.active.len() < self.config.active_max && !self.passive.is_empty() {
            deadline = deadline.min(self.next_repair_at);
        }
        deadline
    }

    /// The one transition function.
    pub fn step(
        &mut self,
        now: Instant,
        rng: &mut impl RngCore,
        input: HvInput<'_>,
        effects: &mut Vec<HvEffect>,
    ) {
        match input {
            HvInput::Tick => self.tick(now, rng, effects),
            HvInput::Message { from, message } => self.on_message(rng, from, message, effects),
            HvInput::Join(seeds) => {
                self.seeds = seeds.to_vec();
                self.next_join_at = now;
                self.tick(now, rng, effects);
            }
            HvInput::Discovered(peer) => self.add_passive(rng, peer),
            HvInput::Reach(peer) => {
                if peer.id != self.me.id && !self.active.contains_key(&peer.id) {
                    let message = HvMessage::Neighbor { from: self.me, high_priority: true };
                    Self::send(effects, peer.addr, message);
                }
            }
            HvInput::PeerFailed(id) => {
                self.passive.remove(&id);
                if let Some(peer) = self.active.remove(&id) {
                    effects.push(HvEffect::NeighborDown(peer));
                }
            }
        }
        assert!(self.active.len() <= self.config.active_max);
        assert!(self.passive.len() <= self.config.passive_max);
        assert!(!self.active.contains_key(&self.me.id) && !self.passive.contains_key(&self.me.id));
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// The views' invariants: bounded, never `me`, disjoint, and every peer filed under its
    /// own id. Walks the active view: `step` runs it only with debug assertions.
    pub fn check_invariants(&self) {
        assert!(self.active.len() <= self.config.active_max);
        assert!(self.passive.len() <= self.config.passive_max);
        for (id, peer) in &self.active {
            assert_eq!(*id, peer.id, "active peer filed under another id");
            assert!(*id != self.me.id && !self.passive.contains_key(id), "{id:?} in both views");
        }
        for (id, peer) in &self.passive {
            assert_eq!(*id, peer.id, "passive peer filed under another id");
        }
    }

    fn send(effects: &mut Vec<HvEffect>, to: SocketAddr, message: HvMessage) {
        effects.push(HvEffect::Send { to, message });
    }

    fn tick(&mut self, now: Instant, rng: &mut impl RngCore, effects: &mut Vec<HvEffect>) {
        if self.active.is_empty() && now >= self.next_join_at {
            if let Some(seed) = self.seeds.choose(rng) {
                Self::send(effects, *seed, HvMessage::Join { from: self.me });
            }
            self.next_join_at = now + self.config.join_retry_interval;
        }
        if let Some((id, _)) = self.pending.filter(|(_, deadline)| *deadline <= now) {
            // No answer: presume the passive peer gone.
            self.passive.remove(&id);
            self.pending = None;
        }
        let short = self.active.len() < self.config.active_max;
        if short && self.pending.is_none() && now >= self.next_repair_at {
            self.next_repair_at = now + self.config.repair_interval;
            if let Some(peer) = self.passive.values().choose(rng).copied() {
                let high_priority = self.active.is_empty();
                Self::send(
                    effects,
                    peer.addr,
                    HvMessage::Neighbor { from: self.me, high_priority },
                );
                self.pending = Some((peer.id, now + self.config.repair_interval));
            }
        }
        if now >= self.next_shuffle_at {
            self.next_shuffle_at = now + self.config.shuffle_interval;
            self.shuffle(rng, effects);
        }
    }

    fn shuffle(&mut self, rng: &mut impl RngCore, effects: &mut Vec<HvEffect>) {
        let Some(target) = self.active.values().choose(rng).copied() else { return };
        let mut peers = vec![self.me];
        peers.extend(self.active.values().choose_multiple(rng, self.config.shuffle_active_count));
        peers.extend(self.passive.values().choose_multiple(rng, self.config.shuffle_passive_count));
        let ttl = self.config.active_walk_length;
        Self::send(effects, target.addr, HvMessage::Shuffle { origin: self.me, ttl, peers });
    }

    fn on_message(
        &mut self,
        rng: &mut impl RngCore,
        source: SocketAddr,
        message: HvMessage,
        effects: &mut Vec<HvEffect>,
    ) {
        match message {
            HvMessage::Join { from } => {
                self.add_active(rng, from, effects);
                Self::send(effects, from.addr, HvMessage::JoinReply { from: self.me });
                let ttl = self.config.active_walk_length;
                let others: Vec<Peer> =
                    self.active.values().filter(|peer| peer.id != from.id).copied().collect();
                for peer in others {
                    let message = HvMessage::ForwardJoin { from: self.me, joiner: from, ttl };
                    Self::send(effects, peer.addr, message);
                }
            }
            HvMessage::JoinReply { from } => self.add_active(rng, from, effects),
            HvMessage::ForwardJoin { from, joiner, ttl } => {
                self.forward_join(rng, from, joiner, ttl, effects);
            }
            HvMessage::Neighbor { from, high_priority } => {
                let accepted = high_priority || self.active.len() < self.config.active_max;
                if accepted {
                    self.add_active(rng, from, effects);
                }
                let reply = HvMessage::NeighborReply { from: self.me, accepted };
                Self::send(effects, from.addr, reply);
            }
            HvMessage::NeighborReply { from, accepted } => {
                if self.pending.is_some_and(|(id, _)| id == from.id) {
                    self.pending = None;
                }
                if accepted {
                    self.add_active(rng, from, effects);
                }
            }
            HvMessage::Disconnect { from } => {
                if let Some(peer) = self.active.remove(&from.id) {
                    effects.push(HvEffect::NeighborDown(peer));
                }
                self.add_passive(rng, from);
            }
            HvMessage::Shuffle { origin, ttl, peers } => {
                self.on_shuffle(rng, source, origin, ttl, peers, effects);
            }
            HvMessage::ShuffleReply { peers } => {
                for peer in peers.into_iter().take(self.config.passive_max) {
                    self.add_passive(rng, peer);
                }
            }
        }
    }
}

impl HyParView {
    fn forward_join(
        &mut self,
        rng: &mut impl RngCore,
        from: Peer,
        joiner: Peer,
        ttl: u8,
        effects: &mut Vec<HvEffect>,
    ) {
        if joiner.id == self.me.id {
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.add_active(rng, joiner, effects);
            Self::send(effects, joiner.addr, HvMessage::JoinReply { from: self.me });
            return;
        }
        if ttl == self.config.passive_walk_length {
            self.add_passive(rng, joiner);
        }
        let next = self
            .active
            .values()
            .filter(|peer| peer.id != from.id && peer.id != joiner.id)
            .choose(rng)
            .copied();
        match next {
            Some(peer) => {
                let message = HvMessage::ForwardJoin { from: self.me, joiner, ttl: ttl - 1 };
                Self::send(effects, peer.addr, message);
            }
            None => {
                self.add_active(rng, joiner, effects);
                Self::send(effects, joiner.addr, HvMessage::JoinReply { from: self.me });
            }
        }
    }

    fn on_shuffle(
        &mut self,
        rng: &mut impl RngCore,
        source: SocketAddr,
        origin: Peer,
        ttl: u8,
        peers: Vec<Peer>,
        effects: &mut Vec<HvEffect>,
    ) {
        if origin.id == self.me.id {
            return;
        }
        if ttl > 0 && self.active.len() > 1 {
            let next = self
                .active
                .values()
                .filter(|peer| peer.id != origin.id && peer.addr != source)
                .choose(rng)
                .copied();
            if let Some(peer) = next {
                let message = HvMessage::Shuffle { origin, ttl: ttl - 1, peers };
                Self::send(effects, peer.addr, message);
                return;
            }
        }
        let count = peers.len().min(self.config.passive_max);
        let reply: Vec<Peer> = self.passive.values().copied().choose_multiple(rng, count);
        Self::send(effects, origin.addr, HvMessage::ShuffleReply { peers: reply });
        for peer in peers.into_iter().take(self.config.passive_max) {
            self.add_passive(rng, peer);
        }
    }

    fn add_active(&mut self, rng: &mut impl RngCore, peer: Peer, effects: &mut Vec<HvEffect>) {
        if peer.id == self.me.id || self.active.contains_key(&peer.id) {
            return;
        }
        self.passive.remove(&peer.id);
        if self.active.len() >= self.config.active_max {
            let dropped = *self.active.values().choose(rng).expect("full view");
            self.active.remove(&dropped.id);
            Self::send(effects, dropped.addr, HvMessage::Disconnect { from: self.me });
            effects.push(HvEffect::NeighborDown(dropped));
            self.add_passive(rng, dropped);
        }
        self.active.insert(peer.id, peer);
        effects.push(HvEffect::NeighborUp(peer));
    }

    fn add_passive(&mut self, rng: &mut impl RngCore, peer: Peer) {
        let known = self.active.contains_key(&peer.id) || self.passive.contains_key(&peer.id);
        if peer.id == self.me.id || known {
            return;
        }
        if self.passive.len() >= self.config.passive_max {
            let index = rng.random_range(0..self.passive.len());
            let evicted = *self.passive.keys().nth(index).expect("in range");
            self.passive.remove(&evicted);
        }
        self.passive.insert(peer.id, peer);
    }
}
