//! Seeded scenarios: a topology, a seeded workload, a seeded fault plan (the nemesis) and a
//! simulated duration, then a heal and a healed phase; the recorded history goes to the
//! checkers of the `invariants` crate.
//!
//! Map:
//! - `swarm`: the run's shape (node counts, phase lengths, network, workload mix), drawn from
//!   the seed within a scenario's `Bounds`.
//! - `plan`: faults as serde data (`PlanFile`): drawn from the seed, written, read, replayed.
//! - `coverage`: what a run explored: fault kinds begun, and (fault kind, node state)
//!   situations, with `NodeState`, the cell a scenario's nodes report their state through.
//! - `nemesis`: plays a plan on a `sim::world::World`, overlapping faults included.
//! - `runner`: the `Scenario` and `Workload` traits and `run_plan`: faulty phase, heal, healed
//!   phase, safety and liveness checks, `Outcome`.
//! - `outcome`: `Verdict` (pass, safety violation, liveness failure, panic, no progress) with
//!   distinct exit codes, `Metrics`, `Outcome`.
//! - `shrink`: delta debugging over a failing plan's faults and workload length.
//! - `testing`: `SIM_SEED`/`SIM_SEEDS` for `cargo test`, failure messages with replay commands.
//! - `lsm`: `lsm-crash`, the LSM store under crashes, torn writes, I/O errors, bit flips and
//!   misdirected writes, close races and write bursts (and, with `planted-bugs`, three bugs the
//!   store once had).
//! - `wireguard`: `wireguard-mesh`, WireGuard devices in a full mesh plus an attacker.
//! - `docdb`: `docdb-txn`, document database transactions, indexes and change streams under
//!   crashes and disk faults, checked for snapshot isolation, durability and exactly-once events.
//! - `coordinator`: `coordinator-churn`, the control plane and agents with WireGuard devices
//!   under churn, crashes and partitions, checked against a hand-written policy oracle.
//! - `gossip`: `gossip-cluster`, membership, broadcast and anti-entropy under churn.
//! - `register`: a small ABD quorum register written for these tests (and, with feature
//!   `planted-bugs`, the same register with known bugs the harness must find).
//!
//! Invariant: a run is a pure function of its `PlanFile`; only `Metrics::wall_nanos` varies.

pub mod coordinator;
pub mod coverage;
pub mod docdb;
pub mod gossip;
pub mod lsm;
mod mesh;
pub mod nemesis;
pub mod oplog;
pub mod outcome;
pub mod plan;
pub mod register;
pub mod runner;
pub mod shrink;
pub mod swarm;
pub mod testing;
pub mod wireguard;

pub use coverage::{Coverage, NodeState};
pub use outcome::{BuggifyFires, Metrics, Outcome, SiteFires, Verdict};
pub use plan::{Fault, FaultClass, FaultKind, PlanFile};
pub use runner::{RunOptions, Scenario, Workload, draw_plan, run_plan, run_seed};

/// Every scenario of this build, in `ghostmesh list` order.
pub fn all() -> Vec<Box<dyn Scenario>> {
    let mut list: Vec<Box<dyn Scenario>> = Vec::new();
    for scenario in register::scenarios() {
        list.push(Box::new(scenario));
    }
    for scenario in lsm::scenarios() {
        list.push(Box::new(scenario));
    }
    list.push(Box::new(wireguard::WireguardMesh::CORRECT));
    list.push(Box::new(gossip::GossipCluster::SMALL));
    list.push(Box::new(gossip::GossipCluster::LARGE));
    list.push(Box::new(docdb::DocdbTxn::CORRECT));
    list.push(Box::new(coordinator::CoordinatorChurn::CORRECT));
    list.push(Box::new(coordinator::CoordinatorChurn::MESH));
    if cfg!(feature = "planted-bugs") {
        list.push(Box::new(docdb::DocdbTxn::PLANTED));
        list.push(Box::new(docdb::DocdbTxn::PLANTED_LOST_UPDATE));
        list.push(Box::new(wireguard::WireguardMesh::PLANTED_REPLAY));
        list.push(Box::new(wireguard::WireguardMesh::PLANTED_SLIDE));
        list.push(Box::new(gossip::GossipCluster::PLANTED_STALE_REFUTE));
        list.push(Box::new(gossip::GossipCluster::PLANTED_PURGE_TTL));
        list.push(Box::new(coordinator::CoordinatorChurn::PLANTED_STALE_REMOVAL));
        list.push(Box::new(coordinator::CoordinatorChurn::PLANTED_ADDRESS_REUSE));
    }
    list
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Box<dyn Scenario>> {
    all().into_iter().find(|scenario| scenario.name() == name)
}

fn feature_flag(scenario: &dyn Scenario) -> String {
    scenario.feature().map(|feature| format!(" --features scenarios/{feature}")).unwrap_or_default()
}

/// The paste-able command that replays `seed` of `scenario` with a full trace. It builds with
/// `--profile sim`, as `ci/sweep` does, so a failure only a debug assertion catches replays.
pub fn replay_command(scenario: &dyn Scenario, seed: u64) -> String {
    let features = feature_flag(scenario);
    format!("cargo run --profile sim{features} -- replay {} --seed {seed:#x}", scenario.name())
}

/// The paste-able command that reruns `seed` of `scenario` as a test (`--profile sim`, as
/// `replay_command`).
pub fn test_command(scenario: &dyn Scenario, seed: u64) -> String {
    let features = feature_flag(scenario);
    let test = scenario.name().replace('-', "_");
    format!("SIM_SEED={seed:#x} cargo test --profile sim -p scenarios{features} {test}")
}
