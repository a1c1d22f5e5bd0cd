//! Small, generic programs written against `Env`, shared by the benchmarks, the CLI and the
//! determinism tests. Being generic, each runs unchanged on the simulated world, on turmoil and on
//! real tokio.
//!
//! `ping` is the simulator speed workload (the same one `ci/bench-peers` runs on madsim and
//! turmoil): `H` hosts; every `interval`, host `i` sends a 64-byte ping to host `(i + 1) % H`,
//! and every ping is answered with a 64-byte pong. The count is datagrams received.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::env::{Env, UdpSocket};
use crate::world::{SimConfig, SimError, World};

/// The port every ping host listens on.
pub const PING_PORT: u16 = 9000;
/// Bytes in a ping or pong.
pub const PING_SIZE_BYTES: usize = 64;
const PING: u8 = 1;
const PONG: u8 = 2;

/// One ping workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingWorkload {
    /// Workload name, as the benchmark reports print it.
    pub name: &'static str,
    /// Number of hosts.
    pub host_count: u32,
    /// Time between a host's pings.
    pub interval: Duration,
    /// Simulated duration.
    pub duration: Duration,
}

/// The three benchmark workloads (the madsim speed anchor's).
pub const PING_WORKLOADS: [PingWorkload; 3] = [
    PingWorkload {
        name: "ping-10x100ms",
        host_count: 10,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    PingWorkload {
        name: "ping-50x100ms",
        host_count: 50,
        interval: Duration::from_millis(100),
        duration: Duration::from_secs(60),
    },
    PingWorkload {
        name: "ping-10x1s",
        host_count: 10,
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(600),
    },
];

/// The address of ping host `index` (10.0.x.y).
pub fn ping_host_addr(index: u32) -> SocketAddr {
    let [_, _, high, low] = (index + 1).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, high, low)), PING_PORT)
}

/// One ping host: answers pings, and sends one to `next` every `interval`. Counts every
/// datagram it receives into `received`. Runs until its task is dropped.
pub async fn ping_host<E: Env>(
    env: E,
    next: SocketAddr,
    interval: Duration,
    received: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PING_PORT);
    let socket = Arc::new(env.bind_udp(bind).await?);
    let sender = Arc::clone(&socket);
    let timer_env = env.clone();
    let _pinger = env.spawn(async move {
        let mut message = [0u8; PING_SIZE_BYTES];
        message[0] = PING;
        let mut deadline = timer_env.now();
        loop {
            deadline += interval;
            timer_env.sleep_until(deadline).await;
            if sender.send_to(&message, next).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; PING_SIZE_BYTES];
    loop {
        let (count, from) = socket.recv_from(&mut buf).await?;
        received.fetch_add(1, Ordering::Relaxed);
        if count > 0 && buf[0] == PING {
            let mut pong = [0u8; PING_SIZE_BYTES];
            pong[0] = PONG;
            socket.send_to(&pong, from).await?;
        }
    }
}

/// The outcome of one ping run on the simulated world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingReport {
    /// Datagrams received over all hosts.
    pub datagram_count: u64,
    /// The run's trace hash.
    pub trace_hash: u64,
    /// Trace records (scheduling decisions and I/O events).
    pub trace_count: u64,
}

/// Runs `workload` on a simulated world built from `config` (latency 1-5 ms by default).
pub fn run_ping(workload: &PingWorkload, mut config: SimConfig) -> Result<PingReport, SimError> {
    config.net.link.latency = Duration::from_millis(1);
    config.net.link.jitter = Duration::from_millis(4);
    let world = World::new(config);
    let received = Arc::new(AtomicU64::new(0));
    for index in 0..workload.host_count {
        let addr = ping_host_addr(index);
        let next = ping_host_addr((index + 1) % workload.host_count);
        let (interval, received) = (workload.interval, Arc::clone(&received));
        world.add_node_with(&format!("h{index}"), addr.ip(), move |env| {
            let received = Arc::clone(&received);
            async move {
                let _ = ping_host(env, next, interval, received).await;
            }
        });
    }
    world.run_for(workload.duration)?;
    Ok(PingReport {
        datagram_count: received.load(Ordering::Relaxed),
        trace_hash: world.trace_hash(),
        trace_count: world.trace_count(),
    })
}
