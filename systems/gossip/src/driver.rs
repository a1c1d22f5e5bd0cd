//! The thin async driver: runs a `Node` over one `Env` UDP socket. It feeds the node datagrams
//! and deadline ticks and carries out its effects; every decision stays in the node.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use rand_core::RngCore;
use sim::{Env, File, Instant, TaskHandle, UdpSocket};

use crate::crdt::ReplicaId;
use crate::faults::{BuggifyHook, Faults, PlantedBug};
use crate::node::{Effect, Input, Node, NodeConfig, Now};
use crate::persist::{self, PersistError, encode_record, wal_path};
use crate::store::{Store, Update};
use crate::swim::{MemberId, MemberState};
use crate::wire::DATAGRAM_SIZE_BYTES_MAX;

/// Remembered members used as extra seeds after a restart, at most.
pub const REMEMBERED_SEEDS_MAX: usize = 16;

/// The longest the driver sleeps without looking at the node (so inputs from handles that
/// moved a deadline earlier are never starved).
pub const WAIT_MAX: Duration = Duration::from_millis(100);

/// Sees every effect other than sends, with the time and node it happened at (tests and
/// measurements use it).
pub type Observer = Arc<dyn Fn(Instant, MemberId, &Effect) + Send + Sync>;

/// A running gossip node.
pub struct Handle<E: Env> {
    env: E,
    node: Arc<Mutex<Node>>,
    socket: Arc<E::UdpSocket>,
    observer: Option<Observer>,
    task: Mutex<Option<TaskHandle<()>>>,
    persistence: Option<Persistence<E>>,
}

/// Where and how a node keeps its state durable.
struct Persistence<E: Env> {
    dir: String,
    interval: Duration,
    // The WAL file local writes go to, and its sequence number.
    wal: Mutex<(u64, Arc<E::File>)>,
}

fn now_of<E: Env>(env: &E) -> Now {
    let wall_ms = env.wall().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    Now { monotonic: env.now(), wall_ms: u64::try_from(wall_ms).unwrap_or(u64::MAX) }
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Binds `config.addr`, joins through `seeds` and runs `node` until the handle stops it or
/// the node crashes.
pub async fn start<E: Env>(
    env: E,
    node: Node,
    seeds: Vec<SocketAddr>,
    observer: Option<Observer>,
) -> io::Result<Arc<Handle<E>>> {
    launch(env, node, seeds, observer, None, None).await
}

async fn launch<E: Env>(
    env: E,
    mut node: Node,
    seeds: Vec<SocketAddr>,
    observer: Option<Observer>,
    persistence: Option<Persistence<E>>,
    bug: Option<PlantedBug>,
) -> io::Result<Arc<Handle<E>>> {
    // A fresh replica id per boot: see `Store::set_replica`.
    node.store_mut().set_replica(ReplicaId(env.rng().next_u64()));
    let hook_env = env.clone();
    let hook: BuggifyHook = Arc::new(move |site| hook_env.buggify(site));
    node.set_faults(&Faults::with_hook(hook).planting(bug));
    let socket = Arc::new(env.bind_udp(node.config().addr).await?);
    let handle = Arc::new(Handle {
        env: env.clone(),
        node: Arc::new(Mutex::new(node)),
        socket,
        observer,
        task: Mutex::new(None),
        persistence,
    });
    handle.input(Input::Join(&seeds)).await;
    let runner = Arc::clone(&handle);
    let task = env.spawn(async move { runner.run().await });
    *handle.task.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(task);
    if handle.persistence.is_some() {
        let snapshotter = Arc::clone(&handle);
        // Detached: it dies with the node, like the driver loop.
        drop(env.spawn(async move { snapshotter.snapshot_loop().await }));
    }
    Ok(handle)
}

/// Like `start`, but restores the node from `dir` on the `Env` disk (snapshot + WAL), keeps
/// local writes in a WAL (synced before `put` returns) and snapshots every `interval`. The
/// restored node takes an incarnation above the persisted one and adds the members it last
/// knew to `seeds`.
pub async fn start_persistent<E: Env>(
    env: E,
    config: NodeConfig,
    seeds: Vec<SocketAddr>,
    observer: Option<Observer>,
    dir: &str,
    interval: Duration,
) -> Result<Arc<Handle<E>>, PersistError> {
    let persistence = Durability { dir, interval };
    start_persistent_planted(env, config, seeds, observer, persistence, None).await
}

/// Where `start_persistent_planted` keeps state, and how often it snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Durability<'a> {
    /// The directory on the `Env` disk.
    pub dir: &'a str,
    /// Time between snapshots.
    pub interval: Duration,
}

/// As `start_persistent`, with `bug` planted in the node (inert without feature
/// `planted-bugs`).
pub async fn start_persistent_planted<E: Env>(
    env: E,
    mut config: NodeConfig,
    mut seeds: Vec<SocketAddr>,
    observer: Option<Observer>,
    durability: Durability<'_>,
    bug: Option<PlantedBug>,
) -> Result<Arc<Handle<E>>, PersistError> {
    let Durability { dir, interval } = durability;
    let (snapshot, records) = persist::load(&env, dir).await?;
    let wall_ms = now_of(&env).wall_ms;
    let mut store = Store::new(ReplicaId(config.id.0));
    store.resume_clock(snapshot.clock);
    for (key, value) in snapshot.entries.iter().chain(records.iter()) {
        // A record the store refuses (from a clock far ahead) is dropped, like a bad datagram.
        let _ = store.merge(wall_ms, key, value);
    }
    let restarted = !snapshot.members.is_empty() || !records.is_empty();
    if restarted {
        config.incarnation = config.incarnation.max(snapshot.incarnation.saturating_add(1));
    }
    let remembered = snapshot.members.iter().filter(|member| {
        member.id != config.id && matches!(member.state, MemberState::Alive | MemberState::Suspect)
    });
    seeds.extend(remembered.take(REMEMBERED_SEEDS_MAX).map(|member| member.addr));
    let sequence = snapshot.wal_sequence.max(1);
    let file = env.open(&wal_path(dir, sequence), sim::OpenOptions::CREATE).await?;
    env.sync_dir(dir).await?;
    let persistence =
        Persistence { dir: dir.to_string(), interval, wal: Mutex::new((sequence, Arc::new(file))) };
    let mut node = Node::with_store(config, store);
    node.swim_mut().restore(&snapshot.members);
    Ok(launch(env, node, seeds, observer, Some(persistence), bug).await?)
}

impl<E: Env> Handle<E> {
    /// Runs `f` on the node (read its view, store, stats).
    pub fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> T) -> T {
        f(&mut lock(&self.node))
    }

    /// Writes (`Some`) or deletes (`None`) register `key`, pushing it to peers. With
    /// persistence the write is in the synced WAL when this returns.
    pub async fn put(&self, key: &[u8], value: Option<Vec<u8>>) -> io::Result<()> {
        self.update(key, Update::Register(value)).await
    }

    /// Applies a typed update to `key` (counter, set or register), pushing the delta to peers.
    /// With persistence the key's new value is in the synced WAL when this returns. An update
    /// the store refuses (wrong kind, too large) is an `InvalidInput` error.
    pub async fn update(&self, key: &[u8], update: Update) -> io::Result<()> {
        let refused = self.input(Input::Update { key, update }).await;
        if let Some(reason) = refused {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, reason));
        }
        let Some(persistence) = &self.persistence else { return Ok(()) };
        let record =
            self.with_node(|node| node.store().value(key).map(|value| encode_record(key, value)));
        let Some(record) = record else { return Ok(()) };
        let file = Arc::clone(&persistence.wal.lock().unwrap_or_else(|p| p.into_inner()).1);
        file.append(&record).await?;
        file.sync().await
    }

    /// Switches to a fresh WAL, captures the state and writes it as the snapshot.
    pub async fn snapshot(&self) -> io::Result<()> {
        let Some(persistence) = &self.persistence else { return Ok(()) };
        let sequence = persistence.wal.lock().unwrap_or_else(|p| p.into_inner()).0 + 1;
        let path = wal_path(&persistence.dir, sequence);
        let file = Arc::new(self.env.open(&path, sim::OpenOptions::CREATE).await?);
        self.env.sync_dir(&persistence.dir).await?;
        *persistence.wal.lock().unwrap_or_else(|p| p.into_inner()) = (sequence, file);
        // Captured after the switch: every write logged in older files is in the capture.
        // Encoded straight from the node, so the store's values are not cloned first.
        let encoded = self.with_node(|node| {
            persist::encode_snapshot(&persist::SnapshotView {
                incarnation: node.swim().own().incarnation,
                clock: node.store().clock(),
                members: node.swim().members().copied().collect(),
                entries: persist::StoreEntries(node.store()),
                wal_sequence: sequence,
            })
        });
        persist::save_encoded(&self.env, &persistence.dir, &encoded, sequence).await
    }

    async fn snapshot_loop(&self) {
        let Some(persistence) = &self.persistence else { return };
        loop {
            self.env.sleep(persistence.interval).await;
            // A failed snapshot leaves the previous one and the WAL intact: retry next time.
            let _ = self.snapshot().await;
        }
    }

    /// Leaves the cluster gracefully (the driver keeps answering until stopped).
    pub async fn leave(&self) {
        self.input(Input::Leave).await;
    }

    /// Stops the driver task.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|poison| poison.into_inner()).take() {
            task.abort();
        }
    }

    /// Steps the node with `input` and carries out the effects; returns why a local update
    /// was refused, if it was.
    async fn input(&self, input: Input<'_>) -> Option<String> {
        let mut effects = Vec::new();
        {
            let mut rng = self.env.rng();
            lock(&self.node).step(now_of(&self.env), &mut rng, input, &mut effects);
        }
        let refused = effects.iter().find_map(|effect| match effect {
            Effect::PutRefused(reason) => Some(reason.clone()),
            _ => None,
        });
        self.carry_out(effects).await;
        refused
    }

    async fn carry_out(&self, effects: Vec<Effect>) {
        let id = lock(&self.node).config().id;
        for effect in effects {
            match effect {
                Effect::Send(datagram) => {
                    // A lost or refused datagram is the network's business: SWIM and the pull
                    // sessions retry.
                    let _ = self.socket.send_to(&datagram.bytes, datagram.to).await;
                }
                other => {
                    if let Some(observer) = &self.observer {
                        observer(self.env.now(), id, &other);
                    }
                }
            }
        }
    }

    async fn run(&self) {
        // One byte more than allowed, so oversized datagrams show up as such.
        let mut buffer = vec![0u8; DATAGRAM_SIZE_BYTES_MAX + 1];
        loop {
            let deadline = lock(&self.node).deadline();
            let wait = deadline.saturating_duration_since(self.env.now()).min(WAIT_MAX);
            let received = self.env.timeout(wait, self.socket.recv_from(&mut buffer)).await;
            match received {
                Ok(Ok((length, from))) => {
                    let bytes = &buffer[..length.min(buffer.len())];
                    self.input(Input::Datagram { from, bytes }).await;
                }
                Ok(Err(_)) => self.env.sleep(Duration::from_millis(1)).await,
                Err(_) => {}
            }
            if lock(&self.node).deadline() <= self.env.now() {
                self.input(Input::Tick).await;
            }
        }
    }
}
