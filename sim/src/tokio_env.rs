//! `TokioEnv`: the production `Env`, on real tokio, real sockets and real files.
//!
//! System code is written once against `Env`; the simulator tests it and this backend runs it.
//! It is a thin layer over the OS: error kinds pass through unchanged (the message gains the path
//! or address, the OS error stays reachable as the source). It adds behaviour only where the
//! `Env` contract, which the simulator checks, asks for more than the raw system call gives:
//! - paths are checked like the simulated disk's: relative, `/`-separated, no empty, `.` or `..`
//!   components, so no path escapes the root;
//! - every handle to one file shares one logical length, so `append` is atomic across tasks and
//!   handles (the simulated disk also gives every open of a file the same state);
//! - `create_dir_all` syncs the parent of each directory it creates: the trait says durable;
//! - a datagram over `DATAGRAM_BYTES_MAX` fails with `InvalidInput` before reaching the OS;
//! - stream sockets get `TCP_NODELAY`: protocol messages must not wait for Nagle's algorithm.
//!
//! Disk reads and writes run inline in the async fns (`pread`/`pwrite` on `std::fs::File`), not
//! through `spawn_blocking` as `tokio::fs` does: they hit the page cache and take microseconds,
//! less than the thread hand-off. `sync` and `sync_dir` (fsync, milliseconds on real disks) run
//! inside `tokio::task::block_in_place` on a multi-threaded runtime, so the worker's other tasks
//! move to another thread instead of waiting; elsewhere they run inline.
//!
//! Requires a tokio runtime with the I/O and time drivers (`Builder::enable_all`) for sockets,
//! sleeps and `spawn`, and a Unix OS (positioned I/O through `std::os::unix::fs::FileExt`).
//! This is the real-I/O backend, and the one module of the workspace that may read the OS clock
//! and OS entropy and touch sockets and files: hence the module-wide allowance of the
//! determinism lints below.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::SystemTime;

use rand_chacha::ChaCha12Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::env::{Env, File, OpenOptions, TcpListener, TcpStream, UdpSocket};
use crate::task::TaskHandle;
use crate::time::Instant;
use crate::world::disk::check_path;

/// The largest datagram `send_to` accepts, in bytes: 65535 minus a 20-byte IPv4 header and an
/// 8-byte UDP header. IPv6 would allow 20 bytes more; one limit for both keeps code portable.
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
const _: () = assert!(DATAGRAM_BYTES_MAX == 65_535 - 20 - 8);

/// How many times one `read_at` retries a read the OS interrupted (`EINTR`) before failing.
const READ_INTERRUPTED_MAX: u32 = 64;

/// The production `Env`: real monotonic and wall clocks, tasks on the ambient tokio runtime,
/// a ChaCha12 stream seeded from OS entropy, real UDP and TCP sockets, and files under a root
/// directory.
///
/// Clones share everything (root, clock origin, rng stream, open-file table). Use one
/// `TokioEnv` (and its clones) per data directory: the shared file lengths that make `append`
/// atomic are tracked per `TokioEnv`, not per process.
#[derive(Clone)]
pub struct TokioEnv {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    origin: tokio::time::Instant,
    rng: TokioRng,
    files: Arc<FileTable>,
}

impl fmt::Debug for TokioEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioEnv").field("root", &self.inner.root).finish_non_exhaustive()
    }
}

impl TokioEnv {
    /// An env whose files live under `root`, with an rng seeded from OS entropy.
    ///
    /// Touches no file: `root` need not exist yet (`create_dir_all("")` creates it). May be
    /// called outside a tokio runtime; sockets, sleeps and `spawn` need one.
    ///
    /// # Panics
    ///
    /// If OS entropy cannot be read; `try_new` returns that error instead.
    pub fn new(root: impl Into<PathBuf>) -> TokioEnv {
        match TokioEnv::try_new(root) {
            Ok(env) => env,
            Err(error) => panic!("TokioEnv needs OS entropy to seed its rng: {error}"),
        }
    }

    /// Like `new`, but returns the error if OS entropy cannot be read.
    ///
    /// The seed comes from the OS (`getrandom`): production keys must be unpredictable. This
    /// is the one place in the workspace that reads OS randomness.
    pub fn try_new(root: impl Into<PathBuf>) -> io::Result<TokioEnv> {
        let rng = ChaCha12Rng::try_from_os_rng()
            .map_err(|error| io::Error::other(format!("reading OS entropy: {error}")))?;
        Ok(TokioEnv::with_rng(root.into(), rng))
    }

    /// An env whose rng is seeded from `seed`: reproducible, so for tests only. Keys drawn from
    /// it are predictable.
    pub fn with_seed(root: impl Into<PathBuf>, seed: u64) -> TokioEnv {
        TokioEnv::with_rng(root.into(), ChaCha12Rng::seed_from_u64(seed))
    }

    fn with_rng(root: PathBuf, rng: ChaCha12Rng) -> TokioEnv {
        let inner = Inner {
            root,
            origin: tokio::time::Instant::now(),
            rng: TokioRng { stream: Arc::new(Mutex::new(rng)) },
            files: Arc::new(FileTable::default()),
        };
        TokioEnv { inner: Arc::new(inner) }
    }

    /// The directory that `Env` paths are relative to.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The OS path of the `Env` path `path`, after checking it like the simulated disk does.
    fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        check_path(path)?;
        if path.is_empty() { Ok(self.inner.root.clone()) } else { Ok(self.inner.root.join(path)) }
    }
}

impl Env for TokioEnv {
    type UdpSocket = TokioUdpSocket;
    type TcpListener = TokioTcpListener;
    type TcpStream = TokioTcpStream;
    type File = TokioFile;
    type Rng = TokioRng;

    fn now(&self) -> Instant {
        let elapsed = self.inner.origin.elapsed();
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    /// The tokio timer is created on first poll, so the future may be made outside a runtime.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let target = self.inner.origin.checked_add(deadline.since_origin());
        async move {
            match target {
                Some(target) if deadline != Instant::MAX => tokio::time::sleep_until(target).await,
                _ => std::future::pending().await,
            }
        }
    }

    /// Spawns on the ambient runtime with `tokio::spawn`.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    fn spawn<F>(&self, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (wrapped, mut handle) = TaskHandle::wrap(future);
        let abort = tokio::spawn(wrapped).abort_handle();
        handle.set_abort(Box::new(move || abort.abort()));
        handle
    }

    fn rng(&self) -> TokioRng {
        self.inner.rng.clone()
    }

    fn buggify(&self, _site: &'static str) -> bool {
        false
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<TokioUdpSocket> {
        let socket = tokio::net::UdpSocket::bind(addr).await;
        let socket = socket.map_err(|error| annotate(error, "bind udp", &addr))?;
        Ok(TokioUdpSocket { socket })
    }

    async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<TokioTcpListener> {
        let listener = tokio::net::TcpListener::bind(addr).await;
        let listener = listener.map_err(|error| annotate(error, "listen tcp", &addr))?;
        Ok(TokioTcpListener { listener })
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<TokioTcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await;
        let stream = stream.map_err(|error| annotate(error, "connect tcp", &addr))?;
        TokioTcpStream::new(stream)
    }

    async fn open(&self, path: &str, options: OpenOptions) -> io::Result<TokioFile> {
        let full = self.resolve(path)?;
        // Never O_TRUNC: another handle may share this file's length; truncate through it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(options.create || options.create_new)
            .create_new(options.create_new)
            .open(&full)
            .map_err(|error| annotate(error, "open", &path))?;
        let metadata = file.metadata().map_err(|error| annotate(error, "stat", &path))?;
        assert!(metadata.is_file(), "opened read-write, so {path:?} is a file");
        let key = FileKey { device: metadata.dev(), inode: metadata.ino() };
        let state = self.inner.files.register(key, file, metadata.len());
        let token = NEXT_LOCK_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = TokioFile { state, path: path.to_owned(), token };
        if options.truncate {
            file.set_len(0).await?;
        }
        Ok(file)
    }

    async fn create_dir_all(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        let root = &self.inner.root;
        std::fs::create_dir_all(root).map_err(|error| annotate(error, "create root", root))?;
        let mut prefix = root.clone();
        let components: Vec<&str> = path.split('/').filter(|name| !name.is_empty()).collect();
        for (index, name) in components.iter().enumerate() {
            prefix.push(name);
            let last = index + 1 == components.len();
            create_dir_synced(&prefix, last).map_err(|error| annotate(error, "mkdir", &path))?;
        }
        assert_eq!(prefix, full);
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (source, target) = (self.resolve(from)?, self.resolve(to)?);
        let metadata = std::fs::symlink_metadata(&source);
        if metadata.map_err(|error| annotate(error, "rename", &from))?.is_dir() {
            let message = format!("rename {from:?}: cannot rename a directory");
            return Err(io::Error::new(ErrorKind::InvalidInput, message));
        }
        let renamed = std::fs::rename(&source, &target);
        renamed.map_err(|error| annotate(error, "rename", &format_args!("{from:?} to {to:?}")))
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        std::fs::remove_file(full).map_err(|error| annotate(error, "remove", &path))
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let full = self.resolve(dir)?;
        let entries = std::fs::read_dir(full).map_err(|error| annotate(error, "list", &dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| annotate(error, "list", &dir))?;
            let name = entry.file_name().into_string().map_err(|name| {
                let message = format!("list {dir:?}: entry name {name:?} is not UTF-8");
                io::Error::new(ErrorKind::InvalidData, message)
            })?;
            names.push(name);
        }
        names.sort_unstable();
        Ok(names)
    }

    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let full = self.resolve(dir)?;
        sync_directory(&full).map_err(|error| annotate(error, "sync dir", &dir))
    }
}

/// Creates the directory `path` unless it exists, and if it created it, syncs its parent so the
/// new entry is durable. An existing non-directory is `AlreadyExists` when it is the directory
/// asked for (`last`) and `NotADirectory` when it is one of its parents, as in the simulator.
fn create_dir_synced(path: &Path, last: bool) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => {
            let parent = path.parent().expect("a created directory has a parent");
            sync_directory(parent)
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            if std::fs::metadata(path)?.is_dir() {
                Ok(())
            } else if last {
                Err(error)
            } else {
                Err(io::Error::new(ErrorKind::NotADirectory, "a parent is not a directory"))
            }
        }
        Err(error) => Err(error),
    }
}

/// Fsyncs the directory at `path`, making its entries durable.
fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = std::fs::File::open(path)?;
    blocking(|| directory.sync_all())
}

/// Runs `work`, which blocks for long (an fsync), without stalling the worker's other tasks:
/// inside `block_in_place` on a multi-threaded runtime, inline anywhere else (a current-thread
/// runtime, where `block_in_place` would panic, or no runtime).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Wraps `error` with what was being done to what, keeping its kind; the original error stays
/// reachable through `Error::source` and `io::Error::get_ref`.
fn annotate(error: io::Error, operation: &str, subject: &dyn fmt::Debug) -> io::Error {
    let context = format!("{operation} {subject:?}");
    io::Error::new(error.kind(), Annotated { context, source: error })
}

/// An OS error with the operation and path or address it came from.
#[derive(Debug)]
struct Annotated {
    context: String,
    source: io::Error,
}

impl fmt::Display for Annotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Annotated {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `TokioEnv`'s random stream: ChaCha12, seeded from OS entropy (or a test seed). Clones share
/// one stream, so no two draws anywhere in the process repeat each other.
#[derive(Clone)]
pub struct TokioRng {
    stream: Arc<Mutex<ChaCha12Rng>>,
}

impl fmt::Debug for TokioRng {
    /// Never shows the state: it would reveal every key drawn from it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokioRng { .. }")
    }
}

impl RngCore for TokioRng {
    fn next_u32(&mut self) -> u32 {
        lock(&self.stream).next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        lock(&self.stream).next_u64()
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        lock(&self.stream).fill_bytes(destination);
    }
}

impl CryptoRng for TokioRng {}

/// A UDP socket on `tokio::net::UdpSocket`.
#[derive(Debug)]
pub struct TokioUdpSocket {
    socket: tokio::net::UdpSocket,
}

impl UdpSocket for TokioUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Fails with `InvalidInput` above `DATAGRAM_BYTES_MAX`; the OS may fragment anything less.
    async fn send_to(&self, data: &[u8], target: SocketAddr) -> io::Result<usize> {
        if data.len() > DATAGRAM_BYTES_MAX {
            let message = format!(
                "datagram of {} bytes to {target} exceeds {DATAGRAM_BYTES_MAX} bytes",
                data.len()
            );
            return Err(io::Error::new(ErrorKind::InvalidInput, message));
        }
        self.socket.send_to(data, target).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}

/// A TCP listener on `tokio::net::TcpListener`; accepted streams have `TCP_NODELAY` set.
#[derive(Debug)]
pub struct TokioTcpListener {
    listener: tokio::net::TcpListener,
}

impl TcpListener for TokioTcpListener {
    type Stream = TokioTcpStream;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn accept(&self) -> io::Result<(TokioTcpStream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((TokioTcpStream::new(stream)?, peer))
    }
}

/// A TCP connection on `tokio::net::TcpStream`, with `TCP_NODELAY` set.
#[derive(Debug)]
pub struct TokioTcpStream {
    stream: tokio::net::TcpStream,
}

impl TokioTcpStream {
    fn new(stream: tokio::net::TcpStream) -> io::Result<TokioTcpStream> {
        stream
            .set_nodelay(true)
            .map_err(|error| annotate(error, "set", &format_args!("TCP_NODELAY")))?;
        Ok(TokioTcpStream { stream })
    }
}

impl TcpStream for TokioTcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for TokioTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TokioTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Identifies a file independently of its name, so handles survive renames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FileKey {
    device: u64,
    inode: u64,
}

/// The open files of one `TokioEnv`, so that every handle to a file shares its state.
#[derive(Default)]
struct FileTable {
    // Invariant: an entry is live (upgradable) or about to be removed by its `FileState::drop`.
    files: Mutex<BTreeMap<FileKey, Weak<FileState>>>,
}

impl FileTable {
    /// The state of the open file `key`, or a new one over `file` of length `len_bytes`. When
    /// the file is open already, `file` (a second descriptor) is closed.
    fn register(
        self: &Arc<Self>,
        key: FileKey,
        file: std::fs::File,
        len_bytes: u64,
    ) -> Arc<FileState> {
        let mut files = lock(&self.files);
        if let Some(state) = files.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        let table = Arc::downgrade(self);
        let state = Arc::new(FileState {
            file,
            key,
            table,
            len_bytes: Mutex::new(len_bytes),
            lock_holder: Mutex::new(None),
        });
        files.insert(key, Arc::downgrade(&state));
        state
    }
}

/// One open file, shared by all its handles.
struct FileState {
    file: std::fs::File,
    key: FileKey,
    table: Weak<FileTable>,
    // Invariant: equals the file's length on disk (unless another process changes it, or a
    // write failed part way). Held across every write and `set_len`, which serializes them.
    len_bytes: Mutex<u64>,
    // The token of the handle holding the advisory lock (the OS lock is held while `Some`).
    lock_holder: Mutex<Option<u64>>,
}

impl Drop for FileState {
    fn drop(&mut self) {
        let Some(table) = self.table.upgrade() else { return };
        let mut files = lock(&table.files);
        // A concurrent open may have replaced the dead entry with a live one: keep that.
        if files.get(&self.key).is_some_and(|entry| entry.strong_count() == 0) {
            files.remove(&self.key);
        }
    }
}

/// A file handle: positioned I/O on `std::fs::File`, inline (see the module doc).
///
/// Every handle to the same file (through one `TokioEnv`) shares one logical length, so
/// `append` is atomic with respect to every other `append`, `write_at` and `set_len` on it:
/// they are serialized. Reads run concurrently with everything.
///
/// A failed write leaves the logical length unchanged; bytes it may have written past that
/// length are overwritten by the next `append`.
pub struct TokioFile {
    state: Arc<FileState>,
    path: String,
    // Names this handle for advisory locks.
    token: u64,
}

/// Hands out lock tokens (unique per process).
static NEXT_LOCK_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Drop for TokioFile {
    fn drop(&mut self) {
        let mut holder = lock(&self.state.lock_holder);
        if *holder == Some(self.token) {
            *holder = None;
            // Closing the last handle would release it too; this releases it now.
            let _ = self.state.file.unlock();
        }
    }
}

impl fmt::Debug for TokioFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokioFile {
    /// Reads until `buf` is full or end of file; retries interrupted reads a bounded number of
    /// times. Each pass makes progress or stops, so the loop is bounded by `buf.len()`.
    fn read_full(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut count = 0;
        let mut interrupted_count = 0;
        while count < buf.len() {
            let position = offset.checked_add(count as u64).ok_or_else(offset_overflow)?;
            match self.state.file.read_at(&mut buf[count..], position) {
                Ok(0) => break,
                Ok(read) => count += read,
                Err(error) if error.kind() == ErrorKind::Interrupted => {
                    interrupted_count += 1;
                    if interrupted_count > READ_INTERRUPTED_MAX {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
        assert!(count <= buf.len());
        Ok(count)
    }
}

fn offset_overflow() -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, "offset + length overflows u64")
}

impl File for TokioFile {
    fn try_lock(&self) -> io::Result<()> {
        let mut holder = lock(&self.state.lock_holder);
        match *holder {
            Some(token) if token == self.token => return Ok(()),
            Some(_) => {
                return Err(io::Error::new(
                    ErrorKind::WouldBlock,
                    "file is locked by another handle",
                ));
            }
            None => {}
        }
        match self.state.file.try_lock() {
            Ok(()) => {
                *holder = Some(self.token);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                ErrorKind::WouldBlock,
                format!("{} is locked by another process", self.path),
            )),
            Err(std::fs::TryLockError::Error(error)) => Err(annotate(error, "lock", &self.path)),
        }
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.read_full(offset, buf).map_err(|error| annotate(error, "read", &self.path))
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(()); // Like pwrite(2): an empty write does not extend the file.
        }
        let end = offset.checked_add(data.len() as u64).ok_or_else(offset_overflow)?;
        let mut len_bytes = lock(&self.state.len_bytes);
        let written = self.state.file.write_all_at(data, offset);
        written.map_err(|error| annotate(error, "write", &self.path))?;
        *len_bytes = (*len_bytes).max(end);
        Ok(())
    }

    async fn append(&self, data: &[u8]) -> io::Result<u64> {
        let mut len_bytes = lock(&self.state.len_bytes);
        let offset = *len_bytes;
        let end = offset.checked_add(data.len() as u64).ok_or_else(offset_overflow)?;
        let written = self.state.file.write_all_at(data, offset);
        written.map_err(|error| annotate(error, "append", &self.path))?;
        *len_bytes = end;
        Ok(offset)
    }

    /// `fsync` (`sync_all`: data and metadata, so the length too), outside the worker's task
    /// queue when the runtime has other workers (see the module doc).
    async fn sync(&self) -> io::Result<()> {
        let synced = blocking(|| self.state.file.sync_all());
        synced.map_err(|error| annotate(error, "sync", &self.path))
    }

    /// The logical length shared by this file's handles: no system call.
    async fn len(&self) -> io::Result<u64> {
        Ok(*lock(&self.state.len_bytes))
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        let mut len_bytes = lock(&self.state.len_bytes);
        let resized = self.state.file.set_len(len);
        resized.map_err(|error| annotate(error, "set_len", &self.path))?;
        *len_bytes = len;
        Ok(())
    }
}
