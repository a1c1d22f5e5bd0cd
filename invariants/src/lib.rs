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

/// Which invariant a violation breaks, as a type: the checkers of this crate, the harness's own
/// verdicts (a panic, no progress), the properties the scenarios check, or another invariant a
/// system names through [`Invariant`]. Each kind has one stable kebab-case name ([`name`]),
/// the one messages and reports show; parsing a name gives its kind back.
///
/// [`name`]: InvariantKind::name
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", from = "String")]
#[non_exhaustive]
pub enum InvariantKind {
    /// A register history is linearizable (`linearizability`).
    Linearizability,
    /// Acknowledged synced writes survive crashes; nothing is invented (`durability`).
    Durability,
    /// Live replicas hold equal state after the heal (`convergence`).
    Convergence,
    /// Progress resumes within a bound after the heal (`liveness`).
    Liveness,
    /// A transactional history shows no anomaly snapshot isolation forbids.
    SnapshotIsolation,
    /// A transactional history is serializable.
    Serializability,
    /// A task of the simulated system panicked: a failed assertion or invariant check.
    Panic,
    /// The run deadlocked, livelocked or ran past its budget.
    Progress,
    /// Every delivered packet came from the peer whose key authenticated it.
    Authenticity,
    /// No packet or event is delivered twice.
    NoDuplicates,
    /// Every map a node holds is what the access policy allows.
    PolicySafety,
    /// No private key leaves its node.
    KeySecrecy,
    /// No two nodes hold the same address.
    UniqueAddresses,
    /// A closed store does no more work.
    CloseQuiescence,
    /// A client reads its own acknowledged writes.
    ReadYourWrites,
    /// A scan returns exactly the live keys in order.
    ScanConsistency,
    /// Background work a user call waits for stays within its bound.
    UserWorkBound,
    /// Every value read was written by someone.
    NoInventedValues,
    /// Live members agree on the membership.
    MembershipAgreement,
    /// Acknowledged updates survive in the converged state.
    AcknowledgedUpdatesSurvive,
    /// Indexes agree with the documents they index.
    IndexConsistency,
    /// A change stream delivers every committed change once, in order.
    ChangeStream,
    /// A transaction is applied whole or not at all.
    Atomicity,
    /// An aborted transaction's writes are never seen.
    AbortedInvisible,
    /// An invariant a system names itself (through [`Invariant`] or [`invariant_fn`]).
    Named(String),
}

/// Every kind with a fixed name, with that name.
const KIND_NAMES: [(InvariantKind, &str); 24] = [
    (InvariantKind::Linearizability, "linearizability"),
    (InvariantKind::Durability, "durability"),
    (InvariantKind::Convergence, "convergence"),
    (InvariantKind::Liveness, "liveness"),
    (InvariantKind::SnapshotIsolation, "snapshot-isolation"),
    (InvariantKind::Serializability, "serializability"),
    (InvariantKind::Panic, "panic"),
    (InvariantKind::Progress, "progress"),
    (InvariantKind::Authenticity, "authenticity"),
    (InvariantKind::NoDuplicates, "no-duplicates"),
    (InvariantKind::PolicySafety, "policy-safety"),
    (InvariantKind::KeySecrecy, "key-secrecy"),
    (InvariantKind::UniqueAddresses, "unique-addresses"),
    (InvariantKind::CloseQuiescence, "close-quiescence"),
    (InvariantKind::ReadYourWrites, "read-your-writes"),
    (InvariantKind::ScanConsistency, "scan-consistency"),
    (InvariantKind::UserWorkBound, "user-work-bound"),
    (InvariantKind::NoInventedValues, "no-invented-values"),
    (InvariantKind::MembershipAgreement, "membership-agreement"),
    (InvariantKind::AcknowledgedUpdatesSurvive, "acknowledged-updates-survive"),
    (InvariantKind::IndexConsistency, "index-consistency"),
    (InvariantKind::ChangeStream, "change-stream"),
    (InvariantKind::Atomicity, "atomicity"),
    (InvariantKind::AbortedInvisible, "aborted-invisible"),
];

impl InvariantKind {
    /// The kind's stable kebab-case name, as messages and reports show it.
    pub fn name(&self) -> &str {
        if let InvariantKind::Named(name) = self {
            return name;
        }
        let found = KIND_NAMES.iter().find(|(kind, _)| kind == self);
        found.map(|(_, name)| *name).expect("every fixed kind has a name")
    }
}

impl From<&str> for InvariantKind {
    /// The kind called `name`: a fixed kind if one has that name, else `Named`.
    fn from(name: &str) -> Self {
        let found = KIND_NAMES.iter().find(|(_, fixed)| *fixed == name);
        found.map_or_else(|| InvariantKind::Named(name.to_string()), |(kind, _)| kind.clone())
    }
}

impl From<String> for InvariantKind {
    fn from(name: String) -> Self {
        InvariantKind::from(name.as_str())
    }
}

impl From<InvariantKind> for String {
    fn from(kind: InvariantKind) -> Self {
        kind.name().to_string()
    }
}

impl std::fmt::Display for InvariantKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What a violation concerns: the key or node (or link between two nodes) where it was seen.
/// Shrinking keeps a failure only while the same invariant breaks on the same subject.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A key (of a register, a store, a collection), as the history names it.
    Key(String),
    /// A node (replica, peer, member, client), by its name in the topology.
    Node(String),
    /// An ordered pair of nodes: a sender and a receiver.
    Link {
        /// The sending node.
        from: String,
        /// The receiving node.
        to: String,
    },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Key(key) => write!(formatter, "key {key:?}"),
            Subject::Node(node) => write!(formatter, "node {node}"),
            Subject::Link { from, to } => write!(formatter, "{from} -> {to}"),
        }
    }
}

/// A violated invariant: which one (a typed kind), what it concerns (a key or node, when the
/// checker knows), and a human-readable counterexample (multi-line ok).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// The violated invariant.
    pub kind: InvariantKind,
    /// The key or node it was violated on, if the checker names one.
    #[serde(default)]
    pub subject: Option<Subject>,
    /// The counterexample, written for a person; may span several lines.
    pub message: String,
}

impl Violation {
    /// A violation of `kind` (a kind, or its name), explained by `message`.
    pub fn new(kind: impl Into<InvariantKind>, message: impl Into<String>) -> Self {
        Violation { kind: kind.into(), subject: None, message: message.into() }
    }

    /// The same violation, concerning `subject`.
    pub fn concerning(mut self, subject: Subject) -> Self {
        self.subject = Some(subject);
        self
    }

    /// The violated invariant's stable name, for example `"linearizability"`.
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    /// Whether `other` breaks the same invariant on the same key or node (messages may differ).
    pub fn same_invariant(&self, other: &Violation) -> bool {
        self.kind == other.kind && self.subject == other.subject
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Violation {}

/// How a system adds its own invariant: a named check over a subject `S` (a history, a final
/// state...).
pub trait Invariant<S: ?Sized> {
    /// The invariant's name, as [`Violation::name`] gives it back.
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

    /// Every fixed kind's name parses back to that kind (through serde as well); an unknown
    /// name is a `Named` kind that keeps its name.
    #[test]
    fn kinds_and_names_round_trip() {
        for (kind, name) in KIND_NAMES.iter() {
            assert_eq!(kind.name(), *name);
            assert_eq!(InvariantKind::from(*name), *kind);
            let json = serde_json::to_string(kind).expect("serializes");
            assert_eq!(json, format!("{name:?}"));
            assert_eq!(serde_json::from_str::<InvariantKind>(&json).expect("parses"), *kind);
        }
        let named = InvariantKind::from("sum-below");
        assert_eq!(
            (named.name(), named.clone()),
            ("sum-below", InvariantKind::Named("sum-below".into()))
        );
        let names: std::collections::BTreeSet<&str> = KIND_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(names.len(), KIND_NAMES.len(), "names are unique");
    }

    /// The same invariant means the same kind on the same subject; the message may differ.
    #[test]
    fn same_invariant_compares_kind_and_subject() {
        let key = |key: &str| Subject::Key(key.to_string());
        let lost = Violation::new(InvariantKind::Durability, "lost").concerning(key("a"));
        assert!(lost.same_invariant(&Violation::new("durability", "other").concerning(key("a"))));
        assert!(!lost.same_invariant(&Violation::new("durability", "lost").concerning(key("b"))));
        assert!(!lost.same_invariant(&Violation::new("durability", "lost")));
        assert!(
            !lost.same_invariant(&Violation::new("linearizability", "lost").concerning(key("a")))
        );
        let link = Subject::Link { from: "wg1".into(), to: "wg2".into() };
        let shown = format!("{lost} / {} / {link}", key("a"));
        insta::assert_snapshot!(shown, @r#"durability: lost / key "a" / wg1 -> wg2"#);
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
