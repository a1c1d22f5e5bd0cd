//! Versions: the immutable set of live tables per level. A flush or compaction builds a new
//! version and installs it; readers hold the version they started with, so the tables they
//! read stay open until they finish.
//!
//! Invariants: level 0 is ordered newest first and its tables may overlap; every deeper level
//! is ordered by key and its tables do not overlap; for any key, a version in a shallower
//! level is newer than every version of that key in a deeper level.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sim::File;

use crate::error::Result;
use crate::key::{compare_user, user_key};
use crate::manifest::TableMeta;
use crate::table::Table;

/// Seeks a level-0 table may cost at least before a read-triggered compaction (LevelDB's
/// floor): a small table is not rewritten for a handful of reads.
const SEEK_ALLOWANCE_MIN: i64 = 100;

/// A live table and its manifest entry.
#[derive(Debug)]
pub struct TableFile<F: File> {
    /// What the manifest records.
    pub meta: TableMeta,
    /// The open table.
    pub table: Arc<Table<F>>,
    // Seeks that may still pass over this table before it asks for a read-triggered
    // compaction (only level-0 tables are charged).
    seek_allowance: AtomicI64,
}

impl<F: File> TableFile<F> {
    /// A live table; with `bytes_per_seek` > 0 it allows one seek per that many bytes of its
    /// size (at least `SEEK_ALLOWANCE_MIN`) before it asks for a compaction.
    pub fn new(meta: TableMeta, table: Arc<Table<F>>, bytes_per_seek: u64) -> TableFile<F> {
        let allowance = match bytes_per_seek {
            0 => i64::MAX,
            bytes => i64::try_from(meta.size / bytes).unwrap_or(i64::MAX).max(SEEK_ALLOWANCE_MIN),
        };
        TableFile { meta, table, seek_allowance: AtomicI64::new(allowance) }
    }

    /// Charges one seek that had to read this table next to another; whether this one spent
    /// the last of its allowance (so exactly one caller asks for the compaction).
    pub fn charge_seek(&self) -> bool {
        self.seek_allowance.fetch_sub(1, Ordering::Relaxed) == 1
    }

    /// Whether reads have spent this table's allowance.
    pub fn seeks_spent(&self) -> bool {
        self.seek_allowance.load(Ordering::Relaxed) <= 0
    }

    /// The smallest user key.
    pub fn smallest_user(&self) -> &[u8] {
        user_key(&self.meta.smallest)
    }

    /// The largest user key.
    pub fn largest_user(&self) -> &[u8] {
        user_key(&self.meta.largest)
    }

    /// Whether the table's user keys meet `[low, high]`.
    pub fn overlaps(&self, low: &[u8], high: &[u8]) -> bool {
        self.smallest_user() <= high && self.largest_user() >= low
    }
}

/// The tables of every level.
#[derive(Debug)]
pub struct Version<F: File> {
    /// `levels[0]` newest first; deeper levels sorted by smallest key.
    pub levels: Vec<Vec<Arc<TableFile<F>>>>,
}

impl<F: File> Clone for Version<F> {
    fn clone(&self) -> Self {
        Version { levels: self.levels.clone() }
    }
}

impl<F: File> Version<F> {
    /// An empty version with `level_count` levels.
    pub fn new(level_count: usize) -> Version<F> {
        Version { levels: vec![Vec::new(); level_count] }
    }

    /// Total bytes of the tables in `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|file| file.meta.size).sum()
    }

    /// Every table's manifest entry.
    pub fn metas(&self) -> Vec<TableMeta> {
        self.levels.iter().flatten().map(|file| file.meta.clone()).collect()
    }

    /// Tables of `level` overlapping user keys `[low, high]`.
    pub fn overlapping(&self, level: usize, low: &[u8], high: &[u8]) -> Vec<Arc<TableFile<F>>> {
        self.levels[level].iter().filter(|file| file.overlaps(low, high)).cloned().collect()
    }

    /// Adds `file` to its level, keeping the level's order.
    pub fn add(&mut self, file: Arc<TableFile<F>>) {
        let level = usize::from(file.meta.level);
        if level == 0 {
            let position =
                self.levels[0].partition_point(|other| other.meta.number > file.meta.number);
            self.levels[0].insert(position, file);
        } else {
            let files = &mut self.levels[level];
            let position =
                files.partition_point(|other| other.smallest_user() < file.smallest_user());
            files.insert(position, file);
            assert!(level_is_disjoint(files), "tables of level {level} overlap");
        }
    }

    /// Removes the table numbered `number` from `level`.
    pub fn remove(&mut self, level: usize, number: u64) {
        let before = self.levels[level].len();
        self.levels[level].retain(|file| file.meta.number != number);
        assert_eq!(self.levels[level].len() + 1, before, "table {number} not in level {level}");
    }

    /// The newest version of `key` at or below `sequence`, searching level by level.
    pub async fn get(
        &self,
        key: &[u8],
        hash: u64,
        sequence: u64,
    ) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        // `compare_user` rather than slice comparisons: this runs on every lookup.
        let within = |file: &TableFile<F>| {
            compare_user(file.smallest_user(), key).is_le()
                && compare_user(file.largest_user(), key).is_ge()
        };
        for file in &self.levels[0] {
            if within(file)
                && let Some(found) = file.table.get(key, hash, sequence).await?
            {
                return Ok(Some(found));
            }
        }
        for files in &self.levels[1..] {
            let index =
                files.partition_point(|file| compare_user(file.largest_user(), key).is_lt());
            if let Some(file) = files.get(index).filter(|file| within(file))
                && let Some(found) = file.table.get(key, hash, sequence).await?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// Whether consecutive tables of a sorted level are disjoint.
pub fn level_is_disjoint<F: File>(files: &[Arc<TableFile<F>>]) -> bool {
    files.windows(2).all(|pair| pair[0].largest_user() < pair[1].smallest_user())
}
