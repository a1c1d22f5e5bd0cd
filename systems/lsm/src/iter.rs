//! Iterators: a merge of the memtables and tables that yields each user key once, newest
//! version at the read's sequence number, in key order forward or backward.
//!
//! Each source yields internal entries in its direction; the merge takes the next user key over
//! all sources, consumes every version of it from every source, keeps the newest one at or
//! below the read sequence, and skips the key if that version is a tombstone.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use sim::File;

use crate::error::Result;
use crate::key::{Entry, SEQUENCE_MAX};
use crate::memtable::Memtable;
use crate::table::TableCursor;
use crate::version::TableFile;

/// Memtable entries copied out per refill.
const MEMTABLE_CHUNK_COUNT: usize = 128;
/// Entries copied out by the first refill: a short scan (a seek and a few steps) copies little.
const MEMTABLE_FIRST_CHUNK_COUNT: usize = 16;

/// Most pairs `collect_max` reserves room for up front.
const COLLECT_CAPACITY_MAX: usize = 1024;

/// One memtable, read in bounded chunks so no lock is held across an await.
struct MemSource {
    memtable: Arc<Memtable>,
    forward: bool,
    buffer: VecDeque<Entry>,
    resume: Bound<(Vec<u8>, u64)>,
    exhausted: bool,
    // Entries the next refill copies out.
    chunk_count: usize,
}

impl MemSource {
    fn new(memtable: Arc<Memtable>, forward: bool, start: Bound<&[u8]>) -> MemSource {
        let resume = match (start, forward) {
            (Bound::Unbounded, _) => Bound::Unbounded,
            (Bound::Included(key), true) => Bound::Included((key.to_vec(), SEQUENCE_MAX)),
            (Bound::Excluded(key), true) => Bound::Excluded((key.to_vec(), 0)),
            (Bound::Included(key), false) => Bound::Included((key.to_vec(), 0)),
            (Bound::Excluded(key), false) => Bound::Excluded((key.to_vec(), SEQUENCE_MAX)),
        };
        let mut source = MemSource {
            memtable,
            forward,
            buffer: VecDeque::new(),
            resume,
            exhausted: false,
            chunk_count: MEMTABLE_FIRST_CHUNK_COUNT,
        };
        source.refill();
        source
    }

    fn refill(&mut self) {
        if self.exhausted || !self.buffer.is_empty() {
            return;
        }
        let chunk = if self.forward {
            self.memtable.chunk_forward(&self.resume, self.chunk_count)
        } else {
            self.memtable.chunk_reverse(&self.resume, self.chunk_count)
        };
        if chunk.len() < self.chunk_count {
            self.exhausted = true;
        }
        self.chunk_count = MEMTABLE_CHUNK_COUNT;
        if let Some(last) = chunk.last() {
            self.resume = Bound::Excluded((last.key.clone(), last.sequence));
        }
        self.buffer.extend(chunk);
    }
}

/// Tables of one sorted level, opened one after another.
struct LevelSource<F: File> {
    files: Vec<Arc<TableFile<F>>>,
    next_file: usize,
    cursor: Option<TableCursor<F>>,
    forward: bool,
}

impl<F: File> LevelSource<F> {
    /// Opens the tables from `next_file` on until one has an entry inside `start`. Only the
    /// first table opened can hold keys outside `start` (the level is sorted, the tables
    /// wholly before `start` were skipped, and no user key spans two tables of a level:
    /// compaction cuts its outputs only between user keys), so the ones after it open at
    /// their first entry.
    async fn open_next(&mut self, mut start: Bound<&[u8]>) -> Result<()> {
        while self.cursor.as_ref().is_none_or(|cursor| cursor.peek().is_none()) {
            let Some(file) = self.files.get(self.next_file) else {
                self.cursor = None;
                return Ok(());
            };
            self.next_file += 1;
            let table = Arc::clone(&file.table);
            self.cursor = Some(TableCursor::new(table, self.forward, start).await?);
            start = Bound::Unbounded;
        }
        Ok(())
    }
}

/// Whether every key of `file` lies before `start` in the walk's direction (so a walk from
/// `start` skips the file without opening it).
pub(crate) fn before_start<F: File>(
    file: &TableFile<F>,
    forward: bool,
    start: &Bound<Vec<u8>>,
) -> bool {
    match (start, forward) {
        (Bound::Unbounded, _) => false,
        (Bound::Included(key), true) => file.largest_user() < key.as_slice(),
        (Bound::Excluded(key), true) => file.largest_user() <= key.as_slice(),
        (Bound::Included(key), false) => file.smallest_user() > key.as_slice(),
        (Bound::Excluded(key), false) => file.smallest_user() >= key.as_slice(),
    }
}

fn as_ref_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key),
        Bound::Excluded(key) => Bound::Excluded(key),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// One input of the merge.
enum Source<F: File> {
    Mem(MemSource),
    Level(LevelSource<F>),
}

impl<F: File> Source<F> {
    fn peek(&self) -> Option<&Entry> {
        match self {
            Source::Mem(source) => source.buffer.front(),
            Source::Level(source) => source.cursor.as_ref().and_then(TableCursor::peek),
        }
    }

    async fn advance(&mut self) -> Result<()> {
        match self {
            Source::Mem(source) => {
                source.buffer.pop_front();
                source.refill();
                Ok(())
            }
            Source::Level(source) => {
                if let Some(cursor) = source.cursor.as_mut() {
                    cursor.advance().await?;
                }
                source.open_next(Bound::Unbounded).await
            }
        }
    }
}

/// What an iterator reads: the memtables (newest first) and tables of one moment.
pub(crate) struct ReadView<F: File> {
    pub memtables: Vec<Arc<Memtable>>,
    /// Level 0 tables, each alone; then each deeper level as one sorted run.
    pub runs: Vec<Vec<Arc<TableFile<F>>>>,
}

/// An ordered iterator over the live keys of a range at one sequence number.
pub struct Iter<F: File> {
    sources: Vec<Source<F>>,
    forward: bool,
    sequence: u64,
    // The bound the walk ends at (upper when forward, lower when backward).
    end: Bound<Vec<u8>>,
    done: bool,
}

impl<F: File> std::fmt::Debug for Iter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter")
            .field("forward", &self.forward)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl<F: File> Iter<F> {
    pub(crate) async fn new(
        view: ReadView<F>,
        sequence: u64,
        forward: bool,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> Result<Iter<F>> {
        let (start, end) = if forward { range } else { (range.1, range.0) };
        let mut sources = Vec::with_capacity(view.memtables.len() + view.runs.len());
        for memtable in view.memtables {
            sources.push(Source::Mem(MemSource::new(memtable, forward, as_ref_bound(&start))));
        }
        for mut files in view.runs {
            if !forward {
                files.reverse();
            }
            let next_file = files.partition_point(|file| before_start(file, forward, &start));
            let mut level = LevelSource { files, next_file, cursor: None, forward };
            level.open_next(as_ref_bound(&start)).await?;
            sources.push(Source::Level(level));
        }
        Ok(Iter { sources, forward, sequence, end, done: false })
    }

    /// The next (key, value), `None` at the end. After an error the iterator is done.
    pub async fn next(&mut self) -> Option<Result<(Vec<u8>, Vec<u8>)>> {
        match self.step().await {
            Ok(item) => item.map(Ok),
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }

    /// Collects up to `count_max` remaining pairs.
    pub async fn collect_max(&mut self, count_max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::with_capacity(count_max.min(COLLECT_CAPACITY_MAX));
        while out.len() < count_max {
            match self.next().await {
                Some(item) => out.push(item?),
                None => break,
            }
        }
        Ok(out)
    }

    async fn step(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        while !self.done {
            let Some(key) = self.next_key() else {
                self.done = true;
                break;
            };
            if !self.within_end(&key) {
                self.done = true;
                break;
            }
            let mut best: Option<(u64, Option<Vec<u8>>)> = None;
            for source in &mut self.sources {
                while let Some(entry) = source.peek().filter(|entry| entry.key == key) {
                    let newer =
                        best.as_ref().is_none_or(|(sequence, _)| entry.sequence > *sequence);
                    if entry.sequence <= self.sequence && newer {
                        best = Some((entry.sequence, entry.value.clone()));
                    }
                    source.advance().await?;
                }
            }
            if let Some((_, Some(value))) = best {
                return Ok(Some((key, value)));
            }
        }
        Ok(None)
    }

    fn next_key(&self) -> Option<Vec<u8>> {
        let keys = self.sources.iter().filter_map(|source| source.peek().map(|entry| &entry.key));
        let key = if self.forward { keys.min() } else { keys.max() };
        key.cloned()
    }

    fn within_end(&self, key: &[u8]) -> bool {
        match (&self.end, self.forward) {
            (Bound::Unbounded, _) => true,
            (Bound::Included(limit), true) => key <= limit.as_slice(),
            (Bound::Excluded(limit), true) => key < limit.as_slice(),
            (Bound::Included(limit), false) => key >= limit.as_slice(),
            (Bound::Excluded(limit), false) => key > limit.as_slice(),
        }
    }
}
