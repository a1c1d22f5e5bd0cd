//! Registration throughput of the registry on the simulated world (docdb on the simulated
//! disk, every commit synced), serial and with concurrent registrars.
//!
//! Each iteration builds a fresh one-node world, opens docdb and the registry, creates a user
//! and a reusable key, and registers `REGISTRATIONS` machines; the setup is part of the
//! measured time (about one registration's worth). Run: `cargo bench -p coordinator --bench
//! registry`. The simulated time a batch takes (the disk model's latency, not our CPU) is
//! printed once per case. `registry_hot_path/set_online` flips every node's online flag, the
//! path each map stream's start and end takes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use coordinator::Key;
use coordinator::registry::{PreAuthKeyOptions, RegisterRequest, Registry, RegistryOptions};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use docdb::DocDb;
use sim::Env;
use sim::world::{BuggifyConfig, SimConfig, SimEnv, World};

/// Registrations per iteration.
const REGISTRATIONS: u64 = 200;

/// Registers `REGISTRATIONS` machines with `tasks` concurrent registrars, all with one host
/// name (the worst case for unique names) or each with its own; the simulated seconds it took.
fn batch(tasks: u64, distinct_names: bool) -> f64 {
    let (world, node, env) = world(1);
    let program = async move {
        let (registry, key) = open_registry(&env).await;
        let start = env.now();
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let registrar =
                    registrar(registry.clone(), key.clone(), task, tasks, distinct_names);
                env.spawn(registrar)
            })
            .collect();
        for handle in handles {
            handle.await.expect("registrar finished");
        }
        (env.now() - start).as_secs_f64()
    };
    world.block_on(node, Duration::from_secs(3600), program).expect("the batch runs")
}

/// A one-node world without BUGGIFY (faults would make the figures noise).
fn world(seed: u64) -> (World, sim::world::NodeId, SimEnv) {
    let mut config = SimConfig::new(seed);
    config.buggify = BuggifyConfig::DISABLED;
    let world = World::new(config);
    let node = world.add_node("coordinator", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let env = world.env(node);
    (world, node, env)
}

/// docdb and the registry on `env`, a user and a reusable pre-auth key.
async fn open_registry(env: &SimEnv) -> (Registry<SimEnv>, String) {
    let db = DocDb::open(env.clone(), "db", docdb::Options::default()).await.expect("open");
    let registry = Registry::open(env.clone(), db, RegistryOptions::default()).await;
    let registry = registry.expect("registry");
    let user = registry.create_user("bench", None).await.expect("user");
    let options = PreAuthKeyOptions { reusable: true, ..PreAuthKeyOptions::default() };
    let key = registry.create_preauth_key(user.id, options).await.expect("key").key;
    (registry, key)
}

/// Registers the machines `task, task + tasks, ...` below `REGISTRATIONS`, one at a time.
async fn registrar(
    registry: Registry<SimEnv>,
    key: String,
    task: u64,
    tasks: u64,
    distinct_names: bool,
) {
    for machine in (task..REGISTRATIONS).step_by(tasks as usize) {
        let mut machine_key = [1u8; 32];
        machine_key[..8].copy_from_slice(&machine.to_be_bytes());
        let mut node_key = machine_key;
        node_key[31] = 2;
        let request = RegisterRequest {
            preauth_key: key.clone(),
            machine_key: Key(machine_key),
            node_key: Key(node_key),
            hostname: if distinct_names { format!("bench{machine}") } else { "bench".into() },
            advertised_routes: Vec::new(),
            endpoints: Vec::new(),
        };
        registry.register(request).await.expect("registers");
    }
}

fn registration(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("registry_register");
    group.throughput(Throughput::Elements(REGISTRATIONS));
    group.sample_size(10);
    for (name, tasks, distinct_names) in [
        ("serial_same_name", 1, false),
        ("serial_distinct", 1, true),
        ("tasks16_same_name", 16, false),
    ] {
        let simulated = batch(tasks, distinct_names);
        let rate = REGISTRATIONS as f64 / simulated;
        println!(
            "registry_register/{name}: {REGISTRATIONS} registrations in {simulated:.3} \
             simulated s ({rate:.0} per simulated s)"
        );
        group.bench_function(BenchmarkId::from_parameter(name), |bencher| {
            bencher.iter(|| batch(tasks, distinct_names));
        });
    }
    group.finish();
}

/// The hot path: `set_online` flipping every one of `REGISTRATIONS` registered nodes, on one
/// world kept across iterations (a world is a value: `block_on` runs it again).
fn set_online(criterion: &mut Criterion) {
    let (world, node, env) = world(2);
    let setup = async move {
        let (registry, key) = open_registry(&env).await;
        registrar(registry.clone(), key, 0, 1, true).await;
        let ids: Vec<u64> =
            registry.list_nodes().await.expect("list").iter().map(|n| n.id).collect();
        (registry, ids)
    };
    let (registry, ids) = world.block_on(node, Duration::from_secs(3600), setup).expect("setup");
    let mut group = criterion.benchmark_group("registry_hot_path");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.sample_size(10);
    let mut online = false;
    group.bench_function("set_online", |bencher| {
        bencher.iter(|| {
            online = !online;
            let (registry, ids) = (registry.clone(), ids.clone());
            let flip = async move {
                for id in ids {
                    registry.set_online(id, online).await.expect("set online");
                }
            };
            world.block_on(node, Duration::from_secs(3600), flip).expect("flips");
        });
    });
    group.finish();
}

criterion_group!(benches, registration, set_online);
criterion_main!(benches);
