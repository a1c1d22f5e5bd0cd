//! Checkers over recorded histories and final states, shared by every scenario.
//!
//! Map:
//! - `linearizability`: a key-value register history (per key: reads and writes with call and
//!   return times) is linearizable; Wing-Gong search with Lowe's just-in-time linearization and
//!   memoization, as Porcupine and Knossos do, with a readable counterexample.
//! - `durability`: after any crash, every acknowledged synced write is still readable and
//!   nothing that was never written appears.
//! - `convergence`: after heal and settle, all live replicas hold equal state (digest compare).
//! - `liveness`: progress resumes within a stated bound after the last fault heals.
//! - `snapshot_isolation`: a transactional history (reads and writes of keys, per transaction,
//!   with outcomes and commit order) shows no anomaly snapshot isolation forbids (G0, G1a, G1b,
//!   G1c, G-single, G-nonadjacent, garbage and internal reads); Adya's dependency graph, Tarjan
//!   components and a cheapest witness cycle per component, as Elle. Also says whether the
//!   history is serializable (no G2 either, such as write skew).
//! - this file: [`Violation`] (what every checker returns on failure), the [`Invariant`] trait
//!   through which a system adds its own checks, [`invariant_fn`] to make one from a closure, and
//!   [`Checker`] to run several over one subject and collect every violation.
//!
//! Invariant: this crate is pure. It knows no system and no simulator; histories, digests and
//! times (`u64` nanoseconds) come in as data, so a checker gives the same answer on every run.

#![deny(missing_docs)]

pub mod convergence;
pub mod durability;
pub mod linearizability;
pub mod liveness;
pub mod snapshot_isolation;

mod format;

/// A violated invariant: which one, and a human-readable counterexample (multi-line ok).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// Name of the violated invariant, for example `"linearizability"`.
    pub invariant: String,
    /// The counterexample, written for a person; may span several lines.
    pub message: String,
}

impl Violation {
    /// A violation of `invariant`, explained by `message`.
    pub fn new(invariant: impl Into<String>, message: impl Into<String>) -> Self {
        Violation { invariant: invariant.into(), message: message.into() }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.invariant, self.message)
    }
}

impl std::error::Error for Violation {}

/// How a system adds its own invariant: a named check over a subject `S` (a history, a final
/// state...).
pub trait Invariant<S: ?Sized> {
    /// The invariant's name, as it appears in [`Violation::invariant`].
    fn name(&self) -> &str;
    /// `Ok` if `subject` satisfies the invariant, else the violation with a counterexample.
    fn check(&self, subject: &S) -> Result<(), Violation>;
}

/// Runs several invariants over one subject; collects every violation (not just the first).
pub struct Checker<'a, S: ?Sized> {
    invariants: Vec<&'a dyn Invariant<S>>,
}

impl<'a, S: ?Sized> Checker<'a, S> {
    /// A checker with no invariants yet.
    pub fn new() -> Self {
        Checker { invariants: Vec::new() }
    }

    /// Adds `invariant`; invariants run in the order they were added.
    pub fn with(mut self, invariant: &'a dyn Invariant<S>) -> Self {
        self.invariants.push(invariant);
        self
    }

    /// Runs every invariant over `subject`, in order, and returns all violations found.
    pub fn check(&self, subject: &S) -> Vec<Violation> {
        self.invariants.iter().filter_map(|invariant| invariant.check(subject).err()).collect()
    }
}

impl<S: ?Sized> Default for Checker<'_, S> {
    fn default() -> Self {
        Checker::new()
    }
}

/// An invariant named `name` whose check is `f`; an `Err(message)` from `f` becomes a
/// [`Violation`] of `name` with that message.
pub fn invariant_fn<S: ?Sized>(
    name: &'static str,
    f: impl Fn(&S) -> Result<(), String>,
) -> impl Invariant<S> {
    FnInvariant { name, f, subject: std::marker::PhantomData }
}

/// The adapter behind [`invariant_fn`].
struct FnInvariant<S: ?Sized, F> {
    name: &'static str,
    f: F,
    subject: std::marker::PhantomData<fn(&S)>,
}

impl<S: ?Sized, F: Fn(&S) -> Result<(), String>> Invariant<S> for FnInvariant<S, F> {
    fn name(&self) -> &str {
        self.name
    }

    fn check(&self, subject: &S) -> Result<(), Violation> {
        (self.f)(subject).map_err(|message| Violation::new(self.name, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sum of a slice must stay below a limit: a stand-in for a system's own invariant.
    struct SumBelow(u64);

    impl Invariant<[u64]> for SumBelow {
        fn name(&self) -> &str {
            "sum-below"
        }

        fn check(&self, subject: &[u64]) -> Result<(), Violation> {
            let sum: u64 = subject.iter().sum();
            if sum < self.0 {
                Ok(())
            } else {
                Err(Violation::new(self.name(), format!("sum {sum} >= {}", self.0)))
            }
        }
    }

    #[test]
    fn violation_displays_name_then_message() {
        let violation = Violation::new("durability", "key \"a\" lost");
        insta::assert_snapshot!(violation, @r#"durability: key "a" lost"#);
        let error: &dyn std::error::Error = &violation;
        assert_eq!(error.to_string(), violation.to_string());
    }

    #[test]
    fn checker_collects_every_violation_in_order() {
        let sum = SumBelow(10);
        let sorted = invariant_fn("sorted", |values: &[u64]| {
            match values.windows(2).position(|pair| pair[0] > pair[1]) {
                None => Ok(()),
                Some(index) => Err(format!("values[{index}] > values[{}]", index + 1)),
            }
        });
        let nonempty = invariant_fn("nonempty", |values: &[u64]| {
            if values.is_empty() { Err("empty".to_string()) } else { Ok(()) }
        });
        assert_eq!(sorted.name(), "sorted");
        let checker = Checker::new().with(&sum).with(&sorted).with(&nonempty);
        assert!(checker.check(&[1, 2, 3]).is_empty());
        let violations = checker.check(&[9, 1, 5]);
        let shown: Vec<String> = violations.iter().map(ToString::to_string).collect();
        insta::assert_snapshot!(shown.join("\n"), @r"
        sum-below: sum 15 >= 10
        sorted: values[0] > values[1]
        ");
        assert_eq!(Checker::<[u64]>::default().check(&[]), Vec::new());
    }
}
