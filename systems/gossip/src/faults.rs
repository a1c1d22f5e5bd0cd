//! Fault hooks for the sans-IO node: BUGGIFY sites and planted bugs.
//!
//! The sans-IO node takes no `Env`, so the driver hands it a `Faults` whose hook asks
//! `Env::buggify`; tests and production cores keep `Faults::default()`, which never fires.
//! Planted bugs (feature `planted-bugs` only) are known defects the simulation harness must
//! find: without the feature `planted` is always `false`, whatever was asked for.

use std::fmt;
use std::sync::Arc;

/// A BUGGIFY oracle: whether the named site fires now.
pub type BuggifyHook = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

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

/// What may go wrong on purpose inside a core.
#[derive(Clone, Default)]
pub struct Faults {
    hook: Option<BuggifyHook>,
    planted: Option<PlantedBug>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("hook", &self.hook.is_some())
            .field("planted", &self.planted)
            .finish()
    }
}

impl Faults {
    /// Faults whose BUGGIFY sites ask `hook`.
    pub fn with_hook(hook: BuggifyHook) -> Self {
        Faults { hook: Some(hook), planted: None }
    }

    /// The same faults with `bug` planted (inert without feature `planted-bugs`).
    pub fn planting(mut self, bug: Option<PlantedBug>) -> Self {
        self.planted = bug;
        self
    }

    /// Whether BUGGIFY site `site` fires now (never without a hook).
    pub fn buggify(&self, site: &'static str) -> bool {
        assert!(site.starts_with("gossip."), "site {site} is not named gossip.*");
        self.hook.as_ref().is_some_and(|hook| hook(site))
    }

    /// Whether `bug` is planted (never without feature `planted-bugs`).
    pub fn planted(&self, bug: PlantedBug) -> bool {
        cfg!(feature = "planted-bugs") && self.planted == Some(bug)
    }
}
