//! Disk operations of simulated nodes: the `disk::Disk` model plus modelled latency and the
//! injected-fault layer (EIO on read, write and sync; bit flips on read; misdirected writes;
//! ENOSPC from the model).
//!
//! Each fault is a separate draw from the world's disk rng with its own probability, so each can
//! be switched on alone (`DiskFaults`), and every fault is a trace record. Reads and writes take
//! effect when issued and then pay their latency; a sync pays its latency first and makes data
//! durable only when it completes, so a crash during a sync leaves the data unsynced, and an
//! acknowledged sync is always durable.

use std::io;
use std::time::Duration;

use rand::Rng;

use super::disk::{CrashFate, FileId, SECTOR_SIZE_BYTES};
use super::{State, TraceKind};

/// Which fault a disk operation is exposed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpClass {
    Read,
    Write,
    Sync,
    Meta,
}

const FAULT_READ_ERROR: u64 = 0;
const FAULT_WRITE_ERROR: u64 = 1;
const FAULT_SYNC_ERROR: u64 = 2;
const FAULT_READ_CORRUPTION: u64 = 3;
const FAULT_STORAGE_FULL: u64 = 4;
const FAULT_MISDIRECTED_WRITE: u64 = 5;
/// A misdirected write lands at most this many sectors from its target.
const MISDIRECTION_SECTORS_MAX: u64 = 8;

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected I/O error (EIO) on {what}"))
}

/// The latency of one operation moving `bytes` bytes.
pub(crate) fn latency(state: &mut State, node: u32, class: OpClass, bytes: usize) -> Duration {
    let config = &state.nodes[node as usize].disk_config;
    let base = if class == OpClass::Sync { config.sync_latency } else { config.op_latency };
    let jitter_nanos = u64::try_from(config.op_jitter.as_nanos()).unwrap_or(u64::MAX);
    let rate = config.throughput_bytes_per_sec.max(1);
    let transfer = Duration::from_nanos((bytes as u64).saturating_mul(1_000_000_000) / rate);
    let jitter = if jitter_nanos == 0 { 0 } else { state.rng_disk.random_range(0..=jitter_nanos) };
    base + transfer + Duration::from_nanos(jitter)
}

/// Draws whether an injected fault of `class` hits this operation; records it if so.
pub(crate) fn inject(
    state: &mut State,
    node: u32,
    class: OpClass,
    file: FileId,
) -> Option<io::Error> {
    let faults = &state.nodes[node as usize].disk_config.faults;
    let (probability, code, what) = match class {
        OpClass::Read => (faults.read_error, FAULT_READ_ERROR, "read"),
        OpClass::Write => (faults.write_error, FAULT_WRITE_ERROR, "write"),
        OpClass::Sync => (faults.sync_error, FAULT_SYNC_ERROR, "sync"),
        OpClass::Meta => return None,
    };
    if probability <= 0.0 || !state.rng_disk.random_bool(probability.min(1.0)) {
        return None;
    }
    state.stats.disk_fault_count += 1;
    state.record(node, TraceKind::DiskFault, code, file);
    Some(injected(what))
}

/// Flips one bit of `data` with the configured probability (a transient read corruption).
pub(crate) fn corrupt(state: &mut State, node: u32, file: FileId, data: &mut [u8]) {
    let probability = state.nodes[node as usize].disk_config.faults.read_corruption;
    if data.is_empty() || probability <= 0.0 || !state.rng_disk.random_bool(probability.min(1.0)) {
        return;
    }
    let bit = state.rng_disk.random_range(0..data.len() * 8);
    data[bit / 8] ^= 1 << (bit % 8);
    state.stats.disk_fault_count += 1;
    state.record(node, TraceKind::DiskFault, FAULT_READ_CORRUPTION, file);
}

/// Where a write aimed at `offset` lands: usually there; with the configured probability 1 to
/// `MISDIRECTION_SECTORS_MAX` sectors before or after it (never before the file's start).
pub(crate) fn write_target(state: &mut State, node: u32, file: FileId, offset: u64) -> u64 {
    let probability = state.nodes[node as usize].disk_config.faults.misdirected_write;
    if probability <= 0.0 || !state.rng_disk.random_bool(probability.min(1.0)) {
        return offset;
    }
    let distance = state.rng_disk.random_range(1..=MISDIRECTION_SECTORS_MAX) * SECTOR_SIZE_BYTES;
    let target = if state.rng_disk.random_bool(0.5) && offset >= distance {
        offset - distance
    } else {
        offset + distance
    };
    state.stats.disk_fault_count += 1;
    state.record(node, TraceKind::DiskFault, FAULT_MISDIRECTED_WRITE, file);
    target
}

/// Records a write that the model refused for lack of space.
pub(crate) fn note_result<T>(state: &mut State, node: u32, file: FileId, result: &io::Result<T>) {
    if let Err(error) = result
        && error.kind() == io::ErrorKind::StorageFull
    {
        state.stats.disk_fault_count += 1;
        state.record(node, TraceKind::DiskFault, FAULT_STORAGE_FULL, file);
    }
}

/// Applies crash semantics to `node`'s disk and records each unsynced write's fate.
pub(crate) fn crash_disk(state: &mut State, node: u32) {
    let config = state.nodes[node as usize].disk_config.crash.clone();
    let records = {
        let State { nodes, rng_disk, .. } = &mut *state;
        nodes[node as usize].disk.crash(rng_disk, &config)
    };
    for record in records {
        let fate = match record.fate {
            CrashFate::Kept => 0,
            CrashFate::Dropped => 1,
            CrashFate::Torn { .. } => 2,
        };
        state.record(node, TraceKind::DiskCrashWrite, record.file, fate);
    }
}
