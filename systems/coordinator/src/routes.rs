//! Subnet routes and exit nodes: which node carries each approved prefix, and lookup by address.
//!
//! A node serves a prefix when it both advertises it and has it approved. For a subnet prefix
//! (anything but `0.0.0.0/0` and `::/0`) exactly one online server is the *primary*: the only
//! node whose WireGuard allowed IPs hold that prefix in its peers' maps. Election is stable: the
//! current primary keeps the prefix while it is online and still serves it; when it goes
//! offline or stops serving, the prefix fails over to the online server with the lowest id (a
//! deterministic choice every coordinator replica makes alike). A returning node never takes a
//! prefix back from a working primary, so routes do not flap. With no online server a prefix
//! has no primary and is not routed.
//!
//! Exit routes follow Tailscale: they are not elected. Every node serving `0.0.0.0/0` or
//! `::/0` carries them in its allowed IPs, online or not, and the client picks one exit node
//! (`ExitNodeID`) itself; if that node goes away the client, not the coordinator, chooses
//! again. Exit routes therefore never take part in `lookup`.
//!
//! Because election depends on history (who was primary first), a coordinator that restarts
//! restores the last primaries as hints (`Routes::restore_primaries`), which win their prefix
//! (over an incumbent too) while the restore lasts, if eligible.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use wireguard::IpNet;

use crate::types::{NodeId, NodeInfo};

/// The most routes a node may advertise (or have approved); more is a typed error upstream.
pub const ROUTES_PER_NODE_MAX: usize = 256;

/// The primaries of subnet prefixes and the exit routes of exit nodes.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Prefix -> the nodes serving it (advertised and approved), online or not.
    servers: BTreeMap<IpNet, BTreeSet<NodeId>>,
    /// Node -> the subnet prefixes it serves (sorted, canonical).
    served: BTreeMap<NodeId, Vec<IpNet>>,
    /// Node -> the exit routes it serves (sorted).
    exits: BTreeMap<NodeId, Vec<IpNet>>,
    /// The nodes online now.
    online: BTreeSet<NodeId>,
    /// Prefix -> its primary.
    // Invariant: every primary is online and serves its prefix.
    primaries: BTreeMap<IpNet, NodeId>,
    /// Restored primaries that win the next election of their prefix if eligible.
    hints: BTreeMap<IpNet, NodeId>,
}

/// `net` with its host bits cleared, so equal networks compare equal.
pub fn canonical(net: IpNet) -> IpNet {
    let addr = match net.addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if net.prefix_len == 0 { 0 } else { u32::MAX << (32 - net.prefix_len) };
            IpAddr::from(std::net::Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if net.prefix_len == 0 { 0 } else { u128::MAX << (128 - net.prefix_len) };
            IpAddr::from(std::net::Ipv6Addr::from(bits & mask))
        }
    };
    IpNet { addr, prefix_len: net.prefix_len }
}

/// Whether `net` is an exit route (`0.0.0.0/0` or `::/0`).
pub fn is_exit(net: IpNet) -> bool {
    net.prefix_len == 0
}

/// The routes `node` serves: advertised and approved, canonical, sorted, split into subnet
/// prefixes and exit routes.
fn served_by(node: &NodeInfo) -> (Vec<IpNet>, Vec<IpNet>) {
    let advertised: BTreeSet<IpNet> =
        node.advertised_routes.iter().map(|n| canonical(*n)).collect();
    let approved: BTreeSet<IpNet> = node.approved_routes.iter().map(|n| canonical(*n)).collect();
    let both: Vec<IpNet> = advertised.intersection(&approved).copied().collect();
    let (exits, subnets): (Vec<IpNet>, Vec<IpNet>) = both.into_iter().partition(|n| is_exit(*n));
    (subnets, exits)
}

impl Routes {
    /// No routes.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Restores primaries a previous run elected: each wins its prefix's elections (even over
    /// an incumbent) while the restore lasts, if its node is eligible. Call before the nodes
    /// are fed in, and `finish_restore` after.
    pub fn restore_primaries(&mut self, primaries: &BTreeMap<IpNet, NodeId>) {
        for (net, node) in primaries {
            self.hints.insert(canonical(*net), *node);
        }
        assert!(self.hints.keys().all(|net| canonical(*net) == *net));
    }

    /// Ends a restore: hints not used by now are dropped, so they never cause a late takeover.
    pub fn finish_restore(&mut self) {
        self.hints.clear();
        assert!(self.hints.is_empty());
    }

    /// Takes in a node's new state; returns the nodes whose routes (primary prefixes or exit
    /// routes) changed, which are exactly the nodes whose allowed IPs changed.
    pub fn upsert_node(&mut self, node: &NodeInfo) -> BTreeSet<NodeId> {
        let (subnets, exits) = served_by(node);
        self.update(node.id, subnets, exits, node.online)
    }

    /// Forgets a node; returns the nodes whose routes changed (the node itself included if it
    /// had any).
    pub fn remove_node(&mut self, node: NodeId) -> BTreeSet<NodeId> {
        let changed = self.update(node, Vec::new(), Vec::new(), false);
        self.served.remove(&node);
        self.exits.remove(&node);
        assert!(!self.primaries.values().any(|primary| *primary == node));
        changed
    }

    fn update(
        &mut self,
        node: NodeId,
        subnets: Vec<IpNet>,
        exits: Vec<IpNet>,
        online: bool,
    ) -> BTreeSet<NodeId> {
        let mut changed = BTreeSet::new();
        let old_subnets = self.served.insert(node, subnets.clone()).unwrap_or_default();
        let old_exits = self.exits.insert(node, exits.clone()).unwrap_or_default();
        if old_exits != exits {
            changed.insert(node);
        }
        for net in &old_subnets {
            if let Some(servers) = self.servers.get_mut(net) {
                servers.remove(&node);
            }
        }
        for net in &subnets {
            self.servers.entry(*net).or_default().insert(node);
        }
        if online {
            self.online.insert(node);
        } else {
            self.online.remove(&node);
        }
        let touched: BTreeSet<IpNet> = old_subnets.iter().chain(&subnets).copied().collect();
        for net in touched {
            let before = self.primaries.get(&net).copied();
            let after = self.elect(net);
            if before != after {
                changed.extend(before);
                changed.extend(after);
            }
        }
        changed
    }

    /// Re-elects `net`'s primary: a restored hint if eligible, else the incumbent if still
    /// eligible, else the lowest eligible id, else none.
    fn elect(&mut self, net: IpNet) -> Option<NodeId> {
        let online = &self.online;
        let eligible = |node: &NodeId| online.contains(node);
        let servers = self.servers.get(&net);
        let is_eligible = |node: NodeId| {
            servers.is_some_and(|servers| servers.contains(&node)) && eligible(&node)
        };
        let incumbent = self.primaries.get(&net).copied().filter(|node| is_eligible(*node));
        let hint = self.hints.get(&net).copied().filter(|node| is_eligible(*node));
        let lowest = servers.and_then(|servers| servers.iter().copied().find(eligible));
        let winner = hint.or(incumbent).or(lowest);
        match winner {
            Some(node) => {
                self.primaries.insert(net, node);
                if hint == Some(node) {
                    self.hints.remove(&net);
                }
            }
            None => {
                self.primaries.remove(&net);
            }
        }
        if servers.is_some_and(|servers| servers.is_empty()) {
            self.servers.remove(&net);
        }
        assert!(winner.is_none_or(|node| self.online.contains(&node)));
        winner
    }

    /// The subnet prefixes `node` is primary for, sorted.
    pub fn primary_routes_of(&self, node: NodeId) -> Vec<IpNet> {
        let served = self.served.get(&node).map(Vec::as_slice).unwrap_or_default();
        served.iter().copied().filter(|net| self.primaries.get(net) == Some(&node)).collect()
    }

    /// The exit routes `node` serves, sorted.
    pub fn exit_routes_of(&self, node: NodeId) -> Vec<IpNet> {
        self.exits.get(&node).cloned().unwrap_or_default()
    }

    /// Every subnet prefix with its primary.
    pub fn primaries(&self) -> &BTreeMap<IpNet, NodeId> {
        &self.primaries
    }

    /// The primary of the longest subnet prefix holding `addr` (exit routes excluded).
    pub fn lookup(&self, addr: IpAddr) -> Option<NodeId> {
        let len_max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let found = (1..=len_max).rev().find_map(|prefix_len| {
            self.primaries.get(&canonical(IpNet { addr, prefix_len })).copied()
        });
        assert!(found.is_none_or(|node| self.online.contains(&node)));
        found
    }

    /// Checks the invariants: each primary online and serving its prefix, the indexes agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (net, node) in &self.primaries {
            if !self.online.contains(node) {
                return Err(format!("primary {node} of {net} is offline"));
            }
            if !self.servers.get(net).is_some_and(|servers| servers.contains(node)) {
                return Err(format!("primary {node} of {net} does not serve it"));
            }
        }
        for (net, servers) in &self.servers {
            let has_online = servers.iter().any(|node| self.online.contains(node));
            if has_online != self.primaries.contains_key(net) {
                return Err(format!("{net}: online servers {has_online} but primary disagrees"));
            }
            for node in servers {
                if !self.served.get(node).is_some_and(|nets| nets.contains(net)) {
                    return Err(format!("{net}: server {node} missing from its index"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Key;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn net(text: &str) -> IpNet {
        text.parse().expect("valid network")
    }

    fn node(id: NodeId, routes: &[&str], online: bool) -> NodeInfo {
        let routes: Vec<IpNet> = routes.iter().map(|text| net(text)).collect();
        NodeInfo {
            id,
            hostname: format!("host{id}"),
            given_name: format!("host{id}"),
            user: Some(1),
            tags: Vec::new(),
            ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
            ipv6: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16),
            node_key: Key([id as u8; 32]),
            machine_key: Key([id as u8; 32]),
            endpoints: Vec::new(),
            advertised_routes: routes.clone(),
            approved_routes: routes,
            online,
            ephemeral: false,
            expiry: None,
        }
    }

    #[track_caller]
    fn check(routes: &Routes, addr: &str, expected: Option<NodeId>) {
        assert_eq!(routes.lookup(addr.parse().expect("address")), expected, "lookup {addr}");
        assert_eq!(routes.check_invariants(), Ok(()));
    }

    #[test]
    fn failover_is_stable_and_deterministic() {
        let mut routes = Routes::new();
        assert_eq!(routes.upsert_node(&node(5, &["10.0.0.0/8"], true)), BTreeSet::from([5]));
        assert_eq!(routes.upsert_node(&node(3, &["10.0.0.0/8"], true)), BTreeSet::new());
        assert_eq!(routes.upsert_node(&node(4, &["10.0.0.0/8"], true)), BTreeSet::new());
        check(&routes, "10.1.2.3", Some(5));
        // The incumbent goes offline: the lowest online server takes over.
        assert_eq!(routes.upsert_node(&node(5, &["10.0.0.0/8"], false)), BTreeSet::from([3, 5]));
        check(&routes, "10.1.2.3", Some(3));
        // It returns: no takeover.
        assert_eq!(routes.upsert_node(&node(5, &["10.0.0.0/8"], true)), BTreeSet::new());
        check(&routes, "10.1.2.3", Some(3));
        // The primary stops advertising: failover to 4, the lowest online.
        assert_eq!(routes.upsert_node(&node(3, &[], true)), BTreeSet::from([3, 4]));
        check(&routes, "10.1.2.3", Some(4));
        assert_eq!(routes.remove_node(4), BTreeSet::from([4, 5]));
        check(&routes, "10.1.2.3", Some(5));
        assert_eq!(routes.upsert_node(&node(5, &["10.0.0.0/8"], false)), BTreeSet::from([5]));
        check(&routes, "10.1.2.3", None);
        assert!(routes.primaries().is_empty());
    }

    #[test]
    fn unapproved_routes_are_not_served() {
        let mut routes = Routes::new();
        let mut router = node(1, &["10.0.0.0/8"], true);
        router.approved_routes.clear();
        assert_eq!(routes.upsert_node(&router), BTreeSet::new());
        check(&routes, "10.0.0.1", None);
        router.approved_routes = vec![net("10.0.0.0/8"), net("192.168.0.0/16")];
        assert_eq!(routes.upsert_node(&router), BTreeSet::from([1]));
        check(&routes, "10.0.0.1", Some(1));
        check(&routes, "192.168.0.1", None);
    }

    #[test]
    fn longest_prefix_wins() {
        let mut routes = Routes::new();
        routes.upsert_node(&node(1, &["10.0.0.0/8", "fd00::/8"], true));
        routes.upsert_node(&node(2, &["10.1.0.0/16"], true));
        routes.upsert_node(&node(3, &["10.1.2.0/24", "fd00:1::/32", "0.0.0.0/0"], true));
        // Host bits in an advertised route do not matter.
        routes.upsert_node(&node(4, &["10.1.2.77/32"], true));
        check(&routes, "10.9.9.9", Some(1));
        check(&routes, "10.1.9.9", Some(2));
        check(&routes, "10.1.2.9", Some(3));
        check(&routes, "10.1.2.77", Some(4));
        check(&routes, "11.0.0.1", None);
        check(&routes, "fd00:1::5", Some(3));
        check(&routes, "fd01::5", Some(1));
        check(&routes, "fe80::1", None);
        assert_eq!(routes.exit_routes_of(3), vec![net("0.0.0.0/0")]);
        assert_eq!(routes.primary_routes_of(3), vec![net("10.1.2.0/24"), net("fd00:1::/32")]);
    }

    #[test]
    fn exit_routes_are_not_elected() {
        let mut routes = Routes::new();
        assert_eq!(routes.upsert_node(&node(1, &["0.0.0.0/0", "::/0"], true)), BTreeSet::from([1]));
        assert_eq!(
            routes.upsert_node(&node(2, &["0.0.0.0/0", "::/0"], false)),
            BTreeSet::from([2])
        );
        // Going offline changes nothing for exit routes: the client picks the exit node.
        assert_eq!(routes.upsert_node(&node(1, &["0.0.0.0/0", "::/0"], false)), BTreeSet::new());
        assert_eq!(routes.exit_routes_of(1).len(), 2);
        assert_eq!(routes.exit_routes_of(2).len(), 2);
        check(&routes, "8.8.8.8", None);
    }

    #[test]
    fn restored_primaries_win_the_first_election() {
        let mut routes = Routes::new();
        routes.restore_primaries(&BTreeMap::from([(net("10.0.0.0/8"), 7)]));
        routes.upsert_node(&node(2, &["10.0.0.0/8"], true));
        check(&routes, "10.0.0.1", Some(2));
        // The restored primary arrives later and still wins while the restore lasts.
        assert_eq!(routes.upsert_node(&node(7, &["10.0.0.0/8"], true)), BTreeSet::from([2, 7]));
        check(&routes, "10.0.0.1", Some(7));
        routes.finish_restore();
        // After the restore, the ordinary rules: failover to the lowest, no takeover back.
        routes.upsert_node(&node(7, &["10.0.0.0/8"], false));
        check(&routes, "10.0.0.1", Some(2));
        routes.upsert_node(&node(7, &["10.0.0.0/8"], true));
        check(&routes, "10.0.0.1", Some(2));
        // A hint whose node never comes is dropped by `finish_restore`.
        let mut fresh = Routes::new();
        fresh.restore_primaries(&BTreeMap::from([(net("10.0.0.0/8"), 9)]));
        fresh.upsert_node(&node(2, &["10.0.0.0/8"], true));
        fresh.finish_restore();
        fresh.upsert_node(&node(9, &["10.0.0.0/8"], true));
        check(&fresh, "10.0.0.1", Some(2));
    }
}
