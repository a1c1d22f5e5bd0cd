//! Two of our tunnels against each other, with the clock in the test's hands: the timer paths
//! boringtun cannot drive (retry and give-up, key zeroing, previous-keypair reception, roaming,
//! initiation replay), and fuzz-style input to `decapsulate` (random, truncated and mutated
//! datagrams must be dropped and counted, never delivered, never a panic).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use sim::Instant;
use wireguard::ip::ipv4_packet;
use wireguard::timers::*;
use wireguard::{Action, DecapsulateError, Tunnel, TunnelConfig};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const STEP_MAX: usize = 10_000;

fn a_addr() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1], 1000))
}

fn b_addr() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 2], 2000))
}

fn public(private: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private)).to_bytes()
}

/// Two tunnels, A and B, and the datagrams in flight between them.
struct Net {
    a: Tunnel,
    b: Tunnel,
    now: Instant,
    to_a: VecDeque<(SocketAddr, Vec<u8>)>,
    to_b: VecDeque<(SocketAddr, Vec<u8>)>,
    a_delivered: Vec<Vec<u8>>,
    b_delivered: Vec<Vec<u8>>,
    a_errors: Vec<DecapsulateError>,
    b_errors: Vec<DecapsulateError>,
    /// Every datagram B was handed, for the fuzz tests.
    b_seen: Vec<Vec<u8>>,
}

impl Net {
    fn new(seed: u8) -> Net {
        let (a_private, b_private) = ([seed; 32], [seed.wrapping_add(1); 32]);
        let mut a = TunnelConfig::new(a_private, public(b_private), [seed; 32]);
        a.endpoint = Some(b_addr());
        a.index_slot = 1;
        let mut b = TunnelConfig::new(b_private, public(a_private), [seed.wrapping_add(1); 32]);
        b.endpoint = Some(a_addr());
        b.index_slot = 2;
        Net {
            a: Tunnel::new(a),
            b: Tunnel::new(b),
            now: Instant::from_nanos(1),
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
            a_delivered: Vec::new(),
            b_delivered: Vec::new(),
            a_errors: Vec::new(),
            b_errors: Vec::new(),
            b_seen: Vec::new(),
        }
    }

    fn side(&mut self, is_a: bool) -> (&mut Tunnel, &mut VecDeque<(SocketAddr, Vec<u8>)>) {
        if is_a { (&mut self.a, &mut self.to_b) } else { (&mut self.b, &mut self.to_a) }
    }

    fn send(&mut self, is_a: bool, packet: &[u8]) {
        let now = self.now;
        let (tunnel, outbox) = self.side(is_a);
        let mut out = vec![0u8; 2048];
        if let Ok(Action::Send { datagram, to }) = tunnel.encapsulate(now, packet, &mut out) {
            outbox.push_back((to, datagram.to_vec()));
        }
        self.tick(is_a);
    }

    fn tick(&mut self, is_a: bool) {
        let now = self.now;
        let (tunnel, outbox) = self.side(is_a);
        let mut out = vec![0u8; 2048];
        for _ in 0..STEP_MAX {
            match tunnel.tick(now, &mut out) {
                Action::Send { datagram, to } => outbox.push_back((to, datagram.to_vec())),
                _ => return,
            }
        }
        panic!("tick did not settle");
    }

    fn receive(&mut self, is_a: bool, from: SocketAddr, datagram: &[u8]) {
        let now = self.now;
        if !is_a {
            self.b_seen.push(datagram.to_vec());
        }
        let mut out = vec![0u8; 2048];
        let Net { a, b, to_a, to_b, a_delivered, b_delivered, a_errors, b_errors, .. } = self;
        let (tunnel, outbox, delivered, errors) =
            if is_a { (a, to_b, a_delivered, a_errors) } else { (b, to_a, b_delivered, b_errors) };
        match tunnel.decapsulate(now, from, datagram, &mut out) {
            Ok(Action::Send { datagram, to }) => outbox.push_back((to, datagram.to_vec())),
            Ok(Action::Deliver { packet, .. }) => delivered.push(packet.to_vec()),
            Ok(Action::None) => {}
            Err(error) => errors.push(error),
        }
        self.tick(is_a);
    }

    /// Delivers everything in flight; `from_a` is the source address B sees for A.
    fn pump_from(&mut self, from_a: SocketAddr) {
        for _ in 0..STEP_MAX {
            if let Some((_, datagram)) = self.to_b.pop_front() {
                self.receive(false, from_a, &datagram);
            } else if let Some((_, datagram)) = self.to_a.pop_front() {
                self.receive(true, b_addr(), &datagram);
            } else {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn pump(&mut self) {
        self.pump_from(a_addr());
    }

    fn advance(&mut self, duration: Duration) {
        self.now += duration;
        self.tick(true);
        self.tick(false);
    }

    #[track_caller]
    fn exchange(&mut self, tag: u8) {
        let from_a = ipv4_packet(A_IP, B_IP, &[tag; 100]);
        self.send(true, &from_a);
        self.pump();
        assert_eq!(self.b_delivered.last(), Some(&from_a));
        let from_b = ipv4_packet(B_IP, A_IP, &[tag; 50]);
        self.send(false, &from_b);
        self.pump();
        assert_eq!(self.a_delivered.last(), Some(&from_b));
    }
}

#[test]
fn handshake_and_data_between_our_tunnels() {
    let mut net = Net::new(1);
    net.exchange(1);
    net.exchange(2);
    assert_eq!(net.a.stats().handshake_count, 1);
    assert_eq!(net.b.stats().handshake_count, 1);
    assert!(net.a_errors.is_empty() && net.b_errors.is_empty());
}

#[test]
fn lost_initiation_is_retried_then_abandoned_after_rekey_attempt_time() {
    let mut net = Net::new(2);
    net.send(true, &ipv4_packet(A_IP, B_IP, b"lost"));
    let mut sent = 0;
    let mut elapsed = Duration::ZERO;
    while elapsed < REKEY_ATTEMPT_TIME + REKEY_TIMEOUT * 2 {
        sent += net.to_b.len();
        net.to_b.clear();
        net.advance(Duration::from_millis(100));
        elapsed += Duration::from_millis(100);
    }
    // The first attempt and HANDSHAKE_ATTEMPT_MAX retries, then silence.
    assert_eq!(sent, 1 + HANDSHAKE_ATTEMPT_MAX as usize);
    assert_eq!(net.a.stats().staged_dropped_count, 1);
    // A new packet starts a new round of attempts, which now succeeds.
    net.exchange(3);
}

#[test]
fn previous_keypair_still_receives_after_a_rekey() {
    let mut net = Net::new(3);
    net.exchange(1);
    // B seals a packet under the first keypair but it is delayed.
    net.send(false, &ipv4_packet(B_IP, A_IP, b"late"));
    let late = net.to_a.pop_front().expect("sealed");
    net.now += REKEY_AFTER_TIME;
    net.exchange(2);
    assert_eq!(net.a.stats().handshake_count, 2);
    net.receive(true, b_addr(), &late.1);
    assert_eq!(net.a_delivered.last(), Some(&ipv4_packet(B_IP, A_IP, b"late")));
}

#[test]
fn keys_expire_and_are_zeroed_without_traffic() {
    let mut net = Net::new(4);
    net.exchange(1);
    let start = net.now;
    // The network is down: everything either side sends is lost.
    while net.now < start + REJECT_AFTER_TIME * 3 + Duration::from_secs(1) {
        net.advance(Duration::from_secs(1));
        net.to_a.clear();
        net.to_b.clear();
        if net.now >= start + REJECT_AFTER_TIME {
            assert!(!net.a.is_established(net.now));
        }
    }
    assert_eq!(net.a.local_indices().count(), 0);
    assert_eq!(net.b.local_indices().count(), 0);
    net.to_a.clear();
    net.to_b.clear();
    net.exchange(2);
}

#[test]
fn endpoint_follows_the_peer_when_it_roams() {
    let mut net = Net::new(5);
    net.exchange(1);
    let roamed = SocketAddr::from(([203, 0, 113, 9], 4444));
    net.send(true, &ipv4_packet(A_IP, B_IP, b"from a new address"));
    net.pump_from(roamed);
    assert_eq!(net.b.endpoint(), Some(roamed));
    net.send(false, &ipv4_packet(B_IP, A_IP, b"reply"));
    assert_eq!(net.to_a.back().map(|(to, _)| *to), Some(roamed));
}

#[test]
fn replayed_initiation_is_refused() {
    let mut net = Net::new(6);
    net.send(true, &ipv4_packet(A_IP, B_IP, b"x"));
    let initiation = net.to_b.front().expect("initiation").1.clone();
    net.pump();
    net.now += Duration::from_secs(1);
    net.receive(false, a_addr(), &initiation);
    assert_eq!(net.b_errors, vec![DecapsulateError::TimestampReplayed]);
    net.exchange(2);
}

#[test]
fn unconfirmed_responder_does_not_send_until_confirmed() {
    let mut net = Net::new(7);
    // A initiates; the response reaches A but A's confirming keepalive is lost.
    net.send(true, &ipv4_packet(A_IP, B_IP, b"first"));
    let (_, initiation) = net.to_b.pop_front().expect("initiation");
    net.receive(false, a_addr(), &initiation);
    assert!(!net.b.is_established(net.now));
    let (_, response) = net.to_a.pop_front().expect("response");
    net.receive(true, b_addr(), &response);
    net.to_b.clear();
    // B stages its packet (no confirmed keypair) until A's next message confirms.
    net.send(false, &ipv4_packet(B_IP, A_IP, b"waiting"));
    assert!(net.to_a.is_empty());
    net.send(true, &ipv4_packet(A_IP, B_IP, b"confirm"));
    net.pump();
    assert_eq!(net.a_delivered, vec![ipv4_packet(B_IP, A_IP, b"waiting")]);
}

#[test]
fn in_place_decapsulation_delivers_once() {
    let mut net = Net::new(10);
    net.exchange(1);
    let packet = ipv4_packet(A_IP, B_IP, &[7; 333]);
    net.send(true, &packet);
    let (_, datagram) = net.to_b.pop_front().expect("sealed");
    let mut out = vec![0u8; 2048];
    let mut first = datagram.clone();
    let result = net.b.decapsulate_in_place(net.now, a_addr(), &mut first, &mut out);
    assert_eq!(result, Ok(Action::Deliver { packet: &packet, source: A_IP.into() }));
    let mut second = datagram.clone();
    let result = net.b.decapsulate_in_place(net.now, a_addr(), &mut second, &mut out);
    assert_eq!(result, Err(DecapsulateError::Replayed));
}

#[test]
fn simultaneous_initiations_both_complete_without_a_retry() {
    let mut net = Net::new(8);
    net.send(true, &ipv4_packet(A_IP, B_IP, b"from a"));
    net.send(false, &ipv4_packet(B_IP, A_IP, b"from b"));
    // Both initiations cross in flight.
    assert_eq!((net.to_a.len(), net.to_b.len()), (1, 1));
    net.pump();
    assert_eq!(net.a_delivered, vec![ipv4_packet(B_IP, A_IP, b"from b")]);
    assert_eq!(net.b_delivered, vec![ipv4_packet(A_IP, B_IP, b"from a")]);
    assert!(net.a_errors.is_empty() && net.b_errors.is_empty());
    net.exchange(1);
}

/// A pair with a session and a captured sample of every message type B accepts.
fn fuzz_corpus() -> (Net, Vec<Vec<u8>>) {
    let mut net = Net::new(9);
    net.exchange(1);
    net.exchange(2);
    let corpus = net.b_seen.clone();
    (net, corpus)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_truncated_and_random_datagrams_are_never_delivered(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in any::<prop::sample::Index>(),
        random in prop::collection::vec(any::<u8>(), 0..200),
        mode in 0u8..3,
    ) {
        let (mut net, corpus) = fuzz_corpus();
        let original = &corpus[pick.index(corpus.len())];
        let datagram = match mode {
            0 => {
                let mut mutated = original.clone();
                for (index, mask) in &flips {
                    let at = index.index(mutated.len());
                    mutated[at] ^= mask;
                }
                if flips.is_empty() {
                    mutated[0] ^= 0x80;
                }
                mutated
            }
            1 => original[..cut.index(original.len())].to_vec(),
            _ => random,
        };
        let delivered_before = net.b_delivered.len();
        let dropped_before = net.b.stats().dropped_count;
        let mut out = vec![0u8; 2048];
        let result = net.b.decapsulate(net.now, a_addr(), &datagram, &mut out);
        let delivered = matches!(result, Ok(Action::Deliver { .. }));
        prop_assert!(!delivered, "{:?}", datagram);
        prop_assert_eq!(net.b_delivered.len(), delivered_before);
        if result.is_err() {
            prop_assert_eq!(net.b.stats().dropped_count, dropped_before + 1);
        }
        // The in-place path refuses it the same way.
        let mut copy = datagram.clone();
        let result = net.b.decapsulate_in_place(net.now, a_addr(), &mut copy, &mut out);
        let delivered = matches!(result, Ok(Action::Deliver { .. }));
        prop_assert!(!delivered, "in place: {:?}", datagram);
        // Replaying the untouched original is refused too (every one was already accepted).
        let replay = net.b.decapsulate(net.now, a_addr(), original, &mut out);
        let replay_delivered = matches!(replay, Ok(Action::Deliver { .. }));
        prop_assert!(!replay_delivered);
    }
}
