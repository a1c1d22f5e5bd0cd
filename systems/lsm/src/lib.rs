//! A crash-safe LSM-tree key-value store on the `sim::Env` disk.
//!
//! It never loses a write acknowledged with `Durability::Sync` and never serves wrong data: every
//! byte read from disk is checksummed, and a failed check is an `Error::Corruption`, not a
//! panic and not a silently skipped record. The same code runs on the deterministic simulator
//! (`sim::world::World`, with crashes, torn writes and disk faults) and on real files
//! (`sim::tokio_env::TokioEnv`).
//!
//! Map:
//! - `db`: the `Db` handle, group-commit write path, reads, snapshots, flush, close.
//! - `recovery`: `Db::open`: manifest, tables, write-ahead-log replay, cleanup, and the
//!   `RecoveryReport`; `clean`: the clean-close marker `close` leaves and `open` reports.
//! - `background`: memtable flushes, leveled compaction (size- and read-triggered), manifest
//!   writes, file deletion.
//! - `wal`: write-ahead-log record framing and the torn-tail / corruption rule.
//! - `batch`: `WriteBatch` and its log encoding.
//! - `memtable`: the sorted in-memory table (inline short keys, values in an arena).
//! - `table`, `block`, `bloom`, `cache`: SSTables, their blocks, bloom filters, the block cache.
//! - `crypto`, `keyfile`: encryption at rest (sealing, the `KEY` file, passphrase rotation).
//! - `manifest`: the persisted set of tables; `version`: the in-memory one.
//! - `iter`: merging iterators; `key`: internal keys; `coding`: byte encodings.
//! - `options`, `error`, `signal`: configuration, the error type, a wake-up primitive.
//! - `activity`: what the store is doing now (flush, compaction, log sync...), for a test
//!   harness's record of the state faults find it in.
//! - `protocol`, `server`, `client`: the key-value server's wire format, the server loop (on
//!   any `Env` listener) and a client; `src/bin/` holds the production binaries.
//!
//! On-disk formats are specified in `docs/format.md` and in each module's doc.
//!
//! Invariants: no lock is held across an `await`; a write is applied to the memtable only after
//! its log record was appended (and synced for `Durability::Sync`); a file is deleted only after
//! a durable manifest no longer refers to it; `close` returns only when no operation of the
//! store (through any clone) runs or can start, and releases the directory lock last.

#![deny(missing_docs)]

pub mod activity;
pub mod batch;
pub mod block;
pub mod bloom;
pub mod cache;
pub mod clean;
pub mod client;
pub mod coding;
pub mod crypto;
pub mod error;
pub mod key;
pub mod keyfile;
pub mod manifest;
pub mod memtable;
#[cfg(feature = "tokio")]
pub mod metrics;
pub mod options;
pub mod protocol;
pub mod server;
pub mod signal;
pub mod table;
pub mod wal;

mod background;
mod db;
mod iter;
mod recovery;

mod version;

pub use activity::Activity;
pub use batch::WriteBatch;
pub use crypto::KdfParams;
pub use db::{Db, Snapshot, Stats};
pub use error::{Error, Result};
pub use iter::Iter;
pub use keyfile::rotate_passphrase;
pub use options::{Durability, Encryption, Options, PlantedBug};
pub use recovery::RecoveryReport;
pub use table::Compression;
