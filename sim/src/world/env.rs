//! `SimEnv`: the `Env` a simulated node's code receives, and its sockets, streams, files,
//! sleeps and rng.
//!
//! Every handle names its node and the node's generation (incarnation). After a crash the old
//! generation is dead: its handles fail with `NotConnected` and spawns are dropped, so nothing
//! from before a crash can act on the restarted node.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use rand_core::{CryptoRng, RngCore};

use super::disk::FileId;
use super::executor::{Event, TimerKey};
use super::fs::{self, OpClass};
use super::net::{self, Key};
use super::{Shared, TraceKind, abort_task};
use crate::env::{Env, File, OpenOptions, TcpListener, TcpStream, UdpSocket};
use crate::task::TaskHandle;
use crate::time::Instant;

/// The environment of one incarnation of one simulated node.
#[derive(Clone)]
pub struct SimEnv {
    shared: Arc<Shared>,
    node: u32,
    generation: u32,
}

impl std::fmt::Debug for SimEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimEnv(node={}, generation={})", self.node, self.generation)
    }
}

impl SimEnv {
    pub(crate) fn new(shared: Arc<Shared>, node: u32, generation: u32) -> SimEnv {
        SimEnv { shared, node, generation }
    }

    /// This node's id.
    pub fn node(&self) -> super::NodeId {
        super::NodeId(self.node)
    }

    /// This node's name.
    pub fn node_name(&self) -> String {
        self.shared.lock().nodes[self.node as usize].name.clone()
    }

    /// This node's address.
    pub fn ip(&self) -> std::net::IpAddr {
        self.shared.lock().nodes[self.node as usize].ip
    }

    /// The incarnation this env belongs to (incremented by every crash).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// A handle to the whole world, for a nemesis running inside the simulation. It does not
    /// keep the world alive: the world ends when its owner's last `World` handle is dropped.
    pub fn world(&self) -> super::World {
        super::World::borrowed(Arc::clone(&self.shared))
    }

    /// Runs one disk operation: checks the node is alive, draws latency, applies `op` now (or
    /// after the latency for syncs), and sleeps for the latency.
    async fn disk_op<T>(
        &self,
        class: OpClass,
        bytes: usize,
        op: impl FnOnce(&mut super::State, u32) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut op = Some(op);
        let (delay, early) = {
            let mut state = self.shared.lock();
            if !state.node_alive(self.node, self.generation) {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "node is down"));
            }
            state.stats.disk_op_count += 1;
            let delay = fs::latency(&mut state, self.node, class, bytes);
            let early = match class {
                OpClass::Sync => None,
                _ => op.take().map(|op| op(&mut state, self.node)),
            };
            (delay, early)
        };
        self.sleep_until(self.now() + delay).await;
        if let Some(result) = early {
            return result;
        }
        let mut state = self.shared.lock();
        if !state.node_alive(self.node, self.generation) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "node is down"));
        }
        let op = op.take().expect("a sync runs its operation after the latency");
        op(&mut state, self.node)
    }
}

impl Env for SimEnv {
    type UdpSocket = SimUdpSocket;
    type TcpListener = SimTcpListener;
    type TcpStream = SimTcpStream;
    type File = SimFile;
    type Rng = SimRng;

    fn now(&self) -> Instant {
        self.shared.lock().now
    }

    fn wall(&self) -> SystemTime {
        self.shared.lock().wall(self.node)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        Sleep { shared: Arc::clone(&self.shared), deadline, timer: None }
    }

    fn spawn<F>(&self, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (wrapped, mut handle) = TaskHandle::wrap(future);
        let Some(key) = self.shared.spawn_task(self.node, self.generation, Box::pin(wrapped))
        else {
            return handle;
        };
        let shared = Arc::downgrade(&self.shared);
        handle.set_abort(Box::new(move || {
            if let Some(shared) = shared.upgrade() {
                abort_task(&shared, key);
            }
        }));
        handle
    }

    fn rng(&self) -> SimRng {
        SimRng { shared: Arc::clone(&self.shared), node: self.node }
    }

    fn buggify(&self, site: &'static str) -> bool {
        self.shared.lock().buggify(self.node, site)
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<SimUdpSocket> {
        let mut state = self.shared.lock();
        let (key, local) = net::udp_bind(&mut state, self.node, self.generation, addr)?;
        Ok(SimUdpSocket { shared: Arc::clone(&self.shared), key, local })
    }

    async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<SimTcpListener> {
        let mut state = self.shared.lock();
        let (key, local) = net::tcp_listen(&mut state, self.node, self.generation, addr)?;
        Ok(SimTcpListener { shared: Arc::clone(&self.shared), key, local })
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<SimTcpStream> {
        let key = net::tcp_connect(&mut self.shared.lock(), self.node, self.generation, addr)?;
        // Owns the client end from here on, so a cancelled connect closes it.
        let mut stream =
            SimTcpStream { shared: Arc::clone(&self.shared), key, end: 0, local: addr, peer: addr };
        let (local, peer) =
            poll_fn(|context| net::tcp_poll_connect(&mut self.shared.lock(), key, context)).await?;
        stream.local = local;
        stream.peer = peer;
        Ok(stream)
    }

    async fn open(&self, path: &str, options: OpenOptions) -> io::Result<SimFile> {
        let path = path.to_string();
        let file = self
            .disk_op(OpClass::Meta, 0, move |state, node| {
                state.record(node, TraceKind::DiskMeta, 0, 0);
                let disk = &mut state.nodes[node as usize].disk;
                Ok((disk.open(&path, options)?, disk.token()))
            })
            .await?;
        let (file, token) = file;
        Ok(SimFile { env: self.clone(), file, token })
    }

    async fn create_dir_all(&self, path: &str) -> io::Result<()> {
        self.disk_op(OpClass::Meta, 0, |state, node| {
            state.record(node, TraceKind::DiskMeta, 1, 0);
            state.nodes[node as usize].disk.create_dir_all(path)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.disk_op(OpClass::Meta, 0, |state, node| {
            state.record(node, TraceKind::DiskMeta, 2, 0);
            state.nodes[node as usize].disk.rename(from, to)
        })
        .await
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        self.disk_op(OpClass::Meta, 0, |state, node| {
            state.record(node, TraceKind::DiskMeta, 3, 0);
            state.nodes[node as usize].disk.remove(path)
        })
        .await
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.disk_op(OpClass::Meta, 0, |state, node| {
            state.record(node, TraceKind::DiskMeta, 4, 0);
            state.nodes[node as usize].disk.list(dir)
        })
        .await
    }

    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        self.disk_op(OpClass::Sync, 0, |state, node| {
            if let Some(error) = fs::inject(state, node, OpClass::Sync, u64::MAX) {
                return Err(error);
            }
            state.record(node, TraceKind::DiskMeta, 5, 0);
            state.nodes[node as usize].disk.sync_dir(dir)
        })
        .await
    }
}

/// A sleep on the virtual clock. Registers a timer on first poll; cancels it on drop.
struct Sleep {
    shared: Arc<Shared>,
    deadline: Instant,
    timer: Option<TimerKey>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if state.now >= this.deadline {
            if let Some(timer) = this.timer.take() {
                state.cancel_timer(timer);
            }
            return Poll::Ready(());
        }
        match this.timer {
            Some(timer) => state.timers.update(timer, context.waker()),
            None => {
                let timer = state.timers.insert(context.waker().clone());
                state.schedule(this.deadline, Event::Timer(timer));
                this.timer = Some(timer);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            let waker = self.shared.lock().cancel_timer(timer);
            drop(waker);
        }
    }
}

/// A node's random stream: ChaCha12 seeded from the world seed and the node index.
#[derive(Clone)]
pub struct SimRng {
    shared: Arc<Shared>,
    node: u32,
}

impl RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut state = self.shared.lock();
        state.record(self.node, TraceKind::Random, 8, 0);
        state.nodes[self.node as usize].rng.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let mut state = self.shared.lock();
        state.record(self.node, TraceKind::Random, dest.len() as u64, 0);
        state.nodes[self.node as usize].rng.fill_bytes(dest);
    }
}

/// Seeded from the world seed: unpredictable to nobody, which is the point of a simulation.
impl CryptoRng for SimRng {}

/// A simulated datagram socket.
pub struct SimUdpSocket {
    shared: Arc<Shared>,
    key: Key,
    local: SocketAddr,
}

impl UdpSocket for SimUdpSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send_to(&self, data: &[u8], target: SocketAddr) -> io::Result<usize> {
        net::udp_send(&mut self.shared.lock(), self.key, data, target)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|context| net::udp_poll_recv(&mut self.shared.lock(), self.key, context, buf)).await
    }
}

impl Drop for SimUdpSocket {
    fn drop(&mut self) {
        net::udp_close(&mut self.shared.lock(), self.key);
    }
}

/// A simulated listening socket.
pub struct SimTcpListener {
    shared: Arc<Shared>,
    key: Key,
    local: SocketAddr,
}

impl TcpListener for SimTcpListener {
    type Stream = SimTcpStream;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn accept(&self) -> io::Result<(SimTcpStream, SocketAddr)> {
        let (key, local, peer) =
            poll_fn(|context| net::tcp_poll_accept(&mut self.shared.lock(), self.key, context))
                .await?;
        let stream = SimTcpStream { shared: Arc::clone(&self.shared), key, end: 1, local, peer };
        Ok((stream, peer))
    }
}

impl Drop for SimTcpListener {
    fn drop(&mut self) {
        net::tcp_close_listener(&mut self.shared.lock(), self.key);
    }
}

/// One end of a simulated stream connection.
pub struct SimTcpStream {
    shared: Arc<Shared>,
    key: Key,
    end: usize,
    local: SocketAddr,
    peer: SocketAddr,
}

impl TcpStream for SimTcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

impl tokio::io::AsyncRead for SimTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        net::tcp_poll_read(&mut self.shared.lock(), self.key, self.end, context, buf)
    }
}

impl tokio::io::AsyncWrite for SimTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        net::tcp_poll_write(&mut self.shared.lock(), self.key, self.end, context, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<io::Result<()>> {
        net::tcp_shutdown(&mut self.shared.lock(), self.key, self.end);
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimTcpStream {
    fn drop(&mut self) {
        net::close_end(&mut self.shared.lock(), self.key, self.end);
    }
}

/// An open file on a simulated node's disk.
pub struct SimFile {
    env: SimEnv,
    file: FileId,
    // Names this handle for advisory locks.
    token: u64,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.env.shared.lock();
        if state.node_alive(self.env.node, self.env.generation) {
            // A handle from before a crash is already stale; there is nothing to release.
            let disk = &mut state.nodes[self.env.node as usize].disk;
            disk.unlock(self.file, self.token);
            let _ = disk.close(self.file);
        }
    }
}

impl File for SimFile {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.file;
        let length = buf.len();
        self.env
            .disk_op(OpClass::Read, length, |state, node| {
                if let Some(error) = fs::inject(state, node, OpClass::Read, file) {
                    return Err(error);
                }
                let count = state.nodes[node as usize].disk.read_at(file, offset, buf)?;
                state.record(node, TraceKind::DiskRead, file, count as u64);
                fs::corrupt(state, node, file, &mut buf[..count]);
                Ok(count)
            })
            .await
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = self.file;
        self.env
            .disk_op(OpClass::Write, data.len(), |state, node| {
                if let Some(error) = fs::inject(state, node, OpClass::Write, file) {
                    return Err(error);
                }
                state.record(node, TraceKind::DiskWrite, file, data.len() as u64);
                let target = fs::write_target(state, node, file, offset);
                let result = state.nodes[node as usize].disk.write_at(file, target, data);
                fs::note_result(state, node, file, &result);
                result
            })
            .await
    }

    async fn append(&self, data: &[u8]) -> io::Result<u64> {
        let file = self.file;
        self.env
            .disk_op(OpClass::Write, data.len(), |state, node| {
                if let Some(error) = fs::inject(state, node, OpClass::Write, file) {
                    return Err(error);
                }
                state.record(node, TraceKind::DiskWrite, file, data.len() as u64);
                let disk = &state.nodes[node as usize].disk;
                let offset = disk.len(file)?;
                let target = fs::write_target(state, node, file, offset);
                let disk = &mut state.nodes[node as usize].disk;
                let result = match target == offset {
                    true => disk.append(file, data),
                    // The caller is told its bytes went to the end; they went elsewhere.
                    false => disk.write_at(file, target, data).map(|()| offset),
                };
                fs::note_result(state, node, file, &result);
                result
            })
            .await
    }

    async fn sync(&self) -> io::Result<()> {
        let file = self.file;
        self.env
            .disk_op(OpClass::Sync, 0, |state, node| {
                if let Some(error) = fs::inject(state, node, OpClass::Sync, file) {
                    return Err(error);
                }
                state.record(node, TraceKind::DiskSync, file, 0);
                state.nodes[node as usize].disk.sync(file)
            })
            .await
    }

    async fn len(&self) -> io::Result<u64> {
        let file = self.file;
        self.env
            .disk_op(OpClass::Meta, 0, |state, node| state.nodes[node as usize].disk.len(file))
            .await
    }

    fn try_lock(&self) -> io::Result<()> {
        let mut state = self.env.shared.lock();
        if !state.node_alive(self.env.node, self.env.generation) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "stale handle"));
        }
        state.nodes[self.env.node as usize].disk.try_lock(self.file, self.token)
    }

    async fn set_len(&self, length: u64) -> io::Result<()> {
        let file = self.file;
        self.env
            .disk_op(OpClass::Write, 0, |state, node| {
                if let Some(error) = fs::inject(state, node, OpClass::Write, file) {
                    return Err(error);
                }
                state.record(node, TraceKind::DiskWrite, file, length);
                let result = state.nodes[node as usize].disk.set_len(file, length);
                fs::note_result(state, node, file, &result);
                result
            })
            .await
    }
}
