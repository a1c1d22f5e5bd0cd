//! The catalog: which collections exist, their indexes and validators, and how index keys are
//! made from documents.
//!
//! A catalog entry is stored as a BSON record under `layout::catalog_key(id)`, written in the
//! same atomic batch as the data it describes (an index build writes its entries and the
//! entry that lists the index together), so a crash never leaves an index half there.
//!
//! Invariant: every change to a collection's entry bumps its `epoch`; a transaction that wrote
//! to a collection under one epoch cannot commit under another (its index maintenance would be
//! for the wrong set of indexes).

use std::collections::BTreeSet;

use bson::{Bson, Document, doc};

use crate::error::{Error, Result};
use crate::keycode;

/// Largest number of index entries one document may produce (multikey expansion).
pub const INDEX_KEYS_PER_DOCUMENT_MAX: usize = 10_000;
/// Largest number of indexes on one collection (MongoDB's limit, `_id` included).
pub const INDEX_COUNT_MAX: usize = 64;

/// One secondary index.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexInfo {
    /// Id within the collection (its LSM key prefix); never reused.
    pub id: u32,
    /// Name, unique in the collection (MongoDB's default: `a_1_b_-1`).
    pub name: String,
    /// Key paths and directions (`true` ascending), most significant first.
    pub keys: Vec<(String, bool)>,
    /// A duplicate key is refused.
    pub unique: bool,
    /// Documents missing every key path have no entry.
    pub sparse: bool,
    /// Some document produced more than one entry (an array on a key path); such an index
    /// cannot give a sort order and is deduplicated by `_id` when scanned.
    pub multikey: bool,
}

/// One collection.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionInfo {
    /// Id (its LSM key prefix); never reused.
    pub id: u32,
    /// The database's name.
    pub database: String,
    /// The collection's name.
    pub name: String,
    /// Bumped by every change of this entry.
    pub epoch: u64,
    /// The next index id to hand out.
    pub next_index_id: u32,
    /// Secondary indexes (the `_id` index is implicit: documents are keyed by `_id`).
    pub indexes: Vec<IndexInfo>,
    /// Optional JSON Schema validator (`$jsonSchema` subset).
    pub validator: Option<Document>,
}

impl CollectionInfo {
    /// `database.collection`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }

    /// The stored form of this entry.
    pub fn to_document(&self) -> Document {
        let indexes: Vec<Bson> =
            self.indexes.iter().map(index_to_document).map(Bson::from).collect();
        let mut entry = doc! {
            "id": i64::from(self.id),
            "database": &self.database,
            "name": &self.name,
            "epoch": self.epoch as i64,
            "next_index_id": i64::from(self.next_index_id),
            "indexes": indexes,
        };
        if let Some(validator) = &self.validator {
            entry.insert("validator", validator.clone());
        }
        entry
    }

    /// Reads a stored entry back; anything missing or mistyped is `Corruption`.
    pub fn from_document(entry: &Document) -> Result<CollectionInfo> {
        let bad = |what: &str| Error::Corruption(format!("catalog entry: bad {what}: {entry}"));
        let number = |field: &str| entry.get_i64(field).map_err(|_| bad(field));
        let mut indexes = Vec::new();
        for item in entry.get_array("indexes").map_err(|_| bad("indexes"))? {
            let Bson::Document(index) = item else { return Err(bad("index")) };
            indexes.push(index_from_document(index).ok_or_else(|| bad("index"))?);
        }
        Ok(CollectionInfo {
            id: u32::try_from(number("id")?).map_err(|_| bad("id"))?,
            database: entry.get_str("database").map_err(|_| bad("database"))?.to_string(),
            name: entry.get_str("name").map_err(|_| bad("name"))?.to_string(),
            epoch: u64::try_from(number("epoch")?).map_err(|_| bad("epoch"))?,
            next_index_id: u32::try_from(number("next_index_id")?).map_err(|_| bad("index id"))?,
            indexes,
            validator: entry.get_document("validator").ok().cloned(),
        })
    }

    /// The index called `name`.
    pub fn index(&self, name: &str) -> Option<&IndexInfo> {
        self.indexes.iter().find(|index| index.name == name)
    }
}

fn index_to_document(index: &IndexInfo) -> Document {
    let keys: Document = index
        .keys
        .iter()
        .map(|(path, up)| (path.clone(), Bson::Int32(if *up { 1 } else { -1 })))
        .collect();
    doc! {
        "id": i64::from(index.id),
        "name": &index.name,
        "key": keys,
        "unique": index.unique,
        "sparse": index.sparse,
        "multikey": index.multikey,
    }
}

fn index_from_document(entry: &Document) -> Option<IndexInfo> {
    let keys = parse_key_pattern(entry.get_document("key").ok()?).ok()?;
    Some(IndexInfo {
        id: u32::try_from(entry.get_i64("id").ok()?).ok()?,
        name: entry.get_str("name").ok()?.to_string(),
        keys,
        unique: entry.get_bool("unique").ok()?,
        sparse: entry.get_bool("sparse").ok()?,
        multikey: entry.get_bool("multikey").ok()?,
    })
}

/// Reads a key pattern such as `{a: 1, "b.c": -1}`.
pub fn parse_key_pattern(pattern: &Document) -> Result<Vec<(String, bool)>> {
    let mut keys = Vec::new();
    for (path, direction) in pattern {
        let up = match crate::value::number(direction) {
            Some(crate::value::Number::Integer(1)) => true,
            Some(crate::value::Number::Integer(-1)) => false,
            Some(crate::value::Number::Double(1.0)) => true,
            Some(crate::value::Number::Double(-1.0)) => false,
            _ => {
                return Err(Error::BadIndex(format!(
                    "key '{path}' has direction {direction}; only 1 and -1 are supported"
                )));
            }
        };
        if path.is_empty() || path.starts_with('$') || path.split('.').any(str::is_empty) {
            return Err(Error::BadIndex(format!("bad key path '{path}'")));
        }
        keys.push((path.clone(), up));
    }
    if keys.is_empty() {
        return Err(Error::BadIndex("empty key pattern".to_string()));
    }
    Ok(keys)
}

/// MongoDB's default index name: `a_1_b_-1`.
pub fn default_index_name(keys: &[(String, bool)]) -> String {
    let parts: Vec<String> =
        keys.iter().map(|(path, up)| format!("{path}_{}", if *up { 1 } else { -1 })).collect();
    parts.join("_")
}

/// The index keys (without the `_id` suffix) `document` has in `index`, and whether an array
/// produced several. A sparse index gives none for a document missing every key path.
pub fn index_keys(index: &IndexInfo, document: &Document) -> Result<(BTreeSet<Vec<u8>>, bool)> {
    let mut per_path: Vec<(Vec<Bson>, bool)> = Vec::with_capacity(index.keys.len());
    let mut any_present = false;
    for (path, _) in &index.keys {
        let parts: Vec<&str> = path.split('.').collect();
        let mut values = Vec::new();
        let mut expanded = false;
        let present = collect_document_path(document, &parts, &mut values, &mut expanded);
        any_present |= present;
        per_path.push((values, expanded));
    }
    if index.sparse && !any_present {
        return Ok((BTreeSet::new(), false));
    }
    let expanded_count =
        per_path.iter().filter(|(values, expanded)| *expanded && values.len() > 1).count();
    if expanded_count > 1 {
        return Err(Error::InvalidDocument(format!(
            "cannot index parallel arrays in index '{}'",
            index.name
        )));
    }
    let multikey = per_path.iter().any(|(_, expanded)| *expanded);
    let mut keys = BTreeSet::new();
    let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
    for ((values, _), (_, up)) in per_path.iter().zip(&index.keys) {
        let mut next = Vec::with_capacity(prefixes.len() * values.len());
        for prefix in &prefixes {
            for value in values {
                let mut key = prefix.clone();
                if *up {
                    keycode::encode_into(value, &mut key);
                } else {
                    keycode::encode_descending_into(value, &mut key);
                }
                next.push(key);
            }
        }
        prefixes = next;
    }
    keys.extend(prefixes);
    if keys.len() > INDEX_KEYS_PER_DOCUMENT_MAX {
        return Err(Error::InvalidDocument(format!(
            "document has {} keys in index '{}' (at most {INDEX_KEYS_PER_DOCUMENT_MAX})",
            keys.len(),
            index.name
        )));
    }
    Ok((keys, multikey))
}

/// `collect_path` from a document, without wrapping (cloning) it into a value first.
fn collect_document_path(
    document: &Document,
    parts: &[&str],
    out: &mut Vec<Bson>,
    expanded: &mut bool,
) -> bool {
    let (first, rest) = parts.split_first().expect("key paths have a part");
    match document.get(*first) {
        Some(child) => collect_path(child, rest, out, expanded),
        None => {
            out.push(Bson::Null);
            false
        }
    }
}

/// Collects the values at `parts` under `value` as MongoDB indexes them: arrays on the way are
/// expanded (each element followed), a terminal array gives its elements (`undefined` for an
/// empty one), a missing field gives `null`. Returns whether the field was present anywhere.
fn collect_path(value: &Bson, parts: &[&str], out: &mut Vec<Bson>, expanded: &mut bool) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        match value {
            Bson::Array(items) if items.is_empty() => out.push(Bson::Undefined),
            Bson::Array(items) => {
                *expanded = true;
                out.extend(items.iter().cloned());
            }
            other => out.push(other.clone()),
        }
        return true;
    };
    match value {
        Bson::Document(document) => match document.get(*first) {
            Some(child) => collect_path(child, rest, out, expanded),
            None => {
                out.push(Bson::Null);
                false
            }
        },
        Bson::Array(items) => {
            *expanded = true;
            let mut present = false;
            if let Ok(position) = first.parse::<usize>()
                && let Some(child) = items.get(position)
            {
                present |= collect_path(child, rest, out, expanded);
            }
            for item in items {
                if let Bson::Document(_) = item {
                    present |= collect_path(item, parts, out, expanded);
                }
            }
            if out.is_empty() {
                out.push(Bson::Null);
            }
            present
        }
        _ => {
            out.push(Bson::Null);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(keys: &[(&str, bool)], sparse: bool) -> IndexInfo {
        IndexInfo {
            id: 1,
            name: "i".into(),
            keys: keys.iter().map(|(path, up)| (path.to_string(), *up)).collect(),
            unique: false,
            sparse,
            multikey: false,
        }
    }

    #[track_caller]
    fn check(keys: &[(&str, bool)], document: Document, expected: &[Bson], multikey: bool) {
        let (actual, actual_multikey) = index_keys(&index(keys, false), &document).unwrap();
        let expected: BTreeSet<Vec<u8>> = expected.iter().map(keycode::encode).collect();
        assert_eq!(actual, expected, "{document}");
        assert_eq!(actual_multikey, multikey, "{document}");
    }

    #[test]
    fn keys_follow_paths_and_arrays() {
        check(&[("a", true)], doc! {"a": 1}, &[Bson::Int32(1)], false);
        check(&[("a", true)], doc! {}, &[Bson::Null], false);
        check(&[("a", true)], doc! {"a": [1, 2, 2]}, &[1.into(), 2.into()], true);
        check(&[("a", true)], doc! {"a": []}, &[Bson::Undefined], false);
        check(&[("a.b", true)], doc! {"a": [{"b": 1}, {"c": 2}]}, &[1.into(), Bson::Null], true);
        check(&[("a.b", true)], doc! {"a": {"b": "x"}}, &["x".into()], false);
    }

    #[test]
    fn parallel_arrays_and_sparse_documents() {
        let compound = index(&[("a", true), ("b", true)], false);
        assert!(index_keys(&compound, &doc! {"a": [1, 2], "b": [3, 4]}).is_err());
        let sparse = index(&[("a", true)], true);
        assert!(index_keys(&sparse, &doc! {"b": 1}).unwrap().0.is_empty());
        let entry = CollectionInfo {
            id: 3,
            database: "d".into(),
            name: "c".into(),
            epoch: 2,
            next_index_id: 2,
            indexes: vec![compound],
            validator: Some(doc! {"required": ["a"]}),
        };
        assert_eq!(CollectionInfo::from_document(&entry.to_document()).unwrap(), entry);
    }
}
