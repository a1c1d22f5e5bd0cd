//! A 128-bit deterministic content hash for Merkle Search Tree keys, nodes and entry digests.
//!
//! Why our own: the crate stays dependency-free, and the hash must be identical on every
//! platform and release (std's `DefaultHasher` promises neither). It is two independent 64-bit
//! multiply-xorshift lanes with a strong finalizer: well distributed, fast, and NOT
//! cryptographic. A hostile peer could craft colliding keys; that costs it only a skewed tree
//! shape or a missed diff of its own entries, never a panic.

use serde::{Deserialize, Serialize};

/// A 128-bit digest. `Digest::ZERO` stands for "empty" (an empty subtree).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Digest(pub u128);

impl Digest {
    /// The digest of nothing: an empty subtree.
    pub const ZERO: Digest = Digest(0);
}

const LANE_A_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const LANE_B_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// An incremental hasher: feed byte strings with `write`, finish with `digest`.
#[derive(Clone, Debug)]
pub struct Hasher {
    lane_a: u64,
    lane_b: u64,
    length: u64,
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher { lane_a: LANE_A_SEED, lane_b: LANE_B_SEED, length: 0 }
    }

    /// Feeds one word into both lanes.
    fn word(&mut self, word: u64) {
        self.lane_a = mix(self.lane_a ^ word).rotate_left(23).wrapping_add(LANE_B_SEED);
        self.lane_b = mix(self.lane_b.wrapping_add(word) ^ LANE_A_SEED).rotate_left(41);
    }

    /// Feeds `bytes`, prefixed by their length so concatenations cannot collide.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Hasher {
        self.word(bytes.len() as u64);
        for chunk in bytes.chunks(8) {
            let mut buffer = [0u8; 8];
            buffer[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(buffer));
        }
        self.length += 1;
        self
    }

    /// Feeds one integer.
    pub fn write_u64(&mut self, value: u64) -> &mut Hasher {
        self.write(&value.to_le_bytes())
    }

    /// Feeds a digest.
    pub fn write_digest(&mut self, digest: Digest) -> &mut Hasher {
        self.write(&digest.0.to_le_bytes())
    }

    /// The digest of everything fed so far; never `Digest::ZERO` (reserved for "empty").
    pub fn digest(&self) -> Digest {
        let high = mix(self.lane_a ^ self.length.rotate_left(17));
        let low = mix(self.lane_b ^ high);
        let value = (u128::from(high) << 64) | u128::from(low);
        Digest(value.max(1))
    }
}

/// The digest of one byte string.
pub fn hash_bytes(bytes: &[u8]) -> Digest {
    Hasher::new().write(bytes).digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(hash_bytes(b"a"), hash_bytes(b"a"));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_ne!(hash_bytes(b""), Digest::ZERO);
        let joined = Hasher::new().write(b"ab").write(b"c").digest();
        let split = Hasher::new().write(b"a").write(b"bc").digest();
        assert_ne!(joined, split);
    }

    #[test]
    fn leading_digits_are_roughly_uniform() {
        // About 1/16 of keys should have a zero top nibble.
        let count =
            (0u32..16_000).filter(|index| hash_bytes(&index.to_le_bytes()).0 >> 124 == 0).count();
        assert!((800..1200).contains(&count), "count {count}");
    }
}
