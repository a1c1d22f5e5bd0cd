//! Fault hooks shared by the systems' sans-IO cores: BUGGIFY sites and planted bugs.
//!
//! A sans-IO core takes no `Env`, so its driver hands it a `Faults` whose hook asks
//! `Env::buggify`; tests and production cores keep `Faults::default()`, which never fires.
//! Each system names its own planted bugs (an enum implementing `PlantedBugs`) and its own
//! BUGGIFY site prefix; a planted bug acts only when that system's `planted-bugs` feature is on
//! (`PlantedBugs::PLANTING_ENABLED`, evaluated in the system's crate), whatever was asked for.

use std::fmt;
use std::sync::Arc;

/// A BUGGIFY oracle: whether the named site fires now.
pub type BuggifyHook = Arc<dyn Fn(&'static str) -> bool + Send + Sync>;

/// A system's set of known bugs to plant.
pub trait PlantedBugs: Copy + PartialEq + fmt::Debug {
    /// The prefix every BUGGIFY site of the system carries (`"wireguard."`, `"gossip."`).
    const SITE_PREFIX: &'static str;
    /// Whether planting acts: the system's `cfg!(feature = "planted-bugs")`.
    const PLANTING_ENABLED: bool;
}

/// What may go wrong on purpose inside a core of the system whose bugs are `B`.
pub struct Faults<B> {
    hook: Option<BuggifyHook>,
    planted: Option<B>,
}

impl<B> Default for Faults<B> {
    fn default() -> Self {
        Faults { hook: None, planted: None }
    }
}

impl<B: Copy> Clone for Faults<B> {
    fn clone(&self) -> Self {
        Faults { hook: self.hook.clone(), planted: self.planted }
    }
}

impl<B: fmt::Debug> fmt::Debug for Faults<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("hook", &self.hook.is_some())
            .field("planted", &self.planted)
            .finish()
    }
}

impl<B: PlantedBugs> Faults<B> {
    /// Faults whose BUGGIFY sites ask `hook`.
    pub fn with_hook(hook: BuggifyHook) -> Self {
        Faults { hook: Some(hook), planted: None }
    }

    /// The same faults with `bug` planted (inert unless `B::PLANTING_ENABLED`).
    pub fn planting(mut self, bug: Option<B>) -> Self {
        self.planted = bug;
        self
    }

    /// Whether BUGGIFY site `site` fires now (never without a hook).
    pub fn buggify(&self, site: &'static str) -> bool {
        assert!(site.starts_with(B::SITE_PREFIX), "site {site} is not named {}*", B::SITE_PREFIX);
        self.hook.as_ref().is_some_and(|hook| hook(site))
    }

    /// Whether `bug` is planted (never unless `B::PLANTING_ENABLED`).
    pub fn planted(&self, bug: B) -> bool {
        B::PLANTING_ENABLED && self.planted == Some(bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Bug {
        One,
        Two,
    }

    impl PlantedBugs for Bug {
        const SITE_PREFIX: &'static str = "test.";
        const PLANTING_ENABLED: bool = true;
    }

    #[test]
    fn default_never_fires_and_a_hook_decides_per_site() {
        let quiet = Faults::<Bug>::default();
        assert!(!quiet.buggify("test.anything"));
        assert!(!quiet.planted(Bug::One));
        let hook: BuggifyHook = Arc::new(|site| site == "test.yes");
        let faults = Faults::<Bug>::with_hook(hook).planting(Some(Bug::Two));
        assert!(faults.buggify("test.yes") && !faults.buggify("test.no"));
        assert!(faults.planted(Bug::Two) && !faults.planted(Bug::One));
        assert_eq!(format!("{:?}", faults.clone()), "Faults { hook: true, planted: Some(Two) }");
    }
}
