//! Clients of the test register: ABD reads and writes over quorums, and the workload loop that
//! records every operation's call and return into the shared history.
//!
//! A write asks a majority for the highest tag, then stores the value under a higher tag at a
//! majority. A read asks a majority for the highest tagged value, writes it back to a majority,
//! then returns it (the write-back is what makes reads linearizable). Each quorum round resends
//! to silent replicas every `RESEND_INTERVAL` and gives up after `OP_TIMEOUT`; a write that gave
//! up has an unknown outcome and is recorded so.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invariants::linearizability::{Input, Operation, Output};
use rand::Rng;
use sim::world::SimEnv;
use sim::{Env, Instant, UdpSocket};

use super::protocol::{DATAGRAM_BYTES_MAX, Message, PlantedBug, Tag, decode, encode};

/// How long one operation may take before its outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a quorum round resends to replicas that have not answered.
const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// The resend interval when BUGGIFY `register.client.resend_early` fires.
const RESEND_EARLY_INTERVAL: Duration = Duration::from_millis(1);

/// The shared, append-only record of every operation of a run.
pub type History = Arc<Mutex<Vec<Operation>>>;

/// What one client does.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client id (also the writer id of its tags).
    pub id: u64,
    /// Every replica.
    pub replicas: Vec<SocketAddr>,
    /// The keys it reads and writes.
    pub keys: Vec<String>,
    /// Share of reads, in percent.
    pub read_percent: u32,
    /// Largest pause between operations.
    pub think_ms_max: u64,
    /// When it stops issuing operations.
    pub stop_at: Instant,
    /// A planted bug, if any.
    pub bug: Option<PlantedBug>,
}

/// One client's connection to the replicas.
pub struct Client {
    env: SimEnv,
    socket: <SimEnv as Env>::UdpSocket,
    config: ClientConfig,
    request: u64,
    // Invariant: above the counter of every tag this client has written under, so two writes
    // of one client never share a tag, even when the first timed out unseen by the quorum.
    counter_floor: u64,
}

impl Client {
    /// Binds the client's socket.
    pub async fn connect(env: SimEnv, config: ClientConfig) -> std::io::Result<Client> {
        let socket = env.bind_udp(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        Ok(Client { env, socket, config, request: 0, counter_floor: 0 })
    }

    fn majority(&self) -> usize {
        self.config.replicas.len() / 2 + 1
    }

    /// Sends `make(request)` to every replica and collects `needed` distinct replies.
    async fn round(
        &mut self,
        needed: usize,
        make: impl Fn(u64) -> Message,
    ) -> Option<Vec<Message>> {
        self.request += 1;
        let request = self.request;
        let payload = encode(&make(request));
        let deadline = self.env.now().saturating_add(OP_TIMEOUT);
        let mut replies: Vec<(SocketAddr, Message)> = Vec::new();
        let mut buffer = [0u8; DATAGRAM_BYTES_MAX];
        while self.env.now() < deadline {
            for replica in &self.config.replicas {
                if !replies.iter().any(|(source, _)| source == replica) {
                    let _ = self.socket.send_to(&payload, *replica).await;
                }
            }
            // Simulates a resend timer firing at the earliest moment (a client under load that
            // resends before any replica could answer): replicas see each request twice.
            let interval = if self.env.buggify("register.client.resend_early") {
                RESEND_EARLY_INTERVAL
            } else {
                RESEND_INTERVAL
            };
            let resend_at = self.env.now().saturating_add(interval).min(deadline);
            while self.env.now() < resend_at {
                let wait = resend_at.saturating_duration_since(self.env.now());
                let received = self.env.timeout(wait, self.socket.recv_from(&mut buffer)).await;
                let Ok(Ok((length, source))) = received else { break };
                let Some(reply) = decode(&buffer[..length]) else { continue };
                let matches = match reply {
                    Message::QueryReply { request: r, .. } | Message::StoreAck { request: r } => {
                        r == request
                    }
                    _ => false,
                };
                if matches && !replies.iter().any(|(seen, _)| *seen == source) {
                    replies.push((source, reply));
                }
                if replies.len() >= needed {
                    return Some(replies.into_iter().map(|(_, reply)| reply).collect());
                }
            }
        }
        None
    }

    async fn query(&mut self, key: &str) -> Option<(Tag, Option<u64>)> {
        let replies = self
            .round(self.majority(), |request| Message::Query { request, key: key.to_string() })
            .await?;
        replies
            .into_iter()
            .filter_map(|reply| match reply {
                Message::QueryReply { tag, value, .. } => Some((tag, value)),
                _ => None,
            })
            .max_by_key(|(tag, _)| *tag)
    }

    async fn store(
        &mut self,
        key: &str,
        tag: Tag,
        value: Option<u64>,
        needed: usize,
    ) -> Option<()> {
        let key = key.to_string();
        self.round(needed, |request| Message::Store { request, key: key.clone(), tag, value })
            .await
            .map(|_| ())
    }

    /// ABD write; `None` if it timed out (outcome unknown).
    pub async fn write(&mut self, key: &str, value: u64) -> Option<()> {
        let (tag, _) = self.query(key).await?;
        let counter = tag.counter.max(self.counter_floor) + 1;
        self.counter_floor = counter;
        let tag = Tag { counter, writer: self.config.id };
        let needed = match self.config.bug {
            Some(PlantedBug::AckBeforeReplicate) => 1,
            _ => self.majority(),
        };
        self.store(key, tag, Some(value), needed).await
    }

    /// ABD read with write-back; `None` if it timed out.
    pub async fn read(&mut self, key: &str) -> Option<Option<u64>> {
        let (tag, value) = self.query(key).await?;
        self.store(key, tag, value, self.majority()).await?;
        Some(value)
    }
}

/// A client node's main task: operations until `stop_at`, each recorded in `history`.
pub async fn client_main(env: SimEnv, config: ClientConfig, history: History) {
    let mut rng = env.rng();
    let Ok(mut client) = Client::connect(env.clone(), config.clone()).await else { return };
    let mut write_count = 0u64;
    while env.now() < config.stop_at {
        let think = rng.random_range(0..=config.think_ms_max);
        env.sleep(Duration::from_millis(think)).await;
        let key = config.keys[rng.random_range(0..config.keys.len())].clone();
        let input = if rng.random_range(0..100) < config.read_percent {
            Input::Read
        } else {
            write_count += 1;
            Input::Write((config.id << 32) | write_count)
        };
        let index = begin(&history, &env, config.id, &key, input.clone());
        let output = match input {
            Input::Read => client.read(&key).await.map(Output::Read),
            Input::Write(value) => client.write(&key, value).await.map(|()| Output::WriteOk),
        };
        if let Some(output) = output {
            complete(&history, index, env.now(), output);
        }
    }
}

/// Records the call of an operation (as unknown until it completes); returns its index.
pub fn begin(history: &History, env: &SimEnv, client: u64, key: &str, input: Input) -> usize {
    let mut history = history.lock().expect("history lock");
    history.push(Operation {
        client,
        key: key.to_string(),
        call_nanos: env.now().as_nanos(),
        return_nanos: None,
        input,
        output: Output::Unknown,
    });
    history.len() - 1
}

/// Records the return of operation `index`.
pub fn complete(history: &History, index: usize, now: Instant, output: Output) {
    let mut history = history.lock().expect("history lock");
    let operation = &mut history[index];
    assert!(operation.return_nanos.is_none(), "an operation returns once");
    operation.return_nanos = Some(now.as_nanos());
    operation.output = output;
}
