//! Goal: generic `E: Env` programs run unchanged on `TurmoilEnv`, turmoil's simulated network and
//! clock with our disk model: UDP and TCP echo, a partition and its repair, a disk crash that
//! keeps only synced data, timeouts, spawning, and the same observations from the same seed.
//!
//! Method: the programs below are generic over `Env` and know nothing of turmoil. Each test
//! builds a turmoil `Sim` with an explicit `rng_seed`, registers hosts whose software builds a
//! `TurmoilEnv` and runs the programs, and checks results inside the hosts or, through shared
//! slots, after the run. Only the host closures touch turmoil (partitions, host names).
#![cfg(feature = "turmoil")]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand_core::RngCore;
use sim::turmoil_env::{
    SharedDisk, TurmoilEnv, TurmoilEnvConfig, WALL_EPOCH_SECS_DEFAULT, crash_disk, new_disk,
};
use sim::world::BuggifyConfig;
use sim::world::disk::{CrashConfig, CrashFate};
use sim::{Elapsed, Env, File, JoinError, OpenOptions, TcpListener, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: u64 = 0x5eed_7001;
const UDP_PORT: u16 = 7;
const TCP_PORT: u16 = 8;
/// Longest wait for one echo: turmoil's latency is at most 100 ms each way by default.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
const DATAGRAM_COUNT_MAX: u32 = 10_000;
const CONNECTION_COUNT_MAX: u32 = 100;
const STEP_COUNT_MAX: u32 = 100_000;

type Log<T> = Arc<Mutex<Vec<T>>>;

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn unspecified(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

fn build_sim(seed: u64) -> turmoil::Sim<'static> {
    println!("turmoil seed {seed:#x}");
    let mut builder = turmoil::Builder::new();
    builder.rng_seed(seed).simulation_duration(Duration::from_secs(120));
    builder.build()
}

fn env(host: &str, seed: u64, disk: SharedDisk) -> TurmoilEnv {
    TurmoilEnv::new(host, TurmoilEnvConfig::new(seed), disk)
}

// ---- Generic programs: they see only `Env`. ----

/// Echoes every datagram on `port` back to its sender, logging each payload.
async fn udp_echo<E: Env>(env: E, port: u16, seen: Log<Vec<u8>>) -> io::Result<()> {
    let socket = env.bind_udp(unspecified(port)).await?;
    assert_eq!(socket.local_addr()?.port(), port);
    let mut buf = vec![0u8; 2048];
    for _ in 0..DATAGRAM_COUNT_MAX {
        let (count, source) = socket.recv_from(&mut buf).await?;
        seen.lock().unwrap().push(buf[..count].to_vec());
        socket.send_to(&buf[..count], source).await?;
    }
    Ok(())
}

/// Accepts connections on `port`; a spawned task per connection reads to EOF, writes it all back
/// and closes.
async fn tcp_echo<E: Env>(env: E, port: u16) -> io::Result<()> {
    let listener = env.listen_tcp(unspecified(port)).await?;
    for _ in 0..CONNECTION_COUNT_MAX {
        let (mut stream, _peer) = listener.accept().await?;
        let connection = env.spawn(async move {
            let mut data = Vec::new();
            stream.read_to_end(&mut data).await?;
            stream.write_all(&data).await?;
            stream.shutdown().await
        });
        connection.await.map_err(io::Error::other)??;
    }
    Ok(())
}

/// Sends `count` datagrams one at a time, each with a random tag, and checks each echo.
async fn udp_ping<E: Env>(env: &E, server: SocketAddr, count: u32) -> io::Result<()> {
    let socket = env.bind_udp(unspecified(0)).await?;
    let mut rng = env.rng();
    let mut buf = [0u8; 64];
    for index in 0..count {
        let mut payload = index.to_le_bytes().to_vec();
        payload.extend_from_slice(&rng.next_u64().to_le_bytes());
        socket.send_to(&payload, server).await?;
        let (length, source) = env.timeout(ECHO_TIMEOUT, socket.recv_from(&mut buf)).await??;
        assert_eq!(source, server);
        assert_eq!(&buf[..length], &payload[..], "echo {index}");
    }
    Ok(())
}

/// Sends `length` random bytes over one connection and checks they come back unchanged.
async fn tcp_round_trip<E: Env>(env: &E, server: SocketAddr, length: usize) -> io::Result<()> {
    let mut data = vec![0u8; length];
    env.rng().fill_bytes(&mut data);
    let mut stream = env.connect_tcp(server).await?;
    for chunk in data.chunks(4096) {
        stream.write_all(chunk).await?;
    }
    stream.shutdown().await?;
    let mut echoed = Vec::with_capacity(length);
    stream.read_to_end(&mut echoed).await?;
    assert_eq!(echoed.len(), length);
    assert!(echoed == data, "the stream changed the bytes");
    Ok(())
}

// ---- Host software: turmoil-specific glue around the generic programs. ----

/// The echo server: UDP echo in a spawned task, TCP echo in the foreground.
async fn echo_server(seed: u64, seen: Log<Vec<u8>>) -> turmoil::Result {
    let env = env("server", seed, new_disk(None));
    let udp = env.spawn(udp_echo(env.clone(), UDP_PORT, seen));
    tcp_echo(env, TCP_PORT).await?;
    udp.await??;
    Ok(())
}

#[test]
fn udp_and_tcp_echo() {
    let mut sim = build_sim(SEED);
    let seen = log();
    let server_seen = Arc::clone(&seen);
    sim.host("server", move || echo_server(SEED, Arc::clone(&server_seen)));
    sim.client("client", async {
        let env = env("client", SEED, new_disk(None));
        let server = turmoil::lookup("server");
        udp_ping(&env, SocketAddr::new(server, UDP_PORT), 50).await?;
        tcp_round_trip(&env, SocketAddr::new(server, TCP_PORT), 256 * 1024).await?;
        Ok(())
    });
    sim.run().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 50);
}

#[test]
fn partition_blocks_datagrams_until_repair() {
    let mut sim = build_sim(SEED);
    let seen = log();
    let server_seen = Arc::clone(&seen);
    sim.host("server", move || echo_server(SEED, Arc::clone(&server_seen)));
    sim.client("client", async {
        let env = env("client", SEED, new_disk(None));
        let server = SocketAddr::new(turmoil::lookup("server"), UDP_PORT);
        let socket = env.bind_udp(unspecified(0)).await?;
        turmoil::partition("client", "server");
        for index in 0..10u8 {
            socket.send_to(&[0, index], server).await?;
        }
        let mut buf = [0u8; 16];
        let silence = env.timeout(ECHO_TIMEOUT, socket.recv_from(&mut buf)).await;
        assert!(matches!(silence, Err(Elapsed)), "a datagram crossed the partition");
        turmoil::repair("client", "server");
        for index in 0..10u8 {
            socket.send_to(&[1, index], server).await?;
            let (length, _) = env.timeout(ECHO_TIMEOUT, socket.recv_from(&mut buf)).await??;
            assert_eq!(&buf[..length], &[1, index]);
        }
        Ok(())
    });
    sim.run().unwrap();
    let expected: Vec<Vec<u8>> = (0..10u8).map(|index| vec![1, index]).collect();
    assert_eq!(*seen.lock().unwrap(), expected, "the server saw a partitioned datagram");
}

#[test]
fn clock_timeouts_and_tasks() {
    let mut sim = build_sim(SEED);
    sim.client("client", async {
        let env = env("client", SEED, new_disk(None));
        let (start, wall_start) = (env.now(), env.wall());
        let epoch = UNIX_EPOCH + Duration::from_secs(WALL_EPOCH_SECS_DEFAULT);
        assert!(wall_start >= epoch && wall_start < epoch + Duration::from_secs(1));

        let slow = env.timeout(Duration::from_millis(100), env.sleep(Duration::from_secs(1))).await;
        assert_eq!(slow, Err(Elapsed));
        let waited = env.now() - start;
        // turmoil's clock moves in 1 ms ticks.
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited <= Duration::from_millis(102), "{waited:?}");
        let quick = env.timeout(Duration::from_secs(1), async { 7 }).await;
        assert_eq!(quick, Ok(7));
        assert_eq!(env.wall().duration_since(wall_start).unwrap(), env.now() - start);

        let answer = env.spawn(async { 42 });
        assert_eq!(answer.await, Ok(42));
        let sleeper = env.spawn(env.sleep(Duration::from_secs(10)));
        sleeper.abort();
        assert_eq!(sleeper.await, Err(JoinError::Cancelled));
        assert!(!env.buggify("turmoil_backend.never"), "buggify is off by default");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn buggify_follows_its_configuration() {
    let mut sim = build_sim(SEED);
    sim.client("client", async {
        let with = |site_active: f64, fire: f64| {
            let mut config = TurmoilEnvConfig::new(SEED);
            config.buggify =
                BuggifyConfig { enabled: true, site_active, fire_min: fire, fire_max: fire };
            TurmoilEnv::new("client", config, new_disk(None))
        };
        let always = with(1.0, 1.0);
        assert!((0..100).all(|_| always.buggify("turmoil_backend.always")));
        let inactive = with(0.0, 1.0);
        assert!(!(0..100).any(|_| inactive.buggify("turmoil_backend.inactive")));
        let half = with(1.0, 0.5);
        let fired = (0..1000).filter(|_| half.buggify("turmoil_backend.half")).count();
        assert!((350..650).contains(&fired), "{fired} of 1000");
        Ok(())
    });
    sim.run().unwrap();
}

// ---- Disk: synced data survives a crash, unsynced data does not. ----

const SYNCED: &[u8] = b"synced record;";
const UNSYNCED: &[u8] = b"unsynced record;";

/// Appends one record and syncs it, then appends another and does not.
async fn write_log<E: Env>(env: &E) -> io::Result<()> {
    env.create_dir_all("data").await?;
    let file = env.open("data/log", OpenOptions::CREATE_NEW).await?;
    assert_eq!(file.append(SYNCED).await?, 0);
    file.sync().await?;
    env.sync_dir("data").await?;
    assert_eq!(file.append(UNSYNCED).await?, SYNCED.len() as u64);
    assert_eq!(file.len().await?, (SYNCED.len() + UNSYNCED.len()) as u64);
    Ok(())
}

/// Reads the whole log back.
async fn read_log<E: Env>(env: &E) -> io::Result<Vec<u8>> {
    assert_eq!(env.list("data").await?, ["log"]);
    let file = env.open("data/log", OpenOptions::EXISTING).await?;
    let length = usize::try_from(file.len().await?).unwrap();
    let mut data = vec![0u8; length];
    file.read_exact_at(0, &mut data).await?;
    Ok(data)
}

/// The database host: the first boot writes and then hangs until crashed; later boots read.
async fn database(
    disk: SharedDisk,
    boot_count: Arc<AtomicU32>,
    written: Arc<AtomicBool>,
    recovered: Log<Vec<u8>>,
) -> turmoil::Result {
    let env = env("db", SEED, disk);
    if boot_count.fetch_add(1, Ordering::SeqCst) == 0 {
        write_log(&env).await?;
        written.store(true, Ordering::SeqCst);
        env.sleep(Duration::MAX).await;
        unreachable!("the first boot is crashed while it sleeps");
    }
    let data = read_log(&env).await?;
    recovered.lock().unwrap().push(data);
    Ok(())
}

fn step_until(sim: &mut turmoil::Sim<'_>, done: impl Fn() -> bool) {
    for _ in 0..STEP_COUNT_MAX {
        if done() {
            return;
        }
        sim.step().unwrap();
    }
    panic!("condition not reached in {STEP_COUNT_MAX} steps");
}

#[test]
fn disk_crash_keeps_only_synced_data() {
    let mut sim = build_sim(SEED);
    let disk = new_disk(None);
    let boot_count = Arc::new(AtomicU32::new(0));
    let written = Arc::new(AtomicBool::new(false));
    let recovered = log();
    let host_disk = Arc::clone(&disk);
    let (host_boot_count, host_written, host_recovered) =
        (Arc::clone(&boot_count), Arc::clone(&written), Arc::clone(&recovered));
    sim.host("db", move || {
        let (disk, boot_count) = (Arc::clone(&host_disk), Arc::clone(&host_boot_count));
        database(disk, boot_count, Arc::clone(&host_written), Arc::clone(&host_recovered))
    });
    step_until(&mut sim, || written.load(Ordering::SeqCst));

    sim.crash("db");
    let drop_all = CrashConfig { drop_probability: 1.0, tear_probability: 0.0 };
    let records = crash_disk(&disk, SEED, &drop_all);
    assert_eq!(records.len(), 1, "exactly one unsynced write: {records:?}");
    assert_eq!(records[0].fate, CrashFate::Dropped);
    assert_eq!(records[0].offset, SYNCED.len() as u64);
    sim.bounce("db");
    step_until(&mut sim, || !recovered.lock().unwrap().is_empty());

    assert_eq!(boot_count.load(Ordering::SeqCst), 2);
    assert_eq!(*recovered.lock().unwrap(), [SYNCED.to_vec()]);
}

// ---- Determinism: one seed, one history. ----

/// What one run observes: each host's first rng draws, then the client's echoes in arrival
/// order with their arrival times.
fn observe(seed: u64) -> Vec<u64> {
    const BURST_COUNT: u64 = 20;
    let mut sim = build_sim(seed);
    let observed = log();
    let server_observed = Arc::clone(&observed);
    sim.host("server", move || {
        let observed = Arc::clone(&server_observed);
        async move {
            let env = env("server", seed, new_disk(None));
            observed.lock().unwrap().push(env.rng().next_u64());
            udp_echo(env, UDP_PORT, log()).await?;
            Ok(())
        }
    });
    let client_observed = Arc::clone(&observed);
    sim.client("client", async move {
        let env = env("client", seed, new_disk(None));
        let server = SocketAddr::new(turmoil::lookup("server"), UDP_PORT);
        let socket = env.bind_udp(unspecified(0)).await?;
        let mut rng = env.rng();
        for index in 0..BURST_COUNT {
            let tag = (rng.next_u64() << 8) | index;
            socket.send_to(&tag.to_le_bytes(), server).await?;
        }
        let mut buf = [0u8; 8];
        for _ in 0..BURST_COUNT {
            let (length, _) = env.timeout(ECHO_TIMEOUT, socket.recv_from(&mut buf)).await??;
            assert_eq!(length, 8);
            let mut observed = client_observed.lock().unwrap();
            observed.push(u64::from_le_bytes(buf));
            observed.push(env.now().as_nanos());
        }
        Ok(())
    });
    sim.run().unwrap();
    let observed = observed.lock().unwrap().clone();
    assert_eq!(observed.len() as u64, 1 + 2 * BURST_COUNT);
    observed
}

#[test]
fn same_seed_same_observations() {
    let first = observe(SEED);
    assert_eq!(first, observe(SEED), "seed {SEED:#x} diverged");
    assert_ne!(first, observe(SEED + 1), "the seed does not reach the run");
    let order: Vec<u64> = first[1..].iter().step_by(2).map(|tag| tag & 0xff).collect();
    assert!(order.windows(2).any(|pair| pair[0] > pair[1]), "no reordering: {order:?}");
}
