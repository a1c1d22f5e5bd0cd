//! The data commands, each run inside one `Transaction` that the caller commits (auto-commit)
//! or keeps open (a session's transaction): `create`, `drop`, `dropDatabase`, `insert`,
//! `find`, `update`, `delete`, `count`, `createIndexes`, `listIndexes`, `dropIndexes`,
//! `findAndModify`. Write errors of single statements go in `writeErrors` with their index.

use bson::{Bson, Document, doc};
use sim::Env;

use crate::error::Error;
use crate::ops::{FindOptions, IndexSpec, TxnCollection, UpdateOptions};
use crate::query::projection::Projection;
use crate::txn::Transaction;
use crate::wire::WireServer;
use crate::wire::reply::{self, CommandError, CommandResult, code};

const DATA_COMMANDS: [&str; 12] = [
    "create",
    "drop",
    "dropDatabase",
    "insert",
    "find",
    "update",
    "delete",
    "count",
    "createIndexes",
    "listIndexes",
    "dropIndexes",
    "findAndModify",
];

/// Whether `name` is a data command that runs in a transaction.
pub fn is_data_command(name: &str) -> bool {
    DATA_COMMANDS.contains(&name)
}

/// Runs data command `name` in `txn`.
pub async fn execute<E: Env>(
    server: &WireServer<E>,
    txn: &mut Transaction<E>,
    database: &str,
    name: &str,
    command: &Document,
) -> CommandResult {
    if name == "dropDatabase" {
        return drop_database(server, txn, database).await;
    }
    let collection = reply::string(command, name)?;
    if collection.is_empty() || collection.contains('\0') || collection.starts_with('$') {
        let message = format!("invalid collection name '{collection}'");
        return Err(CommandError::new(73, message)); // InvalidNamespace
    }
    let mut handle = txn.collection(database, collection);
    let handle = &mut handle;
    match name {
        "create" => {
            handle.create(reply::document_opt(command, "validator")?)?;
            Ok(doc! {"ok": 1.0})
        }
        "drop" => drop(handle, database, collection).await,
        "insert" => insert(handle, command).await,
        "find" => find(server, handle, &format!("{database}.{collection}"), command).await,
        "update" => update(handle, command).await,
        "delete" => delete(handle, command).await,
        "count" => count(handle, command).await,
        "createIndexes" => create_indexes(handle, command).await,
        "listIndexes" => {
            let indexes = handle.list_indexes()?;
            let namespace = format!("{database}.{collection}");
            Ok(doc! {"cursor": {"firstBatch": indexes, "id": 0_i64, "ns": namespace}, "ok": 1.0})
        }
        "dropIndexes" => drop_indexes(handle, command).await,
        "findAndModify" => find_and_modify(handle, command).await,
        _ => unreachable!("is_data_command lists only the commands handled here"),
    }
}

async fn drop_database<E: Env>(
    server: &WireServer<E>,
    txn: &mut Transaction<E>,
    database: &str,
) -> CommandResult {
    for info in server.database().list_collections(database) {
        txn.collection(database, &info.name).drop_collection().await?;
    }
    Ok(doc! {"dropped": database, "ok": 1.0})
}

async fn drop<E: Env>(
    handle: &mut TxnCollection<'_, E>,
    database: &str,
    collection: &str,
) -> CommandResult {
    if !handle.drop_collection().await? {
        return Err(Error::NamespaceNotFound(format!("{database}.{collection}")).into());
    }
    Ok(doc! {"ns": format!("{database}.{collection}"), "nIndexesWas": 1, "ok": 1.0})
}

/// A count as MongoDB sends it: Int32 when it fits.
fn number(count: i64) -> Bson {
    i32::try_from(count).map_or(Bson::Int64(count), Bson::Int32)
}

/// Adds `writeErrors` to a write reply when there are any.
fn write_reply(mut reply: Document, write_errors: Vec<Document>) -> Document {
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    reply.insert("ok", 1.0);
    reply
}

/// Errors that fail the whole command rather than one statement.
fn is_command_failure(error: &Error) -> bool {
    matches!(error, Error::Storage(_) | Error::WriteConflict { .. } | Error::Corruption(_))
}

async fn insert<E: Env>(handle: &mut TxnCollection<'_, E>, command: &Document) -> CommandResult {
    let ordered = reply::boolean(command, "ordered", true);
    let mut inserted = 0i64;
    let mut write_errors = Vec::new();
    for (index, document) in reply::documents(command, "documents")?.into_iter().enumerate() {
        match handle.insert_one(document).await {
            Ok(_) => inserted += 1,
            Err(error) if is_command_failure(&error) => return Err(error.into()),
            Err(error) => {
                write_errors.push(reply::write_error(index, &error));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(doc! {"n": number(inserted)}, write_errors))
}

async fn find<E: Env>(
    server: &WireServer<E>,
    handle: &mut TxnCollection<'_, E>,
    namespace: &str,
    command: &Document,
) -> CommandResult {
    let filter = reply::document(command, "filter")?;
    let limit = reply::integer(command, "limit", 0)?;
    let options = FindOptions {
        sort: reply::document_opt(command, "sort")?,
        skip: reply::count(command, "skip")?,
        limit: limit.unsigned_abs(),
        projection: reply::document_opt(command, "projection")?,
        batch_size: 0,
    };
    let documents = handle.query(&filter, &options).await?.documents;
    let batch_size = usize::try_from(reply::count(command, "batchSize")?).unwrap_or(usize::MAX);
    let single_batch = reply::boolean(command, "singleBatch", false) || limit < 0;
    let (batch, id) =
        crate::db::lock(&server.inner.cursors).open(namespace, documents, batch_size, single_batch);
    Ok(doc! {"cursor": {"firstBatch": batch, "id": id, "ns": namespace}, "ok": 1.0})
}

/// Whether an update document is operators (`{$set: ...}`) rather than a replacement.
fn is_operator_update(update: &Document) -> bool {
    update.keys().next().is_some_and(|key| key.starts_with('$'))
}

fn update_document(statement: &Document, key: &str) -> Result<Document, CommandError> {
    match statement.get(key) {
        Some(Bson::Document(update)) => Ok(update.clone()),
        Some(Bson::Array(_)) => {
            Err(CommandError::new(code::BAD_VALUE, "pipeline updates are not supported"))
        }
        _ => Err(CommandError::new(code::FAILED_TO_PARSE, format!("'{key}' must be an object"))),
    }
}

async fn update<E: Env>(handle: &mut TxnCollection<'_, E>, command: &Document) -> CommandResult {
    let ordered = reply::boolean(command, "ordered", true);
    let (mut matched, mut modified) = (0i64, 0i64);
    let mut upserted = Vec::new();
    let mut write_errors = Vec::new();
    for (index, statement) in reply::documents(command, "updates")?.into_iter().enumerate() {
        let filter = reply::document(&statement, "q")?;
        let update = update_document(&statement, "u")?;
        let multi = reply::boolean(&statement, "multi", false);
        let options = UpdateOptions {
            upsert: reply::boolean(&statement, "upsert", false),
            array_filters: reply::documents(&statement, "arrayFilters")?,
        };
        let result = if is_operator_update(&update) {
            handle.update(&filter, &update, &options, multi).await
        } else if multi {
            let message = "multi: true needs an update with operators";
            Err(Error::InvalidArgument(message.to_string()))
        } else {
            handle.replace_one(&filter, update, options.upsert).await
        };
        match result {
            Ok(result) => {
                matched += result.matched_count as i64;
                modified += result.modified_count as i64;
                if let Some(id) = result.upserted_id {
                    matched += 1;
                    upserted.push(doc! {"index": index as i64, "_id": id});
                }
            }
            Err(error) if is_command_failure(&error) => return Err(error.into()),
            Err(error) => {
                write_errors.push(reply::write_error(index, &error));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! {"n": number(matched), "nModified": number(modified)};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    Ok(write_reply(reply, write_errors))
}

async fn delete<E: Env>(handle: &mut TxnCollection<'_, E>, command: &Document) -> CommandResult {
    let ordered = reply::boolean(command, "ordered", true);
    let mut deleted = 0i64;
    let mut write_errors = Vec::new();
    for (index, statement) in reply::documents(command, "deletes")?.into_iter().enumerate() {
        let filter = reply::document(&statement, "q")?;
        let multi = match reply::integer(&statement, "limit", 0)? {
            0 => true,
            1 => false,
            other => {
                let message = format!("delete limit must be 0 or 1, got {other}");
                return Err(CommandError::new(code::FAILED_TO_PARSE, message));
            }
        };
        match handle.delete(&filter, multi).await {
            Ok(count) => deleted += count as i64,
            Err(error) if is_command_failure(&error) => return Err(error.into()),
            Err(error) => {
                write_errors.push(reply::write_error(index, &error));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(doc! {"n": number(deleted)}, write_errors))
}

async fn count<E: Env>(handle: &mut TxnCollection<'_, E>, command: &Document) -> CommandResult {
    let filter = reply::document(command, "query")?;
    let skip = reply::count(command, "skip")?;
    let limit = reply::integer(command, "limit", 0)?.unsigned_abs();
    let mut count = handle.count(&filter).await?.saturating_sub(skip);
    if limit > 0 {
        count = count.min(limit);
    }
    Ok(doc! {"n": number(count as i64), "ok": 1.0})
}

async fn create_indexes<E: Env>(
    handle: &mut TxnCollection<'_, E>,
    command: &Document,
) -> CommandResult {
    let specs = reply::documents(command, "indexes")?;
    let before = handle.list_indexes().map(|indexes| indexes.len()).ok();
    for spec in specs {
        let spec = IndexSpec {
            keys: reply::document(&spec, "key")?,
            name: spec.get_str("name").ok().map(str::to_string),
            unique: reply::boolean(&spec, "unique", false),
            sparse: reply::boolean(&spec, "sparse", false),
        };
        handle.create_index(&spec).await?;
    }
    let after = handle.list_indexes()?.len();
    Ok(doc! {
        "createdCollectionAutomatically": before.is_none(),
        "numIndexesBefore": before.unwrap_or(1) as i32,
        "numIndexesAfter": after as i32,
        "ok": 1.0,
    })
}

async fn drop_indexes<E: Env>(
    handle: &mut TxnCollection<'_, E>,
    command: &Document,
) -> CommandResult {
    let indexes = handle.list_indexes()?;
    let names: Vec<String> = match command.get("index") {
        Some(Bson::String(name)) if name == "*" => indexes
            .iter()
            .filter_map(|index| index.get_str("name").ok())
            .filter(|name| *name != "_id_")
            .map(str::to_string)
            .collect(),
        Some(Bson::String(name)) => vec![name.clone()],
        Some(Bson::Array(items)) => {
            items.iter().filter_map(|item| item.as_str()).map(str::to_string).collect()
        }
        Some(Bson::Document(keys)) => {
            let found = indexes.iter().find(|index| index.get_document("key").ok() == Some(keys));
            let name = found.and_then(|index| index.get_str("name").ok());
            let name =
                name.ok_or_else(|| CommandError::new(27, "no index with that key pattern"))?;
            vec![name.to_string()]
        }
        _ => return Err(CommandError::new(code::FAILED_TO_PARSE, "'index' is required")),
    };
    for name in names {
        if name == "_id_" {
            return Err(CommandError::new(72, "cannot drop the _id index")); // InvalidOptions
        }
        handle.drop_index(&name).await?;
    }
    Ok(doc! {"nIndexesWas": indexes.len() as i32, "ok": 1.0})
}

/// The first document matching `filter` in `sort` order, whole.
async fn first_match<E: Env>(
    handle: &mut TxnCollection<'_, E>,
    filter: &Document,
    sort: Option<Document>,
) -> Result<Option<Document>, CommandError> {
    let options = FindOptions { sort, limit: 1, ..FindOptions::default() };
    Ok(handle.query(filter, &options).await?.documents.into_iter().next())
}

async fn find_and_modify<E: Env>(
    handle: &mut TxnCollection<'_, E>,
    command: &Document,
) -> CommandResult {
    let filter = reply::document(command, "query")?;
    let sort = reply::document_opt(command, "sort")?;
    let fields = reply::document_opt(command, "fields")?;
    let return_new = reply::boolean(command, "new", false);
    let upsert = reply::boolean(command, "upsert", false);
    let old = first_match(handle, &filter, sort).await?;
    if reply::boolean(command, "remove", false) {
        let Some(old) = old else { return modify_reply(None, &fields, doc! {"n": 0}, None) };
        let id = old.get("_id").cloned().unwrap_or(Bson::Null);
        handle.delete(&doc! {"_id": id}, false).await?;
        return modify_reply(Some(old), &fields, doc! {"n": 1}, None);
    }
    let update = update_document(command, "update")?;
    let options =
        UpdateOptions { upsert, array_filters: reply::documents(command, "arrayFilters")? };
    let target = match &old {
        Some(old) => doc! {"_id": old.get("_id").cloned().unwrap_or(Bson::Null)},
        None if upsert => filter,
        None => return modify_reply(None, &fields, doc! {"n": 0, "updatedExisting": false}, None),
    };
    let result = if is_operator_update(&update) {
        handle.update(&target, &update, &options, false).await?
    } else {
        handle.replace_one(&target, update, upsert).await?
    };
    let id = match (&old, &result.upserted_id) {
        (Some(old), _) => old.get("_id").cloned().unwrap_or(Bson::Null),
        (None, Some(id)) => id.clone(),
        (None, None) => return Err(CommandError::new(1, "upsert inserted nothing")),
    };
    let new = first_match(handle, &doc! {"_id": id.clone()}, None).await?;
    let value = if return_new { new } else { old.clone() };
    let last_error = doc! {"n": 1, "updatedExisting": old.is_some()};
    modify_reply(value, &fields, last_error, result.upserted_id)
}

fn modify_reply(
    value: Option<Document>,
    fields: &Option<Document>,
    mut last_error: Document,
    upserted: Option<Bson>,
) -> CommandResult {
    let value = match (value, fields) {
        (Some(value), Some(fields)) => {
            let projection = Projection::parse(fields, None).map_err(Error::from)?;
            let details = crate::query::MatchDetails::default();
            Some(projection.apply(&value, &details).map_err(Error::from)?)
        }
        (value, _) => value,
    };
    if let Some(id) = upserted {
        last_error.insert("upserted", id);
    }
    let value = value.map_or(Bson::Null, Bson::Document);
    Ok(doc! {"lastErrorObject": last_error, "value": value, "ok": 1.0})
}
