//! The `wg` configuration format (as `wg setconf` and `wg-quick` read it), parsed into a
//! `DeviceConfig`: an `[Interface]` with `PrivateKey`, `ListenPort`, `ListenAddress` (ours, not
//! `wg`'s: the address to bind, default all) and the wg-quick keys
//! `Address` and `MTU`, then `[Peer]` sections with `PublicKey`, `PresharedKey`,
//! `AllowedIPs`, `Endpoint` and `PersistentKeepalive`. Keys are base64; `#` starts a comment.
//!
//! Endpoints must be literal `IP:port` (this library resolves no names); wg-quick's hook and
//! DNS keys are accepted and ignored, any other key is an error naming its line.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::allowed_ips::IpNet;
use crate::crypto::KEY_LEN;
use crate::device::{DeviceConfig, PeerConfig};

/// The default tunnel MTU (wg-quick's for IPv4 and IPv6 underlays alike: 1500 - 80).
pub const MTU_DEFAULT: usize = 1420;
/// wg-quick keys this parser accepts and ignores.
const IGNORED_KEYS: [&str; 7] =
    ["dns", "table", "preup", "postup", "predown", "postdown", "saveconfig"];

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A line that is neither a section header, a `Key = Value` pair, nor blank.
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A key outside any section, or unknown in its section.
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// A value that does not parse for its key.
    BadValue {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// An unknown `[Section]`.
    UnknownSection {
        /// 1-based line number.
        line: usize,
    },
    /// A required key is missing (`PrivateKey`, or a peer's `PublicKey`).
    Missing {
        /// The key.
        key: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax { line } => write!(f, "line {line}: expected `Key = Value`"),
            ConfigError::UnknownKey { line, key } => write!(f, "line {line}: unknown key {key}"),
            ConfigError::BadValue { line, key } => write!(f, "line {line}: bad value for {key}"),
            ConfigError::UnknownSection { line } => write!(f, "line {line}: unknown section"),
            ConfigError::Missing { key } => write!(f, "missing {key}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A parsed configuration: the device's and the interface addresses (for a TUN device).
#[derive(Clone, Debug)]
pub struct WgConfig {
    /// Everything the device needs.
    pub device: DeviceConfig,
    /// The interface's own addresses (`Address`), for configuring a TUN device.
    pub addresses: Vec<IpNet>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Interface,
    Peer,
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<WgConfig, ConfigError> {
    let mut private_key = None;
    let mut device = DeviceConfig {
        private_key: Zeroizing::new([0; KEY_LEN]),
        listen_port: 0,
        listen_addr: None,
        peers: Vec::new(),
        handshake_load_limit_per_sec: 100,
        mtu: MTU_DEFAULT,
    };
    let mut addresses = Vec::new();
    let mut section = Section::None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if content.starts_with('[') {
            section = match content.to_ascii_lowercase().as_str() {
                "[interface]" => Section::Interface,
                "[peer]" => {
                    device.peers.push(empty_peer());
                    Section::Peer
                }
                _ => return Err(ConfigError::UnknownSection { line }),
            };
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(ConfigError::Syntax { line });
        };
        let (key, value) = (key.trim(), value.trim());
        let bad = || ConfigError::BadValue { line, key: key.to_string() };
        let lower = key.to_ascii_lowercase();
        match (section, lower.as_str()) {
            (Section::Interface, "privatekey") => {
                private_key = Some(decode_key(value).ok_or_else(bad)?)
            }
            (Section::Interface, "listenport") => {
                device.listen_port = value.parse().map_err(|_| bad())?
            }
            (Section::Interface, "listenaddress") => {
                device.listen_addr = Some(value.parse().map_err(|_| bad())?)
            }
            (Section::Interface, "mtu") => device.mtu = value.parse().map_err(|_| bad())?,
            (Section::Interface, "address") => addresses.extend(parse_nets(value).ok_or_else(bad)?),
            (Section::Interface, ignored) if IGNORED_KEYS.contains(&ignored) => {}
            (Section::Peer, _) => {
                let peer = device.peers.last_mut().expect("a [Peer] header pushed one");
                if !set_peer_key(peer, &lower, value).ok_or_else(bad)? {
                    return Err(ConfigError::UnknownKey { line, key: key.to_string() });
                }
            }
            _ => return Err(ConfigError::UnknownKey { line, key: key.to_string() }),
        }
    }
    device.private_key = private_key.ok_or(ConfigError::Missing { key: "PrivateKey" })?;
    if device.peers.iter().any(|peer| peer.public_key == [0; KEY_LEN]) {
        return Err(ConfigError::Missing { key: "PublicKey" });
    }
    Ok(WgConfig { device, addresses })
}

fn empty_peer() -> PeerConfig {
    PeerConfig {
        public_key: [0; KEY_LEN],
        preshared_key: None,
        allowed_ips: Vec::new(),
        endpoint: None,
        persistent_keepalive: None,
    }
}

/// Sets one `[Peer]` key: `Some(false)` for an unknown key, `None` for a bad value.
fn set_peer_key(peer: &mut PeerConfig, key: &str, value: &str) -> Option<bool> {
    match key {
        "publickey" => peer.public_key = *decode_key(value)?,
        "presharedkey" => peer.preshared_key = Some(decode_key(value)?),
        "allowedips" => peer.allowed_ips.extend(parse_nets(value)?),
        "endpoint" => peer.endpoint = Some(value.parse::<SocketAddr>().ok()?),
        "persistentkeepalive" => {
            let seconds: u16 = if value == "off" { 0 } else { value.parse().ok()? };
            peer.persistent_keepalive = (seconds > 0).then(|| Duration::from_secs(seconds.into()));
        }
        _ => return Some(false),
    }
    Some(true)
}

fn parse_nets(value: &str) -> Option<Vec<IpNet>> {
    value.split(',').filter(|part| !part.trim().is_empty()).map(|part| part.parse().ok()).collect()
}

/// Decodes a base64 (standard alphabet, padded) 32-byte key.
pub fn decode_key(text: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let bytes = text.as_bytes();
    if bytes.len() != 44 || bytes[43] != b'=' {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    let mut accumulator = 0u32;
    let mut bit_count = 0;
    let mut written = 0;
    for &byte in &bytes[..43] {
        accumulator = (accumulator << 6) | u32::from(base64_value(byte)?);
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            key[written] = (accumulator >> bit_count) as u8;
            written += 1;
        }
    }
    // 43 symbols carry 258 bits: the last two must be zero in a canonical encoding.
    (written == KEY_LEN && accumulator & 0b11 == 0).then_some(key)
}

/// Encodes a 32-byte key as base64 (for printing public keys).
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(44);
    for chunk in key.chunks(3) {
        let block =
            chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for position in 0..=chunk.len() {
            text.push(char::from(ALPHABET[(block >> (18 - 6 * position) & 63) as usize]));
        }
    }
    text.push('=');
    text
}

fn base64_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUBLIC: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn parses_a_wg_quick_file() {
        let text = format!(
            "# comment\n[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 51820\n\
             Address = 10.0.0.1/24, fd00::1/64\nDNS = 1.1.1.1\n\n[Peer]\nPublicKey = {PUBLIC}\n\
             AllowedIPs = 10.0.0.2/32, 10.1.0.0/16\nEndpoint = 192.0.2.7:51820\n\
             PersistentKeepalive = 25 # NAT\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(encode_key(&config.device.private_key), PRIVATE);
        assert_eq!(config.device.listen_port, 51820);
        assert_eq!(config.device.listen_addr, None);
        let bound =
            parse(&format!("[Interface]\nPrivateKey = {PRIVATE}\nListenAddress = 127.0.0.1\n"))
                .expect("parses");
        assert_eq!(bound.device.listen_addr, Some("127.0.0.1".parse().expect("an address")));
        let bad = parse(&format!("[Interface]\nPrivateKey = {PRIVATE}\nListenAddress = host\n"));
        assert!(matches!(bad, Err(ConfigError::BadValue { line: 3, .. })));
        assert_eq!(config.addresses.len(), 2);
        let peer = &config.device.peers[0];
        assert_eq!(encode_key(&peer.public_key), PUBLIC);
        assert_eq!(peer.allowed_ips.len(), 2);
        assert_eq!(peer.endpoint, Some("192.0.2.7:51820".parse().expect("addr")));
        assert_eq!(peer.persistent_keepalive, Some(Duration::from_secs(25)));
    }

    #[test]
    fn refuses_bad_files_with_the_line() {
        let check =
            |text: &str, expected: ConfigError| assert_eq!(parse(text).unwrap_err(), expected);
        check(
            "[Interface]\nPrivateKey = short=\n",
            ConfigError::BadValue { line: 2, key: "PrivateKey".into() },
        );
        check(
            "[Interface]\nColour = blue\n",
            ConfigError::UnknownKey { line: 2, key: "Colour".into() },
        );
        check("[Nope]\n", ConfigError::UnknownSection { line: 1 });
        check("[Interface]\njunk\n", ConfigError::Syntax { line: 2 });
        check("[Interface]\n", ConfigError::Missing { key: "PrivateKey" });
        let no_public =
            format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nEndpoint = 1.2.3.4:5\n");
        check(&no_public, ConfigError::Missing { key: "PublicKey" });
        let name =
            format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nEndpoint = example.com:5\n");
        check(&name, ConfigError::BadValue { line: 4, key: "Endpoint".into() });
    }

    #[test]
    fn base64_round_trips_and_rejects_non_canonical_keys() {
        for seed in 0..=255u8 {
            let key = [seed; KEY_LEN];
            assert_eq!(*decode_key(&encode_key(&key)).expect("round trip"), key);
        }
        assert!(decode_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmn=").is_none());
        assert!(decode_key("!Anz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").is_none());
    }
}
