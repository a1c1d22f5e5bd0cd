//! What a device dropped, by reason and by origin: the reason alone for counters
//! (`wireguard_drops_total{reason}`), and the reason with who or what caused it (a peer, a
//! stranger's key, a UDP address, an unrouted destination) so an operator's log can say which
//! peer is misconfigured. Plain data, no I/O; the production binary rate-limits the log lines.
//!
//! The origins are bounded: past `DROP_ORIGINS_MAX` distinct (reason, origin) pairs, a flood
//! from ever new addresses or keys is counted under `DropOrigin::Other`, never in new memory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::encode_key;
use crate::crypto::KEY_LEN;

/// Distinct (reason, origin) pairs a device remembers.
pub const DROP_ORIGINS_MAX: usize = 256;

/// Who or what caused a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropOrigin {
    /// Nothing to name (a packet from the interface that is not IP).
    Unnamed,
    /// A peer of the device, by public key.
    Peer([u8; KEY_LEN]),
    /// A handshake from a key that is no peer of the device, sent from this address.
    UnknownKey([u8; KEY_LEN], SocketAddr),
    /// The UDP address a datagram that could not be attributed to a peer came from.
    Endpoint(SocketAddr),
    /// A destination no peer's allowed IPs cover.
    Destination(IpAddr),
    /// Any origin beyond `DROP_ORIGINS_MAX`.
    Other,
}

impl fmt::Display for DropOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = encode_key;
        match self {
            DropOrigin::Unnamed => write!(f, "-"),
            DropOrigin::Peer(public) => write!(f, "peer {}", key(public)),
            DropOrigin::UnknownKey(public, from) => {
                write!(f, "unknown key {} at {from}", key(public))
            }
            DropOrigin::Endpoint(from) => write!(f, "endpoint {from}"),
            DropOrigin::Destination(to) => write!(f, "destination {to}"),
            DropOrigin::Other => write!(f, "other origins"),
        }
    }
}

/// Drop counts by reason and by (reason, origin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropLedger {
    by_reason: BTreeMap<&'static str, u64>,
    // Invariant: at most `DROP_ORIGINS_MAX` entries besides `Other` ones, and for each reason
    // the counts sum to `by_reason[reason]`.
    by_origin: BTreeMap<(&'static str, DropOrigin), u64>,
}

impl DropLedger {
    /// Counts `count` drops for `reason`, caused by `origin`.
    pub fn count(&mut self, reason: &'static str, origin: DropOrigin, count: u64) {
        assert!(count > 0, "a drop counts at least one");
        *self.by_reason.entry(reason).or_insert(0) += count;
        let known = self.by_origin.contains_key(&(reason, origin));
        let origin = if known || self.by_origin.len() < DROP_ORIGINS_MAX {
            origin
        } else {
            DropOrigin::Other
        };
        *self.by_origin.entry((reason, origin)).or_insert(0) += count;
        assert!(self.by_origin.len() <= DROP_ORIGINS_MAX + self.by_reason.len());
    }

    /// Drops by reason.
    pub fn by_reason(&self) -> &BTreeMap<&'static str, u64> {
        &self.by_reason
    }

    /// Drops by reason and origin.
    pub fn by_origin(&self) -> &BTreeMap<(&'static str, DropOrigin), u64> {
        &self.by_origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_bounded_and_sum_to_the_reason() {
        let mut ledger = DropLedger::default();
        for index in 0..(DROP_ORIGINS_MAX as u16 + 50) {
            let from = SocketAddr::from(([10, 0, 0, 1], index));
            ledger.count("parse", DropOrigin::Endpoint(from), 2);
        }
        ledger.count("tx_not_ip", DropOrigin::Unnamed, 1);
        let total = DROP_ORIGINS_MAX as u64 + 50;
        assert_eq!(ledger.by_reason().get("parse"), Some(&(2 * total)));
        assert_eq!(ledger.by_origin().get(&("parse", DropOrigin::Other)), Some(&100));
        assert_eq!(ledger.by_origin().get(&("tx_not_ip", DropOrigin::Other)), Some(&1));
        let origins = ledger.by_origin().iter();
        let parse: u64 = origins.filter(|(key, _)| key.0 == "parse").map(|(_, count)| count).sum();
        assert_eq!(parse, 2 * total);
        assert_eq!(ledger.by_origin().len(), DROP_ORIGINS_MAX + 2);
    }
}
