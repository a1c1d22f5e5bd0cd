//! SSTables: immutable sorted files of internal keys, built once by a flush or a compaction and
//! read through a block cache.
//!
//! ## Format (version 3, or 4 when encrypted; little-endian; `docs/format.md` has the details)
//!
//! `| data block + trailer |* | filter block + trailer | index block + trailer | footer |`
//!
//! - Each block is followed by a 5-byte trailer `| compression u8 | crc32c u32 |`; the CRC covers
//!   the stored block bytes and the compression byte, then (version 3) the table's file number
//!   and the block's offset as two u64s that are not stored: a block read anywhere but where it
//!   was written for fails its check. Compression 0 is none; 1 is LZ4 with the uncompressed
//!   length prepended as a u32 (`lz4_flex::compress_prepend_size`).
//! - Data blocks (see `block.rs`) map encoded internal keys (see `key.rs`) to values; a
//!   tombstone has an empty value.
//! - The filter block is one bloom filter over the table's user keys (see `bloom.rs`): a
//!   blocked filter in version 2, a legacy one in version 1 (still read).
//! - The index block (block format) maps each data block's last internal key to
//!   `| offset varint | stored size varint |` of that block (size without the trailer).
//! - The footer is 48 bytes: `| filter offset u64 | filter size u32 | index offset u64 |
//!   index size u32 | entry count u64 | format version u32 | crc32c u32 | magic u64 |`, the CRC
//!   over the 36 bytes before it, then (version 3) the file number and the footer's offset.
//! - Version 4 (an encrypted store) is version 3 with every block's stored bytes (data,
//!   filter and index blocks, compressed or not) sealed (`crypto.rs`): `| nonce | ciphertext |
//!   tag |` in place of the stored bytes, the associated data the block's position
//!   (`crypto::position(Table, file number, offset)`) followed by its compression byte. The
//!   trailer and its CRC (over the sealed bytes) and the footer stay as in version 3.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use sim::File;

use crate::block::{Block, BlockBuilder, BlockPosition};
use crate::bloom::{self, Bloom, FilterKind};
use crate::cache::BlockCache;
use crate::coding::{DecodeResult, Reader, fixed_u32, put_varint};
use crate::crypto::{Domain, POSITION_BYTES, Sealer, position};
use crate::error::{Error, Result};
use crate::key::{
    Entry, KIND_DELETE, KIND_PUT, SEQUENCE_MAX, compare_internal, compare_internal_to,
    encode_internal, split_internal, user_key,
};

/// Bytes of the footer.
pub const FOOTER_BYTES: usize = 48;
const _: () = assert!(FOOTER_BYTES == 8 + 4 + 8 + 4 + 8 + 4 + 4 + 8);
/// The footer's magic number ("GMLSMSST").
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"GMLSMSST");
/// The table format version this code writes (it also reads versions 2 and 1).
pub const TABLE_FORMAT_VERSION: u32 = 3;
/// The table format version of an encrypted store: version 3 with every block sealed.
pub const TABLE_FORMAT_VERSION_ENCRYPTED: u32 = 4;
/// The previous table format version, still read: the same layout, checksums without position.
pub const TABLE_FORMAT_VERSION_UNSEALED: u32 = 2;
/// The older table format version still read: the same layout with a legacy bloom filter.
pub const TABLE_FORMAT_VERSION_LEGACY: u32 = 1;
/// Bytes of the trailer after every block.
pub const BLOCK_TRAILER_BYTES: usize = 5;
/// The largest block (compressed or not) a reader accepts.
pub const BLOCK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Reads of a block whose checksum fails before it is reported as corruption (a flipped bit on
/// the way from the disk is transient; one in the stored bytes is not).
pub const READ_ATTEMPTS_MAX: usize = 3;

/// How data blocks are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// LZ4 (`lz4_flex` block format), kept only when it saves at least an eighth.
    Lz4,
}

/// What a table builder needs to know.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// Target uncompressed size of a data block.
    pub block_bytes: usize,
    /// Entries between restart points.
    pub restart_interval: usize,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: u32,
    /// Data block compression.
    pub compression: Compression,
    /// Seals every block (format version 4) when the store is encrypted.
    pub sealer: Option<Sealer>,
}

/// The key range and size of a built table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSummary {
    /// The smallest internal key.
    pub smallest: Vec<u8>,
    /// The largest internal key.
    pub largest: Vec<u8>,
    /// Entries written.
    pub entry_count: u64,
}

/// Builds a table's bytes in order. Used alone it holds the whole file and `finish` returns
/// it; a `TableWriter` instead drains the finished blocks (`buffered`, `consume_buffered`) to
/// the file as they accumulate, so only the unwritten tail is in memory.
#[derive(Debug)]
pub struct TableBuilder {
    options: TableOptions,
    // Finished bytes not yet taken out; they start at file offset `consumed`.
    out: Vec<u8>,
    consumed: u64,
    data: BlockBuilder,
    index: BlockBuilder,
    hashes: Vec<u64>,
    last_user_key: Option<Vec<u8>>,
    smallest: Option<Vec<u8>>,
    entry_count: u64,
    key_buffer: Vec<u8>,
    format_version: u32,
    // The file number the table is written as; version-3 checksums cover it.
    file_number: u64,
}

impl TableBuilder {
    /// An empty builder of the table that will be file `file_number`.
    pub fn new(options: TableOptions, file_number: u64) -> TableBuilder {
        let format_version = match options.sealer {
            Some(_) => TABLE_FORMAT_VERSION_ENCRYPTED,
            None => TABLE_FORMAT_VERSION,
        };
        TableBuilder {
            data: BlockBuilder::new(options.restart_interval),
            options,
            out: Vec::new(),
            consumed: 0,
            index: BlockBuilder::new(1),
            hashes: Vec::new(),
            last_user_key: None,
            smallest: None,
            entry_count: 0,
            key_buffer: Vec::new(),
            format_version,
            file_number,
        }
    }

    /// A builder of table file 1 in an older format version (tests of the reader's
    /// compatibility).
    #[cfg(test)]
    fn with_version(options: TableOptions, format_version: u32) -> TableBuilder {
        TableBuilder { format_version, ..TableBuilder::new(options, 1) }
    }

    /// Appends an entry; entries must come in internal-key order.
    pub fn add(&mut self, entry: &Entry) {
        let kind = if entry.value.is_some() { KIND_PUT } else { KIND_DELETE };
        self.key_buffer.clear();
        encode_internal(&mut self.key_buffer, &entry.key, entry.sequence, kind);
        if !self.data.is_empty() {
            let order = compare_internal(self.data.last_key(), &self.key_buffer);
            assert_eq!(order, Ordering::Less, "table entries out of order");
        }
        if self.last_user_key.as_deref() != Some(&entry.key[..]) {
            self.hashes.push(bloom::key_hash(&entry.key));
            self.last_user_key = Some(entry.key.clone());
        }
        if self.smallest.is_none() {
            self.smallest = Some(self.key_buffer.clone());
        }
        let value = entry.value.as_deref().unwrap_or(&[]);
        self.data.add(&self.key_buffer, value);
        self.entry_count += 1;
        if self.data.size_estimate() >= self.options.block_bytes {
            self.finish_data_block();
        }
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// Approximate file size so far.
    pub fn size_estimate(&self) -> usize {
        self.consumed as usize + self.out.len() + self.data.size_estimate()
    }

    /// Finished bytes not yet taken out with `consume_buffered`; they belong at file offset
    /// `consumed_bytes()`.
    pub fn buffered(&self) -> &[u8] {
        &self.out
    }

    /// Bytes taken out so far (the file offset of `buffered`).
    pub fn consumed_bytes(&self) -> u64 {
        self.consumed
    }

    /// Marks the `buffered` bytes as written elsewhere and forgets them (keeping the space).
    pub fn consume_buffered(&mut self) {
        self.consumed += self.out.len() as u64;
        self.out.clear();
    }

    fn finish_data_block(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let last_key = self.data.last_key().to_vec();
        let raw = self.data.finish();
        let seal = self.seal();
        let (offset, size) = write_block(
            &mut self.out,
            (self.consumed, seal),
            &raw,
            (self.options.compression, self.options.sealer.as_ref()),
        );
        let mut handle = Vec::new();
        put_varint(&mut handle, offset);
        put_varint(&mut handle, size);
        self.index.add(&last_key, &handle);
    }

    /// The file number version-3 checksums cover, or `None` for an older version.
    fn seal(&self) -> Option<u64> {
        is_sealed(self.format_version).then_some(self.file_number)
    }

    /// The table's bytes not yet consumed (all of them if nothing was) and its summary. Panics
    /// if no entry was added.
    pub fn finish(mut self) -> (Vec<u8>, TableSummary) {
        assert!(self.entry_count > 0, "an empty table");
        let largest = self.data.last_key().to_vec();
        let largest = if self.data.is_empty() { self.index.last_key().to_vec() } else { largest };
        self.finish_data_block();
        let kind = filter_kind(self.format_version).expect("a known format version");
        let filter = bloom::build(&self.hashes, self.options.bloom_bits_per_key, kind);
        let at = (self.consumed, self.seal());
        let plain = (Compression::None, self.options.sealer.as_ref());
        let (filter_offset, filter_size) = write_block(&mut self.out, at, &filter, plain);
        let index = self.index.finish();
        let (index_offset, index_size) = write_block(&mut self.out, at, &index, plain);
        let footer_offset = self.consumed + self.out.len() as u64;
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(&filter_offset.to_le_bytes());
        footer.extend_from_slice(&(filter_size as u32).to_le_bytes());
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(index_size as u32).to_le_bytes());
        footer.extend_from_slice(&self.entry_count.to_le_bytes());
        footer.extend_from_slice(&self.format_version.to_le_bytes());
        let crc = sealed_crc(crc32c::crc32c(&footer), self.seal(), footer_offset);
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        assert_eq!(footer.len(), FOOTER_BYTES);
        self.out.extend_from_slice(&footer);
        let smallest = self.smallest.expect("an entry was added");
        (self.out, TableSummary { smallest, largest, entry_count: self.entry_count })
    }
}

/// Whether tables of `version` seal their checksums with their position.
fn is_sealed(version: u32) -> bool {
    version >= TABLE_FORMAT_VERSION
}

/// `crc` extended with the position (file number, offset) of what it covers, if `seal` names
/// a file number (version 3); `crc` itself otherwise.
fn sealed_crc(crc: u32, seal: Option<u64>, offset: u64) -> u32 {
    let Some(file_number) = seal else { return crc };
    let mut position = [0u8; 16];
    position[..8].copy_from_slice(&file_number.to_le_bytes());
    position[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc, &position)
}

/// The associated data of a sealed block: its position, then its compression byte.
fn block_position(file_number: u64, offset: u64, compression: u8) -> [u8; POSITION_BYTES + 1] {
    let mut bytes = [0u8; POSITION_BYTES + 1];
    bytes[..POSITION_BYTES].copy_from_slice(&position(Domain::Table, file_number, offset));
    bytes[POSITION_BYTES] = compression;
    bytes
}

/// Appends a block and its trailer to `out`, which starts at file offset `base`, its checksum
/// sealed with the file number `seal` if given, its bytes sealed by `sealer` if given (which
/// needs `seal`); returns (offset, stored size without trailer).
fn write_block(
    out: &mut Vec<u8>,
    (base, seal): (u64, Option<u64>),
    raw: &[u8],
    (compression, sealer): (Compression, Option<&Sealer>),
) -> (u64, u64) {
    let offset = base + out.len() as u64;
    let compressed = match compression {
        Compression::Lz4 => Some(lz4_flex::compress_prepend_size(raw)),
        Compression::None => None,
    };
    let (stored, kind) = match &compressed {
        Some(bytes) if bytes.len() < raw.len() - raw.len() / 8 => (bytes.as_slice(), 1u8),
        _ => (raw, 0u8),
    };
    let start = out.len();
    match sealer {
        Some(sealer) => {
            let file_number = seal.expect("an encrypted table seals its checksums too");
            sealer.seal(&block_position(file_number, offset, kind), stored, out);
        }
        None => out.extend_from_slice(stored),
    }
    let stored_bytes = out.len() - start;
    out.push(kind);
    let crc = sealed_crc(crc32c::crc32c(&out[start..]), seal, offset);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(out.len() - start, stored_bytes + BLOCK_TRAILER_BYTES);
    (offset, stored_bytes as u64)
}

/// Buffered table bytes a `TableWriter` lets accumulate before it writes them out.
pub const TABLE_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Streams a table to its file while it is built: memory is bounded by the write buffer, the
/// filter's key hashes and the index, not the table size.
#[derive(Debug)]
pub struct TableWriter<F: File> {
    file: F,
    builder: TableBuilder,
}

impl<F: File> TableWriter<F> {
    /// A writer of a new table into the empty `file`, table file number `file_number`.
    pub fn new(file: F, file_number: u64, options: TableOptions) -> TableWriter<F> {
        TableWriter { file, builder: TableBuilder::new(options, file_number) }
    }

    /// Appends an entry (in internal-key order), writing out a full buffer.
    pub async fn add(&mut self, entry: &Entry) -> Result<()> {
        self.builder.add(entry);
        if self.builder.buffered().len() >= TABLE_WRITE_BUFFER_BYTES {
            self.drain().await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        let offset = self.builder.consumed_bytes();
        self.file.write_at(offset, self.builder.buffered()).await?;
        self.builder.consume_buffered();
        Ok(())
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u64 {
        self.builder.entry_count()
    }

    /// Approximate file size so far.
    pub fn size_estimate(&self) -> usize {
        self.builder.size_estimate()
    }

    /// Writes the rest of the table and syncs the file; returns the file, its size and the
    /// table's summary. Panics if no entry was added.
    pub async fn finish(self) -> Result<(F, u64, TableSummary)> {
        let TableWriter { file, builder } = self;
        let offset = builder.consumed_bytes();
        let (tail, summary) = builder.finish();
        file.write_at(offset, &tail).await?;
        file.sync().await?;
        Ok((file, offset + tail.len() as u64, summary))
    }
}

/// Where a block was read from, for a sealed checksum: (file number, offset), or `None` for a
/// table of a version before 3.
type Seal = Option<(u64, u64)>;

/// Checks a block's trailer, opens it if `sealer` is given, and decompresses it.
fn decode_block(stored: &[u8], seal: Seal, sealer: Option<&Sealer>) -> DecodeResult<Vec<u8>> {
    decode_block_owned(stored, seal, sealer, |body| body.to_vec())
}

/// The block of `body` stored with compression byte `compression`.
fn decompress(body: &[u8], compression: u8) -> DecodeResult<Option<Vec<u8>>> {
    match compression {
        0 => Ok(None),
        1 => {
            if body.len() < 4 || fixed_u32(body, 0) as usize > BLOCK_BYTES_MAX {
                return Err("compressed block length out of range");
            }
            lz4_flex::decompress_size_prepended(body).map(Some).map_err(|_| "bad lz4 block")
        }
        _ => Err("unknown block compression"),
    }
}

/// Like `decode_block`, taking the bytes of an uncompressed block from `take` (given the block
/// body) only after the checksum matched, so a caller owning the read buffer can reuse it.
fn decode_block_owned(
    stored: &[u8],
    seal: Seal,
    sealer: Option<&Sealer>,
    take: impl FnOnce(&[u8]) -> Vec<u8>,
) -> DecodeResult<Vec<u8>> {
    if stored.len() < BLOCK_TRAILER_BYTES {
        return Err("block shorter than its trailer");
    }
    let body_len = stored.len() - 4;
    let crc = crc32c::crc32c(&stored[..body_len]);
    let (file_number, offset) = (seal.map(|(number, _)| number), seal.map_or(0, |(_, at)| at));
    if sealed_crc(crc, file_number, offset) != fixed_u32(stored, body_len) {
        return Err("block checksum mismatch (damaged, or written for another place)");
    }
    let body = &stored[..body_len - 1];
    let compression = stored[body_len - 1];
    let Some(sealer) = sealer else {
        return Ok(decompress(body, compression)?.unwrap_or_else(|| take(body)));
    };
    let (file_number, offset) = seal.ok_or("an encrypted block without a position")?;
    let opened = sealer
        .open(&block_position(file_number, offset, compression), body)
        .ok_or("sealed block does not open (damaged, moved, or sealed under another key)")?;
    Ok(decompress(&opened, compression)?.unwrap_or(opened))
}

/// Checks and decodes a data block read into `buffer`; an uncompressed block takes the
/// buffer's bytes without a copy (leaving `buffer` empty).
fn decode_data_block(
    buffer: &mut Vec<u8>,
    seal: Seal,
    sealer: Option<&Sealer>,
) -> DecodeResult<Block> {
    let mut owned = None;
    let decoded = decode_block_owned(buffer, seal, sealer, |body| {
        owned = Some(body.len());
        Vec::new()
    })?;
    let raw = match owned {
        Some(body_len) => {
            let mut raw = std::mem::take(buffer);
            raw.truncate(body_len);
            raw
        }
        None => decoded,
    };
    Block::new(raw)
}

/// Where a block is: offset and stored size (without trailer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handle {
    offset: u64,
    size: u64,
}

#[derive(Debug)]
struct IndexEntry {
    last_key: Vec<u8>,
    handle: Handle,
}

/// The decoded footer.
#[derive(Debug)]
struct Footer {
    filter: Handle,
    index: Handle,
    entry_count: u64,
    filter_kind: FilterKind,
    sealed: bool,
    encrypted: bool,
}

/// The bloom filter kind of a table format version, if the version is known.
fn filter_kind(version: u32) -> Option<FilterKind> {
    match version {
        TABLE_FORMAT_VERSION_ENCRYPTED | TABLE_FORMAT_VERSION | TABLE_FORMAT_VERSION_UNSEALED => {
            Some(FilterKind::Blocked)
        }
        TABLE_FORMAT_VERSION_LEGACY => Some(FilterKind::Legacy),
        _ => None,
    }
}

/// Decodes the footer of table `file_number`, read at `offset`.
fn decode_footer(bytes: &[u8], file_number: u64, offset: u64) -> DecodeResult<Footer> {
    let mut reader = Reader::new(bytes);
    let filter = Handle { offset: reader.u64()?, size: u64::from(reader.u32()?) };
    let index = Handle { offset: reader.u64()?, size: u64::from(reader.u32()?) };
    let entry_count = reader.u64()?;
    let version = reader.u32()?;
    let crc = reader.u32()?;
    let magic = reader.u64()?;
    if magic != TABLE_MAGIC {
        return Err("bad table magic");
    }
    let sealed = is_sealed(version);
    if crc != sealed_crc(crc32c::crc32c(&bytes[..36]), sealed.then_some(file_number), offset) {
        return Err("footer checksum mismatch (damaged, or written for another place)");
    }
    let filter_kind = filter_kind(version).ok_or("unknown table format version")?;
    let encrypted = version == TABLE_FORMAT_VERSION_ENCRYPTED;
    Ok(Footer { filter, index, entry_count, filter_kind, sealed, encrypted })
}

fn decode_index(block: &Block, file_bytes: u64) -> DecodeResult<Vec<IndexEntry>> {
    let mut index = Vec::new();
    for (key, value) in block.entries()? {
        split_internal(&key)?;
        let mut reader = Reader::new(block.value(&value));
        let handle = Handle { offset: reader.varint()?, size: reader.varint()? };
        let end = handle.offset.checked_add(handle.size + BLOCK_TRAILER_BYTES as u64);
        if end.is_none_or(|end| end > file_bytes) || handle.size as usize > BLOCK_BYTES_MAX {
            return Err("index handle out of range");
        }
        if index.last().is_some_and(|last: &IndexEntry| {
            compare_internal(&last.last_key, &key) != Ordering::Less
        }) {
            return Err("index keys out of order");
        }
        index.push(IndexEntry { last_key: key, handle });
    }
    if index.is_empty() {
        return Err("empty index");
    }
    Ok(index)
}

/// The 8 user-key bytes after `skip`, big-endian and zero-padded: if one user key sorts before
/// another, its word is at most the other's.
fn key_word(user: &[u8], skip: usize) -> u64 {
    let tail = user.get(skip..).unwrap_or_default();
    let mut bytes = [0u8; 8];
    let count = tail.len().min(8);
    bytes[..count].copy_from_slice(&tail[..count]);
    u64::from_be_bytes(bytes)
}

/// The user-key prefix shared by every key of a sorted, non-empty index and each entry's word
/// after it.
fn index_words(index: &[IndexEntry]) -> (Vec<u8>, Vec<u64>) {
    let first = user_key(&index[0].last_key);
    let last = user_key(&index[index.len() - 1].last_key);
    let skip = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    let words = index.iter().map(|entry| key_word(user_key(&entry.last_key), skip)).collect();
    (first[..skip].to_vec(), words)
}

/// The first entry of `index` (with its `index_words`) whose key is at or after (`key`,
/// `sequence`, `KIND_PUT`), or `index.len()`.
fn search_index(
    index: &[IndexEntry],
    prefix: &[u8],
    words: &[u64],
    key: &[u8],
    sequence: u64,
) -> usize {
    let (mut low, mut high) = (0, index.len());
    if key.starts_with(prefix) {
        // Index keys whose word is below the target's sort before it, those above after it.
        let target = key_word(key, prefix.len());
        low = words.partition_point(|&word| word < target);
        high = low + words[low..].partition_point(|&word| word <= target);
    }
    let before = |entry: &IndexEntry| {
        compare_internal_to(&entry.last_key, key, sequence, KIND_PUT) == Ordering::Less
    };
    low + index[low..high].partition_point(before)
}

/// An open SSTable.
#[derive(Debug)]
pub struct Table<F: File> {
    file: F,
    number: u64,
    name: String,
    index: Vec<IndexEntry>,
    // The user-key prefix every index key shares, and per index entry the next 8 user-key bytes
    // (big-endian, zero-padded): a binary search over these compact numbers narrows a lookup to
    // the few entries whose full keys need comparing.
    index_prefix: Vec<u8>,
    index_words: Vec<u64>,
    bloom: Bloom,
    entry_count: u64,
    // Whether block checksums are sealed with their position (version 3 on).
    sealed: bool,
    // The store's key, if the table's blocks are sealed (version 4).
    sealer: Option<Sealer>,
    cache: Arc<BlockCache>,
    // Lookups of keys the table does not hold: rejected by the bloom filter, or let through.
    bloom_negative_count: AtomicU64,
    bloom_false_positive_count: AtomicU64,
}

/// Reads `size` bytes at `offset` into `buffer`, retrying while `check` fails; the last
/// failure otherwise. The buffer's bytes are overwritten: a recycled one spares zeroing a new
/// one.
async fn read_checked<F: File, T>(
    mut buffer: Vec<u8>,
    file: &F,
    name: &str,
    offset: u64,
    size: usize,
    check: impl Fn(&mut Vec<u8>) -> DecodeResult<T>,
) -> Result<T> {
    let mut reason = "unread";
    for _ in 0..READ_ATTEMPTS_MAX {
        buffer.resize(size, 0);
        file.read_exact_at(offset, &mut buffer).await.map_err(|error| {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corruption(name, offset, "block past end of file")
            } else {
                Error::Io(error)
            }
        })?;
        match check(&mut buffer) {
            Ok(value) => return Ok(value),
            Err(why) => reason = why,
        }
    }
    Err(Error::corruption(name, offset, reason))
}

impl<F: File> Table<F> {
    /// Opens table `number` stored as `name` in `file`: reads and checks footer, index, filter.
    /// `sealer` is the store's key if it is encrypted: then every table must be of version 4,
    /// else none may be.
    pub async fn open(
        file: F,
        number: u64,
        name: String,
        cache: Arc<BlockCache>,
        sealer: Option<Sealer>,
    ) -> Result<Self> {
        let file_bytes = file.len().await?;
        if file_bytes < FOOTER_BYTES as u64 {
            return Err(Error::corruption(&name, 0, "table shorter than its footer"));
        }
        let footer_offset = file_bytes - FOOTER_BYTES as u64;
        let footer = read_checked(Vec::new(), &file, &name, footer_offset, FOOTER_BYTES, |bytes| {
            decode_footer(bytes, number, footer_offset)
        })
        .await?;
        if footer.encrypted != sealer.is_some() {
            let reason = match footer.encrypted {
                true => "an encrypted table in a store opened without a key",
                false => "an unencrypted table in an encrypted store",
            };
            return Err(Error::corruption(&name, footer_offset, reason));
        }
        let limit = footer_offset;
        for handle in [footer.filter, footer.index] {
            let end = handle.offset.checked_add(handle.size + BLOCK_TRAILER_BYTES as u64);
            if end.is_none_or(|end| end > limit) || handle.size as usize > BLOCK_BYTES_MAX {
                return Err(Error::corruption(&name, footer_offset, "footer handle out of range"));
            }
        }
        let seal = |offset: u64| footer.sealed.then_some((number, offset));
        let (offset, size) =
            (footer.index.offset, footer.index.size as usize + BLOCK_TRAILER_BYTES);
        let index = read_checked(Vec::new(), &file, &name, offset, size, |bytes| {
            decode_index(&Block::new(decode_block(bytes, seal(offset), sealer.as_ref())?)?, limit)
        })
        .await?;
        let (offset, size) =
            (footer.filter.offset, footer.filter.size as usize + BLOCK_TRAILER_BYTES);
        let bloom = read_checked(Vec::new(), &file, &name, offset, size, |bytes| {
            Bloom::new(decode_block(bytes, seal(offset), sealer.as_ref())?, footer.filter_kind)
        })
        .await?;
        let entry_count = footer.entry_count;
        let (index_prefix, index_words) = index_words(&index);
        Ok(Table {
            file,
            number,
            name,
            index,
            index_prefix,
            index_words,
            bloom,
            entry_count,
            sealed: footer.sealed,
            sealer,
            cache,
            bloom_negative_count: AtomicU64::new(0),
            bloom_false_positive_count: AtomicU64::new(0),
        })
    }

    /// The table's number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Entries in the table.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// Lookups of absent keys so far: (rejected by the bloom filter, let through by it). The
    /// false-positive rate is the second over their sum.
    pub fn bloom_counts(&self) -> (u64, u64) {
        let negative = self.bloom_negative_count.load(AtomicOrdering::Relaxed);
        (negative, self.bloom_false_positive_count.load(AtomicOrdering::Relaxed))
    }

    fn count_false_positive(&self) {
        self.bloom_false_positive_count.fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// The first data block whose last key is at or after (`key`, `sequence`, `KIND_PUT`), or
    /// the block count if none is.
    fn find_block(&self, key: &[u8], sequence: u64) -> usize {
        search_index(&self.index, &self.index_prefix, &self.index_words, key, sequence)
    }

    /// Number of data blocks.
    fn block_count(&self) -> usize {
        self.index.len()
    }

    async fn read_block(&self, block_index: usize) -> Result<Arc<Block>> {
        self.read_block_with(block_index, true).await
    }

    /// Reads a data block through the cache; `fill_cache` false leaves a missed block out of it
    /// (compaction reads each block once and should not evict what readers use).
    async fn read_block_with(&self, block_index: usize, fill_cache: bool) -> Result<Arc<Block>> {
        let handle = self.index[block_index].handle;
        if let Some(block) = self.cache.get(self.number, handle.offset) {
            return Ok(block);
        }
        let size = handle.size as usize + BLOCK_TRAILER_BYTES;
        let buffer = self.cache.take_buffer();
        let (file, name) = (&self.file, &self.name);
        let seal = self.sealed.then_some((self.number, handle.offset));
        let sealer = self.sealer.as_ref();
        let decode = |buffer: &mut Vec<u8>| decode_data_block(buffer, seal, sealer);
        let block = read_checked(buffer, file, name, handle.offset, size, decode).await?;
        let block = Arc::new(block);
        if fill_cache {
            self.cache.insert(self.number, handle.offset, Arc::clone(&block));
        }
        Ok(block)
    }

    /// The newest version of `key` at or below `sequence`: (its sequence, value or tombstone).
    pub async fn get(
        &self,
        key: &[u8],
        hash: u64,
        sequence: u64,
    ) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        if !self.bloom.may_contain(hash) {
            self.bloom_negative_count.fetch_add(1, AtomicOrdering::Relaxed);
            return Ok(None);
        }
        // Compares against the encoded target (key, sequence, KIND_PUT) without building it.
        let before_target = |encoded: &[u8]| compare_internal_to(encoded, key, sequence, KIND_PUT);
        let block_index = self.find_block(key, sequence);
        if block_index == self.index.len() {
            self.count_false_positive();
            return Ok(None);
        }
        let block = self.read_block(block_index).await?;
        let corrupt =
            |reason| Error::corruption(&self.name, self.index[block_index].handle.offset, reason);
        let Some((found, value)) =
            block.seek(key, |encoded, _| before_target(encoded)).map_err(corrupt)?
        else {
            self.count_false_positive();
            return Ok(None);
        };
        let (found_key, found_sequence, kind) = split_internal(&found).map_err(corrupt)?;
        if found_key != key {
            self.count_false_positive();
            return Ok(None);
        }
        let value = (kind == KIND_PUT).then(|| block.value(&value).to_vec());
        Ok(Some((found_sequence, value)))
    }

    /// Every entry of data block `block_index`, checked to be in order.
    async fn block_entries(&self, block_index: usize) -> Result<Vec<Entry>> {
        let block = self.read_block(block_index).await?;
        let offset = self.index[block_index].handle.offset;
        let corrupt = |reason| Error::corruption(&self.name, offset, reason);
        let raw = block.entries().map_err(corrupt)?;
        let mut entries = Vec::with_capacity(raw.len());
        let mut previous: Option<&[u8]> = None;
        for (key, value) in &raw {
            if previous.is_some_and(|previous| compare_internal(previous, key) != Ordering::Less) {
                return Err(corrupt("block keys out of order"));
            }
            previous = Some(key);
            let (user, sequence, kind) = split_internal(key).map_err(corrupt)?;
            let value = (kind == KIND_PUT).then(|| block.value(value).to_vec());
            entries.push(Entry { key: user.to_vec(), sequence, value });
        }
        if raw.last().is_some_and(|(key, _)| *key != self.index[block_index].last_key) {
            return Err(corrupt("block does not end at its index key"));
        }
        Ok(entries)
    }
}

/// A cursor over one table's entries in internal order, forward or backward.
///
/// Forward, it decodes one entry at a time from the cached block (a seek followed by a few
/// `advance`s touches only those entries); backward, it decodes a whole block at a time.
#[derive(Debug)]
pub struct TableCursor<F: File> {
    table: Arc<Table<F>>,
    forward: bool,
    block_index: usize,
    // Forward walk: the current block and position in it.
    block: Option<Arc<Block>>,
    position: Option<BlockPosition>,
    // Backward walk: the current block's entries before the current one.
    entries: Vec<Entry>,
    // Invariant: `Some` exactly when the cursor is not at its end.
    current: Option<Entry>,
    fill_cache: bool,
}

impl<F: File> TableCursor<F> {
    /// A cursor at the first entry inside `bound` (the lower bound when `forward`, else the
    /// upper bound), walking in that direction.
    pub async fn new(table: Arc<Table<F>>, forward: bool, bound: Bound<&[u8]>) -> Result<Self> {
        Self::with_cache(table, forward, bound, true).await
    }

    /// A forward cursor over the whole table that does not fill the block cache (compaction).
    pub async fn for_compaction(table: Arc<Table<F>>) -> Result<Self> {
        Self::with_cache(table, true, Bound::Unbounded, false).await
    }

    async fn with_cache(
        table: Arc<Table<F>>,
        forward: bool,
        bound: Bound<&[u8]>,
        fill_cache: bool,
    ) -> Result<Self> {
        let block_index = start_block(&table, forward, bound);
        let mut cursor = TableCursor {
            table,
            forward,
            block_index,
            block: None,
            position: None,
            entries: Vec::new(),
            current: None,
            fill_cache,
        };
        if block_index >= cursor.table.block_count() {
            return Ok(cursor);
        }
        if forward {
            cursor.seek_forward(bound).await?;
        } else {
            cursor.load_backward().await?;
            while cursor.current.as_ref().is_some_and(|entry| !inside(&entry.key, false, bound)) {
                cursor.advance().await?;
            }
        }
        Ok(cursor)
    }

    fn corrupt(&self, reason: &'static str) -> Error {
        Error::corruption(
            &self.table.name,
            self.table.index[self.block_index].handle.offset,
            reason,
        )
    }

    /// Positions a forward cursor at the first entry inside `bound`.
    async fn seek_forward(&mut self, bound: Bound<&[u8]>) -> Result<()> {
        let block = self.table.read_block_with(self.block_index, self.fill_cache).await?;
        let position = match bound {
            Bound::Unbounded => block.first_position(),
            // Compares against the encoded bound key without building it.
            Bound::Included(key) => block.seek_position(key, |encoded, _| {
                compare_internal_to(encoded, key, SEQUENCE_MAX, KIND_PUT)
            }),
            Bound::Excluded(key) => block
                .seek_position(key, |encoded, _| compare_internal_to(encoded, key, 0, KIND_DELETE)),
        };
        self.position = position.map_err(|reason| self.corrupt(reason))?;
        self.block = Some(block);
        if self.position.is_none() {
            return self.next_block_forward().await;
        }
        self.materialize()
    }

    /// Makes `current` the entry at `position`, reusing the previous entry's buffers.
    fn materialize(&mut self) -> Result<()> {
        let (Some(block), Some(position)) = (&self.block, &self.position) else {
            self.current = None;
            return Ok(());
        };
        let (user, sequence, kind) =
            split_internal(&position.key).map_err(|reason| self.corrupt(reason))?;
        let ordered = self.current.as_ref().is_none_or(|previous| {
            (&previous.key[..], std::cmp::Reverse(previous.sequence))
                < (user, std::cmp::Reverse(sequence))
        });
        if !ordered {
            return Err(self.corrupt("table keys out of order"));
        }
        let empty = || Entry { key: Vec::new(), sequence: 0, value: None };
        let mut entry = self.current.take().unwrap_or_else(empty);
        entry.key.clear();
        entry.key.extend_from_slice(user);
        entry.sequence = sequence;
        if kind == KIND_PUT {
            let value = entry.value.get_or_insert_with(Vec::new);
            value.clear();
            value.extend_from_slice(block.value(&position.value));
        } else {
            entry.value = None;
        }
        self.current = Some(entry);
        Ok(())
    }

    /// Moves a forward cursor to the first entry of the next non-empty block.
    async fn next_block_forward(&mut self) -> Result<()> {
        loop {
            self.block_index += 1;
            if self.block_index >= self.table.block_count() {
                self.current = None;
                self.block = None;
                return Ok(());
            }
            let block = self.table.read_block_with(self.block_index, self.fill_cache).await?;
            self.position = block.first_position().map_err(|reason| self.corrupt(reason))?;
            self.block = Some(block);
            if self.position.is_some() {
                return self.materialize();
            }
        }
    }

    async fn load_backward(&mut self) -> Result<()> {
        self.entries = self.table.block_entries(self.block_index).await?;
        self.current = self.entries.pop();
        if self.current.is_none() {
            return Err(self.corrupt("empty data block"));
        }
        Ok(())
    }

    /// The current entry, or `None` at the end.
    pub fn peek(&self) -> Option<&Entry> {
        self.current.as_ref()
    }

    /// Moves to the next entry in the cursor's direction.
    pub async fn advance(&mut self) -> Result<()> {
        if self.current.is_none() {
            return Ok(());
        }
        if self.forward {
            let (Some(block), Some(position)) = (&self.block, self.position.as_mut()) else {
                return Ok(());
            };
            let moved = block.next_position(position);
            if moved.map_err(|reason| self.corrupt(reason))? {
                return self.materialize();
            }
            return self.next_block_forward().await;
        }
        if let Some(entry) = self.entries.pop() {
            self.current = Some(entry);
            return Ok(());
        }
        if self.block_index == 0 {
            self.current = None;
            return Ok(());
        }
        self.block_index -= 1;
        self.load_backward().await
    }
}

/// Whether `key` is inside `bound` seen from a cursor's direction.
fn inside(key: &[u8], forward: bool, bound: Bound<&[u8]>) -> bool {
    match (bound, forward) {
        (Bound::Unbounded, _) => true,
        (Bound::Included(limit), true) => key >= limit,
        (Bound::Excluded(limit), true) => key > limit,
        (Bound::Included(limit), false) => key <= limit,
        (Bound::Excluded(limit), false) => key < limit,
    }
}

/// The data block a cursor starts in.
fn start_block<F: File>(table: &Table<F>, forward: bool, bound: Bound<&[u8]>) -> usize {
    let last_user = |entry: &IndexEntry| user_key(&entry.last_key).to_vec();
    let count = table.index.len();
    match (bound, forward) {
        (Bound::Unbounded, true) => 0,
        (Bound::Unbounded, false) => count - 1,
        (Bound::Included(limit), true) => table.find_block(limit, SEQUENCE_MAX),
        (Bound::Excluded(limit), true) => {
            table.index.partition_point(|entry| last_user(entry).as_slice() <= limit)
        }
        (Bound::Included(limit), false) => {
            table.index.partition_point(|entry| last_user(entry).as_slice() <= limit).min(count - 1)
        }
        (Bound::Excluded(limit), false) => {
            table.index.partition_point(|entry| last_user(entry).as_slice() < limit).min(count - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use sim::world::{SimConfig, SimEnv, World};
    use sim::{Env, OpenOptions};

    use super::*;
    use crate::key::internal_key;

    fn entries() -> Vec<Entry> {
        (0..500u32)
            .map(|index| Entry {
                key: format!("key-{index:06}").into_bytes(),
                sequence: u64::from(index) + 1,
                value: (index % 9 != 0).then(|| vec![index as u8; 40]),
            })
            .collect()
    }

    fn test_options() -> TableOptions {
        TableOptions {
            block_bytes: 512,
            restart_interval: 4,
            bloom_bits_per_key: 10,
            compression: Compression::None,
            sealer: None,
        }
    }

    fn build(format_version: u32) -> Vec<u8> {
        let mut builder = TableBuilder::with_version(test_options(), format_version);
        entries().iter().for_each(|entry| builder.add(entry));
        builder.finish().0
    }

    /// Goal: version-3 checksums name the block's place, so bytes that a misdirected write put
    /// at another offset, or a table read as another file, are corruption and never served;
    /// version 2 (no position under the checksum) still reads. Method: shift a table's bytes by
    /// whole sectors behind a zeroed hole, as the simulated disk's misdirected write does.
    #[test]
    fn a_shifted_version_3_table_is_corruption_and_version_2_still_reads() {
        open_and_probe(build(TABLE_FORMAT_VERSION_UNSEALED), true).expect("version 2 reads");
        let bytes = build(TABLE_FORMAT_VERSION);
        open_and_probe(bytes.clone(), true).expect("version 3 reads");
        let first_block = 512 * 2;
        let mut shifted = bytes[..first_block].to_vec();
        shifted.resize(first_block + 512, 0);
        shifted.extend_from_slice(&bytes[first_block..]);
        let error = open_and_probe(shifted, true).expect_err("a shifted table is damage");
        assert!(error.is_corruption(), "{error}");
        let mut moved = bytes.clone();
        moved.copy_within(first_block + 512..first_block + 1024, first_block);
        assert!(open_and_probe(moved, true).is_err_and(|error| error.is_corruption()));
    }

    /// Opens `bytes` as a table on a simulated disk; with `probe`, looks up every entry and a
    /// missing key after each.
    fn open_and_probe(bytes: Vec<u8>, probe: bool) -> Result<()> {
        let world = World::new(SimConfig::new(5));
        let node = world.add_node("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let env: SimEnv = world.env(node);
        let program = async move {
            let file = env.open("t.sst", OpenOptions::CREATE_NEW).await.expect("create");
            file.write_at(0, &bytes).await.expect("write");
            let cache = Arc::new(BlockCache::new(1 << 16));
            let table = Table::open(file, 1, "t.sst".into(), cache, None).await?;
            for entry in entries().into_iter().filter(|_| probe) {
                let found = table.get(&entry.key, bloom::key_hash(&entry.key), SEQUENCE_MAX).await;
                assert_eq!(found?, Some((entry.sequence, entry.value)));
                let absent = [&entry.key[..], b"x"].concat();
                assert_eq!(table.get(&absent, bloom::key_hash(&absent), SEQUENCE_MAX).await?, None);
            }
            Ok(())
        };
        world.block_on(node, Duration::from_secs(60), program).expect("simulation")
    }

    /// Goal: a table of format version 1 (legacy bloom filter) still reads, every key found and
    /// absent keys not; an unknown version is corruption. Method: a table built with the legacy
    /// builder; then its footer's version patched to 5 (with a fixed-up checksum).
    #[test]
    fn a_version_1_table_reads_and_an_unknown_version_is_corruption() {
        let mut builder = TableBuilder::with_version(test_options(), TABLE_FORMAT_VERSION_LEGACY);
        entries().iter().for_each(|entry| builder.add(entry));
        let (bytes, _) = builder.finish();
        let footer = bytes.len() - FOOTER_BYTES;
        assert_eq!(fixed_u32(&bytes, footer + 32), TABLE_FORMAT_VERSION_LEGACY);
        open_and_probe(bytes.clone(), true).expect("a version-1 table reads");
        let mut patched = bytes;
        patched[footer + 32..footer + 36].copy_from_slice(&5u32.to_le_bytes());
        let crc = crc32c::crc32c(&patched[footer..footer + 36]);
        patched[footer + 36..footer + 40].copy_from_slice(&crc.to_le_bytes());
        assert!(open_and_probe(patched, false).is_err_and(|error| error.is_corruption()));
    }

    /// Goal: the word-accelerated index search finds the same block as a plain binary search
    /// of the full keys. Method: indexes of keys with shared prefixes, several lengths, equal
    /// user keys at different sequences and keys ending in zero bytes, probed with every index
    /// key's neighbourhood and with keys outside the shared prefix.
    #[test]
    fn index_search_matches_a_full_key_binary_search() {
        let users: Vec<Vec<u8>> = [
            &b"pre"[..],
            b"pre\0",
            b"pre\0\0",
            b"prea",
            b"preabcdefgh",
            b"preabcdefgh\0",
            b"preabcdefghi",
            b"preabcdefghj",
            b"preabcdefgi",
            b"prez",
            b"prez\xff\xff",
        ]
        .iter()
        .map(|key| key.to_vec())
        .collect();
        let mut index = Vec::new();
        for (position, user) in users.iter().enumerate() {
            for sequence in [9, 5] {
                let last_key = internal_key(user, sequence + position as u64, KIND_PUT);
                index.push(IndexEntry { last_key, handle: Handle { offset: 0, size: 0 } });
            }
        }
        for window in [&index[..], &index[4..], &index[8..12], &index[20..]] {
            let (prefix, words) = index_words(window);
            let mut probes: Vec<Vec<u8>> = vec![b"".to_vec(), b"pr".to_vec(), b"q".to_vec()];
            for user in &users {
                for extra in [&b""[..], b"\0", b"a", b"\xff"] {
                    probes.push([&user[..], extra].concat());
                }
                probes.push(user[..user.len() - 1].to_vec());
            }
            for probe in &probes {
                for sequence in [0, 5, 7, 9, 20, SEQUENCE_MAX] {
                    let expected = window.partition_point(|entry| {
                        compare_internal_to(&entry.last_key, probe, sequence, KIND_PUT).is_lt()
                    });
                    let found = search_index(window, &prefix, &words, probe, sequence);
                    assert_eq!(found, expected, "probe {probe:?} at {sequence}");
                }
            }
        }
    }
}
