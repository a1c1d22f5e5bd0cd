//! Tests of the control channel: the sans-IO handshake and transport against hostile bytes, the
//! frame reader's limits, a proptest over mutated transcripts, and the async drivers on `World`
//! (both ways, split halves, wrong keys, silence, a partition and a crash).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sim::world::{NodeId, SimConfig, SimEnv, World};
use sim::{Env, TaskHandle, TcpListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wireguard::crypto;
use x25519_dalek::StaticSecret;

use super::handshake::{self, INITIATION_LEN, Initiator, PROTOCOL_VERSION, RESPONSE_LEN};
use super::transport::{COUNTER_LEN, COUNTER_MAX, Opener, Sealer};
use super::*;
use crate::frame::{FRAME_LEN_MAX, decode, encode, read_frame};

const SERVER_PRIVATE: [u8; 32] = [0x11; 32];
const MACHINE_PRIVATE: [u8; 32] = [0x22; 32];
const OTHER_PRIVATE: [u8; 32] = [0x33; 32];
const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const ADDR: SocketAddr = SocketAddr::new(SERVER_IP, 443);
const SEEDS: u64 = 8;

/// The world seeds to run: `SEEDS` of them, or `SIM_SEEDS` when set (longer sweeps).
fn seeds() -> std::ops::Range<u64> {
    let count = std::env::var("SIM_SEEDS").ok().and_then(|text| text.parse().ok());
    0..count.unwrap_or(SEEDS)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Hello { name: String },
    Map { version: u64, peers: Vec<Key> },
    Bytes(Vec<u8>),
}

fn public(private: [u8; 32]) -> Key {
    Key(crypto::public_key(&StaticSecret::from(private)))
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn messages() -> Vec<Msg> {
    vec![
        Msg::Hello { name: "odin".to_owned() },
        Msg::Map { version: 7, peers: vec![public(OTHER_PRIVATE), public(SERVER_PRIVATE)] },
        Msg::Bytes(vec![0xAB; 300]),
    ]
}

/// Both sides' session keys from one in-memory handshake.
fn handshake_pair() -> (SessionKeys, SessionKeys, Key) {
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    let (initiator, initiation) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let (machine, response, server) =
        handshake::respond(&mut rng(2), &server_private, &initiation).expect("respond");
    let client = initiator.finish(&response).expect("finish");
    (client, server, machine)
}

#[test]
fn the_handshake_authenticates_the_machine_key_and_agrees_on_keys() {
    let (client, server, machine) = handshake_pair();
    assert_eq!(machine, public(MACHINE_PRIVATE));
    assert_eq!(*client.send, *server.receive);
    assert_eq!(*client.receive, *server.send);
    assert_ne!(*client.send, *client.receive);
    assert_eq!(client.handshake_hash, server.handshake_hash);
    // A second handshake with fresh ephemerals gives a different session.
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    let (_, initiation) =
        Initiator::start(&mut rng(3), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let (_, _, again) = handshake::respond(&mut rng(2), &server_private, &initiation).expect("ok");
    assert_ne!(again.handshake_hash, server.handshake_hash);
}

fn hex(text: &str) -> Vec<u8> {
    let digit = |c: u8| (c as char).to_digit(16).expect("hex digit") as u8;
    text.as_bytes().chunks(2).map(|pair| digit(pair[0]) << 4 | digit(pair[1])).collect()
}

fn key32(text: &str) -> [u8; 32] {
    hex(text).try_into().expect("32 bytes")
}

/// The Noise project's known answer for `Noise_IK_25519_ChaChaPoly_BLAKE2s` (the cacophony
/// vector file, github.com/haskell-cryptography/cacophony, vectors/cacophony.txt at commit
/// 36c1e5c3; the same file snow carries): prologue "John Galt", fixed keys, a payload in each
/// handshake message, then four transport messages. Our handshake with the same inputs must
/// give the same bytes, so it is Noise IK and not a look-alike.
#[test]
fn the_handshake_and_transport_match_the_noise_known_answer() {
    const PROLOGUE_KAT: &str = "4a6f686e2047616c74";
    const INIT_STATIC: &str = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1";
    const INIT_EPHEMERAL: &str = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a";
    const RESP_STATIC: &str = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893";
    const RESP_EPHEMERAL: &str = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b";
    const RESP_PUBLIC: &str = "31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62";
    const MESSAGES: [(&str, &str); 6] = [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79440b03ddc7aac5123d\
             06a1b23b71670e32e76c28239a7ca4ac8f784de7e44c1adbfc6e83fef7352a58d9d56157400c0a73\
             7b1d171ce368229c7b752ac25b8faf4eca690f6d896f543be02c996ab2b86b76",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843d9b5a8927f0ac965\
             5ef76833bc7e5561f42e691ac8404efd6fbd6308b6a27c",
        ),
        ("462e20412e20486179656b", "2c256ed08fcd08c2980f954ee4beaccb61c9581340f5dd2fd1cf3b"),
        ("4361726c204d656e676572", "d6033f70eee20945c7c9dba304e397ee3b284ff5e00fd9efb095d3"),
        (
            "4a65616e2d426170746973746520536179",
            "a9c068ca5d8babf72560652d8e851adbfac35c8a66e810d560863173e96adf4cfe",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "2a09d8f459e5927e40fdd2eddc99bdafb04e13a26f145cb5cfe9e6ba34c94331ebc17d5156",
        ),
    ];
    let prologue = hex(PROLOGUE_KAT);
    let server_private = StaticSecret::from(key32(RESP_STATIC));
    assert_eq!(crypto::public_key(&server_private), key32(RESP_PUBLIC));
    let (payload, expected) = (hex(MESSAGES[0].0), hex(MESSAGES[0].1));
    let initiator_keys =
        (StaticSecret::from(key32(INIT_EPHEMERAL)), StaticSecret::from(key32(INIT_STATIC)));
    let mut initiation = vec![0u8; expected.len()];
    let initiator = Initiator::start_with(
        initiator_keys,
        &key32(RESP_PUBLIC),
        &prologue,
        &payload,
        &mut initiation,
    )
    .expect("message 1");
    assert_eq!(initiation, expected, "message 1");
    let (payload, expected) = (hex(MESSAGES[1].0), hex(MESSAGES[1].1));
    let responder = handshake::Responder {
        ephemeral: StaticSecret::from(key32(RESP_EPHEMERAL)),
        static_private: &server_private,
    };
    let mut opened = vec![0u8; hex(MESSAGES[0].0).len()];
    let mut response = vec![0u8; expected.len()];
    let (machine, server) = responder
        .respond_with(&prologue, &initiation, &mut opened, &payload, &mut response)
        .expect("message 2");
    assert_eq!((opened, response.clone()), (hex(MESSAGES[0].0), expected), "message 2");
    assert_eq!(machine.0, crypto::public_key(&StaticSecret::from(key32(INIT_STATIC))));
    let mut opened = vec![0u8; payload.len()];
    let client = initiator.finish_with(&response, &mut opened).expect("read message 2");
    assert_eq!(opened, payload);
    check_transport_known_answer(&client, &server, &MESSAGES[2..]);
}

/// Transport messages alternate initiator, responder, ...; each direction counts from 0.
fn check_transport_known_answer(
    client: &SessionKeys,
    server: &SessionKeys,
    messages: &[(&str, &str)],
) {
    let mut sealers = [Sealer::new(&client.send), Sealer::new(&server.send)];
    let mut openers = [Opener::new(&server.receive), Opener::new(&client.receive)];
    for (index, (payload, expected)) in messages.iter().enumerate() {
        let (payload, expected) = (hex(payload), hex(expected));
        let mut frame = Vec::new();
        sealers[index % 2].seal(&payload, &mut frame).expect("seal");
        assert_eq!(frame[COUNTER_LEN..], expected, "transport message {index}");
        let counter = u64::try_from(index / 2).expect("small");
        assert_eq!(frame[..COUNTER_LEN], counter.to_le_bytes());
        assert_eq!(openers[index % 2].open(&mut frame).expect("open"), payload);
    }
}

#[track_caller]
fn check_bad_handshake(result: Result<impl Sized, ChannelError>, reason_part: &str) {
    match result {
        Err(ChannelError::BadHandshake { reason }) => {
            assert!(reason.contains(reason_part), "reason {reason:?} lacks {reason_part:?}");
        }
        Err(other) => panic!("expected a bad handshake ({reason_part}), got {other}"),
        Ok(_) => panic!("expected a bad handshake ({reason_part}), got success"),
    }
}

#[test]
fn a_wrong_server_key_fails_on_both_sides() {
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    // The agent aims at another key: the real server cannot open the initiation.
    let (_, initiation) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(OTHER_PRIVATE)).expect("start");
    check_bad_handshake(handshake::respond(&mut rng(2), &server_private, &initiation), "server");
    // An impostor holding another key cannot answer an initiation aimed at the real server...
    let (initiator, initiation) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let impostor = StaticSecret::from(OTHER_PRIVATE);
    check_bad_handshake(handshake::respond(&mut rng(2), &impostor, &initiation), "server");
    // ...and a response it made for its own handshake does not convince the agent.
    let (_, own) =
        Initiator::start(&mut rng(4), &OTHER_PRIVATE, &public(OTHER_PRIVATE)).expect("start");
    let (_, forged, _) = handshake::respond(&mut rng(2), &impostor, &own).expect("own handshake");
    check_bad_handshake(initiator.finish(&forged), "wrong server key");
}

#[test]
fn malformed_handshake_messages_are_typed_errors() {
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    let (initiator, initiation) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let respond = |message: &[u8]| handshake::respond(&mut rng(2), &server_private, message);
    check_bad_handshake(respond(&[]), "empty");
    check_bad_handshake(respond(&initiation[..INITIATION_LEN - 1]), "length");
    let mut newer = initiation;
    newer[0] = PROTOCOL_VERSION + 1;
    let Err(ChannelError::UnknownVersion { version: 2 }) = respond(&newer) else {
        panic!("a version-2 initiation must be refused by version")
    };
    // A low-order ephemeral key (all zeros) is refused, not used.
    let mut low_order = initiation;
    low_order[1..33].fill(0);
    check_bad_handshake(respond(&low_order), "low-order");
    let (_, response, _) = respond(&initiation).expect("genuine");
    let mut flipped = response;
    flipped[RESPONSE_LEN - 1] ^= 1;
    check_bad_handshake(initiator.finish(&flipped), "authenticate");
    let (initiator, _) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    check_bad_handshake(initiator.finish(&response[..RESPONSE_LEN - 1]), "length");
}

#[test]
fn transport_frames_open_once_in_order_and_never_altered() {
    let (client, server, _) = handshake_pair();
    let mut sealer = Sealer::new(&client.send);
    let mut opener = Opener::new(&server.receive);
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|index| {
            let mut out = Vec::new();
            sealer.seal(&[index; 40], &mut out).expect("seal");
            out
        })
        .collect();
    assert_eq!(sealer.counter(), 3);
    let check_counter = |opener: &mut Opener, frame: &[u8], expected: u64, received: u64| {
        let result = opener.open(&mut frame.to_vec()).map(<[u8]>::to_vec);
        let Err(ChannelError::BadCounter { expected: e, received: r }) = result else {
            panic!("expected a counter error, got {result:?}")
        };
        assert_eq!((e, r), (expected, received));
    };
    // Reordered: frame 1 before frame 0.
    check_counter(&mut opener, &frames[1], 0, 1);
    // Every single bit flip of frame 0 is refused; the opener still waits for frame 0.
    for bit in 0..frames[0].len() * 8 {
        let mut altered = frames[0].clone();
        altered[bit / 8] ^= 1 << (bit % 8);
        let result = opener.open(&mut altered).map(<[u8]>::to_vec);
        match result {
            Err(ChannelError::BadCounter { expected: 0, .. }) => assert!(bit < COUNTER_LEN * 8),
            Err(ChannelError::DecryptFailed { counter: Some(0) }) => assert!(bit >= 64),
            other => panic!("bit {bit}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(opener.open(&mut frames[0].clone()).expect("genuine"), &[0u8; 40]);
    // Replayed: frame 0 again.
    check_counter(&mut opener, &frames[0], 1, 0);
    assert_eq!(opener.open(&mut frames[1].clone()).expect("genuine"), &[1u8; 40]);
    // Truncated below counter and tag.
    let Err(ChannelError::DecryptFailed { counter: None }) = opener.open(&mut [0u8; 23]) else {
        panic!("a 23-byte frame cannot be a transport frame")
    };
    // The other direction's key does not open it.
    let mut wrong = Opener::new(&server.send);
    let Err(ChannelError::DecryptFailed { counter: Some(0) }) = wrong.open(&mut frames[0].clone())
    else {
        panic!("the other direction's key must not open a frame")
    };
    assert_eq!(opener.expected(), 2);
}

#[test]
fn counters_stop_before_exhaustion() {
    let (client, server, _) = handshake_pair();
    let mut sealer = Sealer::new(&client.send);
    let mut opener = Opener::new(&server.receive);
    sealer.skip_to(COUNTER_MAX);
    opener.skip_to(COUNTER_MAX);
    let mut frame = Vec::new();
    sealer.seal(b"last", &mut frame).expect("the last counter is usable");
    assert_eq!(opener.open(&mut frame).expect("last frame"), b"last");
    let Err(ChannelError::CounterExhausted) = sealer.seal(b"one more", &mut frame) else {
        panic!("no counter is left to seal with")
    };
    assert_eq!(sealer.counter(), COUNTER_MAX + 1);
    assert_eq!(opener.expected(), COUNTER_MAX + 1);
}

fn read_all(mut bytes: &[u8], len_max: usize) -> (Result<(), FrameError>, Vec<u8>) {
    let mut payload = Vec::new();
    let result = futures::executor::block_on(read_frame(&mut bytes, len_max, &mut payload));
    (result, payload)
}

#[test]
fn frames_longer_than_the_limit_are_refused_before_allocation() {
    let (result, payload) = read_all(&u32::MAX.to_be_bytes(), FRAME_LEN_MAX);
    let Err(FrameError::TooLong { len: 0xFFFF_FFFF, max: FRAME_LEN_MAX }) = result else {
        panic!("a 4 GiB frame must be refused, got {result:?}")
    };
    assert_eq!(payload.capacity(), 0, "nothing was allocated for it");
    let (result, payload) = read_all(&[0, 0, 1, 1, 9, 9], 256);
    assert!(matches!(result, Err(FrameError::TooLong { len: 257, max: 256 })), "{result:?}");
    assert_eq!(payload.capacity(), 0);
    // Within the limit but cut short: an i/o error saying so, not a short frame.
    let (result, _) = read_all(&[0, 0, 0, 5, 1, 2], 256);
    let Err(FrameError::Io(error)) = result else { panic!("expected EOF, got {result:?}") };
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    let (result, _) = read_all(&[0, 0], 256);
    assert!(matches!(result, Err(FrameError::Io(_))), "a torn header is an i/o error");
    let (result, _) = read_all(&[], 256);
    assert!(matches!(result, Err(FrameError::Closed)), "a clean end is `Closed`");
    let (result, payload) = read_all(&[0, 0, 0, 2, 7, 8, 0xEE], 256);
    assert!(result.is_ok());
    assert_eq!(payload, [7, 8]);
}

#[test]
fn the_codec_checks_its_version_and_the_whole_body() {
    for message in messages() {
        let bytes = encode(&message).expect("encode");
        assert_eq!(bytes[0], crate::frame::MESSAGE_VERSION);
        assert_eq!(decode::<Msg>(&bytes).expect("decode"), message);
        let mut newer = bytes.clone();
        newer[0] = 9;
        let error = decode::<Msg>(&newer).expect_err("unknown version");
        assert!(matches!(error, FrameError::UnknownVersion { version: 9 }), "{error}");
        assert!(error.to_string().contains("unknown message version 9"));
        let mut longer = bytes.clone();
        longer.push(0);
        let error = decode::<Msg>(&longer).expect_err("trailing byte");
        assert!(error.to_string().contains("1 trailing bytes"), "{error}");
        let error = decode::<Msg>(&bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(matches!(error, FrameError::Malformed { .. }), "{error}");
    }
    assert!(matches!(decode::<Msg>(&[]), Err(FrameError::Malformed { .. })));
    let bad_body = [crate::frame::MESSAGE_VERSION, 200];
    assert!(matches!(decode::<Msg>(&bad_body), Err(FrameError::Malformed { .. })));
}

#[test]
fn errors_say_what_went_wrong() {
    let cases: Vec<(ChannelError, &str)> = vec![
        (ChannelError::BadHandshake { reason: "x" }, "bad handshake: x"),
        (ChannelError::UnknownVersion { version: 3 }, "unknown version 3"),
        (ChannelError::FrameTooLong { len: 9, max: 8 }, "frame too long: 9 bytes"),
        (ChannelError::DecryptFailed { counter: Some(4) }, "decrypt failed: frame 4"),
        (ChannelError::Closed, "closed"),
        (io::Error::from(io::ErrorKind::TimedOut).into(), "i/o failed (TimedOut)"),
        (ChannelError::Timeout, "handshake timed out after 10 s"),
        (ChannelError::BadCounter { expected: 2, received: 1 }, "replayed, reordered"),
        (FrameError::Closed.into(), "channel closed by the peer"),
    ];
    for (error, text) in cases {
        assert!(error.to_string().contains(text), "{error:?} displays {error}, not {text:?}");
    }
    let io_error: ChannelError = io::Error::from(io::ErrorKind::ConnectionReset).into();
    assert!(std::error::Error::source(&io_error).is_some());
    assert!(std::error::Error::source(&ChannelError::Closed).is_none());
}

/// The recorded transcript of one session: the agent's byte stream (initiation and three
/// transport frames) and the coordinator's (response).
struct Transcript {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

fn framed(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(payload);
}

fn record() -> Transcript {
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    let (initiator, initiation) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let (_, response, _) =
        handshake::respond(&mut rng(2), &server_private, &initiation).expect("respond");
    let keys = initiator.finish(&response).expect("finish");
    let mut sealer = Sealer::new(&keys.send);
    let mut to_server = Vec::new();
    framed(&mut to_server, &initiation);
    for message in messages() {
        let mut frame = Vec::new();
        sealer.seal(&encode(&message).expect("encode"), &mut frame).expect("seal");
        framed(&mut to_server, &frame);
    }
    let mut to_client = Vec::new();
    framed(&mut to_client, &response);
    Transcript { to_server, to_client }
}

/// What the coordinator's side makes of `stream`: the messages accepted before the first error.
fn serve_stream(mut stream: &[u8]) -> Vec<Msg> {
    let server_private = StaticSecret::from(SERVER_PRIVATE);
    let mut accepted = Vec::new();
    futures::executor::block_on(async {
        let mut frame = Vec::new();
        if read_frame(&mut stream, HANDSHAKE_LEN_MAX, &mut frame).await.is_err() {
            return;
        }
        let Ok((machine, _, keys)) = handshake::respond(&mut rng(2), &server_private, &frame)
        else {
            return;
        };
        assert_eq!(machine, public(MACHINE_PRIVATE), "a forged machine key authenticated");
        let mut opener = Opener::new(&keys.receive);
        while read_frame(&mut stream, FRAME_LEN_MAX, &mut frame).await.is_ok() {
            let Ok(plaintext) = opener.open(&mut frame) else { return };
            accepted.push(decode::<Msg>(plaintext).expect("an authentic frame decodes"));
        }
    });
    accepted
}

/// Whether the agent's side accepts `stream` as the response.
fn client_accepts(mut stream: &[u8]) -> bool {
    let (initiator, _) =
        Initiator::start(&mut rng(1), &MACHINE_PRIVATE, &public(SERVER_PRIVATE)).expect("start");
    let mut frame = Vec::new();
    let read = futures::executor::block_on(read_frame(&mut stream, RESPONSE_LEN, &mut frame));
    read.is_ok() && initiator.finish(&frame).is_ok()
}

#[test]
fn the_recorded_transcript_replays_whole() {
    let transcript = record();
    assert_eq!(serve_stream(&transcript.to_server), messages());
    assert!(client_accepts(&transcript.to_client));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random flips, truncations and insertions never panic, and whatever is accepted is a
    /// prefix of what was sent: never a different message.
    #[test]
    fn mutated_transcripts_never_decrypt_to_another_message(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        insert in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        to_client in any::<bool>(),
    ) {
        let transcript = record();
        let mut stream =
            if to_client { transcript.to_client.clone() } else { transcript.to_server.clone() };
        for (index, xor) in &flips {
            let at = index.index(stream.len());
            stream[at] ^= xor;
        }
        if let Some((index, byte)) = insert {
            stream.insert(index.index(stream.len() + 1), byte);
        }
        if let Some(index) = cut {
            stream.truncate(index.index(stream.len()));
        }
        let mutated = !flips.is_empty() || insert.is_some() || cut.is_some();
        if to_client {
            let accepted = client_accepts(&stream);
            // Accepted exactly when the response frame arrived byte for byte.
            prop_assert_eq!(accepted, stream.starts_with(&transcript.to_client));
        } else {
            let accepted = serve_stream(&stream);
            let originals = messages();
            prop_assert!(accepted.len() <= originals.len());
            prop_assert_eq!(&accepted[..], &originals[..accepted.len()]);
            if !mutated {
                prop_assert_eq!(accepted.len(), originals.len());
            }
        }
    }
}

/// A world with a server node and a client node.
fn world(seed: u64) -> (World, NodeId, NodeId) {
    let world = World::new(SimConfig::new(seed));
    let server = world.add_node("coordinator", SERVER_IP);
    let client = world.add_node("agent", CLIENT_IP);
    (world, server, client)
}

/// A coordinator that accepts one channel and echoes every message until the channel fails;
/// returns the peer's machine key (or the handshake error) and the error that ended it.
fn spawn_echo(world: &World, server: NodeId) -> TaskHandle<Result<(Key, ChannelError), String>> {
    let env = world.env(server);
    world.spawn(server, async move {
        let listener = env.listen_tcp(ADDR).await.map_err(|error| error.to_string())?;
        let (stream, _) = listener.accept().await.map_err(|error| error.to_string())?;
        let (mut channel, machine) =
            Channel::accept(env, stream, SERVER_PRIVATE).await.map_err(|e| e.to_string())?;
        loop {
            let message = match channel.recv::<Msg>().await {
                Ok(message) => message,
                Err(error) => return Ok((machine, error)),
            };
            if let Err(error) = channel.send(&message).await {
                return Ok((machine, error));
            }
        }
    })
}

fn finished<T>(handle: TaskHandle<T>) -> T {
    handle.now_or_never().expect("task finished").expect("task not cancelled")
}

async fn connect(env: &SimEnv, machine_private: [u8; 32]) -> Result<Channel<SimEnv>, ChannelError> {
    let stream = env.connect_tcp(ADDR).await?;
    Channel::connect(env.clone(), stream, machine_private, public(SERVER_PRIVATE)).await
}

#[test]
fn messages_flow_both_ways_over_a_simulated_network() {
    for seed in seeds() {
        let (world, server, client) = world(seed);
        let echo = spawn_echo(&world, server);
        let env = world.env(client);
        let program = async move {
            let mut channel = connect(&env, MACHINE_PRIVATE).await.expect("handshake");
            for message in messages() {
                channel.send(&message).await.expect("send");
                assert_eq!(channel.recv::<Msg>().await.expect("echo"), message);
            }
            // An authentic message of another type is an error, and the stream stays in step.
            channel.send(&messages()[0]).await.expect("send");
            let error = channel.recv::<u8>().await.expect_err("not a u8");
            assert!(error.to_string().contains("trailing bytes"), "{error}");
            channel.send(&messages()[1]).await.expect("send");
            assert_eq!(channel.recv::<Msg>().await.expect("in step"), messages()[1]);
            // A message over the frame limit is refused before sealing; the channel goes on.
            let huge = Msg::Bytes(vec![0; MESSAGE_LEN_MAX]);
            let error = channel.send(&huge).await.expect_err("too long");
            assert!(matches!(error, ChannelError::FrameTooLong { .. }), "{error}");
            // Halves in separate tasks: one streams while the other reads.
            let (mut sender, mut receiver) = channel.split();
            let writer = env.spawn(async move {
                for message in messages() {
                    sender.send(&message).await.expect("send");
                }
                sender
            });
            for message in messages() {
                assert_eq!(receiver.recv::<Msg>().await.expect("echo"), message);
            }
            let sender = writer.await.expect("writer");
            assert_eq!((sender.sent(), receiver.received()), (8, 8));
        };
        world.block_on(client, Duration::from_secs(60), program).expect("client");
        world.crash(client);
        world.run_for(Duration::from_secs(5)).expect("server notices");
        let (machine, ended) = finished(echo).expect("handshake");
        assert_eq!(machine, public(MACHINE_PRIVATE), "seed {seed}");
        assert!(matches!(ended, ChannelError::Io(_) | ChannelError::Closed), "{ended}");
    }
}

#[test]
fn a_wrong_server_key_is_a_typed_error_on_both_ends() {
    for seed in seeds() {
        let (world, server, client) = world(seed);
        let echo = spawn_echo(&world, server);
        let env = world.env(client);
        let program = async move {
            let stream = env.connect_tcp(ADDR).await.expect("connect");
            Channel::connect(env, stream, MACHINE_PRIVATE, public(OTHER_PRIVATE)).await
        };
        let result = world.block_on(client, Duration::from_secs(60), program).expect("client");
        let error = result.expect_err("the server cannot answer for another key");
        assert!(matches!(error, ChannelError::Rejected), "seed {seed}: {error}");
        world.run_for(Duration::from_secs(1)).expect("server");
        let refused = finished(echo).expect_err("the server refuses");
        assert!(refused.contains("bad handshake"), "seed {seed}: {refused}");
    }
}

#[test]
fn silence_and_garbage_during_the_handshake_end_in_typed_errors() {
    let (world, server, client) = world(0);
    let env = world.env(server);
    let accepting = world.spawn(server, async move {
        let listener = env.listen_tcp(ADDR).await.expect("listen");
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.expect("accept");
            let result = Channel::accept(env.clone(), stream, SERVER_PRIVATE).await;
            outcomes.push(result.map(|(_, machine)| machine).expect_err("no handshake"));
        }
        // The third connection gets the TCP accept and then silence.
        let (_silent, _) = listener.accept().await.expect("accept");
        env.sleep(Duration::from_secs(60)).await;
        outcomes
    });
    let env = world.env(client);
    let program = async move {
        let silent = env.connect_tcp(ADDR).await.expect("connect");
        env.sleep(HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
        let mut garbage = env.connect_tcp(ADDR).await.expect("connect");
        garbage.write_all(&[0xFF; 8]).await.expect("write");
        // The server hangs up (a close or a reset, as the stack likes).
        let mut byte = [0u8; 1];
        assert!(!matches!(garbage.read(&mut byte).await, Ok(1..)), "no reply to garbage");
        drop(silent);
        connect(&env, MACHINE_PRIVATE).await.expect_err("no answer")
    };
    let error = world.block_on(client, Duration::from_secs(60), program).expect("client");
    assert!(matches!(error, ChannelError::Timeout), "{error}");
    run_until_finished(&world, &accepting);
    let outcomes = finished(accepting);
    assert!(matches!(outcomes[0], ChannelError::Timeout), "{}", outcomes[0]);
    let ChannelError::FrameTooLong { len: 0xFFFF_FFFF, max: HANDSHAKE_LEN_MAX } = outcomes[1]
    else {
        panic!("expected a refused length, got {}", outcomes[1])
    };
}

/// Runs `world` until `handle` finishes (at most ten simulated minutes).
fn run_until_finished<T>(world: &World, handle: &TaskHandle<T>) {
    for _ in 0..600 {
        if handle.is_finished() {
            return;
        }
        world.run_for(Duration::from_secs(1)).expect("world runs");
    }
    panic!("seed {:#x}: task did not finish", world.seed());
}

#[test]
fn a_partition_or_a_crash_reaches_the_agent_as_a_typed_error() {
    for seed in seeds() {
        for crash in [false, true] {
            let (world, server, client) = world(seed);
            let echo = spawn_echo(&world, server);
            let env = world.env(client);
            let progress = Arc::new(AtomicU64::new(0));
            let progress_agent = Arc::clone(&progress);
            let agent = world.spawn(client, async move {
                let mut channel = connect(&env, MACHINE_PRIVATE).await.expect("handshake");
                let mut echoed = 0u64;
                let error = loop {
                    let message = Msg::Map { version: echoed, peers: Vec::new() };
                    if let Err(error) = channel.send(&message).await {
                        break error;
                    }
                    match env.timeout(Duration::from_secs(30), channel.recv::<Msg>()).await {
                        Ok(Ok(reply)) => assert_eq!(reply, message),
                        Ok(Err(error)) => break error,
                        Err(_) => panic!("the stream neither delivered nor failed in 30 s"),
                    }
                    echoed += 1;
                    progress_agent.store(echoed, Ordering::Relaxed);
                };
                let after = channel.recv::<Msg>().await.expect_err("still failed");
                (echoed, error, after)
            });
            // Fault only once traffic flows (a slow handshake may take seconds).
            while progress.load(Ordering::Relaxed) < 3 {
                assert!(world.now().as_nanos() < 60_000_000_000, "seed {seed}: no traffic");
                world.run_for(Duration::from_millis(100)).expect("traffic flows");
            }
            if crash {
                world.crash(server);
            } else {
                world.partition(server, client);
            }
            run_until_finished(&world, &agent);
            let (echoed, error, after) = finished(agent);
            assert!(echoed > 0, "seed {seed}: nothing was echoed before the fault");
            let expected_kind =
                if crash { io::ErrorKind::ConnectionReset } else { io::ErrorKind::TimedOut };
            match &error {
                ChannelError::Io(io_error) => assert_eq!(io_error.kind(), expected_kind, "{seed}"),
                ChannelError::Closed => assert!(crash, "seed {seed}: a partition is not a close"),
                other => panic!("seed {seed}: expected an i/o error, got {other}"),
            }
            let broken = matches!(after, ChannelError::Broken | ChannelError::Closed);
            assert!(broken || matches!(after, ChannelError::Io(_)), "seed {seed}: {after}");
            drop(echo);
        }
    }
}

#[test]
fn the_world_seeds_here_exercise_every_buggify_site() {
    let config = SimConfig::new(0).buggify;
    for site in ["coordinator.channel.slow_handshake", "coordinator.channel.short_write"] {
        let active = (0..SEEDS).filter(|&seed| config.site_fire_probability(seed, site).is_some());
        assert!(active.count() > 0, "no seed of 0..{SEEDS} turns on {site}");
    }
}
