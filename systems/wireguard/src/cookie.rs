//! MAC1, MAC2 and cookies: WireGuard's defence against handshake floods.
//!
//! Every handshake message ends with `mac1 = MAC(HASH(LABEL_MAC1 || S_pub_receiver), msg_a)`,
//! which proves the sender knows the receiver's public key, and `mac2 = MAC(cookie, msg_b)`.
//! A receiver under load answers a message without a valid mac2 with a cookie reply: the cookie
//! `MAC(R, source address)` sealed with `XAEAD(HASH(LABEL_COOKIE || S_pub_receiver), nonce,
//! cookie, mac1)`, where the secret `R` changes every two minutes. The sender keeps the cookie
//! for two minutes (less a latency margin) and uses it as the mac2 key, proving it owns its
//! address.
//!
//! `CookieGenerator` is the receiving side (one per local key), `CookieJar` the sending side
//! (one per peer), and `LoadMeter` decides "under load" from the handshake rate.

use std::net::SocketAddr;
use std::time::Duration;

use rand_core::{CryptoRng, RngCore};
use sim::Instant;
use zeroize::Zeroizing;

use crate::crypto::{self, KEY_LEN, MAC_LEN, Secret, TAG_LEN, XNONCE_LEN};
use crate::messages::{COOKIE_REPLY_LEN, TYPE_COOKIE_REPLY, mac1_offset, mac2_offset, write_u32};

/// The label hashed with the receiver's public key to key mac1.
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// The label hashed with the receiver's public key to key cookie encryption.
pub const LABEL_COOKIE: &[u8] = b"cookie--";
/// How long a cookie secret lives (and a cookie stays usable, less the latency margin).
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Margin so a sender stops using a cookie before the receiver's secret changes.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

/// Why a cookie reply was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieReplyError;

/// The receiving side: checks mac1/mac2 and makes cookie replies, for one local static key.
pub struct CookieGenerator {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
    secret: Secret,
    // Invariant: `secret` was drawn at `secret_born`; `None` until the first cookie.
    secret_born: Option<Instant>,
}

impl CookieGenerator {
    /// A generator for messages sent to `local_public`.
    pub fn new(local_public: &[u8; KEY_LEN]) -> Self {
        CookieGenerator {
            mac1_key: crypto::hash(LABEL_MAC1, local_public),
            cookie_key: crypto::hash(LABEL_COOKIE, local_public),
            secret: Zeroizing::new([0u8; KEY_LEN]),
            secret_born: None,
        }
    }

    /// Whether the handshake `message` carries a valid mac1 for our key.
    pub fn verify_mac1(&self, message: &[u8]) -> bool {
        let offset = mac1_offset(message.len());
        let expected = crypto::mac(&self.mac1_key, &message[..offset]);
        crypto::ct_eq(&expected, &message[offset..offset + MAC_LEN])
    }

    /// Whether the handshake `message` carries a valid mac2 for a cookie given to `source`.
    pub fn verify_mac2<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        rng: &mut R,
        message: &[u8],
        source: SocketAddr,
    ) -> bool {
        let cookie = self.cookie(now, rng, source);
        let offset = mac2_offset(message.len());
        let expected = crypto::mac(&cookie, &message[..offset]);
        crypto::ct_eq(&expected, &message[offset..])
    }

    /// Writes the cookie reply to `message` (whose sender index it answers) into `out`.
    pub fn write_reply<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        rng: &mut R,
        message: &[u8],
        source: SocketAddr,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) {
        let cookie = self.cookie(now, rng, source);
        let mut nonce = [0u8; XNONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let offset = mac1_offset(message.len());
        let mac1 = &message[offset..offset + MAC_LEN];
        let sealed = crypto::xaead_seal(&self.cookie_key, &nonce, &cookie, mac1);
        write_u32(out, 0, TYPE_COOKIE_REPLY);
        out[4..8].copy_from_slice(&message[4..8]);
        out[8..32].copy_from_slice(&nonce);
        out[32..].copy_from_slice(&sealed);
    }

    fn cookie<R: RngCore + CryptoRng>(
        &mut self,
        now: Instant,
        rng: &mut R,
        source: SocketAddr,
    ) -> [u8; MAC_LEN] {
        let fresh = self
            .secret_born
            .is_some_and(|born| now.saturating_duration_since(born) < COOKIE_SECRET_MAX_AGE);
        if !fresh {
            rng.fill_bytes(&mut *self.secret);
            self.secret_born = Some(now);
        }
        let (bytes, len) = address_bytes(source);
        crypto::mac(&*self.secret, &bytes[..len])
    }
}

/// The sending side: stamps mac1/mac2 on our handshake messages to one peer and takes the
/// cookies that peer sends.
pub struct CookieJar {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Instant)>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl CookieJar {
    /// A jar for messages sent to `peer_public`.
    pub fn new(peer_public: &[u8; KEY_LEN]) -> Self {
        CookieJar {
            mac1_key: crypto::hash(LABEL_MAC1, peer_public),
            cookie_key: crypto::hash(LABEL_COOKIE, peer_public),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Writes mac1 and (with a live cookie) mac2 over the end of the handshake `message`.
    pub fn stamp(&mut self, now: Instant, message: &mut [u8]) {
        let offset = mac1_offset(message.len());
        let mac1 = crypto::mac(&self.mac1_key, &message[..offset]);
        message[offset..offset + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let cookie_age_max = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
        let live = self
            .cookie
            .as_ref()
            .filter(|(_, received)| now.saturating_duration_since(*received) < cookie_age_max);
        let offset = mac2_offset(message.len());
        let mac2 = match live {
            Some((cookie, _)) => crypto::mac(&**cookie, &message[..offset]),
            None => [0u8; MAC_LEN],
        };
        message[offset..].copy_from_slice(&mac2);
    }

    /// Takes the cookie from a reply to our last stamped message.
    pub fn take_reply(
        &mut self,
        now: Instant,
        reply: &[u8; COOKIE_REPLY_LEN],
    ) -> Result<(), CookieReplyError> {
        let Some(mac1) = self.last_mac1 else { return Err(CookieReplyError) };
        let nonce: &[u8; XNONCE_LEN] = reply[8..32].try_into().expect("fixed layout");
        let sealed: &[u8; MAC_LEN + TAG_LEN] = reply[32..].try_into().expect("fixed layout");
        let cookie = crypto::xaead_open(&self.cookie_key, nonce, sealed, &mac1)
            .map_err(|_| CookieReplyError)?;
        self.cookie = Some((Zeroizing::new(cookie), now));
        // One cookie per message: a replayed reply cannot refresh the cookie's age.
        self.last_mac1 = None;
        Ok(())
    }
}

/// The bytes a cookie binds: the IP address and the UDP port (big-endian), and their count.
fn address_bytes(source: SocketAddr) -> ([u8; 18], usize) {
    let mut bytes = [0u8; 18];
    let ip_len = match source.ip() {
        std::net::IpAddr::V4(ip) => {
            bytes[..4].copy_from_slice(&ip.octets());
            4
        }
        std::net::IpAddr::V6(ip) => {
            bytes[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    bytes[ip_len..ip_len + 2].copy_from_slice(&source.port().to_be_bytes());
    (bytes, ip_len + 2)
}

/// Decides "under load": more than `limit_per_sec` handshake messages in the current second.
#[derive(Clone, Debug)]
pub struct LoadMeter {
    limit_per_sec: u32,
    window_start: Instant,
    count: u32,
}

impl LoadMeter {
    /// A meter with the given threshold; `0` means always under load.
    pub fn new(limit_per_sec: u32) -> Self {
        LoadMeter { limit_per_sec, window_start: Instant::ZERO, count: 0 }
    }

    /// Counts one handshake message and says whether the receiver is now under load.
    pub fn under_load(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.limit_per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{INITIATION_LEN, sender_index};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn cookie_round_trip_makes_mac2_valid_for_that_address_only() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let receiver_public = [4u8; KEY_LEN];
        let mut generator = CookieGenerator::new(&receiver_public);
        let mut jar = CookieJar::new(&receiver_public);
        let now = Instant::from_nanos(5);
        let mut message = [0u8; INITIATION_LEN];
        write_u32(&mut message, 4, 77);
        jar.stamp(now, &mut message);
        assert!(generator.verify_mac1(&message));
        assert!(!generator.verify_mac2(now, &mut rng, &message, addr(1)));
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        generator.write_reply(now, &mut rng, &message, addr(1), &mut reply);
        assert_eq!(sender_index(&reply), 77);
        jar.take_reply(now, &reply).expect("fresh reply");
        assert_eq!(jar.take_reply(now, &reply), Err(CookieReplyError));
        jar.stamp(now, &mut message);
        assert!(generator.verify_mac1(&message));
        assert!(generator.verify_mac2(now, &mut rng, &message, addr(1)));
        assert!(!generator.verify_mac2(now, &mut rng, &message, addr(2)));
        let later = now + COOKIE_SECRET_MAX_AGE;
        jar.stamp(later, &mut message);
        assert!(!generator.verify_mac2(later, &mut rng, &message, addr(1)));
        message[0] ^= 1;
        assert!(!generator.verify_mac1(&message));
    }

    #[test]
    fn load_meter_counts_per_second() {
        let mut meter = LoadMeter::new(2);
        let now = Instant::from_nanos(1_000_000_000);
        assert!(!meter.under_load(now));
        assert!(!meter.under_load(now));
        assert!(meter.under_load(now));
        assert!(!meter.under_load(now + Duration::from_secs(1)));
        assert!(LoadMeter::new(0).under_load(now));
    }
}
