//! The access policy: Tailscale's policy file parsed and validated (`Policy`), compiled into
//! per-node packet filters (`compile`), kept current as nodes come and go (`PolicyEngine`), and
//! evaluated per packet (`CompiledFilter`).
//!
//! Map:
//! - `parse`: HuJSON text to a validated `Policy`; errors name the line, the field and why, and
//!   for the cases Tailscale rejects they contain Tailscale's own message.
//! - `ipset`: address sets and Tailscale's string forms (`a`, `a/n`, `a-b`).
//! - `compile`: aliases resolved against the tailnet, rules merged and reduced per node, exactly
//!   as the golden ACL cases expect.
//! - `engine`: `PolicyEngine`, the `PolicyView` the map engine holds (per-ACL member indexes, so
//!   one node's change costs what it affects).
//! - `matcher`: `CompiledFilter`, rules indexed by destination prefix for per-packet checks.

mod compile;
mod engine;
pub mod ipset;
pub mod matcher;
mod parse;

use std::collections::BTreeMap;
use std::fmt;

use wireguard::IpNet;

use crate::types::PortRange;

pub use compile::{
    WILDCARD_SOURCE_STRINGS, alias_names_node, compile_node, internet, wildcard_source_ranges,
};
pub use engine::PolicyEngine;
pub use ipset::{IpRange, IpSet};
pub use matcher::{CompiledFilter, FilterError};

/// The most ACL entries a policy may hold.
pub const ACLS_MAX: usize = 1_000_000;
/// The most entries in any one list of a policy (sources, destinations, group members, ...).
pub const LIST_ENTRIES_MAX: usize = 100_000;
/// The most groups, hosts, tag owners or auto-approver routes a policy may define.
pub const DEFINITIONS_MAX: usize = 100_000;

/// What kind of mistake a policy has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// Not HuJSON at all.
    Syntax,
    /// A field has the wrong JSON type or a required field is missing.
    Shape,
    /// An ACL action other than `accept`.
    UnsupportedAction,
    /// A `tag:` that `tagOwners` does not define.
    UnknownTag,
    /// A `group:` that `groups` does not define.
    UnknownGroup,
    /// A name that is neither a host, a user, an address nor any known alias form.
    UnknownAlias,
    /// A destination's ports are malformed.
    BadPorts,
    /// A protocol that is neither a known name nor a number 0-255.
    BadProtocol,
    /// `autogroup:self` as a destination with a source it cannot be restricted by.
    AutogroupSelfSource,
    /// An alias used where it has no meaning (`autogroup:self` as a source, ...).
    MisplacedAlias,
    /// A list or the whole policy beyond its `_MAX`.
    TooLarge,
}

/// Why a policy was rejected: the line, the field and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The kind of mistake.
    pub kind: PolicyErrorKind,
    /// The line (from 1) of the offending value in the policy text.
    pub line: usize,
    /// The field, as a path (`acls[1].dst[0]`).
    pub field: String,
    /// Why, in Tailscale's words where Tailscale has words for it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy line {}, field {}: {}", self.line, self.field, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// One name in a policy's sources, destinations, owners or approvers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alias {
    /// `*`: every address.
    Wildcard,
    /// A user by e-mail (`odin@example.com`) or by login name (`odin@`).
    User(String),
    /// `group:name`.
    Group(String),
    /// `tag:name`.
    Tag(String),
    /// A name from `hosts`.
    Host(String),
    /// A literal address or CIDR.
    Prefix(IpRange),
    /// `autogroup:member`: every node owned by a user (untagged).
    Member,
    /// `autogroup:tagged`: every tagged node.
    Tagged,
    /// `autogroup:self`: as a destination, the untagged nodes of the source's own user.
    SelfDevices,
    /// `autogroup:internet`: the public internet, reached through exit nodes.
    Internet,
}

/// One destination of an ACL: an alias and its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// What it names.
    pub alias: Alias,
    /// Its ports, in the order written.
    pub ports: Vec<PortRange>,
}

/// One ACL entry (action `accept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    /// Sources, in order.
    pub sources: Vec<Alias>,
    /// Destinations, in order.
    pub destinations: Vec<Destination>,
    /// IANA protocol numbers; empty for the default (TCP, UDP, ICMP, ICMPv6).
    pub protocols: Vec<u8>,
    /// The line the entry starts on.
    pub line: usize,
}

/// `autoApprovers`: who may have routes and exit nodes approved without an admin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoApprovers {
    /// A route prefix and who may advertise it (or any route inside it).
    pub routes: Vec<(IpNet, Vec<Alias>)>,
    /// Who may be an exit node.
    pub exit_node: Vec<Alias>,
}

/// A validated policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `group:name` to its members (user tokens).
    pub groups: BTreeMap<String, Vec<String>>,
    /// `tag:name` to who may apply it.
    pub tag_owners: BTreeMap<String, Vec<Alias>>,
    /// Host name to its address range.
    pub hosts: BTreeMap<String, IpRange>,
    /// The ACL entries, in order.
    pub acls: Vec<Acl>,
    /// Auto-approvers.
    pub auto_approvers: AutoApprovers,
}

impl Policy {
    /// Parses and validates a policy from HuJSON text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let document = crate::hujson::parse_document(text).map_err(|error| PolicyError {
            kind: PolicyErrorKind::Syntax,
            line: error.line,
            field: "(document)".into(),
            message: error.to_string(),
        })?;
        parse::policy(&document)
    }

    /// Validates a policy already parsed as JSON (lines are then unknown and reported as 1).
    pub fn from_value(value: serde_json::Value) -> Result<Policy, PolicyError> {
        parse::policy(&crate::hujson::Document::without_lines(value))
    }

    /// Whether `node` may have `route` approved without an admin: some `autoApprovers.routes`
    /// prefix holds the route and names the node (by tag, user, group or autogroup), or the route
    /// is `0.0.0.0/0` or `::/0` and `autoApprovers.exitNode` names the node.
    pub fn auto_approves(
        &self,
        node: &crate::types::NodeInfo,
        route: IpNet,
        users: &[crate::types::User],
    ) -> bool {
        let route_range = IpRange::prefix(route);
        let matches = |aliases: &[Alias]| {
            aliases.iter().any(|alias| compile::alias_names_node(self, alias, node, users))
        };
        if route.prefix_len == 0 {
            return matches(&self.auto_approvers.exit_node);
        }
        self.auto_approvers.routes.iter().any(|(prefix, aliases)| {
            IpRange::prefix(*prefix).covers(&route_range) && matches(aliases)
        })
    }
}
