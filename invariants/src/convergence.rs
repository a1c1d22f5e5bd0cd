//! Convergence: after the faults heal and the system settles, all live replicas hold equal
//! state.
//!
//! Each replica reports a digest of its state (a hash over its contents, computed by the
//! system); replicas converged iff every digest is equal. On failure the replicas are grouped by
//! digest, largest group first, so the odd ones out stand at the bottom of the message.

use std::collections::BTreeMap;

use crate::format::{LISTED_MAX, counted, push_capped};
use crate::{Subject, Violation};

/// The invariant's name in a [`Violation`].
pub const NAME: &str = "convergence";

/// replicas: (replica name, state digest). Ok if all digests equal (or fewer than 2 replicas).
/// Message lists the groups of replicas by digest (hex), largest group first.
pub fn check_convergence(replicas: &[(String, u64)]) -> Result<(), Violation> {
    let mut groups: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (name, digest) in replicas {
        groups.entry(*digest).or_default().push(name);
    }
    if groups.len() <= 1 {
        return Ok(());
    }
    let mut groups: Vec<(u64, Vec<&str>)> = groups.into_iter().collect();
    // Largest group first; among equal sizes, the smaller digest first (stable sort).
    groups.sort_by_key(|(_, names)| std::cmp::Reverse(names.len()));
    let mut message =
        format!("{} hold {} different states:", counted(replicas.len(), "replica"), groups.len());
    push_capped(
        &mut message,
        groups.iter().map(|(digest, names)| {
            let mut line = format!("{digest:#018x} ({}):", names.len());
            for name in names.iter().take(LISTED_MAX) {
                line.push(' ');
                line.push_str(name);
            }
            if names.len() > LISTED_MAX {
                line.push_str(&format!(" ... {} more", names.len() - LISTED_MAX));
            }
            line
        }),
    );
    // The odd one out: the first replica of the smallest group.
    let odd = groups.last().and_then(|(_, names)| names.first()).map(|name| name.to_string());
    let violation = Violation::new(NAME, message);
    Err(match odd {
        Some(name) => violation.concerning(Subject::Node(name)),
        None => violation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(replicas: &[(&str, u64)]) -> String {
        let replicas: Vec<(String, u64)> =
            replicas.iter().map(|(name, digest)| (name.to_string(), *digest)).collect();
        match check_convergence(&replicas) {
            Ok(()) => "ok".to_string(),
            Err(violation) => violation.to_string(),
        }
    }

    #[test]
    fn equal_digests_converge() {
        assert_eq!(check(&[]), "ok");
        assert_eq!(check(&[("n1", 7)]), "ok");
        assert_eq!(check(&[("n1", 7), ("n2", 7), ("n3", 7)]), "ok");
    }

    #[test]
    fn divergent_replicas_are_grouped_largest_first() {
        let replicas = [("n1", 0xbeef), ("n2", 0xabc), ("n3", 0xbeef), ("n4", 0x1), ("n5", 0xbeef)];
        insta::assert_snapshot!(check(&replicas), @r"
        convergence: 5 replicas hold 3 different states:
          0x000000000000beef (3): n1 n3 n5
          0x0000000000000001 (1): n4
          0x0000000000000abc (1): n2
        ");
    }

    #[test]
    fn long_groups_are_capped() {
        let names: Vec<String> = (0..30).map(|index| format!("n{index}")).collect();
        let mut replicas: Vec<(&str, u64)> = names.iter().map(|name| (name.as_str(), 1)).collect();
        replicas[0].1 = 2;
        let message = check(&replicas);
        assert!(message.contains("(29): n1 n2"), "{message}");
        assert!(message.contains(" ... 9 more\n"), "{message}");
        assert!(message.ends_with("0x0000000000000002 (1): n0"), "{message}");
    }
}
