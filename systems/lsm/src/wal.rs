//! The write-ahead log: length- and CRC32C-framed records, appended and fsynced before a write
//! is acknowledged, replayed at open.
//!
//! ## Format (version 1, little-endian)
//!
//! A log file is a sequence of records, each
//! `| crc u32 | length u32 | kind u8 | synced_through u64 | payload (length bytes) |`.
//! `crc` is CRC32C over everything after it (length, kind, synced_through, payload). `kind` is
//! 1 (a write batch, see `batch.rs`) or 2 (a sync marker with an empty payload, appended and
//! synced by a clean close so that every earlier record is provably synced). `synced_through`
//! is the file length that was durable (fsynced) when the record was written.
//!
//! ## Recovery rule
//!
//! Records are read in order until the first bad one (short header, length past the end, CRC
//! mismatch, unknown kind). A crash can only leave a bad region in the part of the file written
//! after the last fsync, so the reader then scans the rest of the file for any valid record.
//! If some later valid record says the file was durable past the bad offset
//! (`synced_through > offset`), the bad bytes were once synced: that is corruption, reported
//! as an error and never skipped. Otherwise the bad region is a torn tail and replay stops there.
//! A record with a good CRC whose payload does not decode is always corruption.

use crate::coding::{DecodeResult, fixed_u32};

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 4 + 4 + 1 + 8;
/// The largest payload a record may carry.
pub const PAYLOAD_BYTES_MAX: usize = crate::batch::BATCH_BYTES_MAX;
/// Kind byte of a record holding one write batch.
pub const KIND_BATCH: u8 = 1;
/// Kind byte of a sync marker: no payload; says the file was durable through `synced_through`.
pub const KIND_MARKER: u8 = 2;

/// Appends one framed batch record to `out`.
pub fn encode_record(out: &mut Vec<u8>, synced_through: u64, payload: &[u8]) {
    encode_kind(out, KIND_BATCH, synced_through, payload);
}

/// Appends a sync marker saying the log is durable through `synced_through`.
pub fn encode_marker(out: &mut Vec<u8>, synced_through: u64) {
    encode_kind(out, KIND_MARKER, synced_through, &[]);
}

fn encode_kind(out: &mut Vec<u8>, kind: u8, synced_through: u64, payload: &[u8]) {
    encode_with(out, kind, synced_through, |out| out.extend_from_slice(payload));
}

/// Appends a batch record whose payload `fill` writes straight into `out` (no extra copy).
pub fn encode_record_with(out: &mut Vec<u8>, synced_through: u64, fill: impl FnOnce(&mut Vec<u8>)) {
    encode_with(out, KIND_BATCH, synced_through, fill);
}

fn encode_with(out: &mut Vec<u8>, kind: u8, synced_through: u64, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    out.extend_from_slice(&synced_through.to_le_bytes());
    fill(out);
    let payload_len = out.len() - start - HEADER_BYTES;
    assert!(payload_len <= PAYLOAD_BYTES_MAX);
    out[start + 4..start + 8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One valid record found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset of the record's header in the file.
    pub offset: u64,
    /// The durable length the writer knew of when it wrote this record.
    pub synced_through: u64,
    /// `KIND_BATCH` or `KIND_MARKER`.
    pub kind: u8,
    /// The payload bytes.
    pub payload: &'a [u8],
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
}

/// Parses the record at `offset`, or why it is not a valid record.
pub fn parse_record(data: &[u8], offset: usize) -> DecodeResult<(Record<'_>, usize)> {
    if data.len() - offset < HEADER_BYTES {
        return Err("short record header");
    }
    let header = &data[offset..offset + HEADER_BYTES];
    let length = fixed_u32(header, 4) as usize;
    if length > PAYLOAD_BYTES_MAX || length > data.len() - offset - HEADER_BYTES {
        return Err("record length past end of log");
    }
    let end = offset + HEADER_BYTES + length;
    if crc32c::crc32c(&data[offset + 4..end]) != fixed_u32(header, 0) {
        return Err("record checksum mismatch");
    }
    let kind = header[8];
    if kind != KIND_BATCH && !(kind == KIND_MARKER && length == 0) {
        return Err("unknown record kind");
    }
    let mut synced = [0u8; 8];
    synced.copy_from_slice(&header[9..17]);
    let record = Record {
        offset: offset as u64,
        synced_through: u64::from_le_bytes(synced),
        kind,
        payload: &data[offset + HEADER_BYTES..end],
    };
    Ok((record, end))
}

/// Reads every record of a log file's bytes (see the module doc for the recovery rule).
pub fn read_log(data: &[u8]) -> LogContents<'_> {
    let mut contents = LogContents {
        records: Vec::new(),
        bad_offset: None,
        bad_region_was_synced: false,
        valid_record_after_bad: false,
    };
    let mut offset = 0;
    while offset < data.len() {
        match parse_record(data, offset) {
            Ok((record, next)) => {
                contents.records.push(record);
                offset = next;
            }
            Err(_) => {
                contents.bad_offset = Some(offset as u64);
                scan_after_bad(data, offset, &mut contents);
                break;
            }
        }
    }
    contents
}

/// Looks for valid records after a bad one at `bad`; each try is bounded by the file length,
/// and so is the number of tries.
fn scan_after_bad(data: &[u8], bad: usize, contents: &mut LogContents<'_>) {
    let mut offset = bad + 1;
    while offset + HEADER_BYTES <= data.len() {
        if let Ok((record, next)) = parse_record(data, offset) {
            contents.valid_record_after_bad = true;
            if record.synced_through > bad as u64 {
                contents.bad_region_was_synced = true;
                return;
            }
            offset = next;
        } else {
            offset += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (synced, payload) in records {
            encode_record(&mut out, *synced, payload);
        }
        out
    }

    #[test]
    fn clean_log_reads_every_record() {
        let data = log(&[(0, b"one"), (0, b"two"), (20, b"")]);
        let contents = read_log(&data);
        assert_eq!(contents.records.len(), 3);
        assert_eq!(contents.records[1].payload, b"two");
        assert_eq!(contents.bad_offset, None);
    }

    #[test]
    fn torn_tail_stops_cleanly() {
        let data = log(&[(0, b"one"), (0, b"two-two-two")]);
        for cut in HEADER_BYTES + 3 + 1..data.len() {
            let contents = read_log(&data[..cut]);
            assert_eq!(contents.records.len(), 1, "cut {cut}");
            assert_eq!(contents.bad_offset, Some(HEADER_BYTES as u64 + 3));
            assert!(!contents.bad_region_was_synced);
        }
    }

    #[test]
    fn bad_record_before_a_synced_one_is_corruption() {
        let first = HEADER_BYTES + 5;
        let mut data = log(&[(0, b"first"), (first as u64, b"second"), (0, b"")]);
        data[HEADER_BYTES + 1] ^= 0x40;
        let contents = read_log(&data);
        assert_eq!(contents.bad_offset, Some(0));
        assert!(contents.bad_region_was_synced);
    }

    #[test]
    fn zeroed_hole_in_unsynced_tail_is_a_torn_tail() {
        let mut data = log(&[(0, b"first"), (0, b"second"), (0, b"third")]);
        let second = HEADER_BYTES + 5;
        data[second..second + HEADER_BYTES + 6].fill(0);
        let contents = read_log(&data);
        assert_eq!(contents.records.len(), 1);
        assert!(contents.valid_record_after_bad);
        assert!(!contents.bad_region_was_synced);
    }
}
