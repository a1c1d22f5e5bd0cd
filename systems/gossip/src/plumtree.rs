//! Plumtree (Leitão, Pereira, Rodrigues, 2007, "Epidemic Broadcast Trees"): reliable broadcast
//! over the HyParView active view that settles into a spanning tree, as a sans-IO state
//! machine.
//!
//! Every neighbour starts in the *eager* set (full payloads are pushed to it). The first copy
//! of a message is delivered and pushed on; a duplicate moves its sender to the *lazy* set and
//! answers `Prune`, so redundant links stop carrying payloads and the eager links form a tree.
//! Lazy neighbours get `IHave` announcements instead. If an announced message does not arrive
//! within `ihave_timeout`, the node sends `Graft` to the announcer, which sends the payload and
//! moves the link back to eager: the tree repairs itself after failures. Message ids are
//! content digests; ids are remembered for `message_ttl` to suppress duplicates.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim::Instant;

use crate::faults::Faults;
use crate::hash::{Digest, hash_bytes};
use crate::hyparview::Peer;
use crate::idindex::IdIndex;
use crate::swim::MemberId;

/// A broadcast message's id: the digest of its payload.
pub type MessageId = Digest;

/// Remembered message ids at most (oldest forgotten first).
pub const RECEIVED_MAX: usize = 65_536;
/// Announcements remembered per missing message at most.
pub const ANNOUNCEMENTS_MAX: usize = 16;
/// Missing messages tracked at most.
pub const MISSING_MAX: usize = 4096;

/// Plumtree messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PtMessage {
    /// A payload, `round` hops from its origin.
    Gossip {
        /// Id.
        id: MessageId,
        /// Hops from the origin.
        round: u16,
        /// Payload.
        payload: Vec<u8>,
    },
    /// I have these messages.
    IHave {
        /// (id, round) pairs.
        ids: Vec<(MessageId, u16)>,
    },
    /// Send me this message, and push to me eagerly from now on.
    Graft {
        /// Id.
        id: MessageId,
        /// Round of the announcement.
        round: u16,
    },
    /// Stop pushing payloads to me.
    Prune,
}

/// Inputs.
#[derive(Clone, Debug)]
pub enum PtInput {
    /// Time passed.
    Tick,
    /// A message from a peer.
    Message {
        /// Sender.
        from: Peer,
        /// Message.
        message: PtMessage,
    },
    /// Broadcast a payload from here.
    Broadcast(Vec<u8>),
    /// A neighbour joined the active view.
    NeighborUp(Peer),
    /// A neighbour left the active view.
    NeighborDown(MemberId),
}

/// Outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtEffect {
    /// Send a message.
    Send {
        /// Destination.
        to: Peer,
        /// Message.
        message: PtMessage,
    },
    /// Deliver a payload to the application (once per message).
    Deliver {
        /// Id.
        id: MessageId,
        /// Payload.
        payload: Vec<u8>,
        /// Hops it travelled.
        round: u16,
    },
}

/// Tunables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtConfig {
    /// Wait for a payload after the first announcement before grafting.
    pub ihave_timeout: Duration,
    /// Wait after a graft before grafting the next announcer.
    pub graft_timeout: Duration,
    /// How long message ids (and payloads, for grafts) are kept.
    pub message_ttl: Duration,
    /// How long announcements wait to be batched into one `IHave` per lazy neighbour.
    pub ihave_interval: Duration,
}

impl Default for PtConfig {
    fn default() -> PtConfig {
        PtConfig {
            // Far above an intra-DC tree path (a few ms), far below the 300 ms latency target.
            ihave_timeout: Duration::from_millis(50),
            graft_timeout: Duration::from_millis(25),
            message_ttl: Duration::from_secs(30),
            ihave_interval: Duration::from_millis(5),
        }
    }
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtStats {
    /// Payload messages received (first copies and duplicates).
    pub gossip_received_count: u64,
    /// Duplicate payloads received.
    pub duplicate_count: u64,
    /// Messages delivered.
    pub delivered_count: u64,
    /// IHave messages sent.
    pub ihave_sent_count: u64,
    /// Message ids announced in them.
    pub ihave_id_count: u64,
    /// Grafts sent.
    pub graft_count: u64,
    /// Prunes sent.
    pub prune_count: u64,
}

#[derive(Clone, Debug)]
struct Received {
    expiry: Instant,
    id: MessageId,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Missing {
    announcements: Vec<(Peer, u16)>,
    timer_at: Instant,
}

/// One node's Plumtree state.
#[derive(Clone, Debug)]
pub struct Plumtree {
    config: PtConfig,
    // Invariant: `eager` and `lazy` are disjoint.
    eager: BTreeMap<MemberId, Peer>,
    lazy: BTreeMap<MemberId, Peer>,
    // Message id -> ticket of its entry in `log` (the hot "seen it?" check; never iterated).
    received: IdIndex,
    // Invariant: the remembered messages in arrival order, which is expiry order (expiries
    // only grow: `now` never goes back and the TTL is fixed); ticket `t` is at `t - log_base`.
    log: VecDeque<Received>,
    log_base: u64,
    missing: BTreeMap<MessageId, Missing>,
    // Invariant: exactly the `(timer_at, id)` pairs of `missing`, so the earliest is first.
    timers: BTreeSet<(Instant, MessageId)>,
    // Announcements waiting for the next flush, per lazy neighbour.
    announcements: BTreeMap<MemberId, (Peer, Vec<(MessageId, u16)>)>,
    flush_at: Option<Instant>,
    stats: PtStats,
    faults: Faults,
}

impl Plumtree {
    /// A node with no neighbours.
    pub fn new(config: PtConfig) -> Plumtree {
        Plumtree {
            config,
            eager: BTreeMap::new(),
            lazy: BTreeMap::new(),
            received: IdIndex::new(),
            log: VecDeque::new(),
            log_base: 0,
            missing: BTreeMap::new(),
            timers: BTreeSet::new(),
            announcements: BTreeMap::new(),
            flush_at: None,
            stats: PtStats::default(),
            faults: Faults::default(),
        }
    }

    /// Hands the state machine the driver's BUGGIFY hook.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The invariants `step` does not check on every call (they walk the missing messages):
    /// `timers` mirrors `missing`, and queued announcements have a flush. The log's expiry
    /// order is checked where it could break, at each append (`deliver`).
    pub fn check_invariants(&self) {
        assert!(self.eager.keys().all(|id| !self.lazy.contains_key(id)));
        if let (Some(oldest), Some(newest)) = (self.log.front(), self.log.back()) {
            assert!(oldest.expiry <= newest.expiry, "log out of expiry order");
        }
        for (id, missing) in &self.missing {
            assert!(self.timers.contains(&(missing.timer_at, *id)));
            assert!(missing.announcements.len() <= ANNOUNCEMENTS_MAX);
        }
        let queued = self.announcements.values().any(|(_, ids)| !ids.is_empty());
        assert!(!queued || self.flush_at.is_some(), "announcements queued without a flush");
    }

    /// Counters.
    pub fn stats(&self) -> &PtStats {
        &self.stats
    }

    /// Neighbours that get payloads.
    pub fn eager(&self) -> impl Iterator<Item = &Peer> {
        self.eager.values()
    }

    /// Neighbours that get announcements.
    pub fn lazy(&self) -> impl Iterator<Item = &Peer> {
        self.lazy.values()
    }

    /// When `step(Tick)` next has work.
    pub fn deadline(&self) -> Instant {
        let timer = self.timers.first().map(|(at, _)| *at);
        let expiry = self.log.front().map(|received| received.expiry);
        timer.into_iter().chain(expiry).chain(self.flush_at).min().unwrap_or(Instant::MAX)
    }

    /// The one transition function.
    pub fn step(&mut self, now: Instant, input: PtInput, effects: &mut Vec<PtEffect>) {
        match input {
            PtInput::Tick => self.tick(now, effects),
            PtInput::Message { from, message } => self.on_message(now, from, message, effects),
            PtInput::Broadcast(payload) => {
                let id = hash_bytes(&payload);
                if !self.received.contains(id) {
                    self.deliver(now, id, payload, 0, None, effects);
                }
            }
            PtInput::NeighborUp(peer) => {
                self.lazy.remove(&peer.id);
                self.eager.insert(peer.id, peer);
            }
            PtInput::NeighborDown(id) => {
                self.announcements.remove(&id);
                self.eager.remove(&id);
                self.lazy.remove(&id);
                for missing in self.missing.values_mut() {
                    missing.announcements.retain(|(peer, _)| peer.id != id);
                }
            }
        }
        assert!(self.eager.keys().all(|id| !self.lazy.contains_key(id)));
        assert!(self.received.len() <= RECEIVED_MAX);
        assert_eq!(self.received.len(), self.log.len());
        assert_eq!(self.timers.len(), self.missing.len());
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// Records, delivers and pushes on a first copy.
    fn deliver(
        &mut self,
        now: Instant,
        id: MessageId,
        payload: Vec<u8>,
        round: u16,
        sender: Option<MemberId>,
        effects: &mut Vec<PtEffect>,
    ) {
        self.forget_missing(id);
        if self.received.len() >= RECEIVED_MAX {
            self.forget_oldest();
        }
        let expiry = now + self.config.message_ttl;
        let ticket = self.log_base + self.log.len() as u64;
        // Invariant (see `log`): arrival order is expiry order.
        assert!(self.log.back().is_none_or(|last| last.expiry <= expiry), "expiry went back");
        self.received.insert(id, ticket);
        self.log.push_back(Received { expiry, id, payload: payload.clone() });
        self.stats.delivered_count += 1;
        let next = round.saturating_add(1);
        for peer in self.eager.values().filter(|peer| Some(peer.id) != sender) {
            let message = PtMessage::Gossip { id, round: next, payload: payload.clone() };
            effects.push(PtEffect::Send { to: *peer, message });
        }
        let lazy: Vec<Peer> =
            self.lazy.values().filter(|peer| Some(peer.id) != sender).copied().collect();
        for peer in lazy {
            self.announce(now, peer, id, next, effects);
        }
        effects.push(PtEffect::Deliver { id, payload, round });
    }

    /// Queues an announcement; a full batch goes out at once, the rest at the next flush.
    fn announce(
        &mut self,
        now: Instant,
        peer: Peer,
        id: MessageId,
        round: u16,
        effects: &mut Vec<PtEffect>,
    ) {
        let batch = self.announcements.entry(peer.id).or_insert((peer, Vec::new()));
        batch.1.push((id, round));
        if batch.1.len() >= ANNOUNCEMENTS_MAX {
            let ids = std::mem::take(&mut batch.1);
            self.send_ihave(peer, ids, effects);
        }
        self.flush_at.get_or_insert(now + self.config.ihave_interval);
    }

    fn send_ihave(&mut self, peer: Peer, ids: Vec<(MessageId, u16)>, effects: &mut Vec<PtEffect>) {
        assert!(ids.len() <= ANNOUNCEMENTS_MAX);
        self.stats.ihave_sent_count += 1;
        self.stats.ihave_id_count += ids.len() as u64;
        effects.push(PtEffect::Send { to: peer, message: PtMessage::IHave { ids } });
    }

    fn flush(&mut self, effects: &mut Vec<PtEffect>) {
        self.flush_at = None;
        let batches = std::mem::take(&mut self.announcements);
        for (peer, ids) in batches.into_values() {
            if !ids.is_empty() {
                self.send_ihave(peer, ids, effects);
            }
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        from: Peer,
        message: PtMessage,
        effects: &mut Vec<PtEffect>,
    ) {
        match message {
            PtMessage::Gossip { id, round, payload } => {
                self.stats.gossip_received_count += 1;
                if hash_bytes(&payload) != id {
                    return;
                }
                if self.received.contains(id) {
                    self.stats.duplicate_count += 1;
                    self.stats.prune_count += 1;
                    self.make_lazy(from);
                    effects.push(PtEffect::Send { to: from, message: PtMessage::Prune });
                } else {
                    self.make_eager(from);
                    self.deliver(now, id, payload, round, Some(from.id), effects);
                    // Simulates the prune a duplicate would have caused had another copy won
                    // the race: the sender's edge turns lazy, and the tree must heal by grafts.
                    if self.faults.buggify("gossip.plumtree.prune_forced") {
                        self.stats.prune_count += 1;
                        self.make_lazy(from);
                        effects.push(PtEffect::Send { to: from, message: PtMessage::Prune });
                    }
                }
            }
            PtMessage::IHave { ids } => {
                for (id, round) in ids.into_iter().take(ANNOUNCEMENTS_MAX) {
                    self.on_ihave(now, from, id, round);
                }
            }
            PtMessage::Graft { id, round } => {
                self.make_eager(from);
                if let Some(ticket) = self.received.get(id) {
                    let index = usize::try_from(ticket - self.log_base).expect("in the log");
                    let payload = self.log[index].payload.clone();
                    let message = PtMessage::Gossip { id, round, payload };
                    effects.push(PtEffect::Send { to: from, message });
                }
            }
            PtMessage::Prune => self.make_lazy(from),
        }
    }

    fn on_ihave(&mut self, now: Instant, from: Peer, id: MessageId, round: u16) {
        if self.received.contains(id) {
            return;
        }
        if !self.missing.contains_key(&id) && self.missing.len() >= MISSING_MAX {
            return;
        }
        // Simulates an announcement whose payload copy is late (the eager path is slow or
        // broken): the graft goes at once instead of after `ihave_timeout`.
        let timer_at = if self.faults.buggify("gossip.plumtree.graft_forced") {
            now
        } else {
            now + self.config.ihave_timeout
        };
        let missing = self.missing.entry(id).or_insert_with(|| {
            self.timers.insert((timer_at, id));
            Missing { announcements: Vec::new(), timer_at }
        });
        if missing.announcements.len() < ANNOUNCEMENTS_MAX {
            missing.announcements.push((from, round));
        }
    }

    fn tick(&mut self, now: Instant, effects: &mut Vec<PtEffect>) {
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush(effects);
        }
        while self.log.front().is_some_and(|received| received.expiry <= now) {
            self.forget_oldest();
        }
        // Due timers in id order, as a scan of `missing` would find them.
        let mut due: Vec<MessageId> =
            self.timers.iter().take_while(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
        due.sort_unstable();
        for id in due {
            let missing = self.missing.get_mut(&id).expect("due");
            if missing.announcements.is_empty() {
                self.forget_missing(id);
                continue;
            }
            let (peer, round) = missing.announcements.remove(0);
            let timer_at = now + self.config.graft_timeout;
            self.timers.remove(&(missing.timer_at, id));
            self.timers.insert((timer_at, id));
            missing.timer_at = timer_at;
            self.stats.graft_count += 1;
            self.make_eager(peer);
            effects.push(PtEffect::Send { to: peer, message: PtMessage::Graft { id, round } });
        }
    }

    /// Drops the oldest remembered message.
    fn forget_oldest(&mut self) {
        let oldest = self.log.pop_front().expect("a remembered message");
        let ticket = self.received.remove(oldest.id);
        assert_eq!(ticket, Some(self.log_base));
        self.log_base += 1;
    }

    /// Stops waiting for `id` (if we were).
    fn forget_missing(&mut self, id: MessageId) {
        if let Some(missing) = self.missing.remove(&id) {
            self.timers.remove(&(missing.timer_at, id));
        }
    }

    fn make_eager(&mut self, peer: Peer) {
        if self.lazy.remove(&peer.id).is_some() || self.eager.contains_key(&peer.id) {
            self.eager.insert(peer.id, peer);
        }
    }

    fn make_lazy(&mut self, peer: Peer) {
        if self.eager.remove(&peer.id).is_some() || self.lazy.contains_key(&peer.id) {
            self.lazy.insert(peer.id, peer);
        }
    }
}
