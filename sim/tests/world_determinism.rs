//! Determinism: the same seed gives a byte-identical trace; different seeds give different ones.
//!
//! Goal: catch any hidden nondeterminism (hash-map order, OS time, thread timing) in the world.
//! Method: a workload that exercises every part (datagrams under loss and duplication, streams,
//! disk writes and syncs, crashes with torn writes, restarts, partitions both ways and one way,
//! clogging, pauses, clock skew and jumps, buggify, node rngs) runs twice per seed and the trace
//! hashes are compared; the same runs on parallel threads must give the same hashes as alone
//! (no process-global state).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rand_core::RngCore;
use sim::workloads::{PING_WORKLOADS, run_ping};
use sim::world::{LinkConfig, SimConfig, World};
use sim::{Env, File, OpenOptions, TcpListener, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
}

/// Every node: a UDP gossip loop, a TCP server, a TCP client to its neighbour, a disk log.
async fn node_main(env: sim::world::SimEnv, me: u8, count: u8) {
    let next = me % count + 1;
    let socket = Arc::new(env.bind_udp(addr(me, 5000)).await.expect("bind"));
    let listener = env.listen_tcp(addr(me, 6000)).await.expect("listen");
    let server_env = env.clone();
    env.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            server_env.spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok(count) = stream.read(&mut buf).await {
                    if count == 0 || stream.write_all(&buf[..count]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let receiver = Arc::clone(&socket);
    env.spawn(async move {
        let mut buf = [0u8; 64];
        while receiver.recv_from(&mut buf).await.is_ok() {}
    });
    let file = env.open("log", OpenOptions::CREATE).await.expect("open");
    let _ = env.sync_dir("").await;
    let mut rng = env.rng();
    for round in 0u32..200 {
        let jitter = Duration::from_micros(rng.next_u64() % 20_000);
        env.sleep(Duration::from_millis(10) + jitter).await;
        let _ = socket.send_to(&round.to_le_bytes(), addr(next, 5000)).await;
        let _ = file.append(&round.to_le_bytes()).await;
        if env.buggify("determinism.sync") || round % 16 == 0 {
            let _ = file.sync().await;
        }
        if round % 50 == 0
            && let Ok(Ok(mut stream)) =
                env.timeout(Duration::from_secs(1), env.connect_tcp(addr(next, 6000))).await
        {
            let _ = stream.write_all(&[me; 300]).await;
            let mut echo = [0u8; 300];
            let _ = env.timeout(Duration::from_secs(1), stream.read_exact(&mut echo)).await;
        }
    }
}

fn kitchen_sink(seed: u64) -> (u64, u64) {
    let mut config = SimConfig::new(seed);
    config.net.link =
        LinkConfig { loss: 0.05, duplicate: 0.05, reorder: 0.1, ..LinkConfig::default() };
    config.clock_offset_max = Duration::from_millis(500);
    config.clock_drift_ppm_max = 200;
    let world = World::new(config);
    let count = 4u8;
    let nodes: Vec<_> = (1..=count)
        .map(|me| {
            let ip = addr(me, 0).ip();
            world.add_node_with(&format!("n{me}"), ip, move |env| node_main(env, me, count))
        })
        .collect();
    world.run_for(Duration::from_millis(700)).expect("runs");
    world.partition(nodes[0], nodes[1]);
    world.partition_oneway(nodes[3], nodes[0]);
    world.crash(nodes[2]);
    world.clog(nodes[1]);
    world.run_for(Duration::from_millis(500)).expect("runs");
    world.restart(nodes[2]);
    world.pause(nodes[3]);
    world.unclog(nodes[1]);
    world.set_clock(nodes[0], -3_000_000_000, 50);
    world.run_for(Duration::from_millis(300)).expect("runs");
    world.resume(nodes[3]);
    world.heal();
    world.run_for(Duration::from_secs(5)).expect("runs");
    (world.trace_hash(), world.trace_count())
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let mut hashes = Vec::new();
    for seed in [1, 2, 3, 0xdead_beef] {
        let first = kitchen_sink(seed);
        let second = kitchen_sink(seed);
        assert_eq!(first, second, "seed {seed:#x} diverged");
        assert!(first.1 > 5_000, "the workload did little: {} records", first.1);
        hashes.push(first.0);
    }
    let mut unique = hashes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len(), "different seeds gave the same trace");
}

#[test]
fn ping_workload_is_deterministic() {
    let workload = PING_WORKLOADS[0];
    let first = run_ping(&workload, SimConfig::new(7)).expect("runs");
    let second = run_ping(&workload, SimConfig::new(7)).expect("runs");
    assert_eq!(first, second);
    // 10 hosts x 599 answered pings: the 600th ping, sent at 60 s, is still in flight.
    assert_eq!(first.datagram_count, 11_980);
    assert_ne!(first.trace_hash, run_ping(&workload, SimConfig::new(8)).expect("runs").trace_hash);
}

#[test]
fn worlds_on_parallel_threads_match_worlds_run_alone() {
    let alone: Vec<_> = (10..14).map(kitchen_sink).collect();
    #[allow(clippy::disallowed_methods)] // The test is about worlds on parallel OS threads.
    let threads: Vec<_> =
        (10..14).map(|seed| std::thread::spawn(move || kitchen_sink(seed))).collect();
    let parallel: Vec<_> =
        threads.into_iter().map(|thread| thread.join().expect("joins")).collect();
    assert_eq!(alone, parallel);
}

#[test]
fn recorded_traces_match_record_by_record() {
    let run = |seed| {
        let mut config = SimConfig::new(seed);
        config.record_trace = true;
        let world = World::new(config);
        let counter = Arc::new(AtomicU64::new(0));
        for index in 0..3u32 {
            let next = sim::workloads::ping_host_addr((index + 1) % 3);
            let counter = Arc::clone(&counter);
            world.add_node_with(
                &format!("h{index}"),
                sim::workloads::ping_host_addr(index).ip(),
                move |env| {
                    let counter = Arc::clone(&counter);
                    async move {
                        let interval = Duration::from_millis(100);
                        let _ = sim::workloads::ping_host(env, next, interval, counter).await;
                    }
                },
            );
        }
        world.run_for(Duration::from_secs(2)).expect("runs");
        world.trace_records().expect("recorded")
    };
    let (first, second) = (run(3), run(3));
    assert!(first.len() > 100);
    assert_eq!(first, second);
}
