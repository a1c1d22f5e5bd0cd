//! The MongoDB wire protocol server: enough of MongoDB's protocol (OP_MSG with BSON, legacy
//! OP_QUERY for the first handshake) for the official drivers to work against a `DocDb`.
//!
//! Map:
//! - `frame`: sans-IO message codec (header, OP_MSG sections and checksum, OP_QUERY/OP_REPLY).
//! - `commands`: command dispatch, the handshake and admin commands, authentication gating,
//!   sessions and their transactions.
//! - `crud`: the data commands (insert, find, update, delete, indexes, findAndModify, ...),
//!   each run inside one `Transaction`.
//! - `cursor`: the bounded server-side cursor table (`getMore`, `killCursors`).
//! - `session`: logical sessions and the transaction each one has open.
//! - `scram`: SCRAM-SHA-256, sans-IO, and the user file.
//! - `reply`: MongoDB's error shape and typed argument readers.
//! - `server`: the accept loop and per-connection loop over `sim::Env` streams.
//!
//! Invariant: no input, however malformed, panics the server; every table (connections,
//! cursors, sessions) has a `_max`.

pub mod commands;
pub mod crud;
pub mod cursor;
pub mod frame;
pub mod reply;
pub mod scram;
pub mod server;
pub mod session;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::Env;

use crate::db::DocDb;

pub use commands::Connection;
pub use server::serve;

/// Server limits and settings.
#[derive(Clone, Debug)]
pub struct WireOptions {
    /// Connections served at once; more get an error reply and are closed.
    pub connection_count_max: usize,
    /// Open cursors kept; opening one more closes the oldest.
    pub cursor_count_max: usize,
    /// Sessions with transactions tracked.
    pub session_count_max: usize,
    /// A transaction idle this long may be aborted to make room.
    pub transaction_lifetime: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Users for SCRAM-SHA-256; `None` serves everyone without authentication.
    pub users: Option<scram::Users>,
}

impl Default for WireOptions {
    fn default() -> WireOptions {
        WireOptions {
            connection_count_max: 256,
            cursor_count_max: 10_000,
            session_count_max: 10_000,
            transaction_lifetime: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30 * 60),
            users: None,
        }
    }
}

/// The state every connection shares: the database, cursors, sessions.
pub struct WireServer<E: Env> {
    pub(crate) inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for WireServer<E> {
    fn clone(&self) -> Self {
        WireServer { inner: Arc::clone(&self.inner) }
    }
}

pub(crate) struct Inner<E: Env> {
    pub env: E,
    pub db: DocDb<E>,
    pub options: WireOptions,
    pub cursors: Mutex<cursor::Cursors>,
    pub sessions: session::Sessions<E>,
    pub connection_ids: AtomicI64,
}

impl<E: Env> WireServer<E> {
    /// A server for `db`.
    pub fn new(env: E, db: DocDb<E>, options: WireOptions) -> WireServer<E> {
        assert!(options.connection_count_max > 0);
        let cursors = Mutex::new(cursor::Cursors::new(options.cursor_count_max));
        let sessions =
            session::Sessions::new(options.session_count_max, options.transaction_lifetime);
        let inner =
            Inner { env, db, options, cursors, sessions, connection_ids: AtomicI64::new(1) };
        WireServer { inner: Arc::new(inner) }
    }

    /// The database served.
    pub fn database(&self) -> &DocDb<E> {
        &self.inner.db
    }

    /// The settings.
    pub fn options(&self) -> &WireOptions {
        &self.inner.options
    }

    /// Open cursors.
    pub fn cursor_count(&self) -> usize {
        crate::db::lock(&self.inner.cursors).len()
    }

    /// Sessions tracked.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }
}
