//! Tuning knobs of a store and the durability of a write.

use zeroize::Zeroizing;

use crate::activity::Activity;
use crate::crypto::KdfParams;
use crate::table::{Compression, TableOptions};

/// Encryption at rest: the passphrase that unlocks the store's `KEY` file, and the Argon2id
/// cost used when a `KEY` file is written (a new store, or a rotation). Its `Debug` never
/// shows the passphrase, and the passphrase is wiped from memory when dropped.
#[derive(Clone)]
pub struct Encryption {
    /// The passphrase's bytes.
    pub passphrase: Zeroizing<Vec<u8>>,
    /// Key-derivation cost of a new `KEY` file (an existing one names its own).
    pub kdf: KdfParams,
}

impl Encryption {
    /// Encryption under `passphrase` with key-derivation cost `kdf`.
    pub fn new(passphrase: impl Into<Vec<u8>>, kdf: KdfParams) -> Encryption {
        Encryption { passphrase: Zeroizing::new(passphrase.into()), kdf }
    }
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Encryption")
            .field("passphrase", &"<redacted>")
            .field("kdf", &self.kdf)
            .finish()
    }
}

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the write-ahead log is fsynced: survives any crash. Concurrent writers share one
    /// fsync (group commit).
    #[default]
    Sync,
    /// After the write-ahead log append, before fsync: a crash may lose it (and any later
    /// buffered write), but never a write acknowledged with `Sync` before it.
    Buffered,
}

/// Store configuration; `Options::default()` suits small stores and tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// A memtable is frozen and flushed once it holds this many bytes.
    pub memtable_bytes_max: usize,
    /// Frozen memtables waiting for flush before writers stall.
    pub immutable_memtable_count_max: usize,
    /// Target uncompressed data block size.
    pub block_bytes: usize,
    /// Entries between restart points in a block.
    pub block_restart_interval: usize,
    /// Bloom filter bits per key of tables below level 0 (about 1% false positives at 10).
    pub bloom_bits_per_key: u32,
    /// Bloom filter bits per key of level-0 tables (flush outputs; about 0.02% false positives
    /// at 20). Every point lookup probes every level-0 table, as their key ranges overlap, so
    /// their false positives cost the most block reads; they are few and small, so the extra
    /// filter memory is small.
    pub level0_bloom_bits_per_key: u32,
    /// Data block compression.
    pub compression: Compression,
    /// Byte budget of the block cache.
    pub block_cache_bytes: usize,
    /// Level-0 tables that trigger a compaction into level 1.
    pub level0_compaction_trigger: usize,
    /// Level-0 tables at which writers stall until compaction catches up.
    pub level0_stop_writes: usize,
    /// Size budget of level 1; each deeper level gets `level_size_ratio` times more.
    pub level1_bytes_max: u64,
    /// Growth factor between levels.
    pub level_size_ratio: u64,
    /// Target size of a compaction output table.
    pub table_bytes_target: u64,
    /// Number of levels (at least 2).
    pub level_count: usize,
    /// Read-triggered compaction, after LevelDB's seek compaction: a seek that reads a
    /// level-0 table next to other tables charges it one seek; a table may be charged one
    /// seek per this many bytes of its size (at least 100 seeks), and when one has spent its
    /// allowance, level 0 is compacted into level 1 even below `level0_compaction_trigger`.
    /// A store that is read more than written then keeps no level-0 tables for its seeks to
    /// merge; one only written is unaffected. 0 turns it off.
    pub seek_compaction_bytes: u64,
    /// Encryption at rest (see `Encryption`); `None` stores everything in the clear. A store
    /// created with it must always be opened with it, and one created without it never.
    pub encryption: Option<Encryption>,
    /// Where the store counts the work it is doing (flush, compaction, log sync...), for a
    /// test harness that records in which state faults find it; `None` counts nothing.
    /// Counting changes nothing the store does.
    pub activity: Option<Activity>,
    /// A known bug to plant (feature `planted-bugs` only): the simulation harness proves with
    /// it that its sweeps find each bug this store once had.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// A bug the store once had, kept so the simulation harness can prove it finds it. Only
/// `Options::planted_bug` (feature `planted-bugs`) turns one on; without the feature every
/// check of a planted bug is `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedBug {
    /// Recovery ignores the position a log record names, so a record moved by a misdirected
    /// write, and the hole it left, read as a torn tail: the write is lost without an error.
    MisplacedRecordIsTornTail,
    /// `close` does not wait for a flush or compaction started through a clone, which then
    /// writes tables and `MANIFEST` and deletes files after the directory lock was released.
    CloseIgnoresClonedWork,
    /// A user flush or compaction queues behind every writer and every background round, so
    /// it is starved while writes keep coming.
    FlushYieldsToWriters,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            memtable_bytes_max: 4 << 20,
            immutable_memtable_count_max: 2,
            block_bytes: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            level0_bloom_bits_per_key: 20,
            compression: Compression::None,
            block_cache_bytes: 8 << 20,
            level0_compaction_trigger: 4,
            level0_stop_writes: 12,
            level1_bytes_max: 10 << 20,
            level_size_ratio: 10,
            table_bytes_target: 2 << 20,
            level_count: 7,
            seek_compaction_bytes: 16 << 10,
            encryption: None,
            activity: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }
}

impl Options {
    /// Tiny memtables, blocks, tables and levels, so that a few hundred writes go through every
    /// path (flushes, leveled compactions, stalls): for tests and simulation scenarios.
    pub fn tiny() -> Options {
        Options {
            memtable_bytes_max: 1024,
            immutable_memtable_count_max: 2,
            block_bytes: 256,
            block_restart_interval: 4,
            block_cache_bytes: 8192,
            level0_compaction_trigger: 2,
            level0_stop_writes: 6,
            level1_bytes_max: 2048,
            level_size_ratio: 4,
            table_bytes_target: 1024,
            level_count: 4,
            ..Options::default()
        }
    }

    /// Whether `bug` is planted (never without feature `planted-bugs`).
    pub(crate) fn planted(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.planted_bug == Some(bug);
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    /// Checks the options; the reason if they cannot work.
    pub(crate) fn check(&self) -> Result<(), String> {
        let level_count_max = crate::manifest::LEVEL_COUNT_MAX;
        if self.level_count < 2 || self.level_count > level_count_max {
            return Err(format!("level_count must be in 2..={level_count_max}"));
        }
        if self.memtable_bytes_max == 0 || self.block_bytes == 0 || self.table_bytes_target == 0 {
            return Err("memtable, block and table sizes must be positive".to_string());
        }
        if self.immutable_memtable_count_max == 0 || self.block_restart_interval == 0 {
            return Err("immutable memtable count and restart interval must be positive".into());
        }
        if self.level0_compaction_trigger == 0
            || self.level0_stop_writes <= self.level0_compaction_trigger
        {
            return Err("level0_stop_writes must exceed a positive compaction trigger".into());
        }
        if self.level_size_ratio < 2 || self.level1_bytes_max == 0 {
            return Err("level_size_ratio must be at least 2, level1_bytes_max positive".into());
        }
        Ok(())
    }

    /// What builders of tables of level 0 (`level0`) or a deeper level need, sealing blocks
    /// with `sealer` if the store is encrypted.
    pub(crate) fn table_options(
        &self,
        level0: bool,
        sealer: Option<&crate::crypto::Sealer>,
    ) -> TableOptions {
        let bloom_bits_per_key =
            if level0 { self.level0_bloom_bits_per_key } else { self.bloom_bits_per_key };
        TableOptions {
            block_bytes: self.block_bytes,
            restart_interval: self.block_restart_interval,
            bloom_bits_per_key,
            compression: self.compression,
            sealer: sealer.cloned(),
        }
    }

    /// The size budget of `level` (level 0 is counted in tables, not bytes).
    pub(crate) fn level_bytes_max(&self, level: usize) -> u64 {
        assert!(level >= 1);
        let mut bytes = self.level1_bytes_max;
        for _ in 1..level {
            bytes = bytes.saturating_mul(self.level_size_ratio);
        }
        bytes
    }
}
