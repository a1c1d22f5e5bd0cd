//! The agent protocol: what an agent and the coordinator say to each other over a `Channel`.
//!
//! Every message travels sealed on a Noise channel whose initiator static key is the node's
//! machine key, so the coordinator knows, authenticated, which machine it talks to; no request
//! names a node or a machine key of its own. A node can therefore act only for itself.
//!
//! A session: the agent sends `Register` (only when it holds no registration yet), then `Map`;
//! the coordinator answers `Map` with a full map, or with a delta when the agent's map is of the
//! same coordinator epoch and the delta is still at hand, then streams deltas as the agent's map
//! changes. While the stream runs the agent may send `Endpoints` and `AdvertiseRoutes`. A
//! registered agent may send `RotateNodeKey` before `Map` to change its WireGuard key.
//! Any refusal is an `Error` with a typed kind, after which the coordinator closes the stream.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wireguard::IpNet;

use crate::netmap::{MapDelta, NetMap};
use crate::types::{Key, NodeId, NodeInfo, ipnets};

/// Where a node's map stands: the node it is for, the coordinator run (epoch) that produced it
/// and its version. Versions of different epochs or nodes are unrelated: an agent whose map is
/// of another epoch, or of a node it no longer is (deleted and registered again), gets a full
/// map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapVersion {
    /// The node the map is for.
    pub node: NodeId,
    /// The coordinator run; drawn at each start.
    pub epoch: u64,
    /// The map's version within that run.
    pub version: u64,
}

/// Agent to coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Registers this machine (or re-authenticates it) with a pre-auth key.
    Register {
        /// The pre-auth key (`gmkey-...`).
        preauth_key: String,
        /// The node's WireGuard public key.
        node_key: Key,
        /// Its host name.
        hostname: String,
        /// Routes it advertises.
        #[serde(with = "ipnets")]
        advertised_routes: Vec<IpNet>,
        /// Where its WireGuard socket can be reached.
        endpoints: Vec<SocketAddr>,
    },
    /// Opens the map stream.
    Map {
        /// The node key the agent's device uses (must be the registered one).
        node_key: Key,
        /// The map the agent holds, if any.
        have: Option<MapVersion>,
        /// Where its WireGuard socket can be reached now.
        endpoints: Vec<SocketAddr>,
    },
    /// Its endpoints changed.
    Endpoints {
        /// The new endpoints.
        endpoints: Vec<SocketAddr>,
    },
    /// Nothing new: the agent is alive (sent on an idle stream).
    Ping,
    /// Replaces the node's WireGuard key (sent instead of `Register`, before `Map`); answered
    /// with `Registered` carrying the node under its new key. Asking again after a lost answer
    /// is allowed: a node that already holds `new` is answered as if it had just changed.
    RotateNodeKey {
        /// The node's current key.
        old: Key,
        /// Its next key (no other node's).
        new: Key,
    },
}

/// Coordinator to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Registration accepted: the node as stored.
    Registered {
        /// The node.
        node: NodeInfo,
    },
    /// The whole map.
    FullMap {
        /// Its epoch and version.
        at: MapVersion,
        /// The version of the policy it was computed under.
        policy_version: u64,
        /// The map.
        map: NetMap,
    },
    /// The change from the agent's map to the current one.
    Delta {
        /// The epoch (the delta's versions say the rest).
        epoch: u64,
        /// The version of the policy the resulting map is computed under.
        policy_version: u64,
        /// The delta.
        delta: MapDelta,
    },
    /// A refusal; the coordinator closes the stream after it.
    Error {
        /// What kind of refusal.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
}

/// Why the coordinator refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The pre-auth key is unknown, used up or expired.
    BadPreAuthKey,
    /// This machine key holds no registration (register first).
    NotRegistered,
    /// The node key is not the node's registered one.
    WrongNodeKey,
    /// The node's key has expired: re-register.
    Expired,
    /// The request is malformed or out of its limits.
    BadRequest,
    /// Too many requests: slow down.
    RateLimited,
    /// The coordinator is busy (too many sessions) or its store failed: retry later.
    Unavailable,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorKind::BadPreAuthKey => "bad pre-auth key",
            ErrorKind::NotRegistered => "not registered",
            ErrorKind::WrongNodeKey => "wrong node key",
            ErrorKind::Expired => "node key expired",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Unavailable => "unavailable",
        };
        f.write_str(text)
    }
}
