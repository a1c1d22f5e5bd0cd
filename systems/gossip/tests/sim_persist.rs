//! Persistence scenarios: a node's writes, clock, incarnation and membership survive crashes.
//!
//! Goal: local writes acknowledged by `put` are on disk (WAL) at once, snapshots fold them in,
//! and a restarted node comes back with its data before any peer can tell it, with a higher
//! incarnation, and rejoins. Method: crash a node before and after a snapshot while it is cut
//! off from every peer, restart it, and inspect it; then heal and check convergence.

mod common;

use std::time::Duration;

use common::{Cluster, Options, assert_converged};

fn isolate(cluster: &Cluster, index: usize) {
    for other in (0..cluster.nodes.len()).filter(|other| *other != index) {
        cluster.world.partition(cluster.nodes[index], cluster.nodes[other]);
    }
}

fn keys_of(cluster: &Cluster, index: usize) -> usize {
    cluster.handle(index).with_node(|node| node.store().len())
}

#[test]
fn writes_survive_crashes_from_the_wal_and_from_snapshots() {
    let seed = 0x5eed_0500;
    let mut options = Options::new(6, 0.0);
    options.snapshot_interval = Some(Duration::from_secs(5));
    let cluster = Cluster::new(seed, &options);
    // Past the first snapshot, which records the membership.
    cluster.run(Duration::from_secs(6));
    isolate(&cluster, 4);
    for key in 0..10u32 {
        cluster.put(4, format!("w{key}").as_bytes(), b"logged");
    }
    cluster.run(Duration::from_millis(100));
    let incarnation = cluster.handle(4).with_node(|node| node.swim().own().incarnation);
    // Before any snapshot: only the WAL has the writes.
    cluster.crash(4);
    cluster.restart(4);
    cluster.run(Duration::from_millis(100));
    assert_eq!(keys_of(&cluster, 4), 10, "seed {seed:#x}: WAL replay");
    let known = cluster.handle(4).with_node(|node| node.swim().members().count());
    assert_eq!(known, 6, "seed {seed:#x}: membership restored");
    // After a snapshot (and with the WAL folded in): the snapshot has them.
    cluster.run(Duration::from_secs(6));
    cluster.crash(4);
    cluster.restart(4);
    cluster.run(Duration::from_millis(100));
    assert_eq!(keys_of(&cluster, 4), 10, "seed {seed:#x}: snapshot");
    let after = cluster.handle(4).with_node(|node| node.swim().own().incarnation);
    assert!(after > incarnation, "seed {seed:#x}: incarnation {after} <= {incarnation}");
    cluster.world.heal();
    cluster.run(Duration::from_secs(60));
    assert_converged(&cluster, seed);
    assert_eq!(keys_of(&cluster, 0), 10);
}
