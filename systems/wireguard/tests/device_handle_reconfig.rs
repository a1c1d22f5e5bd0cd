//! A running `Device` reconfigured through its `DeviceHandle` on `sim::world::World`.
//!
//! Goal: the handle's `set_peers`, `upsert_peer` and `remove_peer` reach the device's task and
//! answer; a peer added at run time handshakes and delivers with its public key (what an
//! agent's packet filter keys on); a removed peer's counters leave the stats. Node 0 starts
//! with no peers and learns node 1 by `upsert_peer`; node 1 learns node 0 by `set_peers` and
//! echoes what it receives. The seed is fixed and printed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::Env;
use sim::world::{SimConfig, World};
use wireguard::ip::ipv4_packet;
use wireguard::mesh::{PORT, node_ip, tunnel_ip};
use wireguard::{Device, DeviceConfig, IpNet, PeerChange, PeerConfig, Received};
use zeroize::Zeroizing;

/// Sends before node 0 gives up on an echo.
const ATTEMPT_MAX: usize = 50;

fn private(node: usize) -> [u8; 32] {
    [0x60 + node as u8; 32]
}

fn public(node: usize) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(private(node))).to_bytes()
}

fn empty_config(node: usize) -> DeviceConfig {
    DeviceConfig {
        private_key: Zeroizing::new(private(node)),
        listen_port: PORT,
        listen_addr: None,
        peers: Vec::new(),
        handshake_load_limit_per_sec: 50,
        mtu: 1420,
    }
}

fn peer(node: usize) -> PeerConfig {
    PeerConfig {
        public_key: public(node),
        preshared_key: None,
        allowed_ips: vec![IpNet::new(tunnel_ip(node).into(), 32).expect("valid")],
        endpoint: Some(SocketAddr::new(node_ip(node), PORT)),
        persistent_keepalive: None,
    }
}

/// What node 0 saw.
#[derive(Debug, Default)]
struct Outcome {
    echo: Option<Received>,
    removed: Option<bool>,
    peers_after_removal: Option<usize>,
    removed_count: u64,
}

async fn node_zero(env: sim::world::SimEnv, outcome: Arc<Mutex<Outcome>>) {
    let mut device = Device::start(env.clone(), empty_config(0)).await.expect("bind");
    assert_eq!(device.upsert_peer(peer(1)).await, Ok(PeerChange::Added));
    let packet = ipv4_packet(tunnel_ip(0), tunnel_ip(1), b"ping");
    for _ in 0..ATTEMPT_MAX {
        device.send(packet.clone()).await.expect("device runs");
        if let Ok(Some(received)) = env.timeout(Duration::from_millis(200), device.recv()).await {
            outcome.lock().expect("lock").echo = Some(received);
            break;
        }
    }
    let removed = device.remove_peer(public(1)).await.expect("device runs");
    // Timer events and reconfigurations refresh the stats at once.
    let stats = device.stats();
    let mut outcome = outcome.lock().expect("lock");
    outcome.removed = Some(removed);
    outcome.peers_after_removal = Some(stats.peers.len());
    outcome.removed_count = stats.reconfigure.removed_count;
}

async fn node_one(env: sim::world::SimEnv) {
    let mut device = Device::start(env.clone(), empty_config(1)).await.expect("bind");
    let changed = device.set_peers(vec![peer(0)]).await.expect("device runs");
    assert_eq!(changed.added_count, 1);
    while let Some(received) = device.recv().await {
        let echo = ipv4_packet(tunnel_ip(1), tunnel_ip(0), &received.packet[20..]);
        if device.send(echo).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_running_device_takes_and_drops_peers_through_its_handle() {
    let seed = 0x5eed_7001;
    println!("seed {seed:#x}");
    let world = World::new(SimConfig::new(seed));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let shared = Arc::clone(&outcome);
    world.add_node_with("wg0", node_ip(0), move |env| node_zero(env, Arc::clone(&shared)));
    world.add_node_with("wg1", node_ip(1), node_one);
    world.run_for(Duration::from_secs(20)).expect("run");
    let outcome = outcome.lock().expect("lock");
    let echo = outcome.echo.as_ref().expect("an echo came back");
    assert_eq!(echo.peer, public(1));
    assert_eq!(echo.packet, ipv4_packet(tunnel_ip(1), tunnel_ip(0), b"ping"));
    assert_eq!(outcome.removed, Some(true));
    assert_eq!((outcome.peers_after_removal, outcome.removed_count), (Some(0), 1));
}
