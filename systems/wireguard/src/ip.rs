//! The few IP header fields WireGuard reads: version, total length, source and destination.
//!
//! The tunnel strips the padding of a decrypted packet with the length its header gives, and
//! the device routes by destination and checks the source against the peer's allowed IPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Bytes of an IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// The header fields of a well-formed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The packet's length as its header states it (padding excluded).
    pub total_len: usize,
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
}

/// Reads the header of `packet`; `None` if it is not an IPv4 or IPv6 packet that fits.
pub fn header(packet: &[u8]) -> Option<Header> {
    match packet.first()? >> 4 {
        4 if packet.len() >= IPV4_HEADER_LEN => {
            let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let source: [u8; 4] = packet[12..16].try_into().expect("fixed layout");
            let destination: [u8; 4] = packet[16..20].try_into().expect("fixed layout");
            (IPV4_HEADER_LEN..=packet.len()).contains(&total_len).then_some(Header {
                total_len,
                source: IpAddr::V4(Ipv4Addr::from(source)),
                destination: IpAddr::V4(Ipv4Addr::from(destination)),
            })
        }
        6 if packet.len() >= IPV6_HEADER_LEN => {
            let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let total_len = IPV6_HEADER_LEN + payload_len;
            let source: [u8; 16] = packet[8..24].try_into().expect("fixed layout");
            let destination: [u8; 16] = packet[24..40].try_into().expect("fixed layout");
            (total_len <= packet.len()).then_some(Header {
                total_len,
                source: IpAddr::V6(Ipv6Addr::from(source)),
                destination: IpAddr::V6(Ipv6Addr::from(destination)),
            })
        }
        _ => None,
    }
}

/// Builds a minimal IPv4 packet (no checksum, protocol 253 "experimentation") around
/// `payload`: for tests, benchmarks and simulations.
pub fn ipv4_packet(source: Ipv4Addr, destination: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total_len = IPV4_HEADER_LEN + payload.len();
    let mut packet = vec![0u8; total_len];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&u16::try_from(total_len).expect("fits IPv4").to_be_bytes());
    packet[8] = 64;
    packet[9] = 253;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    packet[IPV4_HEADER_LEN..].copy_from_slice(payload);
    packet
}

/// Builds a minimal IPv6 packet (next header 253) around `payload`.
pub fn ipv6_packet(source: Ipv6Addr, destination: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; IPV6_HEADER_LEN + payload.len()];
    packet[0] = 0x60;
    let payload_len = u16::try_from(payload.len()).expect("fits IPv6");
    packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
    packet[6] = 253;
    packet[7] = 64;
    packet[8..24].copy_from_slice(&source.octets());
    packet[24..40].copy_from_slice(&destination.octets());
    packet[IPV6_HEADER_LEN..].copy_from_slice(payload);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_padding_is_excluded() {
        let source = Ipv4Addr::new(10, 0, 0, 1);
        let destination = Ipv4Addr::new(10, 0, 0, 2);
        let mut packet = ipv4_packet(source, destination, b"abc");
        packet.extend_from_slice(&[0; 9]);
        let parsed = header(&packet).expect("valid");
        assert_eq!(parsed.total_len, 23);
        assert_eq!(parsed.source, IpAddr::V4(source));
        let v6 = ipv6_packet(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, b"xy");
        assert_eq!(header(&v6).expect("valid").total_len, 42);
        assert_eq!(header(&v6[..41]), None);
        assert_eq!(header(&packet[..19]), None);
        assert_eq!(header(&[0x50; 64]), None);
        assert_eq!(header(&[]), None);
    }
}
