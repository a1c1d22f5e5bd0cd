//! Property tests of the network model against its specification.
//!
//! Goal: whatever the link settings, the network never invents, misroutes or over-duplicates a
//! datagram, never delivers across a cut link, never beats the base latency, and a lossless link
//! delivers everything; a stream delivers its bytes whole and in order whatever its window, loss
//! and reordering. Method: proptest draws link settings, a cut set and a send schedule, runs a
//! world, and checks every delivery against the schedule.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use sim::world::{LinkConfig, SimConfig, World};
use sim::{Env, Instant, TcpListener, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 5000;

fn addr(node: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, node + 1)), PORT)
}

fn link_strategy() -> impl Strategy<Value = LinkConfig> {
    (0u64..20, 0u64..10, 0.0..0.5f64, 0.0..0.3f64, 0.0..0.5f64).prop_map(
        |(latency_ms, jitter_ms, loss, duplicate, reorder)| LinkConfig {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            duplicate,
            reorder,
            ..LinkConfig::default()
        },
    )
}

/// One planned datagram: sent by `source` to `target` at `at_ms`.
#[derive(Clone, Debug)]
struct Send {
    source: u8,
    target: u8,
    at_ms: u64,
}

fn schedule_strategy(node_count: u8) -> impl Strategy<Value = Vec<Send>> {
    let send = (0..node_count, 0..node_count, 0u64..500).prop_map(|(source, target, at_ms)| Send {
        source,
        target,
        at_ms,
    });
    prop::collection::vec(send, 1..200)
}

/// A delivery: datagram `id` arrived at `node` from `from` at `at`.
type Delivery = (u8, SocketAddr, u32, Instant);

fn run_schedule(seed: u64, link: &LinkConfig, cuts: &[(u8, u8)], sends: &[Send]) -> Vec<Delivery> {
    let node_count = 4u8;
    let mut config = SimConfig::new(seed);
    config.net.link = link.clone();
    let world = World::new(config);
    let nodes: Vec<_> =
        (0..node_count).map(|node| world.add_node(&format!("n{node}"), addr(node).ip())).collect();
    for (source, target) in cuts {
        world.partition_oneway(nodes[*source as usize], nodes[*target as usize]);
    }
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    for node in 0..node_count {
        let env = world.env(nodes[node as usize]);
        let mine: Vec<(u32, Send)> =
            (0u32..).zip(sends.iter().cloned()).filter(|(_, send)| send.source == node).collect();
        let sink = Arc::clone(&deliveries);
        world.spawn(nodes[node as usize], async move {
            let socket = Arc::new(env.bind_udp(addr(node)).await.expect("bind"));
            let receiver = Arc::clone(&socket);
            let clock = env.clone();
            env.spawn(async move {
                let mut buf = [0u8; 4];
                loop {
                    let (_, from) = receiver.recv_from(&mut buf).await.expect("recv");
                    let id = u32::from_le_bytes(buf);
                    sink.lock().expect("lock").push((node, from, id, clock.now()));
                }
            });
            let mut ordered = mine;
            ordered.sort_by_key(|(id, send)| (send.at_ms, *id));
            for (id, send) in ordered {
                env.sleep_until(Instant::from_nanos(send.at_ms * 1_000_000)).await;
                socket.send_to(&id.to_le_bytes(), addr(send.target)).await.expect("send");
            }
        });
    }
    world.run_for(Duration::from_secs(2)).expect("runs");
    let deliveries = deliveries.lock().expect("lock");
    deliveries.clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn datagrams_follow_the_link_specification(
        seed in any::<u64>(),
        link in link_strategy(),
        cuts in prop::collection::vec((0u8..4, 0u8..4), 0..4),
        sends in schedule_strategy(4),
    ) {
        let deliveries = run_schedule(seed, &link, &cuts, &sends);
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for (node, from, id, at) in &deliveries {
            let send = sends.get(*id as usize).expect("no invented datagram");
            prop_assert_eq!(*node, send.target, "datagram {} misrouted", id);
            prop_assert_eq!(*from, addr(send.source));
            let cut = cuts.contains(&(send.source, send.target)) && send.source != send.target;
            prop_assert!(!cut, "datagram {} crossed a cut link", id);
            let earliest = send.at_ms * 1_000_000
                + if send.source == send.target { 0 } else { link.latency.as_nanos() as u64 };
            prop_assert!(at.as_nanos() >= earliest, "datagram {} beat the latency", id);
            *counts.entry(*id).or_default() += 1;
        }
        let copies_max = if link.duplicate > 0.0 { 2 } else { 1 };
        for (id, send) in (0u32..).zip(&sends) {
            let count = counts.get(&id).copied().unwrap_or(0);
            prop_assert!(count <= copies_max, "datagram {} arrived {} times", id, count);
            let cut = cuts.contains(&(send.source, send.target)) && send.source != send.target;
            let lossless = link.loss == 0.0 || send.source == send.target;
            if lossless && !cut {
                prop_assert!(count >= 1, "datagram {} was lost on a lossless link", id);
            }
        }
    }

    #[test]
    fn streams_deliver_whole_and_in_order(
        seed in any::<u64>(),
        link in link_strategy(),
        window_bytes in 1_000u32..300_000,
        chunks in prop::collection::vec(1usize..50_000, 1..20),
    ) {
        let mut config = SimConfig::new(seed);
        config.net.link = link;
        config.net.stream_window_bytes = window_bytes;
        let world = World::new(config);
        let (a, b) = (world.add_node("a", addr(0).ip()), world.add_node("b", addr(1).ip()));
        let total: usize = chunks.iter().sum();
        let server = world.env(b);
        let received = world.spawn(b, async move {
            let listener = server.listen_tcp(addr(1)).await.expect("listen");
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).await.expect("read");
            bytes
        });
        let client = world.env(a);
        world.spawn(a, async move {
            let mut stream = client.connect_tcp(addr(1)).await.expect("connect");
            let mut next = 0usize;
            for chunk in chunks {
                let data: Vec<u8> = (next..next + chunk).map(|index| (index % 253) as u8).collect();
                stream.write_all(&data).await.expect("write");
                next += chunk;
            }
            stream.shutdown().await.expect("shutdown");
        });
        world.run_for(Duration::from_secs(600)).expect("runs");
        prop_assert!(received.is_finished());
        let bytes = futures::executor::block_on(received).expect("the reader finished");
        prop_assert_eq!(bytes.len(), total);
        prop_assert!(bytes.iter().enumerate().all(|(index, byte)| *byte == (index % 253) as u8));
    }
}
