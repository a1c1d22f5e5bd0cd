//! Shared helpers of the docdb integration tests: a one-node simulated world and a runner.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

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

/// Small LSM options so a few hundred documents flush and compact.
pub fn options() -> docdb::Options {
    docdb::Options { lsm: lsm::Options::tiny(), ..docdb::Options::default() }
}
