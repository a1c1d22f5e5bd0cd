//! MongoDB query semantics over in-memory documents: filters, updates, projections, sorts.
//!
//! Pure functions of their inputs (the current time for `$currentDate` comes in as an argument),
//! shared by the database's plans and by the tests' reference checks.
//! PLACEHOLDER: replaced by the full engine from branch docdb-query.

pub mod filter;
pub mod projection;
pub mod sort;
pub mod update;

/// A malformed query, update, projection or sort.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryError(pub String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    /// MongoDB's error code.
    pub fn code(&self) -> i32 {
        2
    }
}
