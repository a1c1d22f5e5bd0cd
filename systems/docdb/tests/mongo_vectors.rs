//! MongoDB semantics vectors: every case in `MONGO_VECTORS_DIR` (default `shared/vectors/mongo`
//! beside the workspace) run against the database and against its query layer alone, with a
//! line of totals for each.
//!
//! Goal: agree with MongoDB 4.2 on the recorded filters, updates, projections, sorts, replaces,
//! deletes and distincts. Method: each call starts from an empty collection behind the `Engine`
//! trait (a real docdb collection on a simulated node, and a `Vec<Document>` in memory driving
//! the query layer directly), inserts the
//! case's documents, runs the operation and compares with the README's rules: `find` results as
//! a list when sorted and as a multiset otherwise, writes by the whole collection sorted by `_id`
//! with `_id` removed, numbers equal across widths (`value::equal`), field order significant.
//! A call that MongoDB rejects must fail, with the same code when the vector gives one.

// A test reads its vector files from the real file system (the `Env` rule binds system code).
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::{Bson, Document, doc};
use docdb::query::update::{is_replacement, replacement_upsert, validate_replacement};
use docdb::query::{Filter, Projection, QueryError, Sort, Update, UpdateContext, distinct};
use docdb::{DocDb, FindOptions, UpdateOptions, value};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sim::world::{NodeId, SimConfig, SimEnv, World};

/// Extended JSON keys that wrap one BSON value (`{"$oid": ...}`); query operators are not here.
const WRAPPERS: [&str; 17] = [
    "$oid",
    "$symbol",
    "$numberInt",
    "$numberLong",
    "$numberDouble",
    "$numberDecimal",
    "$binary",
    "$uuid",
    "$code",
    "$scope",
    "$timestamp",
    "$regularExpression",
    "$dbPointer",
    "$date",
    "$minKey",
    "$maxKey",
    "$undefined",
];

/// A BSON value read from the vectors' JSON: integer literals are int32 when they fit, field
/// order is kept, and only the wrapper objects above become special types.
struct Json(Bson);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json(Bson::Boolean(value)))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(Json(i32::try_from(value).map_or(Bson::Int64(value), Bson::Int32)))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        match i64::try_from(value) {
            Ok(value) => Ok(Json(i32::try_from(value).map_or(Bson::Int64(value), Bson::Int32))),
            Err(_) => Ok(Json(Bson::Double(value as f64))),
        }
    }
    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        Ok(Json(Bson::Double(value)))
    }
    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json(Bson::String(value.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json(Bson::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(Json(item)) = sequence.next_element()? {
            items.push(item);
        }
        Ok(Json(Bson::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut document = Document::new();
        let mut wrapper = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if WRAPPERS.contains(&key.as_str()) || !wrapper.is_empty() {
                let value: serde_json::Value = map.next_value()?;
                wrapper.insert(key, value);
            } else {
                let Json(value) = map.next_value()?;
                document.insert(key, value);
            }
        }
        if wrapper.is_empty() {
            return Ok(Json(Bson::Document(document)));
        }
        let value = Bson::try_from(serde_json::Value::Object(wrapper))
            .map_err(|error| serde::de::Error::custom(error.to_string()))?;
        Ok(Json(value))
    }
}

/// Why a call failed: a query-layer error, or a check of the engine itself.
#[derive(Debug)]
struct Failure {
    code: Option<i32>,
    message: String,
}

impl From<QueryError> for Failure {
    fn from(error: QueryError) -> Failure {
        Failure { code: Some(error.code()), message: error.to_string() }
    }
}

/// What a find asks for.
struct FindRequest<'a> {
    filter: &'a Document,
    sort: Option<&'a Document>,
    projection: Option<&'a Document>,
    skip: usize,
    limit: Option<usize>,
}

/// The collection operations the vectors use; the real collection will implement it too.
trait Engine {
    fn insert(&mut self, documents: Vec<Document>) -> Result<(), Failure>;
    fn find(&self, request: &FindRequest<'_>) -> Result<Vec<Document>, Failure>;
    fn update_many(
        &mut self,
        filter: &Document,
        update: &Document,
        array_filters: &[Document],
        upsert: bool,
    ) -> Result<(), Failure>;
    fn replace_one(
        &mut self,
        filter: &Document,
        replacement: &Document,
        upsert: bool,
    ) -> Result<(), Failure>;
    fn delete(&mut self, filter: &Document, many: bool) -> Result<u64, Failure>;
    fn distinct(&self, key: &str, filter: &Document) -> Result<Vec<Bson>, Failure>;
    /// Every document, in insertion order.
    fn all(&self) -> Vec<Document>;
}

/// A collection as a vector in insertion order.
#[derive(Default)]
struct MemoryEngine {
    documents: Vec<Document>,
    generated_id_count: u32,
}

impl MemoryEngine {
    fn now() -> bson::DateTime {
        bson::DateTime::from_millis(1_700_000_000_000)
    }

    fn generated_id(&mut self) -> Bson {
        self.generated_id_count += 1;
        let mut bytes = [0_u8; 12];
        bytes[8..].copy_from_slice(&self.generated_id_count.to_be_bytes());
        Bson::ObjectId(bson::oid::ObjectId::from_bytes(bytes))
    }

    fn insert_with_id(&mut self, mut document: Document) {
        if !document.contains_key("_id") {
            let id = self.generated_id();
            document.insert("_id", id);
        }
        self.documents.push(docdb::query::update::with_id_first(document));
    }
}

impl Engine for MemoryEngine {
    fn insert(&mut self, documents: Vec<Document>) -> Result<(), Failure> {
        for document in documents {
            self.insert_with_id(document);
        }
        Ok(())
    }

    fn find(&self, request: &FindRequest<'_>) -> Result<Vec<Document>, Failure> {
        let filter = Filter::parse(request.filter)?;
        let sort = request.sort.map(Sort::parse).transpose()?;
        let projection = request.projection.map(|spec| Projection::parse(spec, Some(&filter)));
        let projection = projection.transpose()?;
        let mut matched: Vec<_> = self
            .documents
            .iter()
            .filter_map(|document| {
                filter.match_details(document).map(|details| (document, details))
            })
            .collect();
        if let Some(sort) = &sort {
            matched.sort_by(|a, b| sort.compare(a.0, b.0));
        }
        let limit = request.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for (document, details) in matched.into_iter().skip(request.skip).take(limit) {
            out.push(match &projection {
                Some(projection) => projection.apply(document, &details)?,
                None => document.clone(),
            });
        }
        Ok(out)
    }

    fn update_many(
        &mut self,
        filter: &Document,
        update: &Document,
        array_filters: &[Document],
        upsert: bool,
    ) -> Result<(), Failure> {
        let filter = Filter::parse(filter)?;
        if is_replacement(update) {
            let message = "update_many needs update operators".to_owned();
            return Err(Failure { code: Some(9), message });
        }
        let update = Update::parse(update, array_filters)?;
        let mut matched_count = 0;
        for document in &mut self.documents {
            let Some(details) = filter.match_details(document) else { continue };
            matched_count += 1;
            let context =
                UpdateContext { now: Self::now(), is_insert: false, position: details.position };
            update.apply(document, &context)?;
        }
        if upsert && matched_count == 0 {
            let context = UpdateContext { now: Self::now(), is_insert: true, position: None };
            let (document, _) = update.upsert(&filter, &context)?;
            self.insert_with_id(document);
        }
        Ok(())
    }

    fn replace_one(
        &mut self,
        filter: &Document,
        replacement: &Document,
        upsert: bool,
    ) -> Result<(), Failure> {
        let filter = Filter::parse(filter)?;
        if let Some(document) = self.documents.iter_mut().find(|document| filter.matches(document))
        {
            *document = validate_replacement(replacement, Some(document))?;
        } else if upsert {
            let document = replacement_upsert(&filter, replacement)?;
            self.insert_with_id(document);
        }
        Ok(())
    }

    fn delete(&mut self, filter: &Document, many: bool) -> Result<u64, Failure> {
        let filter = Filter::parse(filter)?;
        let before = self.documents.len();
        let mut deleted_count = 0;
        self.documents.retain(|document| {
            let delete = (many || deleted_count == 0) && filter.matches(document);
            deleted_count += u64::from(delete);
            !delete
        });
        assert_eq!(before - self.documents.len(), usize::try_from(deleted_count).expect("fits"));
        Ok(deleted_count)
    }

    fn distinct(&self, key: &str, filter: &Document) -> Result<Vec<Bson>, Failure> {
        let filter = Filter::parse(filter)?;
        Ok(distinct(self.documents.iter().filter(|document| filter.matches(document)), key))
    }

    fn all(&self) -> Vec<Document> {
        self.documents.clone()
    }
}

/// A docdb collection on a one-node simulated world; each call is one `block_on`.
struct DocDbEngine {
    world: World,
    node: NodeId,
    db: DocDb<SimEnv>,
    collection: String,
}

impl DocDbEngine {
    fn new(world: World, node: NodeId, db: DocDb<SimEnv>, call_number: usize) -> DocDbEngine {
        DocDbEngine { world, node, db, collection: format!("c{call_number}") }
    }

    fn block_on<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        match self.world.block_on(self.node, Duration::from_secs(60), future) {
            Ok(output) => output,
            Err(error) => panic!("simulation failed: {error}"),
        }
    }

    fn handle(&self) -> docdb::Collection<SimEnv> {
        self.db.collection("vectors", &self.collection)
    }
}

fn failure(error: docdb::Error) -> Failure {
    Failure { code: Some(error.code()), message: error.to_string() }
}

impl Engine for DocDbEngine {
    fn insert(&mut self, documents: Vec<Document>) -> Result<(), Failure> {
        let collection = self.handle();
        self.block_on(async move {
            for document in documents {
                collection.insert_one(document).await.map_err(failure)?;
            }
            Ok(())
        })
    }

    fn find(&self, request: &FindRequest<'_>) -> Result<Vec<Document>, Failure> {
        let options = FindOptions {
            sort: request.sort.cloned(),
            projection: request.projection.cloned(),
            skip: request.skip as u64,
            limit: request.limit.map_or(0, |limit| limit as u64),
            ..FindOptions::default()
        };
        let (collection, filter) = (self.handle(), request.filter.clone());
        self.block_on(async move {
            let cursor = collection.find(filter, options).await.map_err(failure)?;
            Ok(cursor.collect_all())
        })
    }

    fn update_many(
        &mut self,
        filter: &Document,
        update: &Document,
        array_filters: &[Document],
        upsert: bool,
    ) -> Result<(), Failure> {
        if is_replacement(update) {
            let message = "update_many needs update operators".to_owned();
            return Err(Failure { code: Some(9), message });
        }
        let options = UpdateOptions { upsert, array_filters: array_filters.to_vec() };
        let (collection, filter, update) = (self.handle(), filter.clone(), update.clone());
        self.block_on(async move {
            collection.update_many(filter, update, options).await.map(drop).map_err(failure)
        })
    }

    fn replace_one(
        &mut self,
        filter: &Document,
        replacement: &Document,
        upsert: bool,
    ) -> Result<(), Failure> {
        let (collection, filter, replacement) =
            (self.handle(), filter.clone(), replacement.clone());
        self.block_on(async move {
            collection.replace_one(filter, replacement, upsert).await.map(drop).map_err(failure)
        })
    }

    fn delete(&mut self, filter: &Document, many: bool) -> Result<u64, Failure> {
        let (collection, filter) = (self.handle(), filter.clone());
        self.block_on(async move {
            let deleted = match many {
                true => collection.delete_many(filter).await,
                false => collection.delete_one(filter).await,
            };
            deleted.map_err(failure)
        })
    }

    fn distinct(&self, key: &str, filter: &Document) -> Result<Vec<Bson>, Failure> {
        let request = FindRequest { filter, sort: None, projection: None, skip: 0, limit: None };
        let documents = self.find(&request)?;
        Ok(distinct(documents.iter(), key))
    }

    fn all(&self) -> Vec<Document> {
        let request = FindRequest {
            filter: &Document::new(),
            sort: None,
            projection: None,
            skip: 0,
            limit: None,
        };
        self.find(&request).expect("reading the whole collection")
    }
}

fn vectors_dir() -> PathBuf {
    match std::env::var_os("MONGO_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/mongo"),
    }
}

fn field<'a>(call: &'a Document, key: &str) -> Option<&'a Bson> {
    call.get(key).filter(|value| !matches!(value, Bson::Null))
}

fn document_field(call: &Document, key: &str) -> Document {
    match field(call, key) {
        Some(Bson::Document(document)) => document.clone(),
        _ => Document::new(),
    }
}

fn documents(value: Option<&Bson>) -> Vec<Document> {
    let Some(Bson::Array(items)) = value else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Bson::Document(document) => document.clone(),
            other => panic!("expected a document, found {other}"),
        })
        .collect()
}

/// A sort given as `[[field, direction], ...]`, as a specification document.
fn sort_spec(value: Option<&Bson>) -> Option<Document> {
    let Some(Bson::Array(pairs)) = value else { return None };
    let mut spec = Document::new();
    for pair in pairs {
        let Bson::Array(pair) = pair else { panic!("a sort pair is an array") };
        let [Bson::String(name), direction] = pair.as_slice() else { panic!("bad sort pair") };
        spec.insert(name.clone(), direction.clone());
    }
    Some(spec)
}

fn without_id(documents: Vec<Document>) -> Vec<Bson> {
    documents
        .into_iter()
        .map(|mut document| {
            document.remove("_id");
            Bson::Document(document)
        })
        .collect()
}

/// What one call produced, to compare with the vector.
enum Outcome {
    List(Vec<Bson>),
    Multiset(Vec<Bson>),
}

fn run_call(engine: &mut dyn Engine, call: &Document) -> Result<Outcome, Failure> {
    let op = call.get_str("op").expect("op");
    let filter = document_field(call, "filter");
    let upsert = matches!(call.get("upsert"), Some(Bson::Boolean(true)));
    match op {
        "find" => {
            let sort = sort_spec(field(call, "sort"));
            let projection = match field(call, "projection") {
                Some(Bson::Document(projection)) => Some(projection.clone()),
                _ => None,
            };
            let request = FindRequest {
                filter: &filter,
                sort: sort.as_ref(),
                projection: projection.as_ref(),
                skip: 0,
                limit: None,
            };
            let found: Vec<Bson> = engine.find(&request)?.into_iter().map(Bson::Document).collect();
            Ok(if sort.is_some() { Outcome::List(found) } else { Outcome::Multiset(found) })
        }
        "update_many" | "replace_one" => {
            if op == "update_many" {
                let update = document_field(call, "update");
                let array_filters = documents(field(call, "array_filters"));
                engine.update_many(&filter, &update, &array_filters, upsert)?;
            } else {
                engine.replace_one(&filter, &document_field(call, "replacement"), upsert)?;
            }
            let mut all = engine.all();
            all.sort_by(|a, b| {
                value::compare(
                    a.get("_id").unwrap_or(&Bson::Null),
                    b.get("_id").unwrap_or(&Bson::Null),
                )
            });
            Ok(Outcome::List(without_id(all)))
        }
        "delete_many" | "delete_one" => {
            let deleted_count = engine.delete(&filter, op == "delete_many")?;
            let expected = call.get("deleted_count").and_then(|count| count.as_i32());
            if let Some(expected) = expected
                && i64::from(expected) != i64::try_from(deleted_count).expect("fits")
            {
                let message = format!("deleted {deleted_count}, expected {expected}");
                return Err(Failure { code: None, message });
            }
            Ok(Outcome::List(without_id(engine.all())))
        }
        "distinct" => {
            let key = call.get_str("key").expect("key");
            Ok(Outcome::List(engine.distinct(key, &filter)?))
        }
        other => Err(Failure { code: None, message: format!("unsupported op {other}") }),
    }
}

fn same_list(actual: &[Bson], expected: &[Bson]) -> bool {
    actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, b)| value::equal(a, b))
}

fn same_multiset(actual: &[Bson], expected: &[Bson]) -> bool {
    let mut unused: Vec<&Bson> = expected.iter().collect();
    for value in actual {
        let Some(index) = unused.iter().position(|candidate| value::equal(value, candidate)) else {
            return false;
        };
        unused.swap_remove(index);
    }
    unused.is_empty()
}

/// Runs one call from a fresh collection; `Err` says how it disagrees with the vector.
fn check_call(engine: &mut dyn Engine, call: &Document) -> Result<(), String> {
    engine.insert(documents(call.get("docs"))).map_err(|failure| failure.message)?;
    let outcome = run_call(engine, call);
    if let Some(Bson::Document(error)) = field(call, "error") {
        let expected_code = error.get("code").and_then(|code| code.as_i32());
        return match outcome {
            Ok(_) => Err(format!("succeeded, but MongoDB refuses: {error}")),
            Err(failure) => match (expected_code, failure.code) {
                (Some(expected), Some(actual)) if expected != actual => Err(format!(
                    "failed with code {actual} ({}), MongoDB's code is {expected}",
                    failure.message
                )),
                _ => Ok(()),
            },
        };
    }
    let expected = match call.get("result") {
        Some(Bson::Array(items)) => items.clone(),
        other => return Err(format!("no result in the vector: {other:?}")),
    };
    match outcome {
        Err(failure) => Err(format!("failed: {} (code {:?})", failure.message, failure.code)),
        Ok(Outcome::List(actual)) if same_list(&actual, &expected) => Ok(()),
        Ok(Outcome::Multiset(actual)) if same_multiset(&actual, &expected) => Ok(()),
        Ok(Outcome::List(actual) | Outcome::Multiset(actual)) => {
            Err(format!("got {}, expected {}", Bson::Array(actual), Bson::Array(expected)))
        }
    }
}

/// Features a case may need that docdb does not support yet, with the reason shown.
fn unsupported(_case: &Document) -> Option<String> {
    None
}

/// Every vector case, in file order, with its name.
fn vector_cases() -> Vec<(String, Document)> {
    let dir = vectors_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable vector file");
        let Json(Bson::Document(suite)) = serde_json::from_str(&text).expect("valid JSON") else {
            panic!("{} is not an object", file.display());
        };
        let name = file.file_name().expect("a file name").to_string_lossy().into_owned();
        for case in documents(suite.get("cases")) {
            cases.push((format!("{name}/{}", case.get_str("name").expect("name")), case));
        }
    }
    assert!(!cases.is_empty(), "no cases found in {}", dir.display());
    cases
}

/// Runs every case on engines from `make` (one per call); prints and returns the totals line.
fn run_vectors(label: &str, make: &mut dyn FnMut() -> Box<dyn Engine>) -> (usize, Vec<String>) {
    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), Vec::new());
    for (case_name, case) in vector_cases() {
        if let Some(reason) = unsupported(&case) {
            skipped.push(format!("{case_name}: {reason}"));
            continue;
        }
        let calls = documents(case.get("calls"));
        let problems: Vec<String> = calls
            .iter()
            .enumerate()
            .filter_map(|(index, call)| {
                let mut engine = make();
                check_call(engine.as_mut(), call).err().map(|why| format!("call {index}: {why}"))
            })
            .collect();
        if problems.is_empty() {
            passed += 1;
        } else {
            failed.push(format!("{case_name}: {}", problems.join("; ")));
        }
    }
    for line in failed.iter().chain(&skipped) {
        println!("{label}: {line}");
    }
    println!("{label}: {passed} passed, {} failed, {} skipped", failed.len(), skipped.len());
    (passed, failed)
}

#[test]
fn mongo_vectors() {
    let world = World::new(SimConfig::new(0x7ec7));
    let node = world.add_node("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let env = world.env(node);
    let options = docdb::Options { lsm: lsm::Options::tiny(), ..docdb::Options::default() };
    let opened = world.block_on(node, Duration::from_secs(60), DocDb::open(env, "db", options));
    let db = opened.expect("world").expect("open");
    let mut call_number = 0;
    let mut make = || -> Box<dyn Engine> {
        call_number += 1;
        Box::new(DocDbEngine::new(world.clone(), node, db.clone(), call_number))
    };
    let (_, failed) = run_vectors("mongo vectors", &mut make);
    assert!(failed.is_empty(), "{} vector cases failed on the database", failed.len());
}

#[test]
fn mongo_vectors_on_the_query_layer() {
    let mut make = || -> Box<dyn Engine> { Box::new(MemoryEngine::default()) };
    let (_, failed) = run_vectors("mongo vectors (query layer)", &mut make);
    assert!(failed.is_empty(), "{} vector cases failed on the query layer", failed.len());
}

#[test]
fn json_reader_keeps_order_and_widths() {
    let Json(value) = serde_json::from_str(
        r#"{"b": 1, "a": {"$numberLong": "2"}, "c": [1.0, {"$regex": "^a", "$options": "i"}]}"#,
    )
    .expect("valid");
    let expected = doc! {"b": 1, "a": 2_i64, "c": [1.0, {"$regex": "^a", "$options": "i"}]};
    assert_eq!(value, Bson::Document(expected));
}
