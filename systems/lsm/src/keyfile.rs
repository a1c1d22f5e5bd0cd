//! The store's `KEY` file on disk: created with a new encrypted store, unlocked at every open,
//! and replaced atomically when the passphrase is rotated (`crypto.rs` has its format).
//!
//! A store is encrypted exactly when its directory holds `KEY`. Open with a passphrase creates
//! the file only in a new directory (no manifest, log or table yet), so a store is encrypted
//! from its first byte or never; opening an encrypted store without a passphrase, or a plain
//! one with one, is `Error::EncryptionMismatch`, never a read of bytes it cannot understand.
//! `KEY` is written like `MANIFEST`: `KEY.tmp`, sync, rename over `KEY`, sync the directory,
//! so a crash leaves the old or the new file whole.

use sim::{Env, File, OpenOptions};

use crate::background::{MANIFEST_NAME, parse_number};
use crate::crypto::{self, KdfParams, KeyError, Sealer};
use crate::db::{Db, join};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::recovery::{lock_directory, read_stable};

/// The key file's name.
pub const KEY_NAME: &str = "KEY";
/// The key file's temporary name while it is written; deleted at open.
pub const KEY_TEMP_NAME: &str = "KEY.tmp";

/// The error for a key file that cannot be used.
fn key_error(error: KeyError) -> Error {
    match error {
        KeyError::WrongPassphrase => Error::WrongPassphrase,
        KeyError::Malformed(reason) => Error::corruption(KEY_NAME, 0, reason),
    }
}

/// How messages name directory `dir` (the empty name is the environment's root).
fn shown(dir: &str) -> &str {
    if dir.is_empty() { "the store's directory" } else { dir }
}

/// Whether the directory listing `names` holds no store yet (no manifest, log or table).
fn is_new_store(names: &[String]) -> bool {
    !names.iter().any(|name| {
        name == MANIFEST_NAME
            || parse_number(name, ".log").is_some()
            || parse_number(name, ".sst").is_some()
    })
}

/// The store's sealer: `None` for a plain store; for an encrypted one, the data key unlocked
/// from `KEY` (created first in a new directory). `names` lists the directory.
pub(crate) async fn open_key<E: Env>(
    env: &E,
    dir: &str,
    names: &[String],
    options: &Options,
) -> Result<Option<Sealer>> {
    let has_key = names.iter().any(|name| name == KEY_NAME);
    let Some(encryption) = &options.encryption else {
        if has_key {
            let reason =
                format!("{} holds an encrypted store: open it with its passphrase", shown(dir));
            return Err(Error::EncryptionMismatch(reason));
        }
        return Ok(None);
    };
    if !has_key && !is_new_store(names) {
        let reason =
            format!("{} holds an unencrypted store: open it without a passphrase", shown(dir));
        return Err(Error::EncryptionMismatch(reason));
    }
    let cipher = if has_key {
        let bytes = read_key_file(env, dir).await?;
        crypto::unlock(&bytes, &encryption.passphrase).map_err(key_error)?
    } else {
        let mut rng = env.rng();
        let (bytes, cipher) = crypto::create_key(&mut rng, &encryption.passphrase, encryption.kdf)
            .map_err(key_error)?;
        write_key_file(env, dir, &bytes).await?;
        cipher
    };
    Ok(Some(Sealer::new(cipher, env.rng())))
}

/// Reads `KEY` (until two reads agree, so a flip on the way from the disk is not taken for a
/// wrong passphrase).
async fn read_key_file<E: Env>(env: &E, dir: &str) -> Result<Vec<u8>> {
    let file = env.open(&join(dir, KEY_NAME), OpenOptions::EXISTING).await?;
    read_stable(&file, |_| false).await
}

/// Replaces `KEY` with `bytes` atomically (temp file, sync, rename, directory sync).
async fn write_key_file<E: Env>(env: &E, dir: &str, bytes: &[u8]) -> Result<()> {
    assert_eq!(bytes.len(), crypto::KEY_FILE_BYTES);
    let temp = join(dir, KEY_TEMP_NAME);
    let file = env.open(&temp, OpenOptions::TRUNCATE).await?;
    file.write_at(0, bytes).await?;
    file.sync().await?;
    drop(file);
    env.rename(&temp, &join(dir, KEY_NAME)).await?;
    env.sync_dir(dir).await?;
    Ok(())
}

/// Rewraps the data key of the store in `dir` under `new_passphrase` (Argon2id cost `kdf`) and
/// replaces `KEY` atomically. The data stays as it is; once this returns, `old_passphrase`
/// gets `WrongPassphrase` and `new_passphrase` opens the store.
async fn rewrap_key_file<E: Env>(
    env: &E,
    dir: &str,
    old_passphrase: &[u8],
    new_passphrase: &[u8],
    kdf: KdfParams,
) -> Result<()> {
    let names = env.list(dir).await?;
    if !names.iter().any(|name| name == KEY_NAME) {
        let reason = format!("{} holds no encrypted store (no KEY file)", shown(dir));
        return Err(Error::EncryptionMismatch(reason));
    }
    let bytes = read_key_file(env, dir).await?;
    let mut rng = env.rng();
    let rotated =
        crypto::rewrap(&mut rng, &bytes, old_passphrase, new_passphrase, kdf).map_err(key_error)?;
    write_key_file(env, dir, &rotated).await?;
    let check = read_key_file(env, dir).await?;
    assert_eq!(check, rotated, "KEY reads back as written");
    Ok(())
}

/// Rotates the passphrase of the closed encrypted store in `dir` (see `Db::rotate_passphrase`
/// for an open one): takes the directory's lock, so an open store is `Error::Locked`.
pub async fn rotate_passphrase<E: Env>(
    env: &E,
    dir: &str,
    old_passphrase: &[u8],
    new_passphrase: &[u8],
    kdf: KdfParams,
) -> Result<()> {
    let lock_file = lock_directory(env, dir).await?;
    let rotated = rewrap_key_file(env, dir, old_passphrase, new_passphrase, kdf).await;
    // Dropping the file releases the lock.
    drop(lock_file);
    rotated
}

impl<E: Env> Db<E> {
    /// Rotates the passphrase of this open, encrypted store: the data key is rewrapped under
    /// `new_passphrase` and `KEY` replaced atomically; the store keeps running.
    pub async fn rotate_passphrase(
        &self,
        old_passphrase: &[u8],
        new_passphrase: &[u8],
        kdf: KdfParams,
    ) -> Result<()> {
        let _pass = self.inner.enter()?;
        let _work = self.inner.work.lock().await;
        let (env, dir) = (&self.inner.env, &self.inner.dir);
        rewrap_key_file(env, dir, old_passphrase, new_passphrase, kdf).await
    }
}
