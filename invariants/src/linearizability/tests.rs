//! Tests of the register linearizability checker.
//!
//! Goal: the checker accepts exactly the histories an atomic register can produce and explains
//! every rejection. Method: hand-written classic cases with snapshotted counterexamples; a
//! proptest that simulates a real atomic register (every operation takes effect at a random
//! instant inside its interval) and checks that its histories always pass, and that mutating
//! one read to a never-written value always fails; and a timing test on large histories.

use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000_000;

/// An operation on key `x` over `[call_ms, return_ms]` (`None`: never returned).
fn operation(call_ms: u64, return_ms: Option<u64>, input: Input, output: Output) -> Operation {
    Operation {
        client: 0,
        key: "x".to_string(),
        call_nanos: call_ms * MS,
        return_nanos: return_ms.map(|return_ms| return_ms * MS),
        input,
        output,
    }
}

/// An acknowledged write of `value` by `client`.
fn write(client: u64, call_ms: u64, return_ms: u64, value: u64) -> Operation {
    let output = Output::WriteOk;
    Operation { client, ..operation(call_ms, Some(return_ms), Input::Write(value), output) }
}

/// A write of `value` by `client` whose outcome is unknown.
fn write_unknown(client: u64, call_ms: u64, value: u64) -> Operation {
    Operation { client, ..operation(call_ms, None, Input::Write(value), Output::Unknown) }
}

/// A read by `client` that returned `value`.
fn read(client: u64, call_ms: u64, return_ms: u64, value: Option<u64>) -> Operation {
    let output = Output::Read(value);
    Operation { client, ..operation(call_ms, Some(return_ms), Input::Read, output) }
}

/// `operation` on `key` instead of `x`.
fn on(key: &str, operation: Operation) -> Operation {
    Operation { key: key.to_string(), ..operation }
}

#[track_caller]
fn check(history: &[Operation]) -> String {
    match check_register_history(history, STEPS_MAX_DEFAULT) {
        CheckResult::Ok => "ok".to_string(),
        CheckResult::Unknown { key, steps } => format!("unknown: key {key} after {steps} steps"),
        CheckResult::Violation(violation) => violation.to_string(),
    }
}

#[test]
fn empty_and_initial_reads() {
    assert_eq!(check(&[]), "ok");
    assert_eq!(check(&[read(1, 0, 1, None)]), "ok");
    insta::assert_snapshot!(check(&[read(3, 12, 14, Some(7))]), @r#"
    linearizability: key "x": no linearization exists for its 1 operation
    longest linearizable prefix found (0 operations):
    nothing can be linearized next (the register was absent):
      read by client 3 at [12.000ms, 14.000ms] returned 7 but the register was absent
    "#);
}

#[test]
fn concurrent_write_and_read_may_see_either_value() {
    let write = write(1, 0, 10, 1);
    assert_eq!(check(&[write.clone(), read(2, 2, 5, None)]), "ok");
    assert_eq!(check(&[write.clone(), read(2, 2, 5, Some(1))]), "ok");
    assert_eq!(check(&[write.clone(), read(2, 10, 12, Some(1))]), "ok", "touching intervals");
    // Seeing the new value and then the old one is not atomic.
    let history = [write, read(2, 2, 3, Some(1)), read(3, 4, 5, None)];
    insta::assert_snapshot!(check(&history), @r#"
    linearizability: key "x": no linearization exists for its 3 operations
    longest linearizable prefix found (2 operations):
      1. write of 1 by client 1 at [0.000ms, 10.000ms]
      2. read by client 2 at [2.000ms, 3.000ms] returned 1
    nothing can be linearized next (the register held 1):
      read by client 3 at [4.000ms, 5.000ms] returned absent but the register held 1
    "#);
}

#[test]
fn stale_read_after_completed_write_fails() {
    let history = [write(1, 0, 1, 1), write(1, 2, 3, 2), read(2, 4, 5, Some(1))];
    insta::assert_snapshot!(check(&history), @r#"
    linearizability: key "x": no linearization exists for its 3 operations
    longest linearizable prefix found (2 operations):
      1. write of 1 by client 1 at [0.000ms, 1.000ms]
      2. write of 2 by client 1 at [2.000ms, 3.000ms]
    nothing can be linearized next (the register held 2):
      read by client 2 at [4.000ms, 5.000ms] returned 1 but the register held 2
    "#);
}

#[test]
fn unknown_write_may_or_may_not_take_effect() {
    let before = [write(1, 0, 1, 1), write_unknown(2, 2, 2)];
    let with = |reads: &[Operation]| [&before[..], reads].concat();
    assert_eq!(check(&with(&[read(3, 10, 11, Some(1))])), "ok", "never took effect");
    assert_eq!(check(&with(&[read(3, 10, 11, Some(2))])), "ok", "took effect");
    let late = [read(3, 10, 11, Some(1)), read(3, 500, 501, Some(2))];
    assert_eq!(check(&with(&late)), "ok", "took effect long after its call");
    let flicker = [read(3, 10, 11, Some(2)), read(3, 12, 13, Some(1))];
    insta::assert_snapshot!(check(&with(&flicker)), @r#"
    linearizability: key "x": no linearization exists for its 4 operations
    longest linearizable prefix found (3 operations):
      1. write of 1 by client 1 at [0.000ms, 1.000ms]
      2. write of 2 by client 2 at [2.000ms, unknown]
      3. read by client 3 at [10.000ms, 11.000ms] returned 2
    nothing can be linearized next (the register held 2):
      read by client 3 at [12.000ms, 13.000ms] returned 1 but the register held 2
    "#);
    // An unknown write cannot take effect before it was called.
    insta::assert_snapshot!(check(&[read(3, 0, 1, Some(2)), write_unknown(2, 2, 2)]), @r#"
    linearizability: key "x": no linearization exists for its 2 operations
    longest linearizable prefix found (0 operations):
    nothing can be linearized next (the register was absent):
      read by client 3 at [0.000ms, 1.000ms] returned 2 but the register was absent
    "#);
}

/// With two writes of 5, the unknown one may be the one a read saw, long after its call.
#[test]
fn unknown_write_of_a_repeated_value_may_take_effect_late() {
    let history =
        [write(1, 0, 1, 5), write_unknown(2, 2, 5), write(1, 3, 4, 6), read(3, 10, 11, Some(5))];
    assert_eq!(check(&history), "ok");
    assert_eq!(check(&history[..3]), "ok");
    let without_unknown = [&history[..1], &history[2..]].concat();
    insta::assert_snapshot!(check(&without_unknown), @r#"
    linearizability: key "x": no linearization exists for its 3 operations
    longest linearizable prefix found (2 operations):
      1. write of 5 by client 1 at [0.000ms, 1.000ms]
      2. write of 6 by client 1 at [3.000ms, 4.000ms]
    nothing can be linearized next (the register held 6):
      read by client 3 at [10.000ms, 11.000ms] returned 5 but the register held 6
    "#);
}

/// A malformed history is a bug in the recorder, so the checker asserts.
#[test]
fn malformed_operations_are_rejected_loudly() {
    let malformed = [
        operation(0, Some(1), Input::Read, Output::WriteOk),
        operation(0, Some(1), Input::Write(1), Output::Read(None)),
        operation(0, None, Input::Write(1), Output::WriteOk),
        operation(5, Some(4), Input::Read, Output::Read(None)),
    ];
    for operation in malformed {
        let history = [operation];
        let outcome = std::panic::catch_unwind(|| check_register_history(&history, 10));
        assert!(outcome.is_err(), "accepted {:?}", history[0]);
    }
}

#[test]
fn unknown_reads_constrain_nothing() {
    let unknown = operation(0, None, Input::Read, Output::Unknown);
    assert_eq!(check(&[write(1, 0, 1, 1), unknown]), "ok");
}

/// Write 1 is called first but must take effect after write 2: the search has to backtrack
/// out of the call-order linearization.
#[test]
fn linearizable_only_through_a_non_obvious_order() {
    let history = [
        write(1, 0, 10, 1),
        write(2, 1, 10, 2),
        read(3, 2, 3, Some(2)),
        read(3, 4, 5, Some(1)),
        read(4, 11, 12, Some(1)),
    ];
    assert_eq!(check(&history), "ok");
    let mut broken = history.clone();
    broken[4] = read(4, 11, 12, Some(2));
    insta::assert_snapshot!(check(&broken), @r#"
    linearizability: key "x": no linearization exists for its 5 operations
    longest linearizable prefix found (4 operations):
      1. write of 2 by client 2 at [1.000ms, 10.000ms]
      2. read by client 3 at [2.000ms, 3.000ms] returned 2
      3. write of 1 by client 1 at [0.000ms, 10.000ms]
      4. read by client 3 at [4.000ms, 5.000ms] returned 1
    nothing can be linearized next (the register held 1):
      read by client 4 at [11.000ms, 12.000ms] returned 2 but the register held 1
    "#);
}

/// At the dead end writes 3 and 4 could still go next, but nothing can save the read of 1.
#[test]
fn counterexample_names_candidates_that_fit_but_lead_nowhere() {
    let history = [
        write(1, 0, 1, 1),
        write(1, 2, 3, 2),
        write(2, 2, 20, 3),
        read(3, 4, 5, Some(1)),
        write(4, 4, 20, 4),
    ];
    insta::assert_snapshot!(check(&history), @r#"
    linearizability: key "x": no linearization exists for its 5 operations
    longest linearizable prefix found (2 operations):
      1. write of 1 by client 1 at [0.000ms, 1.000ms]
      2. write of 2 by client 1 at [2.000ms, 3.000ms]
    nothing can be linearized next (the register held 2):
      write of 3 by client 2 at [2.000ms, 20.000ms] fits here, but every order after it fails
      read by client 3 at [4.000ms, 5.000ms] returned 1 but the register held 2
      write of 4 by client 4 at [4.000ms, 20.000ms] fits here, but every order after it fails
    "#);
}

#[test]
fn keys_are_checked_independently() {
    let history = [
        on("a", write(1, 0, 1, 1)),
        on("b", write(1, 0, 1, 2)),
        on("a", read(2, 2, 3, Some(1))),
        on("b", read(2, 2, 3, Some(1))),
    ];
    insta::assert_snapshot!(check(&history), @r#"
    linearizability: key "b": no linearization exists for its 2 operations
    longest linearizable prefix found (1 operation):
      1. write of 2 by client 1 at [0.000ms, 1.000ms]
    nothing can be linearized next (the register held 2):
      read by client 2 at [2.000ms, 3.000ms] returned 1 but the register held 2
    "#);
    assert_eq!(check(&history[..3]), "ok");
}

#[test]
fn counterexample_times_have_three_decimals_and_lists_are_capped() {
    let mut history: Vec<Operation> =
        (0..25).map(|index| write(1, 2 * index, 2 * index + 1, index)).collect();
    history.push(Operation {
        call_nanos: 50_250_000,
        return_nanos: Some(52_500_000),
        ..read(3, 0, 0, Some(7))
    });
    insta::assert_snapshot!(check(&history), @r#"
    linearizability: key "x": no linearization exists for its 26 operations
    longest linearizable prefix found (25 operations):
      ... 5 earlier
      6. write of 5 by client 1 at [10.000ms, 11.000ms]
      7. write of 6 by client 1 at [12.000ms, 13.000ms]
      8. write of 7 by client 1 at [14.000ms, 15.000ms]
      9. write of 8 by client 1 at [16.000ms, 17.000ms]
      10. write of 9 by client 1 at [18.000ms, 19.000ms]
      11. write of 10 by client 1 at [20.000ms, 21.000ms]
      12. write of 11 by client 1 at [22.000ms, 23.000ms]
      13. write of 12 by client 1 at [24.000ms, 25.000ms]
      14. write of 13 by client 1 at [26.000ms, 27.000ms]
      15. write of 14 by client 1 at [28.000ms, 29.000ms]
      16. write of 15 by client 1 at [30.000ms, 31.000ms]
      17. write of 16 by client 1 at [32.000ms, 33.000ms]
      18. write of 17 by client 1 at [34.000ms, 35.000ms]
      19. write of 18 by client 1 at [36.000ms, 37.000ms]
      20. write of 19 by client 1 at [38.000ms, 39.000ms]
      21. write of 20 by client 1 at [40.000ms, 41.000ms]
      22. write of 21 by client 1 at [42.000ms, 43.000ms]
      23. write of 22 by client 1 at [44.000ms, 45.000ms]
      24. write of 23 by client 1 at [46.000ms, 47.000ms]
      25. write of 24 by client 1 at [48.000ms, 49.000ms]
    nothing can be linearized next (the register held 24):
      read by client 3 at [50.250ms, 52.500ms] returned 7 but the register held 24
    "#);
}

#[test]
fn search_bound_gives_unknown_and_violations_win() {
    // Three steps linearize these three operations, one per step.
    let mut history = vec![write(1, 0, 1, 1), read(2, 2, 3, Some(1)), read(2, 4, 5, Some(1))];
    let result = check_register_history(&history, 2);
    assert_eq!(result, CheckResult::Unknown { key: "x".to_string(), steps: 2 });
    assert_eq!(check_register_history(&history, 3), CheckResult::Ok);
    // Two steps refute a lone bad read: it fails at its call, then nothing is left to undo.
    history.push(on("y", read(1, 0, 1, Some(9))));
    let result = check_register_history(&history, 2);
    assert!(matches!(result, CheckResult::Violation(_)), "{result:?}");
}

/// One operation of a simulated atomic register (see `simulate`).
#[derive(Clone, Debug)]
struct Spec {
    client: u64,
    key: u8,
    call_nanos: u64,
    duration_nanos: u64,
    /// Where in its interval it takes effect, in thousandths.
    point_permille: u64,
    write: bool,
    /// Its reply never came (it may still take effect if it is a write).
    lost: bool,
    /// For a lost write: whether it took effect at all.
    effect: bool,
}

/// The history of an atomic register running `specs`: each operation takes effect at one
/// instant inside its interval; writes carry unique values (their index plus one).
fn simulate(specs: &[Spec]) -> Vec<Operation> {
    let point = |spec: &Spec| spec.call_nanos + spec.duration_nanos * spec.point_permille / 1000;
    let mut order: Vec<usize> = (0..specs.len())
        .filter(|&index| !specs[index].lost || (specs[index].write && specs[index].effect))
        .collect();
    order.sort_by_key(|&index| (point(&specs[index]), index));
    let mut registers = BTreeMap::new();
    let mut outputs = vec![Output::Unknown; specs.len()];
    for index in order {
        let spec = &specs[index];
        if spec.write {
            registers.insert(spec.key, index as u64 + 1);
            outputs[index] = if spec.lost { Output::Unknown } else { Output::WriteOk };
        } else {
            outputs[index] = Output::Read(registers.get(&spec.key).copied());
        }
    }
    let operations = specs.iter().zip(outputs).enumerate();
    operations
        .map(|(index, (spec, output))| Operation {
            client: spec.client,
            key: format!("k{}", spec.key),
            call_nanos: spec.call_nanos,
            return_nanos: (!spec.lost).then_some(spec.call_nanos + spec.duration_nanos),
            input: if spec.write { Input::Write(index as u64 + 1) } else { Input::Read },
            output,
        })
        .collect()
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    let timing = (0u64..8, 0u8..3, 0u64..1_000, 0u64..300, 0u64..=1000);
    let kind = (any::<bool>(), prop::bool::weighted(0.1), any::<bool>());
    (timing, kind).prop_map(|((client, key, call, duration, point_permille), kind)| Spec {
        client,
        key,
        call_nanos: call * 1_000,
        duration_nanos: duration * 1_000,
        point_permille,
        write: kind.0,
        lost: kind.1,
        effect: kind.2,
    })
}

/// Whether one key's `history` is linearizable, by trying every order: the test oracle. It
/// does none of the checker's pruning: unknown writes are simply optional.
fn linearizable_by_brute_force(history: &[Operation]) -> bool {
    let unknown_read = |operation: &&Operation| {
        operation.input == Input::Read && operation.output == Output::Unknown
    };
    let operations: Vec<&Operation> = history.iter().filter(|op| !unknown_read(op)).collect();
    let mut placed = vec![false; operations.len()];
    extend_by_brute_force(&operations, &mut placed, None)
}

/// Tries every unplaced operation that real time allows next, from register `value`.
fn extend_by_brute_force(
    operations: &[&Operation],
    placed: &mut [bool],
    value: Option<u64>,
) -> bool {
    let pending = |index: usize, placed: &[bool]| {
        !placed[index] && operations[index].output != Output::Unknown
    };
    if !(0..operations.len()).any(|index| pending(index, placed)) {
        return true;
    }
    for next in 0..operations.len() {
        let call_nanos = operations[next].call_nanos;
        let blocked = (0..operations.len()).any(|other| {
            other != next
                && pending(other, placed)
                && operations[other].return_nanos < Some(call_nanos)
        });
        let Some(after) =
            (!placed[next] && !blocked).then(|| search::apply(value, operations[next])).flatten()
        else {
            continue;
        };
        placed[next] = true;
        let found = extend_by_brute_force(operations, placed, after);
        placed[next] = false;
        if found {
            return true;
        }
    }
    false
}

/// Small, dense, arbitrary histories of one key: many overlaps, ties and repeated values, so
/// both verdicts are common.
fn arbitrary_operation() -> impl Strategy<Value = Operation> {
    let value = prop_oneof![Just(None), (1u64..4).prop_map(Some)];
    let unknown = prop::bool::weighted(0.15);
    (0u64..3, 0u64..10, 0u64..5, any::<bool>(), value, unknown).prop_map(
        |(client, call, duration, is_write, value, unknown)| {
            let (input, output) = match (is_write, unknown) {
                (true, false) => (Input::Write(value.unwrap_or(1)), Output::WriteOk),
                (true, true) => (Input::Write(value.unwrap_or(1)), Output::Unknown),
                (false, false) => (Input::Read, Output::Read(value)),
                (false, true) => (Input::Read, Output::Unknown),
            };
            let return_nanos = (!unknown).then_some((call + duration) * MS);
            Operation {
                client,
                key: "x".to_string(),
                call_nanos: call * MS,
                return_nanos,
                input,
                output,
            }
        },
    )
}

/// A value no simulated write carries.
const NEVER_WRITTEN: u64 = 1_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn atomic_register_histories_are_linearizable(
        specs in prop::collection::vec(spec_strategy(), 0..40),
    ) {
        let history = simulate(&specs);
        prop_assert_eq!(check_register_history(&history, STEPS_MAX_DEFAULT), CheckResult::Ok);
    }

    #[test]
    fn verdict_matches_brute_force(history in prop::collection::vec(arbitrary_operation(), 0..8)) {
        let expected = linearizable_by_brute_force(&history);
        let result = check_register_history(&history, STEPS_MAX_DEFAULT);
        prop_assert!(!matches!(result, CheckResult::Unknown { .. }), "{:?}", result);
        prop_assert_eq!(result == CheckResult::Ok, expected, "{:?}", result);
    }

    #[test]
    fn a_never_written_read_is_never_linearizable(
        specs in prop::collection::vec(spec_strategy(), 1..40),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut history = simulate(&specs);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&index| matches!(history[index].output, Output::Read(_)))
            .collect();
        prop_assume!(!reads.is_empty());
        let mutated = reads[pick.index(reads.len())];
        history[mutated].output = Output::Read(Some(NEVER_WRITTEN));
        let result = check_register_history(&history, STEPS_MAX_DEFAULT);
        let CheckResult::Violation(violation) = result else {
            return Err(TestCaseError::fail(format!("not a violation: {result:?}")));
        };
        prop_assert_eq!(violation.name(), NAME);
        let key = format!("key {:?}:", history[mutated].key);
        prop_assert!(violation.message.starts_with(&key), "{}", violation.message);
    }
}

/// `operation_count` operations by `client_count` clients over `key_count` keys: each client
/// issues its next operation 0-3 ms after its previous one returned, so about `client_count`
/// operations are in flight at once; one in fifty writes is lost.
fn busy_specs(seed: u64, operation_count: usize, key_count: u64, client_count: u64) -> Vec<Spec> {
    let mut state = seed;
    let mut random = move |bound: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = state;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) % bound
    };
    let mut free_nanos = vec![0u64; client_count as usize];
    let mut specs = Vec::with_capacity(operation_count);
    for _ in 0..operation_count {
        let client = random(client_count);
        let call_nanos = free_nanos[client as usize] + random(3 * MS);
        let duration_nanos = MS + random(9 * MS);
        free_nanos[client as usize] = call_nanos + duration_nanos;
        let write = random(2) == 0;
        specs.push(Spec {
            client,
            key: random(key_count) as u8,
            call_nanos,
            duration_nanos,
            point_permille: random(1001),
            write,
            lost: write && random(50) == 0,
            effect: random(2) == 0,
        });
    }
    specs.sort_by_key(|spec| spec.call_nanos);
    specs
}

/// Checks `history` and returns the verdict with the wall time it took.
#[allow(clippy::disallowed_methods, reason = "a timing test measures real time")]
fn timed(history: &[Operation]) -> (CheckResult, std::time::Duration) {
    let start = std::time::Instant::now();
    let result = check_register_history(history, STEPS_MAX_DEFAULT);
    (result, start.elapsed())
}

#[test]
fn two_thousand_operations_over_eight_keys_check_fast() {
    let history = simulate(&busy_specs(0x5eed, 2_000, 8, 5));
    let (result, elapsed) = timed(&history);
    assert_eq!(result, CheckResult::Ok);
    assert!(elapsed.as_millis() < 500, "took {elapsed:?}");
}

/// Ten clients on one key is far more concurrency than scenarios use; it stays fast thanks to
/// the register-specific pruning (module doc, step 6).
#[test]
fn three_thousand_operations_on_one_key_with_ten_clients_check_fast() {
    let mut history = simulate(&busy_specs(0xfeed, 3_000, 1, 10));
    let (result, elapsed) = timed(&history);
    assert_eq!(result, CheckResult::Ok);
    assert!(elapsed.as_millis() < 1_000, "took {elapsed:?}");
    // A stale read is refuted as fast: the intervals alone doom it (module doc, step 6b), so
    // the search need not exhaust every order of the 3000 operations before it.
    let last_read = history.iter().rposition(|operation| operation.input == Input::Read);
    let first_value = history.iter().find_map(|operation| match operation.input {
        Input::Write(value) => Some(value),
        Input::Read => None,
    });
    history[last_read.expect("some read")].output = Output::Read(first_value);
    let (result, elapsed) = timed(&history);
    assert!(matches!(result, CheckResult::Violation(_)), "{result:?}");
    assert!(elapsed.as_millis() < 1_000, "took {elapsed:?}");
}
