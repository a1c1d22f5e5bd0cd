//! The trace of a fixed seed, pinned by a snapshot.
//!
//! Goal: any change to scheduling, the network model, the disk model or the trace format shows
//! up in review as a changed snapshot, never silently. Method: a tiny world (two nodes, a ping,
//! a disk write and sync, a crash with an unsynced write) records its trace; the first records
//! and the summary are rendered as text and compared with the committed snapshot. Update with
//! `INSTA_UPDATE=always cargo test -p sim --test world_trace` and review the diff.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sim::world::{SimConfig, World};
use sim::{Env, File, OpenOptions, UdpSocket};

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 4000)
}

fn render(seed: u64) -> String {
    let mut config = SimConfig::new(seed);
    config.record_trace = true;
    let world = World::new(config);
    let a = world.add_node_with("a", addr(1).ip(), |env| async move {
        let socket = env.bind_udp(addr(1)).await.expect("bind");
        socket.send_to(b"ping", addr(2)).await.expect("send");
        let file = env.open("log", OpenOptions::CREATE).await.expect("open");
        file.append(b"synced").await.expect("append");
        file.sync().await.expect("sync");
        file.append(b"unsynced").await.expect("append");
        env.sleep(Duration::from_secs(60)).await;
    });
    world.add_node_with("b", addr(2).ip(), |env| async move {
        let socket = env.bind_udp(addr(2)).await.expect("bind");
        let mut buf = [0u8; 16];
        let (count, from) = socket.recv_from(&mut buf).await.expect("recv");
        socket.send_to(&buf[..count], from).await.expect("send");
    });
    world.run_for(Duration::from_millis(50)).expect("runs");
    world.crash(a);
    world.run_for(Duration::from_millis(50)).expect("runs");
    let records = world.trace_records().expect("recorded");
    let mut text = String::new();
    for record in &records {
        writeln!(text, "{record}").expect("write to a String");
    }
    writeln!(text, "records {} hash {:#018x}", records.len(), world.trace_hash()).expect("write");
    text
}

#[test]
fn trace_of_seed_1_is_pinned() {
    let text = render(1);
    assert_eq!(text, render(1), "the same seed must render the same trace");
    insta::assert_snapshot!(text);
}
