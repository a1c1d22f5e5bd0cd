//! The wire format: every datagram is one version byte followed by a postcard-encoded
//! `Message`.
//!
//! ```text
//! | version u8 (= WIRE_VERSION) | postcard(Message) |   total <= DATAGRAM_SIZE_BYTES_MAX
//! ```
//!
//! Postcard is a stable, documented serde format (varint integers, length-prefixed byte
//! strings, enum variants as varint indexes). Decoding checks the length first, then the
//! version, then that postcard consumed every byte; anything else is a `WireError`, which the
//! node counts and drops. Nothing here panics on hostile input.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::hyparview::{HvMessage, Peer};
use crate::plumtree::PtMessage;
use crate::store::Value;
use crate::swim::SwimMessage;

/// The version byte of this format.
pub const WIRE_VERSION: u8 = 2;
/// The largest datagram we send or accept (fits a 1472-byte UDP payload with room to spare).
pub const DATAGRAM_SIZE_BYTES_MAX: usize = 1400;
/// Payload bytes per MST node or value fragment.
pub const FRAGMENT_SIZE_BYTES: usize = 1200;

/// Everything nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Membership and failure detection.
    Swim(SwimMessage),
    /// Overlay maintenance (HyParView).
    Overlay(HvMessage),
    /// Broadcast tree (Plumtree) traffic from an active neighbour.
    Tree {
        /// The sender.
        from: Peer,
        /// The message.
        message: PtMessage,
    },
    /// Hot-key push: fresh entries, forwarded while `hops` remain and they were news.
    Push {
        /// Forwarding budget left.
        hops: u8,
        /// The entries.
        entries: Vec<(Vec<u8>, Value)>,
    },
    /// Anti-entropy: what is your MST root?
    RootRequest {
        /// Session id.
        session: u64,
    },
    /// Anti-entropy: my root.
    RootResponse {
        /// Session id.
        session: u64,
        /// Root digest.
        root: Digest,
    },
    /// Anti-entropy: send me these nodes.
    NodesRequest {
        /// Session id.
        session: u64,
        /// Node digests.
        digests: Vec<Digest>,
    },
    /// One fragment of a postcard-encoded MST node.
    NodePart {
        /// Session id.
        session: u64,
        /// The node's digest.
        digest: Digest,
        /// Fragment index.
        index: u16,
        /// Fragment count.
        count: u16,
        /// Fragment bytes.
        bytes: Vec<u8>,
    },
    /// The node is gone (the tree changed since the root was sent).
    NodeMissing {
        /// Session id.
        session: u64,
        /// The node's digest.
        digest: Digest,
    },
    /// Anti-entropy: send me the values of these keys.
    EntriesRequest {
        /// Session id.
        session: u64,
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// Anti-entropy: values (a key we no longer hold is simply absent).
    EntriesResponse {
        /// Session id.
        session: u64,
        /// Keys and values.
        entries: Vec<(Vec<u8>, Value)>,
        /// Requested keys we do not hold.
        absent: Vec<Vec<u8>>,
    },
    /// Anti-entropy: one fragment of a postcard-encoded value too large for an
    /// `EntriesResponse` (a big counter or set).
    ValuePart {
        /// Session id.
        session: u64,
        /// The key.
        key: Vec<u8>,
        /// `hash_bytes` of the whole encoding: fragments of different encodings (the value
        /// changed between two answers) are never combined, and the result is checked.
        digest: Digest,
        /// Fragment index.
        index: u16,
        /// Fragment count.
        count: u16,
        /// Fragment bytes.
        bytes: Vec<u8>,
    },
}

/// Why a datagram could not be encoded or decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum WireError {
    /// Zero bytes.
    Empty,
    /// Larger than `DATAGRAM_SIZE_BYTES_MAX`.
    Oversized {
        /// Its size.
        size_bytes: usize,
    },
    /// An unknown version byte.
    Version(u8),
    /// Postcard refused the body, or left bytes over.
    Malformed(postcard::Error),
    /// The body decoded but bytes were left over.
    Trailing {
        /// How many.
        count: usize,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Empty => write!(f, "empty datagram"),
            WireError::Oversized { size_bytes } => {
                write!(f, "datagram of {size_bytes} bytes exceeds {DATAGRAM_SIZE_BYTES_MAX}")
            }
            WireError::Version(version) => write!(f, "unknown wire version {version}"),
            WireError::Malformed(error) => write!(f, "malformed message: {error}"),
            WireError::Trailing { count } => write!(f, "{count} trailing bytes"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Malformed(error) => Some(error),
            _ => None,
        }
    }
}

/// Encodes `message`; fails if it would exceed `DATAGRAM_SIZE_BYTES_MAX`.
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut bytes = vec![WIRE_VERSION];
    let body = postcard::to_stdvec(message).map_err(WireError::Malformed)?;
    bytes.extend_from_slice(&body);
    if bytes.len() > DATAGRAM_SIZE_BYTES_MAX {
        return Err(WireError::Oversized { size_bytes: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes one datagram.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > DATAGRAM_SIZE_BYTES_MAX {
        return Err(WireError::Oversized { size_bytes: bytes.len() });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (message, rest) = postcard::take_from_bytes(body).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing { count: rest.len() });
    }
    Ok(message)
}

/// An encoded datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Destination.
    pub to: SocketAddr,
    /// Encoded bytes.
    pub bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::swim::MemberId;

    #[test]
    fn round_trip_and_version_check() {
        let message = Message::Swim(SwimMessage::Nack { seq: 7, from: MemberId(3) });
        let bytes = encode(&message).expect("fits");
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode(&bytes).expect("decodes"), message);
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(matches!(decode(&wrong), Err(WireError::Version(9))));
        let mut trailing = bytes;
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(WireError::Trailing { count: 1 })));
        assert!(matches!(decode(&[]), Err(WireError::Empty)));
        assert!(matches!(decode(&[1; 2000]), Err(WireError::Oversized { .. })));
    }

    #[test]
    fn the_largest_value_fragment_fits_a_datagram() {
        use crate::store::KEY_SIZE_BYTES_MAX;
        let message = Message::ValuePart {
            session: u64::MAX,
            key: vec![0xff; KEY_SIZE_BYTES_MAX],
            digest: Digest(u128::MAX),
            index: u16::MAX,
            count: u16::MAX,
            bytes: vec![0xff; FRAGMENT_SIZE_BYTES],
        };
        let bytes = encode(&message).expect("fits");
        assert_eq!(decode(&bytes).expect("decodes"), message);
    }

    #[test]
    fn oversized_messages_are_refused_on_encode() {
        let message = Message::EntriesRequest { session: 1, keys: vec![vec![0; 2000]] };
        assert!(matches!(encode(&message), Err(WireError::Oversized { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn versioned_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut datagram = vec![WIRE_VERSION];
            datagram.extend(bytes);
            let _ = decode(&datagram);
        }
    }
}
