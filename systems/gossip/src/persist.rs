//! Durable node state on the `Env` disk: a snapshot of the store and membership, plus
//! write-ahead logs of local writes made since, so a node restarts with its data, resumes its
//! HLC, raises its incarnation past anything it ever used, and finds the cluster through the
//! members it last knew.
//!
//! Files under the node's `dir`:
//!
//! ```text
//! snapshot          | magic "GSNP" | version u8 | body_len u32 LE | checksum u128 LE | body |
//!                   body = postcard(Snapshot)
//! log-<seq:016x>    records: | body_len u32 LE | checksum u64 LE | body = postcard((key, Value)) |
//! ```
//!
//! Checksums are the low bits of `hash::hash_bytes(body)`. A snapshot is written to
//! `snapshot.tmp`, synced, renamed over `snapshot` and the directory synced. Before a snapshot is
//! taken the node switches to a new WAL file; once the snapshot is durable, WAL files older than
//! the one named in it are removed. Replay stops at the first torn or corrupt record (a crash
//! mid-append); merges are idempotent, so replaying a write the snapshot holds is harmless.
//! A WAL record holds the key's whole value after the local update (state, not operation), so
//! replay needs no ordering.
//!
//! Format history: version 1 stored only LWW registers and named its logs `wal-<seq>`. A
//! directory holding a version-1 snapshot or log is refused with `PersistError::Version(1)`
//! rather than misread.

use std::io;

use serde::{Deserialize, Serialize};
use sim::{Env, File, OpenOptions};

use crate::hash::hash_bytes;
use crate::hlc::Timestamp;
use crate::store::{Store, Value};
use crate::swim::Member;

const SNAPSHOT_MAGIC: [u8; 4] = *b"GSNP";
/// The snapshot format version.
pub const SNAPSHOT_VERSION: u8 = 2;
const SNAPSHOT_HEADER_BYTES: usize = 4 + 1 + 4 + 16;
const _: () = assert!(SNAPSHOT_HEADER_BYTES == 25);
const RECORD_HEADER_BYTES: usize = 4 + 8;
/// The largest snapshot body read back (1 GiB).
pub const SNAPSHOT_BODY_BYTES_MAX: u32 = 1 << 30;
/// The largest WAL record body.
pub const RECORD_BODY_BYTES_MAX: u32 = 1 << 17;
/// WAL files replayed at most.
pub const WAL_FILES_MAX: usize = 1024;

/// Everything a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The highest incarnation this node has used.
    pub incarnation: u32,
    /// The HLC's last timestamp.
    pub clock: Timestamp,
    /// The membership view.
    pub members: Vec<Member>,
    /// Every entry, tombstones included.
    pub entries: Vec<(Vec<u8>, Value)>,
    /// WAL files with a lower sequence are folded into this snapshot.
    pub wal_sequence: u64,
}

/// A snapshot of a live node, borrowing its store: it encodes byte for byte as the `Snapshot`
/// holding the same state, without cloning every value first.
#[derive(Serialize)]
pub struct SnapshotView<'a> {
    /// The highest incarnation this node has used.
    pub incarnation: u32,
    /// The HLC's last timestamp.
    pub clock: Timestamp,
    /// The membership view.
    pub members: Vec<Member>,
    /// Every entry of this store, tombstones included.
    pub entries: StoreEntries<'a>,
    /// WAL files with a lower sequence are folded into this snapshot.
    pub wal_sequence: u64,
}

/// A store's entries, serialized as `Snapshot::entries` is.
pub struct StoreEntries<'a>(pub &'a Store);

impl Serialize for StoreEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // `(&[u8], &Value)` serializes as `(Vec<u8>, Value)` does; the store's iterator knows
        // its length, as a length-prefixed format needs.
        serializer.collect_seq(self.0.entries())
    }
}

/// Why durable state could not be loaded or saved.
#[derive(Debug)]
#[non_exhaustive]
pub enum PersistError {
    /// The disk failed.
    Io(io::Error),
    /// The snapshot is damaged (bad magic, checksum, length or body).
    Corrupt {
        /// What was wrong.
        reason: &'static str,
    },
    /// The snapshot was written by an unknown format version.
    Version(u8),
}

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PersistError::Io(error) => write!(f, "disk: {error}"),
            PersistError::Corrupt { reason } => write!(f, "corrupt snapshot: {reason}"),
            PersistError::Version(version) => write!(f, "unknown snapshot version {version}"),
        }
    }
}

impl std::error::Error for PersistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PersistError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for PersistError {
    fn from(error: io::Error) -> PersistError {
        PersistError::Io(error)
    }
}

fn corrupt(reason: &'static str) -> PersistError {
    PersistError::Corrupt { reason }
}

/// The path of WAL file `sequence` in `dir`.
pub fn wal_path(dir: &str, sequence: u64) -> String {
    format!("{dir}/{WAL_PREFIX}{sequence:016x}")
}

/// The name prefix of WAL files.
const WAL_PREFIX: &str = "log-";
/// The name prefix of version-1 WAL files.
const WAL_PREFIX_V1: &str = "wal-";

/// Encodes a snapshot file from a `Snapshot` or a `SnapshotView`.
pub fn encode_snapshot<S: Serialize>(snapshot: &S) -> Vec<u8> {
    let body = postcard::to_stdvec(snapshot).expect("serializable");
    let length = u32::try_from(body.len()).expect("snapshot under 4 GiB");
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.push(SNAPSHOT_VERSION);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&hash_bytes(&body).0.to_le_bytes());
    bytes.extend_from_slice(&body);
    assert_eq!(bytes.len(), SNAPSHOT_HEADER_BYTES + body.len());
    bytes
}

/// Decodes a snapshot file.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, PersistError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(corrupt("short header"));
    }
    let (header, body) = bytes.split_at(SNAPSHOT_HEADER_BYTES);
    if header[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if header[4] != SNAPSHOT_VERSION {
        return Err(PersistError::Version(header[4]));
    }
    let length = u32::from_le_bytes(header[5..9].try_into().expect("4 bytes"));
    let checksum = u128::from_le_bytes(header[9..25].try_into().expect("16 bytes"));
    if length > SNAPSHOT_BODY_BYTES_MAX || body.len() != length as usize {
        return Err(corrupt("bad length"));
    }
    if hash_bytes(body).0 != checksum {
        return Err(corrupt("bad checksum"));
    }
    postcard::from_bytes(body).map_err(|_| corrupt("bad body"))
}

/// Encodes one WAL record.
pub fn encode_record(key: &[u8], value: &Value) -> Vec<u8> {
    let body = postcard::to_stdvec(&(key, value)).expect("serializable");
    let length = u32::try_from(body.len()).expect("record under 4 GiB");
    assert!(length <= RECORD_BODY_BYTES_MAX);
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&(hash_bytes(&body).0 as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Decodes the valid prefix of a WAL file: its records and the length of that prefix.
pub fn decode_records(bytes: &[u8]) -> (Vec<(Vec<u8>, Value)>, usize) {
    let mut records = Vec::new();
    let mut offset = 0;
    while bytes.len() - offset >= RECORD_HEADER_BYTES {
        let header = &bytes[offset..offset + RECORD_HEADER_BYTES];
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let checksum = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        let start = offset + RECORD_HEADER_BYTES;
        if length > RECORD_BODY_BYTES_MAX || bytes.len() - start < length as usize {
            break;
        }
        let body = &bytes[start..start + length as usize];
        if hash_bytes(body).0 as u64 != checksum {
            break;
        }
        let Ok(record) = postcard::from_bytes::<(Vec<u8>, Value)>(body) else { break };
        records.push(record);
        offset = start + length as usize;
    }
    (records, offset)
}

async fn read_all<E: Env>(env: &E, path: &str) -> io::Result<Option<Vec<u8>>> {
    let file = match env.open(path, OpenOptions::EXISTING).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.len().await?;
    let length = usize::try_from(length).map_err(|_| io::Error::other("file too large"))?;
    let mut bytes = vec![0u8; length];
    file.read_exact_at(0, &mut bytes).await?;
    Ok(Some(bytes))
}

/// Loads the snapshot (if any) and the WAL records written after it. Torn WAL tails are cut
/// off so later appends follow valid records.
pub async fn load<E: Env>(
    env: &E,
    dir: &str,
) -> Result<(Snapshot, Vec<(Vec<u8>, Value)>), PersistError> {
    env.create_dir_all(dir).await?;
    let snapshot = match read_all(env, &format!("{dir}/snapshot")).await? {
        Some(bytes) => decode_snapshot(&bytes)?,
        None => Snapshot::default(),
    };
    let mut records = Vec::new();
    let names = env.list(dir).await?;
    if names.iter().any(|name| name.starts_with(WAL_PREFIX_V1)) {
        return Err(PersistError::Version(1));
    }
    let mut sequences: Vec<u64> = names
        .iter()
        .filter_map(|name| name.strip_prefix(WAL_PREFIX))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .filter(|sequence| *sequence >= snapshot.wal_sequence)
        .collect();
    sequences.sort_unstable();
    for sequence in sequences.into_iter().take(WAL_FILES_MAX) {
        let path = wal_path(dir, sequence);
        let Some(bytes) = read_all(env, &path).await? else { continue };
        let (mut found, valid) = decode_records(&bytes);
        if valid < bytes.len() {
            let file = env.open(&path, OpenOptions::EXISTING).await?;
            file.set_len(valid as u64).await?;
            file.sync().await?;
        }
        records.append(&mut found);
    }
    Ok((snapshot, records))
}

/// Writes `snapshot` durably, then removes the WAL files it folds in.
pub async fn save<E: Env>(env: &E, dir: &str, snapshot: &Snapshot) -> io::Result<()> {
    save_encoded(env, dir, &encode_snapshot(snapshot), snapshot.wal_sequence).await
}

/// `save` of a snapshot already encoded by `encode_snapshot` (its WAL sequence given).
pub async fn save_encoded<E: Env>(
    env: &E,
    dir: &str,
    encoded: &[u8],
    wal_sequence: u64,
) -> io::Result<()> {
    let temporary = format!("{dir}/snapshot.tmp");
    let file = env.open(&temporary, OpenOptions::TRUNCATE).await?;
    file.write_at(0, encoded).await?;
    file.sync().await?;
    env.rename(&temporary, &format!("{dir}/snapshot")).await?;
    env.sync_dir(dir).await?;
    for name in env.list(dir).await? {
        let Some(hex) = name.strip_prefix(WAL_PREFIX) else { continue };
        let old = u64::from_str_radix(hex, 16).is_ok_and(|seq| seq < wal_sequence);
        if old {
            env.remove(&format!("{dir}/{name}")).await?;
        }
    }
    env.sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crdt::ReplicaId;
    use crate::store::Update;

    fn value(text: &str) -> Value {
        Value::register(Timestamp { wall_ms: 5, logical: 1 }, ReplicaId(1), Some(text.into()))
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let snapshot = Snapshot {
            incarnation: 3,
            entries: vec![(b"k".to_vec(), value("v"))],
            wal_sequence: 2,
            ..Snapshot::default()
        };
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(decode_snapshot(&bytes).expect("decodes"), snapshot);
        for index in [0, 4, 6, 12, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x40;
            assert!(decode_snapshot(&damaged).is_err(), "byte {index}");
        }
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    }

    /// The view a live node encodes from must be byte-identical to the owned snapshot that
    /// `load` decodes.
    #[test]
    fn a_snapshot_view_encodes_as_the_owned_snapshot() {
        let mut store = Store::new(ReplicaId(7));
        store.apply(10, b"r", Update::Register(Some(b"v".to_vec()))).expect("register");
        store.apply(11, b"gone", Update::Register(None)).expect("tombstone");
        store.apply(12, b"c", Update::Add(-4)).expect("counter");
        store.apply(13, b"s", Update::Insert(b"x".to_vec())).expect("set");
        store.apply(14, b"s", Update::Remove(b"x".to_vec())).expect("remove");
        let members = Vec::new();
        let view = SnapshotView {
            incarnation: 4,
            clock: store.clock(),
            members: members.clone(),
            entries: StoreEntries(&store),
            wal_sequence: 9,
        };
        let owned = Snapshot {
            incarnation: 4,
            clock: store.clock(),
            members,
            entries: store.entries().map(|(key, value)| (key.to_vec(), value.clone())).collect(),
            wal_sequence: 9,
        };
        assert_eq!(owned.entries.len(), 4);
        let bytes = encode_snapshot(&view);
        assert_eq!(bytes, encode_snapshot(&owned));
        assert_eq!(decode_snapshot(&bytes).expect("decodes"), owned);
    }

    #[test]
    fn wal_replay_stops_at_a_torn_tail() {
        let mut bytes = encode_record(b"a", &value("1"));
        bytes.extend(encode_record(b"b", &value("2")));
        let whole = bytes.len();
        bytes.extend(&encode_record(b"c", &value("3"))[..7]);
        let (records, valid) = decode_records(&bytes);
        assert_eq!(records.len(), 2);
        assert_eq!(valid, whole);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_snapshot(&bytes);
            let (_, valid) = decode_records(&bytes);
            prop_assert!(valid <= bytes.len());
        }
    }
}
