//! The streaming table writer (used by flushes and compactions) writes exactly the bytes the
//! in-memory builder produces, across several write-buffer drains, and the table reads back.

mod common;

use std::sync::Arc;

use common::{run, world};
use lsm::cache::BlockCache;
use lsm::key::Entry;
use lsm::table::{
    TABLE_WRITE_BUFFER_BYTES, Table, TableBuilder, TableCursor, TableOptions, TableWriter,
};
use lsm::{Compression, bloom};
use sim::world::SimEnv;
use sim::{Env, File, OpenOptions};

/// Entries whose encoded table spans about three write buffers.
fn entries() -> Vec<Entry> {
    let count = 3 * TABLE_WRITE_BUFFER_BYTES / 120;
    (0..count as u32)
        .map(|index| Entry {
            key: format!("key-{index:08}").into_bytes(),
            sequence: u64::from(index) + 1,
            value: (index % 11 != 0).then(|| vec![(index % 251) as u8; 100]),
        })
        .collect()
}

#[test]
fn streamed_table_equals_built_table_and_reads_back() {
    let options = TableOptions {
        block_bytes: 4096,
        restart_interval: 16,
        bloom_bits_per_key: 10,
        compression: Compression::None,
        sealer: None,
    };
    let entries = entries();
    let mut builder = TableBuilder::new(options.clone(), 1);
    for entry in &entries {
        builder.add(entry);
    }
    let (expected, expected_summary) = builder.finish();
    assert!(expected.len() > 2 * TABLE_WRITE_BUFFER_BYTES, "the table spans several drains");
    let (world, node) = world(11);
    run(&world, node, move |env: SimEnv| async move {
        let file = env.open("t.sst", OpenOptions::CREATE_NEW).await.expect("create");
        let mut writer = TableWriter::new(file, 1, options);
        for entry in &entries {
            writer.add(entry).await.expect("add");
        }
        let (file, size, summary) = writer.finish().await.expect("finish");
        assert_eq!(summary, expected_summary);
        assert_eq!(size, expected.len() as u64);
        let mut stored = vec![0u8; expected.len()];
        file.read_exact_at(0, &mut stored).await.expect("read");
        assert!(stored == expected, "streamed bytes differ from built bytes");
        let cache = Arc::new(BlockCache::new(1 << 20));
        let table =
            Arc::new(Table::open(file, 1, "t.sst".into(), cache, None).await.expect("open"));
        let probe = &entries[entries.len() / 2];
        let found = table.get(&probe.key, bloom::key_hash(&probe.key), u64::MAX >> 8).await;
        assert_eq!(found.expect("get"), Some((probe.sequence, probe.value.clone())));
        let mut cursor =
            TableCursor::new(table, true, std::ops::Bound::Unbounded).await.expect("cursor");
        let mut count = 0;
        while let Some(entry) = cursor.peek() {
            assert_eq!(entry, &entries[count]);
            count += 1;
            cursor.advance().await.expect("advance");
        }
        assert_eq!(count, entries.len());
    });
}
