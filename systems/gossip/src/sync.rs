//! Anti-entropy pull sessions over datagrams: a requester fetches a peer's MST root, then the
//! nodes of the subtrees that differ (as fragments, reassembled and checked against their
//! digests), then the values of the entries it lacks (a value too large for one datagram comes
//! as fragments, reassembled by key), and merges them. Requests are re-sent
//! after `SyncConfig::retry_interval` without progress; a session gives up after
//! `ATTEMPTS_MAX` silent intervals (the next session starts over). The responder is stateless.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sim::Instant;

use crate::hash::{Digest, hash_bytes};
use crate::mst::{DiffError, MstNode, PullSession};
use crate::store::{Store, Value};
use crate::wire::{DATAGRAM_SIZE_BYTES_MAX, FRAGMENT_SIZE_BYTES, Message};

/// Node digests in one request.
pub const DIGESTS_PER_REQUEST_MAX: usize = 32;
/// Nodes requested and not yet received, at most.
pub const NODES_IN_FLIGHT_MAX: usize = 64;
/// Keys in one entries request.
pub const KEYS_PER_REQUEST_MAX: usize = 8;
/// Keys requested and not yet received, at most.
pub const KEYS_IN_FLIGHT_MAX: usize = 64;
/// Fragments of one node, at most.
pub const FRAGMENTS_MAX: usize = 256;
/// Silent retry intervals before a session gives up.
pub const ATTEMPTS_MAX: u32 = 5;

/// Why a session ended early.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer stopped answering.
    TimedOut,
    /// The peer sent nodes that do not form the tree it named.
    Diff(DiffError),
    /// A fragment that does not fit the node it claims to belong to.
    BadFragment(Digest),
    /// A value fragment that does not fit the value it claims to belong to.
    BadValueFragment,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::TimedOut => write!(f, "peer stopped answering"),
            SyncError::Diff(error) => write!(f, "diff: {error}"),
            SyncError::BadFragment(digest) => write!(f, "bad fragment of node {digest:?}"),
            SyncError::BadValueFragment => write!(f, "bad value fragment"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<DiffError> for SyncError {
    fn from(error: DiffError) -> SyncError {
        SyncError::Diff(error)
    }
}

/// What one session moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Tree nodes received.
    pub node_count: u64,
    /// Entries inside those nodes.
    pub node_entry_count: u64,
    /// Values fetched.
    pub value_count: u64,
    /// Values that changed the local store.
    pub merged_count: u64,
    /// Requests sent (first sends and retries).
    pub request_count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Root,
    Nodes,
    Entries,
    Done,
}

/// One fragment's place and bytes.
struct Part {
    index: u16,
    count: u16,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Reassembly {
    parts: Vec<Option<Vec<u8>>>,
}

/// The requesting side of one pull session.
#[derive(Clone, Debug)]
pub struct Requester {
    session: u64,
    phase: Phase,
    retry_interval: Duration,
    retry_at: Instant,
    attempt_count: u32,
    pull: PullSession,
    fragments: BTreeMap<Digest, Reassembly>,
    // Keyed by (key, digest of the whole encoding); at most one digest per key.
    value_fragments: BTreeMap<(Vec<u8>, Digest), Reassembly>,
    keys_wanted: Vec<Vec<u8>>,
    keys_in_flight: BTreeSet<Vec<u8>>,
    merged: Vec<Vec<u8>>,
    stats: SessionStats,
}

impl Requester {
    /// Starts session `session`; the first request goes to `out`.
    pub fn start(
        now: Instant,
        session: u64,
        retry_interval: Duration,
        out: &mut Vec<Message>,
    ) -> Requester {
        let mut requester = Requester {
            session,
            phase: Phase::Root,
            retry_interval,
            retry_at: now + retry_interval,
            attempt_count: 0,
            pull: PullSession::default(),
            fragments: BTreeMap::new(),
            value_fragments: BTreeMap::new(),
            keys_wanted: Vec::new(),
            keys_in_flight: BTreeSet::new(),
            merged: Vec::new(),
            stats: SessionStats::default(),
        };
        requester.send(Message::RootRequest { session }, out);
        requester
    }

    /// The session id.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether the session finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What the session moved so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Keys whose register changed since the last call.
    pub fn take_merged(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.merged)
    }

    /// When `on_tick` next has work.
    pub fn deadline(&self) -> Instant {
        if self.is_done() { Instant::MAX } else { self.retry_at }
    }

    fn send(&mut self, message: Message, out: &mut Vec<Message>) {
        self.stats.request_count += 1;
        out.push(message);
    }

    /// Re-sends what is outstanding if the peer has been silent for a retry interval.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<(), SyncError> {
        if self.is_done() || now < self.retry_at {
            return Ok(());
        }
        self.attempt_count += 1;
        if self.attempt_count > ATTEMPTS_MAX {
            return Err(SyncError::TimedOut);
        }
        self.retry_at = now + self.retry_interval;
        let session = self.session;
        match self.phase {
            Phase::Root => self.send(Message::RootRequest { session }, out),
            Phase::Nodes => {
                let digests: Vec<Digest> = self.pull.in_flight().copied().collect();
                for chunk in digests.chunks(DIGESTS_PER_REQUEST_MAX) {
                    self.send(Message::NodesRequest { session, digests: chunk.to_vec() }, out);
                }
            }
            Phase::Entries => {
                let keys: Vec<Vec<u8>> = self.keys_in_flight.iter().cloned().collect();
                for chunk in keys.chunks(KEYS_PER_REQUEST_MAX) {
                    self.send(Message::EntriesRequest { session, keys: chunk.to_vec() }, out);
                }
            }
            Phase::Done => {}
        }
        Ok(())
    }

    /// Feeds a response of this session (others are the caller's to drop).
    pub fn on_message(
        &mut self,
        now: Instant,
        wall_ms: u64,
        store: &mut Store,
        message: Message,
        out: &mut Vec<Message>,
    ) -> Result<(), SyncError> {
        self.attempt_count = 0;
        self.retry_at = now + self.retry_interval;
        match message {
            Message::RootResponse { root, .. } if self.phase == Phase::Root => {
                self.pull = PullSession::new(store.mst(), root);
                self.phase = Phase::Nodes;
            }
            Message::NodePart { digest, index, count, bytes, .. } if self.phase == Phase::Nodes => {
                if let Some(node) = self.on_fragment(digest, index, count, bytes)? {
                    self.pull.on_node(store.mst(), &node)?;
                    self.stats.node_count += 1;
                    self.stats.node_entry_count += node.entries.len() as u64;
                }
            }
            Message::NodeMissing { digest, .. } if self.phase == Phase::Nodes => {
                self.pull.on_unavailable(digest);
                self.fragments.remove(&digest);
            }
            Message::EntriesResponse { entries, absent, .. } if self.phase == Phase::Entries => {
                for key in absent {
                    self.keys_in_flight.remove(&key);
                }
                for (key, value) in entries {
                    self.on_value(wall_ms, store, key, &value);
                }
            }
            Message::ValuePart { key, digest, index, count, bytes, .. }
                if self.phase == Phase::Entries =>
            {
                let part = Part { index, count, bytes };
                if let Some(value) = self.on_value_fragment(&key, digest, part)? {
                    self.on_value(wall_ms, store, key, &value);
                }
            }
            _ => return Ok(()),
        }
        self.advance(out);
        Ok(())
    }

    fn on_value(&mut self, wall_ms: u64, store: &mut Store, key: Vec<u8>, value: &Value) {
        if !self.keys_in_flight.remove(&key) {
            return;
        }
        self.value_fragments.retain(|(held, _), _| *held != key);
        self.stats.value_count += 1;
        // A value the store refuses (clock, size) is skipped, not fatal.
        if store.merge(wall_ms, &key, value).unwrap_or(false) {
            self.stats.merged_count += 1;
            self.merged.push(key);
        }
    }

    fn on_value_fragment(
        &mut self,
        key: &[u8],
        digest: Digest,
        part: Part,
    ) -> Result<Option<Value>, SyncError> {
        if !self.keys_in_flight.contains(key) {
            return Ok(None);
        }
        // The value changed between two answers: start over on the newer encoding.
        self.value_fragments.retain(|(held, version), _| held != key || *version == digest);
        let id = (key.to_vec(), digest);
        let Part { index, count, bytes } = part;
        let reassembled = reassemble(&mut self.value_fragments, id, index, count, bytes);
        let Some(encoded) = reassembled.map_err(|()| SyncError::BadValueFragment)? else {
            return Ok(None);
        };
        if hash_bytes(&encoded) != digest {
            return Err(SyncError::BadValueFragment);
        }
        postcard::from_bytes(&encoded).map(Some).map_err(|_| SyncError::BadValueFragment)
    }

    fn on_fragment(
        &mut self,
        digest: Digest,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
    ) -> Result<Option<MstNode>, SyncError> {
        if !self.pull.is_in_flight(digest) {
            return Ok(None);
        }
        let reassembled = reassemble(&mut self.fragments, digest, index, count, bytes);
        let Some(encoded) = reassembled.map_err(|()| SyncError::BadFragment(digest))? else {
            return Ok(None);
        };
        let node: MstNode =
            postcard::from_bytes(&encoded).map_err(|_| SyncError::BadFragment(digest))?;
        let actual = node.digest();
        if actual != digest {
            return Err(DiffError::DigestMismatch { expected: digest, actual }.into());
        }
        Ok(Some(node))
    }

    /// Sends the next requests, moving through the phases.
    fn advance(&mut self, out: &mut Vec<Message>) {
        let session = self.session;
        if self.phase == Phase::Nodes {
            let in_flight = self.pull.in_flight().count();
            let room = NODES_IN_FLIGHT_MAX.saturating_sub(in_flight);
            let digests = self.pull.next_request(room);
            for chunk in digests.chunks(DIGESTS_PER_REQUEST_MAX) {
                self.send(Message::NodesRequest { session, digests: chunk.to_vec() }, out);
            }
            if self.pull.is_done() {
                let keys: BTreeSet<Vec<u8>> =
                    self.pull.missing().iter().map(|entry| entry.key.clone()).collect();
                self.keys_wanted = keys.into_iter().collect();
                self.phase = Phase::Entries;
            }
        }
        if self.phase == Phase::Entries {
            let room = KEYS_IN_FLIGHT_MAX.saturating_sub(self.keys_in_flight.len());
            let keep = self.keys_wanted.len().saturating_sub(room);
            let keys = self.keys_wanted.split_off(keep);
            self.keys_in_flight.extend(keys.iter().cloned());
            for chunk in keys.chunks(KEYS_PER_REQUEST_MAX) {
                self.send(Message::EntriesRequest { session, keys: chunk.to_vec() }, out);
            }
            if self.keys_wanted.is_empty() && self.keys_in_flight.is_empty() {
                self.phase = Phase::Done;
            }
        }
    }
}

/// Adds one fragment to the reassembly under `id`; returns the whole encoding once every
/// fragment is in, or `Err` for a fragment that contradicts its index or the others' count.
fn reassemble<K: Ord + Clone>(
    reassemblies: &mut BTreeMap<K, Reassembly>,
    id: K,
    index: u16,
    count: u16,
    bytes: Vec<u8>,
) -> Result<Option<Vec<u8>>, ()> {
    let (index, count) = (usize::from(index), usize::from(count));
    if count == 0 || count > FRAGMENTS_MAX || index >= count {
        return Err(());
    }
    let parts = &mut reassemblies
        .entry(id.clone())
        .or_insert_with(|| Reassembly { parts: vec![None; count] })
        .parts;
    if parts.len() != count {
        return Err(());
    }
    parts[index] = Some(bytes);
    if parts.iter().any(Option::is_none) {
        return Ok(None);
    }
    let reassembly = reassemblies.remove(&id).expect("present");
    Ok(Some(reassembly.parts.into_iter().flatten().flatten().collect()))
}

/// Answers one anti-entropy request from `store` (stateless); other messages are ignored.
pub fn respond(store: &mut Store, message: &Message, out: &mut Vec<Message>) {
    match message {
        Message::RootRequest { session } => {
            out.push(Message::RootResponse { session: *session, root: store.root() });
        }
        Message::NodesRequest { session, digests } => {
            for digest in digests.iter().take(DIGESTS_PER_REQUEST_MAX) {
                respond_node(store, *session, *digest, out);
            }
        }
        Message::EntriesRequest { session, keys } => respond_entries(store, *session, keys, out),
        _ => {}
    }
}

fn respond_node(store: &mut Store, session: u64, digest: Digest, out: &mut Vec<Message>) {
    let encoded = store.mst().node(digest).and_then(|node| postcard::to_stdvec(node).ok());
    let Some(encoded) = encoded else {
        out.push(Message::NodeMissing { session, digest });
        return;
    };
    let count = encoded.len().div_ceil(FRAGMENT_SIZE_BYTES);
    if count > FRAGMENTS_MAX {
        out.push(Message::NodeMissing { session, digest });
        return;
    }
    for (index, chunk) in encoded.chunks(FRAGMENT_SIZE_BYTES).enumerate() {
        out.push(Message::NodePart {
            session,
            digest,
            index: index as u16,
            count: count as u16,
            bytes: chunk.to_vec(),
        });
    }
}

fn respond_entries(store: &Store, session: u64, keys: &[Vec<u8>], out: &mut Vec<Message>) {
    // Budget: the datagram less the version byte, session and framing slack.
    let budget = DATAGRAM_SIZE_BYTES_MAX - 64;
    let mut entries = Vec::new();
    let mut absent = Vec::new();
    let mut size = 0;
    for key in keys.iter().take(KEYS_PER_REQUEST_MAX) {
        let Some(value) = store.value(key) else {
            absent.push(key.clone());
            size += key.len() + 2;
            continue;
        };
        let entry_size = postcard::experimental::serialized_size(&(key, value)).unwrap_or(budget);
        if entry_size > budget {
            respond_value_parts(session, key, value, out);
            continue;
        }
        if size + entry_size > budget && !entries.is_empty() {
            let batch = std::mem::take(&mut entries);
            out.push(Message::EntriesResponse { session, entries: batch, absent: Vec::new() });
            size = 0;
        }
        size += entry_size;
        entries.push((key.clone(), value.clone()));
    }
    out.push(Message::EntriesResponse { session, entries, absent });
}

/// Sends a value too large for an `EntriesResponse` as fragments (or as absent if it would
/// take more than `FRAGMENTS_MAX`, which the store's size limit rules out).
fn respond_value_parts(session: u64, key: &[u8], value: &Value, out: &mut Vec<Message>) {
    let encoded = postcard::to_stdvec(value).expect("serializable");
    let digest = hash_bytes(&encoded);
    let count = encoded.len().div_ceil(FRAGMENT_SIZE_BYTES);
    if count > FRAGMENTS_MAX {
        let absent = vec![key.to_vec()];
        out.push(Message::EntriesResponse { session, entries: Vec::new(), absent });
        return;
    }
    for (index, chunk) in encoded.chunks(FRAGMENT_SIZE_BYTES).enumerate() {
        out.push(Message::ValuePart {
            session,
            key: key.to_vec(),
            digest,
            index: index as u16,
            count: count as u16,
            bytes: chunk.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::ReplicaId;

    /// Runs a session of `local` pulling `remote`, dropping every `drop_every`-th message.
    fn pull(local: &mut Store, remote: &mut Store, drop_every: usize) -> SessionStats {
        let mut now = Instant::ZERO;
        let mut out = Vec::new();
        let mut requester = Requester::start(now, 1, Duration::from_millis(100), &mut out);
        let mut sent = 0usize;
        for _ in 0..100_000 {
            if requester.is_done() {
                return requester.stats().clone();
            }
            let mut replies = Vec::new();
            for request in out.drain(..) {
                respond(remote, &request, &mut replies);
            }
            for reply in replies {
                sent += 1;
                if drop_every > 0 && sent.is_multiple_of(drop_every) {
                    continue;
                }
                requester.on_message(now, 0, local, reply, &mut out).expect("honest peer");
            }
            if out.is_empty() {
                now += Duration::from_millis(100);
                requester.on_tick(now, &mut out).expect("peer answers");
            }
        }
        panic!("session did not finish");
    }

    fn filled(replica: u64, keys: std::ops::Range<u32>, tag: &str) -> Store {
        let mut store = Store::new(ReplicaId(replica));
        for key in keys {
            let value = format!("{tag}{key}").into_bytes();
            store.put(0, format!("key{key:05}").as_bytes(), Some(value)).expect("put");
        }
        store
    }

    #[test]
    fn a_pull_copies_exactly_what_is_missing() {
        let mut local = filled(1, 0..2000, "v");
        let mut remote = local.clone();
        let extra = filled(2, 2000..2020, "w");
        for (key, value) in extra.entries() {
            remote.merge(0, key, value).expect("merge");
        }
        // Every 4th reply lost: a round of 9 replies shifts which fragments are lost.
        let stats = pull(&mut local, &mut remote, 4);
        assert_eq!(stats.value_count, 20);
        assert_eq!(stats.merged_count, 20);
        assert_eq!(local.root(), remote.root());
    }

    #[test]
    fn pulls_both_ways_converge_under_message_loss() {
        let mut left = filled(1, 0..500, "a");
        let mut right = filled(2, 300..900, "b");
        pull(&mut left, &mut right, 7);
        pull(&mut right, &mut left, 5);
        assert_eq!(left.root(), right.root());
        assert_eq!(left.len(), 900);
    }

    /// A store of replica 2 whose key `big` holds a set of 40 elements of 205 bytes: larger
    /// than a datagram, so it moves in fragments.
    fn big_set_store() -> Store {
        use crate::store::Update;
        let mut store = Store::new(ReplicaId(2));
        for index in 0..40u32 {
            let element = format!("{index:04}-{}", "e".repeat(200)).into_bytes();
            store.apply(0, b"big", Update::Insert(element)).expect("insert");
        }
        store
    }

    #[test]
    fn a_value_larger_than_a_datagram_moves_in_fragments() {
        use crate::store::Update;
        let mut remote = big_set_store();
        remote.apply(0, b"small", Update::Add(-5)).expect("add");
        let mut local = Store::new(ReplicaId(1));
        // Every 4th reply lost: a round of 9 replies shifts which fragments are lost.
        let stats = pull(&mut local, &mut remote, 4);
        assert_eq!(stats.merged_count, 2);
        assert_eq!(local.value(b"big").and_then(Value::elements).map(|e| e.len()), Some(40));
        assert_eq!(local.value(b"small").and_then(Value::count), Some(-5));
        assert_eq!(local.root(), remote.root());
    }

    #[test]
    fn contradicting_value_fragments_end_the_session() {
        let mut out = Vec::new();
        let retry = Duration::from_millis(100);
        let mut requester = Requester::start(Instant::ZERO, 1, retry, &mut out);
        let mut store = Store::new(ReplicaId(1));
        let mut remote = Store::new(ReplicaId(2));
        remote.put(0, b"k", Some(b"v".to_vec())).expect("put");
        // Answer honestly until the session asks for values.
        while !out.iter().any(|request| matches!(request, Message::EntriesRequest { .. })) {
            let mut replies = Vec::new();
            for request in out.drain(..) {
                respond(&mut remote, &request, &mut replies);
            }
            assert!(!replies.is_empty(), "the session stalled");
            for reply in replies {
                requester.on_message(Instant::ZERO, 0, &mut store, reply, &mut out).expect("ok");
            }
        }
        let mut part = |digest, index, count, byte| {
            let (key, bytes, digest) = (b"k".to_vec(), vec![byte], Digest(digest));
            let message = Message::ValuePart { session: 1, key, digest, index, count, bytes };
            requester.on_message(Instant::ZERO, 0, &mut store, message, &mut Vec::new())
        };
        assert_eq!(part(7, 0, 2, 0), Ok(()));
        // Another encoding's fragment restarts the reassembly rather than joining it.
        assert_eq!(part(8, 1, 2, 0), Ok(()));
        assert_eq!(part(8, 1, 3, 0), Err(SyncError::BadValueFragment), "count contradicts");
    }

    #[test]
    fn fragments_of_two_encodings_never_combine_and_a_forged_digest_is_caught() {
        use crate::store::Update;
        let mut remote = big_set_store();
        let parts = |store: &Store| {
            let mut out = Vec::new();
            respond_value_parts(1, b"big", store.value(b"big").expect("held"), &mut out);
            out
        };
        let old = parts(&remote);
        remote.apply(0, b"big", Update::Insert(b"0000-newer".to_vec())).expect("insert");
        let new = parts(&remote);
        // The old first fragment, then every newer one but the first: nothing completes.
        let mut requester = requester_wanting(b"big");
        let mut store = Store::new(ReplicaId(1));
        for message in std::iter::once(&old[0]).chain(&new[1..]) {
            requester
                .on_message(Instant::ZERO, 0, &mut store, message.clone(), &mut Vec::new())
                .expect("a fragment");
        }
        assert!(store.value(b"big").is_none(), "a spliced value was merged");
        requester
            .on_message(Instant::ZERO, 0, &mut store, new[0].clone(), &mut Vec::new())
            .expect("the last fragment");
        assert_eq!(store.value(b"big"), remote.value(b"big"));
        // A forged digest over honest bytes is refused.
        let mut requester = requester_wanting(b"big");
        let mut store = Store::new(ReplicaId(1));
        let mut last = Ok(());
        for mut message in old {
            if let Message::ValuePart { digest, .. } = &mut message {
                *digest = Digest(1);
            }
            last = requester.on_message(Instant::ZERO, 0, &mut store, message, &mut Vec::new());
        }
        assert_eq!(last, Err(SyncError::BadValueFragment));
    }

    /// A requester in its entries phase with `key` in flight.
    fn requester_wanting(key: &[u8]) -> Requester {
        let retry = Duration::from_millis(100);
        let mut requester = Requester::start(Instant::ZERO, 1, retry, &mut Vec::new());
        requester.phase = Phase::Entries;
        requester.keys_in_flight.insert(key.to_vec());
        requester
    }
}
