//! Measures the gossip layer against the design's targets on seeded simulations and prints one
//! line per figure: membership false positives at 1% loss, crash detection time, Plumtree
//! duplication factor versus flooding, hot-key replication latency, and the cost of an MST
//! anti-entropy diff over a 50 Mbit/s link.
//!
//! Run: `cargo run --release -p gossip --example measure`. Scale with `GOSSIP_NODES` (default
//! 50), `GOSSIP_MST_KEYS` (default 100000; the design's target is stated for 1000000) and
//! `SIM_SEEDS` (default 3) and `GOSSIP_LOSS_PERCENT` (membership sections, default 1); pick
//! sections with `GOSSIP_SECTIONS` (default
//! `membership,foca,broadcast,mst`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::foca_peer::foca_cluster;
use common::{Cluster, Event, Options, addr, percentile};
use gossip::crdt::ReplicaId;
use gossip::driver::start;
use gossip::node::{Node, NodeConfig, PushMode};
use gossip::store::Store;
use gossip::swim::{MemberId, MemberState};
use sim::world::{BuggifyConfig, LinkConfig, SimConfig, World};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn main() {
    let node_count = env_number("GOSSIP_NODES", 50) as usize;
    let seed_count = env_number("SIM_SEEDS", 3);
    let key_count = env_number("GOSSIP_MST_KEYS", 100_000);
    println!("gossip measurements: {node_count} nodes, {seed_count} seeds from 0x5eed_7000");
    let sections =
        std::env::var("GOSSIP_SECTIONS").unwrap_or("membership,foca,broadcast,mst".into());
    for seed in 0x5eed_7000..0x5eed_7000 + seed_count {
        if sections.contains("membership") {
            false_positives(seed, node_count);
            crash_detection(seed, node_count);
        }
        if sections.contains("foca") {
            foca_membership(seed, node_count);
        }
        if sections.contains("broadcast") {
            for mode in [PushMode::Plumtree, PushMode::Flood] {
                broadcast(seed, node_count, mode);
            }
        }
    }
    if sections.contains("mst") {
        mst_diff(0x5eed_7100, key_count);
        mst_update(key_count);
    }
}

/// Loss on every link for the membership sections (`GOSSIP_LOSS_PERCENT`, default 1).
fn loss() -> f64 {
    env_number("GOSSIP_LOSS_PERCENT", 1) as f64 / 100.0
}

fn false_positives(seed: u64, node_count: usize) {
    let cluster = Cluster::new(seed, &Options::new(node_count, loss()));
    cluster.run(Duration::from_secs(310));
    let (mut probes, mut dead, mut suspects) = (0u64, 0u64, 0u64);
    for index in 0..node_count {
        cluster.handle(index).with_node(|node| {
            probes += node.swim().stats().probe_count;
            dead += node.swim().stats().dead_declared_count;
            suspects += node.swim().stats().suspect_count;
        });
    }
    let rate = dead as f64 / probes as f64 * 100.0;
    let dead_views = cluster
        .events()
        .iter()
        .filter(|event| matches!(event, Event::Member { state: MemberState::Dead, .. }))
        .count();
    println!(
        "seed {seed:#x} false-positives loss={}% 300s: probes={probes} suspicions={suspects} \
         dead-declarations={dead} (dead in any view: {dead_views}) rate={rate:.4}% of probes \
         (target < 0.01%)",
        loss() * 100.0
    );
}

/// The foca crate on the same network and seed: false downs over 300 s, then a crash.
fn foca_membership(seed: u64, node_count: usize) {
    let (world, nodes, downs) = foca_cluster(seed, node_count, loss());
    world.run_for(Duration::from_secs(310)).expect("runs");
    let false_downs = downs.lock().expect("lock").len();
    let crashed_at = world.now();
    let victim = node_count / 2;
    world.crash(nodes[victim]);
    world.run_for(Duration::from_secs(120)).expect("runs");
    let mut times: Vec<Duration> = Vec::new();
    for (at, _, member) in downs.lock().expect("lock").iter() {
        if *member == addr(victim) && *at >= crashed_at {
            times.push(at.saturating_duration_since(crashed_at));
        }
    }
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    println!(
        "seed {seed:#x} foca-2.0 loss={}%: false down notifications in 300s={false_downs}; crash \
         detected by {}/{} observers, first {:.1}s, all {:.1}s",
        loss() * 100.0,
        times.len(),
        node_count - 1,
        first.as_secs_f64(),
        last.as_secs_f64()
    );
}

fn crash_detection(seed: u64, node_count: usize) {
    let cluster = Cluster::new(seed, &Options::new(node_count, loss()));
    cluster.run(Duration::from_secs(20));
    let crashed_at = cluster.world.now();
    let victim = node_count / 2;
    cluster.crash(victim);
    cluster.run(Duration::from_secs(120));
    let mut times: Vec<Duration> = Vec::new();
    for event in cluster.events() {
        if let Event::Member { at, member, state: MemberState::Dead, .. } = event
            && member == victim
        {
            times.push(at.saturating_duration_since(crashed_at));
        }
    }
    let detected = times.len();
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    println!(
        "seed {seed:#x} crash-detection loss={}%: {detected}/{} observers, first {:.1}s, \
         all {:.1}s",
        loss() * 100.0,
        node_count - 1,
        first.as_secs_f64(),
        last.as_secs_f64()
    );
}

fn broadcast(seed: u64, node_count: usize, mode: PushMode) {
    let mut options = Options::new(node_count, 0.01);
    options.configure = match mode {
        PushMode::Plumtree => |config: &mut NodeConfig| config.push_mode = PushMode::Plumtree,
        PushMode::Flood => |config: &mut NodeConfig| config.push_mode = PushMode::Flood,
    };
    let cluster = Cluster::new(seed, &options);
    cluster.run(Duration::from_secs(30));
    let write_count = 200;
    let mut written_at = BTreeMap::new();
    for write in 0..write_count {
        let key = format!("hot{write}").into_bytes();
        written_at.insert(key.clone(), (cluster.world.now(), write % node_count));
        cluster.put(write % node_count, &key, b"value");
        cluster.run(Duration::from_millis(100));
    }
    cluster.run(Duration::from_secs(10));
    let mut latencies = Vec::new();
    let mut first_seen: BTreeMap<(Vec<u8>, usize), sim::Instant> = BTreeMap::new();
    for event in cluster.events() {
        if let Event::Entry { at, observer, key } = event {
            first_seen.entry((key, observer)).or_insert(at);
        }
    }
    for ((key, observer), at) in &first_seen {
        if let Some((put_at, writer)) = written_at.get(key)
            && writer != observer
        {
            latencies.push(at.saturating_duration_since(*put_at));
        }
    }
    let expected = write_count * (node_count - 1);
    let reached = latencies.len();
    let (mut payloads, mut duplicates) = (0u64, 0u64);
    for index in 0..node_count {
        cluster.handle(index).with_node(|node| match mode {
            PushMode::Plumtree => {
                payloads += node.plumtree().stats().gossip_received_count;
                duplicates += node.plumtree().stats().duplicate_count;
            }
            PushMode::Flood => {
                payloads += node.stats().push_received_count;
                duplicates += node.stats().push_duplicate_count;
            }
        });
    }
    let factor = payloads as f64 / expected as f64;
    let p50 = percentile(&mut latencies, 50);
    let p99 = percentile(&mut latencies, 99);
    println!(
        "seed {seed:#x} push={mode:?} loss=1% {write_count} writes: reached {reached}/{expected}, \
         payloads/delivery {factor:.3} (duplicates {duplicates}), latency p50 {:.1}ms p99 \
         {:.1}ms max {:.1}ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Two stores over `key_count` keys that differ in one key in `diverge_every`: half of those
/// exist only on the first side, half hold a newer value on the second.
fn diverged_stores(key_count: u64, diverge_every: u64) -> [Store; 2] {
    let key = |index: u64| format!("key{index:08}").into_bytes();
    let diverges = |index: u64| index.is_multiple_of(diverge_every);
    let mut base = Store::new(ReplicaId(1));
    for index in (0..key_count).filter(|index| !diverges(*index)) {
        base.put(1_000, &key(index), Some(b"base".to_vec())).expect("put");
    }
    let mut first = base.clone();
    let mut second = base;
    second.set_replica(ReplicaId(2));
    for index in (0..key_count).filter(|index| diverges(*index)) {
        first.put(1_000, &key(index), Some(b"base".to_vec())).expect("put");
        if (index / diverge_every).is_multiple_of(2) {
            let value = first.value(&key(index)).expect("just written").clone();
            second.merge(1_000, &key(index), &value).expect("merge");
            second.put(2_000, &key(index), Some(b"changed".to_vec())).expect("put");
        }
    }
    [first, second]
}

/// Real (not simulated) CPU cost of keeping the MST current: one key changes, then the root is
/// asked for, as a responder does between writes.
#[allow(clippy::disallowed_methods, reason = "measures real CPU time of a pure computation")]
fn mst_update(key_count: u64) {
    let mut tree = gossip::mst::Mst::new();
    for index in 0..key_count {
        let key = format!("key{index:08}");
        tree.insert(key.as_bytes(), gossip::hash::hash_bytes(key.as_bytes()));
    }
    // Wall time of a pure computation, printed, never fed back into a simulation.
    let started = std::time::Instant::now(); // allow-nondeterminism: measurement only
    tree.root();
    let full = started.elapsed();
    let update_count = 1000u64;
    let built = tree.built_count();
    let started = std::time::Instant::now(); // allow-nondeterminism: measurement only
    for update in 0..update_count {
        let key = format!("key{:08}", (update * 7919) % key_count);
        tree.insert(key.as_bytes(), gossip::hash::hash_bytes(&update.to_le_bytes()));
        tree.root();
    }
    let each = started.elapsed() / update_count as u32;
    let nodes_each = (tree.built_count() - built) as f64 / update_count as f64;
    println!(
        "mst-update {key_count} keys: full build {:.1}ms; one-key update + root {:.3}ms \
         ({nodes_each:.1} nodes rebuilt each, {} nodes in tree)",
        full.as_secs_f64() * 1e3,
        each.as_secs_f64() * 1e3,
        tree.node_count()
    );
}

fn mst_diff(seed: u64, key_count: u64) {
    let mut config = SimConfig::new(seed);
    config.buggify = BuggifyConfig::DISABLED;
    config.net.link =
        LinkConfig { bandwidth_bytes_per_sec: Some(50_000_000 / 8), ..LinkConfig::default() };
    let world = World::new(config);
    let stores = diverged_stores(key_count, 100);
    let handles = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for (index, store) in stores.into_iter().enumerate() {
        let node = world.add_node(&format!("n{index}"), addr(index).ip());
        let handles = std::sync::Arc::clone(&handles);
        let env = world.env(node);
        world.spawn(node, async move {
            let mut config = NodeConfig::new(MemberId(index as u64 + 1), addr(index));
            config.anti_entropy_interval = Duration::from_secs(2);
            let node = Node::with_store(config, store);
            let seeds = if index == 0 { Vec::new() } else { vec![addr(0)] };
            let handle = start(env, node, seeds, None).await.expect("bind");
            handles.lock().expect("lock").push(handle);
        });
    }
    world.run_for(Duration::from_secs(2)).expect("runs");
    let started = world.now();
    let mut finished = None;
    for _ in 0..100_000 {
        world.run_for(Duration::from_millis(10)).expect("runs");
        let handles = handles.lock().expect("lock");
        let done = handles.iter().all(|h| h.with_node(|node| node.stats().session_done_count > 0));
        if done {
            finished = Some(world.now());
            break;
        }
    }
    let handles = handles.lock().expect("lock");
    let took = finished.expect("sessions finish").saturating_duration_since(started);
    let roots: Vec<u128> =
        handles.iter().map(|h| h.with_node(|n| n.store_mut().root().0)).collect();
    let totals: Vec<_> =
        handles.iter().map(|h| h.with_node(|n| n.stats().session_totals.clone())).collect();
    println!(
        "mst-diff {key_count} keys 1% divergent, 50 Mbit/s 1ms links: both pulls done in {:.3}s \
         simulated, roots equal {}, nodes fetched {}+{}, node entries {}+{}, values {}+{}",
        took.as_secs_f64(),
        roots[0] == roots[1],
        totals[0].node_count,
        totals[1].node_count,
        totals[0].node_entry_count,
        totals[1].node_entry_count,
        totals[0].value_count,
        totals[1].value_count,
    );
}
