//! The error enums of the tunnel's two operation families. Every decapsulation error is a
//! dropped and counted datagram: bad input from the network is never a panic.

use crate::messages::ParseError;

/// Why an IP packet was not encapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncapsulateError {
    /// The peer's endpoint is unknown (not configured and never heard from).
    NoEndpoint,
    /// The output buffer cannot hold the message.
    BufferTooSmall,
}

impl std::fmt::Display for EncapsulateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncapsulateError::NoEndpoint => write!(f, "the peer's endpoint is unknown"),
            EncapsulateError::BufferTooSmall => write!(f, "output buffer too small"),
        }
    }
}

impl std::error::Error for EncapsulateError {}

/// Why a received datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecapsulateError {
    /// Not a WireGuard message.
    Parse(ParseError),
    /// A handshake message without a valid mac1 for our key.
    InvalidMac1,
    /// The Noise handshake failed to authenticate (or a Diffie-Hellman gave zero).
    HandshakeFailed,
    /// An initiation from a static key that is not this tunnel's peer.
    UnknownPeer,
    /// An initiation whose timestamp is not newer than the last accepted one.
    TimestampReplayed,
    /// An initiation less than `INITIATION_INTERVAL_MIN` after the last accepted one.
    InitiationFlood,
    /// A response to no initiation of ours in progress.
    UnexpectedResponse,
    /// A cookie reply to no initiation of ours in progress.
    UnexpectedCookieReply,
    /// A cookie reply that did not authenticate.
    InvalidCookieReply,
    /// A transport message for an index we do not have.
    UnknownIndex,
    /// A transport message under a keypair past its age or message limit.
    KeypairExpired,
    /// A transport message whose counter was seen before or is too old.
    Replayed,
    /// A transport message that did not authenticate.
    Forged,
    /// An authenticated transport message whose content is not an IP packet.
    InvalidInnerPacket,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl DecapsulateError {
    /// A short stable name, for counters.
    pub fn name(&self) -> &'static str {
        match self {
            DecapsulateError::Parse(_) => "parse",
            DecapsulateError::InvalidMac1 => "invalid_mac1",
            DecapsulateError::HandshakeFailed => "handshake_failed",
            DecapsulateError::UnknownPeer => "unknown_peer",
            DecapsulateError::TimestampReplayed => "timestamp_replayed",
            DecapsulateError::InitiationFlood => "initiation_flood",
            DecapsulateError::UnexpectedResponse => "unexpected_response",
            DecapsulateError::UnexpectedCookieReply => "unexpected_cookie_reply",
            DecapsulateError::InvalidCookieReply => "invalid_cookie_reply",
            DecapsulateError::UnknownIndex => "unknown_index",
            DecapsulateError::KeypairExpired => "keypair_expired",
            DecapsulateError::Replayed => "replayed",
            DecapsulateError::Forged => "forged",
            DecapsulateError::InvalidInnerPacket => "invalid_inner_packet",
            DecapsulateError::BufferTooSmall => "buffer_too_small",
        }
    }
}

impl From<ParseError> for DecapsulateError {
    fn from(error: ParseError) -> Self {
        DecapsulateError::Parse(error)
    }
}

impl std::fmt::Display for DecapsulateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecapsulateError::Parse(error) => write!(f, "malformed datagram: {error}"),
            other => write!(f, "datagram dropped: {}", other.name().replace('_', " ")),
        }
    }
}

impl std::error::Error for DecapsulateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecapsulateError::Parse(error) => Some(error),
            _ => None,
        }
    }
}

/// Why a device refused a change to its peers. Nothing changed when it says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconfigureError {
    /// The device already has its most peers (`DeviceCore::set_peer_count_max`).
    PeerLimit {
        /// The limit that was reached.
        peer_count_max: usize,
    },
    /// The same public key twice in one peer list.
    DuplicatePeer {
        /// The key listed twice.
        public_key: [u8; crate::crypto::KEY_LEN],
    },
    /// A peer whose public key is the device's own.
    LocalKey,
    /// The device's task has stopped (only through a `DeviceHandle`).
    DeviceStopped,
}

impl std::fmt::Display for ReconfigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconfigureError::PeerLimit { peer_count_max } => {
                write!(f, "the device already has its {peer_count_max} peers")
            }
            ReconfigureError::DuplicatePeer { public_key } => {
                let key = crate::config::encode_key(public_key);
                write!(f, "peer {key} is listed twice")
            }
            ReconfigureError::LocalKey => write!(f, "a peer has the device's own public key"),
            ReconfigureError::DeviceStopped => write!(f, "the device has stopped"),
        }
    }
}

impl std::error::Error for ReconfigureError {}
