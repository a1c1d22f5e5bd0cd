//! Logical sessions with a transaction: the driver names a session with `lsid` and numbers its
//! transactions with `txnNumber`; the first operation carries `startTransaction: true`, every
//! operation `autocommit: false`, and `commitTransaction`/`abortTransaction` end it. Each
//! session's open transaction is one `docdb::Transaction`.
//!
//! Invariant: at most `session_count_max` sessions are tracked. A session whose transaction
//! has been idle for `transaction_lifetime` is aborted and forgotten when room is needed, as
//! MongoDB's `transactionLifetimeLimitSeconds` does, so an abandoned client cannot pin
//! snapshots or fill the table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{Bson, Document};
use sim::Env;
use sim::time::Instant;

use crate::txn::Transaction;
use crate::wire::reply::{CommandError, code};

/// A session's transaction state.
pub enum TxnState<E: Env> {
    /// No transaction yet, or it ended.
    Idle,
    /// Open, with its reads and buffered writes.
    Open(Transaction<E>),
    /// Committed (a repeated `commitTransaction` for the same number succeeds).
    Committed,
}

/// One session.
pub struct Session<E: Env> {
    /// The session's current transaction number.
    pub txn_number: i64,
    /// Its state.
    pub state: TxnState<E>,
    /// When it was last used.
    pub last_used: Instant,
}

/// A session shared by the connections that use it (a driver may use any pooled connection).
pub type SharedSession<E> = Arc<futures::lock::Mutex<Session<E>>>;

/// Sessions by the bytes of their `lsid`.
pub struct Sessions<E: Env> {
    // Invariant: `sessions.len() <= session_count_max`.
    sessions: Mutex<BTreeMap<Vec<u8>, SharedSession<E>>>,
    session_count_max: usize,
    transaction_lifetime: Duration,
}

/// What a command says about its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnRequest {
    /// The session key (the encoded `lsid`).
    pub session: Vec<u8>,
    /// `txnNumber`.
    pub txn_number: i64,
    /// `startTransaction: true`.
    pub start: bool,
}

/// Reads `lsid`, `txnNumber`, `autocommit` and `startTransaction`; `None` for a command that
/// is not part of a transaction (no `autocommit: false`).
pub fn txn_request(command: &Document) -> Result<Option<TxnRequest>, CommandError> {
    match command.get("autocommit") {
        Some(Bson::Boolean(false)) => {}
        None => return Ok(None),
        Some(_) => {
            return Err(CommandError::new(code::BAD_VALUE, "autocommit may only be false"));
        }
    }
    let session = session_key(command)?
        .ok_or_else(|| CommandError::new(code::BAD_VALUE, "a transaction needs an lsid"))?;
    let txn_number = match command.get("txnNumber") {
        Some(Bson::Int64(number)) => *number,
        Some(Bson::Int32(number)) => i64::from(*number),
        _ => return Err(CommandError::new(code::BAD_VALUE, "a transaction needs a txnNumber")),
    };
    let start = matches!(command.get("startTransaction"), Some(Bson::Boolean(true)));
    Ok(Some(TxnRequest { session, txn_number, start }))
}

/// The key of the command's `lsid`, if it has one.
pub fn session_key(command: &Document) -> Result<Option<Vec<u8>>, CommandError> {
    match command.get("lsid") {
        Some(Bson::Document(lsid)) => lsid_key(lsid).map(Some),
        None => Ok(None),
        Some(_) => Err(CommandError::new(code::TYPE_MISMATCH, "lsid must be an object")),
    }
}

/// The key of one `lsid` document.
pub fn lsid_key(lsid: &Document) -> Result<Vec<u8>, CommandError> {
    lsid.to_vec().map_err(|error| CommandError::new(code::BAD_VALUE, error.to_string()))
}

impl<E: Env> Sessions<E> {
    /// An empty table.
    pub fn new(session_count_max: usize, transaction_lifetime: Duration) -> Sessions<E> {
        assert!(session_count_max > 0);
        Sessions { sessions: Mutex::new(BTreeMap::new()), session_count_max, transaction_lifetime }
    }

    /// The session `key`, created if missing (and `create`); `now` ages idle transactions.
    pub fn get(
        &self,
        key: &[u8],
        create: bool,
        now: Instant,
    ) -> Result<Option<SharedSession<E>>, CommandError> {
        let mut sessions = crate::db::lock(&self.sessions);
        if let Some(session) = sessions.get(key) {
            return Ok(Some(Arc::clone(session)));
        }
        if !create {
            return Ok(None);
        }
        if sessions.len() >= self.session_count_max {
            let lifetime = self.transaction_lifetime;
            sessions.retain(|_, session| match session.try_lock() {
                Some(session) => now.saturating_duration_since(session.last_used) < lifetime,
                None => true,
            });
        }
        if sessions.len() >= self.session_count_max {
            let message = format!("too many sessions with transactions ({})", sessions.len());
            return Err(CommandError::new(code::TOO_MANY, message));
        }
        let session = Session { txn_number: i64::MIN, state: TxnState::Idle, last_used: now };
        let session = Arc::new(futures::lock::Mutex::new(session));
        sessions.insert(key.to_vec(), Arc::clone(&session));
        assert!(sessions.len() <= self.session_count_max);
        Ok(Some(session))
    }

    /// Forgets a session (its open transaction, if any, aborts when the last user drops it).
    pub fn end(&self, key: &[u8]) {
        crate::db::lock(&self.sessions).remove(key);
    }

    /// Sessions tracked.
    pub fn len(&self) -> usize {
        crate::db::lock(&self.sessions).len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E: Env> Session<E> {
    /// Checks `request` against the session: starts its transaction (aborting an older one)
    /// or finds the open one it continues.
    pub fn transaction(
        &mut self,
        request: &TxnRequest,
        begin: impl FnOnce() -> Transaction<E>,
        now: Instant,
    ) -> Result<&mut Transaction<E>, CommandError> {
        self.last_used = now;
        if request.txn_number < self.txn_number {
            let message =
                format!("txnNumber {} is older than {}", request.txn_number, self.txn_number);
            return Err(CommandError::new(225, message)); // TransactionTooOld
        }
        if request.start {
            if request.txn_number == self.txn_number {
                let message = format!("transaction {} was already started", request.txn_number);
                return Err(no_such_transaction(message));
            }
            self.txn_number = request.txn_number;
            self.state = TxnState::Open(begin());
        } else if request.txn_number != self.txn_number {
            return Err(no_such_transaction(format!(
                "transaction {} has not been started",
                request.txn_number
            )));
        }
        match &mut self.state {
            TxnState::Open(txn) => Ok(txn),
            _ => {
                Err(no_such_transaction(format!("transaction {} is not open", request.txn_number)))
            }
        }
    }
}

/// `NoSuchTransaction`, labelled transient so `with_transaction` helpers retry.
pub fn no_such_transaction(message: String) -> CommandError {
    let mut error = CommandError::new(code::NO_SUCH_TRANSACTION, message);
    error.labels.push("TransientTransactionError");
    error
}
