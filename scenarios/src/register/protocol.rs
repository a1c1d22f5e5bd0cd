//! Wire format and replica of the test register (ABD, multi-writer).
//!
//! The register exists to test the harness before the real systems arrive: it is small enough
//! to be obviously right, and each planted bug makes it obviously wrong in one place. It is the
//! classic ABD quorum register (Attiya, Bar-Noy, Dolev), multi-writer: values carry a tag
//! `(counter, writer)`; a replica keeps the highest-tagged value per key and persists it before
//! acknowledging.
//!
//! Wire format: one datagram is a version byte followed by a postcard-encoded `Message`.
//! Replica log: records of `| payload_len u32 LE | checksum u64 LE | payload |`, where the
//! payload is a version byte and a postcard `Record`, and the checksum is FNV-1a 64 of the
//! payload. Recovery keeps the longest valid prefix and truncates the rest: this test register
//! treats any bad record as a torn tail (the scenario never corrupts its disk; real stores in
//! `systems/` must tell the two apart).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim::world::SimEnv;
use sim::{Env, File, OpenOptions, UdpSocket};

use crate::coverage::NodeState;

/// The UDP port replicas listen on.
pub const REPLICA_PORT: u16 = 7000;
/// Version byte of datagrams and log records.
pub const FORMAT_VERSION: u8 = 1;
/// Largest datagram the register sends or accepts.
pub const DATAGRAM_BYTES_MAX: usize = 512;
/// Attempts to read the log at boot before the replica gives up (disk read errors).
const RECOVER_ATTEMPTS_MAX: u32 = 600;
const RECOVER_RETRY_DELAY: Duration = Duration::from_millis(100);
const LOG_PATH: &str = "register.log";
const RECORD_HEADER_BYTES: usize = 12;
/// How long BUGGIFY `register.replica.sync_slow` stalls a sync: longer than a client's resend
/// interval, shorter than its operation timeout.
const SYNC_STALL: Duration = Duration::from_millis(300);

/// A known bug, planted on purpose to prove the harness catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Writers return after one replica stores the value instead of a majority.
    AckBeforeReplicate,
    /// Replicas acknowledge stores without syncing them to disk.
    SkipFsync,
}

/// The version of a value: higher tags win; the writer id breaks ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tag {
    /// Logical counter.
    pub counter: u64,
    /// The writing client.
    pub writer: u64,
}

/// A datagram between clients and replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client asks for a key's tagged value.
    Query {
        /// Request id, echoed.
        request: u64,
        /// The key.
        key: String,
    },
    /// Replica answers a query.
    QueryReply {
        /// The request id.
        request: u64,
        /// The replica's tag for the key.
        tag: Tag,
        /// The replica's value (None: never written).
        value: Option<u64>,
    },
    /// Client asks the replica to store a tagged value (kept only if newer).
    Store {
        /// Request id, echoed.
        request: u64,
        /// The key.
        key: String,
        /// The tag.
        tag: Tag,
        /// The value.
        value: Option<u64>,
    },
    /// Replica has durably stored the value (or a newer one).
    StoreAck {
        /// The request id.
        request: u64,
    },
}

/// One persisted update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    key: String,
    tag: Tag,
    value: Option<u64>,
}

/// Encodes `message` with its version byte.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    bytes.extend(postcard::to_stdvec(message).expect("messages always encode"));
    assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
    bytes
}

/// Decodes a datagram; `None` for a wrong version or malformed bytes.
pub fn decode(bytes: &[u8]) -> Option<Message> {
    let (&version, rest) = bytes.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    postcard::from_bytes(rest).ok()
}

/// Any address of a node, on the replica port.
pub fn replica_addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, REPLICA_PORT)
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn encode_record(record: &Record) -> Vec<u8> {
    let mut payload = vec![FORMAT_VERSION];
    payload.extend(postcard::to_stdvec(record).expect("records always encode"));
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    bytes.extend(u32::try_from(payload.len()).expect("small record").to_le_bytes());
    bytes.extend(checksum(&payload).to_le_bytes());
    bytes.extend(payload);
    bytes
}

/// Parses the longest valid prefix of a log: the records and the prefix length in bytes.
fn parse_log(bytes: &[u8]) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while let Some(header) = bytes.get(offset..offset + RECORD_HEADER_BYTES) {
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let expected = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        let start = offset + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start.saturating_add(length)) else { break };
        let record = match payload.split_first() {
            Some((&FORMAT_VERSION, rest)) if checksum(payload) == expected => {
                postcard::from_bytes::<Record>(rest).ok()
            }
            _ => None,
        };
        let Some(record) = record else { break };
        records.push(record);
        offset = start + length;
    }
    (records, offset as u64)
}

/// What a replica reports doing, for the coverage of a run (`NodeState`): reading its log at
/// boot, waiting for a datagram, appending a record, syncing it.
pub const REPLICA_STATES: &[&str] = &["recovering", "idle", "appending", "syncing"];

/// A replica's state: the highest-tagged value of every key, and its log.
struct Replica {
    entries: BTreeMap<String, (Tag, Option<u64>)>,
    log: <SimEnv as Env>::File,
    bug: Option<PlantedBug>,
    state: NodeState,
}

impl Replica {
    async fn recover(
        env: &SimEnv,
        bug: Option<PlantedBug>,
        state: &NodeState,
    ) -> io::Result<Replica> {
        let log = env.open(LOG_PATH, OpenOptions::CREATE).await?;
        env.sync_dir("").await?;
        let length = log.len().await?;
        let mut bytes = vec![0; usize::try_from(length).expect("log fits in memory")];
        log.read_exact_at(0, &mut bytes).await?;
        let (records, valid_length) = parse_log(&bytes);
        if valid_length < length {
            // A torn tail: cut it off, so that new records are not appended after garbage.
            log.set_len(valid_length).await?;
            log.sync().await?;
        }
        let mut entries = BTreeMap::new();
        for record in records {
            // Keep the highest tag: a record whose sync failed may sit before a lower one.
            let entry = entries.entry(record.key).or_insert((Tag::default(), None));
            if record.tag > entry.0 {
                *entry = (record.tag, record.value);
            }
        }
        Ok(Replica { entries, log, bug, state: state.clone() })
    }

    async fn store(
        &mut self,
        env: &SimEnv,
        key: String,
        tag: Tag,
        value: Option<u64>,
    ) -> io::Result<()> {
        let current = self.entries.get(&key).map(|entry| entry.0).unwrap_or_default();
        if tag <= current {
            return Ok(());
        }
        let record = Record { key, tag, value };
        self.state.set("appending");
        self.log.append(&encode_record(&record)).await?;
        if self.bug != Some(PlantedBug::SkipFsync) {
            self.state.set("syncing");
            // Simulates a sync that takes very long (a disk busy with another tenant's writes):
            // the client resends meanwhile, and this replica's answer comes late or not at all.
            if env.buggify("register.replica.sync_slow") {
                env.sleep(SYNC_STALL).await;
            }
            self.log.sync().await?;
        }
        self.entries.insert(record.key, (tag, value));
        Ok(())
    }

    async fn handle(&mut self, env: &SimEnv, message: Message) -> Option<Message> {
        match message {
            Message::Query { request, key } => {
                let (tag, value) = self.entries.get(&key).copied().unwrap_or_default();
                Some(Message::QueryReply { request, tag, value })
            }
            Message::Store { request, key, tag, value } => {
                let stored = self.store(env, key, tag, value).await;
                self.state.set("idle");
                match stored {
                    Ok(()) => Some(Message::StoreAck { request }),
                    // Not durable, so not acknowledged: the client retries or gives up.
                    Err(error) => {
                        tracing::debug!(target: "register", %error, "store failed");
                        None
                    }
                }
            }
            Message::QueryReply { .. } | Message::StoreAck { .. } => None,
        }
    }
}

/// A replica node's main task: recover from the log, then serve queries and stores, telling
/// `state` what it does.
pub async fn replica_main(env: SimEnv, bug: Option<PlantedBug>, state: NodeState) {
    state.boot("recovering");
    let mut replica = None;
    for _ in 0..RECOVER_ATTEMPTS_MAX {
        match Replica::recover(&env, bug, &state).await {
            Ok(recovered) => {
                replica = Some(recovered);
                break;
            }
            Err(error) => {
                tracing::debug!(target: "register", %error, "recovery failed, retrying");
                env.sleep(RECOVER_RETRY_DELAY).await;
            }
        }
    }
    let Some(mut replica) = replica else { return };
    state.set("idle");
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), REPLICA_PORT);
    let Ok(socket) = env.bind_udp(any).await else { return };
    let mut buffer = [0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((length, source)) = socket.recv_from(&mut buffer).await else { continue };
        let Some(message) = decode(&buffer[..length]) else { continue };
        let Some(reply) = replica.handle(&env, message).await else { continue };
        // Simulates a reply lost after the work was done (the store is durable, the ack never
        // leaves the host): the client must retry, and the retry must find the store in place.
        if env.buggify("register.replica.reply_lost") {
            continue;
        }
        // A lost reply is a lost datagram: the client retries.
        let _ = socket.send_to(&encode(&reply), source).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let message = Message::Store {
            request: 7,
            key: "k1".into(),
            tag: Tag { counter: 3, writer: 2 },
            value: Some(9),
        };
        assert_eq!(decode(&encode(&message)), Some(message));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[FORMAT_VERSION + 1, 0]), None);
        assert_eq!(decode(&[FORMAT_VERSION, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn log_parsing_stops_at_a_torn_or_corrupt_record() {
        let first = Record { key: "a".into(), tag: Tag { counter: 1, writer: 1 }, value: Some(1) };
        let second = Record { key: "b".into(), tag: Tag { counter: 2, writer: 1 }, value: None };
        let mut log = encode_record(&first);
        let first_length = log.len() as u64;
        log.extend(encode_record(&second));
        assert_eq!(parse_log(&log), (vec![first.clone(), second], log.len() as u64));
        assert_eq!(parse_log(&log[..log.len() - 1]), (vec![first.clone()], first_length));
        let last = log.len() - 1;
        log[last] ^= 1;
        assert_eq!(parse_log(&log), (vec![first], first_length));
        assert_eq!(parse_log(&[0xff; 40]).1, 0);
    }
}
