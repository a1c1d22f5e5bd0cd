//! The official MongoDB Rust driver against `docdb::wire` on real sockets.
//!
//! Goal: a real client works unchanged: CRUD, indexes, a cursor across several batches,
//! transactions committed and aborted, MongoDB's error codes, SCRAM-SHA-256 authentication,
//! and a server that survives malformed and oversized messages. Method: each test starts the
//! server in-process on `TokioEnv` (a temporary directory, 127.0.0.1:0) and drives it with
//! the `mongodb` crate, or with raw bytes over a `TokioEnv` stream.

use std::net::SocketAddr;

use bson::{Bson, Document, doc};
use docdb::wire::frame::{self, HEADER_BYTES, Header};
use docdb::wire::scram::{SALT_BYTES, Users};
use docdb::wire::{WireOptions, WireServer, serve};
use docdb::{DocDb, Options};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Client, IndexModel};
use sim::Env;
use sim::tokio_env::TokioEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a server; returns its address and the directory that must outlive it.
async fn start(users: Option<&str>) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let env = TokioEnv::new(dir.path());
    let users = users.map(|text| Users::parse(text, || [3; SALT_BYTES]).expect("user file"));
    let db = DocDb::open(env.clone(), "", Options::default()).await.expect("open");
    let listener = env.listen_tcp("127.0.0.1:0".parse().expect("address")).await.expect("listen");
    let address = sim::TcpListener::local_addr(&listener).expect("local address");
    let options = WireOptions { users, ..WireOptions::default() };
    drop(env.spawn(serve(WireServer::new(env.clone(), db, options), listener)));
    (address, dir)
}

async fn client(address: SocketAddr, credentials: &str) -> Client {
    let uri = format!(
        "mongodb://{credentials}{address}/?directConnection=true&serverSelectionTimeoutMS=5000"
    );
    Client::with_uri_str(uri).await.expect("client")
}

/// The server's error code inside a driver error.
fn code(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        _ => None,
    }
}

fn ids(documents: &[Document]) -> Vec<i32> {
    let mut ids: Vec<i32> = documents.iter().map(|d| d.get_i32("_id").expect("_id")).collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_indexes_cursors_and_errors() {
    let (address, _dir) = start(None).await;
    let client = client(address, "").await;
    let db = client.database("shop");
    let items = db.collection::<Document>("items");
    items.insert_one(doc! {"_id": 1, "name": "a", "tag": "x"}).await.expect("insert_one");
    let more: Vec<Document> = (2..=7).map(|i| doc! {"_id": i, "name": "n", "tag": "y"}).collect();
    assert_eq!(items.insert_many(more).await.expect("insert_many").inserted_ids.len(), 6);
    let one = items.find_one(doc! {"_id": 1}).await.expect("find_one").expect("found");
    assert_eq!(one.get_str("name").ok(), Some("a"));

    let updated = items.update_one(doc! {"_id": 2}, doc! {"$set": {"name": "b"}}).await;
    let updated = updated.expect("update_one");
    assert_eq!((updated.matched_count, updated.modified_count), (1, 1));
    let tagged = items.update_many(doc! {"tag": "y"}, doc! {"$set": {"seen": true}}).await;
    assert_eq!(tagged.expect("update_many").modified_count, 6);

    // Seven documents in batches of two: one find and three getMores.
    let mut cursor = items.find(doc! {}).batch_size(2).await.expect("find");
    let mut seen = Vec::new();
    while cursor.advance().await.expect("advance") {
        seen.push(cursor.deserialize_current().expect("document"));
    }
    assert_eq!(ids(&seen), vec![1, 2, 3, 4, 5, 6, 7]);

    let changed = items
        .find_one_and_update(doc! {"_id": 3}, doc! {"$set": {"name": "c"}})
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .expect("find_one_and_update")
        .expect("found");
    assert_eq!(changed.get_str("name").ok(), Some("c"));
    let removed = items.find_one_and_delete(doc! {"_id": 6}).await.expect("find_one_and_delete");
    assert_eq!(removed.and_then(|d| d.get_i32("_id").ok()), Some(6));
    assert_eq!(items.delete_one(doc! {"_id": 7}).await.expect("delete_one").deleted_count, 1);
    assert_eq!(items.estimated_document_count().await.expect("count"), 5);

    let index = IndexModel::builder().keys(doc! {"tag": 1}).build();
    assert_eq!(items.create_index(index).await.expect("create_index").index_name, "tag_1");
    let names = items.list_index_names().await.expect("list_index_names");
    assert_eq!(names, vec!["_id_".to_string(), "tag_1".to_string()]);
    items.drop_index("tag_1").await.expect("drop_index");

    let duplicate = items.insert_one(doc! {"_id": 1}).await.expect_err("duplicate _id");
    assert_eq!(code(&duplicate), Some(11000), "{duplicate}");
    let unknown = db.run_command(doc! {"frobnicate": 1}).await.expect_err("unknown command");
    assert_eq!(code(&unknown), Some(59), "{unknown}");

    assert!(db.list_collection_names().await.expect("collections").contains(&"items".into()));
    assert!(client.list_database_names().await.expect("databases").contains(&"shop".into()));
    items.drop().await.expect("drop");
    assert!(db.list_collection_names().await.expect("collections").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_abort() {
    let (address, _dir) = start(None).await;
    let client = client(address, "").await;
    let accounts = client.database("bank").collection::<Document>("accounts");
    accounts.insert_one(doc! {"_id": "alice", "balance": 100}).await.expect("seed");

    let mut session = client.start_session().await.expect("session");
    session.start_transaction().await.expect("start");
    accounts
        .insert_one(doc! {"_id": "bob", "balance": 10})
        .session(&mut session)
        .await
        .expect("in");
    let set = doc! {"$set": {"balance": 90}};
    accounts.update_one(doc! {"_id": "alice"}, set).session(&mut session).await.expect("update");
    let outside = accounts.find_one(doc! {"_id": "bob"}).await.expect("outside read");
    assert!(outside.is_none(), "an open transaction's writes are invisible outside it");
    session.commit_transaction().await.expect("commit");
    let alice = accounts.find_one(doc! {"_id": "alice"}).await.expect("read").expect("alice");
    assert_eq!(alice.get_i32("balance").ok(), Some(90));
    assert!(accounts.find_one(doc! {"_id": "bob"}).await.expect("read").is_some());

    session.start_transaction().await.expect("start again");
    accounts.insert_one(doc! {"_id": "carol"}).session(&mut session).await.expect("insert");
    let inside = accounts.find_one(doc! {"_id": "carol"}).session(&mut session).await;
    assert!(inside.expect("inside read").is_some(), "a transaction reads its own writes");
    session.abort_transaction().await.expect("abort");
    assert!(accounts.find_one(doc! {"_id": "carol"}).await.expect("read").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_lets_the_right_user_in_and_nobody_else() {
    let (address, _dir) = start(Some("alice:s3cret\n")).await;
    let good = client(address, "alice:s3cret@").await;
    let notes = good.database("app").collection::<Document>("notes");
    notes.insert_one(doc! {"_id": 1}).await.expect("authenticated insert");
    assert_eq!(notes.estimated_document_count().await.expect("count"), 1);

    let wrong = client(address, "alice:guess@").await;
    let error = wrong.list_database_names().await.expect_err("wrong password");
    assert!(matches!(error.kind.as_ref(), ErrorKind::Authentication { .. }), "{error}");

    let anonymous = client(address, "").await;
    let error = anonymous.list_database_names().await.expect_err("no credentials");
    assert_eq!(code(&error), Some(13), "{error}");
}

/// Reads one reply message and decodes its document.
async fn read_reply(stream: &mut <TokioEnv as Env>::TcpStream) -> Option<Document> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await.ok()?;
    let header = Header::decode(&header).expect("reply header");
    let mut body = vec![0u8; header.message_length - HEADER_BYTES];
    stream.read_exact(&mut body).await.expect("reply body");
    Some(frame::decode_reply_body(&body).expect("reply document"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_get_errors_and_the_server_goes_on() {
    let (address, dir) = start(None).await;
    let env = TokioEnv::new(dir.path());
    let mut stream = env.connect_tcp(address).await.expect("connect");
    // A well-framed message whose BSON is garbage: an error reply, and the connection lives.
    let mut bad = frame::encode_msg(7, &doc! {"ping": 1, "$db": "admin"}, false);
    let last = bad.len() - 1;
    bad[HEADER_BYTES + 5] = 0xFF;
    bad[last] = 0x42;
    stream.write_all(&bad).await.expect("write");
    let reply = read_reply(&mut stream).await.expect("an error reply");
    assert_eq!(reply.get_i32("code").ok(), Some(9), "{reply}");
    let ping = frame::encode_msg(8, &doc! {"ping": 1, "$db": "admin"}, true);
    stream.write_all(&ping).await.expect("write");
    assert_eq!(read_reply(&mut stream).await.expect("pong").get_f64("ok").ok(), Some(1.0));

    // A header claiming 64 MB: an error reply, then the server closes the connection.
    let mut huge = frame::encode_msg(9, &doc! {"ping": 1, "$db": "admin"}, false);
    huge[..4].copy_from_slice(&64_000_000i32.to_le_bytes());
    stream.write_all(&huge).await.expect("write");
    let reply = read_reply(&mut stream).await.expect("an error reply");
    assert_eq!(reply.get_i32("code").ok(), Some(10334), "{reply}");
    assert!(read_reply(&mut stream).await.is_none(), "closed after an unframeable message");

    // Other clients are served throughout.
    let client = client(address, "").await;
    let reply = client.database("admin").run_command(doc! {"ping": 1}).await.expect("ping");
    assert_eq!(reply.get("ok"), Some(&Bson::Double(1.0)));
}
