//! The key-value server's wire protocol: length-prefixed binary frames over a byte stream.
//!
//! ## Format (version 1, little-endian; varint = LEB128; bytes = varint length + bytes)
//!
//! Frame: `| body length u32 | body |`, body length at most the receiver's frame limit.
//!
//! Request body: `| version u8 = 1 | op u8 | fields |`:
//! - 1 get: `| key bytes |`
//! - 2 put: `| durability u8 (0 buffered, 1 sync) | key bytes | value bytes |`
//! - 3 delete: `| durability u8 | key bytes |`
//! - 4 scan: `| flags u8 (bit 0 reverse, bit 1 has start, bit 2 has end) | start bytes? |
//!   end bytes? | limit varint |`; start is inclusive, end exclusive, limit at most
//!   `SCAN_COUNT_MAX`
//! - 5 batch: `| durability u8 | op count varint | op* |`, op `| 1 | key bytes | value bytes |`
//!   (put) or `| 0 | key bytes |` (delete)
//!
//! Response body: `| version u8 = 1 | status u8 | fields |`:
//! - 0 ok; 1 value: `| present u8 | value bytes? |`; 2 items: `| count varint | (key bytes,
//!   value bytes)* |`; 3 error: `| code u8 | message bytes (UTF-8) |`
//!
//! A malformed request gets an error response (code 1) and the server closes the connection,
//! since it can no longer trust the framing.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::batch::{BATCH_OPS_MAX, BatchOp, WriteBatch};
use crate::coding::{DecodeResult, Reader, put_bytes, put_varint};
use crate::options::Durability;

/// The protocol version this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// The largest frame body either side accepts by default.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The most items one scan may return.
pub const SCAN_COUNT_MAX: u32 = 10_000;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write one key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// When to acknowledge.
        durability: Durability,
    },
    /// Remove one key.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// When to acknowledge.
        durability: Durability,
    },
    /// Read up to `limit` pairs in `[start, end)`.
    Scan {
        /// Inclusive lower bound, `None` for the first key.
        start: Option<Vec<u8>>,
        /// Exclusive upper bound, `None` for past the last key.
        end: Option<Vec<u8>>,
        /// Most pairs returned.
        limit: u32,
        /// Walk from the end down.
        reverse: bool,
    },
    /// Apply puts and deletes atomically.
    Batch {
        /// The operations, in order.
        ops: Vec<BatchOp>,
        /// When to acknowledge.
        durability: Durability,
    },
}

/// Why a request failed, as the error response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request did not decode.
    Malformed,
    /// The frame is larger than the server accepts.
    TooLarge,
    /// The store failed (I/O, corruption, stopped taking writes).
    Store,
    /// The server is at its connection limit.
    Busy,
    /// The store rejected an argument (oversized key or value).
    InvalidArgument,
    /// A code this version does not know.
    Unknown(u8),
}

impl ErrorCode {
    fn to_byte(self) -> u8 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::TooLarge => 2,
            ErrorCode::Store => 3,
            ErrorCode::Busy => 4,
            ErrorCode::InvalidArgument => 5,
            ErrorCode::Unknown(code) => code,
        }
    }

    fn from_byte(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Store,
            4 => ErrorCode::Busy,
            5 => ErrorCode::InvalidArgument,
            other => ErrorCode::Unknown(other),
        }
    }
}

/// The server's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A write succeeded.
    Ok,
    /// A get's result.
    Value(Option<Vec<u8>>),
    /// A scan's result.
    Items(Vec<(Vec<u8>, Vec<u8>)>),
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A human-readable reason.
        message: String,
    },
}

/// A frame that could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream failed or closed mid-frame.
    Io(io::Error),
    /// The announced body is larger than the limit.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body does not decode.
    Malformed(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Io(error) => write!(f, "stream error: {error}"),
            ProtocolError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            ProtocolError::Malformed(reason) => write!(f, "malformed frame: {reason}"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(error: io::Error) -> ProtocolError {
        ProtocolError::Io(error)
    }
}

fn durability_byte(durability: Durability) -> u8 {
    match durability {
        Durability::Buffered => 0,
        Durability::Sync => 1,
    }
}

fn read_durability(reader: &mut Reader<'_>) -> DecodeResult<Durability> {
    match reader.u8()? {
        0 => Ok(Durability::Buffered),
        1 => Ok(Durability::Sync),
        _ => Err("unknown durability"),
    }
}

fn read_version(reader: &mut Reader<'_>) -> DecodeResult<()> {
    if reader.u8()? != PROTOCOL_VERSION {
        return Err("unsupported protocol version");
    }
    Ok(())
}

fn finish<T>(reader: &Reader<'_>, value: T) -> DecodeResult<T> {
    if reader.is_empty() { Ok(value) } else { Err("trailing bytes") }
}

impl Request {
    /// The encoded body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        match self {
            Request::Get { key } => {
                out.push(1);
                put_bytes(&mut out, key);
            }
            Request::Put { key, value, durability } => {
                out.extend_from_slice(&[2, durability_byte(*durability)]);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Request::Delete { key, durability } => {
                out.extend_from_slice(&[3, durability_byte(*durability)]);
                put_bytes(&mut out, key);
            }
            Request::Scan { start, end, limit, reverse } => {
                let flags = u8::from(*reverse)
                    | u8::from(start.is_some()) << 1
                    | u8::from(end.is_some()) << 2;
                out.extend_from_slice(&[4, flags]);
                for bound in [start, end].into_iter().flatten() {
                    put_bytes(&mut out, bound);
                }
                put_varint(&mut out, u64::from(*limit));
            }
            Request::Batch { ops, durability } => {
                out.extend_from_slice(&[5, durability_byte(*durability)]);
                put_varint(&mut out, ops.len() as u64);
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => {
                            out.push(1);
                            put_bytes(&mut out, key);
                            put_bytes(&mut out, value);
                        }
                        BatchOp::Delete { key } => {
                            out.push(0);
                            put_bytes(&mut out, key);
                        }
                    }
                }
            }
        }
        out
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> DecodeResult<Request> {
        let mut reader = Reader::new(body);
        read_version(&mut reader)?;
        let request = match reader.u8()? {
            1 => Request::Get { key: reader.length_prefixed()?.to_vec() },
            2 => {
                let durability = read_durability(&mut reader)?;
                let key = reader.length_prefixed()?.to_vec();
                let value = reader.length_prefixed()?.to_vec();
                Request::Put { key, value, durability }
            }
            3 => {
                let durability = read_durability(&mut reader)?;
                Request::Delete { key: reader.length_prefixed()?.to_vec(), durability }
            }
            4 => decode_scan(&mut reader)?,
            5 => decode_batch(&mut reader)?,
            _ => return Err("unknown request op"),
        };
        finish(&reader, request)
    }
}

fn decode_scan(reader: &mut Reader<'_>) -> DecodeResult<Request> {
    let flags = reader.u8()?;
    if flags > 0b111 {
        return Err("unknown scan flags");
    }
    let start = (flags & 2 != 0).then(|| reader.length_prefixed()).transpose()?;
    let end = (flags & 4 != 0).then(|| reader.length_prefixed()).transpose()?;
    let limit = reader.varint_len(SCAN_COUNT_MAX as usize)? as u32;
    Ok(Request::Scan {
        start: start.map(<[u8]>::to_vec),
        end: end.map(<[u8]>::to_vec),
        limit,
        reverse: flags & 1 != 0,
    })
}

fn decode_batch(reader: &mut Reader<'_>) -> DecodeResult<Request> {
    let durability = read_durability(reader)?;
    let count = reader.varint_len(BATCH_OPS_MAX.min(reader.remaining()))?;
    let mut batch = WriteBatch::new();
    for _ in 0..count {
        match reader.u8()? {
            1 => {
                let key = reader.length_prefixed()?;
                batch.put(key, reader.length_prefixed()?);
            }
            0 => {
                batch.delete(reader.length_prefixed()?);
            }
            _ => return Err("unknown batch op"),
        }
    }
    Ok(Request::Batch { ops: batch.ops().to_vec(), durability })
}

impl Response {
    /// The encoded body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROTOCOL_VERSION];
        match self {
            Response::Ok => out.push(0),
            Response::Value(value) => {
                out.extend_from_slice(&[1, u8::from(value.is_some())]);
                if let Some(value) = value {
                    put_bytes(&mut out, value);
                }
            }
            Response::Items(items) => {
                out.push(2);
                put_varint(&mut out, items.len() as u64);
                for (key, value) in items {
                    put_bytes(&mut out, key);
                    put_bytes(&mut out, value);
                }
            }
            Response::Error { code, message } => {
                out.extend_from_slice(&[3, code.to_byte()]);
                put_bytes(&mut out, message.as_bytes());
            }
        }
        out
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> DecodeResult<Response> {
        let mut reader = Reader::new(body);
        read_version(&mut reader)?;
        let response = match reader.u8()? {
            0 => Response::Ok,
            1 => match reader.u8()? {
                0 => Response::Value(None),
                1 => Response::Value(Some(reader.length_prefixed()?.to_vec())),
                _ => return Err("bad value flag"),
            },
            2 => {
                let count = reader.varint_len(SCAN_COUNT_MAX as usize)?;
                let mut items = Vec::with_capacity(count.min(reader.remaining()));
                for _ in 0..count {
                    let key = reader.length_prefixed()?.to_vec();
                    items.push((key, reader.length_prefixed()?.to_vec()));
                }
                Response::Items(items)
            }
            3 => {
                let code = ErrorCode::from_byte(reader.u8()?);
                let message = String::from_utf8_lossy(reader.length_prefixed()?).into_owned();
                Response::Error { code, message }
            }
            _ => return Err("unknown response status"),
        };
        finish(&reader, response)
    }
}

/// Reads one frame's body; `Ok(None)` if the stream ended cleanly before a frame.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    frame_bytes_max: usize,
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut header = [0u8; 4];
    let first = stream.read(&mut header).await?;
    if first == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[first..]).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > frame_bytes_max {
        return Err(ProtocolError::TooLarge { len, max: frame_bytes_max });
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes one frame with `body`.
pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_and_reject_every_cut() {
        let requests = [
            Request::Get { key: b"k".to_vec() },
            Request::Put { key: b"k".to_vec(), value: b"v".to_vec(), durability: Durability::Sync },
            Request::Delete { key: b"k".to_vec(), durability: Durability::Buffered },
            Request::Scan { start: Some(b"a".to_vec()), end: None, limit: 10, reverse: true },
            Request::Batch {
                ops: vec![
                    BatchOp::Put { key: b"a".to_vec(), value: b"1".to_vec() },
                    BatchOp::Delete { key: b"b".to_vec() },
                ],
                durability: Durability::Sync,
            },
        ];
        for request in requests {
            let body = request.encode();
            assert_eq!(Request::decode(&body), Ok(request));
            for cut in 0..body.len() {
                assert!(Request::decode(&body[..cut]).is_err());
            }
        }
        let responses = [
            Response::Ok,
            Response::Value(None),
            Response::Value(Some(b"v".to_vec())),
            Response::Items(vec![(b"k".to_vec(), b"v".to_vec())]),
            Response::Error { code: ErrorCode::Busy, message: "busy".to_string() },
        ];
        for response in responses {
            let body = response.encode();
            assert_eq!(Response::decode(&body), Ok(response));
            for cut in 0..body.len() {
                assert!(Response::decode(&body[..cut]).is_err());
            }
        }
    }
}
