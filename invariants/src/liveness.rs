//! Liveness: progress resumes within a stated bound after the faults heal.
//!
//! A scenario's healed phase records when the last fault healed and when progress was observed
//! (for example acknowledged operations). Progress before the heal does not count: the question
//! is whether the system recovers, not whether it worked before the faults.

use crate::Violation;
use crate::format::ms;

/// The invariant's name in a [`Violation`].
pub const NAME: &str = "liveness";

/// heal_nanos: when the last fault healed; progress_nanos: times at which progress was observed
/// (e.g. acknowledged ops), any order; bound_nanos: allowed delay. Ok iff some progress time p
/// has heal_nanos <= p <= heal_nanos + bound_nanos. Message says how long after heal the first
/// progress came (or that none came before the end) and the bound.
pub fn check_progress_after_heal(
    heal_nanos: u64,
    progress_nanos: &[u64],
    bound_nanos: u64,
) -> Result<(), Violation> {
    let deadline_nanos = heal_nanos.saturating_add(bound_nanos);
    let first_nanos = progress_nanos.iter().copied().filter(|&time| time >= heal_nanos).min();
    let message = match first_nanos {
        Some(first_nanos) if first_nanos <= deadline_nanos => return Ok(()),
        Some(first_nanos) => format!(
            "first progress came {} after the heal at {} (bound {})",
            ms(first_nanos - heal_nanos),
            ms(heal_nanos),
            ms(bound_nanos)
        ),
        None => format!(
            "no progress between the heal at {} and the end of the run (bound {})",
            ms(heal_nanos),
            ms(bound_nanos)
        ),
    };
    Err(Violation::new(NAME, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[track_caller]
    fn check(heal_nanos: u64, progress_nanos: &[u64], bound_nanos: u64) -> String {
        match check_progress_after_heal(heal_nanos, progress_nanos, bound_nanos) {
            Ok(()) => "ok".to_string(),
            Err(violation) => violation.to_string(),
        }
    }

    #[test]
    fn progress_within_bound_passes() {
        assert_eq!(check(100 * MS, &[900 * MS, 150 * MS, 20 * MS], 50 * MS), "ok");
        assert_eq!(check(100 * MS, &[100 * MS], 0), "ok", "at the heal instant");
        assert_eq!(check(100 * MS, &[150 * MS], 50 * MS), "ok", "at the bound exactly");
        assert_eq!(check(u64::MAX - 1, &[u64::MAX], u64::MAX), "ok", "deadline saturates");
    }

    #[test]
    fn late_or_missing_progress_fails() {
        let late = check(100 * MS, &[20 * MS, 400 * MS, 250_500_000], 50 * MS);
        let before_heal_only = check(100 * MS, &[20 * MS, 99 * MS], 50 * MS);
        let none = check(0, &[], 1_500);
        insta::assert_snapshot!([late, before_heal_only, none].join("\n"), @r"
        liveness: first progress came 150.500ms after the heal at 100.000ms (bound 50.000ms)
        liveness: no progress between the heal at 100.000ms and the end of the run (bound 50.000ms)
        liveness: no progress between the heal at 0.000ms and the end of the run (bound 0.001ms)
        ");
    }
}
