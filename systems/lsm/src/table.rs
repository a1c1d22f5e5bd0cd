//! SSTables: immutable sorted files of internal keys, built once by a flush or a compaction and
//! read through a block cache.
//!
//! ## Format (version 1, little-endian; `docs/format.md` has the full description)
//!
//! `| data block + trailer |* | filter block + trailer | index block + trailer | footer |`
//!
//! - Each block is followed by a 5-byte trailer `| compression u8 | crc32c u32 |`; the CRC covers
//!   the stored block bytes and the compression byte. Compression 0 is none; 1 is LZ4 with the
//!   uncompressed length prepended as a u32 (`lz4_flex::compress_prepend_size`).
//! - Data blocks (see `block.rs`) map encoded internal keys (see `key.rs`) to values; a
//!   tombstone has an empty value.
//! - The filter block is one bloom filter over the table's user keys (see `bloom.rs`).
//! - The index block (block format) maps each data block's last internal key to
//!   `| offset varint | stored size varint |` of that block (size without the trailer).
//! - The footer is 48 bytes: `| filter offset u64 | filter size u32 | index offset u64 |
//!   index size u32 | entry count u64 | format version u32 | crc32c u32 | magic u64 |`, the CRC
//!   over the 36 bytes before it.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use sim::File;

use crate::block::{Block, BlockBuilder, BlockPosition};
use crate::bloom::{self, Bloom};
use crate::cache::BlockCache;
use crate::coding::{DecodeResult, Reader, fixed_u32, put_varint};
use crate::error::{Error, Result};
use crate::key::{
    Entry, KIND_DELETE, KIND_PUT, SEQUENCE_MAX, compare_internal, compare_internal_to,
    encode_internal, internal_key, split_internal, user_key,
};

/// Bytes of the footer.
pub const FOOTER_BYTES: usize = 48;
const _: () = assert!(FOOTER_BYTES == 8 + 4 + 8 + 4 + 8 + 4 + 4 + 8);
/// The footer's magic number ("GMLSMSST").
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"GMLSMSST");
/// The table format version this code writes and reads.
pub const TABLE_FORMAT_VERSION: u32 = 1;
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
#[derive(Clone, Copy, Debug)]
pub struct TableOptions {
    /// Target uncompressed size of a data block.
    pub block_bytes: usize,
    /// Entries between restart points.
    pub restart_interval: usize,
    /// Bloom filter bits per key.
    pub bloom_bits_per_key: u32,
    /// Data block compression.
    pub compression: Compression,
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
}

impl TableBuilder {
    /// An empty builder.
    pub fn new(options: TableOptions) -> TableBuilder {
        TableBuilder {
            options,
            out: Vec::new(),
            consumed: 0,
            data: BlockBuilder::new(options.restart_interval),
            index: BlockBuilder::new(1),
            hashes: Vec::new(),
            last_user_key: None,
            smallest: None,
            entry_count: 0,
            key_buffer: Vec::new(),
        }
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
        let (offset, size) =
            write_block(&mut self.out, self.consumed, &raw, self.options.compression);
        let mut handle = Vec::new();
        put_varint(&mut handle, offset);
        put_varint(&mut handle, size);
        self.index.add(&last_key, &handle);
    }

    /// The table's bytes not yet consumed (all of them if nothing was) and its summary. Panics
    /// if no entry was added.
    pub fn finish(mut self) -> (Vec<u8>, TableSummary) {
        assert!(self.entry_count > 0, "an empty table");
        let largest = self.data.last_key().to_vec();
        let largest = if self.data.is_empty() { self.index.last_key().to_vec() } else { largest };
        self.finish_data_block();
        let filter = bloom::build(&self.hashes, self.options.bloom_bits_per_key);
        let (filter_offset, filter_size) =
            write_block(&mut self.out, self.consumed, &filter, Compression::None);
        let index = self.index.finish();
        let (index_offset, index_size) =
            write_block(&mut self.out, self.consumed, &index, Compression::None);
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(&filter_offset.to_le_bytes());
        footer.extend_from_slice(&(filter_size as u32).to_le_bytes());
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(index_size as u32).to_le_bytes());
        footer.extend_from_slice(&self.entry_count.to_le_bytes());
        footer.extend_from_slice(&TABLE_FORMAT_VERSION.to_le_bytes());
        footer.extend_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        assert_eq!(footer.len(), FOOTER_BYTES);
        self.out.extend_from_slice(&footer);
        let smallest = self.smallest.expect("an entry was added");
        (self.out, TableSummary { smallest, largest, entry_count: self.entry_count })
    }
}

/// Appends a block and its trailer to `out`, which starts at file offset `base`; returns (offset,
/// stored size without trailer).
fn write_block(out: &mut Vec<u8>, base: u64, raw: &[u8], compression: Compression) -> (u64, u64) {
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
    out.extend_from_slice(stored);
    out.push(kind);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    (offset, stored.len() as u64)
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
    /// A writer of a new table into the empty `file`.
    pub fn new(file: F, options: TableOptions) -> TableWriter<F> {
        TableWriter { file, builder: TableBuilder::new(options) }
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

/// Checks a block's trailer and decompresses it.
fn decode_block(stored: &[u8]) -> DecodeResult<Vec<u8>> {
    decode_block_owned(stored, |body| body.to_vec())
}

/// Like `decode_block`, taking the bytes of an uncompressed block from `take` (given the block
/// body) only after the checksum matched, so a caller owning the read buffer can reuse it.
fn decode_block_owned(stored: &[u8], take: impl FnOnce(&[u8]) -> Vec<u8>) -> DecodeResult<Vec<u8>> {
    if stored.len() < BLOCK_TRAILER_BYTES {
        return Err("block shorter than its trailer");
    }
    let body_len = stored.len() - 4;
    if crc32c::crc32c(&stored[..body_len]) != fixed_u32(stored, body_len) {
        return Err("block checksum mismatch");
    }
    let body = &stored[..body_len - 1];
    match stored[body_len - 1] {
        0 => Ok(take(body)),
        1 => {
            if body.len() < 4 || fixed_u32(body, 0) as usize > BLOCK_BYTES_MAX {
                return Err("compressed block length out of range");
            }
            lz4_flex::decompress_size_prepended(body).map_err(|_| "bad lz4 block")
        }
        _ => Err("unknown block compression"),
    }
}

/// Checks and decodes a data block read into `buffer`; an uncompressed block takes the
/// buffer's bytes without a copy (leaving `buffer` empty).
fn decode_data_block(buffer: &mut Vec<u8>) -> DecodeResult<Block> {
    let mut owned = None;
    let decoded = decode_block_owned(buffer, |body| {
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
}

fn decode_footer(bytes: &[u8]) -> DecodeResult<Footer> {
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
    if crc != crc32c::crc32c(&bytes[..36]) {
        return Err("footer checksum mismatch");
    }
    if version != TABLE_FORMAT_VERSION {
        return Err("unknown table format version");
    }
    Ok(Footer { filter, index, entry_count })
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

/// An open SSTable.
#[derive(Debug)]
pub struct Table<F: File> {
    file: F,
    number: u64,
    name: String,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    entry_count: u64,
    cache: Arc<BlockCache>,
    // Lookups of keys the table does not hold: rejected by the bloom filter, or let through.
    bloom_negative_count: AtomicU64,
    bloom_false_positive_count: AtomicU64,
}

/// Reads `size` bytes at `offset`, retrying while `check` fails; the last failure otherwise.
async fn read_checked<F: File, T>(
    file: &F,
    name: &str,
    offset: u64,
    size: usize,
    check: impl Fn(&mut Vec<u8>) -> DecodeResult<T>,
) -> Result<T> {
    let mut buffer = Vec::new();
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
    pub async fn open(file: F, number: u64, name: String, cache: Arc<BlockCache>) -> Result<Self> {
        let file_bytes = file.len().await?;
        if file_bytes < FOOTER_BYTES as u64 {
            return Err(Error::corruption(&name, 0, "table shorter than its footer"));
        }
        let footer_offset = file_bytes - FOOTER_BYTES as u64;
        let footer =
            read_checked(&file, &name, footer_offset, FOOTER_BYTES, |bytes| decode_footer(bytes))
                .await?;
        let limit = footer_offset;
        for handle in [footer.filter, footer.index] {
            let end = handle.offset.checked_add(handle.size + BLOCK_TRAILER_BYTES as u64);
            if end.is_none_or(|end| end > limit) || handle.size as usize > BLOCK_BYTES_MAX {
                return Err(Error::corruption(&name, footer_offset, "footer handle out of range"));
            }
        }
        let size = footer.index.size as usize + BLOCK_TRAILER_BYTES;
        let index = read_checked(&file, &name, footer.index.offset, size, |bytes| {
            decode_index(&Block::new(decode_block(bytes)?)?, limit)
        })
        .await?;
        let size = footer.filter.size as usize + BLOCK_TRAILER_BYTES;
        let bloom = read_checked(&file, &name, footer.filter.offset, size, |bytes| {
            Bloom::new(decode_block(bytes)?)
        })
        .await?;
        let entry_count = footer.entry_count;
        Ok(Table {
            file,
            number,
            name,
            index,
            bloom,
            entry_count,
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
        let block =
            read_checked(&self.file, &self.name, handle.offset, size, decode_data_block).await?;
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
        let block_index =
            self.index.partition_point(|entry| before_target(&entry.last_key) == Ordering::Less);
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
            Bound::Included(key) => {
                block.seek_position(&internal_key(key, SEQUENCE_MAX, KIND_PUT), compare_internal)
            }
            Bound::Excluded(key) => {
                block.seek_position(&internal_key(key, 0, KIND_DELETE), compare_internal)
            }
        };
        self.position = position.map_err(|reason| self.corrupt(reason))?;
        self.block = Some(block);
        if self.position.is_none() {
            return self.next_block_forward().await;
        }
        self.materialize()
    }

    /// Makes `current` the entry at `position`.
    fn materialize(&mut self) -> Result<()> {
        let (Some(block), Some(position)) = (&self.block, &self.position) else {
            self.current = None;
            return Ok(());
        };
        let (user, sequence, kind) =
            split_internal(&position.key).map_err(|reason| self.corrupt(reason))?;
        let value = (kind == KIND_PUT).then(|| block.value(&position.value).to_vec());
        let entry = Entry { key: user.to_vec(), sequence, value };
        let ordered = self.current.as_ref().is_none_or(|previous| {
            (&previous.key, std::cmp::Reverse(previous.sequence))
                < (&entry.key, std::cmp::Reverse(entry.sequence))
        });
        if !ordered {
            return Err(self.corrupt("table keys out of order"));
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
        (Bound::Included(limit), true) => {
            let target = internal_key(limit, SEQUENCE_MAX, KIND_PUT);
            table.index.partition_point(|e| compare_internal(&e.last_key, &target).is_lt())
        }
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
