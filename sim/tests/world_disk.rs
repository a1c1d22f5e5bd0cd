//! Disk faults and durability as a node sees them through `Env`.
//!
//! Goal: every injected fault (EIO on read, write and sync; bit flips on read; a full disk)
//! reaches the caller as an error or as detectably wrong bytes, is counted and recorded in the
//! trace; latency is modelled; and durability holds exactly at acknowledged syncs. Method: one
//! node per test, faults switched on one at a time with probability 1 through `World::set_disk`.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::world::{DiskConfig, NodeId, SimConfig, SimEnv, TraceKind, World};
use sim::{Env, File, Instant, OpenOptions};

fn node_world(seed: u64) -> (World, NodeId) {
    let mut config = SimConfig::new(seed);
    config.record_trace = true;
    let world = World::new(config);
    let node = world.add_node("disk", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    (world, node)
}

fn with_faults(world: &World, node: NodeId, change: impl FnOnce(&mut DiskConfig)) {
    let mut config = DiskConfig::default();
    change(&mut config);
    world.set_disk(node, config);
}

/// Runs `program` on the node to completion.
fn run<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
    world: &World,
    node: NodeId,
    program: impl FnOnce(SimEnv) -> F,
) -> T {
    let env = world.env(node);
    world.block_on(node, Duration::from_secs(60), program(env)).expect("the program finishes")
}

fn fault_records(world: &World) -> Vec<u64> {
    let records = world.trace_records().expect("recorded");
    records.iter().filter(|record| record.kind == TraceKind::DiskFault).map(|r| r.a).collect()
}

async fn write_file(env: &SimEnv, path: &str, data: &[u8]) -> std::io::Result<sim::world::SimFile> {
    let file = env.open(path, OpenOptions::CREATE).await?;
    file.write_at(0, data).await?;
    file.sync().await?;
    env.sync_dir("").await?;
    Ok(file)
}

#[test]
fn read_write_and_sync_errors_are_injected_counted_and_traced() {
    let (world, node) = node_world(1);
    run(&world, node, |env| async move { write_file(&env, "f", b"hello").await.map(drop) })
        .expect("healthy disk");
    for (code, change) in [
        (0u64, (|config: &mut DiskConfig| config.faults.read_error = 1.0) as fn(&mut DiskConfig)),
        (1, |config: &mut DiskConfig| config.faults.write_error = 1.0),
        (2, |config: &mut DiskConfig| config.faults.sync_error = 1.0),
    ] {
        with_faults(&world, node, change);
        let kinds = run(&world, node, |env| async move {
            let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
            let read = file.read_at(0, &mut [0u8; 5]).await.map(drop);
            let write = file.write_at(0, b"HELLO").await;
            let sync = file.sync().await;
            [read, write, sync].map(|result| result.err().map(|error| error.to_string()))
        });
        let failed: Vec<_> = kinds.iter().map(Option::is_some).collect();
        let mut expected = [false; 3];
        expected[code as usize] = true;
        assert_eq!(failed, expected, "fault {code}: {kinds:?}");
        let message = kinds[code as usize].as_deref().expect("failed");
        assert!(message.contains("EIO"), "{message}");
        assert!(fault_records(&world).contains(&code));
    }
    assert_eq!(world.stats().disk_fault_count, 3);
}

#[test]
fn a_failed_write_changes_nothing_and_a_failed_sync_makes_nothing_durable() {
    let (world, node) = node_world(2);
    let mut config = DiskConfig::default();
    config.crash.drop_probability = 1.0;
    config.crash.tear_probability = 0.0;
    world.set_disk(node, config.clone());
    run(&world, node, |env| async move { write_file(&env, "f", b"durable").await.map(drop) })
        .expect("healthy disk");
    config.faults.write_error = 1.0;
    world.set_disk(node, config.clone());
    let content = run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
        assert!(file.write_at(0, b"CHANGED").await.is_err());
        let mut buf = [0u8; 7];
        file.read_exact_at(0, &mut buf).await.expect("read");
        buf
    });
    assert_eq!(&content, b"durable");

    config.faults.write_error = 0.0;
    config.faults.sync_error = 1.0;
    world.set_disk(node, config.clone());
    run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
        file.write_at(0, b"pending").await.expect("write");
        assert!(file.sync().await.is_err(), "the sync fails");
    });
    world.crash(node);
    world.restart(node);
    let after = run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
        let mut buf = [0u8; 7];
        file.read_exact_at(0, &mut buf).await.expect("read");
        buf
    });
    assert_eq!(&after, b"durable", "an unacknowledged sync made nothing durable");
}

#[test]
fn read_corruption_flips_one_bit_of_what_is_returned_not_of_what_is_stored() {
    let (world, node) = node_world(3);
    let data: Vec<u8> = (0..4096u32).map(|index| (index * 7) as u8).collect();
    let stored = data.clone();
    run(&world, node, move |env| async move { write_file(&env, "f", &stored).await.map(drop) })
        .expect("healthy disk");
    let read = || {
        run(&world, node, |env| async move {
            let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
            let mut buf = vec![0u8; 4096];
            file.read_exact_at(0, &mut buf).await.expect("read");
            buf
        })
    };
    with_faults(&world, node, |config| config.faults.read_corruption = 1.0);
    let corrupted = read();
    let flipped: u32 =
        corrupted.iter().zip(&data).map(|(seen, written)| (seen ^ written).count_ones()).sum();
    assert_eq!(flipped, 1);
    assert_eq!(fault_records(&world), vec![3]);
    with_faults(&world, node, |_| {});
    assert_eq!(read(), data, "the stored bytes are intact");
}

#[test]
fn a_full_disk_fails_with_storage_full_and_keeps_what_fit() {
    let (world, node) = node_world(4);
    with_faults(&world, node, |config| config.faults.capacity_bytes = Some(10_000));
    let (first, second, length) = run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::CREATE).await.expect("open");
        let first = file.append(&[1u8; 8_000]).await.map(drop).map_err(|error| error.kind());
        let second = file.append(&[2u8; 8_000]).await.map(drop).map_err(|error| error.kind());
        (first, second, file.len().await.expect("len"))
    });
    assert_eq!((first, second, length), (Ok(()), Err(ErrorKind::StorageFull), 8_000));
    assert_eq!(fault_records(&world), vec![4]);
}

#[test]
fn operations_take_their_modelled_time() {
    let (world, node) = node_world(5);
    with_faults(&world, node, |config| {
        config.op_latency = Duration::from_micros(100);
        config.op_jitter = Duration::ZERO;
        config.sync_latency = Duration::from_millis(2);
        config.throughput_bytes_per_sec = 100 * 1024 * 1024;
    });
    let times = run(&world, node, |env| async move {
        let start = env.now();
        let file = env.open("f", OpenOptions::CREATE).await.expect("open");
        let opened = env.now();
        file.write_at(0, &vec![0u8; 1024 * 1024]).await.expect("write");
        let written = env.now();
        file.sync().await.expect("sync");
        (opened - start, written - opened, env.now() - written)
    });
    // 1 MiB at 100 MiB/s is 10 ms of transfer on top of the 100 us operation cost.
    let expected =
        (Duration::from_micros(100), Duration::from_micros(10_100), Duration::from_millis(2));
    assert_eq!(times, expected);
}

#[test]
fn a_crash_during_a_sync_leaves_the_data_unsynced() {
    let (world, node) = node_world(6);
    with_faults(&world, node, |config| {
        config.sync_latency = Duration::from_millis(10);
        config.crash.drop_probability = 1.0;
        config.crash.tear_probability = 0.0;
    });
    let acknowledged = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&acknowledged);
    let env = world.env(node);
    world.spawn(node, async move {
        let file = write_file(&env, "f", b"old").await.expect("healthy disk");
        file.write_at(0, b"new").await.expect("write");
        file.sync().await.expect("sync");
        *flag.lock().expect("lock") = true;
    });
    // The first sync finishes at about 20 ms (file and directory); the second is in flight.
    world.run_until(Instant::from_nanos(25_000_000)).expect("runs");
    assert!(!*acknowledged.lock().expect("lock"), "the second sync is still in flight");
    world.crash(node);
    world.restart(node);
    let content = run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
        let mut buf = [0u8; 3];
        file.read_exact_at(0, &mut buf).await.expect("read");
        buf
    });
    assert_eq!(&content, b"old");
}

#[test]
fn rename_then_sync_dir_replaces_atomically_across_a_crash() {
    for (sync_dir, expected) in [(true, b"new"), (false, b"old")] {
        let (world, node) = node_world(7);
        with_faults(&world, node, |config| {
            config.crash.drop_probability = 1.0;
            config.crash.tear_probability = 0.0;
        });
        run(&world, node, move |env| async move {
            write_file(&env, "current", b"old").await.expect("write old");
            write_file(&env, "current.tmp", b"new").await.expect("write new");
            env.rename("current.tmp", "current").await.expect("rename");
            if sync_dir {
                env.sync_dir("").await.expect("sync dir");
            }
        });
        world.crash(node);
        world.restart(node);
        let content = run(&world, node, |env| async move {
            let file = env.open("current", OpenOptions::EXISTING).await.expect("open");
            let mut buf = [0u8; 3];
            file.read_exact_at(0, &mut buf).await.expect("read");
            buf
        });
        assert_eq!(&content, expected, "sync_dir = {sync_dir}");
    }
}

#[test]
fn a_misdirected_write_lands_whole_sectors_away_and_reports_success() {
    let (world, node) = node_world(8);
    run(&world, node, |env| async move { write_file(&env, "f", &[0u8; 16 * 512]).await.map(drop) })
        .expect("healthy disk");
    with_faults(&world, node, |config| config.faults.misdirected_write = 1.0);
    let content = run(&world, node, |env| async move {
        let file = env.open("f", OpenOptions::EXISTING).await.expect("open");
        file.write_at(8 * 512, &[0xAA; 512]).await.expect("reported as written");
        let mut buf = vec![0u8; file.len().await.expect("len") as usize];
        file.read_exact_at(0, &mut buf).await.expect("read");
        buf
    });
    assert!(content[8 * 512..9 * 512].iter().all(|byte| *byte == 0), "the target is untouched");
    let landed = content.iter().position(|byte| *byte == 0xAA).expect("the bytes landed");
    let distance = landed.abs_diff(8 * 512);
    assert!(distance % 512 == 0 && (512..=8 * 512).contains(&distance), "landed at {landed}");
    assert!(content[landed..landed + 512].iter().all(|byte| *byte == 0xAA));
    assert_eq!(fault_records(&world), vec![5]);
}

#[test]
fn a_crash_releases_file_locks() {
    let (world, node) = node_world(11);
    let env = world.env(node);
    let holder = world
        .block_on(node, Duration::from_secs(60), async move {
            let file = env.open("LOCK", OpenOptions::CREATE).await.expect("open");
            env.sync_dir("").await.expect("the entry survives the crash");
            file.try_lock().expect("lock");
            file
        })
        .expect("runs");
    let refused = run(&world, node, |env| async move {
        let other = env.open("LOCK", OpenOptions::CREATE).await.expect("open");
        other.try_lock().map_err(|error| error.kind())
    });
    assert_eq!(refused, Err(ErrorKind::WouldBlock));
    world.crash(node);
    world.restart(node);
    let after = run(&world, node, |env| async move {
        let file = env.open("LOCK", OpenOptions::CREATE).await.expect("open");
        file.try_lock().map_err(|error| error.kind())
    });
    assert_eq!(after, Ok(()), "the crashed process held the lock; the new one takes it");
    drop(holder);
}
