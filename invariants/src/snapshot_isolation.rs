//! Snapshot isolation of a transactional history: Adya's dependency graph, checked for every
//! anomaly snapshot isolation forbids, as Jepsen's Elle does for read-write registers.
//!
//! # History model
//!
//! A [`History`] is a list of [`Transaction`]s and the keys' initial values. Each transaction has
//! a unique id, the client that ran it, call and return times (only used in messages), an
//! [`Outcome`] and its [`Operation`]s in program order: reads of a key that observed a value
//! (`None`: absent) and writes of a key with a value. Values are unique per key across the whole
//! history (no two writes, of any outcome, carry the same value to the same key, and none equals
//! the key's initial value), so every read names the one write it observed. Every key starts as
//! its entry in [`History::initial`], or absent; there are no deletes.
//!
//! A transaction's last write to a key *installs* its version of the key; earlier writes to the
//! same key are *intermediate*. The graph holds the committed transactions, plus every
//! [`Outcome::Unknown`] transaction whose writes (installed or intermediate) a graph transaction
//! read, transitively: it must have committed. Other unknown transactions and aborted ones are
//! left out, and so are their reads: Adya constrains committed transactions only.
//!
//! # Version order
//!
//! Per key, versions are ordered by what is known for sure, as a set of *precedes* pairs:
//! 1. The initial version precedes every other version.
//! 2. Installed versions whose writers carry a commit order number (`Committed { commit_order:
//!    Some(_) }`, for example the store's commit sequence) are totally ordered by it.
//! 3. Writes follow reads: a transaction that read version `a` of a key and installed `b`
//!    shows that `a` precedes `b`. This places versions without a commit order number (unknown
//!    outcomes, `Committed { commit_order: None }`); between numbered versions the numbers win.
//!
//! Only direct pairs become edges; pairs implied by transitivity add nothing a cycle could use.
//! With a number on every committed transaction the order is total and ww edges follow it, so
//! G0 cannot occur; without numbers, fewer edges are known and some anomalies go unseen (a lost
//! update between two unnumbered writers looks like write skew), never the other way round.
//!
//! # Edges and anomalies
//!
//! For graph transactions `Ti != Tj`: `Ti -ww(x)-> Tj` if Ti's version of x directly precedes
//! Tj's; `Ti -wr(x)-> Tj` if Tj read Ti's installed version of x; `Ti -rw(x)-> Tj` if Ti read a
//! version of x that directly precedes Tj's. Reads count for edges only when they happen before
//! the transaction's own first write of the key (*external* reads). Reported, per
//! [`Anomaly`]:
//! - garbage read: a value no write carried; internal inconsistency: a read that does not
//!   return the transaction's own last read or write of the key, or returns its own later write;
//! - G1a (aborted read) and G1b (intermediate read) by a graph transaction;
//! - G0: a cycle of ww edges; G1c: a cycle of ww and wr edges with at least one wr;
//! - G-single: a cycle with exactly one rw edge; G-nonadjacent: a cycle with two or more rw
//!   edges, no two of them adjacent (going round). Snapshot isolation forbids it too (Cerone
//!   and Gotsman: a history is SI iff every cycle has two adjacent rw edges; Jepsen's name);
//! - G2 (information only, allowed under SI): a cycle whose rw edges include two adjacent ones,
//!   such as write skew. [`Analysis::is_serializable`] says whether there is none.
//!
//! # Cycle search
//!
//! Linear apart from the witnesses, and bounded, as Elle: Tarjan's strongly connected components
//! (iterative) over the ww edges (G0), the ww and wr edges (G1c), a doubled graph whose states
//! are (transaction, arrived by an rw edge) where an rw edge may only leave a state not arrived
//! by one (G-single and G-nonadjacent: a cycle there is exactly a cycle with no two adjacent rw
//! edges), and all edges (G2). Each non-trivial component yields one witness, a cheapest cycle
//! through one of its edges by Dijkstra inside the component (rw edges cost more than any path
//! of other edges, so the witness has as few rw edges as that edge allows). Detection is
//! complete; only the label G-single versus G-nonadjacent is best effort: up to
//! [`RW_EDGES_TRIED_MAX`] rw edges of a component are tried for a cycle with one rw edge.

use std::collections::BTreeMap;

use crate::Violation;

mod cycles;
mod graph;
mod report;
#[cfg(test)]
mod tests;

/// The invariant's name in a [`Violation`] from [`check_snapshot_isolation`].
pub const NAME: &str = "snapshot-isolation";

/// The invariant's name in a [`Violation`] from [`check_serializability`].
pub const SERIALIZABILITY_NAME: &str = "serializability";

/// Per component of the doubled graph, how many rw edges are tried for a G-single witness
/// before the cycle is labelled G-nonadjacent (module doc, "Cycle search").
pub const RW_EDGES_TRIED_MAX: usize = 16;

/// A recorded transactional history.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// Keys with a known initial value; every other key starts absent.
    pub initial: BTreeMap<String, u64>,
    /// Every transaction, in any order.
    pub transactions: Vec<Transaction>,
}

/// One transaction as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transaction {
    /// Unique across the history; messages call it `T<id>`.
    pub id: u64,
    /// The client (process) that ran it (only used in messages).
    pub client: u64,
    /// When the client began it, in nanoseconds.
    pub call_nanos: u64,
    /// When the outcome came back, or the client gave up, in nanoseconds.
    pub return_nanos: u64,
    /// Whether it committed.
    pub outcome: Outcome,
    /// Its reads and writes, in program order.
    pub operations: Vec<Operation>,
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The store acknowledged the commit.
    Committed {
        /// The store's commit order number (unique), if it told one; orders versions.
        commit_order: Option<u64>,
    },
    /// The store aborted it; none of its writes may be seen.
    Aborted,
    /// Timeout or crash: it may or may not have committed.
    Unknown,
}

/// One read or write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    /// A read of `key` that observed `value` (`None`: absent).
    Read {
        /// The key read.
        key: String,
        /// What the read returned.
        value: Option<u64>,
    },
    /// A write of `value` to `key`.
    Write {
        /// The key written.
        key: String,
        /// The value written, unique per key across the history.
        value: u64,
    },
}

/// The kind of a dependency edge between two transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// ww: the target installed the version right after the source's.
    WriteWrite,
    /// wr: the target read the source's installed version.
    WriteRead,
    /// rw (anti-dependency): the source read a version the target's directly follows.
    ReadWrite,
}

/// One edge of a cycle, between transaction ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The id of the transaction the edge leaves.
    pub source: u64,
    /// The id of the transaction the edge enters.
    pub target: u64,
    /// What relates them.
    pub kind: EdgeKind,
    /// The key they conflict on (the smallest, if several).
    pub key: String,
}

/// The class of a dependency cycle (module doc, "Edges and anomalies").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CycleClass {
    /// Only ww edges.
    G0,
    /// ww and wr edges, at least one wr.
    G1c,
    /// Exactly one rw edge.
    GSingle,
    /// Two or more rw edges, no two adjacent.
    GNonadjacent,
    /// Two or more rw edges, some adjacent: allowed under snapshot isolation.
    G2,
}

/// One anomaly found in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// `reader` observed a value of `key` that no write carried (`None`: absent, though the
    /// key had an initial value).
    GarbageRead {
        /// The reading transaction's id.
        reader: u64,
        /// The key read.
        key: String,
        /// What it observed.
        value: Option<u64>,
    },
    /// `transaction` read `observed` where its own last read or write of `key` was `expected`.
    Internal {
        /// The transaction's id.
        transaction: u64,
        /// The key read.
        key: String,
        /// The value of its own previous read or write of the key.
        expected: Option<u64>,
        /// What the read returned.
        observed: Option<u64>,
    },
    /// `transaction` read `value` of `key`, which it only wrote later itself.
    FutureRead {
        /// The transaction's id.
        transaction: u64,
        /// The key read.
        key: String,
        /// The value it read before writing it.
        value: u64,
    },
    /// G1a: `reader` observed `value` of `key`, written by the aborted `writer`.
    AbortedRead {
        /// The reading transaction's id.
        reader: u64,
        /// The aborted writer's id.
        writer: u64,
        /// The key read.
        key: String,
        /// The value read.
        value: u64,
    },
    /// G1b: `reader` observed `value` of `key`, which `writer` later overwrote itself.
    IntermediateRead {
        /// The reading transaction's id.
        reader: u64,
        /// The writer's id.
        writer: u64,
        /// The key read.
        key: String,
        /// The intermediate value read.
        value: u64,
    },
    /// A dependency cycle: its edges in order, the last one entering the first one's source.
    Cycle {
        /// What kind of cycle it is.
        class: CycleClass,
        /// The cycle's edges.
        edges: Vec<Edge>,
    },
}

impl Anomaly {
    /// Whether snapshot isolation forbids it (all but G2 cycles do).
    pub fn forbidden_by_snapshot_isolation(&self) -> bool {
        !matches!(self, Anomaly::Cycle { class: CycleClass::G2, .. })
    }
}

/// What [`analyze`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// Every anomaly found: non-cycle ones in history order, then cycles by class.
    pub anomalies: Vec<Anomaly>,
    /// Transactions in the history.
    pub transaction_count: usize,
    /// Transactions in the graph: committed, or unknown but read.
    pub graph_transaction_count: usize,
}

impl Analysis {
    /// No anomaly that snapshot isolation forbids.
    pub fn is_snapshot_isolated(&self) -> bool {
        self.anomalies.iter().all(|anomaly| !anomaly.forbidden_by_snapshot_isolation())
    }

    /// No anomaly at all: the graph is acyclic, so some serial order explains the history.
    pub fn is_serializable(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Builds the dependency graph of `history` and finds every anomaly (module doc).
///
/// # Panics
///
/// On a malformed history (a bug in the recorder or workload): two transactions with one id,
/// two writes of one value to one key (or a write of a key's initial value), two transactions
/// with one commit order number, or a return before its call.
pub fn analyze(history: &History) -> Analysis {
    let mut anomalies = Vec::new();
    let dependency_graph = graph::build(history, &mut anomalies);
    anomalies.extend(cycles::find(&dependency_graph));
    let analysis = Analysis {
        anomalies,
        transaction_count: history.transactions.len(),
        graph_transaction_count: dependency_graph.transactions.len(),
    };
    assert!(analysis.graph_transaction_count <= analysis.transaction_count);
    analysis
}

/// `Ok` iff `history` shows no anomaly snapshot isolation forbids; else a [`Violation`] of
/// [`NAME`] listing each, for example `G-single: T3 -rw(x)-> T7 -wr(y)-> T3`, and the
/// transactions involved. Panics as [`analyze`] does.
pub fn check_snapshot_isolation(history: &History) -> Result<(), Violation> {
    let analysis = analyze(history);
    if analysis.is_snapshot_isolated() {
        return Ok(());
    }
    let forbidden: Vec<&Anomaly> = analysis
        .anomalies
        .iter()
        .filter(|anomaly| anomaly.forbidden_by_snapshot_isolation())
        .collect();
    let message = report::message(history, &analysis, &forbidden);
    Err(Violation::new(NAME, message))
}

/// `Ok` iff `history` is serializable (no anomaly, G2 included); else a [`Violation`] of
/// [`SERIALIZABILITY_NAME`] listing each. Panics as [`analyze`] does.
pub fn check_serializability(history: &History) -> Result<(), Violation> {
    let analysis = analyze(history);
    if analysis.is_serializable() {
        return Ok(());
    }
    let all: Vec<&Anomaly> = analysis.anomalies.iter().collect();
    let message = report::message(history, &analysis, &all);
    Err(Violation::new(SERIALIZABILITY_NAME, message))
}
