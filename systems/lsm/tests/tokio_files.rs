//! The store on real files through `TokioEnv` (feature `tokio`).
//!
//! Goal: the code that passes on the simulator also works on a real file system and a
//! multi-threaded runtime: concurrent sync writers share fsyncs (group commit), and a reopened
//! store holds every write. Method: a temporary directory, eight writer tasks, reopen, read all.

#![allow(clippy::disallowed_methods)] // A real runtime: tokio::spawn is the point of the test.

use lsm::{Db, Durability, Options};
use sim::tokio_env::TokioEnv;

const WRITER_COUNT: u32 = 8;
const WRITES_PER_WRITER: u32 = 100;

fn key(index: u32) -> Vec<u8> {
    format!("key-{index:06}").into_bytes()
}

#[test]
fn concurrent_sync_writers_on_real_files_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    runtime.block_on(async {
        let db = Db::open(TokioEnv::new(dir.path()), "db", Options::default()).await.expect("open");
        let mut writers = Vec::new();
        for writer in 0..WRITER_COUNT {
            let db = db.clone();
            writers.push(tokio::spawn(async move {
                for index in 0..WRITES_PER_WRITER {
                    let index = writer * WRITES_PER_WRITER + index;
                    db.put(&key(index), &key(index), Durability::Sync).await.expect("put");
                }
            }));
        }
        for writer in writers {
            writer.await.expect("writer");
        }
        let stats = db.stats();
        println!("{} fsyncs for {} writes", stats.wal_sync_count, WRITER_COUNT * WRITES_PER_WRITER);
        db.close().await.expect("close");
        let db =
            Db::open(TokioEnv::new(dir.path()), "db", Options::default()).await.expect("reopen");
        for index in 0..WRITER_COUNT * WRITES_PER_WRITER {
            assert_eq!(db.get(&key(index)).await.expect("get"), Some(key(index)));
        }
        db.close().await.expect("close");
    });
}

/// The directory lock is the operating system's: a second `TokioEnv` on the same directory
/// (its own file descriptors, as a second process would have) is refused while the first store
/// is open, and gets in once it closes.
#[test]
fn a_second_opener_with_its_own_descriptors_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let first =
            Db::open(TokioEnv::new(dir.path()), "db", Options::default()).await.expect("open");
        let second = Db::open(TokioEnv::new(dir.path()), "db", Options::default()).await;
        assert!(matches!(second, Err(lsm::Error::Locked { .. })), "{second:?}");
        first.close().await.expect("close");
        let second =
            Db::open(TokioEnv::new(dir.path()), "db", Options::default()).await.expect("reopen");
        second.close().await.expect("close");
    });
}
