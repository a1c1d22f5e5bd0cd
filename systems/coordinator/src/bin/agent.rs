//! `agent`: the node agent on real sockets and files (feature `tokio`): registers with the
//! coordinator, holds its map stream and runs WireGuard over real UDP.
//!
//! Usage: `agent --coordinator ADDR --coordinator-key HEX --preauth-key K --state-dir DIR
//! --hostname H [--listen-port P] [--endpoint-ip IP] [--advertise-routes NET,..]
//! [--packet-port ADDR]`.
//!
//! Without a TUN device the agent offers a local packet port (`--packet-port`): each datagram
//! received there that is an IP packet is sent into the tunnel; one that is not (say, one byte)
//! only makes its sender the port's client. Each packet that arrives through the tunnel and
//! passes the map's filter goes to the port's client (the last sender). `--metrics` reports the
//! maps, peers and packets. Logs, signals and `--version` are the `service` crate's.

#![allow(clippy::disallowed_types, reason = "production binary: the packet port is a real socket")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use coordinator::Key;
use coordinator::agent::{AgentConfig, AgentHandle, AgentStatus, packet_info};
use gossip::swim::MemberState;
use service::tracing::{info, warn};
use service::{Concerning, Samples, Service};
use sim::tokio_env::TokioEnv;

/// The largest datagram read from the packet port.
const PACKET_BYTES_MAX: usize = 65_535;

/// The mesh node agent.
#[derive(Parser, Debug)]
#[command(name = "agent", version = service::VERSION)]
struct Args {
    /// The coordinator's agent address.
    #[arg(long)]
    coordinator: SocketAddr,
    /// The coordinator's public key (64 hex digits, from its log or `GET /key`).
    #[arg(long)]
    coordinator_key: String,
    /// The pre-auth key to register with (used until the node is registered).
    #[arg(long, default_value = "")]
    preauth_key: String,
    /// Directory of the agent's state (keys, node id; created if missing).
    #[arg(long)]
    state_dir: PathBuf,
    /// This node's host name.
    #[arg(long)]
    hostname: String,
    /// WireGuard's UDP port (0 picks one).
    #[arg(long, default_value_t = 0)]
    listen_port: u16,
    /// The gossip membership's UDP port inside the tunnels (0: no gossip).
    #[arg(long, default_value_t = coordinator::tunnel_gossip::GOSSIP_PORT)]
    gossip_port: u16,
    /// The address peers reach this host at.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    endpoint_ip: IpAddr,
    /// Subnet routes this node offers (`10.0.0.0/24,0.0.0.0/0`); an admin approves them.
    #[arg(long, value_delimiter = ',')]
    advertise_routes: Vec<wireguard::IpNet>,
    /// A local UDP port exchanging IP packets with the tunnel.
    #[arg(long)]
    packet_port: Option<SocketAddr>,
    #[command(flatten)]
    service: service::Options,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = args.service.clone();
    service::run("agent", &options, |service| run(args, service))
}

fn parse_key(text: &str) -> anyhow::Result<Key> {
    let text = text.trim();
    anyhow::ensure!(text.len() == 64 && text.is_ascii(), "--coordinator-key: not 64 hex digits");
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .context("--coordinator-key: not 64 hex digits")?;
    }
    Ok(Key(key))
}

async fn run(args: Args, service: Service) -> anyhow::Result<()> {
    let dir = args.state_dir.display().to_string();
    #[allow(clippy::disallowed_methods, reason = "the state directory, once at start-up")]
    std::fs::create_dir_all(&args.state_dir).concerning("creating the state directory", &dir)?;
    let env = TokioEnv::try_new(&args.state_dir).context("seeding the random number generator")?;
    let config = AgentConfig {
        coordinator: args.coordinator,
        coordinator_key: parse_key(&args.coordinator_key)?,
        preauth_key: args.preauth_key.clone(),
        hostname: args.hostname.clone(),
        // The state file lives in STATE_DIR/agent/ (Env paths are relative, never empty).
        state_dir: "agent".to_string(),
        listen_port: args.listen_port,
        endpoint_ip: args.endpoint_ip,
        advertise_routes: args.advertise_routes.clone(),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        keepalive: Duration::from_secs(15),
        silence_max: Duration::from_secs(60),
        gossip_port: (args.gossip_port != 0).then_some(args.gossip_port),
        observer: Some(Arc::new(log_status)),
    };
    let handle =
        coordinator::agent::start(env, config).await.concerning("starting the agent in", &dir)?;
    let status = handle.status_handle();
    service.set_collector(move |samples| {
        collect(&status.lock().unwrap_or_else(|poison| poison.into_inner()), samples);
    });
    info!(hostname = %args.hostname, node_key = ?handle.node_key(), "agent running");
    let shutdown = service.shutdown();
    match args.packet_port {
        Some(addr) => {
            tokio::select! {
                ended = packet_port(handle, addr) => ended?,
                () = shutdown.requested() => {}
            }
        }
        None => {
            shutdown.requested().await;
            drop(handle);
        }
    }
    Ok(())
}

/// Logs each map the agent applied (the tests wait for these lines).
fn log_status(status: &AgentStatus) {
    let ip = status.node.as_ref().map(|node| node.ipv4.to_string()).unwrap_or_default();
    let peers = status.device_peers.len();
    info!(ip = %ip, peers, full_maps = status.full_maps, deltas = status.deltas, "map applied");
}

/// Exchanges packets between the local UDP port at `addr` and the tunnel.
async fn packet_port(mut handle: AgentHandle, addr: SocketAddr) -> anyhow::Result<()> {
    let socket =
        tokio::net::UdpSocket::bind(addr).await.concerning("binding the packet port", addr)?;
    let bound = socket.local_addr().context("the packet port's address")?;
    info!(addr = %bound, "packet port open");
    // The port's client: the last sender.
    let mut client: Option<SocketAddr> = None;
    let mut buffer = vec![0u8; PACKET_BYTES_MAX];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (length, from) = received.concerning("reading the packet port", bound)?;
                client = Some(from);
                let packet = buffer[..length].to_vec();
                if packet_info(&packet).is_some() && !handle.send(packet).await {
                    anyhow::bail!("the agent stopped");
                }
            }
            arrived = handle.recv() => {
                let Some((_sender, packet)) = arrived else { anyhow::bail!("the agent stopped") };
                match client {
                    Some(to) => {
                        if let Err(error) = socket.send_to(&packet, to).await {
                            warn!(%error, %to, "cannot hand a packet to the packet port");
                        }
                    }
                    None => warn!("a packet arrived before the packet port had a client"),
                }
            }
        }
    }
}

/// The agent's status as metrics.
fn collect(status: &AgentStatus, samples: &mut Samples) {
    let counters = [
        ("agent_full_maps_total", "Full maps received.", status.full_maps),
        ("agent_deltas_total", "Map deltas received.", status.deltas),
        ("agent_disconnects_total", "Failed connections or broken streams.", status.disconnects),
        ("agent_packets_filtered_total", "Arrived packets the filter refused.", status.filtered),
        ("agent_packets_delivered_total", "Arrived packets the filter allowed.", status.delivered),
    ];
    samples.counters(&counters);
    let peers = status.device_peers.len() as f64;
    samples.gauge("agent_peers", "WireGuard peers on the device.", peers);
    let connected = if status.connected { 1.0 } else { 0.0 };
    samples.gauge("agent_connected", "Whether the map stream is open.", connected);
    samples.gauge(
        "agent_policy_version",
        "Policy version of the map.",
        status.policy_version as f64,
    );
    let help = "Gossip members this agent believes in each state (itself included).";
    for (state, label) in [
        (MemberState::Alive, "alive"),
        (MemberState::Suspect, "suspect"),
        (MemberState::Dead, "dead"),
        (MemberState::Left, "left"),
    ] {
        let count = status.gossip.members.iter().filter(|member| member.1 == state).count();
        samples.gauge_with("agent_gossip_members", help, &[("state", label)], count as f64);
    }
}
