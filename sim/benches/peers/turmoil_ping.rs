//! The "ping" workload on turmoil 0.7.2, measured against our world by `ci/bench-peers`.
//!
//! Why: turmoil advances in fixed 1 ms ticks and cannot skip idle time; this
//! module measures that claim on the workload our world and madsim (`ci/peers/madsim-ping`) run.
//! H hosts "h0".."h{H-1}", each with a UDP socket on port 9000; every `interval` (first at
//! t = interval) host i sends a 64-byte ping to host (i + 1) mod H, and every ping is answered at
//! once with a 64-byte pong. Latency lies in [1 ms, 5 ms] (turmoil draws it from an exponential
//! curve within that range, not uniformly) and nothing is lost. Ticks are turmoil's default 1 ms.
//!
//! Shared through `#[path]` by `examples/ping.rs --backend turmoil` and the criterion bench, so
//! both time the same code. Time is turmoil's paused tokio clock, reached through
//! `tokio::time::interval`.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use turmoil::net::UdpSocket;

/// The UDP port every host listens on.
const PORT: u16 = 9000;
/// Every datagram carries this many bytes; byte 0 says ping or pong.
const DATAGRAM_SIZE_BYTES: usize = 64;
const KIND_PING: u8 = 0;
const KIND_PONG: u8 = 1;
const LATENCY_MIN: Duration = Duration::from_millis(1);
const LATENCY_MAX: Duration = Duration::from_millis(5);

/// Runs the ping workload for `duration` of simulated time and returns the datagrams (pings and
/// pongs) received by all hosts. The same `seed` gives the same run.
pub fn run(hosts: usize, interval: Duration, duration: Duration, seed: u64) -> u64 {
    assert!(hosts >= 2);
    // A ping and its pong take at most 2 * LATENCY_MAX: see the check of the count below.
    assert!(interval >= 2 * LATENCY_MAX && interval <= duration);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(duration)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(LATENCY_MIN)
        .max_message_latency(LATENCY_MAX)
        .fail_rate(0.0)
        .build();
    let received = Rc::new(Cell::new(0u64));
    for index in 0..hosts {
        let target = format!("h{}", (index + 1) % hosts);
        let received = received.clone();
        sim.host(format!("h{index}"), move || host(target.clone(), interval, received.clone()));
    }
    // Without clients `step` never reports completion; we stop at `duration` ourselves.
    while sim.elapsed() < duration {
        sim.step().expect("turmoil host failed");
    }
    let datagrams = received.get();
    // At most one ping per host per tick of `interval` up to `duration`; every ping of a tick
    // before the last is answered in time.
    let tick_count = (duration.as_nanos() / interval.as_nanos()) as u64;
    let ping_count_max = hosts as u64 * tick_count;
    assert!(datagrams <= 2 * ping_count_max, "more datagrams than pings and pongs sent");
    assert!(datagrams >= 2 * (ping_count_max - hosts as u64), "datagrams were lost");
    datagrams
}

/// One host: a local task answers pings and counts arrivals; this loop pings `target`.
async fn host(target: String, interval: Duration, received: Rc<Cell<u64>>) -> turmoil::Result {
    let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    let socket = Rc::new(socket);
    // Resolve once: every host is registered before the first step runs this.
    let target = SocketAddr::new(turmoil::lookup(target.as_str()), PORT);
    tokio::task::spawn_local(answer(socket.clone(), received));
    let mut ping = [0u8; DATAGRAM_SIZE_BYTES];
    ping[0] = KIND_PING;
    // The first tick completes at once (t = 0); pings go out at t = interval, 2 * interval, ...
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        socket.send_to(&ping, target).await?;
    }
}

/// Receives forever: counts every datagram and answers each ping with a pong.
async fn answer(socket: Rc<UdpSocket>, received: Rc<Cell<u64>>) -> turmoil::Result {
    let mut buffer = [0u8; DATAGRAM_SIZE_BYTES];
    let mut pong = [0u8; DATAGRAM_SIZE_BYTES];
    pong[0] = KIND_PONG;
    loop {
        let (size, source) = socket.recv_from(&mut buffer).await?;
        assert_eq!(size, DATAGRAM_SIZE_BYTES);
        received.set(received.get() + 1);
        match buffer[0] {
            KIND_PING => {
                socket.send_to(&pong, source).await?;
            }
            KIND_PONG => {}
            kind => panic!("unknown datagram kind {kind}"),
        }
    }
}
