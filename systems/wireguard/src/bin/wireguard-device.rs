//! `wireguard-device`: runs a WireGuard device on a real UDP socket (tokio) from a `wg`-format
//! configuration file, sharing every line of protocol code with the simulation; and makes keys
//! as `wg` does (`genkey`, `pubkey`, `genpsk`: base64 X25519).
//!
//! Without a TUN device (this build binds no platform TUN driver, and `--tun` says so) the
//! packet interface is driven from the command line: `--ping ADDR` sends a test packet into the
//! tunnel every `--ping-interval-ms`, `--echo` answers test packets, and every decrypted packet
//! is printed. Two processes on one machine make a smoke test:
//! `wireguard-device a.conf --echo` and `wireguard-device b.conf --ping 10.0.0.1`.
//! SIGTERM or SIGINT prints the counters and stops the device; logs, `--metrics` and
//! `--version` are the `service` crate's.

#![allow(
    clippy::disallowed_methods,
    reason = "a production binary: it reads its configuration file and runs on real time"
)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use rand_core::RngCore;
use service::tracing::{info, warn};
use service::{Concerning, Samples, Service};
use sim::Env;
use sim::tokio_env::TokioEnv;
use wireguard::config::{self, decode_key, encode_key};
use wireguard::device::DeviceStats;
use wireguard::ip::{self, ipv4_packet};
use wireguard::{Device, DeviceHandle, DropOrigin, Received};

/// The payload tag of test packets.
const PING: &[u8] = b"wireguard-device ping";
const PONG: &[u8] = b"wireguard-device pong";

/// Runs a WireGuard device from a `wg`-format configuration file, or makes keys.
#[derive(Parser)]
#[command(name = "wireguard-device", version = service::VERSION)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Args {
    /// The configuration file (`[Interface]` and `[Peer]` sections, as `wg setconf` reads).
    #[arg(required = true)]
    config: Option<PathBuf>,
    /// The address to bind the UDP socket to (overrides the config's `ListenAddress`; default
    /// every address).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Use a real TUN device (not supported by this build: reports a clear error).
    #[arg(long)]
    tun: bool,
    /// Send a test packet to this tunnel address every `--ping-interval-ms`.
    #[arg(long)]
    ping: Option<Ipv4Addr>,
    /// Milliseconds between test packets.
    #[arg(long, default_value_t = 1000)]
    ping_interval_ms: u64,
    /// Answer test packets.
    #[arg(long)]
    echo: bool,
    /// Stop after this many seconds (runs until SIGTERM/SIGINT without it).
    #[arg(long)]
    seconds: Option<u64>,
    #[command(flatten)]
    service: service::Options,
    #[command(subcommand)]
    command: Option<Keys>,
}

/// Key tools, compatible with `wg genkey`, `wg pubkey` and `wg genpsk`.
#[derive(Subcommand)]
enum Keys {
    /// Print a new private key (base64, clamped as X25519 wants).
    Genkey,
    /// Read a private key (base64) on stdin, print its public key.
    Pubkey,
    /// Print a new preshared key (base64, 32 random bytes).
    Genpsk,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(command) = &args.command {
        service::init_logging(&args.service.log);
        return service::exit_code("wireguard-device", keys(command));
    }
    let options = args.service.clone();
    service::run("wireguard-device", &options, |service| start(args, service))
}

/// 32 bytes from the OS-seeded generator (a CSPRNG: ChaCha12 seeded by getrandom).
fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    TokioEnv::try_new(".")?.rng().fill_bytes(&mut key);
    Ok(key)
}

fn keys(command: &Keys) -> anyhow::Result<()> {
    let key = match command {
        Keys::Genkey => {
            // Clamped as `wg genkey` prints it (RFC 7748's decodeScalar25519).
            let mut key = random_key()?;
            key[0] &= 248;
            key[31] = (key[31] & 127) | 64;
            key
        }
        Keys::Genpsk => random_key()?,
        Keys::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the key on stdin")?;
            let Some(private) = decode_key(text.trim()) else {
                bail!("stdin holds no base64 key of 32 bytes (as `genkey` prints)");
            };
            let secret = x25519_dalek::StaticSecret::from(*private);
            *x25519_dalek::PublicKey::from(&secret).as_bytes()
        }
    };
    service::println(encode_key(&key))
}

async fn start(args: Args, service: Service) -> anyhow::Result<()> {
    if args.tun {
        bail!(
            "--tun: this build has no TUN driver (it would need a platform TUN binding and \
             CAP_NET_ADMIN); run without --tun and drive the tunnel with --ping/--echo"
        );
    }
    let path = args.config.clone().context("a configuration file is required")?;
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).concerning("reading", &shown)?;
    let text = resolve_endpoints(&text).with_context(|| format!("in {shown}"))?;
    let mut config = config::parse(&text).concerning("in", &shown)?;
    let source = config.addresses.iter().find_map(|net| match net.addr {
        IpAddr::V4(addr) => Some(addr),
        IpAddr::V6(_) => None,
    });
    let env = TokioEnv::try_new(".")?;
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
        *config.device.private_key,
    ));
    if let Some(bind) = args.bind {
        config.device.listen_addr = Some(bind);
    }
    let ip = config.device.listen_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let at = SocketAddr::new(ip, config.device.listen_port);
    let device = Device::start(env.clone(), config.device).await.concerning("binding UDP", at)?;
    let stats = Arc::new(Mutex::new(DeviceStats::default()));
    let collected = Arc::clone(&stats);
    service.set_collector(move |samples| {
        let stats = collected.lock().unwrap_or_else(|poison| poison.into_inner());
        collect(&stats, samples);
    });
    let key = encode_key(public.as_bytes());
    info!(addr = %device.local_addr(), public_key = %key, config = %shown, "device running");
    run(env, device, &args, source, &service, &stats).await
}

async fn run(
    env: TokioEnv,
    mut device: DeviceHandle,
    args: &Args,
    source: Option<Ipv4Addr>,
    service: &Service,
    stats: &Mutex<DeviceStats>,
) -> anyhow::Result<()> {
    let deadline = args.seconds.map(|seconds| env.now() + Duration::from_secs(seconds));
    let interval = Duration::from_millis(args.ping_interval_ms.max(1));
    let shutdown = service.shutdown();
    let mut next_ping = env.now();
    let mut drops = DropLog::default();
    loop {
        let current = device.stats();
        drops.report(env.now(), &current);
        *stats.lock().unwrap_or_else(|poison| poison.into_inner()) = current;
        let expired = deadline.is_some_and(|deadline| env.now() >= deadline);
        if expired || shutdown.is_requested() {
            info!(stats = ?device.stats(), "stopping the device");
            return Ok(());
        }
        let received = {
            let tick = env.sleep_until(next_ping).fuse();
            let received = device.recv().fuse();
            let stop = shutdown.requested().fuse();
            futures::pin_mut!(tick, received, stop);
            futures::select_biased! {
                () = stop => continue,
                received = received => Some(received.context("device stopped")?),
                () = tick => None,
            }
        };
        let Some(received) = received else {
            next_ping = env.now() + interval;
            if let (Some(target), Some(source)) = (args.ping, source) {
                device.send(ipv4_packet(source, target, PING)).await?;
            }
            continue;
        };
        answer(&mut device, args.echo, &received).await?;
    }
}

/// The configuration with every `Endpoint = HOST:PORT` resolved to an address (the library
/// takes literal addresses only; resolving is the binary's job, once at start, IPv4 first).
/// An endpoint that does not resolve is an error naming the peer and its line.
fn resolve_endpoints(text: &str) -> anyhow::Result<String> {
    let mut resolved = String::with_capacity(text.len());
    let mut peer_count = 0;
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.eq_ignore_ascii_case("[peer]") {
            peer_count += 1;
        }
        let endpoint = content.split_once('=').and_then(|(key, value)| {
            key.trim().eq_ignore_ascii_case("endpoint").then(|| value.trim())
        });
        let Some(endpoint) = endpoint.filter(|value| value.parse::<SocketAddr>().is_err()) else {
            resolved.push_str(line);
            resolved.push('\n');
            continue;
        };
        let line_number = index + 1;
        let addresses: Vec<SocketAddr> = endpoint
            .to_socket_addrs()
            .with_context(|| {
                format!("peer {peer_count} (line {line_number}): resolving Endpoint {endpoint}")
            })?
            .collect();
        let Some(address) = addresses.iter().find(|a| a.is_ipv4()).or(addresses.first()) else {
            bail!("peer {peer_count} (line {line_number}): Endpoint {endpoint} has no address");
        };
        info!(endpoint, %address, "resolved a peer's endpoint");
        resolved.push_str(&format!("Endpoint = {address}\n"));
    }
    Ok(resolved)
}

/// Logs drops that were silent before: one line per reason and origin (a peer, a stranger's
/// key, an address, a destination) at most every `DROP_LOG_INTERVAL`, the first at once and
/// later ones folded into the next line with how many lines were suppressed, so a flood of
/// bad datagrams cannot flood the log (the device bounds the origins it tells apart). What the
/// network sent (`rx_*`, decapsulation errors) is a warning; what this host tried to send
/// (`tx_*`: no route, no endpoint) is info.
#[derive(Default)]
struct DropLog {
    // The counts by reason when the origins were last walked.
    seen: BTreeMap<&'static str, u64>,
    // Per reason and origin: the count at its last line and when that line was written.
    logged: BTreeMap<(&'static str, DropOrigin), (u64, sim::Instant)>,
    // When a suppressed line may next be written, if one waits.
    next_due: Option<sim::Instant>,
}

/// The least time between two lines for one reason and origin.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One drop line: reason and origin, drops since the last line for them (all but one of which
/// had their line suppressed), and the total.
#[derive(Debug, PartialEq)]
struct DropLine {
    reason: &'static str,
    origin: DropOrigin,
    dropped: u64,
    total: u64,
}

impl DropLog {
    /// Logs the lines due at `now`.
    fn report(&mut self, now: sim::Instant, stats: &DeviceStats) {
        for line in self.due(now, stats) {
            let DropLine { reason, origin, dropped, total } = line;
            let suppressed = dropped - 1;
            if reason.starts_with("tx_") {
                info!(reason, %origin, dropped, suppressed, total, "dropped packets");
            } else {
                warn!(reason, %origin, dropped, suppressed, total, "dropped datagrams or packets");
            }
        }
    }

    /// The lines due at `now` (recorded as written).
    fn due(&mut self, now: sim::Instant, stats: &DeviceStats) -> Vec<DropLine> {
        let due = self.next_due.is_some_and(|due| now >= due);
        if stats.drops == self.seen && !due {
            return Vec::new();
        }
        self.seen.clone_from(&stats.drops);
        self.next_due = None;
        let mut lines = Vec::new();
        for (key, count) in &stats.drop_origins {
            let (before, at) = self.logged.get(key).map_or((0, None), |(n, at)| (*n, Some(*at)));
            if *count <= before {
                continue;
            }
            if let Some(at) = at.filter(|at| now.saturating_duration_since(*at) < DROP_LOG_INTERVAL)
            {
                let due = at + DROP_LOG_INTERVAL;
                self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
                continue;
            }
            let (reason, origin) = *key;
            lines.push(DropLine { reason, origin, dropped: count - before, total: *count });
            self.logged.insert(*key, (*count, now));
        }
        assert!(lines.iter().all(|line| line.dropped >= 1 && line.dropped <= line.total));
        lines
    }
}

/// Prints a decrypted packet and answers a test packet when `echo` is on.
async fn answer(device: &mut DeviceHandle, echo: bool, received: &Received) -> anyhow::Result<()> {
    let header = ip::header(&received.packet).context("device delivered a non-IP packet")?;
    let payload = &received.packet[ip::IPV4_HEADER_LEN.min(received.packet.len())..];
    service::println(format_args!(
        "{} bytes from {} (peer {})",
        received.packet.len(),
        header.source,
        encode_key(&received.peer)
    ))?;
    if let (true, IpAddr::V4(from), IpAddr::V4(to)) = (echo, header.source, header.destination)
        && payload == PING
    {
        device.send(ipv4_packet(to, from, PONG)).await?;
    }
    Ok(())
}

/// The device's counters as Prometheus samples; per-peer ones labelled with the peer's key.
fn collect(stats: &DeviceStats, samples: &mut Samples) {
    let help = "Datagrams and packets dropped, by reason.";
    for (reason, count) in &stats.drops {
        samples.counter_with("wireguard_drops_total", help, &[("reason", reason)], *count);
    }
    let device = [
        ("wireguard_socket_send_errors_total", "UDP send errors.", stats.send_error_count),
        ("wireguard_socket_receive_errors_total", "UDP receive errors.", {
            stats.receive_error_count
        }),
        ("wireguard_deliver_overflows_total", "Decrypted packets dropped: reader too slow.", {
            stats.deliver_overflow_count
        }),
    ];
    samples.counters(&device);
    // Per-peer counters are keyed by public key (peers may change at run time).
    for (key, tunnel) in &stats.peers {
        let peer = encode_key(key);
        let labels = [("peer", peer.as_str())];
        let per_peer = [
            ("wireguard_sent_bytes_total", "Plaintext bytes sent.", tunnel.tx_bytes),
            ("wireguard_sent_packets_total", "Transport messages sent.", tunnel.tx_packets),
            ("wireguard_received_bytes_total", "Plaintext bytes delivered.", tunnel.rx_bytes),
            ("wireguard_received_packets_total", "Packets delivered.", tunnel.rx_packets),
            ("wireguard_handshakes_total", "Handshakes completed.", tunnel.handshake_count),
            ("wireguard_handshake_initiations_total", "Initiations sent.", {
                tunnel.initiation_count
            }),
            ("wireguard_peer_drops_total", "Datagrams from the peer dropped.", {
                tunnel.dropped_count
            }),
        ];
        samples.counters_with(&labels, &per_peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_lines_are_one_per_reason_and_origin_per_interval() {
        let stranger = DropOrigin::UnknownKey([7; 32], "127.0.0.1:9".parse().unwrap());
        let unrouted = DropOrigin::Destination("10.1.2.3".parse().unwrap());
        let mut stats = DeviceStats::default();
        let set = |stats: &mut DeviceStats, unknown: u64, no_route: u64| {
            stats.drops = BTreeMap::from([("unknown_peer", unknown), ("tx_no_route", no_route)]);
            stats.drop_origins = BTreeMap::from([
                (("unknown_peer", stranger), unknown),
                (("tx_no_route", unrouted), no_route),
            ]);
        };
        let mut log = DropLog::default();
        let at = |secs: u64| sim::Instant::ZERO + Duration::from_secs(secs);
        let line = |reason, origin, dropped, total| DropLine { reason, origin, dropped, total };
        set(&mut stats, 2, 0);
        assert_eq!(log.due(at(1), &stats), vec![line("unknown_peer", stranger, 2, 2)]);
        // Within the interval: the stranger's next drops wait; another origin does not.
        set(&mut stats, 5, 1);
        assert_eq!(log.due(at(2), &stats), vec![line("tx_no_route", unrouted, 1, 1)]);
        assert_eq!(log.due(at(10), &stats), vec![]);
        // Due with no new drop: the suppressed ones come out in one line.
        assert_eq!(log.due(at(11), &stats), vec![line("unknown_peer", stranger, 3, 5)]);
        assert_eq!(log.due(at(30), &stats), vec![]);
        set(&mut stats, 6, 1);
        assert_eq!(log.due(at(31), &stats), vec![line("unknown_peer", stranger, 1, 6)]);
    }

    #[test]
    fn endpoints_resolve_and_failures_name_the_peer() {
        let text = "[Interface]\nPrivateKey = x\n[Peer]\nEndpoint = 10.0.0.1:1\n\
                    [Peer]\nendpoint = localhost:51820 # comment\n";
        let resolved = resolve_endpoints(text).unwrap();
        assert!(resolved.contains("Endpoint = 10.0.0.1:1\n"), "{resolved}");
        assert!(resolved.contains("Endpoint = 127.0.0.1:51820\n"), "{resolved}");
        let error = resolve_endpoints("[Peer]\n[Peer]\nEndpoint = no-port\n").unwrap_err();
        let text = format!("{error:#}");
        assert!(text.starts_with("peer 2 (line 3): resolving Endpoint no-port"), "{text}");
    }
}
