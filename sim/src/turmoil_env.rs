//! `TurmoilEnv`: an `Env` whose network and clock are turmoil's simulated hosts and whose disk
//! is our own disk model (`crate::world::disk::Disk`).
//!
//! Why: it is a second, independent simulator under the same generic system code. If a system
//! passes on `World` but fails here (or the other way round), either the system leans on a quirk
//! of one network model or the `Env` traits are bent to our own simulator. It is also the way to
//! run stacks that are bound to tokio types inside a simulation.
//!
//! Use: inside a turmoil host (or client) closure, build one env per boot with
//! `TurmoilEnv::new(host_name, config, disk)` and hand clones of it to the node's code. Create
//! the `SharedDisk` outside the closure, so it outlives `Sim::crash` and `Sim::bounce`. turmoil
//! knows nothing about our disk: call `crash_disk` between `sim.crash(host)` and
//! `sim.bounce(host)` so that unsynced writes are dropped, kept or torn as on a real crash.
//!
//! Determinism: the node's rng is ChaCha12 seeded from `TurmoilEnvConfig::seed`, the host name
//! and the simulated time of the boot (so a rebooted node draws a fresh stream); never from the
//! OS. turmoil's own rng (latency, link failures) must be seeded with `Builder::rng_seed`, or
//! turmoil seeds it from the OS. `wall()` counts from `TurmoilEnvConfig::wall_epoch_secs`, not
//! from turmoil's epoch, which defaults to the OS clock.
//!
//! Fault model, and the limits of what turmoil models:
//! - Time moves in fixed ticks (`Builder::tick_duration`, 1 ms by default), every host in
//!   lockstep. Idle time is not skipped, so a simulated hour costs 3.6 million ticks of real
//!   CPU, and timers fire at tick granularity.
//! - Links: per-message latency between a minimum and a maximum (0 to 100 ms by default), so
//!   datagrams reorder; random link failure and repair (`fail_rate`, `repair_rate`); explicit
//!   partitions, both ways and one way; holding and releasing messages.
//! - Not modelled: datagram duplication, per-datagram loss independent of link failure,
//!   bandwidth, per-node clock offset and drift (every host's `wall()` agrees), MTU (this env
//!   enforces `udp_payload_max_bytes` itself), pausing a node.
//! - TCP: segments dropped by a partition are never retransmitted, and later segments wait
//!   behind the gap, so the stream stalls instead of resetting: callers need timeouts. A connect
//!   across a partition fails at once with `ConnectionRefused` instead of timing out.
//! - Binding: turmoil accepts only unspecified and loopback addresses; binding this node's own
//!   address is mapped to unspecified here, and `local_addr` reports the node's address.
//! - Crash: turmoil drops the host's tokio runtime (tasks, sockets, streams) and restarts the
//!   host closure on bounce; the disk crash is `crash_disk`.
//! - Disk: the crash semantics of our model, but no latency and no injected I/O errors (those
//!   are a layer of `World`).
//! - `tokio::select!` without `biased;` draws from tokio's runtime rng, which turmoil seeds only
//!   under `--cfg tokio_unstable`; system code must not rely on it.

// This module is a backend: it implements `Env` on tokio's clock and task system, which is
// exactly what the workspace bans everywhere else (`tokio::spawn`, `tokio::time::Instant::now`).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha12Rng};
use rand_core::{CryptoRng, RngCore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::env::{Env, File, OpenOptions, TcpListener, TcpStream, UdpSocket};
use crate::task::TaskHandle;
use crate::time::Instant;
use crate::world::BuggifyConfig;
use crate::world::disk::{CrashConfig, CrashRecord, Disk, FileId};
use crate::world::trace::{hash_str, splitmix64};

/// The default wall-clock epoch: 2026-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const WALL_EPOCH_SECS_DEFAULT: u64 = 1_767_225_600;
/// The default largest datagram payload between hosts: Ethernet's 1500 less IPv4 and UDP headers.
pub const UDP_PAYLOAD_MAX_BYTES_DEFAULT: usize = 1472;
/// The largest datagram payload to loopback or to this node's own address (IPv4's limit).
pub const UDP_PAYLOAD_MAX_BYTES_LOOPBACK: usize = 65_507;

const _: () = assert!(UDP_PAYLOAD_MAX_BYTES_DEFAULT <= UDP_PAYLOAD_MAX_BYTES_LOOPBACK);

/// A node's disk model, shared by the node's env, its files, and the test that crashes it.
pub type SharedDisk = Arc<Mutex<Disk>>;

/// A fresh, empty disk holding at most `capacity_bytes` (`None` = unlimited).
pub fn new_disk(capacity_bytes: Option<u64>) -> SharedDisk {
    Arc::new(Mutex::new(Disk::new(capacity_bytes)))
}

/// Applies crash semantics to `disk`: each write since its file's last `sync` is dropped, kept
/// or torn as `crash` says, drawn from a ChaCha8 stream seeded with `seed`.
///
/// Call it between `Sim::crash` and `Sim::bounce`, while no task of the host runs.
pub fn crash_disk(disk: &SharedDisk, seed: u64, crash: &CrashConfig) -> Vec<CrashRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    lock(disk).crash(&mut rng, crash)
}

/// Locks a mutex, taking over the data if a panicking holder poisoned it.
///
/// A panic inside a disk operation fails the host (and with it the simulation) anyway; the
/// data is still consistent, as every `Disk` method leaves it so before it can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a `TurmoilEnv` behaves where turmoil has no opinion.
#[derive(Clone, Debug, PartialEq)]
pub struct TurmoilEnvConfig {
    /// The scenario seed. Each node's rng stream and buggify's site activation derive from it.
    pub seed: u64,
    /// `wall()` at simulated time zero, in seconds since the Unix epoch.
    pub wall_epoch_secs: u64,
    /// Fault points (`Env::buggify`). Disabled unless set.
    pub buggify: BuggifyConfig,
    /// Largest datagram payload to another host; larger sends fail with `InvalidInput`.
    pub udp_payload_max_bytes: usize,
}

impl TurmoilEnvConfig {
    /// Defaults with `seed`: buggify disabled, wall clock from 2026-01-01, 1472-byte MTU.
    pub fn new(seed: u64) -> TurmoilEnvConfig {
        TurmoilEnvConfig {
            seed,
            wall_epoch_secs: WALL_EPOCH_SECS_DEFAULT,
            buggify: BuggifyConfig::DISABLED,
            udp_payload_max_bytes: UDP_PAYLOAD_MAX_BYTES_DEFAULT,
        }
    }
}

/// The `Env` of one boot of one turmoil host.
///
/// Cloning is cheap; clones share the clock origin, rng stream, buggify sites and disk.
#[derive(Clone)]
pub struct TurmoilEnv {
    node: Arc<Node>,
}

struct Node {
    host: String,
    address: IpAddr,
    config: TurmoilEnvConfig,
    /// tokio's (turmoil-driven) clock at construction; `now()` measures from here.
    origin_tokio: tokio::time::Instant,
    /// Simulated time since the start of the simulation at construction.
    origin: Instant,
    rng: TurmoilRng,
    /// Invariant: a site's activation, once decided, never changes.
    buggify_sites: Mutex<BTreeMap<&'static str, Option<f64>>>,
    disk: SharedDisk,
}

impl std::fmt::Debug for TurmoilEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TurmoilEnv(host={}, address={})", self.node.host, self.node.address)
    }
}

impl TurmoilEnv {
    /// The env of the turmoil host `host` (its name as registered with `Sim::host`), on `disk`.
    ///
    /// Must be called from inside that host's software, once per boot; panics outside a
    /// turmoil simulation or if `host` is not registered.
    pub fn new(host: &str, config: TurmoilEnvConfig, disk: SharedDisk) -> TurmoilEnv {
        let sim_elapsed = turmoil::sim_elapsed()
            .unwrap_or_else(|| panic!("TurmoilEnv::new({host}) outside a turmoil host"));
        let origin = Instant::ZERO + sim_elapsed;
        assert!(origin < Instant::MAX, "simulated time overflowed");
        assert!(config.udp_payload_max_bytes <= UDP_PAYLOAD_MAX_BYTES_LOOPBACK);
        let address = turmoil::lookup(host);
        // Host name and boot time separate the streams of nodes and of one node's boots.
        let stream_seed = splitmix64(config.seed ^ hash_str(host) ^ splitmix64(origin.as_nanos()));
        let rng =
            TurmoilRng { stream: Arc::new(Mutex::new(ChaCha12Rng::seed_from_u64(stream_seed))) };
        let node = Node {
            host: host.to_owned(),
            address,
            config,
            origin_tokio: tokio::time::Instant::now(),
            origin,
            rng,
            buggify_sites: Mutex::new(BTreeMap::new()),
            disk,
        };
        TurmoilEnv { node: Arc::new(node) }
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.node.host
    }

    /// The host's address in the simulated network.
    pub fn address(&self) -> IpAddr {
        self.node.address
    }

    /// The configuration this env was built with.
    pub fn config(&self) -> &TurmoilEnvConfig {
        &self.node.config
    }

    /// The host's disk.
    pub fn disk(&self) -> &SharedDisk {
        &self.node.disk
    }

    /// `addr` as turmoil will bind it: this node's own address becomes unspecified.
    fn bind_address(&self, addr: SocketAddr) -> SocketAddr {
        if addr.ip() != self.node.address {
            return addr;
        }
        let unspecified = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        SocketAddr::new(unspecified, addr.port())
    }

    /// `addr` as reported by `local_addr`: an unspecified address becomes this node's.
    fn report_address(address: IpAddr, addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_unspecified() { SocketAddr::new(address, addr.port()) } else { addr }
    }
}

impl Env for TurmoilEnv {
    type UdpSocket = TurmoilUdpSocket;
    type TcpListener = TurmoilTcpListener;
    type TcpStream = TurmoilTcpStream;
    type File = TurmoilFile;
    type Rng = TurmoilRng;

    fn now(&self) -> Instant {
        // Outside a runtime tokio's `Instant::now` reads the OS clock instead of turmoil's.
        assert!(tokio::runtime::Handle::try_current().is_ok(), "TurmoilEnv used outside its host");
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.node.origin_tokio);
        self.node.origin + elapsed
    }

    fn wall(&self) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(self.node.config.wall_epoch_secs)
            + self.now().since_origin()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let offset = deadline.saturating_duration_since(self.node.origin);
        let target = if deadline == Instant::MAX {
            None
        } else {
            self.node.origin_tokio.checked_add(offset)
        };
        async move {
            match target {
                Some(target) => tokio::time::sleep_until(target).await,
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn spawn<F>(&self, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (wrapped, mut handle) = TaskHandle::wrap(future);
        // turmoil hosts run a current-thread runtime, so `tokio::spawn` keeps the task on this
        // host; crashing the host drops the runtime and with it the task.
        let join = tokio::spawn(wrapped);
        let abort = join.abort_handle();
        handle.set_abort(Box::new(move || abort.abort()));
        handle
    }

    fn rng(&self) -> TurmoilRng {
        self.node.rng.clone()
    }

    fn buggify(&self, site: &'static str) -> bool {
        let config = &self.node.config;
        // As in `World`: the plan depends on the seed and the site only.
        let probability = *lock(&self.node.buggify_sites)
            .entry(site)
            .or_insert_with(|| config.buggify.site_fire_probability(config.seed, site));
        probability.is_some_and(|probability| self.node.rng.random_bool(probability))
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<TurmoilUdpSocket> {
        let socket = turmoil::net::UdpSocket::bind(self.bind_address(addr)).await?;
        Ok(TurmoilUdpSocket {
            socket,
            address: self.node.address,
            udp_payload_max_bytes: self.node.config.udp_payload_max_bytes,
        })
    }

    async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<TurmoilTcpListener> {
        let listener = turmoil::net::TcpListener::bind(self.bind_address(addr)).await?;
        Ok(TurmoilTcpListener { listener, address: self.node.address })
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<TurmoilTcpStream> {
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        Ok(TurmoilTcpStream { stream })
    }

    async fn open(&self, path: &str, options: OpenOptions) -> io::Result<TurmoilFile> {
        let mut disk = lock(&self.node.disk);
        let file = disk.open(path, options)?;
        let token = disk.token();
        Ok(TurmoilFile { disk: Arc::clone(&self.node.disk), file, token })
    }

    async fn create_dir_all(&self, path: &str) -> io::Result<()> {
        lock(&self.node.disk).create_dir_all(path)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        lock(&self.node.disk).rename(from, to)
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        lock(&self.node.disk).remove(path)
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        lock(&self.node.disk).list(dir)
    }

    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        lock(&self.node.disk).sync_dir(dir)
    }
}

/// A node's random stream: a shared handle to one ChaCha12 generator.
#[derive(Clone, Debug)]
pub struct TurmoilRng {
    stream: Arc<Mutex<ChaCha12Rng>>,
}

impl RngCore for TurmoilRng {
    fn next_u32(&mut self) -> u32 {
        lock(&self.stream).next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        lock(&self.stream).next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        lock(&self.stream).fill_bytes(dest);
    }
}

impl CryptoRng for TurmoilRng {}

impl TurmoilRng {
    /// One Bernoulli draw with probability `p` (in `[0, 1]`).
    fn random_bool(&self, p: f64) -> bool {
        assert!((0.0..=1.0).contains(&p));
        lock(&self.stream).random_bool(p)
    }
}

/// A datagram socket on turmoil's network.
#[derive(Debug)]
pub struct TurmoilUdpSocket {
    socket: turmoil::net::UdpSocket,
    address: IpAddr,
    udp_payload_max_bytes: usize,
}

impl UdpSocket for TurmoilUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(TurmoilEnv::report_address(self.address, self.socket.local_addr()?))
    }

    async fn send_to(&self, data: &[u8], target: SocketAddr) -> io::Result<usize> {
        let local = target.ip().is_loopback() || target.ip() == self.address;
        let mtu = if local { UDP_PAYLOAD_MAX_BYTES_LOOPBACK } else { self.udp_payload_max_bytes };
        if data.len() > mtu {
            let message = format!("datagram of {} bytes exceeds the path MTU of {mtu}", data.len());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        let sent = self.socket.send_to(data, target).await?;
        assert_eq!(sent, data.len(), "turmoil sends datagrams whole");
        Ok(sent)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // turmoil's `recv_from` keeps a datagram it has taken off the queue in the socket until
        // it is copied out, so dropping this future loses nothing (cancel-safe).
        let (count, source) = self.socket.recv_from(buf).await?;
        assert!(count <= buf.len());
        Ok((count, source))
    }
}

/// A listening stream socket on turmoil's network.
pub struct TurmoilTcpListener {
    listener: turmoil::net::TcpListener,
    address: IpAddr,
}

impl std::fmt::Debug for TurmoilTcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TurmoilTcpListener({:?})", self.local_addr())
    }
}

impl TcpListener for TurmoilTcpListener {
    type Stream = TurmoilTcpStream;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(TurmoilEnv::report_address(self.address, self.listener.local_addr()?))
    }

    async fn accept(&self) -> io::Result<(TurmoilTcpStream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((TurmoilTcpStream { stream }, peer))
    }
}

/// A connected stream on turmoil's network.
#[derive(Debug)]
pub struct TurmoilTcpStream {
    stream: turmoil::net::TcpStream,
}

impl TcpStream for TurmoilTcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for TurmoilTcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TurmoilTcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An open file on a host's `SharedDisk`. Operations take effect at once, without latency.
pub struct TurmoilFile {
    disk: SharedDisk,
    file: FileId,
    // Names this handle for advisory locks.
    token: u64,
}

impl std::fmt::Debug for TurmoilFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TurmoilFile({})", self.file)
    }
}

impl Drop for TurmoilFile {
    fn drop(&mut self) {
        let mut disk = lock(&self.disk);
        disk.unlock(self.file, self.token);
        let closed = disk.close(self.file);
        // After `crash_disk` every handle from before the crash is stale: closing it is a no-op.
        if let Err(error) = closed
            && !std::thread::panicking()
        {
            assert_eq!(error.kind(), io::ErrorKind::NotFound, "closing {}: {error}", self.file);
        }
    }
}

impl File for TurmoilFile {
    fn try_lock(&self) -> io::Result<()> {
        lock(&self.disk).try_lock(self.file, self.token)
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let count = lock(&self.disk).read_at(self.file, offset, buf)?;
        assert!(count <= buf.len());
        Ok(count)
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.disk).write_at(self.file, offset, data)
    }

    async fn append(&self, data: &[u8]) -> io::Result<u64> {
        lock(&self.disk).append(self.file, data)
    }

    async fn sync(&self) -> io::Result<()> {
        lock(&self.disk).sync(self.file)
    }

    async fn len(&self) -> io::Result<u64> {
        lock(&self.disk).len(self.file)
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.disk).set_len(self.file, len)
    }
}
