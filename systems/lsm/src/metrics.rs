//! The store's counters as Prometheus samples for the production binaries (feature `tokio`):
//! `lsm-server` and `docdb-server` report the same `lsm_*` families (README, "Metrics"). Pure
//! data, no I/O: it maps `Stats` onto `service::Samples` at scrape time.

use service::Samples;

use crate::Stats;

/// Adds the store's counters and level sizes to `samples`.
pub fn collect(stats: &Stats, samples: &mut Samples) {
    let counters = [
        ("lsm_user_bytes_total", "Key and value bytes accepted by writes.", stats.user_bytes),
        ("lsm_wal_bytes_total", "Bytes appended to write-ahead logs.", stats.wal_bytes),
        ("lsm_wal_syncs_total", "Write-ahead-log fsyncs (one per group commit).", {
            stats.wal_sync_count
        }),
        ("lsm_flushes_total", "Memtable flushes.", stats.flush_count),
        ("lsm_flush_bytes_total", "Table bytes written by flushes.", stats.flush_bytes),
        ("lsm_compactions_total", "Compactions (trivial moves included).", {
            stats.compaction_count
        }),
        ("lsm_seek_compactions_total", "Compactions that reads triggered.", {
            stats.seek_compaction_count
        }),
        ("lsm_compaction_bytes_total", "Table bytes written by compactions.", {
            stats.compaction_bytes
        }),
    ];
    samples.counters(&counters);
    for (level, (tables, bytes)) in
        stats.level_table_counts.iter().zip(&stats.level_bytes).enumerate()
    {
        let level = level.to_string();
        let labels = [("level", level.as_str())];
        samples.gauge_with("lsm_level_tables", "Tables per level.", &labels, *tables as f64);
        samples.gauge_with("lsm_level_bytes", "Table bytes per level.", &labels, *bytes as f64);
    }
    let cache = stats.block_cache_bytes as f64;
    samples.gauge("lsm_block_cache_bytes", "Bytes in the block cache.", cache);
}
