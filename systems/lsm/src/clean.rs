//! The clean-close marker (`CLOSED`): `close` writes it last, after the log is synced and the
//! background work has stopped; `open` reads it, reports whether the previous run of the store
//! ended with a clean close (`RecoveryReport::clean_shutdown`), and removes it (durably, before
//! the store takes its first write), so a later crash is never taken for a clean close.
//!
//! The marker is informational: recovery does exactly the same with or without it, and every
//! acknowledged write survives a crash either way. A missing, torn or damaged marker, or one
//! naming another sequence than the one recovery found, only means "not a clean close".
//!
//! ## Format (version 1, 21 bytes, little-endian)
//!
//! `| magic u64 ("GMLSMCLS") | version u8 (1) | last sequence u64 | crc32c of bytes 0..17 u32 |`

use sim::{Env, File, OpenOptions};

use crate::db::join;
use crate::error::Result;

/// The marker's file name in the store's directory.
pub const CLOSED_NAME: &str = "CLOSED";

/// The marker's magic number.
const CLOSED_MAGIC: u64 = u64::from_le_bytes(*b"GMLSMCLS");
/// The marker format version this code writes and reads.
const CLOSED_FORMAT_VERSION: u8 = 1;
/// The marker's length in bytes.
pub const CLOSED_LEN: usize = 21;

/// The marker of a store closed at `last_sequence`.
pub fn encode(last_sequence: u64) -> [u8; CLOSED_LEN] {
    let mut bytes = [0u8; CLOSED_LEN];
    bytes[..8].copy_from_slice(&CLOSED_MAGIC.to_le_bytes());
    bytes[8] = CLOSED_FORMAT_VERSION;
    bytes[9..17].copy_from_slice(&last_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..17]);
    bytes[17..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode(&bytes), Some(last_sequence), "a marker decodes to what it encodes");
    bytes
}

/// The last sequence a marker names; `None` for anything but a whole, sound version-1 marker.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != CLOSED_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[17..].try_into().ok()?);
    let magic = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    if crc32c::crc32c(&bytes[..17]) != crc || magic != CLOSED_MAGIC {
        return None;
    }
    if bytes[8] != CLOSED_FORMAT_VERSION {
        return None;
    }
    Some(u64::from_le_bytes(bytes[9..17].try_into().ok()?))
}

/// The last sequence the marker in `dir` names, if `names` (the directory's listing) holds a
/// sound one. Nothing about the marker fails an open: a bad or unreadable marker is only "no
/// clean close".
pub(crate) async fn read<E: Env>(env: &E, dir: &str, names: &[String]) -> Option<u64> {
    if !names.iter().any(|name| name == CLOSED_NAME) {
        return None;
    }
    let file = env.open(&join(dir, CLOSED_NAME), OpenOptions::EXISTING).await.ok()?;
    if file.len().await.ok()? != CLOSED_LEN as u64 {
        return None;
    }
    let mut bytes = [0u8; CLOSED_LEN];
    file.read_exact_at(0, &mut bytes).await.ok()?;
    decode(&bytes)
}

/// Writes the marker of a store closed at `last_sequence` and makes it durable.
pub(crate) async fn write<E: Env>(env: &E, dir: &str, last_sequence: u64) -> Result<()> {
    let file = env.open(&join(dir, CLOSED_NAME), OpenOptions::TRUNCATE).await?;
    file.write_at(0, &encode(last_sequence)).await?;
    file.sync().await?;
    env.sync_dir(dir).await?;
    Ok(())
}

/// Removes the marker if `names` holds one (the caller syncs the directory before the store
/// takes a write). A failed removal does not fail the open: the marker it leaves names the
/// sequence of this open, so once this run writes anything it no longer matches.
pub(crate) async fn remove<E: Env>(env: &E, dir: &str, names: &[String]) {
    if names.iter().any(|name| name == CLOSED_NAME) {
        let _ = env.remove(&join(dir, CLOSED_NAME)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(bytes: &[u8], expected: Option<u64>) {
        assert_eq!(decode(bytes), expected);
    }

    #[test]
    fn decodes_only_sound_markers() {
        let marker = encode(42);
        check(&marker, Some(42));
        check(&encode(u64::MAX), Some(u64::MAX));
        check(&marker[..CLOSED_LEN - 1], None);
        check(&[marker.as_slice(), &[0]].concat(), None);
        check(&[], None);
        for index in 0..CLOSED_LEN {
            let mut damaged = marker;
            damaged[index] ^= 0x10;
            check(&damaged, None);
        }
        let mut future = marker;
        future[8] = 2;
        let crc = crc32c::crc32c(&future[..17]);
        future[17..].copy_from_slice(&crc.to_le_bytes());
        check(&future, None);
    }
}
