//! A bounded log of client operations for the picture of a run (`replay --html`), kept by
//! scenarios whose operations are not single-key register operations (the register scenarios
//! record `invariants::linearizability::Operation`s, which their checker needs anyway).
//!
//! Each operation is a lane (the client, writer or task that issued it), a description, the
//! keys it touched, its call and return times and its outcome. The log is only a picture: no
//! checker reads it. Recording reads the simulated clock and nothing else (no randomness, no
//! trace events, no sleeps), so it cannot change a run. Sweeps keep every outcome's history in
//! memory, so the log keeps the first `OPS_RECORDED_MAX` operations and counts the rest.

use serde::{Deserialize, Serialize};

/// Most operations one log records; later ones are only counted.
pub const OPS_RECORDED_MAX: usize = 20_000;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpOutcome {
    /// It returned success.
    Ok,
    /// It returned an error and certainly took no effect.
    Failed,
    /// It returned an error that leaves its effect open, or never returned (a crash).
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Who issued it: one lane of the timeline (`writer 0`).
    pub lane: String,
    /// What it was, in a few words (`put key-003, delete key-007 (sync)`).
    pub what: String,
    /// The keys it touched, as a violation names them.
    pub keys: Vec<String>,
    /// When it was called, in nanoseconds of simulated time.
    pub call_nanos: u64,
    /// When it returned; `None` if it never did.
    pub return_nanos: Option<u64>,
    /// How it ended (`Unknown` until it returns).
    pub outcome: OpOutcome,
}

/// The first `OPS_RECORDED_MAX` operations of a run and the count of the rest.
#[derive(Clone, Debug, Default)]
pub struct OpLog {
    ops: Vec<OpRecord>,
    not_recorded: u64,
}

/// An operation in flight: where it sits in the log, if it was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct OpSlot(Option<usize>);

impl OpLog {
    /// Records the call of an operation, outcome unknown until [`OpLog::returned`].
    pub fn call(&mut self, lane: &str, what: String, keys: Vec<String>, now_nanos: u64) -> OpSlot {
        if self.ops.len() >= OPS_RECORDED_MAX {
            self.not_recorded += 1;
            return OpSlot(None);
        }
        let (lane, return_nanos, outcome) = (lane.to_string(), None, OpOutcome::Unknown);
        self.ops.push(OpRecord { lane, what, keys, call_nanos: now_nanos, return_nanos, outcome });
        assert!(self.ops.len() <= OPS_RECORDED_MAX);
        OpSlot(Some(self.ops.len() - 1))
    }

    /// Records the return of the operation in `slot`.
    pub fn returned(&mut self, slot: OpSlot, now_nanos: u64, outcome: OpOutcome) {
        let Some(index) = slot.0 else { return };
        let op = &mut self.ops[index];
        assert!(op.return_nanos.is_none(), "an operation returns once");
        assert!(op.call_nanos <= now_nanos, "an operation returns after its call");
        op.return_nanos = Some(now_nanos);
        op.outcome = outcome;
    }

    /// The operations recorded, in the order their calls were recorded.
    pub fn ops(&self) -> &[OpRecord] {
        &self.ops
    }

    /// The log as a history's fields: `ops` (what `replay --html` draws) and
    /// `ops_not_recorded`.
    pub fn to_json(&self) -> (serde_json::Value, serde_json::Value) {
        let ops = serde_json::to_value(&self.ops).unwrap_or_default();
        (ops, self.not_recorded.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_operations_and_counts_the_rest() {
        let mut log = OpLog::default();
        let first = log.call("writer 0", "get key-001".to_string(), Vec::new(), 5);
        for at in 0..OPS_RECORDED_MAX as u64 + 2 {
            let slot = log.call("writer 1", "flush".to_string(), Vec::new(), 10 + at);
            log.returned(slot, 11 + at, OpOutcome::Failed);
        }
        log.returned(first, 7, OpOutcome::Ok);
        assert_eq!(log.ops().len(), OPS_RECORDED_MAX);
        assert_eq!(log.ops()[0].return_nanos, Some(7));
        assert_eq!(log.ops()[0].outcome, OpOutcome::Ok);
        assert_eq!(log.ops()[1].outcome, OpOutcome::Failed);
        let (ops, not_recorded) = log.to_json();
        assert_eq!(ops.as_array().map(Vec::len), Some(OPS_RECORDED_MAX));
        assert_eq!(not_recorded, 3);
        assert_eq!(ops[0]["outcome"], "ok");
    }
}
