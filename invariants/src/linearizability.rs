//! Linearizability of a key-value register history, with a readable counterexample.
//!
//! A history is a set of operations (reads and writes of a key), each with the time its client
//! called it and the time the reply came back. It is linearizable iff each operation can be
//! given one instant inside its `[call, return]` interval at which it took effect atomically,
//! such that every read returns the value of the latest write before it (initially absent).
//!
//! # Algorithm
//!
//! The checker is the Wing-Gong search with Lowe's just-in-time linearization and memoization,
//! as in Porcupine (Athalye) and Knossos (Kingsbury):
//!
//! 1. **Per-key partitioning.** A register per key is independent of every other key, and
//!    linearizability is local (Herlihy-Wing): the history is linearizable iff each key's
//!    sub-history is. Keys are checked one at a time, in `BTreeMap` order, which turns one
//!    exponential search into many small ones.
//! 2. **Preparation.** Reads whose outcome is unknown constrain nothing and are dropped. Writes
//!    whose outcome is unknown may take effect at any time after their call, or never: their
//!    return is placed at +infinity. If no read of the key returned their value they are
//!    dropped (a write nobody observed can always be taken as never having happened). If one
//!    did and no other write carries that value, the write must have taken effect before the
//!    first such read returned, and that becomes its return time. Workloads that write unique
//!    values so get unknown writes almost for free.
//! 3. **Events.** Every operation becomes a call event and a return event, sorted by time into
//!    a doubly linked list; at equal times calls come first, so operations that merely touch
//!    count as concurrent (the conservative choice).
//! 4. **Search.** Walk the list from its head. At a call event, try to linearize that
//!    operation now: if the register model accepts it (a read must return the current value; a
//!    write sets it) and the pair (set of linearized operations, register value) has not been
//!    seen before, push it on a stack, unlink its call and return events from the list, and
//!    restart from the head. At a return event, the operation it closes should have been
//!    linearized already but was not: pop the last linearized operation, relink its events,
//!    restore the value and continue just past its call event. The history is linearizable iff
//!    the list empties; it is not iff a return event is met with an empty stack.
//! 5. **Memoization.** The cache of (bitset of linearized operations, value) pairs prunes every
//!    branch that reaches a configuration already explored. It is an open-addressing table
//!    with a fixed hash and is never iterated, so runs are deterministic; it stores each set
//!    as its count of leading full words plus the rest, so entries stay as small as the window
//!    of concurrent operations.
//! 6. **Register-specific pruning**, applied when a configuration is reached for the first
//!    time. The candidates are the call events before the first return event. (a) If a
//!    candidate read returned the current value, it goes next and no other branch is tried:
//!    moving a read that fits to the front of any valid order keeps the order valid. (b) If a
//!    candidate read returned a value the register does not hold and no write left carries,
//!    the configuration is a dead end. If the intervals alone doom the read (no write carries
//!    its value, or some write was called after every write of it returned and itself returned
//!    before the read was called), the whole history is, and the search stops at once instead
//!    of exhausting every order before it (what refuting a stale read would otherwise cost).
//!    (c) The operation whose return event comes first must go before any other return; if it
//!    is a read of `v` and no candidate writes `v`, it is a dead end; otherwise that write (or,
//!    if it is a write, itself) is tried first, then the walk of step 4 tries every candidate.
//!    (a) and (b) are sound reductions and (c) only orders branches; a proptest against a
//!    brute-force oracle checks the verdicts. Together they keep histories with ten or twenty
//!    concurrent clients on one key cheap where the plain search needs millions of steps.
//! 7. **Bound.** Each loop iteration is a step; a key that needs more than `steps_max` steps is
//!    reported as [`CheckResult::Unknown`] rather than searched forever.
//!
//! The counterexample is the longest linearizable prefix the search found (the deepest stack
//! at any dead end, or the stack when a doomed read stopped it) and, at that point, the
//! operations that were candidates to go next, each with why it could not: a read that
//! returned another value than the register held, or an operation that fit but after which
//! every order of the rest failed.

use std::collections::BTreeMap;

use crate::{Subject, Violation};

mod report;
mod search;
#[cfg(test)]
mod tests;

/// The invariant's name in a [`Violation`].
pub const NAME: &str = "linearizability";

/// What a client asked the register to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// Read the key's value.
    Read,
    /// Set the key's value.
    Write(u64),
}

/// What the register answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Output {
    /// read returned (None = key absent)
    Read(Option<u64>),
    /// write acknowledged
    WriteOk,
    /// outcome unknown (timeout, crash): the op may or may not have taken effect, at any time
    /// after `call`
    Unknown,
}

/// One operation of a client on one key: what it asked, what came back, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    /// The client that issued it (only used in messages).
    pub client: u64,
    /// The key it read or wrote.
    pub key: String,
    /// When the client issued it, in nanoseconds.
    pub call_nanos: u64,
    /// None when Output::Unknown (never returned)
    pub return_nanos: Option<u64>,
    /// What was asked.
    pub input: Input,
    /// What came back.
    pub output: Output,
}

/// Search effort bound per key; exceeding it gives CheckResult::Unknown for that key rather
/// than hanging.
pub const STEPS_MAX_DEFAULT: u64 = 1_000_000;

/// The verdict on a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's history is linearizable.
    Ok,
    /// No key is known to be violated, but the search for `key` gave up after `steps` steps.
    Unknown {
        /// The first key whose search hit the bound.
        key: String,
        /// The steps spent on it.
        steps: u64,
    },
    /// Some key's history is not linearizable; the message holds the counterexample.
    Violation(Violation),
}

/// Initial value of every key is None (absent). Reads with Output::Unknown are dropped (no
/// constraint); writes with Output::Unknown have return time +infinity. Keys are checked
/// independently (BTreeMap order). The first violated key is reported; a violation wins over
/// an earlier key whose search hit `steps_max`.
///
/// # Panics
///
/// On a malformed history (a programmer error in the recorder): a read answered `WriteOk`, a
/// write answered `Read`, a known output without `return_nanos`, or a return before its call.
pub fn check_register_history(history: &[Operation], steps_max: u64) -> CheckResult {
    let mut keys: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in history {
        assert_well_formed(operation);
        keys.entry(operation.key.as_str()).or_default().push(operation);
    }
    let mut unknown = None;
    for (key, operations) in keys {
        let operations = prepare(&operations);
        match search::search(&operations, steps_max) {
            search::Outcome::Linearizable => {}
            search::Outcome::Exhausted { steps } => {
                unknown.get_or_insert(CheckResult::Unknown { key: key.to_string(), steps });
            }
            search::Outcome::Stuck(deepest) => {
                let message = report::counterexample(key, &operations, &deepest);
                let subject = Subject::Key(key.to_string());
                return CheckResult::Violation(Violation::new(NAME, message).concerning(subject));
            }
        }
    }
    unknown.unwrap_or(CheckResult::Ok)
}

/// Asserts that `operation` is a history entry a correct recorder can produce.
fn assert_well_formed(operation: &Operation) {
    let matched = matches!(
        (&operation.input, &operation.output),
        (Input::Read, Output::Read(_) | Output::Unknown)
            | (Input::Write(_), Output::WriteOk)
            | (Input::Write(_), Output::Unknown)
    );
    assert!(matched, "malformed operation, output does not fit input: {operation:?}");
    if operation.output != Output::Unknown {
        let return_nanos = operation.return_nanos;
        assert!(return_nanos.is_some(), "known output without a return time: {operation:?}");
        assert!(
            return_nanos >= Some(operation.call_nanos),
            "operation returned before it was called: {operation:?}"
        );
    }
}

/// An operation ready for the search, with the return time the search gives it.
struct Prepared<'a> {
    operation: &'a Operation,
    /// `None` is +infinity: an unknown write that may take effect at any time, or never.
    return_nanos: Option<u64>,
}

/// One key's operations ready for the search (module doc, step 2), sorted by call time.
fn prepare<'a>(operations: &[&'a Operation]) -> Vec<Prepared<'a>> {
    // Per value: how many writes carry it, and when the first read that returned it returned.
    let mut write_counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut read_returns_nanos: BTreeMap<u64, u64> = BTreeMap::new();
    for operation in operations {
        match (&operation.input, &operation.output, operation.return_nanos) {
            (Input::Write(value), _, _) => *write_counts.entry(*value).or_default() += 1,
            (Input::Read, Output::Read(Some(value)), Some(return_nanos)) => {
                let first_nanos = read_returns_nanos.entry(*value).or_insert(return_nanos);
                *first_nanos = return_nanos.min(*first_nanos);
            }
            _ => {}
        }
    }
    let mut prepared: Vec<Prepared<'a>> = operations
        .iter()
        .filter_map(|&operation| {
            let return_nanos = match (&operation.input, &operation.output) {
                (Input::Read, Output::Unknown) => return None,
                (Input::Write(value), Output::Unknown) => {
                    let read_nanos = *read_returns_nanos.get(value)?;
                    // The sole writer of a value that was read must take effect before the
                    // first such read returned; anything else may take effect at any time.
                    let sole = write_counts[value] == 1;
                    sole.then_some(read_nanos.max(operation.call_nanos))
                }
                _ => operation.return_nanos,
            };
            Some(Prepared { operation, return_nanos })
        })
        .collect();
    prepared.sort_by_key(|prepared| prepared.operation.call_nanos);
    prepared
}
