//! `coordinator` and `agent` end to end (feature `tokio`): child processes on loopback. The
//! server's key and admin API (auth refusal, a refused policy naming its line), the CLI making
//! users, keys and a policy, and three agents whose packet ports show the policy in force:
//! A reaches B (same user), A does not reach C; SIGTERM stops every process with exit 0.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of production binaries: real processes, sockets and files"
)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use service::testing::{Process, check_exposition, field, http, http_get, sample};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_coordinator");
const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const STOP_MAX: Duration = Duration::from_secs(20);
/// How long a packet may take to cross the mesh (handshakes first; the machine is loaded).
const DELIVERY_MAX: Duration = Duration::from_secs(30);

/// Same-user nodes reach each other; no one else reaches anyone.
const POLICY: &str = r#"{
  // alice's nodes talk among themselves.
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}],
}"#;

/// Line 3 names a group nobody defined.
const BAD_POLICY: &str = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:x\"], \
                          \"dst\": [\"*:*\"]}\n  ]\n}\n";

struct Server {
    process: Process,
    agents: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    public_key: String,
    url: String,
}

fn start_server(dir: &Path) -> Server {
    let dir = dir.to_str().expect("utf-8 temp dir");
    let (any, listen) = ("127.0.0.1:0", "--listen");
    let args = ["serve", "--data-dir", dir, listen, any, "--admin", any, "--metrics", any];
    let mut process = Process::start(COORDINATOR, &args);
    let metrics = field(&process.wait_for("metrics on"), "addr").expect("metrics addr");
    let metrics = metrics.parse().expect("metrics addr");
    let line = process.wait_for("serving agents");
    let agents: SocketAddr = field(&line, "addr").expect("addr").parse().expect("agent addr");
    let admin: SocketAddr = field(&line, "admin").expect("admin").parse().expect("admin addr");
    let public_key = field(&line, "public_key").expect("public key");
    let url = format!("http://{admin}");
    Server { process, agents, admin, metrics, public_key, url }
}

fn cli(server: &Server, key: &str, args: &[&str]) -> Output {
    Command::new(COORDINATOR)
        .args(["--server", &server.url])
        .args(args)
        .env("GHOSTMESH_API_KEY", key)
        .output()
        .expect("running the CLI")
}

fn cli_ok(server: &Server, key: &str, args: &[&str]) -> String {
    let output = cli(server, key, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "coordinator {args:?} failed: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn create_api_key(dir: &Path) -> String {
    let output = Command::new(COORDINATOR)
        .args(["apikeys", "create", "--data-dir", dir.to_str().expect("utf-8")])
        .output()
        .expect("running apikeys create");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key = String::from_utf8(output.stdout).expect("utf-8").trim().to_string();
    assert!(key.starts_with("gmapi-"), "{key}");
    key
}

#[test]
fn serve_key_auth_and_policy_refusal() {
    for (binary, name) in [(COORDINATOR, "coordinator 0."), (AGENT, "agent 0.")] {
        let output = Command::new(binary).arg("--version").output().expect("running");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && text.starts_with(name), "{text}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // `apikeys create` comes first and makes the data directory.
    let data = dir.path().join("coordinator");
    let key = create_api_key(&data);
    let mut server = start_server(&data);
    let (status, body) = http_get(server.admin, "/key");
    assert_eq!(status, 200);
    assert!(body.contains(&server.public_key), "{body}");
    // No key, a wrong key: refused.
    assert_eq!(http_get(server.admin, "/api/users").0, 401);
    assert_ne!(cli(&server, "gmapi-0000.0000", &["users", "list"]).status.code(), Some(0));
    // A refused policy names its line and field; the CLI exits non-zero with that text.
    let file = dir.path().join("bad.hujson");
    std::fs::write(&file, BAD_POLICY).expect("writing the policy");
    let output = cli(&server, &key, &["policy", "check", file.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("\"line\":3") && stderr.contains("group:x"), "{stderr}");
    let (status, _) = http(server.admin, "PUT", "/api/policy", BAD_POLICY);
    assert_eq!(status, 401, "no key: refused before the policy is looked at");
    server.process.signal("TERM");
    assert_eq!(server.process.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.process.log());

    // The static key is private to its owner and kept across restarts.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("coordinator.key")).expect("key file").permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
    let mut again = start_server(&data);
    assert_eq!(again.public_key, server.public_key);
    again.process.signal("INT");
    assert_eq!(again.process.wait_exit(STOP_MAX).0.code(), Some(0), "{}", again.process.log());
}

struct Agent {
    process: Process,
    ip: Ipv4Addr,
    port: SocketAddr,
    metrics: SocketAddr,
}

/// Starts an agent and waits until its map holds `peers` peers.
fn start_agent(server: &Server, dir: &Path, name: &str, preauth: &str, peers: usize) -> Agent {
    // Every agent offers a route named after it (b: 10.0.98.0/24).
    let route = format!("10.0.{}.0/24", name.as_bytes()[0]);
    let state = dir.join(name);
    let coordinator = server.agents.to_string();
    let args = [
        "--coordinator",
        &coordinator,
        "--coordinator-key",
        &server.public_key,
        "--preauth-key",
        preauth,
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--hostname",
        name,
        "--packet-port",
        "127.0.0.1:0",
        "--advertise-routes",
        &route,
        "--metrics",
        "127.0.0.1:0",
    ];
    let mut process = Process::start(AGENT, &args);
    let metrics = field(&process.wait_for("metrics on"), "addr").expect("metrics");
    let port = field(&process.wait_for("packet port open"), "addr").expect("port");
    let ip = wait_peers(&mut process, peers);
    let (port, metrics) = (port.parse().expect("addr"), metrics.parse().expect("addr"));
    Agent { process, ip, port, metrics }
}

/// Waits for a map with `peers` peers; the node's address.
fn wait_peers(process: &mut Process, peers: usize) -> Ipv4Addr {
    loop {
        let line = process.wait_for("map applied");
        let seen: usize = field(&line, "peers").expect("peers").parse().expect("a count");
        if seen == peers {
            return field(&line, "ip").expect("ip").parse().expect("an address");
        }
    }
}

/// A loopback socket that is the packet port's client (it sent one non-IP byte there).
fn client_of(port: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding");
    socket.send_to(&[0], port).expect("registering with the packet port");
    socket.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    socket
}

/// Sends `packet` into `from`'s port until `to` yields a datagram holding `payload`.
fn delivered(
    from: &UdpSocket,
    port: SocketAddr,
    to: &UdpSocket,
    packet: &[u8],
    payload: &[u8],
    bound: Duration,
) -> bool {
    let started = Instant::now();
    let mut buffer = [0u8; 2048];
    while started.elapsed() < bound {
        from.send_to(packet, port).expect("sending to the packet port");
        if let Ok(length) = to.recv(&mut buffer)
            && buffer[..length].windows(payload.len()).any(|window| window == payload)
        {
            return true;
        }
    }
    false
}

#[test]
fn policy_allows_a_to_b_not_a_to_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = create_api_key(dir.path());
    let server = start_server(dir.path());
    cli_ok(&server, &key, &["users", "create", "alice", "--email", "alice@example.com"]);
    cli_ok(&server, &key, &["users", "create", "carol"]);
    let file = dir.path().join("policy.hujson");
    std::fs::write(&file, POLICY).expect("writing the policy");
    cli_ok(&server, &key, &["policy", "set", file.to_str().expect("utf-8")]);
    let preauth = |user: &str| {
        let text = cli_ok(&server, &key, &["preauthkeys", "create", "--user", user, "--reusable"]);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        value["key"].as_str().expect("a key").to_string()
    };
    let (alice, carol) = (preauth("alice"), preauth("carol"));
    let mut a = start_agent(&server, dir.path(), "a", &alice, 0);
    let b = start_agent(&server, dir.path(), "b", &alice, 1);
    let c = start_agent(&server, dir.path(), "c", &carol, 0);
    wait_peers(&mut a.process, 1);
    let nodes = cli_ok(&server, &key, &["nodes", "list"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&nodes).expect("JSON").as_array().map(Vec::len),
        Some(3)
    );

    let sender = client_of(a.port);
    let (at_b, at_c) = (client_of(b.port), client_of(c.port));
    let to_b = coordinator::agent::udp_packet(a.ip, b.ip, 7000, b"hello b");
    assert!(delivered(&sender, a.port, &at_b, &to_b, b"hello b", DELIVERY_MAX), "A -> B lost");
    let (status, text) = http_get(b.metrics, "/metrics");
    assert_eq!(status, 200);
    check_exposition(&text);
    assert!(sample(&text, "agent_packets_delivered_total").is_some_and(|n| n >= 1.0), "{text}");
    let to_c = coordinator::agent::udp_packet(a.ip, c.ip, 7000, b"hello c");
    assert!(
        !delivered(&sender, a.port, &at_c, &to_c, b"hello c", Duration::from_secs(2)),
        "A -> C"
    );

    admin_commands(&server, &key);
    let mut all = [server.process, a.process, b.process, c.process];
    for process in &all {
        process.signal("TERM");
    }
    for process in &mut all {
        assert_eq!(process.wait_exit(STOP_MAX).0.code(), Some(0), "{}", process.log());
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// The rest of the CLI against the running mesh of three, and the coordinator's metrics.
fn admin_commands(server: &Server, key: &str) {
    let (status, text) = http_get(server.metrics, "/metrics");
    assert_eq!(status, 200);
    check_exposition(&text);
    assert_eq!(sample(&text, "coordinator_nodes{state=\"online\"}"), Some(3.0), "{text}");
    assert!(sample(&text, "coordinator_full_maps_sent_total").is_some_and(|n| n >= 3.0));
    assert!(cli_ok(server, key, &["policy", "get"]).contains("alice@"));
    assert_eq!(
        json(&cli_ok(server, key, &["preauthkeys", "list"])).as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(json(&cli_ok(server, key, &["users", "list"])).as_array().map(Vec::len), Some(2));
    let routes = json(&cli_ok(server, key, &["routes", "list"]));
    assert_eq!(routes.as_array().map(Vec::len), Some(3), "{routes}");
    let nodes = json(&cli_ok(server, key, &["nodes", "list"]));
    let b = nodes.as_array().expect("nodes").iter().find(|node| node["hostname"] == "b");
    let b = b.expect("node b")["id"].to_string();
    let approved = json(&cli_ok(server, key, &["routes", "approve", &b, "10.0.98.0/24"]));
    assert_eq!(approved["approved_routes"], serde_json::json!(["10.0.98.0/24"]), "{approved}");
    let c = nodes.as_array().expect("nodes").iter().find(|node| node["hostname"] == "c");
    let c = c.expect("node c")["id"].to_string();
    let renamed = json(&cli_ok(server, key, &["nodes", "rename", &c, "carol-box"]));
    assert_eq!(renamed["given_name"], "carol-box");
    cli_ok(server, key, &["nodes", "expire", &c]);
    cli_ok(server, key, &["nodes", "delete", &c]);
    assert_eq!(json(&cli_ok(server, key, &["nodes", "list"])).as_array().map(Vec::len), Some(2));
    let missing = cli(server, key, &["nodes", "delete", &c]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{missing:?}");
}
