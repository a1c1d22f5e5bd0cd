//! `DocDb::verify_indexes`: checks that every secondary index equals a rebuild from the
//! documents, as an operator's consistency check and as the simulation's recovery check.
//!
//! Method: in one snapshot, read every document of a collection and compute the index entries
//! it must have (`catalog::index_keys`, the same function writes use), then read the index's key
//! range and compare both ways: a missing entry makes a query through the index skip a matching
//! document, an extra or misdirected one makes it fetch the wrong one. Also checks that each
//! document is stored under the key of its own `_id`.
//!
//! Cost: one full read of every collection and index, and memory for one index's entries at a
//! time. Indexes whose build committed after the snapshot are skipped (not yet complete in it).

use std::collections::BTreeMap;

use sim::Env;

use crate::catalog::{self, CollectionInfo, IndexInfo};
use crate::db::{DocDb, lock};
use crate::error::Result;
use crate::layout;
use crate::txn::Transaction;

/// Problems listed in a report before the rest are only counted.
pub const PROBLEMS_LISTED_MAX: usize = 64;

/// What `verify_indexes` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Collections checked.
    pub collection_count: u64,
    /// Secondary indexes checked.
    pub index_count: u64,
    /// Documents read.
    pub document_count: u64,
    /// Index entries read.
    pub entry_count: u64,
    /// Problems found, total (only the first `PROBLEMS_LISTED_MAX` are in `problems`).
    pub problem_count: u64,
    /// The first problems found.
    pub problems: Vec<IndexProblem>,
}

impl IndexReport {
    /// Whether every index equals a rebuild from its collection's documents.
    pub fn is_consistent(&self) -> bool {
        self.problem_count == 0
    }

    fn add(&mut self, problem: IndexProblem) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(problem);
        }
        assert!(self.problems.len() as u64 <= self.problem_count);
    }
}

/// One disagreement between an index and its documents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexProblem {
    /// A document lacks an entry it must have in `index`.
    Missing {
        /// `database.collection`.
        namespace: String,
        /// The index's name.
        index: String,
        /// The LSM key of the missing entry.
        key: Vec<u8>,
    },
    /// `index` holds an entry no document gives it (stale, or pointing to a wrong `_id`).
    Extra {
        /// `database.collection`.
        namespace: String,
        /// The index's name.
        index: String,
        /// The LSM key of the extra entry.
        key: Vec<u8>,
    },
    /// A document is stored under a key that is not its own `_id`'s, or cannot be decoded.
    BadDocument {
        /// `database.collection`.
        namespace: String,
        /// The document's LSM key.
        key: Vec<u8>,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for IndexProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |key: &[u8]| key.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
        match self {
            IndexProblem::Missing { namespace, index, key } => {
                write!(formatter, "{namespace} index {index}: entry {} is missing", hex(key))
            }
            IndexProblem::Extra { namespace, index, key } => {
                write!(
                    formatter,
                    "{namespace} index {index}: entry {} matches no document",
                    hex(key)
                )
            }
            IndexProblem::BadDocument { namespace, key, reason } => {
                write!(formatter, "{namespace} document {}: {reason}", hex(key))
            }
        }
    }
}

/// One collection's documents: (encoded `_id`, document).
type Documents = Vec<(Vec<u8>, bson::Document)>;

impl<E: Env> DocDb<E> {
    /// Checks every secondary index of every collection against a rebuild from the documents,
    /// in one snapshot. Storage errors (I/O, checksum) are errors; disagreements are problems
    /// in the report.
    pub async fn verify_indexes(&self) -> Result<IndexReport> {
        let txn = self.begin();
        let collections: Vec<CollectionInfo> = {
            let shared = lock(&self.inner.shared);
            shared.collections.values().map(|info| CollectionInfo::clone(info)).collect()
        };
        let mut report = IndexReport::default();
        for info in &collections {
            report.collection_count += 1;
            let documents = read_documents(&txn, info, &mut report).await?;
            for index in info.indexes.iter().filter(|index| txn.index_usable(info.id, index.id)) {
                report.index_count += 1;
                verify_index(&txn, info, index, &documents, &mut report).await?;
            }
        }
        txn.abort();
        assert!(report.problems.len() as u64 <= report.problem_count);
        Ok(report)
    }
}

async fn read_documents<E: Env>(
    txn: &Transaction<E>,
    info: &CollectionInfo,
    report: &mut IndexReport,
) -> Result<Documents> {
    let prefix = layout::document_prefix(info.id);
    let end = crate::keycode::prefix_successor(&prefix);
    let mut scan = txn.scan(prefix, end).await?;
    let mut documents = Vec::new();
    while let Some((key, value)) = scan.next().await? {
        report.document_count += 1;
        let id_code = layout::id_code_of_document_key(&key).to_vec();
        let bad = |reason: String| IndexProblem::BadDocument {
            namespace: info.namespace(),
            key: key.clone(),
            reason,
        };
        let document = match layout::decode_record(&value, "document") {
            Ok(document) => document,
            Err(error) => {
                report.add(bad(error.to_string()));
                continue;
            }
        };
        let own = document.get("_id").map(layout::id_code);
        if !matches!(&own, Some(Ok(code)) if *code == id_code) {
            report.add(bad("stored under a key that is not its _id's".to_string()));
            continue;
        }
        documents.push((id_code, document));
    }
    Ok(documents)
}

async fn verify_index<E: Env>(
    txn: &Transaction<E>,
    info: &CollectionInfo,
    index: &IndexInfo,
    documents: &Documents,
    report: &mut IndexReport,
) -> Result<()> {
    let prefix = layout::index_prefix(info.id, index.id);
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (id_code, document) in documents {
        // A document the index cannot hold could not have been written: its writes fail.
        let Ok((keys, _)) = catalog::index_keys(index, document) else { continue };
        for index_key in keys {
            let mut key = [prefix.as_slice(), &index_key].concat();
            if !index.unique {
                key.extend_from_slice(id_code);
            }
            expected.insert(key, id_code.clone());
        }
    }
    let end = crate::keycode::prefix_successor(&prefix);
    let mut scan = txn.scan(prefix, end).await?;
    let problem = |key: Vec<u8>, missing: bool| {
        let (namespace, index) = (info.namespace(), index.name.clone());
        if missing {
            IndexProblem::Missing { namespace, index, key }
        } else {
            IndexProblem::Extra { namespace, index, key }
        }
    };
    while let Some((key, target)) = scan.next().await? {
        report.entry_count += 1;
        match expected.remove(&key) {
            Some(id_code) if id_code == target => {}
            _ => report.add(problem(key, false)),
        }
    }
    for key in expected.into_keys() {
        report.add(problem(key, true));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_beyond_the_limit_are_counted_not_listed() {
        let mut report = IndexReport::default();
        assert!(report.is_consistent());
        for _ in 0..PROBLEMS_LISTED_MAX + 3 {
            let key = vec![3, 0, 0, 0, 1];
            let index = "group_1".to_string();
            report.add(IndexProblem::Extra { namespace: "a.b".to_string(), index, key });
        }
        assert!(!report.is_consistent());
        assert_eq!(report.problem_count, PROBLEMS_LISTED_MAX as u64 + 3);
        assert_eq!(report.problems.len(), PROBLEMS_LISTED_MAX);
        assert_eq!(
            report.problems[0].to_string(),
            "a.b index group_1: entry 0300000001 matches no document"
        );
    }
}
