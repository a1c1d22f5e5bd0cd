//! The counterexample of a failed search, written for a person: the longest linearizable prefix
//! and, at its end, why each candidate could not go next.

use super::search::{Deepest, apply};
use super::{Input, Operation, Output, Prepared};
use crate::format::{LISTED_MAX, counted, ms, push_capped, value};

/// The violation message for `key`, whose prepared `operations` have no linearization.
pub(super) fn counterexample(key: &str, operations: &[Prepared<'_>], deepest: &Deepest) -> String {
    let count = counted(operations.len(), "operation");
    let mut message = format!("key {key:?}: no linearization exists for its {count}");
    let prefix = &deepest.prefix;
    let count = counted(prefix.len(), "operation");
    message.push_str(&format!("\nlongest linearizable prefix found ({count}):"));
    let skipped = prefix.len().saturating_sub(LISTED_MAX);
    if skipped > 0 {
        message.push_str(&format!("\n  ... {skipped} earlier"));
    }
    for (position, &index) in prefix.iter().enumerate().skip(skipped) {
        let shown = describe(operations[index as usize].operation);
        message.push_str(&format!("\n  {}. {shown}", position + 1));
    }
    let mut value_held = None;
    for &index in prefix {
        let operation = operations[index as usize].operation;
        value_held = apply(value_held, operation).expect("the prefix is linearizable");
    }
    let held = match value_held {
        Some(value) => format!("the register held {value}"),
        None => "the register was absent".to_string(),
    };
    message.push_str(&format!("\nnothing can be linearized next ({held}):"));
    let reasons = deepest.candidates.iter().map(|&index| {
        let operation = operations[index as usize].operation;
        match apply(value_held, operation) {
            None => format!("{} but {held}", describe(operation)),
            Some(_) => format!("{} fits here, but every order after it fails", describe(operation)),
        }
    });
    push_capped(&mut message, reasons);
    message
}

/// One operation in prose, e.g. `read by client 3 at [12.000ms, 14.500ms] returned 7`.
fn describe(operation: &Operation) -> String {
    let client = operation.client;
    let returned = match (&operation.output, operation.return_nanos) {
        (Output::Unknown, _) | (_, None) => "unknown".to_string(),
        (_, Some(return_nanos)) => ms(return_nanos),
    };
    let interval = format!("[{}, {returned}]", ms(operation.call_nanos));
    match (&operation.input, &operation.output) {
        (Input::Read, Output::Read(read)) => {
            format!("read by client {client} at {interval} returned {}", value(*read))
        }
        (Input::Read, _) => format!("read by client {client} at {interval}"),
        (Input::Write(written), _) => {
            format!("write of {written} by client {client} at {interval}")
        }
    }
}
