//! The counterexample, written for a person: one line per anomaly (capped), then the
//! transactions they involve, with their client, times, outcome and operations.

use std::collections::BTreeSet;
use std::fmt;

use super::{Analysis, Anomaly, CycleClass, EdgeKind, History, Operation, Outcome, Transaction};
use crate::format::{LISTED_MAX, counted, ms, push_capped, value};

/// The violation message: `anomalies`, then the transactions involved.
pub(super) fn message(history: &History, analysis: &Analysis, anomalies: &[&Anomaly]) -> String {
    assert!(!anomalies.is_empty(), "a message explains at least one anomaly");
    let count = match anomalies.len() {
        1 => "1 anomaly".to_string(),
        count => format!("{count} anomalies"),
    };
    let transactions = counted(analysis.transaction_count, "transaction");
    let graph = analysis.graph_transaction_count;
    let mut message = format!("{count} among {transactions} ({graph} in the graph):");
    push_capped(&mut message, anomalies.iter().map(ToString::to_string));
    let mut involved = BTreeSet::new();
    for anomaly in anomalies.iter().take(LISTED_MAX) {
        involved.extend(transaction_ids(anomaly));
    }
    message.push_str("\ntransactions involved:");
    let described = history
        .transactions
        .iter()
        .filter(|transaction| involved.contains(&transaction.id))
        .map(describe);
    push_capped(&mut message, described.collect::<Vec<String>>().into_iter());
    message
}

/// The ids of the transactions `anomaly` names.
fn transaction_ids(anomaly: &Anomaly) -> Vec<u64> {
    match anomaly {
        Anomaly::GarbageRead { reader, .. } => vec![*reader],
        Anomaly::Internal { transaction, .. } | Anomaly::FutureRead { transaction, .. } => {
            vec![*transaction]
        }
        Anomaly::AbortedRead { reader, writer, .. }
        | Anomaly::IntermediateRead { reader, writer, .. } => vec![*reader, *writer],
        Anomaly::Cycle { edges, .. } => edges.iter().map(|edge| edge.source).collect(),
    }
}

/// One transaction in prose: `T3 by client 1 at [0.000ms, 1.000ms], committed #5: r(x)=absent
/// w(y)=3`.
fn describe(transaction: &Transaction) -> String {
    let outcome = match transaction.outcome {
        Outcome::Committed { commit_order: Some(order) } => format!("committed #{order}"),
        Outcome::Committed { commit_order: None } => "committed".to_string(),
        Outcome::Aborted => "aborted".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    let (id, client) = (transaction.id, transaction.client);
    let interval = format!("[{}, {}]", ms(transaction.call_nanos), ms(transaction.return_nanos));
    let mut line = format!("T{id} by client {client} at {interval}, {outcome}:");
    for operation in transaction.operations.iter().take(LISTED_MAX) {
        match operation {
            Operation::Read { key, value: read } => {
                line.push_str(&format!(" r({key})={}", value(*read)))
            }
            Operation::Write { key, value } => line.push_str(&format!(" w({key})={value}")),
        }
    }
    let more = transaction.operations.len().saturating_sub(LISTED_MAX);
    if more > 0 {
        line.push_str(&format!(" ... {more} more"));
    }
    line
}

impl fmt::Display for EdgeKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            EdgeKind::WriteWrite => "ww",
            EdgeKind::WriteRead => "wr",
            EdgeKind::ReadWrite => "rw",
        };
        formatter.write_str(name)
    }
}

impl fmt::Display for CycleClass {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            CycleClass::G0 => "G0",
            CycleClass::G1c => "G1c",
            CycleClass::GSingle => "G-single",
            CycleClass::GNonadjacent => "G-nonadjacent",
            CycleClass::G2 => "G2",
        };
        formatter.write_str(name)
    }
}

/// One line per anomaly, for example `G-single: T3 -rw(x)-> T7 -wr(y)-> T3`.
impl fmt::Display for Anomaly {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::GarbageRead { reader, key, value: read } => {
                let read = value(*read);
                write!(formatter, "garbage read: T{reader} read {key}={read}, which nothing wrote")
            }
            Anomaly::Internal { transaction, key, expected, observed } => {
                let (expected, observed) = (value(*expected), value(*observed));
                write!(
                    formatter,
                    "internal: T{transaction} read {key}={observed} after its own read or write \
                     of {key}={expected}"
                )
            }
            Anomaly::FutureRead { transaction, key, value } => {
                write!(formatter, "internal: T{transaction} read {key}={value} before writing it")
            }
            Anomaly::AbortedRead { reader, writer, key, value } => {
                write!(formatter, "G1a: T{reader} read {key}={value}, written by aborted T{writer}")
            }
            Anomaly::IntermediateRead { reader, writer, key, value } => write!(
                formatter,
                "G1b: T{reader} read {key}={value}, an intermediate write of T{writer}"
            ),
            Anomaly::Cycle { class, edges } => {
                write!(formatter, "{class}")?;
                if *class == CycleClass::G2 {
                    write!(formatter, " (allowed under snapshot isolation)")?;
                }
                let first = edges.first().expect("a cycle has edges");
                write!(formatter, ": T{}", first.source)?;
                for edge in edges {
                    write!(formatter, " -{}({})-> T{}", edge.kind, edge.key, edge.target)?;
                }
                Ok(())
            }
        }
    }
}
