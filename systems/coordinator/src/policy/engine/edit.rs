//! Policy edits: an edit that keeps names and order is made in place, at the cost of the
//! entries it adds and removes and their members; any other is a rebuild compared entry by
//! entry with the policy before it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::{
    AclState, Affected, CompiledAcl, PolicyEngine, RuleKey, add_memberships, drop_memberships,
    key_of,
};
use crate::policy::{Acl, Alias, Policy};
use crate::types::{PolicyView, PortRange};

impl PolicyEngine {
    /// Replaces the policy and reports the nodes whose peers or filter the edit may change:
    /// an edit of one entry reaches the nodes of that entry, not the tailnet. In place
    /// (`edit_in_place`) when the names mean what they meant and the kept entries keep their
    /// order; otherwise a rebuild, compared entry by entry (`edit_scope`).
    pub fn set_policy(&mut self, policy: Policy) -> Affected {
        if let Some(affected) = self.edit_in_place(&policy) {
            return affected;
        }
        let old_acls = std::mem::take(&mut self.acls);
        let old_compiled = std::mem::take(&mut self.compiled);
        let old_keys = std::mem::take(&mut self.keys);
        let old_policy = self.policy.replace(policy);
        let had_policy = old_policy.is_some();
        let reuse = old_policy.as_ref().map(|policy| Reuse::new(policy, &old_acls, &old_compiled));
        self.rebuild_reusing(reuse.as_ref());
        let old = Entries { acls: &old_acls, compiled: &old_compiled, keys: &old_keys };
        let scope = had_policy.then(|| self.edit_scope(&old)).flatten();
        scope.unwrap_or_else(|| self.everyone())
    }

    /// The nodes an edit from the `old` entries to the engine's may affect; `None` for "every
    /// node". Entries are matched by content (compiled form and members), so an entry kept,
    /// wherever it moved, changes no one; an entry only in one policy changes its sources'
    /// and destinations' peers and its destinations' filters, and the filters of every entry
    /// sharing its rule key (merged rules sit at the first entry with the key). Everyone when
    /// such an entry holds `*` or `autogroup:self`, or when kept entries changed their order
    /// (rules are ordered by entry).
    fn edit_scope(&self, old: &Entries<'_>) -> Option<Affected> {
        let new = Entries { acls: &self.acls, compiled: &self.compiled, keys: &self.keys };
        let mut unmatched: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for index in 0..new.acls.len() {
            unmatched.entry(new.digest(index)).or_default().push(index);
        }
        let (mut gone, mut last_kept) = (Vec::new(), None);
        for index in 0..old.acls.len() {
            let candidates = unmatched.get_mut(&old.digest(index));
            let found =
                candidates.as_ref().and_then(|c| c.iter().position(|&j| old.same(index, &new, j)));
            let Some(position) = found else {
                gone.push(index);
                continue;
            };
            let kept = candidates.expect("found in it").remove(position);
            if last_kept.is_some_and(|last| kept < last) {
                return None;
            }
            last_kept = Some(kept);
        }
        let added: Vec<usize> = unmatched.into_values().flatten().collect();
        let mut scope = Affected::default();
        old.widen(&gone, &mut scope)?;
        new.widen(&added, &mut scope)?;
        scope.peers.retain(|id| self.nodes.contains_key(id));
        scope.filters.retain(|id| self.nodes.contains_key(id));
        Some(scope)
    }

    /// An edit made in place, when the new policy gives every name the meaning the old one
    /// gave it and keeps the order of the entries it keeps (matched by text): the removed
    /// entries leave their members' memberships, the added ones are resolved from the indexes
    /// and join theirs, the kept ones stay as they are, ids and all. Its cost is the added
    /// and removed entries' members plus the policy's size, never the tailnet's. `None`
    /// (and nothing changed) when the edit is not of that kind.
    fn edit_in_place(&mut self, policy: &Policy) -> Option<Affected> {
        let reuse = Reuse::new(self.policy.as_ref()?, &self.acls, &self.compiled);
        if !reuse.names_match(policy) {
            return None;
        }
        let kept = reuse.match_texts(&policy.acls);
        if !kept.iter().flatten().is_sorted() {
            return None;
        }
        let mut taken = vec![false; self.acls.len()];
        kept.iter().flatten().for_each(|&old| taken[old] = true);
        let gone: Vec<usize> = (0..taken.len()).filter(|&old| !taken[old]).collect();
        let mut scope = Affected::default();
        let old = Entries { acls: &self.acls, compiled: &self.compiled, keys: &self.keys };
        let mut everyone = old.widen(&gone, &mut scope).is_none();
        for &position in &gone {
            let id = self.ranks.id(position);
            drop_memberships(&self.acls[position], id, &mut self.memberships);
            self.ranks.release(id);
        }
        self.policy = Some(policy.clone());
        let added = self.place_entries(&kept);
        let new = Entries { acls: &self.acls, compiled: &self.compiled, keys: &self.keys };
        everyone |= new.widen(&added, &mut scope).is_none();
        self.debug_check_edit();
        if everyone {
            return Some(self.everyone());
        }
        scope.peers.retain(|id| self.nodes.contains_key(id));
        scope.filters.retain(|id| self.nodes.contains_key(id));
        Some(scope)
    }

    /// Lays out the new policy's entries: `kept[p]` is the old position of the entry now at
    /// `p`, whose members, compiled form and id move over; the others are resolved, compiled
    /// and given ids. Gives the positions of the new entries.
    fn place_entries(&mut self, kept: &[Option<usize>]) -> Vec<usize> {
        let mut old_acls: Vec<Option<AclState>> =
            std::mem::take(&mut self.acls).into_iter().map(Some).collect();
        let mut old_compiled: Vec<Option<CompiledAcl>> =
            std::mem::take(&mut self.compiled).into_iter().map(Some).collect();
        let old_ids = std::mem::take(&mut self.ranks.ids);
        let policy = self.policy.as_ref().expect("an edit sets a policy");
        let mut ids = Vec::with_capacity(kept.len());
        for (acl, kept) in policy.acls.iter().zip(kept) {
            if let Some(old) = *kept {
                self.acls.push(old_acls[old].take().expect("each old entry moves once"));
                ids.push(old_ids[old]);
            } else {
                self.acls.push(AclState::flags_of(acl));
                ids.push(self.ranks.allocate());
            }
        }
        self.ranks.order(ids);
        let added: Vec<usize> = (0..kept.len()).filter(|&p| kept[p].is_none()).collect();
        for &position in &added {
            let state = self.members_of(position, &self.acls[position]);
            add_memberships(&state, self.ranks.id(position), &mut self.memberships);
            self.acls[position] = state;
        }
        for (position, kept) in kept.iter().enumerate() {
            let compiled = match *kept {
                Some(old) => old_compiled[old].take().expect("each old entry moves once"),
                None => self.compile(position),
            };
            self.compiled.push(compiled);
        }
        self.index_entries();
        added
    }

    /// In debug builds of small tailnets: an engine edited in place equals one built afresh.
    fn debug_check_edit(&self) {
        if !cfg!(debug_assertions) || self.nodes.len() > 64 {
            return;
        }
        self.ranks.check_invariants();
        self.debug_check_memberships();
        let policy = self.policy.clone().expect("an edit sets a policy");
        let mut fresh = PolicyEngine::new(policy, self.users.clone());
        fresh.load_nodes(&self.nodes.values().cloned().collect::<Vec<_>>());
        assert_eq!(fresh.acls, self.acls, "an entry's members differ from a rebuild's");
        assert_eq!(fresh.compiled, self.compiled, "a compiled entry differs from a rebuild's");
        assert_eq!(fresh.keys, self.keys, "rule keys differ from a rebuild's");
        assert_eq!(fresh.key_first, self.key_first, "merge places differ from a rebuild's");
    }
}

/// The policy an engine held, with its entries, for `rebuild_reusing`.
pub(super) struct Reuse<'p> {
    policy: &'p Policy,
    pub(super) acls: &'p [AclState],
    pub(super) compiled: &'p [CompiledAcl],
    /// Entries by what they say (sources, destinations, protocols; not their line).
    by_text: BTreeMap<AclText<'p>, Vec<usize>>,
}

/// An entry's text without its position: sources, destinations with ports, protocols.
type AclText<'p> = (&'p [Alias], Vec<(&'p Alias, &'p [PortRange])>, &'p [u8]);

fn acl_text(acl: &Acl) -> AclText<'_> {
    let destinations = acl.destinations.iter().map(|d| (&d.alias, d.ports.as_slice())).collect();
    (&acl.sources, destinations, &acl.protocols)
}

impl<'p> Reuse<'p> {
    pub(super) fn new(
        policy: &'p Policy,
        acls: &'p [AclState],
        compiled: &'p [CompiledAcl],
    ) -> Reuse<'p> {
        assert_eq!(policy.acls.len(), compiled.len(), "a policy's entries are all compiled");
        let mut by_text: BTreeMap<AclText<'p>, Vec<usize>> = BTreeMap::new();
        for (index, acl) in policy.acls.iter().enumerate() {
            by_text.entry(acl_text(acl)).or_default().push(index);
        }
        Reuse { policy, acls, compiled, by_text }
    }

    /// Whether `policy` gives every name the meaning the old one gave it.
    pub(super) fn names_match(&self, policy: &Policy) -> bool {
        let old = self.policy;
        old.groups == policy.groups
            && old.tag_owners == policy.tag_owners
            && old.hosts == policy.hosts
    }

    /// Per entry of `acls`, an unused old entry saying the same: its members and compiled
    /// form are the new entry's (the same nodes, and names that mean the same).
    pub(super) fn match_texts(&self, acls: &[Acl]) -> Vec<Option<usize>> {
        let mut taken = vec![false; self.compiled.len()];
        let take = |acl: &Acl| {
            let candidates = self.by_text.get(&acl_text(acl))?;
            let old = *candidates.iter().find(|&&old| !taken[old])?;
            taken[old] = true;
            Some(old)
        };
        acls.iter().map(take).collect()
    }
}

/// One policy's entries, as `edit_scope` compares them.
struct Entries<'e> {
    acls: &'e [AclState],
    compiled: &'e [CompiledAcl],
    keys: &'e BTreeMap<RuleKey, BTreeSet<usize>>,
}

impl Entries<'_> {
    /// A digest that equal entries share (cheap: sizes and the sources' hash, not members).
    fn digest(&self, index: usize) -> u64 {
        let (state, compiled) = (&self.acls[index], &self.compiled[index]);
        let mut hasher = DefaultHasher::new();
        (state.src_all, state.dst_all, state.has_self, state.src_nodes.len()).hash(&mut hasher);
        (state.dst_nodes.len(), compiled.src_hash, &compiled.protocols).hash(&mut hasher);
        (&compiled.self_ports, compiled.entries.len(), compiled.self_first).hash(&mut hasher);
        hasher.finish()
    }

    /// Whether entry `index` here and entry `other` of `them` are the same entry.
    fn same(&self, index: usize, them: &Entries<'_>, other: usize) -> bool {
        self.acls[index] == them.acls[other] && self.compiled[index] == them.compiled[other]
    }

    /// Adds what `changed` entries may affect to `scope` (`PolicyEngine::edit_scope`);
    /// `None` when that is everyone.
    fn widen(&self, changed: &[usize], scope: &mut Affected) -> Option<()> {
        for &index in changed {
            let state = &self.acls[index];
            if state.src_all || state.dst_all || state.has_self {
                return None;
            }
            scope.peers.extend(state.src_nodes.iter().chain(&state.dst_nodes));
            scope.filters.extend(&state.dst_nodes);
            let Some(key) = key_of(&self.compiled[index]) else { continue };
            for &sharing in self.keys.get(&key).into_iter().flatten() {
                if self.acls[sharing].dst_all {
                    return None;
                }
                scope.filters.extend(&self.acls[sharing].dst_nodes);
            }
        }
        Some(())
    }
}
