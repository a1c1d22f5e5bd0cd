//! PLACEHOLDER filter: equality only.
use bson::{Bson, Document};

use super::QueryError;

/// A compiled filter.
#[derive(Clone, Debug)]
pub struct Filter {
    terms: Vec<(String, Bson)>,
}

/// What the planner may use.
#[derive(Clone, Debug)]
pub enum Predicate {
    /// Equality.
    Eq(Bson),
    /// Range.
    Range {
        /// Lower bound.
        lower: Option<(Bson, bool)>,
        /// Upper bound.
        upper: Option<(Bson, bool)>,
    },
    /// Set.
    In(Vec<Bson>),
}

impl Filter {
    /// Compiles.
    pub fn parse(document: &Document) -> Result<Filter, QueryError> {
        Ok(Filter { terms: document.iter().map(|(k, v)| (k.clone(), v.clone())).collect() })
    }
    /// Matches.
    pub fn matches(&self, document: &Document) -> bool {
        self.terms.iter().all(|(path, value)| {
            let found = document.get(path).cloned().unwrap_or(Bson::Null);
            crate::value::equal(&found, value)
        })
    }
    /// Predicates.
    pub fn predicates(&self) -> Vec<(String, Predicate)> {
        self.terms.iter().map(|(k, v)| (k.clone(), Predicate::Eq(v.clone()))).collect()
    }
}
