//! The sans-IO transport of the control channel: ChaCha20-Poly1305 (ring) under the keys the
//! handshake split, one 64-bit counter per direction.
//!
//! A transport frame's payload is `counter (u64, little-endian) | ciphertext | tag (16)`; the
//! counter is the AEAD nonce (`nonce12`, as WireGuard). The stream is ordered, so the receiver
//! accepts exactly the next counter: a replayed, reordered or dropped frame is refused before
//! decryption, and a frame whose counter was altered fails authentication. Counters stop at
//! `COUNTER_MAX` (Noise reserves `2^64 - 1`); the side that reaches it closes, and the agent
//! reconnects with a fresh handshake (the rekey).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use wireguard::crypto::{KEY_LEN, TAG_LEN, nonce12};

use super::ChannelError;

/// Bytes of the counter that opens every transport frame.
pub const COUNTER_LEN: usize = 8;
/// Bytes a transport frame adds to its plaintext.
pub const OVERHEAD_LEN: usize = COUNTER_LEN + TAG_LEN;
/// The last counter either side may use; past it the session must close.
pub const COUNTER_MAX: u64 = u64::MAX - 1;

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key"))
}

/// The sending direction: a key and the next counter.
pub struct Sealer {
    key: LessSafeKey,
    // Invariant: the next counter to use; each value is used at most once.
    counter: u64,
}

impl Sealer {
    /// A sealer whose first frame carries counter 0.
    pub fn new(key: &[u8; KEY_LEN]) -> Sealer {
        Sealer { key: aead_key(key), counter: 0 }
    }

    /// The next counter to send (also the number of frames sealed).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Seals `frame` in place: on entry `COUNTER_LEN` bytes of room then the plaintext; on exit
    /// the counter, the ciphertext and the tag.
    pub fn seal_in_place(&mut self, frame: &mut Vec<u8>) -> Result<(), ChannelError> {
        assert!(frame.len() >= COUNTER_LEN, "frame lacks room for the counter");
        if self.counter > COUNTER_MAX {
            return Err(ChannelError::CounterExhausted);
        }
        let counter = self.counter;
        frame[..COUNTER_LEN].copy_from_slice(&counter.to_le_bytes());
        let nonce = Nonce::assume_unique_for_key(nonce12(counter));
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut frame[COUNTER_LEN..])
            .expect("frames are far below ChaCha20-Poly1305's 256 GiB limit");
        frame.extend_from_slice(tag.as_ref());
        self.counter = counter + 1;
        assert!(self.counter > counter);
        Ok(())
    }

    /// Seals `plaintext` into `out` (replacing its contents).
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        out.clear();
        out.reserve(plaintext.len() + OVERHEAD_LEN);
        out.extend_from_slice(&[0u8; COUNTER_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(out)
    }

    /// Moves the counter forward, to test exhaustion without sealing `2^64` frames.
    #[cfg(test)]
    pub(crate) fn skip_to(&mut self, counter: u64) {
        assert!(counter >= self.counter);
        self.counter = counter;
    }
}

/// The receiving direction: a key and the only counter it will accept next.
pub struct Opener {
    key: LessSafeKey,
    // Invariant: every counter below it was opened once; nothing else is ever accepted.
    expected: u64,
}

impl Opener {
    /// An opener that expects counter 0 first.
    pub fn new(key: &[u8; KEY_LEN]) -> Opener {
        Opener { key: aead_key(key), expected: 0 }
    }

    /// The counter it accepts next (also the number of frames opened).
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Opens a transport frame in place and returns its plaintext. Any refusal leaves the
    /// expected counter unchanged.
    pub fn open<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8], ChannelError> {
        if frame.len() < OVERHEAD_LEN {
            return Err(ChannelError::DecryptFailed { counter: None });
        }
        let (head, sealed) = frame.split_at_mut(COUNTER_LEN);
        let counter = u64::from_le_bytes(head.try_into().expect("split at COUNTER_LEN"));
        if counter != self.expected {
            return Err(ChannelError::BadCounter { expected: self.expected, received: counter });
        }
        if counter > COUNTER_MAX {
            return Err(ChannelError::CounterExhausted);
        }
        let nonce = Nonce::assume_unique_for_key(nonce12(counter));
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::empty(), sealed)
            .map_err(|_| ChannelError::DecryptFailed { counter: Some(counter) })?;
        self.expected = counter + 1;
        assert!(self.expected > counter);
        Ok(plaintext)
    }

    /// Moves the expected counter forward, to test exhaustion.
    #[cfg(test)]
    pub(crate) fn skip_to(&mut self, counter: u64) {
        assert!(counter >= self.expected);
        self.expected = counter;
    }
}

/// Bytes of the transport frame that carries `plaintext_len` bytes.
pub const fn frame_len(plaintext_len: usize) -> usize {
    plaintext_len + OVERHEAD_LEN
}
