//! The primitives of WireGuard's handshake: BLAKE2s hashing and keyed MACs, HMAC-BLAKE2s and the
//! HKDF chain built on it, X25519, and the two handshake AEADs (ChaCha20-Poly1305 with a zero
//! nonce, XChaCha20-Poly1305 for cookies).
//!
//! Why a module of its own: every byte the handshake hashes or derives goes through these few
//! functions, so the known-answer tests pin them once. The transport AEAD lives in `transport`
//! (ring, for speed); everything here is RustCrypto, the same versions boringtun 0.7.1 uses.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hmac::SimpleHmac;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// Bytes of a BLAKE2s-256 hash, a chaining key, a symmetric key or an X25519 key.
pub const KEY_LEN: usize = 32;
/// Bytes of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a keyed BLAKE2s MAC as WireGuard uses it (mac1, mac2, cookies).
pub const MAC_LEN: usize = 16;
/// Bytes of an XChaCha20 nonce.
pub const XNONCE_LEN: usize = 24;

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; KEY_LEN]>;

/// The failure of an AEAD open or of a Diffie-Hellman that gave the all-zero point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoError;

/// `HASH(a || b)`: BLAKE2s-256 of the concatenation.
pub fn hash(a: &[u8], b: &[u8]) -> [u8; KEY_LEN] {
    let mut hasher = Blake2s256::new();
    Digest::update(&mut hasher, a);
    Digest::update(&mut hasher, b);
    hasher.finalize().into()
}

/// `MAC(key, input)`: keyed BLAKE2s with a 16-byte output (mac1, mac2, cookie values).
pub fn mac(key: &[u8], input: &[u8]) -> [u8; MAC_LEN] {
    assert!(!key.is_empty() && key.len() <= KEY_LEN);
    let mut mac =
        <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("key length checked above");
    Mac::update(&mut mac, input);
    mac.finalize_fixed().into()
}

/// `HMAC(key, a || b)` over BLAKE2s-256.
fn hmac(key: &[u8], a: &[u8], b: &[u8]) -> Secret {
    let mut mac = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    Update::update(&mut mac, a);
    Update::update(&mut mac, b);
    Zeroizing::new(mac.finalize_fixed().into())
}

/// `KDF1(key, input)`: the first HKDF output.
pub fn kdf1(key: &[u8; KEY_LEN], input: &[u8]) -> Secret {
    let tau0 = hmac(key, input, &[]);
    hmac(&*tau0, &[1], &[])
}

/// `KDF2(key, input)`: the first two HKDF outputs.
pub fn kdf2(key: &[u8; KEY_LEN], input: &[u8]) -> (Secret, Secret) {
    let tau0 = hmac(key, input, &[]);
    let tau1 = hmac(&*tau0, &[1], &[]);
    let tau2 = hmac(&*tau0, &*tau1, &[2]);
    (tau1, tau2)
}

/// `KDF3(key, input)`: the first three HKDF outputs.
pub fn kdf3(key: &[u8; KEY_LEN], input: &[u8]) -> (Secret, Secret, Secret) {
    let tau0 = hmac(key, input, &[]);
    let tau1 = hmac(&*tau0, &[1], &[]);
    let tau2 = hmac(&*tau0, &*tau1, &[2]);
    let tau3 = hmac(&*tau0, &*tau2, &[3]);
    (tau1, tau2, tau3)
}

/// `DH(private, public)`: X25519; the all-zero result (a low-order public key) is an error.
pub fn dh(private: &StaticSecret, public: &[u8; KEY_LEN]) -> Result<Secret, CryptoError> {
    let shared = private.diffie_hellman(&PublicKey::from(*public));
    let bytes = Zeroizing::new(*shared.as_bytes());
    if bool::from(bytes.ct_eq(&[0u8; KEY_LEN])) {
        return Err(CryptoError);
    }
    Ok(bytes)
}

/// The public key of `private`.
pub fn public_key(private: &StaticSecret) -> [u8; KEY_LEN] {
    PublicKey::from(private).to_bytes()
}

/// `AEAD(key, counter, plaintext, ad)` into `out` (`plaintext.len() + TAG_LEN` bytes).
pub fn aead_seal(key: &[u8; KEY_LEN], counter: u64, plaintext: &[u8], ad: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), plaintext.len() + TAG_LEN);
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    body.copy_from_slice(plaintext);
    let cipher = ChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(&nonce12(counter).into(), ad, body)
        .expect("handshake messages are far below the AEAD length limit");
    tag_out.copy_from_slice(&tag);
}

/// Opens `AEAD(key, counter, ..., ad)` from `sealed` into `out` (`sealed.len() - TAG_LEN`).
pub fn aead_open(
    key: &[u8; KEY_LEN],
    counter: u64,
    sealed: &[u8],
    ad: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else { return Err(CryptoError) };
    assert_eq!(out.len(), body_len);
    out.copy_from_slice(&sealed[..body_len]);
    let cipher = ChaCha20Poly1305::new(key.into());
    let tag = chacha20poly1305::Tag::from_slice(&sealed[body_len..]);
    cipher.decrypt_in_place_detached(&nonce12(counter).into(), ad, out, tag).map_err(|_| {
        out.fill(0);
        CryptoError
    })
}

/// `XAEAD(key, nonce, plaintext, ad)`: seals a 16-byte cookie into 32 bytes.
pub fn xaead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    plaintext: &[u8; MAC_LEN],
    ad: &[u8],
) -> [u8; MAC_LEN + TAG_LEN] {
    let mut body = *plaintext;
    let cipher = XChaCha20Poly1305::new(key.into());
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), ad, &mut body)
        .expect("a cookie is far below the AEAD length limit");
    let mut out = [0u8; MAC_LEN + TAG_LEN];
    out[..MAC_LEN].copy_from_slice(&body);
    out[MAC_LEN..].copy_from_slice(&tag);
    out
}

/// Opens a 32-byte sealed cookie.
pub fn xaead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    sealed: &[u8; MAC_LEN + TAG_LEN],
    ad: &[u8],
) -> Result<[u8; MAC_LEN], CryptoError> {
    let mut body: [u8; MAC_LEN] = sealed[..MAC_LEN].try_into().expect("fixed split");
    let tag = chacha20poly1305::Tag::from_slice(&sealed[MAC_LEN..]);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher.decrypt_in_place_detached(nonce.into(), ad, &mut body, tag).map_err(|_| CryptoError)?;
    Ok(body)
}

/// Constant-time equality of two byte strings of the same length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The 96-bit nonce of WireGuard's ChaCha20-Poly1305: 32 zero bits, then the counter LE.
pub fn nonce12(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_outputs_chain_as_the_paper_defines() {
        let key = [7u8; KEY_LEN];
        let (a1, a2, a3) = kdf3(&key, b"input");
        let (b1, b2) = kdf2(&key, b"input");
        assert_eq!(*a1, *kdf1(&key, b"input"));
        assert_eq!((*a1, *a2), (*b1, *b2));
        assert_ne!(*a2, *a3);
    }

    #[test]
    fn aead_round_trips_and_rejects_tampering() {
        let key = [3u8; KEY_LEN];
        let mut sealed = [0u8; 5 + TAG_LEN];
        aead_seal(&key, 0, b"hello", b"ad", &mut sealed);
        let mut opened = [0u8; 5];
        aead_open(&key, 0, &sealed, b"ad", &mut opened).expect("authentic");
        assert_eq!(&opened, b"hello");
        assert!(aead_open(&key, 0, &sealed, b"xx", &mut opened).is_err());
        assert!(aead_open(&key, 0, &sealed[..3], b"ad", &mut []).is_err());
        let cookie = [9u8; MAC_LEN];
        let nonce = [1u8; XNONCE_LEN];
        let boxed = xaead_seal(&key, &nonce, &cookie, b"mac1");
        assert_eq!(xaead_open(&key, &nonce, &boxed, b"mac1"), Ok(cookie));
        assert!(xaead_open(&key, &nonce, &boxed, b"mac2").is_err());
    }

    #[test]
    fn dh_rejects_the_zero_point() {
        let private = StaticSecret::from([5u8; KEY_LEN]);
        assert_eq!(dh(&private, &[0u8; KEY_LEN]), Err(CryptoError));
        let other = StaticSecret::from([6u8; KEY_LEN]);
        let ab = dh(&private, &public_key(&other)).expect("valid point");
        let ba = dh(&other, &public_key(&private)).expect("valid point");
        assert_eq!(*ab, *ba);
    }
}
