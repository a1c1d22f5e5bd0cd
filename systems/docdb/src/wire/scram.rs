//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the server side, as MongoDB runs it over `saslStart`
//! and `saslContinue`. Sans-IO: the nonce and salts come in as arguments.
//!
//! The user file has one `name:password` per line (`#` starts a comment). Passwords are
//! salted and stretched at load (PBKDF2, `ITERATIONS`) and only the derived keys are kept.
//! Passwords are used as given, without SASLprep, so they must be ASCII.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac013::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// PBKDF2 rounds (MongoDB's default for SCRAM-SHA-256).
pub const ITERATIONS: u32 = 15_000;
/// Users accepted in one user file.
pub const USER_COUNT_MAX: usize = 10_000;
/// Bytes of each user's salt.
pub const SALT_BYTES: usize = 16;

/// The stored credential of one user.
#[derive(Clone)]
struct Credential {
    salt: [u8; SALT_BYTES],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

/// The users a server accepts.
#[derive(Clone, Default)]
pub struct Users {
    users: BTreeMap<String, Credential>,
}

impl fmt::Debug for Users {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Users").field("count", &self.users.len()).finish()
    }
}

/// Why a user file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl fmt::Display for UsersError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "user file line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for UsersError {}

impl Users {
    /// Parses a user file; `salt` draws each user's salt.
    pub fn parse(
        text: &str,
        mut salt: impl FnMut() -> [u8; SALT_BYTES],
    ) -> Result<Users, UsersError> {
        let mut users = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason| UsersError { line: index + 1, reason };
            let (name, password) = line.split_once(':').ok_or(error("expected name:password"))?;
            if name.is_empty() || password.is_empty() {
                return Err(error("empty name or password"));
            }
            if users.len() >= USER_COUNT_MAX {
                return Err(error("too many users"));
            }
            let credential = Credential::derive(password.as_bytes(), salt());
            if users.insert(name.to_string(), credential).is_some() {
                return Err(error("user listed twice"));
            }
        }
        Ok(Users { users })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Credential {
    fn derive(password: &[u8], salt: [u8; SALT_BYTES]) -> Credential {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        Credential { salt, stored_key, server_key: hmac(&salted, b"Server Key") }
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Why authentication failed (every cause answers the client the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub &'static str);

/// A conversation between `saslStart` and `saslContinue`.
#[derive(Debug, Clone)]
pub struct Conversation {
    user: String,
    nonce: String,
    /// `client-first-message-bare + "," + server-first-message`.
    auth_prefix: String,
}

/// Handles the client's first message; returns the conversation and the server's first
/// message. `server_nonce` must be fresh random printable text without commas.
pub fn start(
    users: &Users,
    client_first: &[u8],
    server_nonce: &str,
) -> Result<(Conversation, Vec<u8>), AuthError> {
    assert!(!server_nonce.contains(','));
    let text = std::str::from_utf8(client_first).map_err(|_| AuthError("not UTF-8"))?;
    let bare = text.strip_prefix("n,,").ok_or(AuthError("channel binding is not supported"))?;
    let mut fields = bare.split(',');
    let user = fields.next().and_then(|f| f.strip_prefix("n=")).ok_or(AuthError("no user"))?;
    let user = user.replace("=2C", ",").replace("=3D", "=");
    let client_nonce =
        fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(AuthError("no nonce"))?;
    let credential = users.users.get(&user).ok_or(AuthError("unknown user"))?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let salt = STANDARD.encode(credential.salt);
    let server_first = format!("r={nonce},s={salt},i={ITERATIONS}");
    let auth_prefix = format!("{bare},{server_first}");
    Ok((Conversation { user, nonce, auth_prefix }, server_first.into_bytes()))
}

/// Checks the client's proof; returns the user and the server's final message.
pub fn finish(
    users: &Users,
    conversation: &Conversation,
    client_final: &[u8],
) -> Result<(String, Vec<u8>), AuthError> {
    let text = std::str::from_utf8(client_final).map_err(|_| AuthError("not UTF-8"))?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(AuthError("no proof"))?;
    let mut fields = without_proof.split(',');
    if fields.next() != Some("c=biws") {
        return Err(AuthError("unexpected channel binding"));
    }
    if fields.next().and_then(|f| f.strip_prefix("r=")) != Some(conversation.nonce.as_str()) {
        return Err(AuthError("nonce mismatch"));
    }
    let proof = STANDARD.decode(proof).map_err(|_| AuthError("proof is not base64"))?;
    let proof: [u8; 32] = proof.try_into().map_err(|_| AuthError("proof length"))?;
    let credential = users.users.get(&conversation.user).ok_or(AuthError("unknown user"))?;
    let auth_message = format!("{},{without_proof}", conversation.auth_prefix);
    let signature = hmac(&credential.stored_key, auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    for (byte, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature.iter())) {
        *byte = p ^ s;
    }
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    if !constant_time_equal(&stored_key, &credential.stored_key) {
        return Err(AuthError("wrong password"));
    }
    let server_signature = hmac(&credential.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", STANDARD.encode(server_signature));
    Ok((conversation.user.clone(), server_final.into_bytes()))
}

fn constant_time_equal(left: &[u8; 32], right: &[u8; 32]) -> bool {
    left.iter().zip(right).fold(0u8, |acc, (l, r)| acc | (l ^ r)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client per RFC 5802, to check the server against.
    fn client_final(password: &str, salt: &[u8], bare: &str, server_first: &str) -> String {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let nonce = server_first.split(',').next().expect("r=").to_string();
        let without_proof = format!("c=biws,{nonce}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    #[test]
    fn right_password_passes_and_wrong_one_fails() {
        let users = Users::parse("# admins\nalice:secret\n", || [7; SALT_BYTES]).expect("parse");
        let bare = "n=alice,r=clientnonce";
        for (password, ok) in [("secret", true), ("guess", false)] {
            let (conversation, first) =
                start(&users, format!("n,,{bare}").as_bytes(), "servernonce").expect("start");
            let first = String::from_utf8(first).expect("utf-8");
            let last = client_final(password, &[7; SALT_BYTES], bare, &first);
            assert_eq!(finish(&users, &conversation, last.as_bytes()).is_ok(), ok);
        }
        assert!(start(&users, b"n,,n=bob,r=x", "y").is_err());
    }

    #[test]
    fn bad_user_files_name_the_line() {
        let error = Users::parse("a:b\nnocolon\n", || [0; SALT_BYTES]).expect_err("refused");
        assert_eq!(error.line, 2);
    }
}
