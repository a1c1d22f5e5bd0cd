//! The device: many peers on one UDP socket, with cryptokey routing.
//!
//! `DeviceCore` is sans-IO: it owns one `Tunnel` per peer, the allowed-IPs table, and the
//! device-wide handshake defence (mac1 check, load meter, cookie replies). It routes an
//! outgoing IP packet by destination to a peer, a received datagram by receiver index (transport
//! data, responses, cookie replies) or by the initiator's decrypted static key (initiations) to
//! a peer, and drops a decrypted packet whose source address the sending peer is not allowed to
//! use. Its effects go to an `Outbox` whose buffers are reused, so the steady state allocates
//! nothing per packet.
//!
//! `Device::start` drives a core over an `Env`: one task, one UDP socket, a bounded channel of
//! IP packets in (what a TUN device would read) and one of decrypted packets out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sim::{Env, Instant, UdpSocket};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::allowed_ips::{AllowedIps, IpNet};
use crate::cookie::{CookieGenerator, LoadMeter};
use crate::crypto::{self, KEY_LEN};
use crate::drops::{DropLedger, DropOrigin};
use crate::error::ReconfigureError;
use crate::faults::{BuggifyHook, Faults, PlantedBug};
use crate::messages::{self, COOKIE_REPLY_LEN, Message};
use crate::noise::SymmetricState;
use crate::timers::REJECT_AFTER_TIME;
use crate::tunnel::{
    Action, INDEX_RANDOM_BITS, INDEX_SLOT_MAX, Tunnel, TunnelConfig, TunnelStats, open_initiation,
};
use crate::{DecapsulateError, ip};

/// The largest datagram or packet the device handles.
pub const DATAGRAM_LEN_MAX: usize = 65_535;
/// IP packets queued towards the device, and decrypted packets queued towards the reader.
pub const PACKET_QUEUE_MAX: usize = 1024;
/// Events between two refreshes of `DeviceHandle::stats` (timer events always refresh).
const STATS_REFRESH_EVENTS_MAX: u32 = 64;
/// Datagrams one `tick` of one peer may emit before the device moves on.
const TICK_SENDS_MAX: usize = 256;

/// One peer of a device. `Debug` shows the pre-shared key only as present or absent.
#[derive(Clone)]
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: [u8; KEY_LEN],
    /// The optional pre-shared key.
    pub preshared_key: Option<Zeroizing<[u8; KEY_LEN]>>,
    /// Networks routed to this peer, and the source addresses accepted from it.
    pub allowed_ips: Vec<IpNet>,
    /// Where to reach it first.
    pub endpoint: Option<SocketAddr>,
    /// Keepalive interval for peers behind NAT.
    pub persistent_keepalive: Option<Duration>,
}

/// A device's configuration (the `[Interface]` and `[Peer]` sections of a `wg` config).
/// `Debug` never shows the private key.
#[derive(Clone)]
pub struct DeviceConfig {
    /// Our static private key.
    pub private_key: Zeroizing<[u8; KEY_LEN]>,
    /// The UDP port to listen on (0 picks one).
    pub listen_port: u16,
    /// The address to listen on (`None`: every address, `0.0.0.0`).
    pub listen_addr: Option<IpAddr>,
    /// The peers, at most `INDEX_SLOT_MAX + 1`.
    pub peers: Vec<PeerConfig>,
    /// Handshake messages per second above which the device answers with cookies.
    pub handshake_load_limit_per_sec: u32,
    /// The tunnel MTU (packets are padded up to it, never beyond).
    pub mtu: usize,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &crate::config::encode_key(&self.public_key))
            .field("preshared_key", &self.preshared_key.as_ref().map(|_| "(secret)"))
            .field("allowed_ips", &self.allowed_ips)
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("private_key", &"(secret)")
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers)
            .field("handshake_load_limit_per_sec", &self.handshake_load_limit_per_sec)
            .field("mtu", &self.mtu)
            .finish()
    }
}

/// What a device did, buffered for the driver: datagrams to send and packets to deliver.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    sends: Vec<(SocketAddr, Range<usize>)>,
    delivers: Vec<(usize, Range<usize>)>,
}

impl Outbox {
    fn push_bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    /// The datagrams to send, in order.
    pub fn sends(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.sends.iter().map(|(to, range)| (*to, &self.bytes[range.clone()]))
    }

    /// The decrypted packets to deliver, with the index of the peer that sent each.
    pub fn delivers(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.delivers.iter().map(|(peer, range)| (*peer, &self.bytes[range.clone()]))
    }

    /// Empties the outbox, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.sends.clear();
        self.delivers.clear();
    }
}

/// Peers a device may have at most: one per index slot (`DeviceCore::set_peer_count_max`
/// lowers it).
pub const PEER_COUNT_MAX: usize = INDEX_SLOT_MAX as usize + 1;
/// How long a removed peer's index slot rests before another peer may take it. The removed
/// peer does not know it was removed and may send on its session until that keypair is
/// `REJECT_AFTER_TIME` old; while the slot rests, those late messages find no tunnel
/// (`unknown_index`) instead of reaching whoever took the slot. Only a device whose whole slot
/// space is taken reuses a resting slot early (counted in `slot_reused_early_count`).
pub const SLOT_REST: Duration = REJECT_AFTER_TIME;

/// What `upsert_peer` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer (no session yet).
    Added,
    /// An existing peer's settings changed; its session is kept unless its PSK changed.
    Updated,
    /// The peer already had exactly these settings.
    Unchanged,
}

/// What `set_peers` did, peer by peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeersChanged {
    /// Peers added.
    pub added_count: usize,
    /// Peers whose settings changed.
    pub updated_count: usize,
    /// Peers left exactly as they were.
    pub unchanged_count: usize,
    /// Peers removed (absent from the new list).
    pub removed_count: usize,
}

/// Counters of a device's peer changes since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconfigureCounts {
    /// Peers added (at start or later).
    pub added_count: u64,
    /// Updates that changed a peer's settings.
    pub updated_count: u64,
    /// Peers removed.
    pub removed_count: u64,
    /// Updates whose new pre-shared key ended a session and forced a new handshake.
    pub psk_rehandshake_count: u64,
    /// Slots handed to a new peer before `SLOT_REST` was over (the slot space was full).
    pub slot_reused_early_count: u64,
}

/// One live peer: its tunnel, the settings it was last given, and when it claimed its
/// allowed IPs.
struct Peer {
    tunnel: Tunnel,
    config: PeerConfig,
    claim_seq: u64,
}

/// The sans-IO device.
///
/// Peers live in index slots: a tunnel's local indices carry its slot in their high bits, so
/// a received message finds its peer in one step. Allowed IPs are claims: each peer claims
/// its networks when it is added or its allowed IPs change, and a network routes to the live
/// peer with the latest claim on it (so removing a peer hands its networks back to an earlier
/// claimant instead of leaving a hole).
pub struct DeviceCore {
    local_private: StaticSecret,
    local_private_bytes: Zeroizing<[u8; KEY_LEN]>,
    local_public: [u8; KEY_LEN],
    wall_origin: Duration,
    handshake_load_limit_per_sec: u32,
    mtu: usize,
    responder_start: SymmetricState,
    generator: CookieGenerator,
    load: LoadMeter,
    rng: ChaCha20Rng,
    // Invariant: `slots[s]` is `Some` exactly for the slots `by_key` names; a `None` slot is
    // in `free_slots` (checked by `check_invariants`).
    slots: Vec<Option<Box<Peer>>>,
    free_slots: VecDeque<(usize, Instant)>,
    by_key: BTreeMap<[u8; KEY_LEN], usize>,
    routes: AllowedIps<usize>,
    // Invariant: `routes` maps each claimed network to its latest claimant, nothing else.
    claims: BTreeMap<IpNet, BTreeMap<u64, usize>>,
    claim_seq_next: u64,
    peer_count_max: usize,
    counts: ReconfigureCounts,
    scratch: Vec<u8>,
    drops: DropLedger,
    // While a datagram is processed: the peer it was attributed to, or the unknown key its
    // handshake offered, for the origin of a drop (cleared per datagram).
    receive_slot: Option<usize>,
    unknown_key: Option<[u8; KEY_LEN]>,
    faults: Faults,
}

impl DeviceCore {
    /// A device with `config`'s peers (in slots 0, 1, ... in order); `wall_origin` is Unix
    /// time at `Instant::ZERO`.
    pub fn new(config: &DeviceConfig, wall_origin: Duration, rng_seed: [u8; 32]) -> Self {
        assert!(config.peers.len() <= PEER_COUNT_MAX);
        let local_private = StaticSecret::from(*config.private_key);
        let local_public = crypto::public_key(&local_private);
        let mut core = DeviceCore {
            responder_start: SymmetricState::wireguard(&local_public),
            generator: CookieGenerator::new(&local_public),
            load: LoadMeter::new(config.handshake_load_limit_per_sec),
            local_private,
            local_private_bytes: config.private_key.clone(),
            local_public,
            wall_origin,
            handshake_load_limit_per_sec: config.handshake_load_limit_per_sec,
            mtu: config.mtu,
            rng: ChaCha20Rng::from_seed(rng_seed),
            slots: Vec::with_capacity(config.peers.len()),
            free_slots: VecDeque::new(),
            by_key: BTreeMap::new(),
            routes: AllowedIps::default(),
            claims: BTreeMap::new(),
            claim_seq_next: 0,
            peer_count_max: PEER_COUNT_MAX,
            counts: ReconfigureCounts::default(),
            scratch: vec![0u8; DATAGRAM_LEN_MAX + 64],
            drops: DropLedger::default(),
            receive_slot: None,
            unknown_key: None,
            faults: Faults::default(),
        };
        for peer in &config.peers {
            assert!(!core.by_key.contains_key(&peer.public_key), "peer listed twice");
            let slot = core.add_peer(Instant::ZERO, peer.clone());
            assert_eq!(slot + 1, core.slots.len(), "a fresh device fills slots in order");
        }
        core
    }

    /// Hands the device and every tunnel the driver's BUGGIFY hook and planted bug (peers
    /// added later get them too).
    pub fn set_faults(&mut self, faults: &Faults) {
        for peer in self.slots.iter_mut().flatten() {
            peer.tunnel.set_faults(faults.clone());
        }
        self.faults = faults.clone();
    }

    /// Lowers (or restores) the most peers the device takes; at most `PEER_COUNT_MAX`, and
    /// at least the peers it has.
    pub fn set_peer_count_max(&mut self, peer_count_max: usize) {
        assert!(peer_count_max <= PEER_COUNT_MAX, "beyond the index slot space");
        assert!(peer_count_max >= self.by_key.len(), "below the peers the device has");
        self.peer_count_max = peer_count_max;
    }

    /// Our static public key.
    pub fn local_public(&self) -> &[u8; KEY_LEN] {
        &self.local_public
    }

    /// The live peers' tunnels with their slots (the peer index of `Outbox::delivers`), in
    /// slot order.
    pub fn peers(&self) -> impl Iterator<Item = (usize, &Tunnel)> {
        let live = self.slots.iter().enumerate();
        live.filter_map(|(slot, peer)| peer.as_ref().map(|peer| (slot, &peer.tunnel)))
    }

    /// The number of live peers.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// The tunnel in `slot`, if a peer lives there.
    pub fn peer(&self, slot: usize) -> Option<&Tunnel> {
        Some(&self.slots.get(slot)?.as_ref()?.tunnel)
    }

    /// The slot of the peer with `public_key`.
    pub fn peer_slot(&self, public_key: &[u8; KEY_LEN]) -> Option<usize> {
        self.by_key.get(public_key).copied()
    }

    /// The settings the peer with `public_key` was last given.
    pub fn peer_config(&self, public_key: &[u8; KEY_LEN]) -> Option<&PeerConfig> {
        Some(&self.slots[*self.by_key.get(public_key)?].as_ref()?.config)
    }

    /// The public key of the peer a packet to `destination` goes to.
    pub fn route(&self, destination: IpAddr) -> Option<&[u8; KEY_LEN]> {
        let slot = *self.routes.lookup(destination)?;
        self.peer(slot).map(Tunnel::peer_public)
    }

    /// Counters of peer changes.
    pub fn reconfigure_counts(&self) -> &ReconfigureCounts {
        &self.counts
    }

    /// Dropped datagrams and packets, by reason.
    pub fn drops(&self) -> &BTreeMap<&'static str, u64> {
        self.drops.by_reason()
    }

    /// Dropped datagrams and packets, by reason and origin (bounded: `drops::DropLedger`).
    pub fn drop_origins(&self) -> &BTreeMap<(&'static str, DropOrigin), u64> {
        self.drops.by_origin()
    }

    fn drop_one(&mut self, reason: &'static str, origin: DropOrigin) {
        self.drops.count(reason, origin, 1);
    }

    /// The origin of the peer in `slot` (`Unnamed` if it is gone).
    fn peer_origin(&self, slot: usize) -> DropOrigin {
        self.peer(slot)
            .map_or(DropOrigin::Unnamed, |tunnel| DropOrigin::Peer(*tunnel.peer_public()))
    }

    fn tunnel_mut(&mut self, slot: usize) -> &mut Tunnel {
        &mut self.slots[slot].as_mut().expect("a live slot").tunnel
    }

    /// Routes the IP `packet` by destination and encapsulates it for that peer.
    pub fn send_packet(&mut self, now: Instant, packet: &[u8], outbox: &mut Outbox) {
        let Some(header) = ip::header(packet) else {
            return self.drop_one("tx_not_ip", DropOrigin::Unnamed);
        };
        let Some(&peer) = self.routes.lookup(header.destination) else {
            return self.drop_one("tx_no_route", DropOrigin::Destination(header.destination));
        };
        let packet = &packet[..header.total_len];
        let tunnel = &mut self.slots[peer].as_mut().expect("routes name live slots").tunnel;
        match tunnel.encapsulate(now, packet, &mut self.scratch) {
            Ok(Action::Send { datagram, to }) => {
                let range = outbox.push_bytes(datagram);
                outbox.sends.push((to, range));
            }
            Ok(_) => {}
            Err(_) => self.drop_one("tx_no_endpoint", self.peer_origin(peer)),
        }
        self.tick_peer(now, peer, outbox);
    }

    /// Processes one datagram received from `from`.
    pub fn receive_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        outbox: &mut Outbox,
    ) {
        self.receive_slot = None;
        self.unknown_key = None;
        match self.receive_inner(now, from, datagram, outbox) {
            Ok(Some(peer)) => self.tick_peer(now, peer, outbox),
            Ok(None) => {}
            Err(error) => {
                let origin = match (self.unknown_key.take(), self.receive_slot.take()) {
                    (Some(key), _) => DropOrigin::UnknownKey(key, from),
                    (None, Some(slot)) => self.peer_origin(slot),
                    (None, None) => DropOrigin::Endpoint(from),
                };
                self.drop_one(error.name(), origin);
            }
        }
    }

    fn receive_inner(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        outbox: &mut Outbox,
    ) -> Result<Option<usize>, DecapsulateError> {
        let is_data = datagram.len() >= messages::DATA_OVERHEAD_LEN
            && messages::read_u32(datagram, 0) == messages::TYPE_DATA;
        if is_data {
            // The hot path: opened in place in the receive buffer, no copy.
            let peer = self.peer_of_index(messages::read_u32(datagram, 4))?;
            self.receive_slot = Some(peer);
            let tunnel = &mut self.slots[peer].as_mut().expect("a live slot").tunnel;
            let action = tunnel.decapsulate_in_place(now, from, datagram, &mut self.scratch)?;
            let allowed = Self::emit(&self.routes, peer, action, outbox);
            self.count_refused(peer, allowed);
            return Ok(Some(peer));
        }
        let message = messages::parse(datagram)?;
        let peer = match message {
            Message::Initiation(initiation) => {
                if !self.verify_handshake(now, from, datagram, outbox)? {
                    return Ok(None);
                }
                let opened =
                    open_initiation(&self.local_private, &self.responder_start, initiation)?;
                let Some(&peer) = self.by_key.get(opened.initiator_static()) else {
                    self.unknown_key = Some(*opened.initiator_static());
                    return Err(DecapsulateError::UnknownPeer);
                };
                self.receive_slot = Some(peer);
                let tunnel = &mut self.slots[peer].as_mut().expect("a live slot").tunnel;
                let scratch = &mut self.scratch;
                let action =
                    tunnel.decapsulate_initiation(now, from, initiation, opened, scratch)?;
                let allowed = Self::emit(&self.routes, peer, action, outbox);
                self.count_refused(peer, allowed);
                return Ok(Some(peer));
            }
            Message::Response(response) => {
                if !self.verify_handshake(now, from, datagram, outbox)? {
                    return Ok(None);
                }
                self.peer_of_index(messages::read_u32(response, 8))?
            }
            Message::CookieReply(reply) => self.peer_of_index(messages::read_u32(reply, 4))?,
            Message::Data { receiver_index, .. } => self.peer_of_index(receiver_index)?,
        };
        self.receive_slot = Some(peer);
        let tunnel = &mut self.slots[peer].as_mut().expect("a live slot").tunnel;
        let action = tunnel.decapsulate_verified(now, from, message, &mut self.scratch)?;
        let allowed = Self::emit(&self.routes, peer, action, outbox);
        self.count_refused(peer, allowed);
        Ok(Some(peer))
    }

    /// Counts a packet `emit` refused because `peer` may not send from its source.
    fn count_refused(&mut self, peer: usize, allowed: bool) {
        if !allowed {
            self.drop_one("rx_source_not_allowed", self.peer_origin(peer));
        }
    }

    /// Queues what a tunnel answered; a delivered packet only if `peer` owns its source.
    /// Returns false for a packet refused so (the caller counts it).
    fn emit(
        routes: &AllowedIps<usize>,
        peer: usize,
        action: Action<'_>,
        outbox: &mut Outbox,
    ) -> bool {
        match action {
            Action::Send { datagram, to } => {
                let range = outbox.push_bytes(datagram);
                outbox.sends.push((to, range));
            }
            Action::Deliver { packet, source } => {
                if routes.lookup(source) != Some(&peer) {
                    return false;
                }
                let range = outbox.push_bytes(packet);
                outbox.delivers.push((peer, range));
            }
            Action::None => {}
        }
        true
    }

    /// Checks mac1, and under load mac2 (answering with a cookie reply when it is missing);
    /// `Ok(false)` means "answered with a cookie, go no further".
    fn verify_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        outbox: &mut Outbox,
    ) -> Result<bool, DecapsulateError> {
        if !self.generator.verify_mac1(datagram) {
            return Err(DecapsulateError::InvalidMac1);
        }
        // Simulates a device under load (a handshake flood): cookie replies instead of answers.
        let loaded = self.load.under_load(now) || self.faults.buggify("wireguard.cookie.load");
        if !loaded || self.generator.verify_mac2(now, &mut self.rng, datagram, from) {
            return Ok(true);
        }
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        self.generator.write_reply(now, &mut self.rng, datagram, from, &mut reply);
        let range = outbox.push_bytes(&reply);
        outbox.sends.push((from, range));
        self.drop_one("rx_cookie_reply_sent", DropOrigin::Endpoint(from));
        Ok(false)
    }

    fn peer_of_index(&self, index: u32) -> Result<usize, DecapsulateError> {
        // A slot whose peer was removed is empty (and rests before reuse): a late message to
        // an old index ends here, not at another peer.
        let slot = (index >> INDEX_RANDOM_BITS) as usize;
        match self.slots.get(slot) {
            Some(Some(_)) => Ok(slot),
            _ => Err(DecapsulateError::UnknownIndex),
        }
    }

    /// Runs every peer's due timers.
    pub fn tick(&mut self, now: Instant, outbox: &mut Outbox) {
        for slot in 0..self.slots.len() {
            let due = self.peer(slot).and_then(Tunnel::next_deadline);
            if due.is_some_and(|deadline| deadline <= now) {
                self.tick_peer(now, slot, outbox);
            }
        }
    }

    fn tick_peer(&mut self, now: Instant, peer: usize, outbox: &mut Outbox) {
        for _ in 0..TICK_SENDS_MAX {
            let tunnel = &mut self.slots[peer].as_mut().expect("a live slot").tunnel;
            match tunnel.tick(now, &mut self.scratch) {
                Action::Send { datagram, to } => {
                    let range = outbox.push_bytes(datagram);
                    outbox.sends.push((to, range));
                }
                _ => return,
            }
        }
    }

    /// The earliest deadline over all peers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers().filter_map(|(_, tunnel)| tunnel.next_deadline()).min()
    }
}

/// Runtime peer changes: what an agent applies from network-map deltas.
impl DeviceCore {
    /// Adds the peer with `config.public_key`, or updates that peer's allowed IPs, endpoint,
    /// keepalive and pre-shared key. An update keeps the peer's session and handshake state,
    /// except that a new pre-shared key ends the session and starts a new handshake. The
    /// endpoint is set only when the configured one changed (a roamed peer stays where it
    /// was heard from while its map entry is the same); `None` keeps the current one.
    pub fn upsert_peer(
        &mut self,
        now: Instant,
        config: PeerConfig,
        outbox: &mut Outbox,
    ) -> Result<PeerChange, ReconfigureError> {
        if crypto::ct_eq(&config.public_key, &self.local_public) {
            return Err(ReconfigureError::LocalKey);
        }
        if let Some(&slot) = self.by_key.get(&config.public_key) {
            return Ok(self.update_peer(now, slot, config, outbox));
        }
        if self.by_key.len() >= self.peer_count_max {
            return Err(ReconfigureError::PeerLimit { peer_count_max: self.peer_count_max });
        }
        let slot = self.add_peer(now, config);
        assert!(self.peer(slot).is_some());
        Ok(PeerChange::Added)
    }

    /// Removes the peer with `public_key`: its sessions, pending handshake, timers, staged
    /// packets (counted as `tx_staged_peer_removed`), index slot (which rests for
    /// `SLOT_REST`) and allowed IPs (handed back to earlier claimants). Other peers are not
    /// touched. Returns whether there was such a peer.
    pub fn remove_peer(&mut self, now: Instant, public_key: &[u8; KEY_LEN]) -> bool {
        let Some(slot) = self.by_key.remove(public_key) else { return false };
        self.unclaim(slot);
        let peer = self.slots[slot].take().expect("by_key names live slots");
        let staged = peer.tunnel.staged_count() as u64;
        if staged > 0 {
            let origin = DropOrigin::Peer(*public_key);
            self.drops.count("tx_staged_peer_removed", origin, staged);
        }
        self.free_slots.push_back((slot, now));
        self.counts.removed_count += 1;
        assert!(self.peer(slot).is_none() && !self.by_key.contains_key(public_key));
        true
    }

    /// Makes `peers` the device's whole peer list (a full network map): removes the peers
    /// absent from it, then adds or updates the others in order (so a network two peers
    /// claim goes to the later one). A rekeyed node is a removal of its old key and an
    /// addition of its new one. Nothing changes when the list is refused.
    pub fn set_peers(
        &mut self,
        now: Instant,
        peers: Vec<PeerConfig>,
        outbox: &mut Outbox,
    ) -> Result<PeersChanged, ReconfigureError> {
        let mut wanted = BTreeSet::new();
        for peer in &peers {
            if crypto::ct_eq(&peer.public_key, &self.local_public) {
                return Err(ReconfigureError::LocalKey);
            }
            if !wanted.insert(peer.public_key) {
                return Err(ReconfigureError::DuplicatePeer { public_key: peer.public_key });
            }
        }
        if wanted.len() > self.peer_count_max {
            return Err(ReconfigureError::PeerLimit { peer_count_max: self.peer_count_max });
        }
        let stale: Vec<[u8; KEY_LEN]> =
            self.by_key.keys().filter(|key| !wanted.contains(*key)).copied().collect();
        let mut changed = PeersChanged { removed_count: stale.len(), ..PeersChanged::default() };
        for key in &stale {
            assert!(self.remove_peer(now, key));
        }
        for peer in peers {
            match self.upsert_peer(now, peer, outbox).expect("the list was checked above") {
                PeerChange::Added => changed.added_count += 1,
                PeerChange::Updated => changed.updated_count += 1,
                PeerChange::Unchanged => changed.unchanged_count += 1,
            }
        }
        assert_eq!(self.by_key.len(), wanted.len());
        Ok(changed)
    }

    /// Puts a new peer in a slot and lets it claim its allowed IPs; the caller checked the
    /// peer limit and that the key is new.
    fn add_peer(&mut self, now: Instant, config: PeerConfig) -> usize {
        assert!(self.by_key.len() < PEER_COUNT_MAX);
        let slot = self.allocate_slot(now);
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut tunnel = TunnelConfig::new(*self.local_private_bytes, config.public_key, seed);
        tunnel.preshared_key = config.preshared_key.clone();
        tunnel.persistent_keepalive = config.persistent_keepalive;
        tunnel.endpoint = config.endpoint;
        tunnel.index_slot = u32::try_from(slot).expect("slots stay below PEER_COUNT_MAX");
        tunnel.handshake_load_limit_per_sec = self.handshake_load_limit_per_sec;
        tunnel.wall_origin = self.wall_origin;
        tunnel.padded_len_max = self.mtu;
        let mut tunnel = Tunnel::new(tunnel);
        tunnel.set_faults(self.faults.clone());
        let previous = self.by_key.insert(config.public_key, slot);
        assert!(previous.is_none(), "add_peer takes new keys only");
        self.slots[slot] = Some(Box::new(Peer { tunnel, config, claim_seq: 0 }));
        self.claim(slot);
        self.counts.added_count += 1;
        slot
    }

    /// A free slot: the longest-resting one once it has rested `SLOT_REST`, else a new one,
    /// else (the slot space is full) the longest-resting one anyway.
    fn allocate_slot(&mut self, now: Instant) -> usize {
        let rested = self
            .free_slots
            .front()
            .is_some_and(|(_, freed_at)| now.saturating_duration_since(*freed_at) >= SLOT_REST);
        if !rested && self.slots.len() < PEER_COUNT_MAX {
            self.slots.push(None);
            return self.slots.len() - 1;
        }
        let (slot, _) = self.free_slots.pop_front().expect("fewer peers than slots");
        if !rested {
            self.counts.slot_reused_early_count += 1;
        }
        assert!(self.slots[slot].is_none());
        slot
    }

    /// Applies new settings to the live peer in `slot`.
    fn update_peer(
        &mut self,
        now: Instant,
        slot: usize,
        config: PeerConfig,
        outbox: &mut Outbox,
    ) -> PeerChange {
        let old = &self.slots[slot].as_ref().expect("a live slot").config;
        assert_eq!(old.public_key, config.public_key);
        let psk_changed = !same_psk(&old.preshared_key, &config.preshared_key);
        let endpoint_changed = config.endpoint.is_some() && config.endpoint != old.endpoint;
        let keepalive_changed = config.persistent_keepalive != old.persistent_keepalive;
        let routes_changed = config.allowed_ips != old.allowed_ips;
        if !(psk_changed || endpoint_changed || keepalive_changed || routes_changed) {
            return PeerChange::Unchanged;
        }
        // Simulates a network-map delta landing while a handshake with this peer is in flight
        // (the agent's poll racing a rekey or the first packet): an initiation goes out just
        // before the change applies, so its response meets the new settings (a new PSK, a
        // moved endpoint, networks that changed hands).
        if self.faults.buggify("wireguard.device.reconfig_mid_handshake") {
            self.tunnel_mut(slot).request_handshake();
            self.tick_peer(now, slot, outbox);
        }
        let peer = self.slots[slot].as_mut().expect("a live slot");
        if let Some(endpoint) = config.endpoint.filter(|_| endpoint_changed) {
            peer.tunnel.set_endpoint(endpoint);
        }
        peer.tunnel.set_persistent_keepalive(now, config.persistent_keepalive);
        if psk_changed && peer.tunnel.set_preshared_key(config.preshared_key.clone()) {
            self.counts.psk_rehandshake_count += 1;
        }
        if routes_changed {
            self.unclaim(slot);
        }
        self.slots[slot].as_mut().expect("a live slot").config = config;
        if routes_changed {
            self.claim(slot);
        }
        self.counts.updated_count += 1;
        // A new PSK's handshake or a new keepalive goes out now, not at the driver's next tick.
        self.tick_peer(now, slot, outbox);
        PeerChange::Updated
    }

    /// Makes the peer in `slot` the latest claimant of each of its allowed IPs.
    fn claim(&mut self, slot: usize) {
        let seq = self.claim_seq_next;
        self.claim_seq_next = seq.checked_add(1).expect("2^64 claims");
        let peer = self.slots[slot].as_mut().expect("a live slot");
        peer.claim_seq = seq;
        for net in &peer.config.allowed_ips {
            let net = net.network();
            self.claims.entry(net).or_default().insert(seq, slot);
            self.routes.insert(net, slot);
        }
    }

    /// Withdraws the claims of the peer in `slot`: each network goes to its latest remaining
    /// claimant, or out of the table.
    fn unclaim(&mut self, slot: usize) {
        let peer = self.slots[slot].as_ref().expect("a live slot");
        for net in &peer.config.allowed_ips {
            let net = net.network();
            let Some(claimants) = self.claims.get_mut(&net) else { continue };
            claimants.remove(&peer.claim_seq);
            match claimants.last_key_value() {
                Some((_, &owner)) => self.routes.insert(net, owner),
                None => {
                    self.claims.remove(&net);
                    self.routes.remove(net);
                }
            }
        }
    }

    /// The device's invariants (tests run it after every step): keys, slots and free slots
    /// agree; every tunnel's indices carry its own slot; the routing table is exactly the
    /// latest claim on each network, and names live peers only.
    pub fn check_invariants(&self) {
        assert!(self.slots.len() <= PEER_COUNT_MAX);
        assert!(self.by_key.len() <= self.peer_count_max);
        assert_eq!(self.by_key.len() + self.free_slots.len(), self.slots.len());
        for (key, &slot) in &self.by_key {
            let peer = self.slots[slot].as_ref().expect("by_key names live slots");
            assert_eq!(peer.tunnel.peer_public(), key);
            assert_eq!(&peer.config.public_key, key);
            assert_eq!(peer.tunnel.index_slot() as usize, slot);
            assert!(peer.claim_seq < self.claim_seq_next);
            for net in &peer.config.allowed_ips {
                let claimant = self.claims.get(&net.network()).and_then(|c| c.get(&peer.claim_seq));
                assert_eq!(claimant, Some(&slot), "{net} of slot {slot} is not claimed");
            }
            peer.tunnel.check_invariants();
        }
        let mut free = BTreeSet::new();
        for &(slot, _) in &self.free_slots {
            assert!(self.slots[slot].is_none(), "free slot {slot} is taken");
            assert!(free.insert(slot), "slot {slot} freed twice");
        }
        let mut expected = BTreeMap::new();
        for (net, claimants) in &self.claims {
            let (_, &owner) = claimants.last_key_value().expect("no empty claim lists");
            for (&seq, &slot) in claimants {
                let peer = self.slots[slot].as_ref().expect("claims name live slots");
                assert_eq!(peer.claim_seq, seq);
                assert!(peer.config.allowed_ips.iter().any(|own| own.network() == *net));
            }
            expected.insert(*net, owner);
        }
        let routes: BTreeMap<IpNet, usize> =
            self.routes.iter().map(|(net, &slot)| (net, slot)).collect();
        assert_eq!(routes, expected, "routes are not the latest claims");
    }
}

/// Whether two optional pre-shared keys are the same (in constant time when both exist).
fn same_psk(a: &Option<Zeroizing<[u8; KEY_LEN]>>, b: &Option<Zeroizing<[u8; KEY_LEN]>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => crypto::ct_eq(&a[..], &b[..]),
        _ => false,
    }
}

/// A decrypted packet and the public key of the peer that sent it: what an agent's packet
/// filter needs (the sender's identity and the inner packet, headers included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The authenticated sender (a peer of the device when the packet was opened).
    pub peer: [u8; KEY_LEN],
    /// The inner IP packet, padding removed; its source address is one `peer` is allowed.
    pub packet: Vec<u8>,
}

/// A snapshot of a device's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Dropped datagrams and packets, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// The same drops by reason and origin (bounded: `drops::DROP_ORIGINS_MAX`).
    pub drop_origins: BTreeMap<(&'static str, DropOrigin), u64>,
    /// The live peers' counters, by public key (a removed peer's go with it).
    pub peers: BTreeMap<[u8; KEY_LEN], TunnelStats>,
    /// Peer changes since the device started.
    pub reconfigure: ReconfigureCounts,
    /// Socket send errors (for example datagrams over the path MTU).
    pub send_error_count: u64,
    /// Socket receive errors.
    pub receive_error_count: u64,
    /// Decrypted packets dropped because the reader was not keeping up.
    pub deliver_overflow_count: u64,
}

/// Reconfigurations queued towards the device's task.
pub const COMMAND_QUEUE_MAX: usize = 64;

/// A reconfiguration for the device's task, with where to answer.
enum Command {
    Upsert(PeerConfig, oneshot::Sender<Result<PeerChange, ReconfigureError>>),
    Remove([u8; KEY_LEN], oneshot::Sender<bool>),
    SetPeers(Vec<PeerConfig>, oneshot::Sender<Result<PeersChanged, ReconfigureError>>),
}

/// The packet interface of a running device (what a TUN device would be), and its
/// reconfiguration (what `wg set` would be).
pub struct DeviceHandle {
    outbound: mpsc::Sender<Vec<u8>>,
    commands: mpsc::Sender<Command>,
    inbound: mpsc::Receiver<Received>,
    stats: Arc<Mutex<DeviceStats>>,
    local_addr: SocketAddr,
}

impl DeviceHandle {
    /// Sends an IP packet into the mesh (routed by destination); waits if the queue is full.
    pub async fn send(&mut self, packet: Vec<u8>) -> io::Result<()> {
        self.outbound.send(packet).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// The next decrypted packet; `None` once the device stopped.
    pub async fn recv(&mut self) -> Option<Received> {
        self.inbound.next().await
    }

    /// Adds a peer or updates one in place (`DeviceCore::upsert_peer`).
    pub async fn upsert_peer(&mut self, peer: PeerConfig) -> Result<PeerChange, ReconfigureError> {
        let (answer, answered) = oneshot::channel();
        self.command(Command::Upsert(peer, answer)).await?;
        answered.await.map_err(|_| ReconfigureError::DeviceStopped)?
    }

    /// Removes a peer (`DeviceCore::remove_peer`); `Ok(false)` if there was none.
    pub async fn remove_peer(
        &mut self,
        public_key: [u8; KEY_LEN],
    ) -> Result<bool, ReconfigureError> {
        let (answer, answered) = oneshot::channel();
        self.command(Command::Remove(public_key, answer)).await?;
        answered.await.map_err(|_| ReconfigureError::DeviceStopped)
    }

    /// Makes `peers` the whole peer list (`DeviceCore::set_peers`).
    pub async fn set_peers(
        &mut self,
        peers: Vec<PeerConfig>,
    ) -> Result<PeersChanged, ReconfigureError> {
        let (answer, answered) = oneshot::channel();
        self.command(Command::SetPeers(peers, answer)).await?;
        answered.await.map_err(|_| ReconfigureError::DeviceStopped)?
    }

    async fn command(&mut self, command: Command) -> Result<(), ReconfigureError> {
        self.commands.send(command).await.map_err(|_| ReconfigureError::DeviceStopped)
    }

    /// The device's counters, as of the last timer event or reconfiguration, or at most 64
    /// events ago.
    pub fn stats(&self) -> DeviceStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Stops the device's task (as dropping the handle does), which lets go of its UDP port
    /// when the task next runs; sends and reconfigurations fail from now on.
    pub fn shutdown(&mut self) {
        self.outbound.close_channel();
        self.commands.close_channel();
    }

    /// The UDP address the device listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Starts devices over an `Env`.
pub struct Device;

impl Device {
    /// Binds the UDP socket and spawns the device's task; dropping the handle stops it.
    pub async fn start<E: Env>(env: E, config: DeviceConfig) -> io::Result<DeviceHandle> {
        Device::start_planted(env, config, None).await
    }

    /// As `start`, with `bug` planted in the core (inert without feature `planted-bugs`).
    pub async fn start_planted<E: Env>(
        env: E,
        config: DeviceConfig,
        bug: Option<PlantedBug>,
    ) -> io::Result<DeviceHandle> {
        let ip = config.listen_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let bind = SocketAddr::new(ip, config.listen_port);
        let socket = env.bind_udp(bind).await?;
        let local_addr = socket.local_addr()?;
        let wall = env.wall().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let wall_origin = wall.saturating_sub(env.now().since_origin());
        let mut seed = [0u8; 32];
        env.rng().fill_bytes(&mut seed);
        let mut core = DeviceCore::new(&config, wall_origin, seed);
        let hook_env = env.clone();
        let hook: BuggifyHook = Arc::new(move |site| hook_env.buggify(site));
        core.set_faults(&Faults::with_hook(hook).planting(bug));
        let (outbound, outbound_rx) = mpsc::channel(PACKET_QUEUE_MAX);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let (inbound_tx, inbound) = mpsc::channel(PACKET_QUEUE_MAX);
        let stats = Arc::new(Mutex::new(DeviceStats::default()));
        let driver = Driver {
            env: env.clone(),
            socket,
            core,
            outbox: Outbox::default(),
            inbound: inbound_tx,
            stats: Arc::clone(&stats),
            send_error_count: 0,
            receive_error_count: 0,
            deliver_overflow_count: 0,
            events_since_stats: 0,
        };
        env.spawn(driver.run(outbound_rx, commands_rx));
        Ok(DeviceHandle { outbound, commands, inbound, stats, local_addr })
    }
}

/// The device task's state.
struct Driver<E: Env> {
    env: E,
    socket: E::UdpSocket,
    core: DeviceCore,
    outbox: Outbox,
    inbound: mpsc::Sender<Received>,
    stats: Arc<Mutex<DeviceStats>>,
    send_error_count: u64,
    receive_error_count: u64,
    deliver_overflow_count: u64,
    events_since_stats: u32,
}

/// What woke the device task.
enum Event {
    Datagram(io::Result<(usize, SocketAddr)>),
    Packet(Option<Vec<u8>>),
    Command(Option<Command>),
    Timer,
}

impl<E: Env> Driver<E> {
    async fn run(
        mut self,
        mut outbound: mpsc::Receiver<Vec<u8>>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
        loop {
            let idle_deadline = self.env.now() + Duration::from_secs(3600);
            let deadline = self.core.next_deadline().unwrap_or(idle_deadline);
            let event = {
                let mut datagram = std::pin::pin!(self.socket.recv_from(&mut buffer).fuse());
                let mut packet = outbound.next();
                let mut command = commands.next();
                let mut timer = std::pin::pin!(self.env.sleep_until(deadline).fuse());
                futures::select_biased! {
                    received = datagram => Event::Datagram(received),
                    packet = packet => Event::Packet(packet),
                    command = command => Event::Command(command),
                    () = timer => Event::Timer,
                }
            };
            let now = self.env.now();
            let refresh_stats = matches!(event, Event::Timer);
            match event {
                Event::Datagram(Ok((len, from))) => {
                    self.core.receive_datagram(now, from, &mut buffer[..len], &mut self.outbox);
                }
                Event::Datagram(Err(_)) => self.receive_error_count += 1,
                Event::Packet(Some(packet)) => {
                    self.core.send_packet(now, &packet, &mut self.outbox);
                }
                Event::Packet(None) | Event::Command(None) => return,
                Event::Command(Some(command)) => self.apply(now, command),
                Event::Timer => self.core.tick(now, &mut self.outbox),
            }
            self.flush(refresh_stats).await;
        }
    }

    /// Applies a reconfiguration and refreshes the stats before answering, so the caller
    /// sees its change in `DeviceHandle::stats`. A caller that stopped waiting for the answer
    /// changes nothing about it.
    fn apply(&mut self, now: Instant, command: Command) {
        let outbox = &mut self.outbox;
        match command {
            Command::Upsert(peer, answer) => {
                let result = self.core.upsert_peer(now, peer, outbox);
                self.refresh_stats();
                let _ = answer.send(result);
            }
            Command::Remove(public_key, answer) => {
                let removed = self.core.remove_peer(now, &public_key);
                self.refresh_stats();
                let _ = answer.send(removed);
            }
            Command::SetPeers(peers, answer) => {
                let result = self.core.set_peers(now, peers, outbox);
                self.refresh_stats();
                let _ = answer.send(result);
            }
        }
        if cfg!(debug_assertions) {
            self.core.check_invariants();
        }
    }

    async fn flush(&mut self, refresh_stats: bool) {
        for (to, datagram) in self.outbox.sends() {
            if self.socket.send_to(datagram, to).await.is_err() {
                self.send_error_count += 1;
            }
        }
        for (slot, packet) in self.outbox.delivers() {
            // The outbox is flushed after every event, so the slot still holds the sender.
            let peer = *self.core.peer(slot).expect("a delivering peer is live").peer_public();
            let received = Received { peer, packet: packet.to_vec() };
            if self.inbound.try_send(received).is_err() {
                self.deliver_overflow_count += 1;
            }
        }
        self.outbox.clear();
        self.events_since_stats += 1;
        if self.events_since_stats >= STATS_REFRESH_EVENTS_MAX || refresh_stats {
            self.refresh_stats();
        }
    }

    /// Copies the counters out for `DeviceHandle::stats` (not per packet: it may allocate).
    fn refresh_stats(&mut self) {
        self.events_since_stats = 0;
        let mut stats = self.stats.lock().expect("stats lock");
        stats.drops.clone_from(self.core.drops());
        stats.drop_origins.clone_from(self.core.drop_origins());
        stats.peers.retain(|key, _| self.core.peer_slot(key).is_some());
        for (_, tunnel) in self.core.peers() {
            let snapshot = stats.peers.entry(*tunnel.peer_public()).or_default();
            snapshot.clone_from(tunnel.stats());
        }
        stats.reconfigure = *self.core.reconfigure_counts();
        stats.send_error_count = self.send_error_count;
        stats.receive_error_count = self.receive_error_count;
        stats.deliver_overflow_count = self.deliver_overflow_count;
    }
}
