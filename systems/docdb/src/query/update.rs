//! PLACEHOLDER update: $set only.
use bson::{Bson, Document};

use super::QueryError;
use super::filter::Filter;

/// A compiled update.
#[derive(Clone, Debug)]
pub struct Update {
    set: Document,
}

/// Context.
#[derive(Clone, Debug)]
pub struct UpdateContext {
    /// Now.
    pub now: bson::DateTime,
    /// Insert.
    pub is_insert: bool,
}

/// What changed.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Updated paths.
    pub updated: Vec<String>,
    /// Removed paths.
    pub removed: Vec<String>,
}

impl Update {
    /// Compiles.
    pub fn parse(document: &Document, _array_filters: &[Document]) -> Result<Update, QueryError> {
        let set = document.get_document("$set").map_err(|e| QueryError(e.to_string()))?.clone();
        Ok(Update { set })
    }
    /// Applies.
    pub fn apply(
        &self,
        doc: &mut Document,
        _context: &UpdateContext,
    ) -> Result<Changes, QueryError> {
        let mut changes = Changes::default();
        for (k, v) in &self.set {
            if doc.get(k) != Some(v) {
                doc.insert(k.clone(), v.clone());
                changes.updated.push(k.clone());
            }
        }
        Ok(changes)
    }
}

/// Upsert seed.
pub fn upsert_seed(filter: &Document) -> Document {
    let _ = Filter::parse(filter);
    filter
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Replacement check.
pub fn validate_replacement(replacement: &Document) -> Result<(), QueryError> {
    if replacement.keys().any(|k| k.starts_with('$')) {
        return Err(QueryError("replacement has operators".into()));
    }
    let _ = Bson::Null;
    Ok(())
}
