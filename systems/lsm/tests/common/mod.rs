//! Shared helpers of the lsm integration tests: a one-node simulated world, small store
//! options that make flushes and compactions frequent, and the seed list (`SIM_SEEDS`).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use lsm::Options;
use sim::world::{NodeId, SimConfig, SimEnv, World};

/// A world with one node, `db`.
pub fn world(seed: u64) -> (World, NodeId) {
    let world = World::new(SimConfig::new(seed));
    let node = world.add_node("db", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    (world, node)
}

/// Runs `program` on `node` to completion (ten simulated minutes at most).
pub fn run<T, F>(world: &World, node: NodeId, program: impl FnOnce(SimEnv) -> F) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let env = world.env(node);
    match world.block_on(node, Duration::from_secs(600), program(env)) {
        Ok(output) => output,
        Err(error) => panic!("seed {:#x}: simulation failed: {error}", world.seed()),
    }
}

/// Options with tiny memtables, blocks and levels so a few hundred writes exercise every path.
pub fn small_options() -> Options {
    Options::tiny()
}

/// The seeds to run: `count` fixed ones, or `SIM_SEEDS` of them.
pub fn seeds(count: u64) -> Vec<u64> {
    let count = std::env::var("SIM_SEEDS").ok().and_then(|text| text.parse().ok()).unwrap_or(count);
    (0..count).map(|index| 0x15a0_0000 + index).collect()
}
