//! Find projections: inclusion (`{a: 1}`), exclusion (`{a: 0}`), the `_id` rule (included unless
//! `_id: 0`), dotted paths, `$slice`, `$elemMatch` and the positional `a.$`.
//!
//! MongoDB 4.2 semantics: a projection includes or excludes, never both (besides `_id`); a
//! `$slice` alone keeps every other field, an `$elemMatch` alone selects like an inclusion. Dotted
//! paths walk documents and every document or array inside an array (scalars inside arrays are
//! dropped by an inclusion, kept by an exclusion); numeric parts are field names here, not
//! indexes. The positional `a.b.$` keeps, of the first array on the path, the element at the
//! filter's match position, and needs a filter condition on a path starting with `a`. Included
//! fields keep the document's field order.

use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::query::error::QueryError;
use crate::query::filter::{ElementMatcher, Filter, MatchDetails, exact_integer};
use crate::query::path;

/// A parsed projection.
#[derive(Clone, Debug)]
pub struct Projection {
    inclusion: bool,
    include_id: bool,
    tree: BTreeMap<String, Node>,
}

#[derive(Clone, Debug)]
enum Node {
    Include,
    Exclude,
    Slice {
        skip: Option<i64>,
        limit: i64,
    },
    ElemMatch(Box<ElementMatcher>),
    /// `a.$` is `Positional { rest: [] }` under `a`; `a.b.$` is `rest: ["b"]`.
    Positional {
        path: String,
        rest: Vec<String>,
    },
    Children(BTreeMap<String, Node>),
}

fn truthy(value: &Bson) -> bool {
    match value {
        Bson::Boolean(flag) => *flag,
        _ => exact_integer(value).is_none_or(|number| number != 0),
    }
}

fn bad(path: &str, message: impl Into<String>) -> QueryError {
    QueryError::bad_value("projection", path, message)
}

fn parse_operator(path: &str, spec: &Document) -> Result<Node, QueryError> {
    let Some((operator, operand)) = spec.iter().next().filter(|_| spec.len() == 1) else {
        return Err(bad(path, format!("unsupported projection value {spec}")));
    };
    match operator.as_str() {
        "$slice" => parse_slice(path, operand),
        "$elemMatch" => {
            if path.contains('.') {
                return Err(bad(path, "cannot use $elemMatch projection on a nested field"));
            }
            Ok(Node::ElemMatch(Box::new(ElementMatcher::for_elem_match(operand, path)?)))
        }
        _ => Err(bad(path, format!("unsupported projection operator {operator}"))),
    }
}

fn parse_slice(path: &str, operand: &Bson) -> Result<Node, QueryError> {
    if let Some(limit) = exact_integer(operand) {
        return Ok(Node::Slice { skip: None, limit });
    }
    let Bson::Array(items) = operand else {
        return Err(bad(path, "$slice needs a number or [skip, limit]"));
    };
    let [skip, limit] = items.as_slice() else {
        return Err(bad(path, "$slice array needs two numbers"));
    };
    let (Some(skip), Some(limit)) = (exact_integer(skip), exact_integer(limit)) else {
        return Err(bad(path, "$slice array needs two numbers"));
    };
    if limit <= 0 {
        return Err(bad(path, "$slice limit must be positive"));
    }
    Ok(Node::Slice { skip: Some(skip), limit })
}

fn insert(
    tree: &mut BTreeMap<String, Node>,
    parts: &[String],
    node: Node,
    path: &str,
) -> Result<(), QueryError> {
    let collision = || bad(path, format!("path collision at {path}"));
    let (first, rest) = parts.split_first().expect("a projection path has a part");
    if rest.is_empty() {
        if tree.insert(first.clone(), node).is_some() {
            return Err(collision());
        }
        return Ok(());
    }
    let entry = tree.entry(first.clone()).or_insert_with(|| Node::Children(BTreeMap::new()));
    let Node::Children(children) = entry else { return Err(collision()) };
    insert(children, rest, node, path)
}

impl Projection {
    /// Parses a projection; `filter` is the query's, which a positional `$` must refer to.
    pub fn parse(spec: &Document, filter: Option<&Filter>) -> Result<Projection, QueryError> {
        if path::too_deep(spec) {
            return Err(bad("", "nested too deeply"));
        }
        let mut tree = BTreeMap::new();
        let (mut include_id, mut includes, mut excludes, mut selects) = (true, false, false, false);
        let mut positional_count = 0;
        for (path, value) in spec {
            let node = match value {
                Bson::Document(operator) => parse_operator(path, operator)?,
                _ if truthy(value) => Node::Include,
                _ => Node::Exclude,
            };
            if path == "_id" && matches!(node, Node::Include | Node::Exclude) {
                include_id = matches!(node, Node::Include);
                continue;
            }
            let mut parts = path::split(path);
            if parts.iter().any(String::is_empty) {
                return Err(bad(path, "empty field name in projection"));
            }
            let node = match parts.iter().skip(1).position(|part| part == "$") {
                Some(index) => {
                    if !matches!(node, Node::Include) {
                        return Err(bad(path, "a positional projection must include"));
                    }
                    let first_parts = filter.map(Filter::first_parts).unwrap_or_default();
                    if !first_parts.contains(&parts[0].as_str()) {
                        let message =
                            format!("positional projection '{path}' does not match the query");
                        return Err(bad(path, message));
                    }
                    positional_count += 1;
                    if positional_count > 1 {
                        return Err(bad(path, "only one positional projection is allowed"));
                    }
                    parts.truncate(index + 1);
                    let rest = parts.split_off(1);
                    Node::Positional { path: path.clone(), rest }
                }
                None => node,
            };
            includes |= matches!(node, Node::Include | Node::Positional { .. });
            excludes |= matches!(node, Node::Exclude);
            selects |= matches!(node, Node::ElemMatch(_));
            insert(&mut tree, &parts, node, path)?;
        }
        if includes && excludes {
            return Err(bad("", "cannot mix inclusion and exclusion in one projection"));
        }
        let inclusion = includes || (selects && !excludes);
        Ok(Projection { inclusion, include_id, tree })
    }

    /// Projects one matched document; `details` is its filter match (for positional `$`).
    pub fn apply(
        &self,
        document: &Document,
        details: &MatchDetails,
    ) -> Result<Document, QueryError> {
        let mut out = Document::new();
        for (key, value) in document {
            let node = self.tree.get(key);
            if key == "_id" && node.is_none() {
                if self.include_id {
                    out.insert(key.clone(), value.clone());
                }
                continue;
            }
            let projected = match node {
                None if self.inclusion => None,
                None => Some(value.clone()),
                Some(node) => self.project(node, value, details.position)?,
            };
            if let Some(projected) = projected {
                out.insert(key.clone(), projected);
            }
        }
        Ok(out)
    }

    fn project(
        &self,
        node: &Node,
        value: &Bson,
        position: Option<usize>,
    ) -> Result<Option<Bson>, QueryError> {
        Ok(match node {
            Node::Include => Some(value.clone()),
            Node::Exclude => None,
            Node::Children(children) if self.inclusion => include_value(value, children, self),
            Node::Children(children) => Some(exclude_value(value, children, self)),
            Node::Slice { skip, limit } => Some(slice(value, *skip, *limit)),
            Node::ElemMatch(matcher) => match value {
                Bson::Array(items) => items
                    .iter()
                    .find(|item| matcher.matches(item))
                    .map(|item| Bson::Array(vec![item.clone()])),
                _ => None,
            },
            Node::Positional { path, rest } if rest.is_empty() => {
                let Bson::Array(items) = value else { return Ok(Some(value.clone())) };
                let Some(position) = position else {
                    let message = "positional operator requires a corresponding field in the query";
                    return Err(bad(path, message));
                };
                let Some(item) = items.get(position) else {
                    return Err(bad(path, "positional operator element mismatch"));
                };
                Some(Bson::Array(vec![item.clone()]))
            }
            Node::Positional { rest, .. } => nested_positional(value, rest, position),
        })
    }
}

fn include_document(
    document: &Document,
    tree: &BTreeMap<String, Node>,
    projection: &Projection,
) -> Document {
    let mut out = Document::new();
    for (key, value) in document {
        let Some(node) = tree.get(key) else { continue };
        // Only `Positional` errs, and it sits at the top level only.
        if let Ok(Some(projected)) = projection.project(node, value, None) {
            out.insert(key.clone(), projected);
        }
    }
    out
}

fn include_value(
    value: &Bson,
    tree: &BTreeMap<String, Node>,
    projection: &Projection,
) -> Option<Bson> {
    match value {
        Bson::Document(document) => {
            Some(Bson::Document(include_document(document, tree, projection)))
        }
        Bson::Array(items) => Some(Bson::Array(
            items.iter().filter_map(|item| include_value(item, tree, projection)).collect(),
        )),
        _ => None,
    }
}

fn exclude_value(value: &Bson, tree: &BTreeMap<String, Node>, projection: &Projection) -> Bson {
    match value {
        Bson::Document(document) => {
            let mut out = Document::new();
            for (key, inner) in document {
                let projected = match tree.get(key) {
                    None => Some(inner.clone()),
                    Some(node) => projection.project(node, inner, None).ok().flatten(),
                };
                if let Some(projected) = projected {
                    out.insert(key.clone(), projected);
                }
            }
            Bson::Document(out)
        }
        Bson::Array(items) => {
            Bson::Array(items.iter().map(|item| exclude_value(item, tree, projection)).collect())
        }
        other => other.clone(),
    }
}

fn nested_positional(value: &Bson, rest: &[String], position: Option<usize>) -> Option<Bson> {
    match value {
        Bson::Array(items) => {
            position.and_then(|index| items.get(index)).map(|item| Bson::Array(vec![item.clone()]))
        }
        Bson::Document(document) => {
            let mut out = Document::new();
            if let Some((first, more)) = rest.split_first()
                && let Some(projected) =
                    document.get(first).and_then(|inner| nested_positional(inner, more, position))
            {
                out.insert(first.clone(), projected);
            }
            Some(Bson::Document(out))
        }
        _ => None,
    }
}

fn slice(value: &Bson, skip: Option<i64>, limit: i64) -> Bson {
    let Bson::Array(items) = value else { return value.clone() };
    let length = i64::try_from(items.len()).expect("an array length fits i64");
    let (start, count) = match skip {
        None if limit >= 0 => (0, limit),
        None => ((length + limit).max(0), -limit),
        Some(skip) if skip >= 0 => (skip.min(length), limit),
        Some(skip) => ((length + skip).max(0), limit),
    };
    let start = usize::try_from(start).expect("clamped to 0..=length");
    assert!(start <= items.len());
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    Bson::Array(items.iter().skip(start).take(count).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    /// Projects `document` matched by `filter` and compares with `expected`.
    #[track_caller]
    fn check(filter: Document, projection: Document, document: Document, expected: Document) {
        let filter = Filter::parse(&filter).expect("valid filter");
        let details = filter.match_details(&document).expect("the document matches");
        let projection = Projection::parse(&projection, Some(&filter)).expect("valid projection");
        assert_eq!(projection.apply(&document, &details).expect("projects"), expected);
    }

    #[test]
    fn inclusion_exclusion_and_the_id_rule() {
        let document = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "d": [{"b": 3}, 4], "e": 5};
        check(
            doc! {},
            doc! {"a.b": 1, "d.b": 1},
            document.clone(),
            doc! {
                "_id": 1, "a": {"b": 1}, "d": [{"b": 3}],
            },
        );
        check(
            doc! {},
            doc! {"a.b": 0, "_id": 0, "e": false},
            document.clone(),
            doc! {
                "a": {"c": 2}, "d": [{"b": 3}, 4],
            },
        );
        check(doc! {}, doc! {"_id": 0}, doc! {"_id": 1, "x": 2}, doc! {"x": 2});
        assert!(Projection::parse(&doc! {"a": 1, "e": 0}, None).is_err());
    }

    #[test]
    fn slice_elem_match_and_positional() {
        let document = doc! {"_id": 0, "a": [1, 2, 3, 4], "b": [{"c": 1}, {"c": 2}], "x": 1};
        check(
            doc! {},
            doc! {"a": {"$slice": -2}},
            document.clone(),
            doc! {
                "_id": 0, "a": [3, 4], "b": [{"c": 1}, {"c": 2}], "x": 1,
            },
        );
        check(
            doc! {},
            doc! {"a": {"$slice": [1, 2]}, "x": 1},
            document.clone(),
            doc! {
                "_id": 0, "a": [2, 3], "x": 1,
            },
        );
        check(
            doc! {},
            doc! {"b": {"$elemMatch": {"c": 2}}},
            document.clone(),
            doc! {
                "_id": 0, "b": [{"c": 2}],
            },
        );
        check(
            doc! {"b.c": 2},
            doc! {"b.$": 1},
            document.clone(),
            doc! {
                "_id": 0, "b": [{"c": 2}],
            },
        );
        let filter = Filter::parse(&doc! {"x": 1}).expect("valid");
        assert!(Projection::parse(&doc! {"b.$": 1}, Some(&filter)).is_err());
        assert!(Projection::parse(&doc! {"b.c": {"$elemMatch": {"d": 1}}}, None).is_err());
    }
}
