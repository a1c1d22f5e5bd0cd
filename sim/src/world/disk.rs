//! One node's simulated file system: a page cache over durable state, with crash semantics.
//!
//! Why: a storage engine is only as correct as its `sync` and `sync_dir` discipline, and a disk
//! that keeps every write (madsim's) cannot catch a missing fsync. This model keeps two views of
//! every file and of the namespace: a volatile one, which reads and listings see, and a durable
//! one, which survives a crash. `crash` decides, from the caller's rng only, what of the work
//! done since the last sync reaches the platter. The model is pure and synchronous (no clock, no
//! I/O, no async); latency and injected I/O errors are layered on top of it.
//!
//! Fault model, applied at `crash`:
//! - File contents: each file becomes its durable image (its content at its last `sync`)
//!   followed by every operation made since, replayed in order, each independently kept whole,
//!   dropped, or (writes only) torn, keeping only a prefix that ends at a 512-byte sector
//!   boundary strictly inside the write. `CrashConfig` gives the probabilities.
//! - Namespace: a create, rename or remove becomes durable only by `sync_dir` of the parent
//!   directory. At a crash the namespace reverts to its durable version and files that no
//!   durable entry names are deleted. A rename whose two parents were not both synced may leave
//!   the file under both names (a hard link), as a real file system may.
//! - Handles: every `FileId` handed out before a crash is stale afterwards (`NotFound`).
//!
//! Simplifications: directories are created durably at once and are never removed or renamed; a
//! sector write is atomic, so a write inside one sector cannot tear (a tear roll keeps it whole);
//! when a file holds more than `PENDING_OPS_MAX` unsynced operations or `PENDING_BYTES_MAX`
//! unsynced bytes, the page cache writes the oldest back to the durable image (as a kernel's
//! background writeback would), so a crash can no longer lose it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, ErrorKind};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::env::OpenOptions;

/// An inode number. Never reused within one `Disk`; every id is stale after a crash.
pub type FileId = u64;

/// The unit a torn write is cut at, aligned to absolute file offsets.
pub const SECTOR_SIZE_BYTES: u64 = 512;
const _: () = assert!(SECTOR_SIZE_BYTES.is_power_of_two());

/// The largest file (1 GiB). Files live in memory, so a bogus offset must fail with
/// `FileTooLarge` instead of allocating.
pub const FILE_BYTES_MAX: u64 = 1 << 30;
const _: () = assert!(FILE_BYTES_MAX <= usize::MAX as u64);

/// The longest path, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;

/// Unsynced operations one file may hold before the oldest is written back.
pub const PENDING_OPS_MAX: usize = 1 << 16;

/// Unsynced bytes one file may hold before the oldest operations are written back.
pub const PENDING_BYTES_MAX: u64 = 1 << 26;

/// How a crash treats each operation made since its file's last `sync`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrashConfig {
    /// Probability that an unsynced write (or set_len) is lost entirely at a crash.
    pub drop_probability: f64,
    /// Probability that an unsynced write is torn: only a prefix of its 512-byte sectors
    /// (aligned to absolute file offsets, at least one sector boundary inside the write)
    /// persists. A write with no sector boundary inside it is kept whole instead.
    pub tear_probability: f64,
    // Otherwise (1 - drop - tear) the write persists whole.
}

impl Default for CrashConfig {
    fn default() -> CrashConfig {
        CrashConfig { drop_probability: 0.4, tear_probability: 0.2 }
    }
}

/// What happened to one unsynced operation at a crash (for the trace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashFate {
    /// The operation persisted whole.
    Kept,
    /// The operation was lost entirely.
    Dropped,
    /// Only the first `kept_bytes` of the write persisted; `offset + kept_bytes` is a multiple
    /// of `SECTOR_SIZE_BYTES`.
    Torn {
        /// Bytes of the write that persisted, `0 < kept_bytes < len`.
        kept_bytes: u64,
    },
}

/// One unsynced operation and its fate at a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashRecord {
    /// The file's path: its first durable path if it survived, else its first volatile path
    /// at the crash, else `None` (an unlinked file that was still open).
    pub path: Option<String>,
    /// The file's id before the crash (stale now).
    pub file: FileId,
    /// A write's offset, or a set_len's new length.
    pub offset: u64,
    /// A write's length in bytes; 0 for a set_len.
    pub len: u64,
    /// What the crash did with it.
    pub fate: CrashFate,
}

/// One unsynced operation on a file's content.
#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen { len: u64 },
}

impl Op {
    fn data_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            Op::SetLen { .. } => 0,
        }
    }
}

/// A file: its volatile and durable content and who refers to it.
#[derive(Debug, Default)]
struct Inode {
    /// The page-cache view, what reads see.
    content: Vec<u8>,
    /// The content as of the last `sync` (or writeback): where a crash starts from.
    content_durable: Vec<u8>,
    /// Operations since `content_durable`, oldest first.
    // Invariant: replaying all of them on `content_durable` yields `content`.
    pending: VecDeque<Op>,
    // Invariant: the sum of `Op::data_bytes` over `pending`.
    pending_bytes: u64,
    /// Volatile directory entries naming this inode.
    link_volatile_count: u32,
    /// Durable directory entries naming this inode.
    link_durable_count: u32,
    /// Opens not yet closed.
    handle_count: u32,
}

impl Inode {
    fn with_content(content: Vec<u8>) -> Inode {
        Inode { content_durable: content.clone(), content, ..Inode::default() }
    }

    fn is_garbage(&self) -> bool {
        self.link_volatile_count == 0 && self.link_durable_count == 0 && self.handle_count == 0
    }

    fn links_mut(&mut self, layer: Layer) -> &mut u32 {
        match layer {
            Layer::Volatile => &mut self.link_volatile_count,
            Layer::Durable => &mut self.link_durable_count,
        }
    }
}

/// The two directory layers: what reads see now, and what survives a crash.
#[derive(Clone, Copy)]
enum Layer {
    Volatile,
    Durable,
}

/// One node's file system: directories, file entries (volatile and durable) and inodes.
#[derive(Debug)]
pub struct Disk {
    capacity_bytes: Option<u64>,
    // Invariant: the sum of `content.len()` over `inodes`.
    used_bytes: u64,
    // Invariant: holds "" and the parent of each of its members; durable at once.
    dirs: BTreeSet<String>,
    // Invariant: every parent is in `dirs`; no key is in `dirs`; every value is in `inodes`.
    entries_volatile: BTreeMap<String, FileId>,
    // Invariant: every value is in `inodes`.
    entries_durable: BTreeMap<String, FileId>,
    // Invariant: no inode is garbage (unreferenced).
    inodes: BTreeMap<FileId, Inode>,
    // Invariant: greater than every id handed out.
    next_id: FileId,
    // Advisory locks: file -> the token of the handle holding it. Cleared by a crash.
    locks: BTreeMap<FileId, u64>,
    // Invariant: greater than every lock token handed out.
    next_token: u64,
}

impl Disk {
    /// An empty disk holding only the root directory "". `None` means unlimited capacity.
    pub fn new(capacity_bytes: Option<u64>) -> Disk {
        Disk {
            capacity_bytes,
            used_bytes: 0,
            dirs: BTreeSet::from([String::new()]),
            entries_volatile: BTreeMap::new(),
            entries_durable: BTreeMap::new(),
            inodes: BTreeMap::new(),
            next_id: 1,
            locks: BTreeMap::new(),
            next_token: 1,
        }
    }

    /// A fresh token naming one open handle (for `try_lock`).
    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token - 1
    }

    /// Takes the exclusive advisory lock of `file` for the handle `token`; `WouldBlock` if
    /// another handle holds it. Taking it again through the same handle succeeds.
    pub fn try_lock(&mut self, file: FileId, token: u64) -> io::Result<()> {
        self.inode_mut(file)?;
        match self.locks.get(&file) {
            Some(holder) if *holder != token => {
                Err(io::Error::new(ErrorKind::WouldBlock, "file is locked by another handle"))
            }
            _ => {
                self.locks.insert(file, token);
                Ok(())
            }
        }
    }

    /// Releases the lock of `file` if the handle `token` holds it.
    pub fn unlock(&mut self, file: FileId, token: u64) {
        if self.locks.get(&file) == Some(&token) {
            self.locks.remove(&file);
        }
    }

    /// Changes the capacity. Data already stored stays even if it is now over; only growth
    /// fails.
    pub fn set_capacity(&mut self, capacity_bytes: Option<u64>) {
        self.capacity_bytes = capacity_bytes;
    }

    /// Opens (or creates) the file at `path` and returns its inode number.
    ///
    /// Opening an open file again returns the same id. Creating needs the parent directory; the
    /// new entry is volatile until `sync_dir` of the parent. `truncate` is a pending set_len(0).
    pub fn open(&mut self, path: &str, options: OpenOptions) -> io::Result<FileId> {
        check_path(path)?;
        if self.dirs.contains(path) {
            return Err(error(ErrorKind::IsADirectory, path, "is a directory"));
        }
        self.require_dir(parent(path))?;
        if let Some(&file) = self.entries_volatile.get(path) {
            if options.create_new {
                return Err(error(ErrorKind::AlreadyExists, path, "file exists"));
            }
            if options.truncate {
                self.set_len(file, 0)?;
            }
            self.inode_mut(file)?.handle_count += 1;
            return Ok(file);
        }
        if !options.create && !options.create_new {
            return Err(error(ErrorKind::NotFound, path, "no such file"));
        }
        let file = self.next_id;
        self.next_id += 1;
        let inode = Inode { handle_count: 1, ..Inode::default() };
        assert!(self.inodes.insert(file, inode).is_none());
        self.link(Layer::Volatile, path, Some(file));
        Ok(file)
    }

    /// Releases one open of `file`. A file that no handle and no entry (volatile or durable)
    /// refers to any more is deleted. Without `close`, unlinked files live until a crash.
    pub fn close(&mut self, file: FileId) -> io::Result<()> {
        let inode = self.inode_mut(file)?;
        if inode.handle_count == 0 {
            return Err(io::Error::new(ErrorKind::InvalidInput, "file is not open"));
        }
        inode.handle_count -= 1;
        self.collect(file);
        Ok(())
    }

    /// Creates `path` and its missing parents. Directories are durable at once (a documented
    /// simplification); a new directory replaces a durable-only file entry of the same name.
    pub fn create_dir_all(&mut self, path: &str) -> io::Result<()> {
        check_path(path)?;
        if path.is_empty() {
            return Ok(());
        }
        let mut prefixes: Vec<&str> = path.match_indices('/').map(|(at, _)| &path[..at]).collect();
        prefixes.push(path);
        for &prefix in &prefixes {
            if prefix == path && self.entries_volatile.contains_key(prefix) {
                return Err(error(ErrorKind::AlreadyExists, path, "file exists"));
            }
            if self.entries_volatile.contains_key(prefix) {
                return Err(error(ErrorKind::NotADirectory, prefix, "not a directory"));
            }
        }
        for prefix in prefixes {
            if self.dirs.insert(prefix.to_owned()) {
                self.link(Layer::Durable, prefix, None);
            }
        }
        Ok(())
    }

    /// Reads the volatile (page-cache) content at `offset`; short only at end of file.
    pub fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let content = &self.inode(file)?.content;
        if offset >= content.len() as u64 {
            return Ok(0);
        }
        let start = usize::try_from(offset).expect("offset is below a Vec length");
        let count = buf.len().min(content.len() - start);
        buf[..count].copy_from_slice(&content[start..start + count]);
        Ok(count)
    }

    /// Writes `data` at `offset`, zero-filling any gap past the end. Visible at once; durable
    /// after `sync`. An empty write changes nothing.
    pub fn write_at(&mut self, file: FileId, offset: u64, data: &[u8]) -> io::Result<()> {
        let len_before = self.len(file)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(data.len() as u64).filter(|&end| end <= FILE_BYTES_MAX);
        let Some(end) = end else {
            return Err(io::Error::new(ErrorKind::FileTooLarge, "write past FILE_BYTES_MAX"));
        };
        self.reserve(len_before, end)?;
        self.push(file, Op::Write { offset, data: data.to_vec() });
        Ok(())
    }

    /// Writes `data` at the end of the file; returns the offset it was written at.
    pub fn append(&mut self, file: FileId, data: &[u8]) -> io::Result<u64> {
        let offset = self.len(file)?;
        self.write_at(file, offset, data)?;
        Ok(offset)
    }

    /// Makes the file's content and length durable (fsync). Not its directory entry.
    pub fn sync(&mut self, file: FileId) -> io::Result<()> {
        let inode = self.inode_mut(file)?;
        inode.content_durable.clone_from(&inode.content);
        inode.pending.clear();
        inode.pending_bytes = 0;
        Ok(())
    }

    /// The file's volatile length in bytes.
    pub fn len(&self, file: FileId) -> io::Result<u64> {
        Ok(self.inode(file)?.content.len() as u64)
    }

    /// Truncates or zero-extends the file to `len` bytes. Durable after `sync`.
    pub fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let inode = self.inode(file)?;
        let len_before = inode.content.len() as u64;
        if len_before == len && inode.pending.is_empty() {
            return Ok(()); // Durable and volatile agree already: no crash can change this.
        }
        if len > FILE_BYTES_MAX {
            return Err(io::Error::new(ErrorKind::FileTooLarge, "length past FILE_BYTES_MAX"));
        }
        self.reserve(len_before, len)?;
        self.push(file, Op::SetLen { len });
        Ok(())
    }

    /// Renames the file `from` to `to`, replacing `to`. Volatile until `sync_dir` of both
    /// parents. Open handles keep referring to the file. Directories cannot be renamed.
    pub fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        check_path(from)?;
        check_path(to)?;
        if self.dirs.contains(from) {
            return Err(error(ErrorKind::InvalidInput, from, "cannot rename a directory"));
        }
        let Some(&file) = self.entries_volatile.get(from) else {
            return Err(error(ErrorKind::NotFound, from, "no such file"));
        };
        if self.dirs.contains(to) {
            return Err(error(ErrorKind::IsADirectory, to, "is a directory"));
        }
        self.require_dir(parent(to))?;
        if from != to {
            self.link(Layer::Volatile, to, Some(file));
            self.link(Layer::Volatile, from, None);
        }
        Ok(())
    }

    /// Removes the file entry `path`. Volatile until `sync_dir` of its parent; open handles keep
    /// working.
    pub fn remove(&mut self, path: &str) -> io::Result<()> {
        check_path(path)?;
        if self.dirs.contains(path) {
            return Err(error(ErrorKind::IsADirectory, path, "is a directory"));
        }
        if !self.entries_volatile.contains_key(path) {
            return Err(error(ErrorKind::NotFound, path, "no such file"));
        }
        self.link(Layer::Volatile, path, None);
        Ok(())
    }

    /// The names of the directories and (volatile) files directly in `dir`, sorted.
    pub fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        check_path(dir)?;
        self.require_dir(dir)?;
        let dirs = self.dirs.iter().filter(|path| !path.is_empty());
        let names: BTreeSet<&str> = dirs
            .chain(self.entries_volatile.keys())
            .filter(|path| parent(path) == dir)
            .map(|path| name(path))
            .collect();
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    /// Makes the durable file entries directly in `dir` equal the volatile ones.
    pub fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        check_path(dir)?;
        self.require_dir(dir)?;
        let paths: BTreeSet<String> = (self.entries_volatile.keys())
            .chain(self.entries_durable.keys())
            .filter(|path| parent(path) == dir)
            .cloned()
            .collect();
        for path in paths {
            let file = self.entries_volatile.get(&path).copied();
            self.link(Layer::Durable, &path, file);
        }
        Ok(())
    }

    /// Whether `path` names a directory or a (volatile) file. False for invalid paths.
    pub fn exists(&self, path: &str) -> bool {
        check_path(path).is_ok()
            && (self.dirs.contains(path) || self.entries_volatile.contains_key(path))
    }

    /// Bytes held by all live files (their volatile lengths), counted against the capacity.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Crashes the disk: every file's content becomes its durable image plus each operation
    /// since its last sync, replayed in order and each independently kept, dropped or torn per
    /// `config` using `rng`; the namespace becomes its durable version; files no durable entry
    /// names are deleted; every earlier `FileId` becomes stale.
    ///
    /// Returns one record per unsynced operation: first those of surviving files, by first
    /// durable path then operation order, then those of lost files (all `Dropped`), by id.
    pub fn crash(
        &mut self,
        rng: &mut impl rand::RngCore,
        config: &CrashConfig,
    ) -> Vec<CrashRecord> {
        let mut records = Vec::new();
        let mut renumbered: BTreeMap<FileId, FileId> = BTreeMap::new();
        let mut inodes: BTreeMap<FileId, Inode> = BTreeMap::new();
        for (path, &file) in &self.entries_durable {
            if renumbered.contains_key(&file) {
                continue; // A second name of the same file (a hard link).
            }
            let inode = &self.inodes[&file];
            let content = replay(inode, rng, config, &mut |offset, len, fate| {
                let path = Some(path.clone());
                records.push(CrashRecord { path, file, offset, len, fate });
            });
            renumbered.insert(file, self.next_id);
            inodes.insert(self.next_id, Inode::with_content(content));
            self.next_id += 1;
        }
        self.record_lost(&renumbered, &mut records);
        // The process died: every lock it held is gone.
        self.locks.clear();
        self.inodes = inodes;
        self.entries_durable = (self.entries_durable.iter())
            .map(|(path, file)| (path.clone(), renumbered[file]))
            .collect();
        self.entries_volatile = self.entries_durable.clone();
        for file in self.entries_durable.values() {
            let inode = self.inodes.get_mut(file).expect("renumbered inodes exist");
            inode.link_volatile_count += 1;
            inode.link_durable_count += 1;
        }
        self.used_bytes = self.inodes.values().map(|inode| inode.content.len() as u64).sum();
        self.assert_invariants();
        records
    }

    /// Digest of the durable state (directories, durable file paths, durable lengths and
    /// contents): FNV-1a 64 over a canonical, length-prefixed encoding.
    pub fn durable_digest(&self) -> u64 {
        let mut digest = Fnv1a::new();
        for dir in &self.dirs {
            digest.write(b"D");
            digest.write_bytes(dir.as_bytes());
        }
        for (path, file) in &self.entries_durable {
            digest.write(b"F");
            digest.write_bytes(path.as_bytes());
            digest.write_bytes(&self.inodes[file].content_durable);
        }
        digest.finish()
    }

    /// Records every pending operation of an inode that did not survive the crash as dropped.
    fn record_lost(&self, renumbered: &BTreeMap<FileId, FileId>, records: &mut Vec<CrashRecord>) {
        let mut paths: BTreeMap<FileId, &str> = BTreeMap::new();
        for (path, &file) in &self.entries_volatile {
            paths.entry(file).or_insert(path);
        }
        for (&file, inode) in &self.inodes {
            if renumbered.contains_key(&file) {
                continue;
            }
            for op in &inode.pending {
                let (offset, len) = op_extent(op);
                let path = paths.get(&file).map(|&path| path.to_owned());
                records.push(CrashRecord { path, file, offset, len, fate: CrashFate::Dropped });
            }
        }
    }

    /// Checks the invariants of the namespace, the link counts and the byte count. Linear in
    /// the disk's size, so it runs at crashes (and after every step in unit tests), not per call.
    fn assert_invariants(&self) {
        assert!(self.dirs.contains(""));
        for dir in self.dirs.iter().filter(|dir| !dir.is_empty()) {
            assert!(self.dirs.contains(parent(dir)), "{dir:?} has no parent");
        }
        let mut links: BTreeMap<FileId, (u32, u32)> = BTreeMap::new();
        for (path, file) in &self.entries_volatile {
            assert!(self.dirs.contains(parent(path)), "{path:?} has no parent");
            assert!(!self.dirs.contains(path), "{path:?} is a file and a directory");
            links.entry(*file).or_default().0 += 1;
        }
        for (path, file) in &self.entries_durable {
            assert!(!self.dirs.contains(path), "{path:?} is a file and a directory");
            links.entry(*file).or_default().1 += 1;
        }
        let mut used_bytes = 0;
        for (file, inode) in &self.inodes {
            let (link_volatile_count, link_durable_count) = links.remove(file).unwrap_or_default();
            assert_eq!(inode.link_volatile_count, link_volatile_count, "file {file}");
            assert_eq!(inode.link_durable_count, link_durable_count, "file {file}");
            assert!(!inode.is_garbage(), "file {file} is unreferenced");
            assert!(*file < self.next_id);
            let pending_bytes: u64 = inode.pending.iter().map(Op::data_bytes).sum();
            assert_eq!(inode.pending_bytes, pending_bytes, "file {file}");
            used_bytes += inode.content.len() as u64;
        }
        assert!(links.is_empty(), "entries name missing files: {links:?}");
        assert_eq!(self.used_bytes, used_bytes);
    }

    fn inode(&self, file: FileId) -> io::Result<&Inode> {
        self.inodes.get(&file).ok_or_else(stale)
    }

    fn inode_mut(&mut self, file: FileId) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&file).ok_or_else(stale)
    }

    fn require_dir(&self, dir: &str) -> io::Result<()> {
        if self.dirs.contains(dir) {
            Ok(())
        } else if self.entries_volatile.contains_key(dir) {
            Err(error(ErrorKind::NotADirectory, dir, "not a directory"))
        } else {
            Err(error(ErrorKind::NotFound, dir, "no such directory"))
        }
    }

    /// Fails with `StorageFull` if growing a file from `len_before` to `len_after` bytes would
    /// take the disk past its capacity.
    fn reserve(&self, len_before: u64, len_after: u64) -> io::Result<()> {
        let growth = len_after.saturating_sub(len_before);
        match self.capacity_bytes {
            Some(capacity) if self.used_bytes + growth > capacity => {
                Err(io::Error::new(ErrorKind::StorageFull, "no space left on device"))
            }
            _ => Ok(()),
        }
    }

    /// Applies `op` to the file's volatile content and queues it until the next sync, writing
    /// the oldest operations back when the queue is over its limits.
    fn push(&mut self, file: FileId, op: Op) {
        let inode = self.inodes.get_mut(&file).expect("callers check the id");
        let len_before = inode.content.len() as u64;
        apply(&mut inode.content, &op);
        let len_after = inode.content.len() as u64;
        self.used_bytes = self.used_bytes + len_after - len_before;
        inode.pending_bytes += op.data_bytes();
        inode.pending.push_back(op);
        while inode.pending.len() > 1
            && (inode.pending.len() > PENDING_OPS_MAX || inode.pending_bytes > PENDING_BYTES_MAX)
        {
            let oldest = inode.pending.pop_front().expect("the queue holds two or more");
            inode.pending_bytes -= oldest.data_bytes();
            apply(&mut inode.content_durable, &oldest);
        }
        assert!(inode.pending.len() <= PENDING_OPS_MAX);
        assert!(inode.pending_bytes <= PENDING_BYTES_MAX || inode.pending.len() == 1);
    }

    /// Points the entry `path` of `layer` at `file` (or removes it), keeping link counts.
    fn link(&mut self, layer: Layer, path: &str, file: Option<FileId>) {
        if let Some(file) = file {
            *self.inodes.get_mut(&file).expect("linked inodes exist").links_mut(layer) += 1;
        }
        let entries = match layer {
            Layer::Volatile => &mut self.entries_volatile,
            Layer::Durable => &mut self.entries_durable,
        };
        let replaced = match file {
            Some(file) => entries.insert(path.to_owned(), file),
            None => entries.remove(path),
        };
        if let Some(replaced) = replaced {
            let links =
                self.inodes.get_mut(&replaced).expect("linked inodes exist").links_mut(layer);
            assert!(*links > 0);
            *links -= 1;
            self.collect(replaced);
        }
    }

    /// Deletes `file` if nothing refers to it any more.
    fn collect(&mut self, file: FileId) {
        if self.inodes[&file].is_garbage() {
            let inode = self.inodes.remove(&file).expect("checked above");
            assert!(self.used_bytes >= inode.content.len() as u64);
            self.used_bytes -= inode.content.len() as u64;
        }
    }
}

/// Replays an inode's pending operations on its durable image, drawing each one's fate.
fn replay(
    inode: &Inode,
    rng: &mut impl rand::RngCore,
    config: &CrashConfig,
    record: &mut impl FnMut(u64, u64, CrashFate),
) -> Vec<u8> {
    let mut content = inode.content_durable.clone();
    for op in &inode.pending {
        let (offset, len) = op_extent(op);
        let fate = draw_fate(rng, config, op);
        match (&fate, op) {
            (CrashFate::Kept, _) => apply(&mut content, op),
            (CrashFate::Dropped, _) => {}
            (CrashFate::Torn { kept_bytes }, Op::Write { offset, data }) => {
                let kept = usize::try_from(*kept_bytes).expect("a prefix of a Vec");
                let data = data[..kept].to_vec();
                apply(&mut content, &Op::Write { offset: *offset, data });
            }
            (CrashFate::Torn { .. }, Op::SetLen { .. }) => unreachable!("set_len never tears"),
        }
        record(offset, len, fate);
    }
    content
}

/// Draws one operation's fate: one roll decides kept, dropped or torn; a tear draws its cut.
fn draw_fate(rng: &mut impl rand::RngCore, config: &CrashConfig, op: &Op) -> CrashFate {
    let roll: f64 = rng.random();
    if roll < config.drop_probability {
        return CrashFate::Dropped;
    }
    if roll >= config.drop_probability + config.tear_probability {
        return CrashFate::Kept;
    }
    let Op::Write { offset, data } = op else {
        return CrashFate::Kept;
    };
    let end = offset + data.len() as u64;
    // The sector boundaries strictly inside [offset, end).
    let first = (offset / SECTOR_SIZE_BYTES + 1) * SECTOR_SIZE_BYTES;
    let last = (end - 1) / SECTOR_SIZE_BYTES * SECTOR_SIZE_BYTES;
    if first > last {
        return CrashFate::Kept; // One sector: sector writes are atomic.
    }
    let boundary_count = (last - first) / SECTOR_SIZE_BYTES + 1;
    let cut = first + rng.random_range(0..boundary_count) * SECTOR_SIZE_BYTES;
    assert!(*offset < cut && cut < end);
    assert_eq!(cut % SECTOR_SIZE_BYTES, 0);
    CrashFate::Torn { kept_bytes: cut - offset }
}

/// A write's (offset, length), or a set_len's (new length, 0), as `CrashRecord` shows them.
fn op_extent(op: &Op) -> (u64, u64) {
    match op {
        Op::Write { offset, data } => (*offset, data.len() as u64),
        Op::SetLen { len } => (*len, 0),
    }
}

/// Applies one operation to a content image. Writes zero-fill any gap before them.
fn apply(content: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let start = usize::try_from(*offset).expect("offsets are below FILE_BYTES_MAX");
            let end = start + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[start..end].copy_from_slice(data);
        }
        Op::SetLen { len } => {
            content.resize(usize::try_from(*len).expect("lengths are below FILE_BYTES_MAX"), 0);
        }
    }
    assert!(content.len() as u64 <= FILE_BYTES_MAX);
}

/// Rejects paths longer than `PATH_BYTES_MAX` and paths with empty, `.` or `..` components or
/// NUL bytes (so also absolute paths). "" is the root. Every backend checks paths with this.
pub(crate) fn check_path(path: &str) -> io::Result<()> {
    if path.len() > PATH_BYTES_MAX {
        let message = format!("path of {} bytes is longer than {PATH_BYTES_MAX}", path.len());
        return Err(io::Error::new(ErrorKind::InvalidInput, message));
    }
    if path.is_empty() {
        return Ok(());
    }
    let bad = |component: &str| {
        component.is_empty() || component == "." || component == ".." || component.contains('\0')
    };
    if path.split('/').any(bad) {
        let message = format!("{path:?}: invalid path (want relative, `/`-separated, no . or ..)");
        return Err(io::Error::new(ErrorKind::InvalidInput, message));
    }
    Ok(())
}

/// The directory holding `path` ("" for the root's children).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// The last component of `path`.
fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

fn error(kind: ErrorKind, path: &str, message: &str) -> io::Error {
    io::Error::new(kind, format!("{path:?}: {message}"))
}

fn stale() -> io::Error {
    io::Error::new(ErrorKind::NotFound, "stale file handle")
}

/// FNV-1a, 64 bits: simple, stable across versions and platforms.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Writes a little-endian u64 length prefix, then the bytes.
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    //! Goal: pin down the model's semantics case by case. Method: each test runs a small script
    //! of disk commands through `check` and compares the transcript it prints.

    use std::fmt::Write as _;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Runs `script` (one command per line, see `step`) and compares its transcript to `expect`.
    #[track_caller]
    fn check(script: &str, expect: &str) {
        let mut disk = Disk::new(None);
        let mut handles: BTreeMap<String, FileId> = BTreeMap::new();
        let mut actual = String::new();
        for line in script.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match step(&mut disk, &mut handles, &words) {
                Ok(text) => actual.push_str(&text),
                Err(error) => writeln!(actual, "{line}: {:?}", error.kind()).unwrap(),
            }
            disk.assert_invariants();
            for (file, inode) in &disk.inodes {
                let mut replayed = inode.content_durable.clone();
                inode.pending.iter().for_each(|op| apply(&mut replayed, op));
                assert_eq!(replayed, inode.content, "file {file}: pending does not replay");
            }
        }
        let expect: Vec<&str> =
            expect.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        let expect = expect.join("\n");
        assert_eq!(actual.trim(), expect, "\nscript:\n{script}\nactual:\n{actual}");
    }

    /// One command. Paths are words; "/" is the root. A file command takes the path it was
    /// opened by, which names the handle (so it still works after a rename or remove).
    fn step(
        disk: &mut Disk,
        handles: &mut BTreeMap<String, FileId>,
        words: &[&str],
    ) -> io::Result<String> {
        let path = |index: usize| if words[index] == "/" { "" } else { words[index] };
        let number = |index: usize| words[index].parse::<u64>().expect("a number");
        let handle = words.get(1).and_then(|word| handles.get(*word)).copied();
        let handle = handle.unwrap_or(FileId::MAX);
        match words[0] {
            "capacity" => disk.set_capacity(Some(number(1))),
            "mkdir" => disk.create_dir_all(path(1))?,
            "open" => {
                let options = match words[2] {
                    "existing" => OpenOptions::EXISTING,
                    "create" => OpenOptions::CREATE,
                    "new" => OpenOptions::CREATE_NEW,
                    "truncate" => OpenOptions::TRUNCATE,
                    other => panic!("unknown open mode {other}"),
                };
                handles.insert(words[1].to_owned(), disk.open(path(1), options)?);
            }
            "write" => disk.write_at(handle, number(2), words[3].as_bytes())?,
            "append" => _ = disk.append(handle, words[2].as_bytes())?,
            "setlen" => disk.set_len(handle, number(2))?,
            "sync" => disk.sync(handle)?,
            "close" => disk.close(handle)?,
            "read" => {
                let mut buf = vec![0; usize::try_from(disk.len(handle)?).unwrap()];
                assert_eq!(disk.read_at(handle, 0, &mut buf)?, buf.len());
                return Ok(format!("{} = \"{}\"\n", words[1], buf.escape_ascii()));
            }
            "rename" => disk.rename(path(1), path(2))?,
            "remove" => disk.remove(path(1))?,
            "syncdir" => disk.sync_dir(path(1))?,
            "list" => return Ok(format!("{}: [{}]\n", words[1], disk.list(path(1))?.join(" "))),
            "exists" => return Ok(format!("{}: {}\n", words[1], disk.exists(path(1)))),
            "used" => return Ok(format!("used {}\n", disk.used_bytes())),
            "crash" => return Ok(crash(disk, words)),
            other => panic!("unknown command {other}"),
        }
        Ok(String::new())
    }

    /// `crash keep|drop|tear [SEED]`: crashes and prints one line per record.
    fn crash(disk: &mut Disk, words: &[&str]) -> String {
        let (drop_probability, tear_probability) = match words[1] {
            "keep" => (0.0, 0.0),
            "drop" => (1.0, 0.0),
            "tear" => (0.0, 1.0),
            other => panic!("unknown crash mode {other}"),
        };
        let seed = words.get(2).map_or(0, |word| word.parse().expect("a seed"));
        let config = CrashConfig { drop_probability, tear_probability };
        let mut text = String::new();
        for record in disk.crash(&mut ChaCha8Rng::seed_from_u64(seed), &config) {
            let path = record.path.as_deref().unwrap_or("-");
            let (offset, len) = (record.offset, record.len);
            let fate = match record.fate {
                CrashFate::Kept => "kept".to_owned(),
                CrashFate::Dropped => "dropped".to_owned(),
                CrashFate::Torn { kept_bytes } => format!("torn {kept_bytes}"),
            };
            writeln!(text, "crash: {path} #{} {offset}+{len} {fate}", record.file).unwrap();
        }
        text
    }

    #[test]
    fn reads_see_unsynced_writes_and_keep_all_crash_keeps_them() {
        check(
            r#"
            open a create
            write a 3 lo
            write a 0 hel
            append a _world
            read a
            syncdir /
            crash keep
            read a
            open a existing
            read a
            "#,
            r#"
            a = "hello_world"
            crash: a #1 3+2 kept
            crash: a #1 0+3 kept
            crash: a #1 5+6 kept
            read a: NotFound
            a = "hello_world"
            "#,
        );
    }

    #[test]
    fn drop_all_crash_restores_the_synced_content() {
        check(
            r#"
            open a create
            write a 0 v1
            sync a
            syncdir /
            write a 0 v2
            append a !
            setlen a 1
            crash drop
            open a existing
            read a
            "#,
            r#"
            crash: a #1 0+2 dropped
            crash: a #1 2+1 dropped
            crash: a #1 1+0 dropped
            a = "v1"
            "#,
        );
    }

    #[test]
    fn write_past_end_zero_fills_the_gap() {
        check(
            r#"
            open a create
            write a 2 x
            read a
            setlen a 5
            read a
            "#,
            r#"
            a = "\x00\x00x"
            a = "\x00\x00x\x00\x00"
            "#,
        );
    }

    #[test]
    fn a_created_file_needs_sync_dir_of_its_parent() {
        check(
            r#"
            mkdir d
            open d/a create
            write d/a 0 synced
            sync d/a
            open d/b create
            write d/b 0 x
            list d
            crash keep
            list d
            open d/a existing
            "#,
            r#"
            d: [a b]
            crash: d/b #2 0+1 dropped
            d: []
            open d/a existing: NotFound
            "#,
        );
    }

    #[test]
    fn rename_is_volatile_until_sync_dir() {
        let script = r#"
            open final create
            write final 0 old
            sync final
            syncdir /
            open tmp create
            write tmp 0 new
            sync tmp
            rename tmp final
            open final existing
            read final
            "#;
        let without = "crash keep\nopen final existing\nread final\nexists tmp";
        check(&format!("{script}\n{without}"), "final = \"new\"\nfinal = \"old\"\ntmp: false");
        let with = "syncdir /\ncrash keep\nopen final existing\nread final\nlist /";
        check(&format!("{script}\n{with}"), "final = \"new\"\nfinal = \"new\"\n/: [final]");
    }

    #[test]
    fn rename_with_only_the_target_dir_synced_leaves_a_hard_link() {
        check(
            r#"
            mkdir a
            mkdir b
            open a/f create
            write a/f 0 one
            sync a/f
            syncdir a
            rename a/f b/f
            syncdir b
            crash keep
            open a/f existing
            open b/f existing
            write a/f 0 two
            read b/f
            "#,
            r#"
            b/f = "two"
            "#,
        );
    }

    #[test]
    fn handles_outlive_remove_and_rename_until_closed() {
        check(
            r#"
            open a create
            write a 0 x
            remove a
            append a y
            read a
            exists a
            used
            close a
            used
            read a
            open b create
            rename b c
            append b z
            open c existing
            read c
            "#,
            r#"
            a = "xy"
            a: false
            used 2
            used 0
            read a: NotFound
            c = "z"
            "#,
        );
    }

    #[test]
    fn bad_paths_and_stale_ids_are_errors() {
        check(
            r#"
            open /a create
            open a//b create
            open ./a create
            open a/.. create
            open d/x create
            open / existing
            remove missing
            write nobody 0 x
            open a create
            mkdir a
            mkdir a/b
            list a
            mkdir d
            rename d e
            rename a d
            open d create
            close a
            close a
            "#,
            r#"
            open /a create: InvalidInput
            open a//b create: InvalidInput
            open ./a create: InvalidInput
            open a/.. create: InvalidInput
            open d/x create: NotFound
            open / existing: IsADirectory
            remove missing: NotFound
            write nobody 0 x: NotFound
            mkdir a: AlreadyExists
            mkdir a/b: NotADirectory
            list a: NotADirectory
            rename d e: InvalidInput
            rename a d: IsADirectory
            open d create: IsADirectory
            close a: InvalidInput
            "#,
        );
    }

    #[test]
    fn growth_past_capacity_fails_and_changes_nothing() {
        check(
            r#"
            capacity 10
            open a create
            write a 0 12345678
            write a 6 abcdef
            setlen a 11
            read a
            write a 0 XY
            append a 9!?
            read a
            used
            "#,
            r#"
            write a 6 abcdef: StorageFull
            setlen a 11: StorageFull
            a = "12345678"
            append a 9!?: StorageFull
            a = "XY345678"
            used 8
            "#,
        );
    }

    #[test]
    fn truncate_on_open_is_a_pending_set_len() {
        check(
            r#"
            open a create
            write a 0 abc
            sync a
            syncdir /
            open a truncate
            read a
            crash drop
            open a existing
            read a
            "#,
            r#"
            a = ""
            crash: a #1 0+0 dropped
            a = "abc"
            "#,
        );
    }

    #[test]
    fn a_new_directory_replaces_a_durable_only_file_entry() {
        check(
            r#"
            open x create
            write x 0 data
            sync x
            syncdir /
            remove x
            mkdir x
            used
            crash keep
            list /
            open x existing
            used
            "#,
            r#"
            used 4
            /: [x]
            open x existing: IsADirectory
            used 0
            "#,
        );
    }

    #[test]
    fn a_write_inside_one_sector_never_tears() {
        check(
            r#"
            open a create
            syncdir /
            write a 500 abcdefghijkl
            write a 0 xy
            write a 1020 abcdefghijklmnop
            crash tear
            "#,
            r#"
            crash: a #1 500+12 kept
            crash: a #1 0+2 kept
            crash: a #1 1020+16 torn 4
            "#,
        );
    }

    #[test]
    fn the_page_cache_writes_back_its_oldest_operations_when_full() {
        let mut disk = Disk::new(None);
        let file = disk.open("log", OpenOptions::CREATE).unwrap();
        disk.sync_dir("").unwrap();
        let extra_count = 10;
        for _ in 0..PENDING_OPS_MAX + extra_count {
            disk.append(file, b"x").unwrap();
        }
        let config = CrashConfig { drop_probability: 1.0, tear_probability: 0.0 };
        let records = disk.crash(&mut ChaCha8Rng::seed_from_u64(7), &config);
        assert_eq!(records.len(), PENDING_OPS_MAX);
        let file = disk.open("log", OpenOptions::EXISTING).unwrap();
        assert_eq!(disk.len(file).unwrap(), extra_count as u64);
    }

    #[test]
    fn durable_digest_follows_only_durable_state() {
        let mut disk = Disk::new(None);
        let empty = disk.durable_digest();
        let file = disk.open("a", OpenOptions::CREATE).unwrap();
        disk.write_at(file, 0, b"data").unwrap();
        disk.sync(file).unwrap();
        assert_eq!(disk.durable_digest(), empty, "the entry is not durable yet");
        disk.sync_dir("").unwrap();
        let synced = disk.durable_digest();
        assert_ne!(synced, empty);
        disk.write_at(file, 0, b"DATA").unwrap();
        assert_eq!(disk.durable_digest(), synced, "the write is not durable yet");
        disk.sync(file).unwrap();
        assert_ne!(disk.durable_digest(), synced);
    }
}
