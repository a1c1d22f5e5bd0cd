//! The coordinator: the registry on docdb, the map engine fed by docdb's change stream, and the
//! agent sessions that stream each node its map.
//!
//! Data flow. Every state change is a registry commit (a registration, new endpoints, an
//! approved route, a policy edit). One task, the *pipeline*, follows the registry's change
//! stream and hands each committed change to the `MapEngine`, which says which nodes' maps it
//! changed; only those nodes' sessions are woken, and each sends its node a delta from the
//! version it last sent. So the work of a change is proportional to the maps it changes, and a
//! map never shows state that was not committed.
//!
//! Online state is not stored: a node is online while it holds a session on this run, so a
//! coordinator restart starts with every node offline until its agent reconnects. Ephemeral
//! nodes are deleted when their last session ends.
//!
//! Epochs. Map versions are per run (the engine is rebuilt from the registry at each start); a
//! run draws a random epoch, and an agent that reconnects with a version of another epoch gets
//! a full map. Within an epoch it gets a delta from its version if the engine still has it.
//!
//! Authority. A session's identity is the machine key its Noise handshake proved; a request
//! acts on the node registered under that key and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use docdb::{ChangeEvent, DocDb, Scope};
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use sim::{Env, TcpListener};
use zeroize::Zeroizing;

use crate::channel::{Channel, ChannelError, Receiver, Sender};
use crate::netmap::{Changed, Faults, MapEngine, NetMap};
use crate::policy::{Policy, PolicyEngine, PolicyError};
use crate::proto::{ErrorKind, MapVersion, Request, Response};
use crate::ratelimit::{RateLimit, TokenBucket};
use crate::registry::{DATABASE, RegisterRequest, Registry, RegistryError, RegistryOptions};
use crate::types::{Key, NodeId, NodeInfo, User};

/// Sessions one coordinator serves at once; more are refused with `Unavailable`.
pub const SESSIONS_MAX: usize = 100_000;
/// Events the pipeline applies before it lets waiting sessions look (it then goes on).
const PIPELINE_BATCH_MAX: usize = 4096;
/// How long a session waits for the pipeline to apply its own node's latest commit.
const PIPELINE_WAIT_MAX: Duration = Duration::from_secs(10);

/// How a coordinator runs.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// Its static Noise private key (agents know the public half).
    pub private_key: Zeroizing<[u8; 32]>,
    /// Where its docdb lives (relative to the node's data directory).
    pub data_dir: String,
    /// The tailnet's base domain (`example.ts.net`).
    pub domain: String,
    /// Registry behaviour.
    pub registry: RegistryOptions,
    /// docdb options (durability `Sync` so an answered request is on disk).
    pub db: docdb::Options,
    /// Requests one session may make (a misbehaving agent is cut off, others go on).
    pub request_rate: RateLimit,
    /// Between two sends on an idle map stream (the agent's liveness check); 15 s.
    pub keepalive: Duration,
    /// How long an agent may stay silent before its session is dropped; 60 s.
    pub agent_silence_max: Duration,
    /// Plants the map engine's known bug (a removed node stays in its peers' maps) for the
    /// harness to find. Inert without feature `planted-bugs`; never in production.
    pub planted_stale_removal: bool,
}

impl CoordinatorConfig {
    /// A configuration with production defaults: `data_dir` for the store, `domain` for names.
    pub fn new(private_key: [u8; 32], data_dir: &str, domain: &str) -> CoordinatorConfig {
        CoordinatorConfig {
            private_key: Zeroizing::new(private_key),
            data_dir: data_dir.to_string(),
            domain: domain.to_string(),
            registry: RegistryOptions::default(),
            db: docdb::Options::default(),
            request_rate: RateLimit { per_second: 20, burst: 100 },
            keepalive: Duration::from_secs(15),
            agent_silence_max: Duration::from_secs(60),
            planted_stale_removal: false,
        }
    }
}

impl fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("private_key", &"(secret)")
            .field("data_dir", &self.data_dir)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Everything a coordinator operation can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The registry (or docdb under it) failed or refused.
    Registry(RegistryError),
    /// docdb failed outside the registry (opening, the change stream).
    Storage(docdb::Error),
    /// A policy was refused; the running policy stays in force.
    Policy(PolicyError),
    /// The map engine refused a state (names why).
    Map(String),
    /// Listening failed.
    Io(std::io::Error),
}

impl fmt::Display for CoordinatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoordinatorError::Registry(error) => write!(f, "registry: {error}"),
            CoordinatorError::Storage(error) => write!(f, "storage: {error}"),
            CoordinatorError::Policy(error) => write!(f, "policy refused: {error}"),
            CoordinatorError::Map(why) => write!(f, "map engine: {why}"),
            CoordinatorError::Io(error) => write!(f, "network: {error}"),
        }
    }
}

impl std::error::Error for CoordinatorError {}

impl From<RegistryError> for CoordinatorError {
    fn from(error: RegistryError) -> CoordinatorError {
        CoordinatorError::Registry(error)
    }
}

impl From<docdb::Error> for CoordinatorError {
    fn from(error: docdb::Error) -> CoordinatorError {
        CoordinatorError::Storage(error)
    }
}

impl From<PolicyError> for CoordinatorError {
    fn from(error: PolicyError) -> CoordinatorError {
        CoordinatorError::Policy(error)
    }
}

/// Counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    /// Change events the pipeline applied.
    pub changes_applied: u64,
    /// Full maps sent.
    pub full_maps_sent: u64,
    /// Deltas sent.
    pub deltas_sent: u64,
    /// Bytes of map messages sent (before sealing).
    pub map_bytes_sent: u64,
    /// Sessions refused or ended by an error.
    pub sessions_failed: u64,
    /// Requests refused by the rate limit.
    pub rate_limited: u64,
    /// Sessions open now.
    pub sessions_open: u64,
}

/// The in-memory state behind one lock.
struct State {
    engine: MapEngine,
    /// The stored policy's version (0: none, everyone reaches everyone).
    policy_version: u64,
    policy: Option<Policy>,
    users: BTreeMap<u64, User>,
    /// Nodes online on this run: node -> the session holding it.
    online: BTreeMap<NodeId, u64>,
    /// Per node with a session: the session and its wake-up (capacity 1, so wakes coalesce).
    watchers: BTreeMap<NodeId, (u64, mpsc::Sender<()>)>,
    next_session: u64,
    /// The last commit the pipeline applied.
    applied_commit: u64,
    stats: CoordinatorStats,
}

impl State {
    fn wake(&mut self, changed: &Changed) {
        for node in &changed.nodes {
            if let Some((_, wake)) = self.watchers.get_mut(node) {
                // Full means a wake is already pending: the session will see this change too.
                let _ = wake.try_send(());
            }
        }
    }
}

struct Inner<E: Env> {
    env: E,
    config: CoordinatorConfig,
    registry: Registry<E>,
    epoch: u64,
    state: Mutex<State>,
    /// Wakes sessions waiting for the pipeline to reach a commit.
    applied: Mutex<Vec<futures::channel::oneshot::Sender<()>>>,
}

/// A running coordinator (cheap to clone).
pub struct Coordinator<E: Env> {
    inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for Coordinator<E> {
    fn clone(&self) -> Coordinator<E> {
        Coordinator { inner: Arc::clone(&self.inner) }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl<E: Env> Coordinator<E> {
    /// Opens the store, rebuilds the map engine from it and starts the change pipeline.
    pub async fn open(
        env: E,
        config: CoordinatorConfig,
    ) -> Result<Coordinator<E>, CoordinatorError> {
        let db = DocDb::open(env.clone(), &config.data_dir, config.db.clone()).await?;
        let registry = Registry::open(env.clone(), db.clone(), config.registry.clone()).await?;
        // Watch first, then read: a commit between the two is applied twice, which converges
        // (every event carries the whole document), while the other order could miss one.
        let changes = db.watch(Scope::Database(DATABASE.to_string()), None).await?;
        let users = registry.list_users().await?;
        let mut nodes = registry.list_nodes().await?;
        for node in &mut nodes {
            node.online = false;
        }
        let record = registry.policy().await?;
        let (policy, policy_version) = match record {
            Some(record) => (Some(Policy::parse(&record.text)?), record.version),
            None => (None, 0),
        };
        let view = policy_view(policy.as_ref(), &users);
        let mut engine = MapEngine::restore(view, &config.domain, &users, &nodes, &BTreeMap::new())
            .map_err(|error| CoordinatorError::Map(error.to_string()))?;
        // The engine's fault points (`coordinator.netmap.*`) follow the node's BUGGIFY.
        let fault_env = env.clone();
        engine.set_faults(Faults::new(Box::new(move |site| fault_env.buggify(site))));
        if config.planted_stale_removal {
            engine.plant_stale_removal();
        }
        let epoch = rand_core::RngCore::next_u64(&mut env.rng());
        let state = State {
            engine,
            policy_version,
            policy,
            users: users.into_iter().map(|user| (user.id, user)).collect(),
            online: BTreeMap::new(),
            watchers: BTreeMap::new(),
            next_session: 1,
            applied_commit: db.last_commit(),
            stats: CoordinatorStats::default(),
        };
        let inner = Arc::new(Inner {
            env: env.clone(),
            config,
            registry,
            epoch,
            state: Mutex::new(state),
            applied: Mutex::new(Vec::new()),
        });
        let coordinator = Coordinator { inner };
        env.spawn(coordinator.clone().pipeline(changes));
        Ok(coordinator)
    }

    /// The registry (admin operations go through it; the pipeline sees their commits).
    pub fn registry(&self) -> &Registry<E> {
        &self.inner.registry
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Counters so far.
    pub fn stats(&self) -> CoordinatorStats {
        lock(&self.inner.state).stats.clone()
    }

    /// The version of the policy the engine runs (0: none stored, everyone reaches everyone).
    pub fn policy_version(&self) -> u64 {
        lock(&self.inner.state).policy_version
    }

    /// The map `node` would get now, from the engine (for checks and the admin API).
    pub fn full_map(&self, node: NodeId) -> Option<NetMap> {
        lock(&self.inner.state).engine.full_map(node).ok()
    }

    /// Runs `check` on the engine (for tests and the harness).
    pub fn with_engine<T>(&self, check: impl FnOnce(&MapEngine) -> T) -> T {
        check(&lock(&self.inner.state).engine)
    }

    /// Checks a policy text against the current users without storing it.
    pub fn check_policy(&self, text: &str) -> Result<Policy, CoordinatorError> {
        Ok(Policy::parse(text)?)
    }

    /// Checks and stores a new policy; the pipeline puts it in force. A refused policy leaves
    /// the running one in force. Returns the new policy version.
    pub async fn set_policy(&self, text: &str) -> Result<u64, CoordinatorError> {
        self.check_policy(text)?;
        let record = self.inner.registry.set_policy(text, None).await?;
        self.wait_applied(self.inner.registry.db().last_commit()).await;
        Ok(record.version)
    }

    /// Serves agents on `listener` until the node stops (each session in its own task).
    pub async fn serve(self, listener: E::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _from)) => {
                    let coordinator = self.clone();
                    self.inner.env.spawn(async move { coordinator.session(stream).await });
                }
                Err(_) => self.inner.env.sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Listens on `addr` and serves agents there.
    pub async fn listen_and_serve(self, addr: SocketAddr) -> Result<(), CoordinatorError> {
        let listener = self.inner.env.listen_tcp(addr).await.map_err(CoordinatorError::Io)?;
        self.serve(listener).await;
        Ok(())
    }

    /// Follows the registry's commits into the engine, forever (until the node stops).
    ///
    /// One commit may carry several events (a registration writes the node and the address
    /// high-water mark), so a commit counts as applied only once the stream is drained: commits
    /// are atomic, so when no event is left, every event of every commit seen is applied.
    async fn pipeline(self, mut changes: docdb::ChangeStream<E>) {
        loop {
            let event = match changes.next().await {
                Ok(event) => event,
                Err(_) => {
                    // The store failed under us: nothing newer can be read; retry slowly. A
                    // node whose store is broken is restarted by its operator.
                    self.inner.env.sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // BUGGIFY: a pipeline that lags behind the commits (a slow change-stream read),
            // so sessions see their own writes late and must wait for them.
            if self.inner.env.buggify("coordinator.pipeline.lag") {
                self.inner.env.sleep(Duration::from_millis(50)).await;
            }
            let mut seen = event.token.commit;
            self.apply(event).await;
            let mut drained = 0;
            while let Ok(Some(event)) = changes.try_next().await {
                seen = seen.max(event.token.commit);
                self.apply(event).await;
                drained += 1;
                if drained >= PIPELINE_BATCH_MAX {
                    break;
                }
            }
            if drained < PIPELINE_BATCH_MAX {
                let mut state = lock(&self.inner.state);
                state.applied_commit = state.applied_commit.max(seen);
            }
            for waiter in std::mem::take(&mut *lock(&self.inner.applied)) {
                let _ = waiter.send(());
            }
        }
    }

    /// Applies one change event to the engine.
    async fn apply(&self, event: ChangeEvent) {
        let policy_record = if event.collection == "policy" {
            self.inner.registry.policy().await.ok().flatten()
        } else {
            None
        };
        let mut state = lock(&self.inner.state);
        apply_event(&mut state, &event, policy_record);
        // Simulation and test builds check the engine after every change (CONTRIBUTING.md:
        // invariants run after every step); release builds skip the O(nodes x peers) walk.
        if cfg!(debug_assertions)
            && let Err(violation) = state.engine.check_invariants()
        {
            panic!("map engine invariant broken after {event:?}: {violation}");
        }
        state.stats.changes_applied += 1;
    }

    /// Waits until the pipeline applied commit `commit` (bounded).
    async fn wait_applied(&self, commit: u64) {
        let deadline = self.inner.env.now() + PIPELINE_WAIT_MAX;
        loop {
            let (sender, receiver) = futures::channel::oneshot::channel();
            lock(&self.inner.applied).push(sender);
            if lock(&self.inner.state).applied_commit >= commit || self.inner.env.now() >= deadline
            {
                return;
            }
            let sleep = self.inner.env.sleep_until(deadline);
            futures::select_biased! {
                _ = receiver.fuse() => {}
                () = sleep.fuse() => return,
            }
        }
    }

    async fn session(self, stream: E::TcpStream) {
        let env = self.inner.env.clone();
        let private = *self.inner.config.private_key;
        let outcome = match Channel::accept(env, stream, private).await {
            Ok((channel, machine_key)) => self.serve_channel(channel, machine_key).await,
            Err(error) => Err(error),
        };
        if outcome.is_err() {
            lock(&self.inner.state).stats.sessions_failed += 1;
        }
    }

    async fn serve_channel(
        &self,
        mut channel: Channel<E>,
        machine_key: Key,
    ) -> Result<(), ChannelError> {
        loop {
            let request: Request = channel.recv().await?;
            match request {
                Request::Register {
                    preauth_key,
                    node_key,
                    hostname,
                    advertised_routes,
                    endpoints,
                } => {
                    let request = RegisterRequest {
                        preauth_key,
                        machine_key,
                        node_key,
                        hostname,
                        advertised_routes,
                        endpoints,
                    };
                    if answer(&mut channel, self.register(request).await).await? {
                        return Ok(());
                    }
                }
                Request::Map { node_key, have, endpoints } => {
                    return self.map_stream(channel, machine_key, node_key, have, endpoints).await;
                }
                Request::Ping => {}
                Request::RotateNodeKey { old, new } => {
                    if answer(&mut channel, self.rotate(machine_key, old, new).await).await? {
                        return Ok(());
                    }
                }
                Request::Endpoints { .. } => {
                    let message = "open the map stream first".to_string();
                    channel.send(&Response::Error { kind: ErrorKind::BadRequest, message }).await?;
                    return Ok(());
                }
            }
        }
    }

    async fn register(&self, request: RegisterRequest) -> Result<NodeInfo, (ErrorKind, String)> {
        let registry = &self.inner.registry;
        let node = registry.register(request).await.map_err(refusal)?;
        let node = self.auto_approve(node).await;
        self.wait_applied(registry.db().last_commit()).await;
        Ok(node)
    }

    /// Rotates the machine's node key; answers once the change is in the engine, so the map
    /// asked for next already carries the new key.
    async fn rotate(
        &self,
        machine_key: Key,
        old: Key,
        new: Key,
    ) -> Result<NodeInfo, (ErrorKind, String)> {
        let registry = &self.inner.registry;
        let node = registry.rotate_node_key(machine_key, old, new).await.map_err(refusal)?;
        self.wait_applied(registry.db().last_commit()).await;
        Ok(node)
    }

    /// Approves the node's advertised routes that the policy's `autoApprovers` approve.
    async fn auto_approve(&self, node: NodeInfo) -> NodeInfo {
        let wanted: Vec<_> = {
            let state = lock(&self.inner.state);
            let Some(policy) = state.policy.as_ref() else { return node };
            let users: Vec<User> = state.users.values().cloned().collect();
            node.advertised_routes
                .iter()
                .copied()
                .filter(|route| {
                    node.approved_routes.contains(route)
                        || policy.auto_approves(&node, *route, &users)
                })
                .collect()
        };
        if wanted == node.approved_routes {
            return node;
        }
        match self.inner.registry.approve_routes(node.id, wanted).await {
            Ok(node) => node,
            Err(_) => node,
        }
    }

    async fn map_stream(
        &self,
        channel: Channel<E>,
        machine_key: Key,
        node_key: Key,
        have: Option<MapVersion>,
        endpoints: Vec<SocketAddr>,
    ) -> Result<(), ChannelError> {
        let (mut sender, receiver) = channel.split();
        let node = match self.open_stream(machine_key, node_key, endpoints).await {
            Ok(node) => node,
            Err((kind, message)) => {
                sender.send(&Response::Error { kind, message }).await?;
                return Ok(());
            }
        };
        let (session, wake) = self.attach(node.id);
        let reader = self.clone().read_requests(receiver, node.id);
        let writer = self.write_maps(&mut sender, node.id, have, wake);
        let outcome = futures::select_biased! {
            outcome = std::pin::pin!(reader.fuse()) => outcome,
            outcome = std::pin::pin!(writer.fuse()) => outcome,
        };
        self.detach(node.id, session).await;
        outcome
    }

    /// Checks the session's node and marks it online; the node as the engine will show it.
    async fn open_stream(
        &self,
        machine_key: Key,
        node_key: Key,
        endpoints: Vec<SocketAddr>,
    ) -> Result<NodeInfo, (ErrorKind, String)> {
        let registry = &self.inner.registry;
        let node = registry.node_by_machine_key(&machine_key).await.map_err(refusal)?;
        let Some(node) = node else {
            return Err((ErrorKind::NotRegistered, "register this machine first".to_string()));
        };
        if node.node_key != node_key {
            return Err((ErrorKind::WrongNodeKey, format!("node {} has another key", node.id)));
        }
        if node.expiry.is_some_and(|at| at <= registry.now_secs()) {
            return Err((ErrorKind::Expired, format!("node {} expired", node.id)));
        }
        let node = if node.endpoints != endpoints {
            registry.set_endpoints(node.id, endpoints).await.map_err(refusal)?
        } else {
            node
        };
        self.wait_applied(registry.db().last_commit()).await;
        Ok(node)
    }

    /// Registers the session as the node's current one and marks the node online.
    fn attach(&self, node: NodeId) -> (u64, mpsc::Receiver<()>) {
        let mut state = lock(&self.inner.state);
        let session = state.next_session;
        state.next_session += 1;
        let (wake_sender, wake) = mpsc::channel(1);
        state.watchers.insert(node, (session, wake_sender));
        state.online.insert(node, session);
        state.stats.sessions_open += 1;
        set_online(&mut state, node, true);
        (session, wake)
    }

    /// Ends a session: the node goes offline unless a newer session holds it.
    async fn detach(&self, node: NodeId, session: u64) {
        let ephemeral = {
            let mut state = lock(&self.inner.state);
            state.stats.sessions_open -= 1;
            if state.online.get(&node) != Some(&session) {
                return;
            }
            state.online.remove(&node);
            state.watchers.remove(&node);
            set_online(&mut state, node, false);
            state.engine.node(node).is_some_and(|info| info.ephemeral)
        };
        if ephemeral {
            // The registry deletes an ephemeral node going offline; the pipeline removes it.
            let _ = self.inner.registry.set_online(node, false).await;
        }
    }

    async fn read_requests(
        self,
        mut receiver: Receiver<E>,
        node: NodeId,
    ) -> Result<(), ChannelError> {
        let env = self.inner.env.clone();
        let mut bucket = TokenBucket::new(self.inner.config.request_rate, env.now());
        loop {
            let request =
                env.timeout(self.inner.config.agent_silence_max, receiver.recv::<Request>()).await;
            let request = match request {
                Ok(request) => request?,
                Err(_) => return Err(ChannelError::Timeout),
            };
            if !bucket.allow(env.now()) {
                lock(&self.inner.state).stats.rate_limited += 1;
                return Err(ChannelError::Rejected);
            }
            match request {
                Request::Endpoints { endpoints } => {
                    let _ = self.inner.registry.set_endpoints(node, endpoints).await;
                }
                // A keepalive from the agent: a `Map` with nothing new, or anything else is
                // out of place on an open stream.
                Request::Ping | Request::Map { .. } => {}
                // Registration and key changes belong before the stream opens.
                Request::Register { .. } | Request::RotateNodeKey { .. } => {
                    return Err(ChannelError::Rejected);
                }
            }
        }
    }

    async fn write_maps(
        &self,
        sender: &mut Sender<E>,
        node: NodeId,
        have: Option<MapVersion>,
        mut wake: mpsc::Receiver<()>,
    ) -> Result<(), ChannelError> {
        let epoch = self.inner.epoch;
        let mut sent: Option<u64> =
            have.filter(|have| have.epoch == epoch && have.node == node).map(|have| have.version);
        loop {
            let message = self.next_message(node, sent);
            if let Some((version, response)) = message {
                if let Response::Error { .. } = response {
                    sender.send(&response).await?;
                    return Ok(());
                }
                let bytes = crate::frame::encode(&response).map(|bytes| bytes.len()).unwrap_or(0);
                sender.send(&response).await?;
                let mut state = lock(&self.inner.state);
                state.stats.map_bytes_sent += bytes as u64;
                match response {
                    Response::FullMap { .. } => state.stats.full_maps_sent += 1,
                    _ => state.stats.deltas_sent += 1,
                }
                sent = Some(version);
                continue;
            }
            let keepalive = self.inner.env.sleep(self.inner.config.keepalive);
            futures::select_biased! {
                woken = wake.next() => if woken.is_none() { return Ok(()) },
                () = keepalive.fuse() => {
                    let policy_version = lock(&self.inner.state).policy_version;
                    let delta = crate::netmap::MapDelta {
                        from_version: sent.unwrap_or(0),
                        to_version: sent.unwrap_or(0),
                        ..Default::default()
                    };
                    if sent.is_some() {
                        sender.send(&Response::Delta { epoch, policy_version, delta }).await?;
                    }
                }
            }
        }
    }

    /// What to send `node` next, given the version it has: a delta, a full map, or nothing.
    fn next_message(&self, node: NodeId, sent: Option<u64>) -> Option<(u64, Response)> {
        let state = lock(&self.inner.state);
        let epoch = self.inner.epoch;
        let policy_version = state.policy_version;
        let Some(current) = state.engine.version(node) else {
            // The node was deleted (by an admin, or as an ephemeral node): end its stream.
            let message = format!("node {node} was removed");
            return Some((0, Response::Error { kind: ErrorKind::NotRegistered, message }));
        };
        if sent == Some(current) {
            return None;
        }
        if let Some(from) = sent.filter(|from| *from < current)
            && let Some(delta) = state.engine.delta_since(node, from)
        {
            return Some((current, Response::Delta { epoch, policy_version, delta }));
        }
        let map = state.engine.full_map(node).ok()?;
        let at = MapVersion { node, epoch, version: map.version };
        Some((map.version, Response::FullMap { at, policy_version, map }))
    }
}

/// The policy view for a stored policy, or allow-all when there is none.
fn policy_view(policy: Option<&Policy>, users: &[User]) -> Box<dyn crate::types::PolicyView> {
    match policy {
        Some(policy) => Box::new(PolicyEngine::new(policy.clone(), users.to_vec())),
        None => Box::new(PolicyEngine::allow_all()),
    }
}

/// Sets a node's in-memory online flag in the engine and wakes the sessions it changes.
fn set_online(state: &mut State, node: NodeId, online: bool) {
    let Some(mut info) = state.engine.node(node).cloned() else { return };
    if info.online == online {
        return;
    }
    info.online = online;
    if let Ok(changed) = state.engine.upsert_node(info) {
        state.wake(&changed);
    }
}

/// Applies one committed change to the engine and wakes the sessions whose maps it changed.
fn apply_event(
    state: &mut State,
    event: &ChangeEvent,
    policy: Option<crate::registry::PolicyRecord>,
) {
    let changed = match (event.collection.as_str(), event.operation.as_str()) {
        ("nodes", "delete") => {
            let Some(id) = event.id().and_then(bson_id) else { return };
            // The removed node's own session must hear of it too (it is told and closed).
            let mut changed = state.engine.remove_node(id).ok();
            if let Some(changed) = changed.as_mut() {
                changed.nodes.insert(id);
            }
            changed
        }
        ("nodes", _) => {
            let Some(mut info) = decode_info::<NodeInfo>(event) else { return };
            info.online = state.online.contains_key(&info.id);
            state.engine.upsert_node(info).ok()
        }
        ("users", "delete") => None,
        ("users", _) => {
            let Some(user) = decode_info::<User>(event) else { return };
            state.users.insert(user.id, user.clone());
            state.engine.upsert_user(user).ok()
        }
        ("policy", _) => {
            let Some(record) = policy else { return };
            if record.version <= state.policy_version {
                return;
            }
            // Checked before it was stored; a text that no longer parses keeps the old one.
            let Ok(parsed) = Policy::parse(&record.text) else { return };
            let changed = state.engine.set_policy(Some(&parsed)).unwrap_or_else(|| {
                let users: Vec<User> = state.users.values().cloned().collect();
                state.engine.replace_policy(policy_view(Some(&parsed), &users))
            });
            state.policy = Some(parsed);
            state.policy_version = record.version;
            Some(changed)
        }
        _ => None,
    };
    if let Some(changed) = changed {
        state.wake(&changed);
    }
}

fn bson_id(id: &bson::Bson) -> Option<NodeId> {
    match id {
        bson::Bson::Int64(id) => u64::try_from(*id).ok(),
        bson::Bson::Int32(id) => u64::try_from(*id).ok(),
        _ => None,
    }
}

fn decode_info<T: serde::de::DeserializeOwned>(event: &ChangeEvent) -> Option<T> {
    let document = event.full_document.as_ref()?.get_document("info").ok()?;
    bson::deserialize_from_document(document.clone()).ok()
}

/// A registry refusal as the agent protocol says it.
/// Sends the answer to a registration or a key rotation; true if it was a refusal (after
/// which the session ends).
async fn answer<E: Env>(
    channel: &mut Channel<E>,
    result: Result<NodeInfo, (ErrorKind, String)>,
) -> Result<bool, ChannelError> {
    let response = match result {
        Ok(node) => Response::Registered { node },
        Err((kind, message)) => Response::Error { kind, message },
    };
    let refused = matches!(response, Response::Error { .. });
    channel.send(&response).await?;
    Ok(refused)
}

fn refusal(error: RegistryError) -> (ErrorKind, String) {
    let kind = match &error {
        RegistryError::Storage(_) | RegistryError::Contention { .. } => ErrorKind::Unavailable,
        RegistryError::MachineNotFound { .. } => ErrorKind::NotRegistered,
        RegistryError::StaleNodeKey { .. } => ErrorKind::WrongNodeKey,
        RegistryError::PreAuthKeyUnknown
        | RegistryError::PreAuthKeyUsed { .. }
        | RegistryError::PreAuthKeyExpired { .. } => ErrorKind::BadPreAuthKey,
        _ => ErrorKind::BadRequest,
    };
    (kind, error.to_string())
}
