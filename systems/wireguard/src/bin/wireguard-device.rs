//! `wireguard-device`: runs a WireGuard device on a real UDP socket (tokio) from a `wg`-format
//! configuration file, sharing every line of protocol code with the simulation.
//!
//! Without a TUN device (this build binds no platform TUN driver, and `--tun` says so) the
//! packet interface is driven from the command line: `--ping ADDR` sends a test packet into the
//! tunnel every second, `--echo` answers test packets, and every decrypted packet is logged.
//! Two processes on one machine make a smoke test:
//! `wireguard-device a.conf --echo` and `wireguard-device b.conf --ping 10.0.0.1`.

#![allow(
    clippy::disallowed_methods,
    reason = "a production binary: it reads its configuration file and runs on real time"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures::FutureExt;
use sim::Env;
use sim::tokio_env::TokioEnv;
use wireguard::config::{self, encode_key};
use wireguard::ip::{self, ipv4_packet};
use wireguard::{Device, DeviceHandle};

/// The payload tag of test packets.
const PING: &[u8] = b"wireguard-device ping";
const PONG: &[u8] = b"wireguard-device pong";

/// Runs a WireGuard device from a `wg`-format configuration file.
#[derive(Parser)]
struct Args {
    /// The configuration file (`[Interface]` and `[Peer]` sections, as `wg setconf` reads).
    config: PathBuf,
    /// Use a real TUN device (not supported by this build: reports a clear error).
    #[arg(long)]
    tun: bool,
    /// Send a test packet to this tunnel address every second.
    #[arg(long)]
    ping: Option<Ipv4Addr>,
    /// Answer test packets.
    #[arg(long)]
    echo: bool,
    /// Stop after this many seconds (runs forever without it).
    #[arg(long)]
    seconds: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.tun {
        bail!(
            "--tun: this build has no TUN driver (it would need a platform TUN binding and \
             CAP_NET_ADMIN); run without --tun and drive the tunnel with --ping/--echo"
        );
    }
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = config::parse(&text).with_context(|| format!("in {}", args.config.display()))?;
    let source = config.addresses.iter().find_map(|net| match net.addr {
        IpAddr::V4(addr) => Some(addr),
        IpAddr::V6(_) => None,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::try_new(".")?;
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
            *config.device.private_key,
        ));
        let device = Device::start(env.clone(), config.device).await?;
        println!("listening on {} as {}", device.local_addr(), encode_key(public.as_bytes()));
        run(env, device, &args, source).await
    })
}

async fn run(
    env: TokioEnv,
    mut device: DeviceHandle,
    args: &Args,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    let deadline = args.seconds.map(|seconds| env.now() + Duration::from_secs(seconds));
    let mut next_ping = env.now();
    loop {
        if deadline.is_some_and(|deadline| env.now() >= deadline) {
            println!("stats: {:?}", device.stats());
            return Ok(());
        }
        let received = {
            let tick = env.sleep_until(next_ping).fuse();
            let received = device.recv().fuse();
            futures::pin_mut!(tick, received);
            futures::select_biased! {
                received = received => Some(received.context("device stopped")?),
                () = tick => None,
            }
        };
        let Some(received) = received else {
            next_ping = env.now() + Duration::from_secs(1);
            if let (Some(target), Some(source)) = (args.ping, source) {
                device.send(ipv4_packet(source, target, PING)).await?;
            }
            continue;
        };
        let header = ip::header(&received.packet).context("device delivered a non-IP packet")?;
        let payload = &received.packet[ip::IPV4_HEADER_LEN.min(received.packet.len())..];
        println!(
            "{} bytes from {} (peer {})",
            received.packet.len(),
            header.source,
            encode_key(&received.peer)
        );
        if let (true, IpAddr::V4(from), IpAddr::V4(to)) =
            (args.echo, header.source, header.destination)
            && payload == PING
        {
            device.send(ipv4_packet(to, from, PONG)).await?;
        }
    }
}
