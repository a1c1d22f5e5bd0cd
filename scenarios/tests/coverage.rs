//! The coverage a run records: fault kinds begun and (fault kind, node state) situations.
//!
//! Goal: a few seeds of the register and LSM scenarios report what they explored, the systems'
//! own state labels included; the record agrees with the plan and with the fault count; and
//! recording changes nothing (the same seed gives the same trace and the same coverage).
//! Method: run fixed seeds and look at `Outcome::coverage`.

use std::collections::BTreeSet;

use scenarios::{Outcome, RunOptions, run_seed};

fn outcomes(name: &str, seeds: std::ops::Range<u64>) -> Vec<Outcome> {
    let scenario = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    seeds.map(|seed| run_seed(scenario.as_ref(), seed, &RunOptions::default())).collect()
}

/// What seeds 1 to 4 of `name` explored: the kinds begun and the situation labels met.
#[track_caller]
fn check(name: &str, system_labels: &[&str]) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for outcome in outcomes(name, 1..5) {
        let coverage = &outcome.coverage;
        assert_eq!(coverage.fault_count(), outcome.metrics.fault_count, "{}", outcome.headline());
        // Every kind begun was in the plan, and every kind begun hit at least one node.
        let planned: BTreeSet<&str> =
            outcome.plan.faults.iter().map(|fault| fault.kind.class().name()).collect();
        for (kind, count) in &coverage.faults {
            assert!(*count > 0 && planned.contains(kind.as_str()), "{kind}");
            let hits: u64 = coverage.situations[kind].values().sum();
            assert!(hits >= *count, "{kind}: {count} faults, {hits} nodes hit");
        }
        kinds.extend(coverage.faults.keys().cloned());
        labels.extend(coverage.situations.values().flat_map(|states| states.keys().cloned()));
    }
    assert!(!kinds.is_empty(), "{name}: no fault kind begun");
    assert!(!labels.is_empty(), "{name}: no situation");
    // The system's own labels show, and each is one the scenario declares.
    let system: Vec<&str> =
        labels.iter().filter_map(|label| label.split_once('/')).map(|s| s.1).collect();
    assert!(!system.is_empty(), "{name}: no system label in {labels:?}");
    assert!(system.iter().all(|label| system_labels.contains(label)), "{name}: {labels:?}");
    kinds
}

#[test]
fn register_abd_reports_kinds_and_situations() {
    let labels = ["recovering", "idle", "appending", "syncing"];
    let kinds = check("register-abd", &labels);
    assert!(kinds.len() >= 3, "{kinds:?}");
}

#[test]
fn lsm_crash_reports_kinds_and_situations() {
    let labels = [
        "closing",
        "user-flush",
        "user-compaction",
        "writing-sync",
        "writing",
        "reading",
        "opening",
        "idle",
        "final-reads",
        "manifest",
        "flush",
        "compaction",
        "log-sync",
        "recovery",
    ];
    let kinds = check("lsm-crash", &labels);
    assert!(kinds.contains("crash"), "{kinds:?}");
}

/// Recording reads state without touching the world: two runs of a seed agree in trace and
/// coverage.
#[test]
fn coverage_is_deterministic() {
    for name in ["register-crash", "lsm-crash"] {
        let (first, again) = (outcomes(name, 3..4), outcomes(name, 3..4));
        assert_eq!(first[0].trace_hash, again[0].trace_hash, "{name}");
        assert_eq!(first[0].coverage, again[0].coverage, "{name}");
    }
}
