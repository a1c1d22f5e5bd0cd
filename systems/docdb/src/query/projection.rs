//! PLACEHOLDER projection: identity.
use bson::Document;

use super::QueryError;

/// A projection.
#[derive(Clone, Debug)]
pub struct Projection;

impl Projection {
    /// Compiles.
    pub fn parse(_document: &Document) -> Result<Projection, QueryError> {
        Ok(Projection)
    }
    /// Applies.
    pub fn apply(&self, document: Document) -> Document {
        document
    }
}
