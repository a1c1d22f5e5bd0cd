//! A document database with MongoDB semantics on the LSM store (`systems/lsm`).
//!
//! Collections of BSON documents, secondary indexes, MongoDB queries and updates, multi-document
//! snapshot-isolation transactions and change streams. Disk, time and randomness come only from
//! `sim::Env` (through the LSM store and the handle), so the same code runs in the simulated
//! world and on real files.
//!
//! Map:
//! - `db`: `DocDb` (open, close, catalog in memory, commit with first-committer-wins checks).
//! - `txn`: `Transaction` (a snapshot plus buffered writes; reads overlay the two).
//! - `ops`: the operations on one collection inside a transaction, with index maintenance.
//! - `collection`: `Collection`, the auto-commit handle (retries write conflicts), `Cursor`.
//! - `plan`: the planner (`_id` lookups, index intervals, collection scans) and `explain`.
//! - `catalog`: collection and index entries, index key extraction (multikey, sparse).
//! - `changes`: change streams with resume tokens.
//! - `validate`: JSON Schema validators.
//! - `layout`: the LSM key space and record encodings (`decode` reads stored BSON in one pass);
//!   `keycode`: order-preserving value keys.
//! - `value`: MongoDB's total order over BSON values (type ranks, numbers across widths).
//! - `query`: the pure MongoDB semantics, with no storage: filters and planner predicates
//!   (`query::filter`), update operators, upserts and replacements (`query::update`),
//!   projections (`query::projection`), sorts (`query::sort`), `query::distinct`, and
//!   `query::QueryError` with MongoDB's error codes.
//! - `error`: the one error type, with MongoDB's error codes.
//! - `wire`: the MongoDB wire protocol server (OP_MSG, commands, cursors, sessions, SCRAM).
//! - `verify`: `DocDb::verify_indexes`, every index checked against a rebuild from documents.
//! - `planted` (feature `planted-bugs`): deliberately broken commits for the harness to catch.
//!
//! Invariant: nothing here reads the OS clock, OS randomness or the file system directly.

#![deny(missing_docs)]

pub mod catalog;
pub mod changes;
pub mod collection;
pub mod db;
mod decode;
pub mod error;
pub mod keycode;
pub mod layout;
pub mod ops;
pub mod plan;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod query;
pub mod txn;
pub mod validate;
pub mod value;
pub mod verify;
pub mod wire;

pub use changes::{ChangeEvent, ChangeStream, ResumeToken, Scope};
pub use collection::{Collection, Cursor, InsertManyResult};
pub use db::{DocDb, Options};
pub use error::{Error, Result};
pub use ops::{FindOptions, IndexSpec, TxnCollection, UpdateOptions, UpdateResult};
pub use txn::{CommitInfo, Transaction};
