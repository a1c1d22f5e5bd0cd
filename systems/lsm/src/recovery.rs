//! Opening a store: read the manifest, open its tables, replay the write-ahead logs it does not
//! cover, write the replayed writes to a level-0 table, start a fresh log, write a new
//! manifest, and delete files nothing refers to.
//!
//! Nothing on disk is changed before recovery has read everything and found it sound, so a
//! failed open (corruption, I/O error) can be retried and loses nothing.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sim::{Env, File, OpenOptions};

use crate::activity::{self, Work};
use crate::background::{
    MANIFEST_NAME, MANIFEST_TEMP_NAME, background_loop, parse_number, write_manifest_file,
};
use crate::batch::WriteBatch;
use crate::cache::BlockCache;
use crate::clean;
use crate::crypto::Sealer;
use crate::db::{Db, Inner, State, WalWriter, join, lock, table_name, wal_name};
use crate::error::{Error, Result};
use crate::keyfile::{KEY_TEMP_NAME, open_key};
use crate::manifest::ManifestState;
use crate::memtable::Memtable;
use crate::options::{Options, PlantedBug};
use crate::table::{Table, TableWriter};
use crate::version::{TableFile, Version, level_is_disjoint};
use crate::wal;

/// Whole-file reads before recovery gives up on getting two that agree.
const STABLE_READ_ATTEMPTS_MAX: usize = 5;

/// The largest file recovery reads whole (logs and manifests stay far below it).
const FILE_BYTES_MAX: u64 = 1 << 30;

/// Reads a whole file.
async fn read_all<F: File>(file: &F) -> Result<Vec<u8>> {
    let len = file.len().await?;
    if len > FILE_BYTES_MAX {
        return Err(Error::InvalidArgument(format!("file of {len} bytes is too large to read")));
    }
    let mut buffer = vec![0u8; len as usize];
    file.read_exact_at(0, &mut buffer).await?;
    Ok(buffer)
}

/// Reads a file until `check` accepts it or two reads in a row agree (a flipped bit on the
/// way from the disk is transient and differs between reads; a bad stored byte does not), at
/// most `STABLE_READ_ATTEMPTS_MAX` times. Returns the bytes; whether they pass is the caller's
/// to check again. Reads that never agree are an I/O error, so open fails and can be retried.
pub(crate) async fn read_stable<F: File>(
    file: &F,
    check: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    let mut previous: Option<Vec<u8>> = None;
    for _ in 0..STABLE_READ_ATTEMPTS_MAX {
        let bytes = read_all(file).await?;
        if check(&bytes) || previous.as_ref() == Some(&bytes) {
            return Ok(bytes);
        }
        previous = Some(bytes);
    }
    let reason = "reads of a damaged file disagree with each other";
    Err(Error::Io(std::io::Error::other(reason)))
}

/// Reads and decodes the manifest, or a fresh state if the store is new.
async fn read_manifest<E: Env>(
    env: &E,
    dir: &str,
    names: &[String],
    sealer: Option<&Sealer>,
) -> Result<ManifestState> {
    if !names.iter().any(|name| name == MANIFEST_NAME) {
        return Ok(ManifestState { next_file_number: 1, ..ManifestState::default() });
    }
    let file = env.open(&join(dir, MANIFEST_NAME), OpenOptions::EXISTING).await?;
    let decode = |bytes: &[u8]| ManifestState::decode_with(bytes, sealer);
    let bytes = read_stable(&file, |bytes| decode(bytes).is_ok()).await?;
    decode(&bytes).map_err(|reason| Error::corruption(MANIFEST_NAME, 0, reason))
}

/// Opens every table the manifest lists into a version.
async fn open_tables<E: Env>(
    env: &E,
    dir: &str,
    manifest: &ManifestState,
    (options, sealer): (&Options, Option<&Sealer>),
    cache: &Arc<BlockCache>,
) -> Result<Version<E::File>> {
    let mut version = Version::new(options.level_count);
    for meta in &manifest.tables {
        let name = table_name(meta.number);
        if usize::from(meta.level) >= options.level_count {
            let reason = format!("table {name} at level {} beyond level_count", meta.level);
            return Err(Error::InvalidArgument(reason));
        }
        let file = match env.open(&join(dir, &name), OpenOptions::EXISTING).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corruption(&name, 0, "table listed in the manifest is missing"));
            }
            Err(error) => return Err(Error::Io(error)),
        };
        let sealer = sealer.cloned();
        let table = Table::open(file, meta.number, name.clone(), Arc::clone(cache), sealer).await?;
        let bytes_per_seek = options.seek_compaction_bytes;
        let file = Arc::new(TableFile::new(meta.clone(), Arc::new(table), bytes_per_seek));
        let level = usize::from(meta.level);
        if level > 0
            && version.levels[level]
                .iter()
                .any(|other| other.overlaps(file.smallest_user(), file.largest_user()))
        {
            return Err(Error::corruption(MANIFEST_NAME, 0, "tables of one level overlap"));
        }
        version.add(file);
    }
    assert!(version.levels[1..].iter().all(|files| level_is_disjoint(files)));
    Ok(version)
}

/// What replaying the logs found.
struct Replayed {
    memtable: Memtable,
    // The highest sequence seen (the manifest's if the logs hold nothing newer).
    last_sequence: u64,
    log_count: usize,
    record_count: u64,
    torn_tail_bytes: u64,
}

/// Replays the logs numbered at least `log_number` into a memtable.
async fn replay_logs<E: Env>(
    env: &E,
    dir: &str,
    names: &[String],
    (options, sealer): (&Options, Option<&Sealer>),
    (log_number, mut last_sequence): (u64, u64),
) -> Result<Replayed> {
    let mut numbers: Vec<u64> = names
        .iter()
        .filter_map(|name| parse_number(name, ".log"))
        .filter(|number| *number >= log_number)
        .collect();
    numbers.sort_unstable();
    let memtable = Memtable::new(0);
    let mut torn: Option<(String, u64)> = None;
    let (log_count, mut record_count, mut torn_tail_bytes) = (numbers.len(), 0u64, 0u64);
    for number in numbers {
        let name = wal_name(number);
        let file = env.open(&join(dir, &name), OpenOptions::EXISTING).await?;
        let clean = |bytes: &[u8]| wal::read_log(bytes, number).bad_offset.is_none();
        let bytes = read_stable(&file, clean).await?;
        let contents = wal::read_log(&bytes, number);
        if let Some((torn_name, offset)) = torn.take()
            && !contents.records.is_empty()
        {
            // Logs are synced before the next one starts, so an earlier log cannot tear.
            return Err(Error::corruption(&torn_name, offset, "bad record in a finished log"));
        }
        for record in contents.records.iter().filter(|record| record.kind != wal::KIND_MARKER) {
            let payload = record_payload(&name, number, record, sealer)?;
            let (first, batch) = WriteBatch::decode(&payload)
                .map_err(|reason| Error::corruption(&name, record.offset, reason))?;
            memtable.apply(first, &batch);
            last_sequence = last_sequence.max(first + batch.len() as u64 - 1);
            record_count += 1;
        }
        if let Some(offset) = contents.bad_offset {
            check_bad_region(&name, offset, &contents, options)?;
            assert!(offset <= bytes.len() as u64, "a bad region starts inside its log");
            torn_tail_bytes += bytes.len() as u64 - offset;
            torn = Some((name, offset));
        }
    }
    Ok(Replayed { memtable, last_sequence, log_count, record_count, torn_tail_bytes })
}

/// The encoded batch a batch record of log `name` (number `number`) holds: its payload, opened
/// with `sealer` in an encrypted store. A record sealed or not against the store's kind, or one
/// that does not open, is corruption.
fn record_payload<'a>(
    name: &str,
    number: u64,
    record: &wal::Record<'a>,
    sealer: Option<&Sealer>,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let corrupt = |reason: &str| Error::corruption(name, record.offset, reason);
    match (record.kind == wal::KIND_SEALED_BATCH, sealer) {
        (false, None) => Ok(std::borrow::Cow::Borrowed(record.payload)),
        (true, Some(sealer)) => {
            wal::open_sealed(sealer, number, record).map(std::borrow::Cow::Owned).ok_or_else(|| {
                corrupt("sealed record does not open (damaged, moved, or sealed under another key)")
            })
        }
        (false, Some(_)) => Err(corrupt("unencrypted record in an encrypted store's log")),
        (true, None) => Err(corrupt("sealed record in an unencrypted store's log")),
    }
}

/// Whether the bad region of log `name` starting at `offset` may be taken for a torn tail:
/// not if it was synced, nor if a misdirected write left it (see `wal`'s recovery rule).
fn check_bad_region(
    name: &str,
    offset: u64,
    contents: &wal::LogContents<'_>,
    options: &Options,
) -> Result<()> {
    if contents.bad_region_was_synced {
        return Err(Error::corruption(name, offset, "bad record before synced records"));
    }
    let Some(misplaced) = contents.misplaced else { return Ok(()) };
    if options.planted(PlantedBug::MisplacedRecordIsTornTail) {
        return Ok(());
    }
    let (file_number, written_for) = misplaced.position;
    let reason = format!(
        "a misdirected write: the record written for offset {written_for} of log {file_number} \
         lies at offset {}, and offset {offset} holds no valid record",
        misplaced.found_at
    );
    Err(Error::corruption(name, misplaced.found_at, reason))
}

/// What `Db::open` found: the store's shape on disk and what recovery had to do. Logged by
/// the production server at start and exposed as its `lsm_recovery_*` metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Tables the manifest listed.
    pub table_count: usize,
    /// Write-ahead logs read (those the manifest's tables did not yet cover).
    pub log_count: usize,
    /// Log records (write batches) replayed from them.
    pub record_count: u64,
    /// Bytes dropped as a torn tail: the unsynced end of the last log, cut by a crash.
    pub torn_tail_bytes: u64,
    /// The last sequence number recovered.
    pub last_sequence: u64,
    /// Whether the previous run ended with a clean `close` (the `CLOSED` marker was there,
    /// sound, and named the sequence recovery found). Informational: recovery is the same.
    pub clean_shutdown: bool,
}

impl<E: Env> Db<E> {
    /// Opens (creating if needed) the store in directory `dir` of `env`, recovering from the
    /// manifest and write-ahead logs.
    pub async fn open(env: E, dir: &str, options: Options) -> Result<Db<E>> {
        options.check().map_err(Error::InvalidArgument)?;
        let _recovery = activity::begin(options.activity.as_ref(), Work::Recovery);
        env.create_dir_all(dir).await?;
        let lock_file = lock_directory(&env, dir).await?;
        let names = env.list(dir).await?;
        let sealer = open_key(&env, dir, &names, &options).await?;
        let manifest = read_manifest(&env, dir, &names, sealer.as_ref()).await?;
        let closed_at = clean::read(&env, dir, &names).await;
        let cache = Arc::new(BlockCache::new(options.block_cache_bytes));
        let keyed = (&options, sealer.as_ref());
        let mut version = open_tables(&env, dir, &manifest, keyed, &cache).await?;
        let logs_from = (manifest.log_number, manifest.last_sequence);
        let replayed = replay_logs(&env, dir, &names, keyed, logs_from).await?;
        let last_sequence = replayed.last_sequence;
        let report = RecoveryReport {
            table_count: manifest.tables.len(),
            log_count: replayed.log_count,
            record_count: replayed.record_count,
            torn_tail_bytes: replayed.torn_tail_bytes,
            last_sequence,
            clean_shutdown: closed_at == Some(last_sequence),
        };
        // Everything was read; from here on the directory changes.
        let highest = names
            .iter()
            .filter_map(|name| parse_number(name, ".log").or_else(|| parse_number(name, ".sst")))
            .max()
            .unwrap_or(0);
        let mut next_file_number = manifest.next_file_number.max(highest + 1);
        let wal_number = next_file_number;
        next_file_number += 1;
        let wal_file = env.open(&join(dir, &wal_name(wal_number)), OpenOptions::CREATE_NEW).await?;
        // The marker goes before the store takes a write, durably (the `sync_dir` below), so
        // a crash of this run is never reported as a clean close.
        clean::remove(&env, dir, &names).await;
        env.sync_dir(dir).await?;
        if !replayed.memtable.is_empty() {
            let number = next_file_number;
            next_file_number += 1;
            let memtable = &replayed.memtable;
            let file = write_recovered_table(&env, dir, keyed, &cache, memtable, number).await?;
            version.add(file);
        }
        let state = ManifestState {
            next_file_number,
            last_sequence,
            log_number: wal_number,
            tables: version.metas(),
        };
        write_manifest_file(&env, dir, &state, sealer.as_ref()).await?;
        delete_unreferenced(&env, dir, &version, wal_number).await;
        let writer = WalWriter::new(wal_file, wal_number, Vec::new(), last_sequence);
        let opened = Opened { version, next_file_number, cache, sealer, writer, lock_file, report };
        Ok(start(env, dir, options, opened))
    }
}

/// What a recovered store starts from.
struct Opened<E: Env> {
    version: Version<E::File>,
    next_file_number: u64,
    cache: Arc<BlockCache>,
    sealer: Option<Sealer>,
    writer: WalWriter<E::File>,
    lock_file: E::File,
    report: RecoveryReport,
}

/// Builds the open store from what recovery found and starts its background task.
fn start<E: Env>(env: E, dir: &str, options: Options, opened: Opened<E>) -> Db<E> {
    let last_sequence = opened.writer.last_sequence;
    assert_eq!(last_sequence, opened.report.last_sequence, "the log starts after recovery");
    let state = State {
        mem: Arc::new(Memtable::new(opened.writer.number)),
        imm: Vec::new(),
        version: Arc::new(opened.version),
        next_file_number: opened.next_file_number,
        poisoned: None,
        closed: false,
        obsolete: Vec::new(),
        compact_cursor: vec![Vec::new(); options.level_count],
    };
    let mut inner = Inner::new(env.clone(), dir.to_string(), options, state);
    inner.cache = opened.cache;
    inner.sealer = opened.sealer;
    inner.recovery = opened.report;
    inner.visible_sequence.store(last_sequence, Ordering::Release);
    *inner.wal.get_mut() = Some(opened.writer);
    let lock_file = Some(opened.lock_file);
    *inner.lock_file.get_mut().unwrap_or_else(|poison| poison.into_inner()) = lock_file;
    let (sender, receiver) = futures::channel::mpsc::channel(1);
    inner.doorbell = Mutex::new(Some(sender));
    let inner = Arc::new(inner);
    let handle = env.spawn(background_loop(Arc::downgrade(&inner), receiver));
    *lock(&inner.background) = Some(handle);
    inner.ring();
    Db { inner }
}

/// Writes the replayed writes as a level-0 table.
async fn write_recovered_table<E: Env>(
    env: &E,
    dir: &str,
    (options, sealer): (&Options, Option<&Sealer>),
    cache: &Arc<BlockCache>,
    memtable: &Memtable,
    number: u64,
) -> Result<Arc<TableFile<E::File>>> {
    let name = table_name(number);
    let file = env.open(&join(dir, &name), OpenOptions::CREATE_NEW).await?;
    let mut writer = TableWriter::new(file, number, options.table_options(true, sealer));
    for entry in memtable.entries() {
        writer.add(&entry).await?;
    }
    let (file, size, summary) = writer.finish().await?;
    env.sync_dir(dir).await?;
    let table = Table::open(file, number, name, Arc::clone(cache), sealer.cloned()).await?;
    let meta = crate::manifest::TableMeta {
        level: 0,
        number,
        size,
        smallest: summary.smallest,
        largest: summary.largest,
    };
    Ok(Arc::new(TableFile::new(meta, Arc::new(table), options.seek_compaction_bytes)))
}

/// Deletes logs before `wal_number`, tables not in `version` and a leftover temp manifest.
/// Takes the directory's `LOCK` file, so a second store (in this process or, on real files,
/// another) never writes the same directory; the lock lives as long as the returned handle.
pub(crate) async fn lock_directory<E: Env>(env: &E, dir: &str) -> Result<E::File> {
    let file = env.open(&join(dir, LOCK_NAME), OpenOptions::CREATE).await?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
            Err(Error::Locked { dir: dir.to_string() })
        }
        Err(error) => Err(Error::Io(error)),
    }
}

/// The name of the lock file in a store's directory.
pub const LOCK_NAME: &str = "LOCK";

async fn delete_unreferenced<E: Env>(
    env: &E,
    dir: &str,
    version: &Version<E::File>,
    wal_number: u64,
) {
    let Ok(names) = env.list(dir).await else { return };
    let live: Vec<u64> = version.levels.iter().flatten().map(|file| file.meta.number).collect();
    for name in names {
        let stale_log = parse_number(&name, ".log").is_some_and(|number| number < wal_number);
        let stale_table = parse_number(&name, ".sst").is_some_and(|number| !live.contains(&number));
        if stale_log || stale_table || name == MANIFEST_TEMP_NAME || name == KEY_TEMP_NAME {
            let _ = env.remove(&join(dir, &name)).await;
        }
    }
}
