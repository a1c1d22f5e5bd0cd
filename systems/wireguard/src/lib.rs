//! A userspace WireGuard: a sans-IO protocol core that speaks the exact wire protocol
//! (interoperable with boringtun), and a device that runs many peers over one Env UDP socket.
//!
//! Map:
//! - `crypto`: BLAKE2s hash and MAC, HMAC-BLAKE2s HKDF, X25519, the handshake AEADs.
//! - `noise`: the Noise_IKpsk2 handshake messages over a symmetric state (`CONSTRUCTION`,
//!   `IDENTIFIER`).
//! - `messages`: the four wire formats (148, 92, 64 and 32+ bytes) and their parser.
//! - `cookie`: mac1/mac2, cookie replies under load (`LABEL_MAC1`, `LABEL_COOKIE`).
//! - `replay`: the RFC 6479 anti-replay window (8,192 bits).
//! - `transport`: a session's ring ChaCha20-Poly1305 keys, counter and window: the data path.
//! - `timers`: the protocol constants.
//! - `faults`: BUGGIFY hooks and planted bugs the driver hands the sans-IO core.
//! - `tunnel`: `Tunnel`, one peer's state machine: `encapsulate`, `decapsulate`, `tick`.
//! - `ip`: the IP header fields the tunnel and device read.
//! - `config`: the `wg` configuration format, parsed into a `DeviceConfig`.
//! - `allowed_ips`: cryptokey routing, longest-prefix match for IPv4 and IPv6.
//! - `mesh`: a test mesh (peers, an attacker, checks) shared by `tests/sim_mesh.rs` and the
//!   harness's `wireguard-mesh` scenario.
//! - `device`: `DeviceCore` (many peers, one socket, sans-IO; peers added, updated and
//!   removed at run time) and `Device`, its driver over an `Env` with a packet interface a
//!   simulated TUN feeds and a handle that reconfigures it.
//! - `drops`: what a device dropped, by reason and by origin (bounded), for counters and logs.
//!
//! Invariants: nothing here reads a clock or OS randomness (time is a `now` argument and
//! randomness a seeded stream); secrets are zeroized on drop; MACs and keys are compared in
//! constant time; a datagram from the network is either authenticated and delivered once, or
//! dropped and counted, never a panic.

pub mod allowed_ips;
pub mod config;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod drops;
pub mod error;
pub mod faults;
pub mod ip;
pub mod mesh;
pub mod messages;
pub mod noise;
pub mod replay;
pub mod timers;
pub mod transport;
pub mod tunnel;

pub use allowed_ips::{AllowedIps, IpNet};
pub use device::{Device, DeviceConfig, DeviceCore, DeviceHandle, PeerConfig, Received};
pub use device::{PeerChange, PeersChanged, ReconfigureCounts};
pub use drops::{DropLedger, DropOrigin};
pub use error::{DecapsulateError, EncapsulateError, ReconfigureError};
pub use faults::{Faults, PlantedBug};
pub use tunnel::{Action, Tunnel, TunnelConfig, TunnelStats};
