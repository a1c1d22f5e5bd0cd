//! Encryption at rest of the document database (the LSM store's, passed down by
//! `docdb::Options::encryption`).
//!
//! Goal: a database opened with a passphrase leaves no document field value, index key or
//! change event readable on disk, a wrong passphrase is a clear error at open, and a rotated
//! passphrase opens it. Method: documents whose field values and index keys carry a marker,
//! updated (so change events record them), flushed and compacted; then every file of the
//! database's directory is read back through the `Env` and searched for the marker, with a
//! plain database as the control that the search finds it.

mod common;

use bson::doc;
use common::{options, run, world};
use docdb::{DocDb, Error, IndexSpec, ResumeToken, Scope, UpdateOptions};
use lsm::{Encryption, KdfParams};
use sim::world::SimEnv;
use sim::{Env, File, OpenOptions};

const MARKER: &str = "PLAINDOCMARK";
/// A resume token before the first commit: a stream from it replays the whole history.
const BEGINNING: ResumeToken = ResumeToken { commit: 0, index: u32::MAX };

fn encrypted(passphrase: &str) -> docdb::Options {
    docdb::Options {
        encryption: Some(Encryption::new(passphrase, KdfParams::TESTING)),
        ..options()
    }
}

/// The files of directory `db` that hold the marker.
async fn marker_on_disk(env: &SimEnv) -> Vec<String> {
    let mut found = Vec::new();
    for name in env.list("db").await.expect("list") {
        let file = env.open(&format!("db/{name}"), OpenOptions::EXISTING).await.expect("open");
        let mut bytes = vec![0u8; file.len().await.expect("len") as usize];
        file.read_exact_at(0, &mut bytes).await.expect("read");
        if bytes.windows(MARKER.len()).any(|window| window == MARKER.as_bytes()) {
            found.push(name);
        }
    }
    found
}

/// Fills a database with marked documents, an index over marked values and change events;
/// returns the files that hold the marker.
fn fill_and_scan(seed: u64, options: docdb::Options) -> Vec<String> {
    let (world, node) = world(seed);
    run(&world, node, |env| async move {
        let db = DocDb::open(env.clone(), "db", options).await.expect("open");
        let people = db.collection("app", "people");
        let by_name = IndexSpec { keys: doc! {"name": 1}, ..IndexSpec::default() };
        people.create_index(by_name).await.expect("index");
        for index in 0..200 {
            let name = format!("{MARKER}-name-{index}");
            let note = format!("{MARKER}-note-{index}");
            people.insert_one(doc! {"_id": index, "name": name, "note": note}).await.expect("put");
        }
        for index in 0..50 {
            let set = doc! {"$set": {"note": format!("{MARKER}-changed-{index}")}};
            let options = UpdateOptions::default();
            people.update_one(doc! {"_id": index}, set, options).await.expect("update");
        }
        let scope = Scope::Collection("app".into(), "people".into());
        let mut stream = db.watch(scope, Some(BEGINNING)).await.expect("watch");
        let event = stream.try_next().await.expect("read").expect("an event");
        assert_eq!(event.operation, "insert");
        db.storage().flush().await.expect("flush");
        db.storage().compact_all().await.expect("compact");
        people.insert_one(doc! {"_id": 1000, "name": MARKER}).await.expect("in the log");
        db.close().await.expect("close");
        marker_on_disk(&env).await
    })
}

#[test]
fn an_encrypted_database_leaves_no_field_index_key_or_event_readable() {
    let plain = fill_and_scan(1, options());
    assert!(plain.iter().any(|name| name.ends_with(".sst")), "the scan finds plaintext");
    assert_eq!(fill_and_scan(1, encrypted("correct horse")), Vec::<String>::new());
}

#[test]
fn a_wrong_passphrase_is_a_clear_error_and_rotation_works() {
    let (world, node) = world(2);
    run(&world, node, |env| async move {
        let db = DocDb::open(env.clone(), "db", encrypted("right")).await.expect("create");
        let notes = db.collection("app", "notes");
        notes.insert_one(doc! {"_id": 1, "text": "secret"}).await.expect("insert");
        let wrong = db.rotate_passphrase(b"guess", b"next", KdfParams::TESTING).await;
        assert!(matches!(wrong, Err(Error::Storage(lsm::Error::WrongPassphrase))), "{wrong:?}");
        db.close().await.expect("close");
        let Err(error) = DocDb::open(env.clone(), "db", encrypted("wrong")).await else {
            panic!("a wrong passphrase opened the database");
        };
        assert!(matches!(error, Error::Storage(lsm::Error::WrongPassphrase)), "{error:?}");
        assert!(error.to_string().contains("wrong passphrase"), "{error}");
        let missing = DocDb::open(env.clone(), "db", options()).await;
        let mismatch = matches!(missing, Err(Error::Storage(lsm::Error::EncryptionMismatch(_))));
        assert!(mismatch, "no passphrase on an encrypted database");
        let db = DocDb::open(env.clone(), "db", encrypted("right")).await.expect("reopen");
        db.rotate_passphrase(b"right", b"next", KdfParams::TESTING).await.expect("rotate");
        db.close().await.expect("close");
        let old = DocDb::open(env.clone(), "db", encrypted("right")).await;
        assert!(matches!(old, Err(Error::Storage(lsm::Error::WrongPassphrase))));
        let db = DocDb::open(env.clone(), "db", encrypted("next")).await.expect("rotated");
        let found = db.collection("app", "notes").find_one(doc! {"_id": 1}, None).await;
        assert_eq!(found.expect("find"), Some(doc! {"_id": 1, "text": "secret"}));
        db.close().await.expect("close");
    });
}
