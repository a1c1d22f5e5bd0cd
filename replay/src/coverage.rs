//! The coverage of a sweep: per fault kind, the seeds whose plan applied it, and per (fault
//! kind, node state) situation, the seeds that met it; so that a report says what its seeds
//! explored, not only that they passed.
//!
//! Each run's `scenarios::Coverage` is added once (a seed counts once per kind or situation,
//! however often it met it; the totals are kept beside). Counts of two parts of a range add up
//! to the counts of the whole, which is what `merge` relies on. A sweep starts from the kinds
//! its scenario allows, at zero, so a kind no seed applied shows as such.

use std::collections::BTreeMap;

use scenarios::{Coverage, FaultClass};
use serde::{Deserialize, Serialize};

/// One fault kind over a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSeeds {
    /// Seeds whose nemesis began at least one fault of the kind.
    pub seeds_applied: u64,
    /// Faults of the kind begun over all seeds.
    pub applied_count: u64,
}

/// One situation (a fault kind hitting a node in a state) over a sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SituationSeeds {
    /// Seeds in which a fault of the kind hit a node in the state at least once.
    pub seeds: u64,
    /// Such hits over all seeds.
    pub hit_count: u64,
}

/// Per fault kind (`FaultClass::name`), by name.
pub type FaultCounts = BTreeMap<String, FaultSeeds>;

/// Per fault kind, per node state label (`up/syncing`, `down`).
pub type SituationCounts = BTreeMap<String, BTreeMap<String, SituationSeeds>>;

/// The kinds a scenario allows, none applied yet.
pub fn allowed(classes: &[FaultClass]) -> FaultCounts {
    classes.iter().map(|class| (class.name().to_string(), FaultSeeds::default())).collect()
}

/// Adds one run's coverage.
pub fn add_run(faults: &mut FaultCounts, situations: &mut SituationCounts, run: &Coverage) {
    for (kind, count) in &run.faults {
        let seeds = faults.entry(kind.clone()).or_default();
        seeds.seeds_applied += u64::from(*count > 0);
        seeds.applied_count += count;
        assert!(seeds.seeds_applied <= seeds.applied_count);
    }
    for (kind, states) in &run.situations {
        let counts = situations.entry(kind.clone()).or_default();
        for (state, hits) in states {
            let seeds = counts.entry(state.clone()).or_default();
            seeds.seeds += u64::from(*hits > 0);
            seeds.hit_count += hits;
        }
    }
}

/// Adds another part of the range (a shard's counts).
pub fn add(
    faults: &mut FaultCounts,
    situations: &mut SituationCounts,
    other: (&FaultCounts, &SituationCounts),
) {
    for (kind, seeds) in other.0 {
        let sum = faults.entry(kind.clone()).or_default();
        sum.seeds_applied += seeds.seeds_applied;
        sum.applied_count += seeds.applied_count;
    }
    for (kind, states) in other.1 {
        let counts = situations.entry(kind.clone()).or_default();
        for (state, seeds) in states {
            let sum = counts.entry(state.clone()).or_default();
            sum.seeds += seeds.seeds;
            sum.hit_count += seeds.hit_count;
        }
    }
}

/// Report lines wrap before this column.
const WIDTH_MAX: usize = 100;

/// The human summary: the kinds applied, those never applied, and the situations per kind.
pub fn render(faults: &FaultCounts, situations: &SituationCounts, seed_count: u64) -> String {
    if faults.is_empty() {
        return String::new();
    }
    let applied: Vec<String> = faults
        .iter()
        .filter(|(_, seeds)| seeds.seeds_applied > 0)
        .map(|(kind, seeds)| format!("{kind} {} ({})", seeds.seeds_applied, seeds.applied_count))
        .collect();
    let mut text = format!(
        "  {:<18} {:>6} of {} applied; per kind, seeds (faults begun):\n",
        "fault kinds",
        applied.len(),
        faults.len()
    );
    text.push_str(&wrap("    ", &applied));
    let never: Vec<&str> = faults
        .iter()
        .filter(|(_, seeds)| seeds.seeds_applied == 0)
        .map(|(kind, _)| kind.as_str())
        .collect();
    if !never.is_empty() {
        text.push_str(&format!("  never applied in {seed_count} seeds: {}\n", never.join(", ")));
    }
    let distinct: usize = situations.values().map(BTreeMap::len).sum();
    text.push_str(&format!(
        "  {:<18} {distinct:>6} distinct (fault kind: node state, seeds)\n",
        "situations"
    ));
    for (kind, states) in situations {
        let items: Vec<String> =
            states.iter().map(|(state, seeds)| format!("{state} {}", seeds.seeds)).collect();
        text.push_str(&wrap(&format!("    {kind}: "), &items));
    }
    text
}

/// `items` joined by commas after `first`, wrapped before `WIDTH_MAX` columns, indented.
fn wrap(first: &str, items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let indent = " ".repeat(first.len().min(8));
    let mut text = String::new();
    let mut line = first.to_string();
    let mut line_empty = true;
    for (index, item) in items.iter().enumerate() {
        let comma = if index + 1 < items.len() { "," } else { "" };
        if !line_empty && line.len() + 1 + item.len() + comma.len() > WIDTH_MAX {
            text.push_str(&line);
            text.push('\n');
            line.clone_from(&indent);
            line_empty = true;
        }
        if !line_empty {
            line.push(' ');
        }
        line.push_str(item);
        line.push_str(comma);
        line_empty = false;
    }
    text.push_str(&line);
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(faults: &[(&str, u64)], situations: &[(&str, &str, u64)]) -> Coverage {
        let mut coverage = Coverage::default();
        for (kind, count) in faults {
            coverage.faults.insert(kind.to_string(), *count);
        }
        for (kind, state, hits) in situations {
            let states = coverage.situations.entry(kind.to_string()).or_default();
            states.insert(state.to_string(), *hits);
        }
        coverage
    }

    fn runs() -> Vec<Coverage> {
        vec![
            run(&[("crash", 2)], &[("crash", "up/idle", 1), ("crash", "down", 1)]),
            run(&[("crash", 1), ("split", 1)], &[("crash", "up/idle", 1), ("split", "up", 3)]),
            run(&[], &[]),
        ]
    }

    #[test]
    fn runs_count_once_per_seed_with_totals_beside() {
        let mut faults = allowed(&[FaultClass::Crash, FaultClass::Pause]);
        let mut situations = SituationCounts::new();
        for coverage in runs() {
            add_run(&mut faults, &mut situations, &coverage);
        }
        assert_eq!(faults["crash"], FaultSeeds { seeds_applied: 2, applied_count: 3 });
        assert_eq!(faults["split"], FaultSeeds { seeds_applied: 1, applied_count: 1 });
        assert_eq!(faults["pause"], FaultSeeds::default());
        assert_eq!(situations["crash"]["up/idle"], SituationSeeds { seeds: 2, hit_count: 2 });
        assert_eq!(situations["split"]["up"], SituationSeeds { seeds: 1, hit_count: 3 });
    }

    /// Any split of the runs into parts, counted per part and added, gives the whole's counts.
    #[test]
    fn parts_add_up_to_the_whole() {
        let classes = [FaultClass::Crash, FaultClass::Pause];
        let count = |runs: &[Coverage]| {
            let (mut faults, mut situations) = (allowed(&classes), SituationCounts::new());
            runs.iter().for_each(|run| add_run(&mut faults, &mut situations, run));
            (faults, situations)
        };
        let all = runs();
        let whole = count(&all);
        for split in 0..=all.len() {
            let (left, right) = (count(&all[..split]), count(&all[split..]));
            let (mut faults, mut situations) = left;
            add(&mut faults, &mut situations, (&right.0, &right.1));
            assert_eq!((faults, situations), whole, "split at {split}");
        }
    }

    #[test]
    fn render_lists_kinds_never_applied_and_situations() {
        let (mut faults, mut situations) =
            (allowed(&[FaultClass::Crash, FaultClass::Pause]), SituationCounts::new());
        runs().iter().for_each(|run| add_run(&mut faults, &mut situations, run));
        let text = render(&faults, &situations, 3);
        let expected = "  fault kinds             2 of 3 applied; per kind, seeds (faults begun):
    crash 2 (3), split 1 (1)
  never applied in 3 seeds: pause
  situations              3 distinct (fault kind: node state, seeds)
    crash: down 1, up/idle 2
    split: up 1
";
        assert_eq!(text, expected);
        assert_eq!(render(&FaultCounts::new(), &situations, 3), "");
    }

    #[test]
    fn long_lists_wrap_under_their_first_line() {
        let items: Vec<String> = (0..40).map(|index| format!("state-{index} 1")).collect();
        let text = wrap("    crash: ", &items);
        assert!(text.lines().count() > 1, "{text}");
        assert!(text.lines().all(|line| line.len() <= WIDTH_MAX), "{text}");
        assert!(text.lines().skip(1).all(|line| line.starts_with("        s")), "{text}");
        assert_eq!(text.matches("state-").count(), 40);
    }
}
