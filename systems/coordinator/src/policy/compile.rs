//! Compiling a policy against a tailnet into per-node `FilterRule`s, as Tailscale does.
//!
//! Per ACL entry, in policy order: the sources resolve to one address set (users, groups, tags
//! and autogroups to their nodes' addresses; hosts and CIDRs as written), written as ranges; a
//! `*` source adds Tailscale's fixed tailnet ranges and every approved subnet route as separate
//! strings. Destinations resolve the same way (`*` stays `*`), one `DstPorts` entry per range
//! and port range. `autogroup:self` destinations give each untagged node a second rule: the
//! sources restricted to its user's untagged devices, to those devices. Rules with the same
//! sources and protocols merge into the first one's place. Last, a node keeps only the
//! destination entries that concern it (its addresses, its approved subnet routes, the internet
//! if it is an exit node).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use super::{Alias, IpRange, IpSet, Policy};
use crate::types::{FilterRule, NetPortRange, NodeId, NodeInfo, PortRange, Sources, User, UserId};

/// Tailscale's strings for `*` as a source (the tailnet's CGNAT range minus 100.115.92.0/23,
/// and its IPv6 ULA range), before the approved subnet routes.
pub const WILDCARD_SOURCE_STRINGS: [&str; 3] =
    ["100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::/48"];

/// The ranges `*` covers as a source, without subnet routes.
pub fn wildcard_source_ranges() -> Vec<IpRange> {
    WILDCARD_SOURCE_STRINGS
        .iter()
        .map(|text| IpRange::parse(text).expect("a constant range"))
        .collect()
}

/// The public internet (`autogroup:internet`): IPv4 outside private, shared, loopback,
/// link-local, multicast and reserved space, and global unicast IPv6 (2000::/3).
pub fn internet() -> IpSet {
    let excluded = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
    ];
    let mut ranges = Vec::new();
    let mut next: u128 = 0;
    for text in excluded {
        let range = IpRange::parse(text).expect("a constant prefix");
        if range.first > next {
            ranges.push(IpRange { v6: false, first: next, last: range.first - 1 });
        }
        next = range.last + 1;
    }
    ranges.push(IpRange::parse("2000::/3").expect("a constant prefix"));
    IpSet::from_ranges(ranges)
}

/// A node's own addresses.
pub(crate) fn node_ranges(node: &NodeInfo) -> [IpRange; 2] {
    [IpRange::addr(IpAddr::V4(node.ipv4)), IpRange::addr(IpAddr::V6(node.ipv6))]
}

/// A node's approved subnet routes (exit routes excluded).
pub(crate) fn subnet_routes(node: &NodeInfo) -> impl Iterator<Item = IpRange> + '_ {
    node.approved_routes.iter().filter(|net| net.prefix_len > 0).map(|net| IpRange::prefix(*net))
}

/// Whether a node is an approved exit node.
pub(crate) fn is_exit_node(node: &NodeInfo) -> bool {
    node.approved_routes.iter().any(|net| net.prefix_len == 0)
}

/// Whether a user token (`odin@example.com`, `odin@`, `odin`) names `user`.
pub(crate) fn token_names_user(token: &str, user: &User) -> bool {
    user.email.as_deref() == Some(token)
        || token.strip_suffix('@') == Some(user.name.as_str())
        || token == user.name
}

fn user_of<'u>(node: &NodeInfo, users: &'u [User]) -> Option<&'u User> {
    let id = node.user?;
    users.iter().find(|user| user.id == id)
}

/// Whether `alias` names `node` as a whole node (users, groups, tags, autogroups), or, for
/// address aliases, whether it holds one of the node's addresses.
pub fn alias_names_node(policy: &Policy, alias: &Alias, node: &NodeInfo, users: &[User]) -> bool {
    let untagged = node.tags.is_empty();
    let owner = || user_of(node, users).filter(|_| untagged);
    match alias {
        Alias::Wildcard => true,
        Alias::User(token) => owner().is_some_and(|user| token_names_user(token, user)),
        Alias::Group(name) => owner().is_some_and(|user| {
            let members = policy.groups.get(name).map(Vec::as_slice).unwrap_or_default();
            members.iter().any(|token| token_names_user(token, user))
        }),
        Alias::Tag(tag) => node.tags.iter().any(|own| own == tag),
        Alias::Member => untagged,
        Alias::Tagged => !untagged,
        Alias::Host(name) => policy
            .hosts
            .get(name)
            .is_some_and(|range| node_ranges(node).iter().any(|own| range.covers(own))),
        Alias::Prefix(range) => node_ranges(node).iter().any(|own| range.covers(own)),
        Alias::SelfDevices | Alias::Internet => false,
    }
}

/// Nodes indexed by what aliases name them by, so resolving costs what it returns.
pub(crate) struct Index<'a> {
    by_tag: BTreeMap<&'a str, Vec<&'a NodeInfo>>,
    by_user: BTreeMap<UserId, Vec<&'a NodeInfo>>,
    tagged: Vec<&'a NodeInfo>,
    untagged: Vec<&'a NodeInfo>,
    users: &'a [User],
    /// Every approved subnet route, each once.
    routes: BTreeSet<IpRange>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(nodes: impl Iterator<Item = &'a NodeInfo>, users: &'a [User]) -> Index<'a> {
        let mut index = Index {
            by_tag: BTreeMap::new(),
            by_user: BTreeMap::new(),
            tagged: Vec::new(),
            untagged: Vec::new(),
            users,
            routes: BTreeSet::new(),
        };
        for node in nodes {
            index.routes.extend(subnet_routes(node));
            if node.tags.is_empty() {
                index.untagged.push(node);
                if let Some(user) = node.user {
                    index.by_user.entry(user).or_default().push(node);
                }
            } else {
                index.tagged.push(node);
                for tag in &node.tags {
                    index.by_tag.entry(tag.as_str()).or_default().push(node);
                }
            }
        }
        index
    }

    /// The users a token names.
    fn users_named<'t>(&self, token: &'t str) -> impl Iterator<Item = &'a User> + 't
    where
        'a: 't,
    {
        self.users.iter().filter(move |user| token_names_user(token, user))
    }

    /// Pushes the addresses of the nodes a node-level alias names (others push nothing).
    pub(crate) fn push_named(&self, policy: &Policy, alias: &Alias, out: &mut Vec<IpRange>) {
        self.for_each_named(policy, alias, |node| out.extend(node_ranges(node)));
    }

    /// Calls `visit` on every node a node-level alias names (others name none here).
    pub(crate) fn for_each_named(
        &self,
        policy: &Policy,
        alias: &Alias,
        mut visit: impl FnMut(&'a NodeInfo),
    ) {
        let mut visit_all = |nodes: &[&'a NodeInfo]| nodes.iter().for_each(|node| visit(node));
        match alias {
            Alias::User(token) => {
                for user in self.users_named(token) {
                    visit_all(self.devices_of(user.id));
                }
            }
            Alias::Group(name) => {
                let members = policy.groups.get(name).map(Vec::as_slice).unwrap_or_default();
                let ids: BTreeSet<UserId> = members
                    .iter()
                    .flat_map(|token| self.users_named(token))
                    .map(|u| u.id)
                    .collect();
                for id in ids {
                    visit_all(self.devices_of(id));
                }
            }
            Alias::Tag(tag) => {
                visit_all(self.by_tag.get(tag.as_str()).map(Vec::as_slice).unwrap_or_default());
            }
            Alias::Member => visit_all(&self.untagged),
            Alias::Tagged => visit_all(&self.tagged),
            _ => debug_assert!(!is_node_level(alias)),
        }
    }

    /// The strings `*` stands for as a source here.
    pub(crate) fn wildcard_strings(&self) -> Vec<String> {
        let mut strings: Vec<String> =
            WILDCARD_SOURCE_STRINGS.iter().map(|s| s.to_string()).collect();
        strings.extend(self.routes.iter().map(ToString::to_string));
        strings
    }

    /// The untagged devices of a user.
    pub(crate) fn devices_of(&self, user: UserId) -> &[&'a NodeInfo] {
        self.by_user.get(&user).map(Vec::as_slice).unwrap_or_default()
    }
}

/// One compiled destination entry: Tailscale's string, its range (`None` for `*`), its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) ip: String,
    pub(crate) range: Option<IpRange>,
    pub(crate) ports: PortRange,
}

/// One ACL entry compiled against the tailnet (everything but the per-node `autogroup:self`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledAcl {
    /// Whether the sources hold `*`.
    pub(crate) src_wildcard: bool,
    /// The sources other than `*`.
    pub(crate) src_set: IpSet,
    /// The rule's `SrcIPs`, sorted (empty: the entry gives no ordinary rule, for want of
    /// sources or of destinations).
    pub(crate) src_strings: Sources,
    /// The non-self destination entries, in policy order.
    pub(crate) entries: Vec<Entry>,
    /// Where each non-self destination's entries lie in `entries`, in policy order.
    pub(crate) runs: Vec<Run>,
    /// The ports of the `autogroup:self` destinations, in policy order.
    pub(crate) self_ports: Vec<PortRange>,
    /// `strings_hash(&src_strings)`: what the rule's sources add to a filter's digest.
    pub(crate) src_hash: u64,
    /// `IPProto`.
    pub(crate) protocols: Vec<u8>,
    /// Whether an `autogroup:self` destination comes before every other destination (then the
    /// per-node rule comes first, as Tailscale orders them).
    pub(crate) self_first: bool,
}

/// The entries of one destination: `entries[start..end]`. Unless `wildcard` (`*`, no ranges),
/// they are one IP set's ranges in ascending order, each range's port ranges side by side, so
/// the entries that hold an address are found by binary search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) wildcard: bool,
}

/// Calls `visit` with each entry of `acl` that concerns `node` (`entry_concerns`), in order.
/// For a node without approved routes only its own two addresses matter: a binary search per
/// destination, so a node costs what concerns it, not the entry's every address. Otherwise (a
/// router or an exit node) a scan.
pub(crate) fn for_each_concerning<'c>(
    acl: &'c CompiledAcl,
    node: &NodeInfo,
    internet: &IpSet,
    mut visit: impl FnMut(&'c Entry),
) {
    if !node.approved_routes.is_empty() {
        let concerning =
            acl.entries.iter().filter(|e| entry_concerns(e.range.as_ref(), node, internet));
        concerning.for_each(visit);
        return;
    }
    let own = node_ranges(node);
    debug_assert!(own[0] < own[1], "IPv4 sorts first");
    for run in &acl.runs {
        let entries = &acl.entries[run.start..run.end];
        if run.wildcard {
            entries.iter().for_each(&mut visit);
            continue;
        }
        for address in &own {
            let key = (address.v6, address.first);
            let end = entries.partition_point(|e| e.range.is_some_and(|r| (r.v6, r.first) <= key));
            let mut start = end;
            while start > 0 && entries[start - 1].range.is_some_and(|r| r.covers(address)) {
                start -= 1;
            }
            entries[start..end].iter().for_each(&mut visit);
        }
    }
}

/// Whether a run's entries are as `Run` says: ranges ascending and disjoint, or all `*`.
fn run_is_sorted(entries: &[Entry], wildcard: bool) -> bool {
    if wildcard {
        return entries.iter().all(|entry| entry.range.is_none());
    }
    entries.iter().all(|entry| entry.range.is_some())
        && entries.windows(2).all(|pair| match (pair[0].range, pair[1].range) {
            (Some(a), Some(b)) => a == b || (a.v6, a.last) < (b.v6, b.first),
            _ => false,
        })
}

/// Pushes one entry per range and port range.
fn push_entries(set: &IpSet, ports: &[PortRange], out: &mut Vec<Entry>) {
    for range in set.ranges() {
        let ip = range.to_string();
        out.extend(ports.iter().map(|&ports| Entry { ip: ip.clone(), range: Some(*range), ports }));
    }
}

/// Whether an alias names whole nodes (users, groups, tags, `autogroup:member`/`tagged`).
pub(crate) fn is_node_level(alias: &Alias) -> bool {
    matches!(
        alias,
        Alias::User(_) | Alias::Group(_) | Alias::Tag(_) | Alias::Member | Alias::Tagged
    )
}

/// Pushes the ranges an address alias stands for (hosts, CIDRs, the internet).
pub(crate) fn push_literal(policy: &Policy, alias: &Alias, out: &mut Vec<IpRange>) {
    match alias {
        Alias::Host(name) => out.extend(policy.hosts.get(name).copied()),
        Alias::Prefix(range) => out.push(*range),
        Alias::Internet => out.extend(internet().ranges().iter().copied()),
        _ => {}
    }
}

/// Where in an ACL entry a set of aliases sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The sources.
    Source,
    /// One destination, by position.
    Destination(usize),
}

/// What compiling an ACL asks of the tailnet: the addresses of the nodes the node-level aliases
/// of a slot name, and the strings `*` stands for as a source.
pub(crate) trait Tailnet {
    /// The addresses of the nodes named by the node-level aliases in `slot` of ACL `acl`.
    fn named_ranges(&self, policy: &Policy, acl: usize, slot: Slot) -> Vec<IpRange>;
    /// `*` as a source.
    fn wildcard_strings(&self) -> Vec<String>;
}

impl Tailnet for Index<'_> {
    fn named_ranges(&self, policy: &Policy, acl: usize, slot: Slot) -> Vec<IpRange> {
        let entry = &policy.acls[acl];
        let mut out = Vec::new();
        match slot {
            Slot::Source => entry.sources.iter().for_each(|a| self.push_named(policy, a, &mut out)),
            Slot::Destination(j) => self.push_named(policy, &entry.destinations[j].alias, &mut out),
        }
        out
    }

    fn wildcard_strings(&self) -> Vec<String> {
        Index::wildcard_strings(self)
    }
}

/// Whether the `autogroup:self` rule of an ACL comes before its other rule. Tailscale groups
/// an entry's destinations by their ports (in order of first appearance) and, within a group,
/// emits the ordinary rule before the self rule; so the self rule leads exactly when the first
/// group holds only `autogroup:self` destinations.
fn self_first(acl: &super::Acl) -> bool {
    let Some(first) = acl.destinations.first() else { return false };
    acl.destinations
        .iter()
        .filter(|dst| dst.ports == first.ports)
        .all(|dst| dst.alias == Alias::SelfDevices)
}

/// Compiles ACL entry `acl_index` of `policy` against a tailnet.
pub(crate) fn compile_acl(policy: &Policy, tailnet: &dyn Tailnet, acl_index: usize) -> CompiledAcl {
    let acl = &policy.acls[acl_index];
    let mut ranges = tailnet.named_ranges(policy, acl_index, Slot::Source);
    acl.sources.iter().for_each(|alias| push_literal(policy, alias, &mut ranges));
    let src_wildcard = acl.sources.contains(&Alias::Wildcard);
    let src_set = IpSet::from_ranges(ranges);
    let mut compiled = CompiledAcl {
        src_wildcard,
        src_set,
        src_strings: Sources::default(),
        src_hash: strings_hash(&[]),
        entries: Vec::new(),
        runs: Vec::new(),
        self_ports: Vec::new(),
        protocols: acl.protocols.clone(),
        self_first: self_first(acl),
    };
    for (position, destination) in acl.destinations.iter().enumerate() {
        let ports = &destination.ports;
        let start = compiled.entries.len();
        match destination.alias {
            Alias::SelfDevices => {
                compiled.self_ports.extend(ports.iter().copied());
                continue;
            }
            Alias::Wildcard => compiled.entries.extend(ports.iter().map(|&ports| Entry {
                ip: "*".into(),
                range: None,
                ports,
            })),
            _ => {
                let mut ranges =
                    tailnet.named_ranges(policy, acl_index, Slot::Destination(position));
                push_literal(policy, &destination.alias, &mut ranges);
                push_entries(&IpSet::from_ranges(ranges), ports, &mut compiled.entries);
            }
        }
        let (end, wildcard) = (compiled.entries.len(), destination.alias == Alias::Wildcard);
        debug_assert!(run_is_sorted(&compiled.entries[start..end], wildcard));
        compiled.runs.push(Run { start, end, wildcard });
    }
    debug_assert_eq!(compiled.runs.last().map_or(0, |run| run.end), compiled.entries.len());
    // Without ordinary destinations the source strings would never be read: not formatted.
    if !compiled.entries.is_empty() {
        let mut src_strings = if src_wildcard { tailnet.wildcard_strings() } else { Vec::new() };
        src_strings.extend(compiled.src_set.strings());
        src_strings.sort();
        compiled.src_hash = strings_hash(&src_strings);
        compiled.src_strings = Sources::new(src_strings);
    }
    compiled
}

/// A hash of a list of strings (a rule's sources): fixed keys, so the same on every run.
pub(crate) fn strings_hash(strings: &[String]) -> u64 {
    let mut hasher = DefaultHasher::new();
    strings.hash(&mut hasher);
    hasher.finish()
}

/// Whether a destination entry's addresses concern `node`.
pub(crate) fn entry_concerns(range: Option<&IpRange>, node: &NodeInfo, internet: &IpSet) -> bool {
    let Some(range) = range else { return true };
    node_ranges(node).iter().any(|own| range.covers(own))
        || subnet_routes(node).any(|route| route.overlaps(range))
        || (is_exit_node(node) && internet.covers(range))
}

/// Rules in the making for one node: slots in first-occurrence order, keyed by sources and
/// protocols, holding only the entries that concern the node. Sources are borrowed from the
/// compiled entries until a rule survives, so a large policy costs no copies for the rules a
/// node does not receive.
struct Rules<'n> {
    node: &'n NodeInfo,
    internet: IpSet,
    slots: BTreeMap<Sources, BTreeMap<Vec<u8>, usize>>,
    rules: Vec<PendingRule>,
}

/// One rule in the making: sources, protocols, the destinations that concern the node.
type PendingRule = (Sources, Vec<u8>, Vec<NetPortRange>);

impl Rules<'_> {
    fn push(&mut self, src: Sources, protocols: &[u8], entries: &[Entry]) {
        debug_assert!(!src.is_empty() && !entries.is_empty());
        let found = self.slots.get(&src).and_then(|by_protocols| by_protocols.get(protocols));
        let slot = match found {
            Some(&slot) => slot,
            None => {
                let slot = self.rules.len();
                let by_protocols = self.slots.entry(src.clone()).or_default();
                by_protocols.insert(protocols.to_vec(), slot);
                self.rules.push((src, protocols.to_vec(), Vec::new()));
                slot
            }
        };
        let node = self.node;
        let internet = &self.internet;
        self.rules[slot].2.extend(
            entries
                .iter()
                .filter(|entry| entry_concerns(entry.range.as_ref(), node, internet))
                .map(|entry| NetPortRange { ip: entry.ip.clone(), ports: entry.ports }),
        );
    }

    fn finish(self) -> Vec<FilterRule> {
        let rules: Vec<FilterRule> = self
            .rules
            .into_iter()
            .filter(|(_, _, dst_ports)| !dst_ports.is_empty())
            .map(|(src, ip_proto, dst_ports)| FilterRule { src_ips: src, dst_ports, ip_proto })
            .collect();
        debug_assert!(rules.iter().all(|rule| !rule.src_ips.is_empty()));
        rules
    }
}

/// The `autogroup:self` rule of one ACL for a device of `user`.
fn push_self_rule(rules: &mut Rules<'_>, acl: &CompiledAcl, devices: &[&NodeInfo], user: UserId) {
    debug_assert!(devices.iter().all(|device| device.user == Some(user)));
    if let Some((src, entries)) = self_rule(acl, devices) {
        rules.push(Sources::new(src), &acl.protocols, &entries);
    }
}

/// The `autogroup:self` rule of one ACL for the untagged `devices` of one user: its sorted
/// sources and its destination entries; `None` if no device is among the sources.
pub(crate) fn self_rule(
    acl: &CompiledAcl,
    devices: &[&NodeInfo],
) -> Option<(Vec<String>, Vec<Entry>)> {
    let sources: Vec<IpRange> = devices
        .iter()
        .filter(|device| {
            acl.src_wildcard || node_ranges(device).iter().any(|range| acl.src_set.covers(range))
        })
        .flat_map(|device| node_ranges(device))
        .collect();
    if sources.is_empty() {
        return None;
    }
    let mut src = IpSet::from_ranges(sources).strings();
    src.sort();
    let targets =
        IpSet::from_ranges(devices.iter().flat_map(|device| node_ranges(device)).collect());
    let mut entries = Vec::new();
    push_entries(&targets, &acl.self_ports, &mut entries);
    debug_assert!(!entries.is_empty());
    Some((src, entries))
}

/// The rules `node` receives, given every ACL compiled against the tailnet and the untagged
/// devices of the node's user.
pub(crate) fn rules_for(
    compiled: &[CompiledAcl],
    devices: &[&NodeInfo],
    node: &NodeInfo,
) -> Vec<FilterRule> {
    let mut rules = Rules { node, internet: internet(), slots: BTreeMap::new(), rules: Vec::new() };
    let owner = node.user.filter(|_| node.tags.is_empty());
    for acl in compiled {
        let global = !acl.src_strings.is_empty() && !acl.entries.is_empty();
        if global && !acl.self_first {
            rules.push(acl.src_strings.clone(), &acl.protocols, &acl.entries);
        }
        if let Some(user) = owner.filter(|_| !acl.self_ports.is_empty()) {
            push_self_rule(&mut rules, acl, devices, user);
        }
        if global && acl.self_first {
            rules.push(acl.src_strings.clone(), &acl.protocols, &acl.entries);
        }
    }
    rules.finish()
}

/// The packet-filter rules `node` receives from `policy` in a tailnet of `nodes` and `users`
/// (empty if `node` is not among `nodes`). Compiles every ACL: for one-off use and tests; the
/// `PolicyEngine` keeps the compiled form between calls.
pub fn compile_node(
    policy: &Policy,
    users: &[User],
    nodes: &BTreeMap<NodeId, NodeInfo>,
    node: NodeId,
) -> Vec<FilterRule> {
    let Some(target) = nodes.get(&node) else { return Vec::new() };
    let index = Index::new(nodes.values(), users);
    let compiled: Vec<CompiledAcl> =
        (0..policy.acls.len()).map(|acl| compile_acl(policy, &index, acl)).collect();
    let devices = target.user.map(|user| index.devices_of(user)).unwrap_or_default();
    rules_for(&compiled, devices, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Key;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn node(id: NodeId, user: Option<UserId>, tags: &[&str], routes: &[&str]) -> NodeInfo {
        let routes: Vec<wireguard::IpNet> = routes.iter().map(|r| r.parse().unwrap()).collect();
        NodeInfo {
            id,
            hostname: format!("n{id}"),
            given_name: format!("n{id}"),
            user,
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
            ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16),
            node_key: Key([0; 32]),
            machine_key: Key([0; 32]),
            endpoints: Vec::new(),
            advertised_routes: routes.clone(),
            approved_routes: routes,
            online: true,
            ephemeral: false,
            expiry: None,
        }
    }

    fn tailnet() -> (Vec<User>, BTreeMap<NodeId, NodeInfo>) {
        let users = vec![
            User { id: 1, name: "odin".into(), email: Some("odin@example.com".into()) },
            User { id: 2, name: "thor".into(), email: None },
        ];
        let nodes = [
            node(1, Some(1), &[], &[]),
            node(2, Some(1), &[], &[]),
            node(3, Some(2), &[], &[]),
            node(4, None, &["tag:exit"], &["0.0.0.0/0", "::/0"]),
            node(5, None, &["tag:router"], &["10.33.0.0/16"]),
        ];
        (users, nodes.into_iter().map(|node| (node.id, node)).collect())
    }

    /// A destination as (IP, first port, last port).
    type Dst<'a> = (&'a str, u16, u16);
    /// A rule as (sources, destinations).
    type Shown = (Vec<String>, Vec<(String, u16, u16)>);

    /// Compiles `acls` for `node`; compares (sources, destination IPs and ports) per rule.
    #[track_caller]
    fn check(acls: &str, node: NodeId, expected: &[(&[&str], &[Dst<'_>])]) {
        let text =
            format!(r#"{{"tagOwners": {{"tag:exit": [], "tag:router": []}}, "acls": [{acls}]}}"#);
        let policy = Policy::parse(&text).expect("a valid policy");
        let (users, nodes) = tailnet();
        let got: Vec<Shown> = compile_node(&policy, &users, &nodes, node)
            .into_iter()
            .map(|rule| {
                let dsts =
                    rule.dst_ports.iter().map(|d| (d.ip.clone(), d.ports.first, d.ports.last));
                (rule.src_ips.to_vec(), dsts.collect())
            })
            .collect();
        let expected: Vec<Shown> = expected
            .iter()
            .map(|(src, dst)| {
                let dst = dst.iter().map(|&(ip, first, last)| (ip.to_string(), first, last));
                (src.iter().map(|s| s.to_string()).collect(), dst.collect())
            })
            .collect();
        assert_eq!(got, expected, "acls {acls} for node {node}");
    }

    #[test]
    fn adjacent_addresses_form_ranges_and_users_resolve_by_name() {
        let acl = r#"{"action": "accept", "src": ["thor@"], "dst": ["odin@example.com:22"]}"#;
        let src: &[&str] = &["100.64.0.3", "fd7a:115c:a1e0::3"];
        check(
            acl,
            1,
            &[(
                src,
                &[
                    ("100.64.0.1-100.64.0.2", 22, 22),
                    ("fd7a:115c:a1e0::1-fd7a:115c:a1e0::2", 22, 22),
                ],
            )],
        );
        check(acl, 3, &[]);
    }

    #[test]
    fn subnet_routers_and_exit_nodes_receive_their_traffic() {
        let acl = concat!(
            r#"{"action": "accept", "src": ["thor@"], "#,
            r#""dst": ["10.0.0.0/8:*", "autogroup:internet:443"]}"#
        );
        let src: &[&str] = &["100.64.0.3", "fd7a:115c:a1e0::3"];
        check(acl, 5, &[(src, &[("10.0.0.0/8", 0, 65535)])]);
        let exit = compile_node(
            &Policy::parse(&format!(
                r#"{{"tagOwners": {{"tag:exit": [], "tag:router": []}}, "acls": [{acl}]}}"#
            ))
            .unwrap(),
            &tailnet().0,
            &tailnet().1,
            4,
        );
        assert_eq!(exit.len(), 1);
        assert!(exit[0].dst_ports.iter().all(|d| d.ports.first == 443));
        assert!(exit[0].dst_ports.iter().any(|d| d.ip == "1.0.0.0-9.255.255.255"), "{exit:?}");
        check(acl, 1, &[]);
    }

    #[test]
    fn wildcard_sources_add_subnet_routes() {
        let acl = r#"{"action": "accept", "src": ["*"], "dst": ["tag:exit:22"]}"#;
        let src: &[&str] = &[
            "10.33.0.0/16",
            "100.115.94.0-100.127.255.255",
            "100.64.0.0-100.115.91.255",
            "fd7a:115c:a1e0::/48",
        ];
        check(acl, 4, &[(src, &[("100.64.0.4", 22, 22), ("fd7a:115c:a1e0::4", 22, 22)])]);
    }

    #[test]
    fn self_rules_follow_the_first_port_group() {
        let own: &[&str] = &["100.64.0.1-100.64.0.2", "fd7a:115c:a1e0::1-fd7a:115c:a1e0::2"];
        let all: &[&str] = &["100.64.0.1-100.64.0.3", "fd7a:115c:a1e0::1-fd7a:115c:a1e0::3"];
        let self_dst: &[(&str, u16, u16)] =
            &[("100.64.0.1-100.64.0.2", 80, 80), ("fd7a:115c:a1e0::1-fd7a:115c:a1e0::2", 80, 80)];
        let member_dst: &[(&str, u16, u16)] =
            &[("100.64.0.1-100.64.0.3", 22, 22), ("fd7a:115c:a1e0::1-fd7a:115c:a1e0::3", 22, 22)];
        let acl = concat!(
            r#"{"action": "accept", "src": ["autogroup:member"], "#,
            r#""dst": ["autogroup:self:80", "autogroup:member:22"]}"#
        );
        check(acl, 1, &[(own, self_dst), (all, member_dst)]);
        let acl = concat!(
            r#"{"action": "accept", "src": ["autogroup:member"], "#,
            r#""dst": ["autogroup:member:22", "autogroup:self:80"]}"#
        );
        check(acl, 1, &[(all, member_dst), (own, self_dst)]);
        check(acl, 4, &[]);
    }

    #[test]
    fn auto_approvers_name_routes_and_exit_nodes() {
        let text = r#"{
            "groups": {"group:net": ["thor@"]},
            "tagOwners": {"tag:exit": [], "tag:router": []},
            "autoApprovers": {
                "routes": {"10.0.0.0/8": ["tag:router", "group:net"]},
                "exitNode": ["tag:exit"]
            }
        }"#;
        let policy = Policy::parse(text).expect("a valid policy");
        let (users, nodes) = tailnet();
        let approves = |id: NodeId, route: &str| {
            policy.auto_approves(&nodes[&id], route.parse().expect("a route"), &users)
        };
        assert!(approves(5, "10.33.0.0/16"));
        assert!(approves(5, "10.0.0.0/8"));
        assert!(!approves(5, "11.0.0.0/16"));
        assert!(!approves(5, "0.0.0.0/0"));
        assert!(approves(4, "0.0.0.0/0") && approves(4, "::/0"));
        assert!(approves(3, "10.1.0.0/16"), "thor is in group:net");
        assert!(!approves(1, "10.1.0.0/16"), "odin is not");
    }
}
