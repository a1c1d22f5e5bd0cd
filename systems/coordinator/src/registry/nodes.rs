//! Nodes in the registry: registration and re-authentication with a pre-auth key, node-key
//! rotation, the admin's changes (rename, expire, delete, route approval), the agent's status
//! (online, endpoints), ephemeral reaping, and the invariant check over every node.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bson::{Document, doc};
use docdb::Transaction;
use sim::Env;
use wireguard::IpNet;

use super::alloc::{Allocation, ipv6_for};
use super::keys::{self, PreAuthKeyInfo};
use super::names;
use super::store::{
    LIST_MAX, META, NODES, PREAUTH_KEYS, as_i64, corrupt, decode, encode, find_one, id_filter,
    list, preauth_document, replace,
};
use super::{
    DATABASE, ENDPOINTS_MAX, ROUTES_MAX, RegisterRequest, Registry, RegistryError, TIME_SECS_MAX,
    check_count, check_time,
};
use crate::types::{Key, NodeId, NodeInfo};

/// Ephemeral nodes one `reap_ephemeral` call removes at most.
pub const REAP_BATCH_MAX: usize = 1024;

/// A node as stored: what everyone sees, and when it went offline (for ephemeral reaping).
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredNode {
    info: NodeInfo,
    offline_since: Option<u64>,
}

impl<E: Env> Registry<E> {
    /// Registers a node with a pre-auth key, or re-authenticates the node its machine key
    /// already names (same id, addresses and given name; new node key, host name, routes,
    /// endpoints and expiry). A single-use key is consumed in the same commit; presenting it
    /// again from the machine that consumed it answers that machine's node (a retried request).
    pub async fn register(&self, request: RegisterRequest) -> Result<NodeInfo, RegistryError> {
        names::check_text("host name", &request.hostname, true)?;
        check_count("advertised routes", request.advertised_routes.len(), ROUTES_MAX)?;
        check_count("endpoints", request.endpoints.len(), ENDPOINTS_MAX)?;
        if !keys::is_preauth_key_shaped(&request.preauth_key) {
            return Err(RegistryError::PreAuthKeyUnknown);
        }
        let hash = keys::hex(&keys::digest(&request.preauth_key));
        let now = self.now_secs();
        let _structure = self.structure.lock().await;
        let node = transaction!(self, "register", |txn| {
            let found = find_one(&mut txn, PREAUTH_KEYS, doc! {"hash": &hash}).await?;
            let key_document = found.ok_or(RegistryError::PreAuthKeyUnknown)?;
            let key: PreAuthKeyInfo = decode(&key_document, PREAUTH_KEYS)?;
            let machine = doc! {"machine_key": keys::hex(&request.machine_key.0)};
            match find_one(&mut txn, NODES, machine).await? {
                Some(document) => {
                    let stored = decode_node(&document)?;
                    self.reauthenticate(&mut txn, stored, key, &hash, &request, now).await
                }
                None => self.register_new(&mut txn, key, &hash, &request, now).await,
            }
        })?;
        assert_eq!((node.machine_key, node.node_key), (request.machine_key, request.node_key));
        assert!(names::is_dns_label(&node.given_name));
        Ok(node)
    }

    async fn register_new(
        &self,
        txn: &mut Transaction<E>,
        mut key: PreAuthKeyInfo,
        hash: &str,
        request: &RegisterRequest,
        now: u64,
    ) -> Result<NodeInfo, RegistryError> {
        key.check_usable(now)?;
        check_node_key_free(txn, &request.node_key, None).await?;
        let (id, allocation) = self.allocate_node(txn).await?;
        let given_name = free_given_name(txn, &request.hostname).await?;
        let tagged = !key.tags.is_empty();
        let node = NodeInfo {
            id,
            hostname: request.hostname.clone(),
            given_name,
            user: (!tagged).then_some(key.user),
            tags: key.tags.clone(),
            ipv4: allocation.ipv4,
            ipv6: allocation.ipv6,
            node_key: request.node_key,
            machine_key: request.machine_key,
            endpoints: request.endpoints.clone(),
            advertised_routes: normalized(&request.advertised_routes),
            approved_routes: Vec::new(),
            online: false,
            ephemeral: key.ephemeral,
            expiry: self.expiry_from(now, tagged),
        };
        let stored = StoredNode { info: node, offline_since: Some(now) };
        txn.collection(DATABASE, NODES).insert_one(node_document(&stored)?).await?;
        if !key.reusable {
            key.used_by = Some(id);
            replace(txn, PREAUTH_KEYS, key.id, preauth_document(&key, hash)?).await?;
        }
        Ok(stored.info)
    }

    async fn reauthenticate(
        &self,
        txn: &mut Transaction<E>,
        mut stored: StoredNode,
        mut key: PreAuthKeyInfo,
        hash: &str,
        request: &RegisterRequest,
        now: u64,
    ) -> Result<NodeInfo, RegistryError> {
        let node = &mut stored.info;
        let retried = key.used_by == Some(node.id);
        if !retried {
            key.check_usable(now)?;
        }
        let same_owner = if key.tags.is_empty() {
            node.user == Some(key.user) && node.tags.is_empty()
        } else {
            node.user.is_none() && node.tags == key.tags
        };
        if !same_owner {
            return Err(RegistryError::OwnerMismatch { node: node.id, key: key.id });
        }
        if request.node_key != node.node_key {
            check_node_key_free(txn, &request.node_key, Some(node.id)).await?;
        }
        node.node_key = request.node_key;
        node.hostname = request.hostname.clone();
        node.endpoints = request.endpoints.clone();
        node.advertised_routes = normalized(&request.advertised_routes);
        let advertised = node.advertised_routes.clone();
        node.approved_routes.retain(|route| advertised.contains(route));
        node.expiry = self.expiry_from(now, !node.tags.is_empty());
        replace(txn, NODES, node.id, node_document(&stored)?).await?;
        if !key.reusable && !retried {
            key.used_by = Some(stored.info.id);
            replace(txn, PREAUTH_KEYS, key.id, preauth_document(&key, hash)?).await?;
        }
        Ok(stored.info)
    }

    fn expiry_from(&self, now: u64, tagged: bool) -> Option<u64> {
        let lifetime = self.options.node_key_expiry_secs.filter(|_| !tagged)?;
        Some(now.saturating_add(lifetime).min(TIME_SECS_MAX))
    }

    /// Takes the next node id and address, moving the high-water mark in this transaction.
    async fn allocate_node(
        &self,
        txn: &mut Transaction<E>,
    ) -> Result<(NodeId, Allocation), RegistryError> {
        let found = find_one(txn, META, doc! {"_id": NODES}).await?;
        let field = |name: &str, absent: u64| match &found {
            None => Some(absent),
            Some(document) => match document.get(name) {
                None => Some(absent),
                Some(value) => value.as_i64().and_then(|value| u64::try_from(value).ok()),
            },
        };
        let malformed = || corrupt(META, 0, "next_id or next_ipv4_offset");
        let id = field("next_id", 1).filter(|&id| id > 0).ok_or_else(malformed)?;
        let next_offset = field("next_ipv4_offset", 0).ok_or_else(malformed)?;
        if self.env.buggify("coordinator.registry.alloc_conflict") {
            // Another registrar (a second coordinator on this database, or a registration
            // racing this one) takes the same address and commits first: this commit must
            // fail, the whole registration retry on the next address, and the address taken
            // by the racer (burnt here) never be handed out again.
            let burn = doc! {"$inc": {"next_ipv4_offset": 1_i64}};
            let options = docdb::UpdateOptions { upsert: true, ..Default::default() };
            let meta = self.db.collection(DATABASE, META);
            meta.update_one(doc! {"_id": NODES}, burn, options).await?;
        }
        let offset = u32::try_from(next_offset).unwrap_or(u32::MAX);
        let prefix_len = self.allocator.prefix_len();
        let planted = self.planted_reuse_freed_addresses();
        let allocation =
            if planted { self.lowest_free(txn).await? } else { self.allocator.allocate(offset) };
        let allocation = allocation.ok_or(RegistryError::AddressesExhausted { prefix_len })?;
        assert!(
            planted || u64::from(allocation.offset) >= next_offset,
            "the high-water mark only rises"
        );
        let high_water = (i64::from(allocation.offset) + 1).max(as_i64(next_offset));
        let meta = doc! {
            "_id": NODES,
            "next_id": as_i64(id + 1),
            "next_ipv4_offset": high_water,
        };
        txn.collection(DATABASE, META).replace_one(&doc! {"_id": NODES}, meta, true).await?;
        Ok((id, allocation))
    }

    fn planted_reuse_freed_addresses(&self) -> bool {
        cfg!(feature = "planted-bugs") && self.options.planted_reuse_freed_addresses
    }

    /// The planted bug's allocation (`RegistryOptions::planted_reuse_freed_addresses`): the
    /// lowest assignable offset no live node holds, a deleted node's included.
    async fn lowest_free(
        &self,
        txn: &mut Transaction<E>,
    ) -> Result<Option<Allocation>, RegistryError> {
        let options = docdb::FindOptions { limit: LIST_MAX, ..Default::default() };
        let documents = txn.collection(DATABASE, NODES).query(&doc! {}, &options).await?.documents;
        let mut held = BTreeSet::new();
        for document in &documents {
            let ipv4 = decode_node(document)?.info.ipv4;
            held.insert(u32::from(ipv4) - u32::from(super::alloc::IPV4_BASE));
        }
        let mut offset = 0;
        while let Some(allocation) = self.allocator.allocate(offset) {
            if !held.contains(&allocation.offset) {
                return Ok(Some(allocation));
            }
            offset = allocation.offset + 1;
        }
        Ok(None)
    }

    /// Replaces the node key of the machine's node: `old` must be its current key and `new`
    /// must be no other node's. A node that already holds `new` is returned unchanged (the
    /// agent asking again after a lost answer).
    pub async fn rotate_node_key(
        &self,
        machine_key: Key,
        old: Key,
        new: Key,
    ) -> Result<NodeInfo, RegistryError> {
        transaction!(self, "rotate node key", |txn| {
            let filter = doc! {"machine_key": keys::hex(&machine_key.0)};
            let found = find_one(&mut txn, NODES, filter).await?;
            let document = found.ok_or(RegistryError::MachineNotFound { machine_key })?;
            let mut stored = decode_node(&document)?;
            let id = stored.info.id;
            if stored.info.node_key == new {
                return Ok(stored.info);
            }
            if stored.info.node_key != old {
                return Err(RegistryError::StaleNodeKey { node: id, presented: old });
            }
            if new != old {
                check_node_key_free(&mut txn, &new, Some(id)).await?;
                stored.info.node_key = new;
                replace(&mut txn, NODES, id, node_document(&stored)?).await?;
            }
            Ok(stored.info)
        })
    }

    /// The node with that id.
    pub async fn node(&self, node: NodeId) -> Result<NodeInfo, RegistryError> {
        let mut txn = self.db.begin();
        Ok(load_node(&mut txn, node).await?.info)
    }

    /// The node of a machine, if it registered.
    pub async fn node_by_machine_key(
        &self,
        machine_key: &Key,
    ) -> Result<Option<NodeInfo>, RegistryError> {
        let mut txn = self.db.begin();
        let filter = doc! {"machine_key": keys::hex(&machine_key.0)};
        let found = find_one(&mut txn, NODES, filter).await?;
        Ok(found.map(|document| decode_node(&document)).transpose()?.map(|stored| stored.info))
    }

    /// Every node, by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut txn = self.db.begin();
        list(&mut txn, NODES, doc! {}).await
    }

    /// Deletes a node. Its id and addresses are never handed out again.
    pub async fn delete_node(&self, node: NodeId) -> Result<NodeInfo, RegistryError> {
        transaction!(self, "delete node", |txn| {
            let stored = load_node(&mut txn, node).await?;
            let deleted = txn.collection(DATABASE, NODES).delete(&id_filter(node), false).await?;
            assert_eq!(deleted, 1, "node {node} was just read");
            Ok(stored.info)
        })
    }

    /// Gives a node a new DNS label (lower-case `[a-z0-9-]`, at most 63 bytes, unique).
    pub async fn rename_node(
        &self,
        node: NodeId,
        given_name: &str,
    ) -> Result<NodeInfo, RegistryError> {
        if !names::is_dns_label(given_name) {
            let name = names::shorten(given_name);
            let reason = "is not a DNS label of [a-z0-9-], at most 63 bytes";
            return Err(RegistryError::InvalidName { what: "given name", name, reason });
        }
        transaction!(self, "rename node", |txn| {
            let mut stored = load_node(&mut txn, node).await?;
            if let Some(other) = find_one(&mut txn, NODES, doc! {"given_name": given_name}).await? {
                if other.get_i64("_id").ok() != Some(as_i64(node)) {
                    return Err(RegistryError::GivenNameTaken { name: given_name.to_string() });
                }
                return Ok(stored.info);
            }
            stored.info.given_name = given_name.to_string();
            replace(&mut txn, NODES, node, node_document(&stored)?).await?;
            Ok(stored.info)
        })
    }

    /// Makes a node's key expire at `now` (an earlier expiry stays).
    pub async fn expire_node(&self, node: NodeId, now: u64) -> Result<NodeInfo, RegistryError> {
        check_time("expiry", now)?;
        self.update_node("expire node", node, |stored| {
            stored.info.expiry = Some(stored.info.expiry.map_or(now, |at| at.min(now)));
            Ok(())
        })
        .await
    }

    /// Records where a node can be reached (a hot path: one point read, one write, no lock).
    pub async fn set_endpoints(
        &self,
        node: NodeId,
        endpoints: Vec<SocketAddr>,
    ) -> Result<NodeInfo, RegistryError> {
        check_count("endpoints", endpoints.len(), ENDPOINTS_MAX)?;
        self.update_node("set endpoints", node, |stored| {
            stored.info.endpoints = endpoints.clone();
            Ok(())
        })
        .await
    }

    /// Approves routes of a node: each must be one it advertises. Replaces the approved set.
    pub async fn approve_routes(
        &self,
        node: NodeId,
        routes: Vec<IpNet>,
    ) -> Result<NodeInfo, RegistryError> {
        check_count("approved routes", routes.len(), ROUTES_MAX)?;
        let routes = normalized(&routes);
        self.update_node("approve routes", node, |stored| {
            let advertised = &stored.info.advertised_routes;
            if let Some(route) = routes.iter().find(|route| !advertised.contains(route)) {
                return Err(RegistryError::RouteNotAdvertised { node, route: *route });
            }
            stored.info.approved_routes = routes.clone();
            Ok(())
        })
        .await
    }

    /// Records whether a node holds a map stream (a hot path: one point read, one write, no
    /// lock). An ephemeral node going offline with no grace period is deleted in the same
    /// commit, and `None` is returned.
    pub async fn set_online(
        &self,
        node: NodeId,
        online: bool,
    ) -> Result<Option<NodeInfo>, RegistryError> {
        let now = self.now_secs();
        let reap_at_once = self.options.ephemeral_grace_secs == 0;
        transaction!(self, "set online", |txn| {
            let mut stored = load_node(&mut txn, node).await?;
            if !online && stored.info.ephemeral && reap_at_once {
                txn.collection(DATABASE, NODES).delete(&id_filter(node), false).await?;
                return Ok(None);
            }
            let offline_since = if online { None } else { stored.offline_since.or(Some(now)) };
            if (stored.info.online, stored.offline_since) != (online, offline_since) {
                stored.info.online = online;
                stored.offline_since = offline_since;
                replace(&mut txn, NODES, node, node_document(&stored)?).await?;
            }
            Ok(Some(stored.info))
        })
    }

    /// Marks every online node offline as of `now`, in one commit: what a coordinator does as
    /// it starts, since no node holds a map stream with it yet. Ephemeral nodes go at once when
    /// there is no grace period. How many nodes changed.
    pub async fn reset_online(&self, now: u64) -> Result<u64, RegistryError> {
        check_time("offline time", now)?;
        let reap_at_once = self.options.ephemeral_grace_secs == 0;
        transaction!(self, "reset online", |txn| {
            let options = docdb::FindOptions { limit: LIST_MAX, ..Default::default() };
            let filter = doc! {"info.online": true};
            let documents = txn.collection(DATABASE, NODES).query(&filter, &options).await?;
            let mut changed = 0;
            for document in documents.documents {
                let mut stored = decode_node(&document)?;
                let id = stored.info.id;
                if stored.info.ephemeral && reap_at_once {
                    txn.collection(DATABASE, NODES).delete(&id_filter(id), false).await?;
                } else {
                    stored.info.online = false;
                    stored.offline_since = Some(now);
                    replace(&mut txn, NODES, id, node_document(&stored)?).await?;
                }
                changed += 1;
            }
            Ok(changed)
        })
    }

    /// Deletes the ephemeral nodes offline for at least the grace period at `now` (at most
    /// `REAP_BATCH_MAX` per call, in one commit); their ids.
    pub async fn reap_ephemeral(&self, now: u64) -> Result<Vec<NodeId>, RegistryError> {
        let grace = self.options.ephemeral_grace_secs;
        transaction!(self, "reap ephemeral", |txn| {
            let filter = doc! {"info.ephemeral": true, "info.online": false};
            let candidates: Vec<Document> = {
                let options = docdb::FindOptions { limit: LIST_MAX, ..Default::default() };
                let mut nodes = txn.collection(DATABASE, NODES);
                nodes.query(&filter, &options).await?.documents
            };
            let mut reaped = Vec::new();
            for document in candidates {
                let stored = decode_node(&document)?;
                let since = stored.offline_since.unwrap_or(0);
                if since.saturating_add(grace) <= now && reaped.len() < REAP_BATCH_MAX {
                    let filter = id_filter(stored.info.id);
                    txn.collection(DATABASE, NODES).delete(&filter, false).await?;
                    reaped.push(stored.info.id);
                }
            }
            Ok(reaped)
        })
    }

    /// Reads a node, lets `change` modify it, and writes it back if it changed.
    async fn update_node(
        &self,
        operation: &'static str,
        node: NodeId,
        change: impl Fn(&mut StoredNode) -> Result<(), RegistryError> + Send + Sync,
    ) -> Result<NodeInfo, RegistryError> {
        transaction!(self, operation, |txn| {
            let mut stored = load_node(&mut txn, node).await?;
            let before = stored.clone();
            change(&mut stored)?;
            assert_eq!(stored.info.id, node, "a change keeps the node's id");
            if stored != before {
                replace(&mut txn, NODES, node, node_document(&stored)?).await?;
            }
            Ok(stored.info)
        })
    }

    /// The allocator's high-water mark: the next IPv4 offset it will try.
    pub async fn next_ipv4_offset(&self) -> Result<u32, RegistryError> {
        let mut txn = self.db.begin();
        let found = find_one(&mut txn, META, doc! {"_id": NODES}).await?;
        let offset = found.map_or(Some(0), |document| document.get_i64("next_ipv4_offset").ok());
        offset
            .and_then(|offset| u32::try_from(offset).ok())
            .ok_or_else(|| corrupt(META, 0, "next_ipv4_offset"))
    }

    /// Checks every node against the registry's invariants in one snapshot and returns how
    /// many there are. Panics on a violation (it is a bug, not bad input): two nodes sharing an
    /// address, a key or a given name; an address at or above the high-water mark; an IPv6
    /// address not paired with its IPv4 one; index fields disagreeing with `info`.
    pub async fn check_invariants(&self) -> Result<u64, RegistryError> {
        let mut txn = self.db.begin();
        let high_water = {
            let found = find_one(&mut txn, META, doc! {"_id": NODES}).await?;
            found.and_then(|document| document.get_i64("next_ipv4_offset").ok()).unwrap_or(0)
        };
        let options = docdb::FindOptions { limit: LIST_MAX, ..Default::default() };
        let documents = txn.collection(DATABASE, NODES).query(&doc! {}, &options).await?.documents;
        let mut seen: [BTreeSet<String>; 5] = Default::default();
        for document in &documents {
            let stored = decode_node(document)?;
            let node = &stored.info;
            assert_eq!(&node_document(&stored)?, document, "node {} index fields", node.id);
            let values = [
                node.ipv4.to_string(),
                node.ipv6.to_string(),
                keys::hex(&node.node_key.0),
                keys::hex(&node.machine_key.0),
                node.given_name.clone(),
            ];
            for (set, value) in seen.iter_mut().zip(values) {
                assert!(set.insert(value.clone()), "two nodes hold {value}");
            }
            let offset = u32::from(node.ipv4) - u32::from(super::alloc::IPV4_BASE);
            assert!(
                i64::from(offset) < high_water,
                "{} at or above the high-water mark",
                node.ipv4
            );
            assert!(self.allocator.is_assignable(offset), "{} is not assignable", node.ipv4);
            assert_eq!(node.ipv6, ipv6_for(node.ipv4), "node {} IPv6 pairs IPv4", node.id);
            assert!(names::is_dns_label(&node.given_name));
            assert_eq!(node.user.is_none(), !node.tags.is_empty(), "node {} owner", node.id);
            assert!(node.approved_routes.iter().all(|r| node.advertised_routes.contains(r)));
        }
        Ok(documents.len() as u64)
    }
}

/// Sorted and without duplicates.
fn normalized(routes: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = routes.iter().copied().collect();
    set.into_iter().collect()
}

/// A node's document: index fields beside the whole `NodeInfo` (see the module doc).
fn node_document(stored: &StoredNode) -> Result<Document, RegistryError> {
    let node = &stored.info;
    Ok(doc! {
        "_id": as_i64(node.id),
        "machine_key": keys::hex(&node.machine_key.0),
        "node_key": keys::hex(&node.node_key.0),
        "given_name": &node.given_name,
        "ipv4": node.ipv4.to_string(),
        "user": node.user.map(as_i64),
        "offline_since": stored.offline_since.map(as_i64),
        "info": encode(node)?,
    })
}

fn decode_node(document: &Document) -> Result<StoredNode, RegistryError> {
    let info: NodeInfo = decode(document, NODES)?;
    let offline_since = match document.get("offline_since") {
        Some(bson::Bson::Int64(since)) => Some(u64::try_from(*since).ok()),
        Some(bson::Bson::Null) | None => None,
        Some(_) => Some(None),
    };
    let offline_since = match offline_since {
        Some(None) => return Err(corrupt(NODES, info.id, "offline_since")),
        Some(since) => since,
        None => None,
    };
    if document.get_i64("_id").ok() != Some(as_i64(info.id)) {
        return Err(corrupt(NODES, info.id, "_id"));
    }
    Ok(StoredNode { info, offline_since })
}

async fn load_node<E: Env>(
    txn: &mut Transaction<E>,
    node: NodeId,
) -> Result<StoredNode, RegistryError> {
    let found = find_one(txn, NODES, id_filter(node)).await?;
    decode_node(&found.ok_or(RegistryError::NodeNotFound { node })?)
}

/// `NodeKeyInUse` if a node other than `owner` holds `node_key`.
async fn check_node_key_free<E: Env>(
    txn: &mut Transaction<E>,
    node_key: &Key,
    owner: Option<NodeId>,
) -> Result<(), RegistryError> {
    let found = find_one(txn, NODES, doc! {"node_key": keys::hex(&node_key.0)}).await?;
    let Some(document) = found else { return Ok(()) };
    let holder = decode_node(&document)?.info.id;
    if Some(holder) == owner {
        return Ok(());
    }
    Err(RegistryError::NodeKeyInUse { node_key: *node_key, node: holder })
}

/// A free given name for `hostname`: its DNS label if free, else `label-N` from the label's
/// hint in `meta` (the suffix after the last one handed out), wrapping around once to reuse
/// suffixes freed by deletions and renames. The hint keeps a storm of equal host names at a
/// few lookups per registration instead of one per node already named alike.
async fn free_given_name<E: Env>(
    txn: &mut Transaction<E>,
    hostname: &str,
) -> Result<String, RegistryError> {
    let base = names::dns_label(hostname);
    if !given_name_taken(txn, &base).await? {
        return Ok(base);
    }
    let hint_id = format!("given_name/{base}");
    let found = find_one(txn, META, doc! {"_id": &hint_id}).await?;
    let hint = found
        .and_then(|document| document.get_i64("next_suffix").ok())
        .and_then(|suffix| u32::try_from(suffix).ok())
        .filter(|suffix| (1..=names::SUFFIX_MAX).contains(suffix))
        .unwrap_or(1);
    for attempt in (hint..=names::SUFFIX_MAX).chain(1..hint) {
        let name = names::candidate(&base, attempt);
        if !given_name_taken(txn, &name).await? {
            let next = doc! {"_id": &hint_id, "next_suffix": i64::from(attempt) + 1};
            let mut meta = txn.collection(DATABASE, META);
            meta.replace_one(&doc! {"_id": &hint_id}, next, true).await?;
            return Ok(name);
        }
    }
    Err(RegistryError::GivenNamesExhausted { base })
}

async fn given_name_taken<E: Env>(
    txn: &mut Transaction<E>,
    name: &str,
) -> Result<bool, RegistryError> {
    Ok(find_one(txn, NODES, doc! {"given_name": name}).await?.is_some())
}
