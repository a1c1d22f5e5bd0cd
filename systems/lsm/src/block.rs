//! SSTable blocks: sorted entries with prefix-compressed keys and restart points.
//!
//! ## Format (little-endian)
//!
//! `| entry* | restart offset u32 * restart_count | restart_count u32 |`, each entry
//! `| shared varint | unshared varint | value length varint | key suffix | value |`.
//! An entry's key is the first `shared` bytes of the previous key followed by its suffix. Every
//! `restart_interval`-th entry is a restart point: `shared` is 0 there and its offset is listed,
//! so a lookup binary-searches the restart points and then scans at most one interval.
//! The reader checks every length and offset against the block, so bad bytes are an error.

use std::cmp::Ordering;
use std::ops::Range;

use crate::coding::{DecodeResult, Reader, fixed_u32, put_varint};

/// Builds one block.
#[derive(Debug)]
pub struct BlockBuilder {
    buffer: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    count_since_restart: usize,
    last_key: Vec<u8>,
    entry_count: usize,
}

impl BlockBuilder {
    /// An empty builder with a restart point every `restart_interval` entries.
    pub fn new(restart_interval: usize) -> BlockBuilder {
        assert!(restart_interval >= 1);
        BlockBuilder {
            buffer: Vec::new(),
            restarts: vec![0],
            restart_interval,
            count_since_restart: 0,
            last_key: Vec::new(),
            entry_count: 0,
        }
    }

    /// Appends an entry; keys must come in increasing order.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let mut shared = 0;
        if self.count_since_restart == self.restart_interval {
            self.restarts.push(self.buffer.len() as u32);
            self.count_since_restart = 0;
        } else {
            let limit = self.last_key.len().min(key.len());
            while shared < limit && self.last_key[shared] == key[shared] {
                shared += 1;
            }
        }
        put_varint(&mut self.buffer, shared as u64);
        put_varint(&mut self.buffer, (key.len() - shared) as u64);
        put_varint(&mut self.buffer, value.len() as u64);
        self.buffer.extend_from_slice(&key[shared..]);
        self.buffer.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count_since_restart += 1;
        self.entry_count += 1;
    }

    /// Bytes the finished block would take.
    pub fn size_estimate(&self) -> usize {
        self.buffer.len() + 4 * self.restarts.len() + 4
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.entry_count == 0
    }

    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block and resets the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buffer);
        for restart in &self.restarts {
            out.extend_from_slice(&restart.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts = vec![0];
        self.count_since_restart = 0;
        self.last_key.clear();
        self.entry_count = 0;
        out
    }
}

/// A decoded-on-demand block whose restart array was validated.
#[derive(Debug)]
pub struct Block {
    data: Vec<u8>,
    // Invariant: restarts_offset + 4 * restart_count + 4 == data.len().
    restarts_offset: usize,
    restart_count: usize,
}

/// One entry: its full key and the byte range of its value in the block.
pub type BlockEntry = (Vec<u8>, Range<usize>);

/// A decoded entry and where the next one starts, for forward walks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPosition {
    /// The entry's full key.
    pub key: Vec<u8>,
    /// The byte range of its value in the block.
    pub value: Range<usize>,
    /// Offset of the next entry (the restart array's offset at the end).
    pub next: usize,
}

impl Block {
    /// Validates the restart array of `data`.
    pub fn new(data: Vec<u8>) -> DecodeResult<Block> {
        if data.len() < 4 {
            return Err("block shorter than its restart count");
        }
        let restart_count = fixed_u32(&data, data.len() - 4) as usize;
        let restarts_bytes = restart_count.checked_mul(4).ok_or("restart count overflows")?;
        if restart_count == 0 || restarts_bytes > data.len() - 4 {
            return Err("restart count out of range");
        }
        let restarts_offset = data.len() - 4 - restarts_bytes;
        let block = Block { data, restarts_offset, restart_count };
        let mut previous = 0;
        for index in 0..restart_count {
            let restart = block.restart(index);
            if restart >= restarts_offset.max(1) || (index > 0 && restart <= previous) {
                return Err("restart offset out of range");
            }
            previous = restart;
        }
        Ok(block)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The block's bytes, for reuse as a buffer.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    fn restart(&self, index: usize) -> usize {
        fixed_u32(&self.data, self.restarts_offset + 4 * index) as usize
    }

    /// The value bytes of an entry.
    pub fn value(&self, range: &Range<usize>) -> &[u8] {
        &self.data[range.clone()]
    }

    /// Decodes the entry at `offset` after `key` (the previous key), leaving its key in `key`.
    fn decode_at(&self, offset: usize, key: &mut Vec<u8>) -> DecodeResult<(Range<usize>, usize)> {
        let mut reader = Reader::new(&self.data[offset..self.restarts_offset]);
        let shared = reader.varint_len(key.len())?;
        let unshared = reader.varint_len(reader.remaining())?;
        let value_len = reader.varint_len(reader.remaining())?;
        let suffix = reader.bytes(unshared)?;
        let value_start = offset + reader.position();
        reader.bytes(value_len)?;
        key.truncate(shared);
        key.extend_from_slice(suffix);
        Ok((value_start..value_start + value_len, offset + reader.position()))
    }

    /// The key at restart point `index`, borrowed from the block (a restart entry shares no
    /// prefix, so its key is stored whole).
    fn restart_key(&self, index: usize) -> DecodeResult<&[u8]> {
        let offset = self.restart(index);
        let mut reader = Reader::new(&self.data[offset..self.restarts_offset]);
        if reader.varint()? != 0 {
            return Err("restart entry shares a prefix");
        }
        let unshared = reader.varint_len(reader.remaining())?;
        reader.varint_len(reader.remaining())?;
        reader.bytes(unshared)
    }

    /// The first entry whose key is at or after `target` under `compare`.
    pub fn seek(
        &self,
        target: &[u8],
        compare: impl Fn(&[u8], &[u8]) -> Ordering,
    ) -> DecodeResult<Option<BlockEntry>> {
        Ok(self.seek_position(target, compare)?.map(|position| (position.key, position.value)))
    }

    /// Like `seek`, as a position a forward walk can continue from.
    pub fn seek_position(
        &self,
        target: &[u8],
        compare: impl Fn(&[u8], &[u8]) -> Ordering,
    ) -> DecodeResult<Option<BlockPosition>> {
        // Find the last restart point whose key is before the target.
        let (mut low, mut high) = (0, self.restart_count - 1);
        while low < high {
            let middle = (low + high).div_ceil(2);
            if compare(self.restart_key(middle)?, target) == Ordering::Less {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        let mut offset = self.restart(low);
        let mut key = Vec::new();
        while offset < self.restarts_offset {
            let (value, next) = self.decode_at(offset, &mut key)?;
            if compare(&key, target) != Ordering::Less {
                return Ok(Some(BlockPosition { key, value, next }));
            }
            offset = next;
        }
        Ok(None)
    }

    /// The first entry, if any.
    pub fn first_position(&self) -> DecodeResult<Option<BlockPosition>> {
        if self.restarts_offset == 0 {
            return Ok(None);
        }
        let mut key = Vec::new();
        let (value, next) = self.decode_at(0, &mut key)?;
        Ok(Some(BlockPosition { key, value, next }))
    }

    /// Moves `position` to the next entry; false (and `position` unchanged) at the end.
    pub fn next_position(&self, position: &mut BlockPosition) -> DecodeResult<bool> {
        if position.next >= self.restarts_offset {
            return Ok(false);
        }
        let (value, next) = self.decode_at(position.next, &mut position.key)?;
        position.value = value;
        position.next = next;
        Ok(true)
    }

    /// Every entry in order.
    pub fn entries(&self) -> DecodeResult<Vec<BlockEntry>> {
        let mut entries = Vec::new();
        let mut offset = 0;
        let mut key = Vec::new();
        while offset < self.restarts_offset {
            let (value, next) = self.decode_at(offset, &mut key)?;
            entries.push((key.clone(), value));
            offset = next;
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(keys: &[&str], interval: usize) -> Block {
        let mut builder = BlockBuilder::new(interval);
        for key in keys {
            builder.add(key.as_bytes(), format!("v-{key}").as_bytes());
        }
        Block::new(builder.finish()).expect("valid block")
    }

    #[test]
    fn seek_finds_first_key_at_or_after_target() {
        let keys = ["apple", "apricot", "banana", "band", "bandana", "cherry", "date"];
        for interval in 1..5 {
            let block = build(&keys, interval);
            let found = block.seek(b"band", |a, b| a.cmp(b)).expect("decodes").expect("found");
            assert_eq!(found.0, b"band");
            assert_eq!(block.value(&found.1), b"v-band");
            let found = block.seek(b"bb", |a, b| a.cmp(b)).expect("decodes").expect("found");
            assert_eq!(found.0, b"cherry");
            assert_eq!(block.seek(b"zzz", |a, b| a.cmp(b)).expect("decodes"), None);
            let first = block.seek(b"", |a, b| a.cmp(b)).expect("decodes").expect("found");
            assert_eq!(first.0, b"apple");
            assert_eq!(block.entries().expect("decodes").len(), keys.len());
        }
    }

    #[test]
    fn garbage_blocks_are_errors() {
        assert!(Block::new(vec![]).is_err());
        assert!(Block::new(vec![0, 0, 0, 0]).is_err());
        assert!(Block::new(vec![9, 9, 0, 0, 0, 0, 1, 0, 0, 0]).is_ok_and(|b| b.entries().is_err()));
    }
}
