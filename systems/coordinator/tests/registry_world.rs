//! The registry on the simulated world: registration storms, crashes of the database's node in
//! the middle of them, key rotation, ephemeral reaping and API keys on simulated wall time.
//!
//! Goal: what the registry acknowledges survives a crash, no address is handed out twice (not
//! after a deletion, not across a crash), consumed single-use keys stay consumed, and every
//! refusal is the typed error its doc names. Method: one node of a `World` runs docdb and the
//! registry; tasks on it register concurrently; the test crashes and restarts the node at
//! seed-chosen times and checks the reopened registry against what was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::registry::{
    PreAuthKeyOptions, RegisterRequest, Registry, RegistryError, RegistryOptions,
};
use coordinator::{Key, NodeInfo};
use docdb::DocDb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::Env;
use sim::world::{BuggifyConfig, NodeId, SimConfig, SimEnv, World};
use wireguard::IpNet;

/// Seeds each multi-seed test runs.
const SEED_COUNT: u64 = 6;
/// Concurrent registrations in a storm.
const STORM_TASKS: u64 = 32;
/// Crash rounds per seed.
const CRASH_ROUNDS: u64 = 3;
/// Machines of a crash round's storm that register with single-use keys.
const STORM_SINGLE_USE: u64 = 8;
/// Steps of 200 simulated microseconds a storm may take before the crash comes anyway.
const CRASH_STEPS_MAX: u32 = 50_000;

fn world(seed: u64, buggify: bool) -> (World, NodeId) {
    let mut config = SimConfig::new(seed);
    if !buggify {
        config.buggify = BuggifyConfig::DISABLED;
    }
    let world = World::new(config);
    let node = world.add_node("coordinator", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    (world, node)
}

fn run<T, F>(world: &World, node: NodeId, program: impl FnOnce(SimEnv) -> F) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let env = world.env(node);
    match world.block_on(node, Duration::from_secs(3600), program(env)) {
        Ok(output) => output,
        Err(error) => panic!("seed {:#x}: simulation failed: {error}", world.seed()),
    }
}

async fn open(env: &SimEnv, options: RegistryOptions) -> Registry<SimEnv> {
    let db = DocDb::open(env.clone(), "registry", docdb::Options::default()).await.expect("open");
    Registry::open(env.clone(), db, options).await.expect("registry opens")
}

/// A distinct key per (kind, number).
fn key(kind: u8, number: u64) -> Key {
    let mut bytes = [kind; 32];
    bytes[..8].copy_from_slice(&number.to_be_bytes());
    Key(bytes)
}

/// What of a node stays through re-authentication: id, addresses, name, keys, owner.
type Identity = (u64, Ipv4Addr, std::net::Ipv6Addr, String, Key, Key, Option<u64>);

fn identity(node: &NodeInfo) -> Identity {
    let name = node.given_name.clone();
    (node.id, node.ipv4, node.ipv6, name, node.machine_key, node.node_key, node.user)
}

/// The host name machine `number` reports: a third of them share `web`.
fn hostname_of(number: u64) -> &'static str {
    if number.is_multiple_of(3) { "web" } else { "Host Name" }
}

/// The machine key of machine `number`.
fn key_of(number: u64) -> Key {
    key(1, number)
}

fn request(preauth_key: &str, machine: u64, hostname: &str) -> RegisterRequest {
    RegisterRequest {
        preauth_key: preauth_key.to_string(),
        machine_key: key(1, machine),
        node_key: key(2, machine),
        hostname: hostname.to_string(),
        advertised_routes: Vec::new(),
        endpoints: Vec::new(),
    }
}

/// Registers machines `first..` at once, each in its own task with its key from `keys`; the
/// results by machine number.
async fn storm(
    env: &SimEnv,
    registry: &Registry<SimEnv>,
    keys: Vec<String>,
    first: u64,
    acknowledged: Arc<Mutex<Vec<NodeInfo>>>,
) -> BTreeMap<u64, Result<NodeInfo, RegistryError>> {
    let mut handles = Vec::new();
    for (machine, preauth_key) in (first..).zip(keys) {
        let (registry, acknowledged) = (registry.clone(), Arc::clone(&acknowledged));
        let request = request(&preauth_key, machine, hostname_of(machine));
        handles.push((
            machine,
            env.spawn(async move {
                let result = registry.register(request).await;
                if let Ok(node) = &result {
                    acknowledged.lock().expect("lock").push(node.clone());
                }
                result
            }),
        ));
    }
    let mut results = BTreeMap::new();
    for (machine, handle) in handles {
        results.insert(machine, handle.await.expect("task finished"));
    }
    results
}

#[test]
fn a_registration_storm_hands_out_distinct_addresses_and_names() {
    for seed in 1..=SEED_COUNT {
        let (world, node) = world(seed, true);
        run(&world, node, move |env| async move {
            let registry = open(&env, RegistryOptions::default()).await;
            let user = registry.create_user("odin", None).await.expect("user");
            let options = PreAuthKeyOptions { reusable: true, ..PreAuthKeyOptions::default() };
            let key = registry.create_preauth_key(user.id, options).await.expect("key");
            let acknowledged = Arc::new(Mutex::new(Vec::new()));
            let keys = vec![key.key; STORM_TASKS as usize];
            let results = storm(&env, &registry, keys, 0, acknowledged).await;
            let nodes: Vec<NodeInfo> =
                results.into_values().map(|result| result.expect("registers")).collect();
            let addresses: BTreeSet<_> = nodes.iter().map(|node| node.ipv4).collect();
            let names: BTreeSet<_> = nodes.iter().map(|node| node.given_name.clone()).collect();
            let ids: BTreeSet<_> = nodes.iter().map(|node| node.id).collect();
            assert_eq!((addresses.len(), names.len(), ids.len()), (32, 32, 32), "seed {seed}");
            let webs = nodes.iter().filter(|node| node.hostname == "web").count();
            let mut expected: BTreeSet<String> = (0..webs)
                .map(|index| if index == 0 { "web".into() } else { format!("web-{index}") })
                .collect();
            expected.extend((0..32 - webs).map(|index| match index {
                0 => "host-name".to_string(),
                _ => format!("host-name-{index}"),
            }));
            assert_eq!(names, expected, "seed {seed}");
            assert!(nodes.iter().all(|node| node.user == Some(user.id) && node.tags.is_empty()));
            assert_eq!(registry.check_invariants().await.expect("check"), 32);
            // Offsets 1..=32 went to the nodes; a racing registrar (BUGGIFY) burns more, which
            // the losing registration must have retried past.
            let high_water = registry.next_ipv4_offset().await.expect("read");
            let site = "coordinator.registry.alloc_conflict";
            let racing = BuggifyConfig::default().site_fire_probability(seed, site).is_some();
            assert!(high_water >= 33 && (racing || high_water == 33), "seed {seed}: {high_water}");
            println!("seed {seed}: high-water mark {high_water} after 32 registrations");
            assert_eq!(registry.list_nodes().await.expect("list"), {
                let mut sorted = nodes.clone();
                sorted.sort_by_key(|node| node.id);
                sorted
            });
        });
    }
}

/// What the crash test keeps across crashes: acknowledged registrations and the keys.
#[derive(Default)]
struct Acked {
    /// Every node ever acknowledged (also ones deleted later), by machine number.
    nodes: BTreeMap<u64, NodeInfo>,
    /// Machines deleted after their registration was acknowledged.
    deleted: BTreeSet<u64>,
    /// Single-use keys by machine number, and whether its registration was acknowledged.
    single_use: BTreeMap<u64, String>,
}

fn crash_round(world: &World, node: NodeId, round: u64, rng: &mut ChaCha8Rng, acked: &mut Acked) {
    let first = round * 1000;
    let keys: Vec<String> = run(world, node, move |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let user = match registry.user_by_name("odin").await.expect("read") {
            Some(user) => user,
            None => registry.create_user("odin", None).await.expect("user"),
        };
        // The first machines each consume a single-use key; the rest share a reusable one.
        let mut keys = Vec::new();
        for index in 0..STORM_TASKS {
            let reusable = index >= STORM_SINGLE_USE;
            let options = PreAuthKeyOptions { reusable, ..PreAuthKeyOptions::default() };
            if index <= STORM_SINGLE_USE {
                keys.push(registry.create_preauth_key(user.id, options).await.expect("key").key);
            } else {
                keys.push(keys[STORM_SINGLE_USE as usize].clone());
            }
        }
        registry.db().close().await.expect("close");
        keys
    });
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let env = world.env(node);
    let (shared, storm_keys) = (Arc::clone(&acknowledged), keys.clone());
    let _storm = world.spawn(node, async move {
        let registry = open(&env, RegistryOptions::default()).await;
        storm(&env, &registry, storm_keys, first, shared).await;
    });
    // Crash once a seed-chosen number of registrations were acknowledged, a little later
    // still (commits in flight), so every round crashes in the middle of the storm.
    let target = rng.random_range(0..STORM_TASKS as usize);
    let mut steps = 0;
    while acknowledged.lock().expect("lock").len() < target && steps < CRASH_STEPS_MAX {
        world.run_for(Duration::from_micros(200)).expect("storm runs");
        steps += 1;
    }
    world.run_for(Duration::from_micros(rng.random_range(0..2_000))).expect("storm runs");
    world.crash(node);
    world.restart(node);
    let count = acknowledged.lock().expect("lock").len();
    println!("round {round}: crash after {target}+ acknowledged: {count} of {STORM_TASKS}");
    for node_info in acknowledged.lock().expect("lock").drain(..) {
        let machine = u64::from_be_bytes(node_info.machine_key.0[..8].try_into().expect("8"));
        if machine - first < STORM_SINGLE_USE {
            acked.single_use.insert(machine, keys[(machine - first) as usize].clone());
        }
        assert!(acked.nodes.insert(machine, node_info).is_none(), "acknowledged once");
    }
    check_after_crash(world, node, round, acked);
}

/// After a crash: every acknowledged, undeleted node is there as acknowledged; nothing handed
/// out twice; consumed keys stay consumed; then more registrations, a deletion and a
/// single-use key consumption, acknowledged before the next round.
fn check_after_crash(world: &World, node: NodeId, round: u64, acked: &mut Acked) {
    let expected: Vec<NodeInfo> = acked
        .nodes
        .iter()
        .filter(|(machine, _)| !acked.deleted.contains(machine))
        .map(|(_, node)| node.clone())
        .collect();
    let ever: BTreeSet<Ipv4Addr> = acked.nodes.values().map(|node| node.ipv4).collect();
    let single_use = acked.single_use.clone();
    let deleted_machines = acked.deleted.clone();
    let (deleted, fresh, key) = run(world, node, move |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        registry.check_invariants().await.expect("invariants hold after the crash");
        let listed: BTreeMap<_, _> = registry
            .list_nodes()
            .await
            .expect("list")
            .into_iter()
            .map(|node| (node.id, node))
            .collect();
        for node in &expected {
            let found = listed.get(&node.id).map(identity);
            assert_eq!(found, Some(identity(node)), "round {round}: acknowledged node");
        }
        for (machine, key) in &single_use {
            let stolen = registry.register(request(key, machine + 500_000, "thief")).await;
            assert!(matches!(stolen, Err(RegistryError::PreAuthKeyUsed { .. })), "{stolen:?}");
            // The machine that consumed it retrying (its reply lost) gets its own node back,
            // unless an admin deleted that node since.
            if deleted_machines.contains(machine) {
                continue;
            }
            let again = request(key, *machine, hostname_of(*machine));
            let retried = registry.register(again).await.expect("retry");
            let original = expected.iter().find(|node| node.machine_key == key_of(*machine));
            if let Some(original) = original {
                assert_eq!((retried.id, retried.ipv4), (original.id, original.ipv4));
            }
        }
        let user = registry.user_by_name("odin").await.expect("read").expect("odin");
        let options = PreAuthKeyOptions::default();
        let key = registry.create_preauth_key(user.id, options).await.expect("single-use").key;
        let machine = round * 1000 + 900;
        let fresh = registry.register(request(&key, machine, "fresh")).await.expect("fresh");
        assert!(!ever.contains(&fresh.ipv4), "round {round}: {} handed out again", fresh.ipv4);
        let victim = expected.iter().find(|node| node.id % 2 == round % 2).map(|node| node.id);
        if let Some(victim) = victim {
            registry.delete_node(victim).await.expect("delete");
        }
        registry.check_invariants().await.expect("invariants hold");
        registry.db().close().await.expect("close");
        (victim, (machine, fresh), (machine, key))
    });
    acked.nodes.insert(fresh.0, fresh.1);
    acked.single_use.insert(key.0, key.1);
    if let Some(victim) = deleted {
        let machine = acked.nodes.iter().find(|(_, node)| node.id == victim).map(|(m, _)| *m);
        acked.deleted.insert(machine.expect("an acknowledged node"));
    }
}

/// Runs the crash rounds of one seed; the world's trace hash and the acknowledged count.
fn crash_run(seed: u64) -> (u64, usize) {
    let (world, node) = world(seed, true);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked = Acked::default();
    for round in 0..CRASH_ROUNDS {
        crash_round(&world, node, round, &mut rng, &mut acked);
    }
    (world.trace_hash(), acked.nodes.len())
}

#[test]
fn a_crash_mid_storm_keeps_acknowledged_registrations_and_never_reuses_addresses() {
    for seed in 1..=SEED_COUNT {
        let (_, acknowledged) = crash_run(seed);
        println!("seed {seed}: {acknowledged} registrations acknowledged");
        assert!(acknowledged as u64 >= CRASH_ROUNDS, "seed {seed}: progress");
    }
}

/// Goal: a crash run is a pure function of its seed, so any failure replays exactly.
#[test]
fn crash_runs_are_deterministic() {
    assert_eq!(crash_run(0x5eed), crash_run(0x5eed));
}

#[test]
fn single_use_keys_tags_expiry_and_exhaustion_are_typed_refusals() {
    let (world, node) = world(7, false);
    run(&world, node, |env| async move {
        let options = RegistryOptions { ipv4_prefix_len: 29, ..RegistryOptions::default() };
        let registry = open(&env, options).await;
        let user = registry.create_user("odin", Some("odin@example.com")).await.expect("user");
        let duplicate = registry.create_user("odin", None).await;
        assert!(matches!(duplicate, Err(RegistryError::UserExists { ref name }) if name == "odin"));
        let single = registry.create_preauth_key(user.id, PreAuthKeyOptions::default()).await;
        let single = single.expect("key").key;
        let first = registry.register(request(&single, 1, "a")).await.expect("first");
        let retried = registry.register(request(&single, 1, "a")).await.expect("retried");
        assert_eq!(retried, first, "a retried registration answers the same node");
        let second = registry.register(request(&single, 2, "b")).await;
        let expected = RegistryError::PreAuthKeyUsed { key: 1, node: first.id }.to_string();
        assert_eq!(second.expect_err("used").to_string(), expected);
        let now = registry.now_secs();
        let expiring = PreAuthKeyOptions { expiration: Some(now + 10), ..Default::default() };
        let expiring = registry.create_preauth_key(user.id, expiring).await.expect("key").key;
        env.sleep(Duration::from_secs(11)).await;
        let late = registry.register(request(&expiring, 3, "c")).await;
        assert!(matches!(late, Err(RegistryError::PreAuthKeyExpired { key: 2, .. })), "{late:?}");
        let bogus = registry.register(request("gmkey-nope", 3, "c")).await;
        assert!(matches!(bogus, Err(RegistryError::PreAuthKeyUnknown)));
        let tags = vec!["tag:server".to_string()];
        let tagged = PreAuthKeyOptions { reusable: true, tags, ..Default::default() };
        let tagged = registry.create_preauth_key(user.id, tagged).await.expect("key").key;
        let server = registry.register(request(&tagged, 4, "a")).await.expect("tagged");
        assert_eq!((server.user, server.expiry, server.given_name.as_str()), (None, None, "a-1"));
        let plain = PreAuthKeyOptions { reusable: true, ..Default::default() };
        let plain = registry.create_preauth_key(user.id, plain).await.expect("key").key;
        let owner = registry.register(request(&plain, 4, "a")).await;
        assert!(matches!(owner, Err(RegistryError::OwnerMismatch { .. })), "{owner:?}");
        let owns = registry.delete_user(user.id).await;
        assert_eq!(owns.expect_err("owns").to_string(), "user 1 still owns 1 node(s)");
        // A /29 holds six assignable addresses.
        for machine in 5..9 {
            registry.register(request(&tagged, machine, "x")).await.expect("fits");
        }
        registry.delete_node(server.id).await.expect("delete");
        let full = registry.register(request(&tagged, 9, "x")).await;
        assert!(matches!(full, Err(RegistryError::AddressesExhausted { prefix_len: 29 })));
        assert_eq!(registry.check_invariants().await.expect("check"), 5);
    });
}

#[test]
fn node_keys_rotate_only_from_the_current_key() {
    let (world, node) = world(11, true);
    run(&world, node, |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let user = registry.create_user("odin", None).await.expect("user");
        let reusable = PreAuthKeyOptions { reusable: true, ..Default::default() };
        let preauth = registry.create_preauth_key(user.id, reusable).await.expect("key").key;
        let laptop = registry.register(request(&preauth, 1, "laptop")).await.expect("laptop");
        let phone = registry.register(request(&preauth, 2, "phone")).await.expect("phone");
        let rotated = registry.rotate_node_key(key(1, 1), key(2, 1), key(3, 1)).await;
        let rotated = rotated.expect("rotates");
        assert_eq!(
            (rotated.id, rotated.ipv4, rotated.node_key),
            (laptop.id, laptop.ipv4, key(3, 1))
        );
        let stale = registry.rotate_node_key(key(1, 1), key(2, 1), key(4, 1)).await;
        assert!(
            matches!(stale, Err(RegistryError::StaleNodeKey { node, .. }) if node == laptop.id)
        );
        let taken = registry.rotate_node_key(key(1, 1), key(3, 1), phone.node_key).await;
        assert!(
            matches!(taken, Err(RegistryError::NodeKeyInUse { node, .. }) if node == phone.id),
            "{taken:?}"
        );
        let unknown = registry.rotate_node_key(key(1, 9), key(2, 9), key(3, 9)).await;
        assert!(matches!(unknown, Err(RegistryError::MachineNotFound { .. })));
        // Re-authentication: the same machine with a new node key keeps its node.
        let mut again = request(&preauth, 1, "laptop-renamed");
        again.node_key = key(5, 1);
        let reauthed = registry.register(again).await.expect("re-auth");
        assert_eq!((reauthed.id, reauthed.given_name.as_str()), (laptop.id, "laptop"));
        assert_eq!(reauthed.node_key, key(5, 1));
        assert_eq!(registry.check_invariants().await.expect("check"), 2);
    });
}

#[test]
fn ephemeral_nodes_go_when_they_go_offline() {
    let (world, node) = world(13, true);
    run(&world, node, |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let user = registry.create_user("odin", None).await.expect("user");
        let ephemeral = PreAuthKeyOptions { reusable: true, ephemeral: true, ..Default::default() };
        let key = registry.create_preauth_key(user.id, ephemeral).await.expect("key").key;
        let plain = PreAuthKeyOptions { reusable: true, ..Default::default() };
        let plain = registry.create_preauth_key(user.id, plain).await.expect("key").key;
        let ci = registry.register(request(&key, 1, "ci")).await.expect("ci");
        let desk = registry.register(request(&plain, 2, "desk")).await.expect("desk");
        assert!(ci.ephemeral && !desk.ephemeral);
        let online = registry.set_online(ci.id, true).await.expect("online").expect("kept");
        assert!(online.online);
        assert_eq!(registry.set_online(ci.id, false).await.expect("offline"), None);
        assert!(matches!(registry.node(ci.id).await, Err(RegistryError::NodeNotFound { .. })));
        assert!(registry.set_online(desk.id, false).await.expect("offline").is_some());
        // A coordinator start: every node online before it is offline now, ephemeral ones go.
        let ci2 = registry.register(request(&key, 4, "ci")).await.expect("ci again");
        registry.set_online(ci2.id, true).await.expect("online");
        registry.set_online(desk.id, true).await.expect("online");
        assert_eq!(registry.reset_online(registry.now_secs()).await.expect("reset"), 2);
        assert!(!registry.node(desk.id).await.expect("desk").online);
        assert!(matches!(registry.node(ci2.id).await, Err(RegistryError::NodeNotFound { .. })));
        let far = registry.expire_node(desk.id, u64::MAX).await;
        assert!(matches!(far, Err(RegistryError::InvalidTime { what: "expiry", .. })));
        // With a grace period, reaping waits for it.
        let graceful = RegistryOptions { ephemeral_grace_secs: 60, ..RegistryOptions::default() };
        let registry = Registry::open(env.clone(), registry.db().clone(), graceful).await;
        let registry = registry.expect("reopen");
        let runner = registry.register(request(&key, 3, "runner")).await.expect("runner");
        registry.set_online(runner.id, true).await.expect("online");
        let offline = registry.set_online(runner.id, false).await.expect("offline");
        assert!(offline.is_some_and(|node| !node.online));
        let now = registry.now_secs();
        assert_eq!(registry.reap_ephemeral(now + 30).await.expect("reap"), Vec::<u64>::new());
        assert_eq!(registry.reap_ephemeral(now + 60).await.expect("reap"), vec![runner.id]);
        assert_eq!(registry.check_invariants().await.expect("check"), 1);
    });
}

#[test]
fn api_keys_verify_revoke_and_expire_on_simulated_time() {
    let (world, node) = world(17, true);
    run(&world, node, |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let now = registry.now_secs();
        let created = registry.create_api_key(Some(now + 100)).await.expect("create");
        assert!(created.key.starts_with("gmapi-") && created.key.len() == 6 + 10 + 1 + 64);
        let verified = registry.verify_api_key(&created.key, registry.now_secs()).await;
        assert_eq!(verified.expect("verifies"), created.info);
        let mut wrong = created.key.clone();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(wrong.len() - 1.., last);
        let refused = registry.verify_api_key(&wrong, now).await;
        assert!(matches!(refused, Err(RegistryError::ApiKeyUnknown { .. })), "{refused:?}");
        let malformed = registry.verify_api_key("gmapi-zz", now).await;
        assert!(matches!(malformed, Err(RegistryError::ApiKeyMalformed)));
        env.sleep(Duration::from_secs(101)).await;
        let expired = registry.verify_api_key(&created.key, registry.now_secs()).await;
        assert!(matches!(expired, Err(RegistryError::ApiKeyExpired { .. })), "{expired:?}");
        let forever = registry.create_api_key(None).await.expect("create");
        registry.verify_api_key(&forever.key, u64::MAX).await.expect("never expires");
        let revoked = registry.revoke_api_key(forever.info.id).await.expect("revoke");
        assert!(revoked.revoked);
        let refused = registry.verify_api_key(&forever.key, now).await;
        assert!(matches!(refused, Err(RegistryError::ApiKeyRevoked { .. })), "{refused:?}");
        assert_eq!(registry.list_api_keys().await.expect("list").len(), 2);
    });
}

#[test]
fn routes_names_users_and_policy() {
    let (world, node) = world(19, true);
    run(&world, node, |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let user = registry.create_user("odin", None).await.expect("user");
        let reusable = PreAuthKeyOptions { reusable: true, ..Default::default() };
        let key = registry.create_preauth_key(user.id, reusable).await.expect("key").key;
        let mut router = request(&key, 1, "router");
        let lan: IpNet = "192.168.0.0/24".parse().expect("net");
        let exit: IpNet = "0.0.0.0/0".parse().expect("net");
        router.advertised_routes = vec![exit, lan, lan];
        let router = registry.register(router).await.expect("router");
        assert_eq!(router.advertised_routes, vec![exit, lan]);
        let other: IpNet = "10.0.0.0/8".parse().expect("net");
        let refused = registry.approve_routes(router.id, vec![lan, other]).await;
        let text = refused.expect_err("not advertised").to_string();
        assert_eq!(text, format!("node {} does not advertise route 10.0.0.0/8", router.id));
        let approved = registry.approve_routes(router.id, vec![lan]).await.expect("approve");
        assert_eq!(approved.approved_routes, vec![lan]);
        let box_ = registry.register(request(&key, 2, "box")).await.expect("box");
        let taken = registry.rename_node(box_.id, "router").await;
        assert!(matches!(taken, Err(RegistryError::GivenNameTaken { .. })));
        let invalid = registry.rename_node(box_.id, "Not A Label").await;
        assert!(matches!(invalid, Err(RegistryError::InvalidName { .. })));
        let renamed = registry.rename_node(box_.id, "nas").await.expect("rename");
        assert_eq!(renamed.given_name, "nas");
        let again = registry.register(request(&key, 3, "nas")).await.expect("third");
        assert_eq!(again.given_name, "nas-1");
        let expired = registry.expire_node(again.id, 5).await.expect("expire");
        assert_eq!(expired.expiry, Some(5));
        assert_eq!(registry.rename_user(user.id, "thor").await.expect("rename").name, "thor");
        assert_eq!(registry.policy().await.expect("policy"), None);
        let first = registry.set_policy("{}", Some(0)).await.expect("policy");
        assert_eq!(first.version, 1);
        let stale = registry.set_policy("{\"acls\": []}", Some(0)).await;
        assert!(matches!(stale, Err(RegistryError::PolicyVersionMismatch { current: 1, .. })));
        registry.set_policy("{\"acls\": []}", None).await.expect("policy");
        let stored = registry.policy().await.expect("policy").expect("stored");
        assert_eq!((stored.version, stored.text.as_str()), (2, "{\"acls\": []}"));
        for id in [router.id, box_.id, again.id] {
            registry.delete_node(id).await.expect("delete");
        }
        registry.delete_user(user.id).await.expect("a user without nodes goes");
        assert_eq!(registry.list_preauth_keys(None).await.expect("list"), Vec::new());
    });
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    /// Registers (or re-authenticates) a machine with a host name and a node-key generation.
    Register { machine: u64, host: usize, generation: u8 },
    /// Deletes the machine's node.
    Delete { machine: u64 },
    /// Rotates the machine's node key, naming the current key or a stale one.
    Rotate { machine: u64, stale: bool, generation: u8 },
    /// Renames the machine's node.
    Rename { machine: u64, name: usize },
}

const MODEL_HOSTS: [&str; 3] = ["web", "Web!", "db"];
const MODEL_NAMES: [&str; 4] = ["web", "web-1", "alpha", "db-2"];

fn model_step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let machine = 0..6u64;
    prop_oneof![
        3 => (machine.clone(), 0..MODEL_HOSTS.len(), 0..4u8)
            .prop_map(|(machine, host, generation)| Step::Register { machine, host, generation }),
        1 => machine.clone().prop_map(|machine| Step::Delete { machine }),
        1 => (machine.clone(), any::<bool>(), 0..4u8)
            .prop_map(|(machine, stale, generation)| Step::Rotate { machine, stale, generation }),
        1 => (machine, 0..MODEL_NAMES.len())
            .prop_map(|(machine, name)| Step::Rename { machine, name }),
    ]
}

/// The reference: by machine, (node id, IPv4 address, node key, given name).
#[derive(Default)]
struct Model {
    nodes: BTreeMap<u64, (u64, Ipv4Addr, Key, String)>,
    next_id: u64,
    next_offset: u32,
}

impl Model {
    fn name_holder(&self, name: &str) -> Option<u64> {
        self.nodes.iter().find(|(_, node)| node.3 == name).map(|(machine, _)| *machine)
    }

    /// Applies `step` to the registry and the model; checks they agree.
    async fn apply(&mut self, registry: &Registry<SimEnv>, preauth: &str, step: Step) {
        match step {
            Step::Register { machine, host, generation } => {
                let mut request = request(preauth, machine, MODEL_HOSTS[host]);
                request.node_key = key(10 + generation, machine);
                let node = registry.register(request).await.expect("registers");
                let expected = match self.nodes.get(&machine) {
                    Some(known) => (known.0, known.1, known.3.clone()),
                    None => {
                        let allocator = registry.allocator();
                        let allocation = allocator.allocate(self.next_offset).expect("room");
                        self.next_id += 1;
                        self.next_offset = allocation.offset + 1;
                        let base = if host == 2 { "db" } else { "web" };
                        let fits = node.given_name == base
                            || node.given_name.strip_prefix(&format!("{base}-")).is_some();
                        assert!(fits && self.name_holder(&node.given_name).is_none());
                        (self.next_id, allocation.ipv4, node.given_name.clone())
                    }
                };
                assert_eq!((node.id, node.ipv4, node.given_name.clone()), expected);
                self.nodes.insert(machine, (node.id, node.ipv4, node.node_key, node.given_name));
            }
            Step::Delete { machine } => {
                let id = self.nodes.remove(&machine).map_or(999, |node| node.0);
                let deleted = registry.delete_node(id).await.map(|node| node.id);
                let expected = if id == 999 { None } else { Some(id) };
                assert_eq!(deleted.ok(), expected);
            }
            Step::Rotate { machine, stale, generation } => {
                let new = key(20 + generation, machine);
                let current = self.nodes.get(&machine).map(|node| node.2);
                let old = if stale { key(99, machine) } else { current.unwrap_or(key(99, 0)) };
                let rotated = registry.rotate_node_key(key_of(machine), old, new).await;
                match (current, rotated) {
                    (None, Err(RegistryError::MachineNotFound { .. })) => {}
                    (Some(held), Err(RegistryError::StaleNodeKey { .. }))
                        if stale && held != new => {}
                    // Naming a stale key but asking for the key the node already holds is the
                    // repeat of a rotation whose answer was lost: taken as done.
                    (Some(held), Ok(node)) if stale && held == new => {
                        assert_eq!(node.node_key, new);
                    }
                    (Some(_), Ok(node)) if !stale => {
                        self.nodes.get_mut(&machine).expect("known").2 = node.node_key;
                    }
                    (current, other) => panic!("rotate {machine} from {current:?}: {other:?}"),
                }
            }
            Step::Rename { machine, name } => {
                let name = MODEL_NAMES[name];
                let id = self.nodes.get(&machine).map_or(999, |node| node.0);
                let renamed = registry.rename_node(id, name).await;
                match (self.name_holder(name), renamed) {
                    (_, Err(RegistryError::NodeNotFound { .. })) => assert_eq!(id, 999),
                    (Some(holder), Err(RegistryError::GivenNameTaken { .. })) => {
                        assert_ne!(holder, machine)
                    }
                    (holder, Ok(node)) => {
                        assert!(holder.is_none_or(|holder| holder == machine));
                        self.nodes.get_mut(&machine).expect("known").3 = node.given_name;
                    }
                    (holder, other) => panic!("rename {machine} to {name} ({holder:?}): {other:?}"),
                }
            }
        }
    }

    /// The registry's listing equals the model.
    async fn check(&self, registry: &Registry<SimEnv>) {
        assert_eq!(registry.check_invariants().await.expect("check"), self.nodes.len() as u64);
        let listed: BTreeMap<u64, _> = registry
            .list_nodes()
            .await
            .expect("list")
            .into_iter()
            .map(|node| {
                let machine = u64::from_be_bytes(node.machine_key.0[..8].try_into().expect("8"));
                (machine, (node.id, node.ipv4, node.node_key, node.given_name))
            })
            .collect();
        assert_eq!(listed, self.nodes);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Goal: registration, deletion, rotation and renames agree with an in-memory model:
    /// sequential ids and addresses never reused, stable identities through re-authentication,
    /// typed refusals exactly when the model refuses.
    #[test]
    fn the_registry_agrees_with_a_model(steps in proptest::collection::vec(model_step(), 1..40)) {
        let (world, node) = world(23, false);
        run(&world, node, move |env| async move {
            let registry = open(&env, RegistryOptions::default()).await;
            let user = registry.create_user("odin", None).await.expect("user");
            let options = PreAuthKeyOptions { reusable: true, ..PreAuthKeyOptions::default() };
            let preauth = registry.create_preauth_key(user.id, options).await.expect("key").key;
            let mut model = Model { next_offset: 1, ..Model::default() };
            for step in steps {
                model.apply(&registry, &preauth, step).await;
                model.check(&registry).await;
            }
        });
    }
}

/// Drains what a stream holds now.
async fn drain(stream: &mut docdb::ChangeStream<SimEnv>) -> Vec<docdb::ChangeEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.try_next().await.expect("stream") {
        events.push(event);
    }
    events
}

/// Goal: the change-stream contract the network-map engine relies on: one registration is
/// one commit (node, high-water mark and consumed key together), and node events carry the
/// whole `NodeInfo` (`insert`, `replace`) or the node id (`delete`).
#[test]
fn each_change_is_one_commit_with_self_describing_node_events() {
    // BUGGIFY off: a racing registrar (alloc_conflict) would add a commit of its own.
    let (world, node) = world(29, false);
    run(&world, node, |env| async move {
        let registry = open(&env, RegistryOptions::default()).await;
        let user = registry.create_user("odin", None).await.expect("user");
        let single = registry.create_preauth_key(user.id, PreAuthKeyOptions::default()).await;
        let single = single.expect("key").key;
        let scope = docdb::Scope::Database("coordinator".into());
        let mut all = registry.db().watch(scope, None).await.expect("watch");
        let nodes_scope = docdb::Scope::Collection("coordinator".into(), "nodes".into());
        let mut nodes = registry.db().watch(nodes_scope, None).await.expect("watch");
        let laptop = registry.register(request(&single, 1, "laptop")).await.expect("register");
        let events = drain(&mut all).await;
        let commits: BTreeSet<u64> = events.iter().map(|event| event.token.commit).collect();
        let mut touched: Vec<&str> = events.iter().map(|e| e.collection.as_str()).collect();
        touched.sort();
        assert_eq!(commits.len(), 1, "one registration, one commit: {events:?}");
        assert_eq!(touched, ["meta", "nodes", "preauth_keys"]);
        let inserted = drain(&mut nodes).await;
        assert_eq!(inserted.len(), 1);
        let full = inserted[0].full_document.as_ref().expect("full document");
        let info = full.get_document("info").expect("info").clone();
        let decoded: NodeInfo = bson::deserialize_from_document(info).expect("decodes");
        assert_eq!((inserted[0].operation.as_str(), &decoded), ("insert", &laptop));
        let online = registry.set_online(laptop.id, true).await.expect("online").expect("kept");
        let replaced = drain(&mut nodes).await;
        let full = replaced[0].full_document.as_ref().expect("full document");
        let info = full.get_document("info").expect("info").clone();
        let decoded: NodeInfo = bson::deserialize_from_document(info).expect("decodes");
        assert_eq!((replaced.len(), replaced[0].operation.as_str()), (1, "replace"));
        assert_eq!(decoded, online);
        registry.delete_node(laptop.id).await.expect("delete");
        let deleted = drain(&mut nodes).await;
        assert_eq!((deleted.len(), deleted[0].operation.as_str()), (1, "delete"));
        assert_eq!(deleted[0].id(), Some(&bson::Bson::Int64(laptop.id as i64)));
    });
}
