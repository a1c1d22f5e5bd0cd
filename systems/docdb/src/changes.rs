//! Change streams: the committed changes of a collection (or database, or everything), in
//! commit order, with a resume token after each.
//!
//! Events are written in the same atomic batch as the data they describe, under
//! `layout::change_key(commit, index)`, so a stream has no gaps and no repeats across
//! restarts: resuming from a token reads the keys after it. The newest
//! `Options::change_history_commits` commits are kept; a token older than that is
//! `ChangeHistoryLost`.
//!
//! Invariant: a stream delivers events in strictly increasing (commit, index) order.

use std::collections::VecDeque;

use bson::{Bson, Document, doc};
use sim::Env;

use crate::db::DocDb;
use crate::error::{Error, Result};
use crate::layout;

/// Events read from the store per refill.
const REFILL_EVENTS_MAX: usize = 256;

/// A position in the change history: after event `index` of commit `commit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResumeToken {
    /// The commit number of the last event delivered.
    pub commit: u64,
    /// The event's index within its commit.
    pub index: u32,
}

impl ResumeToken {
    /// MongoDB's shape: `{_data: "<hex>"}`.
    pub fn to_document(self) -> Document {
        doc! {"_data": format!("{:016x}{:08x}", self.commit, self.index)}
    }

    /// Reads a token back; a malformed one is `InvalidArgument`.
    pub fn from_document(token: &Document) -> Result<ResumeToken> {
        let bad = || Error::InvalidArgument(format!("bad resume token {token}"));
        let data = token.get_str("_data").map_err(|_| bad())?;
        if data.len() != 24 || !data.is_ascii() {
            return Err(bad());
        }
        let commit = u64::from_str_radix(&data[..16], 16).map_err(|_| bad())?;
        let index = u32::from_str_radix(&data[16..], 16).map_err(|_| bad())?;
        Ok(ResumeToken { commit, index })
    }
}

/// What a stream watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every collection.
    All,
    /// Every collection of a database.
    Database(String),
    /// One collection.
    Collection(String, String),
}

impl Scope {
    fn admits(&self, event: &Document) -> bool {
        let database = event.get_str("db").unwrap_or_default();
        match self {
            Scope::All => true,
            Scope::Database(name) => database == name,
            Scope::Collection(db, collection) => {
                database == db && event.get_str("coll").unwrap_or_default() == collection
            }
        }
    }
}

/// One change, as MongoDB's change events describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    /// Where the stream stands after this event.
    pub token: ResumeToken,
    /// `insert`, `update`, `replace`, `delete` or `drop`.
    pub operation: String,
    /// The database.
    pub database: String,
    /// The collection.
    pub collection: String,
    /// `{_id: ...}` of the changed document (absent for `drop`).
    pub document_key: Option<Document>,
    /// The new document (insert and replace).
    pub full_document: Option<Document>,
    /// `{updatedFields: {...}, removedFields: [...]}` (update).
    pub update_description: Option<Document>,
}

impl ChangeEvent {
    fn from_record(token: ResumeToken, record: Document) -> Result<ChangeEvent> {
        let text = |field: &str| {
            record.get_str(field).map(str::to_string).map_err(|_| {
                Error::Corruption(format!("change event {} has no '{field}'", token.commit))
            })
        };
        Ok(ChangeEvent {
            token,
            operation: text("op")?,
            database: text("db")?,
            collection: text("coll")?,
            document_key: record.get_document("documentKey").ok().cloned(),
            full_document: record.get_document("fullDocument").ok().cloned(),
            update_description: record.get_document("updateDescription").ok().cloned(),
        })
    }

    /// The changed document's `_id`.
    pub fn id(&self) -> Option<&Bson> {
        self.document_key.as_ref().and_then(|key| key.get("_id"))
    }
}

/// A stream of committed changes; `next` waits for the next one.
pub struct ChangeStream<E: Env> {
    db: DocDb<E>,
    scope: Scope,
    position: ResumeToken,
    buffered: VecDeque<ChangeEvent>,
}

impl<E: Env> DocDb<E> {
    /// Watches `scope` from now, or from just after `resume_after`.
    pub async fn watch(
        &self,
        scope: Scope,
        resume_after: Option<ResumeToken>,
    ) -> Result<ChangeStream<E>> {
        let position = match resume_after {
            None => ResumeToken { commit: self.last_commit(), index: u32::MAX },
            Some(token) => {
                self.check_history(token).await?;
                token
            }
        };
        Ok(ChangeStream { db: self.clone(), scope, position, buffered: VecDeque::new() })
    }

    /// `ChangeHistoryLost` when events after `token` were already trimmed.
    ///
    /// Commit `c` trims the events of commit `c - change_history_commits` in its own batch, and
    /// commits are numbered without gaps, so after commit `last` exactly the commits up to
    /// `last - change_history_commits` have lost their events. The oldest change key says
    /// nothing about this: a commit without events (an index build, a new collection) leaves
    /// no key, and judging by the oldest key refused every token from before it.
    async fn check_history(&self, token: ResumeToken) -> Result<()> {
        let last = self.last_commit();
        let oldest = last.saturating_sub(self.inner.options.change_history_commits) + 1;
        // The stream needs every commit after the token's (or the token's own, when it
        // stopped inside one).
        let needed = if token.index == u32::MAX { token.commit + 1 } else { token.commit };
        if needed < oldest && token.commit < last {
            return Err(Error::ChangeHistoryLost { oldest_commit: oldest });
        }
        assert!(oldest <= last + 1);
        Ok(())
    }
}

impl<E: Env> ChangeStream<E> {
    /// The token of the last event delivered (or the starting point).
    pub fn resume_token(&self) -> ResumeToken {
        self.position
    }

    /// The next change, waiting for a commit if there is none yet.
    pub async fn next(&mut self) -> Result<ChangeEvent> {
        loop {
            if let Some(event) = self.try_next().await? {
                return Ok(event);
            }
            let committed = self.db.inner.committed.subscribe();
            if let Some(event) = self.try_next().await? {
                return Ok(event);
            }
            let _ = committed.await;
        }
    }

    /// The next change if one is committed, without waiting.
    pub async fn try_next(&mut self) -> Result<Option<ChangeEvent>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                assert!(event.token > self.position, "change events go forward");
                self.position = event.token;
                return Ok(Some(event));
            }
            // A refill may read only events of other collections (it reads a bounded number);
            // the stream has ended only when a refill reads nothing at all.
            if !self.refill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads the next events of the history after the position; whether it read any.
    async fn refill(&mut self) -> Result<bool> {
        let start = match self.position.index.checked_add(1) {
            Some(index) => layout::change_key(self.position.commit, index),
            None => layout::change_key(self.position.commit + 1, 0),
        };
        let end = layout::change_key(u64::MAX, u32::MAX);
        let mut entries = self.db.inner.lsm.range(start..end).await?;
        // A consumer that reads the history one event at a time (a slow or memory-starved
        // reader) must still see every event once.
        let refill_max = if self.db.inner.env.buggify("docdb.changes.refill_one") {
            1
        } else {
            REFILL_EVENTS_MAX
        };
        let mut scanned = 0;
        while scanned < refill_max
            && let Some(entry) = entries.next().await
        {
            let (key, value) = entry?;
            let (commit, index) = layout::parse_change_key(&key)?;
            let token = ResumeToken { commit, index };
            assert!(token > self.position, "a refill starts after the stream's position");
            scanned += 1;
            let record = layout::decode_record(&value, "change event")?;
            if self.scope.admits(&record) {
                self.buffered.push_back(ChangeEvent::from_record(token, record)?);
            } else if self.buffered.is_empty() {
                // Skipped events still move the position, so a resumed stream skips them too.
                self.position = token;
            }
        }
        Ok(scanned > 0)
    }
}
