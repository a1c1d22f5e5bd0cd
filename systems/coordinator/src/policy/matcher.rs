//! `CompiledFilter`: a node's `FilterRule`s indexed for per-packet decisions.
//!
//! Every destination entry becomes prefixes (a range `a-b` splits into at most two per bit),
//! kept in one sorted table per address family keyed by (prefix length, masked address, first
//! port). A packet probes once per distinct prefix length present (a handful in practice: /32,
//! /128, a few subnets, /0 for `*`), so the cost grows with log(rules), not with rules. A hit
//! then checks the port, the protocol and the rule's sources (a binary search in its set).

use std::fmt;
use std::net::IpAddr;

use super::{IpRange, IpSet};
use crate::types::{FilterRule, PortRange};

/// The most rules one filter may hold.
pub const FILTER_RULES_MAX: usize = 4_000_000;
/// The most table keys (prefixes times ports) one filter may hold.
pub const FILTER_KEYS_MAX: usize = 64_000_000;

/// The protocols a rule with no `IPProto` admits: TCP, UDP, ICMP, ICMPv6.
pub const DEFAULT_PROTOCOLS: [u8; 4] = [6, 17, 1, 58];

/// Why rules could not be compiled into a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterError {
    /// A source or destination string is not `*`, an address, a CIDR or a range.
    BadAddress(String),
    /// Too many rules or table keys.
    TooLarge(&'static str),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::BadAddress(text) => write!(f, "not an address, CIDR or range: {text:?}"),
            FilterError::TooLarge(what) => write!(f, "filter too large: {what}"),
        }
    }
}

impl std::error::Error for FilterError {}

/// Whether a protocol has ports (TCP, UDP, SCTP); for others the port is not checked.
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

struct Rule {
    sources: IpSet,
    /// A bit per protocol number.
    protocols: [u64; 4],
}

#[derive(Default)]
struct Table {
    /// Distinct prefix lengths present, ascending.
    lengths: Vec<u8>,
    /// (prefix length, masked address, ports, rule), sorted.
    keys: Vec<(u8, u128, PortRange, u32)>,
}

fn mask(value: u128, length: u8, bits: u8) -> u128 {
    let host_bits = u32::from(bits - length);
    if host_bits >= 128 { 0 } else { value & !((1u128 << host_bits) - 1) }
}

/// Splits a range into the prefixes that cover it exactly.
fn prefixes(range: IpRange, out: &mut Vec<(u8, u128)>) {
    let bits: u8 = if range.v6 { 128 } else { 32 };
    let mut first = range.first;
    loop {
        let align =
            if first == 0 { u32::from(bits) } else { first.trailing_zeros().min(u32::from(bits)) };
        let span = range.last - first;
        let fit = if span == u128::MAX { 128 } else { 127 - (span + 1).leading_zeros() };
        let host_bits = align.min(fit);
        let length = bits - u8::try_from(host_bits).expect("at most 128");
        out.push((length, first));
        let size_minus_one = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        match (first + size_minus_one).checked_add(1) {
            Some(next) if next <= range.last => first = next,
            _ => return,
        }
    }
}

fn parse_set(texts: &[String]) -> Result<IpSet, FilterError> {
    if texts.len() > super::ipset::SET_RANGES_MAX / 2 {
        return Err(FilterError::TooLarge("addresses in one rule"));
    }
    let mut ranges = Vec::with_capacity(texts.len());
    for text in texts {
        if text == "*" {
            ranges.extend([IpRange::all(false), IpRange::all(true)]);
        } else {
            ranges.push(IpRange::parse(text).ok_or_else(|| FilterError::BadAddress(text.clone()))?);
        }
    }
    Ok(IpSet::from_ranges(ranges))
}

/// A node's packet filter, indexed by destination.
pub struct CompiledFilter {
    rules: Vec<Rule>,
    v4: Table,
    v6: Table,
}

impl CompiledFilter {
    /// Indexes the rules.
    pub fn from_rules(rules: &[FilterRule]) -> Result<CompiledFilter, FilterError> {
        if rules.len() > FILTER_RULES_MAX {
            return Err(FilterError::TooLarge("rules"));
        }
        let mut filter =
            CompiledFilter { rules: Vec::new(), v4: Table::default(), v6: Table::default() };
        let mut prefix_list = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let mut protocols = [0u64; 4];
            let list: &[u8] =
                if rule.ip_proto.is_empty() { &DEFAULT_PROTOCOLS } else { &rule.ip_proto };
            for &protocol in list {
                protocols[usize::from(protocol / 64)] |= 1 << (protocol % 64);
            }
            filter.rules.push(Rule { sources: parse_set(&rule.src_ips)?, protocols });
            let rule_index = u32::try_from(index).expect("rules are bounded by FILTER_RULES_MAX");
            for destination in &rule.dst_ports {
                let set = parse_set(std::slice::from_ref(&destination.ip))?;
                for range in set.ranges() {
                    prefix_list.clear();
                    prefixes(*range, &mut prefix_list);
                    let table = if range.v6 { &mut filter.v6 } else { &mut filter.v4 };
                    for &(length, value) in &prefix_list {
                        table.keys.push((length, value, destination.ports, rule_index));
                    }
                }
                if filter.v4.keys.len() + filter.v6.keys.len() > FILTER_KEYS_MAX {
                    return Err(FilterError::TooLarge("destination prefixes"));
                }
            }
        }
        for table in [&mut filter.v4, &mut filter.v6] {
            table.keys.sort_unstable();
            table.lengths = table.keys.iter().map(|key| key.0).collect();
            table.lengths.dedup();
        }
        assert_eq!(filter.rules.len(), rules.len());
        Ok(filter)
    }

    /// Whether a packet from `src` to `dst` with `protocol` (and, for TCP, UDP and SCTP,
    /// `dst_port`; ignored otherwise) is accepted.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, protocol: u8, dst_port: u16) -> bool {
        let (v6, value) = super::ipset::addr_key(dst);
        let (table, bits) = if v6 { (&self.v6, 128) } else { (&self.v4, 32) };
        let check_port = has_ports(protocol);
        let protocol_bit = 1u64 << (protocol % 64);
        for &length in &table.lengths {
            let masked = mask(value, length, bits);
            let start = table.keys.partition_point(|key| (key.0, key.1) < (length, masked));
            for &(key_length, key_value, ports, rule) in &table.keys[start..] {
                if key_length != length
                    || key_value != masked
                    || (check_port && ports.first > dst_port)
                {
                    break;
                }
                if check_port && ports.last < dst_port {
                    continue;
                }
                let rule = &self.rules[rule as usize];
                if rule.protocols[usize::from(protocol / 64)] & protocol_bit != 0
                    && rule.sources.contains(src)
                {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(range: &str, expected: &[&str]) {
        let mut out = Vec::new();
        let range = IpRange::parse(range).unwrap();
        prefixes(range, &mut out);
        let texts: Vec<String> = out
            .iter()
            .map(|&(length, value)| {
                let bits = if range.v6 { 128 } else { 32 };
                let size =
                    if bits - length >= 128 { u128::MAX } else { (1u128 << (bits - length)) - 1 };
                IpRange { v6: range.v6, first: value, last: value + size }.to_string()
            })
            .collect();
        assert_eq!(texts, expected);
    }

    #[test]
    fn ranges_split_into_prefixes() {
        check("10.0.0.1", &["10.0.0.1"]);
        check("10.0.0.0/8", &["10.0.0.0/8"]);
        check("10.0.0.1-10.0.0.4", &["10.0.0.1", "10.0.0.2/31", "10.0.0.4"]);
        check("0.0.0.0/0", &["0.0.0.0/0"]);
        check("::/0", &["::/0"]);
        check(
            "100.64.0.0-100.115.91.255",
            &[
                "100.64.0.0/11",
                "100.96.0.0/12",
                "100.112.0.0/15",
                "100.114.0.0/16",
                "100.115.0.0/18",
                "100.115.64.0/20",
                "100.115.80.0/21",
                "100.115.88.0/22",
            ],
        );
    }
}
