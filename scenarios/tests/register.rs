//! Seeded runs of the register scenarios under `cargo test`.
//!
//! Goal: every scenario passes its default seeds, and a failure names the seed and the command
//! that replays it. Method: `scenarios::testing::check_seeds`, which honours `SIM_SEED` and
//! `SIM_SEEDS`.

use scenarios::testing::check_seeds;

fn check(name: &str) {
    let scenario = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let outcomes = check_seeds(scenario.as_ref());
    assert!(!outcomes.is_empty());
    for outcome in &outcomes {
        assert!(outcome.metrics.op_ok_count > 0, "{}: no operation completed", outcome.headline());
    }
}

#[test]
fn register_abd() {
    check("register-abd");
}

#[test]
fn register_crash() {
    check("register-crash");
}

#[test]
fn wireguard_mesh() {
    check("wireguard-mesh");
}

#[test]
fn lsm_crash() {
    check("lsm-crash");
}

#[test]
fn gossip_cluster() {
    check("gossip-cluster");
}

/// Sweep-only: runs with `SIM_SEED`/`SIM_SEEDS` (release build advised).
#[test]
fn gossip_large() {
    let scenario = scenarios::find("gossip-large").expect("scenario exists");
    for outcome in check_seeds(scenario.as_ref()) {
        assert!(outcome.metrics.op_ok_count > 0, "{}", outcome.headline());
    }
}

#[test]
fn docdb_txn() {
    check("docdb-txn");
}

#[test]
fn coordinator_churn() {
    check("coordinator-churn");
}

/// The whole mesh: coordinator, docdb, LSM, WireGuard, gossip and traffic, from one seed.
#[test]
fn mesh() {
    check("mesh");
}
