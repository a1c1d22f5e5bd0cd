//! PLACEHOLDER sort.
use std::cmp::Ordering;

use bson::{Bson, Document};

use super::QueryError;

/// A sort.
#[derive(Clone, Debug)]
pub struct Sort {
    /// Keys and directions.
    pub keys: Vec<(String, bool)>,
}

impl Sort {
    /// Compiles.
    pub fn parse(document: &Document) -> Result<Sort, QueryError> {
        Ok(Sort {
            keys: document.iter().map(|(k, v)| (k.clone(), v.as_i32() != Some(-1))).collect(),
        })
    }
    /// Compares.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for (key, ascending) in &self.keys {
            let x = a.get(key).unwrap_or(&Bson::Null);
            let y = b.get(key).unwrap_or(&Bson::Null);
            let order = crate::value::compare(x, y);
            let order = if *ascending { order } else { order.reverse() };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }
}
