//! Network semantics of the simulated world.
//!
//! Goal: the network does what its configuration says, measurably. Method: send many datagrams
//! over configured links and compare the observed loss, duplication and reordering to the
//! configured rates within statistical bounds; cut links and check exactly the cut directions
//! go dark; push bytes through streams and check they arrive whole and in order, or the stream
//! fails with an error.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::world::{LinkConfig, NodeId, SimConfig, World};
use sim::{Env, TcpListener, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(last), port)
}

/// Two nodes a (10.0.0.1) and b (10.0.0.2) with `link` between them.
fn pair(seed: u64, link: LinkConfig) -> (World, NodeId, NodeId) {
    let mut config = SimConfig::new(seed);
    config.net.link = link;
    let world = World::new(config);
    let a = world.add_node("a", ip(1));
    let b = world.add_node("b", ip(2));
    (world, a, b)
}

/// Sends `count` numbered datagrams from a to b, one per millisecond; returns the sequence
/// numbers b received, in arrival order.
fn blast(world: &World, a: NodeId, b: NodeId, count: u32) -> Vec<u32> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiver = world.env(b);
    world.spawn(b, async move {
        let socket = receiver.bind_udp(addr(2, 7000)).await.expect("bind");
        let mut buf = [0u8; 16];
        loop {
            let (length, _) = socket.recv_from(&mut buf).await.expect("recv");
            assert_eq!(length, 4);
            let number = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
            sink.lock().expect("lock").push(number);
        }
    });
    let sender = world.env(a);
    let done = world.block_on(a, Duration::from_secs(3600), async move {
        let socket = sender.bind_udp(addr(1, 0)).await.expect("bind");
        for number in 0..count {
            socket.send_to(&number.to_le_bytes(), addr(2, 7000)).await.expect("send");
            sender.sleep(Duration::from_millis(1)).await;
        }
    });
    done.expect("sender finishes");
    world.run_for(Duration::from_secs(1)).expect("drain");
    let received = received.lock().expect("lock");
    received.clone()
}

#[track_caller]
fn check_rate(observed: u32, trials: u32, expected: f64) {
    // Four standard deviations of a binomial: fails by chance about once in 15,000 runs.
    let mean = f64::from(trials) * expected;
    let sigma = (mean * (1.0 - expected)).sqrt();
    let observed = f64::from(observed);
    assert!(
        (observed - mean).abs() <= 4.0 * sigma + 1.0,
        "observed {observed}, expected {mean:.0} +/- {:.0}",
        4.0 * sigma
    );
}

#[test]
fn loss_rate_matches_config() {
    for (seed, loss) in [(1, 0.05), (2, 0.2), (3, 0.5)] {
        let (world, a, b) = pair(seed, LinkConfig { loss, ..LinkConfig::default() });
        let received = blast(&world, a, b, 4000);
        check_rate(4000 - received.len() as u32, 4000, loss);
    }
}

#[test]
fn duplication_rate_matches_config() {
    let link = LinkConfig { duplicate: 0.1, ..LinkConfig::default() };
    let (world, a, b) = pair(4, link);
    let received = blast(&world, a, b, 4000);
    let mut unique = received.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4000, "without loss every datagram arrives at least once");
    check_rate((received.len() - unique.len()) as u32, 4000, 0.1);
}

#[test]
fn reordering_happens_only_when_configured() {
    let in_order = LinkConfig { jitter: Duration::ZERO, ..LinkConfig::default() };
    let (world, a, b) = pair(5, in_order);
    let received = blast(&world, a, b, 1000);
    assert!(received.windows(2).all(|pair| pair[0] < pair[1]), "fixed latency keeps order");

    let reordering = LinkConfig {
        jitter: Duration::ZERO,
        reorder: 0.2,
        reorder_delay: Duration::from_millis(20),
        ..LinkConfig::default()
    };
    let (world, a, b) = pair(6, reordering);
    let received = blast(&world, a, b, 1000);
    let inversions = received.windows(2).filter(|pair| pair[0] > pair[1]).count();
    assert_eq!(received.len(), 1000);
    assert!(inversions > 50, "expected reordering, saw {inversions} inversions");
}

#[test]
fn mtu_is_enforced_with_a_clear_error() {
    let (world, a, _b) = pair(7, LinkConfig { mtu_bytes: 1000, ..LinkConfig::default() });
    let env = world.env(a);
    let result = world.block_on(a, Duration::from_secs(1), async move {
        let socket = env.bind_udp(addr(1, 0)).await.expect("bind");
        let small = socket.send_to(&[0; 1000], addr(2, 7000)).await;
        let large = socket.send_to(&[0; 1001], addr(2, 7000)).await;
        (small.is_ok(), large.map_err(|error| error.kind()))
    });
    assert_eq!(result.expect("runs"), (true, Err(std::io::ErrorKind::InvalidInput)));
}

/// Three nodes; each sends one datagram to each other node; returns the (from, to) pairs that
/// arrived.
fn all_pairs_reachability(world: &World, nodes: &[NodeId]) -> Vec<(u8, u8)> {
    let arrived = Arc::new(Mutex::new(Vec::new()));
    for (index, node) in nodes.iter().enumerate() {
        let env = world.env(*node);
        let me = index as u8 + 1;
        let sink = Arc::clone(&arrived);
        let peers = nodes.len() as u8;
        world.spawn(*node, async move {
            let socket = Arc::new(env.bind_udp(addr(me, 7100)).await.expect("bind"));
            for peer in (1..=peers).filter(|peer| *peer != me) {
                socket.send_to(&[me], addr(peer, 7100)).await.expect("send");
            }
            let mut buf = [0u8; 1];
            loop {
                socket.recv_from(&mut buf).await.expect("recv");
                sink.lock().expect("lock").push((buf[0], me));
            }
        });
    }
    world.run_for(Duration::from_secs(1)).expect("runs");
    let mut arrived = arrived.lock().expect("lock").clone();
    arrived.sort_unstable();
    arrived
}

fn three_nodes(seed: u64) -> (World, Vec<NodeId>) {
    let world = World::new(SimConfig::new(seed));
    let nodes = (1..=3).map(|last| world.add_node(&format!("n{last}"), ip(last))).collect();
    (world, nodes)
}

#[test]
fn partition_blocks_exactly_the_cut_links() {
    let (world, nodes) = three_nodes(8);
    world.partition(nodes[0], nodes[1]);
    let arrived = all_pairs_reachability(&world, &nodes);
    assert_eq!(arrived, vec![(1, 3), (2, 3), (3, 1), (3, 2)]);
}

#[test]
fn one_way_partition_is_one_way() {
    let (world, nodes) = three_nodes(9);
    world.partition_oneway(nodes[0], nodes[1]);
    let arrived = all_pairs_reachability(&world, &nodes);
    assert_eq!(arrived, vec![(1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]);
}

#[test]
fn heal_restores_every_link() {
    let (world, nodes) = three_nodes(10);
    world.split(&nodes[..1], &nodes[1..]);
    world.heal();
    let arrived = all_pairs_reachability(&world, &nodes);
    assert_eq!(arrived.len(), 6);
}

#[test]
fn clog_holds_packets_and_unclog_releases_them_in_order() {
    let link = LinkConfig { jitter: Duration::ZERO, ..LinkConfig::default() };
    let (world, a, b) = pair(11, link);
    world.clog(b);
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiver = world.env(b);
    world.spawn(b, async move {
        let socket = receiver.bind_udp(addr(2, 7000)).await.expect("bind");
        let mut buf = [0u8; 1];
        loop {
            socket.recv_from(&mut buf).await.expect("recv");
            sink.lock().expect("lock").push(buf[0]);
        }
    });
    let sender = world.env(a);
    world.spawn(a, async move {
        let socket = sender.bind_udp(addr(1, 0)).await.expect("bind");
        for number in 0..10u8 {
            socket.send_to(&[number], addr(2, 7000)).await.expect("send");
        }
    });
    world.run_for(Duration::from_secs(5)).expect("runs");
    assert!(received.lock().expect("lock").is_empty(), "clogged: nothing arrives");
    world.unclog(b);
    world.run_for(Duration::from_millis(1)).expect("runs");
    assert_eq!(*received.lock().expect("lock"), (0..10).collect::<Vec<u8>>());
}

/// Writes `total` bytes (a counting pattern) from a to b over a stream and returns what b read
/// before EOF or error, plus the error kind b saw, if any.
fn stream_transfer(
    world: &World,
    a: NodeId,
    b: NodeId,
    total: usize,
) -> Arc<Mutex<(Vec<u8>, Option<std::io::ErrorKind>)>> {
    let result = Arc::new(Mutex::new((Vec::new(), None)));
    let sink = Arc::clone(&result);
    let server = world.env(b);
    let server_addr = SocketAddr::new(server.ip(), 8000);
    world.spawn(b, async move {
        let listener = server.listen_tcp(server_addr).await.expect("listen");
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 7000];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(count) => sink.lock().expect("lock").0.extend_from_slice(&buf[..count]),
                Err(error) => {
                    sink.lock().expect("lock").1 = Some(error.kind());
                    return;
                }
            }
        }
    });
    let client = world.env(a);
    world.spawn(a, async move {
        client.sleep(Duration::from_millis(10)).await;
        let mut stream = client.connect_tcp(server_addr).await.expect("connect");
        let data: Vec<u8> = (0..total).map(|index| (index % 251) as u8).collect();
        for chunk in data.chunks(10_000) {
            if stream.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = stream.shutdown().await;
    });
    result
}

#[test]
fn streams_deliver_every_byte_in_order_despite_loss_and_reordering() {
    let link = LinkConfig {
        loss: 0.2,
        reorder: 0.3,
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let (world, a, b) = pair(12, link);
    let result = stream_transfer(&world, a, b, 2_000_000);
    world.run_for(Duration::from_secs(120)).expect("runs");
    let (bytes, error) = result.lock().expect("lock").clone();
    assert_eq!(error, None);
    assert_eq!(bytes.len(), 2_000_000);
    assert!(bytes.iter().enumerate().all(|(index, byte)| *byte == (index % 251) as u8));
}

#[test]
fn a_partition_breaks_a_stream_with_an_error_never_a_silent_gap() {
    let (world, a, b) = pair(13, LinkConfig::default());
    let result = stream_transfer(&world, a, b, 50_000_000);
    world.run_for(Duration::from_millis(200)).expect("runs");
    world.partition(a, b);
    world.run_for(Duration::from_secs(5)).expect("runs");
    world.heal();
    world.run_for(Duration::from_secs(5)).expect("runs");
    let (bytes, error) = result.lock().expect("lock").clone();
    assert_eq!(error, Some(std::io::ErrorKind::TimedOut));
    assert!(!bytes.is_empty() && bytes.len() < 50_000_000);
    assert!(bytes.iter().enumerate().all(|(index, byte)| *byte == (index % 251) as u8));
}

#[test]
fn a_crashed_peer_resets_the_stream() {
    let (world, a, b) = pair(14, LinkConfig::default());
    let result = stream_transfer(&world, b, a, 50_000_000);
    world.run_for(Duration::from_millis(200)).expect("runs");
    world.crash(b);
    world.run_for(Duration::from_secs(1)).expect("runs");
    let (bytes, error) = result.lock().expect("lock").clone();
    assert_eq!(error, Some(std::io::ErrorKind::ConnectionReset));
    assert!(bytes.iter().enumerate().all(|(index, byte)| *byte == (index % 251) as u8));
}

#[test]
fn connect_is_refused_without_listener_and_times_out_across_a_partition() {
    let (world, a, b) = pair(15, LinkConfig::default());
    let env = world.env(a);
    let refused = world.block_on(a, Duration::from_secs(10), async move {
        env.connect_tcp(addr(2, 9999)).await.map(|_| ()).map_err(|error| error.kind())
    });
    assert_eq!(refused.expect("runs"), Err(std::io::ErrorKind::ConnectionRefused));

    let server = world.env(b);
    world.spawn(b, async move {
        let listener = server.listen_tcp(addr(2, 9999)).await.expect("listen");
        loop {
            let _ = listener.accept().await;
        }
    });
    world.partition(a, b);
    let env = world.env(a);
    let timed_out = world.block_on(a, Duration::from_secs(10), async move {
        env.connect_tcp(addr(2, 9999)).await.map(|_| ()).map_err(|error| error.kind())
    });
    assert_eq!(timed_out.expect("runs"), Err(std::io::ErrorKind::TimedOut));
}

#[test]
fn bandwidth_limits_throughput() {
    // 1 MB/s: 100 datagrams of 1000 bytes take about 100 ms to drain.
    let link = LinkConfig {
        bandwidth_bytes_per_sec: Some(1_000_000),
        jitter: Duration::ZERO,
        ..LinkConfig::default()
    };
    let (world, a, b) = pair(16, link);
    let last_arrival = Arc::new(Mutex::new(sim::Instant::ZERO));
    let sink = Arc::clone(&last_arrival);
    let receiver = world.env(b);
    world.spawn(b, async move {
        let socket = receiver.bind_udp(addr(2, 7000)).await.expect("bind");
        let mut buf = [0u8; 1000];
        loop {
            socket.recv_from(&mut buf).await.expect("recv");
            *sink.lock().expect("lock") = receiver.now();
        }
    });
    let sender = world.env(a);
    world.spawn(a, async move {
        let socket = sender.bind_udp(addr(1, 0)).await.expect("bind");
        for _ in 0..100 {
            socket.send_to(&[7; 1000], addr(2, 7000)).await.expect("send");
        }
    });
    world.run_for(Duration::from_secs(1)).expect("runs");
    let arrival = last_arrival.lock().expect("lock").since_origin();
    assert!(arrival >= Duration::from_millis(100) && arrival < Duration::from_millis(110));
}

#[test]
fn tokio_io_codecs_run_over_simulated_streams() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let (world, a, b) = pair(17, LinkConfig::default());
    let server = world.env(b);
    world.spawn(b, async move {
        let listener = server.listen_tcp(addr(2, 8100)).await.expect("listen");
        let (stream, _) = listener.accept().await.expect("accept");
        let (reader, mut writer) = tokio::io::split(stream);
        let mut lines = BufReader::new(reader).lines();
        while let Some(line) = lines.next_line().await.expect("read line") {
            writer.write_all(format!("{}\n", line.to_uppercase()).as_bytes()).await.expect("w");
        }
    });
    let client = world.env(a);
    let replies = world.block_on(a, Duration::from_secs(10), async move {
        let stream = client.connect_tcp(addr(2, 8100)).await.expect("connect");
        let (reader, mut writer) = tokio::io::split(stream);
        writer.write_all(b"alpha\nbeta\ngamma\n").await.expect("write");
        writer.shutdown().await.expect("shutdown");
        let mut lines = BufReader::new(reader).lines();
        let mut replies = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read line") {
            replies.push(line);
        }
        replies
    });
    assert_eq!(replies.expect("runs"), ["ALPHA", "BETA", "GAMMA"]);
}
