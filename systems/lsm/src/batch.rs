//! `WriteBatch`: a group of puts and deletes applied atomically, and its encoding inside a
//! write-ahead-log record.
//!
//! Encoded form, little-endian:
//! `| first sequence u64 | op count u32 | op* |`, each op
//! `| kind u8 (0 delete, 1 put) | key len varint | key | (put only) value len varint | value |`.
//! The ops get consecutive sequence numbers starting at the first sequence.

use crate::coding::{DecodeResult, Reader, put_bytes};
use crate::key::{KIND_DELETE, KIND_PUT, SEQUENCE_MAX};

/// The longest key in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// The longest value in bytes.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most encoded bytes one batch may hold.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The most operations one batch may hold.
pub const BATCH_OPS_MAX: usize = 1 << 20;

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key this operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// Puts and deletes that become visible and durable together, or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    // Invariant: the sum of the ops' key and value lengths.
    payload_bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put of `key` = `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        self.payload_bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { key, value });
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        let key = key.into();
        self.payload_bytes += key.len();
        self.ops.push(BatchOp::Delete { key });
        self
    }

    /// The operations, in the order they apply.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sum of key and value bytes.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Checks the limits; the reason if one is exceeded.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.ops.len() > BATCH_OPS_MAX {
            return Err(format!("batch has {} ops, limit {BATCH_OPS_MAX}", self.ops.len()));
        }
        if self.payload_bytes > BATCH_BYTES_MAX / 2 {
            return Err(format!(
                "batch holds {} bytes, limit {}",
                self.payload_bytes,
                BATCH_BYTES_MAX / 2
            ));
        }
        // Keys are byte strings from 0 to `KEY_BYTES_MAX` bytes: the empty key is a key like
        // any other (the smallest), encoded, ordered and recovered by the same code.
        for op in &self.ops {
            if op.key().len() > KEY_BYTES_MAX {
                return Err(format!("key of {} bytes, limit {KEY_BYTES_MAX}", op.key().len()));
            }
            if let BatchOp::Put { value, .. } = op
                && value.len() > VALUE_BYTES_MAX
            {
                return Err(format!("value of {} bytes, limit {VALUE_BYTES_MAX}", value.len()));
            }
        }
        Ok(())
    }

    /// Appends the encoding of this batch with sequence numbers from `first_sequence`.
    pub(crate) fn encode(&self, first_sequence: u64, out: &mut Vec<u8>) {
        assert!(first_sequence + self.ops.len() as u64 <= SEQUENCE_MAX);
        out.extend_from_slice(&first_sequence.to_le_bytes());
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            match op {
                BatchOp::Put { key, value } => {
                    out.push(KIND_PUT);
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                BatchOp::Delete { key } => {
                    out.push(KIND_DELETE);
                    put_bytes(out, key);
                }
            }
        }
    }

    /// Decodes an encoded batch: (first sequence, batch).
    pub(crate) fn decode(data: &[u8]) -> DecodeResult<(u64, WriteBatch)> {
        let mut reader = Reader::new(data);
        let first_sequence = reader.u64()?;
        let count = reader.u32()? as usize;
        if count > BATCH_OPS_MAX || count > reader.remaining() {
            return Err("batch op count out of range");
        }
        if first_sequence == 0 || first_sequence + count as u64 > SEQUENCE_MAX {
            return Err("batch sequence out of range");
        }
        let mut batch = WriteBatch::new();
        for _ in 0..count {
            match reader.u8()? {
                KIND_PUT => {
                    let key = reader.length_prefixed()?;
                    let value = reader.length_prefixed()?;
                    batch.put(key, value);
                }
                KIND_DELETE => {
                    batch.delete(reader.length_prefixed()?);
                }
                _ => return Err("unknown batch op kind"),
            }
        }
        if !reader.is_empty() {
            return Err("trailing bytes after batch");
        }
        Ok((first_sequence, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_reject_garbage() {
        let mut batch = WriteBatch::new();
        batch.put(b"a".to_vec(), b"1".to_vec()).delete(b"b".to_vec()).put(b"".to_vec(), vec![]);
        let mut out = Vec::new();
        batch.encode(7, &mut out);
        assert_eq!(WriteBatch::decode(&out), Ok((7, batch)));
        for cut in 0..out.len() {
            assert!(WriteBatch::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
    }
}
