//! Background work: flushing frozen memtables to level-0 tables, leveled compaction, manifest
//! writes and deleting tables no reader holds any more.
//!
//! Every change of the version happens under the `work` lock in four steps: write and sync the
//! new tables (and their directory entries), write the new manifest atomically, install the new
//! version in memory, then delete what the new manifest no longer needs. A crash between any two
//! steps leaves the old manifest in force and at worst orphan files, which open deletes.

use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use sim::{Env, OpenOptions};

use crate::activity::{self, Work};
use crate::db::{Inner, join, lock, table_name};
use crate::error::{Error, Result};
use crate::key::Entry;
use crate::manifest::{ManifestState, TableMeta};
use crate::memtable::Memtable;
use crate::options::PlantedBug;
use crate::table::{Table, TableCursor, TableWriter};
use crate::version::{TableFile, Version};

/// Frozen memtables a user flush may find before its own (writers freeze at most
/// `Options::immutable_memtable_count_max` ahead of it before they stall; this bounds it
/// loosely, as an assertion).
const FLUSH_WAIT_MEMTABLES_MAX: usize = 1 << 10;
/// Units of work (one flush or one compaction) per doorbell ring before yielding.
const WORK_ROUNDS_MAX: usize = 16;
/// The manifest's file name.
pub const MANIFEST_NAME: &str = "MANIFEST";
/// The manifest's temporary name while it is written.
pub const MANIFEST_TEMP_NAME: &str = "MANIFEST.tmp";

/// The background task: runs work whenever the doorbell rings, until the store is dropped or
/// closed (the doorbell's sender goes away).
pub(crate) async fn background_loop<E: Env>(
    inner: Weak<Inner<E>>,
    mut doorbell: futures::channel::mpsc::Receiver<()>,
) {
    while doorbell.next().await.is_some() {
        let Some(inner) = inner.upgrade() else { return };
        inner.background_work().await;
    }
}

/// Counts one waiter while alive, so a dropped (cancelled) wait is uncounted too.
struct Waiting<'a> {
    count: &'a std::sync::atomic::AtomicUsize,
}

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting { count }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let before = self.count.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "more waiters left than came");
    }
}

/// A compaction: inputs from `level` and `level + 1`, output to `level + 1`.
struct Compaction<F: sim::File> {
    level: usize,
    inputs: Vec<Arc<TableFile<F>>>,
    next_inputs: Vec<Arc<TableFile<F>>>,
}

impl<E: Env> Inner<E> {
    async fn background_work(&self) {
        for _ in 0..WORK_ROUNDS_MAX {
            // Giving way to a user flush changes nothing: no notification (stalled writers
            // would only ring again at once, and spin while the user's work waits on the disk).
            if self.user_work_waiting.load(Ordering::Acquire) > 0 {
                return;
            }
            let result = self.work_once().await;
            self.changed.notify();
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.poison(&error);
                    return;
                }
            }
        }
        self.ring();
    }

    /// One flush or compaction; whether there was anything to do.
    async fn work_once(&self) -> Result<bool> {
        {
            let state = lock(&self.state);
            if state.closed || state.poisoned.is_some() {
                return Ok(false);
            }
        }
        // Simulates a slow background round (a stalled disk, a descheduled thread) holding
        // `work` while a user flush waits for it.
        if self.env.buggify("lsm.background.slow_round") {
            self.env.sleep(std::time::Duration::from_millis(5)).await;
        }
        let _work = self.work.lock().await;
        let did = if self.flush_oldest().await? {
            true
        } else if let Some(compaction) = self.pick_compaction() {
            self.run_compaction(compaction).await?;
            true
        } else {
            false
        };
        self.delete_obsolete_tables().await;
        Ok(did)
    }

    /// Takes `work` for a user flush or compaction, ahead of the background task.
    async fn lock_work_for_user(&self) -> futures::lock::MutexGuard<'_, ()> {
        if self.options.planted(PlantedBug::FlushYieldsToWriters) {
            return self.work.lock().await;
        }
        // A user flush or compaction is waiting: the background task gives way (this rings
        // when it is done). Taking `work` again at once would win the race every time.
        let _waiting = Waiting::new(&self.user_work_waiting);
        self.work.lock().await
    }

    /// Flushes the frozen memtables of logs numbered below `below` (every one if `None`;
    /// under load new ones keep coming, so a bounded flush names its bound).
    pub(crate) async fn flush_immutables(&self, below: Option<u64>) -> Result<()> {
        let _work = self.lock_work_for_user().await;
        let flushed = async {
            let mut flushed_count = 0usize;
            while self.oldest_immutable_below(below) && self.flush_oldest().await? {
                flushed_count += 1;
                // Bounded: a bound admits only memtables frozen before the request.
                assert!(below.is_none() || flushed_count <= FLUSH_WAIT_MEMTABLES_MAX);
            }
            Ok(())
        }
        .await;
        self.changed.notify();
        self.ring();
        if let Err(error) = &flushed {
            self.poison(error);
        }
        flushed
    }

    /// Whether there is a frozen memtable whose log is numbered below `below` (any, if `None`).
    fn oldest_immutable_below(&self, below: Option<u64>) -> bool {
        let state = lock(&self.state);
        let Some(oldest) = state.imm.first() else { return false };
        below.is_none_or(|below| oldest.wal_number() < below)
    }

    /// Flushes the oldest frozen memtable, if any. Caller holds `work`.
    async fn flush_oldest(&self) -> Result<bool> {
        let _flush = activity::begin(self.options.activity.as_ref(), Work::Flush);
        let (memtable, number) = {
            let mut state = lock(&self.state);
            let Some(memtable) = state.imm.first().cloned() else { return Ok(false) };
            state.next_file_number += 1;
            (memtable, state.next_file_number - 1)
        };
        let mut version = (*lock(&self.state).version).clone();
        if !memtable.is_empty() {
            let mut writer = self.create_table(number, true).await?;
            write_memtable(&memtable, &mut writer).await?;
            let file = self.install_table(number, 0, writer).await?;
            self.counters.flush_bytes.fetch_add(file.meta.size, Ordering::Relaxed);
            version.add(file);
        }
        let log_number = {
            let state = lock(&self.state);
            state.imm.get(1).unwrap_or(&state.mem).wal_number()
        };
        self.write_manifest(&version, log_number).await?;
        {
            let mut state = lock(&self.state);
            state.version = Arc::new(version);
            let removed = state.imm.remove(0);
            assert!(Arc::ptr_eq(&removed, &memtable));
        }
        self.counters.flush_count.fetch_add(1, Ordering::Relaxed);
        self.delete_logs_before(log_number).await;
        Ok(true)
    }

    /// Creates table file `number` and a writer streaming a new table (of level 0 if `level0`)
    /// into it.
    async fn create_table(&self, number: u64, level0: bool) -> Result<TableWriter<E::File>> {
        let path = join(&self.dir, &table_name(number));
        let file = self.env.open(&path, OpenOptions::CREATE_NEW).await?;
        let options = self.options.table_options(level0, self.sealer.as_ref());
        Ok(TableWriter::new(file, number, options))
    }

    /// Finishes and syncs table `number` and its directory entry, and opens it.
    async fn install_table(
        &self,
        number: u64,
        level: u8,
        writer: TableWriter<E::File>,
    ) -> Result<Arc<TableFile<E::File>>> {
        let (file, size, summary) = writer.finish().await?;
        self.env.sync_dir(&self.dir).await?;
        let name = table_name(number);
        let sealer = self.sealer.clone();
        let table = Table::open(file, number, name, Arc::clone(&self.cache), sealer).await?;
        let meta =
            TableMeta { level, number, size, smallest: summary.smallest, largest: summary.largest };
        let bytes_per_seek = self.options.seek_compaction_bytes;
        Ok(Arc::new(TableFile::new(meta, Arc::new(table), bytes_per_seek)))
    }

    /// Writes the manifest for `version` atomically (temp file, sync, rename, directory sync).
    pub(crate) async fn write_manifest(
        &self,
        version: &Version<E::File>,
        log_number: u64,
    ) -> Result<()> {
        let _manifest = activity::begin(self.options.activity.as_ref(), Work::Manifest);
        let state = ManifestState {
            next_file_number: lock(&self.state).next_file_number,
            last_sequence: self.visible_sequence.load(Ordering::Acquire),
            log_number,
            tables: version.metas(),
        };
        write_manifest_file(&self.env, &self.dir, &state, self.sealer.as_ref()).await
    }

    async fn delete_logs_before(&self, log_number: u64) {
        let Ok(names) = self.env.list(&self.dir).await else { return };
        for name in names {
            if let Some(number) = parse_number(&name, ".log")
                && number < log_number
            {
                let _ = self.env.remove(&join(&self.dir, &name)).await;
            }
        }
    }

    /// Deletes dropped tables that no reader holds any more.
    pub(crate) async fn delete_obsolete_tables(&self) {
        let unused: Vec<u64> = {
            let mut state = lock(&self.state);
            let mut unused = Vec::new();
            state.obsolete.retain(|table| {
                let free = Arc::strong_count(table) == 1;
                if free {
                    unused.push(table.number());
                }
                !free
            });
            unused
        };
        for number in unused {
            let _ = self.env.remove(&join(&self.dir, &table_name(number))).await;
        }
    }

    /// The smallest sequence any snapshot (or, without snapshots, any new read) may use.
    fn smallest_snapshot(&self) -> u64 {
        let snapshots = lock(&self.snapshots);
        let visible = self.visible_sequence.load(Ordering::Acquire);
        snapshots.keys().next().copied().unwrap_or(visible)
    }

    fn pick_compaction(&self) -> Option<Compaction<E::File>> {
        let mut state = lock(&self.state);
        let version = Arc::clone(&state.version);
        if version.levels[0].len() >= self.options.level0_compaction_trigger {
            let inputs = version.levels[0].clone();
            return Some(self.with_next_inputs(&version, 0, inputs));
        }
        let last = version.levels.len() - 1;
        for level in 1..last {
            if version.level_bytes(level) <= self.options.level_bytes_max(level) {
                continue;
            }
            let files = &version.levels[level];
            let cursor = &state.compact_cursor[level];
            let file = files
                .iter()
                .find(|file| file.largest_user() > cursor.as_slice())
                .unwrap_or(&files[0]);
            state.compact_cursor[level] = file.largest_user().to_vec();
            let inputs = vec![Arc::clone(file)];
            return Some(self.with_next_inputs(&version, level, inputs));
        }
        if version.levels[0].iter().any(|file| file.seeks_spent()) {
            // Read-triggered: seeks keep paying for level-0 tables that writes alone would
            // leave there until the trigger (see `Options::seek_compaction_bytes`).
            self.counters.seek_compaction_count.fetch_add(1, Ordering::Relaxed);
            let inputs = version.levels[0].clone();
            return Some(self.with_next_inputs(&version, 0, inputs));
        }
        None
    }

    fn with_next_inputs(
        &self,
        version: &Version<E::File>,
        level: usize,
        inputs: Vec<Arc<TableFile<E::File>>>,
    ) -> Compaction<E::File> {
        let (low, high) = key_span(&inputs);
        let next_inputs = version.overlapping(level + 1, &low, &high);
        Compaction { level, inputs, next_inputs }
    }

    /// Compacts every table overlapping `range` down to the deepest non-empty level.
    pub(crate) async fn compact_range(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> Result<()> {
        let _work = self.lock_work_for_user().await;
        let result = self.compact_range_locked(&range).await;
        self.changed.notify();
        self.ring();
        if let Err(error) = &result {
            self.poison(error);
        }
        self.delete_obsolete_tables().await;
        result
    }

    async fn compact_range_locked(&self, range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Result<()> {
        let version = Arc::clone(&lock(&self.state).version);
        let deepest = (1..version.levels.len()).rev().find(|&l| !version.levels[l].is_empty());
        let target = deepest.unwrap_or(1);
        for level in 0..target {
            let version = Arc::clone(&lock(&self.state).version);
            let mut inputs: Vec<_> = version.levels[level]
                .iter()
                .filter(|file| in_range(file, range))
                .cloned()
                .collect();
            if inputs.is_empty() {
                continue;
            }
            if level == 0 {
                // Level-0 tables overlap: leaving an older one behind while a newer one moves
                // down would put newer data below older data.
                inputs = version.levels[0].clone();
            }
            let compaction = self.with_next_inputs(&version, level, inputs);
            self.run_compaction(compaction).await?;
        }
        Ok(())
    }

    /// Merges the inputs into new tables at `level + 1` and installs the result. Caller holds
    /// `work`.
    async fn run_compaction(&self, compaction: Compaction<E::File>) -> Result<()> {
        let _compaction = activity::begin(self.options.activity.as_ref(), Work::Compaction);
        let output_level = compaction.level + 1;
        let mut version = (*lock(&self.state).version).clone();
        let single = compaction.inputs.len() == 1 && compaction.next_inputs.is_empty();
        let outputs = if single {
            // A trivial move: the table keeps its bytes and changes level.
            let file = &compaction.inputs[0];
            let meta = TableMeta { level: output_level as u8, ..file.meta.clone() };
            let table = Arc::clone(&file.table);
            vec![Arc::new(TableFile::new(meta, table, self.options.seek_compaction_bytes))]
        } else {
            self.merge_tables(&compaction, &version, output_level).await?
        };
        let mut dropped = Vec::new();
        for (level, files) in
            [(compaction.level, &compaction.inputs), (output_level, &compaction.next_inputs)]
        {
            for file in files {
                version.remove(level, file.meta.number);
                dropped.push(Arc::clone(&file.table));
            }
        }
        for output in &outputs {
            version.add(Arc::clone(output));
        }
        let log_number = {
            let state = lock(&self.state);
            state.imm.first().unwrap_or(&state.mem).wal_number()
        };
        self.write_manifest(&version, log_number).await?;
        let mut state = lock(&self.state);
        state.version = Arc::new(version);
        let kept: Vec<u64> = outputs.iter().map(|file| file.meta.number).collect();
        state.obsolete.extend(dropped.into_iter().filter(|table| !kept.contains(&table.number())));
        self.counters.compaction_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Merges the inputs, dropping shadowed versions and (at the bottom) tombstones.
    async fn merge_tables(
        &self,
        compaction: &Compaction<E::File>,
        version: &Version<E::File>,
        output_level: usize,
    ) -> Result<Vec<Arc<TableFile<E::File>>>> {
        let all: Vec<_> =
            compaction.inputs.iter().chain(&compaction.next_inputs).cloned().collect();
        let (low, high) = key_span(&all);
        let bottom = (output_level + 1..version.levels.len())
            .all(|level| version.overlapping(level, &low, &high).is_empty());
        let smallest_snapshot = self.smallest_snapshot();
        let mut cursors = Vec::new();
        for file in &all {
            let table = Arc::clone(&file.table);
            cursors.push(TableCursor::for_compaction(table).await?);
        }
        let mut outputs = Vec::new();
        let mut builder: Option<(u64, TableWriter<E::File>)> = None;
        let mut current_key: Option<Vec<u8>> = None;
        let mut last_sequence_for_key = u64::MAX;
        while let Some(index) = smallest_cursor(&cursors) {
            let entry = cursors[index].peek().expect("chosen cursor has an entry").clone();
            cursors[index].advance().await?;
            let new_key = current_key.as_deref() != Some(&entry.key[..]);
            if new_key {
                let target = self.options.table_bytes_target;
                if let Some(full) = builder.take_if(|(_, b)| b.size_estimate() as u64 >= target) {
                    outputs.push(self.finish_output(full, output_level).await?);
                }
                current_key = Some(entry.key.clone());
                last_sequence_for_key = u64::MAX;
            }
            let shadowed = last_sequence_for_key <= smallest_snapshot;
            let dead_tombstone =
                entry.value.is_none() && entry.sequence <= smallest_snapshot && bottom;
            last_sequence_for_key = entry.sequence;
            if shadowed || dead_tombstone {
                continue;
            }
            if builder.is_none() {
                builder = Some(self.new_output().await?);
            }
            builder.as_mut().expect("just set").1.add(&entry).await?;
        }
        if let Some(last) = builder {
            outputs.push(self.finish_output(last, output_level).await?);
        }
        Ok(outputs)
    }

    /// A new compaction output table: its number and writer.
    async fn new_output(&self) -> Result<(u64, TableWriter<E::File>)> {
        let number = {
            let mut state = lock(&self.state);
            state.next_file_number += 1;
            state.next_file_number - 1
        };
        Ok((number, self.create_table(number, false).await?))
    }

    async fn finish_output(
        &self,
        (number, writer): (u64, TableWriter<E::File>),
        level: usize,
    ) -> Result<Arc<TableFile<E::File>>> {
        let file = self.install_table(number, level as u8, writer).await?;
        self.counters.compaction_bytes.fetch_add(file.meta.size, Ordering::Relaxed);
        Ok(file)
    }
}

/// Memtable entries copied out per step of a flush (bounds the extra memory a flush takes).
const FLUSH_CHUNK_COUNT: usize = 1024;

/// Streams every entry of a frozen memtable into `writer`, copied out in bounded chunks so
/// readers of the memtable are never locked out for long.
async fn write_memtable<F: sim::File>(
    memtable: &Memtable,
    writer: &mut TableWriter<F>,
) -> Result<()> {
    let mut resume = Bound::Unbounded;
    loop {
        let chunk = memtable.chunk_forward(&resume, FLUSH_CHUNK_COUNT);
        for entry in &chunk {
            writer.add(entry).await?;
        }
        match chunk.last() {
            Some(last) if chunk.len() == FLUSH_CHUNK_COUNT => {
                resume = Bound::Excluded((last.key.clone(), last.sequence));
            }
            _ => return Ok(()),
        }
    }
}

/// The cursor whose entry comes first in internal order (user key, then newest first).
fn smallest_cursor<F: sim::File>(cursors: &[TableCursor<F>]) -> Option<usize> {
    let mut best: Option<(usize, &Entry)> = None;
    for (index, cursor) in cursors.iter().enumerate() {
        let Some(entry) = cursor.peek() else { continue };
        let better = best.is_none_or(|(_, current)| {
            (&entry.key, std::cmp::Reverse(entry.sequence))
                < (&current.key, std::cmp::Reverse(current.sequence))
        });
        if better {
            best = Some((index, entry));
        }
    }
    best.map(|(index, _)| index)
}

/// The smallest and largest user key over `files`.
fn key_span<F: sim::File>(files: &[Arc<TableFile<F>>]) -> (Vec<u8>, Vec<u8>) {
    let low = files.iter().map(|file| file.smallest_user()).min().unwrap_or_default();
    let high = files.iter().map(|file| file.largest_user()).max().unwrap_or_default();
    (low.to_vec(), high.to_vec())
}

fn in_range<F: sim::File>(file: &TableFile<F>, range: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> bool {
    let above_start = match &range.0 {
        Bound::Unbounded => true,
        Bound::Included(start) => file.largest_user() >= start.as_slice(),
        Bound::Excluded(start) => file.largest_user() > start.as_slice(),
    };
    let below_end = match &range.1 {
        Bound::Unbounded => true,
        Bound::Included(end) => file.smallest_user() <= end.as_slice(),
        Bound::Excluded(end) => file.smallest_user() < end.as_slice(),
    };
    above_start && below_end
}

/// Writes all of `bytes` at offset 0 and syncs.
async fn file_write_all<F: sim::File>(file: &F, bytes: &[u8]) -> Result<()> {
    file.write_at(0, bytes).await?;
    file.sync().await?;
    Ok(())
}

/// Writes `state` as the manifest of `dir` atomically, its body sealed by `sealer` if given.
pub(crate) async fn write_manifest_file<E: Env>(
    env: &E,
    dir: &str,
    state: &ManifestState,
    sealer: Option<&crate::crypto::Sealer>,
) -> Result<()> {
    let temp = join(dir, MANIFEST_TEMP_NAME);
    let file = env.open(&temp, OpenOptions::TRUNCATE).await?;
    file_write_all(&file, &state.encode_with(sealer)).await?;
    drop(file);
    env.rename(&temp, &join(dir, MANIFEST_NAME)).await?;
    env.sync_dir(dir).await.map_err(Error::Io)
}

/// The number of a file named `NNNNNN<suffix>`.
pub(crate) fn parse_number(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
