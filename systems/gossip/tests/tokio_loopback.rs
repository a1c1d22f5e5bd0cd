//! Three real nodes over real UDP on 127.0.0.1 (the production `TokioEnv`) converge.
//!
//! Goal: the code the simulator tests also works on real sockets, files and time. Method: start
//! three persistent nodes in one multi-threaded tokio runtime with fast probe settings, write a
//! key on one, and wait (bounded by real time) until every node sees all three alive and the
//! same MST root.
#![cfg(feature = "tokio")]
#![allow(clippy::disallowed_methods, reason = "a real-time test on the production backend")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use gossip::driver::start_persistent;
use gossip::node::NodeConfig;
use gossip::store::{Update, Value};
use gossip::swim::{MemberId, MemberState};
use sim::tokio_env::TokioEnv;
use sim::{Env, UdpSocket};

const NODES: u64 = 3;
const TIME_MAX: Duration = Duration::from_secs(30);

/// Free loopback ports, found by binding port 0 and letting go.
async fn free_addrs(env: &TokioEnv) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..NODES {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let socket = env.bind_udp(any).await.expect("bind");
        addrs.push(socket.local_addr().expect("addr"));
        sockets.push(socket);
    }
    addrs
}

#[test]
fn three_nodes_converge_over_real_udp() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let directory = tempfile::tempdir().expect("tempdir");
    runtime.block_on(async {
        let probe = TokioEnv::with_seed(directory.path(), 1);
        let addrs = free_addrs(&probe).await;
        let mut handles = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            let env = TokioEnv::with_seed(directory.path().join(format!("n{index}")), index as u64);
            let mut config = NodeConfig::new(MemberId(index as u64), *addr);
            config.swim.probe_interval = Duration::from_millis(200);
            config.swim.probe_timeout = Duration::from_millis(100);
            config.anti_entropy_interval = Duration::from_millis(300);
            config.tombstone_ttl = Duration::from_secs(60);
            let seeds = if index == 0 { Vec::new() } else { vec![addrs[0]] };
            let interval = Duration::from_secs(1);
            let handle = start_persistent(env, config, seeds, None, "gossip", interval)
                .await
                .expect("start");
            handles.push(handle);
        }
        handles[1].put(b"hello", Some(b"world".to_vec())).await.expect("put");
        handles[0].update(b"hits", Update::Add(5)).await.expect("add");
        handles[2].update(b"hits", Update::Add(-2)).await.expect("add");
        let converged = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let views: Vec<(usize, u128)> = handles
                    .iter()
                    .map(|handle| {
                        handle.with_node(|node| {
                            let alive = node
                                .swim()
                                .members()
                                .filter(|member| member.state == MemberState::Alive)
                                .count();
                            (alive, node.store_mut().root().0)
                        })
                    })
                    .collect();
                let root = views[0].1;
                if views.iter().all(|(alive, other)| *alive == NODES as usize && *other == root) {
                    return;
                }
            }
        };
        tokio::time::timeout(TIME_MAX, converged).await.expect("converges within 30 s");
        let value = handles[2].with_node(|node| node.store().get(b"hello").map(<[u8]>::to_vec));
        assert_eq!(value.as_deref(), Some(&b"world"[..]));
        for handle in &handles {
            let hits = handle.with_node(|node| node.store().value(b"hits").and_then(Value::count));
            assert_eq!(hits, Some(3));
        }
        for handle in &handles {
            handle.stop();
        }
    });
}
