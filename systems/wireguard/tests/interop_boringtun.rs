//! Interoperability with boringtun 0.7.1 (Cloudflare's WireGuard), in process: the proof that
//! we speak WireGuard. Goal: handshakes initiated from either side, data both ways, rekeys from
//! either side, the cookie path with either side under load, pre-shared keys, and replay
//! rejection, all against an independent implementation.
//!
//! Method: a `Pair` holds our `Tunnel` and a boringtun `Tunn` and two in-flight queues, and
//! pumps datagrams between them until both queues are empty. Our side's clock is simulated;
//! boringtun reads the real clock, so paths that need boringtun's timers to fire are driven
//! with its explicit `format_handshake_initiation(force)` instead.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use sim::Instant;
use wireguard::ip::ipv4_packet;
use wireguard::timers::{REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};
use wireguard::{Action, DecapsulateError, Tunnel, TunnelConfig};
use zeroize::Zeroizing;

const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const THEIR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const STEP_MAX: usize = 10_000;

fn their_addr() -> SocketAddr {
    SocketAddr::from((THEIR_IP, 51820))
}

struct Options {
    psk: Option<[u8; 32]>,
    their_load_limit: Option<u64>,
    our_load_limit: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { psk: None, their_load_limit: None, our_load_limit: 100 }
    }
}

struct Pair {
    ours: Tunnel,
    theirs: Tunn,
    now: Instant,
    to_theirs: VecDeque<Vec<u8>>,
    to_ours: VecDeque<Vec<u8>>,
    ours_delivered: Vec<Vec<u8>>,
    theirs_delivered: Vec<Vec<u8>>,
    ours_errors: Vec<DecapsulateError>,
    theirs_error_count: usize,
}

impl Pair {
    fn new(seed: u8, options: Options) -> Pair {
        let our_private = [seed; 32];
        let their_secret = x25519::StaticSecret::from([seed.wrapping_add(100); 32]);
        let their_public = x25519::PublicKey::from(&their_secret);
        let our_public = x25519::PublicKey::from(&x25519::StaticSecret::from(our_private));
        let mut config = TunnelConfig::new(our_private, their_public.to_bytes(), [seed; 32]);
        config.endpoint = Some(their_addr());
        config.preshared_key = options.psk.map(Zeroizing::new);
        config.handshake_load_limit_per_sec = options.our_load_limit;
        config.wall_origin = Duration::from_secs(1_767_225_600);
        config.index_slot = 5;
        let limiter =
            options.their_load_limit.map(|limit| Arc::new(RateLimiter::new(&their_public, limit)));
        let theirs = Tunn::new(their_secret, our_public, options.psk, None, 77, limiter);
        Pair {
            ours: Tunnel::new(config),
            theirs,
            now: Instant::from_nanos(1_000_000_000),
            to_theirs: VecDeque::new(),
            to_ours: VecDeque::new(),
            ours_delivered: Vec::new(),
            theirs_delivered: Vec::new(),
            ours_errors: Vec::new(),
            theirs_error_count: 0,
        }
    }

    fn ours_send(&mut self, packet: &[u8]) {
        let mut out = vec![0u8; 2048];
        match self.ours.encapsulate(self.now, packet, &mut out).expect("encapsulate") {
            Action::Send { datagram, to } => {
                assert_eq!(to, their_addr());
                self.to_theirs.push_back(datagram.to_vec());
            }
            Action::None => {}
            Action::Deliver { .. } => panic!("encapsulate never delivers"),
        }
        self.ours_tick();
    }

    fn ours_tick(&mut self) {
        let mut out = vec![0u8; 2048];
        for _ in 0..STEP_MAX {
            match self.ours.tick(self.now, &mut out) {
                Action::Send { datagram, .. } => self.to_theirs.push_back(datagram.to_vec()),
                Action::None => return,
                Action::Deliver { .. } => panic!("tick never delivers"),
            }
        }
        panic!("tick did not settle");
    }

    fn theirs_send(&mut self, packet: &[u8]) {
        let mut out = vec![0u8; 2048];
        match self.theirs.encapsulate(packet, &mut out) {
            TunnResult::WriteToNetwork(datagram) => self.to_ours.push_back(datagram.to_vec()),
            TunnResult::Done => {}
            other => panic!("boringtun encapsulate: {other:?}"),
        }
    }

    fn theirs_force_handshake(&mut self) {
        let mut out = vec![0u8; 2048];
        match self.theirs.format_handshake_initiation(&mut out, true) {
            TunnResult::WriteToNetwork(datagram) => self.to_ours.push_back(datagram.to_vec()),
            other => panic!("boringtun initiation: {other:?}"),
        }
    }

    fn theirs_receive(&mut self, datagram: &[u8]) {
        let mut out = vec![0u8; 2048];
        let mut input = datagram.to_vec();
        for _ in 0..STEP_MAX {
            match self.theirs.decapsulate(Some(IpAddr::V4(OUR_IP)), &input, &mut out) {
                TunnResult::WriteToNetwork(reply) => self.to_ours.push_back(reply.to_vec()),
                TunnResult::WriteToTunnelV4(packet, _) => {
                    self.theirs_delivered.push(packet.to_vec());
                    return;
                }
                TunnResult::Done => return,
                TunnResult::Err(_) => {
                    self.theirs_error_count += 1;
                    return;
                }
                TunnResult::WriteToTunnelV6(..) => panic!("no IPv6 in these tests"),
            }
            // boringtun flushes its queue when called again with an empty datagram.
            input.clear();
        }
    }

    fn ours_receive(&mut self, datagram: &[u8]) {
        let mut out = vec![0u8; 2048];
        match self.ours.decapsulate(self.now, their_addr(), datagram, &mut out) {
            Ok(Action::Send { datagram, to }) => {
                assert_eq!(to, their_addr());
                self.to_theirs.push_back(datagram.to_vec());
            }
            Ok(Action::Deliver { packet, source }) => {
                assert_eq!(source, IpAddr::V4(THEIR_IP));
                self.ours_delivered.push(packet.to_vec());
            }
            Ok(Action::None) => {}
            Err(error) => self.ours_errors.push(error),
        }
        self.ours_tick();
    }

    fn pump(&mut self) {
        for _ in 0..STEP_MAX {
            if let Some(datagram) = self.to_theirs.pop_front() {
                self.theirs_receive(&datagram);
            } else if let Some(datagram) = self.to_ours.pop_front() {
                self.ours_receive(&datagram);
            } else {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn advance(&mut self, duration: Duration) {
        self.now += duration;
        self.ours_tick();
    }

    /// Sends `count` packets each way and checks each arrives exactly once, intact.
    #[track_caller]
    fn exchange(&mut self, count: usize, tag: u8) {
        let ours_before = self.ours_delivered.len();
        let theirs_before = self.theirs_delivered.len();
        for index in 0..count {
            let payload = vec![tag; 1 + index * 37 % 1300];
            let from_us = ipv4_packet(OUR_IP, THEIR_IP, &payload);
            self.ours_send(&from_us);
            self.pump();
            assert_eq!(self.theirs_delivered.last(), Some(&from_us));
            let from_them = ipv4_packet(THEIR_IP, OUR_IP, &payload);
            self.theirs_send(&from_them);
            self.pump();
            assert_eq!(self.ours_delivered.last(), Some(&from_them));
        }
        assert_eq!(self.ours_delivered.len() - ours_before, count);
        assert_eq!(self.theirs_delivered.len() - theirs_before, count);
        assert!(self.ours_errors.is_empty(), "{:?}", self.ours_errors);
        assert_eq!(self.theirs_error_count, 0);
    }
}

fn first_packet() -> Vec<u8> {
    ipv4_packet(OUR_IP, THEIR_IP, b"first")
}

#[test]
fn we_initiate_then_data_flows_both_ways() {
    let mut pair = Pair::new(1, Options::default());
    pair.ours_send(&first_packet());
    assert_eq!(pair.to_theirs.front().map(Vec::len), Some(148));
    pair.pump();
    assert_eq!(pair.theirs_delivered, vec![first_packet()]);
    assert_eq!(pair.ours.stats().handshake_count, 1);
    pair.exchange(40, 7);
}

#[test]
fn boringtun_initiates_then_data_flows_both_ways() {
    let mut pair = Pair::new(2, Options::default());
    let packet = ipv4_packet(THEIR_IP, OUR_IP, b"hello from boringtun");
    pair.theirs_send(&packet);
    assert_eq!(pair.to_ours.front().map(Vec::len), Some(148));
    pair.pump();
    assert_eq!(pair.ours_delivered, vec![packet]);
    pair.exchange(40, 9);
}

#[test]
fn preshared_key_handshake_interoperates() {
    let mut pair = Pair::new(3, Options { psk: Some([42; 32]), ..Options::default() });
    pair.ours_send(&first_packet());
    pair.pump();
    pair.exchange(5, 1);
}

#[test]
fn mismatched_preshared_keys_never_deliver() {
    let mut pair = Pair::new(4, Options::default());
    let mut config = TunnelConfig::new([4; 32], pair.ours.peer_public().to_owned(), [4; 32]);
    config.preshared_key = Some(Zeroizing::new([1; 32]));
    config.endpoint = Some(their_addr());
    pair.ours = Tunnel::new(config);
    pair.ours_send(&first_packet());
    pair.pump();
    assert!(pair.theirs_delivered.is_empty());
    assert_eq!(pair.ours_errors, vec![DecapsulateError::HandshakeFailed]);
}

#[test]
fn we_rekey_after_rekey_after_time() {
    let mut pair = Pair::new(5, Options::default());
    pair.ours_send(&first_packet());
    pair.pump();
    pair.exchange(3, 1);
    pair.now += REKEY_AFTER_TIME + Duration::from_secs(1);
    let packet = ipv4_packet(OUR_IP, THEIR_IP, b"old keys still carry this");
    pair.ours_send(&packet);
    // The data message under the old keypair, then a new initiation.
    assert_eq!(pair.to_theirs.len(), 2);
    assert_eq!(pair.to_theirs[1].len(), 148);
    pair.pump();
    assert_eq!(pair.theirs_delivered.last(), Some(&packet));
    assert_eq!(pair.ours.stats().handshake_count, 2);
    assert_eq!(pair.ours.last_handshake_at(), Some(pair.now));
    pair.exchange(10, 2);
}

#[test]
fn boringtun_rekeys_and_we_follow() {
    let mut pair = Pair::new(6, Options::default());
    pair.ours_send(&first_packet());
    pair.pump();
    pair.exchange(3, 1);
    for round in 0..3 {
        pair.now += REKEY_TIMEOUT;
        pair.theirs_force_handshake();
        pair.pump();
        assert_eq!(pair.ours.stats().handshake_count, 2 + round);
        pair.exchange(4, 3 + round as u8);
    }
}

#[test]
fn cookie_path_when_boringtun_is_under_load() {
    let mut pair = Pair::new(7, Options { their_load_limit: Some(0), ..Options::default() });
    pair.ours_send(&first_packet());
    pair.pump();
    // boringtun answered with a cookie reply; nothing is established yet.
    assert!(pair.theirs_delivered.is_empty());
    assert!(pair.ours_errors.is_empty(), "{:?}", pair.ours_errors);
    assert_eq!(pair.ours.stats().initiation_count, 1);
    // Our retry carries mac2 under the cookie and gets through.
    pair.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(pair.ours.stats().initiation_count, 2);
    pair.pump();
    assert_eq!(pair.theirs_delivered, vec![first_packet()]);
    pair.exchange(5, 4);
}

#[test]
fn cookie_path_when_we_are_under_load() {
    let mut pair = Pair::new(8, Options { our_load_limit: 0, ..Options::default() });
    let packet = ipv4_packet(THEIR_IP, OUR_IP, b"knock knock");
    pair.theirs_send(&packet);
    pair.pump();
    assert_eq!(pair.ours.stats().cookie_reply_count, 1);
    assert!(pair.ours_delivered.is_empty());
    // boringtun retries (its timer, forced here) with mac2 under our cookie.
    pair.theirs_force_handshake();
    pair.pump();
    assert_eq!(pair.ours.stats().cookie_reply_count, 1);
    assert_eq!(pair.ours_delivered, vec![packet]);
    pair.exchange(5, 5);
}

#[test]
fn cookie_path_when_boringtun_initiates_under_load() {
    let mut pair = Pair::new(11, Options { their_load_limit: Some(0), ..Options::default() });
    let packet = ipv4_packet(THEIR_IP, OUR_IP, b"initiator under load");
    pair.theirs_send(&packet);
    pair.pump();
    // boringtun, under load, answered our response with a cookie reply; we kept the cookie.
    assert!(pair.ours_errors.is_empty(), "{:?}", pair.ours_errors);
    assert!(pair.ours_delivered.is_empty());
    // Its retry reaches us; our new response carries mac2 under its cookie and gets through.
    pair.now += REKEY_TIMEOUT;
    pair.theirs_force_handshake();
    pair.pump();
    assert_eq!(pair.ours_delivered, vec![packet]);
    pair.exchange(3, 6);
}

#[test]
fn replayed_and_tampered_data_is_dropped_and_counted() {
    let mut pair = Pair::new(9, Options::default());
    pair.ours_send(&first_packet());
    pair.pump();
    let packet = ipv4_packet(THEIR_IP, OUR_IP, b"once");
    pair.theirs_send(&packet);
    let datagram = pair.to_ours.front().expect("sent").clone();
    pair.pump();
    pair.ours_receive(&datagram);
    let mut tampered = datagram.clone();
    *tampered.last_mut().expect("nonempty") ^= 1;
    tampered[8] = tampered[8].wrapping_add(1);
    pair.ours_receive(&tampered);
    assert_eq!(pair.ours_delivered, vec![packet]);
    assert_eq!(pair.ours_errors, vec![DecapsulateError::Replayed, DecapsulateError::Forged]);
    assert_eq!(pair.ours.stats().dropped_count, 2);
}

#[test]
fn keepalive_after_receiving_data_and_sending_nothing() {
    let mut pair = Pair::new(10, Options::default());
    pair.ours_send(&first_packet());
    pair.pump();
    pair.theirs_send(&ipv4_packet(THEIR_IP, OUR_IP, b"ping"));
    pair.pump();
    assert!(pair.to_theirs.is_empty());
    pair.advance(wireguard::timers::KEEPALIVE_TIMEOUT);
    assert_eq!(pair.to_theirs.len(), 1);
    assert_eq!(pair.to_theirs[0].len(), 32, "a keepalive is an empty transport message");
    pair.pump();
    assert_eq!(pair.theirs_error_count, 0);
}
