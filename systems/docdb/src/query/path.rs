//! Dotted paths through documents and arrays, as MongoDB's matcher walks them.
//!
//! Reading `a.b` from a document yields every value the path can reach: a document's field, an
//! array's element by numeric index (`a.0`), and the same field of every document inside an
//! array on the way (`{a: [{b: 1}, {b: 2}]}` reaches 1 and 2). A path that stops at a document
//! lacking the field, or at a scalar outside an array, reaches "missing", which `null` matches;
//! a scalar met while iterating an array reaches nothing. A leaf array is reached whole and also
//! element by element (one level). Each value carries the index of the first array the walk
//! iterated implicitly, which the positional `$` of projections and updates refers to.

use bson::{Bson, Document};

/// The parts of a dotted path (`"a.b.0"` is `["a", "b", "0"]`).
pub(crate) fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// The array index a path part names, if it is a canonical decimal number.
pub(crate) fn array_index(part: &str) -> Option<usize> {
    let canonical = !part.is_empty()
        && part.bytes().all(|byte| byte.is_ascii_digit())
        && (part.len() == 1 || !part.starts_with('0'));
    if canonical { part.parse().ok() } else { None }
}

/// One value a path reaches in a document.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate<'a> {
    /// The value, or `None` for a missing field.
    pub value: Option<&'a Bson>,
    /// True for an element of a leaf array (the array itself is another candidate).
    pub expanded: bool,
    /// The index in the first array iterated on the way, if any.
    pub position: Option<usize>,
}

impl<'a> Candidate<'a> {
    fn missing(position: Option<usize>) -> Self {
        Candidate { value: None, expanded: false, position }
    }
}

/// Every value `parts` reaches from `document` (see the module doc).
pub(crate) fn collect_document<'a>(
    document: &'a Document,
    parts: &[String],
    position: Option<usize>,
    out: &mut Vec<Candidate<'a>>,
) {
    let Some((first, rest)) = parts.split_first() else {
        unreachable!("a path has at least one part");
    };
    match document.get(first) {
        Some(child) => collect(child, rest, position, out),
        None => out.push(Candidate::missing(position)),
    }
}

/// Every value `parts` reaches from `value` (see the module doc).
pub(crate) fn collect<'a>(
    value: &'a Bson,
    parts: &[String],
    position: Option<usize>,
    out: &mut Vec<Candidate<'a>>,
) {
    let Some((first, rest)) = parts.split_first() else {
        out.push(Candidate { value: Some(value), expanded: false, position });
        if let Bson::Array(items) = value {
            for (index, item) in items.iter().enumerate() {
                let position = position.or(Some(index));
                out.push(Candidate { value: Some(item), expanded: true, position });
            }
        }
        return;
    };
    match value {
        Bson::Document(document) => collect_document(document, parts, position, out),
        Bson::Array(items) => {
            if let Some(item) = array_index(first).and_then(|index| items.get(index)) {
                collect(item, rest, position, out);
            }
            for (index, item) in items.iter().enumerate() {
                if let Bson::Document(document) = item {
                    collect_document(document, parts, position.or(Some(index)), out);
                }
            }
        }
        _ => out.push(Candidate::missing(position)),
    }
}

/// Deepest nesting of documents and arrays a filter, update or projection may have; parsing
/// and matching recurse once per level, so this bounds their stack (MongoDB allows 100 levels of
/// stored documents, so 200 leaves room for operators around them).
pub(crate) const NESTING_DEPTH_MAX: usize = 200;

/// Whether `document` nests documents and arrays deeper than `NESTING_DEPTH_MAX` (iterative, so
/// a hostile input cannot overflow the stack here either).
pub(crate) fn too_deep(document: &Document) -> bool {
    let mut pending: Vec<(&Bson, usize)> = document.values().map(|value| (value, 1)).collect();
    while let Some((value, depth)) = pending.pop() {
        if depth > NESTING_DEPTH_MAX {
            return true;
        }
        match value {
            Bson::Document(inner) => pending.extend(inner.values().map(|v| (v, depth + 1))),
            Bson::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[track_caller]
    fn check(document: Document, path: &str, expected: &str) {
        let mut out = Vec::new();
        collect_document(&document, &split(path), None, &mut out);
        let shown: Vec<String> = out
            .iter()
            .map(|candidate| {
                let value = candidate.value.map_or("missing".to_owned(), |value| value.to_string());
                let mark = if candidate.expanded { "*" } else { "" };
                match candidate.position {
                    Some(position) => format!("{value}{mark}@{position}"),
                    None => format!("{value}{mark}"),
                }
            })
            .collect();
        assert_eq!(shown.join(" "), expected, "{document} at {path}");
    }

    #[test]
    fn paths_reach_fields_indexes_and_array_elements() {
        check(doc! {"a": {"b": 1}}, "a.b", "1");
        check(doc! {"a": 5}, "a.b", "missing");
        check(doc! {"a": [{"b": 1}, {"c": 2}]}, "a.b", "1@0 missing@1");
        check(doc! {"a": [0, 1]}, "a.b", "");
        check(doc! {"a": [0, 1]}, "a.1", "1");
        check(doc! {"a": [[1], 2]}, "a", "[[1], 2] [1]*@0 2*@1");
        check(doc! {"a": [{"b": [7, 8]}]}, "a.b", "[7, 8]@0 7*@0 8*@0");
        assert_eq!(array_index("01"), None);
        let mut deep = Bson::Int32(1);
        for _ in 1..NESTING_DEPTH_MAX {
            deep = Bson::Array(vec![deep]);
        }
        assert!(!too_deep(&doc! {"a": deep.clone()}));
        assert!(too_deep(&doc! {"a": [deep]}));
        assert_eq!(array_index("10"), Some(10));
    }
}
