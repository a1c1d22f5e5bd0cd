//! Transport data keys: one session's sending and receiving ChaCha20-Poly1305 keys (ring), its
//! 64-bit send counter and its anti-replay window, and the hot path that seals and opens
//! type-4 messages without allocating.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sim::Instant;

use crate::crypto::{KEY_LEN, TAG_LEN, nonce12};
use crate::messages::{DATA_HEADER_LEN, TYPE_DATA, write_u32};
use crate::replay::{ReplayError, ReplayWindow};
use crate::timers::REJECT_AFTER_MESSAGES;

/// One session's keys and counters.
pub struct Keypair {
    send_key: LessSafeKey,
    receive_key: LessSafeKey,
    // Invariant: the next counter to send; never reused, never above REJECT_AFTER_MESSAGES.
    send_counter: u64,
    replay: ReplayWindow,
    /// The index we chose: the peer puts it in every message to us.
    pub local_index: u32,
    /// The index the peer chose: we put it in every message to the peer.
    pub remote_index: u32,
    /// When the handshake that made this keypair completed.
    pub created_at: Instant,
    /// Whether we initiated that handshake (only the initiator rekeys on age).
    pub is_initiator: bool,
    /// Planted bug `ReplayAcceptsGreatestAgain` (set only by a tunnel with the bug planted).
    pub(crate) planted_accepts_greatest_again: bool,
    /// Planted bug `ReplaySlideClearsLiveWord` (set only by a tunnel with the bug planted).
    pub(crate) planted_slide_clears_live_word: bool,
}

/// Why a transport message was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// The counter was replayed or is too old.
    Replay(ReplayError),
    /// The counter is past REJECT_AFTER_MESSAGES.
    CounterExhausted,
    /// Authentication failed.
    Forged,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl Keypair {
    /// A keypair from the two keys `Split()` gave.
    pub fn new(
        send_key: &[u8; KEY_LEN],
        receive_key: &[u8; KEY_LEN],
        local_index: u32,
        remote_index: u32,
        created_at: Instant,
        is_initiator: bool,
    ) -> Self {
        let key = |bytes: &[u8; KEY_LEN]| {
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key"))
        };
        Keypair {
            send_key: key(send_key),
            receive_key: key(receive_key),
            send_counter: 0,
            replay: ReplayWindow::default(),
            local_index,
            remote_index,
            created_at,
            is_initiator,
            planted_accepts_greatest_again: false,
            planted_slide_clears_live_word: false,
        }
    }

    /// The next counter to send (also the count of messages sent).
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// Moves the send counter forward, to test the message limits without sending 2^60.
    #[cfg(test)]
    pub(crate) fn skip_to_counter(&mut self, counter: u64) {
        assert!(counter >= self.send_counter);
        self.send_counter = counter;
    }

    /// Whether another message may be sent under this keypair.
    pub fn can_send(&self) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES
    }

    /// Seals `packet` (zero-padded to a multiple of 16, at most `padded_len_max`) as a type-4
    /// message into `out`; returns its length, or `None` if `out` is too small.
    pub fn seal(&mut self, packet: &[u8], padded_len_max: usize, out: &mut [u8]) -> Option<usize> {
        assert!(self.can_send());
        let padded_len = packet.len().next_multiple_of(16).min(padded_len_max.max(packet.len()));
        let total_len = DATA_HEADER_LEN + padded_len + TAG_LEN;
        let out = out.get_mut(..total_len)?;
        let counter = self.send_counter;
        self.send_counter += 1;
        write_u32(out, 0, TYPE_DATA);
        write_u32(out, 4, self.remote_index);
        out[8..16].copy_from_slice(&counter.to_le_bytes());
        let (body, tag_out) = out[DATA_HEADER_LEN..].split_at_mut(padded_len);
        body[..packet.len()].copy_from_slice(packet);
        body[packet.len()..].fill(0);
        let nonce = Nonce::assume_unique_for_key(nonce12(counter));
        let tag = self
            .send_key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .expect("a datagram is far below the AEAD length limit");
        tag_out.copy_from_slice(tag.as_ref());
        Some(total_len)
    }

    /// Opens a type-4 message's `sealed` part with `counter` into `out`; returns the plaintext
    /// length. The replay window is updated only after the message authenticated.
    pub fn open(
        &mut self,
        counter: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<usize, OpenError> {
        // Refuse replays before spending a copy on them.
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::CounterExhausted);
        }
        self.replay_check(counter)?;
        let Some(buffer) = out.get_mut(..sealed.len()) else {
            return Err(OpenError::BufferTooSmall);
        };
        buffer.copy_from_slice(sealed);
        self.open_in_place(counter, buffer)
    }

    /// Opens `sealed` (ciphertext and tag) in place; the plaintext is its first bytes.
    pub fn open_in_place(&mut self, counter: u64, sealed: &mut [u8]) -> Result<usize, OpenError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::CounterExhausted);
        }
        self.replay_check(counter)?;
        let nonce = Nonce::assume_unique_for_key(nonce12(counter));
        let plaintext_len = match self.receive_key.open_in_place(nonce, Aad::empty(), sealed) {
            Ok(plaintext) => plaintext.len(),
            Err(_) => return Err(OpenError::Forged),
        };
        if self.planted_slide_clears_live_word {
            self.replay.update_clearing_live_word(counter).map_err(OpenError::Replay)?;
        } else if !self.replays_greatest(counter) {
            self.replay.update(counter).map_err(OpenError::Replay)?;
        }
        Ok(plaintext_len)
    }

    fn replay_check(&self, counter: u64) -> Result<(), OpenError> {
        if self.replays_greatest(counter) {
            return Ok(());
        }
        self.replay.check(counter).map_err(OpenError::Replay)
    }

    /// Planted bug `ReplayAcceptsGreatestAgain`: `counter` is the greatest one seen so far.
    fn replays_greatest(&self, counter: u64) -> bool {
        self.planted_accepts_greatest_again && self.replay.greatest() == Some(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_past_the_reject_limit_are_refused_and_never_sent() {
        let now = Instant::ZERO;
        let mut sender = Keypair::new(&[1; KEY_LEN], &[2; KEY_LEN], 1, 2, now, true);
        let mut receiver = Keypair::new(&[2; KEY_LEN], &[1; KEY_LEN], 2, 1, now, false);
        sender.skip_to_counter(REJECT_AFTER_MESSAGES - 1);
        let mut wire = [0u8; 64];
        let len = sender.seal(b"last", 16, &mut wire).expect("fits");
        assert!(!sender.can_send());
        let mut plain = [0u8; 64];
        let sealed = &wire[DATA_HEADER_LEN..len];
        assert_eq!(receiver.open(REJECT_AFTER_MESSAGES - 1, sealed, &mut plain), Ok(16));
        assert_eq!(
            receiver.open(REJECT_AFTER_MESSAGES, sealed, &mut plain),
            Err(OpenError::CounterExhausted)
        );
        assert_eq!(
            receiver.open(REJECT_AFTER_MESSAGES - 2, sealed, &mut plain),
            Err(OpenError::Forged)
        );
        assert_eq!(
            receiver.open(0, sealed, &mut plain),
            Err(OpenError::Replay(ReplayError::TooOld))
        );
        assert_eq!(
            receiver.open(REJECT_AFTER_MESSAGES - 3, sealed, &mut [0u8; 4]),
            Err(OpenError::BufferTooSmall)
        );
    }
}
