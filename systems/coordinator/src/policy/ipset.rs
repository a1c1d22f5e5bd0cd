//! Address sets as sorted, disjoint, coalesced ranges, and Tailscale's string forms of them.
//!
//! IPv4 and IPv6 live in one order (every IPv4 range before every IPv6 range), which is also
//! the order Tailscale writes them in. A set is written one string per maximal contiguous range:
//! a lone address as the address, a range that is exactly one prefix as CIDR, anything else as
//! `first-last`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wireguard::IpNet;

/// The most ranges one set may hold (bounded by policy size and node count in practice).
pub const SET_RANGES_MAX: usize = 1 << 22;

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    /// Whether the addresses are IPv6.
    pub v6: bool,
    /// The first address, as an integer.
    pub first: u128,
    /// The last address (inclusive), as an integer.
    pub last: u128,
}

fn family_max(v6: bool) -> u128 {
    if v6 { u128::MAX } else { u128::from(u32::MAX) }
}

/// The integer and family of an address.
pub fn addr_key(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn key_addr(v6: bool, value: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        let value = u32::try_from(value).expect("an IPv4 key fits 32 bits");
        IpAddr::V4(Ipv4Addr::from(value))
    }
}

impl IpRange {
    /// One address.
    pub fn addr(addr: IpAddr) -> IpRange {
        let (v6, value) = addr_key(addr);
        IpRange { v6, first: value, last: value }
    }

    /// The addresses of a prefix (host bits of `net.addr` ignored).
    pub fn prefix(net: IpNet) -> IpRange {
        let (v6, value) = addr_key(net.addr);
        let bits: u32 = if v6 { 128 } else { 32 };
        let host_bits = bits - u32::from(net.prefix_len.min(bits as u8));
        let host_mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        let range =
            IpRange { v6, first: value & !host_mask, last: (value & !host_mask) | host_mask };
        debug_assert!(range.last <= family_max(v6));
        range
    }

    /// Every address of one family.
    pub fn all(v6: bool) -> IpRange {
        IpRange { v6, first: 0, last: family_max(v6) }
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (v6, value) = addr_key(addr);
        v6 == self.v6 && self.first <= value && value <= self.last
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.v6 == other.v6 && self.first <= other.last && other.first <= self.last
    }

    /// Whether `other` lies wholly inside this range.
    pub fn covers(&self, other: &IpRange) -> bool {
        self.v6 == other.v6 && self.first <= other.first && other.last <= self.last
    }

    /// The prefix length if the range is exactly one prefix.
    fn prefix_len(&self) -> Option<u8> {
        let size_minus_one = self.last - self.first;
        let host_bits = 128 - size_minus_one.leading_zeros();
        let aligned = size_minus_one.checked_add(1).is_none_or(|size| size.is_power_of_two())
            && (host_bits == 128 || self.first & ((1u128 << host_bits) - 1) == 0);
        let bits = if self.v6 { 128 } else { 32 };
        aligned.then(|| u8::try_from(bits - host_bits).expect("a prefix length fits u8"))
    }

    /// Parses Tailscale's forms: an address, a CIDR or `first-last`. `*` is not a range.
    pub fn parse(text: &str) -> Option<IpRange> {
        if let Some((first, last)) = text.split_once('-') {
            let first = IpRange::addr(first.parse().ok()?);
            let last = IpRange::addr(last.parse().ok()?);
            let ok = first.v6 == last.v6 && first.first <= last.first;
            return ok.then_some(IpRange { v6: first.v6, first: first.first, last: last.last });
        }
        if text.contains('/') {
            return text.parse::<IpNet>().ok().map(IpRange::prefix);
        }
        text.parse::<IpAddr>().ok().map(IpRange::addr)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = key_addr(self.v6, self.first);
        if self.first == self.last {
            return write!(f, "{first}");
        }
        match self.prefix_len() {
            Some(length) => write!(f, "{first}/{length}"),
            None => write!(f, "{first}-{}", key_addr(self.v6, self.last)),
        }
    }
}

/// A set of addresses: sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpSet {
    ranges: Vec<IpRange>,
}

impl IpSet {
    /// The set of the given ranges (in any order, overlapping or not).
    pub fn from_ranges(mut ranges: Vec<IpRange>) -> IpSet {
        assert!(ranges.len() <= SET_RANGES_MAX, "an address set beyond SET_RANGES_MAX");
        ranges.sort_unstable();
        let mut merged: Vec<IpRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            debug_assert!(range.first <= range.last);
            match merged.last_mut() {
                Some(last)
                    if last.v6 == range.v6
                        && last.last.checked_add(1).is_none_or(|next| next >= range.first) =>
                {
                    last.last = last.last.max(range.last);
                }
                _ => merged.push(range),
            }
        }
        let set = IpSet { ranges: merged };
        set.check_invariants();
        set
    }

    /// Asserts the ranges are sorted, disjoint and not adjacent.
    pub fn check_invariants(&self) {
        for pair in self.ranges.windows(2) {
            assert!(pair[0].first <= pair[0].last);
            if pair[0].v6 == pair[1].v6 {
                assert!(pair[0].last.checked_add(1).is_some_and(|next| next < pair[1].first));
            } else {
                assert!(!pair[0].v6 && pair[1].v6, "IPv4 ranges come first");
            }
        }
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[IpRange] {
        &self.ranges
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `addr` is in the set (binary search).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let probe = IpRange::addr(addr);
        let index =
            self.ranges.partition_point(|range| (range.v6, range.first) <= (probe.v6, probe.first));
        index > 0 && self.ranges[index - 1].contains(addr)
    }

    /// Whether the set shares an address with `range`.
    pub fn overlaps(&self, range: &IpRange) -> bool {
        self.ranges.iter().any(|own| own.overlaps(range))
    }

    /// Whether `range` lies wholly inside the set.
    pub fn covers(&self, range: &IpRange) -> bool {
        self.ranges.iter().any(|own| own.covers(range))
    }

    /// Tailscale's strings for the set, one per range, in order.
    pub fn strings(&self) -> Vec<String> {
        self.ranges.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(inputs: &[&str], expected: &[&str]) {
        let ranges = inputs.iter().map(|text| IpRange::parse(text).expect("a range")).collect();
        assert_eq!(IpSet::from_ranges(ranges).strings(), expected);
    }

    #[test]
    fn formats_ranges_prefixes_and_addresses() {
        check(&["100.64.0.1"], &["100.64.0.1"]);
        check(&["100.64.0.1", "100.64.0.0"], &["100.64.0.0/31"]);
        check(&["100.64.0.1", "100.64.0.2"], &["100.64.0.1-100.64.0.2"]);
        check(&["100.64.0.0/10"], &["100.64.0.0/10"]);
        check(&["10.0.0.0/8", "10.33.0.0/16"], &["10.0.0.0/8"]);
        check(&["fd7a:115c:a1e0::1", "10.0.0.1"], &["10.0.0.1", "fd7a:115c:a1e0::1"]);
        check(&["100.64.0.0-100.115.91.255"], &["100.64.0.0-100.115.91.255"]);
        check(&["0.0.0.0/0", "::/0"], &["0.0.0.0/0", "::/0"]);
        check(&["255.255.255.255", "0.0.0.0-255.255.255.254"], &["0.0.0.0/0"]);
        check(&["::/1", "8000::/1"], &["::/0"]);
    }

    #[test]
    fn parse_rejects_bad_forms() {
        for text in ["*", "1.2.3", "10.0.0.2-10.0.0.1", "10.0.0.1-::1", "1.2.3.4/33"] {
            assert_eq!(IpRange::parse(text), None, "{text}");
        }
    }

    #[test]
    fn contains_and_overlaps() {
        let set = IpSet::from_ranges(vec![
            IpRange::parse("10.0.0.0/8").unwrap(),
            IpRange::parse("fd7a::/16").unwrap(),
        ]);
        assert!(set.contains("10.1.2.3".parse().unwrap()));
        assert!(!set.contains("11.0.0.0".parse().unwrap()));
        assert!(set.contains("fd7a::9".parse().unwrap()));
        assert!(!set.contains("::a00:1".parse().unwrap()));
        assert!(set.overlaps(&IpRange::parse("10.33.0.0/16").unwrap()));
        assert!(set.covers(&IpRange::parse("10.33.0.0/16").unwrap()));
        assert!(!set.covers(&IpRange::parse("0.0.0.0/0").unwrap()));
    }
}
