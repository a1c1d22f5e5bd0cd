//! `distinct`: the different values a path holds across documents, in MongoDB's value order.
//!
//! A field holding an array contributes its elements (one level: an element that is itself an
//! array is one value); missing fields contribute nothing. Values equal under `value::compare`
//! (`1` and `1.0`) count once, as the first one seen.

use bson::{Bson, Document};

use crate::query::path;
use crate::value;

/// The distinct values `path` reaches in `documents`, sorted by `value::compare`.
pub fn distinct<'a>(documents: impl IntoIterator<Item = &'a Document>, path: &str) -> Vec<Bson> {
    let parts = path::split(path);
    let mut values = Vec::new();
    let mut candidates = Vec::new();
    for document in documents {
        candidates.clear();
        path::collect_document(document, &parts, None, &mut candidates);
        for candidate in &candidates {
            match candidate.value {
                Some(Bson::Array(_)) if !candidate.expanded => {}
                Some(value) => values.push(value.clone()),
                None => {}
            }
        }
    }
    // Stable, so the first of equal values stays first and survives `dedup_by`.
    values.sort_by(value::compare);
    values.dedup_by(|later, earlier| value::equal(later, earlier));
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(documents: Vec<Document>, path: &str, expected: Vec<Bson>) {
        assert_eq!(distinct(&documents, path), expected, "{path}");
    }

    #[test]
    fn arrays_flatten_one_level_and_values_deduplicate() {
        let documents =
            vec![doc! {"a": [{"x": 3}, {"x": [2, [3]]}]}, doc! {"a": {"x": 2.0}}, doc! {"b": 1}];
        check(documents, "a.x", vec![Bson::Int32(2), Bson::Int32(3), Bson::Array(vec![3.into()])]);
        check(vec![doc! {"a": 1}, doc! {"a": 1_i64}], "a", vec![Bson::Int32(1)]);
    }
}
