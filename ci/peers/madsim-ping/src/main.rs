//! The "ping" workload on madsim, the peer that `ci/bench-peers` compares Ghostmesh's world with.
//!
//! Why: ARCHITECTURE.md says our world jumps between timers as madsim does and is far faster than
//! turmoil; this binary measures madsim on the very workload our `sim` example and the turmoil
//! example run, so the three numbers sit side by side. The workload: H hosts, each with a UDP
//! socket on port 9000; every `interval` (first at t = interval) host i sends a 64-byte ping to
//! host (i + 1) mod H, and every ping is answered at once with a 64-byte pong. One-way latency is
//! uniform in [1 ms, 5 ms], nothing is lost. We count the datagrams received by all hosts.
//!
//! Output: one JSON line per workload on stdout, nothing else there; diagnostics go to stderr.
//! Usage: `madsim-ping [--seed S] [--workload NAME]`, S decimal or 0x-hex, default 1.
//! Build with `RUSTFLAGS="--cfg madsim"` (see Cargo.toml); without it madsim is plain tokio.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use madsim::net::UdpSocket;
use madsim::runtime::Runtime;

/// The UDP port every host listens on.
const PORT: u16 = 9000;
/// Every datagram carries this many bytes; byte 0 says ping or pong.
const DATAGRAM_SIZE_BYTES: usize = 64;
const KIND_PING: u8 = 0;
const KIND_PONG: u8 = 1;
/// 10.0.0.(i + 1) must stay a valid last octet.
const HOST_COUNT_MAX: usize = 254;

/// One named workload; the same three exist on every backend.
struct Workload {
    name: &'static str,
    host_count: usize,
    interval: Duration,
    duration: Duration,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "ping-10x100ms",
        host_count: 10,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    Workload {
        name: "ping-50x100ms",
        host_count: 50,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    Workload {
        name: "ping-10x1s",
        host_count: 10,
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(600),
    },
];

fn main() {
    let (seed, only) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("madsim-ping: {message}");
            eprintln!("usage: madsim-ping [--seed S] [--workload NAME]");
            std::process::exit(2);
        }
    };
    eprintln!("madsim-ping: seed {seed}");
    for workload in WORKLOADS.iter().filter(|w| only.as_deref().is_none_or(|n| n == w.name)) {
        // Outside the runtime, so the real clock: madsim only fakes time inside `block_on`.
        let start = Instant::now();
        let datagrams = run(workload.host_count, workload.interval, workload.duration, seed);
        let wall_secs = start.elapsed().as_secs_f64();
        println!(
            "{{\"backend\":\"madsim\",\"workload\":\"{}\",\"datagrams\":{},\
             \"sim_secs\":{:.1},\"wall_secs\":{:.6}}}",
            workload.name,
            datagrams,
            workload.duration.as_secs_f64(),
            wall_secs
        );
    }
}

/// Returns (seed, only this workload).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(u64, Option<String>), String> {
    let mut seed = 1;
    let mut only = None;
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seed" => {
                let parsed = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
                    None => value.replace('_', "").parse(),
                };
                seed = parsed.map_err(|error| format!("bad seed {value:?}: {error}"))?;
            }
            "--workload" => {
                if !WORKLOADS.iter().any(|w| w.name == value) {
                    return Err(format!("unknown workload {value:?}"));
                }
                only = Some(value);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((seed, only))
}

/// Runs one workload in a fresh runtime and returns the datagrams received by all hosts.
fn run(host_count: usize, interval: Duration, duration: Duration, seed: u64) -> u64 {
    assert!((2..=HOST_COUNT_MAX).contains(&host_count));
    // 10 ms is a ping and its pong at the largest latency: see the check of the count below.
    assert!(interval >= Duration::from_millis(10) && interval <= duration);
    let config = madsim::Config {
        net: madsim::net::Config {
            packet_loss_rate: 0.0,
            send_latency: Duration::from_millis(1)..Duration::from_millis(5),
        },
        ..madsim::Config::default()
    };
    let runtime = Runtime::with_seed_and_config(seed, config);
    let received = Arc::new(AtomicU64::new(0));
    for index in 0..host_count {
        let node = runtime.create_node().name(format!("h{index}")).ip(host_ip(index)).build();
        let target = SocketAddr::new(host_ip((index + 1) % host_count), PORT);
        node.spawn(host(target, interval, received.clone()));
    }
    // The supervisor only waits: the hosts' tasks are dropped with the runtime at `duration`.
    runtime.block_on(async move { madsim::time::sleep(duration).await });
    let datagrams = received.load(Ordering::Relaxed);
    // At most one ping per host per tick up to `duration`; every ping of a tick before the last
    // is answered in time, as a ping and its pong take at most 10 ms together.
    let tick_count = (duration.as_nanos() / interval.as_nanos()) as u64;
    let ping_count_max = host_count as u64 * tick_count;
    assert!(datagrams <= 2 * ping_count_max, "more datagrams than pings and pongs sent");
    assert!(datagrams >= 2 * (ping_count_max - host_count as u64), "datagrams were lost");
    datagrams
}

fn host_ip(index: usize) -> IpAddr {
    assert!(index < HOST_COUNT_MAX);
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1))
}

/// One host: a task that answers pings and counts arrivals, and a loop that pings `target`.
async fn host(target: SocketAddr, interval: Duration, received: Arc<AtomicU64>) {
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
        .await
        .expect("bind port 9000");
    let socket = Arc::new(socket);
    madsim::task::spawn(answer(socket.clone(), received));
    // Inside the runtime madsim answers `Instant::now` from its virtual clock.
    let start = madsim::time::Instant::now();
    let mut ticks = madsim::time::interval_at(start + interval, interval);
    let mut ping = [0u8; DATAGRAM_SIZE_BYTES];
    ping[0] = KIND_PING;
    loop {
        ticks.tick().await;
        socket.send_to(target, &ping).await.expect("send ping");
    }
}

/// Receives forever: counts every datagram and answers each ping with a pong.
async fn answer(socket: Arc<UdpSocket>, received: Arc<AtomicU64>) {
    let mut buffer = [0u8; DATAGRAM_SIZE_BYTES];
    let mut pong = [0u8; DATAGRAM_SIZE_BYTES];
    pong[0] = KIND_PONG;
    loop {
        let (size, source) = socket.recv_from(&mut buffer).await.expect("receive");
        assert_eq!(size, DATAGRAM_SIZE_BYTES);
        received.fetch_add(1, Ordering::Relaxed);
        match buffer[0] {
            KIND_PING => socket.send_to(source, &pong).await.expect("send pong"),
            KIND_PONG => {}
            kind => panic!("unknown datagram kind {kind}"),
        }
    }
}
