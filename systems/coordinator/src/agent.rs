//! The node agent: registers with the coordinator, holds the map stream and applies each map to
//! its WireGuard device; enforces the map's packet filter on what arrives through the tunnel.
//!
//! State on disk (`state_dir/agent.state`, written atomically: temporary file, sync, rename,
//! directory sync): the machine key, the node key and the node id once registered, encoded with
//! a format byte and a CRC32C so a torn or corrupt file is a typed error, never a wrong key.
//! Private keys never leave this file and this process: the protocol carries public keys only.
//!
//! The run loop: connect (jittered exponential backoff between attempts), Noise handshake as
//! the machine key, `Register` if the state holds no node yet, then `Map` with the version of
//! the map it holds. Each full map replaces the local map; each delta applies to it (a delta
//! that does not chain drops the map, and the next connection asks for a full one). After
//! every change the device's peers are set from the map: unchanged peers keep their sessions.
//!
//! Packets: `AgentHandle::send` routes an IP packet into the tunnel; `AgentHandle::recv` yields
//! the packets that arrived and that the map's filter allows. Packets the filter refuses are
//! counted in `AgentStatus::filtered` and dropped.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use gossip::node::Now;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sim::{Env, File, Instant, OpenOptions};
use wireguard::device::{DeviceConfig, DeviceHandle, PeerConfig};
use wireguard::{Device, IpNet};
use zeroize::Zeroizing;

use crate::channel::Channel;
use crate::netmap::NetMap;
use crate::policy::CompiledFilter;
use crate::proto::{ErrorKind, MapVersion, Request, Response};
use crate::tunnel_gossip::{GossipStatus, TunnelGossip, now_of, udp_payload};
use crate::types::{Key, NodeId, NodeInfo};

/// The state file's name inside `state_dir`.
pub const STATE_FILE: &str = "agent.state";
/// The state file's format byte (format 1 had no boot count; it is read as zero boots).
const STATE_FORMAT: u8 = 2;
/// Packets queued between the agent and its application.
const PACKET_QUEUE_MAX: usize = 1024;
/// How long a TCP connection attempt may take (the handshake has the channel's bound).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Binds tried while a restarted device waits for the old one to let go of its port.
const RESTART_BIND_ATTEMPTS: usize = 100;
/// Messages read ahead of the run loop.
const RESPONSE_QUEUE_MAX: usize = 16;

/// How an agent runs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The coordinator's agent-protocol address.
    pub coordinator: SocketAddr,
    /// The coordinator's static public key.
    pub coordinator_key: Key,
    /// The pre-auth key to register with (used only while the node is not registered).
    pub preauth_key: String,
    /// This node's host name.
    pub hostname: String,
    /// Where the agent keeps its state (relative to the node's data directory).
    pub state_dir: String,
    /// The WireGuard UDP port (0 picks one).
    pub listen_port: u16,
    /// The address peers reach this host at (the device's port is added to it).
    pub endpoint_ip: IpAddr,
    /// Routes this node advertises.
    pub advertise_routes: Vec<IpNet>,
    /// The first wait after a failed connection; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest wait between connection attempts.
    pub backoff_max: Duration,
    /// Between two pings on an idle stream (the coordinator drops silent agents).
    pub keepalive: Duration,
    /// How long the map stream may stay silent (the coordinator sends keepalives) before the
    /// agent reconnects.
    pub silence_max: Duration,
    /// The port of the gossip membership inside the tunnels (`None`: no gossip); see
    /// `tunnel_gossip` for what it carries and the decisions behind it.
    pub gossip_port: Option<u16>,
    /// Called with the status after every map applied (for checks and logs).
    pub observer: Option<Observer>,
}

/// Sees the agent's status after every map it applied.
pub type Observer = Arc<dyn Fn(&AgentStatus) + Send + Sync>;

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("coordinator", &self.coordinator)
            .field("preauth_key", &"(secret)")
            .field("hostname", &self.hostname)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// What an agent knows and has done, for its operator and for checks.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    /// The node as this run registered it or last rotated its key (`None` in a run that
    /// resumed from saved state and did neither: the map's `self_node` says who it is).
    pub node: Option<NodeInfo>,
    /// The map it holds.
    pub map: Option<NetMap>,
    /// Where that map stands.
    pub at: Option<MapVersion>,
    /// The policy version the map was computed under.
    pub policy_version: u64,
    /// Whether a map stream is open now.
    pub connected: bool,
    /// Full maps received.
    pub full_maps: u64,
    /// Deltas received (keepalives excluded).
    pub deltas: u64,
    /// Connection attempts that failed or streams that broke.
    pub disconnects: u64,
    /// The coordinator's last refusal.
    pub refused: Option<(ErrorKind, String)>,
    /// Arrived packets the filter refused.
    pub filtered: u64,
    /// Arrived packets the filter allowed.
    pub delivered: u64,
    /// The device's peer keys after the last reconfiguration, sorted.
    pub device_peers: Vec<Key>,
    /// The node key the device uses now.
    pub node_key: Key,
    /// Node-key rotations completed since this start.
    pub rotations: u64,
    /// How many times this agent has started on its state (1 on the first start).
    pub boots: u32,
    /// The gossip membership and store as this agent sees them (empty without gossip).
    pub gossip: GossipStatus,
    /// The WireGuard device's drops by reason (refreshed with the map and the gossip).
    pub device_drops: std::collections::BTreeMap<&'static str, u64>,
}

/// Everything the agent can fail with before its run loop starts.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// The state file is corrupt or of an unknown format (names why).
    CorruptState(String),
    /// Disk or socket error, with what it concerned.
    Io(&'static str, std::io::Error),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::CorruptState(why) => write!(f, "agent state file: {why}"),
            AgentError::Io(what, error) => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for AgentError {}

/// The agent's durable state.
#[derive(Clone, Serialize, Deserialize)]
struct AgentState {
    machine_private: [u8; 32],
    node_private: [u8; 32],
    node: Option<NodeId>,
    /// Starts on this state, this one included (the gossip incarnation starts there).
    boots: u32,
    /// A node key being rotated to: kept from before the request is sent until the
    /// coordinator's answer is saved, so a crash in between finishes the same rotation.
    next_node_private: Option<[u8; 32]>,
}

/// Format 1 of the state, without the boot count.
#[derive(Deserialize)]
struct AgentStateV1 {
    machine_private: [u8; 32],
    node_private: [u8; 32],
    node: Option<NodeId>,
}

impl Drop for AgentState {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.machine_private);
        zeroize::Zeroize::zeroize(&mut self.node_private);
        if let Some(next) = self.next_node_private.as_mut() {
            zeroize::Zeroize::zeroize(next);
        }
    }
}

/// The device's configuration under the state's node key, without peers (the map sets them).
fn device_config(state: &AgentState, listen_port: u16) -> DeviceConfig {
    DeviceConfig {
        private_key: Zeroizing::new(state.node_private),
        listen_port,
        listen_addr: None,
        peers: Vec::new(),
        handshake_load_limit_per_sec: 1000,
        mtu: 1280,
    }
}

/// The public key of an X25519 private key.
pub fn public_of(private: &[u8; 32]) -> Key {
    Key(wireguard::crypto::public_key(&x25519_dalek::StaticSecret::from(*private)))
}

/// A packet that arrived through the tunnel and that the filter allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrived {
    /// The node key of the WireGuard session it came through.
    pub peer: Key,
    /// The IP packet.
    pub packet: Vec<u8>,
    /// The policy version of the filter that allowed it.
    pub policy_version: u64,
}

/// The application's side of a running agent: packets in and out of the tunnel.
pub struct AgentHandle {
    outbound: mpsc::Sender<Vec<u8>>,
    inbound: mpsc::Receiver<Arrived>,
    status: Arc<Mutex<AgentStatus>>,
    machine_key: Key,
    secrets: Arc<Mutex<Vec<Zeroizing<[u8; 32]>>>>,
    rotate: mpsc::Sender<()>,
}

impl AgentHandle {
    /// Sends an IP packet into the tunnel (routed by destination by the device).
    pub async fn send(&mut self, packet: Vec<u8>) -> bool {
        self.outbound.send(packet).await.is_ok()
    }

    /// The next packet that arrived and that the filter allowed, with its sender's node key.
    pub async fn recv(&mut self) -> Option<(Key, Vec<u8>)> {
        self.inbound.next().await.map(|arrived| (arrived.peer, arrived.packet))
    }

    /// The next packet that arrived and that the filter allowed, with the policy version of
    /// that filter.
    pub async fn recv_detailed(&mut self) -> Option<Arrived> {
        self.inbound.next().await
    }

    /// A snapshot of the agent's status.
    pub fn status(&self) -> AgentStatus {
        lock(&self.status).clone()
    }

    /// The shared status (for observers that outlive the handle).
    pub fn status_handle(&self) -> Arc<Mutex<AgentStatus>> {
        Arc::clone(&self.status)
    }

    /// The agent's private keys (machine, node), for the harness's check that they never
    /// leave the node (it scans other nodes' disks for them). Never log or send them.
    pub fn private_keys_for_checks(&self) -> Vec<[u8; 32]> {
        lock(&self.secrets).iter().map(|key| **key).collect()
    }

    /// This machine's public key.
    pub fn machine_key(&self) -> Key {
        self.machine_key
    }

    /// This node's WireGuard public key.
    pub fn node_key(&self) -> Key {
        lock(&self.status).node_key
    }

    /// Asks the agent to replace its node key: it ends its map stream, sends the coordinator
    /// `RotateNodeKey`, restarts its device under the new key and reopens the stream. False if
    /// a rotation is already pending.
    pub fn rotate_node_key(&mut self) -> bool {
        self.rotate.try_send(()).is_ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Starts an agent: loads (or creates) its state, starts its WireGuard device and spawns its
/// run loop on `env`.
pub async fn start<E: Env>(env: E, config: AgentConfig) -> Result<AgentHandle, AgentError> {
    let state = boot_state(&env, &config.state_dir).await?;
    let device = Device::start(env.clone(), device_config(&state, config.listen_port))
        .await
        .map_err(|error| AgentError::Io("starting the WireGuard device", error))?;
    let endpoint = SocketAddr::new(config.endpoint_ip, device.local_addr().port());
    let (outbound, outbound_rx) = mpsc::channel(PACKET_QUEUE_MAX);
    let (inbound_tx, inbound) = mpsc::channel(PACKET_QUEUE_MAX);
    let status = Arc::new(Mutex::new(AgentStatus { boots: state.boots, ..Default::default() }));
    let gossip = config.gossip_port.map(|port| {
        let mut gossip = TunnelGossip::new(port, state.boots);
        let hook_env = env.clone();
        gossip.set_buggify(Arc::new(move |site| hook_env.buggify(site)));
        gossip
    });
    let machine_key = public_of(&state.machine_private);
    let node_key = public_of(&state.node_private);
    lock(&status).node_key = node_key;
    let (rotate, rotate_rx) = mpsc::channel(1);
    let mut secrets =
        vec![Zeroizing::new(state.machine_private), Zeroizing::new(state.node_private)];
    secrets.extend(state.next_node_private.map(Zeroizing::new));
    let secrets = Arc::new(Mutex::new(secrets));
    let run = Run {
        env: env.clone(),
        config,
        state,
        endpoint,
        device,
        status: Arc::clone(&status),
        outbound: outbound_rx,
        inbound: inbound_tx,
        filter: None,
        gossip,
        rotate: rotate_rx,
        rotate_wanted: false,
        secrets: Arc::clone(&secrets),
    };
    env.spawn(run.run());
    Ok(AgentHandle { outbound, inbound, status, machine_key, secrets, rotate })
}

async fn load_or_create_state<E: Env>(env: &E, dir: &str) -> Result<AgentState, AgentError> {
    let io = |what| move |error| AgentError::Io(what, error);
    env.create_dir_all(dir).await.map_err(io("creating the agent's state directory"))?;
    let path = format!("{dir}/{STATE_FILE}");
    match env.open(&path, OpenOptions::EXISTING).await {
        Ok(file) => {
            let bytes = read_all(&file).await.map_err(io("reading the agent state"))?;
            decode_state(&bytes)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut rng = env.rng();
            let mut state = AgentState {
                machine_private: [0; 32],
                node_private: [0; 32],
                node: None,
                boots: 0,
                next_node_private: None,
            };
            rng.fill_bytes(&mut state.machine_private);
            rng.fill_bytes(&mut state.node_private);
            Ok(state)
        }
        Err(error) => Err(AgentError::Io("opening the agent state", error)),
    }
}

/// Loads (or creates) the state and counts this start in it, durably before anything runs:
/// the gossip incarnation of this life is then above every earlier life's.
async fn boot_state<E: Env>(env: &E, dir: &str) -> Result<AgentState, AgentError> {
    let mut state = load_or_create_state(env, dir).await?;
    state.boots = state.boots.saturating_add(1);
    save_state(env, dir, &state).await?;
    Ok(state)
}

async fn read_all<F: File>(file: &F) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buffer = vec![0u8; 4096];
    loop {
        let count = file.read_at(bytes.len() as u64, &mut buffer).await?;
        if count == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buffer[..count]);
        if bytes.len() > 1 << 16 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "state too large"));
        }
    }
}

fn encode_state(state: &AgentState) -> Vec<u8> {
    let mut bytes = vec![STATE_FORMAT];
    let body = postcard::to_stdvec(state).expect("the state always serializes");
    bytes.extend_from_slice(&body);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_state(bytes: &[u8]) -> Result<AgentState, AgentError> {
    let corrupt = |why: &str| AgentError::CorruptState(why.to_string());
    if bytes.len() < 5 {
        return Err(corrupt("shorter than its header"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    if crc32c::crc32c(body) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    match body[0] {
        STATE_FORMAT => postcard::from_bytes(&body[1..]).map_err(|e| corrupt(&e.to_string())),
        1 => {
            let old: AgentStateV1 =
                postcard::from_bytes(&body[1..]).map_err(|e| corrupt(&e.to_string()))?;
            let AgentStateV1 { machine_private, node_private, node } = old;
            Ok(AgentState {
                machine_private,
                node_private,
                node,
                boots: 0,
                next_node_private: None,
            })
        }
        other => Err(AgentError::CorruptState(format!("unknown format {other}"))),
    }
}

async fn save_state<E: Env>(env: &E, dir: &str, state: &AgentState) -> Result<(), AgentError> {
    let io = |what| move |error| AgentError::Io(what, error);
    let bytes = encode_state(state);
    let temporary = format!("{dir}/{STATE_FILE}.tmp");
    let file = env.open(&temporary, OpenOptions::TRUNCATE).await.map_err(io("agent state"))?;
    file.write_at(0, &bytes).await.map_err(io("writing the agent state"))?;
    file.sync().await.map_err(io("syncing the agent state"))?;
    drop(file);
    let path = format!("{dir}/{STATE_FILE}");
    env.rename(&temporary, &path).await.map_err(io("renaming the agent state"))?;
    env.sync_dir(dir).await.map_err(io("syncing the agent state directory"))
}

/// The run loop's state.
struct Run<E: Env> {
    env: E,
    config: AgentConfig,
    state: AgentState,
    endpoint: SocketAddr,
    device: DeviceHandle,
    status: Arc<Mutex<AgentStatus>>,
    outbound: mpsc::Receiver<Vec<u8>>,
    inbound: mpsc::Sender<Arrived>,
    filter: Option<CompiledFilter>,
    gossip: Option<TunnelGossip>,
    rotate: mpsc::Receiver<()>,
    /// The application asked for a new node key; the next session rotates it.
    rotate_wanted: bool,
    /// Every private key this agent has held, for `private_keys_for_checks`.
    secrets: Arc<Mutex<Vec<Zeroizing<[u8; 32]>>>>,
}

/// Why a session ended.
enum Ended {
    /// The channel broke or timed out: reconnect after a backoff.
    Broken,
    /// The coordinator refused: wait longer (a refusal will not heal by itself quickly).
    Refused,
    /// The application dropped its handle: stop.
    Stopped,
    /// The application asked for a new node key: reconnect at once to rotate it.
    Rotate,
}

impl<E: Env> Run<E> {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        loop {
            let ended = self.session().await;
            {
                let mut status = lock(&self.status);
                status.connected = false;
                status.disconnects += 1;
            }
            let wait = match ended {
                Ended::Stopped => return,
                Ended::Broken => backoff,
                Ended::Refused => self.config.backoff_max,
                Ended::Rotate => Duration::ZERO,
            };
            // Full jitter: a restarted coordinator is not met by every agent at once.
            let jittered =
                wait.mul_f64(0.5 + (self.env.rng().next_u32() as f64) / (u32::MAX as f64) / 2.0);
            if !self.idle(jittered).await {
                // The application dropped its handle: nothing is left to connect for, and
                // looping on would spin (a refused connect and a closed queue never wait).
                return;
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
            let delivered_maps = {
                let status = lock(&self.status);
                status.full_maps + status.deltas
            };
            if matches!(ended, Ended::Broken) && delivered_maps > 0 {
                // A stream that delivered maps was healthy: start the next backoff small.
                backoff = self.config.backoff_min.max(backoff / 2);
            }
        }
    }

    /// Waits `duration` while still moving packets; false (at once) if the handle is gone.
    async fn idle(&mut self, duration: Duration) -> bool {
        let deadline = self.env.now() + duration;
        loop {
            let sleep = self.env.sleep_until(deadline);
            let gossip_wake = self.env.sleep_until(self.gossip_wake());
            futures::select_biased! {
                () = sleep.fuse() => return true,
                packet = self.outbound.next() => match packet {
                    Some(packet) => { let _ = self.device.send(packet).await; }
                    None => return false,
                },
                received = self.device.recv().fuse() => {
                    if let Some(received) = received { self.deliver(received).await; }
                }
                () = gossip_wake.fuse() => self.gossip_tick().await,
            }
        }
    }

    async fn session(&mut self) -> Ended {
        let env = self.env.clone();
        // The TCP connect is bounded here; the handshake by the channel's own timeout, which a
        // slow coordinator is allowed to use up.
        let stream =
            match env.timeout(CONNECT_TIMEOUT, env.connect_tcp(self.config.coordinator)).await {
                Ok(Ok(stream)) => stream,
                _ => return Ended::Broken,
            };
        let private = self.state.machine_private;
        let connected = Channel::connect(env.clone(), stream, private, self.config.coordinator_key);
        let Ok(mut channel) = connected.await else { return Ended::Broken };
        if self.state.node.is_none() {
            match self.register(&mut channel).await {
                Ok(()) => {}
                Err(ended) => return ended,
            }
        } else if (self.rotate_wanted || self.state.next_node_private.is_some())
            && let Err(ended) = self.rotate_key(&mut channel).await
        {
            return ended;
        }
        let have = lock(&self.status).at;
        let request = Request::Map {
            node_key: public_of(&self.state.node_private),
            have,
            endpoints: vec![self.endpoint],
        };
        if channel.send(&request).await.is_err() {
            return Ended::Broken;
        }
        lock(&self.status).connected = true;
        self.stream(channel).await
    }

    async fn register(&mut self, channel: &mut Channel<E>) -> Result<(), Ended> {
        let request = Request::Register {
            preauth_key: self.config.preauth_key.clone(),
            node_key: public_of(&self.state.node_private),
            hostname: self.config.hostname.clone(),
            advertised_routes: self.config.advertise_routes.clone(),
            endpoints: vec![self.endpoint],
        };
        channel.send(&request).await.map_err(|_| Ended::Broken)?;
        let response = self.env.timeout(self.config.silence_max, channel.recv::<Response>()).await;
        match response {
            Ok(Ok(Response::Registered { node })) => {
                let mut state = self.state.clone();
                state.node = Some(node.id);
                // Saved before anything else: a crash after this keeps the registration.
                if save_state(&self.env, &self.config.state_dir, &state).await.is_err() {
                    return Err(Ended::Broken);
                }
                self.state = state;
                lock(&self.status).node = Some(node);
                Ok(())
            }
            Ok(Ok(Response::Error { kind, message })) => {
                lock(&self.status).refused = Some((kind, message));
                Err(Ended::Refused)
            }
            _ => Err(Ended::Broken),
        }
    }

    /// Rotates the node key: the next key is saved before it is sent, the coordinator's answer
    /// makes it the key, and the device restarts under it (its peers come from the map again).
    async fn rotate_key(&mut self, channel: &mut Channel<E>) -> Result<(), Ended> {
        let mut state = self.state.clone();
        if state.next_node_private.is_none() {
            let mut next = [0u8; 32];
            self.env.rng().fill_bytes(&mut next);
            lock(&self.secrets).push(Zeroizing::new(next));
            state.next_node_private = Some(next);
            let saved = save_state(&self.env, &self.config.state_dir, &state).await;
            saved.map_err(|_| Ended::Broken)?;
            self.state = state.clone();
        }
        let next = state.next_node_private.expect("set above");
        let request =
            Request::RotateNodeKey { old: public_of(&state.node_private), new: public_of(&next) };
        channel.send(&request).await.map_err(|_| Ended::Broken)?;
        let response = self.env.timeout(self.config.silence_max, channel.recv::<Response>()).await;
        match response {
            // Simulates the answer lost with the connection after the coordinator committed:
            // the next session sends the same rotation again, which must be taken as done.
            Ok(Ok(Response::Registered { .. }))
                if self.env.buggify("coordinator.agent.rotate_answer_lost") =>
            {
                Err(Ended::Broken)
            }
            Ok(Ok(Response::Registered { node })) if node.node_key == public_of(&next) => {
                state.node_private = next;
                state.next_node_private = None;
                let saved = save_state(&self.env, &self.config.state_dir, &state).await;
                saved.map_err(|_| Ended::Broken)?;
                self.state = state;
                self.rotate_wanted = false;
                {
                    let mut status = lock(&self.status);
                    status.node = Some(node);
                    status.node_key = public_of(&next);
                    status.rotations += 1;
                }
                self.restart_device().await
            }
            Ok(Ok(Response::Error { kind, message })) => Err(self.refused(kind, message)),
            _ => Err(Ended::Broken),
        }
    }

    /// Takes a refusal; a node the coordinator no longer knows (deleted) registers again as a
    /// new node, whose map starts afresh, and a rotation it was in is dropped.
    fn refused(&mut self, kind: ErrorKind, message: String) -> Ended {
        let mut status = lock(&self.status);
        status.refused = Some((kind, message));
        if kind == ErrorKind::NotRegistered {
            self.state.node = None;
            self.state.next_node_private = None;
            self.rotate_wanted = false;
            status.node = None;
            status.map = None;
            status.at = None;
        }
        Ended::Refused
    }

    /// Replaces the device by one under the current node key on the same port.
    async fn restart_device(&mut self) -> Result<(), Ended> {
        let port = self.endpoint.port();
        self.device.shutdown();
        for _ in 0..RESTART_BIND_ATTEMPTS {
            match Device::start(self.env.clone(), device_config(&self.state, port)).await {
                Ok(device) => {
                    self.device = device;
                    return self.apply_map().await;
                }
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    self.env.sleep(Duration::from_millis(10)).await;
                }
                Err(_) => return Err(Ended::Stopped),
            }
        }
        Err(Ended::Stopped)
    }

    async fn stream(&mut self, channel: Channel<E>) -> Ended {
        let (mut sender, mut receiver) = channel.split();
        // Reading a frame is not cancel-safe, so one task reads and hands whole messages over.
        let (mut responses_tx, mut responses) = mpsc::channel(RESPONSE_QUEUE_MAX);
        let reader = self.env.spawn(async move {
            loop {
                let response = receiver.recv::<Response>().await;
                let failed = response.is_err();
                if responses_tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut heard = self.env.now();
        let mut pinged = self.env.now();
        let ended = loop {
            let silence = self.env.sleep_until(heard + self.config.silence_max);
            let ping = self.env.sleep_until(pinged + self.config.keepalive);
            let gossip_wake = self.env.sleep_until(self.gossip_wake());
            futures::select_biased! {
                () = ping.fuse() => {
                    pinged = self.env.now();
                    if sender.send(&Request::Ping).await.is_err() {
                        break Ended::Broken;
                    }
                }
                response = responses.next() => {
                    let Some(Ok(response)) = response else { break Ended::Broken };
                    heard = self.env.now();
                    if let Err(ended) = self.on_response(response).await {
                        break ended;
                    }
                }
                () = silence.fuse() => break Ended::Broken,
                _ = self.rotate.next() => {
                    self.rotate_wanted = true;
                    break Ended::Rotate;
                }
                packet = self.outbound.next() => match packet {
                    Some(packet) => { let _ = self.device.send(packet).await; }
                    None => break Ended::Stopped,
                },
                received = self.device.recv().fuse() => {
                    if let Some(received) = received { self.deliver(received).await; }
                }
                () = gossip_wake.fuse() => self.gossip_tick().await,
            }
        };
        reader.abort();
        ended
    }

    async fn on_response(&mut self, response: Response) -> Result<(), Ended> {
        match response {
            Response::FullMap { at, policy_version, map } => {
                {
                    let mut status = lock(&self.status);
                    status.full_maps += 1;
                    status.at = Some(at);
                    status.policy_version = policy_version;
                    status.map = Some(map);
                }
                self.apply_map().await
            }
            Response::Delta { epoch, policy_version, delta } => {
                let applied = {
                    let mut status = lock(&self.status);
                    let Some(map) = status.map.as_mut() else { return Err(Ended::Broken) };
                    if delta.from_version == delta.to_version && delta.is_empty() {
                        return Ok(()); // a keepalive
                    }
                    let applied = map.apply(&delta).is_ok();
                    let node = map.self_node.id;
                    if applied {
                        status.deltas += 1;
                        status.at = Some(MapVersion { node, epoch, version: delta.to_version });
                        status.policy_version = policy_version;
                    } else {
                        // The next connection asks for a full map.
                        status.map = None;
                        status.at = None;
                    }
                    applied
                };
                if !applied {
                    return Err(Ended::Broken);
                }
                self.apply_map().await
            }
            Response::Error { kind, message } => Err(self.refused(kind, message)),
            Response::Registered { .. } => Err(Ended::Broken),
        }
    }

    /// Makes the device's peers and the filter those of the map held now.
    async fn apply_map(&mut self) -> Result<(), Ended> {
        let (peers, filter) = {
            let status = lock(&self.status);
            let Some(map) = status.map.as_ref() else { return Ok(()) };
            (device_peers(map), CompiledFilter::from_rules(&map.filter).ok())
        };
        self.filter = filter;
        let keys: Vec<Key> = peers.iter().map(|peer| Key(peer.public_key)).collect();
        if self.device.set_peers(peers).await.is_err() {
            return Err(Ended::Stopped);
        }
        let drops = self.device.stats().drops;
        {
            let mut status = lock(&self.status);
            status.device_peers = keys;
            status.device_drops = drops;
        }
        let map = lock(&self.status).map.clone();
        if let Some(map) = map {
            self.gossip_step(|gossip, now, rng| gossip.on_map(now, rng, &map)).await;
        }
        let status = lock(&self.status).clone();
        if let Some(observer) = &self.config.observer {
            observer(&status);
        }
        Ok(())
    }

    /// When the gossip node next wants a tick (a second away at most, and without gossip).
    fn gossip_wake(&self) -> Instant {
        let cap = self.env.now() + Duration::from_secs(1);
        self.gossip.as_ref().and_then(TunnelGossip::deadline).map_or(cap, |due| due.min(cap))
    }

    async fn gossip_tick(&mut self) {
        self.gossip_step(|gossip, now, rng| gossip.tick(now, rng)).await;
    }

    /// Steps the gossip node (if any) and sends the packets it asks for into the tunnel.
    async fn gossip_step(
        &mut self,
        step: impl FnOnce(&mut TunnelGossip, Now, &mut E::Rng) -> Vec<Vec<u8>>,
    ) {
        let Some(gossip) = self.gossip.as_mut() else { return };
        let mut rng = self.env.rng();
        let packets = step(gossip, now_of(&self.env), &mut rng);
        if cfg!(debug_assertions) {
            gossip.check_invariants();
        }
        let gossip_status = gossip.status();
        let drops = self.device.stats().drops;
        {
            let mut status = lock(&self.status);
            status.gossip = gossip_status;
            status.device_drops = drops;
        }
        for packet in packets {
            // A lost gossip packet is the network's business: SWIM and anti-entropy retry.
            let _ = self.device.send(packet).await;
        }
    }

    async fn deliver(&mut self, received: wireguard::Received) {
        let info = packet_info(&received.packet);
        if let (Some(gossip), Some(info)) = (self.gossip.as_ref(), info)
            && gossip.is_gossip(info.protocol, info.port)
        {
            // The agent's own traffic: not subject to the filter (see `tunnel_gossip`).
            if let Some((port, payload)) = udp_payload(&received.packet) {
                let from = SocketAddr::new(info.source, port);
                self.gossip_step(|gossip, now, rng| gossip.on_datagram(now, rng, from, payload))
                    .await;
            }
            return;
        }
        let allowed = match (&self.filter, info) {
            (Some(filter), Some(info)) => {
                filter.allows(info.source, info.destination, info.protocol, info.port)
            }
            _ => false,
        };
        let mut status = lock(&self.status);
        if !allowed {
            status.filtered += 1;
            return;
        }
        status.delivered += 1;
        let policy_version = status.policy_version;
        drop(status);
        let arrived = Arrived { peer: Key(received.peer), packet: received.packet, policy_version };
        let _ = self.inbound.try_send(arrived);
    }
}

/// The device peers a map asks for: each peer's node key, allowed IPs and first endpoint.
pub fn device_peers(map: &NetMap) -> Vec<PeerConfig> {
    let mut peers: Vec<PeerConfig> = map
        .peers
        .iter()
        .map(|peer| PeerConfig {
            public_key: peer.node_key.0,
            preshared_key: None,
            allowed_ips: peer.allowed_ips.clone(),
            endpoint: peer.endpoints.first().copied(),
            persistent_keepalive: None,
        })
        .collect();
    peers.sort_by_key(|peer| peer.public_key);
    peers
}

/// What the filter needs from a packet's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

/// Reads a packet's addresses, protocol and destination port; `None` if it is not IP or its
/// headers are cut short.
pub fn packet_info(packet: &[u8]) -> Option<PacketInfo> {
    let header = wireguard::ip::header(packet)?;
    let (protocol, payload_at) = match header.source {
        IpAddr::V4(_) => (*packet.get(9)?, usize::from(packet.first()? & 0x0f) * 4),
        IpAddr::V6(_) => (*packet.get(6)?, 40),
    };
    let port = if crate::policy::matcher::has_ports(protocol) {
        let bytes = packet.get(payload_at + 2..payload_at + 4)?;
        u16::from_be_bytes([bytes[0], bytes[1]])
    } else {
        0
    };
    Some(PacketInfo { source: header.source, destination: header.destination, protocol, port })
}

/// Builds an IPv4 UDP packet (checksum zero, which UDP over IPv4 allows): for tests and
/// simulations of traffic through the tunnel.
pub fn udp_packet(
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    crate::tunnel_gossip::udp_packet_between(
        SocketAddr::new(IpAddr::V4(source), 40000),
        SocketAddr::new(IpAddr::V4(destination), port),
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_corruption_is_typed() {
        let state = AgentState {
            machine_private: [7; 32],
            node_private: [9; 32],
            node: Some(4),
            boots: 3,
            next_node_private: Some([5; 32]),
        };
        let bytes = encode_state(&state);
        let back = decode_state(&bytes).expect("decodes");
        assert_eq!(back.machine_private, [7; 32]);
        assert_eq!(back.node, Some(4));
        assert_eq!(back.boots, 3);
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(matches!(decode_state(&flipped), Err(AgentError::CorruptState(_))));
        }
        assert!(decode_state(&bytes[..3]).is_err());
    }

    #[test]
    fn a_format_one_state_is_read_with_zero_boots() {
        #[derive(Serialize)]
        struct V1 {
            machine_private: [u8; 32],
            node_private: [u8; 32],
            node: Option<NodeId>,
        }
        let old = V1 { machine_private: [1; 32], node_private: [2; 32], node: Some(9) };
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&postcard::to_stdvec(&old).expect("serializes"));
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let state = decode_state(&bytes).expect("format 1 still reads");
        assert_eq!((state.node, state.boots, state.node_private), (Some(9), 0, [2; 32]));
    }

    #[test]
    fn udp_packets_are_read_back() {
        let source = std::net::Ipv4Addr::new(100, 64, 0, 1);
        let destination = std::net::Ipv4Addr::new(100, 64, 0, 2);
        let packet = udp_packet(source, destination, 443, b"hello");
        let info = packet_info(&packet).expect("an IP packet");
        assert_eq!(info.protocol, 17);
        assert_eq!(info.port, 443);
        assert_eq!(info.source, IpAddr::V4(source));
        assert!(packet_info(&packet[..10]).is_none());
    }
}
