//! The registry: durable state of the control plane on docdb (users, nodes, pre-auth keys, API
//! keys, address allocation, the stored policy text).
//!
//! Map:
//! - `alloc`: the address allocator (pure), IPv4 offsets and the IPv6 address beside each.
//! - `keys`: pre-auth and API key texts, digests and usability rules (pure).
//! - `names`: DNS labels for given names and the checks on chosen names (pure).
//! - `store`: `Registry` itself, users, keys, policy and the retry loop over transactions.
//! - `nodes`: registration, re-authentication, key rotation, node updates, ephemeral reaping.
//!
//! # Layout (database `coordinator`)
//!
//! Every document is `{_id, <indexed fields>, info}`, where `info` is the whole value as serde
//! writes it (`NodeInfo`, `User`, `PreAuthKeyInfo`, `ApiKeyInfo`), so a change event's
//! `fullDocument` describes the thing completely; the indexed fields are copies kept beside it
//! as strings because keys serialize as arrays (which an index would treat as multikey).
//!
//! - `users`: `{_id: user id, name, info: User}`; unique index `name`.
//! - `nodes`: `{_id: node id, machine_key, node_key (both hex), given_name, ipv4 (text),
//!   user (id or null), offline_since (unix seconds or null), info: NodeInfo}`; unique indexes
//!   `machine_key`, `node_key`, `given_name`, `ipv4`; a plain index `user`.
//! - `preauth_keys`: `{_id: key id, hash (hex SHA-256 of the key text), user,
//!   info: PreAuthKeyInfo}`; unique index `hash`.
//! - `api_keys`: `{_id: key id, prefix, hash (hex SHA-256 of the secret), info: ApiKeyInfo}`;
//!   unique index `prefix`.
//! - `policy`: `{_id: "current", version (from 1), text}`.
//! - `meta`: `{_id: "nodes", next_id, next_ipv4_offset}` (the allocator's high-water mark, the
//!   next offset to try), `{_id: "users" | "preauth_keys" | "api_keys", next_id}`, and
//!   `{_id: "given_name/<label>", next_suffix}` (where the search for a free `label-N` starts).
//!
//! Ids and offsets are int64; ids start at 1 and are never reused.
//!
//! Change streams: each logical change (a registration with its key consumption and its
//! high-water mark, a rename, a status change) is one commit. Node writes are whole-document
//! replacements, so `nodes` events are `insert` and `replace` with `fullDocument`, or `delete`
//! with only `documentKey` (the node id); the same holds for `users` and `policy`. `meta` and
//! the key collections change too but carry nothing a network map needs.
//!
//! Concurrency: structural changes (registration, deletions, user changes, key creation) take
//! the registry's own lock, one at a time per process, so checks that span documents (a user
//! owns no nodes; a given name is free) cannot be broken by write skew; docdb's
//! first-committer-wins protects everything else, and the hot paths (`set_online`,
//! `set_endpoints`) take no lock: one point read and one write.
//!
//! Invariant: no two nodes share an address, a machine key, a node key or a given name, and
//! every node's IPv4 offset is below the stored high-water mark (`check_invariants`).

/// Runs `$body` (an expression over `$txn`, a fresh transaction, giving
/// `Result<T, RegistryError>`; `?` inside it leaves the body, not the caller) and commits it,
/// retrying the whole of it after a write conflict, at most `conflict_retries_max` times. A
/// macro rather than a closure so the future stays `Send` and the body may borrow freely.
macro_rules! transaction {
    ($registry:expr, $operation:expr, |$txn:ident| $body:expr) => {{
        let registry = &$registry;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            #[allow(unused_mut)]
            let mut $txn = registry.db.begin();
            let outcome: Result<_, RegistryError> = async { $body }.await;
            let value = match outcome {
                Ok(value) => value,
                Err(error) => break Err(error),
            };
            match $txn.commit().await {
                Ok(_) => {
                    registry.after_commit().await;
                    break Ok(value);
                }
                Err(error) if error.is_transient() => {
                    if attempt > registry.options.conflict_retries_max {
                        let operation = $operation;
                        break Err(RegistryError::Contention { operation, attempts: attempt });
                    }
                }
                Err(error) => break Err(RegistryError::from(error)),
            }
        }
    }};
}

mod alloc;
mod keys;
mod names;
mod nodes;
mod store;

use std::fmt;
use std::net::SocketAddr;

use wireguard::IpNet;

use crate::types::{Key, NodeId, UserId};

pub use alloc::{Allocation, Allocator, ipv6_for};
pub use keys::{ApiKeyInfo, PreAuthKeyInfo};
pub use store::Registry;

/// The database the registry's collections live in.
pub const DATABASE: &str = "coordinator";
/// Routes a node may advertise.
pub const ROUTES_MAX: usize = 1024;
/// Endpoints a node may report.
pub const ENDPOINTS_MAX: usize = 64;
/// ACL tags a pre-auth key may carry.
pub const TAGS_MAX: usize = 64;
/// The largest policy text stored.
pub const POLICY_BYTES_MAX: usize = 1 << 20;

/// The latest time (unix seconds) stored: BSON integers are signed 64-bit.
pub const TIME_SECS_MAX: u64 = i64::MAX as u64;

/// How a registry behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryOptions {
    /// The IPv4 range is `100.64.0.0/ipv4_prefix_len` (10 in production; longer in tests of
    /// exhaustion). Must stay the same across restarts or shrink nothing already handed out.
    pub ipv4_prefix_len: u8,
    /// How long a user-owned node's key is valid after (re-)registration, in seconds; `None`
    /// never expires. Tagged nodes never expire, as in Tailscale.
    pub node_key_expiry_secs: Option<u64>,
    /// How long an ephemeral node may stay offline before it is removed (0: at once, when
    /// `set_online(false)` is called).
    pub ephemeral_grace_secs: u64,
    /// How many times a transaction is retried after a write conflict.
    pub conflict_retries_max: u32,
    /// Plants a known bug for the harness to find: registration takes the lowest address no
    /// live node holds (first fit) instead of the high-water mark, so a deleted node's address
    /// goes to the next node while peers that have not yet heard of the removal still hold the
    /// old node under it. Inert without feature `planted-bugs`; never in production.
    pub planted_reuse_freed_addresses: bool,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            ipv4_prefix_len: alloc::IPV4_PREFIX_LEN_MIN,
            node_key_expiry_secs: Some(180 * 24 * 3600),
            ephemeral_grace_secs: 0,
            conflict_retries_max: 64,
            planted_reuse_freed_addresses: false,
        }
    }
}

/// What a node sends to register (or re-authenticate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The pre-auth key's text (`gmkey-...`).
    pub preauth_key: String,
    /// The machine's stable key.
    pub machine_key: Key,
    /// The node's current WireGuard key.
    pub node_key: Key,
    /// Its host name as it reports it.
    pub hostname: String,
    /// Routes it advertises.
    pub advertised_routes: Vec<IpNet>,
    /// Where it can be reached.
    pub endpoints: Vec<SocketAddr>,
}

/// How a pre-auth key is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreAuthKeyOptions {
    /// Any number of registrations (otherwise one).
    pub reusable: bool,
    /// Nodes it registers are ephemeral.
    pub ephemeral: bool,
    /// When it stops working (unix seconds); `None` never.
    pub expiration: Option<u64>,
    /// ACL tags (`tag:server`) for the nodes it registers, which then belong to no user.
    pub tags: Vec<String>,
}

/// A pre-auth key just created: its text (shown once, stored only as a digest) and its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedPreAuthKey {
    /// The key (`gmkey-...`).
    pub key: String,
    /// What is stored.
    pub info: PreAuthKeyInfo,
}

/// An API key just created: its text (shown once) and its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedApiKey {
    /// The key (`gmapi-<prefix>.<secret>`).
    pub key: String,
    /// What is stored.
    pub info: ApiKeyInfo,
}

/// The stored policy: its text and a version that grows by one with each change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    /// 1 for the first policy stored.
    pub version: u64,
    /// The policy text, unparsed.
    pub text: String,
}

/// Everything that can go wrong in the registry.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// The database failed.
    Storage(docdb::Error),
    /// A stored document does not decode (names which one and why).
    Corrupt {
        /// Which document (`nodes/12`).
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// Options that cannot work.
    InvalidOptions(String),
    /// A name that cannot be used.
    InvalidName {
        /// What kind of name (`user name`, `given name`).
        what: &'static str,
        /// The name (at most 64 bytes of it).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An ACL tag not of the form `tag:<name>`.
    InvalidTag {
        /// The tag (at most 64 bytes of it).
        tag: String,
    },
    /// A time (unix seconds) past what is stored (`TIME_SECS_MAX`).
    InvalidTime {
        /// Which time (`expiration`).
        what: &'static str,
        /// The value given.
        secs: u64,
    },
    /// A list longer than its limit.
    TooMany {
        /// What (`advertised routes`).
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A user of that name exists.
    UserExists {
        /// The name.
        name: String,
    },
    /// No such user.
    UserNotFound {
        /// The id asked for.
        user: UserId,
    },
    /// The user still owns nodes.
    UserOwnsNodes {
        /// The user.
        user: UserId,
        /// How many.
        nodes: u64,
    },
    /// No pre-auth key has that text (or the text is malformed).
    PreAuthKeyUnknown,
    /// No pre-auth key has that id.
    PreAuthKeyNotFound {
        /// The id asked for.
        key: u64,
    },
    /// The pre-auth key expired.
    PreAuthKeyExpired {
        /// Its id.
        key: u64,
        /// When (unix seconds).
        expiration: u64,
    },
    /// The single-use pre-auth key registered a node already.
    PreAuthKeyUsed {
        /// Its id.
        key: u64,
        /// The node it registered.
        node: NodeId,
    },
    /// A machine re-authenticated with a key of another owner than its node's.
    OwnerMismatch {
        /// The machine's node.
        node: NodeId,
        /// The key presented.
        key: u64,
    },
    /// No such node.
    NodeNotFound {
        /// The id asked for.
        node: NodeId,
    },
    /// No node has that machine key.
    MachineNotFound {
        /// The machine key.
        machine_key: Key,
    },
    /// The node key belongs to another node.
    NodeKeyInUse {
        /// The key.
        node_key: Key,
        /// The node holding it.
        node: NodeId,
    },
    /// A rotation named a node key that is not the node's current one.
    StaleNodeKey {
        /// The node.
        node: NodeId,
        /// The key the caller thought current.
        presented: Key,
    },
    /// The given name belongs to another node.
    GivenNameTaken {
        /// The name.
        name: String,
    },
    /// Every candidate name for a host name is taken.
    GivenNamesExhausted {
        /// The label the candidates were built from.
        base: String,
    },
    /// A route approval named a route the node does not advertise.
    RouteNotAdvertised {
        /// The node.
        node: NodeId,
        /// The route.
        route: IpNet,
    },
    /// Every address of the range was handed out.
    AddressesExhausted {
        /// The range's prefix length (`100.64.0.0/len`).
        prefix_len: u8,
    },
    /// A policy update expected another current version.
    PolicyVersionMismatch {
        /// The version the caller expected.
        expected: u64,
        /// The version stored (0: none).
        current: u64,
    },
    /// A text that is not an API key.
    ApiKeyMalformed,
    /// No API key has that prefix, or its secret does not match.
    ApiKeyUnknown {
        /// The prefix presented.
        prefix: String,
    },
    /// No API key has that id.
    ApiKeyNotFound {
        /// The id asked for.
        key: u64,
    },
    /// The API key expired.
    ApiKeyExpired {
        /// Its prefix.
        prefix: String,
        /// When (unix seconds).
        expiration: u64,
    },
    /// The API key was revoked.
    ApiKeyRevoked {
        /// Its prefix.
        prefix: String,
    },
    /// A transaction kept meeting write conflicts.
    Contention {
        /// Which operation.
        operation: &'static str,
        /// How many attempts it made.
        attempts: u32,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RegistryError::*;
        match self {
            Storage(error) => write!(f, "registry storage: {error}"),
            Corrupt { what, reason } => write!(f, "stored {what} is corrupt: {reason}"),
            InvalidOptions(reason) => write!(f, "invalid registry options: {reason}"),
            InvalidName { what, name, reason } => write!(f, "invalid {what} {name:?}: {reason}"),
            InvalidTag { tag } => write!(f, "invalid ACL tag {tag:?} (want tag:<name>)"),
            InvalidTime { what, secs } => {
                write!(f, "{what} {secs} is past the last storable time {TIME_SECS_MAX}")
            }
            TooMany { what, count, max } => write!(f, "{count} {what}, more than {max}"),
            UserExists { name } => write!(f, "a user named {name:?} exists"),
            UserNotFound { user } => write!(f, "no user {user}"),
            UserOwnsNodes { user, nodes } => write!(f, "user {user} still owns {nodes} node(s)"),
            PreAuthKeyUnknown => f.write_str("unknown pre-auth key"),
            PreAuthKeyNotFound { key } => write!(f, "no pre-auth key {key}"),
            PreAuthKeyExpired { key, expiration } => {
                write!(f, "pre-auth key {key} expired at {expiration}")
            }
            PreAuthKeyUsed { key, node } => {
                write!(f, "pre-auth key {key} was already used by node {node}")
            }
            OwnerMismatch { node, key } => {
                write!(f, "pre-auth key {key} belongs to another owner than node {node}")
            }
            NodeNotFound { node } => write!(f, "no node {node}"),
            MachineNotFound { machine_key } => {
                write!(f, "no node with machine key {machine_key:?}")
            }
            NodeKeyInUse { node_key, node } => {
                write!(f, "node key {node_key:?} is in use by node {node}")
            }
            StaleNodeKey { node, presented } => {
                write!(f, "node key {presented:?} is not node {node}'s current key")
            }
            GivenNameTaken { name } => write!(f, "given name {name:?} is taken"),
            GivenNamesExhausted { base } => write!(f, "every given name from {base:?} is taken"),
            RouteNotAdvertised { node, route } => write!(
                f,
                "node {node} does not advertise route {}/{}",
                route.addr, route.prefix_len
            ),
            AddressesExhausted { prefix_len } => {
                write!(f, "every address of 100.64.0.0/{prefix_len} was handed out")
            }
            PolicyVersionMismatch { expected, current } => {
                write!(f, "policy version is {current}, not the expected {expected}")
            }
            ApiKeyMalformed => f.write_str("malformed API key"),
            ApiKeyUnknown { prefix } => write!(f, "unknown API key {prefix}"),
            ApiKeyNotFound { key } => write!(f, "no API key {key}"),
            ApiKeyExpired { prefix, expiration } => {
                write!(f, "API key {prefix} expired at {expiration}")
            }
            ApiKeyRevoked { prefix } => write!(f, "API key {prefix} was revoked"),
            Contention { operation, attempts } => {
                write!(f, "{operation} met write conflicts {attempts} times")
            }
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RegistryError::Storage(error) => Some(error),
            _ => None,
        }
    }
}

impl From<docdb::Error> for RegistryError {
    fn from(error: docdb::Error) -> RegistryError {
        RegistryError::Storage(error)
    }
}

/// Checks that a time given by a caller can be stored.
fn check_time(what: &'static str, secs: u64) -> Result<(), RegistryError> {
    if secs > TIME_SECS_MAX { Err(RegistryError::InvalidTime { what, secs }) } else { Ok(()) }
}

/// Checks a list's length against its limit.
fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), RegistryError> {
    if count > max { Err(RegistryError::TooMany { what, count, max }) } else { Ok(()) }
}
