//! The deterministic world: the simulation backend of `Env`.
//!
//! Map: `executor` (task slab, ready queue, timers, event queue), `net` (links, partitions,
//! datagrams, streams), `disk` (one node's file system: page cache over durable state and crash
//! semantics), `fs` (disk operations with latency and injected faults), `env` (`SimEnv`, the
//! `Env` a node's code receives), `trace` (records and the determinism hash), `config`.
//!
//! Model: one thread runs everything. The next task to poll is drawn with the seeded rng from the
//! ready ones; when none is ready, virtual time jumps to the next event (a timer, a packet
//! arrival), so idle simulated hours cost nothing. A world is a value: many run side by side in
//! one process, and nothing here reads the OS clock or OS randomness or spawns a thread.
//!
//! Fault model: nodes crash (tasks, sockets and connections dropped, unsynced disk writes
//! dropped, kept or torn), restart from their disk, pause and resume; links lose, duplicate,
//! delay and reorder datagrams and may be cut (both ways or one way) or clogged; disks fail
//! reads, writes and syncs, flip bits on reads, and fill up; wall clocks are offset and drift.

mod config;
pub mod disk;
mod env;
mod executor;
mod fs;
mod net;
pub mod trace;

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha12Rng};

pub use config::{BuggifyConfig, DiskConfig, DiskFaults, LinkConfig, NetConfig, SimConfig};
pub use env::{SimEnv, SimFile, SimRng, SimTcpListener, SimTcpStream, SimUdpSocket};
pub use trace::{TraceKind, TraceRecord, TraceSink};

use executor::{Event, ReadyQueue, Scheduled, Task, TaskFuture, TaskKey, Tasks, Timers};
use trace::{Trace, WORLD_NODE, hash_str, splitmix64};

use crate::task::TaskHandle;
use crate::time::Instant;

/// A node's index in its world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Why a run stopped early. Every error names the seed, so it can be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError {
    /// The world's seed.
    pub seed: u64,
    /// Simulated time when the run stopped.
    pub time: Instant,
    /// What went wrong.
    pub kind: SimErrorKind,
}

/// The kinds of `SimError`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimErrorKind {
    /// Deadlock: the awaited task cannot finish; no task is ready and no event is pending.
    NoProgress {
        /// Tasks alive but blocked.
        blocked_task_count: usize,
    },
    /// Runaway: more polls plus events than `SimConfig::events_max`.
    EventBudgetExceeded {
        /// The budget.
        events_max: u64,
    },
    /// Runaway: the awaited task did not finish before its simulated-time budget.
    TimeBudgetExceeded {
        /// The budget's deadline.
        deadline: Instant,
    },
    /// Livelock: more than `SimConfig::polls_per_instant_max` polls without time advancing.
    Livelock {
        /// The budget.
        polls_per_instant_max: u64,
    },
    /// A task panicked.
    TaskPanicked {
        /// The node it ran on.
        node: String,
        /// The panic message.
        message: String,
    },
    /// The awaited task was cancelled (its node crashed).
    TaskCancelled,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {:#x}, at {}: {}", self.seed, self.time, self.kind)
    }
}

/// What went wrong, without the seed and time (`SimError`'s `Display` adds those).
impl fmt::Display for SimErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimErrorKind::NoProgress { blocked_task_count } => write!(
                f,
                "no progress: {blocked_task_count} tasks blocked, no task ready, no event pending"
            ),
            SimErrorKind::EventBudgetExceeded { events_max } => {
                write!(f, "runaway: more than {events_max} polls and events")
            }
            SimErrorKind::TimeBudgetExceeded { deadline } => {
                write!(f, "runaway: not finished by the time budget {deadline}")
            }
            SimErrorKind::Livelock { polls_per_instant_max } => write!(
                f,
                "livelock: more than {polls_per_instant_max} polls without time advancing"
            ),
            SimErrorKind::TaskPanicked { node, message } => {
                write!(f, "task on node {node} panicked: {message}")
            }
            SimErrorKind::TaskCancelled => f.write_str("the awaited task was cancelled"),
        }
    }
}

impl std::error::Error for SimError {}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Task polls.
    pub poll_count: u64,
    /// Events processed (timers, packet arrivals, ...).
    pub event_count: u64,
    /// Datagrams handed to `send_to`.
    pub datagram_sent_count: u64,
    /// Datagrams that reached a socket queue.
    pub datagram_delivered_count: u64,
    /// Datagrams lost, cut, or discarded at the receiver.
    pub datagram_dropped_count: u64,
    /// Extra datagram copies made by duplication.
    pub datagram_duplicated_count: u64,
    /// Stream bytes delivered.
    pub stream_delivered_bytes: u64,
    /// Disk operations.
    pub disk_op_count: u64,
    /// Injected disk faults.
    pub disk_fault_count: u64,
    /// Crashes.
    pub crash_count: u64,
}

/// One BUGGIFY site as a run saw it: whether the seed made it active, and how often it fired.
///
/// Counting reads no randomness, so recording fires leaves the run (and its trace) unchanged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BuggifySite {
    /// The probability the site fires with in this run, or `None` if the seed left it inactive.
    pub fire_probability: Option<f64>,
    /// How many times `Env::buggify` answered yes for it.
    pub fire_count: u64,
}

/// A node's boot function: builds the node's main future from its env, at start and at restart.
pub type BootFn = Arc<dyn Fn(SimEnv) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeStatus {
    Running,
    Paused,
    Crashed,
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ip: IpAddr,
    // Invariant: incremented by every crash; handles from an older generation are dead.
    pub(crate) generation: u32,
    pub(crate) status: NodeStatus,
    /// Tasks woken while the node was paused, polled after `resume`.
    pub(crate) parked: Vec<TaskKey>,
    pub(crate) boot: Option<BootFn>,
    pub(crate) rng: ChaCha12Rng,
    pub(crate) disk: disk::Disk,
    pub(crate) disk_config: DiskConfig,
    pub(crate) clock_offset_nanos: i64,
    pub(crate) clock_drift_ppm: i64,
    pub(crate) net: net::NodeNet,
}

/// Everything a world owns, behind one lock.
pub(crate) struct State {
    pub(crate) now: Instant,
    pub(crate) config: SimConfig,
    pub(crate) rng_schedule: ChaCha8Rng,
    pub(crate) rng_net: ChaCha8Rng,
    pub(crate) rng_disk: ChaCha8Rng,
    pub(crate) tasks: Tasks,
    pub(crate) timers: Timers,
    events: BinaryHeap<Scheduled>,
    sequence: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) net: net::Net,
    pub(crate) trace: Trace,
    /// Every site asked so far, by name (a `BTreeMap`, so reports list them in one order).
    buggify_sites: BTreeMap<&'static str, BuggifySite>,
    pub(crate) stats: Stats,
    polls_at_instant: u64,
    /// Timer events still queued whose timer was cancelled.
    // Invariant: at most the number of queued events.
    stale_timer_event_count: usize,
    /// The (time, sequence) of the last event taken from the queue.
    // Invariant: strictly increasing (every event scheduled later has a larger sequence and
    // a time no earlier than `now`), and its time is at most `now`.
    last_event: (Instant, u64),
}

/// Below this many stale timer events the queue is never compacted.
const STALE_TIMER_EVENTS_COMPACT_MIN: usize = 4096;

impl State {
    /// Checks the event queue's invariants as the event at `(at, sequence)` leaves it: events
    /// leave in (time, sequence) order, never from the past, and the count of stale timer
    /// events stays within the queue.
    fn check_event_order(&mut self, at: Instant, sequence: u64) {
        assert!((at, sequence) > self.last_event, "event queue out of order");
        assert!(at >= self.now, "an event from before the world's clock");
        assert!(self.stale_timer_event_count <= self.events.len() + 1, "stale events miscounted");
        self.last_event = (at, sequence);
    }

    pub(crate) fn schedule(&mut self, at: Instant, event: Event) {
        assert!(at >= self.now, "event scheduled in the past");
        self.sequence += 1;
        self.events.push(Scheduled { at, sequence: self.sequence, event });
    }

    /// Cancels a timer (its sleep was dropped). Its event stays queued until its deadline, so
    /// when stale events are over half the queue they are swept out: a loop of long timeouts
    /// around quick operations must not grow the queue without bound.
    pub(crate) fn cancel_timer(&mut self, key: executor::TimerKey) -> Option<std::task::Waker> {
        let waker = self.timers.remove(key)?;
        self.stale_timer_event_count += 1;
        let stale = self.stale_timer_event_count;
        if stale > STALE_TIMER_EVENTS_COMPACT_MIN && stale * 2 > self.events.len() {
            let timers = &self.timers;
            self.events.retain(|scheduled| match scheduled.event {
                Event::Timer(key) => timers.is_live(key),
                Event::Net(_) => true,
            });
            self.stale_timer_event_count = 0;
        }
        Some(waker)
    }

    pub(crate) fn record(&mut self, node: u32, kind: TraceKind, a: u64, b: u64) {
        self.trace.record(TraceRecord { time: self.now, node, kind, a, b });
    }

    pub(crate) fn node_alive(&self, node: u32, generation: u32) -> bool {
        let node = &self.nodes[node as usize];
        node.generation == generation && node.status != NodeStatus::Crashed
    }

    pub(crate) fn node_by_ip(&self, ip: IpAddr) -> Option<u32> {
        self.net.node_by_ip(ip)
    }

    fn wall(&self, node: u32) -> SystemTime {
        let node = &self.nodes[node as usize];
        let elapsed = i128::from(self.now.as_nanos());
        let drift = elapsed * i128::from(node.clock_drift_ppm) / 1_000_000;
        let epoch = i128::from(self.config.wall_epoch_secs) * 1_000_000_000;
        let nanos = (epoch + elapsed + drift + i128::from(node.clock_offset_nanos)).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn buggify(&mut self, node: u32, site: &'static str) -> bool {
        let (config, seed) = (&self.config.buggify, self.config.seed);
        let entry = self.buggify_sites.entry(site).or_insert_with(|| BuggifySite {
            fire_probability: config.site_fire_probability(seed, site),
            fire_count: 0,
        });
        let fired = entry
            .fire_probability
            .is_some_and(|probability| self.nodes[node as usize].rng.random_bool(probability));
        if fired {
            entry.fire_count += 1;
            assert!(entry.fire_probability.is_some(), "an inactive site fired");
            self.record(node, TraceKind::Buggify, hash_str(site), 0);
        }
        fired
    }
}

/// What every handle into a world shares.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) ready: Arc<ReadyQueue>,
    seed: u64,
    running: AtomicBool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Spawns `future` on `node` if the node is alive in `generation`; drops it otherwise.
    pub(crate) fn spawn_task(
        &self,
        node: u32,
        generation: u32,
        future: TaskFuture,
    ) -> Option<TaskKey> {
        let mut state = self.lock();
        if !state.node_alive(node, generation) {
            drop(state);
            drop(future);
            return None;
        }
        let key = state.tasks.insert(node, future, &self.ready);
        state.record(node, TraceKind::Spawn, u64::from(key.slot), u64::from(key.generation));
        Some(key)
    }
}

/// A simulated world: nodes, network, disks and time, all driven by one seed.
///
/// `World` is a cheap handle. Drive it with `run_for`, `run_until` or `block_on`. When the last
/// handle made by `World::new` (or cloned from one) is dropped, the world is torn down: every
/// task is dropped, which frees everything the tasks held. Handles from `SimEnv::world` (for a
/// nemesis inside the simulation) do not keep the world alive.
#[derive(Clone)]
pub struct World {
    shared: Arc<Shared>,
    _owner: Option<Arc<Owner>>,
}

/// Tears the world down when the last owning `World` handle goes: tasks hold `Arc<Shared>` and
/// the shared state holds the tasks, a cycle only dropping the tasks breaks.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let (tasks, boots, events) = {
            let mut state = self.shared.lock();
            let tasks = std::mem::replace(&mut state.tasks, Tasks::new());
            let boots: Vec<_> =
                state.nodes.iter_mut().filter_map(|node| node.boot.take()).collect();
            let events = std::mem::take(&mut state.events);
            (tasks, boots, events)
        };
        // Dropped here, outside the lock: futures and boot closures may call back into it.
        drop(tasks);
        drop(boots);
        drop(events);
    }
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "World(seed={:#x})", self.shared.seed)
    }
}

/// Derives an independent rng stream from the seed.
fn stream(seed: u64, stream_id: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(stream_id)))
}

impl World {
    /// Builds an empty world from `config`.
    pub fn new(config: SimConfig) -> World {
        let seed = config.seed;
        tracing::info!(target: "sim", seed = format_args!("{seed:#x}"), "world created");
        let state = State {
            now: Instant::ZERO,
            rng_schedule: stream(seed, 1),
            rng_net: stream(seed, 2),
            rng_disk: stream(seed, 3),
            tasks: Tasks::new(),
            timers: Timers::new(),
            events: BinaryHeap::with_capacity(1024),
            sequence: 0,
            nodes: Vec::new(),
            net: net::Net::new(),
            trace: Trace::new(seed, config.record_trace),
            buggify_sites: BTreeMap::new(),
            stats: Stats::default(),
            polls_at_instant: 0,
            stale_timer_event_count: 0,
            last_event: (Instant::ZERO, 0),
            config,
        };
        let shared = Shared {
            state: Mutex::new(state),
            ready: Arc::new(ReadyQueue::new()),
            seed,
            running: AtomicBool::new(false),
        };
        let shared = Arc::new(shared);
        World { _owner: Some(Arc::new(Owner { shared: Arc::clone(&shared) })), shared }
    }

    /// A handle that does not keep the world alive (see `SimEnv::world`).
    pub(crate) fn borrowed(shared: Arc<Shared>) -> World {
        World { shared, _owner: None }
    }

    /// The world's seed.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Current simulated time.
    pub fn now(&self) -> Instant {
        self.shared.lock().now
    }

    /// Adds a node with address `ip` and no boot function. Names and addresses must be unique.
    pub fn add_node(&self, name: &str, ip: IpAddr) -> NodeId {
        let mut state = self.shared.lock();
        assert!(state.node_by_ip(ip).is_none(), "address {ip} already taken");
        assert!(state.nodes.iter().all(|node| node.name != name), "node {name} exists");
        let index = u32::try_from(state.nodes.len()).expect("node count exceeds u32");
        let seed = state.config.seed;
        let node_seed = splitmix64(seed ^ splitmix64(0x6e6f_6465 ^ u64::from(index)));
        let offset_max =
            i64::try_from(state.config.clock_offset_max.as_nanos()).unwrap_or(i64::MAX);
        let drift_max = i64::from(state.config.clock_drift_ppm_max);
        let mut clock_rng = stream(seed, 0x636c_6f63_6b00 + u64::from(index));
        let clock_offset_nanos = clock_rng.random_range(-offset_max..=offset_max);
        let clock_drift_ppm = clock_rng.random_range(-drift_max..=drift_max);
        let disk_config = state.config.disk.clone();
        state.nodes.push(Node {
            name: name.to_string(),
            ip,
            generation: 0,
            status: NodeStatus::Running,
            parked: Vec::new(),
            boot: None,
            rng: ChaCha12Rng::seed_from_u64(node_seed),
            disk: disk::Disk::new(disk_config.faults.capacity_bytes),
            disk_config,
            clock_offset_nanos,
            clock_drift_ppm,
            net: net::NodeNet::new(),
        });
        state.net.add_node(ip, index);
        NodeId(index)
    }

    /// Adds a node that runs `boot` now and again at every restart.
    pub fn add_node_with<F, Fut>(&self, name: &str, ip: IpAddr, boot: F) -> NodeId
    where
        F: Fn(SimEnv) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let node = self.add_node(name, ip);
        let boot: BootFn = Arc::new(move |env| Box::pin(boot(env)));
        self.shared.lock().nodes[node.0 as usize].boot = Some(Arc::clone(&boot));
        let env = self.env(node);
        self.shared.spawn_task(node.0, env.generation(), boot(env));
        node
    }

    /// The env of `node`'s current incarnation, for spawning work on it from outside.
    pub fn env(&self, node: NodeId) -> SimEnv {
        let generation = self.shared.lock().nodes[node.0 as usize].generation;
        SimEnv::new(Arc::clone(&self.shared), node.0, generation)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<NodeId> {
        let state = self.shared.lock();
        state.nodes.iter().position(|node| node.name == name).map(|index| NodeId(index as u32))
    }

    /// The name of `node`.
    pub fn node_name(&self, node: NodeId) -> String {
        self.shared.lock().nodes[node.0 as usize].name.clone()
    }

    /// Every node, in the order they were added.
    pub fn nodes(&self) -> Vec<NodeId> {
        (0..self.shared.lock().nodes.len() as u32).map(NodeId).collect()
    }

    /// Spawns `future` on `node`.
    pub fn spawn<F>(&self, node: NodeId, future: F) -> TaskHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::Env::spawn(&self.env(node), future)
    }

    /// The determinism fingerprint: a hash of every trace record so far.
    pub fn trace_hash(&self) -> u64 {
        self.shared.lock().trace.hash()
    }

    /// How many trace records so far.
    pub fn trace_count(&self) -> u64 {
        self.shared.lock().trace.count()
    }

    /// Sends every later trace record to `sink` as it happens (replacing an earlier sink): set
    /// it before the first node is added to see the whole trace.
    pub fn set_trace_sink(&self, sink: TraceSink) {
        self.shared.lock().trace.set_sink(sink);
    }

    /// Every trace record so far, if `SimConfig::record_trace` is set.
    pub fn trace_records(&self) -> Option<Vec<TraceRecord>> {
        self.shared.lock().trace.records().map(<[TraceRecord]>::to_vec)
    }

    /// Events waiting in the queue (timers, packets in flight), for diagnostics.
    pub fn pending_event_count(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// Every BUGGIFY site asked so far, by name, with its activation and fire count. A site
    /// no code reached is absent; one reached but never fired has a count of zero.
    pub fn buggify_sites(&self) -> BTreeMap<&'static str, BuggifySite> {
        self.shared.lock().buggify_sites.clone()
    }

    /// Counters of the run so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Runs for `duration` of simulated time.
    pub fn run_for(&self, duration: Duration) -> Result<(), SimError> {
        let deadline = self.now() + duration;
        self.run_until(deadline)
    }

    /// Runs until simulated time reaches `deadline` (idle time is skipped).
    pub fn run_until(&self, deadline: Instant) -> Result<(), SimError> {
        self.run(deadline, false, || false).map(|_| ())
    }

    /// Spawns `future` on `node` and runs the world until it finishes; fails if it cannot
    /// (deadlock), if it is cancelled, or if it takes longer than `budget` of simulated time.
    pub fn block_on<F>(
        &self,
        node: NodeId,
        budget: Duration,
        future: F,
    ) -> Result<F::Output, SimError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let deadline = self.now() + budget;
        let mut handle = self.spawn(node, future);
        let finished = self.run(deadline, true, || handle.is_finished())?;
        if !finished {
            let state = self.shared.lock();
            return Err(self.error(&state, SimErrorKind::TimeBudgetExceeded { deadline }));
        }
        let waker = std::task::Waker::noop();
        match Pin::new(&mut handle).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(Ok(output)) => Ok(output),
            _ => Err(self.error(&self.shared.lock(), SimErrorKind::TaskCancelled)),
        }
    }

    fn error(&self, state: &State, kind: SimErrorKind) -> SimError {
        SimError { seed: self.shared.seed, time: state.now, kind }
    }

    /// The run loop. Returns `Ok(true)` once `done` holds, `Ok(false)` at `deadline`. When
    /// `awaiting`, running out of events before `done` holds is a deadlock.
    fn run(
        &self,
        deadline: Instant,
        awaiting: bool,
        mut done: impl FnMut() -> bool,
    ) -> Result<bool, SimError> {
        let _running = RunningGuard::enter(&self.shared.running);
        loop {
            if done() {
                return Ok(true);
            }
            if self.poll_one()? {
                continue;
            }
            // No task is ready: advance to the next event, or stop.
            let mut state = self.shared.lock();
            match state.events.peek() {
                Some(next) if next.at <= deadline => {
                    let Scheduled { at, event, sequence } = state.events.pop().expect("peeked");
                    state.check_event_order(at, sequence);
                    if at > state.now {
                        state.now = at;
                        state.polls_at_instant = 0;
                    }
                    self.count_step(&mut state)?;
                    state.stats.event_count += 1;
                    self.process(&mut state, event);
                }
                None if awaiting => {
                    let blocked_task_count = state.tasks.live_count();
                    return Err(self.error(&state, SimErrorKind::NoProgress { blocked_task_count }));
                }
                _ => {
                    if deadline > state.now {
                        state.now = deadline;
                        state.polls_at_instant = 0;
                    }
                    return Ok(done());
                }
            }
        }
    }

    fn count_step(&self, state: &mut State) -> Result<(), SimError> {
        let total = state.stats.poll_count + state.stats.event_count;
        if total >= state.config.events_max {
            let events_max = state.config.events_max;
            return Err(self.error(state, SimErrorKind::EventBudgetExceeded { events_max }));
        }
        Ok(())
    }

    fn process(&self, state: &mut State, event: Event) {
        match event {
            Event::Timer(key) => match state.timers.remove(key) {
                Some(waker) => {
                    state.record(WORLD_NODE, TraceKind::TimerFire, u64::from(key.slot), 0);
                    waker.wake();
                }
                None => {
                    state.stale_timer_event_count = state.stale_timer_event_count.saturating_sub(1)
                }
            },
            Event::Net(event) => net::process(state, event),
        }
    }

    /// Polls one ready task. Returns whether one was polled.
    fn poll_one(&self) -> Result<bool, SimError> {
        let mut state = self.shared.lock();
        let Some(key) = self.shared.ready.pick(&mut state.rng_schedule) else {
            return Ok(false);
        };
        let Some(task) = state.tasks.get_mut(key) else {
            return Ok(true);
        };
        let node = task.node;
        if state.nodes[node as usize].status == NodeStatus::Paused {
            state.nodes[node as usize].parked.push(key);
            return Ok(true);
        }
        let task = state.tasks.get_mut(key).expect("checked");
        task.waker.clear();
        let waker = Arc::clone(&task.waker);
        let mut future = task.future.take().expect("a task is polled by one poller at a time");
        state.stats.poll_count += 1;
        state.polls_at_instant += 1;
        if state.polls_at_instant > state.config.polls_per_instant_max {
            let polls_per_instant_max = state.config.polls_per_instant_max;
            return Err(self.error(&state, SimErrorKind::Livelock { polls_per_instant_max }));
        }
        self.count_step(&mut state)?;
        state.record(node, TraceKind::Poll, u64::from(key.slot), u64::from(key.generation));
        drop(state);

        let waker = std::task::Waker::from(waker);
        let mut context = Context::from_waker(&waker);
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut context)));

        let mut state = self.shared.lock();
        let finished = !matches!(result, Ok(Poll::Pending));
        let task = state.tasks.get_mut(key).expect("a polled task keeps its slot");
        if finished || task.killed {
            let removed = state.tasks.remove(key);
            drop(state);
            drop(removed);
            drop(future);
        } else {
            task.future = Some(future);
            drop(state);
        }
        match result {
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let state = self.shared.lock();
                let node = state.nodes[node as usize].name.clone();
                Err(self.error(&state, SimErrorKind::TaskPanicked { node, message }))
            }
            Ok(_) => Ok(true),
        }
    }

    /// Crashes `node`: its tasks, sockets and connections are dropped; each unsynced disk write
    /// is dropped, kept or torn. A crashed node stays down until `restart`.
    pub fn crash(&self, node: NodeId) {
        let mut state = self.shared.lock();
        let index = node.0;
        if state.nodes[index as usize].status == NodeStatus::Crashed {
            return;
        }
        let dropped = kill_tasks(&mut state, index);
        let generation = {
            let node = &mut state.nodes[index as usize];
            node.generation += 1;
            node.status = NodeStatus::Crashed;
            node.parked.clear();
            node.generation
        };
        state.stats.crash_count += 1;
        state.record(index, TraceKind::NodeCrash, u64::from(generation), 0);
        net::crash_node(&mut state, index);
        fs::crash_disk(&mut state, index);
        drop(state);
        drop(dropped);
    }

    /// Boots a crashed node again from its disk, running its boot function.
    pub fn restart(&self, node: NodeId) {
        let mut state = self.shared.lock();
        let entry = &mut state.nodes[node.0 as usize];
        if entry.status != NodeStatus::Crashed {
            return;
        }
        entry.status = NodeStatus::Running;
        let boot = entry.boot.clone();
        let generation = entry.generation;
        state.record(node.0, TraceKind::NodeRestart, u64::from(generation), 0);
        drop(state);
        if let Some(boot) = boot {
            let env = SimEnv::new(Arc::clone(&self.shared), node.0, generation);
            self.shared.spawn_task(node.0, generation, boot(env));
        }
    }

    /// Stops polling `node`'s tasks (a long GC pause); packets still queue at its sockets.
    pub fn pause(&self, node: NodeId) {
        let mut state = self.shared.lock();
        if state.nodes[node.0 as usize].status == NodeStatus::Running {
            state.nodes[node.0 as usize].status = NodeStatus::Paused;
            state.record(node.0, TraceKind::NodePause, 0, 0);
        }
    }

    /// Resumes a paused node.
    pub fn resume(&self, node: NodeId) {
        let mut state = self.shared.lock();
        let entry = &mut state.nodes[node.0 as usize];
        if entry.status != NodeStatus::Paused {
            return;
        }
        entry.status = NodeStatus::Running;
        let parked = std::mem::take(&mut entry.parked);
        for key in parked {
            if let Some(task) = state.tasks.get_mut(key) {
                task.waker.requeue();
            }
        }
        state.record(node.0, TraceKind::NodeResume, 0, 0);
    }

    /// Whether `node` is crashed.
    pub fn is_crashed(&self, node: NodeId) -> bool {
        self.shared.lock().nodes[node.0 as usize].status == NodeStatus::Crashed
    }

    /// Sets `node`'s wall-clock offset (may jump backwards) and drift.
    pub fn set_clock(&self, node: NodeId, offset_nanos: i64, drift_ppm: i64) {
        let mut state = self.shared.lock();
        let entry = &mut state.nodes[node.0 as usize];
        entry.clock_offset_nanos = offset_nanos;
        entry.clock_drift_ppm = drift_ppm;
        state.record(node.0, TraceKind::Clock, offset_nanos as u64, drift_ppm as u64);
    }

    /// Sets `node`'s disk latency and fault configuration (takes effect for the next operation;
    /// a changed capacity takes effect at once).
    pub fn set_disk(&self, node: NodeId, config: DiskConfig) {
        let mut state = self.shared.lock();
        let entry = &mut state.nodes[node.0 as usize];
        entry.disk.set_capacity(config.faults.capacity_bytes);
        entry.disk_config = config;
    }

    /// Cuts the links between `a` and `b` in both directions.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.partition_oneway(a, b);
        self.partition_oneway(b, a);
    }

    /// Cuts the link from `source` to `target` only: `target` still reaches `source`. A node's
    /// traffic to itself is never cut.
    pub fn partition_oneway(&self, source: NodeId, target: NodeId) {
        let change = net::Change::Cut { source: source.0, target: target.0 };
        net::change(&mut self.shared.lock(), change);
    }

    /// Splits the nodes into two sides that cannot reach each other.
    pub fn split(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        for a in side_a {
            for b in side_b {
                self.partition(*a, *b);
            }
        }
    }

    /// Mends the links between `a` and `b` in both directions.
    pub fn repair(&self, a: NodeId, b: NodeId) {
        let mut state = self.shared.lock();
        net::change(&mut state, net::Change::Mend { source: a.0, target: b.0 });
        net::change(&mut state, net::Change::Mend { source: b.0, target: a.0 });
    }

    /// Holds every packet to and from `node` until `unclog` (nothing is lost).
    pub fn clog(&self, node: NodeId) {
        net::change(&mut self.shared.lock(), net::Change::Clog(node.0));
    }

    /// Releases `node`'s held packets, in their original order.
    pub fn unclog(&self, node: NodeId) {
        net::change(&mut self.shared.lock(), net::Change::Unclog(node.0));
    }

    /// Mends every cut link and unclogs every node.
    pub fn heal(&self) {
        net::change(&mut self.shared.lock(), net::Change::HealAll);
    }

    /// Overrides the link from `source` to `target`.
    pub fn set_link(&self, source: NodeId, target: NodeId, link: LinkConfig) {
        let change =
            net::Change::SetLink { source: source.0, target: target.0, link: Box::new(link) };
        net::change(&mut self.shared.lock(), change);
    }

    /// Overrides every link between distinct nodes that exist now (both directions).
    pub fn set_all_links(&self, link: LinkConfig) {
        let count = self.shared.lock().nodes.len() as u32;
        for source in 0..count {
            for target in (0..count).filter(|target| *target != source) {
                self.set_link(NodeId(source), NodeId(target), link.clone());
            }
        }
    }

    /// Digest of `node`'s durable disk state.
    pub fn disk_digest(&self, node: NodeId) -> u64 {
        self.shared.lock().nodes[node.0 as usize].disk.durable_digest()
    }
}

/// Removes every task of `node`; returns them so they are dropped after the lock is released.
fn kill_tasks(state: &mut State, node: u32) -> Vec<Task> {
    let mut dropped = Vec::new();
    for key in state.tasks.keys_of_node(node) {
        let task = state.tasks.get_mut(key).expect("listed");
        if task.future.is_none() {
            // Being polled right now (the node crashed itself): the poller drops it.
            task.killed = true;
        } else if let Some(task) = state.tasks.remove(key) {
            dropped.push(task);
        }
    }
    dropped
}

/// Aborts one task (from `TaskHandle::abort`).
pub(crate) fn abort_task(shared: &Shared, key: TaskKey) {
    let mut state = shared.lock();
    let Some(task) = state.tasks.get_mut(key) else { return };
    if task.future.is_none() {
        task.killed = true;
        return;
    }
    let removed = state.tasks.remove(key);
    drop(state);
    drop(removed);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Marks a world as being run; running a world from inside its own task is a bug.
struct RunningGuard<'a> {
    running: &'a AtomicBool,
}

impl<'a> RunningGuard<'a> {
    fn enter(running: &'a AtomicBool) -> RunningGuard<'a> {
        let was_running = running.swap(true, AtomicOrdering::Acquire);
        assert!(!was_running, "a World is run from inside its own task, or from two threads");
        RunningGuard { running }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.running.store(false, AtomicOrdering::Release);
    }
}
