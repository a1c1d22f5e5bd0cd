//! WireGuard's four wire messages, byte for byte (all integers little-endian).
//!
//! - type 1, handshake initiation, 148 bytes: `type u32, sender u32, ephemeral [32],
//!   static [48], timestamp [28], mac1 [16], mac2 [16]`.
//! - type 2, handshake response, 92 bytes: `type u32, sender u32, receiver u32,
//!   ephemeral [32], empty [16], mac1 [16], mac2 [16]`.
//! - type 3, cookie reply, 64 bytes: `type u32, receiver u32, nonce [24], cookie [32]`.
//! - type 4, transport data, 32 bytes or more: `type u32, receiver u32, counter u64,
//!   sealed packet [n + 16]`.
//!
//! The type is one byte followed by three reserved zero bytes; a datagram whose first four
//! bytes are anything else, or whose length does not fit its type, parses to an error.

use crate::crypto::{MAC_LEN, TAG_LEN};

/// Type of a handshake initiation.
pub const TYPE_INITIATION: u32 = 1;
/// Type of a handshake response.
pub const TYPE_RESPONSE: u32 = 2;
/// Type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u32 = 3;
/// Type of a transport data message.
pub const TYPE_DATA: u32 = 4;

/// Bytes of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Bytes of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Bytes of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Bytes of a transport data header (type, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Bytes a transport message adds to its (padded) packet: header and tag.
pub const DATA_OVERHEAD_LEN: usize = DATA_HEADER_LEN + TAG_LEN;

const _: () = assert!(INITIATION_LEN == 4 + 4 + 32 + 48 + 28 + 16 + 16);
const _: () = assert!(RESPONSE_LEN == 4 + 4 + 4 + 32 + 16 + 16 + 16);
const _: () = assert!(COOKIE_REPLY_LEN == 4 + 4 + 24 + 32);

/// Offset of the Noise part of an initiation (ephemeral, static, timestamp).
pub const INITIATION_NOISE_OFFSET: usize = 8;
/// Offset of the Noise part of a response (ephemeral, empty payload).
pub const RESPONSE_NOISE_OFFSET: usize = 12;

/// A parsed datagram: borrowed views, no copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Type 1.
    Initiation(&'a [u8; INITIATION_LEN]),
    /// Type 2.
    Response(&'a [u8; RESPONSE_LEN]),
    /// Type 3.
    CookieReply(&'a [u8; COOKIE_REPLY_LEN]),
    /// Type 4: the receiver's index, the counter, and the sealed packet with its tag.
    Data {
        /// The index the receiver chose for this session.
        receiver_index: u32,
        /// The sender's message counter (the AEAD nonce).
        counter: u64,
        /// Ciphertext and Poly1305 tag.
        sealed: &'a [u8],
    },
}

/// Why a datagram is not a WireGuard message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the four type bytes.
    TooShort,
    /// Type byte unknown or reserved bytes nonzero.
    UnknownType,
    /// The length does not fit the type.
    BadLength,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooShort => write!(f, "datagram shorter than a message type"),
            ParseError::UnknownType => write!(f, "unknown message type"),
            ParseError::BadLength => write!(f, "datagram length does not fit its message type"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one datagram.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, ParseError> {
    let Some(head) = datagram.get(..4) else { return Err(ParseError::TooShort) };
    let message_type = u32::from_le_bytes(head.try_into().expect("four bytes"));
    match message_type {
        TYPE_INITIATION => {
            datagram.try_into().map(Message::Initiation).map_err(|_| ParseError::BadLength)
        }
        TYPE_RESPONSE => {
            datagram.try_into().map(Message::Response).map_err(|_| ParseError::BadLength)
        }
        TYPE_COOKIE_REPLY => {
            datagram.try_into().map(Message::CookieReply).map_err(|_| ParseError::BadLength)
        }
        TYPE_DATA => {
            if datagram.len() < DATA_OVERHEAD_LEN {
                return Err(ParseError::BadLength);
            }
            Ok(Message::Data {
                receiver_index: read_u32(datagram, 4),
                counter: u64::from_le_bytes(datagram[8..16].try_into().expect("eight bytes")),
                sealed: &datagram[DATA_HEADER_LEN..],
            })
        }
        _ => Err(ParseError::UnknownType),
    }
}

/// The little-endian `u32` at `offset`.
pub fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("four bytes"))
}

/// Writes `value` little-endian at `offset`.
pub fn write_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// Offset of mac1 in a handshake message of `len` bytes (mac1 and mac2 close it).
pub const fn mac1_offset(len: usize) -> usize {
    len - 2 * MAC_LEN
}

/// Offset of mac2 in a handshake message of `len` bytes.
pub const fn mac2_offset(len: usize) -> usize {
    len - MAC_LEN
}

/// The sender index of an initiation or response.
pub fn sender_index(message: &[u8]) -> u32 {
    read_u32(message, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(datagram: &[u8], expected: Result<&str, ParseError>) {
        let actual = parse(datagram).map(|message| match message {
            Message::Initiation(_) => "initiation",
            Message::Response(_) => "response",
            Message::CookieReply(_) => "cookie",
            Message::Data { .. } => "data",
        });
        assert_eq!(actual, expected);
    }

    fn typed(message_type: u32, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        if len >= 4 {
            write_u32(&mut bytes, 0, message_type);
        }
        bytes
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_views_stay_in_bounds(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            message_type in 0u32..6,
        ) {
            let mut datagram = bytes;
            if datagram.len() >= 4 {
                write_u32(&mut datagram, 0, message_type);
            }
            if let Ok(Message::Data { sealed, .. }) = parse(&datagram) {
                proptest::prop_assert_eq!(sealed.len() + DATA_HEADER_LEN, datagram.len());
                proptest::prop_assert!(sealed.len() >= TAG_LEN);
            }
        }
    }

    #[test]
    fn parses_each_type_at_its_exact_length_only() {
        check(&typed(1, 148), Ok("initiation"));
        check(&typed(1, 147), Err(ParseError::BadLength));
        check(&typed(1, 149), Err(ParseError::BadLength));
        check(&typed(2, 92), Ok("response"));
        check(&typed(3, 64), Ok("cookie"));
        check(&typed(4, 32), Ok("data"));
        check(&typed(4, 31), Err(ParseError::BadLength));
        check(&typed(4, 1500), Ok("data"));
        check(&typed(5, 148), Err(ParseError::UnknownType));
        check(&typed(0x0100_0001, 148), Err(ParseError::UnknownType));
        check(&[1, 0, 0], Err(ParseError::TooShort));
        check(&[], Err(ParseError::TooShort));
    }
}
