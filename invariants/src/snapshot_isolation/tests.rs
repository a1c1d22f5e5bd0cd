//! Tests of the snapshot isolation checker.
//!
//! Goal: the checker reports exactly the anomalies each history has, names them right, and
//! stays fast on large histories. Method: one hand-built history per anomaly class with a
//! snapshotted report; a proptest that runs random transactions against a multi-version
//! snapshot isolation model (first committer wins) and checks its histories always pass, and
//! serial ones are serializable; a proptest that makes one read of a serial history stale and
//! compares both verdicts with a brute-force oracle (transitive closure of the relations, by the
//! definitions); and a timing test on 10,000 transactions.

use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000_000;

/// A transaction from a compact program: `"rx_ wy2"` reads x (absent) then writes y=2; the key
/// is one letter, the value a number or `_` for absent.
fn transaction(id: u64, outcome: Outcome, program: &str) -> Transaction {
    let operations = program
        .split_whitespace()
        .map(|word| {
            let key = word[1..2].to_string();
            let value = &word[2..];
            match &word[..1] {
                "r" => Operation::Read { key, value: value.parse().ok() },
                "w" => Operation::Write { key, value: value.parse().expect("a written value") },
                _ => panic!("unknown operation {word:?}"),
            }
        })
        .collect();
    let call_nanos = id * MS;
    let return_nanos = call_nanos + MS / 2;
    Transaction { id, client: id % 3, call_nanos, return_nanos, outcome, operations }
}

/// A transaction committed as number `order`.
fn committed(id: u64, order: u64, program: &str) -> Transaction {
    transaction(id, Outcome::Committed { commit_order: Some(order) }, program)
}

/// A transaction committed without a commit order number.
fn unnumbered(id: u64, program: &str) -> Transaction {
    transaction(id, Outcome::Committed { commit_order: None }, program)
}

/// Both verdicts of `transactions` (keys start absent), with the report of the first rule
/// broken: "serializable", or "snapshot isolated; <serializability report>", or the snapshot
/// isolation report.
#[track_caller]
fn check(transactions: Vec<Transaction>) -> String {
    let history = History { initial: BTreeMap::new(), transactions };
    let analysis = analyze(&history);
    let isolated = check_snapshot_isolation(&history);
    let serializable = check_serializability(&history);
    assert_eq!(isolated.is_ok(), analysis.is_snapshot_isolated());
    assert_eq!(serializable.is_ok(), analysis.is_serializable());
    assert!(isolated.is_ok() || serializable.is_err(), "serializable histories are SI");
    match (isolated, serializable) {
        (Ok(()), Ok(())) => "serializable".to_string(),
        (Ok(()), Err(violation)) => format!("snapshot isolated; {violation}"),
        (Err(violation), _) => violation.to_string(),
    }
}

#[test]
fn serial_history_passes() {
    assert_eq!(check(vec![]), "serializable");
    let history = vec![
        committed(1, 1, "rx_ wx1 wy1"),
        committed(2, 2, "rx1 wx2 rx2"),
        committed(3, 3, "rx2 ry1"),
        transaction(4, Outcome::Aborted, "rx2 wy4"),
        transaction(5, Outcome::Unknown, "wz1"),
    ];
    assert_eq!(check(history), "serializable");
}

/// Without commit order numbers, the version order comes from writes that follow reads: T1
/// read T2's x and overwrote it, T2 read T1's y and overwrote it.
#[test]
fn write_cycle_is_g0() {
    let history = vec![unnumbered(1, "rx2 wx1 wy3"), unnumbered(2, "wx2 ry3 wy4")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 2 anomalies among 2 transactions (2 in the graph):
      G0: T1 -ww(y)-> T2 -ww(x)-> T1
      G1c: T1 -wr(y)-> T2 -ww(x)-> T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed: r(x)=2 w(x)=1 w(y)=3
      T2 by client 2 at [2.000ms, 2.500ms], committed: w(x)=2 r(y)=3 w(y)=4
    ");
}

#[test]
fn aborted_read_is_g1a() {
    let history = vec![transaction(1, Outcome::Aborted, "wx1"), committed(2, 1, "rx1")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 2 transactions (1 in the graph):
      G1a: T2 read x=1, written by aborted T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], aborted: w(x)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed #1: r(x)=1
    ");
}

#[test]
fn intermediate_read_is_g1b() {
    let history = vec![committed(1, 1, "wx1 wx2"), committed(2, 2, "rx1")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 2 transactions (2 in the graph):
      G1b: T2 read x=1, an intermediate write of T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #1: w(x)=1 w(x)=2
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: r(x)=1
    ");
}

/// T2 read T1's x, yet committed first and T1 overwrote T2's y: information flowed both ways.
#[test]
fn circular_information_flow_is_g1c() {
    let history = vec![committed(1, 2, "wx1 wy1"), committed(2, 1, "rx1 wy2")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 2 transactions (2 in the graph):
      G1c: T1 -wr(x)-> T2 -ww(y)-> T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #2: w(x)=1 w(y)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed #1: r(x)=1 w(y)=2
    ");
}

/// Read skew: T3 saw x before T2 and y after it.
#[test]
fn read_skew_is_g_single() {
    let history =
        vec![committed(1, 1, "wx1 wy1"), committed(2, 2, "wx2 wy2"), committed(3, 3, "rx1 ry2")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 3 transactions (3 in the graph):
      G-single: T3 -rw(x)-> T2 -wr(y)-> T3
    transactions involved:
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: w(x)=2 w(y)=2
      T3 by client 0 at [3.000ms, 3.500ms], committed #3: r(x)=1 r(y)=2
    ");
}

/// Both read x absent and wrote it: the first committer's update is lost, which first
/// committer wins forbids.
#[test]
fn lost_update_is_g_single() {
    let history = vec![committed(1, 1, "rx_ wx1"), committed(2, 2, "rx_ wx2")];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 2 transactions (2 in the graph):
      G-single: T2 -rw(x)-> T1 -ww(x)-> T2
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #1: r(x)=absent w(x)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: r(x)=absent w(x)=2
    ");
}

/// Without commit order numbers the two writes of x are not ordered, so the lost update is
/// only seen as a cycle of two rw edges: allowed under SI, not serializable.
#[test]
fn lost_update_without_commit_order_is_only_g2() {
    let history = vec![unnumbered(1, "rx_ wx1"), unnumbered(2, "rx_ wx2")];
    insta::assert_snapshot!(check(history), @r"
    snapshot isolated; serializability: 1 anomaly among 2 transactions (2 in the graph):
      G2 (allowed under snapshot isolation): T1 -rw(x)-> T2 -rw(x)-> T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed: r(x)=absent w(x)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed: r(x)=absent w(x)=2
    ");
}

#[test]
fn write_skew_is_snapshot_isolated_but_not_serializable() {
    let history = vec![committed(1, 1, "rx_ ry_ wx1"), committed(2, 2, "rx_ ry_ wy2")];
    insta::assert_snapshot!(check(history), @r"
    snapshot isolated; serializability: 1 anomaly among 2 transactions (2 in the graph):
      G2 (allowed under snapshot isolation): T1 -rw(y)-> T2 -rw(x)-> T1
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #1: r(x)=absent r(y)=absent w(x)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: r(x)=absent r(y)=absent w(y)=2
    ");
}

/// Jepsen's example without the predicate read: two rw edges, neither next to the other.
#[test]
fn nonadjacent_anti_dependencies_are_g_nonadjacent() {
    let history = vec![
        committed(1, 1, "wx1"),
        committed(2, 2, "rx1 ry_"),
        committed(3, 3, "wy3"),
        committed(4, 4, "ry3 rx_"),
    ];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 4 transactions (4 in the graph):
      G-nonadjacent: T2 -rw(y)-> T3 -wr(y)-> T4 -rw(x)-> T1 -wr(x)-> T2
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #1: w(x)=1
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: r(x)=1 r(y)=absent
      T3 by client 0 at [3.000ms, 3.500ms], committed #3: w(y)=3
      T4 by client 1 at [4.000ms, 4.500ms], committed #4: r(y)=3 r(x)=absent
    ");
}

#[test]
fn garbage_and_internal_reads_are_reported() {
    let history = vec![
        committed(1, 1, "rx7"),
        committed(2, 2, "wx1 rx_"),
        committed(3, 3, "ry5 wy5"),
        committed(4, 4, "rz_ wz4 rz4"),
    ];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 3 anomalies among 4 transactions (4 in the graph):
      garbage read: T1 read x=7, which nothing wrote
      internal: T2 read x=absent after its own read or write of x=1
      internal: T3 read y=5 before writing it
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], committed #1: r(x)=7
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: w(x)=1 r(x)=absent
      T3 by client 0 at [3.000ms, 3.500ms], committed #3: r(y)=5 w(y)=5
    ");
    let initial = BTreeMap::from([("x".to_string(), 10)]);
    let transactions = vec![committed(1, 1, "rx10 wx11"), committed(2, 2, "rx_")];
    let history = History { initial, transactions };
    insta::assert_snapshot!(check_snapshot_isolation(&history).unwrap_err(), @r"
    snapshot-isolation: 1 anomaly among 2 transactions (2 in the graph):
      garbage read: T2 read x=absent, which nothing wrote
    transactions involved:
      T2 by client 2 at [2.000ms, 2.500ms], committed #2: r(x)=absent
    ");
}

/// An unknown outcome counts as committed once a committed transaction read its write, and
/// transitively; otherwise it is left out, as aborted transactions are.
#[test]
fn unknown_outcomes_count_once_read() {
    let history = vec![
        transaction(1, Outcome::Unknown, "wx1"),
        transaction(2, Outcome::Unknown, "rx1 wy2"),
        committed(3, 1, "ry2"),
        transaction(4, Outcome::Unknown, "wz4"),
        transaction(5, Outcome::Aborted, "wz5 rx_"),
        committed(6, 2, "rz_"),
    ];
    let analysis = analyze(&History { initial: BTreeMap::new(), transactions: history.clone() });
    assert_eq!(analysis.graph_transaction_count, 4);
    assert_eq!(check(history), "serializable");
    // T3 makes T2 count, and T2 makes T1 count; then T2 read z from T1 but x from before it.
    let history = vec![
        transaction(1, Outcome::Unknown, "wx1 wz1"),
        transaction(2, Outcome::Unknown, "rz1 rx_ wy2"),
        committed(3, 1, "ry2"),
    ];
    insta::assert_snapshot!(check(history), @r"
    snapshot-isolation: 1 anomaly among 3 transactions (3 in the graph):
      G-single: T2 -rw(x)-> T1 -wr(z)-> T2
    transactions involved:
      T1 by client 1 at [1.000ms, 1.500ms], unknown: w(x)=1 w(z)=1
      T2 by client 2 at [2.000ms, 2.500ms], unknown: r(z)=1 r(x)=absent w(y)=2
    ");
}

#[test]
fn malformed_histories_are_rejected_loudly() {
    let malformed = [
        vec![committed(1, 1, "wx1"), committed(1, 2, "wy1")],
        vec![committed(1, 1, "wx1"), committed(2, 2, "wx1")],
        vec![committed(1, 1, "wx1 wx1")],
        vec![committed(1, 1, "wx1"), committed(2, 1, "wy1")],
        vec![Transaction { return_nanos: 0, ..committed(1, 1, "wx1") }],
    ];
    for transactions in malformed {
        let history = History { initial: BTreeMap::new(), transactions };
        let outcome = std::panic::catch_unwind(|| analyze(&history));
        assert!(outcome.is_err(), "accepted {history:?}");
    }
}

/// How a planned transaction ends, if the model lets it commit.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Committed with the next commit order number.
    Numbered,
    /// Committed without a commit order number.
    Unnumbered,
    /// Committed, but the client never learnt it.
    UnknownApplied,
    /// Lost before it committed; the client never learnt it.
    UnknownLost,
    /// The client aborted it.
    Aborted,
}

/// A transaction to run: reads (`false`) and writes (`true`) of keys `0..KEY_COUNT`.
#[derive(Clone, Debug)]
struct Plan {
    steps: Vec<(bool, u8)>,
    fate: Fate,
}

/// The keys the model uses: few, so transactions conflict often.
const KEY_COUNT: u8 = 4;

/// Multi-version store: per key, its versions as (value, commit time), oldest first.
type Store = BTreeMap<String, Vec<(u64, u64)>>;

/// Runs `plans` against a snapshot isolation model: a transaction reads the snapshot of its
/// begin time plus its own writes and commits unless a key it wrote got a newer version since
/// it began (first committer wins). `choices` interleaves begins and commits; with
/// `concurrency` 1 the run is serial.
fn simulate(plans: &[Plan], choices: &[u8], concurrency: usize) -> History {
    assert!(concurrency >= 1);
    let mut store = Store::new();
    let mut values_next: BTreeMap<String, u64> = BTreeMap::new();
    let (mut time, mut commit_order) = (0_u64, 0_u64);
    let mut active: Vec<(usize, u64)> = Vec::new();
    let mut transactions = Vec::new();
    let mut choices = choices.iter().cycle();
    let mut next_plan = 0;
    while next_plan < plans.len() || !active.is_empty() {
        time += 1;
        let choice = usize::from(*choices.next().unwrap_or(&0));
        let may_begin = next_plan < plans.len() && active.len() < concurrency;
        if may_begin && (active.is_empty() || choice % 2 == 0) {
            active.push((next_plan, time));
            next_plan += 1;
            continue;
        }
        let (index, begin) = active.remove(choice / 2 % active.len());
        let run = Run { plan: &plans[index], begin, time };
        let transaction = run.execute(&mut store, &mut values_next, &mut commit_order, index);
        transactions.push(transaction);
    }
    assert_eq!(transactions.len(), plans.len());
    History { initial: BTreeMap::new(), transactions }
}

/// One planned transaction, begun at `begin` and committing at `time`.
struct Run<'a> {
    plan: &'a Plan,
    begin: u64,
    time: u64,
}

impl Run<'_> {
    fn execute(
        &self,
        store: &mut Store,
        values_next: &mut BTreeMap<String, u64>,
        commit_order: &mut u64,
        index: usize,
    ) -> Transaction {
        let mut own: BTreeMap<String, u64> = BTreeMap::new();
        let mut operations = Vec::new();
        for &(write, key) in &self.plan.steps {
            let key = ((b'a' + key) as char).to_string();
            if write {
                let value_next = values_next.entry(key.clone()).or_insert(1);
                let value = *value_next;
                *value_next += 1;
                own.insert(key.clone(), value);
                operations.push(Operation::Write { key, value });
            } else {
                let versions = store.get(&key).map(Vec::as_slice).unwrap_or_default();
                let snapshot = versions.iter().rev().find(|&&(_, time)| time <= self.begin);
                let value = own.get(&key).copied().or(snapshot.map(|&(value, _)| value));
                operations.push(Operation::Read { key, value });
            }
        }
        let conflict = own.keys().any(|key| {
            store
                .get(key)
                .and_then(|versions| versions.last())
                .is_some_and(|&(_, time)| time > self.begin)
        });
        let applies = !conflict && !matches!(self.plan.fate, Fate::UnknownLost | Fate::Aborted);
        if applies {
            for (key, value) in own {
                store.entry(key).or_default().push((value, self.time));
            }
            *commit_order += 1;
        }
        let outcome = match (applies, self.plan.fate) {
            (false, Fate::UnknownLost) => Outcome::Unknown,
            (false, _) => Outcome::Aborted,
            (true, Fate::Numbered) => Outcome::Committed { commit_order: Some(*commit_order) },
            (true, Fate::Unnumbered) => Outcome::Committed { commit_order: None },
            (true, _) => Outcome::Unknown,
        };
        let id = index as u64 + 1;
        let (call_nanos, return_nanos) = (self.begin * MS, self.time * MS);
        Transaction { id, client: id % 5, call_nanos, return_nanos, outcome, operations }
    }
}

fn plan_strategy(fates: Vec<Fate>) -> impl Strategy<Value = Plan> {
    let step = (any::<bool>(), 0..KEY_COUNT);
    (prop::collection::vec(step, 1..6), prop::sample::select(fates))
        .prop_map(|(steps, fate)| Plan { steps, fate })
}

fn any_fate() -> Vec<Fate> {
    use Fate::*;
    vec![Numbered, Numbered, Numbered, Unnumbered, UnknownApplied, UnknownLost, Aborted]
}

/// Replaces one read picked by `pick` (the only read of its key in its transaction, before any
/// write of it there) with a stale value: an older version of its key. `false` if no read has
/// one. All transactions are committed and numbered, in commit order (a serial run).
fn make_one_read_stale(history: &mut History, pick: usize) -> bool {
    let mut versions: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (index, transaction) in history.transactions.iter().enumerate() {
        assert!(matches!(transaction.outcome, Outcome::Committed { commit_order: Some(_) }));
        let mut installed: BTreeMap<&str, u64> = BTreeMap::new();
        for (position, operation) in transaction.operations.iter().enumerate() {
            let Operation::Read { key, value } = operation else { continue };
            let earlier = &transaction.operations[..position];
            let reads_of_key = transaction.operations.iter().filter(
                |other| matches!(other, Operation::Read { key: other_key, .. } if other_key == key),
            );
            if earlier.iter().any(|other| touches(other, key)) || reads_of_key.count() > 1 {
                continue;
            }
            let known = versions.entry(key.clone()).or_insert_with(|| vec![None]);
            assert_eq!(known.last(), Some(value), "a serial read sees the latest version");
            if known.len() > 1 {
                candidates.push((index, position, known[..known.len() - 1].to_vec()));
            }
        }
        for operation in &transaction.operations {
            if let Operation::Write { key, value } = operation {
                installed.insert(key, *value);
            }
        }
        for (key, value) in installed {
            versions.entry(key.to_string()).or_insert_with(|| vec![None]).push(Some(value));
        }
    }
    let Some((index, position, older)) = candidates.get(pick % candidates.len().max(1)).cloned()
    else {
        return false;
    };
    let Operation::Read { value, .. } = &mut history.transactions[index].operations[position]
    else {
        unreachable!("candidates are reads")
    };
    *value = older[pick / 7 % older.len()];
    true
}

fn touches(operation: &Operation, key: &str) -> bool {
    let (Operation::Read { key: touched, .. } | Operation::Write { key: touched, .. }) = operation;
    touched == key
}

/// A version in the oracle: its value (`None`: initial) and its writer's index.
type Version = (Option<u64>, Option<usize>);

/// Both verdicts by the definitions, for a history of committed, numbered transactions:
/// (serializable: ww, wr and rw edges are acyclic; snapshot isolated: D ∪ D;rw is acyclic,
/// where D is ww ∪ wr, that is every cycle has two adjacent rw edges).
fn oracle(history: &History) -> (bool, bool) {
    let transactions = &history.transactions;
    let count = transactions.len();
    let order = |index: usize| match transactions[index].outcome {
        Outcome::Committed { commit_order: Some(order) } => order,
        _ => unreachable!("only numbered commits"),
    };
    let mut by_order: Vec<usize> = (0..count).collect();
    by_order.sort_by_key(|&index| order(index));
    // Per key: (value, writer) in version order, the initial version first.
    let mut versions: BTreeMap<&str, Vec<Version>> = BTreeMap::new();
    for &index in &by_order {
        let mut installed: BTreeMap<&str, u64> = BTreeMap::new();
        for operation in &transactions[index].operations {
            if let Operation::Write { key, value } = operation {
                installed.insert(key, *value);
            }
        }
        for (key, value) in installed {
            versions
                .entry(key)
                .or_insert_with(|| vec![(None, None)])
                .push((Some(value), Some(index)));
        }
    }
    let mut dependency = vec![vec![false; count]; count];
    let mut anti = vec![vec![false; count]; count];
    for key_versions in versions.values() {
        for pair in key_versions.windows(2) {
            if let (Some(before), Some(after)) = (pair[0].1, pair[1].1) {
                dependency[before][after] = true;
            }
        }
    }
    for (reader, transaction) in transactions.iter().enumerate() {
        for (position, operation) in transaction.operations.iter().enumerate() {
            let Operation::Read { key, value } = operation else { continue };
            if transaction.operations[..position].iter().any(|other| touches(other, key)) {
                continue;
            }
            let empty = vec![(None, None)];
            let key_versions = versions.get(key.as_str()).unwrap_or(&empty);
            let seen =
                key_versions.iter().position(|(known, _)| known == value).expect("no garbage");
            if let Some(writer) = key_versions[seen].1.filter(|&writer| writer != reader) {
                dependency[writer][reader] = true;
            }
            let next = key_versions.get(seen + 1).and_then(|&(_, writer)| writer);
            if let Some(writer) = next.filter(|&writer| writer != reader) {
                anti[reader][writer] = true;
            }
        }
    }
    let union = combine(&dependency, &anti, |a, b| a || b);
    let mut composed = dependency.clone();
    for source in 0..count {
        for middle in 0..count {
            if dependency[source][middle] {
                (0..count).filter(|&target| anti[middle][target]).for_each(|target| {
                    composed[source][target] = true;
                });
            }
        }
    }
    (acyclic(union), acyclic(composed))
}

fn combine(a: &[Vec<bool>], b: &[Vec<bool>], f: impl Fn(bool, bool) -> bool) -> Vec<Vec<bool>> {
    a.iter().zip(b).map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()).collect()
}

/// Whether `relation` has no cycle: Warshall's transitive closure has an empty diagonal.
fn acyclic(mut relation: Vec<Vec<bool>>) -> bool {
    let count = relation.len();
    for middle in 0..count {
        for source in 0..count {
            if relation[source][middle] {
                let reachable = relation[middle].clone();
                for (target, reached) in reachable.into_iter().enumerate() {
                    relation[source][target] |= reached;
                }
            }
        }
    }
    (0..count).all(|index| !relation[index][index])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn snapshot_isolation_model_histories_pass(
        plans in prop::collection::vec(plan_strategy(any_fate()), 0..24),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        concurrency in 1..5_usize,
    ) {
        let history = simulate(&plans, &choices, concurrency);
        let analysis = analyze(&history);
        prop_assert!(analysis.is_snapshot_isolated(), "{:?}", check_snapshot_isolation(&history));
        if concurrency == 1 {
            let verdict = check_serializability(&history);
            prop_assert!(analysis.is_serializable(), "{:?}", verdict);
        }
    }

    #[test]
    fn one_stale_read_is_caught_exactly_when_it_closes_a_cycle(
        plans in prop::collection::vec(plan_strategy(vec![Fate::Numbered]), 1..16),
        pick in any::<usize>(),
    ) {
        let mut history = simulate(&plans, &[0], 1);
        if make_one_read_stale(&mut history, pick) {
            let analysis = analyze(&history);
            let (serializable, isolated) = oracle(&history);
            prop_assert_eq!(analysis.is_serializable(), serializable, "{:?}", analysis);
            prop_assert_eq!(analysis.is_snapshot_isolated(), isolated, "{:?}", analysis);
        }
    }
}

/// `count` plans drawn from `seed` by splitmix64, with every fate.
fn seeded_plans(seed: u64, count: usize) -> (Vec<Plan>, Vec<u8>) {
    let mut state = seed;
    let mut random = |bound: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (mixed ^ (mixed >> 31)) % bound
    };
    let fates = any_fate();
    let plans = (0..count)
        .map(|_| {
            let steps = (0..1 + random(5)).map(|_| (random(2) == 0, random(16) as u8)).collect();
            Plan { steps, fate: fates[random(fates.len() as u64) as usize] }
        })
        .collect();
    let choices = (0..4096).map(|_| random(256) as u8).collect();
    (plans, choices)
}

/// Checks `history` and returns the analysis with the wall time it took.
#[allow(clippy::disallowed_methods, reason = "a timing test measures real time")]
fn timed(history: &History) -> (Analysis, std::time::Duration) {
    let start = std::time::Instant::now();
    let analysis = analyze(history);
    (analysis, start.elapsed())
}

/// The bound is loose on purpose: debug builds on a shared 2-core machine vary several-fold,
/// and what this guards against is a quadratic search, which takes minutes here.
#[test]
fn ten_thousand_concurrent_transactions_check_fast() {
    let (plans, choices) = seeded_plans(0x5eed, 10_000);
    let mut history = simulate(&plans, &choices, 8);
    let (analysis, elapsed) = timed(&history);
    assert!(analysis.is_snapshot_isolated(), "{:?}", check_snapshot_isolation(&history));
    assert!(!analysis.is_serializable(), "eight clients on 16 keys make some write skew");
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
    // The last committed reader of key `a` sees the first version instead: a stale read that
    // closes a G-single with whoever wrote `a` since.
    let first = history.transactions.iter().find_map(|transaction| {
        let applied = matches!(transaction.outcome, Outcome::Committed { commit_order: Some(_) });
        transaction.operations.iter().find_map(|operation| match operation {
            Operation::Write { key, value } if key == "a" && applied => Some(*value),
            _ => None,
        })
    });
    let reader = history.transactions.iter_mut().rev().find(|transaction| {
        let numbered = matches!(transaction.outcome, Outcome::Committed { commit_order: Some(_) });
        let first = transaction.operations.first();
        numbered && matches!(first, Some(Operation::Read { key, .. }) if key == "a")
    });
    let reader = reader.expect("some committed transaction reads a first");
    reader.operations[0] = Operation::Read { key: "a".to_string(), value: first };
    let (analysis, elapsed) = timed(&history);
    assert!(!analysis.is_snapshot_isolated());
    assert!(elapsed.as_secs() < 10, "took {elapsed:?}");
}
