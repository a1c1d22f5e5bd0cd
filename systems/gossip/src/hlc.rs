//! Hybrid logical clock (Kulkarni et al., 2014): timestamps that follow wall-clock time yet never
//! go backwards and always exceed every timestamp a node has seen, so last-writer-wins picks a
//! causally later write even under clock skew.
//!
//! Sans-IO: the wall clock comes in as milliseconds (`Env::wall` in the driver).

use serde::{Deserialize, Serialize};

/// An HLC timestamp: physical milliseconds, then a logical counter. Ordered lexicographically.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// The largest wall-clock reading (ms since the Unix epoch) seen.
    pub wall_ms: u64,
    /// Breaks ties among events at the same `wall_ms`.
    pub logical: u32,
}

/// How far ahead of the local wall clock a remote timestamp may be before it is refused (so a
/// peer with a broken clock cannot drag every clock into the future).
pub const DRIFT_MS_MAX: u64 = 60_000;

/// Why a remote timestamp was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClockError {
    /// The remote timestamp is further ahead of our wall clock than `DRIFT_MS_MAX`.
    TooFarAhead {
        /// The remote timestamp.
        remote: Timestamp,
        /// Our wall clock.
        wall_ms: u64,
    },
}

impl std::fmt::Display for ClockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClockError::TooFarAhead { remote, wall_ms } => {
                write!(f, "remote timestamp {remote:?} too far ahead of wall clock {wall_ms}")
            }
        }
    }
}

impl std::error::Error for ClockError {}

/// One node's hybrid logical clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hlc {
    // Invariant: never decreases.
    last: Timestamp,
}

impl Hlc {
    /// A clock that has seen nothing.
    pub fn new() -> Hlc {
        Hlc::default()
    }

    /// A clock that resumes after `last` (for restarts from persisted state).
    pub fn resume(last: Timestamp) -> Hlc {
        Hlc { last }
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A fresh timestamp for a local event, strictly greater than every earlier one.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        let next = if wall_ms > self.last.wall_ms {
            Timestamp { wall_ms, logical: 0 }
        } else {
            self.bump()
        };
        assert!(next > self.last);
        self.last = next;
        next
    }

    /// Folds in a timestamp received from a peer; afterwards `now` exceeds it.
    pub fn observe(&mut self, wall_ms: u64, remote: Timestamp) -> Result<(), ClockError> {
        if remote.wall_ms > wall_ms.saturating_add(DRIFT_MS_MAX) {
            return Err(ClockError::TooFarAhead { remote, wall_ms });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    fn bump(&self) -> Timestamp {
        match self.last.logical.checked_add(1) {
            Some(logical) => Timestamp { wall_ms: self.last.wall_ms, logical },
            // The logical counter is exhausted: borrow a millisecond from the future.
            None => Timestamp { wall_ms: self.last.wall_ms + 1, logical: 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_under_a_stuck_or_backward_clock() {
        let mut clock = Hlc::new();
        let first = clock.now(100);
        let second = clock.now(100);
        let third = clock.now(50);
        assert!(first < second && second < third);
        assert_eq!(third.wall_ms, 100);
        assert_eq!(clock.now(200), Timestamp { wall_ms: 200, logical: 0 });
    }

    #[test]
    fn observe_moves_past_remote_and_refuses_the_far_future() {
        let mut clock = Hlc::new();
        let remote = Timestamp { wall_ms: 500, logical: 7 };
        clock.observe(100, remote).expect("within drift");
        assert!(clock.now(100) > remote);
        let far = Timestamp { wall_ms: 100 + DRIFT_MS_MAX + 1, logical: 0 };
        assert!(clock.observe(100, far).is_err());
    }
}
