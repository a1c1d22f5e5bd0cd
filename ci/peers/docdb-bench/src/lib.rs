//! docdb beside PoloDB and SQLite on the same documents and workloads, on real files.
//!
//! `person` makes the documents (about 200 bytes of BSON, nested, one array) in each engine's
//! own form; `engine` is the one interface the three engines are driven through, each in its
//! own module; `report` times the bulk workloads and prints the tables of ratios. The bench
//! (`benches/docdb.rs`) adds criterion's per-operation figures. See `ci/bench-docdb`.

pub mod docdb_engine;
pub mod engine;
pub mod person;
#[cfg(feature = "polodb")]
pub mod polodb_engine;
pub mod report;
pub mod sqlite_engine;
