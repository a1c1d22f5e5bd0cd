//! The manifest: which tables form the store, at which level, and where recovery starts.
//!
//! The whole state is small (one line per table), so every change (a version edit: tables added
//! and removed by a flush or compaction) is persisted by writing the complete new state to
//! `MANIFEST.tmp`, syncing it, renaming it over `MANIFEST` and syncing the directory. A crash
//! leaves either the old or the new manifest, never a mix.
//!
//! ## Format (version 1, little-endian)
//!
//! `| magic u64 ("GMLSMMAN") | format version u32 | body length u32 | crc32c(body) u32 | body |`,
//! body: `| next file number varint | last sequence varint | log number varint |
//! table count varint | table* |`, each table
//! `| level u8 | number varint | size varint | smallest key (varint length + bytes) |
//! largest key (varint length + bytes) |` (keys are encoded internal keys).
//!
//! Version 2 (an encrypted store) has the same header; its body is sealed (`crypto.rs`:
//! `| nonce (24) | ciphertext | tag (16) |`, associated data `crypto::position(Manifest, 0,
//! 0)`), and the length and CRC cover the sealed body. The tables' key ranges are user keys,
//! so they must not stay readable.

use crate::coding::{DecodeResult, Reader, put_bytes, put_varint};
use crate::crypto::{Domain, Sealer, position};
use crate::key::split_internal;

/// The manifest's magic number.
pub const MANIFEST_MAGIC: u64 = u64::from_le_bytes(*b"GMLSMMAN");
/// The manifest format version this code writes and reads in the clear.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// The manifest format version of an encrypted store (the body sealed).
pub const MANIFEST_FORMAT_VERSION_ENCRYPTED: u32 = 2;
/// Bytes before the body.
pub const MANIFEST_HEADER_BYTES: usize = 8 + 4 + 4 + 4;
/// The most levels a store may have.
pub const LEVEL_COUNT_MAX: usize = 16;
/// The most tables a manifest may list.
pub const TABLE_COUNT_MAX: usize = 1 << 20;

/// One table as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMeta {
    /// Level, 0 = newest.
    pub level: u8,
    /// File number (`NNNNNN.sst`).
    pub number: u64,
    /// File size in bytes.
    pub size: u64,
    /// Smallest encoded internal key.
    pub smallest: Vec<u8>,
    /// Largest encoded internal key.
    pub largest: Vec<u8>,
}

/// The persisted state of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestState {
    /// The next unused file number.
    pub next_file_number: u64,
    /// The highest sequence number in any table.
    pub last_sequence: u64,
    /// Write-ahead logs numbered at least this still hold writes not in tables.
    pub log_number: u64,
    /// Every live table.
    pub tables: Vec<TableMeta>,
}

impl ManifestState {
    /// The encoded manifest file, in the clear.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(None)
    }

    /// The encoded manifest file, its body sealed by `sealer` if given (version 2).
    pub fn encode_with(&self, sealer: Option<&Sealer>) -> Vec<u8> {
        let mut body = Vec::new();
        put_varint(&mut body, self.next_file_number);
        put_varint(&mut body, self.last_sequence);
        put_varint(&mut body, self.log_number);
        put_varint(&mut body, self.tables.len() as u64);
        for table in &self.tables {
            body.push(table.level);
            put_varint(&mut body, table.number);
            put_varint(&mut body, table.size);
            put_bytes(&mut body, &table.smallest);
            put_bytes(&mut body, &table.largest);
        }
        let (version, body) = match sealer {
            Some(sealer) => {
                let mut sealed = Vec::new();
                sealer.seal(&position(Domain::Manifest, 0, 0), &body, &mut sealed);
                (MANIFEST_FORMAT_VERSION_ENCRYPTED, sealed)
            }
            None => (MANIFEST_FORMAT_VERSION, body),
        };
        let mut out = Vec::with_capacity(MANIFEST_HEADER_BYTES + body.len());
        out.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a manifest file in the clear.
    pub fn decode(data: &[u8]) -> DecodeResult<ManifestState> {
        Self::decode_with(data, None)
    }

    /// Decodes and checks a manifest file, opening its body with `sealer` if the store is
    /// encrypted (then it must be of version 2, else of version 1).
    pub fn decode_with(data: &[u8], sealer: Option<&Sealer>) -> DecodeResult<ManifestState> {
        let mut reader = Reader::new(data);
        if reader.u64()? != MANIFEST_MAGIC {
            return Err("bad manifest magic");
        }
        match (reader.u32()?, sealer.is_some()) {
            (MANIFEST_FORMAT_VERSION, false) | (MANIFEST_FORMAT_VERSION_ENCRYPTED, true) => {}
            (MANIFEST_FORMAT_VERSION, true) => {
                return Err("unencrypted manifest of an encrypted store");
            }
            (MANIFEST_FORMAT_VERSION_ENCRYPTED, false) => {
                return Err("encrypted manifest opened without a key");
            }
            _ => return Err("unknown manifest format version"),
        }
        let body_len = reader.u32()? as usize;
        let crc = reader.u32()?;
        if body_len != reader.remaining() {
            return Err("manifest length mismatch");
        }
        let body = reader.bytes(body_len)?;
        if crc32c::crc32c(body) != crc {
            return Err("manifest checksum mismatch");
        }
        let Some(sealer) = sealer else { return decode_body(body) };
        let opened = sealer
            .open(&position(Domain::Manifest, 0, 0), body)
            .ok_or("manifest body does not open (damaged, or sealed under another key)")?;
        decode_body(&opened)
    }
}

fn decode_body(body: &[u8]) -> DecodeResult<ManifestState> {
    let mut reader = Reader::new(body);
    let mut state = ManifestState {
        next_file_number: reader.varint()?,
        last_sequence: reader.varint()?,
        log_number: reader.varint()?,
        tables: Vec::new(),
    };
    let count = reader.varint_len(TABLE_COUNT_MAX.min(reader.remaining()))?;
    for _ in 0..count {
        let level = reader.u8()?;
        if usize::from(level) >= LEVEL_COUNT_MAX {
            return Err("table level out of range");
        }
        let number = reader.varint()?;
        let size = reader.varint()?;
        let smallest = reader.length_prefixed()?.to_vec();
        let largest = reader.length_prefixed()?.to_vec();
        split_internal(&smallest)?;
        split_internal(&largest)?;
        if number >= state.next_file_number {
            return Err("table number not below next file number");
        }
        state.tables.push(TableMeta { level, number, size, smallest, largest });
    }
    if !reader.is_empty() {
        return Err("trailing bytes in manifest");
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::internal_key;

    #[test]
    fn manifests_round_trip_and_every_cut_is_rejected() {
        let state = ManifestState {
            next_file_number: 9,
            last_sequence: 77,
            log_number: 8,
            tables: vec![TableMeta {
                level: 1,
                number: 4,
                size: 1000,
                smallest: internal_key(b"a", 3, 1),
                largest: internal_key(b"z", 5, 0),
            }],
        };
        let encoded = state.encode();
        assert_eq!(ManifestState::decode(&encoded), Ok(state));
        for cut in 0..encoded.len() {
            assert!(ManifestState::decode(&encoded[..cut]).is_err());
        }
    }
}
