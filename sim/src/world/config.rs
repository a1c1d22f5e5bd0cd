//! Configuration of a simulated world: the seed, budgets, network links, disks, clocks and
//! buggify. Every field is plain serde data so a run's configuration can be written out with
//! its fault plan and replayed exactly.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::disk::CrashConfig;
use super::trace::{hash_str, splitmix64};

/// Everything a `World` is built from. A run is a pure function of this value and what is done to
/// the world afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Network defaults and limits.
    pub net: NetConfig,
    /// Disk latency and fault defaults for every node.
    pub disk: DiskConfig,
    /// Fault-injection points (`Env::buggify`).
    pub buggify: BuggifyConfig,
    /// Wall clock at simulated time zero, in seconds since the Unix epoch.
    pub wall_epoch_secs: u64,
    /// Each new node's wall-clock offset is drawn uniformly from +/- this.
    pub clock_offset_max: Duration,
    /// Each new node's wall-clock drift is drawn uniformly from +/- this, in parts per million.
    pub clock_drift_ppm_max: u32,
    /// Runaway detection: the most task polls plus events one world may process.
    pub events_max: u64,
    /// Runaway detection: the most task polls at one simulated instant (a livelock).
    pub polls_per_instant_max: u64,
    /// Keep every trace record in memory (for first-divergence reports).
    pub record_trace: bool,
}

impl SimConfig {
    /// The defaults, with `seed`.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            net: NetConfig::default(),
            disk: DiskConfig::default(),
            buggify: BuggifyConfig::default(),
            // 2026-01-01T00:00:00Z.
            wall_epoch_secs: 1_767_225_600,
            clock_offset_max: Duration::ZERO,
            clock_drift_ppm_max: 0,
            events_max: 2_000_000_000,
            polls_per_instant_max: 10_000_000,
            record_trace: false,
        }
    }
}

/// One directed link's behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// Base one-way latency.
    pub latency: Duration,
    /// Extra latency drawn uniformly from `[0, jitter]` per packet.
    pub jitter: Duration,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice (each copy with its own latency).
    pub duplicate: f64,
    /// Probability a packet is held back by an extra delay in `[0, reorder_delay]`.
    pub reorder: f64,
    /// The longest extra delay of a held-back packet.
    pub reorder_delay: Duration,
    /// Largest datagram payload in bytes; larger sends fail with `InvalidInput`.
    pub mtu_bytes: u32,
    /// Link capacity in bytes per second; packets queue behind each other. `None` = unlimited.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            // Ethernet's 1500 less the IPv4 and UDP headers.
            mtu_bytes: 1472,
            bandwidth_bytes_per_sec: None,
        }
    }
}

impl LinkConfig {
    /// A link inside one host: lossless, fast, loopback-sized MTU.
    pub fn loopback() -> LinkConfig {
        LinkConfig {
            latency: Duration::from_micros(10),
            jitter: Duration::ZERO,
            mtu_bytes: 65_507,
            ..LinkConfig::default()
        }
    }
}

/// Network-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Every link between two nodes, unless overridden with `World::set_link`.
    pub link: LinkConfig,
    /// Traffic from a node to itself.
    pub loopback: LinkConfig,
    /// Datagrams a socket queues before it drops new ones.
    pub udp_queue_max: u32,
    /// Bytes a stream end may have sent and the peer not yet read (flow-control window).
    pub stream_window_bytes: u32,
    /// Connections waiting in a listener's accept queue before new ones are refused.
    pub accept_backlog_max: u32,
    /// A connect whose SYN cannot reach the listener fails with `TimedOut` after this.
    pub connect_timeout: Duration,
    /// A stream whose bytes cannot cross the network breaks with `TimedOut` after this.
    pub stream_break_timeout: Duration,
    /// Extra delay a stream segment pays when the link "loses" it (a TCP retransmission).
    pub stream_retransmit_delay: Duration,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            link: LinkConfig::default(),
            loopback: LinkConfig::loopback(),
            udp_queue_max: 1024,
            stream_window_bytes: 256 * 1024,
            accept_backlog_max: 128,
            connect_timeout: Duration::from_secs(3),
            stream_break_timeout: Duration::from_secs(1),
            stream_retransmit_delay: Duration::from_millis(200),
        }
    }
}

/// Disk latency and faults of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// Fixed cost of a read, write or metadata operation.
    pub op_latency: Duration,
    /// Extra latency drawn uniformly from `[0, op_jitter]` per operation.
    pub op_jitter: Duration,
    /// Cost of a file or directory sync.
    pub sync_latency: Duration,
    /// Transfer rate for reads and writes, in bytes per second.
    pub throughput_bytes_per_sec: u64,
    /// What a crash does to unsynced writes.
    pub crash: CrashConfig,
    /// Injected faults.
    pub faults: DiskFaults,
}

impl Default for DiskConfig {
    fn default() -> DiskConfig {
        DiskConfig {
            op_latency: Duration::from_micros(20),
            op_jitter: Duration::from_micros(10),
            sync_latency: Duration::from_micros(500),
            throughput_bytes_per_sec: 1 << 30,
            crash: CrashConfig::default(),
            faults: DiskFaults::default(),
        }
    }
}

/// Probabilities of injected disk faults (all zero by default). Each fault is recorded in the
/// trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskFaults {
    /// A read fails with an I/O error.
    pub read_error: f64,
    /// A read returns data with one flipped bit (the stored data stays intact).
    pub read_corruption: f64,
    /// A write fails with an I/O error and changes nothing.
    pub write_error: f64,
    /// A sync fails with an I/O error and makes nothing durable.
    pub sync_error: f64,
    /// A write lands 1 to 8 sectors away from where it was aimed, and reports success (a
    /// firmware bug that only checksums naming their own location catch).
    pub misdirected_write: f64,
    /// Total bytes the disk holds; growing past it fails with `StorageFull`. `None` = unlimited.
    pub capacity_bytes: Option<u64>,
}

/// FoundationDB-style fault points: each site is active in `site_active` of runs, and an active
/// site fires with a probability drawn per run from `[fire_min, fire_max]`. Both draws depend
/// only on the seed and the site's name, so every node agrees and call order does not matter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuggifyConfig {
    /// Whether `buggify` may fire at all in this world.
    pub enabled: bool,
    /// Fraction of sites active in a run.
    pub site_active: f64,
    /// Lowest firing probability of an active site.
    pub fire_min: f64,
    /// Highest firing probability of an active site.
    pub fire_max: f64,
}

impl Default for BuggifyConfig {
    fn default() -> BuggifyConfig {
        BuggifyConfig { enabled: true, site_active: 0.25, fire_min: 0.01, fire_max: 0.5 }
    }
}

impl BuggifyConfig {
    /// Never fires.
    pub const DISABLED: BuggifyConfig =
        BuggifyConfig { enabled: false, site_active: 0.0, fire_min: 0.0, fire_max: 0.0 };

    /// The probability `site` fires with in the run seeded by `seed`, or `None` if the site is
    /// inactive in that run. Out-of-range settings are clamped, never a panic.
    pub fn site_fire_probability(&self, seed: u64, site: &str) -> Option<f64> {
        if !self.enabled {
            return None;
        }
        let site_hash = hash_str(site);
        if unit_interval(splitmix64(seed ^ site_hash)) >= self.site_active {
            return None;
        }
        let low = self.fire_min.clamp(0.0, 1.0);
        let high = self.fire_max.clamp(low, 1.0);
        let draw = unit_interval(splitmix64(seed ^ site_hash.rotate_left(32)));
        Some(low + (high - low) * draw)
    }
}

/// Maps 64 random bits to `[0, 1)`.
fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
