//! Cryptokey routing: the allowed-IPs table, a longest-prefix match over IPv4 and IPv6.
//!
//! Sending, the destination address picks the peer; receiving, a decrypted packet is accepted
//! only if its source address maps back to the peer that sent it. The table keeps one
//! `BTreeMap` of masked prefixes per prefix length and tries the lengths present from the
//! longest down: at most 33 (IPv4) or 129 (IPv6) ordered-map probes per lookup, and
//! deterministic iteration everywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fd00::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpNet {
    /// The address (host bits are ignored).
    pub addr: IpAddr,
    /// Leading bits that matter: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
}

/// Why a string is not an `IpNet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNetParseError(pub String);

impl fmt::Display for IpNetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IP network: {:?}", self.0)
    }
}

impl std::error::Error for IpNetParseError {}

impl IpNet {
    /// A network; `None` if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<IpNet> {
        (prefix_len <= max_len(addr)).then_some(IpNet { addr, prefix_len })
    }

    /// The same network with its host bits cleared (`10.1.2.3/8` is `10.0.0.0/8`): the form
    /// two spellings of one network share.
    pub fn network(&self) -> IpNet {
        let bits = masked(self.addr, self.prefix_len);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((bits >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(bits)),
        };
        IpNet { addr, prefix_len: self.prefix_len }
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4()
            && masked(addr, self.prefix_len) == masked(self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(text: &str) -> Result<IpNet, IpNetParseError> {
        let error = || IpNetParseError(text.to_string());
        let (addr, prefix_len) = match text.trim().split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| error())?;
                (addr, len.parse::<u8>().map_err(|_| error())?)
            }
            None => {
                let addr: IpAddr = text.trim().parse().map_err(|_| error())?;
                (addr, max_len(addr))
            }
        };
        IpNet::new(addr, prefix_len).ok_or_else(error)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The address as a left-aligned 128-bit integer with all but the first `len` bits cleared.
fn masked(addr: IpAddr, len: u8) -> u128 {
    let bits = match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    if len == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(len))) }
}

/// One address family's prefixes: `(prefix_len, masked address) -> value`.
#[derive(Clone, Debug)]
struct Family<T> {
    entries: BTreeMap<(u8, u128), T>,
    // Invariant: exactly the prefix lengths with an entry, longest first.
    lengths: Vec<u8>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family { entries: BTreeMap::new(), lengths: Vec::new() }
    }
}

/// A longest-prefix-match table from networks to values (peer ids).
#[derive(Clone, Debug)]
pub struct AllowedIps<T> {
    v4: Family<T>,
    v6: Family<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps { v4: Family::default(), v6: Family::default() }
    }
}

impl<T: Clone + PartialEq> AllowedIps<T> {
    /// Maps `net` to `value`, replacing what it mapped to (as `wg set` does).
    pub fn insert(&mut self, net: IpNet, value: T) {
        let family = if net.addr.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        family.entries.insert((net.prefix_len, masked(net.addr, net.prefix_len)), value);
        if !family.lengths.contains(&net.prefix_len) {
            family.lengths.push(net.prefix_len);
            family.lengths.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        let family = if addr.is_ipv4() { &self.v4 } else { &self.v6 };
        family.lengths.iter().find_map(|&len| family.entries.get(&(len, masked(addr, len))))
    }

    /// Removes `net` (in any spelling of it); returns what it mapped to.
    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        let family = if net.addr.is_ipv4() { &mut self.v4 } else { &mut self.v6 };
        let removed = family.entries.remove(&(net.prefix_len, masked(net.addr, net.prefix_len)))?;
        let entries = &family.entries;
        if !entries.keys().any(|(entry_len, _)| *entry_len == net.prefix_len) {
            family.lengths.retain(|len| *len != net.prefix_len);
        }
        Some(removed)
    }

    /// The number of networks in the table.
    pub fn len(&self) -> usize {
        self.v4.entries.len() + self.v6.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every network mapped to `value`.
    pub fn remove_value(&mut self, value: &T) {
        for family in [&mut self.v4, &mut self.v6] {
            family.entries.retain(|_, entry| entry != value);
            let entries = &family.entries;
            family.lengths.retain(|len| entries.keys().any(|(entry_len, _)| entry_len == len));
        }
    }

    /// Every `(network, value)`, IPv4 first, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &T)> {
        let v4 = self.v4.entries.iter().map(|(&(len, bits), value)| {
            let addr = IpAddr::from(std::net::Ipv4Addr::from((bits >> 96) as u32));
            (IpNet { addr, prefix_len: len }, value)
        });
        let v6 = self.v6.entries.iter().map(|(&(len, bits), value)| {
            (IpNet { addr: IpAddr::from(std::net::Ipv6Addr::from(bits)), prefix_len: len }, value)
        });
        v4.chain(v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("valid network")
    }

    #[track_caller]
    fn check(table: &AllowedIps<u32>, addr: &str, expected: Option<u32>) {
        let addr: IpAddr = addr.parse().expect("valid address");
        assert_eq!(table.lookup(addr).copied(), expected, "{addr}");
    }

    #[test]
    fn longest_prefix_wins_in_both_families() {
        let mut table = AllowedIps::default();
        table.insert(net("0.0.0.0/0"), 0);
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.1.0.0/16"), 2);
        table.insert(net("10.1.2.3"), 3);
        table.insert(net("fd00::/8"), 4);
        table.insert(net("fd00:1::/32"), 5);
        check(&table, "10.1.2.3", Some(3));
        check(&table, "10.1.2.4", Some(2));
        check(&table, "10.2.0.1", Some(1));
        check(&table, "192.168.0.1", Some(0));
        check(&table, "fd00:1::9", Some(5));
        check(&table, "fd99::1", Some(4));
        check(&table, "2001:db8::1", None);
        table.remove_value(&2);
        check(&table, "10.1.2.4", Some(1));
        assert_eq!(table.iter().count(), 5);
        assert_eq!(table.len(), 5);
        assert_eq!(table.remove(net("10.9.9.9/8")), Some(1));
        assert_eq!(table.remove(net("10.0.0.0/8")), None);
        check(&table, "10.2.0.1", Some(0));
        check(&table, "10.1.2.3", Some(3));
        assert_eq!(net("10.1.2.3/8").network(), net("10.0.0.0/8"));
        assert_eq!(net("fd00:1::9/32").network(), net("fd00:1::/32"));
        assert!(net("10.0.0.0/8").contains("10.200.0.1".parse().expect("addr")));
        assert!(!net("10.0.0.0/8").contains("::1".parse().expect("addr")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        assert_eq!(net("10.1.2.3/8").to_string(), "10.1.2.3/8");
    }

    proptest! {
        #[test]
        fn lookup_matches_a_linear_scan(
            nets in prop::collection::vec((any::<bool>(), any::<u32>(), 0u8..=32), 0..40),
            probes in prop::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut table = AllowedIps::default();
            let mut model: Vec<(IpNet, usize)> = Vec::new();
            for (value, (is_remove, bits, len)) in nets.into_iter().enumerate() {
                // Removals reuse a network inserted before (when there is one), so they hit.
                let net = match model.get(bits as usize % model.len().max(1)) {
                    Some((existing, _)) if is_remove => *existing,
                    _ => IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(bits)), len)
                        .expect("len <= 32"),
                };
                let position = model.iter().position(|(existing, _)| {
                    existing.prefix_len == net.prefix_len && existing.network() == net.network()
                });
                let previous = position.map(|position| model.remove(position).1);
                if is_remove {
                    prop_assert_eq!(table.remove(net), previous);
                } else {
                    table.insert(net, value);
                    model.push((net, value));
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for probe in probes {
                let addr = IpAddr::from(std::net::Ipv4Addr::from(probe));
                let expected = model
                    .iter()
                    .filter(|(net, _)| net.contains(addr))
                    .max_by_key(|(net, _)| net.prefix_len)
                    .map(|(_, value)| *value);
                prop_assert_eq!(table.lookup(addr).copied(), expected);
            }
        }
    }
}
