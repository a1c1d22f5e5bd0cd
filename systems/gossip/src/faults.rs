//! Fault hooks for the sans-IO node: BUGGIFY sites and planted bugs.
//!
//! The sans-IO node takes no `Env`, so the driver hands it a `Faults` whose hook asks
//! `Env::buggify`; tests and production cores keep `Faults::default()`, which never fires.
//! Planted bugs (feature `planted-bugs` only) are known defects the simulation harness must
//! find: without the feature `planted` is always `false`, whatever was asked for. The hook type
//! itself is `sim::faults::Faults`, shared by every system; this file names the sites' prefix
//! and the bugs.

pub use sim::faults::BuggifyHook;
use sim::faults::PlantedBugs;

/// A known bug to plant (acts only with feature `planted-bugs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedBug {
    /// A node suspected at incarnation `i` refutes with incarnation `i` instead of `i + 1`:
    /// its `Alive` loses to the `Suspect` at the same incarnation, and it is declared dead
    /// while it runs.
    RefuteWithStaleIncarnation,
    /// The tombstone TTL is handed to the purge in seconds where it wants milliseconds, so
    /// tombstones go after 3.6 s instead of an hour, and a replica that missed a remove
    /// brings the element back through anti-entropy.
    PurgeTtlInSeconds,
}

impl PlantedBugs for PlantedBug {
    const SITE_PREFIX: &'static str = "gossip.";
    const PLANTING_ENABLED: bool = cfg!(feature = "planted-bugs");
}

/// What may go wrong on purpose inside a core: every BUGGIFY site is named `gossip.*`.
pub type Faults = sim::faults::Faults<PlantedBug>;
