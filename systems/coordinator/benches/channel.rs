//! Costs of the control channel's sans-IO core, in one run:
//! - `handshake`: a whole Noise IK handshake (message 1, the coordinator's answer, the agent
//!   reading it), four X25519 operations on each side.
//! - `transport/{1024,65536}`: seal + open of one message of that many bytes between the two
//!   sides of a session, next to ring's raw ChaCha20-Poly1305 seal + open of the same bytes
//!   (the limit: our frames add a counter check and 8 counter bytes). Throughput is plaintext
//!   bytes (criterion prints MiB/s).
//!
//! Run: `cargo bench -p coordinator --bench channel -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use coordinator::Key;
use coordinator::channel::handshake::{self, Initiator, SessionKeys};
use coordinator::channel::transport::{Opener, Sealer};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use wireguard::crypto;
use x25519_dalek::StaticSecret;

const SERVER_PRIVATE: [u8; 32] = [0x11; 32];
const MACHINE_PRIVATE: [u8; 32] = [0x22; 32];
const MESSAGE_LENS: [usize; 2] = [1024, 64 * 1024];

fn handshake_once(
    rng: &mut ChaCha20Rng,
    server: &StaticSecret,
    server_public: &Key,
) -> SessionKeys {
    let (initiator, initiation) =
        Initiator::start(rng, &MACHINE_PRIVATE, server_public).expect("start");
    let (_, response, server_keys) = handshake::respond(rng, server, &initiation).expect("respond");
    let client_keys = initiator.finish(&response).expect("finish");
    assert_eq!(*client_keys.send, *server_keys.receive);
    client_keys
}

fn bench_handshake(c: &mut Criterion) {
    let server = StaticSecret::from(SERVER_PRIVATE);
    let server_public = Key(crypto::public_key(&server));
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    c.bench_function("handshake", |b| {
        b.iter(|| black_box(handshake_once(&mut rng, &server, &server_public)));
    });
}

fn bench_transport(c: &mut Criterion) {
    let server = StaticSecret::from(SERVER_PRIVATE);
    let server_public = Key(crypto::public_key(&server));
    let keys = handshake_once(&mut ChaCha20Rng::seed_from_u64(1), &server, &server_public);
    let mut group = c.benchmark_group("transport");
    for len in MESSAGE_LENS {
        let plaintext = vec![0x5A; len];
        group.throughput(Throughput::Bytes(len as u64));
        let mut sealer = Sealer::new(&keys.send);
        // One key for both ends: the bench plays sender and receiver of one direction.
        let mut opener = Opener::new(&keys.send);
        let mut frame = Vec::with_capacity(len + 64);
        group.bench_function(BenchmarkId::new("seal_open", len), |b| {
            b.iter(|| {
                sealer.seal(black_box(&plaintext), &mut frame).expect("seal");
                black_box(opener.open(&mut frame).expect("open").len())
            });
        });
        let key =
            || LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &keys.send[..]).expect("key"));
        let (seal_key, open_key) = (key(), key());
        let mut buffer = Vec::with_capacity(len + 16);
        group.bench_function(BenchmarkId::new("ring_raw", len), |b| {
            b.iter(|| {
                buffer.clear();
                buffer.extend_from_slice(black_box(&plaintext));
                // A fixed nonce is harmless here: nothing sealed leaves the process.
                let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
                seal_key
                    .seal_in_place_append_tag(nonce(), Aad::empty(), &mut buffer)
                    .expect("seal");
                black_box(
                    open_key.open_in_place(nonce(), Aad::empty(), &mut buffer).expect("open").len(),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handshake, bench_transport);
criterion_main!(benches);
