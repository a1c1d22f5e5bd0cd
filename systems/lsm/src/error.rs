//! The one error type of the store: every failure of `Db` is a variant here.
//!
//! Operating errors (disk I/O, checksum mismatches, bad arguments, a store that stopped taking
//! writes after an I/O failure) are variants; programmer errors are assertions.

use std::fmt;
use std::io;

/// Everything that can go wrong in a `Db` operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Bytes on disk failed a check (checksum, magic, structure). The store never serves them.
    Corruption {
        /// The file the bad bytes were read from, relative to the store's directory.
        file: String,
        /// The byte offset in `file` of the record, block or footer that failed.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The disk reported an error.
    Io(io::Error),
    /// The caller passed something the store cannot take (an oversized key or value, a batch
    /// over its limits, bad options). An empty key is a valid key: it sorts before every other.
    InvalidArgument(String),
    /// An earlier write-ahead-log or background failure left the store unable to take writes
    /// safely; reads still work. Reopen the store to recover.
    Poisoned(String),
    /// The store was closed.
    Closed,
    /// The passphrase does not unlock the store's `KEY` file (or the file's salt or wrapped
    /// key was damaged, which cannot be told apart from a wrong passphrase).
    WrongPassphrase,
    /// The store is encrypted and was opened without a passphrase, or is not encrypted and was
    /// opened with one; the message says which.
    EncryptionMismatch(String),
    /// Another open store (in this process or another) holds the directory's `LOCK` file.
    Locked {
        /// The directory.
        dir: String,
    },
}

impl Error {
    /// A `Corruption` error.
    pub fn corruption(file: &str, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption { file: file.to_string(), offset, reason: reason.into() }
    }

    /// Whether this is a `Corruption` error.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// A copy of this error for a second receiver (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Corruption { file, offset, reason } => {
                Error::Corruption { file: file.clone(), offset: *offset, reason: reason.clone() }
            }
            Error::Io(error) => Error::Io(io::Error::new(error.kind(), error.to_string())),
            Error::InvalidArgument(reason) => Error::InvalidArgument(reason.clone()),
            Error::Poisoned(reason) => Error::Poisoned(reason.clone()),
            Error::Closed => Error::Closed,
            Error::WrongPassphrase => Error::WrongPassphrase,
            Error::EncryptionMismatch(reason) => Error::EncryptionMismatch(reason.clone()),
            Error::Locked { dir } => Error::Locked { dir: dir.clone() },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Corruption { file, offset, reason } => {
                write!(f, "corruption in {file} at offset {offset}: {reason}")
            }
            Error::Io(error) => write!(f, "disk error: {error}"),
            Error::InvalidArgument(reason) => write!(f, "invalid argument: {reason}"),
            Error::Poisoned(reason) => write!(f, "store stopped taking writes: {reason}"),
            Error::Closed => f.write_str("store is closed"),
            Error::WrongPassphrase => {
                f.write_str("wrong passphrase: it does not unlock the store's KEY file")
            }
            Error::EncryptionMismatch(reason) => write!(f, "encryption mismatch: {reason}"),
            Error::Locked { dir } => {
                write!(f, "{dir} is in use by another open store (its LOCK file is held)")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        Error::Io(error)
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, Error>;
