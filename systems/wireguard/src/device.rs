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

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sim::{Env, Instant, UdpSocket};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::allowed_ips::{AllowedIps, IpNet};
use crate::cookie::{CookieGenerator, LoadMeter};
use crate::crypto::{self, KEY_LEN};
use crate::faults::{BuggifyHook, Faults, PlantedBug};
use crate::messages::{self, COOKIE_REPLY_LEN, Message};
use crate::noise::SymmetricState;
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

/// The sans-IO device.
pub struct DeviceCore {
    local_private: StaticSecret,
    responder_start: SymmetricState,
    generator: CookieGenerator,
    load: LoadMeter,
    rng: ChaCha20Rng,
    peers: Vec<Tunnel>,
    by_key: BTreeMap<[u8; KEY_LEN], usize>,
    routes: AllowedIps<usize>,
    scratch: Vec<u8>,
    drops: BTreeMap<&'static str, u64>,
    faults: Faults,
}

impl DeviceCore {
    /// A device with `config`'s peers; `wall_origin` is Unix time at `Instant::ZERO`.
    pub fn new(config: &DeviceConfig, wall_origin: Duration, rng_seed: [u8; 32]) -> Self {
        assert!(config.peers.len() <= INDEX_SLOT_MAX as usize + 1);
        let mut rng = ChaCha20Rng::from_seed(rng_seed);
        let local_private = StaticSecret::from(*config.private_key);
        let local_public = crypto::public_key(&local_private);
        let mut by_key = BTreeMap::new();
        let mut routes = AllowedIps::default();
        let mut peers = Vec::with_capacity(config.peers.len());
        for (slot, peer) in config.peers.iter().enumerate() {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let mut tunnel = TunnelConfig::new(*config.private_key, peer.public_key, seed);
            tunnel.preshared_key = peer.preshared_key.clone();
            tunnel.persistent_keepalive = peer.persistent_keepalive;
            tunnel.endpoint = peer.endpoint;
            tunnel.index_slot = u32::try_from(slot).expect("slot checked above");
            tunnel.handshake_load_limit_per_sec = config.handshake_load_limit_per_sec;
            tunnel.wall_origin = wall_origin;
            tunnel.padded_len_max = config.mtu;
            let previous = by_key.insert(peer.public_key, slot);
            assert!(previous.is_none(), "peer listed twice");
            for net in &peer.allowed_ips {
                routes.insert(*net, slot);
            }
            peers.push(Tunnel::new(tunnel));
        }
        DeviceCore {
            responder_start: SymmetricState::wireguard(&local_public),
            generator: CookieGenerator::new(&local_public),
            load: LoadMeter::new(config.handshake_load_limit_per_sec),
            local_private,
            rng,
            peers,
            by_key,
            routes,
            scratch: vec![0u8; DATAGRAM_LEN_MAX + 64],
            drops: BTreeMap::new(),
            faults: Faults::default(),
        }
    }

    /// Hands the device and every tunnel the driver's BUGGIFY hook and planted bug.
    pub fn set_faults(&mut self, faults: &Faults) {
        for peer in &mut self.peers {
            peer.set_faults(faults.clone());
        }
        self.faults = faults.clone();
    }

    /// The peers' tunnels, by peer index.
    pub fn peers(&self) -> &[Tunnel] {
        &self.peers
    }

    /// Dropped datagrams and packets, by reason.
    pub fn drops(&self) -> &BTreeMap<&'static str, u64> {
        &self.drops
    }

    fn drop_one(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_insert(0) += 1;
    }

    /// Routes the IP `packet` by destination and encapsulates it for that peer.
    pub fn send_packet(&mut self, now: Instant, packet: &[u8], outbox: &mut Outbox) {
        let Some(header) = ip::header(packet) else { return self.drop_one("tx_not_ip") };
        let Some(&peer) = self.routes.lookup(header.destination) else {
            return self.drop_one("tx_no_route");
        };
        let packet = &packet[..header.total_len];
        match self.peers[peer].encapsulate(now, packet, &mut self.scratch) {
            Ok(Action::Send { datagram, to }) => {
                let range = outbox.push_bytes(datagram);
                outbox.sends.push((to, range));
            }
            Ok(_) => {}
            Err(_) => self.drop_one("tx_no_endpoint"),
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
        match self.receive_inner(now, from, datagram, outbox) {
            Ok(Some(peer)) => self.tick_peer(now, peer, outbox),
            Ok(None) => {}
            Err(error) => self.drop_one(error.name()),
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
            let tunnel = &mut self.peers[peer];
            let action = tunnel.decapsulate_in_place(now, from, datagram, &mut self.scratch)?;
            Self::emit(&self.routes, &mut self.drops, peer, action, outbox);
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
                    return Err(DecapsulateError::UnknownPeer);
                };
                let tunnel = &mut self.peers[peer];
                let scratch = &mut self.scratch;
                let action =
                    tunnel.decapsulate_initiation(now, from, initiation, opened, scratch)?;
                Self::emit(&self.routes, &mut self.drops, peer, action, outbox);
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
        let tunnel = &mut self.peers[peer];
        let action = tunnel.decapsulate_verified(now, from, message, &mut self.scratch)?;
        Self::emit(&self.routes, &mut self.drops, peer, action, outbox);
        Ok(Some(peer))
    }

    /// Queues what a tunnel answered; a delivered packet only if `peer` owns its source.
    fn emit(
        routes: &AllowedIps<usize>,
        drops: &mut BTreeMap<&'static str, u64>,
        peer: usize,
        action: Action<'_>,
        outbox: &mut Outbox,
    ) {
        match action {
            Action::Send { datagram, to } => {
                let range = outbox.push_bytes(datagram);
                outbox.sends.push((to, range));
            }
            Action::Deliver { packet, source } => {
                if routes.lookup(source) != Some(&peer) {
                    *drops.entry("rx_source_not_allowed").or_insert(0) += 1;
                    return;
                }
                let range = outbox.push_bytes(packet);
                outbox.delivers.push((peer, range));
            }
            Action::None => {}
        }
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
        self.drop_one("rx_cookie_reply_sent");
        Ok(false)
    }

    fn peer_of_index(&self, index: u32) -> Result<usize, DecapsulateError> {
        let slot = (index >> INDEX_RANDOM_BITS) as usize;
        if slot < self.peers.len() { Ok(slot) } else { Err(DecapsulateError::UnknownIndex) }
    }

    /// Runs every peer's due timers.
    pub fn tick(&mut self, now: Instant, outbox: &mut Outbox) {
        for peer in 0..self.peers.len() {
            if self.peers[peer].next_deadline().is_some_and(|deadline| deadline <= now) {
                self.tick_peer(now, peer, outbox);
            }
        }
    }

    fn tick_peer(&mut self, now: Instant, peer: usize, outbox: &mut Outbox) {
        for _ in 0..TICK_SENDS_MAX {
            match self.peers[peer].tick(now, &mut self.scratch) {
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
        self.peers.iter().filter_map(Tunnel::next_deadline).min()
    }
}

/// A decrypted packet and the public key of the peer that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The authenticated sender.
    pub peer: [u8; KEY_LEN],
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// A snapshot of a device's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Dropped datagrams and packets, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Per-peer counters, by peer index.
    pub peers: Vec<TunnelStats>,
    /// Socket send errors (for example datagrams over the path MTU).
    pub send_error_count: u64,
    /// Socket receive errors.
    pub receive_error_count: u64,
    /// Decrypted packets dropped because the reader was not keeping up.
    pub deliver_overflow_count: u64,
}

/// The packet interface of a running device (what a TUN device would be).
pub struct DeviceHandle {
    outbound: mpsc::Sender<Vec<u8>>,
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

    /// The device's counters, as of the last timer event or at most 64 events ago.
    pub fn stats(&self) -> DeviceStats {
        self.stats.lock().expect("stats lock").clone()
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
        let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.listen_port);
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
        let (inbound_tx, inbound) = mpsc::channel(PACKET_QUEUE_MAX);
        let stats = Arc::new(Mutex::new(DeviceStats::default()));
        let driver = Driver {
            env: env.clone(),
            socket,
            core,
            outbox: Outbox::default(),
            keys: config.peers.iter().map(|peer| peer.public_key).collect(),
            inbound: inbound_tx,
            stats: Arc::clone(&stats),
            send_error_count: 0,
            receive_error_count: 0,
            deliver_overflow_count: 0,
            events_since_stats: 0,
        };
        env.spawn(driver.run(outbound_rx));
        Ok(DeviceHandle { outbound, inbound, stats, local_addr })
    }
}

/// The device task's state.
struct Driver<E: Env> {
    env: E,
    socket: E::UdpSocket,
    core: DeviceCore,
    outbox: Outbox,
    keys: Vec<[u8; KEY_LEN]>,
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
    Timer,
}

impl<E: Env> Driver<E> {
    async fn run(mut self, mut outbound: mpsc::Receiver<Vec<u8>>) {
        let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
        loop {
            let idle_deadline = self.env.now() + Duration::from_secs(3600);
            let deadline = self.core.next_deadline().unwrap_or(idle_deadline);
            let event = {
                let mut datagram = std::pin::pin!(self.socket.recv_from(&mut buffer).fuse());
                let mut packet = outbound.next();
                let mut timer = std::pin::pin!(self.env.sleep_until(deadline).fuse());
                futures::select_biased! {
                    received = datagram => Event::Datagram(received),
                    packet = packet => Event::Packet(packet),
                    () = timer => Event::Timer,
                }
            };
            let now = self.env.now();
            let is_timer = matches!(event, Event::Timer);
            match event {
                Event::Datagram(Ok((len, from))) => {
                    self.core.receive_datagram(now, from, &mut buffer[..len], &mut self.outbox);
                }
                Event::Datagram(Err(_)) => self.receive_error_count += 1,
                Event::Packet(Some(packet)) => {
                    self.core.send_packet(now, &packet, &mut self.outbox);
                }
                Event::Packet(None) => return,
                Event::Timer => self.core.tick(now, &mut self.outbox),
            }
            self.flush(is_timer).await;
        }
    }

    async fn flush(&mut self, refresh_stats: bool) {
        for (to, datagram) in self.outbox.sends() {
            if self.socket.send_to(datagram, to).await.is_err() {
                self.send_error_count += 1;
            }
        }
        for (peer, packet) in self.outbox.delivers() {
            let received = Received { peer: self.keys[peer], packet: packet.to_vec() };
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
        stats.peers.resize_with(self.core.peers().len(), TunnelStats::default);
        for (snapshot, peer) in stats.peers.iter_mut().zip(self.core.peers()) {
            snapshot.clone_from(peer.stats());
        }
        stats.send_error_count = self.send_error_count;
        stats.receive_error_count = self.receive_error_count;
        stats.deliver_overflow_count = self.deliver_overflow_count;
    }
}
