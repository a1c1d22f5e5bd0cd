//! A gossip node as one sans-IO state machine: SWIM membership, the replicated store, hot-key
//! push and anti-entropy pull sessions, all multiplexed on one datagram socket.
//!
//! Writes are pushed at once to `push_fanout` random live members, which forward what was news
//! to them while hops remain (hot keys are pushed). Every `anti_entropy_interval` the node pulls
//! from one random live member whatever its MST says differs (cold keys are pulled), so every
//! write reaches every live node even when pushes are lost. Tombstones are purged after
//! `tombstone_ttl`, which `Node::new` checks is long enough against the pull interval.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sim::Instant;

use crate::crdt::{ReplicaId, TOMBSTONE_TTL_SESSIONS_MIN};
use crate::faults::{Faults, PlantedBug};
use crate::hyparview::{HvConfig, HvEffect, HvInput, HyParView, Peer};
use crate::plumtree::{Plumtree, PtConfig, PtEffect, PtInput};
use crate::store::{Store, Update, Value};
use crate::swim::{Member, MemberId, MemberState, Swim, SwimConfig, SwimEffect, SwimInput};
use crate::sync::{Requester, SessionStats, respond};
use crate::wire::{Datagram, Message, WireError, decode, encode};

/// Entries in one push at most.
pub const PUSH_ENTRIES_MAX: usize = 8;

/// How writes are pushed to other nodes (anti-entropy pulls run either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushMode {
    /// Plumtree over the HyParView active view: each write crosses each tree edge once.
    Plumtree,
    /// Infect-and-forward: `push_fanout` random live members, `push_hops` times.
    Flood,
}

/// Node tunables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// This node's id (also its CRDT replica id).
    pub id: MemberId,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Starting incarnation (one more than the last persisted, after a restart).
    pub incarnation: u32,
    /// Membership tunables.
    pub swim: SwimConfig,
    /// Time between anti-entropy pulls.
    pub anti_entropy_interval: Duration,
    /// Silence after which a pull session re-sends its requests.
    pub sync_retry_interval: Duration,
    /// How writes are pushed.
    pub push_mode: PushMode,
    /// Overlay tunables (with `PushMode::Plumtree`).
    pub hyparview: HvConfig,
    /// Broadcast tree tunables (with `PushMode::Plumtree`).
    pub plumtree: PtConfig,
    /// Members a write (or news) is pushed to (with `PushMode::Flood`).
    pub push_fanout: usize,
    /// How many times a push is forwarded.
    pub push_hops: u8,
    /// Age after which a tombstone is purged.
    pub tombstone_ttl: Duration,
    /// Time between tombstone purges.
    pub purge_interval: Duration,
}

impl NodeConfig {
    /// Defaults for node `id` at `addr`.
    pub fn new(id: MemberId, addr: SocketAddr) -> NodeConfig {
        NodeConfig {
            id,
            addr,
            incarnation: 0,
            swim: SwimConfig::default(),
            anti_entropy_interval: Duration::from_secs(2),
            sync_retry_interval: Duration::from_millis(200),
            push_mode: PushMode::Plumtree,
            hyparview: HvConfig::default(),
            plumtree: PtConfig::default(),
            push_fanout: 3,
            push_hops: 3,
            tombstone_ttl: Duration::from_secs(3600),
            purge_interval: Duration::from_secs(60),
        }
    }
}

/// The clocks a step sees: monotonic for timers, wall (ms since the epoch) for HLC stamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub monotonic: Instant,
    /// Wall-clock milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// What drives a node.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// Time passed.
    Tick,
    /// A datagram arrived.
    Datagram {
        /// Sender.
        from: SocketAddr,
        /// Its bytes, unchecked.
        bytes: &'a [u8],
    },
    /// Join through seed addresses.
    Join(&'a [SocketAddr]),
    /// Leave gracefully.
    Leave,
    /// Write (`Some`) or delete (`None`) a register.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value, or `None` to delete.
        value: Option<Vec<u8>>,
    },
    /// Apply a typed update (counter, set, register) to a key.
    Update {
        /// Key.
        key: &'a [u8],
        /// The change.
        update: Update,
    },
}

/// What a node asks of its driver or reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send a datagram.
    Send(Datagram),
    /// The membership view changed.
    MemberChanged(Member),
    /// A key's value changed (by a local write or a merge).
    EntryChanged {
        /// The key.
        key: Vec<u8>,
    },
    /// A local write was refused.
    PutRefused(String),
}

/// Counters of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Datagrams received.
    pub received_count: u64,
    /// Datagrams dropped as malformed (bad version, bad body, trailing bytes, empty).
    pub malformed_count: u64,
    /// Datagrams dropped as oversized.
    pub oversized_count: u64,
    /// Outgoing messages dropped because they did not fit a datagram.
    pub unsendable_count: u64,
    /// Push datagrams received.
    pub push_received_count: u64,
    /// Pushed entries that were already known.
    pub push_duplicate_count: u64,
    /// Push datagrams sent.
    pub push_sent_count: u64,
    /// Merges refused by the store (clock or size).
    pub merge_refused_count: u64,
    /// Pull sessions started.
    pub session_started_count: u64,
    /// Pull sessions finished.
    pub session_done_count: u64,
    /// Pull sessions abandoned (timeout or bad peer).
    pub session_failed_count: u64,
    /// Totals over finished sessions.
    pub session_totals: SessionStats,
    /// Tombstones purged.
    pub purged_count: u64,
    /// Times anti-entropy found data the tree missed and the overlay was asked to bridge.
    pub overlay_reach_count: u64,
}

struct Pull {
    peer: SocketAddr,
    requester: Requester,
    // Whether this session already asked the overlay to bridge a possible split.
    reached: bool,
    // Whether BUGGIFY `gossip.sync.cut` chose this session to be cut halfway.
    cut_planned: bool,
}

/// One gossip node.
pub struct Node {
    config: NodeConfig,
    swim: Swim,
    hyparview: HyParView,
    plumtree: Plumtree,
    store: Store,
    pull: Option<Pull>,
    next_pull_at: Instant,
    next_purge_at: Instant,
    stats: NodeStats,
    faults: Faults,
    /// Addresses this node can send to when it cannot reach every member (see
    /// `Swim::set_reachable`); pulls and pushes pick among them. `None`: all.
    reachable: Option<BTreeSet<SocketAddr>>,
    /// Addresses a send was refused to in this step, since they are not reachable: the overlay
    /// is told they failed (HyParView's answer to a broken link) when the step ends.
    refused: BTreeSet<SocketAddr>,
}

impl Node {
    /// A node with an empty store.
    pub fn new(config: NodeConfig) -> Node {
        Node::with_store(config, Store::new(ReplicaId(0)))
    }

    /// A node resuming with `store` (after a restart).
    pub fn with_store(config: NodeConfig, mut store: Store) -> Node {
        let ttl_min = config.anti_entropy_interval * TOMBSTONE_TTL_SESSIONS_MIN;
        assert!(config.tombstone_ttl >= ttl_min, "tombstone TTL shorter than {ttl_min:?}");
        store.set_replica(ReplicaId(config.id.0));
        let swim = Swim::new(config.swim.clone(), config.id, config.addr, config.incarnation);
        let me = Peer { id: config.id, addr: config.addr };
        Node {
            swim,
            hyparview: HyParView::new(config.hyparview.clone(), me),
            plumtree: Plumtree::new(config.plumtree.clone()),
            store,
            pull: None,
            next_pull_at: Instant::ZERO + config.anti_entropy_interval,
            next_purge_at: Instant::ZERO + config.purge_interval,
            stats: NodeStats::default(),
            faults: Faults::default(),
            reachable: None,
            refused: BTreeSet::new(),
            config,
        }
    }

    /// Tells the node which addresses it can send to, for a partial mesh where it cannot
    /// reach every member (`None`: all). Membership probes, relays, gossip, syncs, pulls and
    /// pushes then go only there; unreachable members' states come from the reachable ones.
    pub fn set_reachable(&mut self, reachable: Option<BTreeSet<SocketAddr>>) {
        self.swim.set_reachable(reachable.clone());
        self.reachable = reachable;
    }

    /// Hands the node and its state machines the driver's BUGGIFY hook and planted bug.
    pub fn set_faults(&mut self, faults: &Faults) {
        self.swim.set_faults(faults.clone());
        self.plumtree.set_faults(faults.clone());
        self.faults = faults.clone();
    }

    /// Membership, mutably (to restore a persisted view before starting).
    pub fn swim_mut(&mut self) -> &mut Swim {
        &mut self.swim
    }

    /// Membership.
    pub fn swim(&self) -> &Swim {
        &self.swim
    }

    /// The overlay.
    pub fn hyparview(&self) -> &HyParView {
        &self.hyparview
    }

    /// The broadcast tree.
    pub fn plumtree(&self) -> &Plumtree {
        &self.plumtree
    }

    /// The replicated store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicated store, mutably (for root digests).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// When `step(Tick)` next has work.
    pub fn deadline(&self) -> Instant {
        let pull = self.pull.as_ref().map_or(Instant::MAX, |pull| pull.requester.deadline());
        let overlay = match self.config.push_mode {
            PushMode::Plumtree => self.hyparview.deadline().min(self.plumtree.deadline()),
            PushMode::Flood => Instant::MAX,
        };
        self.swim.deadline().min(pull).min(self.next_pull_at).min(self.next_purge_at).min(overlay)
    }
}

impl Node {
    /// The one transition function.
    pub fn step(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        input: Input<'_>,
        effects: &mut Vec<Effect>,
    ) {
        match input {
            Input::Tick => self.tick(now, rng, effects),
            Input::Datagram { from, bytes } => self.on_datagram(now, rng, from, bytes, effects),
            Input::Join(seeds) => {
                self.swim_step(now, rng, SwimInput::Join(seeds), effects);
                if self.config.push_mode == PushMode::Plumtree {
                    self.overlay_step(now, rng, HvInput::Join(seeds), effects);
                }
            }
            Input::Leave => self.swim_step(now, rng, SwimInput::Leave, effects),
            Input::Put { key, value } => {
                self.update(now, rng, key, Update::Register(value), effects);
            }
            Input::Update { key, update } => self.update(now, rng, key, update, effects),
        }
        self.fail_refused(now, rng, effects);
    }

    /// Tells the overlay that the members whose addresses a send was refused to have failed,
    /// so its views hold only members this node can reach (each once per step: a failure
    /// sends nothing new).
    fn fail_refused(&mut self, now: Now, rng: &mut impl RngCore, effects: &mut Vec<Effect>) {
        if self.refused.is_empty() || self.config.push_mode != PushMode::Plumtree {
            self.refused.clear();
            return;
        }
        let refused = std::mem::take(&mut self.refused);
        let failed: Vec<MemberId> = self
            .swim
            .members()
            .filter(|member| refused.contains(&member.addr))
            .map(|member| member.id)
            .collect();
        for id in failed {
            self.overlay_step(now, rng, HvInput::PeerFailed(id), effects);
        }
        self.refused.clear();
    }

    fn swim_step(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        input: SwimInput<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let mut swim_effects = Vec::new();
        self.swim.step(now.monotonic, rng, input, &mut swim_effects);
        for effect in swim_effects {
            match effect {
                SwimEffect::Send { to, message } => self.send(to, &Message::Swim(message), effects),
                SwimEffect::Changed(member) => {
                    let overlay = self.config.push_mode == PushMode::Plumtree;
                    if overlay && matches!(member.state, MemberState::Dead | MemberState::Left) {
                        self.overlay_step(now, rng, HvInput::PeerFailed(member.id), effects);
                    }
                    if overlay && member.state == MemberState::Alive && member.id != self.config.id
                    {
                        let peer = Peer { id: member.id, addr: member.addr };
                        self.overlay_step(now, rng, HvInput::Discovered(peer), effects);
                    }
                    effects.push(Effect::MemberChanged(member));
                }
            }
        }
    }

    fn send(&mut self, to: SocketAddr, message: &Message, effects: &mut Vec<Effect>) {
        if self.reachable.as_ref().is_some_and(|reachable| !reachable.contains(&to)) {
            self.refused.insert(to);
            return;
        }
        match encode(message) {
            Ok(bytes) => effects.push(Effect::Send(Datagram { to, bytes })),
            Err(_) => self.stats.unsendable_count += 1,
        }
    }

    fn overlay_step(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        input: HvInput<'_>,
        effects: &mut Vec<Effect>,
    ) {
        let mut overlay_effects = Vec::new();
        self.hyparview.step(now.monotonic, rng, input, &mut overlay_effects);
        for effect in overlay_effects {
            match effect {
                HvEffect::Send { to, message } => {
                    self.send(to, &Message::Overlay(message), effects)
                }
                HvEffect::NeighborUp(peer) => {
                    self.tree_step(now, PtInput::NeighborUp(peer), effects)
                }
                HvEffect::NeighborDown(peer) => {
                    self.tree_step(now, PtInput::NeighborDown(peer.id), effects);
                }
            }
        }
    }

    fn tree_step(&mut self, now: Now, input: PtInput, effects: &mut Vec<Effect>) {
        let mut tree_effects = Vec::new();
        self.plumtree.step(now.monotonic, input, &mut tree_effects);
        let me = Peer { id: self.config.id, addr: self.config.addr };
        for effect in tree_effects {
            match effect {
                PtEffect::Send { to, message } => {
                    self.send(to.addr, &Message::Tree { from: me, message }, effects);
                }
                PtEffect::Deliver { payload, .. } => {
                    let Ok(entries) = postcard::from_bytes::<Vec<(Vec<u8>, Value)>>(&payload)
                    else {
                        self.stats.malformed_count += 1;
                        continue;
                    };
                    self.merge_entries(now, entries, effects);
                }
            }
        }
    }

    /// Merges pushed entries; returns those that were news.
    fn merge_entries(
        &mut self,
        now: Now,
        entries: Vec<(Vec<u8>, Value)>,
        effects: &mut Vec<Effect>,
    ) -> Vec<(Vec<u8>, Value)> {
        let mut news = Vec::new();
        for (key, value) in entries.into_iter().take(PUSH_ENTRIES_MAX) {
            match self.store.merge(now.wall_ms, &key, &value) {
                Ok(true) => {
                    effects.push(Effect::EntryChanged { key: key.clone() });
                    news.push((key, value));
                }
                Ok(false) => self.stats.push_duplicate_count += 1,
                Err(_) => self.stats.merge_refused_count += 1,
            }
        }
        news
    }

    fn tick(&mut self, now: Now, rng: &mut impl RngCore, effects: &mut Vec<Effect>) {
        self.swim_step(now, rng, SwimInput::Tick, effects);
        if self.config.push_mode == PushMode::Plumtree {
            self.overlay_step(now, rng, HvInput::Tick, effects);
            self.tree_step(now, PtInput::Tick, effects);
        }
        if let Some(pull) = self.pull.as_mut() {
            let mut out = Vec::new();
            let result = pull.requester.on_tick(now.monotonic, &mut out);
            let peer = pull.peer;
            for message in out {
                self.send(peer, &message, effects);
            }
            if result.is_err() {
                self.stats.session_failed_count += 1;
                self.pull = None;
            }
        }
        if now.monotonic >= self.next_pull_at {
            self.next_pull_at = now.monotonic + self.config.anti_entropy_interval;
            if self.pull.is_none() {
                self.start_pull(now, rng, effects);
            }
        }
        // Simulates a purge at the earliest moment the TTL allows rather than on the
        // interval's schedule (a node whose purge timer fired right after a restart).
        let purge_now = self.faults.buggify("gossip.store.purge_early");
        if now.monotonic >= self.next_purge_at || purge_now {
            self.next_purge_at = now.monotonic + self.config.purge_interval;
            let mut ttl_ms = self.config.tombstone_ttl.as_millis() as u64;
            if self.faults.planted(PlantedBug::PurgeTtlInSeconds) {
                ttl_ms = self.config.tombstone_ttl.as_secs();
            }
            self.stats.purged_count += self.store.purge(now.wall_ms, ttl_ms) as u64;
        }
    }

    /// Live members other than this node.
    fn peers(&self) -> Vec<Member> {
        self.swim
            .members()
            .filter(|member| member.id != self.config.id && member.state == MemberState::Alive)
            .filter(|member| self.reachable.as_ref().is_none_or(|set| set.contains(&member.addr)))
            .copied()
            .collect()
    }

    /// Anti-entropy brought entries the broadcast tree never delivered: the overlay may be
    /// split into components, so link to a random live member outside the active view.
    fn reach_across(&mut self, now: Now, rng: &mut impl RngCore, effects: &mut Vec<Effect>) {
        let outside: Vec<Member> = self
            .peers()
            .into_iter()
            .filter(|member| self.hyparview.neighbor(member.id).is_none())
            .collect();
        if let Some(member) = outside.choose(rng) {
            self.stats.overlay_reach_count += 1;
            let peer = Peer { id: member.id, addr: member.addr };
            self.overlay_step(now, rng, HvInput::Reach(peer), effects);
        }
    }

    fn start_pull(&mut self, now: Now, rng: &mut impl RngCore, effects: &mut Vec<Effect>) {
        let Some(peer) = self.peers().choose(rng).copied() else { return };
        let mut out = Vec::new();
        let retry = self.config.sync_retry_interval;
        let requester = Requester::start(now.monotonic, rng.next_u64(), retry, &mut out);
        self.stats.session_started_count += 1;
        for message in out {
            self.send(peer.addr, &message, effects);
        }
        // Simulates an anti-entropy session cut halfway (the requester restarted, or the
        // peer's answers stopped for good in mid-session): decided once per session, so the
        // next session may complete; the cut falls once the first tree nodes arrived.
        let cut_planned = self.faults.buggify("gossip.sync.cut");
        self.pull = Some(Pull { peer: peer.addr, requester, reached: false, cut_planned });
    }

    fn update(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        key: &[u8],
        update: Update,
        effects: &mut Vec<Effect>,
    ) {
        match self.store.apply(now.wall_ms, key, update) {
            Ok(delta) => {
                effects.push(Effect::EntryChanged { key: key.to_vec() });
                let entries = vec![(key.to_vec(), delta)];
                match self.config.push_mode {
                    PushMode::Flood => {
                        self.push(rng, None, self.config.push_hops, entries, effects)
                    }
                    PushMode::Plumtree => {
                        let payload = postcard::to_stdvec(&entries).expect("serializable");
                        self.tree_step(now, PtInput::Broadcast(payload), effects);
                    }
                }
            }
            Err(error) => effects.push(Effect::PutRefused(error.to_string())),
        }
    }

    fn push(
        &mut self,
        rng: &mut impl RngCore,
        except: Option<SocketAddr>,
        hops: u8,
        entries: Vec<(Vec<u8>, Value)>,
        effects: &mut Vec<Effect>,
    ) {
        let peers: Vec<Member> =
            self.peers().into_iter().filter(|peer| Some(peer.addr) != except).collect();
        let message = Message::Push { hops, entries };
        for peer in peers.choose_multiple(rng, self.config.push_fanout) {
            self.stats.push_sent_count += 1;
            self.send(peer.addr, &message, effects);
        }
    }
}

impl Node {
    fn on_datagram(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        from: SocketAddr,
        bytes: &[u8],
        effects: &mut Vec<Effect>,
    ) {
        self.stats.received_count += 1;
        let message = match decode(bytes) {
            Ok(message) => message,
            Err(WireError::Oversized { .. }) => {
                self.stats.oversized_count += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed_count += 1;
                return;
            }
        };
        match message {
            Message::Swim(message) => {
                self.swim_step(now, rng, SwimInput::Message { from, message }, effects);
            }
            Message::Push { hops, entries } => self.on_push(now, rng, from, hops, entries, effects),
            Message::Overlay(message) => {
                self.overlay_step(now, rng, HvInput::Message { from, message }, effects);
            }
            Message::Tree { from: peer, message } => {
                // Only the sender itself may speak for its address.
                if peer.addr == from {
                    self.tree_step(now, PtInput::Message { from: peer, message }, effects);
                }
            }
            Message::RootRequest { .. }
            | Message::NodesRequest { .. }
            | Message::EntriesRequest { .. } => {
                let mut out = Vec::new();
                respond(&mut self.store, &message, &mut out);
                for reply in out {
                    self.send(from, &reply, effects);
                }
            }
            response => self.on_response(now, rng, from, response, effects),
        }
    }

    fn on_push(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        from: SocketAddr,
        hops: u8,
        entries: Vec<(Vec<u8>, Value)>,
        effects: &mut Vec<Effect>,
    ) {
        self.stats.push_received_count += 1;
        let news = self.merge_entries(now, entries, effects);
        if hops > 0 && !news.is_empty() {
            self.push(rng, Some(from), hops - 1, news, effects);
        }
    }

    fn on_response(
        &mut self,
        now: Now,
        rng: &mut impl RngCore,
        from: SocketAddr,
        message: Message,
        effects: &mut Vec<Effect>,
    ) {
        let session = match &message {
            Message::RootResponse { session, .. }
            | Message::NodePart { session, .. }
            | Message::NodeMissing { session, .. }
            | Message::EntriesResponse { session, .. }
            | Message::ValuePart { session, .. } => *session,
            _ => return,
        };
        let Some(pull) = self.pull.as_mut() else { return };
        if pull.peer != from || pull.requester.session() != session {
            return;
        }
        let mut out = Vec::new();
        let result = pull.requester.on_message(
            now.monotonic,
            now.wall_ms,
            &mut self.store,
            message,
            &mut out,
        );
        let merged = pull.requester.take_merged();
        let reach = !merged.is_empty() && !pull.reached;
        pull.reached |= reach;
        for key in merged {
            effects.push(Effect::EntryChanged { key });
        }
        let peer = pull.peer;
        for request in out {
            self.send(peer, &request, effects);
        }
        if reach && self.config.push_mode == PushMode::Plumtree {
            self.reach_across(now, rng, effects);
        }
        let pull = self.pull.as_ref().expect("pull in progress");
        // A session BUGGIFY chose to cut (`start_pull`) ends once tree nodes arrived: what
        // was merged stays, the rest waits for the next session.
        let cut = result.is_ok()
            && pull.cut_planned
            && !pull.requester.is_done()
            && pull.requester.stats().node_count > 0;
        if result.is_err() || cut {
            self.stats.session_failed_count += 1;
            self.pull = None;
        } else if pull.requester.is_done() {
            let stats = pull.requester.stats().clone();
            let totals = &mut self.stats.session_totals;
            totals.node_count += stats.node_count;
            totals.node_entry_count += stats.node_entry_count;
            totals.value_count += stats.value_count;
            totals.merged_count += stats.merged_count;
            totals.request_count += stats.request_count;
            self.stats.session_done_count += 1;
            self.pull = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::wire::{DATAGRAM_SIZE_BYTES_MAX, WIRE_VERSION};

    fn node() -> Node {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7946);
        Node::new(NodeConfig::new(MemberId(1), addr))
    }

    #[track_caller]
    fn check(bytes: &[u8], malformed_count: u64, oversized_count: u64) {
        let mut node = node();
        let mut effects = Vec::new();
        let now = Now { monotonic: Instant::ZERO, wall_ms: 0 };
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        node.step(now, &mut rng, Input::Datagram { from, bytes }, &mut effects);
        assert_eq!(node.stats().malformed_count, malformed_count);
        assert_eq!(node.stats().oversized_count, oversized_count);
        assert!(effects.is_empty(), "{effects:?}");
    }

    #[test]
    fn hostile_datagrams_are_counted_and_dropped() {
        check(&[], 1, 0);
        check(&[WIRE_VERSION + 1, 0, 0], 1, 0);
        check(&[WIRE_VERSION, 0xff, 0xff, 0xff], 1, 0);
        check(&vec![WIRE_VERSION; DATAGRAM_SIZE_BYTES_MAX + 1], 0, 1);
    }

    #[test]
    fn the_largest_write_fits_a_datagram_in_every_push_mode() {
        use crate::store::{KEY_SIZE_BYTES_MAX, VALUE_SIZE_BYTES_MAX};
        for mode in [PushMode::Plumtree, PushMode::Flood] {
            let mut config = node().config().clone();
            config.push_mode = mode;
            let mut node = Node::new(config);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let now = Now { monotonic: Instant::ZERO, wall_ms: u64::MAX / 2 };
            let mut effects = Vec::new();
            let neighbor = Peer { id: MemberId(u64::MAX), addr: SocketAddr::from(([1; 16], 1)) };
            node.tree_step(now, PtInput::NeighborUp(neighbor), &mut effects);
            let member = Member {
                id: neighbor.id,
                addr: neighbor.addr,
                incarnation: u32::MAX,
                state: MemberState::Alive,
            };
            node.swim_mut().restore(&[member]);
            let key = vec![0xff; KEY_SIZE_BYTES_MAX];
            let input = Input::Put { key: &key, value: Some(vec![0xff; VALUE_SIZE_BYTES_MAX]) };
            node.step(now, &mut rng, input, &mut effects);
            assert!(effects.iter().any(|effect| matches!(effect, Effect::Send(_))), "{mode:?}");
            assert_eq!(node.stats().unsendable_count, 0, "{mode:?}");
        }
    }

    #[test]
    fn a_write_is_broadcast_through_the_tree_to_neighbors() {
        let mut node = node();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let now = Now { monotonic: Instant::ZERO, wall_ms: 1_000 };
        let neighbor = Peer { id: MemberId(2), addr: SocketAddr::from(([127, 0, 0, 2], 1)) };
        let mut effects = Vec::new();
        node.tree_step(now, PtInput::NeighborUp(neighbor), &mut effects);
        let input = Input::Put { key: b"k", value: Some(b"v".to_vec()) };
        node.step(now, &mut rng, input, &mut effects);
        let sent: Vec<_> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Send(datagram) => Some(datagram.to),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![neighbor.addr]);
        assert_eq!(node.store().get(b"k"), Some(&b"v"[..]));
    }
}
