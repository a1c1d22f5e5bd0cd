//! Address allocation: pure arithmetic over the tailnet's IPv4 range, no storage.
//!
//! Addresses are handed out sequentially by *offset* into `100.64.0.0/len` (`len` is 10 in
//! production: all of the CGNAT range). The registry keeps the next offset to try (the
//! high-water mark) in the same transaction as each node insert, so an offset is handed out at
//! most once, even after the node is deleted and across crashes.
//!
//! Skipped offsets:
//! - the range's first and last address (`100.64.0.0`, `100.127.255.255` at /10), which look
//!   like a network and a broadcast address to tools that assume the whole range is a subnet;
//! - `100.100.100.100`, Tailscale's service address (MagicDNS);
//! - `100.115.92.0/23`, reserved by Tailscale.
//!
//! Addresses ending in `.0` or `.255` inside the range are ordinary host addresses (every node
//! holds a /32) and are handed out.
//!
//! The IPv6 address parallels the IPv4 one: `fd7a:115c:a1e0::` with the IPv4 address in its
//! last 32 bits (`100.64.0.1` gets `fd7a:115c:a1e0::6440:1`), so it is unique whenever the IPv4
//! address is, needs no second high-water mark, and an operator can read one from the other.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The start of the tailnet's IPv4 range (the CGNAT range of RFC 6598).
pub const IPV4_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The widest range allowed: `100.64.0.0/10`.
pub const IPV4_PREFIX_LEN_MIN: u8 = 10;
/// The narrowest range allowed: `/30` (two assignable addresses), for tests of exhaustion.
pub const IPV4_PREFIX_LEN_MAX: u8 = 30;
/// The first 48 bits of every node's IPv6 address: `fd7a:115c:a1e0::/48`.
pub const IPV6_PREFIX: [u16; 3] = [0xfd7a, 0x115c, 0xa1e0];
/// Tailscale's service address (MagicDNS), never a node's.
pub const SERVICE_ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// The start of the block Tailscale reserves, `100.115.92.0/23`.
pub const RESERVED_BLOCK: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 0);
/// The length of that block's prefix.
pub const RESERVED_BLOCK_PREFIX_LEN: u8 = 23;

/// Hands out offsets into `100.64.0.0/prefix_len`, skipping the reserved ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocator {
    prefix_len: u8,
}

/// One allocated address pair and the offset it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The offset into the range (the new high-water mark is `offset + 1`).
    pub offset: u32,
    /// The IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The IPv6 address (the IPv4 one embedded, see the module doc).
    pub ipv6: Ipv6Addr,
}

impl Allocator {
    /// The allocator over `100.64.0.0/prefix_len`; `None` unless the length is within
    /// `IPV4_PREFIX_LEN_MIN..=IPV4_PREFIX_LEN_MAX`.
    pub fn new(prefix_len: u8) -> Option<Allocator> {
        (IPV4_PREFIX_LEN_MIN..=IPV4_PREFIX_LEN_MAX)
            .contains(&prefix_len)
            .then_some(Allocator { prefix_len })
    }

    /// The range's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The number of addresses in the range (skipped ones included).
    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix_len))
    }

    /// The IPv4 address at `offset` (which must be inside the range).
    pub fn address(&self, offset: u32) -> Ipv4Addr {
        assert!(offset < self.size(), "offset {offset} outside a range of {}", self.size());
        Ipv4Addr::from(u32::from(IPV4_BASE) + offset)
    }

    /// Whether the address at `offset` may be handed out (inside the range and not skipped).
    pub fn is_assignable(&self, offset: u32) -> bool {
        if offset == 0 || offset >= self.size() - 1 {
            return false;
        }
        let address = self.address(offset);
        address != SERVICE_ADDRESS && !in_reserved_block(address)
    }

    /// The first assignable address at or after `next_offset` (the high-water mark), or `None`
    /// when the range is exhausted. Bounded: skips jump over whole blocks.
    pub fn allocate(&self, next_offset: u32) -> Option<Allocation> {
        let mut offset = next_offset.max(1);
        // Each pass either returns or jumps past one skipped block: three blocks at most.
        for _ in 0..4 {
            if offset >= self.size() - 1 {
                return None;
            }
            let address = self.address(offset);
            if in_reserved_block(address) {
                let block_end = u32::from(RESERVED_BLOCK) + reserved_block_size();
                offset = block_end - u32::from(IPV4_BASE);
                continue;
            }
            if address == SERVICE_ADDRESS {
                offset += 1;
                continue;
            }
            assert!(self.is_assignable(offset), "allocate returns assignable offsets only");
            return Some(Allocation { offset, ipv4: address, ipv6: ipv6_for(address) });
        }
        unreachable!("at most two skipped blocks lie in the way")
    }

    /// How many addresses at or after `next_offset` can still be handed out (arithmetic, no
    /// walk over the range).
    pub fn remaining(&self, next_offset: u32) -> u32 {
        let end = self.size() - 1;
        let start = next_offset.max(1);
        if start >= end {
            return 0;
        }
        let base = u32::from(IPV4_BASE);
        let overlap = |first: u32, count: u32| {
            let (first, last) = (first - base, first - base + count);
            last.min(end).saturating_sub(first.max(start))
        };
        let skipped = overlap(u32::from(SERVICE_ADDRESS), 1)
            + overlap(u32::from(RESERVED_BLOCK), reserved_block_size());
        end - start - skipped
    }
}

/// The IPv6 address that parallels `ipv4`: `fd7a:115c:a1e0::` with `ipv4` in the last 32 bits.
pub fn ipv6_for(ipv4: Ipv4Addr) -> Ipv6Addr {
    let bits = u32::from(ipv4);
    let [a, b, c] = IPV6_PREFIX;
    Ipv6Addr::new(a, b, c, 0, 0, 0, (bits >> 16) as u16, bits as u16)
}

fn reserved_block_size() -> u32 {
    1u32 << (32 - u32::from(RESERVED_BLOCK_PREFIX_LEN))
}

fn in_reserved_block(address: Ipv4Addr) -> bool {
    let start = u32::from(RESERVED_BLOCK);
    (start..start + reserved_block_size()).contains(&u32::from(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(prefix_len: u8, next_offset: u32, expected: Option<(u32, &str, &str)>) {
        let allocator = Allocator::new(prefix_len).expect("valid prefix length");
        let got = allocator.allocate(next_offset).map(|allocation| {
            (allocation.offset, allocation.ipv4.to_string(), allocation.ipv6.to_string())
        });
        let expected = expected.map(|(offset, v4, v6)| (offset, v4.to_string(), v6.to_string()));
        assert_eq!(got, expected, "/{prefix_len} from offset {next_offset}");
    }

    #[test]
    fn allocation_skips_the_reserved_addresses() {
        check(10, 0, Some((1, "100.64.0.1", "fd7a:115c:a1e0::6440:1")));
        check(10, 1, Some((1, "100.64.0.1", "fd7a:115c:a1e0::6440:1")));
        // `.255` and `.0` inside the range are ordinary host addresses.
        check(10, 255, Some((255, "100.64.0.255", "fd7a:115c:a1e0::6440:ff")));
        check(10, 256, Some((256, "100.64.1.0", "fd7a:115c:a1e0::6440:100")));
        let service = u32::from(SERVICE_ADDRESS) - u32::from(IPV4_BASE);
        check(10, service - 1, Some((service - 1, "100.100.100.99", "fd7a:115c:a1e0::6464:6463")));
        check(10, service, Some((service + 1, "100.100.100.101", "fd7a:115c:a1e0::6464:6465")));
        let block = u32::from(RESERVED_BLOCK) - u32::from(IPV4_BASE);
        check(10, block, Some((block + 512, "100.115.94.0", "fd7a:115c:a1e0::6473:5e00")));
        check(10, block + 511, Some((block + 512, "100.115.94.0", "fd7a:115c:a1e0::6473:5e00")));
        check(10, block - 1, Some((block - 1, "100.115.91.255", "fd7a:115c:a1e0::6473:5bff")));
    }

    #[test]
    fn allocation_ends_with_exhaustion() {
        let last = (1u32 << 22) - 2;
        check(10, last, Some((last, "100.127.255.254", "fd7a:115c:a1e0::647f:fffe")));
        check(10, last + 1, None);
        check(10, u32::MAX, None);
        check(30, 0, Some((1, "100.64.0.1", "fd7a:115c:a1e0::6440:1")));
        check(30, 2, Some((2, "100.64.0.2", "fd7a:115c:a1e0::6440:2")));
        check(30, 3, None);
        let allocator = Allocator::new(30).expect("valid");
        assert_eq!(
            (allocator.remaining(0), allocator.remaining(2), allocator.remaining(3)),
            (2, 1, 0)
        );
        assert_eq!(Allocator::new(9), None);
        assert_eq!(Allocator::new(31), None);
    }

    #[test]
    fn walking_the_high_water_mark_never_repeats_and_skips_only_the_reserved() {
        // A /16 inside the range has no reserved block; walk all of /10's reserved neighbours
        // by walking a /17-sized window around each of them instead of the whole range.
        let allocator = Allocator::new(10).expect("valid");
        let service = u32::from(SERVICE_ADDRESS) - u32::from(IPV4_BASE);
        let block = u32::from(RESERVED_BLOCK) - u32::from(IPV4_BASE);
        for start in [0, service - 600, block - 600, allocator.size() - 1200] {
            let mut next = start;
            let mut seen = std::collections::BTreeSet::new();
            while let Some(allocation) = allocator.allocate(next) {
                assert!(allocation.offset >= next, "goes forward");
                assert!(seen.insert(allocation.ipv4), "{} handed out twice", allocation.ipv4);
                assert!(allocator.is_assignable(allocation.offset));
                assert!((next..allocation.offset).all(|offset| !allocator.is_assignable(offset)));
                next = allocation.offset + 1;
                if seen.len() == 1200 {
                    break;
                }
            }
            assert!(!seen.contains(&SERVICE_ADDRESS));
            assert!(seen.iter().all(|address| !in_reserved_block(*address)));
        }
        assert_eq!(allocator.remaining(0), (1 << 22) - 2 - 1 - 512);
    }
}
