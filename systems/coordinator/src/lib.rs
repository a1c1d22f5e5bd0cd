//! The mesh control plane and its node agent, in the manner of Headscale.
//!
//! A coordinator registers nodes, hands out addresses and keys, evaluates the access policy,
//! approves routes and pushes every node its network map: a full map first, then deltas whose
//! cost is proportional to the nodes a change affects. An agent holds that stream and applies it
//! to its WireGuard device. State lives in `systems/docdb`; all I/O goes through `sim::Env`.
//!
//! Map:
//! - `types`: the shared vocabulary (ids, keys, users, nodes, Tailscale's `FilterRule`).
//! - `hujson`: Tailscale's policy syntax (JSON with comments and trailing commas).
//! - `policy`: the access policy: parsing, compiling to per-node filters, the incremental
//!   `PolicyEngine` and the per-packet `CompiledFilter`.
//!
//! Invariant: nothing here reads the OS clock, OS randomness or the file system directly.

#![deny(missing_docs)]

pub mod hujson;
pub mod policy;
pub mod types;

pub use types::{
    Affected, FilterRule, Key, NetPortRange, NodeId, NodeInfo, PolicyView, PortRange, User, UserId,
};
