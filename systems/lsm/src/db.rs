//! `Db`: the store's handle. Writes go through the write-ahead log with group commit; reads
//! merge the memtables and the current version's tables.
//!
//! Concurrency: `state` (a short std mutex, never held across an await) holds the memtables and
//! the current version; the `wal` async mutex is held by the one group-commit leader at a time;
//! the `work` async mutex serialises flushes, compactions and manifest writes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::oneshot;
use futures::future::Either;
use sim::{Env, File, OpenOptions, TaskHandle};

use crate::activity::{self, Work};
use crate::batch::WriteBatch;
use crate::bloom;
use crate::cache::BlockCache;
use crate::crypto::Sealer;
use crate::error::{Error, Result};
use crate::iter::{Iter, ReadView, before_start};
use crate::memtable::Memtable;
use crate::options::{Durability, Options, PlantedBug};
use crate::signal::Signal;
use crate::table::Table;
use crate::version::{TableFile, Version};
use crate::wal;

/// Encoded bytes of batches one group commit may carry.
const GROUP_BYTES_MAX: usize = 4 << 20;

/// The write-ahead log being appended to.
pub(crate) struct WalWriter<F: File> {
    pub file: F,
    /// The log's file number (every record names it).
    pub number: u64,
    /// Scratch space for one group's records, reused across groups.
    pub buffer: Vec<u8>,
    pub len: u64,
    pub synced_len: u64,
    pub last_sequence: u64,
}

impl<F: File> WalWriter<F> {
    /// A writer appending to the empty log `file` numbered `number`.
    pub fn new(file: F, number: u64, buffer: Vec<u8>, last_sequence: u64) -> WalWriter<F> {
        WalWriter { file, number, buffer, len: 0, synced_len: 0, last_sequence }
    }

    /// Where the next appended buffer lands.
    fn place(&self) -> wal::Place {
        wal::Place { file_number: self.number, buffer_offset: self.len }
    }

    /// Appends `bytes`; the log's end must be where this writer left it (a log whose end moved
    /// was written by something else or lost a write: its bytes can no longer be trusted).
    async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let offset = self.file.append(bytes).await?;
        if offset != self.len {
            let reason = format!("log end at {offset}, expected {}", self.len);
            return Err(Error::corruption(&wal_name(self.number), self.len, reason));
        }
        self.len += bytes.len() as u64;
        assert!(self.synced_len <= self.len);
        Ok(())
    }
}

/// The memtables (newest first), version and sequence number a read uses.
type MomentView<F> = (Vec<Arc<Memtable>>, Arc<Version<F>>, u64);

/// A write waiting for a group-commit leader.
struct PendingWrite {
    // Copied into the log and the memtable by the leader that commits it; freed by the writer
    // that made it, on its own thread.
    batch: WriteBatch,
    op_count: usize,
    payload_bytes: usize,
    durability: Durability,
    // A user flush's request to freeze the memtable, carried through the same queue as writes
    // so that it is served in order however many writers push (no batch, no log record).
    rotate: bool,
    // For a rotation request: the log number of the memtable it left current; every memtable
    // it froze, and every older one, is numbered below it.
    rotated_below: AtomicU64,
    result: Mutex<Option<Result<()>>>,
    // Fired by the leader that sets `result`, so a follower learns it without taking the log
    // lock (taking it one follower at a time would serialise them and defeat group commit).
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl PendingWrite {
    fn new(batch: WriteBatch, durability: Durability, rotate: bool) -> Arc<PendingWrite> {
        assert!(rotate == batch.is_empty(), "a rotation request carries no batch");
        Arc::new(PendingWrite {
            op_count: batch.len(),
            payload_bytes: batch.payload_bytes(),
            batch,
            durability,
            rotate,
            rotated_below: AtomicU64::new(0),
            result: Mutex::new(None),
            done: Mutex::new(None),
        })
    }

    fn finish(&self, result: Result<()>) {
        *lock(&self.result) = Some(result);
        if let Some(done) = lock(&self.done).take() {
            let _ = done.send(());
        }
    }
}

/// Mutable store state behind the short lock.
pub(crate) struct State<F: File> {
    pub mem: Arc<Memtable>,
    /// Frozen memtables, oldest first.
    pub imm: Vec<Arc<Memtable>>,
    pub version: Arc<Version<F>>,
    pub next_file_number: u64,
    pub poisoned: Option<String>,
    pub closed: bool,
    /// Tables dropped from the version; deleted once no reader holds them.
    pub obsolete: Vec<Arc<Table<F>>>,
    /// Per level, the largest user key of the last table compacted (round robin).
    pub compact_cursor: Vec<Vec<u8>>,
}

/// Counters of bytes moved, for write amplification.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub user_bytes: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub compaction_bytes: AtomicU64,
    pub compaction_count: AtomicU64,
    pub seek_compaction_count: AtomicU64,
    pub flush_count: AtomicU64,
    pub wal_sync_count: AtomicU64,
    pub wal_sync_nanos: AtomicU64,
    pub group_commit_count: AtomicU64,
    pub group_commit_write_count: AtomicU64,
    pub write_stall_count: AtomicU64,
    pub write_stall_nanos: AtomicU64,
}

/// A snapshot of the store's counters and shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Key and value bytes accepted by writes.
    pub user_bytes: u64,
    /// Bytes appended to write-ahead logs.
    pub wal_bytes: u64,
    /// Table bytes written by memtable flushes.
    pub flush_bytes: u64,
    /// Table bytes written by compactions.
    pub compaction_bytes: u64,
    /// Compactions run (trivial moves included).
    pub compaction_count: u64,
    /// Of those, level-0 compactions that reads triggered (`Options::seek_compaction_bytes`).
    pub seek_compaction_count: u64,
    /// Memtable flushes run.
    pub flush_count: u64,
    /// Write-ahead-log fsyncs of group commits.
    pub wal_sync_count: u64,
    /// Time spent in those fsyncs, in nanoseconds (of the `Env`'s clock).
    pub wal_sync_nanos: u64,
    /// Group commits that logged writes (one log append each).
    pub group_commit_count: u64,
    /// Writes (batches) those group commits carried: the mean group is this over the count.
    pub group_commit_write_count: u64,
    /// Times a group-commit leader had to wait for the store to get under its limits (too many
    /// level-0 tables, or too many memtables waiting for a flush).
    pub write_stall_count: u64,
    /// Time writes spent in those stalls, in nanoseconds (of the `Env`'s clock).
    pub write_stall_nanos: u64,
    /// Tables per level.
    pub level_table_counts: Vec<usize>,
    /// Bytes per level.
    pub level_bytes: Vec<u64>,
    /// Bytes in the block cache.
    pub block_cache_bytes: usize,
    /// Lookups of absent keys in live tables that their bloom filter rejected.
    pub bloom_negative_count: u64,
    /// Lookups of absent keys in live tables that their bloom filter let through.
    pub bloom_false_positive_count: u64,
}

impl Stats {
    /// (WAL + flush + compaction bytes) / user bytes; 0 before any write.
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes == 0 {
            return 0.0;
        }
        let written = self.wal_bytes + self.flush_bytes + self.compaction_bytes;
        written as f64 / self.user_bytes as f64
    }

    /// The measured bloom filter false-positive rate over lookups of absent keys in the live
    /// tables; 0 before any.
    pub fn bloom_false_positive_rate(&self) -> f64 {
        let probes = self.bloom_negative_count + self.bloom_false_positive_count;
        if probes == 0 {
            return 0.0;
        }
        self.bloom_false_positive_count as f64 / probes as f64
    }
}

pub(crate) struct Inner<E: Env> {
    pub env: E,
    pub dir: String,
    pub options: Options,
    pub cache: Arc<BlockCache>,
    /// The data key of an encrypted store (seals log records, table blocks and the manifest).
    pub sealer: Option<Sealer>,
    pub state: Mutex<State<E::File>>,
    pub wal: futures::lock::Mutex<Option<WalWriter<E::File>>>,
    queue: Mutex<VecDeque<Arc<PendingWrite>>>,
    pub work: futures::lock::Mutex<()>,
    // User flushes and compactions waiting for `work`; the background task gives way to them.
    pub user_work_waiting: std::sync::atomic::AtomicUsize,
    pub changed: Signal,
    pub visible_sequence: AtomicU64,
    pub doorbell: Mutex<Option<futures::channel::mpsc::Sender<()>>>,
    pub background: Mutex<Option<TaskHandle<()>>>,
    pub snapshots: Mutex<BTreeMap<u64, usize>>,
    pub counters: Counters,
    /// What `open` found (set once, before the store is shared).
    pub recovery: crate::recovery::RecoveryReport,
    // The directory's `LOCK` file, locked while this store is open (released by `close`).
    pub lock_file: Mutex<Option<E::File>>,
    gate: Mutex<Gate>,
    // Notified when the last running operation of a closing store ends.
    idle: Signal,
}

/// Which operations of the store run, and whether `close` has begun: `close` returns only once
/// none runs and none can start, so no work of a closed store outlives its directory lock.
#[derive(Debug, Default)]
struct Gate {
    closing: bool,
    // Invariant: counts the `Pass`es alive; never below zero, and never raised once closing.
    active_count: usize,
}

/// Admission of one operation of the store; it ends when the pass is dropped.
pub(crate) struct Pass<'a, E: Env> {
    inner: &'a Inner<E>,
}

impl<E: Env> Drop for Pass<'_, E> {
    fn drop(&mut self) {
        let mut gate = lock(&self.inner.gate);
        assert!(gate.active_count > 0, "a pass outlived the count of passes");
        gate.active_count -= 1;
        let idle = gate.closing && gate.active_count == 0;
        drop(gate);
        if idle {
            self.inner.idle.notify();
        }
    }
}

/// A crash-safe LSM-tree key-value store on an `Env` disk. Cheap to clone (a handle).
pub struct Db<E: Env> {
    pub(crate) inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for Db<E> {
    fn clone(&self) -> Self {
        Db { inner: Arc::clone(&self.inner) }
    }
}

impl<E: Env> std::fmt::Debug for Db<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

/// Locks a std mutex, taking the data of a poisoned one (a panic elsewhere already failed).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The path of `name` in `dir`.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

/// A write-ahead log's file name.
pub(crate) fn wal_name(number: u64) -> String {
    format!("{number:06}.log")
}

/// A table's file name.
pub(crate) fn table_name(number: u64) -> String {
    format!("{number:06}.sst")
}

fn owned_bounds<K: AsRef<[u8]>, R: RangeBounds<K>>(range: &R) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let owned = |key: &K| key.as_ref().to_vec();
    (range.start_bound().map(owned), range.end_bound().map(owned))
}

/// The range of keys starting with `prefix`.
fn prefix_bounds(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(upper));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}

impl<E: Env> Inner<E> {
    pub(crate) fn new(env: E, dir: String, options: Options, state: State<E::File>) -> Self {
        Inner {
            cache: Arc::new(BlockCache::new(options.block_cache_bytes)),
            env,
            dir,
            options,
            sealer: None,
            state: Mutex::new(state),
            wal: futures::lock::Mutex::new(None),
            queue: Mutex::new(VecDeque::new()),
            work: futures::lock::Mutex::new(()),
            user_work_waiting: std::sync::atomic::AtomicUsize::new(0),
            changed: Signal::default(),
            visible_sequence: AtomicU64::new(0),
            doorbell: Mutex::new(None),
            background: Mutex::new(None),
            snapshots: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            recovery: crate::recovery::RecoveryReport::default(),
            lock_file: Mutex::new(None),
            gate: Mutex::new(Gate::default()),
            idle: Signal::default(),
        }
    }

    /// Admits one operation, or `Closed` once `close` has begun.
    pub(crate) fn enter(&self) -> Result<Pass<'_, E>> {
        let mut gate = lock(&self.gate);
        if gate.closing {
            return Err(Error::Closed);
        }
        gate.active_count += 1;
        assert!(!gate.closing && gate.active_count > 0);
        Ok(Pass { inner: self })
    }

    /// Stops admitting operations; false if `close` had already begun.
    fn begin_closing(&self) -> bool {
        let mut gate = lock(&self.gate);
        !std::mem::replace(&mut gate.closing, true)
    }

    /// Waits until no admitted operation runs (`begin_closing` first, so none can start).
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.subscribe();
            {
                let gate = lock(&self.gate);
                assert!(gate.closing, "waiting for idle on an open store");
                if gate.active_count == 0 {
                    return;
                }
            }
            let _ = idle.await;
        }
    }

    /// Stops writes after a failure whose effect on disk is unknown.
    pub(crate) fn poison(&self, error: &Error) {
        let mut state = lock(&self.state);
        if state.poisoned.is_none() {
            state.poisoned = Some(error.to_string());
        }
        drop(state);
        self.changed.notify();
    }

    /// Wakes the background task.
    pub(crate) fn ring(&self) {
        if let Some(sender) = lock(&self.doorbell).as_mut() {
            let _ = sender.try_send(());
        }
    }

    /// The memtables (newest first), version and sequence (the latest unless given) of this
    /// moment. The latest sequence is read under the state lock, so a compaction installed
    /// after it was computed never dropped a version this read can see.
    fn read_view(&self, sequence: Option<u64>) -> MomentView<E::File> {
        let state = lock(&self.state);
        let sequence = sequence.unwrap_or_else(|| self.visible_sequence.load(Ordering::Acquire));
        let mut memtables = vec![Arc::clone(&state.mem)];
        memtables.extend(state.imm.iter().rev().cloned());
        (memtables, Arc::clone(&state.version), sequence)
    }

    pub(crate) async fn get_at(
        &self,
        key: &[u8],
        sequence: Option<u64>,
    ) -> Result<Option<Vec<u8>>> {
        let _pass = self.enter()?;
        let (memtables, version, sequence) = self.read_view(sequence);
        for memtable in &memtables {
            if let Some((_, value)) = memtable.get(key, sequence) {
                return Ok(value);
            }
        }
        let found = version.get(key, bloom::key_hash(key), sequence).await?;
        Ok(found.and_then(|(_, value)| value))
    }

    pub(crate) async fn iter_at(
        &self,
        sequence: Option<u64>,
        forward: bool,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    ) -> Result<Iter<E::File>> {
        let _pass = self.enter()?;
        let (memtables, version, sequence) = self.read_view(sequence);
        let (start, end) = if forward { (&range.0, &range.1) } else { (&range.1, &range.0) };
        self.charge_seek(&version, forward, start);
        // A table wholly before the start or past the end of the range holds nothing the
        // iterator can return: leave it out rather than seek into it (a narrow range, such
        // as an index lookup, then opens only the tables that overlap it).
        let overlaps = |file: &&Arc<TableFile<E::File>>| {
            !before_start(file, forward, start) && !before_start(file, !forward, end)
        };
        let mut runs: Vec<Vec<_>> =
            version.levels[0].iter().filter(overlaps).map(|file| vec![Arc::clone(file)]).collect();
        for files in &version.levels[1..] {
            let run: Vec<_> = files.iter().filter(overlaps).cloned().collect();
            if !run.is_empty() {
                runs.push(run);
            }
        }
        Iter::new(ReadView { memtables, runs }, sequence, forward, range).await
    }

    /// Charges the level-0 tables a seek from `start` opens, when it opens more than one
    /// table, and wakes the background task when one has spent its allowance.
    fn charge_seek(&self, version: &Version<E::File>, forward: bool, start: &Bound<Vec<u8>>) {
        let opened = |file: &&Arc<TableFile<E::File>>| !before_start(file, forward, start);
        let level0 = version.levels[0].iter().filter(opened).count();
        if level0 == 0 {
            return;
        }
        // A sorted level opens a table unless all of it lies before `start`: its last table
        // (first, walking backward) tells, without a walk over the level.
        let deeper_opens = |files: &Vec<Arc<TableFile<E::File>>>| {
            let edge = if forward { files.last() } else { files.first() };
            edge.is_some_and(|file| opened(&file))
        };
        if level0 < 2 && !version.levels[1..].iter().any(deeper_opens) {
            return;
        }
        let mut spent = false;
        for file in version.levels[0].iter().filter(opened) {
            spent |= file.charge_seek();
        }
        if spent {
            self.ring();
        }
    }

    fn take_result(pending: &PendingWrite) -> Option<Result<()>> {
        lock(&pending.result).take()
    }

    /// Writes `batch` through a group commit.
    async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let _pass = self.enter()?;
        batch.check().map_err(Error::InvalidArgument)?;
        if batch.is_empty() {
            return Ok(());
        }
        let payload_bytes = batch.payload_bytes() as u64;
        let pending = PendingWrite::new(batch, durability, false);
        let result = self.submit(&pending).await;
        if result.is_ok() {
            self.counters.user_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
        }
        result
    }

    /// Freezes the memtable (if it holds anything) in its turn among the queued writes;
    /// returns the log number every memtable to flush for the caller is below.
    pub(crate) async fn request_rotation(&self) -> Result<u64> {
        let pending = PendingWrite::new(WriteBatch::new(), Durability::Buffered, true);
        self.submit(&pending).await?;
        let below = pending.rotated_below.load(Ordering::Acquire);
        assert!(below > 0, "a served rotation request names its log");
        Ok(below)
    }

    /// Commits `pending` through a group commit, leading one if nobody does.
    async fn submit(&self, pending: &Arc<PendingWrite>) -> Result<()> {
        match self.wal.try_lock() {
            // Fast path: nobody leads; lead at once (no completion channel needed).
            Some(mut wal) => {
                lock(&self.queue).push_back(Arc::clone(pending));
                loop {
                    self.lead_group(&mut wal).await;
                    if let Some(result) = Inner::<E>::take_result(pending) {
                        break result;
                    }
                }
            }
            None => self.write_following(pending).await,
        }
    }

    /// Queues `pending` behind the current leader: either a leader commits it (and fires its
    /// completion channel), or this writer gets the log lock first and leads a group itself.
    async fn write_following(&self, pending: &Arc<PendingWrite>) -> Result<()> {
        let (done, mut finished) = oneshot::channel();
        *lock(&pending.done) = Some(done);
        lock(&self.queue).push_back(Arc::clone(pending));
        loop {
            let wal = match futures::future::select(&mut finished, self.wal.lock()).await {
                Either::Left(_) => None,
                Either::Right((wal, _)) => Some(wal),
            };
            if let Some(result) = Inner::<E>::take_result(pending) {
                return result;
            }
            match wal {
                Some(mut wal) => self.lead_group(&mut wal).await,
                None => unreachable!("a write is finished only after its result is set"),
            }
        }
    }

    /// Fails every queued write with `error`.
    fn fail_queue(&self, error: &Error) {
        let queued: Vec<_> = lock(&self.queue).drain(..).collect();
        for pending in queued {
            pending.finish(Err(error.duplicate()));
        }
    }

    /// As the group-commit leader: makes room, then logs and applies the queued writes.
    async fn lead_group(&self, wal: &mut Option<WalWriter<E::File>>) {
        let Some(writer) = wal.as_mut() else {
            self.fail_queue(&Error::Closed);
            return;
        };
        if let Err(error) = self.make_room(writer).await {
            self.fail_queue(&error);
            return;
        }
        let group = {
            let mut queue = lock(&self.queue);
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(pending) = queue.front() {
                if !group.is_empty() && bytes + pending.payload_bytes > GROUP_BYTES_MAX {
                    break;
                }
                bytes += pending.payload_bytes;
                group.push(queue.pop_front().expect("peeked"));
            }
            group
        };
        let result = self.commit_group(writer, &group).await;
        if let Err(error) = &result {
            self.poison(error);
        }
        let rotated = match &result {
            Ok(()) if group.iter().any(|pending| pending.rotate) => {
                self.rotate_for_flush(writer).await
            }
            _ => Ok(0),
        };
        for pending in &group {
            let outcome = match (&result, &rotated) {
                (Err(error), _) => Err(error.duplicate()),
                (Ok(()), _) if !pending.rotate => Ok(0),
                (Ok(()), Ok(below)) => Ok(*below),
                (Ok(()), Err(error)) => Err(error.duplicate()),
            };
            if let Ok(below) = outcome {
                pending.rotated_below.store(below, Ordering::Release);
            }
            pending.finish(outcome.map(|_| ()));
        }
    }

    /// Serves rotation requests (user flushes): freezes the memtable unless it is empty;
    /// returns the log number of the memtable left current.
    async fn rotate_for_flush(&self, writer: &mut WalWriter<E::File>) -> Result<u64> {
        // Simulates a slow fsync of the old log at rotation (a busy device), while writers
        // queue behind the leader that serves the flush.
        if self.env.buggify("lsm.flush.slow_rotation") {
            self.env.sleep(std::time::Duration::from_millis(2)).await;
        }
        if !lock(&self.state).mem.is_empty() {
            self.rotate(writer).await?;
        }
        let below = lock(&self.state).mem.wal_number();
        assert_eq!(below, writer.number, "the current memtable belongs to the current log");
        Ok(below)
    }

    async fn commit_group(
        &self,
        writer: &mut WalWriter<E::File>,
        group: &[Arc<PendingWrite>],
    ) -> Result<()> {
        if group.iter().all(|pending| pending.rotate) {
            return Ok(());
        }
        let first = writer.last_sequence + 1;
        let mut buffer = std::mem::take(&mut writer.buffer);
        buffer.clear();
        let mut sequence = first;
        let place = writer.place();
        let mut plaintext = Vec::new();
        for pending in group.iter().filter(|pending| !pending.rotate) {
            let batch = &pending.batch;
            if let Some(sealer) = &self.sealer {
                plaintext.clear();
                batch.encode(sequence, &mut plaintext);
                wal::encode_sealed_record(
                    &mut buffer,
                    place,
                    writer.synced_len,
                    sealer,
                    &plaintext,
                );
            } else {
                wal::encode_record_with(&mut buffer, place, writer.synced_len, |out| {
                    batch.encode(sequence, out);
                });
            }
            sequence += pending.op_count as u64;
        }
        let appended = writer.append(&buffer).await;
        let buffer_len = buffer.len() as u64;
        // Keep the scratch space unless one huge group blew it up.
        if buffer.capacity() <= GROUP_BYTES_MAX {
            writer.buffer = buffer;
        }
        appended?;
        self.counters.wal_bytes.fetch_add(buffer_len, Ordering::Relaxed);
        let write_count = group.iter().filter(|pending| !pending.rotate).count() as u64;
        assert!(write_count > 0, "a group that logs carries a write");
        self.counters.group_commit_count.fetch_add(1, Ordering::Relaxed);
        self.counters.group_commit_write_count.fetch_add(write_count, Ordering::Relaxed);
        if group.iter().any(|pending| pending.durability == Durability::Sync) {
            let _sync = activity::begin(self.options.activity.as_ref(), Work::LogSync);
            let started = self.env.now();
            writer.file.sync().await?;
            writer.synced_len = writer.len;
            let nanos = self.nanos_since(started);
            self.counters.wal_sync_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.counters.wal_sync_count.fetch_add(1, Ordering::Relaxed);
        }
        let mem = Arc::clone(&lock(&self.state).mem);
        let mut sequence = first;
        for pending in group {
            mem.apply(sequence, &pending.batch);
            sequence += pending.op_count as u64;
        }
        writer.last_sequence = sequence - 1;
        self.visible_sequence.store(writer.last_sequence, Ordering::Release);
        Ok(())
    }

    /// Nanoseconds of the `Env`'s clock since `started`.
    fn nanos_since(&self, started: sim::Instant) -> u64 {
        let elapsed = self.env.now().saturating_duration_since(started);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits while the store is over its limits (a stall, counted and timed); freezes a full
    /// memtable into a new log.
    async fn make_room(&self, writer: &mut WalWriter<E::File>) -> Result<()> {
        let mut stalled_at: Option<sim::Instant> = None;
        let result = loop {
            // Fast path: room in the memtable, no stall, nothing to subscribe to.
            {
                let state = lock(&self.state);
                let healthy = !state.closed && state.poisoned.is_none();
                let level0_full = state.version.levels[0].len() >= self.options.level0_stop_writes;
                if healthy && !level0_full && state.mem.bytes() < self.options.memtable_bytes_max {
                    break Ok(());
                }
            }
            let changed = self.changed.subscribe();
            let stall = {
                let state = lock(&self.state);
                if state.closed {
                    break Err(Error::Closed);
                }
                if let Some(reason) = &state.poisoned {
                    break Err(Error::Poisoned(reason.clone()));
                }
                let level0_full = state.version.levels[0].len() >= self.options.level0_stop_writes;
                let mem_full = state.mem.bytes() >= self.options.memtable_bytes_max;
                let imm_full = state.imm.len() >= self.options.immutable_memtable_count_max;
                if !level0_full && !mem_full {
                    break Ok(());
                }
                level0_full || imm_full
            };
            if stall {
                if stalled_at.is_none() {
                    stalled_at = Some(self.env.now());
                    self.counters.write_stall_count.fetch_add(1, Ordering::Relaxed);
                }
                self.ring();
                let _ = changed.await;
            } else if let Err(error) = self.rotate(writer).await {
                break Err(error);
            }
        };
        if let Some(started) = stalled_at {
            let nanos = self.nanos_since(started);
            self.counters.write_stall_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        result
    }

    /// Freezes the memtable and starts a new log (syncing the old one first, so a later log
    /// never holds writes newer than lost ones of an earlier log).
    pub(crate) async fn rotate(&self, writer: &mut WalWriter<E::File>) -> Result<()> {
        let rotated = self.rotate_inner(writer).await;
        if let Err(error) = &rotated {
            self.poison(error);
        }
        rotated
    }

    async fn rotate_inner(&self, writer: &mut WalWriter<E::File>) -> Result<()> {
        if writer.synced_len < writer.len {
            let _sync = activity::begin(self.options.activity.as_ref(), Work::LogSync);
            writer.file.sync().await?;
            writer.synced_len = writer.len;
        }
        let number = {
            let mut state = lock(&self.state);
            state.next_file_number += 1;
            state.next_file_number - 1
        };
        let path = join(&self.dir, &wal_name(number));
        let file = self.env.open(&path, OpenOptions::CREATE_NEW).await?;
        self.env.sync_dir(&self.dir).await?;
        let last_sequence = writer.last_sequence;
        let buffer = std::mem::take(&mut writer.buffer);
        *writer = WalWriter::new(file, number, buffer, last_sequence);
        {
            let mut state = lock(&self.state);
            let frozen = std::mem::replace(&mut state.mem, Arc::new(Memtable::new(number)));
            state.imm.push(frozen);
        }
        self.ring();
        Ok(())
    }
}

/// Syncs the log, then appends and syncs a marker proving every record before it was synced
/// (so recovery reports a damaged last record as corruption instead of a torn tail).
async fn close_log<F: File>(writer: &mut WalWriter<F>) -> Result<()> {
    writer.file.sync().await?;
    writer.synced_len = writer.len;
    let mut marker = Vec::new();
    wal::encode_marker(&mut marker, writer.place(), writer.synced_len);
    writer.append(&marker).await?;
    writer.file.sync().await?;
    writer.synced_len = writer.len;
    Ok(())
}

/// A consistent read-only view of the store at one sequence number. Compactions keep every
/// version it can see until it is dropped.
pub struct Snapshot<E: Env> {
    db: Db<E>,
    sequence: u64,
}

impl<E: Env> std::fmt::Debug for Snapshot<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("sequence", &self.sequence).finish()
    }
}

impl<E: Env> Snapshot<E> {
    /// The sequence number this snapshot reads at.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The value of `key` as of the snapshot.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.inner.get_at(key, Some(self.sequence)).await
    }

    /// Keys in `range` as of the snapshot, ascending.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> Result<Iter<E::File>> {
        self.db.inner.iter_at(Some(self.sequence), true, owned_bounds(&range)).await
    }

    /// Keys in `range` as of the snapshot, descending.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> Result<Iter<E::File>> {
        self.db.inner.iter_at(Some(self.sequence), false, owned_bounds(&range)).await
    }
}

impl<E: Env> Drop for Snapshot<E> {
    fn drop(&mut self) {
        let mut snapshots = lock(&self.db.inner.snapshots);
        if let Some(count) = snapshots.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                snapshots.remove(&self.sequence);
            }
        }
    }
}

impl<E: Env> Db<E> {
    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8], durability: Durability) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch, durability).await
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &[u8], durability: Durability) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch, durability).await
    }

    /// Applies `batch` atomically: after a crash either all of it is there or none.
    pub async fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        self.inner.write(batch, durability).await
    }

    /// The current value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get_at(key, None).await
    }

    /// Keys in `range`, ascending, as of now.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, true, owned_bounds(&range)).await
    }

    /// Keys in `range`, descending, as of now.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, false, owned_bounds(&range)).await
    }

    /// Keys starting with `prefix`, ascending.
    pub async fn prefix(&self, prefix: &[u8]) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, true, prefix_bounds(prefix)).await
    }

    /// Keys starting with `prefix`, descending.
    pub async fn prefix_rev(&self, prefix: &[u8]) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, false, prefix_bounds(prefix)).await
    }

    /// A consistent view of the store as of now.
    pub fn snapshot(&self) -> Snapshot<E> {
        let mut snapshots = lock(&self.inner.snapshots);
        let sequence = self.inner.visible_sequence.load(Ordering::Acquire);
        *snapshots.entry(sequence).or_insert(0) += 1;
        Snapshot { db: self.clone(), sequence }
    }

    /// Counters and shape of the store.
    pub fn stats(&self) -> Stats {
        let counters = &self.inner.counters;
        let version = Arc::clone(&lock(&self.inner.state).version);
        let (mut bloom_negative_count, mut bloom_false_positive_count) = (0, 0);
        for file in version.levels.iter().flatten() {
            let (negative, false_positive) = file.table.bloom_counts();
            bloom_negative_count += negative;
            bloom_false_positive_count += false_positive;
        }
        Stats {
            user_bytes: counters.user_bytes.load(Ordering::Relaxed),
            wal_bytes: counters.wal_bytes.load(Ordering::Relaxed),
            flush_bytes: counters.flush_bytes.load(Ordering::Relaxed),
            compaction_bytes: counters.compaction_bytes.load(Ordering::Relaxed),
            compaction_count: counters.compaction_count.load(Ordering::Relaxed),
            seek_compaction_count: counters.seek_compaction_count.load(Ordering::Relaxed),
            flush_count: counters.flush_count.load(Ordering::Relaxed),
            wal_sync_count: counters.wal_sync_count.load(Ordering::Relaxed),
            wal_sync_nanos: counters.wal_sync_nanos.load(Ordering::Relaxed),
            group_commit_count: counters.group_commit_count.load(Ordering::Relaxed),
            group_commit_write_count: counters.group_commit_write_count.load(Ordering::Relaxed),
            write_stall_count: counters.write_stall_count.load(Ordering::Relaxed),
            write_stall_nanos: counters.write_stall_nanos.load(Ordering::Relaxed),
            level_table_counts: version.levels.iter().map(Vec::len).collect(),
            level_bytes: (0..version.levels.len())
                .map(|level| version.level_bytes(level))
                .collect(),
            block_cache_bytes: self.inner.cache.bytes(),
            bloom_negative_count,
            bloom_false_positive_count,
        }
    }

    /// What `open` found and did: tables, logs replayed, a torn tail dropped, and whether the
    /// previous run closed cleanly.
    pub fn recovery_report(&self) -> &crate::recovery::RecoveryReport {
        &self.inner.recovery
    }

    /// Makes every write so far durable and moves the memtable into a level-0 table. Under any
    /// write load it ends after the writes queued before it and at most one round of
    /// background work: its request to freeze the memtable is served in order with the writes,
    /// and the background task gives way to it.
    pub async fn flush(&self) -> Result<()> {
        let _pass = self.inner.enter()?;
        if self.inner.options.planted(PlantedBug::FlushYieldsToWriters) {
            return self.flush_behind_writers().await;
        }
        let below = self.inner.request_rotation().await?;
        self.inner.flush_immutables(Some(below)).await
    }

    /// The flush of planted bug `FlushYieldsToWriters`: it competes for the log lock with
    /// every writer and for the work lock with the background task, and loses while they keep
    /// coming.
    async fn flush_behind_writers(&self) -> Result<()> {
        {
            let mut wal = self.inner.wal.lock().await;
            let writer = wal.as_mut().ok_or(Error::Closed)?;
            if let Some(reason) = lock(&self.inner.state).poisoned.clone() {
                return Err(Error::Poisoned(reason));
            }
            if !lock(&self.inner.state).mem.is_empty() {
                self.inner.rotate(writer).await?;
            }
        }
        self.inner.flush_immutables(None).await
    }

    /// Compacts every table overlapping `range` down the levels (after a flush), dropping
    /// overwritten versions and, at the bottom, tombstones.
    pub async fn compact_range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<()> {
        let _pass = self.inner.enter()?;
        self.flush().await?;
        self.inner.compact_range(owned_bounds(&range)).await
    }

    /// `compact_range` over every key.
    pub async fn compact_all(&self) -> Result<()> {
        self.compact_range::<&[u8], _>(..).await
    }

    /// Every key, ascending, as of now.
    pub async fn iter(&self) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, true, (Bound::Unbounded, Bound::Unbounded)).await
    }

    /// Every key, descending, as of now.
    pub async fn iter_rev(&self) -> Result<Iter<E::File>> {
        self.inner.iter_at(None, false, (Bound::Unbounded, Bound::Unbounded)).await
    }

    /// Closes the store: stops admitting operations (on every clone: later calls, this one
    /// included, fail with `Closed`), waits for every running one (writes, reads, flushes and
    /// compactions started through any clone), syncs the log, stops the background task, and
    /// releases the directory lock last, so another store may open the directory only once
    /// nothing of this one runs. Iterators made before keep reading what they hold.
    pub async fn close(&self) -> Result<()> {
        if !self.inner.begin_closing() {
            return Err(Error::Closed);
        }
        if !self.inner.options.planted(PlantedBug::CloseIgnoresClonedWork) {
            self.inner.wait_idle().await;
        }
        let (synced, last_sequence) = {
            let mut wal = self.inner.wal.lock().await;
            let synced = match wal.as_mut() {
                Some(writer) if writer.len > 0 => close_log(writer).await,
                _ => Ok(()),
            };
            let last_sequence = wal.as_ref().map(|writer| writer.last_sequence);
            *wal = None;
            (synced, last_sequence)
        };
        lock(&self.inner.state).closed = true;
        self.inner.changed.notify();
        lock(&self.inner.doorbell).take();
        let background = lock(&self.inner.background).take();
        if let Some(handle) = background {
            let _ = handle.await;
        }
        self.inner.delete_obsolete_tables().await;
        // The clean-close marker, last of all writes, and only for a store whose every write
        // is durable: a poisoned store, or one whose final sync failed, did not close cleanly.
        // A marker that fails to be written is only a clean close reported as unclean (it
        // names the sequence every write up to which is durable), so its error is not `close`'s.
        let poisoned = lock(&self.inner.state).poisoned.is_some();
        if let (Ok(()), Some(sequence), false) = (&synced, last_sequence, poisoned) {
            let _ = crate::clean::write(&self.inner.env, &self.inner.dir, sequence).await;
        }
        // Simulates a slow shutdown (a descheduled process, a slow final unlink) between the
        // last write of the store and the release of its lock, widening the window in which a
        // second opener must still find the directory locked.
        if self.inner.env.buggify("lsm.close.slow_release") {
            self.inner.env.sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(lock(&self.inner.background).is_none());
        // Another store may open the directory from here on.
        lock(&self.inner.lock_file).take();
        synced
    }
}
