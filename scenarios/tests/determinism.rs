//! Determinism of every scenario family, and the pinned trace summaries of fixed seeds.
//!
//! Goal: the same seed gives a byte-identical trace (the trace hash covers every scheduling
//! decision, packet, disk operation and fault), and a change to any scenario's behaviour shows
//! up as a reviewed snapshot diff. Method: run each scenario's seed twice and compare; pin the
//! `Outcome::summary` of fixed seeds with insta.

use scenarios::{RunOptions, run_seed};

#[test]
fn every_scenario_is_deterministic() {
    let seed = 0x5eed;
    // Sweep-only scenarios share their family's code with a quick one checked here.
    for scenario in scenarios::all().into_iter().filter(|scenario| !scenario.sweep_only()) {
        let first = run_seed(scenario.as_ref(), seed, &RunOptions::default());
        let again = run_seed(
            scenario.as_ref(),
            seed,
            &RunOptions { record_trace: true, ..RunOptions::default() },
        );
        assert_eq!(first.trace_hash, again.trace_hash, "{} seed {seed:#x}", scenario.name());
        assert_eq!(first.summary(), again.summary());
        assert_eq!(first.history, again.history);
    }
}

#[test]
fn trace_summaries_of_fixed_seeds() {
    for name in ["register-abd", "register-crash"] {
        let scenario = scenarios::find(name).expect("scenario exists");
        for seed in [1u64, 2] {
            let outcome = run_seed(scenario.as_ref(), seed, &RunOptions::default());
            insta::assert_snapshot!(format!("{name}-{seed}"), outcome.summary());
        }
    }
}
