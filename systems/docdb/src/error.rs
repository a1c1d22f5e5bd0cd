//! The database's error type: every failure of a docdb operation is a variant here.
//!
//! Operating errors (storage, a malformed query, a duplicate key, a write conflict, a document
//! that fails validation) are variants; programmer errors are assertions.

use std::fmt;

use crate::query::QueryError;

/// Everything that can go wrong in a docdb operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The LSM store failed (I/O, corruption, closed, locked).
    Storage(lsm::Error),
    /// A malformed filter, update, projection or sort; names the operator and the path.
    Query(QueryError),
    /// A write would put a second document under one key of a unique index.
    DuplicateKey {
        /// The namespace, `database.collection`.
        namespace: String,
        /// The index's name (`_id_` for the primary key).
        index: String,
        /// The duplicated key, as Extended JSON.
        key: String,
    },
    /// Another transaction committed a write to a key this transaction also wrote, after this
    /// transaction's snapshot was taken (first committer wins). Retry the transaction.
    WriteConflict {
        /// What conflicted, for the reader.
        reason: String,
    },
    /// The collection does not exist.
    NamespaceNotFound(String),
    /// The collection already exists.
    NamespaceExists(String),
    /// No index of that name.
    IndexNotFound {
        /// The namespace.
        namespace: String,
        /// The index name asked for.
        index: String,
    },
    /// An index with that name but another specification exists, or the specification is bad.
    BadIndex(String),
    /// The document cannot be stored (an array `_id`, a field name starting with `$`, too big).
    InvalidDocument(String),
    /// The document fails the collection's validator.
    Validation {
        /// The namespace.
        namespace: String,
        /// The failing path in the document (`""` for the whole document).
        path: String,
        /// Why it fails.
        reason: String,
    },
    /// Stored bytes of the database failed a structural check above the LSM's checksums.
    Corruption(String),
    /// The transaction was already committed or aborted.
    TransactionFinished,
    /// A change stream's resume token points before the kept history.
    ChangeHistoryLost {
        /// The oldest commit still kept.
        oldest_commit: u64,
    },
    /// A passphrase or option is wrong (for example a bad resume token).
    InvalidArgument(String),
}

/// Result with docdb's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// MongoDB's numeric error code for this error, as the wire protocol reports it.
    pub fn code(&self) -> i32 {
        match self {
            Error::Storage(_) => 1,
            Error::Query(query) => query.code(),
            Error::DuplicateKey { .. } => 11000,
            Error::WriteConflict { .. } => 112,
            Error::NamespaceNotFound(_) => 26,
            Error::NamespaceExists(_) => 48,
            Error::IndexNotFound { .. } => 27,
            Error::BadIndex(_) => 67,
            Error::InvalidDocument(_) => 2,
            Error::Validation { .. } => 121,
            Error::Corruption(_) => 1,
            Error::TransactionFinished => 251,
            Error::ChangeHistoryLost { .. } => 286,
            Error::InvalidArgument(_) => 2,
        }
    }

    /// Whether retrying the whole transaction may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::WriteConflict { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Storage(error) => write!(formatter, "storage: {error}"),
            Error::Query(error) => write!(formatter, "{error}"),
            Error::DuplicateKey { namespace, index, key } => write!(
                formatter,
                "E11000 duplicate key error collection: {namespace} index: {index} dup key: {key}"
            ),
            Error::WriteConflict { reason } => write!(formatter, "write conflict: {reason}"),
            Error::NamespaceNotFound(namespace) => write!(formatter, "ns not found: {namespace}"),
            Error::NamespaceExists(namespace) => {
                write!(formatter, "collection already exists: {namespace}")
            }
            Error::IndexNotFound { namespace, index } => {
                write!(formatter, "index not found with name [{index}] in {namespace}")
            }
            Error::BadIndex(reason) => write!(formatter, "bad index: {reason}"),
            Error::InvalidDocument(reason) => write!(formatter, "invalid document: {reason}"),
            Error::Validation { namespace, path, reason } => {
                write!(formatter, "document failed validation in {namespace} at '{path}': {reason}")
            }
            Error::Corruption(reason) => write!(formatter, "corruption: {reason}"),
            Error::TransactionFinished => formatter.write_str("transaction already finished"),
            Error::ChangeHistoryLost { oldest_commit } => write!(
                formatter,
                "resume point is no longer in the change history (oldest commit {oldest_commit})"
            ),
            Error::InvalidArgument(reason) => write!(formatter, "invalid argument: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Storage(error) => Some(error),
            Error::Query(error) => Some(error),
            _ => None,
        }
    }
}

impl From<lsm::Error> for Error {
    fn from(error: lsm::Error) -> Error {
        Error::Storage(error)
    }
}

impl From<QueryError> for Error {
    fn from(error: QueryError) -> Error {
        Error::Query(error)
    }
}
