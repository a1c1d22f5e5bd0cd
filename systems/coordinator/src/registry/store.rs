//! `Registry`: the handle over the docdb collections, with users, pre-auth keys, API keys,
//! the stored policy, id counters and the document helpers the node operations share.

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, doc};
use docdb::{DocDb, FindOptions, IndexSpec, Transaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sim::Env;

use super::alloc::Allocator;
use super::keys::{self, ApiKeyInfo, PreAuthKeyInfo};
use super::names::{self, check_text};
use super::{
    CreatedApiKey, CreatedPreAuthKey, DATABASE, POLICY_BYTES_MAX, PolicyRecord, PreAuthKeyOptions,
    RegistryError, RegistryOptions, TAGS_MAX, check_count, check_time,
};
use crate::types::{User, UserId};

/// Collection names.
pub(super) const USERS: &str = "users";
pub(super) const NODES: &str = "nodes";
pub(super) const PREAUTH_KEYS: &str = "preauth_keys";
pub(super) const API_KEYS: &str = "api_keys";
pub(super) const POLICY: &str = "policy";
pub(super) const META: &str = "meta";

/// Documents a listing returns at most (a limit on memory, far above any tailnet we serve).
pub const LIST_MAX: u64 = 1_000_000;
/// Fresh API key prefixes tried when one collides with an existing key's.
const PREFIX_ATTEMPTS_MAX: u32 = 8;

/// The unique (`true`) and plain indexes of each collection.
const INDEXES: [(&str, &str, bool); 8] = [
    (USERS, "name", true),
    (NODES, "machine_key", true),
    (NODES, "node_key", true),
    (NODES, "given_name", true),
    (NODES, "ipv4", true),
    (NODES, "user", false),
    (PREAUTH_KEYS, "hash", true),
    (API_KEYS, "prefix", true),
];

/// The control plane's durable state on one `DocDb` (see the module doc of `registry`).
pub struct Registry<E: Env> {
    pub(super) env: E,
    pub(super) db: DocDb<E>,
    pub(super) options: RegistryOptions,
    pub(super) allocator: Allocator,
    /// Serialises structural changes in this process (see "Concurrency" in the module doc).
    pub(super) structure: Arc<futures::lock::Mutex<()>>,
}

impl<E: Env> Clone for Registry<E> {
    fn clone(&self) -> Self {
        Registry {
            env: self.env.clone(),
            db: self.db.clone(),
            options: self.options.clone(),
            allocator: self.allocator,
            structure: Arc::clone(&self.structure),
        }
    }
}

impl<E: Env> Registry<E> {
    /// Opens the registry on `db`, creating its collections and indexes if missing.
    pub async fn open(
        env: E,
        db: DocDb<E>,
        options: RegistryOptions,
    ) -> Result<Registry<E>, RegistryError> {
        let allocator = Allocator::new(options.ipv4_prefix_len).ok_or_else(|| {
            RegistryError::InvalidOptions(format!(
                "ipv4_prefix_len {} outside 10..=30",
                options.ipv4_prefix_len
            ))
        })?;
        let structure = Arc::new(futures::lock::Mutex::new(()));
        let registry = Registry { env, db, options, allocator, structure };
        transaction!(registry, "open", |txn| {
            for (collection, field, unique) in INDEXES {
                let spec = IndexSpec { keys: doc! {field: 1}, unique, ..IndexSpec::default() };
                txn.collection(DATABASE, collection).create_index(&spec).await?;
            }
            Ok(())
        })?;
        Ok(registry)
    }

    /// The database underneath (for change streams: `db().watch(...)`).
    pub fn db(&self) -> &DocDb<E> {
        &self.db
    }

    /// The address allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// The wall clock in unix seconds (0 before 1970).
    pub fn now_secs(&self) -> u64 {
        let wall = self.env.wall();
        wall.duration_since(std::time::UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0)
    }

    /// Runs after every successful commit, before the caller hears of it.
    pub(super) async fn after_commit(&self) {
        if self.env.buggify("coordinator.registry.slow_commit") {
            // The reply to a committed change is slow (a descheduled task, a slow disk
            // acknowledgement): other callers act meanwhile, and a crash here loses the reply
            // but not the change, so a client retrying must meet an idempotent answer.
            self.env.sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- Users.

    /// Creates a user with a unique name and an optional e-mail address.
    pub async fn create_user(
        &self,
        name: &str,
        email: Option<&str>,
    ) -> Result<User, RegistryError> {
        check_text("user name", name, false)?;
        check_text("e-mail", email.unwrap_or(""), true)?;
        let _structure = self.structure.lock().await;
        let user = transaction!(self, "create user", |txn| {
            let id = next_id(&mut txn, USERS).await?;
            let user = User { id, name: name.to_string(), email: email.map(str::to_string) };
            let document = doc! {"_id": as_i64(id), "name": name, "info": encode(&user)?};
            let inserted = txn.collection(DATABASE, USERS).insert_one(document).await;
            duplicate_as(inserted, "name_1", || RegistryError::UserExists { name: name.into() })?;
            Ok(user)
        })?;
        assert!(user.id > 0 && user.name == name);
        Ok(user)
    }

    /// Renames a user (the new name must be free).
    pub async fn rename_user(&self, user: UserId, name: &str) -> Result<User, RegistryError> {
        check_text("user name", name, false)?;
        let _structure = self.structure.lock().await;
        transaction!(self, "rename user", |txn| {
            let mut stored = load_user(&mut txn, user).await?;
            stored.name = name.to_string();
            let document = doc! {"_id": as_i64(user), "name": name, "info": encode(&stored)?};
            let replaced = replace(&mut txn, USERS, user, document).await;
            duplicate_as(replaced, "name_1", || RegistryError::UserExists { name: name.into() })?;
            Ok(stored)
        })
    }

    /// Deletes a user that owns no nodes, with its pre-auth keys.
    pub async fn delete_user(&self, user: UserId) -> Result<User, RegistryError> {
        let _structure = self.structure.lock().await;
        transaction!(self, "delete user", |txn| {
            let stored = load_user(&mut txn, user).await?;
            let mut nodes = txn.collection(DATABASE, NODES);
            let owned = nodes.count(&doc! {"user": as_i64(user)}).await?;
            if owned > 0 {
                return Err(RegistryError::UserOwnsNodes { user, nodes: owned });
            }
            let mut preauth = txn.collection(DATABASE, PREAUTH_KEYS);
            preauth.delete(&doc! {"user": as_i64(user)}, true).await?;
            let deleted = txn.collection(DATABASE, USERS).delete(&id_filter(user), false).await?;
            assert_eq!(deleted, 1, "the user was just read");
            Ok(stored)
        })
    }

    /// The user with that id.
    pub async fn user(&self, user: UserId) -> Result<User, RegistryError> {
        let mut txn = self.db.begin();
        load_user(&mut txn, user).await
    }

    /// The user with that name, if any.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, RegistryError> {
        let mut txn = self.db.begin();
        let found = find_one(&mut txn, USERS, doc! {"name": name}).await?;
        found.map(|document| decode(&document, USERS)).transpose()
    }

    /// Every user, by id.
    pub async fn list_users(&self) -> Result<Vec<User>, RegistryError> {
        let mut txn = self.db.begin();
        list(&mut txn, USERS, doc! {}).await
    }

    // ---- Pre-auth keys.

    /// Creates a pre-auth key for `user`; its text is returned here and never again.
    pub async fn create_preauth_key(
        &self,
        user: UserId,
        options: PreAuthKeyOptions,
    ) -> Result<CreatedPreAuthKey, RegistryError> {
        check_count("ACL tags", options.tags.len(), TAGS_MAX)?;
        check_time("expiration", options.expiration.unwrap_or(0))?;
        options.tags.iter().try_for_each(|tag| names::check_tag(tag))?;
        let mut tags = options.tags.clone();
        tags.sort();
        tags.dedup();
        let now = self.now_secs();
        let text = keys::new_preauth_key(&mut self.env.rng());
        let hash = keys::hex(&keys::digest(&text));
        let _structure = self.structure.lock().await;
        let info = transaction!(self, "create pre-auth key", |txn| {
            load_user(&mut txn, user).await?;
            let info = PreAuthKeyInfo {
                id: next_id(&mut txn, PREAUTH_KEYS).await?,
                user,
                reusable: options.reusable,
                ephemeral: options.ephemeral,
                tags: tags.clone(),
                created: now,
                expiration: options.expiration,
                used_by: None,
            };
            let document = preauth_document(&info, &hash)?;
            txn.collection(DATABASE, PREAUTH_KEYS).insert_one(document).await?;
            Ok(info)
        })?;
        assert!(keys::is_preauth_key_shaped(&text));
        Ok(CreatedPreAuthKey { key: text, info })
    }

    /// The pre-auth keys of `user` (all users' with `None`), by id.
    pub async fn list_preauth_keys(
        &self,
        user: Option<UserId>,
    ) -> Result<Vec<PreAuthKeyInfo>, RegistryError> {
        let filter = match user {
            Some(user) => doc! {"user": as_i64(user)},
            None => doc! {},
        };
        let mut txn = self.db.begin();
        list(&mut txn, PREAUTH_KEYS, filter).await
    }

    /// Makes a pre-auth key expire at `now` (an earlier expiration stays).
    pub async fn expire_preauth_key(
        &self,
        key: u64,
        now: u64,
    ) -> Result<PreAuthKeyInfo, RegistryError> {
        check_time("expiration", now)?;
        let _structure = self.structure.lock().await;
        transaction!(self, "expire pre-auth key", |txn| {
            let found = find_one(&mut txn, PREAUTH_KEYS, id_filter(key)).await?;
            let document = found.ok_or(RegistryError::PreAuthKeyNotFound { key })?;
            let mut info: PreAuthKeyInfo = decode(&document, PREAUTH_KEYS)?;
            info.expiration = Some(info.expiration.map_or(now, |at| at.min(now)));
            let hash = document.get_str("hash").map_err(|_| corrupt(PREAUTH_KEYS, key, "hash"))?;
            let replacement = preauth_document(&info, hash)?;
            replace(&mut txn, PREAUTH_KEYS, key, replacement).await?;
            Ok(info)
        })
    }

    // ---- API keys.

    /// Creates an API key; its text is returned here and never again.
    pub async fn create_api_key(
        &self,
        expiration: Option<u64>,
    ) -> Result<CreatedApiKey, RegistryError> {
        check_time("expiration", expiration.unwrap_or(0))?;
        let now = self.now_secs();
        for _ in 0..PREFIX_ATTEMPTS_MAX {
            let (prefix, text) = keys::new_api_key(&mut self.env.rng());
            let (_, secret) = keys::parse_api_key(&text).expect("a fresh key parses");
            let hash = keys::hex(&keys::digest(secret));
            let _structure = self.structure.lock().await;
            let created = transaction!(self, "create API key", |txn| {
                let id = next_id(&mut txn, API_KEYS).await?;
                let info = ApiKeyInfo {
                    id,
                    prefix: prefix.clone(),
                    created: now,
                    expiration,
                    revoked: false,
                };
                let document = doc! {
                    "_id": as_i64(id), "prefix": &prefix, "hash": &hash, "info": encode(&info)?,
                };
                match txn.collection(DATABASE, API_KEYS).insert_one(document).await {
                    Err(docdb::Error::DuplicateKey { index, .. }) if index == "prefix_1" => {
                        Ok(None)
                    }
                    inserted => inserted.map(|_| Some(info)).map_err(RegistryError::from),
                }
            })?;
            if let Some(info) = created {
                return Ok(CreatedApiKey { key: text, info });
            }
        }
        Err(RegistryError::Contention {
            operation: "create API key",
            attempts: PREFIX_ATTEMPTS_MAX,
        })
    }

    /// Checks an API key at `now`: its record if the secret matches (compared in constant
    /// time) and it is neither expired nor revoked.
    pub async fn verify_api_key(&self, key: &str, now: u64) -> Result<ApiKeyInfo, RegistryError> {
        let (prefix, secret) = keys::parse_api_key(key).ok_or(RegistryError::ApiKeyMalformed)?;
        let presented = keys::digest(secret);
        let mut txn = self.db.begin();
        let found = find_one(&mut txn, API_KEYS, doc! {"prefix": prefix}).await?;
        let unknown = || RegistryError::ApiKeyUnknown { prefix: prefix.to_string() };
        let Some(document) = found else {
            // Compare anyway, so an unknown prefix costs what a wrong secret does.
            keys::digests_equal(&presented, &[0; 32]);
            return Err(unknown());
        };
        let info: ApiKeyInfo = decode(&document, API_KEYS)?;
        let stored = document.get_str("hash").ok().and_then(parse_digest);
        let stored = stored.ok_or_else(|| corrupt(API_KEYS, info.id, "hash"))?;
        if !keys::digests_equal(&presented, &stored) {
            return Err(unknown());
        }
        info.check_usable(now)?;
        Ok(info)
    }

    /// Revokes an API key for good.
    pub async fn revoke_api_key(&self, key: u64) -> Result<ApiKeyInfo, RegistryError> {
        transaction!(self, "revoke API key", |txn| {
            let found = find_one(&mut txn, API_KEYS, id_filter(key)).await?;
            let mut document = found.ok_or(RegistryError::ApiKeyNotFound { key })?;
            let mut info: ApiKeyInfo = decode(&document, API_KEYS)?;
            info.revoked = true;
            document.insert("info", encode(&info)?);
            replace(&mut txn, API_KEYS, key, document).await?;
            Ok(info)
        })
    }

    /// Every API key's record, by id.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, RegistryError> {
        let mut txn = self.db.begin();
        list(&mut txn, API_KEYS, doc! {}).await
    }

    // ---- Policy.

    /// Stores a new policy text; with `expected_version`, only if that is the current version
    /// (0: no policy yet). Returns the new record.
    pub async fn set_policy(
        &self,
        text: &str,
        expected_version: Option<u64>,
    ) -> Result<PolicyRecord, RegistryError> {
        check_count("policy bytes", text.len(), POLICY_BYTES_MAX)?;
        transaction!(self, "set policy", |txn| {
            let current = load_policy(&mut txn).await?.map_or(0, |record| record.version);
            if let Some(expected) = expected_version
                && expected != current
            {
                return Err(RegistryError::PolicyVersionMismatch { expected, current });
            }
            let version = current + 1;
            let document = doc! {"_id": "current", "version": as_i64(version), "text": text};
            // A whole-document write, so the change event carries the text (an insert the
            // first time, a replace after).
            let mut policy = txn.collection(DATABASE, POLICY);
            policy.replace_one(&doc! {"_id": "current"}, document, true).await?;
            Ok(PolicyRecord { version, text: text.to_string() })
        })
    }

    /// The stored policy, if any.
    pub async fn policy(&self) -> Result<Option<PolicyRecord>, RegistryError> {
        let mut txn = self.db.begin();
        load_policy(&mut txn).await
    }
}

// ---- Document helpers shared with `nodes`.

/// An id as BSON stores it (ids stay far below `i64::MAX`: they count registrations).
pub(super) fn as_i64(id: u64) -> i64 {
    i64::try_from(id).expect("ids and offsets stay below 2^63")
}

/// `{_id: id}`.
pub(super) fn id_filter(id: u64) -> Document {
    doc! {"_id": as_i64(id)}
}

/// The error for a stored document whose `field` is missing or malformed.
pub(super) fn corrupt(collection: &str, id: u64, field: &str) -> RegistryError {
    RegistryError::Corrupt {
        what: format!("{collection}/{id}"),
        reason: format!("field '{field}' is missing or malformed"),
    }
}

/// A value as a BSON document (serde).
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Document, RegistryError> {
    bson::serialize_to_document(value).map_err(|error| RegistryError::Corrupt {
        what: std::any::type_name::<T>().to_string(),
        reason: format!("does not encode: {error}"),
    })
}

/// The `info` field of a stored document, decoded.
pub(super) fn decode<T: DeserializeOwned>(
    document: &Document,
    collection: &str,
) -> Result<T, RegistryError> {
    let what = || format!("{collection}/{}", document.get("_id").unwrap_or(&Bson::Null));
    let info = document.get_document("info").map_err(|_| RegistryError::Corrupt {
        what: what(),
        reason: "no 'info' document".into(),
    })?;
    bson::deserialize_from_document(info.clone())
        .map_err(|error| RegistryError::Corrupt { what: what(), reason: error.to_string() })
}

/// A docdb result whose duplicate-key failure on `index` becomes `error()`.
pub(super) fn duplicate_as<T>(
    result: docdb::Result<T>,
    index: &str,
    error: impl FnOnce() -> RegistryError,
) -> Result<T, RegistryError> {
    match result {
        Err(docdb::Error::DuplicateKey { index: hit, .. }) if hit == index => Err(error()),
        other => other.map_err(RegistryError::from),
    }
}

/// The first document matching `filter`.
pub(super) async fn find_one<E: Env>(
    txn: &mut Transaction<E>,
    collection: &str,
    filter: Document,
) -> Result<Option<Document>, RegistryError> {
    let options = FindOptions { limit: 1, ..FindOptions::default() };
    let output = txn.collection(DATABASE, collection).query(&filter, &options).await?;
    Ok(output.documents.into_iter().next())
}

/// Every document matching `filter`, by `_id`, decoded.
pub(super) async fn list<E: Env, T: DeserializeOwned>(
    txn: &mut Transaction<E>,
    collection: &str,
    filter: Document,
) -> Result<Vec<T>, RegistryError> {
    let options =
        FindOptions { sort: Some(doc! {"_id": 1}), limit: LIST_MAX, ..FindOptions::default() };
    let output = txn.collection(DATABASE, collection).query(&filter, &options).await?;
    output.documents.iter().map(|document| decode(document, collection)).collect()
}

/// Replaces the document with `_id == id` (which the caller read in this transaction).
pub(super) async fn replace<E: Env>(
    txn: &mut Transaction<E>,
    collection: &str,
    id: u64,
    document: Document,
) -> docdb::Result<()> {
    let filter = id_filter(id);
    let mut handle = txn.collection(DATABASE, collection);
    let result = handle.replace_one(&filter, document, false).await?;
    assert_eq!(result.matched_count, 1, "{collection}/{id} was read in this transaction");
    Ok(())
}

/// Takes the next id of a counter in `meta` (ids start at 1).
pub(super) async fn next_id<E: Env>(
    txn: &mut Transaction<E>,
    counter: &str,
) -> Result<u64, RegistryError> {
    let found = find_one(txn, META, doc! {"_id": counter}).await?;
    let id = match &found {
        None => 1,
        Some(document) => document
            .get_i64("next_id")
            .ok()
            .and_then(|id| u64::try_from(id).ok())
            .filter(|&id| id > 0)
            .ok_or_else(|| RegistryError::Corrupt {
                what: format!("{META}/{counter}"),
                reason: "no positive 'next_id'".into(),
            })?,
    };
    let options = docdb::UpdateOptions { upsert: true, ..Default::default() };
    let mut meta = txn.collection(DATABASE, META);
    meta.update(
        &doc! {"_id": counter},
        &doc! {"$set": {"next_id": as_i64(id + 1)}},
        &options,
        false,
    )
    .await?;
    Ok(id)
}

async fn load_user<E: Env>(txn: &mut Transaction<E>, user: UserId) -> Result<User, RegistryError> {
    let found = find_one(txn, USERS, id_filter(user)).await?;
    let document = found.ok_or(RegistryError::UserNotFound { user })?;
    let stored: User = decode(&document, USERS)?;
    assert_eq!(stored.id, user, "a user document holds its own id");
    Ok(stored)
}

async fn load_policy<E: Env>(
    txn: &mut Transaction<E>,
) -> Result<Option<PolicyRecord>, RegistryError> {
    let Some(document) = find_one(txn, POLICY, doc! {"_id": "current"}).await? else {
        return Ok(None);
    };
    let malformed = || RegistryError::Corrupt {
        what: format!("{POLICY}/current"),
        reason: "no positive 'version' or no 'text'".into(),
    };
    let version = document.get_i64("version").ok().and_then(|v| u64::try_from(v).ok());
    let text = document.get_str("text").ok();
    match (version, text) {
        (Some(version), Some(text)) if version > 0 => {
            Ok(Some(PolicyRecord { version, text: text.to_string() }))
        }
        _ => Err(malformed()),
    }
}

/// A pre-auth key's document.
pub(super) fn preauth_document(
    info: &PreAuthKeyInfo,
    hash: &str,
) -> Result<Document, RegistryError> {
    Ok(doc! {
        "_id": as_i64(info.id), "hash": hash, "user": as_i64(info.user), "info": encode(info)?,
    })
}

/// A hex SHA-256 digest back to bytes.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}
