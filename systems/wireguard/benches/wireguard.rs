//! Side-by-side benchmark of our WireGuard against boringtun 0.7.1, in one run:
//! - `data_path_1420`: encapsulate + decapsulate of one 1420-byte IP packet between two
//!   established tunnels (ours; ours opening in place as the device does; boringtun's), and
//!   the physical limit: ring's raw
//!   ChaCha20-Poly1305 seal + open of 1420 bytes. Throughput is in decimal bytes, so
//!   Gbit/s = GB/s x 8.
//! - `handshake`: a full handshake (initiation, response, confirming keepalive) between two
//!   fresh tunnels, per second; building the tunnels is not timed.
//!
//! - `summary`: the three data paths again, interleaved in short rounds so that load from
//!   other processes hits all three alike; prints the median Gbit/s of each and the ratios.
//!
//! Run: `CARGO_TARGET_DIR=target/wireguard cargo bench -p wireguard --bench wireguard`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sim::Instant;
use wireguard::ip::ipv4_packet;
use wireguard::{Action, Tunnel, TunnelConfig};

const PACKET_LEN: usize = 1420;
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn a_addr() -> SocketAddr {
    SocketAddr::from((A_IP, 1))
}

fn b_addr() -> SocketAddr {
    SocketAddr::from((B_IP, 2))
}

fn public(private: [u8; 32]) -> [u8; 32] {
    x25519::PublicKey::from(&x25519::StaticSecret::from(private)).to_bytes()
}

fn our_pair(seed: u8) -> (Tunnel, Tunnel) {
    let (a_private, b_private) = ([seed; 32], [seed ^ 0xff; 32]);
    let mut a = TunnelConfig::new(a_private, public(b_private), [1; 32]);
    a.endpoint = Some(b_addr());
    let mut b = TunnelConfig::new(b_private, public(a_private), [2; 32]);
    b.endpoint = Some(a_addr());
    b.index_slot = 1;
    (Tunnel::new(a), Tunnel::new(b))
}

/// One full handshake between our `a` (initiator) and `b`; returns the delivered packet's length.
fn our_handshake(a: &mut Tunnel, b: &mut Tunnel, now: Instant, packet: &[u8]) -> usize {
    let (mut one, mut two) = (vec![0u8; 2048], vec![0u8; 2048]);
    let Ok(Action::Send { datagram, .. }) = a.encapsulate(now, packet, &mut one) else {
        panic!("no initiation");
    };
    let Ok(Action::Send { datagram, .. }) = b.decapsulate(now, a_addr(), datagram, &mut two) else {
        panic!("no response");
    };
    assert!(matches!(a.decapsulate(now, b_addr(), datagram, &mut one), Ok(Action::None)));
    let Action::Send { datagram, .. } = a.tick(now, &mut one) else { panic!("no staged packet") };
    match b.decapsulate(now, a_addr(), datagram, &mut two) {
        Ok(Action::Deliver { packet, .. }) => packet.len(),
        other => panic!("not delivered: {other:?}"),
    }
}

/// Encapsulates `packet` with `a` and opens it in place with `b` (the device's receive path).
fn ours_in_place(
    a: &mut Tunnel,
    b: &mut Tunnel,
    now: Instant,
    packet: &[u8],
    wire: &mut [u8],
    inner: &mut [u8],
) -> usize {
    let len = match a.encapsulate(now, packet, wire) {
        Ok(Action::Send { datagram, .. }) => datagram.len(),
        other => panic!("not sent: {other:?}"),
    };
    match b.decapsulate_in_place(now, a_addr(), &mut wire[..len], inner) {
        Ok(Action::Deliver { packet, .. }) => packet.len(),
        other => panic!("not delivered: {other:?}"),
    }
}

fn boringtun_pair(seed: u8) -> (Tunn, Tunn) {
    let (a_private, b_private) = ([seed; 32], [seed ^ 0xff; 32]);
    let a_public = x25519::PublicKey::from(public(a_private));
    let b_public = x25519::PublicKey::from(public(b_private));
    let a = Tunn::new(x25519::StaticSecret::from(a_private), b_public, None, None, 1, None);
    let b = Tunn::new(x25519::StaticSecret::from(b_private), a_public, None, None, 2, None);
    (a, b)
}

/// One full handshake between boringtun's `a` (initiator) and `b`.
fn boringtun_handshake(a: &mut Tunn, b: &mut Tunn) {
    let (mut one, mut two) = (vec![0u8; 2048], vec![0u8; 2048]);
    let TunnResult::WriteToNetwork(initiation) = a.format_handshake_initiation(&mut one, false)
    else {
        panic!("no initiation");
    };
    let TunnResult::WriteToNetwork(response) =
        b.decapsulate(Some(IpAddr::V4(A_IP)), initiation, &mut two)
    else {
        panic!("no response");
    };
    let TunnResult::WriteToNetwork(keepalive) =
        a.decapsulate(Some(IpAddr::V4(B_IP)), response, &mut one)
    else {
        panic!("no keepalive");
    };
    assert!(matches!(b.decapsulate(Some(IpAddr::V4(A_IP)), keepalive, &mut two), TunnResult::Done));
}

fn data_path(c: &mut Criterion) {
    let packet = ipv4_packet(A_IP, B_IP, &[0x5a; PACKET_LEN - 20]);
    assert_eq!(packet.len(), PACKET_LEN);
    let mut group = c.benchmark_group("data_path_1420");
    group.throughput(Throughput::BytesDecimal(PACKET_LEN as u64));

    let (mut a, mut b) = our_pair(1);
    let now = Instant::from_nanos(1);
    our_handshake(&mut a, &mut b, now, &packet);
    let (mut wire, mut inner) = (vec![0u8; 2048], vec![0u8; 2048]);
    group.bench_function("ours", |bench| {
        bench.iter(|| {
            let Ok(Action::Send { datagram, .. }) = a.encapsulate(now, &packet, &mut wire) else {
                panic!("not sent");
            };
            match b.decapsulate(now, a_addr(), datagram, &mut inner) {
                Ok(Action::Deliver { packet, .. }) => black_box(packet.len()),
                other => panic!("not delivered: {other:?}"),
            }
        })
    });

    let (mut a, mut b) = our_pair(7);
    our_handshake(&mut a, &mut b, now, &packet);
    group.bench_function("ours_in_place", |bench| {
        bench.iter(|| black_box(ours_in_place(&mut a, &mut b, now, &packet, &mut wire, &mut inner)))
    });

    let (mut a, mut b) = boringtun_pair(2);
    boringtun_handshake(&mut a, &mut b);
    group.bench_function("boringtun", |bench| {
        bench.iter(|| {
            let TunnResult::WriteToNetwork(datagram) = a.encapsulate(&packet, &mut wire) else {
                panic!("not sent");
            };
            match b.decapsulate(Some(IpAddr::V4(A_IP)), datagram, &mut inner) {
                TunnResult::WriteToTunnelV4(packet, _) => black_box(packet.len()),
                other => panic!("not delivered: {other:?}"),
            }
        })
    });

    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"));
    let mut buffer = packet.clone();
    buffer.extend_from_slice(&[0; 16]);
    let mut counter = 0u64;
    group.bench_function("raw_ring_aead", |bench| {
        bench.iter(|| {
            counter += 1;
            let nonce = || Nonce::assume_unique_for_key(wireguard::crypto::nonce12(counter));
            let (body, tag_out) = buffer.split_at_mut(PACKET_LEN);
            let tag = key.seal_in_place_separate_tag(nonce(), Aad::empty(), body).expect("seal");
            tag_out.copy_from_slice(tag.as_ref());
            black_box(key.open_in_place(nonce(), Aad::empty(), &mut buffer).expect("open").len())
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let packet = ipv4_packet(A_IP, B_IP, b"first");
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let now = Instant::from_nanos(1);
    group.bench_function("ours", |bench| {
        bench.iter_batched(
            || our_pair(3),
            |(mut a, mut b)| our_handshake(&mut a, &mut b, now, &packet),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("boringtun", |bench| {
        bench.iter_batched(
            || boringtun_pair(4),
            |(mut a, mut b)| boringtun_handshake(&mut a, &mut b),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Rounds of the interleaved summary, and packets per variant per round.
const SUMMARY_ROUND_COUNT: usize = 101;
const SUMMARY_PACKET_COUNT: u32 = 2000;

/// Nanoseconds per packet of `work`, timed over one round.
#[allow(clippy::disallowed_methods, reason = "a benchmark measures real time")]
fn time_round(work: &mut dyn FnMut()) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..SUMMARY_PACKET_COUNT {
        work();
    }
    start.elapsed().as_nanos() as f64 / f64::from(SUMMARY_PACKET_COUNT)
}

fn summary() {
    let packet = ipv4_packet(A_IP, B_IP, &[0x5a; PACKET_LEN - 20]);
    let now = Instant::from_nanos(1);
    let (mut a, mut b) = our_pair(5);
    our_handshake(&mut a, &mut b, now, &packet);
    let (mut bt_a, mut bt_b) = boringtun_pair(6);
    boringtun_handshake(&mut bt_a, &mut bt_b);
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).expect("key"));
    let (mut wire, mut inner) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut buffer = packet.clone();
    buffer.extend_from_slice(&[0; 16]);
    let mut counter = 0u64;
    let (mut c, mut d) = our_pair(8);
    our_handshake(&mut c, &mut d, now, &packet);
    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..SUMMARY_ROUND_COUNT {
        samples[0].push(time_round(&mut || {
            let Ok(Action::Send { datagram, .. }) = a.encapsulate(now, &packet, &mut wire) else {
                panic!("not sent");
            };
            let delivered = b.decapsulate(now, a_addr(), datagram, &mut inner);
            assert!(matches!(delivered, Ok(Action::Deliver { .. })));
        }));
        samples[3].push(time_round(&mut || {
            ours_in_place(&mut c, &mut d, now, &packet, &mut wire, &mut inner);
        }));
        samples[1].push(time_round(&mut || {
            let TunnResult::WriteToNetwork(datagram) = bt_a.encapsulate(&packet, &mut wire) else {
                panic!("not sent");
            };
            let delivered = bt_b.decapsulate(Some(IpAddr::V4(A_IP)), datagram, &mut inner);
            assert!(matches!(delivered, TunnResult::WriteToTunnelV4(..)));
        }));
        samples[2].push(time_round(&mut || {
            counter += 1;
            let nonce = || Nonce::assume_unique_for_key(wireguard::crypto::nonce12(counter));
            let (body, tag_out) = buffer.split_at_mut(PACKET_LEN);
            let tag = key.seal_in_place_separate_tag(nonce(), Aad::empty(), body).expect("seal");
            tag_out.copy_from_slice(tag.as_ref());
            black_box(key.open_in_place(nonce(), Aad::empty(), &mut buffer).expect("open"));
        }));
    }
    let gbits = samples.map(|mut rounds| {
        rounds.sort_by(f64::total_cmp);
        (PACKET_LEN * 8) as f64 / rounds[rounds.len() / 2]
    });
    println!("summary (median of {SUMMARY_ROUND_COUNT} interleaved rounds, 1420-byte packets):");
    println!("  ours encapsulate+decapsulate:      {:.2} Gbit/s", gbits[0]);
    println!("  boringtun encapsulate+decapsulate: {:.2} Gbit/s", gbits[1]);
    println!("  raw ring ChaCha20-Poly1305 seal+open: {:.2} Gbit/s", gbits[2]);
    println!("  ours, decapsulating in place:      {:.2} Gbit/s", gbits[3]);
    println!(
        "  ours / boringtun: {:.3}x (in place {:.3}x)",
        gbits[0] / gbits[1],
        gbits[3] / gbits[1]
    );
    println!(
        "  ours / raw AEAD:  {:.1}% (in place {:.1}%)",
        100.0 * gbits[0] / gbits[2],
        100.0 * gbits[3] / gbits[2]
    );
    println!("  boringtun / raw AEAD: {:.1}%", 100.0 * gbits[1] / gbits[2]);
}

criterion_group!(benches, data_path, handshake);

fn main() {
    benches();
    summary();
    Criterion::default().configure_from_args().final_summary();
}
