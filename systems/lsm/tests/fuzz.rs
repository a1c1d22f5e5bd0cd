//! Fuzz-style tests: random and mutated bytes fed to every reader of on-disk data.
//!
//! Goal: no input makes a reader panic; damaged data is an error, never a wrong answer.
//! Method: proptest generates random byte strings and single- and multi-byte mutations of valid
//! encodings (log, block, bloom filter, manifest, whole table); each decoder must return
//! without panicking. A store-level test flips one byte of one file of a closed store and
//! checks that reopening and reading every key gives an error or the right value, never a
//! different one.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{run, small_options, world};
use lsm::block::{Block, BlockBuilder};
use lsm::bloom::{Bloom, FilterKind};
use lsm::cache::BlockCache;
use lsm::key::{Entry, internal_key};
use lsm::manifest::{ManifestState, TableMeta};
use lsm::table::{Table, TableBuilder, TableCursor, TableOptions};
use lsm::{Compression, Db, Durability, wal};
use proptest::prelude::*;
use sim::world::SimEnv;
use sim::{Env, File, OpenOptions};

fn valid_log() -> Vec<u8> {
    let mut out = Vec::new();
    for index in 0..6u64 {
        let synced_through = out.len() as u64;
        let place = wal::Place { file_number: 1, buffer_offset: 0 };
        wal::encode_record(&mut out, place, synced_through, format!("payload {index}").as_bytes());
    }
    out
}

fn valid_block() -> Vec<u8> {
    let mut builder = BlockBuilder::new(3);
    for index in 0..20 {
        builder.add(format!("key-{index:03}").as_bytes(), b"value");
    }
    builder.finish()
}

fn valid_manifest() -> Vec<u8> {
    let table = |number: u64, level: u8| TableMeta {
        level,
        number,
        size: 4096,
        smallest: internal_key(b"a", number, 1),
        largest: internal_key(b"m", number, 0),
    };
    ManifestState {
        next_file_number: 10,
        last_sequence: 99,
        log_number: 7,
        tables: vec![table(3, 0), table(4, 1)],
    }
    .encode()
}

/// A blocked bloom filter of 60 keys (a mutation may also make it a valid legacy filter).
fn valid_bloom() -> Vec<u8> {
    let hashes: Vec<u64> =
        (0..60).map(|index| lsm::bloom::key_hash(format!("k{index}").as_bytes())).collect();
    lsm::bloom::build(&hashes, 10, FilterKind::Blocked)
}

fn valid_table(compression: Compression) -> Vec<u8> {
    let options = TableOptions {
        block_bytes: 128,
        restart_interval: 4,
        bloom_bits_per_key: 10,
        compression,
        sealer: None,
    };
    let mut builder = TableBuilder::new(options, 1);
    for index in 0..200u32 {
        let value =
            (index % 7 != 0).then(|| format!("value-{index}-{}", "z".repeat(20)).into_bytes());
        builder.add(&Entry {
            key: format!("k{index:04}").into_bytes(),
            sequence: u64::from(index) + 1,
            value,
        });
    }
    builder.finish().0
}

/// Applies `flips` (position, xor) to `data`; positions wrap around its length.
fn mutate(mut data: Vec<u8>, flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !data.is_empty() {
        for (position, xor) in flips {
            let index = position % data.len();
            data[index] ^= xor.max(&1);
        }
    }
    if let Some(cut) = cut {
        data.truncate(cut % (data.len() + 1));
    }
    data
}

fn decode_everything(data: &[u8]) {
    let contents = wal::read_log(data, 1);
    assert!(contents.records.iter().all(|record| record.payload.len() <= data.len()));
    let _ = ManifestState::decode(data);
    for kind in [FilterKind::Blocked, FilterKind::Legacy] {
        if let Ok(bloom) = Bloom::new(data.to_vec(), kind) {
            let _ = (bloom.may_contain(12345), bloom.may_contain(u64::MAX));
        }
    }
    if let Ok(block) = Block::new(data.to_vec()) {
        let _ = block.entries();
        let _ = block.seek(b"key-010", |a, b| a.cmp(b));
    }
}

/// Opens `bytes` as a table on a simulated disk and reads all of it.
fn read_table(bytes: Vec<u8>) {
    let (world, node) = world(7);
    run(&world, node, move |env: SimEnv| async move {
        let file = env.open("t.sst", OpenOptions::CREATE).await.expect("create");
        file.write_at(0, &bytes).await.expect("write");
        let cache = Arc::new(BlockCache::new(1 << 16));
        let Ok(table) = Table::open(file, 1, "t.sst".to_string(), cache, None).await else {
            return;
        };
        let table = Arc::new(table);
        let _ = table.get(b"k0010", lsm::bloom::key_hash(b"k0010"), u64::MAX >> 8).await;
        for forward in [true, false] {
            let Ok(mut cursor) =
                TableCursor::new(Arc::clone(&table), forward, std::ops::Bound::Unbounded).await
            else {
                continue;
            };
            for _ in 0..1000 {
                if cursor.peek().is_none() || cursor.advance().await.is_err() {
                    break;
                }
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_decoder(data in prop::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&data);
    }

    #[test]
    fn mutated_encodings_never_panic_a_decoder(
        which in 0usize..4,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<usize>()),
    ) {
        let valid = [valid_log(), valid_block(), valid_manifest(), valid_bloom()][which].clone();
        decode_everything(&mutate(valid, &flips, cut));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tables_never_panic_the_reader(
        lz4 in any::<bool>(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..3),
        cut in prop::option::of(any::<usize>()),
    ) {
        let compression = if lz4 { Compression::Lz4 } else { Compression::None };
        read_table(mutate(valid_table(compression), &flips, cut));
    }
}

#[test]
fn a_flipped_bit_in_a_record_followed_by_synced_records_is_corruption() {
    let data = valid_log();
    let first_len = wal::HEADER_BYTES + "payload 0".len();
    let mut damaged = data.clone();
    damaged[first_len / 2] ^= 0x10;
    let contents = wal::read_log(&damaged, 1);
    assert_eq!(contents.bad_offset, Some(0));
    assert!(contents.bad_region_was_synced, "later records prove record 0 was synced");
}

/// Builds a closed store with known contents; returns its files' names.
async fn build_store(env: &SimEnv) -> (Vec<String>, BTreeMap<Vec<u8>, Vec<u8>>) {
    let db = Db::open(env.clone(), "db", small_options()).await.expect("open");
    let mut expected = BTreeMap::new();
    for index in 0..120u32 {
        let key = format!("key-{:03}", index % 60).into_bytes();
        let value = format!("value-{index}-{}", "q".repeat(index as usize % 30)).into_bytes();
        db.put(&key, &value, Durability::Sync).await.expect("put");
        expected.insert(key, value);
    }
    db.close().await.expect("close");
    (env.list("db").await.expect("list"), expected)
}

/// Goal: a flipped byte anywhere in a store's files is never served as a different value.
#[test]
fn a_flipped_byte_in_any_store_file_is_never_served() {
    for case in 0..24u64 {
        let (world, node) = world(100 + case);
        run(&world, node, move |env: SimEnv| async move {
            let (names, expected) = build_store(&env).await;
            let name = &names[case as usize % names.len()];
            let path = format!("db/{name}");
            let file = env.open(&path, OpenOptions::EXISTING).await.expect("open file");
            let len = file.len().await.expect("len");
            if len == 0 {
                return;
            }
            let offset = (case * 7919) % len;
            let mut byte = [0u8];
            file.read_exact_at(offset, &mut byte).await.expect("read");
            file.write_at(offset, &[byte[0] ^ 0x20]).await.expect("write");
            file.sync().await.expect("sync");
            drop(file);
            let Ok(db) = Db::open(env.clone(), "db", small_options()).await else { return };
            for (key, value) in &expected {
                match db.get(key).await {
                    Ok(Some(got)) => assert_eq!(&got, value, "{name}@{offset}: wrong value served"),
                    Ok(None) => panic!("{name}@{offset}: acknowledged key lost silently"),
                    Err(error) => assert!(error.is_corruption(), "{error}"),
                }
            }
        });
    }
}
