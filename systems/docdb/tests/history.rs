//! Resuming change streams from the start of the history and past its trimmed end.
//!
//! Goal: a resume token is refused exactly when events it needs were trimmed, never because
//! early commits wrote no events. Method: drive one node's database through commits with and
//! without events (an index build has none) and resume from tokens before and after the trim.
//! Found by `docdb-txn` seed 0x14, where the consumer could not start from the beginning.

mod common;

use bson::doc;
use common::{options, run, world};
use docdb::{DocDb, Error, IndexSpec, Options, ResumeToken, Scope};

const BEGINNING: ResumeToken = ResumeToken { commit: 0, index: u32::MAX };

#[test]
fn a_stream_resumes_from_the_beginning_after_commits_without_events() {
    let (world, node) = world(3);
    run(&world, node, |env| async move {
        let db = DocDb::open(env, "db", options()).await.expect("open");
        let notes = db.collection("app", "notes");
        let spec = IndexSpec { keys: doc! {"group": 1}, ..IndexSpec::default() };
        notes.create_index(spec).await.expect("index");
        notes.insert_one(doc! {"_id": 1, "group": 2}).await.expect("insert");
        assert_eq!(db.last_commit(), 2);
        let scope = Scope::Collection("app".into(), "notes".into());
        let mut stream = db.watch(scope, Some(BEGINNING)).await.expect("nothing was trimmed");
        let event = stream.try_next().await.expect("read").expect("the insert");
        assert_eq!((event.token.commit, event.operation.as_str()), (2, "insert"));
        assert!(stream.try_next().await.expect("read").is_none());
    });
}

#[test]
fn a_token_before_the_trimmed_history_is_refused() {
    let (world, node) = world(4);
    run(&world, node, |env| async move {
        let options = Options { change_history_commits: 2, ..options() };
        let db = DocDb::open(env, "db", options).await.expect("open");
        let notes = db.collection("app", "notes");
        for id in 0..5 {
            notes.insert_one(doc! {"_id": id}).await.expect("insert");
        }
        assert_eq!(db.last_commit(), 5);
        let lost = db.watch(Scope::All, Some(BEGINNING)).await.err();
        assert!(matches!(lost, Some(Error::ChangeHistoryLost { oldest_commit: 4 })), "{lost:?}");
        let kept = ResumeToken { commit: 3, index: u32::MAX };
        let mut stream = db.watch(Scope::All, Some(kept)).await.expect("commits 4 and 5 kept");
        let event = stream.try_next().await.expect("read").expect("commit 4");
        assert_eq!(event.token.commit, 4);
    });
}
