//! The sans-IO handshake of the control channel: `Noise_IK_25519_ChaChaPoly_BLAKE2s`.
//!
//! Why IK: the agent (initiator) knows the coordinator's static key in advance, and its own
//! static key is the node's machine key, sent encrypted in message 1. After message 1 the
//! coordinator knows, authenticated, which machine key it talks to, which is what lets it refuse
//! a node acting for another; after message 2 the agent knows it talks to the real coordinator.
//! Tailscale's control protocol runs the same pattern over its TCP connection.
//!
//! Messages (`docs/channel.md`), every AEAD with a fresh key at nonce 0 and `h` as associated
//! data, both payloads empty:
//! - 1 (`-> e, es, s, ss`): `version (1) | e_pub (32) | AEAD(s_pub) (48) | AEAD("") (16)`.
//! - 2 (`<- e, ee, se`): `e_pub (32) | AEAD("") (16)`.
//!
//! The prologue names the protocol version, so a peer of another version, or one that altered
//! the clear version byte, fails the handshake instead of misreading the transport.

use rand_core::{CryptoRng, RngCore};
use wireguard::crypto::{self, CryptoError, KEY_LEN, Secret, TAG_LEN};
use wireguard::noise::SymmetricState;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::ChannelError;
use crate::types::Key;

/// The Noise protocol name, hashed first.
pub const PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The version of the control protocol: the clear first byte of message 1.
pub const PROTOCOL_VERSION: u8 = 1;
/// The Noise prologue: binds the protocol and its version into the handshake hash.
pub const PROLOGUE: &[u8] = b"ghostmesh control protocol v1";
/// Bytes of message 1.
pub const INITIATION_LEN: usize = 1 + KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN;
/// Bytes of message 2.
pub const RESPONSE_LEN: usize = KEY_LEN + TAG_LEN;
/// The longest handshake frame read before looking at it: room for a future version's message
/// 1, so that its version byte, not its length, is what we report.
pub const HANDSHAKE_LEN_MAX: usize = 256;

/// The transport keys a finished handshake gives one side.
pub struct SessionKeys {
    /// The key this side seals with.
    pub send: Secret,
    /// The key this side opens with.
    pub receive: Secret,
    /// The handshake hash `h`: a unique name of this session (channel binding).
    pub handshake_hash: [u8; KEY_LEN],
}

/// The initiator between sending message 1 and reading message 2.
pub struct Initiator {
    state: SymmetricState,
    ephemeral: StaticSecret,
    static_private: StaticSecret,
}

fn bad(reason: &'static str) -> impl FnOnce(CryptoError) -> ChannelError {
    move |CryptoError| ChannelError::BadHandshake { reason }
}

fn ephemeral_from<R: RngCore + CryptoRng>(rng: &mut R) -> StaticSecret {
    let mut seed = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut *seed);
    StaticSecret::from(*seed)
}

impl Initiator {
    /// Starts a handshake as `machine_private` towards the server `server_public`; returns the
    /// state to finish it with and message 1.
    pub fn start<R: RngCore + CryptoRng>(
        rng: &mut R,
        machine_private: &[u8; KEY_LEN],
        server_public: &Key,
    ) -> Result<(Initiator, [u8; INITIATION_LEN]), ChannelError> {
        let mut message = [0u8; INITIATION_LEN];
        message[0] = PROTOCOL_VERSION;
        let ephemeral = ephemeral_from(rng);
        let keys = (ephemeral, StaticSecret::from(*machine_private));
        let initiator = Self::start_with(keys, &server_public.0, PROLOGUE, &[], &mut message[1..])?;
        assert_eq!(message[0], PROTOCOL_VERSION);
        Ok((initiator, message))
    }

    /// `-> e, es, s, ss` and `payload` with any prologue into `out` (`96 + payload.len()`
    /// bytes): the Noise message itself, without our version byte.
    pub(crate) fn start_with(
        (ephemeral, static_private): (StaticSecret, StaticSecret),
        server_public: &[u8; KEY_LEN],
        prologue: &[u8],
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Initiator, ChannelError> {
        assert_eq!(out.len(), KEY_LEN + KEY_LEN + TAG_LEN + payload.len() + TAG_LEN);
        let mut state = SymmetricState::new(PROTOCOL_NAME, prologue, server_public);
        let ephemeral_public = crypto::public_key(&ephemeral);
        let (head, rest) = out.split_at_mut(KEY_LEN);
        head.copy_from_slice(&ephemeral_public);
        state.mix_hash(&ephemeral_public);
        let es = crypto::dh(&ephemeral, server_public).map_err(bad("low-order server key"))?;
        let key = state.mix_key(&*es);
        let static_public = crypto::public_key(&static_private);
        let (sealed_static, sealed_payload) = rest.split_at_mut(KEY_LEN + TAG_LEN);
        state.encrypt_and_hash(&key, &static_public, sealed_static);
        let ss = crypto::dh(&static_private, server_public).map_err(bad("low-order server key"))?;
        let key = state.mix_key(&*ss);
        state.encrypt_and_hash(&key, payload, sealed_payload);
        Ok(Initiator { state, ephemeral, static_private })
    }

    /// Reads message 2: proves the server holds its static key; gives the session keys.
    pub fn finish(self, message: &[u8]) -> Result<SessionKeys, ChannelError> {
        if message.len() != RESPONSE_LEN {
            return Err(ChannelError::BadHandshake { reason: "response of the wrong length" });
        }
        self.finish_with(message, &mut [])
    }

    /// `<- e, ee, se` and a payload of `payload_out.len()` bytes, opened into `payload_out`.
    pub(crate) fn finish_with(
        mut self,
        message: &[u8],
        payload_out: &mut [u8],
    ) -> Result<SessionKeys, ChannelError> {
        if message.len() != KEY_LEN + payload_out.len() + TAG_LEN {
            return Err(ChannelError::BadHandshake { reason: "response of the wrong length" });
        }
        let (head, sealed) = message.split_at(KEY_LEN);
        let responder_ephemeral: [u8; KEY_LEN] = head.try_into().expect("split at KEY_LEN");
        self.state.mix_hash(&responder_ephemeral);
        let ee = crypto::dh(&self.ephemeral, &responder_ephemeral)
            .map_err(bad("low-order ephemeral key in the response"))?;
        self.state.mix_key(&*ee);
        let se = crypto::dh(&self.static_private, &responder_ephemeral)
            .map_err(bad("low-order ephemeral key in the response"))?;
        let key = self.state.mix_key(&*se);
        self.state
            .decrypt_and_hash(&key, sealed, payload_out)
            .map_err(bad("response did not authenticate (wrong server key?)"))?;
        let (send, receive) = self.state.split();
        Ok(SessionKeys { send, receive, handshake_hash: self.state.handshake_hash() })
    }
}

/// The responder's whole side: reads message 1 with `server_private`, writes message 2.
/// Returns the initiator's authenticated machine key, message 2 and the session keys.
pub fn respond<R: RngCore + CryptoRng>(
    rng: &mut R,
    server_private: &StaticSecret,
    message: &[u8],
) -> Result<(Key, [u8; RESPONSE_LEN], SessionKeys), ChannelError> {
    let Some((&version, initiation)) = message.split_first() else {
        return Err(ChannelError::BadHandshake { reason: "empty initiation" });
    };
    if version != PROTOCOL_VERSION {
        return Err(ChannelError::UnknownVersion { version });
    }
    if message.len() != INITIATION_LEN {
        return Err(ChannelError::BadHandshake { reason: "initiation of the wrong length" });
    }
    let mut response = [0u8; RESPONSE_LEN];
    let responder = Responder { ephemeral: ephemeral_from(rng), static_private: server_private };
    let (machine, keys) =
        responder.respond_with(PROLOGUE, initiation, &mut [], &[], &mut response)?;
    Ok((machine, response, keys))
}

/// The responder's keys for one handshake.
pub(crate) struct Responder<'a> {
    /// Its fresh ephemeral key.
    pub(crate) ephemeral: StaticSecret,
    /// The coordinator's static key.
    pub(crate) static_private: &'a StaticSecret,
}

impl Responder<'_> {
    /// Reads `-> e, es, s, ss` with any prologue, opening a payload of `payload_out.len()`
    /// bytes, then writes `<- e, ee, se` and `payload` into `response`.
    pub(crate) fn respond_with(
        self,
        prologue: &[u8],
        initiation: &[u8],
        payload_out: &mut [u8],
        payload: &[u8],
        response: &mut [u8],
    ) -> Result<(Key, SessionKeys), ChannelError> {
        if initiation.len() != KEY_LEN + KEY_LEN + TAG_LEN + payload_out.len() + TAG_LEN {
            return Err(ChannelError::BadHandshake { reason: "initiation of the wrong length" });
        }
        assert_eq!(response.len(), KEY_LEN + payload.len() + TAG_LEN);
        let server_private = self.static_private;
        let mut state =
            SymmetricState::new(PROTOCOL_NAME, prologue, &crypto::public_key(server_private));
        let (head, rest) = initiation.split_at(KEY_LEN);
        let (sealed_static, sealed_payload) = rest.split_at(KEY_LEN + TAG_LEN);
        let initiator_ephemeral: [u8; KEY_LEN] = head.try_into().expect("split at KEY_LEN");
        state.mix_hash(&initiator_ephemeral);
        let es = crypto::dh(server_private, &initiator_ephemeral)
            .map_err(bad("low-order ephemeral key in the initiation"))?;
        let key = state.mix_key(&*es);
        let mut machine = [0u8; KEY_LEN];
        state
            .decrypt_and_hash(&key, sealed_static, &mut machine)
            .map_err(bad("initiation did not authenticate (sent to another server key?)"))?;
        let ss = crypto::dh(server_private, &machine).map_err(bad("low-order machine key"))?;
        let key = state.mix_key(&*ss);
        state
            .decrypt_and_hash(&key, sealed_payload, payload_out)
            .map_err(bad("initiation payload did not authenticate (wrong machine key?)"))?;
        let ephemeral_public = crypto::public_key(&self.ephemeral);
        let (head, sealed) = response.split_at_mut(KEY_LEN);
        head.copy_from_slice(&ephemeral_public);
        state.mix_hash(&ephemeral_public);
        let ee = crypto::dh(&self.ephemeral, &initiator_ephemeral)
            .map_err(bad("low-order ephemeral"))?;
        state.mix_key(&*ee);
        let se = crypto::dh(&self.ephemeral, &machine).map_err(bad("low-order machine key"))?;
        let key = state.mix_key(&*se);
        state.encrypt_and_hash(&key, payload, sealed);
        let (receive, send) = state.split();
        Ok((Key(machine), SessionKeys { send, receive, handshake_hash: state.handshake_hash() }))
    }
}
