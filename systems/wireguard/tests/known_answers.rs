//! Known-answer tests: the Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vector from the cacophony
//! suite (copied from ../shared/vectors, provenance in its `about` field) run through our
//! `noise` module and our ring transport keys, byte for byte: both handshake messages, the
//! handshake hash, and four transport messages in both directions.

use serde_json::Value;
use wireguard::crypto::{self, Secret, TAG_LEN};
use wireguard::messages::DATA_HEADER_LEN;
use wireguard::noise::{self, INITIATION_HEAD_LEN, RESPONSE_HEAD_LEN, SymmetricState};
use wireguard::transport::Keypair;
use x25519_dalek::StaticSecret;

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2));
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn key(vector: &Value, field: &str) -> [u8; 32] {
    hex(vector[field].as_str().expect("string field")).try_into().expect("32 bytes")
}

fn vector() -> Value {
    let text = include_str!("data/noise-ikpsk2.json");
    let file: Value = serde_json::from_str(text).expect("valid JSON");
    file["vectors"][0].clone()
}

/// The vector's keys.
struct Keys {
    prologue: Vec<u8>,
    psk: [u8; 32],
    initiator_static: StaticSecret,
    initiator_ephemeral: StaticSecret,
    responder_static: StaticSecret,
    responder_ephemeral: StaticSecret,
    responder_public: [u8; 32],
}

fn keys(vector: &Value) -> Keys {
    let psk = hex(vector["init_psks"][0].as_str().expect("psk"));
    let responder_static = StaticSecret::from(key(vector, "resp_static"));
    let responder_public = crypto::public_key(&responder_static);
    assert_eq!(responder_public, key(vector, "init_remote_static"));
    Keys {
        prologue: hex(vector["init_prologue"].as_str().expect("prologue")),
        psk: psk.try_into().expect("32 bytes"),
        initiator_static: StaticSecret::from(key(vector, "init_static")),
        initiator_ephemeral: StaticSecret::from(key(vector, "init_ephemeral")),
        responder_static,
        responder_ephemeral: StaticSecret::from(key(vector, "resp_ephemeral")),
        responder_public,
    }
}

/// Message 1, initiator to responder: returns both states and the initiator's two keys.
fn check_message_1(
    keys: &Keys,
    messages: &[Value],
) -> (SymmetricState, SymmetricState, [u8; 32], [u8; 32]) {
    let field = |index: usize, name: &str| hex(messages[index][name].as_str().expect("hex"));
    let start = SymmetricState::new(noise::CONSTRUCTION, &keys.prologue, &keys.responder_public);
    let mut initiator = start.clone();
    let payload = field(0, "payload");
    let mut message = vec![0u8; INITIATION_HEAD_LEN + payload.len() + TAG_LEN];
    let static_shared = crypto::dh(&keys.initiator_static, &keys.responder_public).expect("valid");
    noise::write_initiation(
        &mut initiator,
        &keys.initiator_ephemeral,
        &crypto::public_key(&keys.initiator_static),
        &static_shared,
        &keys.responder_public,
        &payload,
        &mut message,
    )
    .expect("write");
    assert_eq!(message, field(0, "ciphertext"));
    let mut responder = start;
    let (remote_ephemeral, remote_static) =
        noise::read_initiation_static(&mut responder, &keys.responder_static, &message)
            .expect("read");
    assert_eq!(remote_static, crypto::public_key(&keys.initiator_static));
    let mut opened = vec![0u8; payload.len()];
    noise::read_initiation_payload(&mut responder, &static_shared, &message, &mut opened)
        .expect("payload");
    assert_eq!(opened, payload);
    (initiator, responder, remote_ephemeral, remote_static)
}

#[test]
fn noise_ikpsk2_vector_handshake_and_transport() {
    let vector = vector();
    assert_eq!(vector["protocol_name"], "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s");
    let keys = keys(&vector);
    let messages = vector["messages"].as_array().expect("messages");
    let field = |index: usize, name: &str| hex(messages[index][name].as_str().expect("hex"));
    let (mut initiator, mut responder, remote_ephemeral, remote_static) =
        check_message_1(&keys, messages);
    let Keys { psk, initiator_static, initiator_ephemeral, responder_ephemeral, .. } = keys;

    // Message 2: responder -> initiator.
    let payload = field(1, "payload");
    let mut message = vec![0u8; RESPONSE_HEAD_LEN + payload.len() + TAG_LEN];
    noise::write_response(
        &mut responder,
        &responder_ephemeral,
        &remote_ephemeral,
        &remote_static,
        &psk,
        &payload,
        &mut message,
    )
    .expect("write");
    assert_eq!(message, field(1, "ciphertext"));
    let mut opened = vec![0u8; payload.len()];
    noise::read_response(
        &mut initiator,
        &initiator_ephemeral,
        &initiator_static,
        &psk,
        &message,
        &mut opened,
    )
    .expect("read");
    assert_eq!(opened, payload);
    let handshake_hash = key(&vector, "handshake_hash");
    assert_eq!(initiator.handshake_hash(), handshake_hash);
    assert_eq!(responder.handshake_hash(), handshake_hash);

    check_transport(&initiator.split(), messages);
}

/// Transport messages alternate directions with counters 0, 0, 1, 1.
fn check_transport(keys: &(Secret, Secret), messages: &[Value]) {
    let field = |index: usize, name: &str| hex(messages[index][name].as_str().expect("hex"));
    let (initiator_send, responder_send) = keys;
    let now = sim::Instant::ZERO;
    let mut initiator_keys = Keypair::new(initiator_send, responder_send, 1, 2, now, true);
    let mut responder_keys = Keypair::new(responder_send, initiator_send, 2, 1, now, false);
    for index in 2..messages.len() {
        let (sender, receiver) = if index % 2 == 0 {
            (&mut initiator_keys, &mut responder_keys)
        } else {
            (&mut responder_keys, &mut initiator_keys)
        };
        let payload = field(index, "payload");
        let counter = sender.send_counter();
        let mut out = vec![0u8; DATA_HEADER_LEN + payload.len() + TAG_LEN];
        let len = sender.seal(&payload, 0, &mut out).expect("fits");
        assert_eq!(out[DATA_HEADER_LEN..len], field(index, "ciphertext")[..], "message {index}");
        let mut opened = vec![0u8; len];
        let opened_len =
            receiver.open(counter, &out[DATA_HEADER_LEN..len], &mut opened).expect("open");
        assert_eq!(opened[..opened_len], payload[..]);
    }
}

#[test]
fn wireguard_initial_chaining_key_and_hash() {
    // The constants every WireGuard implementation starts from: C = HASH(CONSTRUCTION) and
    // H = HASH(C || IDENTIFIER), then H = HASH(H || S_pub_r).
    let chaining_key = crypto::hash(noise::CONSTRUCTION, &[]);
    let hash = crypto::hash(&chaining_key, noise::IDENTIFIER);
    let responder = [9u8; 32];
    let state = SymmetricState::wireguard(&responder);
    assert_eq!(state.handshake_hash(), crypto::hash(&hash, &responder));
    assert_eq!(noise::CONSTRUCTION, b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s");
    assert_eq!(noise::IDENTIFIER, b"WireGuard v1 zx2c4 Jason@zx2c4.com");
    assert_eq!(wireguard::cookie::LABEL_MAC1, b"mac1----");
    assert_eq!(wireguard::cookie::LABEL_COOKIE, b"cookie--");
}
