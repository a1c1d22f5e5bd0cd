//! MongoDB query semantics over in-memory documents: filters, updates, projections, sorts.
//!
//! Pure functions of their inputs (the current time for `$currentDate` comes in as an argument),
//! shared by the database's plans and by the tests' reference checks.
//!
//! Map: `filter` (parse and match, planner predicates), `update` (update operators, upserts,
//! replacements), `projection`, `sort`, `distinct`, `error` (`QueryError` with MongoDB's codes);
//! `path` walks dotted paths and `regex` compiles `$regex` patterns for the others.

pub mod distinct;
pub mod error;
pub mod filter;
mod path;
pub mod projection;
mod regex;
pub mod sort;
pub mod update;

pub use distinct::distinct;
pub use error::QueryError;
pub use filter::{Filter, MatchDetails, Predicate};
pub use projection::Projection;
pub use sort::Sort;
pub use update::{Changes, Update, UpdateContext};
