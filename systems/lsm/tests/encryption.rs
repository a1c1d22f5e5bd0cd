//! Encryption at rest on the simulated disk.
//!
//! Goal: a store opened with a passphrase leaves nothing readable on disk (keys, values, the
//! manifest's key ranges), whatever path the bytes took (log, flush, compaction, recovery after
//! a crash); a wrong or missing passphrase is a clear typed error; a flipped bit in a sealed
//! table block or log record is `Corruption` (even when the CRC is fixed up, as the tag still
//! fails), never wrong data; and a rotated passphrase opens the store while the old one stops.
//! Method: one-node worlds; every file of the store's directory is read back through the `Env`
//! and searched for marker bytes that every key and value carries.

mod common;

use common::{run, small_options, world};
use lsm::{Db, Durability, Encryption, Error, KdfParams, Options};
use sim::world::SimEnv;
use sim::{Env, File, OpenOptions};

const KEY_MARKER: &[u8] = b"PLAINKEYMARK";
const VALUE_MARKER: &[u8] = b"PLAINVALUEMARK";
const KEY_COUNT: u32 = 300;

fn key(index: u32) -> Vec<u8> {
    [KEY_MARKER, format!("-{index:05}").as_bytes()].concat()
}

fn value(index: u32, round: u32) -> Vec<u8> {
    [VALUE_MARKER, format!("-{index:05}-{round}-").as_bytes(), &[b'v'; 40]].concat()
}

fn encrypted(passphrase: &str) -> Options {
    Options { encryption: Some(Encryption::new(passphrase, KdfParams::TESTING)), ..small_options() }
}

/// Every file of directory `db` with its bytes.
async fn read_files(env: &SimEnv) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for name in env.list("db").await.expect("list") {
        let file = env.open(&format!("db/{name}"), OpenOptions::EXISTING).await.expect("open");
        let mut bytes = vec![0u8; file.len().await.expect("len") as usize];
        file.read_exact_at(0, &mut bytes).await.expect("read");
        files.push((name, bytes));
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The files of `db` that hold a key or value marker.
async fn readable_files(env: &SimEnv) -> Vec<String> {
    let files = read_files(env).await;
    assert!(files.iter().any(|(name, _)| name.ends_with(".sst")), "tables were written");
    let leaks = |(name, bytes): &(String, Vec<u8>)| {
        (contains(bytes, KEY_MARKER) || contains(bytes, VALUE_MARKER)).then(|| name.clone())
    };
    files.iter().filter_map(leaks).collect()
}

/// Writes every key (synced), flushes, compacts, overwrites half of them (left in the log),
/// crashes, reopens and checks every value; returns which files hold a marker.
fn write_crash_and_scan(seed: u64, options: Options) -> Vec<String> {
    let (world, node) = world(seed);
    let writer_options = options.clone();
    run(&world, node, |env| async move {
        let db = Db::open(env, "db", writer_options).await.expect("open");
        for index in 0..KEY_COUNT {
            db.put(&key(index), &value(index, 0), Durability::Sync).await.expect("put");
        }
        db.flush().await.expect("flush");
        db.compact_all().await.expect("compact");
        for index in (0..KEY_COUNT).step_by(2) {
            db.put(&key(index), &value(index, 1), Durability::Sync).await.expect("put");
        }
    });
    world.crash(node);
    world.restart(node);
    run(&world, node, |env| async move {
        let db = Db::open(env.clone(), "db", options).await.expect("reopen");
        for index in 0..KEY_COUNT {
            let expected = value(index, u32::from(index % 2 == 0));
            assert_eq!(db.get(&key(index)).await.expect("get"), Some(expected));
        }
        db.close().await.expect("close");
        readable_files(&env).await
    })
}

#[test]
fn an_encrypted_store_leaves_no_key_or_value_readable_on_disk() {
    for seed in [1, 2] {
        let plain = write_crash_and_scan(seed, small_options());
        assert!(plain.iter().any(|name| name.ends_with(".sst")), "the scan finds plaintext");
        assert!(plain.iter().any(|name| name == "MANIFEST"), "plain manifests hold keys");
        let options = encrypted("correct horse");
        assert_eq!(write_crash_and_scan(seed, options), Vec::<String>::new(), "seed {seed}");
        let compressed = Options { compression: lsm::Compression::Lz4, ..encrypted("lz4") };
        assert_eq!(write_crash_and_scan(seed, compressed), Vec::<String>::new());
    }
}

#[test]
fn wrong_or_missing_passphrases_are_clear_errors() {
    let (world, node) = world(3);
    run(&world, node, |env| async move {
        let db = Db::open(env.clone(), "db", encrypted("right")).await.expect("create");
        db.put(b"k", b"v", Durability::Sync).await.expect("put");
        db.close().await.expect("close");
        let wrong = Db::open(env.clone(), "db", encrypted("wrong")).await;
        assert!(matches!(wrong, Err(Error::WrongPassphrase)), "{wrong:?}");
        let missing = Db::open(env.clone(), "db", small_options()).await;
        assert!(matches!(missing, Err(Error::EncryptionMismatch(_))), "{missing:?}");
        let db = Db::open(env.clone(), "db", encrypted("right")).await.expect("reopen");
        assert_eq!(db.get(b"k").await.expect("get"), Some(b"v".to_vec()));
        db.close().await.expect("close");
        let plain = Db::open(env.clone(), "plain", small_options()).await.expect("plain");
        plain.put(b"k", b"v", Durability::Sync).await.expect("put");
        plain.close().await.expect("close");
        let keyed = Db::open(env.clone(), "plain", encrypted("right")).await;
        assert!(matches!(keyed, Err(Error::EncryptionMismatch(_))), "{keyed:?}");
        let message = Error::WrongPassphrase.to_string();
        assert!(message.contains("wrong passphrase"), "{message}");
    });
}

/// Flips a bit of byte `at` of file `name` of `db` (a second call flips it back).
async fn damage(env: &SimEnv, name: &str, at: u64) {
    let file = env.open(&format!("db/{name}"), OpenOptions::EXISTING).await.expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(at, &mut byte).await.expect("read");
    file.write_at(at, &[byte[0] ^ 0x10]).await.expect("write");
    file.sync().await.expect("sync");
}

/// Overwrites file `name` of `db` with `bytes` at `at`.
async fn rewrite(env: &SimEnv, name: &str, at: u64, bytes: &[u8]) {
    let file = env.open(&format!("db/{name}"), OpenOptions::EXISTING).await.expect("open");
    file.write_at(at, bytes).await.expect("write");
    file.sync().await.expect("sync");
}

/// The bytes of file `name` of `db`.
async fn file_bytes(env: &SimEnv, name: &str) -> Vec<u8> {
    let files = read_files(env).await;
    files.into_iter().find(|(found, _)| found == name).expect("file exists").1
}

/// Reads every key: each read is the value written or `Corruption`, never anything else;
/// returns the messages of the `Corruption`s.
async fn corrupt_reads(db: &Db<SimEnv>) -> Vec<String> {
    let mut corrupt = Vec::new();
    for index in 0..KEY_COUNT {
        match db.get(&key(index)).await {
            Ok(found) => assert_eq!(found, Some(value(index, 0)), "never wrong data"),
            Err(error) if error.is_corruption() => corrupt.push(error.to_string()),
            Err(error) => panic!("unexpected error {error}"),
        }
    }
    corrupt
}

/// Builds a store with one table (`000003.sst` after the first flush) and closes it.
async fn one_table(env: &SimEnv) -> String {
    let options = Options { memtable_bytes_max: 1 << 20, ..encrypted("pass") };
    let db = Db::open(env.clone(), "db", options).await.expect("open");
    for index in 0..KEY_COUNT {
        db.put(&key(index), &value(index, 0), Durability::Sync).await.expect("put");
    }
    db.flush().await.expect("flush");
    db.close().await.expect("close");
    let names = env.list("db").await.expect("list");
    let tables: Vec<_> = names.into_iter().filter(|name| name.ends_with(".sst")).collect();
    assert_eq!(tables.len(), 1, "{tables:?}");
    tables[0].clone()
}

#[test]
fn a_flipped_bit_in_a_sealed_table_block_is_corruption() {
    let (world, node) = world(4);
    run(&world, node, |env| async move {
        let table = one_table(&env).await;
        damage(&env, &table, 40).await;
        let db = Db::open(env.clone(), "db", encrypted("pass")).await.expect("open");
        let errors = corrupt_reads(&db).await;
        assert!(errors.iter().any(|error| error.contains("checksum")), "{errors:?}");
        db.close().await.expect("close");
        // The same flip with the block's CRC fixed up: only the AEAD tag catches it.
        damage(&env, &table, 40).await;
        let bytes = file_bytes(&env, &table).await;
        let number: u64 = table.trim_end_matches(".sst").parse().expect("number");
        let block_end = first_block_end(&bytes);
        let mut damaged = bytes.clone();
        damaged[40] ^= 0x10;
        let mut crc = crc32c::crc32c(&damaged[..block_end + 1]);
        let mut position = number.to_le_bytes().to_vec();
        position.extend_from_slice(&0u64.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &position);
        damage(&env, &table, 40).await;
        rewrite(&env, &table, block_end as u64 + 1, &crc.to_le_bytes()).await;
        let db = Db::open(env.clone(), "db", encrypted("pass")).await.expect("open");
        let errors = corrupt_reads(&db).await;
        assert!(errors.iter().any(|error| error.contains("does not open")), "{errors:?}");
        assert!(errors.iter().all(|error| error.contains(&table)), "{errors:?}");
        db.close().await.expect("close");
    });
}

/// The offset of the compression byte of the table's first block: the first offset whose CRC
/// trailer (sealed with the table's position) matches. Blocks are at least 40 bytes (sealed).
fn first_block_end(bytes: &[u8]) -> usize {
    (40..bytes.len() - 5)
        .find(|&end| {
            let crc = u32::from_le_bytes(bytes[end + 1..end + 5].try_into().expect("4"));
            (1..=u64::MAX).take(64).any(|number| {
                let mut position = number.to_le_bytes().to_vec();
                position.extend_from_slice(&0u64.to_le_bytes());
                crc32c::crc32c_append(crc32c::crc32c(&bytes[..end + 1]), &position) == crc
            })
        })
        .expect("a block trailer")
}

#[test]
fn a_flipped_bit_in_a_sealed_log_record_is_corruption() {
    for fix_crc in [false, true] {
        let (world, node) = world(5);
        run(&world, node, move |env| async move {
            let db = Db::open(env.clone(), "db", encrypted("pass")).await.expect("open");
            for index in 0..10 {
                db.put(&key(index), &value(index, 0), Durability::Sync).await.expect("put");
            }
            db.close().await.expect("close");
            let names = env.list("db").await.expect("list");
            let log = names.iter().find(|name| name.ends_with(".log")).expect("a log").clone();
            let header_bytes = lsm::wal::HEADER_BYTES;
            // A byte inside the first record's sealed payload.
            damage(&env, &log, header_bytes as u64 + 30).await;
            if fix_crc {
                let bytes = file_bytes(&env, &log).await;
                let length = u32::from_le_bytes(bytes[4..8].try_into().expect("4")) as usize;
                let crc = crc32c::crc32c(&bytes[4..header_bytes + length]);
                rewrite(&env, &log, 0, &crc.to_le_bytes()).await;
            }
            let reopened = Db::open(env.clone(), "db", encrypted("pass")).await;
            match reopened {
                Err(error) => {
                    assert!(error.is_corruption(), "{error}");
                    let reason = if fix_crc { "does not open" } else { "bad record" };
                    assert!(error.to_string().contains(reason), "{error}");
                    assert!(error.to_string().contains(&log), "{error}");
                }
                Ok(_) => panic!("a damaged synced record must not open (fix_crc {fix_crc})"),
            }
        });
    }
}

#[test]
fn a_rotated_passphrase_opens_the_store_and_the_old_one_stops() {
    let (world, node) = world(6);
    run(&world, node, |env| async move {
        let db = Db::open(env.clone(), "db", encrypted("first")).await.expect("open");
        for index in 0..KEY_COUNT {
            db.put(&key(index), &value(index, 0), Durability::Sync).await.expect("put");
        }
        db.flush().await.expect("flush");
        let wrong = db.rotate_passphrase(b"guess", b"second", KdfParams::TESTING).await;
        assert!(matches!(wrong, Err(Error::WrongPassphrase)), "{wrong:?}");
        db.rotate_passphrase(b"first", b"second", KdfParams::TESTING).await.expect("rotate");
        db.put(&key(0), &value(0, 0), Durability::Sync).await.expect("still writable");
        db.close().await.expect("close");
        let old = Db::open(env.clone(), "db", encrypted("first")).await;
        assert!(matches!(old, Err(Error::WrongPassphrase)), "{old:?}");
        let db = Db::open(env.clone(), "db", encrypted("second")).await.expect("new opens");
        assert_eq!(corrupt_reads(&db).await, Vec::<String>::new());
        db.close().await.expect("close");
        // The free function on a closed store; an open one holds the lock.
        lsm::rotate_passphrase(&env, "db", b"second", b"third", KdfParams::TESTING)
            .await
            .expect("rotate closed");
        let db = Db::open(env.clone(), "db", encrypted("third")).await.expect("third opens");
        let locked = lsm::rotate_passphrase(&env, "db", b"third", b"x", KdfParams::TESTING).await;
        assert!(matches!(locked, Err(Error::Locked { .. })), "{locked:?}");
        assert_eq!(corrupt_reads(&db).await, Vec::<String>::new());
        db.close().await.expect("close");
    });
}
