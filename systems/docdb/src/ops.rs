//! The operations on one collection inside a transaction: insert, find, update, replace,
//! delete, count, indexes. `Collection` (auto-commit) and `Transaction::collection` both run
//! these.
//!
//! Every write keeps the indexes in the same transaction: a document's old index entries are
//! deleted and its new ones put in the batch that writes it, so a crash can never leave an
//! index disagreeing with its documents.
//!
//! Invariant: a stored document has an `_id`, and its key is `layout::document_key` of that
//! `_id`'s keycode; an index entry's value is the keycode of the `_id` it points to.

use std::collections::BTreeSet;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use sim::Env;

use crate::catalog::{self, CollectionInfo, IndexInfo};
use crate::error::{Error, Result};
use crate::layout;
use crate::plan::{self, Access, ExecutionStats, Plan};
use crate::query::filter::Filter;
use crate::query::projection::Projection;
use crate::query::sort::Sort;
use crate::query::update::{Update, UpdateContext};
use crate::txn::Transaction;
use crate::validate;

/// Options of a find.
#[derive(Clone, Debug, Default)]
pub struct FindOptions {
    /// Sort keys (`{a: 1, b: -1}`).
    pub sort: Option<Document>,
    /// Documents to skip.
    pub skip: u64,
    /// Most documents to return (0: no limit).
    pub limit: u64,
    /// Projection.
    pub projection: Option<Document>,
    /// Documents per cursor batch (0: 101 first, as MongoDB).
    pub batch_size: u32,
}

/// Options of an update.
#[derive(Clone, Debug, Default)]
pub struct UpdateOptions {
    /// Insert a document built from the filter and the update when nothing matches.
    pub upsert: bool,
    /// Filters for `$[ident]` positional updates.
    pub array_filters: Vec<Document>,
}

/// What an update or replace did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateResult {
    /// Documents the filter matched.
    pub matched_count: u64,
    /// Documents actually changed.
    pub modified_count: u64,
    /// The `_id` of the inserted document, for an upsert that inserted.
    pub upserted_id: Option<Bson>,
}

/// An index to create.
#[derive(Clone, Debug, Default)]
pub struct IndexSpec {
    /// Key pattern (`{a: 1, "b.c": -1}`).
    pub keys: Document,
    /// Name; MongoDB's default (`a_1_b.c_-1`) when `None`.
    pub name: Option<String>,
    /// Refuse duplicate keys.
    pub unique: bool,
    /// Leave out documents that lack every key field.
    pub sparse: bool,
}

/// The result of a query before paging: documents in order, and what the plan did.
pub struct QueryOutput {
    /// Matching documents, sorted, skipped, limited and projected.
    pub documents: Vec<Document>,
    /// The plan used.
    pub plan: Plan,
    /// What it examined.
    pub stats: ExecutionStats,
}

/// One collection as a transaction sees it.
pub struct TxnCollection<'t, E: Env> {
    pub(crate) txn: &'t mut Transaction<E>,
    pub(crate) database: String,
    pub(crate) name: String,
}

impl<E: Env> Transaction<E> {
    /// A collection handle inside this transaction.
    pub fn collection(&mut self, database: &str, name: &str) -> TxnCollection<'_, E> {
        TxnCollection { txn: self, database: database.to_string(), name: name.to_string() }
    }
}

impl<E: Env> TxnCollection<'_, E> {
    fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }

    fn info(&self) -> Option<Arc<CollectionInfo>> {
        self.txn.collection_info(&self.database, &self.name)
    }

    /// The collection's entry, created (implicitly, as MongoDB does on first write) if missing.
    fn info_for_write(&mut self) -> Arc<CollectionInfo> {
        self.txn.touch(&self.database, &self.name);
        match self.info() {
            Some(info) => info,
            None => self.txn.create_collection_entry(&self.database, &self.name, None),
        }
    }

    /// Creates the collection explicitly; `NamespaceExists` if it is there.
    pub fn create(&mut self, validator: Option<Document>) -> Result<()> {
        if self.info().is_some() {
            return Err(Error::NamespaceExists(self.namespace()));
        }
        if let Some(validator) = &validator {
            validate::check_schema(validator)?;
        }
        self.txn.create_collection_entry(&self.database, &self.name, validator);
        Ok(())
    }

    /// Drops the collection with its documents and indexes; whether it existed.
    pub async fn drop_collection(&mut self) -> Result<bool> {
        let Some(info) = self.info() else { return Ok(false) };
        self.txn.touch(&self.database, &self.name);
        for prefix in [layout::document_prefix(info.id), layout::collection_index_prefix(info.id)] {
            self.delete_prefix(prefix).await?;
        }
        self.txn.remove_catalog(&info);
        self.txn.record_event(doc! {"op": "drop", "db": &self.database, "coll": &self.name});
        Ok(true)
    }

    /// Stages the deletion of every key under `prefix` that this transaction sees.
    async fn delete_prefix(&mut self, prefix: Vec<u8>) -> Result<()> {
        let end = crate::keycode::prefix_successor(&prefix);
        let mut scan = self.txn.scan(prefix, end).await?;
        let mut keys = Vec::new();
        while let Some((key, _)) = scan.next().await? {
            keys.push(key);
        }
        for key in keys {
            self.txn.delete(key);
        }
        Ok(())
    }

    /// Inserts one document; returns its `_id` (generated when missing).
    pub async fn insert_one(&mut self, document: Document) -> Result<Bson> {
        let document = self.with_id(document);
        let record = storable_record(&document)?;
        let info = self.info_for_write();
        if let Some(validator) = &info.validator {
            validate::validate(validator, &document, &info.namespace())?;
        }
        let id = document.get("_id").cloned().expect("with_id put an _id");
        let id_code = layout::id_code(&id)?;
        let key = layout::document_key(info.id, &id_code);
        if self.txn.get(&key).await?.is_some() {
            return Err(duplicate(&info, "_id_", &doc! {"_id": id}));
        }
        self.put_index_entries(&info, &id_code, &document).await?;
        self.txn.put(key, record);
        self.txn.record_event(doc! {
            "op": "insert", "db": &self.database, "coll": &self.name,
            "documentKey": {"_id": id.clone()}, "fullDocument": document,
        });
        Ok(id)
    }

    /// The document as MongoDB stores it: `_id` first, generated when missing.
    fn with_id(&self, document: Document) -> Document {
        if document.contains_key("_id") {
            return crate::query::update::with_id_first(document);
        }
        let mut with_id = doc! {"_id": self.txn.database().new_object_id()};
        with_id.extend(document);
        with_id
    }

    /// Runs a query: plan, fetch, filter, sort, skip, limit, project.
    pub async fn query(&mut self, filter: &Document, options: &FindOptions) -> Result<QueryOutput> {
        let compiled = Filter::parse(filter)?;
        let sort = options.sort.as_ref().map(Sort::parse).transpose()?;
        let projection = options
            .projection
            .as_ref()
            .map(|spec| Projection::parse(spec, Some(&compiled)))
            .transpose()?;
        let Some(info) = self.info() else {
            let plan = Plan { access: Access::Collection, sorted: true };
            return Ok(QueryOutput {
                documents: Vec::new(),
                plan,
                stats: ExecutionStats::default(),
            });
        };
        let sort_keys = sort.as_ref().map(sort_keys);
        let plan = self.plan(&info, &compiled, sort_keys.as_deref());
        let mut stats = ExecutionStats::default();
        let stop_after = match (plan.sorted, options.limit) {
            (true, limit) if limit > 0 => Some(options.skip + limit),
            _ => None,
        };
        let matched = self.fetch(&info, &plan, &compiled, stop_after, &mut stats).await?;
        let mut documents: Vec<Document> =
            matched.into_iter().map(|(_, document)| document).collect();
        if let Some(sort) = &sort
            && !plan.sorted
        {
            documents.sort_by(|a, b| sort.compare(a, b));
        }
        let skip = usize::try_from(options.skip).unwrap_or(usize::MAX);
        let limit = if options.limit == 0 {
            usize::MAX
        } else {
            usize::try_from(options.limit).unwrap_or(usize::MAX)
        };
        let mut out = Vec::with_capacity(documents.len().min(limit));
        for document in documents.into_iter().skip(skip).take(limit) {
            out.push(match &projection {
                Some(projection) => {
                    let details = compiled.match_details(&document).unwrap_or_default();
                    projection.apply(&document, &details)?
                }
                None => document,
            });
        }
        let documents = out;
        stats.returned = documents.len() as u64;
        Ok(QueryOutput { documents, plan, stats })
    }

    /// The plan for `filter` and `sort` on this collection, in this transaction's snapshot.
    fn plan(
        &self,
        info: &CollectionInfo,
        filter: &Filter,
        sort: Option<&[(String, bool)]>,
    ) -> Plan {
        let env = &self.txn.database().inner.env;
        if env.buggify("docdb.plan.collection_scan") {
            // A planner that ignores every index (stale statistics, a hint gone wrong): the
            // answer must not change, only its cost.
            let sorted = sort.is_none_or(<[_]>::is_empty);
            return Plan { access: Access::Collection, sorted };
        }
        let txn = &*self.txn;
        let plan = plan::choose(info, &filter.predicates(), sort, |index| {
            txn.index_usable(info.id, index.id)
        });
        // An interval may be empty (contradictory bounds such as `$gt: 5, $lt: 3`); the scan
        // then reads nothing. Their number is bounded.
        if let Access::Index { intervals, .. } = &plan.access {
            assert!(intervals.len() <= plan::INTERVAL_COUNT_MAX, "too many index intervals");
        }
        plan
    }

    /// Documents matching `filter`, each with its encoded `_id`, in the plan's order.
    async fn fetch(
        &mut self,
        info: &CollectionInfo,
        plan: &Plan,
        filter: &Filter,
        stop_after: Option<u64>,
        stats: &mut ExecutionStats,
    ) -> Result<Vec<(Vec<u8>, Document)>> {
        let mut out = Vec::new();
        let full = |out: &Vec<(Vec<u8>, Document)>| {
            stop_after.is_some_and(|stop| out.len() as u64 >= stop)
        };
        match &plan.access {
            Access::Ids(ids) => {
                for id_code in ids {
                    if let Some(document) = self.load(info, id_code).await? {
                        stats.documents_examined += 1;
                        if filter.matches(&document) {
                            out.push((id_code.clone(), document));
                        }
                    }
                }
            }
            Access::Collection => {
                self.scan_collection(info, filter, stop_after, stats, &mut out).await?
            }
            Access::Index { intervals, .. } => {
                let mut seen = BTreeSet::new();
                for (start, end) in intervals {
                    let mut scan = self.txn.scan(start.clone(), Some(end.clone())).await?;
                    while !full(&out)
                        && let Some((_, id_code)) = scan.next().await?
                    {
                        stats.keys_examined += 1;
                        if !seen.insert(id_code.clone()) {
                            continue;
                        }
                        let Some(document) = self.load(info, &id_code).await? else {
                            return Err(Error::Corruption(format!(
                                "{}: an index entry points to a missing document",
                                info.namespace()
                            )));
                        };
                        stats.documents_examined += 1;
                        if filter.matches(&document) {
                            out.push((id_code, document));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The collection-scan part of `fetch`: every document in `_id` order. Only the fields the
    /// filter names are decoded before it decides; the whole document only for a match.
    async fn scan_collection(
        &mut self,
        info: &CollectionInfo,
        filter: &Filter,
        stop_after: Option<u64>,
        stats: &mut ExecutionStats,
        out: &mut Vec<(Vec<u8>, Document)>,
    ) -> Result<()> {
        let prefix = layout::document_prefix(info.id);
        let end = crate::keycode::prefix_successor(&prefix);
        let mut scan = self.txn.scan(prefix, end).await?;
        let fields = filter.first_parts();
        while stop_after.is_none_or(|stop| (out.len() as u64) < stop)
            && let Some((key, value)) = scan.next().await?
        {
            stats.documents_examined += 1;
            if !fields.is_empty()
                && !filter.matches(&layout::decode_fields(&value, &fields, "document")?)
            {
                continue;
            }
            let document = layout::decode_record(&value, "document")?;
            debug_assert!(filter.matches(&document), "a partial match is a whole match");
            out.push((layout::id_code_of_document_key(&key).to_vec(), document));
        }
        Ok(())
    }

    async fn load(&self, info: &CollectionInfo, id_code: &[u8]) -> Result<Option<Document>> {
        let key = layout::document_key(info.id, id_code);
        match self.txn.get(&key).await? {
            Some(bytes) => Ok(Some(layout::decode_record(&bytes, "document")?)),
            None => Ok(None),
        }
    }

    /// Documents matching `filter`, in `_id` order (or `sort`'s), at most `limit` (0: all).
    async fn matching(
        &mut self,
        filter: &Filter,
        sort: Option<&Sort>,
        limit: u64,
    ) -> Result<Vec<(Vec<u8>, Document)>> {
        let Some(info) = self.info() else { return Ok(Vec::new()) };
        let sort_keys = sort.map(sort_keys);
        let plan = self.plan(&info, filter, sort_keys.as_deref());
        let stop_after = (plan.sorted && limit > 0).then_some(limit);
        let mut stats = ExecutionStats::default();
        let mut matched = self.fetch(&info, &plan, filter, stop_after, &mut stats).await?;
        if let Some(sort) = sort
            && !plan.sorted
        {
            matched.sort_by(|a, b| sort.compare(&a.1, &b.1));
        }
        if limit > 0 {
            matched.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok(matched)
    }

    /// Counts documents matching `filter`.
    pub async fn count(&mut self, filter: &Document) -> Result<u64> {
        let filter = Filter::parse(filter)?;
        Ok(self.matching(&filter, None, 0).await?.len() as u64)
    }

    /// Updates the first (`multi == false`) or every document matching `filter`.
    pub async fn update(
        &mut self,
        filter: &Document,
        update: &Document,
        options: &UpdateOptions,
        multi: bool,
    ) -> Result<UpdateResult> {
        let compiled = Filter::parse(filter)?;
        let update_spec = Update::parse(update, &options.array_filters)?;
        let matched = self.matching(&compiled, None, u64::from(!multi)).await?;
        let mut result =
            UpdateResult { matched_count: matched.len() as u64, ..UpdateResult::default() };
        let now = self.txn.database().now_date();
        for (id_code, old) in matched {
            let mut new = old.clone();
            let position = compiled.match_details(&old).and_then(|details| details.position);
            let context = UpdateContext { now, is_insert: false, position };
            let changes = update_spec.apply(&mut new, &context)?;
            if new == old {
                continue;
            }
            let description = update_description(&new, &changes.updated, &changes.removed);
            self.write_changed(&id_code, &old, new, "update", Some(description)).await?;
            result.modified_count += 1;
        }
        if result.matched_count == 0 && options.upsert {
            let context = UpdateContext { now, is_insert: true, position: None };
            let (seed, _) = update_spec.upsert(&compiled, &context)?;
            result.upserted_id = Some(self.insert_one(seed).await?);
        }
        Ok(result)
    }

    /// Replaces the first document matching `filter` (keeping its `_id`).
    pub async fn replace_one(
        &mut self,
        filter: &Document,
        replacement: Document,
        upsert: bool,
    ) -> Result<UpdateResult> {
        let compiled = Filter::parse(filter)?;
        crate::query::update::validate_replacement(&replacement, None)?;
        let matched = self.matching(&compiled, None, 1).await?;
        let mut result =
            UpdateResult { matched_count: matched.len() as u64, ..UpdateResult::default() };
        if let Some((id_code, old)) = matched.into_iter().next() {
            let new = crate::query::update::validate_replacement(&replacement, Some(&old))?;
            if new != old {
                self.write_changed(&id_code, &old, new, "replace", None).await?;
                result.modified_count = 1;
            }
        } else if upsert {
            let seed = crate::query::update::replacement_upsert(&compiled, &replacement)?;
            result.upserted_id = Some(self.insert_one(seed).await?);
        }
        Ok(result)
    }

    /// Finds one document, updates it, and returns it as it was before or after.
    pub async fn find_one_and_update(
        &mut self,
        filter: &Document,
        update: &Document,
        sort: Option<&Document>,
        options: &UpdateOptions,
        return_after: bool,
    ) -> Result<Option<Document>> {
        let compiled = Filter::parse(filter)?;
        let sort = sort.map(Sort::parse).transpose()?;
        let update_spec = Update::parse(update, &options.array_filters)?;
        let matched = self.matching(&compiled, sort.as_ref(), 1).await?;
        let now = self.txn.database().now_date();
        if let Some((id_code, old)) = matched.into_iter().next() {
            let mut new = old.clone();
            let position = compiled.match_details(&old).and_then(|details| details.position);
            let context = UpdateContext { now, is_insert: false, position };
            let changes = update_spec.apply(&mut new, &context)?;
            if new != old {
                let description = update_description(&new, &changes.updated, &changes.removed);
                self.write_changed(&id_code, &old, new.clone(), "update", Some(description))
                    .await?;
            }
            return Ok(Some(if return_after { new } else { old }));
        }
        if !options.upsert {
            return Ok(None);
        }
        let context = UpdateContext { now, is_insert: true, position: None };
        let (seed, _) = update_spec.upsert(&compiled, &context)?;
        let seed = self.with_id(seed);
        self.insert_one(seed.clone()).await?;
        Ok(return_after.then_some(seed))
    }

    /// Deletes the first (`multi == false`) or every document matching `filter`.
    pub async fn delete(&mut self, filter: &Document, multi: bool) -> Result<u64> {
        let compiled = Filter::parse(filter)?;
        let matched = self.matching(&compiled, None, u64::from(!multi)).await?;
        let Some(info) = self.info() else { return Ok(0) };
        self.txn.touch(&self.database, &self.name);
        for (id_code, old) in &matched {
            for key in self.index_entry_keys(&info, id_code, old)? {
                self.txn.delete(key);
            }
            self.txn.delete(layout::document_key(info.id, id_code));
            let id = old.get("_id").cloned().unwrap_or(Bson::Null);
            self.txn.record_event(doc! {
                "op": "delete", "db": &self.database, "coll": &self.name,
                "documentKey": {"_id": id},
            });
        }
        Ok(matched.len() as u64)
    }

    /// Writes a changed version of a stored document, with its index entries and event.
    async fn write_changed(
        &mut self,
        id_code: &[u8],
        old: &Document,
        new: Document,
        operation: &str,
        description: Option<Document>,
    ) -> Result<()> {
        let record = storable_record(&new)?;
        let info = self.info_for_write();
        let id = old.get("_id").cloned().expect("stored documents have an _id");
        if !new.get("_id").is_some_and(|new_id| crate::value::equal(new_id, &id)) {
            return Err(Error::InvalidDocument("an update cannot change the _id field".into()));
        }
        if let Some(validator) = &info.validator {
            validate::validate(validator, &new, &info.namespace())?;
        }
        let old_keys = self.index_entry_keys(&info, id_code, old)?;
        for key in old_keys {
            self.txn.delete(key);
        }
        self.put_index_entries(&info, id_code, &new).await?;
        self.txn.put(layout::document_key(info.id, id_code), record);
        let mut event = doc! {
            "op": operation, "db": &self.database, "coll": &self.name, "documentKey": {"_id": id},
        };
        match description {
            Some(description) => event.insert("updateDescription", description),
            None => event.insert("fullDocument", new),
        };
        self.txn.record_event(event);
        Ok(())
    }

    /// The LSM keys of every index entry of `document`.
    fn index_entry_keys(
        &self,
        info: &CollectionInfo,
        id_code: &[u8],
        document: &Document,
    ) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for index in &info.indexes {
            let (index_keys, _) = catalog::index_keys(index, document)?;
            let prefix = layout::index_prefix(info.id, index.id);
            for index_key in index_keys {
                let mut key = [prefix.as_slice(), &index_key].concat();
                if !index.unique {
                    key.extend_from_slice(id_code);
                }
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Puts `document`'s index entries, refusing a duplicate in a unique index, and marks
    /// indexes multikey when it makes them so.
    async fn put_index_entries(
        &mut self,
        info: &CollectionInfo,
        id_code: &[u8],
        document: &Document,
    ) -> Result<()> {
        let mut newly_multikey = Vec::new();
        for index in &info.indexes {
            let (index_keys, is_multikey) = catalog::index_keys(index, document)?;
            if is_multikey && !index.multikey {
                newly_multikey.push(index.id);
            }
            let prefix = layout::index_prefix(info.id, index.id);
            for index_key in index_keys {
                let mut key = [prefix.as_slice(), &index_key].concat();
                if index.unique {
                    if let Some(holder) = self.txn.get(&key).await?
                        && holder != id_code
                    {
                        return Err(duplicate(info, &index.name, &index_values(index, document)));
                    }
                } else {
                    key.extend_from_slice(id_code);
                }
                self.txn.put(key, id_code.to_vec());
            }
        }
        if !newly_multikey.is_empty() {
            // The planner must stop using these indexes for sorts: a catalog change, so
            // concurrent writers of the collection conflict with this one (rare: once per index).
            let mut changed = info.clone();
            for index in &mut changed.indexes {
                index.multikey |= newly_multikey.contains(&index.id);
            }
            changed.epoch += 1;
            self.txn.put_catalog(changed);
        }
        Ok(())
    }

    /// Creates an index and fills it from the collection's documents; returns its name.
    pub async fn create_index(&mut self, spec: &IndexSpec) -> Result<String> {
        let keys = catalog::parse_key_pattern(&spec.keys)?;
        let name = spec.name.clone().unwrap_or_else(|| catalog::default_index_name(&keys));
        let mut info = CollectionInfo::clone(&self.info_for_write());
        if let Some(existing) = info.index(&name) {
            if existing.keys == keys
                && existing.unique == spec.unique
                && existing.sparse == spec.sparse
            {
                return Ok(name);
            }
            return Err(Error::BadIndex(format!(
                "an index named '{name}' exists with other options"
            )));
        }
        if name == "_id_" || info.indexes.len() + 1 >= catalog::INDEX_COUNT_MAX {
            return Err(Error::BadIndex(format!("cannot create index '{name}'")));
        }
        let index = IndexInfo {
            id: info.next_index_id,
            name: name.clone(),
            keys,
            unique: spec.unique,
            sparse: spec.sparse,
            multikey: false,
        };
        info.next_index_id += 1;
        info.epoch += 1;
        info.indexes.push(index);
        let documents = self.matching(&Filter::parse(&Document::new())?, None, 0).await?;
        if self.txn.database().inner.env.buggify("docdb.index_build.slow") {
            // A long index build: writers of the collection commit meanwhile, and the build
            // must then fail its commit (it read every document) rather than miss theirs.
            self.txn.database().inner.env.sleep(std::time::Duration::from_millis(20)).await;
        }
        self.txn.writes.whole_collections.insert(info.id);
        self.txn.put_catalog(info.clone());
        for (id_code, document) in documents {
            let current = self.info_for_write();
            self.put_index_entries(&current, &id_code, &document).await?;
        }
        Ok(name)
    }

    /// Drops the index called `name` with its entries.
    pub async fn drop_index(&mut self, name: &str) -> Result<()> {
        let Some(mut info) = self.info().map(|info| CollectionInfo::clone(&info)) else {
            return Err(Error::NamespaceNotFound(self.namespace()));
        };
        let Some(position) = info.indexes.iter().position(|index| index.name == name) else {
            return Err(Error::IndexNotFound {
                namespace: self.namespace(),
                index: name.to_string(),
            });
        };
        let index = info.indexes.remove(position);
        info.epoch += 1;
        self.delete_prefix(layout::index_prefix(info.id, index.id)).await?;
        self.txn.put_catalog(info);
        Ok(())
    }

    /// The collection's indexes, `_id_` first, as MongoDB's `listIndexes` describes them.
    pub fn list_indexes(&self) -> Result<Vec<Document>> {
        let Some(info) = self.info() else {
            return Err(Error::NamespaceNotFound(self.namespace()));
        };
        let mut out = vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}];
        for index in &info.indexes {
            let keys: Document = index
                .keys
                .iter()
                .map(|(path, up)| (path.clone(), Bson::Int32(if *up { 1 } else { -1 })))
                .collect();
            let mut description = doc! {"v": 2, "key": keys, "name": &index.name};
            if index.unique {
                description.insert("unique", true);
            }
            if index.sparse {
                description.insert("sparse", true);
            }
            out.push(description);
        }
        Ok(out)
    }
}

fn duplicate(info: &CollectionInfo, index: &str, key: &Document) -> Error {
    Error::DuplicateKey {
        namespace: info.namespace(),
        index: index.to_string(),
        key: key.to_string(),
    }
}

/// The values a document has on an index's key paths (for error messages).
fn index_values(index: &IndexInfo, document: &Document) -> Document {
    index
        .keys
        .iter()
        .map(|(path, _)| (path.clone(), lookup(document, path).cloned().unwrap_or(Bson::Null)))
        .collect()
}

/// The value at a dotted path through documents (and array positions), if any.
pub fn lookup<'d>(document: &'d Document, path: &str) -> Option<&'d Bson> {
    let mut parts = path.split('.');
    let mut current = document.get(parts.next()?)?;
    for part in parts {
        current = match current {
            Bson::Document(inner) => inner.get(part)?,
            Bson::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// A change stream's `updateDescription`: the new values of updated paths, removed paths.
fn update_description(new: &Document, updated: &[String], removed: &[String]) -> Document {
    let updated_fields: Document = updated
        .iter()
        .map(|path| (path.clone(), lookup(new, path).cloned().unwrap_or(Bson::Null)))
        .collect();
    let removed_fields: Vec<Bson> = removed.iter().map(|path| Bson::String(path.clone())).collect();
    doc! {"updatedFields": updated_fields, "removedFields": removed_fields}
}

/// A sort's keys as the planner takes them: path and ascending.
fn sort_keys(sort: &Sort) -> Vec<(String, bool)> {
    sort.keys().map(|(path, descending)| (path.to_string(), !descending)).collect()
}

/// The stored record of a document MongoDB would store: no top-level `$` field names, at most
/// 16 MiB (measured on the record itself, so the document is encoded once).
fn storable_record(document: &Document) -> Result<Vec<u8>> {
    if let Some(key) = document.keys().find(|key| key.starts_with('$')) {
        return Err(Error::InvalidDocument(format!("field name '{key}' starts with '$'")));
    }
    let record = layout::encode_record(document)?;
    if record.len() > layout::DOCUMENT_BYTES_MAX + 1 {
        return Err(Error::InvalidDocument(format!(
            "document of {} bytes is over 16 MiB",
            record.len() - 1
        )));
    }
    Ok(record)
}
