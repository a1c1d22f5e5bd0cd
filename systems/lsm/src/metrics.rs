//! The store's counters as Prometheus samples for the production binaries (feature `tokio`):
//! `lsm-server` and `docdb-server` report the same `lsm_*` families (README, "Metrics") and
//! log the same recovery line at start. Pure data, no I/O: it maps `Stats` and the
//! `RecoveryReport` onto `service::Samples` at scrape time, and the report onto a log event.

use service::Samples;

use crate::{RecoveryReport, Stats};

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
        ("lsm_group_commits_total", "Group commits that appended writes to the log.", {
            stats.group_commit_count
        }),
        ("lsm_group_commit_writes_total", "Writes (batches) carried by group commits.", {
            stats.group_commit_write_count
        }),
        ("lsm_write_stalls_total", "Times writes waited for flushes or compactions.", {
            stats.write_stall_count
        }),
    ];
    samples.counters(&counters);
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    let help = "Seconds group commits spent in write-ahead-log fsyncs.";
    samples.counter_float("lsm_wal_sync_seconds_total", help, seconds(stats.wal_sync_nanos));
    let help = "Seconds writes spent stalled.";
    samples.counter_float("lsm_write_stall_seconds_total", help, seconds(stats.write_stall_nanos));
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

/// Adds what the store's open found, as gauges fixed for the life of the process.
pub fn collect_recovery(report: &RecoveryReport, samples: &mut Samples) {
    let gauges = [
        ("lsm_recovery_tables", "Tables the manifest listed at open.", report.table_count as f64),
        ("lsm_recovery_logs", "Write-ahead logs read at open.", report.log_count as f64),
        ("lsm_recovery_log_records", "Log records replayed at open.", report.record_count as f64),
        ("lsm_recovery_torn_tail_bytes", "Bytes of a torn log tail dropped at open.", {
            report.torn_tail_bytes as f64
        }),
        ("lsm_recovery_clean_shutdown", "1 if the previous run closed the store cleanly.", {
            f64::from(u8::from(report.clean_shutdown))
        }),
    ];
    for (name, help, value) in gauges {
        samples.gauge(name, help, value);
    }
}

/// Logs what the store's open found in `dir`, at info ("recovered the store").
pub fn log_recovery(dir: &str, report: &RecoveryReport) {
    service::tracing::info!(
        %dir,
        tables = report.table_count,
        logs = report.log_count,
        log_records = report.record_count,
        torn_tail_bytes = report.torn_tail_bytes,
        sequence = report.last_sequence,
        clean_shutdown = report.clean_shutdown,
        "recovered the store"
    );
}
