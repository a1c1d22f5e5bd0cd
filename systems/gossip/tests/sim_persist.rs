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

/// A node's counter updates survive a crash, and updates after the restart add to them.
#[test]
fn counter_updates_survive_a_restart_and_keep_adding() {
    use gossip::store::Update;
    let seed = 0x5eed_0510;
    let mut options = Options::new(4, 0.0);
    options.snapshot_interval = Some(Duration::from_secs(5));
    let cluster = Cluster::new(seed, &options);
    cluster.run(Duration::from_secs(6));
    for _ in 0..3 {
        cluster.update(2, b"c", Update::Add(2));
    }
    cluster.run(Duration::from_millis(100));
    isolate(&cluster, 2);
    cluster.crash(2);
    cluster.restart(2);
    cluster.run(Duration::from_millis(100));
    let count = |index| cluster.value(index, b"c").and_then(|value| value.count());
    assert_eq!(count(2), Some(6), "seed {seed:#x}: WAL replay");
    cluster.update(2, b"c", Update::Add(-1));
    cluster.update(0, b"c", Update::Add(10));
    cluster.run(Duration::from_millis(100));
    cluster.world.heal();
    cluster.run(Duration::from_secs(60));
    assert_converged(&cluster, seed);
    for index in 0..4 {
        assert_eq!(count(index), Some(15), "seed {seed:#x}: n{index}");
    }
}

/// A directory written by format version 1 (logs named `wal-*`) is refused with a typed error,
/// never misread as version 2.
#[test]
fn a_version_one_directory_is_refused() {
    use std::sync::{Arc, Mutex};

    use gossip::persist::{PersistError, load};
    use sim::world::{SimConfig, World};
    use sim::{Env, File, OpenOptions};

    let world = World::new(SimConfig::new(0x5eed_0520));
    let result = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&result);
    world.add_node_with("n0", "10.0.0.1".parse().expect("ip"), move |env| {
        let slot = Arc::clone(&slot);
        async move {
            env.create_dir_all("gossip").await.expect("mkdir");
            let file = env.open("gossip/wal-0000000000000001", OpenOptions::CREATE).await;
            file.expect("create").append(b"old record").await.expect("append");
            let loaded = load(&env, "gossip").await;
            *slot.lock().expect("lock") = Some(matches!(loaded, Err(PersistError::Version(1))));
        }
    });
    world.run_for(Duration::from_secs(1)).expect("runs");
    assert_eq!(*result.lock().expect("lock"), Some(true));
}
