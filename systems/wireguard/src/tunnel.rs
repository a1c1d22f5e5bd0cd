//! `Tunnel`: one peer's WireGuard state machine, sans-IO.
//!
//! The caller feeds it IP packets to send (`encapsulate`), datagrams received (`decapsulate`)
//! and the passage of time (`tick`), each with `now`; it answers with one `Action` at a time:
//! send this datagram, deliver this IP packet, or nothing. After `encapsulate` or `decapsulate`
//! the caller calls `tick` until it answers `Action::None` (staged packets, a rekey, a
//! keepalive may be waiting), and calls it again at `next_deadline`.
//!
//! State: the pending handshake we initiated, three keypairs (`current` sends; `previous`
//! still receives after a rekey; `next` is a responder's keypair waiting for the initiator's
//! first message to confirm it), the timers of section 6 of the paper, a bounded queue of
//! packets staged while no keypair exists, and the peer's endpoint, which follows the source
//! address of every authenticated message (roaming).
//!
//! Randomness (ephemeral keys, indices, jitter, cookie nonces) comes from a ChaCha20 stream
//! seeded by the caller, so a simulation replays exactly.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sim::Instant;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::cookie::{CookieGenerator, CookieJar, LoadMeter};
use crate::crypto::{self, KEY_LEN, Secret};
use crate::error::{DecapsulateError, EncapsulateError};
use crate::faults::{Faults, PlantedBug};
use crate::messages::{self, COOKIE_REPLY_LEN, INITIATION_LEN, Message, RESPONSE_LEN};
use crate::noise::{self, SymmetricState};
use crate::timers::*;
use crate::transport::{Keypair, OpenError};
use crate::{ip, messages::DATA_OVERHEAD_LEN};

/// Packets held while no keypair can send them; the oldest is dropped beyond this.
pub const STAGED_PACKETS_MAX: usize = 128;
/// Bits of a local index drawn at random; the bits above are the tunnel's `index_slot`.
pub const INDEX_RANDOM_BITS: u32 = 12;
/// The largest `index_slot` (so a device routes by `index >> INDEX_RANDOM_BITS`).
pub const INDEX_SLOT_MAX: u32 = (1 << (32 - INDEX_RANDOM_BITS)) - 1;
/// Bytes of a TAI64N timestamp.
const TIMESTAMP_LEN: usize = 12;
/// Draws of a fresh local index before concluding the rng is broken.
const INDEX_DRAW_MAX: u32 = 64;

/// How to build a `Tunnel`.
#[derive(Clone)]
pub struct TunnelConfig {
    /// Our static private key.
    pub local_private: Zeroizing<[u8; KEY_LEN]>,
    /// The peer's static public key.
    pub peer_public: [u8; KEY_LEN],
    /// The optional pre-shared key (all zero when absent, as the protocol defines).
    pub preshared_key: Option<Zeroizing<[u8; KEY_LEN]>>,
    /// Send a keepalive after this long without sending anything.
    pub persistent_keepalive: Option<Duration>,
    /// Where to send until the peer's first authenticated message says otherwise.
    pub endpoint: Option<SocketAddr>,
    /// The high bits of every local index this tunnel picks (at most `INDEX_SLOT_MAX`).
    pub index_slot: u32,
    /// Handshake messages per second above which we answer with cookies instead.
    pub handshake_load_limit_per_sec: u32,
    /// Unix time at `Instant::ZERO`, so `now` gives the TAI64N timestamp of initiations.
    pub wall_origin: Duration,
    /// Largest size packets are zero-padded to (the tunnel MTU).
    pub padded_len_max: usize,
    /// Seed of this tunnel's random stream.
    pub rng_seed: [u8; 32],
}

impl TunnelConfig {
    /// A configuration with the defaults: no PSK, no persistent keepalive, no endpoint, slot 0,
    /// load limit 100 per second, wall origin at the Unix epoch, MTU 1420.
    pub fn new(
        local_private: [u8; KEY_LEN],
        peer_public: [u8; KEY_LEN],
        rng_seed: [u8; 32],
    ) -> Self {
        TunnelConfig {
            local_private: Zeroizing::new(local_private),
            peer_public,
            preshared_key: None,
            persistent_keepalive: None,
            endpoint: None,
            index_slot: 0,
            handshake_load_limit_per_sec: 100,
            wall_origin: Duration::ZERO,
            padded_len_max: 1420,
            rng_seed,
        }
    }
}

/// What the caller should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'o> {
    /// Nothing.
    None,
    /// Send `datagram` (a slice of the output buffer) to `to`.
    Send {
        /// The WireGuard message.
        datagram: &'o [u8],
        /// The peer's endpoint (or the source of the message this answers).
        to: SocketAddr,
    },
    /// Hand the decrypted `packet` (a slice of the output buffer) to the IP stack.
    Deliver {
        /// The IP packet, padding removed.
        packet: &'o [u8],
        /// Its source address, for the caller's allowed-IPs check.
        source: IpAddr,
    },
}

/// Counters of one tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Transport messages sent (keepalives included).
    pub tx_packets: u64,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// IP packets delivered.
    pub rx_packets: u64,
    /// Plaintext bytes delivered.
    pub rx_bytes: u64,
    /// Datagrams dropped: malformed, unauthenticated, replayed, expired, unexpected.
    pub dropped_count: u64,
    /// Packets dropped from the staging queue (full, or the handshake gave up).
    pub staged_dropped_count: u64,
    /// Handshakes completed (as initiator or responder).
    pub handshake_count: u64,
    /// Cookie replies we sent because we were under load.
    pub cookie_reply_count: u64,
    /// Handshake initiations we sent (retries included).
    pub initiation_count: u64,
}

/// The handshake we initiated and are waiting on.
struct Pending {
    local_index: u32,
    ephemeral: StaticSecret,
    state: SymmetricState,
}

/// Deadlines (section 6 of the paper). `None` is "not armed".
#[derive(Default)]
struct Timers {
    retransmit_at: Option<Instant>,
    attempt_count: u32,
    keepalive_at: Option<Instant>,
    new_handshake_at: Option<Instant>,
    zero_keys_at: Option<Instant>,
    persistent_at: Option<Instant>,
    last_handshake_sent_at: Option<Instant>,
    last_handshake_completed_at: Option<Instant>,
    lastminute_handshake_sent: bool,
}

/// Where a transport message's ciphertext is, and where its plaintext goes.
enum Sealed<'s, 'o> {
    /// Copy `sealed` into `out` and open it there.
    Copy { sealed: &'s [u8], out: &'o mut [u8] },
    /// Open it where it is.
    InPlace(&'o mut [u8]),
}

/// An initiation whose first half (ephemeral and static keys) has been opened.
pub struct OpenedInitiation {
    state: SymmetricState,
    initiator_ephemeral: [u8; KEY_LEN],
    initiator_static: [u8; KEY_LEN],
}

impl OpenedInitiation {
    /// The initiator's static public key (authenticated only once the payload opens).
    pub fn initiator_static(&self) -> &[u8; KEY_LEN] {
        &self.initiator_static
    }
}

/// Opens the first half of `initiation` with our static key; `responder_start` is
/// `SymmetricState::wireguard(our public key)`.
pub fn open_initiation(
    local_private: &StaticSecret,
    responder_start: &SymmetricState,
    initiation: &[u8; INITIATION_LEN],
) -> Result<OpenedInitiation, DecapsulateError> {
    let noise_part =
        &initiation[messages::INITIATION_NOISE_OFFSET..messages::mac1_offset(INITIATION_LEN)];
    let mut state = responder_start.clone();
    let (initiator_ephemeral, initiator_static) =
        noise::read_initiation_static(&mut state, local_private, noise_part)
            .map_err(|_| DecapsulateError::HandshakeFailed)?;
    Ok(OpenedInitiation { state, initiator_ephemeral, initiator_static })
}

/// One peer's WireGuard state machine.
pub struct Tunnel {
    local_private: StaticSecret,
    local_public: [u8; KEY_LEN],
    peer_public: [u8; KEY_LEN],
    psk: Secret,
    static_shared: Secret,
    initiator_start: SymmetricState,
    responder_start: SymmetricState,
    generator: CookieGenerator,
    jar: CookieJar,
    load: LoadMeter,
    pending: Option<Pending>,
    current: Option<Box<Keypair>>,
    previous: Option<Box<Keypair>>,
    next: Option<Box<Keypair>>,
    timers: Timers,
    initiation_wanted: bool,
    last_timestamp_received: [u8; TIMESTAMP_LEN],
    last_timestamp_sent: (u64, u32),
    last_initiation_consumed_at: Option<Instant>,
    staged: VecDeque<Vec<u8>>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<Duration>,
    index_slot: u32,
    wall_origin: Duration,
    padded_len_max: usize,
    rng: ChaCha20Rng,
    stats: TunnelStats,
    faults: Faults,
}

impl Tunnel {
    /// A tunnel to `config.peer_public`; no handshake happens until there is traffic.
    pub fn new(config: TunnelConfig) -> Self {
        assert!(config.index_slot <= INDEX_SLOT_MAX);
        assert!(config.padded_len_max >= ip::IPV4_HEADER_LEN);
        let local_private = StaticSecret::from(*config.local_private);
        let local_public = crypto::public_key(&local_private);
        // A low-order peer key would make every handshake fail; an all-zero secret says so.
        let static_shared = crypto::dh(&local_private, &config.peer_public)
            .unwrap_or_else(|_| Zeroizing::new([0u8; KEY_LEN]));
        let psk = config.preshared_key.unwrap_or_else(|| Zeroizing::new([0u8; KEY_LEN]));
        Tunnel {
            initiator_start: SymmetricState::wireguard(&config.peer_public),
            responder_start: SymmetricState::wireguard(&local_public),
            generator: CookieGenerator::new(&local_public),
            jar: CookieJar::new(&config.peer_public),
            load: LoadMeter::new(config.handshake_load_limit_per_sec),
            local_private,
            local_public,
            peer_public: config.peer_public,
            psk,
            static_shared,
            pending: None,
            current: None,
            previous: None,
            next: None,
            timers: Timers::default(),
            initiation_wanted: false,
            last_timestamp_received: [0; TIMESTAMP_LEN],
            last_timestamp_sent: (0, 0),
            last_initiation_consumed_at: None,
            staged: VecDeque::new(),
            endpoint: config.endpoint,
            persistent_keepalive: config.persistent_keepalive,
            index_slot: config.index_slot,
            wall_origin: config.wall_origin,
            padded_len_max: config.padded_len_max,
            rng: ChaCha20Rng::from_seed(config.rng_seed),
            stats: TunnelStats::default(),
            faults: Faults::default(),
        }
    }

    /// Hands the tunnel its BUGGIFY hook and planted bug (the driver's, from its `Env`).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        assert!(self.current.is_none() && self.next.is_none(), "faults are set before traffic");
    }

    /// Our static public key.
    pub fn local_public(&self) -> &[u8; KEY_LEN] {
        &self.local_public
    }

    /// The peer's static public key.
    pub fn peer_public(&self) -> &[u8; KEY_LEN] {
        &self.peer_public
    }

    /// Where messages to the peer go (the source of its last authenticated message).
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets where messages to the peer go.
    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    /// The high bits of every local index of this tunnel (its slot in a device).
    pub fn index_slot(&self) -> u32 {
        self.index_slot
    }

    /// Packets waiting for a keypair.
    pub fn staged_count(&self) -> usize {
        self.staged.len()
    }

    /// Whether an initiation of ours is waiting for its response.
    pub fn is_handshake_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Changes the persistent keepalive interval; a newly set interval fires at the next
    /// `tick` (as `wg set` sends one at once), so a NAT mapping opens without waiting.
    pub fn set_persistent_keepalive(&mut self, now: Instant, interval: Option<Duration>) {
        if interval == self.persistent_keepalive {
            return;
        }
        self.persistent_keepalive = interval;
        self.timers.persistent_at = interval.map(|_| now);
        assert_eq!(self.timers.persistent_at.is_some(), self.persistent_keepalive.is_some());
    }

    /// Replaces the pre-shared key. A change ends every session and handshake made under the
    /// old key (who rotates a PSK wants no traffic under the old one) and, when there was one,
    /// starts a new handshake at the next `tick`; returns whether it ended one.
    pub fn set_preshared_key(&mut self, psk: Option<Zeroizing<[u8; KEY_LEN]>>) -> bool {
        let psk = psk.unwrap_or_else(|| Zeroizing::new([0u8; KEY_LEN]));
        if crypto::ct_eq(&psk[..], &self.psk[..]) {
            return false;
        }
        self.psk = psk;
        let had_session = self.local_indices().next().is_some();
        self.zero_keys();
        self.timers.retransmit_at = None;
        self.timers.attempt_count = 0;
        self.timers.keepalive_at = None;
        self.timers.new_handshake_at = None;
        // The rate limit is about handshakes under this key: the first under the new one goes.
        self.timers.last_handshake_sent_at = None;
        self.initiation_wanted = had_session;
        assert!(self.local_indices().next().is_none());
        had_session
    }

    /// Asks for a handshake at the next `tick` (unless one went out within `REKEY_TIMEOUT`).
    pub fn request_handshake(&mut self) {
        self.initiation_wanted = true;
    }

    /// The counters.
    pub fn stats(&self) -> &TunnelStats {
        &self.stats
    }

    /// When the last handshake completed.
    pub fn last_handshake_at(&self) -> Option<Instant> {
        self.timers.last_handshake_completed_at
    }

    /// Whether a keypair can send right now.
    pub fn is_established(&self, now: Instant) -> bool {
        self.sendable(now)
    }

    /// Local indices in use (the device routes messages to this tunnel by them).
    pub fn local_indices(&self) -> impl Iterator<Item = u32> + '_ {
        let keypairs = [&self.current, &self.previous, &self.next];
        let keypair_indices = keypairs.into_iter().flatten().map(|keypair| keypair.local_index);
        keypair_indices.chain(self.pending.as_ref().map(|pending| pending.local_index))
    }

    /// Encrypts the IP `packet` for the peer into `out` (at least `packet.len() + 32` bytes,
    /// and 148 for an initiation). Without a keypair the packet is staged and a handshake
    /// initiation is sent instead (at most one per `REKEY_TIMEOUT`).
    pub fn encapsulate<'o>(
        &mut self,
        now: Instant,
        packet: &[u8],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, EncapsulateError> {
        let Some(to) = self.endpoint else { return Err(EncapsulateError::NoEndpoint) };
        if out.len() < packet.len() + DATA_OVERHEAD_LEN || out.len() < INITIATION_LEN {
            return Err(EncapsulateError::BufferTooSmall);
        }
        if self.sendable(now) {
            let len = self.seal(now, packet, out).ok_or(EncapsulateError::BufferTooSmall)?;
            return Ok(Action::Send { datagram: &out[..len], to });
        }
        if self.staged.len() >= STAGED_PACKETS_MAX {
            self.staged.pop_front();
            self.stats.staged_dropped_count += 1;
        }
        self.staged.push_back(packet.to_vec());
        Ok(match self.begin_handshake(now, false, out) {
            Some(to) => Action::Send { datagram: &out[..INITIATION_LEN], to },
            None => Action::None,
        })
    }

    /// Whether `current` may send now.
    fn sendable(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|keypair| {
            keypair.can_send()
                && now.saturating_duration_since(keypair.created_at) < REJECT_AFTER_TIME
        })
    }

    /// Seals `packet` under `current` (which must be sendable) and runs the send-side timers.
    fn seal(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        let keypair = self.current.as_mut().expect("caller checked sendable");
        let len = keypair.seal(packet, self.padded_len_max, out)?;
        let age = now.saturating_duration_since(keypair.created_at);
        let is_initiator = keypair.is_initiator;
        if is_initiator
            && (keypair.send_counter() > REKEY_AFTER_MESSAGES || age >= REKEY_AFTER_TIME)
        {
            self.initiation_wanted = true;
        }
        // Simulates a rekey long before REKEY_AFTER_TIME (a peer with other limits, a counter
        // near REKEY_AFTER_MESSAGES): a new handshake while the current session carries data.
        if is_initiator && age >= REKEY_TIMEOUT && self.faults.buggify("wireguard.rekey.early") {
            self.initiation_wanted = true;
        }
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += packet.len() as u64;
        if !packet.is_empty() && self.timers.new_handshake_at.is_none() {
            let delay = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter();
            self.timers.new_handshake_at = Some(now + delay);
        }
        self.authenticated_packet_sent(now);
        Some(len)
    }

    fn authenticated_packet_sent(&mut self, now: Instant) {
        self.timers.keepalive_at = None;
        self.timers.persistent_at = self.persistent_keepalive.map(|interval| now + interval);
    }

    fn authenticated_packet_received(&mut self, now: Instant, from: SocketAddr) {
        self.timers.new_handshake_at = None;
        self.timers.persistent_at = self.persistent_keepalive.map(|interval| now + interval);
        self.endpoint = Some(from);
    }

    fn jitter(&mut self) -> Duration {
        let jitter_ms_max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u32;
        // Simulates timers that fire at the very edge of their window (a scheduler that wakes
        // early or late): no jitter at all, or all of it.
        if self.faults.buggify("wireguard.timers.jitter_edge") {
            let edge = if self.rng.next_u32().is_multiple_of(2) { 0 } else { jitter_ms_max };
            return Duration::from_millis(u64::from(edge));
        }
        Duration::from_millis(u64::from(self.rng.next_u32() % (jitter_ms_max + 1)))
    }

    /// Writes an initiation into `out` unless one went out within `REKEY_TIMEOUT` (retries
    /// always go); returns where to send it.
    fn begin_handshake(
        &mut self,
        now: Instant,
        is_retry: bool,
        out: &mut [u8],
    ) -> Option<SocketAddr> {
        let recent = self
            .timers
            .last_handshake_sent_at
            .is_some_and(|sent| now.saturating_duration_since(sent) < REKEY_TIMEOUT);
        if recent && !is_retry {
            return None;
        }
        let to = self.endpoint?;
        if !is_retry {
            self.timers.attempt_count = 0;
        }
        let message: &mut [u8; INITIATION_LEN] =
            (&mut out[..INITIATION_LEN]).try_into().expect("caller sized the buffer");
        if !self.write_initiation(now, message) {
            return None;
        }
        self.stats.initiation_count += 1;
        self.timers.last_handshake_sent_at = Some(now);
        self.timers.retransmit_at = Some(now + REKEY_TIMEOUT + self.jitter());
        self.authenticated_packet_sent(now);
        Some(to)
    }

    /// Writes a fresh initiation (new ephemeral key and index) and makes it the pending one.
    fn write_initiation(&mut self, now: Instant, message: &mut [u8; INITIATION_LEN]) -> bool {
        self.pending = None;
        let local_index = self.fresh_index();
        let ephemeral = self.random_secret();
        let mut state = self.initiator_start.clone();
        let timestamp = self.timestamp(now);
        message.fill(0);
        messages::write_u32(message, 0, messages::TYPE_INITIATION);
        messages::write_u32(message, 4, local_index);
        let noise_part =
            &mut message[messages::INITIATION_NOISE_OFFSET..messages::mac1_offset(INITIATION_LEN)];
        let written = noise::write_initiation(
            &mut state,
            &ephemeral,
            &self.local_public,
            &self.static_shared,
            &self.peer_public,
            &timestamp,
            noise_part,
        );
        if written.is_err() {
            // The peer's key is a low-order point: no handshake with it can ever succeed.
            return false;
        }
        self.jar.stamp(now, message);
        self.pending = Some(Pending { local_index, ephemeral, state });
        true
    }

    fn random_secret(&mut self) -> StaticSecret {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        self.rng.fill_bytes(&mut *bytes);
        StaticSecret::from(*bytes)
    }

    fn fresh_index(&mut self) -> u32 {
        for _ in 0..INDEX_DRAW_MAX {
            let low = self.rng.next_u32() & ((1 << INDEX_RANDOM_BITS) - 1);
            let index = (self.index_slot << INDEX_RANDOM_BITS) | low;
            if self.local_indices().all(|used| used != index) {
                return index;
            }
        }
        panic!("no free index in {INDEX_DRAW_MAX} draws: the rng is broken");
    }

    /// TAI64N of `now`, rounded down to 2^24 ns (so it leaks little timing) and strictly
    /// increasing across our initiations.
    fn timestamp(&mut self, now: Instant) -> [u8; TIMESTAMP_LEN] {
        let wall = self.wall_origin + now.since_origin();
        let mut stamp = (wall.as_secs(), wall.subsec_nanos() & !((1 << 24) - 1));
        if stamp <= self.last_timestamp_sent {
            let (seconds, nanos) = self.last_timestamp_sent;
            stamp = if nanos + 1 < 1_000_000_000 { (seconds, nanos + 1) } else { (seconds + 1, 0) };
        }
        self.last_timestamp_sent = stamp;
        let mut bytes = [0u8; TIMESTAMP_LEN];
        bytes[..8].copy_from_slice(&((1u64 << 62) + stamp.0).to_be_bytes());
        bytes[8..].copy_from_slice(&stamp.1.to_be_bytes());
        bytes
    }

    /// Processes one received datagram from `from`, writing any answer or decrypted packet
    /// into `out` (at least the datagram's length, and 148 bytes). Every error is a dropped,
    /// counted datagram; nothing unauthenticated is ever delivered.
    pub fn decapsulate<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let result = self.decapsulate_inner(now, from, datagram, out);
        self.count_drop(result)
    }

    /// Counts a rejected datagram: every path that refuses one goes through here.
    fn count_drop<T>(
        &mut self,
        result: Result<T, DecapsulateError>,
    ) -> Result<T, DecapsulateError> {
        if result.is_err() {
            self.stats.dropped_count += 1;
        }
        result
    }

    fn decapsulate_inner<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let message = messages::parse(datagram)?;
        if let Message::Initiation(_) | Message::Response(_) = message {
            if !self.generator.verify_mac1(datagram) {
                return Err(DecapsulateError::InvalidMac1);
            }
            // Simulates a responder under load (a handshake flood elsewhere): the cookie path.
            let loaded = self.load.under_load(now) || self.faults.buggify("wireguard.cookie.load");
            if loaded && !self.generator.verify_mac2(now, &mut self.rng, datagram, from) {
                return self.cookie_reply(now, from, datagram, out);
            }
        }
        self.decapsulate_verified(now, from, message, out)
    }

    fn cookie_reply<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let Some(reply) = out.get_mut(..COOKIE_REPLY_LEN) else {
            return Err(DecapsulateError::BufferTooSmall);
        };
        let reply: &mut [u8; COOKIE_REPLY_LEN] = reply.try_into().expect("sliced to length");
        self.generator.write_reply(now, &mut self.rng, datagram, from, reply);
        self.stats.cookie_reply_count += 1;
        Ok(Action::Send { datagram: &out[..COOKIE_REPLY_LEN], to: from })
    }

    /// Processes a parsed message whose mac1 (and, under load, mac2) the caller verified.
    pub fn decapsulate_verified<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: Message<'_>,
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        match message {
            Message::Initiation(initiation) => self.handle_initiation(now, from, initiation, out),
            Message::Response(response) => self.handle_response(now, from, response, out),
            Message::CookieReply(reply) => self.handle_cookie_reply(now, reply),
            Message::Data { receiver_index, counter, sealed } => {
                self.handle_data(now, from, receiver_index, counter, Sealed::Copy { sealed, out })
            }
        }
    }

    fn handle_initiation<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        initiation: &[u8; INITIATION_LEN],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let opened = open_initiation(&self.local_private, &self.responder_start, initiation)?;
        self.consume_initiation(now, from, initiation, opened, out)
    }

    /// Finishes an initiation whose static key a device already opened (and found to be this
    /// tunnel's peer), so the device's lookup costs no second Diffie-Hellman.
    pub fn decapsulate_initiation<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        initiation: &[u8; INITIATION_LEN],
        opened: OpenedInitiation,
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let result = self.consume_initiation(now, from, initiation, opened, out);
        self.count_drop(result)
    }

    fn consume_initiation<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        initiation: &[u8; INITIATION_LEN],
        opened: OpenedInitiation,
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        if out.len() < RESPONSE_LEN {
            return Err(DecapsulateError::BufferTooSmall);
        }
        let OpenedInitiation { mut state, initiator_ephemeral, initiator_static } = opened;
        if !crypto::ct_eq(&initiator_static, &self.peer_public) {
            return Err(DecapsulateError::UnknownPeer);
        }
        let noise_part =
            &initiation[messages::INITIATION_NOISE_OFFSET..messages::mac1_offset(INITIATION_LEN)];
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        noise::read_initiation_payload(&mut state, &self.static_shared, noise_part, &mut timestamp)
            .map_err(|_| DecapsulateError::HandshakeFailed)?;
        if timestamp <= self.last_timestamp_received {
            return Err(DecapsulateError::TimestampReplayed);
        }
        let flood = self.last_initiation_consumed_at.is_some_and(|consumed| {
            now.saturating_duration_since(consumed) < INITIATION_INTERVAL_MIN
        });
        if flood {
            return Err(DecapsulateError::InitiationFlood);
        }
        self.last_timestamp_received = timestamp;
        self.last_initiation_consumed_at = Some(now);
        let remote_index = messages::sender_index(initiation);
        let response: &mut [u8; RESPONSE_LEN] =
            (&mut out[..RESPONSE_LEN]).try_into().expect("length checked");
        self.write_response(now, state, initiator_ephemeral, remote_index, response)?;
        self.authenticated_packet_received(now, from);
        Ok(Action::Send { datagram: &out[..RESPONSE_LEN], to: from })
    }

    /// Writes our response and installs the new keypair as `next` (confirmed by the
    /// initiator's first transport message).
    fn write_response(
        &mut self,
        now: Instant,
        mut state: SymmetricState,
        initiator_ephemeral: [u8; KEY_LEN],
        remote_index: u32,
        response: &mut [u8; RESPONSE_LEN],
    ) -> Result<(), DecapsulateError> {
        // Our own pending initiation stays: when both sides initiate at once, each completes
        // the other's handshake as responder and its own as initiator, and the two keypairs
        // (current and previous) carry traffic both ways at once. Dropping it, as the kernel
        // does, leaves both responses unanswerable until a retry (seed 0x5eed0003 of
        // sim_mesh: a pair took 7.7 s to recover after a heal, beyond the bound).
        let local_index = self.fresh_index();
        let ephemeral = self.random_secret();
        response.fill(0);
        messages::write_u32(response, 0, messages::TYPE_RESPONSE);
        messages::write_u32(response, 4, local_index);
        messages::write_u32(response, 8, remote_index);
        let noise_part =
            &mut response[messages::RESPONSE_NOISE_OFFSET..messages::mac1_offset(RESPONSE_LEN)];
        noise::write_response(
            &mut state,
            &ephemeral,
            &initiator_ephemeral,
            &self.peer_public,
            &self.psk,
            &[],
            noise_part,
        )
        .map_err(|_| DecapsulateError::HandshakeFailed)?;
        self.jar.stamp(now, response);
        let (initiator_key, responder_key) = state.split();
        let mut keypair =
            Keypair::new(&responder_key, &initiator_key, local_index, remote_index, now, false);
        keypair.planted_accepts_greatest_again =
            self.faults.planted(PlantedBug::ReplayAcceptsGreatestAgain);
        keypair.planted_slide_clears_live_word =
            self.faults.planted(PlantedBug::ReplaySlideClearsLiveWord);
        self.next = Some(Box::new(keypair));
        self.previous = None;
        self.session_derived(now);
        self.timers.last_handshake_sent_at = Some(now);
        self.authenticated_packet_sent(now);
        Ok(())
    }

    fn session_derived(&mut self, now: Instant) {
        self.timers.zero_keys_at = Some(now + REJECT_AFTER_TIME * 3);
        self.timers.lastminute_handshake_sent = false;
        self.stats.handshake_count += 1;
    }

    fn handshake_complete(&mut self, now: Instant) {
        self.timers.retransmit_at = None;
        self.timers.attempt_count = 0;
        self.timers.last_handshake_completed_at = Some(now);
    }

    fn handle_response<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        response: &[u8; RESPONSE_LEN],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let receiver_index = messages::read_u32(response, 8);
        let Some(pending) = self.pending.as_ref().filter(|p| p.local_index == receiver_index)
        else {
            return Err(DecapsulateError::UnexpectedResponse);
        };
        // Simulates the worst moment for a retransmission: the retry timer fired just before
        // this response arrived, so a fresh initiation replaced the one it answers. Only on a
        // first attempt, so a handshake is delayed by one retry at most.
        if self.timers.attempt_count == 0
            && self.timers.retransmit_at.is_some()
            && self.faults.buggify("wireguard.handshake.retransmit_race")
        {
            self.timers.retransmit_at = Some(now);
            return Err(DecapsulateError::UnexpectedResponse);
        }
        let mut state = pending.state.clone();
        let noise_part =
            &response[messages::RESPONSE_NOISE_OFFSET..messages::mac1_offset(RESPONSE_LEN)];
        noise::read_response(
            &mut state,
            &pending.ephemeral,
            &self.local_private,
            &self.psk,
            noise_part,
            &mut [],
        )
        .map_err(|_| DecapsulateError::HandshakeFailed)?;
        self.pending = None;
        let (initiator_key, responder_key) = state.split();
        let remote_index = messages::sender_index(response);
        let mut keypair =
            Keypair::new(&initiator_key, &responder_key, receiver_index, remote_index, now, true);
        keypair.planted_accepts_greatest_again =
            self.faults.planted(PlantedBug::ReplayAcceptsGreatestAgain);
        keypair.planted_slide_clears_live_word =
            self.faults.planted(PlantedBug::ReplaySlideClearsLiveWord);
        self.previous = match self.next.take() {
            Some(next) => Some(next),
            None => self.current.take(),
        };
        self.current = Some(Box::new(keypair));
        self.session_derived(now);
        self.handshake_complete(now);
        self.authenticated_packet_received(now, from);
        if !self.staged.is_empty() {
            return Ok(Action::None);
        }
        let len = self.seal(now, &[], out).ok_or(DecapsulateError::BufferTooSmall)?;
        Ok(Action::Send { datagram: &out[..len], to: from })
    }

    fn handle_cookie_reply<'o>(
        &mut self,
        now: Instant,
        reply: &[u8; COOKIE_REPLY_LEN],
    ) -> Result<Action<'o>, DecapsulateError> {
        // A reply to our initiation (pending) or to our response (the `next` keypair's index):
        // either way its cookie keys the mac2 of our next handshake message.
        let receiver_index = messages::read_u32(reply, 4);
        if self.local_indices().all(|index| index != receiver_index) {
            return Err(DecapsulateError::UnexpectedCookieReply);
        }
        self.jar.take_reply(now, reply).map_err(|_| DecapsulateError::InvalidCookieReply)?;
        Ok(Action::None)
    }

    fn handle_data<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        receiver_index: u32,
        counter: u64,
        sealed: Sealed<'_, 'o>,
    ) -> Result<Action<'o>, DecapsulateError> {
        let slot = [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .position(|keypair| keypair.as_ref().is_some_and(|k| k.local_index == receiver_index));
        let Some(slot) = slot else { return Err(DecapsulateError::UnknownIndex) };
        let keypair = match slot {
            0 => self.current.as_mut(),
            1 => self.previous.as_mut(),
            _ => self.next.as_mut(),
        }
        .expect("found above");
        if now.saturating_duration_since(keypair.created_at) >= REJECT_AFTER_TIME {
            return Err(DecapsulateError::KeypairExpired);
        }
        let opened = match sealed {
            Sealed::Copy { sealed, out } => {
                keypair.open(counter, sealed, out).map(|len| &out[..len])
            }
            Sealed::InPlace(buffer) => {
                keypair.open_in_place(counter, buffer).map(|len| &buffer[..len])
            }
        };
        let plaintext = opened.map_err(|error| match error {
            OpenError::Replay(_) => DecapsulateError::Replayed,
            OpenError::CounterExhausted => DecapsulateError::KeypairExpired,
            OpenError::BufferTooSmall => DecapsulateError::BufferTooSmall,
            _ => DecapsulateError::Forged,
        })?;
        if slot == 2 {
            self.previous = self.current.take();
            self.current = self.next.take();
            self.handshake_complete(now);
        }
        self.data_received(now, from, plaintext)
    }

    /// Timers and checks after a transport message authenticated.
    fn data_received<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        plaintext: &'o [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        self.authenticated_packet_received(now, from);
        self.keep_key_fresh_on_receive(now);
        if plaintext.is_empty() {
            return Ok(Action::None);
        }
        if self.timers.keepalive_at.is_none() {
            self.timers.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
        }
        let Some(header) = ip::header(plaintext) else {
            return Err(DecapsulateError::InvalidInnerPacket);
        };
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += header.total_len as u64;
        Ok(Action::Deliver { packet: &plaintext[..header.total_len], source: header.source })
    }

    /// Like `decapsulate`, but a transport message is opened in place inside `datagram`
    /// (saving a copy of every packet); other messages are answered through `out` as usual.
    pub fn decapsulate_in_place<'o>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'o mut [u8],
        out: &'o mut [u8],
    ) -> Result<Action<'o>, DecapsulateError> {
        let is_data = datagram.len() >= DATA_OVERHEAD_LEN
            && messages::read_u32(datagram, 0) == messages::TYPE_DATA;
        if !is_data {
            return self.decapsulate(now, from, datagram, out);
        }
        let receiver_index = messages::read_u32(datagram, 4);
        let counter = u64::from_le_bytes(datagram[8..16].try_into().expect("eight bytes"));
        let sealed = Sealed::InPlace(&mut datagram[messages::DATA_HEADER_LEN..]);
        let result = self.handle_data(now, from, receiver_index, counter, sealed);
        self.count_drop(result)
    }

    /// The initiator rekeys before its keypair nears `REJECT_AFTER_TIME`, even without sending.
    fn keep_key_fresh_on_receive(&mut self, now: Instant) {
        let Some(current) = self.current.as_ref() else { return };
        let age = now.saturating_duration_since(current.created_at);
        let limit = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        if current.is_initiator && age >= limit && !self.timers.lastminute_handshake_sent {
            self.timers.lastminute_handshake_sent = true;
            self.initiation_wanted = true;
        }
    }

    /// The earliest moment `tick` has work; `Some(Instant::ZERO)` means "now".
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.initiation_wanted || (!self.staged.is_empty() && self.current.is_some()) {
            return Some(Instant::ZERO);
        }
        let timers = &self.timers;
        [
            timers.retransmit_at,
            timers.keepalive_at,
            timers.new_handshake_at,
            timers.zero_keys_at,
            timers.persistent_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers and flushes staged packets, one datagram per call: call until it
    /// answers `Action::None`. `out` must hold 148 bytes and the largest staged packet + 32.
    pub fn tick<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Action<'o> {
        assert!(out.len() >= INITIATION_LEN);
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        let due = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
        if due(self.timers.zero_keys_at) {
            self.zero_keys();
        }
        self.drop_expired_keypairs(now);
        if due(self.timers.retransmit_at) {
            return self.retransmit(now, out);
        }
        if self.initiation_wanted || due(self.timers.new_handshake_at) {
            self.initiation_wanted = false;
            self.timers.new_handshake_at = None;
            if let Some(to) = self.begin_handshake(now, false, out) {
                return Action::Send { datagram: &out[..INITIATION_LEN], to };
            }
        }
        self.tick_send(now, out)
    }

    /// The sending half of `tick`: staged packets, then keepalives.
    fn tick_send<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Action<'o> {
        let due = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
        let Some(to) = self.endpoint else { return Action::None };
        if !self.sendable(now) {
            // No keepalive without a keypair: the next packet starts a handshake instead.
            self.timers.keepalive_at = None;
            self.timers.persistent_at = None;
            return Action::None;
        }
        if let Some(packet) = self.staged.pop_front() {
            if out.len() < packet.len() + DATA_OVERHEAD_LEN {
                self.stats.staged_dropped_count += 1;
                return Action::None;
            }
            let len = self.seal(now, &packet, out).expect("buffer checked");
            return Action::Send { datagram: &out[..len], to };
        }
        if due(self.timers.keepalive_at) || due(self.timers.persistent_at) {
            let len = self.seal(now, &[], out).expect("buffer checked");
            return Action::Send { datagram: &out[..len], to };
        }
        Action::None
    }

    fn retransmit<'o>(&mut self, now: Instant, out: &'o mut [u8]) -> Action<'o> {
        if self.timers.attempt_count >= HANDSHAKE_ATTEMPT_MAX {
            self.pending = None;
            self.timers.retransmit_at = None;
            self.timers.attempt_count = 0;
            self.stats.staged_dropped_count += self.staged.len() as u64;
            self.staged.clear();
            if self.timers.zero_keys_at.is_none() {
                self.timers.zero_keys_at = Some(now + REJECT_AFTER_TIME * 3);
            }
            return Action::None;
        }
        self.timers.attempt_count += 1;
        self.timers.retransmit_at = None;
        match self.begin_handshake(now, true, out) {
            Some(to) => Action::Send { datagram: &out[..INITIATION_LEN], to },
            None => Action::None,
        }
    }

    /// The state's invariants (debug builds run it on every tick): local indices are distinct
    /// and carry this tunnel's slot, a retry is scheduled only with attempts left.
    pub fn check_invariants(&self) {
        let indices: Vec<u32> = self.local_indices().collect();
        for (position, index) in indices.iter().enumerate() {
            assert_eq!(index >> INDEX_RANDOM_BITS, self.index_slot, "index outside our slot");
            assert!(!indices[position + 1..].contains(index), "local index {index} reused");
        }
        assert!(self.timers.attempt_count <= HANDSHAKE_ATTEMPT_MAX);
        assert!(self.staged.len() <= STAGED_PACKETS_MAX);
    }

    /// Forgets keypairs that may neither send nor receive any more, so `next_deadline` never
    /// reports staged work that no keypair can carry.
    fn drop_expired_keypairs(&mut self, now: Instant) {
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            let expired = slot.as_ref().is_some_and(|keypair| {
                !keypair.can_send()
                    || now.saturating_duration_since(keypair.created_at) >= REJECT_AFTER_TIME
            });
            if expired {
                *slot = None;
            }
        }
    }

    fn zero_keys(&mut self) {
        self.current = None;
        self.previous = None;
        self.next = None;
        self.pending = None;
        self.timers.zero_keys_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 51820))
    }

    /// Two tunnels with a session, A the initiator.
    fn pair(keepalive: Option<Duration>) -> (Tunnel, Tunnel, Instant) {
        let (a_private, b_private) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        let public = |private| crypto::public_key(&StaticSecret::from(private));
        let mut a = TunnelConfig::new(a_private, public(b_private), [1; 32]);
        a.endpoint = Some(addr(2));
        a.persistent_keepalive = keepalive;
        let mut b = TunnelConfig::new(b_private, public(a_private), [2; 32]);
        b.index_slot = 1;
        let (mut a, mut b) = (Tunnel::new(a), Tunnel::new(b));
        let now = Instant::from_nanos(1);
        let (mut one, mut two) = ([0u8; 256], [0u8; 256]);
        let Ok(Action::Send { datagram, .. }) = a.encapsulate(now, &[], &mut one) else {
            panic!("no initiation")
        };
        let Ok(Action::Send { datagram, .. }) = b.decapsulate(now, addr(1), datagram, &mut two)
        else {
            panic!("no response")
        };
        assert_eq!(a.decapsulate(now, addr(2), datagram, &mut one), Ok(Action::None));
        let Action::Send { datagram, .. } = a.tick(now, &mut one) else { panic!("no keepalive") };
        assert_eq!(b.decapsulate(now, addr(1), datagram, &mut two), Ok(Action::None));
        assert!(a.is_established(now) && b.is_established(now));
        (a, b, now)
    }

    fn is_initiation(action: &Action<'_>) -> bool {
        matches!(action, Action::Send { datagram, .. } if datagram.len() == INITIATION_LEN)
    }

    #[test]
    fn rekey_after_messages_starts_a_handshake_and_reject_after_messages_stops_sending() {
        let (mut a, _b, start) = pair(None);
        // Past the initiation rate limit, well before any age limit.
        let now = start + REKEY_TIMEOUT;
        let mut out = [0u8; 256];
        a.current.as_mut().expect("session").skip_to_counter(REKEY_AFTER_MESSAGES + 1);
        assert!(matches!(a.encapsulate(now, &[], &mut out), Ok(Action::Send { .. })));
        assert!(is_initiation(&a.tick(now, &mut out)));
        a.current.as_mut().expect("session").skip_to_counter(REJECT_AFTER_MESSAGES);
        assert!(!a.is_established(now));
        // The packet is staged; the handshake just sent means no second one yet.
        assert_eq!(a.encapsulate(now, &[], &mut out), Ok(Action::None));
        assert_eq!(a.staged.len(), 1);
    }

    #[test]
    fn persistent_keepalive_fires_after_its_interval_of_silence() {
        let interval = Duration::from_secs(25);
        let (mut a, _b, now) = pair(Some(interval));
        let mut out = [0u8; 256];
        assert_eq!(a.tick(now + (interval - Duration::from_millis(1)), &mut out), Action::None);
        let Action::Send { datagram, .. } = a.tick(now + interval, &mut out) else {
            panic!("no keepalive")
        };
        assert_eq!(datagram.len(), messages::DATA_OVERHEAD_LEN);
        assert_eq!(a.next_deadline(), Some(now + interval * 2));
    }

    #[test]
    fn timestamps_increase_strictly_even_within_one_rounding_step() {
        let (mut a, _b, now) = pair(None);
        let first = a.timestamp(now);
        let second = a.timestamp(now);
        let earlier = a.timestamp(Instant::ZERO);
        assert!(first < second && second < earlier);
    }

    #[test]
    fn a_new_psk_ends_the_session_and_the_same_one_changes_nothing() {
        let (mut a, mut b, now) = pair(None);
        let mut out = [0u8; 256];
        assert!(!a.set_preshared_key(None), "the same (absent) key");
        assert!(a.is_established(now));
        assert!(b.set_preshared_key(Some(Zeroizing::new([3; KEY_LEN]))));
        assert!(!b.is_established(now) && b.local_indices().next().is_none());
        // B, the responder, learned A's endpoint from the session: it initiates too.
        assert!(is_initiation(&b.tick(now, &mut out)));
        assert_eq!(b.tick(now, &mut out), Action::None);
        assert!(a.set_preshared_key(Some(Zeroizing::new([3; KEY_LEN]))));
        assert!(is_initiation(&a.tick(now, &mut out)), "a new handshake at once");
        assert!(a.is_handshake_pending() && a.stats().initiation_count == 2);
        // An idle tunnel takes a new key without wanting a handshake.
        let mut idle = Tunnel::new(TunnelConfig::new([5; KEY_LEN], *a.local_public(), [5; 32]));
        assert!(!idle.set_preshared_key(Some(Zeroizing::new([4; KEY_LEN]))));
        assert_eq!(idle.next_deadline(), None);
    }

    #[test]
    fn a_new_keepalive_interval_fires_at_once_and_none_disarms_it() {
        let (mut a, _b, now) = pair(None);
        let mut out = [0u8; 256];
        let interval = Duration::from_secs(25);
        a.set_persistent_keepalive(now, Some(interval));
        assert_eq!(a.next_deadline(), Some(now));
        let Action::Send { datagram, .. } = a.tick(now, &mut out) else { panic!("no keepalive") };
        assert_eq!(datagram.len(), messages::DATA_OVERHEAD_LEN);
        assert_eq!(a.next_deadline(), Some(now + interval));
        a.set_persistent_keepalive(now, None);
        assert_eq!(a.tick(now + interval, &mut out), Action::None);
    }

    #[test]
    fn initiation_flood_is_refused() {
        let (mut a, mut b, now) = pair(None);
        let (mut one, mut two) = ([0u8; 256], [0u8; 256]);
        a.timers.last_handshake_sent_at = None;
        a.current = None;
        let Ok(Action::Send { datagram, .. }) = a.encapsulate(now, &[], &mut one) else {
            panic!("no initiation")
        };
        let result = b.decapsulate(now + Duration::from_millis(5), addr(1), datagram, &mut two);
        assert_eq!(result, Err(DecapsulateError::InitiationFlood));
    }
}
