//! The `Env` traits: everything system code may ask of the outside world.
//!
//! System crates are generic over `E: Env` and reach time, tasks, randomness, the network and the
//! disk only through it. Three backends implement it: the deterministic `World`
//! (`crate::world`), real tokio (`crate::tokio_env`, feature `tokio`) and turmoil
//! (`crate::turmoil_env`, feature `turmoil`).
//!
//! Every future returned here is `Send`, so production can run on tokio's multi-threaded runtime.
//! Errors are `std::io::Error` with the `ErrorKind` a real OS would give (`TimedOut`,
//! `ConnectionRefused`, `ConnectionReset`, `StorageFull`, `NotFound`, ...), so code written against
//! the simulator handles exactly the errors it will meet in production.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use rand_core::{CryptoRng, RngCore};

use crate::task::TaskHandle;
use crate::time::{Elapsed, Instant};

/// The injectable runtime: clock, tasks, randomness, network, disk and fault points.
///
/// Cloning is cheap (a handle); clones share the same node, clock, rng stream and disk.
pub trait Env: Clone + Send + Sync + 'static {
    /// A bound datagram socket.
    type UdpSocket: UdpSocket;
    /// A listening stream socket.
    type TcpListener: TcpListener<Stream = Self::TcpStream>;
    /// A connected, reliable, ordered byte stream (tokio's `AsyncRead` + `AsyncWrite`).
    type TcpStream: TcpStream;
    /// An open file.
    type File: File;
    /// This node's random stream.
    type Rng: RngCore + CryptoRng + Clone + Send + Sync + 'static;

    /// Monotonic time: never goes backwards.
    fn now(&self) -> Instant;

    /// Wall-clock time. In simulation it carries this node's offset and drift and may jump.
    fn wall(&self) -> SystemTime;

    /// Completes once `duration` has passed on the monotonic clock.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.sleep_until(self.now() + duration)
    }

    /// Completes once the monotonic clock reaches `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;

    /// Runs `future` for at most `duration`; `Err(Elapsed)` if it did not finish in time.
    fn timeout<F>(
        &self,
        duration: Duration,
        future: F,
    ) -> impl Future<Output = Result<F::Output, Elapsed>> + Send
    where
        F: Future + Send,
    {
        crate::time::Timeout::new(future, self.sleep(duration))
    }

    /// Spawns a task on this node. It dies with the node (crash) or when aborted.
    fn spawn<F>(&self, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// This node's random stream (seeded in simulation; cryptographically seeded in production).
    fn rng(&self) -> Self::Rng;

    /// A fault-injection point. In simulation, each named site is active in a seed-chosen
    /// fraction of runs and, when active, fires with a seed-chosen probability; in production it
    /// never fires.
    fn buggify(&self, site: &'static str) -> bool;

    /// Binds a datagram socket. Port 0 picks a free port; an unspecified IP means this node's.
    fn bind_udp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send;

    /// Listens for stream connections on `addr`.
    fn listen_tcp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send;

    /// Opens a stream connection to `addr`.
    fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Opens (and with `options.create`, creates) the file at `path`.
    ///
    /// Paths are `/`-separated and relative to the node's data directory. A new file's directory
    /// entry is durable only after `sync_dir` of its parent.
    fn open(
        &self,
        path: &str,
        options: OpenOptions,
    ) -> impl Future<Output = io::Result<Self::File>> + Send;

    /// Creates `path` and its missing parents (durably).
    fn create_dir_all(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send;

    /// Renames `from` to `to`, replacing `to`. Durable after `sync_dir` of both parents.
    fn rename(&self, from: &str, to: &str) -> impl Future<Output = io::Result<()>> + Send;

    /// Removes the file at `path`. Durable after `sync_dir` of its parent.
    fn remove(&self, path: &str) -> impl Future<Output = io::Result<()>> + Send;

    /// The names (not paths) of the entries directly in `dir`, sorted.
    fn list(&self, dir: &str) -> impl Future<Output = io::Result<Vec<String>>> + Send;

    /// Makes creates, renames and removes of entries directly in `dir` durable.
    fn sync_dir(&self, dir: &str) -> impl Future<Output = io::Result<()>> + Send;
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail with `AlreadyExists` if it exists (implies `create`).
    pub create_new: bool,
    /// Cut the file to length zero on open.
    pub truncate: bool,
}

impl OpenOptions {
    /// Open an existing file.
    pub const EXISTING: OpenOptions =
        OpenOptions { create: false, create_new: false, truncate: false };
    /// Open, creating it if missing.
    pub const CREATE: OpenOptions =
        OpenOptions { create: true, create_new: false, truncate: false };
    /// Create a new file; fail if it exists.
    pub const CREATE_NEW: OpenOptions =
        OpenOptions { create: true, create_new: true, truncate: false };
    /// Create or truncate.
    pub const TRUNCATE: OpenOptions =
        OpenOptions { create: true, create_new: false, truncate: true };
}

/// A datagram socket. Datagrams may be lost, duplicated and reordered; each arrives whole or not.
pub trait UdpSocket: Send + Sync + 'static {
    /// The address this socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Sends one datagram. Larger than the path MTU fails with `InvalidInput`. The simulator
    /// knows the MTU of every link (1472 bytes by default); production rejects only what no
    /// UDP datagram can carry (65,507 bytes) and lets IP fragment the rest, so code that passes
    /// in simulation never sends more than production allows.
    fn send_to(
        &self,
        data: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Receives one datagram into `buf` (truncating it if `buf` is short). Cancel-safe.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}

/// A listening stream socket.
pub trait TcpListener: Send + Sync + 'static {
    /// The connection type it accepts.
    type Stream: TcpStream;

    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for the next incoming connection. Cancel-safe.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

/// A connected byte stream: reliable and ordered, or broken with an error (never silently short).
///
/// On `World` and on real TCP a stream the network cannot carry breaks with `TimedOut` or
/// `ConnectionReset`; on turmoil it may stall instead. Bound every read with `Env::timeout`.
pub trait TcpStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static
{
    /// This end's address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The other end's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
}

/// An open file: positioned reads and writes, appends, explicit durability.
///
/// Written data is visible to reads at once but durable only after `sync`; a crash may drop,
/// keep, or tear (at 512-byte sectors) each write made since the last `sync`.
pub trait File: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(
        &self,
        offset: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            let count = self.read_at(offset, buf).await?;
            if count == buf.len() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"))
            }
        }
    }

    /// Writes all of `data` at `offset`, extending the file (zero-filled) if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// Writes all of `data` at the current end of file; returns the offset it was written at.
    fn append(&self, data: &[u8]) -> impl Future<Output = io::Result<u64>> + Send;

    /// Makes every write to this file so far durable (fsync).
    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send;

    /// The file's current length in bytes.
    fn len(&self) -> impl Future<Output = io::Result<u64>> + Send;

    /// Whether the file is empty.
    fn is_empty(&self) -> impl Future<Output = io::Result<bool>> + Send {
        async move { Ok(self.len().await? == 0) }
    }

    /// Truncates or zero-extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> impl Future<Output = io::Result<()>> + Send;

    /// Takes an exclusive advisory lock on the file, held until this handle is dropped (or the
    /// node crashes); fails with `WouldBlock` at once if another handle holds it (on tokio, a
    /// handle of this or another process). Stores use it to refuse a second opener of their
    /// directory.
    fn try_lock(&self) -> io::Result<()>;
}
