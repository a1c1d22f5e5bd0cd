//! What a run explored: which kinds of fault the nemesis applied, and in which state each node
//! a fault hit was at that moment (a "situation": fault kind and node state).
//!
//! A sweep that passes says little unless it says what it tried. The nemesis records, for each
//! fault it begins, the fault's kind (`FaultClass::name`) and a short label for every node the
//! fault hits. The label has two parts: what the world knows of the node (`down`, `paused`,
//! `clogged`, `cut` or `up`, in that order of precedence) and, when the node is not down, what
//! its system says it was doing, as reported through a `NodeState` cell the scenario's node
//! code sets as it goes (`up/syncing`, `paused/flushing`). A scenario that reports nothing gets
//! the world's part alone.
//!
//! Recording reads a mutex-guarded `&'static str` and the nemesis's own view of the world: it
//! draws no randomness and records no trace event, so it changes no run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Situation labels a run records at most: a bound on memory, never reached by real plans
/// (labels are static strings, so the distinct ones are few).
const SITUATION_LABELS_MAX: usize = 1_024;

/// One node's coarse state as its system reports it: a short static label (`idle`,
/// `syncing`), shared between the node's tasks, which set it, and the harness, which reads it
/// when a fault hits the node. Clones share the cell, and it outlives the node's crashes: a
/// node sets it again when it boots.
///
/// A node whose tasks run side by side (writers, a flush, a compaction) marks each activity
/// with `during`, which counts it while its guard lives; the label read is then the first
/// activity of the cell's `precedence` list that runs, or the base label `set` last.
#[derive(Clone, Debug)]
pub struct NodeState(Arc<Mutex<Cell>>);

#[derive(Debug)]
struct Cell {
    base: &'static str,
    // Invariant: `running[i]` counts the live guards of `precedence[i]` taken since the
    // last boot (`boot` starts a new `epoch`; guards of an earlier one count for nothing).
    precedence: &'static [&'static str],
    running: Vec<u32>,
    epoch: u64,
}

impl NodeState {
    /// A cell holding `base`, whose activities rank as `precedence` lists them (first wins).
    pub fn new(base: &'static str, precedence: &'static [&'static str]) -> NodeState {
        assert_bare(base);
        precedence.iter().for_each(|label| assert_bare(label));
        let running = vec![0; precedence.len()];
        NodeState(Arc::new(Mutex::new(Cell { base, precedence, running, epoch: 0 })))
    }

    fn cell(&self) -> std::sync::MutexGuard<'_, Cell> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The node is in `base` when no activity runs (`recovering`, `serving`).
    pub fn set(&self, base: &'static str) {
        assert_bare(base);
        self.cell().base = base;
    }

    /// A new boot: the node is in `base`, and no activity of an earlier incarnation counts.
    pub fn boot(&self, base: &'static str) {
        assert_bare(base);
        let mut cell = self.cell();
        cell.base = base;
        cell.running.iter_mut().for_each(|count| *count = 0);
        cell.epoch += 1;
    }

    /// What the node does now: its first running activity, or its base label.
    pub fn get(&self) -> &'static str {
        let cell = self.cell();
        let running = cell.precedence.iter().zip(&cell.running).find(|(_, count)| **count > 0);
        running.map_or(cell.base, |(label, _)| label)
    }

    /// Counts `activity` (one of the cell's `precedence` labels) as running until the returned
    /// guard drops.
    pub fn during(&self, activity: &'static str) -> StateGuard {
        let mut cell = self.cell();
        let index = cell.precedence.iter().position(|label| *label == activity);
        let index = index.unwrap_or_else(|| panic!("{activity:?} is not in the precedence list"));
        cell.running[index] += 1;
        StateGuard { state: self.clone(), index, epoch: cell.epoch }
    }
}

fn assert_bare(label: &str) {
    assert!(!label.is_empty() && !label.contains('/'), "a bare label: {label:?}");
}

/// Ends one activity of a node when dropped (see `NodeState::during`).
#[derive(Debug)]
#[must_use = "the activity ends when the guard drops"]
pub struct StateGuard {
    state: NodeState,
    index: usize,
    /// The boot it was taken in.
    epoch: u64,
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        let mut cell = self.state.cell();
        // A guard of an earlier boot was reset with its count: it must not end a new one's.
        if cell.epoch == self.epoch {
            assert!(cell.running[self.index] > 0, "an activity ended more often than begun");
            cell.running[self.index] -= 1;
        }
    }
}

/// What the world knows of a node when a fault hits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldState {
    /// Crashed.
    Down,
    /// Paused.
    Paused,
    /// Its packets are held.
    Clogged,
    /// At least one of its links is cut, in either direction.
    Cut,
    /// None of the above.
    Up,
}

impl WorldState {
    /// The label's first part.
    pub fn label(self) -> &'static str {
        match self {
            WorldState::Down => "down",
            WorldState::Paused => "paused",
            WorldState::Clogged => "clogged",
            WorldState::Cut => "cut",
            WorldState::Up => "up",
        }
    }
}

/// The situation label of a node: the world's part, then the system's unless the node is down.
pub fn situation_label(world: WorldState, system: Option<&'static str>) -> String {
    match system {
        Some(system) if world != WorldState::Down => format!("{}/{system}", world.label()),
        _ => world.label().to_string(),
    }
}

/// What one run explored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Per fault kind (`FaultClass::name`), the faults of that kind the nemesis began.
    pub faults: BTreeMap<String, u64>,
    /// Per fault kind, per situation label of a node such a fault hit, how many times.
    pub situations: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Coverage {
    /// A fault of `kind` began, hitting nodes in the situations `labels` (one per node).
    pub fn record(&mut self, kind: &str, labels: &[String]) {
        *self.faults.entry(kind.to_string()).or_default() += 1;
        let situations = self.situations.entry(kind.to_string()).or_default();
        for label in labels {
            if situations.len() < SITUATION_LABELS_MAX || situations.contains_key(label) {
                *situations.entry(label.clone()).or_default() += 1;
            }
        }
        assert!(situations.len() <= SITUATION_LABELS_MAX);
    }

    /// Faults begun, all kinds together.
    pub fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Distinct (fault kind, situation) pairs.
    pub fn situation_count(&self) -> usize {
        self.situations.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(world: WorldState, system: Option<&'static str>, expected: &str) {
        assert_eq!(situation_label(world, system), expected);
    }

    #[test]
    fn labels_join_the_world_and_the_system() {
        check(WorldState::Up, None, "up");
        check(WorldState::Up, Some("syncing"), "up/syncing");
        check(WorldState::Paused, Some("flushing"), "paused/flushing");
        check(WorldState::Cut, None, "cut");
        // A crashed node does nothing, whatever its cell last said.
        check(WorldState::Down, Some("syncing"), "down");
    }

    #[test]
    fn record_counts_faults_and_situations() {
        let mut coverage = Coverage::default();
        coverage.record("crash", &["up/syncing".to_string()]);
        coverage.record("crash", &["up/syncing".to_string()]);
        coverage.record("split", &["up".to_string(), "cut".to_string(), "up".to_string()]);
        assert_eq!(coverage.fault_count(), 3);
        assert_eq!(coverage.situation_count(), 3);
        assert_eq!(coverage.faults["crash"], 2);
        assert_eq!(coverage.situations["crash"]["up/syncing"], 2);
        assert_eq!(coverage.situations["split"]["up"], 2);
    }

    #[test]
    fn the_first_running_activity_wins_then_the_base_label() {
        let state = NodeState::new("idle", &["flushing", "writing"]);
        let writing = state.during("writing");
        assert_eq!(state.clone().get(), "writing");
        let flushing = state.during("flushing");
        let second_writer = state.during("writing");
        assert_eq!(state.get(), "flushing");
        drop(flushing);
        drop(writing);
        assert_eq!(state.get(), "writing");
        drop(second_writer);
        assert_eq!(state.get(), "idle");
        let stale = state.during("writing");
        state.boot("recovering");
        assert_eq!(state.get(), "recovering");
        // A guard of the earlier boot ending does not end the new boot's activity.
        let writing = state.during("writing");
        drop(stale);
        assert_eq!(state.get(), "writing");
        drop(writing);
        assert_eq!(state.get(), "recovering");
    }
}
