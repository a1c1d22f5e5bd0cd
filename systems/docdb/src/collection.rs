//! `Collection`: the auto-commit handle. Each call is one transaction, retried on a write
//! conflict (as MongoDB retries single-document writes internally), and `Cursor` pages a
//! query's results in batches.

use std::collections::VecDeque;

use bson::{Bson, Document};
use sim::Env;

use crate::db::DocDb;
use crate::error::{Error, Result};
use crate::ops::{FindOptions, IndexSpec, UpdateOptions, UpdateResult};
use crate::plan;

/// MongoDB's default first batch.
const FIRST_BATCH_DEFAULT: usize = 101;

/// What `insert_many` did.
#[derive(Debug, Default)]
pub struct InsertManyResult {
    /// `_id`s of the inserted documents, by position in the input.
    pub inserted_ids: Vec<(usize, Bson)>,
    /// Documents that were refused, by position, with why. With `ordered`, at most one: the
    /// insert stopped there.
    pub errors: Vec<(usize, Error)>,
}

/// Runs `$body` (with `$c` bound to the collection inside a fresh transaction) and commits,
/// retrying the whole of it after a write conflict, at most `conflict_retries_max` times.
/// A macro rather than a closure so the future stays `Send` and borrows its arguments.
macro_rules! auto_commit {
    ($self:ident, |$c:ident| $body:expr) => {{
        let retries_max = $self.db.inner.options.conflict_retries_max;
        let mut attempt = 0;
        loop {
            let mut txn = $self.db.begin();
            let outcome = {
                #[allow(unused_mut)]
                let mut $c = txn.collection(&$self.database, &$self.name);
                $body
            };
            let result = match outcome {
                Ok(value) => txn.commit().await.map(|_| value),
                Err(error) => {
                    txn.abort();
                    Err(error)
                }
            };
            match result {
                Err(error) if error.is_transient() && attempt < retries_max => {
                    attempt += 1;
                    if $self.db.inner.env.buggify("docdb.autocommit.retry_late") {
                        // A retry that comes late (a descheduled client): the conflicting
                        // writer may have moved on again, so the retry must re-read everything.
                        $self.db.inner.env.sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
                other => break other,
            }
        }
    }};
}

/// A collection of a `DocDb`; every call commits on its own.
pub struct Collection<E: Env> {
    db: DocDb<E>,
    database: String,
    name: String,
}

impl<E: Env> Clone for Collection<E> {
    fn clone(&self) -> Self {
        Collection { db: self.db.clone(), database: self.database.clone(), name: self.name.clone() }
    }
}

impl<E: Env> DocDb<E> {
    /// The collection `name` of `database` (created by its first write if missing).
    pub fn collection(&self, database: &str, name: &str) -> Collection<E> {
        Collection { db: self.clone(), database: database.to_string(), name: name.to_string() }
    }

    /// Creates a collection, optionally with a validator; `NamespaceExists` if it is there.
    pub async fn create_collection(
        &self,
        database: &str,
        name: &str,
        validator: Option<Document>,
    ) -> Result<()> {
        let mut txn = self.begin();
        txn.collection(database, name).create(validator)?;
        txn.commit().await.map(|_| ())
    }

    /// Drops a collection; whether it existed.
    pub async fn drop_collection(&self, database: &str, name: &str) -> Result<bool> {
        let collection = self.collection(database, name);
        collection.drop_collection().await
    }
}

impl<E: Env> Collection<E> {
    /// `database.collection`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }

    /// Inserts one document; its `_id`.
    pub async fn insert_one(&self, document: Document) -> Result<Bson> {
        auto_commit!(self, |c| c.insert_one(document.clone()).await)
    }

    /// Inserts documents in one transaction. `ordered`: stop at the first refused document
    /// (the ones before it are inserted); otherwise insert every one that can be.
    pub async fn insert_many(
        &self,
        documents: Vec<Document>,
        ordered: bool,
    ) -> Result<InsertManyResult> {
        auto_commit!(self, |c| {
            let mut result = InsertManyResult::default();
            let mut failed = None;
            for (position, document) in documents.iter().enumerate() {
                match c.insert_one(document.clone()).await {
                    Ok(id) => result.inserted_ids.push((position, id)),
                    Err(error @ (Error::Storage(_) | Error::WriteConflict { .. })) => {
                        failed = Some(error);
                        break;
                    }
                    Err(error) => {
                        result.errors.push((position, error));
                        if ordered {
                            break;
                        }
                    }
                }
            }
            match failed {
                Some(error) => Err(error),
                None => Ok(result),
            }
        })
    }

    /// A cursor over the documents matching `filter`.
    pub async fn find(&self, filter: Document, options: FindOptions) -> Result<Cursor> {
        let output = auto_commit!(self, |c| c.query(&filter, &options).await)?;
        Ok(Cursor::new(output.documents, options.batch_size as usize))
    }

    /// The first document matching `filter` (in `sort` order when given).
    pub async fn find_one(
        &self,
        filter: Document,
        sort: Option<Document>,
    ) -> Result<Option<Document>> {
        let options = FindOptions { sort, limit: 1, ..FindOptions::default() };
        let mut cursor = self.find(filter, options).await?;
        Ok(cursor.next_batch().into_iter().next())
    }

    /// The plan a find would use and what it examined (MongoDB's `explain` with execution
    /// statistics).
    pub async fn explain(&self, filter: Document, options: FindOptions) -> Result<Document> {
        let output = auto_commit!(self, |c| c.query(&filter, &options).await)?;
        Ok(plan::explain_document(&output.plan, &output.stats))
    }

    /// Counts documents matching `filter`.
    pub async fn count(&self, filter: Document) -> Result<u64> {
        auto_commit!(self, |c| c.count(&filter).await)
    }

    /// Updates the first document matching `filter`.
    pub async fn update_one(
        &self,
        filter: Document,
        update: Document,
        options: UpdateOptions,
    ) -> Result<UpdateResult> {
        auto_commit!(self, |c| c.update(&filter, &update, &options, false).await)
    }

    /// Updates every document matching `filter`.
    pub async fn update_many(
        &self,
        filter: Document,
        update: Document,
        options: UpdateOptions,
    ) -> Result<UpdateResult> {
        auto_commit!(self, |c| c.update(&filter, &update, &options, true).await)
    }

    /// Replaces the first document matching `filter`.
    pub async fn replace_one(
        &self,
        filter: Document,
        replacement: Document,
        upsert: bool,
    ) -> Result<UpdateResult> {
        auto_commit!(self, |c| c.replace_one(&filter, replacement.clone(), upsert).await)
    }

    /// Updates the first document matching `filter` (in `sort` order) and returns it as it
    /// was before (`return_after == false`) or after.
    pub async fn find_one_and_update(
        &self,
        filter: Document,
        update: Document,
        sort: Option<Document>,
        options: UpdateOptions,
        return_after: bool,
    ) -> Result<Option<Document>> {
        auto_commit!(self, |c| {
            c.find_one_and_update(&filter, &update, sort.as_ref(), &options, return_after).await
        })
    }

    /// Deletes the first document matching `filter`; how many (0 or 1).
    pub async fn delete_one(&self, filter: Document) -> Result<u64> {
        auto_commit!(self, |c| c.delete(&filter, false).await)
    }

    /// Deletes every document matching `filter`; how many.
    pub async fn delete_many(&self, filter: Document) -> Result<u64> {
        auto_commit!(self, |c| c.delete(&filter, true).await)
    }

    /// Drops the collection; whether it existed.
    pub async fn drop_collection(&self) -> Result<bool> {
        auto_commit!(self, |c| c.drop_collection().await)
    }

    /// Creates an index (filled from the documents already there); its name.
    pub async fn create_index(&self, spec: IndexSpec) -> Result<String> {
        auto_commit!(self, |c| c.create_index(&spec).await)
    }

    /// Drops an index by name.
    pub async fn drop_index(&self, name: &str) -> Result<()> {
        auto_commit!(self, |c| c.drop_index(name).await)
    }

    /// The indexes, as MongoDB's `listIndexes` describes them.
    pub async fn list_indexes(&self) -> Result<Vec<Document>> {
        let mut txn = self.db.begin();
        let indexes = txn.collection(&self.database, &self.name).list_indexes();
        txn.abort();
        indexes
    }
}

/// Pages a query's results: `next_batch` hands out `batch_size` documents at a time (the
/// first batch 101 by default, as MongoDB).
#[derive(Debug)]
pub struct Cursor {
    remaining: VecDeque<Document>,
    batch_size: usize,
    first: bool,
}

impl Cursor {
    fn new(documents: Vec<Document>, batch_size: usize) -> Cursor {
        Cursor { remaining: documents.into(), batch_size, first: true }
    }

    /// The next batch; empty when the cursor is exhausted.
    pub fn next_batch(&mut self) -> Vec<Document> {
        let size = match (self.batch_size, self.first) {
            (0, true) => FIRST_BATCH_DEFAULT,
            (0, false) => usize::MAX,
            (size, _) => size,
        };
        self.first = false;
        let take = size.min(self.remaining.len());
        self.remaining.drain(..take).collect()
    }

    /// Whether every document was handed out.
    pub fn is_exhausted(&self) -> bool {
        self.remaining.is_empty()
    }

    /// Every remaining document.
    pub fn collect_all(mut self) -> Vec<Document> {
        self.remaining.drain(..).collect()
    }
}
