//! MongoDB query semantics over in-memory documents: filters, updates, projections, sorts.
//!
//! Pure functions of their inputs (the current time for `$currentDate` comes in as an argument),
//! shared by the database's plans and by the tests' reference checks.
