//! `PolicyEngine`: the compiled policy kept current as nodes and users change.
//!
//! Per ACL entry it keeps who is in it: the nodes its node-level sources name (`src_named`),
//! the nodes in its sources at all (`src_nodes`: also by address), the nodes each node-level
//! destination names (`dst_named`) and the nodes any destination concerns (`dst_nodes`); `*`
//! is a flag, not a set of every node. Each node keeps the reverse (`Membership`). A node's
//! change recompiles only the entries whose named sets it entered or left (or all of them
//! whose sources hold `*`, when the tailnet's subnet routes change), and reports as affected
//! the nodes on the other side of the entries whose membership changed (peers) and the nodes
//! the recompiled entries' rules reach (filters). Its cost is the policy's size (one pass over
//! the aliases to find the node's memberships) plus the nodes it affects, never every node.
//! Recompiling an entry re-resolves its whole address sets, so it costs the entry's members
//! (an address change of one member of `autogroup:member` reformats that entry's sources).
//!
//! `filter_for(n)` walks only the entries that concern `n` (plus those with `*` destinations
//! and, for an untagged node, those with `autogroup:self`): each entry also keeps the first
//! entry with the same merge key, which is where Tailscale's merging places its rule. Within an
//! entry, a node without approved routes finds the destination entries holding its addresses by
//! binary search. `filter_digest(n)` walks the same way but builds no rule: each compiled entry
//! keeps the hash of its sources, so a node's digest costs its rules' destinations, not the
//! addresses its sources list. `peers_of(n)` gathers the members of `n`'s entries and sorts
//! them once.
//! Memberships name entries by a stable id (`EntryId`), not by position, so `set_policy` edits
//! in place when the new policy keeps the names and the order of the entries it keeps: the
//! removed entries leave their members' memberships, the added ones are resolved from the
//! engine's name and address indexes and join theirs, the kept ones are untouched (see
//! `edit`). Any other edit, `clear_policy`, `upsert_user` and `load_nodes` rebuild everything
//! (from the same indexes: the policy's size plus its members, not entries times nodes); the
//! last three report every node.
//!
//! Limitation: a destination named by users, groups or tags concerns a node when it names the
//! node, not when it holds an address inside another node's subnet route.

mod edit;

use edit::Reuse;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::compile::{
    CompiledAcl, Entry, Slot, Tailnet, WILDCARD_SOURCE_STRINGS, alias_names_node, compile_acl,
    entry_concerns, for_each_concerning, internet, is_node_level, node_ranges, push_literal,
    rules_for, self_rule, strings_hash, subnet_routes, token_names_user,
};
use super::{Acl, Alias, IpRange, IpSet, Policy};
use crate::types::{
    Affected, FilterRule, NetPortRange, NodeId, NodeInfo, PolicyView, PortRange, Sources, User,
    UserId,
};

/// The most nodes an engine indexes.
pub const NODES_MAX: usize = 1 << 20;
/// The most users an engine indexes.
pub const USERS_MAX: usize = 1 << 20;

/// Who is in one ACL entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AclState {
    src_all: bool,
    dst_all: bool,
    has_self: bool,
    src_named: BTreeSet<NodeId>,
    src_nodes: BTreeSet<NodeId>,
    dst_named: Vec<BTreeSet<NodeId>>,
    dst_nodes: BTreeSet<NodeId>,
}

/// An ACL entry's identity while the engine holds it. A policy edit that keeps an entry keeps
/// its id wherever the entry moves, so the memberships of its nodes need no change.
type EntryId = u32;

impl AclState {
    /// An entry's flags, with no members yet.
    fn flags_of(acl: &Acl) -> AclState {
        AclState {
            src_all: acl.sources.contains(&Alias::Wildcard),
            dst_all: acl.destinations.iter().any(|dst| dst.alias == Alias::Wildcard),
            has_self: acl.destinations.iter().any(|dst| dst.alias == Alias::SelfDevices),
            dst_named: vec![BTreeSet::new(); acl.destinations.len()],
            ..AclState::default()
        }
    }
}

/// Which ACL entries one node is in, by id (wildcards not listed; no order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Membership {
    src_named: Vec<EntryId>,
    src: Vec<EntryId>,
    dst_named: Vec<(EntryId, usize)>,
    dst: Vec<EntryId>,
}

impl Membership {
    /// The same membership with its lists sorted, for comparing two built differently.
    fn sorted(mut self) -> Membership {
        self.src_named.sort_unstable();
        self.src.sort_unstable();
        self.dst_named.sort_unstable();
        self.dst.sort_unstable();
        self
    }

    /// Takes entry `id` out of every list.
    fn forget(&mut self, id: EntryId) {
        self.src_named.retain(|&entry| entry != id);
        self.src.retain(|&entry| entry != id);
        self.dst_named.retain(|&(entry, _)| entry != id);
        self.dst.retain(|&entry| entry != id);
    }
}

/// Entry ids and positions: the policy orders entries, memberships name them by id.
#[derive(Clone, Debug, Default)]
struct Ranks {
    /// Position -> id.
    ids: Vec<EntryId>,
    /// Id -> position (`FREE` for an id no entry holds).
    // Invariant: `rank[ids[p]] == p` for every position, and every other id is in `free`.
    rank: Vec<usize>,
    free: Vec<EntryId>,
}

const FREE: usize = usize::MAX;

impl Ranks {
    /// Ids 0.. for `count` entries in order.
    fn fresh(count: usize) -> Ranks {
        let ids = (0..count).map(|id| EntryId::try_from(id).expect("entries fit u32")).collect();
        Ranks { ids, rank: (0..count).collect(), free: Vec::new() }
    }

    /// Where entry `id` sits in the policy.
    fn of(&self, id: EntryId) -> usize {
        let rank = self.rank[id as usize];
        debug_assert_ne!(rank, FREE, "entry {id} is not held");
        rank
    }

    /// The id of the entry at `position`.
    fn id(&self, position: usize) -> EntryId {
        self.ids[position]
    }

    /// An id no entry holds.
    fn allocate(&mut self) -> EntryId {
        self.free.pop().unwrap_or_else(|| {
            self.rank.push(FREE);
            EntryId::try_from(self.rank.len() - 1).expect("entries fit u32")
        })
    }

    /// Gives back the id of an entry the policy no longer has.
    fn release(&mut self, id: EntryId) {
        self.rank[id as usize] = FREE;
        self.free.push(id);
    }

    /// Sets the order: `ids[p]` is the entry at position `p`.
    fn order(&mut self, ids: Vec<EntryId>) {
        for (position, &id) in ids.iter().enumerate() {
            self.rank[id as usize] = position;
        }
        self.ids = ids;
    }

    fn check_invariants(&self) {
        for (position, &id) in self.ids.iter().enumerate() {
            assert_eq!(self.rank[id as usize], position, "entry rank out of step");
        }
        let held = self.rank.iter().filter(|&&rank| rank != FREE).count();
        assert_eq!(held, self.ids.len(), "an id held by no position");
        assert_eq!(held + self.free.len(), self.rank.len(), "an id neither held nor free");
    }
}

/// The access policy compiled against the tailnet, kept current node by node.
pub struct PolicyEngine {
    /// `None`: no policy, everyone reaches everyone.
    policy: Option<Policy>,
    users: Vec<User>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    /// The untagged devices of each user.
    by_user: BTreeMap<UserId, BTreeSet<NodeId>>,
    /// Approved subnet routes, with how many nodes approve each.
    routes: BTreeMap<IpRange, usize>,
    acls: Vec<AclState>,
    compiled: Vec<CompiledAcl>,
    ranks: Ranks,
    memberships: BTreeMap<NodeId, Membership>,
    /// The tagged nodes of each tag.
    by_tag: BTreeMap<String, BTreeSet<NodeId>>,
    tagged: BTreeSet<NodeId>,
    untagged: BTreeSet<NodeId>,
    /// Every node's addresses, as (v6, address, node).
    by_addr: BTreeSet<(bool, u128, NodeId)>,
    /// The nodes with approved routes.
    routers: BTreeSet<NodeId>,
    /// Each rule key (sources, protocols) and the entries that have it: rules with one key
    /// merge, so an entry's key change reorders the rules of entries sharing its keys.
    keys: BTreeMap<RuleKey, BTreeSet<usize>>,
    /// Per entry with a key: the first entry with the same key (where merged rules sit).
    key_first: Vec<usize>,
    internet: IpSet,
    /// Entries whose sources hold `*`.
    wildcard_sources: Vec<usize>,
    /// Entries whose destinations hold `*`.
    wildcard_destinations: Vec<usize>,
    /// Entries with an `autogroup:self` destination.
    self_entries: Vec<usize>,
}

/// What the engine's compiled entries ask of the tailnet: its own indexes.
struct Named<'e>(&'e PolicyEngine);

impl Tailnet for Named<'_> {
    fn named_ranges(&self, _policy: &Policy, acl: usize, slot: Slot) -> Vec<IpRange> {
        let state = &self.0.acls[acl];
        let ids = match slot {
            Slot::Source => &state.src_named,
            Slot::Destination(position) => &state.dst_named[position],
        };
        ids.iter().filter_map(|id| self.0.nodes.get(id)).flat_map(node_ranges).collect()
    }

    fn wildcard_strings(&self) -> Vec<String> {
        let mut strings: Vec<String> =
            WILDCARD_SOURCE_STRINGS.iter().map(|s| s.to_string()).collect();
        strings.extend(self.0.routes.keys().map(ToString::to_string));
        strings
    }
}

/// Sources and protocols: what rules merge by, after the sources' hash (`strings_hash`), so
/// that comparing two keys seldom reads the sources' lists (cold memory in a large tailnet).
type RuleKey = (u64, Sources, Vec<u8>);

/// The key an entry's ordinary rule merges by; `None` when it gives no such rule (no sources
/// or no destinations), so that gaining or losing the rule counts as a change of key.
fn key_of(compiled: &CompiledAcl) -> Option<RuleKey> {
    let gives_rule = !compiled.src_strings.is_empty() && !compiled.entries.is_empty();
    debug_assert_eq!(compiled.src_hash, strings_hash(&compiled.src_strings));
    let sources = compiled.src_strings.clone();
    gives_rule.then(|| (compiled.src_hash, sources, compiled.protocols.clone()))
}

impl PolicyEngine {
    /// Headscale's default without a policy: every node reaches every node on every port.
    pub fn allow_all() -> PolicyEngine {
        PolicyEngine::with(None, Vec::new())
    }

    /// An engine for `policy` and `users`, with no nodes yet.
    pub fn new(policy: Policy, users: Vec<User>) -> PolicyEngine {
        PolicyEngine::with(Some(policy), users)
    }

    fn with(policy: Option<Policy>, mut users: Vec<User>) -> PolicyEngine {
        assert!(users.len() <= USERS_MAX, "more users than USERS_MAX");
        users.sort_by_key(|user| user.id);
        let mut engine = PolicyEngine {
            policy,
            users,
            nodes: BTreeMap::new(),
            by_user: BTreeMap::new(),
            routes: BTreeMap::new(),
            acls: Vec::new(),
            compiled: Vec::new(),
            ranks: Ranks::default(),
            memberships: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            tagged: BTreeSet::new(),
            untagged: BTreeSet::new(),
            by_addr: BTreeSet::new(),
            routers: BTreeSet::new(),
            keys: BTreeMap::new(),
            key_first: Vec::new(),
            internet: internet(),
            wildcard_sources: Vec::new(),
            wildcard_destinations: Vec::new(),
            self_entries: Vec::new(),
        };
        engine.rebuild();
        engine
    }

    /// Whether `node` may have `route` approved without an admin (`Policy::auto_approves`
    /// with the engine's users); never without a policy.
    pub fn auto_approves(&self, node: &NodeInfo, route: wireguard::IpNet) -> bool {
        self.policy.as_ref().is_some_and(|policy| policy.auto_approves(node, route, &self.users))
    }

    /// The policy (`None` when everyone reaches everyone).
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// Drops the policy: everyone reaches everyone again. Every node may be affected.
    pub fn clear_policy(&mut self) -> Affected {
        self.policy = None;
        self.rebuild();
        self.everyone()
    }

    fn everyone(&self) -> Affected {
        let all: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        Affected { peers: all.clone(), filters: all }
    }

    /// Recomputes every index and every compiled entry from the nodes, users and policy.
    fn rebuild(&mut self) {
        self.rebuild_reusing(None);
    }

    /// `rebuild`, taking the compiled form of an entry from `reuse` (the previous policy's)
    /// when that policy had the same entry with the same members and the same names for
    /// them (groups, tag owners, hosts): compiling formats every member's addresses, most of
    /// what an edit of one entry among many would cost.
    fn rebuild_reusing(&mut self, reuse: Option<&Reuse<'_>>) {
        let Some(policy) = self.policy.as_ref() else {
            self.wildcard_sources.clear();
            self.wildcard_destinations.clear();
            self.self_entries.clear();
            self.acls.clear();
            self.compiled.clear();
            self.keys.clear();
            self.key_first.clear();
            self.memberships.clear();
            self.ranks = Ranks::default();
            return;
        };
        let reuse = reuse.filter(|reuse| reuse.names_match(policy));
        let kept = match reuse {
            Some(reuse) => reuse.match_texts(&policy.acls),
            None => vec![None; policy.acls.len()],
        };
        self.acls = policy
            .acls
            .iter()
            .zip(&kept)
            .map(|(acl, kept)| match (reuse, kept) {
                (Some(reuse), Some(old)) => reuse.acls[*old].clone(),
                _ => AclState::flags_of(acl),
            })
            .collect();
        self.rebuild_memberships(&kept);
        self.compiled.clear();
        for (index, kept) in kept.iter().enumerate() {
            let compiled = match reuse.zip(*kept) {
                Some((reuse, old)) => {
                    let reused = &reuse.compiled[old];
                    debug_assert!(self.nodes.len() > 64 || *reused == self.compile(index));
                    reused.clone()
                }
                None => self.compile(index),
            };
            self.compiled.push(compiled);
        }
        self.index_entries();
    }

    /// Recomputes what is kept per entry position from the entries: the wildcard and self
    /// lists and the rule keys (the policy's size).
    fn index_entries(&mut self) {
        assert_eq!(self.compiled.len(), self.acls.len());
        let flagged = |flag: fn(&AclState) -> bool| -> Vec<usize> {
            (0..self.acls.len()).filter(|&index| flag(&self.acls[index])).collect()
        };
        self.wildcard_sources = flagged(|state| state.src_all);
        self.wildcard_destinations = flagged(|state| state.dst_all);
        self.self_entries = flagged(|state| state.has_self);
        self.keys.clear();
        for (index, compiled) in self.compiled.iter().enumerate() {
            if let Some(key) = key_of(compiled) {
                self.keys.entry(key).or_default().insert(index);
            }
        }
        self.key_first = (0..self.acls.len()).collect();
        let keys: Vec<RuleKey> = self.keys.keys().cloned().collect();
        self.refresh_key_first(keys.iter());
    }

    /// Points every entry holding one of `keys` at the first entry with that key.
    fn refresh_key_first<'k>(&mut self, keys: impl Iterator<Item = &'k RuleKey>) {
        for key in keys {
            let Some(entries) = self.keys.get(key) else { continue };
            let first = *entries.first().expect("indexed keys have entries");
            for &index in entries {
                self.key_first[index] = first;
            }
        }
    }

    /// A node's rules from the entries that concern it only: an entry's rule sits where the
    /// first entry with its key sits (`key_first`), which is where merging puts it, so the
    /// entries that do not concern the node need not be walked.
    fn relevant_rules(&self, node: &NodeInfo, devices: &[&NodeInfo]) -> Vec<FilterRule> {
        self.pending_rules(node, devices)
            .into_iter()
            .map(|slot| FilterRule {
                src_ips: slot.src,
                dst_ports: slot.dst_ports,
                ip_proto: slot.protocols,
            })
            .collect()
    }

    /// What `relevant_rules` gives, in order, with the sources still borrowed where they can be.
    fn pending_rules(&self, node: &NodeInfo, devices: &[&NodeInfo]) -> Vec<PendingSlot> {
        let membership = &self.memberships[&node.id];
        let mut entries: BTreeSet<usize> =
            membership.dst.iter().map(|&id| self.ranks.of(id)).collect();
        entries.extend(&self.wildcard_destinations);
        let owner = node.user.filter(|_| node.tags.is_empty());
        if owner.is_some() {
            entries.extend(&self.self_entries);
        }
        let mut slots: BTreeMap<SlotKey, PendingSlot> = BTreeMap::new();
        for index in entries {
            let with_self = owner.is_some() && !self.compiled[index].self_ports.is_empty();
            if with_self && self.compiled[index].self_first {
                self.push_self(&mut slots, index, node, devices);
            }
            self.push_global(&mut slots, index, node);
            if with_self && !self.compiled[index].self_first {
                self.push_self(&mut slots, index, node, devices);
            }
        }
        let mut slots: Vec<PendingSlot> = slots.into_values().collect();
        slots.sort_by_key(|slot| slot.position);
        slots.retain(|slot| !slot.dst_ports.is_empty());
        slots
    }

    /// Adds an entry's ordinary rule (if it gives one) to its slot.
    fn push_global(
        &self,
        slots: &mut BTreeMap<SlotKey, PendingSlot>,
        index: usize,
        node: &NodeInfo,
    ) {
        let compiled = &self.compiled[index];
        if key_of_ref(compiled).is_none() {
            return;
        }
        let first = self.key_first[index];
        debug_assert!(first <= index && key_of(&self.compiled[first]) == key_of(compiled));
        let position = (first, u8::from(self.compiled[first].self_first));
        let slot = slots.entry(SlotKey::Global(first)).or_insert_with(|| PendingSlot {
            position,
            src: self.compiled[first].src_strings.clone(),
            src_hash: self.compiled[first].src_hash,
            protocols: compiled.protocols.clone(),
            dst_ports: Vec::new(),
        });
        let start = slot.dst_ports.len();
        for_each_concerning(compiled, node, &self.internet, |entry| {
            slot.dst_ports.push(NetPortRange { ip: entry.ip.clone(), ports: entry.ports });
        });
        debug_assert!(
            compiled.entries.len() > 64 || {
                let mut scanned = Vec::new();
                PendingSlot::concerning(&compiled.entries, node, &self.internet, &mut scanned);
                slot.dst_ports[start..] == scanned
            }
        );
    }

    /// Adds an entry's `autogroup:self` rule for `node` (one of `devices`) to its slot.
    fn push_self(
        &self,
        slots: &mut BTreeMap<SlotKey, PendingSlot>,
        index: usize,
        node: &NodeInfo,
        devices: &[&NodeInfo],
    ) {
        let compiled = &self.compiled[index];
        let Some((src, self_entries)) = self_rule(compiled, devices) else { return };
        let position = (index, u8::from(!compiled.self_first));
        let src = Sources::new(src);
        let key = (strings_hash(&src), src, compiled.protocols.clone());
        // A self rule whose key an ordinary rule has merges into that rule's place, which is
        // the first entry with the key whether or not that entry concerns this node.
        let (slot_key, initial) = match self.keys.get(&key).and_then(|found| found.first()) {
            Some(&first) => {
                let first = self.key_first[first];
                (SlotKey::Global(first), (first, u8::from(self.compiled[first].self_first)))
            }
            None => (SlotKey::Own(key.clone()), position),
        };
        let slot = slots.entry(slot_key).or_insert_with(|| PendingSlot {
            position: initial,
            src_hash: key.0,
            src: key.1,
            protocols: key.2,
            dst_ports: Vec::new(),
        });
        slot.position = slot.position.min(position);
        slot.extend(&self_entries, node, &self.internet);
    }

    /// Finds the members of every entry not kept (`kept[index]` is `None`) from the engine's
    /// indexes (the policy's size plus its members, not entries times nodes); with `verify`,
    /// checks those of kept entries too.
    fn fill_states(&mut self, kept: &[Option<usize>], verify: bool) {
        let fresh: Vec<Option<AclState>> = (0..self.acls.len())
            .map(|index| {
                let wanted = kept[index].is_none() || verify;
                wanted.then(|| self.members_of(index, &self.acls[index]))
            })
            .collect();
        for ((current, fresh), kept) in self.acls.iter_mut().zip(fresh).zip(kept) {
            let Some(fresh) = fresh else { continue };
            if kept.is_some() {
                assert_eq!(fresh, *current, "a kept entry's members changed");
            } else {
                *current = fresh;
            }
        }
    }

    /// Fills the member sets of the entries not kept, gives every entry a fresh id and
    /// rebuilds every node's `Membership` from the sets: what `membership_of` gives node by
    /// node.
    fn rebuild_memberships(&mut self, kept: &[Option<usize>]) {
        // Kept entries come with their members; small tailnets check them in debug builds.
        let verify = cfg!(debug_assertions) && self.nodes.len() <= 64;
        if verify || kept.iter().any(Option::is_none) {
            self.fill_states(kept, verify);
        }
        self.ranks = Ranks::fresh(self.acls.len());
        let mut memberships: BTreeMap<NodeId, Membership> =
            self.nodes.keys().map(|&id| (id, Membership::default())).collect();
        for index in 0..self.acls.len() {
            add_memberships(&self.acls[index], self.ranks.id(index), &mut memberships);
        }
        self.memberships = memberships;
        self.debug_check_memberships();
    }

    /// In debug builds of small tailnets: every node's memberships are what `membership_of`
    /// finds from scratch.
    fn debug_check_memberships(&self) {
        debug_assert!(self.nodes.values().all(|node| {
            self.nodes.len() > 64
                || self.memberships[&node.id].clone().sorted() == self.membership_of(node).sorted()
        }));
    }

    fn compile(&self, index: usize) -> CompiledAcl {
        let policy = self.policy.as_ref().expect("entries exist only under a policy");
        compile_acl(policy, &Named(self), index)
    }

    /// Which entries a node is in.
    fn membership_of(&self, node: &NodeInfo) -> Membership {
        let mut membership = Membership::default();
        let Some(policy) = self.policy.as_ref() else { return membership };
        let names = |alias: &Alias| {
            is_node_level(alias) && alias_names_node(policy, alias, node, &self.users)
        };
        let own = node_ranges(node);
        for (index, acl) in policy.acls.iter().enumerate() {
            let id = self.ranks.id(index);
            let named = acl.sources.iter().any(names);
            let mut literal = Vec::new();
            acl.sources.iter().for_each(|alias| push_literal(policy, alias, &mut literal));
            if named {
                membership.src_named.push(id);
            }
            if named || literal.iter().any(|range| own.iter().any(|r| range.covers(r))) {
                membership.src.push(id);
            }
            let mut concerned = false;
            for (position, destination) in acl.destinations.iter().enumerate() {
                if names(&destination.alias) {
                    membership.dst_named.push((id, position));
                    concerned = true;
                }
                let mut literal = Vec::new();
                push_literal(policy, &destination.alias, &mut literal);
                concerned |= literal.iter().any(|r| entry_concerns(Some(r), node, &self.internet));
            }
            if concerned {
                membership.dst.push(id);
            }
        }
        membership
    }

    fn enter(&mut self, id: NodeId, membership: &Membership) {
        let ranks = &self.ranks;
        for &entry in &membership.src_named {
            self.acls[ranks.of(entry)].src_named.insert(id);
        }
        for &entry in &membership.src {
            self.acls[ranks.of(entry)].src_nodes.insert(id);
        }
        for &(entry, position) in &membership.dst_named {
            self.acls[ranks.of(entry)].dst_named[position].insert(id);
        }
        for &entry in &membership.dst {
            self.acls[ranks.of(entry)].dst_nodes.insert(id);
        }
    }

    fn leave(&mut self, id: NodeId, membership: &Membership) {
        let ranks = &self.ranks;
        for &entry in &membership.src_named {
            let removed = self.acls[ranks.of(entry)].src_named.remove(&id);
            assert!(removed, "membership out of step");
        }
        for &entry in &membership.src {
            let removed = self.acls[ranks.of(entry)].src_nodes.remove(&id);
            assert!(removed, "membership out of step");
        }
        for &(entry, position) in &membership.dst_named {
            let removed = self.acls[ranks.of(entry)].dst_named[position].remove(&id);
            assert!(removed, "membership out of step");
        }
        for &entry in &membership.dst {
            let removed = self.acls[ranks.of(entry)].dst_nodes.remove(&id);
            assert!(removed, "membership out of step");
        }
    }

    /// Adds or removes a node from the user, tag, address and route indexes.
    fn index_node(&mut self, node: &NodeInfo, add: bool) {
        self.index_names(node, add);
        if let Some(user) = node.user.filter(|_| node.tags.is_empty()) {
            let devices = self.by_user.entry(user).or_default();
            if add {
                devices.insert(node.id);
            } else {
                devices.remove(&node.id);
                if devices.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
        let routes: BTreeSet<IpRange> = subnet_routes(node).collect();
        for route in routes {
            let count = self.routes.entry(route).or_insert(0);
            if add {
                *count += 1;
            } else {
                assert!(*count > 0, "route count out of step");
                *count -= 1;
                if *count == 0 {
                    self.routes.remove(&route);
                }
            }
        }
    }
}

impl PolicyEngine {
    /// Adds or removes a node from the indexes aliases and literals resolve by.
    fn index_names(&mut self, node: &NodeInfo, add: bool) {
        fn toggle<T: Ord>(set: &mut BTreeSet<T>, item: T, add: bool) {
            let changed = if add { set.insert(item) } else { set.remove(&item) };
            assert!(changed, "name index out of step");
        }
        let id = node.id;
        if node.tags.is_empty() {
            toggle(&mut self.untagged, id, add);
        } else {
            toggle(&mut self.tagged, id, add);
            let tags: BTreeSet<&String> = node.tags.iter().collect();
            for tag in tags {
                let holders = self.by_tag.entry(tag.clone()).or_default();
                toggle(holders, id, add);
                if holders.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        for range in node_ranges(node) {
            toggle(&mut self.by_addr, (range.v6, range.first, id), add);
        }
        if !node.approved_routes.is_empty() {
            toggle(&mut self.routers, id, add);
        }
    }

    /// Calls `visit` on every node a node-level alias names (others name none here), from the
    /// engine's indexes: what `Index::for_each_named` finds, at the cost of what it returns.
    fn for_each_named(&self, policy: &Policy, alias: &Alias, mut visit: impl FnMut(NodeId)) {
        let mut visit_all = |ids: Option<&BTreeSet<NodeId>>| {
            ids.into_iter().flatten().for_each(|&id| visit(id));
        };
        let user_ids = |tokens: &[String]| -> BTreeSet<UserId> {
            let named = |user: &&User| tokens.iter().any(|token| token_names_user(token, user));
            self.users.iter().filter(named).map(|user| user.id).collect()
        };
        match alias {
            Alias::User(token) => {
                let ids = user_ids(std::slice::from_ref(token));
                ids.iter().for_each(|user| visit_all(self.by_user.get(user)));
            }
            Alias::Group(name) => {
                let members = policy.groups.get(name).map(Vec::as_slice).unwrap_or_default();
                user_ids(members).iter().for_each(|user| visit_all(self.by_user.get(user)));
            }
            Alias::Tag(tag) => visit_all(self.by_tag.get(tag.as_str())),
            Alias::Member => visit_all(Some(&self.untagged)),
            Alias::Tagged => visit_all(Some(&self.tagged)),
            _ => debug_assert!(!is_node_level(alias)),
        }
    }

    /// Adds the nodes holding an address in `range`.
    fn covered(&self, range: &IpRange, out: &mut BTreeSet<NodeId>) {
        let within = (range.v6, range.first, NodeId::MIN)..=(range.v6, range.last, NodeId::MAX);
        out.extend(self.by_addr.range(within).map(|&(_, _, id)| id));
    }

    /// Who is in the entry at `position`, from the indexes: the cost of its members (and its
    /// literals' lookups), not of the tailnet. The flags are `flags`'.
    fn members_of(&self, position: usize, flags: &AclState) -> AclState {
        let policy = self.policy.as_ref().expect("entries exist only under a policy");
        let acl = &policy.acls[position];
        let mut state = AclState {
            src_all: flags.src_all,
            dst_all: flags.dst_all,
            has_self: flags.has_self,
            dst_named: vec![BTreeSet::new(); acl.destinations.len()],
            ..AclState::default()
        };
        let mut literal = Vec::new();
        for alias in &acl.sources {
            self.for_each_named(policy, alias, |id| {
                state.src_named.insert(id);
            });
            push_literal(policy, alias, &mut literal);
        }
        literal.iter().for_each(|range| self.covered(range, &mut state.src_nodes));
        state.src_nodes.extend(state.src_named.iter().copied());
        for (position, destination) in acl.destinations.iter().enumerate() {
            let named = &mut state.dst_named[position];
            self.for_each_named(policy, &destination.alias, |id| {
                named.insert(id);
            });
            state.dst_nodes.extend(named.iter().copied());
            literal.clear();
            push_literal(policy, &destination.alias, &mut literal);
            for range in &literal {
                self.covered(range, &mut state.dst_nodes);
                let routers = self.routers.iter().filter_map(|id| self.nodes.get(id));
                let concerned =
                    routers.filter(|router| entry_concerns(Some(range), router, &self.internet));
                state.dst_nodes.extend(concerned.map(|router| router.id));
            }
        }
        state
    }

    /// Nodes on the source side of an entry.
    fn sources_of(&self, index: usize, out: &mut BTreeSet<NodeId>) {
        let state = &self.acls[index];
        if state.src_all {
            out.extend(self.nodes.keys().copied());
        } else {
            out.extend(state.src_nodes.iter().copied());
        }
    }

    /// Nodes on the destination side of an entry.
    fn destinations_of(&self, index: usize, out: &mut BTreeSet<NodeId>) {
        let state = &self.acls[index];
        if state.dst_all {
            out.extend(self.nodes.keys().copied());
        } else {
            out.extend(state.dst_nodes.iter().copied());
        }
    }

    /// Applies one node's change (`None`: gone) and reports what it affects.
    fn apply(&mut self, id: NodeId, new: Option<NodeInfo>) -> Affected {
        let old = self.nodes.get(&id).cloned();
        if !policy_fields_differ(old.as_ref(), new.as_ref()) {
            if let Some(node) = new {
                self.nodes.insert(id, node);
            }
            return Affected::default();
        }
        let presence_changed = old.is_some() != new.is_some();
        if self.policy.is_none() {
            self.replace_node(id, old.as_ref(), new);
            let mut affected = Affected::default();
            if presence_changed {
                affected.peers = self.nodes.keys().copied().collect();
            }
            affected.peers.insert(id);
            affected.filters.insert(id);
            return affected;
        }
        let old_membership = self.memberships.remove(&id).unwrap_or_default();
        let new_membership = new.as_ref().map(|n| self.membership_of(n)).unwrap_or_default();
        self.leave(id, &old_membership);
        let routes_before = self.routes.len();
        let routes_changed = self.replace_node(id, old.as_ref(), new.clone());
        debug_assert!(routes_changed || self.routes.len() == routes_before);
        if new.is_some() {
            self.enter(id, &new_membership);
            self.memberships.insert(id, new_membership.clone());
        }
        let memberships = [&old_membership, &new_membership];
        let addresses = |node: &Option<NodeInfo>| node.as_ref().map(|n| (n.ipv4, n.ipv6));
        let addresses_changed = addresses(&old) != addresses(&new);
        let mut affected = Affected::default();
        affected.peers.insert(id);
        affected.filters.insert(id);
        let recompile = self.entries_to_recompile(memberships, addresses_changed, routes_changed);
        let mut changed_keys = BTreeSet::new();
        for index in recompile {
            self.recompile(index, &mut affected.filters, &mut changed_keys);
        }
        // Rules merge by key, so the entries sharing a changed key may reorder their nodes'
        // rules; each shared key costs its entries once per change, not once per entry.
        for key in &changed_keys {
            for &other in self.keys.get(key).into_iter().flatten() {
                self.destinations_of(other, &mut affected.filters);
            }
        }
        self.refresh_key_first(changed_keys.iter());
        let users = [&old, &new]
            .map(|node| node.as_ref().and_then(|n| n.user.filter(|_| n.tags.is_empty())));
        if !self.self_entries.is_empty() {
            for user in users.into_iter().flatten() {
                let devices = self.by_user.get(&user).into_iter().flatten().copied();
                let devices: Vec<NodeId> = devices.collect();
                affected.filters.extend(&devices);
                affected.peers.extend(&devices);
            }
        }
        self.peers_affected(memberships, presence_changed, &mut affected.peers);
        affected
    }

    /// Puts a node's new version in place of the old in the node, user and route indexes;
    /// reports whether the set of approved subnet routes changed.
    fn replace_node(&mut self, id: NodeId, old: Option<&NodeInfo>, new: Option<NodeInfo>) -> bool {
        let routes_before: Vec<IpRange> = [old, new.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(subnet_routes)
            .filter(|route| self.routes.contains_key(route))
            .collect();
        if let Some(old) = old {
            self.index_node(old, false);
        }
        match new {
            Some(node) => {
                assert!(self.nodes.len() < NODES_MAX || self.nodes.contains_key(&id), "NODES_MAX");
                self.index_node(&node, true);
                self.nodes.insert(id, node);
            }
            None => {
                self.nodes.remove(&id);
            }
        }
        let touched: BTreeSet<IpRange> =
            [old, self.nodes.get(&id)].into_iter().flatten().flat_map(subnet_routes).collect();
        let before: BTreeSet<IpRange> = routes_before.into_iter().collect();
        touched.iter().any(|route| before.contains(route) != self.routes.contains_key(route))
    }

    /// The entries whose compiled form a node's change may alter.
    fn entries_to_recompile(
        &self,
        memberships: [&Membership; 2],
        addresses_changed: bool,
        routes_changed: bool,
    ) -> BTreeSet<usize> {
        let [old, new] = memberships;
        let dst_old: Vec<EntryId> = old.dst_named.iter().map(|&(id, _)| id).collect();
        let dst_new: Vec<EntryId> = new.dst_named.iter().map(|&(id, _)| id).collect();
        let ids = if addresses_changed {
            let mut ids = sorted_union(&old.src_named, &new.src_named);
            ids.extend(sorted_union(&dst_old, &dst_new));
            ids
        } else {
            let mut ids = symmetric_difference(&old.src_named, &new.src_named);
            let pairs = symmetric_difference(&old.dst_named, &new.dst_named);
            ids.extend(pairs.iter().map(|&(id, _)| id));
            ids
        };
        let mut entries: BTreeSet<usize> = ids.into_iter().map(|id| self.ranks.of(id)).collect();
        if routes_changed {
            entries.extend(self.wildcard_sources.iter().copied());
        }
        entries
    }

    /// Recompiles one entry; adds the nodes whose filters it may change, and its old and new
    /// keys if they differ.
    fn recompile(
        &mut self,
        index: usize,
        filters: &mut BTreeSet<NodeId>,
        changed_keys: &mut BTreeSet<RuleKey>,
    ) {
        let compiled = self.compile(index);
        let old_key = key_of(&self.compiled[index]);
        let new_key = key_of(&compiled);
        self.destinations_of(index, filters);
        if old_key != new_key {
            changed_keys.extend([&old_key, &new_key].into_iter().flatten().cloned());
            if !self.self_entries.is_empty() {
                let untagged = self.acls[index]
                    .src_nodes
                    .iter()
                    .filter(|id| self.nodes.get(id).is_some_and(|node| node.tags.is_empty()));
                filters.extend(untagged);
            }
            if let Some(old_key) = old_key {
                let old_entries = self.keys.get_mut(&old_key).expect("every key is indexed");
                assert!(old_entries.remove(&index), "key index out of step");
                if old_entries.is_empty() {
                    self.keys.remove(&old_key);
                }
            }
            if let Some(new_key) = new_key {
                self.keys.entry(new_key).or_default().insert(index);
            }
        }
        self.compiled[index] = compiled;
    }

    /// Adds the nodes whose peers a node's change of membership may alter.
    fn peers_affected(
        &self,
        memberships: [&Membership; 2],
        presence_changed: bool,
        peers: &mut BTreeSet<NodeId>,
    ) {
        let [old, new] = memberships;
        let ranks = |ids: BTreeSet<EntryId>| -> BTreeSet<usize> {
            ids.into_iter().map(|id| self.ranks.of(id)).collect()
        };
        let mut src_changed = ranks(symmetric_difference(&old.src, &new.src));
        let mut dst_changed = ranks(symmetric_difference(&old.dst, &new.dst));
        if presence_changed {
            src_changed.extend(self.wildcard_sources.iter().copied());
            dst_changed.extend(self.wildcard_destinations.iter().copied());
        }
        for index in src_changed {
            self.destinations_of(index, peers);
        }
        for index in dst_changed {
            self.sources_of(index, peers);
        }
    }
}

impl PolicyView for PolicyEngine {
    fn upsert_node(&mut self, node: &NodeInfo) -> Affected {
        let affected = self.apply(node.id, Some(node.clone()));
        debug_assert!(affected.filters.is_empty() || affected.filters.contains(&node.id));
        affected
    }

    fn remove_node(&mut self, node: NodeId) -> Affected {
        if !self.nodes.contains_key(&node) {
            return Affected::default();
        }
        // The removed node stays in the report: its own answers changed (to nothing).
        let affected = self.apply(node, None);
        assert!(!self.memberships.contains_key(&node));
        affected
    }

    fn upsert_user(&mut self, user: &User) -> Affected {
        match self.users.binary_search_by_key(&user.id, |own| own.id) {
            Ok(index) if self.users[index] == *user => return Affected::default(),
            Ok(index) => self.users[index] = user.clone(),
            Err(index) => {
                assert!(self.users.len() < USERS_MAX, "more users than USERS_MAX");
                self.users.insert(index, user.clone());
            }
        }
        // A user's name or e-mail changes what aliases name: rare, so a full rebuild.
        self.rebuild();
        self.everyone()
    }

    fn set_policy(&mut self, policy: Option<&Policy>) -> Option<Affected> {
        Some(match policy {
            Some(policy) => PolicyEngine::set_policy(self, policy.clone()),
            None => self.clear_policy(),
        })
    }

    fn load_nodes(&mut self, nodes: &[NodeInfo]) {
        for node in nodes {
            if let Some(old) = self.nodes.remove(&node.id) {
                self.index_node(&old, false);
            }
            assert!(self.nodes.len() < NODES_MAX, "more nodes than NODES_MAX");
            self.index_node(node, true);
            self.nodes.insert(node.id, node.clone());
        }
        // One rebuild: the policy's size plus its members, where one upsert per node would
        // cost each node's affected nodes (every node, under `*`).
        self.rebuild();
    }

    fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        let Some(info) = self.nodes.get(&node) else { return Vec::new() };
        if self.policy.is_none() {
            // Every other node, already in order: no set to build (this is the whole row).
            return self.nodes.keys().copied().filter(|&peer| peer != node).collect();
        }
        // The entries' member sets are gathered, then sorted once: cheaper than a set insert
        // per member, since a node's entries often share members.
        let mut gathered: Vec<NodeId> = Vec::new();
        let membership = &self.memberships[&node];
        let wildcard_src = self.wildcard_sources.iter().copied();
        let src = membership.src.iter().map(|&id| self.ranks.of(id));
        for index in src.chain(wildcard_src) {
            let state = &self.acls[index];
            if state.dst_all {
                return self.nodes.keys().copied().filter(|&peer| peer != node).collect();
            }
            gathered.extend(&state.dst_nodes);
        }
        let wildcard_dst = self.wildcard_destinations.iter().copied();
        let dst = membership.dst.iter().map(|&id| self.ranks.of(id));
        for index in dst.chain(wildcard_dst) {
            let state = &self.acls[index];
            if state.src_all {
                return self.nodes.keys().copied().filter(|&peer| peer != node).collect();
            }
            gathered.extend(&state.src_nodes);
        }
        let mut own = BTreeSet::new();
        self.self_peers(info, &mut own);
        gathered.extend(own);
        gathered.sort_unstable();
        gathered.dedup();
        gathered.retain(|&peer| peer != node);
        debug_assert!(gathered.iter().all(|peer| self.nodes.contains_key(peer)));
        gathered
    }

    fn filter_for(&self, node: NodeId) -> Vec<FilterRule> {
        let Some(info) = self.nodes.get(&node) else { return Vec::new() };
        if self.policy.is_none() {
            let everything = NetPortRange { ip: "*".into(), ports: PortRange::ANY };
            return vec![FilterRule {
                src_ips: Sources::new(vec!["*".into()]),
                dst_ports: vec![everything],
                ip_proto: Vec::new(),
            }];
        }
        let devices = self.devices_of(info);
        let rules = self.relevant_rules(info, &devices);
        debug_assert!(self.nodes.len() > 64 || rules == rules_for(&self.compiled, &devices, info));
        debug_assert!(self.nodes.len() > 64 || self.filter_digest(node) == rules_digest(&rules));
        rules
    }

    fn filter_digest(&self, node: NodeId) -> u64 {
        let Some(info) = self.nodes.get(&node) else { return rules_digest(&[]) };
        if self.policy.is_none() {
            return rules_digest(&self.filter_for(node));
        }
        let devices = self.devices_of(info);
        let slots = self.pending_rules(info, &devices);
        let mut hasher = DefaultHasher::new();
        slots.len().hash(&mut hasher);
        for slot in &slots {
            debug_assert_eq!(slot.src_hash, strings_hash(&slot.src));
            (slot.src_hash, &slot.protocols, &slot.dst_ports).hash(&mut hasher);
        }
        hasher.finish()
    }
}

impl PolicyEngine {
    /// The untagged devices of a node's user (none for a tagged node).
    fn devices_of(&self, node: &NodeInfo) -> Vec<&NodeInfo> {
        let user = node.user.filter(|_| node.tags.is_empty());
        user.and_then(|user| self.by_user.get(&user))
            .into_iter()
            .flatten()
            .filter_map(|id| self.nodes.get(id))
            .collect()
    }

    /// The devices of a node's user it exchanges packets with through `autogroup:self`.
    fn self_peers(&self, node: &NodeInfo, peers: &mut BTreeSet<NodeId>) {
        let Some(user) = node.user.filter(|_| node.tags.is_empty()) else { return };
        let Some(devices) = self.by_user.get(&user) else { return };
        for state in self.self_entries.iter().map(|&index| &self.acls[index]) {
            if state.src_all || state.src_named.contains(&node.id) {
                peers.extend(devices.iter().copied());
            } else {
                peers.extend(devices.iter().filter(|id| state.src_named.contains(id)));
            }
        }
    }
}

/// Which merged rule a slot is: the first entry with a key, or a key only self rules have.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Global(usize),
    Own(RuleKey),
}

/// A rule in the making for one node.
struct PendingSlot {
    /// Where it sits: (entry, 0 for its first rule, 1 for its second).
    position: (usize, u8),
    src: Sources,
    /// `strings_hash(src)`, kept with the compiled entry for borrowed sources.
    src_hash: u64,
    protocols: Vec<u8>,
    dst_ports: Vec<NetPortRange>,
}

impl PendingSlot {
    fn extend(&mut self, entries: &[Entry], node: &NodeInfo, internet: &IpSet) {
        PendingSlot::concerning(entries, node, internet, &mut self.dst_ports);
    }

    /// Adds the entries that concern `node`, by a scan.
    fn concerning(
        entries: &[Entry],
        node: &NodeInfo,
        internet: &IpSet,
        out: &mut Vec<NetPortRange>,
    ) {
        let concerning =
            entries.iter().filter(|e| entry_concerns(e.range.as_ref(), node, internet));
        out.extend(concerning.map(|e| NetPortRange { ip: e.ip.clone(), ports: e.ports }));
    }
}

/// A filter's digest as `filter_digest` computes it: per rule the hash of its sources, its
/// protocols and its destinations. A function of the rules alone, so two engines agree.
fn rules_digest(rules: &[FilterRule]) -> u64 {
    let mut hasher = DefaultHasher::new();
    rules.len().hash(&mut hasher);
    for rule in rules {
        (strings_hash(&rule.src_ips), &rule.ip_proto, &rule.dst_ports).hash(&mut hasher);
    }
    hasher.finish()
}

/// Whether an entry gives an ordinary rule (what `key_of` answers, without copying).
fn key_of_ref(compiled: &CompiledAcl) -> Option<()> {
    (!compiled.src_strings.is_empty() && !compiled.entries.is_empty()).then_some(())
}

/// Whether two versions of a node differ in anything the policy reads.
fn policy_fields_differ(old: Option<&NodeInfo>, new: Option<&NodeInfo>) -> bool {
    let fields = |node: &NodeInfo| {
        (node.user, node.tags.clone(), node.ipv4, node.ipv6, node.approved_routes.clone())
    };
    old.map(fields) != new.map(fields)
}

fn sorted_union<T: Ord + Copy>(a: &[T], b: &[T]) -> BTreeSet<T> {
    a.iter().chain(b).copied().collect()
}

fn symmetric_difference<T: Ord + Copy>(a: &[T], b: &[T]) -> BTreeSet<T> {
    let a: BTreeSet<T> = a.iter().copied().collect();
    let b: BTreeSet<T> = b.iter().copied().collect();
    a.symmetric_difference(&b).copied().collect()
}

/// Adds entry `id` (whose members `state` lists) to its members' memberships.
fn add_memberships(state: &AclState, id: EntryId, memberships: &mut BTreeMap<NodeId, Membership>) {
    fn member<'m>(map: &'m mut BTreeMap<NodeId, Membership>, node: &NodeId) -> &'m mut Membership {
        map.get_mut(node).expect("a known node")
    }
    for node in &state.src_named {
        member(memberships, node).src_named.push(id);
    }
    for node in &state.src_nodes {
        member(memberships, node).src.push(id);
    }
    for (position, named) in state.dst_named.iter().enumerate() {
        for node in named {
            member(memberships, node).dst_named.push((id, position));
        }
    }
    for node in &state.dst_nodes {
        member(memberships, node).dst.push(id);
    }
}

/// Takes entry `id` (whose members `state` lists) out of its members' memberships.
fn drop_memberships(state: &AclState, id: EntryId, memberships: &mut BTreeMap<NodeId, Membership>) {
    let named = state.dst_named.iter().flatten();
    let members: BTreeSet<&NodeId> = state
        .src_named
        .iter()
        .chain(&state.src_nodes)
        .chain(&state.dst_nodes)
        .chain(named)
        .collect();
    for node in members {
        memberships.get_mut(node).expect("a known node").forget(id);
    }
}
