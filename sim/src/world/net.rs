//! The network model: datagram sockets, stream connections, links, partitions and clogging.
//!
//! Fault model. Each directed link has latency (base + uniform jitter), loss, duplication,
//! reordering (an extra random delay), an MTU and optionally a bandwidth (packets queue behind
//! each other). A cut link (`partition`, both ways or one way) drops datagrams at send and at
//! arrival. A clogged node's traffic is held, not dropped, and released in order on `unclog`.
//!
//! Streams behave like TCP: bytes arrive in order; a "lost" segment only pays a retransmission
//! delay; a flow-control window bounds bytes in flight. A segment that cannot cross a cut link
//! breaks the connection: after `stream_break_timeout` both ends fail with `TimedOut`. A crashed
//! peer resets its connections (`ConnectionReset` at the other end one latency later). A stream
//! therefore delivers every byte in order or fails loudly, never silently short.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::config::{LinkConfig, NetConfig};
use super::executor::Event;
use super::{State, TraceKind};
use crate::time::Instant;

/// Held datagrams beyond this many are dropped while nodes are clogged.
const HELD_DATAGRAMS_MAX: usize = 1 << 20;
const EPHEMERAL_PORT_MIN: u16 = 49_152;

/// A generational slab.
pub(crate) struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

/// Identifies a slab entry: slot plus generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    slot: u32,
    generation: u32,
}

impl Key {
    fn id(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab { slots: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, value: T) -> Key {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push((0, None));
            u32::try_from(self.slots.len() - 1).expect("slab exceeds u32")
        });
        let entry = &mut self.slots[slot as usize];
        entry.1 = Some(value);
        Key { slot, generation: entry.0 }
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.slot as usize) {
            Some((generation, Some(value))) if *generation == key.generation => Some(value),
            _ => None,
        }
    }

    fn remove(&mut self, key: Key) -> Option<T> {
        let entry = self.slots.get_mut(key.slot as usize)?;
        if entry.0 != key.generation {
            return None;
        }
        let value = entry.1.take()?;
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(key.slot);
        Some(value)
    }

    fn keys(&self) -> Vec<Key> {
        let live = self.slots.iter().enumerate().filter(|(_, (_, value))| value.is_some());
        live.map(|(slot, (generation, _))| Key { slot: slot as u32, generation: *generation })
            .collect()
    }
}

/// Per-node port tables.
pub(crate) struct NodeNet {
    udp_ports: BTreeMap<u16, Key>,
    tcp_ports: BTreeMap<u16, Key>,
    next_ephemeral_port: u16,
}

impl NodeNet {
    pub(crate) fn new() -> NodeNet {
        NodeNet {
            udp_ports: BTreeMap::new(),
            tcp_ports: BTreeMap::new(),
            next_ephemeral_port: EPHEMERAL_PORT_MIN,
        }
    }

    fn ephemeral_port(&mut self, tcp: bool) -> io::Result<u16> {
        let span = u32::from(u16::MAX - EPHEMERAL_PORT_MIN) + 1;
        for _ in 0..span {
            let port = self.next_ephemeral_port;
            self.next_ephemeral_port = if port == u16::MAX { EPHEMERAL_PORT_MIN } else { port + 1 };
            let used = if tcp { &self.tcp_ports } else { &self.udp_ports };
            if !used.contains_key(&port) {
                return Ok(port);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free ephemeral port"))
    }
}

struct UdpSlot {
    node: u32,
    local: SocketAddr,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

struct ListenerSlot {
    node: u32,
    local: SocketAddr,
    backlog: VecDeque<(Key, SocketAddr)>,
    waker: Option<Waker>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Established,
    Refused,
    TimedOut,
}

struct End {
    node: u32,
    generation: u32,
    addr: SocketAddr,
    /// Bytes arrived and not yet read.
    received: VecDeque<u8>,
    fin_received: bool,
    error: Option<io::ErrorKind>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes this end sent that the peer has not read yet (the flow-control window).
    unread_by_peer: usize,
    /// Arrival time of this end's latest segment: later segments never arrive earlier.
    last_arrival: Instant,
    write_shut: bool,
    /// A handle (or a listener's backlog) holds this end.
    open: bool,
}

impl End {
    fn new(node: u32, generation: u32, addr: SocketAddr) -> End {
        End {
            node,
            generation,
            addr,
            received: VecDeque::new(),
            fin_received: false,
            error: None,
            read_waker: None,
            write_waker: None,
            unread_by_peer: 0,
            last_arrival: Instant::ZERO,
            write_shut: false,
            open: false,
        }
    }

    fn wake_all(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

struct Conn {
    ends: [End; 2],
    state: ConnState,
    connect_waker: Option<Waker>,
    breaking: bool,
}

/// Events of the network, scheduled on the world's queue.
pub(crate) enum NetEvent {
    Datagram(Box<Datagram>),
    Syn { conn: Key },
    SynAck { conn: Key },
    Refuse { conn: Key },
    ConnectTimeout { conn: Key },
    Segment { conn: Key, from: usize, data: Vec<u8> },
    Fin { conn: Key, from: usize },
    Reset { conn: Key, to: usize, timed_out: bool },
}

pub(crate) struct Datagram {
    id: u64,
    source_node: u32,
    target_node: u32,
    source: SocketAddr,
    target: SocketAddr,
    payload: Vec<u8>,
}

/// The network's state.
pub(crate) struct Net {
    by_ip: BTreeMap<IpAddr, u32>,
    links: BTreeMap<(u32, u32), LinkConfig>,
    cut: BTreeSet<(u32, u32)>,
    clogged: BTreeSet<u32>,
    held: Vec<NetEvent>,
    busy_until: BTreeMap<(u32, u32), Instant>,
    udp: Slab<UdpSlot>,
    listeners: Slab<ListenerSlot>,
    conns: Slab<Conn>,
    datagram_id_next: u64,
}

impl Net {
    pub(crate) fn new() -> Net {
        Net {
            by_ip: BTreeMap::new(),
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            clogged: BTreeSet::new(),
            held: Vec::new(),
            busy_until: BTreeMap::new(),
            udp: Slab::new(),
            listeners: Slab::new(),
            conns: Slab::new(),
            datagram_id_next: 0,
        }
    }

    pub(crate) fn add_node(&mut self, ip: IpAddr, node: u32) {
        self.by_ip.insert(ip, node);
    }

    pub(crate) fn node_by_ip(&self, ip: IpAddr) -> Option<u32> {
        self.by_ip.get(&ip).copied()
    }

    fn is_cut(&self, source: u32, target: u32) -> bool {
        !self.cut.is_empty() && self.cut.contains(&(source, target))
    }

    fn is_clogged(&self, source: u32, target: u32) -> bool {
        !self.clogged.is_empty()
            && (self.clogged.contains(&source) || self.clogged.contains(&target))
    }
}

fn link<'a>(net: &'a Net, config: &'a NetConfig, source: u32, target: u32) -> &'a LinkConfig {
    if source == target {
        return &config.loopback;
    }
    if net.links.is_empty() {
        return &config.link;
    }
    net.links.get(&(source, target)).unwrap_or(&config.link)
}

fn chance(rng: &mut ChaCha8Rng, probability: f64) -> bool {
    probability > 0.0 && rng.random_bool(probability.min(1.0))
}

fn uniform(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max == 0 { Duration::ZERO } else { Duration::from_nanos(rng.random_range(0..=max)) }
}

/// When a packet of `size` bytes sent now from `source` to `target` arrives (latency, jitter,
/// reordering and bandwidth queueing).
fn arrival(state: &mut State, source: u32, target: u32, size: usize) -> Instant {
    let State { net, config, rng_net, now, .. } = state;
    let link = link(net, &config.net, source, target);
    let mut delay = link.latency + uniform(rng_net, link.jitter);
    if chance(rng_net, link.reorder) {
        delay += uniform(rng_net, link.reorder_delay);
    }
    let mut start = *now;
    if let Some(rate) = link.bandwidth_bytes_per_sec.filter(|rate| *rate > 0) {
        let busy = net.busy_until.entry((source, target)).or_insert(*now);
        start = (*busy).max(*now);
        let transmit = Duration::from_nanos((size as u64).saturating_mul(1_000_000_000) / rate);
        *busy = start + transmit;
        start = *busy;
    }
    start + delay
}

fn local_ip(state: &State, node: u32, requested: IpAddr) -> io::Result<IpAddr> {
    let node_ip = state.nodes[node as usize].ip;
    if requested.is_unspecified() || requested == node_ip {
        Ok(node_ip)
    } else if requested.is_loopback() {
        Ok(requested)
    } else {
        Err(io::Error::new(io::ErrorKind::AddrNotAvailable, format!("{requested} is not local")))
    }
}

fn down() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "node is down")
}

/// The node a packet to `ip` from `source` goes to.
fn resolve(state: &State, source: u32, ip: IpAddr) -> Option<u32> {
    if ip.is_loopback() { Some(source) } else { state.node_by_ip(ip) }
}

// ---------------------------------------------------------------- datagrams

/// Checks that `addr` can be bound on `node` (alive, local address, free port) and returns the
/// local address, with an ephemeral port if `addr` asked for port 0.
fn free_local_addr(
    state: &mut State,
    node: u32,
    generation: u32,
    addr: SocketAddr,
    tcp: bool,
) -> io::Result<SocketAddr> {
    if !state.node_alive(node, generation) {
        return Err(down());
    }
    let ip = local_ip(state, node, addr.ip())?;
    let ports = &mut state.nodes[node as usize].net;
    let port = if addr.port() == 0 { ports.ephemeral_port(tcp)? } else { addr.port() };
    let used = if tcp { &ports.tcp_ports } else { &ports.udp_ports };
    if used.contains_key(&port) {
        let protocol = if tcp { "tcp" } else { "udp" };
        let message = format!("{protocol} port {port} in use");
        return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
    }
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn udp_bind(
    state: &mut State,
    node: u32,
    generation: u32,
    addr: SocketAddr,
) -> io::Result<(Key, SocketAddr)> {
    let local = free_local_addr(state, node, generation, addr, false)?;
    let slot = UdpSlot { node, local, queue: VecDeque::new(), waker: None };
    let key = state.net.udp.insert(slot);
    state.nodes[node as usize].net.udp_ports.insert(local.port(), key);
    Ok((key, local))
}

pub(crate) fn udp_close(state: &mut State, key: Key) {
    if let Some(slot) = state.net.udp.remove(key) {
        release_port(&mut state.nodes[slot.node as usize].net.udp_ports, slot.local.port(), key);
    }
}

/// Frees `port` if `key` still holds it (a restarted node may have bound it again).
fn release_port(ports: &mut BTreeMap<u16, Key>, port: u16, key: Key) {
    if ports.get(&port) == Some(&key) {
        ports.remove(&port);
    }
}

pub(crate) fn udp_send(
    state: &mut State,
    key: Key,
    data: &[u8],
    target: SocketAddr,
) -> io::Result<usize> {
    let Some(slot) = state.net.udp.get_mut(key) else { return Err(down()) };
    let (source_node, source) = (slot.node, slot.local);
    let id = state.net.datagram_id_next;
    state.net.datagram_id_next += 1;
    let Some(target_node) = resolve(state, source_node, target.ip()) else {
        state.record(source_node, TraceKind::UdpCut, id, 0);
        state.stats.datagram_dropped_count += 1;
        return Ok(data.len());
    };
    let mtu = link(&state.net, &state.config.net, source_node, target_node).mtu_bytes;
    if data.len() > mtu as usize {
        let message = format!("datagram of {} bytes exceeds the path MTU of {mtu}", data.len());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    state.stats.datagram_sent_count += 1;
    state.record(source_node, TraceKind::UdpSend, id, data.len() as u64);
    let (loss, duplicate) = {
        let link = link(&state.net, &state.config.net, source_node, target_node);
        (link.loss, link.duplicate)
    };
    if state.net.is_cut(source_node, target_node) {
        state.record(source_node, TraceKind::UdpCut, id, 0);
        state.stats.datagram_dropped_count += 1;
        return Ok(data.len());
    }
    if chance(&mut state.rng_net, loss) {
        state.record(source_node, TraceKind::UdpLoss, id, 0);
        state.stats.datagram_dropped_count += 1;
        return Ok(data.len());
    }
    let copies = if chance(&mut state.rng_net, duplicate) { 2 } else { 1 };
    for copy in 0..copies {
        if copy == 1 {
            state.record(source_node, TraceKind::UdpDuplicate, id, 0);
            state.stats.datagram_duplicated_count += 1;
        }
        let at = arrival(state, source_node, target_node, data.len());
        let payload = data.to_vec();
        let datagram = Datagram { id, source_node, target_node, source, target, payload };
        state.schedule(at, Event::Net(NetEvent::Datagram(Box::new(datagram))));
    }
    Ok(data.len())
}

fn deliver_datagram(state: &mut State, datagram: Datagram) {
    let (source, target) = (datagram.source_node, datagram.target_node);
    if state.net.is_cut(source, target) {
        state.record(target, TraceKind::UdpCut, datagram.id, 0);
        state.stats.datagram_dropped_count += 1;
        return;
    }
    let queue_max = state.config.net.udp_queue_max as usize;
    let port = datagram.target.port();
    let slot = match state.nodes[target as usize].net.udp_ports.get(&port) {
        Some(key) => state.net.udp.get_mut(*key),
        None => None,
    };
    let Some(slot) = slot.filter(|slot| slot.queue.len() < queue_max) else {
        state.record(target, TraceKind::UdpDiscard, datagram.id, 0);
        state.stats.datagram_dropped_count += 1;
        return;
    };
    let Datagram { id, source: from, payload, .. } = datagram;
    let length = payload.len() as u64;
    slot.queue.push_back((from, payload));
    if let Some(waker) = slot.waker.take() {
        waker.wake();
    }
    state.stats.datagram_delivered_count += 1;
    state.record(target, TraceKind::UdpDeliver, id, length);
}

pub(crate) fn udp_poll_recv(
    state: &mut State,
    key: Key,
    context: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<(usize, SocketAddr)>> {
    let Some(slot) = state.net.udp.get_mut(key) else { return Poll::Ready(Err(down())) };
    match slot.queue.pop_front() {
        Some((from, payload)) => {
            let count = payload.len().min(buf.len());
            buf[..count].copy_from_slice(&payload[..count]);
            Poll::Ready(Ok((count, from)))
        }
        None => {
            match &mut slot.waker {
                Some(waker) => waker.clone_from(context.waker()),
                None => slot.waker = Some(context.waker().clone()),
            }
            Poll::Pending
        }
    }
}

// ---------------------------------------------------------------- streams

pub(crate) fn tcp_listen(
    state: &mut State,
    node: u32,
    generation: u32,
    addr: SocketAddr,
) -> io::Result<(Key, SocketAddr)> {
    let local = free_local_addr(state, node, generation, addr, true)?;
    let slot = ListenerSlot { node, local, backlog: VecDeque::new(), waker: None };
    let key = state.net.listeners.insert(slot);
    state.nodes[node as usize].net.tcp_ports.insert(local.port(), key);
    Ok((key, local))
}

pub(crate) fn tcp_close_listener(state: &mut State, key: Key) {
    let Some(listener) = state.net.listeners.remove(key) else { return };
    let ports = &mut state.nodes[listener.node as usize].net.tcp_ports;
    release_port(ports, listener.local.port(), key);
    for (conn, _) in listener.backlog {
        close_end(state, conn, 1);
    }
}

pub(crate) fn tcp_poll_accept(
    state: &mut State,
    key: Key,
    context: &mut Context<'_>,
) -> Poll<io::Result<(Key, SocketAddr, SocketAddr)>> {
    let Some(listener) = state.net.listeners.get_mut(key) else {
        return Poll::Ready(Err(down()));
    };
    match listener.backlog.pop_front() {
        Some((conn, peer)) => {
            let (local, node) = (listener.local, listener.node);
            state.record(node, TraceKind::StreamAccept, conn.id(), 0);
            Poll::Ready(Ok((conn, local, peer)))
        }
        None => {
            listener.waker = Some(context.waker().clone());
            Poll::Pending
        }
    }
}

/// Starts a connection; the caller then polls `tcp_poll_connect`.
pub(crate) fn tcp_connect(
    state: &mut State,
    node: u32,
    generation: u32,
    target: SocketAddr,
) -> io::Result<Key> {
    if !state.node_alive(node, generation) {
        return Err(down());
    }
    let port = state.nodes[node as usize].net.ephemeral_port(true)?;
    let ip = if target.ip().is_loopback() { target.ip() } else { state.nodes[node as usize].ip };
    let client = End::new(node, generation, SocketAddr::new(ip, port));
    let target_node = resolve(state, node, target.ip());
    let mut server = End::new(target_node.unwrap_or(u32::MAX), 0, target);
    server.open = false;
    let mut conn = Conn {
        ends: [client, server],
        state: ConnState::Connecting,
        connect_waker: None,
        breaking: false,
    };
    conn.ends[0].open = true;
    let key = state.net.conns.insert(conn);
    state.record(node, TraceKind::StreamConnect, key.id(), 0);
    let timeout = state.now + state.config.net.connect_timeout;
    state.schedule(timeout, Event::Net(NetEvent::ConnectTimeout { conn: key }));
    if let Some(target_node) = target_node
        && !state.net.is_cut(node, target_node)
    {
        let at = arrival(state, node, target_node, 0);
        state.schedule(at, Event::Net(NetEvent::Syn { conn: key }));
    }
    Ok(key)
}

pub(crate) fn tcp_poll_connect(
    state: &mut State,
    key: Key,
    context: &mut Context<'_>,
) -> Poll<io::Result<(SocketAddr, SocketAddr)>> {
    let Some(conn) = state.net.conns.get_mut(key) else { return Poll::Ready(Err(down())) };
    match conn.state {
        ConnState::Connecting => {
            conn.connect_waker = Some(context.waker().clone());
            Poll::Pending
        }
        ConnState::Established => Poll::Ready(Ok((conn.ends[0].addr, conn.ends[1].addr))),
        ConnState::Refused => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("connection to {} refused", conn.ends[1].addr),
        ))),
        ConnState::TimedOut => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection to {} timed out", conn.ends[1].addr),
        ))),
    }
}

fn end_error(kind: io::ErrorKind) -> io::Error {
    let message = match kind {
        io::ErrorKind::TimedOut => "connection timed out: the network dropped its bytes",
        io::ErrorKind::ConnectionReset => "connection reset by peer",
        _ => "connection closed",
    };
    io::Error::new(kind, message)
}

pub(crate) fn tcp_poll_read(
    state: &mut State,
    key: Key,
    end: usize,
    context: &mut Context<'_>,
    buf: &mut tokio::io::ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let Some(conn) = state.net.conns.get_mut(key) else { return Poll::Ready(Err(down())) };
    if let Some(kind) = conn.ends[end].error {
        return Poll::Ready(Err(end_error(kind)));
    }
    let this = &mut conn.ends[end];
    if this.received.is_empty() {
        if this.fin_received {
            return Poll::Ready(Ok(()));
        }
        this.read_waker = Some(context.waker().clone());
        return Poll::Pending;
    }
    let count = this.received.len().min(buf.remaining());
    let (front, back) = this.received.as_slices();
    let from_front = count.min(front.len());
    buf.put_slice(&front[..from_front]);
    buf.put_slice(&back[..count - from_front]);
    this.received.drain(..count);
    let peer = &mut conn.ends[1 - end];
    peer.unread_by_peer -= count;
    if let Some(waker) = peer.write_waker.take() {
        waker.wake();
    }
    Poll::Ready(Ok(()))
}

pub(crate) fn tcp_poll_write(
    state: &mut State,
    key: Key,
    end: usize,
    context: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    let window = state.config.net.stream_window_bytes as usize;
    let Some(conn) = state.net.conns.get_mut(key) else { return Poll::Ready(Err(down())) };
    let this = &mut conn.ends[end];
    if let Some(kind) = this.error {
        return Poll::Ready(Err(end_error(kind)));
    }
    if this.write_shut {
        let error = io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown");
        return Poll::Ready(Err(error));
    }
    if data.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let available = window.saturating_sub(this.unread_by_peer);
    if available == 0 {
        this.write_waker = Some(context.waker().clone());
        return Poll::Pending;
    }
    let count = available.min(data.len());
    this.unread_by_peer += count;
    let node = this.node;
    state.record(node, TraceKind::StreamSend, key.id(), count as u64);
    let segment = NetEvent::Segment { conn: key, from: end, data: data[..count].to_vec() };
    transmit(state, key, end, count, segment);
    Poll::Ready(Ok(count))
}

pub(crate) fn tcp_shutdown(state: &mut State, key: Key, end: usize) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let this = &mut conn.ends[end];
    if this.write_shut || this.error.is_some() || conn.state != ConnState::Established {
        this.write_shut = true;
        return;
    }
    this.write_shut = true;
    transmit(state, key, end, 0, NetEvent::Fin { conn: key, from: end });
}

/// A handle of one end was dropped: close it gracefully (FIN) and free the connection once
/// both ends are closed.
pub(crate) fn close_end(state: &mut State, key: Key, end: usize) {
    tcp_shutdown(state, key, end);
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    conn.ends[end].open = false;
    conn.ends[end].read_waker = None;
    conn.ends[end].write_waker = None;
    if !conn.ends[0].open && !conn.ends[1].open {
        state.net.conns.remove(key);
    }
}

/// Sends a segment or FIN from `end` in order behind the previous ones; if the link is cut the
/// connection breaks instead.
fn transmit(state: &mut State, key: Key, end: usize, size: usize, event: NetEvent) {
    let conn = state.net.conns.get_mut(key).expect("transmit on a live connection");
    let (source, target) = (conn.ends[end].node, conn.ends[1 - end].node);
    let last_arrival = conn.ends[end].last_arrival;
    if state.net.is_cut(source, target) {
        break_connection(state, key);
        return;
    }
    let loss = link(&state.net, &state.config.net, source, target).loss;
    let mut at = arrival(state, source, target, size);
    if chance(&mut state.rng_net, loss) {
        at += state.config.net.stream_retransmit_delay;
    }
    let at = at.max(last_arrival);
    state.net.conns.get_mut(key).expect("live").ends[end].last_arrival = at;
    state.schedule(at, Event::Net(event));
}

/// The network dropped stream bytes: both ends fail with `TimedOut` after the break timeout.
fn break_connection(state: &mut State, key: Key) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    if conn.breaking {
        return;
    }
    conn.breaking = true;
    let at = state.now + state.config.net.stream_break_timeout;
    for to in 0..2 {
        state.schedule(at, Event::Net(NetEvent::Reset { conn: key, to, timed_out: true }));
    }
}

/// Sends a reset to `to` one link latency from now (a RST from the other end's host).
fn reset_later(state: &mut State, key: Key, to: usize) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let (source, target) = (conn.ends[1 - to].node, conn.ends[to].node);
    if source == u32::MAX || target == u32::MAX {
        return;
    }
    if state.net.is_cut(source, target) {
        break_connection(state, key);
        return;
    }
    let at = arrival(state, source, target, 0);
    state.schedule(at, Event::Net(NetEvent::Reset { conn: key, to, timed_out: false }));
}

// ---------------------------------------------------------------- events

pub(crate) fn process(state: &mut State, event: NetEvent) {
    if let Some((source, target)) = endpoints(state, &event)
        && state.net.is_clogged(source, target)
    {
        let is_datagram = matches!(event, NetEvent::Datagram(_));
        if !(is_datagram && state.net.held.len() >= HELD_DATAGRAMS_MAX) {
            state.net.held.push(event);
        }
        return;
    }
    match event {
        NetEvent::Datagram(datagram) => deliver_datagram(state, *datagram),
        NetEvent::Syn { conn } => arrive_syn(state, conn),
        NetEvent::SynAck { conn } => settle_connect(state, conn, ConnState::Established),
        NetEvent::Refuse { conn } => settle_connect(state, conn, ConnState::Refused),
        NetEvent::ConnectTimeout { conn } => settle_connect(state, conn, ConnState::TimedOut),
        NetEvent::Segment { conn, from, data } => arrive_segment(state, conn, from, data),
        NetEvent::Fin { conn, from } => arrive_fin(state, conn, from),
        NetEvent::Reset { conn, to, timed_out } => arrive_reset(state, conn, to, timed_out),
    }
}

/// The (source, target) nodes of a network event, for clogging.
fn endpoints(state: &mut State, event: &NetEvent) -> Option<(u32, u32)> {
    let (conn, from) = match event {
        NetEvent::Datagram(datagram) => return Some((datagram.source_node, datagram.target_node)),
        NetEvent::Syn { conn } => (*conn, 0),
        NetEvent::SynAck { conn } | NetEvent::Refuse { conn } => (*conn, 1),
        NetEvent::ConnectTimeout { .. } => return None,
        NetEvent::Segment { conn, from, .. } | NetEvent::Fin { conn, from } => (*conn, *from),
        NetEvent::Reset { conn, to, .. } => (*conn, 1 - *to),
    };
    let conn = state.net.conns.get_mut(conn)?;
    Some((conn.ends[from].node, conn.ends[1 - from].node))
}

fn arrive_syn(state: &mut State, key: Key) {
    let backlog_max = state.config.net.accept_backlog_max as usize;
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let (client_node, target) = (conn.ends[0].node, conn.ends[1].addr);
    let server_node = conn.ends[1].node;
    let listener = match state.nodes.get(server_node as usize) {
        Some(node) if node.status != super::NodeStatus::Crashed => {
            node.net.tcp_ports.get(&target.port()).copied()
        }
        _ => None,
    };
    let generation = state.nodes.get(server_node as usize).map_or(0, |node| node.generation);
    let accepted = listener.and_then(|listener| state.net.listeners.get_mut(listener));
    let Some(listener) = accepted.filter(|listener| listener.backlog.len() < backlog_max) else {
        let at = arrival(state, server_node, client_node, 0);
        state.schedule(at, Event::Net(NetEvent::Refuse { conn: key }));
        return;
    };
    let client_addr = {
        let conn = state.net.conns.get_mut(key).expect("checked");
        conn.ends[1] = End::new(server_node, generation, listener.local);
        conn.ends[1].open = true;
        conn.ends[0].addr
    };
    listener.backlog.push_back((key, client_addr));
    if let Some(waker) = listener.waker.take() {
        waker.wake();
    }
    let at = arrival(state, server_node, client_node, 0);
    state.schedule(at, Event::Net(NetEvent::SynAck { conn: key }));
}

fn settle_connect(state: &mut State, key: Key, outcome: ConnState) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    if conn.state != ConnState::Connecting {
        return;
    }
    conn.state = outcome;
    let node = conn.ends[0].node;
    if let Some(waker) = conn.connect_waker.take() {
        waker.wake();
    }
    match outcome {
        ConnState::Refused => state.record(node, TraceKind::StreamFail, key.id(), 0),
        ConnState::TimedOut => state.record(node, TraceKind::StreamFail, key.id(), 1),
        _ => {}
    }
    if outcome == ConnState::Established
        && !state.net.conns.get_mut(key).expect("live").ends[0].open
    {
        // The client gave up before the SYN-ACK arrived: reset the server's end.
        reset_later(state, key, 1);
    }
}

fn arrive_segment(state: &mut State, key: Key, from: usize, data: Vec<u8>) {
    let to = 1 - from;
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let (source, target) = (conn.ends[from].node, conn.ends[to].node);
    if state.net.is_cut(source, target) {
        break_connection(state, key);
        return;
    }
    let conn = state.net.conns.get_mut(key).expect("live");
    let receiver = &mut conn.ends[to];
    if receiver.error.is_some() {
        return;
    }
    if !receiver.open || !state_alive(&state.nodes, receiver.node, receiver.generation) {
        reset_later(state, key, from);
        return;
    }
    let length = data.len() as u64;
    receiver.received.extend(data);
    if let Some(waker) = receiver.read_waker.take() {
        waker.wake();
    }
    state.stats.stream_delivered_bytes += length;
    state.record(target, TraceKind::StreamDeliver, key.id(), length);
}

fn state_alive(nodes: &[super::Node], node: u32, generation: u32) -> bool {
    nodes.get(node as usize).is_some_and(|entry| {
        entry.generation == generation && entry.status != super::NodeStatus::Crashed
    })
}

fn arrive_fin(state: &mut State, key: Key, from: usize) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let receiver = &mut conn.ends[1 - from];
    receiver.fin_received = true;
    if let Some(waker) = receiver.read_waker.take() {
        waker.wake();
    }
    let node = receiver.node;
    state.record(node, TraceKind::StreamFin, key.id(), 0);
}

fn arrive_reset(state: &mut State, key: Key, to: usize, timed_out: bool) {
    let Some(conn) = state.net.conns.get_mut(key) else { return };
    let end = &mut conn.ends[to];
    if end.error.is_some() {
        return;
    }
    end.error =
        Some(if timed_out { io::ErrorKind::TimedOut } else { io::ErrorKind::ConnectionReset });
    end.wake_all();
    if to == 0 && conn.state == ConnState::Connecting {
        conn.state = if timed_out { ConnState::TimedOut } else { ConnState::Refused };
        if let Some(waker) = conn.connect_waker.take() {
            waker.wake();
        }
    }
    let node = conn.ends[to].node;
    state.record(node, TraceKind::StreamBreak, key.id(), u64::from(timed_out));
}

// ---------------------------------------------------------------- faults

/// A crashed node loses its sockets and listeners; its peers' connections are reset.
pub(crate) fn crash_node(state: &mut State, node: u32) {
    let ports = &mut state.nodes[node as usize].net;
    let udp: Vec<Key> = std::mem::take(&mut ports.udp_ports).into_values().collect();
    let tcp: Vec<Key> = std::mem::take(&mut ports.tcp_ports).into_values().collect();
    for key in udp {
        state.net.udp.remove(key);
    }
    for key in tcp {
        if let Some(listener) = state.net.listeners.remove(key) {
            for (conn, _) in listener.backlog {
                reset_later(state, conn, 0);
            }
        }
    }
    for key in state.net.conns.keys() {
        // Both ends may be on this node (a loopback connection).
        for end in 0..2 {
            let conn = state.net.conns.get_mut(key).expect("listed");
            if conn.ends[end].node != node || !conn.ends[end].open {
                continue;
            }
            conn.ends[end].open = false;
            conn.ends[end].error = Some(io::ErrorKind::ConnectionReset);
            conn.ends[end].wake_all();
            if let Some(waker) = conn.connect_waker.take() {
                waker.wake();
            }
            reset_later(state, key, 1 - end);
        }
    }
}

/// Network changes, for `World`'s control methods.
pub(crate) enum Change {
    Cut { source: u32, target: u32 },
    Mend { source: u32, target: u32 },
    Clog(u32),
    Unclog(u32),
    HealAll,
    SetLink { source: u32, target: u32, link: Box<LinkConfig> },
}

pub(crate) fn change(state: &mut State, change: Change) {
    let world = super::trace::WORLD_NODE;
    match change {
        // A node's traffic to itself never leaves the host: it cannot be cut.
        Change::Cut { source, target } if source == target => {}
        Change::Cut { source, target } => {
            state.net.cut.insert((source, target));
            state.record(source, TraceKind::NetChange, 0, u64::from(target));
        }
        Change::Mend { source, target } => {
            state.net.cut.remove(&(source, target));
            state.record(source, TraceKind::NetChange, 1, u64::from(target));
        }
        Change::Clog(node) => {
            state.net.clogged.insert(node);
            state.record(node, TraceKind::NetChange, 2, 0);
        }
        Change::Unclog(node) => {
            state.net.clogged.remove(&node);
            state.record(node, TraceKind::NetChange, 3, 0);
            release_held(state);
        }
        Change::HealAll => {
            state.net.cut.clear();
            state.net.clogged.clear();
            state.record(world, TraceKind::NetChange, 4, 0);
            release_held(state);
        }
        Change::SetLink { source, target, link } => {
            state.net.links.insert((source, target), *link);
            state.record(source, TraceKind::NetChange, 5, u64::from(target));
        }
    }
}

/// Re-schedules held traffic of nodes no longer clogged, now and in its original order.
fn release_held(state: &mut State) {
    let held = std::mem::take(&mut state.net.held);
    let now = state.now;
    for event in held {
        state.schedule(now, Event::Net(event));
    }
}
