//! Encryption at rest: a data key that seals log records, table blocks and the manifest, and the
//! `KEY` file that keeps it wrapped under a passphrase.
//!
//! - Sealing: XChaCha20-Poly1305 with a fresh random 24-byte nonce per sealed unit, so nonces
//!   never repeat under a key however often a file is rewritten after a crash (random 192-bit
//!   nonces collide with negligible probability). The associated data is the unit's position
//!   (file name and offset), so a sealed unit found at another place fails to open, as a
//!   checksum would. A sealed unit is `nonce (24) | ciphertext | tag (16)`.
//! - The `KEY` file (format version 1, little-endian, 112 bytes):
//!   `| magic "GMKEY001" (8) | version u8 | pad [3] | memory_kib u32 | iterations u32 |
//!   parallelism u32 | salt [16] | nonce [24] | wrapped data key [48] |`.
//!   The key-encryption key is Argon2id(passphrase, salt, parameters); the wrapped data key is
//!   the 32-byte data key sealed under it with the header's first 32 bytes as associated data,
//!   so a changed parameter is detected. A wrong passphrase fails to unwrap: `WrongPassphrase`.
//! - Positions (the associated data of a sealed unit, 17 bytes): `| domain u8 | file number u64 |
//!   offset u64 |`, domain 1 = a log record (file number of the log, offset of the record's
//!   header), 2 = a table block (file number of the table, offset of the block), 3 = the
//!   manifest (file number and offset 0).
//! - Rotation (`rewrap`) seals the same data key under a new passphrase and a new salt; the data
//!   on disk stays valid and the old passphrase stops working once the new file replaces it.

use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// Bytes a sealed unit adds to its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const KEY_BYTES: usize = 32;
const SALT_BYTES: usize = 16;
const MAGIC: &[u8; 8] = b"GMKEY001";
const KEY_FILE_VERSION: u8 = 1;
/// Bytes of the `KEY` file.
pub const KEY_FILE_BYTES: usize =
    8 + 1 + 3 + 4 + 4 + 4 + SALT_BYTES + NONCE_BYTES + KEY_BYTES + TAG_BYTES;
const _: () = assert!(KEY_FILE_BYTES == 112);
/// The header part of the key file that the wrapped key is bound to.
const HEADER_BYTES: usize = 8 + 1 + 3 + 4 + 4 + 4 + SALT_BYTES;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// OWASP's recommended Argon2id setting (19 MiB, 2 passes, 1 lane).
    pub const RECOMMENDED: KdfParams =
        KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };
    /// Argon2's minimum cost, for tests and simulation only: it protects nothing.
    pub const TESTING: KdfParams = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };
}

/// Why a key file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The passphrase does not unwrap the data key.
    WrongPassphrase,
    /// The file is not a key file of a version we read, or its parameters are unusable.
    Malformed(String),
}

/// The data key: seals and opens units bound to their position.
pub struct Cipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Cipher(..)")
    }
}

impl Cipher {
    fn new(key: &[u8; KEY_BYTES]) -> Cipher {
        Cipher { aead: XChaCha20Poly1305::new(key.into()) }
    }

    /// Appends `nonce | ciphertext | tag` of `plaintext`, bound to `position`, to `out`.
    pub fn seal<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        position: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: position })
            .expect("XChaCha20-Poly1305 seals any length we write");
        assert_eq!(sealed.len(), plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
    }

    /// The plaintext of a sealed unit, or `None` when it was not sealed by this key at
    /// `position` (damaged, moved, or another key).
    pub fn open(&self, position: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD_BYTES {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        self.aead.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: position }).ok()
    }
}

/// What kind of unit a position names (the first byte of the associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A write-ahead-log record.
    Log = 1,
    /// A table block.
    Table = 2,
    /// The manifest.
    Manifest = 3,
}

/// Bytes of a position.
pub const POSITION_BYTES: usize = 17;

/// The associated data binding a sealed unit to its place: `| domain | file | offset |`.
pub fn position(domain: Domain, file_number: u64, offset: u64) -> [u8; POSITION_BYTES] {
    let mut bytes = [0u8; POSITION_BYTES];
    bytes[0] = domain as u8;
    bytes[1..9].copy_from_slice(&file_number.to_le_bytes());
    bytes[9..].copy_from_slice(&offset.to_le_bytes());
    bytes
}

/// A source of nonce bytes (the store's `Env` random stream).
type NonceSource = dyn Fn(&mut [u8]) + Send + Sync;

/// Adapts a nonce source to the `RngCore` that `Cipher::seal` takes.
struct SourceRng<'a>(&'a NonceSource);

impl RngCore for SourceRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        (self.0)(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        (self.0)(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        (self.0)(destination);
    }
}

// The source is the Env's random stream: cryptographically seeded in production, seeded by the
// run's seed in simulation (where it protects nothing and keeps runs reproducible).
impl CryptoRng for SourceRng<'_> {}

/// The data key of an open store with its nonce source; cheap to clone (a handle).
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<Cipher>,
    nonces: Arc<NonceSource>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer drawing its nonces from `rng` (the store's `Env::rng()`, never OS randomness
    /// directly, so a simulation stays deterministic).
    pub fn new<R: RngCore + CryptoRng + Send + 'static>(cipher: Cipher, rng: R) -> Sealer {
        let rng = Mutex::new(rng);
        let nonces = move |destination: &mut [u8]| {
            rng.lock().unwrap_or_else(|poison| poison.into_inner()).fill_bytes(destination);
        };
        Sealer { cipher: Arc::new(cipher), nonces: Arc::new(nonces) }
    }

    /// Appends `plaintext` sealed at `position` to `out` (`SEAL_OVERHEAD_BYTES` longer).
    pub fn seal(&self, position: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        self.cipher.seal(&mut SourceRng(self.nonces.as_ref()), position, plaintext, out);
        assert_eq!(out.len() - start, plaintext.len() + SEAL_OVERHEAD_BYTES);
    }

    /// The plaintext of a unit sealed at `position`, or `None` if it was not (see `Cipher`).
    pub fn open(&self, position: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.cipher.open(position, sealed)
    }
}

/// Makes a new data key and its key file under `passphrase`.
pub fn create_key<R: RngCore + CryptoRng>(
    rng: &mut R,
    passphrase: &[u8],
    params: KdfParams,
) -> Result<(Vec<u8>, Cipher), KeyError> {
    let mut data_key = Zeroizing::new([0u8; KEY_BYTES]);
    rng.fill_bytes(data_key.as_mut());
    let file = wrap(rng, &data_key, passphrase, params)?;
    Ok((file, Cipher::new(&data_key)))
}

/// The data key of a key file, unwrapped with `passphrase`.
pub fn unlock(file: &[u8], passphrase: &[u8]) -> Result<Cipher, KeyError> {
    let data_key = unwrap(file, passphrase)?;
    Ok(Cipher::new(&data_key))
}

/// The key file for the same data key under `new_passphrase` (fresh salt and nonce).
pub fn rewrap<R: RngCore + CryptoRng>(
    rng: &mut R,
    file: &[u8],
    old_passphrase: &[u8],
    new_passphrase: &[u8],
    params: KdfParams,
) -> Result<Vec<u8>, KeyError> {
    let data_key = unwrap(file, old_passphrase)?;
    wrap(rng, &data_key, new_passphrase, params)
}

fn wrap<R: RngCore + CryptoRng>(
    rng: &mut R,
    data_key: &[u8; KEY_BYTES],
    passphrase: &[u8],
    params: KdfParams,
) -> Result<Vec<u8>, KeyError> {
    let mut salt = [0u8; SALT_BYTES];
    rng.fill_bytes(&mut salt);
    let mut file = Vec::with_capacity(KEY_FILE_BYTES);
    file.extend_from_slice(MAGIC);
    file.push(KEY_FILE_VERSION);
    file.extend_from_slice(&[0; 3]);
    file.extend_from_slice(&params.memory_kib.to_le_bytes());
    file.extend_from_slice(&params.iterations.to_le_bytes());
    file.extend_from_slice(&params.parallelism.to_le_bytes());
    file.extend_from_slice(&salt);
    assert_eq!(file.len(), HEADER_BYTES);
    let key_encryption_key = derive(passphrase, &salt, params)?;
    let header = file.clone();
    Cipher::new(&key_encryption_key).seal(rng, &header, data_key, &mut file);
    assert_eq!(file.len(), KEY_FILE_BYTES);
    Ok(file)
}

fn unwrap(file: &[u8], passphrase: &[u8]) -> Result<Zeroizing<[u8; KEY_BYTES]>, KeyError> {
    if file.len() != KEY_FILE_BYTES || &file[..8] != MAGIC {
        return Err(KeyError::Malformed(format!("not a key file ({} bytes)", file.len())));
    }
    if file[8] != KEY_FILE_VERSION {
        return Err(KeyError::Malformed(format!("key file version {} is unknown", file[8])));
    }
    let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let params = KdfParams { memory_kib: word(12), iterations: word(16), parallelism: word(20) };
    let salt = &file[24..24 + SALT_BYTES];
    let key_encryption_key = derive(passphrase, salt, params)?;
    let opened = Cipher::new(&key_encryption_key)
        .open(&file[..HEADER_BYTES], &file[HEADER_BYTES..])
        .ok_or(KeyError::WrongPassphrase)?;
    let opened = Zeroizing::new(opened);
    let key: [u8; KEY_BYTES] = opened
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Malformed("bad data key length".into()))?;
    Ok(Zeroizing::new(key))
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; KEY_BYTES]>, KeyError> {
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(KEY_BYTES),
    )
    .map_err(|error| KeyError::Malformed(format!("bad Argon2id parameters: {error}")))?;
    let argon =
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|error| KeyError::Malformed(format!("key derivation failed: {error}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn sealed_units_open_only_at_their_position() {
        let mut rng = rng();
        let (file, cipher) = create_key(&mut rng, b"secret", KdfParams::TESTING).unwrap();
        let mut sealed = Vec::new();
        cipher.seal(&mut rng, b"000001.log@0", b"hello", &mut sealed);
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD_BYTES);
        assert!(!sealed.windows(5).any(|window| window == b"hello"));
        assert_eq!(cipher.open(b"000001.log@0", &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cipher.open(b"000001.log@9", &sealed), None);
        sealed[30] ^= 1;
        assert_eq!(cipher.open(b"000001.log@0", &sealed), None);
        let again = unlock(&file, b"secret").unwrap();
        let mut other = Vec::new();
        again.seal(&mut rng, b"p", b"x", &mut other);
        assert_eq!(cipher.open(b"p", &other).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn wrong_passphrases_and_damaged_files_are_refused() {
        let mut rng = rng();
        let (file, _) = create_key(&mut rng, b"secret", KdfParams::TESTING).unwrap();
        assert!(matches!(unlock(&file, b"guess"), Err(KeyError::WrongPassphrase)));
        let mut damaged = file.clone();
        damaged[12] ^= 1;
        assert!(unlock(&damaged, b"secret").is_err());
        assert!(matches!(unlock(&file[..50], b"secret"), Err(KeyError::Malformed(_))));
        let rotated = rewrap(&mut rng, &file, b"secret", b"new", KdfParams::TESTING).unwrap();
        assert!(matches!(unlock(&rotated, b"secret"), Err(KeyError::WrongPassphrase)));
        assert!(unlock(&rotated, b"new").is_ok());
    }
}
