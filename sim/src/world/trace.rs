//! The trace: every scheduling decision and I/O event of a world, as fixed-shape records.
//!
//! Each record is folded into a running 64-bit hash, the run's determinism fingerprint: two runs
//! of the same seed must end with the same hash. Records are also emitted as `tracing` events
//! (target `sim`, tagged with node and simulated time), passed to the world's `TraceSink` if it
//! has one (a trace file written as the run goes, or a hash log compared at checkpoints), and,
//! when `SimConfig::record_trace` is set, kept in memory (small worlds and tests only: a large
//! world makes tens of millions of records).
//!
//! Records carry numbers, never formatted strings, so hashing costs a few multiplications and
//! a disabled `tracing` subscriber costs one atomic load per record.

use std::fmt;

use crate::time::Instant;

/// What a trace record describes. The two payload words `a` and `b` mean what each kind says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum TraceKind {
    /// A task was polled. a = task slot, b = task generation.
    Poll = 1,
    /// A task was spawned. a = task slot, b = task generation.
    Spawn,
    /// A timer fired. a = timer slot.
    TimerFire,
    /// A datagram was sent. a = datagram id, b = length.
    UdpSend,
    /// A datagram was dropped by the link (loss). a = datagram id.
    UdpLoss,
    /// A datagram was dropped by a partition or unknown target. a = datagram id.
    UdpCut,
    /// A datagram was duplicated on the link. a = datagram id.
    UdpDuplicate,
    /// A datagram reached its socket's queue. a = datagram id, b = length.
    UdpDeliver,
    /// A datagram was dropped at the receiver (no socket, full queue). a = datagram id.
    UdpDiscard,
    /// A stream connection was opened. a = connection id.
    StreamConnect,
    /// A connection was accepted. a = connection id.
    StreamAccept,
    /// A connection was refused or timed out. a = connection id, b = 0 refused, 1 timed out.
    StreamFail,
    /// Stream bytes were sent. a = connection id, b = length.
    StreamSend,
    /// Stream bytes arrived. a = connection id, b = length.
    StreamDeliver,
    /// A connection end saw a FIN. a = connection id.
    StreamFin,
    /// A connection broke (reset or timeout). a = connection id, b = 0 reset, 1 timed out.
    StreamBreak,
    /// A disk read. a = file id, b = length.
    DiskRead,
    /// A disk write. a = file id, b = length.
    DiskWrite,
    /// A file sync. a = file id.
    DiskSync,
    /// A directory operation (open, rename, remove, list, sync_dir). a = operation code.
    DiskMeta,
    /// An injected disk fault. a = 0 read EIO, 1 write EIO, 2 sync EIO, 3 read corruption,
    /// 4 ENOSPC, 5 misdirected write; b = file id.
    DiskFault,
    /// At a crash, an unsynced write's fate. a = file id, b = 0 kept, 1 dropped, 2 torn.
    DiskCrashWrite,
    /// A node crashed. a = new generation.
    NodeCrash,
    /// A node restarted. a = generation.
    NodeRestart,
    /// A node was paused.
    NodePause,
    /// A node was resumed.
    NodeResume,
    /// A partition, clog or heal changed the network. a = operation code, b = other node.
    NetChange,
    /// A buggify site fired. a = site hash.
    Buggify,
    /// Random bytes were drawn from a node's stream. a = byte count.
    Random,
    /// A wall-clock change. a = offset nanoseconds (as u64), b = drift ppm (as u64).
    Clock,
}

/// One trace record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Simulated time.
    pub time: Instant,
    /// Node index, or `u32::MAX` for the world itself.
    pub node: u32,
    /// What happened.
    pub kind: TraceKind,
    /// First payload word.
    pub a: u64,
    /// Second payload word.
    pub b: u64,
}

impl fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.time)?;
        match self.node {
            WORLD_NODE => f.write_str("world")?,
            node => write!(f, "n{node}")?,
        }
        write!(f, " {:?} a={} b={}", self.kind, self.a, self.b)
    }
}

impl TraceRecord {
    /// `hash` with this record folded in. The trace hash is this fold over every record, from a
    /// start derived from the seed; a caller may fold records from any start of its own.
    pub fn fold_into(&self, hash: u64) -> u64 {
        let mut hash = mix(hash, self.time.as_nanos());
        hash = mix(hash, (u64::from(self.node) << 8) | self.kind as u64);
        hash = mix(hash, self.a);
        mix(hash, self.b)
    }
}

/// Receives every trace record as it happens (`World::set_trace_sink`), so that a trace can be
/// written or compared without being kept. It runs under the world's lock: it must not call
/// back into the world.
pub type TraceSink = Box<dyn FnMut(&TraceRecord) + Send>;

/// The node index used for records that belong to no node.
pub const WORLD_NODE: u32 = u32::MAX;

const HASH_MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// The running trace of one world.
pub(crate) struct Trace {
    // Invariant: `hash` folds every record ever passed to `record`, in order.
    hash: u64,
    count: u64,
    records: Option<Vec<TraceRecord>>,
    sink: Option<TraceSink>,
}

impl Trace {
    pub(crate) fn new(seed: u64, keep_records: bool) -> Trace {
        Trace {
            hash: mix(0xcbf2_9ce4_8422_2325, seed),
            count: 0,
            records: keep_records.then(Vec::new),
            sink: None,
        }
    }

    pub(crate) fn record(&mut self, record: TraceRecord) {
        self.hash = record.fold_into(self.hash);
        self.count += 1;
        tracing::trace!(
            target: "sim",
            t = record.time.as_nanos(),
            node = record.node,
            kind = ?record.kind,
            a = record.a,
            b = record.b,
        );
        if let Some(sink) = &mut self.sink {
            sink(&record);
        }
        if let Some(records) = &mut self.records {
            records.push(record);
        }
    }

    /// Sends every later record to `sink` (replacing an earlier sink).
    pub(crate) fn set_sink(&mut self, sink: TraceSink) {
        self.sink = Some(sink);
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn records(&self) -> Option<&[TraceRecord]> {
        self.records.as_deref()
    }
}

fn mix(hash: u64, word: u64) -> u64 {
    (hash.rotate_left(5) ^ word).wrapping_mul(HASH_MULTIPLIER)
}

/// A stable 64-bit hash of a string (FNV-1a), for site names and digests.
pub fn hash_str(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64: derives independent, well-spread seeds from one seed.
pub fn splitmix64(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_order() {
        let record = |kind, a| TraceRecord { time: Instant::ZERO, node: 0, kind, a, b: 0 };
        let hash_of = |records: &[TraceRecord]| {
            let mut trace = Trace::new(7, false);
            records.iter().for_each(|r| trace.record(*r));
            trace.hash()
        };
        let one = record(TraceKind::Poll, 1);
        let two = record(TraceKind::Poll, 2);
        assert_ne!(hash_of(&[one, two]), hash_of(&[two, one]));
        assert_ne!(hash_of(&[one]), hash_of(&[record(TraceKind::Spawn, 1)]));
        assert_eq!(hash_of(&[one, two]), hash_of(&[one, two]));
    }

    #[test]
    fn the_sink_sees_every_record_in_order_and_folds_agree() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut trace = Trace::new(7, false);
        let sink_seen = std::sync::Arc::clone(&seen);
        trace.set_sink(Box::new(move |record| sink_seen.lock().expect("lock").push(*record)));
        let records: Vec<TraceRecord> = (0..5)
            .map(|a| TraceRecord { time: Instant::ZERO, node: 1, kind: TraceKind::Poll, a, b: 0 })
            .collect();
        records.iter().for_each(|record| trace.record(*record));
        assert_eq!(*seen.lock().expect("lock"), records);
        let start = Trace::new(7, false).hash();
        let folded = records.iter().fold(start, |hash, record| record.fold_into(hash));
        assert_eq!(folded, trace.hash());
        assert_eq!(trace.count(), 5);
        assert!(trace.records().is_none());
    }
}
