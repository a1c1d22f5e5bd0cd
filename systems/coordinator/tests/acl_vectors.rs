//! Tailscale's ACL golden cases (captured by Headscale's maintainers): every case in
//! `ACL_VECTORS_DIR` (default `shared/vectors/acl` beside the workspace), run as Headscale's
//! `TestACLCompat` runs them. Error cases: the policy must be rejected with Tailscale's message
//! contained in ours. Other cases: every captured node's rules must equal ours after the
//! normalisation the vectors' README describes (rule order kept; inside a rule `SrcIPs`,
//! `DstPorts` and `IPProto` compared as sorted lists). A missing directory skips with a message.

#![allow(clippy::disallowed_methods, reason = "the vectors are files outside the simulation")]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use coordinator::policy::{Policy, PolicyEngine, compile_node};
use coordinator::{FilterRule, Key, NodeInfo, PolicyView, User};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    match std::env::var_os("ACL_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/acl"),
    }
}

fn normalise(mut rules: Vec<FilterRule>) -> Vec<FilterRule> {
    for rule in &mut rules {
        let mut sources = rule.src_ips.to_vec();
        sources.sort();
        rule.src_ips = sources.into();
        rule.dst_ports.sort_by(|a, b| (&a.ip, a.ports).cmp(&(&b.ip, b.ports)));
        rule.ip_proto.sort_unstable();
    }
    rules
}

fn policy_of(input: &Value) -> Result<Policy, String> {
    match &input["full_policy"] {
        Value::String(text) => Policy::parse(text).map_err(|error| error.to_string()),
        value @ Value::Object(_) => Policy::from_value(value.clone()).map_err(|e| e.to_string()),
        other => panic!("full_policy is neither a string nor an object: {other}"),
    }
}

fn users_of(topology: &Value) -> Vec<User> {
    let users = topology["users"].as_array().expect("topology.users");
    users
        .iter()
        .map(|user| User {
            id: user["id"].as_u64().expect("user id"),
            name: user["name"].as_str().expect("user name").to_string(),
            email: user["email"].as_str().map(str::to_string),
        })
        .collect()
}

fn texts(value: &Value) -> Vec<String> {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    items.iter().map(|item| item.as_str().expect("a string").to_string()).collect()
}

fn node_of(id: u64, name: &str, spec: &Value, users: &[User]) -> NodeInfo {
    let tags = texts(&spec["tags"]);
    let user = spec["user"].as_str().filter(|name| !name.is_empty()).unwrap_or("odin");
    let user = users.iter().find(|candidate| candidate.name == user).expect("a known user").id;
    let parse_nets =
        |value: &Value| texts(value).iter().map(|text| text.parse().expect("a CIDR")).collect();
    NodeInfo {
        id,
        hostname: spec["hostname"].as_str().unwrap_or(name).to_string(),
        given_name: name.to_string(),
        user: tags.is_empty().then_some(user),
        tags,
        ipv4: spec["ipv4"].as_str().expect("ipv4").parse::<Ipv4Addr>().expect("an IPv4"),
        ipv6: spec["ipv6"].as_str().expect("ipv6").parse::<Ipv6Addr>().expect("an IPv6"),
        node_key: Key([id as u8; 32]),
        machine_key: Key([id as u8; 32]),
        endpoints: Vec::new(),
        advertised_routes: parse_nets(&spec["routable_ips"]),
        approved_routes: parse_nets(&spec["approved_routes"]),
        online: true,
        ephemeral: false,
        expiry: None,
    }
}

/// Runs one case; `Err` says why it failed.
fn run_case(case: &Value) -> Result<(), String> {
    assert!(case["schema_version"].as_u64().unwrap_or(1) <= 1, "unknown schema version");
    let input = &case["input"];
    if case["error"].as_bool() == Some(true) {
        let message = input["api_response_body"]["message"].as_str().unwrap_or("");
        return match policy_of(input) {
            Ok(_) => Err(format!("accepted a policy Tailscale rejects with {message:?}")),
            Err(error) if error.contains(message) => Ok(()),
            Err(error) => Err(format!("rejected with {error:?}, not containing {message:?}")),
        };
    }
    let policy = policy_of(input).map_err(|error| format!("rejected a valid policy: {error}"))?;
    let users = users_of(&case["topology"]);
    let specs = case["topology"]["nodes"].as_object().expect("topology.nodes");
    let mut nodes = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for (index, (name, spec)) in specs.iter().enumerate() {
        let id = index as u64 + 1;
        nodes.insert(id, node_of(id, name, spec, &users));
        ids.insert(name.clone(), id);
    }
    let mut engine = PolicyEngine::new(policy.clone(), users.clone());
    for node in nodes.values() {
        engine.upsert_node(node);
    }
    let captures = case["captures"].as_object().expect("captures");
    for (name, capture) in captures {
        let Some(&id) = ids.get(name) else { continue };
        let expected: Vec<FilterRule> = match &capture["packet_filter_rules"] {
            Value::Null => Vec::new(),
            value => serde_json::from_value(value.clone()).map_err(|e| e.to_string())?,
        };
        let got = normalise(compile_node(&policy, &users, &nodes, id));
        let expected = normalise(expected);
        if normalise(engine.filter_for(id)) != got {
            return Err(format!("node {name}: the engine's filter differs from compile_node's"));
        }
        if got != expected {
            let got = serde_json::to_string(&got).expect("json");
            let expected = serde_json::to_string(&expected).expect("json");
            return Err(format!("node {name}:\n  got      {got}\n  expected {expected}"));
        }
    }
    Ok(())
}

#[test]
fn acl_vectors() {
    let dir = vectors_dir();
    let Ok(listing) = std::fs::read_dir(&dir) else {
        println!("acl vectors: {} missing, skipped", dir.display());
        return;
    };
    let mut paths: Vec<PathBuf> = listing
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hujson"))
        .collect();
    paths.sort();
    let (mut passed, mut failed, skipped) = (0, 0, 0);
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("a readable case");
        let case = coordinator::hujson::parse(&text).expect("a case is HuJSON");
        match run_case(&case) {
            Ok(()) => passed += 1,
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", path.file_name().unwrap_or_default().to_string_lossy());
            }
        }
    }
    println!("acl vectors: {passed} passed, {failed} failed, {skipped} skipped");
    assert!(passed > 0, "no cases found in {}", dir.display());
    assert!(failed == 0 && skipped == 0, "{failed} failed, {skipped} skipped");
}
