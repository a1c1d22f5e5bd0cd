//! Secrets of the registry as pure functions: pre-auth keys and API keys, their text forms,
//! their SHA-256 digests, and the rules that decide whether a stored key may be used now.
//!
//! A secret is shown once, when created; only its digest is stored, so a copy of the database
//! does not let anyone register a node or call the admin API. Pre-auth keys are looked up by
//! digest (a 192-bit random secret needs no salt). API keys carry a public prefix to find the
//! record by and a secret compared digest to digest in constant time.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::RegistryError;
use crate::types::{NodeId, UserId};

/// How a pre-auth key's text begins.
pub const PREAUTH_KEY_PREFIX: &str = "gmkey-";
/// Random bytes in a pre-auth key (printed as hex).
pub const PREAUTH_SECRET_BYTES: usize = 24;
/// How an API key's text begins.
pub const API_KEY_PREFIX: &str = "gmapi-";
/// Random bytes of an API key's public prefix (printed as hex).
pub const API_PREFIX_BYTES: usize = 5;
/// Random bytes of an API key's secret (printed as hex).
pub const API_SECRET_BYTES: usize = 32;
/// The longest key text accepted before any parsing or hashing.
pub const KEY_TEXT_BYTES_MAX: usize = 256;

/// A stored pre-auth key (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAuthKeyInfo {
    /// Its id (for listing and expiring).
    pub id: u64,
    /// The user it registers nodes for (ignored for ownership when `tags` is not empty).
    pub user: UserId,
    /// Whether it may register any number of nodes; otherwise it is consumed by the first.
    pub reusable: bool,
    /// Whether nodes it registers are ephemeral.
    pub ephemeral: bool,
    /// ACL tags for the nodes it registers (sorted); a tagged node belongs to no user.
    pub tags: Vec<String>,
    /// When it was created (unix seconds).
    pub created: u64,
    /// When it stops working (unix seconds); `None` never.
    pub expiration: Option<u64>,
    /// The node that consumed it (single-use keys only).
    pub used_by: Option<NodeId>,
}

impl PreAuthKeyInfo {
    /// Whether it may register a new node at `now` (unix seconds): a typed refusal otherwise.
    pub fn check_usable(&self, now: u64) -> Result<(), RegistryError> {
        if let Some(expiration) = self.expiration
            && expiration <= now
        {
            return Err(RegistryError::PreAuthKeyExpired { key: self.id, expiration });
        }
        // Only single-use keys are marked used; a stored reusable key marked used (a damaged
        // record) is refused rather than trusted.
        if let Some(node) = self.used_by {
            return Err(RegistryError::PreAuthKeyUsed { key: self.id, node });
        }
        Ok(())
    }
}

/// A stored API key (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// Its id.
    pub id: u64,
    /// Its public prefix (hex), how the key names its record.
    pub prefix: String,
    /// When it was created (unix seconds).
    pub created: u64,
    /// When it stops working (unix seconds); `None` never.
    pub expiration: Option<u64>,
    /// Whether an admin revoked it.
    pub revoked: bool,
}

impl ApiKeyInfo {
    /// Whether it may be used at `now` (unix seconds): a typed refusal otherwise.
    pub fn check_usable(&self, now: u64) -> Result<(), RegistryError> {
        if self.revoked {
            return Err(RegistryError::ApiKeyRevoked { prefix: self.prefix.clone() });
        }
        match self.expiration {
            Some(expiration) if expiration <= now => {
                Err(RegistryError::ApiKeyExpired { prefix: self.prefix.clone(), expiration })
            }
            _ => Ok(()),
        }
    }
}

/// The SHA-256 digest of a key's text.
pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether two digests are equal, in time independent of where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

/// A new pre-auth key's text: `gmkey-` and 48 hex digits.
pub fn new_preauth_key(rng: &mut impl RngCore) -> String {
    let mut secret = [0u8; PREAUTH_SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let text = format!("{PREAUTH_KEY_PREFIX}{}", hex(&secret));
    assert!(text.len() <= KEY_TEXT_BYTES_MAX);
    text
}

/// A new API key: its prefix and its full text `gmapi-<prefix>.<secret>`.
pub fn new_api_key(rng: &mut impl RngCore) -> (String, String) {
    let mut prefix = [0u8; API_PREFIX_BYTES];
    let mut secret = [0u8; API_SECRET_BYTES];
    rng.fill_bytes(&mut prefix);
    rng.fill_bytes(&mut secret);
    let prefix = hex(&prefix);
    let text = format!("{API_KEY_PREFIX}{prefix}.{}", hex(&secret));
    assert_eq!(parse_api_key(&text), Some((prefix.as_str(), &text[text.len() - 64..])));
    (prefix, text)
}

/// Splits `gmapi-<prefix>.<secret>` into its prefix and secret; `None` if malformed.
pub fn parse_api_key(text: &str) -> Option<(&str, &str)> {
    if text.len() > KEY_TEXT_BYTES_MAX {
        return None;
    }
    let rest = text.strip_prefix(API_KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('.')?;
    let is_hex = |part: &str, bytes: usize| {
        part.len() == bytes * 2 && part.bytes().all(|byte| byte.is_ascii_hexdigit())
    };
    (is_hex(prefix, API_PREFIX_BYTES) && is_hex(secret, API_SECRET_BYTES))
        .then_some((prefix, secret))
}

/// Whether `text` has the shape of a pre-auth key (checked before it is hashed and looked up).
pub fn is_preauth_key_shaped(text: &str) -> bool {
    text.len() <= KEY_TEXT_BYTES_MAX
        && text.strip_prefix(PREAUTH_KEY_PREFIX).is_some_and(|rest| {
            rest.len() == PREAUTH_SECRET_BYTES * 2 && rest.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn preauth(reusable: bool, expiration: Option<u64>, used_by: Option<NodeId>) -> PreAuthKeyInfo {
        PreAuthKeyInfo {
            id: 7,
            user: 1,
            reusable,
            ephemeral: false,
            tags: Vec::new(),
            created: 100,
            expiration,
            used_by,
        }
    }

    #[track_caller]
    fn check(key: &PreAuthKeyInfo, now: u64, expected: &str) {
        let got = match key.check_usable(now) {
            Ok(()) => "ok".to_string(),
            Err(error) => error.to_string(),
        };
        assert_eq!(got, expected, "{key:?} at {now}");
    }

    #[test]
    fn preauth_keys_expire_and_single_use_keys_are_consumed() {
        check(&preauth(false, None, None), 0, "ok");
        check(&preauth(true, Some(200), None), 199, "ok");
        check(&preauth(true, Some(200), None), 200, "pre-auth key 7 expired at 200");
        check(&preauth(false, Some(200), None), u64::MAX, "pre-auth key 7 expired at 200");
        check(&preauth(false, None, Some(3)), 0, "pre-auth key 7 was already used by node 3");
        // Expiry is reported before use: an expired key says so whoever used it.
        check(&preauth(false, Some(5), Some(3)), 9, "pre-auth key 7 expired at 5");
    }

    #[test]
    fn api_keys_expire_and_are_revoked() {
        let mut key = ApiKeyInfo {
            id: 1,
            prefix: "0a1b2c3d4e".into(),
            created: 10,
            expiration: Some(20),
            revoked: false,
        };
        assert!(key.check_usable(19).is_ok());
        let expired = key.check_usable(20).expect_err("expired");
        assert_eq!(expired.to_string(), "API key 0a1b2c3d4e expired at 20");
        key.revoked = true;
        let revoked = key.check_usable(0).expect_err("revoked");
        assert_eq!(revoked.to_string(), "API key 0a1b2c3d4e was revoked");
    }

    #[test]
    fn texts_parse_and_hash() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let preauth = new_preauth_key(&mut rng);
        assert!(is_preauth_key_shaped(&preauth), "{preauth}");
        assert_eq!(preauth.len(), PREAUTH_KEY_PREFIX.len() + 48);
        assert!(!is_preauth_key_shaped(&preauth[..preauth.len() - 1]));
        assert!(!is_preauth_key_shaped(&preauth.replace("gmkey-", "gmapi-")));
        assert_ne!(new_preauth_key(&mut rng), preauth, "fresh randomness");
        let (prefix, text) = new_api_key(&mut rng);
        let (parsed_prefix, secret) = parse_api_key(&text).expect("parses");
        assert_eq!((parsed_prefix, secret.len()), (prefix.as_str(), 64));
        for bad in ["", "gmapi-", "gmapi-abc.def", &text[1..], &format!("{text}0"), &text[..20]] {
            assert_eq!(parse_api_key(bad), None, "{bad:?}");
        }
        // SHA-256 of "abc" (FIPS 180-2, appendix B.1).
        let abc = hex(&digest("abc"));
        assert_eq!(abc, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(digests_equal(&digest("x"), &digest("x")));
        assert!(!digests_equal(&digest("x"), &digest("y")));
    }
}
