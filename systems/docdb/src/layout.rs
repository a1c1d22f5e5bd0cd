//! Where everything lives in the LSM key space, and the stored forms of documents and
//! catalog entries (format version 1; `docs/format.md` is the specification).
//!
//! | key | value |
//! |---|---|
//! | `00` `format` | format version (one byte, 1) |
//! | `00` `commit` | the last commit number (u64 big-endian) |
//! | `01` collection id (u32 BE) | catalog entry: `01` + BSON document |
//! | `02` collection id (u32 BE) keycode(`_id`) | document: `01` + BSON document |
//! | `03` collection id, index id (u32 BE each), index key [keycode(`_id`)] | keycode(`_id`) |
//! | `04` commit (u64 BE) event index (u32 BE) | change event: `01` + BSON document |
//!
//! Unique indexes store their key without the `_id` suffix, so two documents with one key
//! collide on one LSM key and the transaction layer's conflict check sees it.

use bson::{Bson, Document};

use crate::error::{Error, Result};
use crate::keycode;

/// The on-disk format version of docdb's key space and records.
pub const FORMAT_VERSION: u8 = 1;
/// Version byte in front of every stored BSON record.
pub const RECORD_VERSION: u8 = 1;

const PREFIX_META: u8 = 0x00;
const PREFIX_CATALOG: u8 = 0x01;
const PREFIX_DOCUMENT: u8 = 0x02;
const PREFIX_INDEX: u8 = 0x03;
const PREFIX_CHANGE: u8 = 0x04;

/// Largest document docdb stores (MongoDB's limit).
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The key of the format version record.
pub fn format_key() -> Vec<u8> {
    [&[PREFIX_META][..], b"format"].concat()
}

/// The key of the last-commit-number record.
pub fn commit_key() -> Vec<u8> {
    [&[PREFIX_META][..], b"commit"].concat()
}

/// The catalog entry of a collection.
pub fn catalog_key(collection_id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_CATALOG];
    key.extend_from_slice(&collection_id.to_be_bytes());
    key
}

/// The prefix of every catalog entry.
pub fn catalog_prefix() -> Vec<u8> {
    vec![PREFIX_CATALOG]
}

/// The prefix of every document of a collection.
pub fn document_prefix(collection_id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_DOCUMENT];
    key.extend_from_slice(&collection_id.to_be_bytes());
    key
}

/// The key of a document, from its encoded `_id`.
pub fn document_key(collection_id: u32, id_code: &[u8]) -> Vec<u8> {
    let mut key = document_prefix(collection_id);
    key.extend_from_slice(id_code);
    key
}

/// The encoded `_id` at the end of a document key.
pub fn id_code_of_document_key(key: &[u8]) -> &[u8] {
    assert!(key.len() > 5 && key[0] == PREFIX_DOCUMENT);
    &key[5..]
}

/// The prefix of every entry of one index.
pub fn index_prefix(collection_id: u32, index_id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_INDEX];
    key.extend_from_slice(&collection_id.to_be_bytes());
    key.extend_from_slice(&index_id.to_be_bytes());
    key
}

/// The prefix of every index entry of a collection (all its indexes).
pub fn collection_index_prefix(collection_id: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_INDEX];
    key.extend_from_slice(&collection_id.to_be_bytes());
    key
}

/// The key of a change event.
pub fn change_key(commit: u64, event_index: u32) -> Vec<u8> {
    let mut key = vec![PREFIX_CHANGE];
    key.extend_from_slice(&commit.to_be_bytes());
    key.extend_from_slice(&event_index.to_be_bytes());
    key
}

/// The prefix of every change event.
pub fn change_prefix() -> Vec<u8> {
    vec![PREFIX_CHANGE]
}

/// The commit number and event index of a change key.
pub fn parse_change_key(key: &[u8]) -> Result<(u64, u32)> {
    if key.len() != 13 || key[0] != PREFIX_CHANGE {
        return Err(Error::Corruption(format!("bad change key of {} bytes", key.len())));
    }
    let commit = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
    let index = u32::from_be_bytes(key[9..13].try_into().expect("4 bytes"));
    Ok((commit, index))
}

/// The collection id in a catalog key.
pub fn parse_catalog_key(key: &[u8]) -> Result<u32> {
    if key.len() != 5 || key[0] != PREFIX_CATALOG {
        return Err(Error::Corruption(format!("bad catalog key of {} bytes", key.len())));
    }
    Ok(u32::from_be_bytes(key[1..5].try_into().expect("4 bytes")))
}

/// The stored form of a BSON record: the version byte, then the BSON bytes. BSON prefixes
/// every element with its type and sizes, so a field can be found without decoding the rest.
pub fn encode_record(document: &Document) -> Result<Vec<u8>> {
    let mut bytes = vec![RECORD_VERSION];
    document.to_writer(&mut bytes).map_err(|error| Error::InvalidDocument(error.to_string()))?;
    Ok(bytes)
}

/// Reads a stored record back; a wrong version or bad BSON is `Corruption` naming `what`.
pub fn decode_record(bytes: &[u8], what: &str) -> Result<Document> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => match crate::decode::document(body) {
            Ok(document) => Ok(document),
            // The direct decoder leaves out rare types; the bson crate has the last word.
            Err(_) => Document::from_reader(body)
                .map_err(|error| Error::Corruption(format!("{what}: bad BSON: {error}"))),
        },
        Some((version, _)) => {
            Err(Error::Corruption(format!("{what}: unknown record version {version}")))
        }
        None => Err(Error::Corruption(format!("{what}: empty record"))),
    }
}

/// The top-level fields `fields` of a stored document, decoded without decoding the rest: BSON
/// gives every element's type and length, so the others are skipped. A filter that names only
/// these fields matches the partial document exactly when it matches the whole one.
pub fn decode_fields(bytes: &[u8], fields: &[&str], what: &str) -> Result<Document> {
    let corrupt = |error: String| Error::Corruption(format!("{what}: bad BSON: {error}"));
    let body = match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => body,
        Some((version, _)) => {
            return Err(Error::Corruption(format!("{what}: unknown record version {version}")));
        }
        None => return Err(Error::Corruption(format!("{what}: empty record"))),
    };
    if let Ok(partial) = crate::decode::fields(body, fields) {
        return Ok(partial);
    }
    // The direct reader refused something (a rare type it leaves out, or damage): the bson
    // crate has the last word.
    let raw = bson::RawDocument::from_bytes(body).map_err(|error| corrupt(error.to_string()))?;
    let mut partial = Document::new();
    for field in fields {
        if partial.contains_key(*field) {
            continue;
        }
        if let Some(value) = raw.get(field).map_err(|error| corrupt(error.to_string()))? {
            let value = Bson::try_from(value).map_err(|error| corrupt(error.to_string()))?;
            partial.insert(*field, value);
        }
    }
    Ok(partial)
}

/// The encoded `_id` of a document, after checking it may be an `_id` (not an array, not
/// undefined, not a regular expression: MongoDB's rule).
pub fn id_code(id: &Bson) -> Result<Vec<u8>> {
    match id {
        Bson::Array(_) | Bson::Undefined | Bson::RegularExpression(_) => {
            Err(Error::InvalidDocument(format!("_id cannot be of type {:?}", id.element_type())))
        }
        _ => Ok(keycode::encode(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn records_round_trip_and_reject_damage() {
        let document = doc! {"_id": 1, "a": [1, {"b": "x"}]};
        let bytes = encode_record(&document).unwrap();
        assert_eq!(decode_record(&bytes, "doc").unwrap(), document);
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(matches!(decode_record(&wrong_version, "doc"), Err(Error::Corruption(_))));
        assert!(matches!(
            decode_record(&bytes[..bytes.len() - 3], "doc"),
            Err(Error::Corruption(_))
        ));
    }

    #[test]
    fn change_keys_sort_by_commit_then_index() {
        assert!(change_key(1, 9) < change_key(2, 0));
        assert_eq!(parse_change_key(&change_key(7, 3)).unwrap(), (7, 3));
        assert!(id_code(&Bson::Array(vec![])).is_err());
    }
}
