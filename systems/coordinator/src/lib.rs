//! The mesh control plane and its node agent, in the manner of Headscale.
//!
//! A coordinator registers nodes, hands out addresses and keys, evaluates the access policy,
//! approves routes and pushes every node its network map: a full map first, then deltas whose
//! cost is proportional to the nodes a change affects. An agent holds that stream and applies it
//! to its WireGuard device. State lives in `systems/docdb`; all I/O goes through `sim::Env`.
//!
//! Map:
//! - `types`: the shared vocabulary (ids, keys, users, nodes, Tailscale's `FilterRule`).
//! - `frame`: length-prefixed frames over a stream and the versioned postcard message codec.
//! - `channel`: the Noise IK control channel (agent = initiator with its machine key).
//! - `ratelimit`: token buckets on `Env::now` time, per peer key, with a bounded peer table.
//! - `registry`: durable state on docdb (users, nodes, pre-auth and API keys, addresses,
//!   the stored policy text).
//! - `netmap`: network maps and deltas, and `MapEngine`, the sans-IO engine computing them.
//! - `routes`: primary election for subnet routes, exit routes, longest-prefix lookup.
//! - `hujson`: Tailscale's policy syntax (JSON with comments and trailing commas).
//! - `policy`: the access policy: parsing, compiling to per-node filters, the incremental
//!   `PolicyEngine` and the per-packet `CompiledFilter`.
//! - `proto`: the agent protocol's messages.
//! - `server`: `Coordinator`, the registry, the map engine fed by docdb's change stream, and
//!   the agent sessions.
//! - `agent`: the node agent (registration, map stream, WireGuard device, packet filter).
//! - `tunnel_gossip`: the agent's gossip membership and store, carried inside the tunnels.
//!
//! Invariant: nothing here reads the OS clock, OS randomness or the file system directly.

#![deny(missing_docs)]

pub mod agent;
pub mod channel;
pub mod frame;
pub mod hujson;
pub mod netmap;
pub mod policy;
pub mod proto;
pub mod ratelimit;
pub mod registry;
pub mod routes;
pub mod server;
pub mod tunnel_gossip;
pub mod types;

pub use types::{
    Affected, FilterRule, Key, NetPortRange, NodeId, NodeInfo, PolicyView, PortRange, Sources,
    User, UserId,
};
