//! The tasks of `docdb-txn`'s node: the opener (recovery, index check, final reads), the
//! clients, the index builder and the change-stream consumer.
//!
//! Every task of one opening stops when a commit fails (the store stops taking writes) or the
//! run ends; the opener then closes the database and opens it again. A crash kills them all;
//! the history lives outside the node and keeps what they recorded.

use std::time::Duration;

use ::docdb::{ChangeEvent, UpdateOptions};
use ::docdb::{DocDb, Error, FindOptions, IndexSpec, Options, ResumeToken, Scope, Transaction};
use bson::{Bson, Document, doc};
use invariants::Violation;
use invariants::snapshot_isolation::Operation;
use rand::Rng;
use sim::Env;
use sim::world::SimEnv;

use super::{Config, FinalState, LogStatus, LoggedEvent, Shared, Status, TxnRecord, lock};

const DB_DIR: &str = "docdb";
const DATABASE: &str = "app";
/// The two collections of the key set; even keys live in `a`, odd ones in `b`.
const COLLECTIONS: [&str; 2] = ["a", "b"];
/// The collection the consumer watches.
pub(super) const WATCHED: &str = "a";
const LOG: &str = "log";
const CURSOR: &str = "cursor";
const CONSUMER_ID: &str = "consumer";
/// Distinct values of the indexed `group` field.
const GROUP_COUNT: u64 = 3;
const OPEN_ATTEMPTS_MAX: u32 = 2_000;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Openings of the database per boot of the node (each after a failed commit).
const REOPEN_COUNT_MAX: u32 = 10_000;
/// Events the consumer processes before it stores its token.
const EVENTS_PER_TOKEN_MAX: usize = 8;
/// Events read by one final scan of the change log, at most.
const FINAL_EVENTS_MAX: usize = 1_000_000;
/// Simulated time the final recovery and reads may take.
pub(super) const FINAL_BUDGET: Duration = Duration::from_secs(120);

/// The collection and `_id` of key `key`.
fn place(key: u32) -> (&'static str, i64) {
    (COLLECTIONS[(key % 2) as usize], i64::from(key))
}

/// The history's name of key `key`.
pub(super) fn key_name(key: u32) -> String {
    let (collection, id) = place(key);
    format!("{collection}/{id}")
}

/// The database's options; its store counts its work in `activity` (for the run's coverage).
fn options(activity: &lsm::Activity) -> Options {
    let lsm = lsm::Options { activity: Some(activity.clone()), ..lsm::Options::tiny() };
    Options { lsm, ..Options::default() }
}

/// The `v` of a stored document; a document without one reads as a value nobody wrote.
fn value_of(document: &Document) -> u64 {
    document.get_i64("v").map_or(u64::MAX, |v| v as u64)
}

fn key_of(id: Option<&Bson>, key_count: u32) -> Option<u32> {
    match id {
        Some(Bson::Int64(id)) => u32::try_from(*id).ok().filter(|key| *key < key_count),
        _ => None,
    }
}

fn stopped(shared: &Shared, epoch: u32, config: &Config, env: &SimEnv) -> bool {
    env.now() >= config.stop_at || lock(shared).stopped >= epoch
}

fn stop(shared: &Shared, epoch: u32) {
    let mut history = lock(shared);
    history.stopped = history.stopped.max(epoch);
}

async fn open(env: &SimEnv, activity: &lsm::Activity) -> Option<DocDb<SimEnv>> {
    for _ in 0..OPEN_ATTEMPTS_MAX {
        match DocDb::open(env.clone(), DB_DIR, options(activity)).await {
            Ok(db) => return Some(db),
            Err(error) => {
                tracing::debug!(target: "docdb", %error, "open failed, retrying");
                env.sleep(OPEN_RETRY_DELAY).await;
            }
        }
    }
    None
}

/// The node's main task: open (a recovery: check the indexes), run the tasks until a commit
/// fails or time is up, close, reopen. Once the run is over, a boot does the final reads.
/// The store counts its work in `activity`.
pub(super) async fn db_main(env: SimEnv, config: Config, shared: Shared, activity: lsm::Activity) {
    for _ in 0..REOPEN_COUNT_MAX {
        let Some(db) = open(&env, &activity).await else { return };
        if env.now() >= config.stop_at {
            final_reads(&db, &config, &shared).await;
            let _ = db.close().await;
            return;
        }
        verify_recovery(&db, &shared, "recovery").await;
        let epoch = {
            let mut history = lock(&shared);
            history.epoch += 1;
            history.epoch
        };
        let mut tasks = Vec::new();
        for client in 0..config.client_count {
            let task = client_main(env.clone(), db.clone(), config, client, epoch, shared.clone());
            tasks.push(env.spawn(task));
        }
        tasks.push(env.spawn(consumer_main(
            env.clone(),
            db.clone(),
            config,
            epoch,
            shared.clone(),
        )));
        if !lock(&shared).index_built {
            tasks.push(env.spawn(index_main(
                env.clone(),
                db.clone(),
                config,
                epoch,
                shared.clone(),
            )));
        }
        for task in tasks {
            let _ = task.await;
        }
        let _ = db.close().await;
        if env.now() >= config.stop_at {
            return;
        }
    }
}

/// Checks every index against a rebuild from the documents; a disagreement is a violation,
/// a storage error (a faulty disk) is not.
async fn verify_recovery(db: &DocDb<SimEnv>, shared: &Shared, when: &str) -> bool {
    let report = match db.verify_indexes().await {
        Ok(report) => report,
        Err(error) => {
            tracing::debug!(target: "docdb", %error, "index check failed");
            return false;
        }
    };
    let mut history = lock(shared);
    history.recoveries_verified += 1;
    if !report.is_consistent() {
        let problems: Vec<String> = report.problems.iter().take(4).map(|p| p.to_string()).collect();
        let message = format!(
            "after {when} {} of {} index entries disagree with the documents: {}",
            report.problem_count,
            report.entry_count,
            problems.join("; ")
        );
        history.violations.push(Violation::new("index-consistency", message));
    }
    true
}

async fn client_main(
    env: SimEnv,
    db: DocDb<SimEnv>,
    config: Config,
    client: u32,
    epoch: u32,
    shared: Shared,
) {
    let mut rng = env.rng();
    while !stopped(&shared, epoch, &config, &env) {
        env.sleep(Duration::from_millis(rng.random_range(0..=config.think_ms_max))).await;
        let choice = rng.random_range(0..100u32);
        let healthy = if choice < 8 {
            log_insert(&env, &db, &shared).await
        } else if choice < 14 {
            auto_read(&env, &db, &mut rng, &config, client, &shared).await;
            true
        } else {
            transaction(&env, &db, &mut rng, &config, client, &shared).await
        };
        if !healthy {
            stop(&shared, epoch);
        }
    }
}

/// An auto-commit insert into the log collection; false if the store failed.
async fn log_insert(env: &SimEnv, db: &DocDb<SimEnv>, shared: &Shared) -> bool {
    let id = {
        let mut history = lock(shared);
        history.logs.push(LogStatus::Pending);
        history.logs.len() as i64 - 1
    };
    let at = env.now().as_nanos() as i64;
    let result = db.collection(DATABASE, LOG).insert_one(doc! {"_id": id, "at": at}).await;
    let status = if result.is_ok() { LogStatus::Acked } else { LogStatus::Failed };
    lock(shared).logs[id as usize] = status;
    result.is_ok()
}

/// An auto-commit read of one key, recorded as a read-only transaction.
async fn auto_read(
    env: &SimEnv,
    db: &DocDb<SimEnv>,
    rng: &mut impl Rng,
    config: &Config,
    client: u32,
    shared: &Shared,
) {
    let key = rng.random_range(0..config.key_count);
    let (collection, id) = place(key);
    let call_nanos = env.now().as_nanos();
    let Ok(found) = db.collection(DATABASE, collection).find_one(doc! {"_id": id}, None).await
    else {
        return;
    };
    let operations =
        vec![Operation::Read { key: key_name(key), value: found.as_ref().map(value_of) }];
    let record = TxnRecord {
        client,
        call_nanos,
        return_nanos: Some(env.now().as_nanos()),
        status: Status::Committed(0),
        operations,
    };
    lock(shared).txns.push(record);
}

/// Distinct keys, `count` of them at most.
fn draw_keys(rng: &mut impl Rng, key_count: u32, count: u32) -> Vec<u32> {
    let mut keys = Vec::new();
    for _ in 0..count {
        let key = rng.random_range(0..key_count);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// One transaction: reads, maybe a query through the index, writes, commit. Returns false
/// if its commit failed with something other than a write conflict (the store stops).
async fn transaction(
    env: &SimEnv,
    db: &DocDb<SimEnv>,
    rng: &mut impl Rng,
    config: &Config,
    client: u32,
    shared: &Shared,
) -> bool {
    let read_only = rng.random_range(0..100) < config.read_only_percent;
    let read_count = rng.random_range(0..=3);
    let reads = draw_keys(rng, config.key_count, read_count);
    let write_count = if read_only { 0 } else { rng.random_range(1..=3) };
    let writes = draw_keys(rng, config.key_count, write_count);
    let group = rng.random_bool(0.3).then(|| rng.random_range(0..GROUP_COUNT));
    let call_nanos = env.now().as_nanos();
    let mut txn = db.begin();
    let mut operations = Vec::new();
    let body = run_body(&mut txn, shared, &reads, group, &writes, config, &mut operations).await;
    if body.is_err() {
        txn.abort();
        lock(shared).early_aborts += 1;
        return true;
    }
    let record =
        TxnRecord { client, call_nanos, return_nanos: None, status: Status::Pending, operations };
    let position = {
        let mut history = lock(shared);
        history.txns.push(record);
        history.txns.len() - 1
    };
    let result = commit(txn, config.planted).await;
    let status = match &result {
        Ok(info) => Status::Committed(info.commit),
        Err(Error::WriteConflict { .. }) => Status::Aborted,
        Err(_) => Status::Failed,
    };
    let mut history = lock(shared);
    history.txns[position].status = status;
    history.txns[position].return_nanos = Some(env.now().as_nanos());
    status != Status::Failed
}

#[cfg(feature = "planted-bugs")]
async fn commit(
    txn: Transaction<SimEnv>,
    planted: Option<super::Planted>,
) -> ::docdb::Result<::docdb::CommitInfo> {
    use ::docdb::planted::PlantedBug;
    let bug = match planted {
        None => return txn.commit().await,
        Some(super::Planted::IndexOutsideBatch) => PlantedBug::IndexOutsideBatch,
        Some(super::Planted::AloneBeforeWrite) => PlantedBug::AloneBeforeWrite,
    };
    txn.commit_with_planted_bug(bug).await
}

#[cfg(not(feature = "planted-bugs"))]
async fn commit(
    txn: Transaction<SimEnv>,
    planted: Option<super::Planted>,
) -> ::docdb::Result<::docdb::CommitInfo> {
    assert!(planted.is_none(), "planted scenarios need feature planted-bugs");
    txn.commit().await
}

/// The reads and writes of a transaction, recorded in `operations` as they happen.
async fn run_body(
    txn: &mut Transaction<SimEnv>,
    shared: &Shared,
    reads: &[u32],
    group: Option<u64>,
    writes: &[u32],
    config: &Config,
    operations: &mut Vec<Operation>,
) -> ::docdb::Result<()> {
    for &key in reads {
        let value = read_key(txn, key).await?;
        operations.push(Operation::Read { key: key_name(key), value });
    }
    if let Some(group) = group {
        let filter = doc! {"group": group as i64};
        let found =
            txn.collection(DATABASE, WATCHED).query(&filter, &FindOptions::default()).await?;
        for document in &found.documents {
            let Some(key) = key_of(document.get("_id"), config.key_count) else { continue };
            let value = value_of(document);
            assert_eq!(document.get_i64("group").ok(), Some(group as i64), "filter re-checked");
            operations.push(Operation::Read { key: key_name(key), value: Some(value) });
        }
    }
    for &key in writes {
        let value = {
            let mut history = lock(shared);
            history.next_value += 1;
            history.next_value
        };
        write_key(txn, key, value).await?;
        operations.push(Operation::Write { key: key_name(key), value });
    }
    Ok(())
}

async fn read_key(txn: &mut Transaction<SimEnv>, key: u32) -> ::docdb::Result<Option<u64>> {
    let (collection, id) = place(key);
    let filter = doc! {"_id": id};
    let found =
        txn.collection(DATABASE, collection).query(&filter, &FindOptions::default()).await?;
    assert!(found.documents.len() <= 1, "one document per _id");
    Ok(found.documents.first().map(value_of))
}

/// `$set`s the key's `v` and `group`, or inserts the document when it is missing.
async fn write_key(txn: &mut Transaction<SimEnv>, key: u32, value: u64) -> ::docdb::Result<()> {
    let (collection, id) = place(key);
    let fields = doc! {"v": value as i64, "group": (value % GROUP_COUNT) as i64};
    let mut handle = txn.collection(DATABASE, collection);
    let update = doc! {"$set": fields.clone()};
    let result =
        handle.update(&doc! {"_id": id}, &update, &UpdateOptions::default(), false).await?;
    if result.matched_count == 0 {
        let mut document = doc! {"_id": id};
        document.extend(fields);
        handle.insert_one(document).await?;
    }
    Ok(())
}

/// Builds the `group` index on both collections once the time comes.
async fn index_main(env: SimEnv, db: DocDb<SimEnv>, config: Config, epoch: u32, shared: Shared) {
    while env.now() < config.index_at {
        if stopped(&shared, epoch, &config, &env) {
            return;
        }
        env.sleep(Duration::from_millis(10)).await;
    }
    for collection in COLLECTIONS {
        let spec = IndexSpec { keys: doc! {"group": 1}, ..IndexSpec::default() };
        if db.collection(DATABASE, collection).create_index(spec).await.is_err() {
            stop(&shared, epoch);
            return;
        }
    }
    lock(&shared).index_built = true;
}

/// The consumer's stored token, checked against the last one the database acknowledged;
/// rolls the processed events back to it (the ones after it will come again).
async fn consumer_resume(db: &DocDb<SimEnv>, shared: &Shared) -> ::docdb::Result<ResumeToken> {
    let cursor = db.collection(DATABASE, CURSOR);
    let stored = cursor.find_one(doc! {"_id": CONSUMER_ID}, None).await?;
    let token = match stored {
        Some(document) => ResumeToken {
            commit: document.get_i64("commit").unwrap_or(0) as u64,
            index: document.get_i64("index").unwrap_or(i64::from(u32::MAX)) as u32,
        },
        None => ResumeToken { commit: 0, index: u32::MAX },
    };
    let mut history = lock(shared);
    if let Some(acked) = history.acked_token
        && (token.commit, token.index) < acked
    {
        let message = format!(
            "the consumer's stored token went back from the acknowledged {acked:?} to {:?}",
            (token.commit, token.index)
        );
        history.violations.push(Violation::new("durability", message));
    }
    history.delivered.retain(|delivered| *delivered <= (token.commit, token.index));
    Ok(token)
}

async fn store_token(db: &DocDb<SimEnv>, token: ResumeToken, shared: &Shared) -> bool {
    let update = doc! {"$set": {"commit": token.commit as i64, "index": i64::from(token.index)}};
    let options = UpdateOptions { upsert: true, ..UpdateOptions::default() };
    let cursor = db.collection(DATABASE, CURSOR);
    let stored = cursor.update_one(doc! {"_id": CONSUMER_ID}, update, options).await.is_ok();
    if stored {
        let mut history = lock(shared);
        let token = (token.commit, token.index);
        history.acked_token = history.acked_token.max(Some(token));
    }
    stored
}

/// Records a processed event; an event at or before the last one is a repeat.
fn deliver(shared: &Shared, event: &ChangeEvent) {
    let mut history = lock(shared);
    let token = (event.token.commit, event.token.index);
    if let Some(last) = history.delivered.last().copied()
        && token <= last
    {
        let message = format!("the consumer got event {token:?} after {last:?}");
        history.violations.push(Violation::new("change-stream", message));
    }
    history.delivered.push(token);
}

/// Follows collection `a` from the stored token, storing the token after every few events.
async fn consumer_main(env: SimEnv, db: DocDb<SimEnv>, config: Config, epoch: u32, shared: Shared) {
    let mut rng = env.rng();
    let Ok(token) = consumer_resume(&db, &shared).await else { return };
    let scope = Scope::Collection(DATABASE.to_string(), WATCHED.to_string());
    let Ok(mut stream) = db.watch(scope, Some(token)).await else { return };
    let mut unstored = 0;
    while !stopped(&shared, epoch, &config, &env) {
        match stream.try_next().await {
            Ok(Some(event)) => {
                deliver(&shared, &event);
                unstored += 1;
            }
            Ok(None) => env.sleep(Duration::from_millis(rng.random_range(1..=20))).await,
            Err(_) => return,
        }
        if unstored >= EVENTS_PER_TOKEN_MAX || (unstored > 0 && rng.random_bool(0.2)) {
            if !store_token(&db, stream.resume_token(), &shared).await {
                return;
            }
            unstored = 0;
        }
    }
}

/// After the run: check the indexes, read every key, the log collection and the whole change
/// log, and let the consumer catch up to the end. The disk is healthy now: errors are bugs.
async fn final_reads(db: &DocDb<SimEnv>, config: &Config, shared: &Shared) {
    let result = final_state(db, config, shared).await;
    let mut history = lock(shared);
    match result {
        Ok(state) => history.final_state = Some(state),
        Err(error) => {
            let message = format!("the final reads after recovery failed: {error}");
            history.violations.push(Violation::new("durability", message));
            history.final_state = Some(FinalState::default());
        }
    }
}

async fn final_state(
    db: &DocDb<SimEnv>,
    config: &Config,
    shared: &Shared,
) -> ::docdb::Result<FinalState> {
    if !verify_recovery(db, shared, "the final recovery").await {
        return Err(Error::Corruption("the index check failed on a healthy disk".to_string()));
    }
    let mut txn = db.begin();
    let mut values = Vec::new();
    for key in 0..config.key_count {
        values.push(read_key(&mut txn, key).await?);
    }
    txn.abort();
    let logged = db.collection(DATABASE, LOG).find(doc! {}, FindOptions::default()).await?;
    let log_ids: Vec<u64> = logged
        .collect_all()
        .iter()
        .map(|document| document.get_i64("_id").unwrap_or(-1) as u64)
        .collect();
    let events = all_events(db, config).await?;
    let token = consumer_resume(db, shared).await?;
    let scope = Scope::Collection(DATABASE.to_string(), WATCHED.to_string());
    let mut stream = db.watch(scope, Some(token)).await?;
    for _ in 0..FINAL_EVENTS_MAX {
        let Some(event) = stream.try_next().await? else { break };
        deliver(shared, &event);
    }
    Ok(FinalState { values, log_ids, events })
}

/// Every event of the change log, from the first commit.
async fn all_events(db: &DocDb<SimEnv>, config: &Config) -> ::docdb::Result<Vec<LoggedEvent>> {
    let start = ResumeToken { commit: 0, index: u32::MAX };
    let mut stream = db.watch(Scope::All, Some(start)).await?;
    let mut events = Vec::new();
    for _ in 0..FINAL_EVENTS_MAX {
        let Some(event) = stream.try_next().await? else { break };
        let value = match (&event.full_document, &event.update_description) {
            (Some(document), _) => document.get_i64("v").ok(),
            (None, Some(description)) => {
                description.get_document("updatedFields").ok().and_then(|f| f.get_i64("v").ok())
            }
            (None, None) => None,
        };
        let in_key_set = COLLECTIONS.contains(&event.collection.as_str());
        events.push(LoggedEvent {
            token: (event.token.commit, event.token.index),
            key: in_key_set.then(|| key_of(event.id(), config.key_count)).flatten(),
            collection: event.collection,
            value: value.map(|v| v as u64),
        });
    }
    Ok(events)
}
