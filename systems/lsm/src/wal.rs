//! The write-ahead log: length- and CRC32C-framed records that name their own place, appended
//! and fsynced before a write is acknowledged, replayed at open.
//!
//! ## Format (version 2, little-endian)
//!
//! A log file is a sequence of records, each
//! `| crc u32 | length u32 | kind u8 | synced_through u64 | file_number u64 | offset u64 |
//! payload (length bytes) |`.
//! `crc` is CRC32C over everything after it. `kind` is 3 (a write batch, see `batch.rs`) or 4
//! (a sync marker with an empty payload, appended and synced by a clean close so that every
//! earlier record is provably synced). `synced_through` is the file length that was durable
//! (fsynced) when the record was written; `file_number` and `offset` are the log file and the
//! byte offset the record was written for, so a record that a misdirected write put anywhere
//! else is recognised as such.
//!
//! In an encrypted store, batches are written as kind 5 (a sealed write batch): the header is
//! the same and stays clear; the payload is the batch sealed (`crypto.rs`, `| nonce (24) |
//! ciphertext | tag (16) |`) with the record's position (`crypto::position(Log, file_number,
//! offset)`) as associated data, and `crc` covers the sealed payload, so torn tails and bit
//! flips are found before decryption exactly as in the clear. Sync markers carry no payload
//! and are not sealed.
//!
//! Version 1 records (kind 1 = batch, 2 = marker) have the same layout without `file_number`
//! and `offset`; they are still read, but carry no position to check.
//!
//! ## Recovery rule
//!
//! Records are read in order until the first bad one (short header, length past the end, CRC
//! mismatch, unknown kind, or a valid record that names another place). A crash can only leave
//! a bad region in the part of the file written after the last fsync, so the reader then scans
//! the rest of the file for any valid record. A valid record that names another place than
//! where it lies was moved by a misdirected write, and the hole it left is not a torn tail:
//! that is corruption. If some later valid record says the file was durable past the bad offset
//! (`synced_through > offset`), the bad bytes were once synced: that is corruption too.
//! Corruption is reported as an error and never skipped. Otherwise the bad region is a torn
//! tail and replay stops there. A record with a good CRC whose payload does not decode is
//! always corruption.

use crate::coding::{DecodeResult, fixed_u32};
use crate::crypto::{Domain, SEAL_OVERHEAD_BYTES, Sealer, position};

/// Bytes of a version-2 record header.
pub const HEADER_BYTES: usize = 4 + 4 + 1 + 8 + 8 + 8;
/// Bytes of a version-1 record header (no position).
pub const HEADER_BYTES_V1: usize = 4 + 4 + 1 + 8;
/// The largest payload a record may carry (a sealed batch is `SEAL_OVERHEAD_BYTES` longer
/// than the batch; batches stay far below the limit).
pub const PAYLOAD_BYTES_MAX: usize = crate::batch::BATCH_BYTES_MAX + SEAL_OVERHEAD_BYTES;
/// Kind byte of a record holding one write batch.
pub const KIND_BATCH: u8 = 3;
/// Kind byte of a sync marker: no payload; says the file was durable through `synced_through`.
pub const KIND_MARKER: u8 = 4;
/// Kind byte of a record holding one sealed write batch (an encrypted store).
pub const KIND_SEALED_BATCH: u8 = 5;
/// Kind byte of a version-1 batch record (read only).
pub const KIND_BATCH_V1: u8 = 1;
/// Kind byte of a version-1 sync marker (read only).
pub const KIND_MARKER_V1: u8 = 2;

/// Where a record is written: the log's file number and the file offset of the first byte of
/// the buffer it is encoded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The log's file number.
    pub file_number: u64,
    /// The file offset at which the encoding buffer will be appended.
    pub buffer_offset: u64,
}

/// Appends one framed batch record to `out`.
pub fn encode_record(out: &mut Vec<u8>, place: Place, synced_through: u64, payload: &[u8]) {
    encode_with(out, place, KIND_BATCH, synced_through, |out| out.extend_from_slice(payload));
}

/// Appends a sync marker saying the log is durable through `synced_through`.
pub fn encode_marker(out: &mut Vec<u8>, place: Place, synced_through: u64) {
    encode_with(out, place, KIND_MARKER, synced_through, |_| {});
}

/// Appends a batch record whose payload `fill` writes straight into `out` (no extra copy).
pub fn encode_record_with(
    out: &mut Vec<u8>,
    place: Place,
    synced_through: u64,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    encode_with(out, place, KIND_BATCH, synced_through, fill);
}

/// Appends a sealed batch record: `plaintext` (an encoded batch) sealed by `sealer` with the
/// record's position as associated data.
pub fn encode_sealed_record(
    out: &mut Vec<u8>,
    place: Place,
    synced_through: u64,
    sealer: &Sealer,
    plaintext: &[u8],
) {
    let offset = place.buffer_offset + out.len() as u64;
    let ad = position(Domain::Log, place.file_number, offset);
    encode_with(out, place, KIND_SEALED_BATCH, synced_through, |out| {
        sealer.seal(&ad, plaintext, out);
    });
}

/// The plaintext of a sealed batch record found in log `file_number`, or `None` if it does not
/// open there (damaged, moved, or sealed under another key).
pub fn open_sealed(sealer: &Sealer, file_number: u64, record: &Record<'_>) -> Option<Vec<u8>> {
    assert_eq!(record.kind, KIND_SEALED_BATCH);
    sealer.open(&position(Domain::Log, file_number, record.offset), record.payload)
}

/// Appends a version-1 batch record (no position). The store never writes these; they exist
/// so tests can check that logs of the old format still replay.
pub fn encode_record_v1(out: &mut Vec<u8>, synced_through: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(KIND_BATCH_V1);
    out.extend_from_slice(&synced_through.to_le_bytes());
    out.extend_from_slice(payload);
    seal(out, start, HEADER_BYTES_V1);
}

fn encode_with(
    out: &mut Vec<u8>,
    place: Place,
    kind: u8,
    synced_through: u64,
    fill: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    let offset = place.buffer_offset + start as u64;
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    out.extend_from_slice(&synced_through.to_le_bytes());
    out.extend_from_slice(&place.file_number.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    fill(out);
    seal(out, start, HEADER_BYTES);
}

/// Fills in the length and CRC of the record starting at `start`.
fn seal(out: &mut [u8], start: usize, header_bytes: usize) {
    let payload_len = out.len() - start - header_bytes;
    assert!(payload_len <= PAYLOAD_BYTES_MAX);
    out[start + 4..start + 8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(fixed_u32(out, start), crc);
}

/// The place a version-2 record names: (file number, offset).
pub type Position = (u64, u64);

/// One valid record found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset of the record's header in the file.
    pub offset: u64,
    /// The durable length the writer knew of when it wrote this record.
    pub synced_through: u64,
    /// `KIND_BATCH`, `KIND_SEALED_BATCH` or `KIND_MARKER` (version-1 kinds are reported as
    /// these).
    pub kind: u8,
    /// The place the record was written for; `None` for a version-1 record.
    pub position: Option<Position>,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Whether the record names a place other than where it lies (in file `file_number`).
    pub fn is_misplaced(&self, file_number: u64) -> bool {
        self.position.is_some_and(|position| position != (file_number, self.offset))
    }
}

/// A valid record found where it was not written for: the trace of a misdirected write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misplaced {
    /// Where the record lies.
    pub found_at: u64,
    /// The (file number, offset) it names.
    pub position: Position,
}

/// The outcome of reading a whole log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogContents<'a> {
    /// The valid records before the end or the first bad record, in order.
    pub records: Vec<Record<'a>>,
    /// Where a bad region starts, if the log does not end cleanly.
    pub bad_offset: Option<u64>,
    /// A later valid record proved the bad region had been synced (see the module doc).
    pub bad_region_was_synced: bool,
    /// A valid record exists after the bad region.
    pub valid_record_after_bad: bool,
    /// The first valid record found away from the place it names, if any.
    pub misplaced: Option<Misplaced>,
}

impl LogContents<'_> {
    /// Whether the bad region, if any, is damage rather than a torn unsynced tail.
    pub fn is_corrupt(&self) -> bool {
        self.bad_region_was_synced || self.misplaced.is_some()
    }
}

/// Parses the record at `offset`, or why it is not a valid record.
pub fn parse_record(data: &[u8], offset: usize) -> DecodeResult<(Record<'_>, usize)> {
    if data.len() - offset < HEADER_BYTES_V1 {
        return Err("short record header");
    }
    let kind = data[offset + 8];
    let (header_bytes, batch, marker) = match kind {
        KIND_BATCH | KIND_MARKER => (HEADER_BYTES, KIND_BATCH, KIND_MARKER),
        KIND_SEALED_BATCH => (HEADER_BYTES, KIND_SEALED_BATCH, KIND_MARKER),
        KIND_BATCH_V1 | KIND_MARKER_V1 => (HEADER_BYTES_V1, KIND_BATCH_V1, KIND_MARKER_V1),
        _ => return Err("unknown record kind"),
    };
    if data.len() - offset < header_bytes {
        return Err("short record header");
    }
    let header = &data[offset..offset + header_bytes];
    let length = fixed_u32(header, 4) as usize;
    if length > PAYLOAD_BYTES_MAX || length > data.len() - offset - header_bytes {
        return Err("record length past end of log");
    }
    let end = offset + header_bytes + length;
    if crc32c::crc32c(&data[offset + 4..end]) != fixed_u32(header, 0) {
        return Err("record checksum mismatch");
    }
    if kind == marker && length != 0 {
        return Err("sync marker with a payload");
    }
    let position =
        (header_bytes == HEADER_BYTES).then(|| (fixed_u64(header, 17), fixed_u64(header, 25)));
    let record = Record {
        offset: offset as u64,
        synced_through: fixed_u64(header, 9),
        kind: match kind == batch {
            true if batch == KIND_SEALED_BATCH => KIND_SEALED_BATCH,
            true => KIND_BATCH,
            false => KIND_MARKER,
        },
        position,
        payload: &data[offset + header_bytes..end],
    };
    Ok((record, end))
}

fn fixed_u64(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// Reads every record of the bytes of log file `file_number` (see the module doc for the
/// recovery rule).
pub fn read_log(data: &[u8], file_number: u64) -> LogContents<'_> {
    let mut contents = LogContents {
        records: Vec::new(),
        bad_offset: None,
        bad_region_was_synced: false,
        valid_record_after_bad: false,
        misplaced: None,
    };
    let mut offset = 0;
    while offset < data.len() {
        match parse_record(data, offset) {
            Ok((record, next)) if !record.is_misplaced(file_number) => {
                contents.records.push(record);
                offset = next;
            }
            _ => {
                contents.bad_offset = Some(offset as u64);
                scan_after_bad(data, file_number, offset, &mut contents);
                break;
            }
        }
    }
    // Positive space: every record read lies where it says; negative space: none past a bad one.
    assert!(contents.records.iter().all(|record| !record.is_misplaced(file_number)));
    assert!(contents.bad_offset.is_none_or(|bad| contents.records.iter().all(|r| r.offset < bad)));
    contents
}

/// Looks for valid records from a bad one at `bad` on (the bad offset itself included, as a
/// misplaced record may start there); each try is bounded by the file length, and so is the
/// number of tries.
fn scan_after_bad(data: &[u8], file_number: u64, bad: usize, contents: &mut LogContents<'_>) {
    let mut offset = bad;
    while offset + HEADER_BYTES_V1 <= data.len() {
        let Ok((record, next)) = parse_record(data, offset) else {
            offset += 1;
            continue;
        };
        if record.is_misplaced(file_number) {
            let position = record.position.expect("only positioned records are misplaced");
            contents.misplaced = Some(Misplaced { found_at: offset as u64, position });
            return;
        }
        assert!(offset > bad, "a well-placed valid record at the bad offset is not bad");
        contents.valid_record_after_bad = true;
        if record.synced_through > bad as u64 {
            contents.bad_region_was_synced = true;
            return;
        }
        offset = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u64 = 7;

    /// A log of records `(synced_through, payload)` laid out one after another in file `FILE`.
    fn log(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (synced, payload) in records {
            encode_record(
                &mut out,
                Place { file_number: FILE, buffer_offset: 0 },
                *synced,
                payload,
            );
        }
        out
    }

    #[test]
    fn clean_log_reads_every_record() {
        let data = log(&[(0, b"one"), (0, b"two"), (20, b"")]);
        let contents = read_log(&data, FILE);
        assert_eq!(contents.records.len(), 3);
        assert_eq!(contents.records[1].payload, b"two");
        assert_eq!(contents.records[1].position, Some((FILE, HEADER_BYTES as u64 + 3)));
        assert_eq!(contents.bad_offset, None);
        assert!(!contents.is_corrupt());
    }

    #[test]
    fn torn_tail_stops_cleanly() {
        let data = log(&[(0, b"one"), (0, b"two-two-two")]);
        for cut in HEADER_BYTES + 3 + 1..data.len() {
            let contents = read_log(&data[..cut], FILE);
            assert_eq!(contents.records.len(), 1, "cut {cut}");
            assert_eq!(contents.bad_offset, Some(HEADER_BYTES as u64 + 3));
            assert!(!contents.is_corrupt(), "cut {cut}");
        }
    }

    #[test]
    fn bad_record_before_a_synced_one_is_corruption() {
        let first = HEADER_BYTES + 5;
        let mut data = log(&[(0, b"first"), (first as u64, b"second"), (0, b"")]);
        data[HEADER_BYTES + 1] ^= 0x40;
        let contents = read_log(&data, FILE);
        assert_eq!(contents.bad_offset, Some(0));
        assert!(contents.bad_region_was_synced);
        assert!(contents.misplaced.is_none());
    }

    #[test]
    fn zeroed_hole_in_unsynced_tail_is_a_torn_tail() {
        let mut data = log(&[(0, b"first"), (0, b"second"), (0, b"third")]);
        let second = HEADER_BYTES + 5;
        data[second..second + HEADER_BYTES + 6].fill(0);
        let contents = read_log(&data, FILE);
        assert_eq!(contents.records.len(), 1);
        assert!(contents.valid_record_after_bad);
        assert!(!contents.is_corrupt());
    }

    /// Goal: the last record moved by a misdirected write, forward (leaving a zeroed hole where
    /// it belonged) or backward (over earlier records), is corruption naming where it lies,
    /// never a torn tail. Method: move it by whole sectors as the simulated disk does.
    #[test]
    fn a_misdirected_last_record_is_corruption_not_a_torn_tail() {
        let data = log(&[(0, b"first"), (0, b"second-record"), (0, b"the synced one")]);
        let last = 2 * HEADER_BYTES + 5 + 13;
        let record = data[last..].to_vec();
        for distance in [512usize, 1024, 4096] {
            let mut forward = data[..last].to_vec();
            forward.resize(last + distance, 0);
            forward.extend_from_slice(&record);
            let contents = read_log(&forward, FILE);
            assert_eq!(contents.bad_offset, Some(last as u64));
            let misplaced = contents.misplaced.expect("forward move found");
            assert_eq!(
                misplaced,
                Misplaced { found_at: (last + distance) as u64, position: (FILE, last as u64) }
            );
        }
        let mut padded = data[..last].to_vec();
        padded.resize(600, 0x55);
        let mut backward = padded.clone();
        backward[..record.len()].copy_from_slice(&record);
        let contents = read_log(&backward, FILE);
        assert_eq!(contents.bad_offset, Some(0));
        assert_eq!(contents.misplaced.map(|m| m.found_at), Some(0));
        assert!(contents.is_corrupt());
    }

    #[test]
    fn a_record_of_another_log_is_misplaced() {
        let data = log(&[(0, b"first")]);
        let contents = read_log(&data, FILE + 1);
        assert!(contents.records.is_empty());
        assert_eq!(contents.misplaced.map(|m| m.position), Some((FILE, 0)));
    }

    #[test]
    fn version_1_records_still_read() {
        let mut data = Vec::new();
        encode_record_v1(&mut data, 0, b"old");
        let first = data.len() as u64;
        encode_record(&mut data, Place { file_number: FILE, buffer_offset: 0 }, first, b"new");
        let contents = read_log(&data, FILE);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.records[0].position, None);
        assert_eq!(contents.records[0].kind, KIND_BATCH);
        assert_eq!(contents.records[1].payload, b"new");
        assert!(contents.bad_offset.is_none());
    }
}
