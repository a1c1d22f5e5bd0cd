//! Seeds that once found a bug, each run under `cargo test` so the bug stays fixed.
//!
//! Goal: a seed that failed a sweep passes for good. Method: run the seed's plan and require a
//! pass; the comment on each test names the bug and the fix.

use scenarios::outcome::Verdict;
use scenarios::runner::{RunOptions, run_seed};
use scenarios::testing::failure_message;

#[track_caller]
fn check_passes(name: &str, seed: u64) {
    let scenario = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let outcome = run_seed(scenario.as_ref(), seed, &RunOptions::default());
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", failure_message(scenario.as_ref(), &outcome));
}

/// A node dropped anti-entropy value fragments (`ValuePart`) because its response router did
/// not list them, so every pull from a peer holding a set larger than one datagram stalled and
/// a lost counter delta was never repaired ("counter c1=166, above every attempted sum 165").
#[test]
fn gossip_cluster_seed_0xf_value_fragments_reach_the_session() {
    check_passes("gossip-cluster", 0xf);
}

/// A value too large for one datagram changed between two answers of one pull session, and the
/// requester spliced fragments of the two encodings into a value that decoded cleanly but held
/// an element nobody inserted ("n0 holds n33-g0-102 in set s8, which nobody inserted"). Value
/// fragments now carry the digest of their whole encoding: different encodings never combine,
/// and the reassembled bytes are checked against it.
#[test]
fn gossip_cluster_seed_0xbe4_value_fragments_of_two_encodings_never_combine() {
    check_passes("gossip-cluster", 0xbe4);
}

/// The change-stream consumer of `docdb-txn` could not start from the beginning of the history
/// ("resume point is no longer in the change history (oldest commit 3)"): docdb judged trimmed
/// history by the oldest change key, and the first commits (index builds) wrote no events.
/// It now derives the trimmed commits from the last commit number and the history length.
#[test]
fn docdb_txn_seed_0x14_commits_without_events_are_not_lost_history() {
    check_passes("docdb-txn", 0x14);
}
