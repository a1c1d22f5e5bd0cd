//! The production backend, `TokioEnv`, runs the same code the simulator runs.
//!
//! Goal: show that a small program written only against `E: sim::Env` (a UDP echo, a TCP echo,
//! a disk round trip, concurrent appends, timeouts, spawn and abort) works on real tokio,
//! sockets and files, with the error kinds the simulator gives. Method: run each generic
//! program on a `TokioEnv` over a fresh temporary directory inside a two-worker multi-threaded
//! runtime (so every future must be `Send`), each under a time limit; then run the very same
//! programs on the simulated `World`, so the two backends are held to one contract.
#![cfg(feature = "tokio")]

use std::future::Future;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand_core::RngCore;
use sim::tokio_env::{DATAGRAM_BYTES_MAX, TokioEnv};
use sim::world::{SimConfig, World};
use sim::{Elapsed, Env, File, Instant, JoinError, OpenOptions, TcpListener, TcpStream, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed of every `TokioEnv` and `World` here.
const SEED: u64 = 0x5eed_70c1;
/// How long one program may take on real time before the test fails instead of hanging.
const PROGRAM_TIME_MAX: Duration = Duration::from_secs(60);
/// Datagrams the UDP client sends, each echoed once.
const DATAGRAM_COUNT: u32 = 100;
/// Bytes the TCP client sends and expects back.
const STREAM_BYTES: usize = 1 << 20;
/// Bytes per `write_all` of the TCP client.
const CHUNK_BYTES: usize = 16 * 1024;
/// Tasks appending to one file at once, and records each appends.
const WRITER_COUNT: u32 = 4;
const RECORD_COUNT: u32 = 64;
/// Bytes per appended record: writer (u32 LE), sequence (u32 LE), then a filler byte.
const RECORD_BYTES: usize = 32;

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// `count` bytes of a pattern that does not repeat every 256 bytes.
fn pattern(count: usize) -> Vec<u8> {
    (0..count).map(|index| (index.wrapping_mul(31) ^ (index >> 8)) as u8).collect()
}

/// Echoes `DATAGRAM_COUNT` datagrams through a server task and checks every echo.
async fn udp_echo<E: Env>(env: E) -> io::Result<()> {
    let server = env.bind_udp(localhost(0)).await?;
    let server_addr = server.local_addr()?;
    assert_ne!(server_addr.port(), 0, "port 0 picks a free port");
    let echo = env.spawn(async move {
        let mut buf = vec![0; 2048];
        for _ in 0..DATAGRAM_COUNT {
            let (count, peer) = server.recv_from(&mut buf).await?;
            server.send_to(&buf[..count], peer).await?;
        }
        io::Result::Ok(())
    });
    let client = env.bind_udp(localhost(0)).await?;
    let oversized = vec![0; DATAGRAM_BYTES_MAX + 1];
    let refused = client.send_to(&oversized, server_addr).await.expect_err("over the limit");
    assert_eq!(refused.kind(), ErrorKind::InvalidInput);
    let mut buf = vec![0; 2048];
    for sequence in 0..DATAGRAM_COUNT {
        let datagram = format!("datagram {sequence}");
        assert_eq!(client.send_to(datagram.as_bytes(), server_addr).await?, datagram.len());
        let (count, peer) = client.recv_from(&mut buf).await?;
        assert_eq!(peer, server_addr);
        assert_eq!(&buf[..count], datagram.as_bytes());
    }
    echo.await.expect("the echo task finishes")
}

/// Streams `STREAM_BYTES` through an echo server while reading them back, then checks them.
async fn tcp_echo<E: Env>(env: E) -> io::Result<()> {
    let listener = env.listen_tcp(localhost(0)).await?;
    let server_addr = listener.local_addr()?;
    let server = env.spawn(async move {
        let (stream, peer) = listener.accept().await?;
        assert_eq!(stream.peer_addr()?, peer);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let copied = tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        io::Result::Ok(copied)
    });
    let stream = env.connect_tcp(server_addr).await?;
    assert_eq!(stream.peer_addr()?, server_addr);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent = pattern(STREAM_BYTES);
    let payload = sent.clone();
    // Writes run in their own task: written first and read after, 1 MiB could fill both
    // directions' buffers and deadlock.
    let sender = env.spawn(async move {
        for chunk in payload.chunks(CHUNK_BYTES) {
            writer.write_all(chunk).await?;
        }
        writer.shutdown().await
    });
    let mut received = Vec::with_capacity(STREAM_BYTES);
    let limit = STREAM_BYTES as u64 + 1;
    (&mut reader).take(limit).read_to_end(&mut received).await?;
    sender.await.expect("the sender finishes")?;
    assert_eq!(received.len(), STREAM_BYTES);
    assert!(received == sent, "the echo differs from what was sent");
    let copied = server.await.expect("the server finishes")?;
    assert_eq!(copied, STREAM_BYTES as u64);
    Ok(())
}

/// Positioned writes, appends, lengths, a second handle, and the write-sync-rename-sync_dir
/// replace; leaves `db/wal/log` holding "hello world!" and `db` holding only `wal`.
async fn disk_roundtrip<E: Env>(env: E) -> io::Result<()> {
    env.create_dir_all("db/wal").await?;
    env.create_dir_all("db/wal").await?;
    let log = env.open("db/wal/log", OpenOptions::CREATE).await?;
    assert!(log.is_empty().await?);
    log.write_at(0, b"hello").await?;
    assert_eq!(log.append(b" world").await?, 5);
    assert_eq!(log.len().await?, 11);
    let mut buf = [0; 11];
    log.read_exact_at(0, &mut buf).await?;
    assert_eq!(&buf, b"hello world");
    assert_eq!(log.read_at(8, &mut buf).await?, 3, "short only at end of file");
    let past_end = log.read_exact_at(8, &mut buf).await.expect_err("past the end");
    assert_eq!(past_end.kind(), ErrorKind::UnexpectedEof);
    log.write_at(16, b"!").await?;
    let mut gap = [0xff; 6];
    log.read_exact_at(11, &mut gap).await?;
    assert_eq!(gap, *b"\0\0\0\0\0!", "a write past the end zero-fills the gap");
    log.set_len(11).await?;
    assert_eq!(log.len().await?, 11);
    let again = env.open("db/wal/log", OpenOptions::EXISTING).await?;
    assert_eq!(again.append(b"!").await?, 11, "handles to one file share its length");
    assert_eq!(log.len().await?, 12);
    log.sync().await?;
    let temporary = env.open("db/CURRENT.tmp", OpenOptions::TRUNCATE).await?;
    temporary.write_at(0, b"wal/log").await?;
    temporary.sync().await?;
    env.rename("db/CURRENT.tmp", "db/CURRENT").await?;
    env.sync_dir("db").await?;
    assert_eq!(env.list("db").await?, ["CURRENT", "wal"]);
    assert_eq!(env.list("").await?, ["db"]);
    assert_eq!(temporary.len().await?, 7, "a handle outlives the rename of its file");
    disk_errors(&env).await?;
    env.remove("db/CURRENT").await?;
    env.sync_dir("db").await?;
    assert_eq!(env.list("db").await?, ["wal"]);
    Ok(())
}

/// Failures keep the kinds the simulated disk gives.
async fn disk_errors<E: Env>(env: &E) -> io::Result<()> {
    let kind = |result: io::Result<()>| result.expect_err("fails").kind();
    let open = |path: &'static str, options| async move { env.open(path, options).await.map(drop) };
    for bad in ["/db", "../db", "db/../db", "db//wal", "./db", "db/"] {
        assert_eq!(kind(open(bad, OpenOptions::CREATE).await), ErrorKind::InvalidInput, "{bad}");
    }
    assert_eq!(kind(open("db/missing", OpenOptions::EXISTING).await), ErrorKind::NotFound);
    assert_eq!(kind(open("db/CURRENT", OpenOptions::CREATE_NEW).await), ErrorKind::AlreadyExists);
    assert_eq!(kind(open("db/wal", OpenOptions::CREATE).await), ErrorKind::IsADirectory);
    assert_eq!(kind(open("db/nope/x", OpenOptions::CREATE).await), ErrorKind::NotFound);
    assert_eq!(kind(env.create_dir_all("db/CURRENT").await), ErrorKind::AlreadyExists);
    assert_eq!(kind(env.create_dir_all("db/CURRENT/x").await), ErrorKind::NotADirectory);
    assert_eq!(kind(env.list("db/CURRENT").await.map(drop)), ErrorKind::NotADirectory);
    assert_eq!(kind(env.rename("db/wal", "db/moved").await), ErrorKind::InvalidInput);
    assert_eq!(kind(env.rename("db/missing", "db/moved").await), ErrorKind::NotFound);
    assert_eq!(kind(env.remove("db/missing").await), ErrorKind::NotFound);
    assert_eq!(kind(env.remove("db/wal").await), ErrorKind::IsADirectory);
    Ok(())
}

/// After `disk_roundtrip` and with every handle dropped, the log reads back from the disk.
async fn disk_reopen<E: Env>(env: E) -> io::Result<()> {
    let log = env.open("db/wal/log", OpenOptions::EXISTING).await?;
    assert_eq!(log.len().await?, 12);
    let mut buf = [0; 12];
    log.read_exact_at(0, &mut buf).await?;
    assert_eq!(&buf, b"hello world!");
    Ok(())
}

/// Advisory locks: one handle at a time, re-entrant for the holder, released on drop.
async fn file_locks<E: Env>(env: E) -> io::Result<()> {
    env.create_dir_all("locked").await?;
    let first = env.open("locked/LOCK", OpenOptions::CREATE).await?;
    let second = env.open("locked/LOCK", OpenOptions::CREATE).await?;
    first.try_lock()?;
    first.try_lock()?;
    let refused = second.try_lock().expect_err("another handle holds the lock");
    assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
    drop(first);
    second.try_lock()?;
    Ok(())
}

fn record(writer: u32, sequence: u32) -> [u8; RECORD_BYTES] {
    let mut record = [(writer * 7 + sequence) as u8; RECORD_BYTES];
    record[..4].copy_from_slice(&writer.to_le_bytes());
    record[4..8].copy_from_slice(&sequence.to_le_bytes());
    record
}

/// `WRITER_COUNT` tasks append to one handle at once; every record lands whole, at the offset
/// `append` returned, and the records tile the file.
async fn concurrent_appends<E: Env>(env: E) -> io::Result<()> {
    let file = Arc::new(env.open("appends", OpenOptions::TRUNCATE).await?);
    let mut writers = Vec::new();
    for writer in 0..WRITER_COUNT {
        let file = Arc::clone(&file);
        writers.push(env.spawn(async move {
            let mut offsets = Vec::new();
            for sequence in 0..RECORD_COUNT {
                offsets.push((file.append(&record(writer, sequence)).await?, writer, sequence));
            }
            file.sync().await?;
            io::Result::Ok(offsets)
        }));
    }
    let mut offsets = Vec::new();
    for writer in writers {
        offsets.extend(writer.await.expect("the writer finishes")?);
    }
    offsets.sort_unstable();
    assert_eq!(offsets.len(), (WRITER_COUNT * RECORD_COUNT) as usize);
    for (index, &(offset, writer, sequence)) in offsets.iter().enumerate() {
        assert_eq!(offset, (index * RECORD_BYTES) as u64, "records tile the file");
        let mut buf = [0; RECORD_BYTES];
        file.read_exact_at(offset, &mut buf).await?;
        assert_eq!(buf, record(writer, sequence));
    }
    assert_eq!(file.len().await?, (offsets.len() * RECORD_BYTES) as u64);
    Ok(())
}

/// A timeout shorter than the work fails with `Elapsed`; a longer one returns the output.
async fn timeouts<E: Env>(env: E) -> io::Result<()> {
    assert!(env.wall() > SystemTime::UNIX_EPOCH + Duration::from_secs(50 * 365 * 86_400));
    let start = env.now();
    let slow = env.timeout(Duration::from_millis(20), env.sleep(Duration::from_secs(3600))).await;
    assert_eq!(slow, Err(Elapsed));
    assert!(env.now() - start >= Duration::from_millis(20));
    let quick = env.timeout(Duration::from_secs(3600), env.sleep(Duration::from_millis(5))).await;
    assert_eq!(quick, Ok(()));
    let done = env.now();
    assert!(done - start >= Duration::from_millis(25));
    env.sleep_until(start).await; // A deadline in the past is ready at once.
    assert!(env.now() - done < Duration::from_secs(1));
    assert!(!env.buggify("tokio_echo.timeouts"));
    Ok(())
}

/// A finished task gives its output; an aborted one, running or not yet started, `Cancelled`.
async fn spawn_and_abort<E: Env>(env: E) -> io::Result<()> {
    assert_eq!(env.spawn(async { 7 }).await, Ok(7));
    let forever = env.spawn(env.sleep_until(Instant::MAX));
    env.sleep(Duration::from_millis(1)).await;
    assert!(!forever.is_finished());
    forever.abort();
    assert_eq!(forever.await, Err(JoinError::Cancelled));
    let never = env.spawn(std::future::pending::<()>());
    never.abort();
    assert_eq!(never.await, Err(JoinError::Cancelled));
    Ok(())
}

/// Runs `program` on a `TokioEnv` over `root`, spawned on a two-worker runtime.
fn run_on_tokio<Program, Output>(root: &Path, program: Program) -> io::Result<()>
where
    Program: FnOnce(TokioEnv) -> Output,
    Output: Future<Output = io::Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let env = TokioEnv::with_seed(root, SEED);
    let task = program(env.clone());
    runtime.block_on(async {
        let finished = env.timeout(PROGRAM_TIME_MAX, env.spawn(task)).await;
        finished.expect("the program finishes in time").expect("the program is not cancelled")
    })
}

fn run_in_tempdir<Program, Output>(program: Program)
where
    Program: FnOnce(TokioEnv) -> Output,
    Output: Future<Output = io::Result<()>> + Send + 'static,
{
    let root = tempfile::tempdir().expect("a temporary directory");
    run_on_tokio(root.path(), program).expect("the program succeeds");
}

#[test]
fn udp_echo_on_tokio() {
    run_in_tempdir(udp_echo);
}

#[test]
fn tcp_echo_on_tokio() {
    run_in_tempdir(tcp_echo);
}

#[test]
fn disk_roundtrip_on_tokio_lands_in_real_files() {
    let root = tempfile::tempdir().expect("a temporary directory");
    run_on_tokio(root.path(), disk_roundtrip).expect("the round trip succeeds");
    let log = root.path().join("db/wal/log");
    assert_eq!(log.metadata().expect("the log is a real file").len(), 12);
    assert!(!root.path().join("db/CURRENT").exists());
    run_on_tokio(root.path(), disk_reopen).expect("a fresh env reads the log back");
}

#[test]
fn file_locks_on_tokio() {
    run_in_tempdir(file_locks);
}

/// The lock is the operating system's: a second process (here, a child `flock`) is refused
/// while a handle holds it. Skipped where no `flock` command exists.
#[test]
fn file_locks_on_tokio_hold_against_other_processes() {
    let root = tempfile::tempdir().expect("a temporary directory");
    let path = root.path().join("LOCK");
    let probe =
        || std::process::Command::new("flock").arg("--nonblock").arg(&path).arg("true").status();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = runtime.expect("a tokio runtime");
    let env = TokioEnv::with_seed(root.path(), SEED);
    let file = runtime.block_on(env.open("LOCK", OpenOptions::CREATE)).expect("open");
    let Ok(free) = probe() else { return };
    assert!(free.success(), "nothing holds the lock yet");
    file.try_lock().expect("lock");
    assert!(!probe().expect("flock runs").success(), "the child is refused");
    drop(file);
    assert!(probe().expect("flock runs").success(), "released on drop");
}

#[test]
fn concurrent_appends_on_tokio_are_atomic() {
    run_in_tempdir(concurrent_appends);
}

#[test]
fn timeouts_on_tokio() {
    run_in_tempdir(timeouts);
}

#[test]
fn spawn_and_abort_on_tokio() {
    run_in_tempdir(spawn_and_abort);
}

/// `sync` uses `block_in_place` only where tokio allows it: check it works unspawned, from
/// `block_on` of a multi-threaded runtime, and on a current-thread runtime.
#[test]
fn disk_sync_works_on_every_runtime_flavor() {
    let flavors = [
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
        tokio::runtime::Builder::new_current_thread().enable_all().build(),
    ];
    for runtime in flavors {
        let runtime = runtime.expect("a tokio runtime");
        let root = tempfile::tempdir().expect("a temporary directory");
        let env = TokioEnv::with_seed(root.path(), SEED);
        let round_trip = env.timeout(PROGRAM_TIME_MAX, disk_roundtrip(env.clone()));
        let result = runtime.block_on(round_trip).expect("the program finishes in time");
        result.expect("the round trip succeeds");
    }
}

fn draws(env: &TokioEnv) -> [u64; 4] {
    let mut rng = env.rng();
    [rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64()]
}

#[test]
fn with_seed_gives_a_reproducible_rng_and_new_an_unpredictable_one() {
    let root = tempfile::tempdir().expect("a temporary directory");
    let first = draws(&TokioEnv::with_seed(root.path(), SEED));
    assert_eq!(first, draws(&TokioEnv::with_seed(root.path(), SEED)));
    assert_ne!(first, draws(&TokioEnv::with_seed(root.path(), SEED + 1)));
    let env = TokioEnv::with_seed(root.path(), SEED);
    let (mut left, mut right) = (env.rng(), env.rng());
    let shared = [left.next_u64(), right.next_u64(), left.next_u64(), right.next_u64()];
    assert_eq!(shared, first, "clones draw from one stream");
    let entropy = draws(&TokioEnv::new(root.path()));
    assert_ne!(entropy, draws(&TokioEnv::new(root.path())));
    assert_ne!(entropy, first);
}

/// Every program above, one after another, as one task.
async fn every_program<E: Env>(env: E) -> io::Result<()> {
    udp_echo(env.clone()).await?;
    tcp_echo(env.clone()).await?;
    disk_roundtrip(env.clone()).await?;
    disk_reopen(env.clone()).await?;
    concurrent_appends(env.clone()).await?;
    file_locks(env.clone()).await?;
    timeouts(env.clone()).await?;
    spawn_and_abort(env).await
}

#[test]
fn the_same_programs_run_on_the_simulated_world() {
    let world = World::new(SimConfig::new(SEED));
    let node = world.add_node("a", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let program = every_program(world.env(node));
    let result = world.block_on(node, Duration::from_secs(600), program);
    result.expect("the world runs the programs").expect("the programs succeed");
}
