//! Policy benchmarks: compiling a 100,000-entry policy, per-packet decisions over 100,000
//! filter rules (hit and miss), and the cost of one node's change at 1k, 10k and 50k nodes.
//!
//! Run: `cargo bench -p coordinator --bench policy -- --warm-up-time 1 --measurement-time 3`.
//! Headscale, the public peer, recompiles its whole filter on every node change; our
//! `upsert_node` figures are to be read against that (a full compile is the `compile` figure).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coordinator::policy::{CompiledFilter, Policy, PolicyEngine};
use coordinator::{FilterRule, Key, NetPortRange, NodeInfo, PolicyView, PortRange, User};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RULES: usize = 100_000;
const TAGS: usize = 64;

fn users() -> Vec<User> {
    (1..=100)
        .map(|id| User { id, name: format!("u{id}"), email: Some(format!("u{id}@example.com")) })
        .collect()
}

fn address(index: u32) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + index);
    (v4, Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, (index >> 16) as u16, index as u16))
}

fn node(id: u64, tag: Option<usize>) -> NodeInfo {
    let (ipv4, ipv6) = address(id as u32);
    NodeInfo {
        id,
        hostname: format!("n{id}"),
        given_name: format!("n{id}"),
        user: tag.is_none().then_some(id % 100 + 1),
        tags: tag.map(|tag| vec![format!("tag:t{tag}")]).unwrap_or_default(),
        ipv4,
        ipv6,
        node_key: Key([0; 32]),
        machine_key: Key([0; 32]),
        endpoints: Vec::new(),
        advertised_routes: Vec::new(),
        approved_routes: Vec::new(),
        online: true,
        ephemeral: false,
        expiry: None,
    }
}

/// A policy of `entries` ACLs between tags, users and groups, plus the usual shapes.
fn policy_text(entries: usize) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut acls = vec![
        serde_json::json!({
            "action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]
        }),
        serde_json::json!({"action": "accept", "src": ["*"], "dst": ["tag:t0:443"]}),
        serde_json::json!({"action": "accept", "src": ["group:ops"], "dst": ["tag:t1:22"]}),
        serde_json::json!({"action": "accept", "src": ["tag:t2"], "dst": ["tag:t3:80"]}),
        serde_json::json!({"action": "accept", "src": ["tag:t3"], "dst": ["tag:t4:5432"]}),
    ];
    while acls.len() < entries {
        let src = format!("tag:t{}", rng.random_range(0..TAGS));
        let dst = format!("tag:t{}:{}", rng.random_range(0..TAGS), rng.random_range(1..65535));
        acls.push(serde_json::json!({"action": "accept", "src": [src], "dst": [dst]}));
    }
    let tag_owners: BTreeMap<String, Vec<String>> =
        (0..TAGS).map(|tag| (format!("tag:t{tag}"), vec!["u1@example.com".into()])).collect();
    serde_json::json!({
        "groups": {"group:ops": ["u1@example.com", "u2@example.com"]},
        "tagOwners": tag_owners,
        "acls": acls,
    })
    .to_string()
}

fn compile(c: &mut Criterion) {
    let text = policy_text(RULES);
    let mut group = c.benchmark_group("policy");
    group.sample_size(10);
    group.bench_function("parse_100k_entries", |b| b.iter(|| Policy::parse(black_box(&text))));
    let policy = Policy::parse(&text).expect("a valid policy");
    let mut engine = PolicyEngine::allow_all();
    for user in users() {
        engine.upsert_user(&user);
    }
    for id in 1..=1_000 {
        engine.upsert_node(&node(id, (id % 4 != 0).then_some(id as usize % TAGS)));
    }
    // A full compile: every entry against 1,000 nodes, then one node's filter.
    group.bench_function("set_policy_100k_entries_1k_nodes", |b| {
        b.iter(|| {
            engine.set_policy(policy.clone());
            engine.filter_for(1).len()
        })
    });
    // One node's filter from the compiled 100k entries (what each affected node costs).
    group.bench_function("filter_for_100k_entries", |b| b.iter(|| engine.filter_for(black_box(2))));
    group.finish();
}

/// 100,000 rules: one per destination host and port, sources a few hosts each, plus some
/// wide rules (`*` destinations, subnets).
fn rules() -> Vec<FilterRule> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let host = |rng: &mut ChaCha8Rng| address(rng.random_range(0..20_000)).0.to_string();
    (0..RULES)
        .map(|index| {
            let ip = match index % 1000 {
                0 => "*".to_string(),
                1 => format!("10.{}.0.0/16", index % 256),
                _ => host(&mut rng),
            };
            let port = rng.random_range(1..60_000);
            FilterRule {
                src_ips: (0..3).map(|_| host(&mut rng)).collect(),
                dst_ports: vec![NetPortRange { ip, ports: PortRange { first: port, last: port } }],
                ip_proto: Vec::new(),
            }
        })
        .collect()
}

fn allows(c: &mut Criterion) {
    let rules = rules();
    let mut group = c.benchmark_group("filter");
    group.sample_size(10);
    group.bench_function("from_rules_100k", |b| b.iter(|| CompiledFilter::from_rules(&rules)));
    let filter = CompiledFilter::from_rules(&rules).expect("valid rules");
    let hit = &rules[4321];
    let src: IpAddr = hit.src_ips[0].parse().expect("an address");
    let dst: IpAddr = hit.dst_ports[0].ip.parse().expect("an address");
    let port = hit.dst_ports[0].ports.first;
    assert!(filter.allows(src, dst, 6, port), "the hit packet must be allowed");
    assert!(!filter.allows(src, dst, 6, port.wrapping_add(1) | 1 << 15 | 1));
    group.sample_size(50);
    group.bench_function("allows_100k_hit", |b| {
        b.iter(|| filter.allows(black_box(src), black_box(dst), 6, black_box(port)))
    });
    let stranger: IpAddr = "100.127.0.1".parse().expect("an address");
    group.bench_function("allows_100k_miss", |b| {
        b.iter(|| filter.allows(black_box(stranger), black_box(dst), 6, black_box(port)))
    });
    group.finish();
}

fn upsert(c: &mut Criterion) {
    let policy = Policy::parse(&policy_text(20)).expect("a valid policy");
    let mut group = c.benchmark_group("engine");
    group.sample_size(20);
    for count in [1_000u64, 10_000, 50_000] {
        let mut engine = PolicyEngine::new(policy.clone(), users());
        for id in 1..=count {
            let tag = (id % 4 != 0).then_some(id as usize % TAGS);
            engine.upsert_node(&node(id, tag));
        }
        // A tagged node moving between two tags, back and forth (tag:t2 reaches tag:t3, which
        // reaches tag:t4: the nodes of those tags are affected, about 1/64 of all each).
        let mut flip = false;
        let id = 5;
        group.bench_with_input(BenchmarkId::new("upsert_retag", count), &count, |b, _| {
            b.iter(|| {
                flip = !flip;
                let moved = node(id, Some(if flip { 2 } else { 3 }));
                engine.upsert_node(&moved).filters.len()
            })
        });
        // An untagged node changing address (every member-sourced rule recompiles).
        let mut flip = false;
        group.bench_with_input(BenchmarkId::new("upsert_member_address", count), &count, |b, _| {
            b.iter(|| {
                flip = !flip;
                let mut moved = node(4, None);
                if flip {
                    moved.ipv4 = Ipv4Addr::new(100, 100, 0, 1);
                }
                engine.upsert_node(&moved).filters.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compile, allows, upsert);
criterion_main!(benches);
