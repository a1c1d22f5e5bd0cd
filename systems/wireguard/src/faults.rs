//! Fault hooks for the sans-IO core: BUGGIFY sites and planted bugs.
//!
//! The protocol core takes no `Env`, so the driver hands it a `Faults` whose hook asks
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
    /// The replay window compares with `>=` where it must use `>`: a copy of the greatest
    /// counter seen so far is accepted again, so a duplicated datagram is delivered twice.
    ReplayAcceptsGreatestAgain,
    /// The replay window's slide into a new word clears the word it leaves as well (an
    /// off-by-one in RFC 6479's loop, `old..=new` for `old + 1..=new`): the counters just
    /// received there are forgotten, so a late duplicate of one of them is delivered again.
    ReplaySlideClearsLiveWord,
}

impl PlantedBugs for PlantedBug {
    const SITE_PREFIX: &'static str = "wireguard.";
    const PLANTING_ENABLED: bool = cfg!(feature = "planted-bugs");
}

/// What may go wrong on purpose inside a core: every BUGGIFY site is named `wireguard.*`.
pub type Faults = sim::faults::Faults<PlantedBug>;
