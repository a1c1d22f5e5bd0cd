//! Sort specifications (`{a: 1, b: -1}`) and MongoDB's order of documents under them.
//!
//! Each key's sort value is taken from every value its path reaches (`query::path`): a missing
//! field sorts as `null`, an empty array as `undefined` (below `null`), and a field holding an
//! array sorts by its smallest element ascending and its largest descending. Values compare with
//! `value::compare`, MongoDB's cross-type order; ties fall to the next key, then stay in input
//! order (callers sort stably).

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::query::error::QueryError;
use crate::query::filter::exact_integer;
use crate::query::path;
use crate::value;

/// A parsed sort specification: keys, most significant first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sort {
    keys: Vec<SortKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SortKey {
    path: String,
    parts: Vec<String>,
    descending: bool,
}

impl Sort {
    /// Parses `{a: 1, b: -1}`; any other direction is a `BadValue`.
    pub fn parse(spec: &Document) -> Result<Sort, QueryError> {
        let mut keys = Vec::with_capacity(spec.len());
        for (path, direction) in spec {
            let descending = match exact_integer(direction) {
                Some(1) => false,
                Some(-1) => true,
                _ => {
                    let message = format!("bad sort specification: {direction}");
                    return Err(QueryError::bad_value("$sort", path, message));
                }
            };
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(QueryError::bad_value("$sort", path, "empty field name in sort key"));
            }
            keys.push(SortKey { path: path.clone(), parts: path::split(path), descending });
        }
        Ok(Sort { keys })
    }

    /// Whether there are no keys (every order is sorted).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The paths and directions (`true` for descending), most significant first.
    pub fn keys(&self) -> impl Iterator<Item = (&str, bool)> {
        self.keys.iter().map(|key| (key.path.as_str(), key.descending))
    }

    /// The sort values of `document`, one per key; `compare_keys` orders them.
    pub fn key(&self, document: &Document) -> Vec<Bson> {
        self.keys.iter().map(|key| sort_value(document, &key.parts, key.descending)).collect()
    }

    /// Orders two `key` results under this specification.
    pub fn compare_keys(&self, a: &[Bson], b: &[Bson]) -> Ordering {
        assert_eq!(a.len(), self.keys.len());
        assert_eq!(b.len(), self.keys.len());
        for ((x, y), key) in a.iter().zip(b).zip(&self.keys) {
            let order = value::compare(x, y);
            let order = if key.descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }

    /// Orders two documents under this specification.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        self.compare_keys(&self.key(a), &self.key(b))
    }

    /// Orders two array elements as `$push`'s `$sort` does: a non-document has only missing
    /// fields.
    pub(crate) fn compare_elements(&self, a: &Bson, b: &Bson) -> Ordering {
        let empty = Document::new();
        let as_document = |value: &Bson| match value {
            Bson::Document(document) => document.clone(),
            _ => empty.clone(),
        };
        self.compare(&as_document(a), &as_document(b))
    }
}

/// The value one key sorts `document` by (see the module doc).
fn sort_value(document: &Document, parts: &[String], descending: bool) -> Bson {
    let mut candidates = Vec::new();
    path::collect_document(document, parts, None, &mut candidates);
    let mut best: Option<&Bson> = None;
    for candidate in &candidates {
        let value = match candidate.value {
            None => &Bson::Null,
            Some(Bson::Array(items)) if !candidate.expanded => {
                if items.is_empty() {
                    &Bson::Undefined
                } else {
                    // Its elements are candidates of their own.
                    continue;
                }
            }
            Some(value) => value,
        };
        let better = best.is_none_or(|current| {
            let order = value::compare(value, current);
            if descending { order.is_gt() } else { order.is_lt() }
        });
        if better {
            best = Some(value);
        }
    }
    best.cloned().unwrap_or(Bson::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(spec: Document, documents: Vec<Document>, expected_ids: &[i32]) {
        let sort = Sort::parse(&spec).expect("valid sort");
        let mut sorted = documents;
        sorted.sort_by(|a, b| sort.compare(a, b));
        let ids: Vec<i32> = sorted.iter().map(|d| d.get_i32("_id").expect("id")).collect();
        assert_eq!(ids, expected_ids, "{spec}");
    }

    #[test]
    fn arrays_sort_by_smallest_ascending_and_largest_descending() {
        let documents = vec![
            doc! {"_id": 0, "a": [1, 5]},
            doc! {"_id": 1, "a": 3},
            doc! {"_id": 2},
            doc! {"_id": 3, "a": []},
        ];
        check(doc! {"a": 1}, documents.clone(), &[3, 2, 0, 1]);
        check(doc! {"a": -1}, documents, &[0, 1, 2, 3]);
    }

    #[test]
    fn later_keys_break_ties() {
        let documents = vec![
            doc! {"_id": 0, "a": "x", "b": 1},
            doc! {"_id": 1, "a": "x", "b": 0},
            doc! {"_id": 2, "a": "y", "b": 0},
        ];
        check(doc! {"a": -1, "b": 1}, documents, &[2, 1, 0]);
        assert!(Sort::parse(&doc! {"a": 3}).is_err());
        assert!(Sort::parse(&doc! {"a": "up"}).is_err());
    }
}
