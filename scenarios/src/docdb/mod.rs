//! `docdb-txn`: the document database on one node, running concurrent multi-document,
//! multi-collection transactions under crashes, pauses, disk errors, bit flips and torn
//! unsynced writes.
//!
//! Workload (`node`): client tasks run transactions that read a few documents of a small key
//! set (by `_id`, sometimes through the `group` index), then write a few with `$set` or an
//! insert, each written value unique; some auto-commit operations (inserts into a log
//! collection, reads); an index on `group` built on both collections, at the start or in the
//! middle of the run so its build may be crashed; a change-stream consumer on collection `a`
//! that stores its resume token in the database after processing and resumes from it after
//! every restart. When a commit fails the node closes and reopens the database, as an operator
//! would; every opening is a recovery and checks the indexes.
//!
//! Safety (`check`): the history is snapshot isolated (Adya's graph, `invariants`), with each
//! commit's number from `CommitInfo` and unknown outcomes resolved by the change log; committed
//! transactions are atomic and durable (after the final crash and recovery each key holds the
//! value of its last committed writer); aborted ones are invisible; every index equals a
//! rebuild from its documents after every recovery; the consumer saw every event of `a` exactly
//! once, in commit order, across restarts; acknowledged auto-commit inserts survive.
//! Liveness: commits resume within the bound after the heal.
//!
//! The history's `ops` are its transactions as an op log (`oplog`), which `replay --html`
//! draws as bars; built when the history is asked for, no check reads it.
//!
//! With feature `planted-bugs`, `planted-docdb-index-outside-batch` runs the same workload on a
//! commit that writes index entries outside the transaction's batch, and
//! `planted-docdb-lost-update` on a commit that skips recording its writes for conflict checks
//! when it was the only open transaction before its write, though one may begin during it
//! (`docdb::planted`).

mod check;
mod node;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use invariants::Violation;
use invariants::snapshot_isolation::Operation;
use sim::world::{NodeId, SimError, World};

use crate::nemesis::at;
use crate::oplog::{OpLog, OpOutcome};
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

const FAULTS: &[FaultClass] =
    &[FaultClass::Crash, FaultClass::DiskFaults, FaultClass::DiskCorruption, FaultClass::Pause];

/// How a transaction (or an auto-commit operation) ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
enum Status {
    /// Cut by a crash before its commit returned.
    Pending,
    /// Committed with this commit number (0: it wrote nothing).
    Committed(u64),
    /// Refused with a write conflict: none of its writes may be seen.
    Aborted,
    /// The commit returned another error (storage): it may or may not have committed.
    Failed,
}

/// One transaction that reached its commit (or an auto-commit read).
#[derive(Clone, Debug)]
struct TxnRecord {
    client: u32,
    call_nanos: u64,
    return_nanos: Option<u64>,
    status: Status,
    /// Reads and writes in program order; keys are `"a/3"`, values the unique `v` fields.
    operations: Vec<Operation>,
}

/// One auto-commit insert into the log collection (`_id` is its position in the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogStatus {
    Pending,
    Acked,
    Failed,
}

/// A change event, as the final scan of the whole change log read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LoggedEvent {
    token: (u64, u32),
    collection: String,
    /// The key index of the document (`None` for documents outside the key set).
    key: Option<u32>,
    /// Its `v` after the change.
    value: Option<u64>,
}

/// What the final recovery found.
#[derive(Clone, Debug, Default)]
struct FinalState {
    values: Vec<Option<u64>>,
    log_ids: Vec<u64>,
    events: Vec<LoggedEvent>,
}

#[derive(Debug, Default)]
struct History {
    txns: Vec<TxnRecord>,
    /// The next value a write carries (unique across the run).
    next_value: u64,
    logs: Vec<LogStatus>,
    /// Change events of `a` the consumer processed (and has not rolled back to its token).
    delivered: Vec<(u64, u32)>,
    /// The highest resume token whose store the database acknowledged.
    acked_token: Option<(u64, u32)>,
    /// Openings of the database so far; `stopped` is the last opening told to close.
    epoch: u32,
    stopped: u32,
    index_built: bool,
    recoveries_verified: u32,
    early_aborts: u64,
    violations: Vec<Violation>,
    final_state: Option<FinalState>,
}

type Shared = Arc<Mutex<History>>;

fn lock(shared: &Shared) -> MutexGuard<'_, History> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Clone, Copy, Debug)]
struct Config {
    client_count: u32,
    key_count: u32,
    think_ms_max: u64,
    read_only_percent: u32,
    index_at: sim::Instant,
    stop_at: sim::Instant,
    planted: Option<Planted>,
}

/// The bug planted in docdb's commit (feature `planted-bugs`; `docdb::planted::PlantedBug`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Planted {
    IndexOutsideBatch,
    AloneBeforeWrite,
}

/// The transactions that reached their commit as an op log (`oplog`, the first
/// `OPS_RECORDED_MAX`) for `replay --html`: a bar from begin to the commit's return on the
/// lane of its client. Built from the history when asked for, so the run is untouched.
fn txn_log(txns: &[TxnRecord]) -> OpLog {
    let mut log = OpLog::default();
    for txn in txns {
        let mut keys = Vec::new();
        let mut words = Vec::new();
        for operation in &txn.operations {
            let (key, word) = match operation {
                Operation::Read { key, value: Some(value) } => {
                    (key, format!("read {key} = {value}"))
                }
                Operation::Read { key, value: None } => (key, format!("read {key} absent")),
                Operation::Write { key, value } => (key, format!("write {key} = {value}")),
            };
            if !keys.contains(key) {
                keys.push(key.clone());
            }
            words.push(word);
        }
        let what = if words.is_empty() {
            "txn with no reads or writes".to_string()
        } else {
            format!("txn [{}]", words.join(", "))
        };
        let slot = log.call(&format!("client {}", txn.client), what, keys, txn.call_nanos);
        let outcome = match txn.status {
            Status::Committed(_) => OpOutcome::Ok,
            Status::Aborted => OpOutcome::Failed,
            Status::Pending | Status::Failed => OpOutcome::Unknown,
        };
        if let Some(return_nanos) = txn.return_nanos {
            log.returned(slot, return_nanos, outcome);
        }
    }
    log
}

/// The `docdb-txn` scenario (and its planted-bug twin).
#[derive(Clone, Copy, Debug)]
pub struct DocdbTxn {
    name: &'static str,
    planted: Option<Planted>,
}

impl DocdbTxn {
    /// The correct database.
    pub const CORRECT: DocdbTxn = DocdbTxn { name: "docdb-txn", planted: None };
    /// The commit that writes index entries outside its batch.
    pub const PLANTED: DocdbTxn = DocdbTxn {
        name: "planted-docdb-index-outside-batch",
        planted: Some(Planted::IndexOutsideBatch),
    };
    /// The commit that decides it is alone before its write (a lost update).
    pub const PLANTED_LOST_UPDATE: DocdbTxn =
        DocdbTxn { name: "planted-docdb-lost-update", planted: Some(Planted::AloneBeforeWrite) };
}

impl Scenario for DocdbTxn {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        match self.planted {
            Some(Planted::IndexOutsideBatch) => {
                return "planted bug: docdb commits index entries outside the transaction's batch";
            }
            Some(Planted::AloneBeforeWrite) => {
                return "planted bug: docdb's commit decides no transaction can conflict with \
                        it before its write, not after (lost updates)";
            }
            None => {}
        }
        "docdb on one node: concurrent multi-document transactions over two collections, an \
         index built mid-run, a resuming change-stream consumer, under crashes, pauses, disk \
         errors and bit flips; final crash and recovery"
    }

    fn checks(&self) -> &'static [&'static str] {
        &[
            "snapshot-isolation",
            "atomicity",
            "durability",
            "index-consistency",
            "change-stream",
            "liveness",
        ]
    }

    fn feature(&self) -> Option<&'static str> {
        self.planted.map(|_| "planted-bugs")
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::exactly(1),
            client_count: Span::new(2, 4),
            key_count: Span::new(4, 12),
            faulty_ms: Span::new(1_500, 6_000),
            healed_ms: 2_500,
            liveness_bound_ms: 2_500,
            fault_count: Span::new(1, 6),
            fault_classes: FAULTS,
            link_loss_percent_max: 0,
            think_ms: Span::new(5, 25),
            read_percent: Span::new(10, 40),
        }
    }

    fn topology(&self, _: &Swarm) -> Topology {
        Topology { servers: vec!["db".to_string()], clients: Vec::new() }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        // The index is built at the start, or a quarter, half or three quarters into the
        // faulty phase, where a crash may cut its build.
        let index_at_ms = swarm.faulty_ms * u64::from(swarm.key_count % 4) / 4;
        let config = Config {
            client_count: swarm.client_count.max(1),
            key_count: swarm.key_count.max(2),
            think_ms_max: swarm.think_ms_max,
            read_only_percent: swarm.read_percent,
            index_at: at(index_at_ms),
            stop_at: at(swarm.total_ms()),
            planted: self.planted,
        };
        let shared: Shared = Arc::default();
        let activity = lsm::Activity::new();
        let (boot_shared, boot_activity) = (shared.clone(), activity.clone());
        let node = world.add_node_with("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), move |env| {
            node::db_main(env, config, boot_shared.clone(), boot_activity.clone())
        });
        Box::new(DocdbRun { node, shared, activity })
    }
}

struct DocdbRun {
    node: NodeId,
    shared: Shared,
    /// The store's own work running now, under every opening of the database.
    activity: lsm::Activity,
}

impl Workload for DocdbRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        // A final crash: only what was made durable may count.
        world.crash(self.node);
        world.restart(self.node);
        let shared = self.shared.clone();
        let env = world.env(self.node);
        world.block_on(self.node, node::FINAL_BUDGET, async move {
            while lock(&shared).final_state.is_none() {
                sim::Env::sleep(&env, std::time::Duration::from_millis(10)).await;
            }
        })
    }

    fn check_safety(&self) -> Result<(), Violation> {
        check::safety(&lock(&self.shared))
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let history = lock(&self.shared);
        let progress: Vec<u64> = history
            .txns
            .iter()
            .filter(|txn| matches!(txn.status, Status::Committed(commit) if commit > 0))
            .filter_map(|txn| txn.return_nanos)
            .collect();
        invariants::liveness::check_progress_after_heal(healed_nanos, &progress, bound_nanos)
    }

    fn history(&self) -> serde_json::Value {
        let history = lock(&self.shared);
        let count = |wanted: fn(&Status) -> bool| {
            history.txns.iter().filter(|txn| wanted(&txn.status)).count()
        };
        let (ops, ops_not_recorded) = txn_log(&history.txns).to_json();
        serde_json::json!({
            "txns_committed": count(|status| matches!(status, Status::Committed(c) if *c > 0)),
            "txns_read_only": count(|status| *status == Status::Committed(0)),
            "txns_aborted": count(|status| *status == Status::Aborted),
            "txns_unknown": count(|status| matches!(status, Status::Pending | Status::Failed)),
            "txns_aborted_early": history.early_aborts,
            "log_inserts_acked": history.logs.iter().filter(|l| **l == LogStatus::Acked).count(),
            "events_delivered": history.delivered.len(),
            "openings": history.epoch,
            "recoveries_verified": history.recoveries_verified,
            "index_built": history.index_built,
            "events_logged": history.final_state.as_ref().map(|state| state.events.len()),
            "ops": ops,
            "ops_not_recorded": ops_not_recorded,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = lock(&self.shared);
        let done = history.txns.iter().filter(|txn| matches!(txn.status, Status::Committed(_)));
        let acked_logs = history.logs.iter().filter(|log| **log == LogStatus::Acked).count();
        let issued = history.txns.len() + history.logs.len();
        (issued as u64, (done.count() + acked_logs) as u64)
    }

    /// The LSM store's own work under the database, if any runs (`manifest`, `flush`,
    /// `compaction`, `log-sync`, `recovery`); otherwise only the world's view.
    fn node_state(&self, node: &str) -> Option<&'static str> {
        assert_eq!(node, "db", "the database's one node");
        self.activity.label()
    }
}
