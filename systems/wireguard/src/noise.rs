//! The Noise_IKpsk2 handshake as WireGuard runs it, written against the generic Noise
//! symmetric state so the same code passes the Noise project's test vectors (any prologue, any
//! payload) and WireGuard's exact messages (prologue `IDENTIFIER`, a TAI64N payload in the
//! initiation and an empty one in the response).
//!
//! Message 1 (`-> e, es, s, ss`): `e_pub (32) | AEAD(s_pub) (48) | AEAD(payload) (n + 16)`.
//! Message 2 (`<- e, ee, se, psk`): `e_pub (32) | AEAD(payload) (n + 16)`.
//! Every AEAD here uses a fresh key with counter 0 and the running hash `h` as associated data.

use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError, KEY_LEN, Secret, TAG_LEN};

/// The Noise protocol name WireGuard hashes first (`CONSTRUCTION`).
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's prologue (`IDENTIFIER`).
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// Bytes of message 1 before its payload: ephemeral key and sealed static key.
pub const INITIATION_HEAD_LEN: usize = KEY_LEN + KEY_LEN + TAG_LEN;
/// Bytes of message 2 before its payload: the ephemeral key.
pub const RESPONSE_HEAD_LEN: usize = KEY_LEN;

/// The chaining key `ck` and handshake hash `h` of a handshake in progress.
#[derive(Clone)]
pub struct SymmetricState {
    chaining_key: Secret,
    hash: [u8; KEY_LEN],
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`, `MixHash(prologue)`, and the responder's static
    /// key as IK's pre-message (`MixHash(rs)`).
    pub fn new(protocol_name: &[u8], prologue: &[u8], responder_static: &[u8; KEY_LEN]) -> Self {
        // Noise pads names of at most 32 bytes instead of hashing them; ours is longer.
        assert!(protocol_name.len() > KEY_LEN);
        let chaining_key = crypto::hash(protocol_name, &[]);
        let hash = crypto::hash(&crypto::hash(&chaining_key, prologue), responder_static);
        SymmetricState { chaining_key: Zeroizing::new(chaining_key), hash }
    }

    /// WireGuard's initial state towards a responder with static key `responder_static`.
    pub fn wireguard(responder_static: &[u8; KEY_LEN]) -> Self {
        Self::new(CONSTRUCTION, IDENTIFIER, responder_static)
    }

    /// The handshake hash `h` so far.
    pub fn handshake_hash(&self) -> [u8; KEY_LEN] {
        self.hash
    }

    /// `MixHash(data)`: `h = HASH(h || data)`.
    pub fn mix_hash(&mut self, data: &[u8]) {
        self.hash = crypto::hash(&self.hash, data);
    }

    /// The `e` token in a PSK handshake: `MixHash(e)` and `MixKey(e)`.
    fn mix_ephemeral(&mut self, ephemeral: &[u8; KEY_LEN]) {
        self.mix_hash(ephemeral);
        self.chaining_key = crypto::kdf1(&self.chaining_key, ephemeral);
    }

    /// `MixKey(input)`: advances `ck` and returns the fresh cipher key (its nonce is 0).
    pub fn mix_key(&mut self, input: &[u8]) -> Secret {
        let (chaining_key, key) = crypto::kdf2(&self.chaining_key, input);
        self.chaining_key = chaining_key;
        key
    }

    fn mix_key_and_hash(&mut self, psk: &[u8; KEY_LEN]) -> Secret {
        let (chaining_key, temp, key) = crypto::kdf3(&self.chaining_key, psk);
        self.chaining_key = chaining_key;
        self.mix_hash(&*temp);
        key
    }

    /// `EncryptAndHash(plaintext)` under `key` (nonce 0) into `out` (`plaintext.len() +
    /// TAG_LEN` bytes), then `MixHash(out)`.
    pub fn encrypt_and_hash(&mut self, key: &[u8; KEY_LEN], plaintext: &[u8], out: &mut [u8]) {
        crypto::aead_seal(key, 0, plaintext, &self.hash, out);
        self.mix_hash(out);
    }

    /// `DecryptAndHash(sealed)` under `key` (nonce 0) into `out`, then `MixHash(sealed)`.
    pub fn decrypt_and_hash(
        &mut self,
        key: &[u8; KEY_LEN],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        crypto::aead_open(key, 0, sealed, &self.hash, out)?;
        self.mix_hash(sealed);
        Ok(())
    }

    /// `Split()`: the initiator's sending key and the responder's sending key.
    pub fn split(&self) -> (Secret, Secret) {
        crypto::kdf2(&self.chaining_key, &[])
    }
}

/// Initiator: writes message 1 into `out` (`INITIATION_HEAD_LEN + payload.len() + TAG_LEN`).
///
/// `static_shared` is `DH(s, rs)`, precomputed once per peer.
pub fn write_initiation(
    state: &mut SymmetricState,
    ephemeral: &StaticSecret,
    static_public: &[u8; KEY_LEN],
    static_shared: &[u8; KEY_LEN],
    responder_static: &[u8; KEY_LEN],
    payload: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    assert_eq!(out.len(), INITIATION_HEAD_LEN + payload.len() + TAG_LEN);
    let ephemeral_public = crypto::public_key(ephemeral);
    out[..KEY_LEN].copy_from_slice(&ephemeral_public);
    state.mix_ephemeral(&ephemeral_public);
    let key = state.mix_key(&*crypto::dh(ephemeral, responder_static)?);
    state.encrypt_and_hash(&key, static_public, &mut out[KEY_LEN..INITIATION_HEAD_LEN]);
    let key = state.mix_key(static_shared);
    state.encrypt_and_hash(&key, payload, &mut out[INITIATION_HEAD_LEN..]);
    Ok(())
}

/// Responder, first half of message 1: the initiator's ephemeral and static keys.
pub fn read_initiation_static(
    state: &mut SymmetricState,
    static_private: &StaticSecret,
    message: &[u8],
) -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), CryptoError> {
    if message.len() < INITIATION_HEAD_LEN + TAG_LEN {
        return Err(CryptoError);
    }
    let ephemeral: [u8; KEY_LEN] = message[..KEY_LEN].try_into().expect("length checked");
    state.mix_ephemeral(&ephemeral);
    let key = state.mix_key(&*crypto::dh(static_private, &ephemeral)?);
    let mut initiator_static = [0u8; KEY_LEN];
    let sealed = &message[KEY_LEN..INITIATION_HEAD_LEN];
    state.decrypt_and_hash(&key, sealed, &mut initiator_static)?;
    Ok((ephemeral, initiator_static))
}

/// Responder, second half of message 1: opens the payload with `static_shared = DH(s, rs)`.
pub fn read_initiation_payload(
    state: &mut SymmetricState,
    static_shared: &[u8; KEY_LEN],
    message: &[u8],
    payload_out: &mut [u8],
) -> Result<(), CryptoError> {
    let sealed = &message[INITIATION_HEAD_LEN..];
    if sealed.len() != payload_out.len() + TAG_LEN {
        return Err(CryptoError);
    }
    let key = state.mix_key(static_shared);
    state.decrypt_and_hash(&key, sealed, payload_out)
}

/// Responder: writes message 2 into `out` (`RESPONSE_HEAD_LEN + payload.len() + TAG_LEN`).
pub fn write_response(
    state: &mut SymmetricState,
    ephemeral: &StaticSecret,
    initiator_ephemeral: &[u8; KEY_LEN],
    initiator_static: &[u8; KEY_LEN],
    psk: &[u8; KEY_LEN],
    payload: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    assert_eq!(out.len(), RESPONSE_HEAD_LEN + payload.len() + TAG_LEN);
    let ephemeral_public = crypto::public_key(ephemeral);
    out[..KEY_LEN].copy_from_slice(&ephemeral_public);
    state.mix_ephemeral(&ephemeral_public);
    state.mix_key(&*crypto::dh(ephemeral, initiator_ephemeral)?);
    state.mix_key(&*crypto::dh(ephemeral, initiator_static)?);
    let key = state.mix_key_and_hash(psk);
    state.encrypt_and_hash(&key, payload, &mut out[RESPONSE_HEAD_LEN..]);
    Ok(())
}

/// Initiator: reads message 2 (`e, ee, se, psk` and the payload) into `payload_out`.
pub fn read_response(
    state: &mut SymmetricState,
    ephemeral: &StaticSecret,
    static_private: &StaticSecret,
    psk: &[u8; KEY_LEN],
    message: &[u8],
    payload_out: &mut [u8],
) -> Result<(), CryptoError> {
    if message.len() != RESPONSE_HEAD_LEN + payload_out.len() + TAG_LEN {
        return Err(CryptoError);
    }
    let responder_ephemeral: [u8; KEY_LEN] = message[..KEY_LEN].try_into().expect("checked");
    state.mix_ephemeral(&responder_ephemeral);
    state.mix_key(&*crypto::dh(ephemeral, &responder_ephemeral)?);
    state.mix_key(&*crypto::dh(static_private, &responder_ephemeral)?);
    let key = state.mix_key_and_hash(psk);
    state.decrypt_and_hash(&key, &message[RESPONSE_HEAD_LEN..], payload_out)
}
