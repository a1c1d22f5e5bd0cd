//! Swarm configuration: the shape of one run (node counts, phase lengths, network, workload mix),
//! drawn from the seed within the bounds a scenario declares.
//!
//! As in TigerBeetle's VOPR, a seed does not only pick events inside a fixed configuration: it
//! picks the configuration too, so a sweep covers small and large clusters, calm and lossy links,
//! read-heavy and write-heavy mixes. The drawn `Swarm` is plain serde data and is stored in the
//! plan file, so a replay or a shrunk plan runs with exactly the same shape.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sim::world::LinkConfig;

use crate::plan::FaultClass;

/// An inclusive range a swarm parameter is drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
}

impl Span {
    /// The span `min..=max`.
    pub const fn new(min: u64, max: u64) -> Span {
        assert!(min <= max);
        Span { min, max }
    }

    /// The span holding only `value`.
    pub const fn exactly(value: u64) -> Span {
        Span { min: value, max: value }
    }

    fn draw(self, rng: &mut impl Rng) -> u64 {
        rng.random_range(self.min..=self.max)
    }
}

/// What a scenario allows a seed to choose.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// Server nodes (replicas).
    pub node_count: Span,
    /// Client nodes driving the workload.
    pub client_count: Span,
    /// Distinct keys of the workload.
    pub key_count: Span,
    /// Length of the faulty phase, in milliseconds of simulated time.
    pub faulty_ms: Span,
    /// Length of the healed phase, in milliseconds.
    pub healed_ms: u64,
    /// Progress must resume within this many milliseconds after the heal.
    pub liveness_bound_ms: u64,
    /// Faults in the plan.
    pub fault_count: Span,
    /// The kinds of fault the nemesis may use.
    pub fault_classes: &'static [FaultClass],
    /// Largest base packet loss of every link during the run, in percent.
    pub link_loss_percent_max: u64,
    /// Largest client think time between two operations, in milliseconds.
    pub think_ms: Span,
    /// Share of reads in the workload, in percent.
    pub read_percent: Span,
}

/// One run's drawn configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Swarm {
    /// Server nodes.
    pub node_count: u32,
    /// Client nodes.
    pub client_count: u32,
    /// Distinct keys.
    pub key_count: u32,
    /// Faulty phase length, in milliseconds.
    pub faulty_ms: u64,
    /// Healed phase length, in milliseconds.
    pub healed_ms: u64,
    /// Progress must resume within this many milliseconds after the heal.
    pub liveness_bound_ms: u64,
    /// Every link between distinct nodes, outside of fault spikes.
    pub link: LinkConfig,
    /// Largest client think time, in milliseconds.
    pub think_ms_max: u64,
    /// Share of reads, in percent.
    pub read_percent: u32,
}

impl Swarm {
    /// Draws a swarm within `bounds`; `rng` is the plan's own stream, never the world's.
    pub fn draw(bounds: &Bounds, rng: &mut impl Rng) -> Swarm {
        let link = LinkConfig {
            latency: Duration::from_micros(rng.random_range(200..=5_000)),
            jitter: Duration::from_micros(rng.random_range(0..=2_000)),
            loss: rng.random_range(0..=bounds.link_loss_percent_max) as f64 / 100.0,
            duplicate: if rng.random_bool(0.3) { 0.01 } else { 0.0 },
            reorder: if rng.random_bool(0.3) { 0.05 } else { 0.0 },
            ..LinkConfig::default()
        };
        Swarm {
            node_count: narrow(bounds.node_count.draw(rng)),
            client_count: narrow(bounds.client_count.draw(rng)),
            key_count: narrow(bounds.key_count.draw(rng)),
            faulty_ms: bounds.faulty_ms.draw(rng),
            healed_ms: bounds.healed_ms,
            liveness_bound_ms: bounds.liveness_bound_ms,
            link,
            think_ms_max: bounds.think_ms.draw(rng),
            read_percent: narrow(bounds.read_percent.draw(rng)),
        }
    }

    /// Simulated length of the whole run (both phases), in milliseconds.
    pub fn total_ms(&self) -> u64 {
        self.faulty_ms + self.healed_ms
    }
}

fn narrow(value: u64) -> u32 {
    u32::try_from(value).expect("swarm bounds fit in u32")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            node_count: Span::new(3, 5),
            client_count: Span::new(1, 3),
            key_count: Span::exactly(2),
            faulty_ms: Span::new(1_000, 2_000),
            healed_ms: 500,
            liveness_bound_ms: 400,
            fault_count: Span::new(0, 4),
            fault_classes: &[FaultClass::Crash],
            link_loss_percent_max: 3,
            think_ms: Span::new(0, 10),
            read_percent: Span::new(20, 80),
        }
    }

    #[test]
    fn draws_stay_within_bounds() {
        for seed in 0..200 {
            let swarm = Swarm::draw(&bounds(), &mut ChaCha8Rng::seed_from_u64(seed));
            assert!((3..=5).contains(&swarm.node_count));
            assert!((1..=3).contains(&swarm.client_count));
            assert_eq!(swarm.key_count, 2);
            assert!((1_000..=2_000).contains(&swarm.faulty_ms));
            assert!(swarm.link.loss <= 0.03);
            assert!((20..=80).contains(&swarm.read_percent));
            assert_eq!(swarm.total_ms(), swarm.faulty_ms + 500);
        }
    }

    #[test]
    fn same_seed_same_swarm() {
        let first = Swarm::draw(&bounds(), &mut ChaCha8Rng::seed_from_u64(9));
        let again = Swarm::draw(&bounds(), &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(first, again);
    }
}
