//! The sans-IO network-map engine: full maps and per-node deltas, at a cost per change that
//! follows the maps it changes.
//!
//! The engine holds the nodes, users, routes and the policy (`PolicyView`), and for each node
//! the peer set last published to it (`adjacency`), a digest of its last filter (the policy's
//! `filter_digest`, so a filter is not built to be compared) and its change log
//! (`delta::NodeLog`). A change (`upsert_node`, `remove_node`, `upsert_user`,
//! `replace_policy`, `set_dns_records`) works in three parts:
//! - The policy hears of it and reports `Affected`; only those nodes' peer sets are looked at
//!   again and only those filters compared. For a node's change under a pairwise policy (see
//!   `set_pairwise_policy`) only each affected node's pair with the changed node is checked,
//!   from one `peers_of` of the changed node; otherwise whole rows are asked and compared.
//! - Fields the policy does not read (endpoints, online, node key, expiry) change no peer set:
//!   they become a `Change::Patch` to the nodes whose maps hold the node (one row of the
//!   adjacency's transpose), and nothing else; the policy is not even told. Name, address,
//!   tag and user changes become `Change::Full` entries for the same nodes. A node whose
//!   primary routes change (`routes`) is a `Full` entry for its watchers too, since its
//!   allowed IPs changed.
//! - Every node whose map changed gets one log entry and a new version; the step returns them
//!   (`Changed`). Deltas are built only when an agent asks (`delta_since`).
//!
//! Versioning: each node has its own counter, starting at 1 when it joins and bumped once per
//! step that changes its map. Its log (bounded; see `delta`) keeps the last steps as ids and
//! flags; `delta_since(node, v)` merges the entries after `v` and fills them in from the current
//! state, or says `None` if `v` is older than the log's floor (the agent then takes a full map).
//! Memory: the adjacency (two bit matrices, `2 x capacity^2 / 8` bytes: 625 MB at 50,000
//! nodes), one filter digest and one bounded log per node.
//!
//! Cost of one change, for `k` nodes whose maps it changes among `n`: a patch `O(n / 64 + k)`;
//! a join or removal `O(n / 64 + k)` plus the policy's own work and `k` filter digests; a user or
//! policy change `O(sum of the affected rows)`. `check_invariants` recomputes everything.
//!
//! Faults (`Faults`), each a `coordinator.netmap.*` decision the caller injects:
//! - `coordinator.netmap.coalesce`: merge a node's new log entry into its previous one, as a
//!   slow consumer's buffered updates get squashed (deltas get coarser, never wrong).
//! - `coordinator.netmap.drop_log`: drop a node's whole log after a step, as memory pressure or
//!   a coordinator restart would: every agent behind must recover with a full map.
//! - `coordinator.netmap.patch_as_full`: send a whole entry instead of a patch, the slow path a
//!   peer unknown to the agent takes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use wireguard::IpNet;

use super::adjacency::Adjacency;
use super::delta::{Change, Fields, NodeLog, Pending, PushFaults};
use super::{DnsConfig, MapDelta, NetMap, Peer, PeerPatch, SharedPeer};
use crate::routes::{ROUTES_PER_NODE_MAX, Routes, is_exit};
use crate::types::{NodeId, NodeInfo, PolicyView, User, UserId};

/// The most endpoints a node may report.
pub const ENDPOINTS_PER_NODE_MAX: usize = 64;
/// The most tags a node may carry.
pub const TAGS_PER_NODE_MAX: usize = 64;
/// The most extra DNS records.
pub const DNS_RECORDS_MAX: usize = 4096;
/// The pseudo-user label of tagged nodes in MagicDNS names (Tailscale's name for it).
pub const TAGGED_USER_LABEL: &str = "tagged-devices";

/// Why the engine refused a change or a question.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError {
    /// The node is not known.
    UnknownNode(NodeId),
    /// The node names a user that is not known.
    UnknownUser(UserId),
    /// A list of the node is longer than its limit.
    TooMany {
        /// The node.
        node: NodeId,
        /// Which list (`routes`, `endpoints`, `tags`).
        what: &'static str,
        /// Its length.
        count: usize,
    },
    /// Too many DNS records.
    TooManyDnsRecords(usize),
    /// The engine holds as many nodes as it can.
    Full,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::UnknownNode(id) => write!(f, "unknown node {id}"),
            MapError::UnknownUser(id) => write!(f, "unknown user {id}"),
            MapError::TooMany { node, what, count } => {
                write!(f, "node {node} has {count} {what}, more than allowed")
            }
            MapError::TooManyDnsRecords(count) => write!(f, "{count} DNS records, too many"),
            MapError::Full => f.write_str("the engine holds as many nodes as it can"),
        }
    }
}

impl std::error::Error for MapError {}

/// A broken invariant `check_invariants` found, described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvariantViolation(pub String);

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network-map invariant broken: {}", self.0)
    }
}

impl std::error::Error for InvariantViolation {}

impl From<String> for InvariantViolation {
    fn from(what: String) -> InvariantViolation {
        InvariantViolation(what)
    }
}

/// The nodes whose maps a step changed (each now has a new version).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Their ids.
    pub nodes: BTreeSet<NodeId>,
}

/// A fault decision: given a `coordinator.netmap.*` name, whether to fire it now.
pub type FaultDecision = Box<dyn FnMut(&'static str) -> bool + Send + Sync>;

/// Injected fault decisions (see the module docs); none fire by default.
#[derive(Default)]
pub struct Faults {
    decide: Option<FaultDecision>,
}

impl Faults {
    /// Faults decided by `decide` (for example from a seeded stream, or `|_| true`).
    pub fn new(decide: FaultDecision) -> Faults {
        Faults { decide: Some(decide) }
    }

    fn fire(&mut self, name: &'static str) -> bool {
        assert!(name.starts_with("coordinator.netmap."));
        self.decide.as_mut().is_some_and(|decide| decide(name))
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults").field("injected", &self.decide.is_some()).finish()
    }
}

/// One node's engine-side state.
struct Slot {
    info: NodeInfo,
    log: NodeLog,
    filter_digest: u64,
    /// Its entry as its peers see it, made on first use and dropped whenever the entry may
    /// have changed: every such change is announced to its peers (`announce`), or replaces
    /// the slot. `check_invariants` compares it with a fresh one.
    view: OnceLock<SharedPeer>,
}

/// What one step changed, per node, before it is logged.
#[derive(Default)]
struct Step {
    pending: BTreeMap<NodeId, Pending>,
}

impl Step {
    fn peer(&mut self, node: NodeId, peer: NodeId, change: Change) {
        assert_ne!(node, peer, "a node is never its own peer");
        self.pending.entry(node).or_default().peer(peer, change);
    }

    /// Records the changes of one row (sorted by peer, as `Adjacency::set_row` gives them);
    /// into an empty record they go in one sorted bulk build, not one tree insert per peer.
    fn row(&mut self, node: NodeId, flips: Vec<(NodeId, bool)>) {
        if flips.is_empty() {
            return;
        }
        let change = |(peer, added): (NodeId, bool)| {
            assert_ne!(node, peer, "a node is never its own peer");
            (peer, if added { Change::Full } else { Change::Removed })
        };
        let pending = self.pending.entry(node).or_default();
        if pending.peers.is_empty() {
            pending.peers = flips.into_iter().map(change).collect();
        } else {
            flips.into_iter().map(change).for_each(|(peer, change)| pending.peer(peer, change));
        }
    }

    fn self_node(&mut self, node: NodeId) {
        self.pending.entry(node).or_default().self_node = true;
    }
}

/// The network-map engine (see the module docs).
pub struct MapEngine {
    policy: Box<dyn PolicyView>,
    domain: String,
    dns_records: BTreeMap<String, Vec<IpAddr>>,
    users: BTreeMap<UserId, User>,
    user_nodes: BTreeMap<UserId, BTreeSet<NodeId>>,
    nodes: BTreeMap<NodeId, Slot>,
    routes: Routes,
    adjacency: Adjacency,
    faults: Faults,
    /// The planted bug is on (`plant_stale_removal`).
    planted: bool,
    /// Whether a node's change may flip only pairs that involve it (see `set_pairwise_policy`).
    pairwise: bool,
}

impl fmt::Debug for MapEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapEngine")
            .field("domain", &self.domain)
            .field("users", &self.users.len())
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// A DNS label: lowered, with anything outside `[a-z0-9-]` made `-`.
fn label(text: &str) -> String {
    let label: String = text
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect();
    if label.is_empty() { "-".to_string() } else { label }
}

/// Which patchable fields differ between two states of a node.
fn patch_fields(old: &NodeInfo, new: &NodeInfo) -> Fields {
    let mut fields = Fields::default();
    if old.endpoints != new.endpoints {
        fields = fields.union(Fields::ENDPOINTS);
    }
    if old.online != new.online {
        fields = fields.union(Fields::ONLINE);
    }
    if old.node_key != new.node_key {
        fields = fields.union(Fields::NODE_KEY);
    }
    if old.expiry != new.expiry {
        fields = fields.union(Fields::EXPIRY);
    }
    fields
}

/// Whether the two states differ in a field a peer entry shows and no patch carries.
fn entry_fields_differ(old: &NodeInfo, new: &NodeInfo) -> bool {
    old.given_name != new.given_name
        || old.user != new.user
        || old.tags != new.tags
        || old.ipv4 != new.ipv4
        || old.ipv6 != new.ipv6
}

/// Whether the two states differ in a field the policy may read (anything but endpoints,
/// online, keys and expiry).
fn policy_fields_differ(old: &NodeInfo, new: &NodeInfo) -> bool {
    entry_fields_differ(old, new)
        || old.hostname != new.hostname
        || old.advertised_routes != new.advertised_routes
        || old.approved_routes != new.approved_routes
        || old.ephemeral != new.ephemeral
}

impl MapEngine {
    /// An engine with no nodes; `domain` is the tailnet's base domain (`example.ts.net`).
    pub fn new(policy: Box<dyn PolicyView>, domain: &str) -> MapEngine {
        MapEngine {
            policy,
            domain: domain.to_string(),
            dns_records: BTreeMap::new(),
            users: BTreeMap::new(),
            user_nodes: BTreeMap::new(),
            nodes: BTreeMap::new(),
            routes: Routes::new(),
            adjacency: Adjacency::default(),
            faults: Faults::default(),
            planted: false,
            pairwise: true,
        }
    }

    /// An engine loaded with a stored state at once (a coordinator's start): `users`, `nodes`
    /// and the `primaries` the last run elected. The policy hears of every user and node here;
    /// each node's peer set is computed once, not once per join.
    pub fn restore(
        policy: Box<dyn PolicyView>,
        domain: &str,
        users: &[User],
        nodes: &[NodeInfo],
        primaries: &BTreeMap<IpNet, NodeId>,
    ) -> Result<MapEngine, MapError> {
        let mut engine = MapEngine::new(policy, domain);
        engine.adjacency.reserve(nodes.len());
        engine.routes.restore_primaries(primaries);
        for user in users {
            engine.users.insert(user.id, user.clone());
            engine.policy.upsert_user(user);
        }
        for node in nodes {
            engine.validate(node)?;
            if !engine.adjacency.add(node.id) {
                return Err(MapError::Full);
            }
            engine.routes.upsert_node(node);
            engine.insert_info(node.clone(), NodeLog::new(1), 0);
        }
        engine.policy.load_nodes(nodes);
        engine.routes.finish_restore();
        let ids: Vec<NodeId> = engine.nodes.keys().copied().collect();
        let policy = &engine.policy;
        engine.adjacency.load_rows(ids.iter().map(|id| (*id, policy.peers_of(*id))));
        for id in ids {
            let filter_digest = engine.policy.filter_digest(id);
            engine.nodes.get_mut(&id).expect("just inserted").filter_digest = filter_digest;
        }
        assert_eq!(engine.nodes.len(), nodes.iter().map(|n| n.id).collect::<BTreeSet<_>>().len());
        Ok(engine)
    }

    /// Sets the fault decisions (BUGGIFY).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Plants the known bug "a removed node stays in its peers' maps" (its watchers are not
    /// told). Inert without feature `planted-bugs`; never in production.
    pub fn plant_stale_removal(&mut self) {
        self.planted = true;
    }

    fn planted_stale_removal(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.planted
    }

    /// Whether the policy is *pairwise* (on by default): a node's change (its upsert or
    /// removal) can change whether `n` and `m` are peers only if one of them is that node. This
    /// holds for Tailscale's ACLs, whose rules select nodes by their own attributes, and it
    /// lets a join in an allow-all tailnet cost `O(nodes)` instead of asking each affected
    /// node's whole peer list (`O(nodes^2)`). Pairs with a subnet router or exit node are
    /// always recomputed whole, since its routes make `peers_of` asymmetric. Turn it off for a
    /// policy that is not pairwise; `check_invariants` finds one that breaks the promise.
    pub fn set_pairwise_policy(&mut self, pairwise: bool) {
        self.pairwise = pairwise;
    }

    /// The tailnet's base domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The routes: primaries and lookup.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The policy in use.
    pub fn policy(&self) -> &dyn PolicyView {
        self.policy.as_ref()
    }

    /// The node with id `node`, if known.
    pub fn node(&self, node: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&node).map(|slot| &slot.info)
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The current version of `node`'s map.
    pub fn version(&self, node: NodeId) -> Option<u64> {
        self.nodes.get(&node).map(|slot| slot.log.version())
    }

    /// The approximate heap bytes of the engine's own indexes (the adjacency dominates), with
    /// the cached peer entries counted as made (about 500 bytes each with their encoding).
    pub fn heap_bytes_estimate(&self) -> usize {
        let per_node = 400 + std::mem::size_of::<Slot>();
        let entries = self.nodes.values().filter(|slot| slot.view.get().is_some()).count();
        self.adjacency.heap_bytes() + self.nodes.len() * per_node + entries * 500
    }

    /// Adds or replaces a user.
    pub fn upsert_user(&mut self, user: User) -> Result<Changed, MapError> {
        let renamed = self.users.get(&user.id).is_some_and(|old| old.name != user.name);
        let affected = self.policy.upsert_user(&user);
        self.users.insert(user.id, user.clone());
        let mut step = Step::default();
        self.refresh_peers(affected.peers.iter().copied(), &mut step);
        self.refresh_filters(affected.filters.iter().copied(), &mut step);
        if renamed {
            let owned: Vec<NodeId> =
                self.user_nodes.get(&user.id).into_iter().flatten().copied().collect();
            for node in owned {
                self.announce(node, Change::Full, &mut step);
            }
        }
        Ok(self.commit(step))
    }

    /// Adds a node or replaces the one with the same id.
    pub fn upsert_node(&mut self, node: NodeInfo) -> Result<Changed, MapError> {
        self.validate(&node)?;
        let id = node.id;
        let old = self.nodes.get(&id).map(|slot| slot.info.clone());
        if old.is_none() && !self.adjacency.add(id) {
            return Err(MapError::Full);
        }
        let relevant = old.as_ref().is_none_or(|old| policy_fields_differ(old, &node));
        let mut affected =
            if relevant { self.policy.upsert_node(&node) } else { Default::default() };
        let routers = self.routes.upsert_node(&node);
        let (log, filter_digest) = match self.remove_info(id) {
            Some(slot) => (slot.log, slot.filter_digest),
            None => (NodeLog::new(1), 0),
        };
        self.insert_info(node.clone(), log, filter_digest);
        let mut step = Step::default();
        if old.is_none() {
            // A new node's agent takes a full map: its own row is set without logging.
            let peers = self.policy.peers_of(id);
            self.adjacency.set_row(id, &peers);
            let filter_digest = self.policy.filter_digest(id);
            self.nodes.get_mut(&id).expect("just inserted").filter_digest = filter_digest;
            affected.peers.remove(&id);
            affected.filters.remove(&id);
        }
        self.refresh_around(id, affected.peers.iter().copied(), &mut step);
        self.refresh_filters(affected.filters.iter().copied(), &mut step);
        if let Some(old) = &old {
            let fields = patch_fields(old, &node);
            if entry_fields_differ(old, &node) {
                self.announce(id, Change::Full, &mut step);
            } else if !fields.is_empty() {
                self.announce(id, Change::Patch(fields), &mut step);
            }
        }
        for router in routers {
            self.announce(router, Change::Full, &mut step);
        }
        let changed = self.commit(step);
        assert!(self.nodes.get(&id).is_some_and(|slot| slot.info == node));
        Ok(changed)
    }

    /// Removes a node: it leaves every map that held it. Unknown ids change nothing.
    pub fn remove_node(&mut self, node: NodeId) -> Result<Changed, MapError> {
        if !self.nodes.contains_key(&node) {
            return Ok(Changed::default());
        }
        let mut affected = self.policy.remove_node(node);
        let routers = self.routes.remove_node(node);
        let watchers = self.adjacency.watchers(node);
        let mut step = Step::default();
        for watcher in watchers {
            // The planted bug forgets to tell the watchers: the removed peer stays in their maps.
            if !self.planted_stale_removal() {
                step.peer(watcher, node, Change::Removed);
            }
        }
        self.adjacency.remove(node);
        self.remove_info(node);
        affected.peers.remove(&node);
        affected.filters.remove(&node);
        self.refresh_around(node, affected.peers.iter().copied(), &mut step);
        self.refresh_filters(affected.filters.iter().copied(), &mut step);
        for router in routers.into_iter().filter(|router| *router != node) {
            self.announce(router, Change::Full, &mut step);
        }
        let changed = self.commit(step);
        assert!(!changed.nodes.contains(&node));
        Ok(changed)
    }

    /// Replaces the policy: it is told every user and node, and every node's peers and filter
    /// are compared again (a policy change may touch any map).
    pub fn replace_policy(&mut self, policy: Box<dyn PolicyView>) -> Changed {
        self.policy = policy;
        for user in self.users.values() {
            self.policy.upsert_user(user);
        }
        // In one load: a policy that rebuilds once then costs the tailnet once, not per node.
        let nodes: Vec<NodeInfo> = self.nodes.values().map(|slot| slot.info.clone()).collect();
        self.policy.load_nodes(&nodes);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut step = Step::default();
        self.refresh_peers(ids.iter().copied(), &mut step);
        self.refresh_filters(ids.iter().copied(), &mut step);
        self.commit(step)
    }

    /// Replaces the policy in place when the policy view can say what the edit reaches
    /// (`PolicyView::set_policy`): only those nodes' peers and filters are compared again, so
    /// an edit costs the maps it may change. `None` if the view cannot (then use
    /// `replace_policy`).
    pub fn set_policy(&mut self, policy: Option<&crate::policy::Policy>) -> Option<Changed> {
        let affected = self.policy.set_policy(policy)?;
        let mut step = Step::default();
        self.refresh_peers(affected.peers.iter().copied(), &mut step);
        self.refresh_filters(affected.filters.iter().copied(), &mut step);
        Some(self.commit(step))
    }

    /// Sets the extra DNS records every node gets.
    pub fn set_dns_records(
        &mut self,
        records: BTreeMap<String, Vec<IpAddr>>,
    ) -> Result<Changed, MapError> {
        if records.len() > DNS_RECORDS_MAX {
            return Err(MapError::TooManyDnsRecords(records.len()));
        }
        if records == self.dns_records {
            return Ok(Changed::default());
        }
        self.dns_records = records;
        let mut step = Step::default();
        for node in self.nodes.keys() {
            step.pending.entry(*node).or_default().dns = true;
        }
        Ok(self.commit(step))
    }

    fn validate(&self, node: &NodeInfo) -> Result<(), MapError> {
        let too_many = |what, count| MapError::TooMany { node: node.id, what, count };
        if let Some(user) = node.user
            && !self.users.contains_key(&user)
        {
            return Err(MapError::UnknownUser(user));
        }
        let routes = node.advertised_routes.len().max(node.approved_routes.len());
        if routes > ROUTES_PER_NODE_MAX {
            return Err(too_many("routes", routes));
        }
        if node.endpoints.len() > ENDPOINTS_PER_NODE_MAX {
            return Err(too_many("endpoints", node.endpoints.len()));
        }
        if node.tags.len() > TAGS_PER_NODE_MAX {
            return Err(too_many("tags", node.tags.len()));
        }
        Ok(())
    }

    fn insert_info(&mut self, info: NodeInfo, log: NodeLog, filter_digest: u64) {
        if let Some(user) = info.user {
            self.user_nodes.entry(user).or_default().insert(info.id);
        }
        let view = OnceLock::new();
        let replaced = self.nodes.insert(info.id, Slot { info, log, filter_digest, view });
        assert!(replaced.is_none(), "remove_info first");
    }

    /// Takes a node out of `nodes` and the user index.
    fn remove_info(&mut self, node: NodeId) -> Option<Slot> {
        let slot = self.nodes.remove(&node)?;
        if let Some(user) = slot.info.user
            && let Some(owned) = self.user_nodes.get_mut(&user)
        {
            owned.remove(&node);
            if owned.is_empty() {
                self.user_nodes.remove(&user);
            }
        }
        Some(slot)
    }
}

impl MapEngine {
    /// Asks the policy again for the peers of `nodes` and logs what entered or left their maps.
    fn refresh_peers(&mut self, nodes: impl Iterator<Item = NodeId>, step: &mut Step) {
        for node in nodes {
            if !self.nodes.contains_key(&node) {
                continue;
            }
            // Unknown ids are skipped by `set_row`.
            let mut peers = self.policy.peers_of(node);
            peers.retain(|peer| *peer != node);
            step.row(node, self.adjacency.set_row(node, &peers));
        }
    }

    /// Re-derives the rows of `nodes` after `changed` was upserted or removed. With a pairwise
    /// policy (`set_pairwise_policy`) only the pair (`node`, `changed`) is looked at, unless
    /// either serves routes: `changed` is in `peers_of(node)` exactly when `node` is in
    /// `peers_of(changed)` by the contract's symmetric part. Otherwise the whole row.
    fn refresh_around(
        &mut self,
        changed: NodeId,
        nodes: impl Iterator<Item = NodeId>,
        step: &mut Step,
    ) {
        let serves_routes = |engine: &MapEngine, node| {
            engine.node(node).is_some_and(|n| !n.approved_routes.is_empty())
        };
        if !self.pairwise || serves_routes(self, changed) {
            return self.refresh_peers(nodes, step);
        }
        let mut around = if self.nodes.contains_key(&changed) {
            self.policy.peers_of(changed)
        } else {
            Vec::new()
        };
        if !around.is_sorted() {
            around.sort_unstable();
        }
        let mut whole = Vec::new();
        for node in nodes {
            if node == changed || serves_routes(self, node) {
                whole.push(node);
                continue;
            }
            let want = around.binary_search(&node).is_ok();
            if self.adjacency.set(node, changed, want) {
                step.peer(node, changed, if want { Change::Full } else { Change::Removed });
            }
        }
        self.refresh_peers(whole.into_iter(), step);
    }

    /// Asks the policy again for the filters of `nodes` and logs those that changed.
    fn refresh_filters(&mut self, nodes: impl Iterator<Item = NodeId>, step: &mut Step) {
        for node in nodes {
            let filter_digest = self.policy.filter_digest(node);
            let Some(slot) = self.nodes.get_mut(&node) else { continue };
            if slot.filter_digest != filter_digest {
                slot.filter_digest = filter_digest;
                step.pending.entry(node).or_default().filter = true;
            }
        }
    }

    /// Logs `change` of `node`'s entry for every map holding it, and for its own map.
    fn announce(&mut self, node: NodeId, change: Change, step: &mut Step) {
        let Some(slot) = self.nodes.get_mut(&node) else { return };
        slot.view.take();
        let change = match change {
            Change::Patch(_) if self.faults.fire("coordinator.netmap.patch_as_full") => {
                Change::Full
            }
            change => change,
        };
        for watcher in self.adjacency.watchers(node) {
            step.peer(watcher, node, change);
        }
        step.self_node(node);
    }

    /// Turns a step into one log entry per changed node.
    fn commit(&mut self, step: Step) -> Changed {
        let mut changed = Changed::default();
        for (node, pending) in step.pending {
            if pending.is_empty() || !self.nodes.contains_key(&node) {
                continue;
            }
            let coalesce = self.faults.fire("coordinator.netmap.coalesce");
            let drop_log = self.faults.fire("coordinator.netmap.drop_log");
            let slot = self.nodes.get_mut(&node).expect("checked above");
            slot.log.push(&pending, PushFaults { coalesce, drop_log });
            changed.nodes.insert(node);
        }
        changed
    }

    /// `node` as its peers see it, shared (`Slot::view`).
    fn shared_view(&self, node: NodeId) -> Option<SharedPeer> {
        let slot = self.nodes.get(&node)?;
        let view = slot
            .view
            .get_or_init(|| SharedPeer::new(self.peer_view(node).expect("the slot is there")));
        debug_assert_eq!(view.id, node);
        Some(view.clone())
    }

    /// `node` as its peers see it, made afresh.
    fn peer_view(&self, node: NodeId) -> Option<Peer> {
        let info = &self.nodes.get(&node)?.info;
        let user_label = match info.user {
            Some(user) => {
                self.users.get(&user).map_or_else(|| format!("user-{user}"), |u| label(&u.name))
            }
            None => TAGGED_USER_LABEL.to_string(),
        };
        let name = format!("{}.{}.{}", label(&info.given_name), user_label, self.domain);
        let addresses = vec![
            IpNet { addr: IpAddr::V4(info.ipv4), prefix_len: 32 },
            IpNet { addr: IpAddr::V6(info.ipv6), prefix_len: 128 },
        ];
        let mut allowed_ips = addresses.clone();
        allowed_ips.extend(self.routes.primary_routes_of(node));
        allowed_ips.extend(self.routes.exit_routes_of(node));
        allowed_ips.sort_unstable();
        allowed_ips.dedup();
        Some(Peer {
            id: node,
            name,
            user: info.user,
            tags: info.tags.clone(),
            node_key: info.node_key,
            addresses,
            allowed_ips,
            endpoints: info.endpoints.clone(),
            online: info.online,
            expiry: info.expiry,
        })
    }

    fn patch_view(&self, node: NodeId, fields: Fields) -> Option<PeerPatch> {
        let info = &self.nodes.get(&node)?.info;
        let endpoints: Option<Vec<SocketAddr>> =
            fields.contains(Fields::ENDPOINTS).then(|| info.endpoints.clone());
        Some(PeerPatch {
            id: node,
            endpoints,
            online: fields.contains(Fields::ONLINE).then_some(info.online),
            node_key: fields.contains(Fields::NODE_KEY).then_some(info.node_key),
            expiry: fields.contains(Fields::EXPIRY).then_some(info.expiry),
        })
    }

    fn dns(&self) -> DnsConfig {
        DnsConfig { domain: self.domain.clone(), names: self.dns_records.clone() }
    }

    /// `node`'s whole map now.
    pub fn full_map(&self, node: NodeId) -> Result<NetMap, MapError> {
        let slot = self.nodes.get(&node).ok_or(MapError::UnknownNode(node))?;
        let self_node = self.shared_view(node).ok_or(MapError::UnknownNode(node))?;
        let self_node = Peer::clone(&self_node);
        let row = self.adjacency.row(node).into_iter();
        let peers: Vec<SharedPeer> = row.filter_map(|peer| self.shared_view(peer)).collect();
        let map = NetMap {
            version: slot.log.version(),
            self_node,
            peers,
            filter: self.policy.filter_for(node),
            dns: self.dns(),
        };
        assert!(map.peers.windows(2).all(|pair| pair[0].id < pair[1].id));
        Ok(map)
    }

    /// What changed in `node`'s map since `version`; `None` if the node is unknown or that
    /// version is no longer in its log (the agent then takes `full_map`).
    pub fn delta_since(&self, node: NodeId, version: u64) -> Option<MapDelta> {
        let slot = self.nodes.get(&node)?;
        let pending = slot.log.since(version)?;
        let mut delta = MapDelta {
            from_version: version,
            to_version: slot.log.version(),
            ..MapDelta::default()
        };
        for (peer, change) in pending.peers {
            match change {
                Change::Full => delta.peers_changed.extend(self.shared_view(peer)),
                Change::Patch(fields) => delta.peers_patched.extend(self.patch_view(peer, fields)),
                Change::Removed => delta.peers_removed.push(peer),
            }
        }
        if pending.self_node {
            delta.self_node = self.peer_view(node);
        }
        if pending.filter {
            delta.filter = Some(self.policy.filter_for(node));
        }
        if pending.dns {
            delta.dns = Some(self.dns());
        }
        assert!(delta.to_version >= delta.from_version);
        Some(delta)
    }

    /// Checks every invariant (costs a full recompute: for tests and simulation): versions
    /// within their logs and logs within their bounds; every published peer set and filter equal
    /// to the policy's answer now; no prefix but exit routes in the allowed IPs of two nodes;
    /// the routes' own invariants.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.routes.check_invariants()?;
        self.adjacency.check_invariants()?;
        let mut owners: BTreeMap<IpNet, NodeId> = BTreeMap::new();
        for (id, slot) in &self.nodes {
            slot.log.check_invariants().map_err(|error| format!("node {id}: {error}"))?;
            let mut expected = self.policy.peers_of(*id);
            expected.retain(|peer| peer != id && self.nodes.contains_key(peer));
            let published = self.adjacency.row(*id);
            if published != expected {
                return Err(InvariantViolation(format!(
                    "node {id}: map holds {published:?}, policy {expected:?}"
                )));
            }
            if slot.filter_digest != self.policy.filter_digest(*id) {
                return Err(InvariantViolation(format!("node {id}: published filter is stale")));
            }
            let view = self.peer_view(*id).ok_or_else(|| format!("node {id} has no view"))?;
            if slot.view.get().is_some_and(|cached| **cached != view) {
                return Err(InvariantViolation(format!("node {id}: its cached entry is stale")));
            }
            for net in view.allowed_ips.into_iter().filter(|net| !is_exit(*net)) {
                if let Some(other) = owners.insert(net, *id) {
                    return Err(InvariantViolation(format!(
                        "{net} is in the allowed IPs of {other} and {id}"
                    )));
                }
            }
        }
        Ok(())
    }
}
