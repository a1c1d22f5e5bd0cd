//! A document database with MongoDB semantics on the LSM store (`systems/lsm`).
//!
//! Collections of BSON documents, secondary indexes, MongoDB queries and updates, multi-document
//! snapshot-isolation transactions and change streams. Disk, time and randomness come only from
//! `sim::Env` (through the LSM store and the handle), so the same code runs in the simulated
//! world and on real files.
//!
//! Map:
//! - `value`: MongoDB's total order over BSON values (type ranks, numbers across widths).
//! - `query`: the pure MongoDB semantics, with no storage: filters and planner predicates
//!   (`query::filter`), update operators, upserts and replacements (`query::update`),
//!   projections (`query::projection`), sorts (`query::sort`), `query::distinct`, and
//!   `query::QueryError` with MongoDB's error codes.
//!
//! Invariant: nothing here reads the OS clock, OS randomness or the file system directly.

#![deny(missing_docs)]

pub mod query;
pub mod value;
