//! Internal keys: a user key plus a sequence number and a kind, ordered by user key ascending
//! and then by sequence number descending, so the newest version of a key comes first.
//!
//! Encoded form (in SSTables): `| user key bytes | trailer u64 LE |` with
//! `trailer = sequence << 8 | kind`, kind 0 = deletion (tombstone), 1 = value.

use std::cmp::Ordering;

use crate::coding::DecodeResult;

/// The largest sequence number (56 bits: the trailer keeps 8 bits for the kind).
pub const SEQUENCE_MAX: u64 = (1 << 56) - 1;

/// Bytes of the trailer after the user key.
pub const TRAILER_BYTES: usize = 8;

/// Kind byte of a tombstone.
pub const KIND_DELETE: u8 = 0;
/// Kind byte of a value.
pub const KIND_PUT: u8 = 1;

/// One version of one key, as iterators and compaction pass it around.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The user key.
    pub key: Vec<u8>,
    /// The sequence number of the write that made this version.
    pub sequence: u64,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Appends the encoded internal key of (`user_key`, `sequence`, `kind`) to `out`.
pub fn encode_internal(out: &mut Vec<u8>, user_key: &[u8], sequence: u64, kind: u8) {
    assert!(sequence <= SEQUENCE_MAX);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&(sequence << 8 | u64::from(kind)).to_le_bytes());
}

/// The encoded internal key of (`user_key`, `sequence`, `kind`).
pub fn internal_key(user_key: &[u8], sequence: u64, kind: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
    encode_internal(&mut out, user_key, sequence, kind);
    out
}

/// Splits an encoded internal key into (user key, sequence, kind).
pub fn split_internal(encoded: &[u8]) -> DecodeResult<(&[u8], u64, u8)> {
    if encoded.len() < TRAILER_BYTES {
        return Err("internal key shorter than its trailer");
    }
    let (user_key, trailer) = encoded.split_at(encoded.len() - TRAILER_BYTES);
    let mut array = [0u8; 8];
    array.copy_from_slice(trailer);
    let trailer = u64::from_le_bytes(array);
    let kind = (trailer & 0xff) as u8;
    if kind != KIND_DELETE && kind != KIND_PUT {
        return Err("unknown value kind");
    }
    Ok((user_key, trailer >> 8, kind))
}

/// The user key of an encoded internal key (empty if the key is too short to hold a trailer).
pub fn user_key(encoded: &[u8]) -> &[u8] {
    &encoded[..encoded.len().saturating_sub(TRAILER_BYTES)]
}

/// `a.cmp(b)` (bytewise): keys of up to 16 bytes compare as one number, without a call to
/// `memcmp` (point lookups compare user keys many times).
pub fn compare_user(a: &[u8], b: &[u8]) -> Ordering {
    if a.len() > 16 || b.len() > 16 {
        return a.cmp(b);
    }
    // Zero-padded big-endian words order like the keys, except that a key and the same key
    // followed by zero bytes tie: then the shorter one is first.
    let word = |key: &[u8]| {
        let bytes = <[u8; 16]>::try_from(key).unwrap_or_else(|_| {
            let mut bytes = [0u8; 16];
            bytes[..key.len()].copy_from_slice(key);
            bytes
        });
        u128::from_be_bytes(bytes)
    };
    word(a).cmp(&word(b)).then(a.len().cmp(&b.len()))
}

/// Orders encoded internal keys: user key ascending, then trailer (sequence) descending.
pub fn compare_internal(a: &[u8], b: &[u8]) -> Ordering {
    let split_a = a.len().saturating_sub(TRAILER_BYTES);
    let split_b = b.len().saturating_sub(TRAILER_BYTES);
    compare_user(&a[..split_a], &b[..split_b])
        .then_with(|| trailer_value(&b[split_b..]).cmp(&trailer_value(&a[split_a..])))
}

/// `compare_internal(encoded, target)` where `target` is the encoded internal key of
/// (`user_key`, `sequence`, `kind`), without encoding it.
pub fn compare_internal_to(encoded: &[u8], user_key: &[u8], sequence: u64, kind: u8) -> Ordering {
    let split = encoded.len().saturating_sub(TRAILER_BYTES);
    let trailer = sequence << 8 | u64::from(kind);
    compare_user(&encoded[..split], user_key)
        .then_with(|| trailer.cmp(&trailer_value(&encoded[split..])))
}

/// A trailer's bytes as the little-endian u64 they encode.
fn trailer_value(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    let count = bytes.len().min(8);
    array[..count].copy_from_slice(&bytes[..count]);
    u64::from_le_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first_and_user_keys_ascend() {
        let older = internal_key(b"k", 5, KIND_PUT);
        let newer = internal_key(b"k", 9, KIND_DELETE);
        assert_eq!(compare_internal(&newer, &older), Ordering::Less);
        let next = internal_key(b"l", 1, KIND_PUT);
        assert_eq!(compare_internal(&older, &next), Ordering::Less);
        assert_eq!(compare_internal(&internal_key(b"k", 300, 1), &newer), Ordering::Less);
        assert_eq!(split_internal(&newer), Ok((&b"k"[..], 9, KIND_DELETE)));
        assert!(split_internal(b"short").is_err());
        for (encoded, user, sequence) in
            [(&older, &b"k"[..], 7), (&newer, b"k", 9), (&next, b"k", 2)]
        {
            let target = internal_key(user, sequence, KIND_PUT);
            let expected = compare_internal(encoded, &target);
            assert_eq!(compare_internal_to(encoded, user, sequence, KIND_PUT), expected);
        }
    }

    /// Goal: `compare_user` is bytewise order. Method: every pair of a set of short and long
    /// keys with zero and 0xff bytes, shared prefixes and lengths around 16.
    #[test]
    fn compare_user_is_bytewise_order() {
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![0xff], vec![1, 0]];
        for length in [7, 8, 15, 16, 17, 24] {
            for last in [0u8, 1, 0xff] {
                let mut key = vec![b'k'; length];
                key[length - 1] = last;
                keys.push(key.clone());
                key[0] = b'a';
                keys.push(key);
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(compare_user(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}
