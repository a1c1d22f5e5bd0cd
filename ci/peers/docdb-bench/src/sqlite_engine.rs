//! SQLite (bundled by rusqlite 0.43) as a document store: one table `docs(id INTEGER PRIMARY
//! KEY, doc BLOB)` holding each document as JSONB, with expression indexes on
//! `json_extract(doc, '$.name')` and `json_extract(doc, '$.score')`.
//!
//! Queries return each document as JSON text (`json(doc)`) parsed into a `serde_json::Value`,
//! so, as with the two document databases, the caller gets a document it can use.
//! Write-ahead logging in both tiers; `synchronous=NORMAL` (WAL synced only at checkpoints) for
//! `Tier::Buffered`, `FULL` (WAL synced at every commit) for `Tier::Synced`. Page cache 32 MiB.

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::engine::{Engine, Tier};
use crate::person::{self, RANGE_WIDTH, SCAN_AGE_MIN, SCAN_CITY};

const INSERT: &str = "INSERT INTO docs (id, doc) VALUES (?1, jsonb(?2))";
const BY_ID: &str = "SELECT json(doc) FROM docs WHERE id = ?1";
const BY_NAME: &str = "SELECT json(doc) FROM docs WHERE json_extract(doc, '$.name') = ?1";
const BY_SCORE: &str = "SELECT json(doc) FROM docs \
     WHERE json_extract(doc, '$.score') >= ?1 AND json_extract(doc, '$.score') < ?2";
const SCAN: &str = "SELECT json(doc) FROM docs \
     WHERE json_extract(doc, '$.city') = ?1 AND json_extract(doc, '$.age') >= ?2";
const UPDATE: &str = "UPDATE docs SET doc = jsonb_set(doc, '$.address.street', ?2) WHERE id = ?1";

/// An open SQLite database.
pub struct SqliteEngine {
    connection: Connection,
}

/// Parses a returned document (and checks it is one).
fn parse(text: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(text).expect("json document");
    assert!(value.is_object(), "not a document: {text}");
    value
}

impl SqliteEngine {
    /// Opens `dir/bench.sqlite`; the time of the open, the pragmas and the first statement
    /// (SQLite reads the schema lazily, at the first statement).
    pub fn open(dir: &Path, tier: Tier) -> (Box<dyn Engine>, Duration) {
        let start = Instant::now();
        let connection = Connection::open(dir.join("bench.sqlite")).expect("open sqlite");
        let synchronous = match tier {
            Tier::Buffered => "NORMAL",
            Tier::Synced => "FULL",
        };
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                 PRAGMA cache_size = -32768; \
                 CREATE TABLE IF NOT EXISTS docs (id INTEGER PRIMARY KEY, doc BLOB NOT NULL);"
            ))
            .expect("pragmas");
        let elapsed = start.elapsed();
        let mode: String =
            connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)).expect("mode");
        let level: i64 =
            connection.query_row("PRAGMA synchronous", [], |row| row.get(0)).expect("sync");
        assert_eq!(mode, "wal");
        assert_eq!(level, if tier == Tier::Buffered { 1 } else { 2 }, "synchronous level");
        (Box::new(SqliteEngine { connection }), elapsed)
    }

    /// Runs the query `sql` once per parameter pair; documents returned.
    fn query_all(&mut self, sql: &str, arguments: &[(rusqlite::types::Value, i64)]) -> u64 {
        let mut statement = self.connection.prepare_cached(sql).expect("prepare");
        let mut returned = 0;
        for (first, second) in arguments {
            let mut rows = if sql.contains("?2") {
                statement.query(params![first, second]).expect("query")
            } else {
                statement.query(params![first]).expect("query")
            };
            while let Some(row) = rows.next().expect("row") {
                let text: String = row.get(0).expect("text");
                std::hint::black_box(parse(&text));
                returned += 1;
            }
        }
        returned
    }

    /// Times `query_all`.
    fn timed_query(
        &mut self,
        sql: &str,
        arguments: Vec<(rusqlite::types::Value, i64)>,
    ) -> (Duration, u64) {
        let start = Instant::now();
        let returned = self.query_all(sql, &arguments);
        (start.elapsed(), returned)
    }
}

impl Engine for SqliteEngine {
    fn create_indexes(&mut self) {
        self.connection
            .execute_batch(
                "CREATE INDEX docs_name ON docs (json_extract(doc, '$.name')); \
                 CREATE INDEX docs_score ON docs (json_extract(doc, '$.score'));",
            )
            .expect("create indexes");
    }

    fn insert_single(&mut self, ids: Range<i64>, count: i64) -> Duration {
        let documents: Vec<(i64, String)> =
            ids.map(|id| (id, person::person(id, count).json())).collect();
        let mut statement = self.connection.prepare_cached(INSERT).expect("prepare");
        let start = Instant::now();
        for (id, json) in &documents {
            statement.execute(params![id, json]).expect("insert");
        }
        start.elapsed()
    }

    fn insert_batched(&mut self, ids: Range<i64>, count: i64, batch: usize) -> Duration {
        let documents: Vec<(i64, String)> =
            ids.map(|id| (id, person::person(id, count).json())).collect();
        let start = Instant::now();
        for chunk in documents.chunks(batch) {
            let transaction = self.connection.transaction().expect("begin");
            {
                let mut statement = transaction.prepare_cached(INSERT).expect("prepare");
                for (id, json) in chunk {
                    statement.execute(params![id, json]).expect("insert");
                }
            }
            transaction.commit().expect("commit");
        }
        start.elapsed()
    }

    fn count(&mut self) -> u64 {
        let count: i64 = self
            .connection
            .query_row("SELECT count(*) FROM docs", [], |row| row.get(0))
            .expect("count");
        count as u64
    }

    fn find_by_id(&mut self, ids: &[i64]) -> (Duration, u64) {
        let arguments = ids.iter().map(|id| ((*id).into(), 0)).collect();
        self.timed_query(BY_ID, arguments)
    }

    fn find_by_name(&mut self, ids: &[i64]) -> (Duration, u64) {
        let arguments = ids.iter().map(|id| (person::name(*id).into(), 0)).collect();
        self.timed_query(BY_NAME, arguments)
    }

    fn find_score_range(&mut self, starts: &[i64]) -> (Duration, u64) {
        let arguments = starts.iter().map(|start| ((*start).into(), start + RANGE_WIDTH)).collect();
        self.timed_query(BY_SCORE, arguments)
    }

    fn scan(&mut self) -> (Duration, u64) {
        self.timed_query(SCAN, vec![(SCAN_CITY.to_string().into(), SCAN_AGE_MIN)])
    }

    fn update_by_id(&mut self, ids: &[i64], round: u64) -> (Duration, u64) {
        let streets: Vec<String> =
            (0..ids.len()).map(|position| person::updated_street(round, position)).collect();
        let mut statement = self.connection.prepare_cached(UPDATE).expect("prepare");
        let start = Instant::now();
        let mut matched = 0;
        for (id, street) in ids.iter().zip(&streets) {
            matched += statement.execute(params![id, street]).expect("update") as u64;
        }
        (start.elapsed(), matched)
    }

    fn transactions(&mut self, ids: &[i64], round: u64) -> (Duration, u64) {
        assert!(ids.len().is_multiple_of(10), "transactions of 10");
        let streets: Vec<String> =
            (0..ids.len()).map(|position| person::updated_street(round, position)).collect();
        let start = Instant::now();
        let mut matched = 0;
        for (group, streets) in ids.chunks(10).zip(streets.chunks(10)) {
            let transaction = self.connection.transaction().expect("begin");
            {
                let mut statement = transaction.prepare_cached(UPDATE).expect("prepare");
                for (id, street) in group.iter().zip(streets) {
                    matched += statement.execute(params![id, street]).expect("update") as u64;
                }
            }
            transaction.commit().expect("commit");
        }
        (start.elapsed(), matched)
    }

    /// Nothing runs in the background: checkpoints happen inside commits.
    fn settle(&mut self) {}

    fn close(self: Box<Self>) {
        self.connection.close().map_err(|(_, error)| error).expect("close");
    }
}
