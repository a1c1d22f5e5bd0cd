//! Durability: every acknowledged synced write is readable after any crash, and nothing that
//! was never written appears.
//!
//! Each key has a single writer, so its writes are totally ordered. After a crash and recovery
//! the key must read as the value of its last acknowledged write or of any later write (those
//! were in flight: they may or may not have reached the disk). If no write was acknowledged,
//! any write, or the initial absent state, is fine. An observation outside that set either
//! *lost* data (it shows an older state: an acknowledged write went missing) or *invented* it
//! (it shows a value no write ever carried, for example torn or corrupt data read as valid).

use crate::format::{counted, push_capped, value};
use crate::{Subject, Violation};

/// The invariant's name in a [`Violation`].
pub const NAME: &str = "durability";

/// One write of a key, as issued by its single writer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteRecord {
    /// The value written; `None` is a delete.
    pub value: Option<u64>,
    /// Whether the system acknowledged the write as durable (synced) before the crash.
    pub acknowledged: bool,
}

/// Per key: writes in the order they were issued by the single writer of that key; `observed`
/// is what a read after recovery returned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyHistory {
    /// The key.
    pub key: String,
    /// Every write of the key, oldest first.
    pub writes: Vec<WriteRecord>,
    /// What a read after recovery returned (`None`: the key was absent).
    pub observed: Option<u64>,
}

/// Valid iff observed equals the value of some write at or after the last acknowledged write
/// (any write, or absent, if none was acknowledged). Message names key, observed, last
/// acknowledged value, and which it lost/invented. Every failing key is listed (capped).
pub fn check_durability(keys: &[KeyHistory]) -> Result<(), Violation> {
    let failures: Vec<(&str, String)> = keys
        .iter()
        .filter_map(|history| Some((history.key.as_str(), check_key(history)?)))
        .collect();
    // The first failing key is the violation's subject.
    let Some(first) = failures.first().map(|(key, _)| Subject::Key(key.to_string())) else {
        return Ok(());
    };
    let mut message =
        format!("{} of {} lost or invented data:", failures.len(), counted(keys.len(), "key"));
    push_capped(&mut message, failures.into_iter().map(|(_, line)| line));
    Err(Violation::new(NAME, message).concerning(first))
}

/// `None` if `history` is durable, else one line explaining what went wrong.
fn check_key(history: &KeyHistory) -> Option<String> {
    let observed = history.observed;
    let last_acknowledged = history.writes.iter().rposition(|write| write.acknowledged);
    let allowed = &history.writes[last_acknowledged.unwrap_or(0)..];
    let in_allowed = allowed.iter().any(|write| write.value == observed);
    if in_allowed || (last_acknowledged.is_none() && observed.is_none()) {
        return None;
    }
    let written = history.writes.iter().any(|write| write.value == observed);
    let shown = value(observed);
    // Absent is the state before the first write, so it is an older state too.
    let verdict = if written || observed.is_none() {
        format!("lost, {shown} is older")
    } else {
        "invented, never written".to_string()
    };
    let expected = match last_acknowledged {
        Some(index) => format!(
            "last acknowledged {} (write {} of {})",
            value(history.writes[index].value),
            index + 1,
            history.writes.len(),
        ),
        None => format!("nothing acknowledged ({})", counted(history.writes.len(), "write")),
    };
    Some(format!("key {:?}: observed {shown}, {expected}: {verdict}", history.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a key history from a compact script: `"1! 2 -"` is an acknowledged write of 1,
    /// an unacknowledged write of 2 and an unacknowledged delete.
    fn key(key: &str, script: &str, observed: Option<u64>) -> KeyHistory {
        let writes = script
            .split_whitespace()
            .map(|word| {
                let acknowledged = word.ends_with('!');
                let word = word.trim_end_matches('!');
                let value = if word == "-" { None } else { Some(word.parse().expect("number")) };
                WriteRecord { value, acknowledged }
            })
            .collect();
        KeyHistory { key: key.to_string(), writes, observed }
    }

    #[track_caller]
    fn check(keys: &[KeyHistory]) -> String {
        match check_durability(keys) {
            Ok(()) => "ok".to_string(),
            Err(violation) => violation.to_string(),
        }
    }

    #[test]
    fn acknowledged_or_later_writes_are_durable() {
        let keys = [
            key("ack-then-nothing", "1 2!", Some(2)),
            key("in-flight-later-write", "1! 2 3", Some(3)),
            key("in-flight-lost", "1! 2 3", Some(1)),
            key("deleted", "1 -!", None),
            key("in-flight-delete", "1! -", None),
            key("never-written", "", None),
            key("nothing-acknowledged-absent", "1 2", None),
            key("nothing-acknowledged-old", "1 2", Some(1)),
        ];
        assert_eq!(check(&keys), "ok");
        assert_eq!(check(&[]), "ok");
    }

    #[test]
    fn lost_and_invented_data_are_named() {
        let keys = [
            key("ok", "1!", Some(1)),
            key("rolled-back", "1! 2! 3", Some(1)),
            key("vanished", "1 2!", None),
            key("resurrected", "1! -!", Some(1)),
            key("torn", "1! 2", Some(99)),
            key("phantom", "", Some(5)),
            key("phantom-late", "4 5", Some(6)),
        ];
        insta::assert_snapshot!(check(&keys), @r#"
        durability: 6 of 7 keys lost or invented data:
          key "rolled-back": observed 1, last acknowledged 2 (write 2 of 3): lost, 1 is older
          key "vanished": observed absent, last acknowledged 2 (write 2 of 2): lost, absent is older
          key "resurrected": observed 1, last acknowledged absent (write 2 of 2): lost, 1 is older
          key "torn": observed 99, last acknowledged 1 (write 1 of 2): invented, never written
          key "phantom": observed 5, nothing acknowledged (0 writes): invented, never written
          key "phantom-late": observed 6, nothing acknowledged (2 writes): invented, never written
        "#);
    }

    #[test]
    fn long_failure_lists_are_capped() {
        let keys: Vec<KeyHistory> =
            (0..25).map(|index| key(&format!("k{index}"), "1!", Some(2))).collect();
        let message = check(&keys);
        assert!(message.starts_with("durability: 25 of 25 keys"), "{message}");
        assert!(message.ends_with("\n  ... 5 more"), "{message}");
    }
}
