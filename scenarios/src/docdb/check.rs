//! The safety checks of `docdb-txn` over the recorded history and the final state.
//!
//! The change log is the witness that settles unknown outcomes: events are written in the
//! same atomic batch as the documents, carry the commit number, and every write carries a
//! value unique to it, so an event names the one transaction that made it and the commit it
//! went into. A transaction whose commit failed or was cut by a crash therefore counts as
//! committed (with that number) exactly when its events are in the log; then every check runs
//! with a commit number on every committed writer.

use std::collections::{BTreeMap, BTreeSet};

use invariants::Violation;
use invariants::snapshot_isolation::{self, Operation, Outcome, Transaction};

use super::node::{WATCHED, key_name};
use super::{FinalState, History, LogStatus, LoggedEvent, Status};

/// Every safety check, first violation wins (runtime ones first).
pub(super) fn safety(history: &History) -> Result<(), Violation> {
    if let Some(first) = history.violations.first() {
        return Err(first.clone());
    }
    let Some(state) = &history.final_state else {
        return Err(Violation::new("durability", "the database never recovered for final reads"));
    };
    let commits = resolve(history, state)?;
    check_log(history, state)?;
    check_stream(history, state)?;
    check_durability(history, state, &commits)?;
    snapshot_isolation::check_snapshot_isolation(&si_history(history, state, &commits))
}

/// Each installed write of each transaction, as (key name, value).
fn installed(operations: &[Operation]) -> BTreeMap<&str, u64> {
    let mut writes = BTreeMap::new();
    for operation in operations {
        if let Operation::Write { key, value } = operation {
            writes.insert(key.as_str(), *value);
        }
    }
    writes
}

fn atomicity(message: String) -> Violation {
    Violation::new("atomicity", message)
}

/// The commit number of every transaction whose writes are in the change log, checked against
/// what its client was told: an acknowledged commit has all its events under its own number,
/// an aborted one none, and an unknown one all or none.
fn resolve(history: &History, state: &FinalState) -> Result<BTreeMap<usize, u64>, Violation> {
    let mut writer: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (position, txn) in history.txns.iter().enumerate() {
        for (key, value) in installed(&txn.operations) {
            writer.insert((key.to_string(), value), position);
        }
    }
    let mut found: BTreeMap<usize, BTreeMap<String, u64>> = BTreeMap::new();
    for event in state.events.iter().filter(|event| event.key.is_some()) {
        let key = key_name(event.key.expect("filtered"));
        let value = event.value.unwrap_or(u64::MAX);
        let Some(&position) = writer.get(&(key.clone(), value)) else {
            let message =
                format!("event {:?} sets {key} to {value}, which no one wrote", event.token);
            return Err(Violation::new("change-stream", message));
        };
        if found.entry(position).or_default().insert(key.clone(), event.token.0).is_some() {
            let message = format!("event {:?} repeats the write of {key}={value}", event.token);
            return Err(Violation::new("change-stream", message));
        }
    }
    let mut commits = BTreeMap::new();
    let mut owners: BTreeMap<u64, usize> = BTreeMap::new();
    for (position, txn) in history.txns.iter().enumerate() {
        let writes = installed(&txn.operations);
        let logged = found.remove(&position).unwrap_or_default();
        let numbers: BTreeSet<u64> = logged.values().copied().collect();
        let name = format!("T{position} (client {}, {:?})", txn.client, txn.status);
        if numbers.len() > 1 {
            return Err(atomicity(format!("{name}: its writes went into commits {numbers:?}")));
        }
        let Some(&number) = numbers.iter().next() else {
            if let Status::Committed(commit) = txn.status
                && commit > 0
            {
                let message = format!("{name}: commit {commit} acknowledged but not in the log");
                return Err(Violation::new("durability", message));
            }
            continue;
        };
        match txn.status {
            Status::Committed(commit) if commit != number => {
                let message =
                    format!("{name}: acknowledged as commit {commit}, logged as {number}");
                return Err(atomicity(message));
            }
            Status::Aborted | Status::Committed(0) => {
                let message = format!("{name}: aborted, but its writes are in commit {number}");
                return Err(Violation::new("aborted-invisible", message));
            }
            _ => {}
        }
        if logged.len() != writes.len() {
            let message = format!(
                "{name}: only {} of its {} writes are in commit {number}: {logged:?}",
                logged.len(),
                writes.len()
            );
            return Err(atomicity(message));
        }
        if let Some(other) = owners.insert(number, position) {
            let message = format!("T{other} and T{position} both committed as commit {number}");
            return Err(atomicity(message));
        }
        commits.insert(position, number);
    }
    Ok(commits)
}

/// Acknowledged auto-commit inserts survive; nothing appears that was never inserted.
fn check_log(history: &History, state: &FinalState) -> Result<(), Violation> {
    let present: BTreeSet<u64> = state.log_ids.iter().copied().collect();
    for (id, status) in history.logs.iter().enumerate() {
        if *status == LogStatus::Acked && !present.contains(&(id as u64)) {
            let message = format!("acknowledged insert {id} into the log is gone");
            return Err(Violation::new("durability", message));
        }
    }
    if let Some(stranger) = present.iter().find(|id| **id >= history.logs.len() as u64) {
        let message = format!("the log holds {stranger}, which was never inserted");
        return Err(Violation::new("durability", message));
    }
    Ok(())
}

/// The consumer processed exactly the logged events of the watched collection, in order.
fn check_stream(history: &History, state: &FinalState) -> Result<(), Violation> {
    let expected: Vec<(u64, u32)> = state
        .events
        .iter()
        .filter(|event| event.collection == WATCHED)
        .map(|event: &LoggedEvent| event.token)
        .collect();
    if history.delivered == expected {
        return Ok(());
    }
    let position = history.delivered.iter().zip(&expected).take_while(|(a, b)| a == b).count();
    let message = format!(
        "the consumer processed {} events of {WATCHED}, the log holds {}; first difference at \
         position {position}: processed {:?}, logged {:?}",
        history.delivered.len(),
        expected.len(),
        history.delivered.get(position),
        expected.get(position)
    );
    Err(Violation::new("change-stream", message))
}

/// After the final recovery each key holds the value of its highest-numbered committed writer.
fn check_durability(
    history: &History,
    state: &FinalState,
    commits: &BTreeMap<usize, u64>,
) -> Result<(), Violation> {
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (position, commit) in commits {
        for (key, value) in installed(&history.txns[*position].operations) {
            let entry = last.entry(key.to_string()).or_insert((*commit, value));
            if *commit >= entry.0 {
                *entry = (*commit, value);
            }
        }
    }
    for (key, observed) in state.values.iter().enumerate() {
        let name = key_name(key as u32);
        let expected = last.get(&name).map(|(_, value)| *value);
        if *observed != expected {
            let message = format!(
                "after the final recovery {name} holds {observed:?}, but its last committed \
                 write (commit {:?}) was {expected:?}",
                last.get(&name).map(|(commit, _)| *commit)
            );
            return Err(Violation::new("durability", message));
        }
    }
    Ok(())
}

/// The history as the snapshot-isolation checker takes it, plus the final reads as one last
/// read-only transaction.
fn si_history(
    history: &History,
    state: &FinalState,
    commits: &BTreeMap<usize, u64>,
) -> snapshot_isolation::History {
    let mut transactions: Vec<Transaction> = history
        .txns
        .iter()
        .enumerate()
        .map(|(position, txn)| {
            let outcome = match (txn.status, commits.get(&position)) {
                (_, Some(commit)) => Outcome::Committed { commit_order: Some(*commit) },
                (Status::Committed(_), None) => Outcome::Committed { commit_order: None },
                (Status::Aborted, None) => Outcome::Aborted,
                (Status::Pending | Status::Failed, None) => Outcome::Unknown,
            };
            Transaction {
                id: position as u64,
                client: u64::from(txn.client),
                call_nanos: txn.call_nanos,
                return_nanos: txn.return_nanos.unwrap_or(txn.call_nanos).max(txn.call_nanos),
                outcome,
                operations: txn.operations.clone(),
            }
        })
        .collect();
    let last_nanos = transactions.iter().map(|txn| txn.return_nanos).max().unwrap_or(0);
    let operations = state
        .values
        .iter()
        .enumerate()
        .map(|(key, value)| Operation::Read { key: key_name(key as u32), value: *value })
        .collect();
    transactions.push(Transaction {
        id: history.txns.len() as u64,
        client: u64::MAX,
        call_nanos: last_nanos,
        return_nanos: last_nanos,
        outcome: Outcome::Committed { commit_order: None },
        operations,
    });
    snapshot_isolation::History { initial: BTreeMap::new(), transactions }
}
