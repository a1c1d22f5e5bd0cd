//! Builds the dependency graph of a history (module doc of `snapshot_isolation`: which
//! transactions are nodes, the version order, the edges) and reports the anomalies that need no
//! cycle: garbage, internal, aborted and intermediate reads.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, EdgeKind, History, Operation, Outcome, Transaction};

/// An edge as stored in the graph: node indices and an interned key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Arc {
    /// The node the edge enters.
    pub target: u32,
    /// What relates the two nodes.
    pub kind: EdgeKind,
    /// Index into [`DependencyGraph::keys`].
    pub key: u32,
}

/// The nodes (graph transactions) and their outgoing edges, at most one per (target, kind).
pub(super) struct DependencyGraph<'a> {
    /// Node `i` is `transactions[i]`, in history order.
    pub transactions: Vec<&'a Transaction>,
    /// Every key of the history, sorted.
    pub keys: Vec<&'a str>,
    /// Outgoing edges per node, sorted by (target, kind).
    pub adjacency: Vec<Vec<Arc>>,
}

/// A version of one key: the initial one, or the one a node installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    Initial,
    Installed(u32),
}

/// Who wrote a value of a key: index into the history, and whether it is that transaction's
/// installed (last) write of the key.
#[derive(Clone, Copy)]
struct Written {
    transaction: usize,
    installed: bool,
}

/// An external read (before the reader's own first write of the key) and what it observed.
struct ExternalRead {
    reader: u32,
    key: u32,
    version: Version,
}

/// Everything the build collects before the edges are made.
struct Builder<'a> {
    history: &'a History,
    keys: Vec<&'a str>,
    writes: BTreeMap<(&'a str, u64), Written>,
    /// Node index per history index, for graph transactions.
    nodes: Vec<Option<u32>>,
    /// History index per node.
    node_transactions: Vec<usize>,
    reads: Vec<ExternalRead>,
    /// (source, target, kind, key) in any order; sorted and deduplicated at the end.
    edges: Vec<(u32, u32, EdgeKind, u32)>,
}

/// The dependency graph of `history`; anomalies that need no cycle go to `anomalies`, in
/// history order. Panics on a malformed history (see `analyze`).
pub(super) fn build<'a>(history: &'a History, anomalies: &mut Vec<Anomaly>) -> DependencyGraph<'a> {
    let keys = assert_well_formed(history);
    let writes = index_writes(history, &keys);
    let nodes = graph_nodes(history, &writes);
    let node_transactions = (0..nodes.len()).filter(|&index| nodes[index].is_some()).collect();
    let (reads, edges) = (Vec::new(), Vec::new());
    let mut builder = Builder { history, keys, writes, nodes, node_transactions, reads, edges };
    for (index, transaction) in history.transactions.iter().enumerate() {
        if let Some(node) = builder.nodes[index] {
            builder.scan(node, transaction, anomalies);
        }
    }
    builder.version_order_edges();
    builder.finish()
}

/// Asserts the history's preconditions (see `analyze`); returns every key, sorted.
fn assert_well_formed(history: &History) -> Vec<&str> {
    let mut ids = BTreeSet::new();
    let mut commit_orders = BTreeSet::new();
    let mut keys: BTreeSet<&str> = history.initial.keys().map(String::as_str).collect();
    for transaction in &history.transactions {
        assert!(ids.insert(transaction.id), "two transactions with id {}", transaction.id);
        assert!(
            transaction.return_nanos >= transaction.call_nanos,
            "T{} returned before it was called",
            transaction.id
        );
        if let Outcome::Committed { commit_order: Some(order) } = transaction.outcome {
            assert!(commit_orders.insert(order), "two transactions with commit order {order}");
        }
        for operation in &transaction.operations {
            let (Operation::Read { key, .. } | Operation::Write { key, .. }) = operation;
            keys.insert(key.as_str());
        }
    }
    assert!(ids.len() == history.transactions.len());
    keys.into_iter().collect()
}

/// Who wrote each (key, value); asserts values are unique per key.
fn index_writes<'a>(history: &'a History, keys: &[&str]) -> BTreeMap<(&'a str, u64), Written> {
    let mut writes = BTreeMap::new();
    for (index, transaction) in history.transactions.iter().enumerate() {
        let mut last_write: BTreeMap<&str, u64> = BTreeMap::new();
        for operation in &transaction.operations {
            let Operation::Write { key, value } = operation else { continue };
            assert!(
                history.initial.get(key) != Some(value),
                "T{} writes {key}={value}, the key's initial value",
                transaction.id
            );
            let written = Written { transaction: index, installed: false };
            let previous = writes.insert((key.as_str(), *value), written);
            assert!(previous.is_none(), "two writes of {key}={value} (values must be unique)");
            last_write.insert(key.as_str(), *value);
        }
        for (key, value) in last_write {
            writes.get_mut(&(key, value)).expect("indexed above").installed = true;
        }
    }
    assert!(writes.keys().all(|(key, _)| keys.binary_search(key).is_ok()));
    writes
}

/// Node index per history index: committed transactions, and unknown ones whose writes a graph
/// transaction read (transitively), numbered in history order.
fn graph_nodes(history: &History, writes: &BTreeMap<(&str, u64), Written>) -> Vec<Option<u32>> {
    let transactions = &history.transactions;
    let mut in_graph: Vec<bool> = transactions
        .iter()
        .map(|transaction| matches!(transaction.outcome, Outcome::Committed { .. }))
        .collect();
    let mut pending: Vec<usize> =
        (0..transactions.len()).filter(|&index| in_graph[index]).collect();
    // Each transaction is pushed at most once: the loop is bounded by the history's length.
    while let Some(index) = pending.pop() {
        for operation in &transactions[index].operations {
            let Operation::Read { key, value: Some(value) } = operation else { continue };
            let Some(written) = writes.get(&(key.as_str(), *value)) else { continue };
            let writer = written.transaction;
            if !in_graph[writer] && transactions[writer].outcome == Outcome::Unknown {
                in_graph[writer] = true;
                pending.push(writer);
            }
        }
    }
    let mut node_count: u32 = 0;
    let nodes = in_graph
        .iter()
        .map(|&in_graph| {
            in_graph.then(|| {
                node_count += 1;
                node_count - 1
            })
        })
        .collect();
    assert!(node_count as usize <= transactions.len());
    nodes
}

impl<'a> Builder<'a> {
    fn key_index(&self, key: &str) -> u32 {
        let index = self.keys.binary_search(&key).expect("every key is interned");
        u32::try_from(index).expect("fewer than 2^32 keys")
    }

    /// Checks `transaction`'s reads against its own earlier operations (internal consistency)
    /// and resolves its external reads.
    fn scan(&mut self, node: u32, transaction: &'a Transaction, anomalies: &mut Vec<Anomaly>) {
        let mut last: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut written: BTreeSet<&str> = BTreeSet::new();
        for operation in &transaction.operations {
            match operation {
                Operation::Write { key, value } => {
                    last.insert(key, Some(*value));
                    written.insert(key);
                }
                Operation::Read { key, value } => {
                    if let Some(&expected) = last.get(key.as_str())
                        && expected != *value
                    {
                        let key = key.clone();
                        let transaction = transaction.id;
                        let observed = *value;
                        anomalies.push(Anomaly::Internal { transaction, key, expected, observed });
                    }
                    last.insert(key, *value);
                    if !written.contains(key.as_str()) {
                        self.resolve(node, transaction, key, *value, anomalies);
                    }
                }
            }
        }
    }

    /// Finds the version an external read observed; adds its wr edge, or reports why the read
    /// observed no installed version.
    fn resolve(
        &mut self,
        node: u32,
        reader: &Transaction,
        key: &str,
        value: Option<u64>,
        anomalies: &mut Vec<Anomaly>,
    ) {
        let key_index = self.key_index(key);
        let key_owned = key.to_string();
        if self.history.initial.get(key).copied() == value {
            let version = Version::Initial;
            self.reads.push(ExternalRead { reader: node, key: key_index, version });
            return;
        }
        let written = value.and_then(|value| self.writes.get(&(key, value)).copied());
        let (Some(value), Some(written)) = (value, written) else {
            anomalies.push(Anomaly::GarbageRead { reader: reader.id, key: key_owned, value });
            return;
        };
        let writer = &self.history.transactions[written.transaction];
        let (reader, key) = (reader.id, key_owned);
        if writer.id == reader {
            anomalies.push(Anomaly::FutureRead { transaction: reader, key, value });
        } else if writer.outcome == Outcome::Aborted {
            anomalies.push(Anomaly::AbortedRead { reader, writer: writer.id, key, value });
        } else if !written.installed {
            anomalies.push(Anomaly::IntermediateRead { reader, writer: writer.id, key, value });
        } else {
            let writer_node =
                self.nodes[written.transaction].expect("a read writer is in the graph");
            let version = Version::Installed(writer_node);
            self.reads.push(ExternalRead { reader: node, key: key_index, version });
            self.edges.push((writer_node, node, EdgeKind::WriteRead, key_index));
        }
    }

    /// Per key, the direct precedes pairs of the version order (module doc, "Version order").
    fn version_pairs(&self) -> BTreeMap<u32, BTreeSet<(Version, Version)>> {
        // Per key: installed versions with their commit order number, if any.
        let mut installed: BTreeMap<u32, Vec<(Option<u64>, u32)>> = BTreeMap::new();
        for (&(key, _), written) in &self.writes {
            let Some(node) = self.nodes[written.transaction].filter(|_| written.installed) else {
                continue;
            };
            let outcome = self.history.transactions[written.transaction].outcome;
            let order = match outcome {
                Outcome::Committed { commit_order } => commit_order,
                Outcome::Aborted | Outcome::Unknown => None,
            };
            installed.entry(self.key_index(key)).or_default().push((order, node));
        }
        let mut pairs: BTreeMap<u32, BTreeSet<(Version, Version)>> = BTreeMap::new();
        for (key, mut versions) in installed {
            versions.sort();
            let pairs = pairs.entry(key).or_default();
            let mut previous = Version::Initial;
            for (order, node) in versions {
                let version = Version::Installed(node);
                if order.is_some() {
                    pairs.insert((previous, version));
                    previous = version;
                } else {
                    pairs.insert((Version::Initial, version));
                }
            }
        }
        self.writes_follow_reads(&mut pairs);
        pairs
    }

    /// Adds the pairs "a transaction read `a` and installed `b`" unless the numbers order both.
    fn writes_follow_reads(&self, pairs: &mut BTreeMap<u32, BTreeSet<(Version, Version)>>) {
        let numbered = |version: Version| match version {
            Version::Initial => true,
            Version::Installed(node) => {
                let transaction = self.transaction_of(node);
                matches!(transaction.outcome, Outcome::Committed { commit_order: Some(_) })
            }
        };
        for read in &self.reads {
            let reader = self.transaction_of(read.reader);
            let key = self.keys[read.key as usize];
            let installed = reader.operations.iter().rev().find_map(|operation| match operation {
                Operation::Write { key: written, value } if written == key => Some(*value),
                _ => None,
            });
            let after = Version::Installed(read.reader);
            if installed.is_none() || (numbered(read.version) && numbered(after)) {
                continue;
            }
            let pair = (read.version, Version::Installed(read.reader));
            assert!(pair.0 != pair.1, "an external read never observes its reader's version");
            pairs.entry(read.key).or_default().insert(pair);
        }
    }

    fn transaction_of(&self, node: u32) -> &'a Transaction {
        &self.history.transactions[self.node_transactions[node as usize]]
    }

    /// Adds the ww and rw edges the version order implies.
    fn version_order_edges(&mut self) {
        let pairs = self.version_pairs();
        for (&key, key_pairs) in &pairs {
            for &(before, after) in key_pairs {
                let Version::Installed(target) = after else {
                    unreachable!("the initial version follows no version")
                };
                if let Version::Installed(source) = before {
                    self.edges.push((source, target, EdgeKind::WriteWrite, key));
                }
            }
        }
        for read in &self.reads {
            let Some(key_pairs) = pairs.get(&read.key) else { continue };
            let next = key_pairs.range((read.version, Version::Initial)..);
            for &(before, after) in next.take_while(|(before, _)| *before == read.version) {
                assert!(before == read.version);
                let Version::Installed(target) = after else { unreachable!("checked above") };
                if target != read.reader {
                    self.edges.push((read.reader, target, EdgeKind::ReadWrite, read.key));
                }
            }
        }
    }

    /// The graph, with one edge per (source, target, kind): the one on the smallest key.
    fn finish(mut self) -> DependencyGraph<'a> {
        self.edges.sort();
        self.edges.dedup_by_key(|&mut (source, target, kind, _)| (source, target, kind));
        let history = self.history;
        let transactions: Vec<&'a Transaction> =
            self.node_transactions.iter().map(|&index| &history.transactions[index]).collect();
        let mut adjacency = vec![Vec::new(); transactions.len()];
        for &(source, target, kind, key) in &self.edges {
            assert!(source != target, "no self edges");
            adjacency[source as usize].push(Arc { target, kind, key });
        }
        DependencyGraph { transactions, keys: self.keys, adjacency }
    }
}
