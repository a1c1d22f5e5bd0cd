//! Length-prefixed frames over a byte stream, and the typed message codec carried inside them.
//!
//! Why: the control channel runs over one TCP-like stream (`Env::TcpStream`), which has no
//! message boundaries. A frame is `length (u32, big-endian) | payload (length bytes)`; the
//! length is checked against a limit before a single payload byte is allocated or read, so a
//! hostile peer cannot make us reserve gigabytes. A message is `version (u8) | postcard body`;
//! an unknown version is a typed error, never a guess. Byte tables: `docs/channel.md`.

use std::fmt;
use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sim::Env;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// The longest frame payload anyone may send or receive (4 MiB): a full network map of a large
/// tailnet fits; anything longer is refused before it is read.
pub const FRAME_LEN_MAX: usize = 4 << 20;
/// The message format version written before every postcard body. 2: a filter rule's sources
/// in a map travel as a byte string of their own encoding (`netmap::filter_wire`).
pub const MESSAGE_VERSION: u8 = 2;
/// Bytes of one piece when BUGGIFY splits a frame into tiny writes.
const SHORT_WRITE_PIECE_LEN_MAX: usize = 7;

/// Why a frame could not be read or written, or a message not decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame longer than the limit; nothing of it was read.
    TooLong {
        /// The announced payload length.
        len: u64,
        /// The limit it broke.
        max: usize,
    },
    /// The stream ended cleanly between two frames.
    Closed,
    /// The stream failed (or ended inside a frame: `UnexpectedEof`).
    Io(io::Error),
    /// A message carried a format version this build does not know.
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// A message's body did not decode as the expected type (or had trailing bytes).
    Malformed {
        /// What postcard said.
        reason: String,
    },
    /// A message could not be encoded (a type postcard cannot represent).
    Unencodable {
        /// What postcard said.
        reason: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "frame too long: {len} bytes announced, at most {max} allowed")
            }
            FrameError::Closed => f.write_str("stream closed by the peer"),
            FrameError::Io(error) => write!(f, "stream i/o failed ({:?}): {error}", error.kind()),
            FrameError::UnknownVersion { version } => {
                write!(f, "unknown message version {version} (this build speaks {MESSAGE_VERSION})")
            }
            FrameError::Malformed { reason } => write!(f, "malformed message: {reason}"),
            FrameError::Unencodable { reason } => write!(f, "message cannot be encoded: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(error: io::Error) -> Self {
        FrameError::Io(error)
    }
}

/// Encodes `message` as `MESSAGE_VERSION | postcard(message)`.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, &mut out)?;
    assert_eq!(out.first(), Some(&MESSAGE_VERSION));
    Ok(out)
}

/// Appends `MESSAGE_VERSION | postcard(message)` to `out` (on error `out` is emptied).
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.push(MESSAGE_VERSION);
    match postcard::to_extend(message, std::mem::take(out)) {
        Ok(extended) => {
            *out = extended;
            assert!(out.len() > start);
            Ok(())
        }
        Err(error) => {
            // postcard consumed the buffer with the error; the caller starts over.
            Err(FrameError::Unencodable { reason: error.to_string() })
        }
    }
}

/// Decodes a message `encode` wrote; an unknown version, a bad body or trailing bytes are errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(FrameError::Malformed { reason: "empty message".to_owned() });
    };
    if version != MESSAGE_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    let (message, rest) = postcard::take_from_bytes(body)
        .map_err(|error| FrameError::Malformed { reason: error.to_string() })?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed { reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(message)
}

/// Reads one frame into `payload` (replacing its contents). Refuses, before reading or
/// allocating, a frame longer than `len_max` (at most `FRAME_LEN_MAX`).
///
/// Not cancel-safe: a read abandoned inside a frame leaves the stream mid-frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    len_max: usize,
    payload: &mut Vec<u8>,
) -> Result<(), FrameError> {
    assert!(len_max <= FRAME_LEN_MAX);
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    reader.read_exact(&mut header[first..]).await?;
    let len = u32::from_be_bytes(header);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > len_max {
        return Err(FrameError::TooLong { len: u64::from(len), max: len_max });
    }
    payload.clear();
    payload.resize(len_usize, 0);
    reader.read_exact(payload).await?;
    assert_eq!(payload.len(), len_usize);
    Ok(())
}

/// Writes `header | payload` as one frame and flushes. `scratch` is reused between calls.
///
/// BUGGIFY `coordinator.channel.short_write` writes it in pieces of a few bytes.
pub async fn write_frame<E: Env, W: AsyncWrite + Unpin>(
    env: &E,
    writer: &mut W,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let Some(len) = u32::try_from(payload.len()).ok().filter(|_| payload.len() <= FRAME_LEN_MAX)
    else {
        return Err(FrameError::TooLong { len: payload.len() as u64, max: FRAME_LEN_MAX });
    };
    scratch.clear();
    scratch.extend_from_slice(&len.to_be_bytes());
    scratch.extend_from_slice(payload);
    // A congested path or a nearly full send buffer hands the peer a frame in fragments, with
    // pauses between them; the reader must reassemble any split of header and payload.
    if env.buggify("coordinator.channel.short_write") {
        for piece in scratch.chunks(SHORT_WRITE_PIECE_LEN_MAX) {
            writer.write_all(piece).await?;
            writer.flush().await?;
        }
    } else {
        writer.write_all(scratch).await?;
    }
    writer.flush().await?;
    Ok(())
}
