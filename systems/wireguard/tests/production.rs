//! `wireguard-device` end to end (feature `tokio`): keys made by `genkey`/`pubkey`, two devices
//! as child processes on loopback pinging through the tunnel, `/metrics` moving with the
//! traffic, a quiet broken pipe, a stranger's handshake logged and counted as a drop, and
//! SIGTERM leading to exit 0.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of a production binary: real processes, sockets and files"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service::testing::{Process, check_exposition, field, http_get, sample};

const DEVICE: &str = env!("CARGO_BIN_EXE_wireguard-device");
const STOP_MAX: Duration = Duration::from_secs(20);
const WAIT_MAX: Duration = Duration::from_secs(30);

fn key_tool(command: &str, stdin: &str) -> String {
    let mut child = Command::new(DEVICE)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running the key tool");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    let output = child.wait_with_output().expect("key tool output");
    assert!(output.status.success(), "{command} failed");
    String::from_utf8(output.stdout).expect("utf-8").trim().to_string()
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("probe").local_addr().expect("probe address").port()
}

#[test]
fn key_tools_match_wg() {
    let private = key_tool("genkey", "");
    let public = key_tool("pubkey", &format!("{private}\n"));
    let psk = key_tool("genpsk", "");
    for key in [&private, &public, &psk] {
        assert!(key.len() == 44 && key.ends_with('='), "{key}");
    }
    assert_ne!(private, public);
    // RFC 7748's first test vector for X25519 (Alice's key pair), in base64.
    let alice = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    assert_eq!(key_tool("pubkey", alice), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
    let status = Command::new(DEVICE).arg("--version").output().expect("running");
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("wireguard-device 0."));
}

#[test]
fn two_devices_ping_scrape_and_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let (key_a, key_b) = (key_tool("genkey", ""), key_tool("genkey", ""));
    let (public_a, public_b) = (key_tool("pubkey", &key_a), key_tool("pubkey", &key_b));
    let (port_a, port_b) = (free_port(), free_port());
    let write = |name: &str, key: &str, port: u16, address: &str, peer: &str, peer_port: u16| {
        let text = format!(
            "[Interface]\nPrivateKey = {key}\nListenPort = {port}\nAddress = {address}/24\n\n\
             [Peer]\nPublicKey = {peer}\nAllowedIPs = 10.9.0.0/24\n\
             Endpoint = 127.0.0.1:{peer_port}\n"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("writing a config");
        path.to_str().expect("utf-8 path").to_string()
    };
    let conf_a = write("a.conf", &key_a, port_a, "10.9.0.1", &public_b, port_b);
    let conf_b = write("b.conf", &key_b, port_b, "10.9.0.2", &public_a, port_a);
    let mut a = Process::start(DEVICE, &[&conf_a, "--echo", "--metrics", "127.0.0.1:0"]);
    let metrics: SocketAddr = field(&a.wait_for("metrics on"), "addr").unwrap().parse().unwrap();
    a.wait_for("device running");
    let ping = ["--ping", "10.9.0.1", "--ping-interval-ms", "50"];
    let mut b = Process::start(DEVICE, &[&conf_b, ping[0], ping[1], ping[2], ping[3]]);
    let mut lines = BufReader::new(b.stdout()).lines();
    let line = lines.next().expect("a packet line").expect("utf-8");
    assert!(line.contains("bytes from 10.9.0.1"), "{line}");

    // The device publishes its counters every few dozen events: poll until they move.
    let series = format!("wireguard_received_packets_total{{peer=\"{public_b}\"}}");
    let started = Instant::now();
    loop {
        let (status, text) = http_get(metrics, "/metrics");
        assert_eq!(status, 200);
        check_exposition(&text);
        if sample(&text, &series).is_some_and(|count| count > 0.0) {
            let handshakes = format!("wireguard_handshakes_total{{peer=\"{public_b}\"}}");
            assert!(sample(&text, &handshakes).is_some_and(|count| count >= 1.0), "{text}");
            break;
        }
        assert!(started.elapsed() < WAIT_MAX, "{series} never moved:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `... | head -1`: b's reader goes away; b ends quietly.
    drop(lines);
    assert_eq!(b.wait_exit(STOP_MAX).0.code(), Some(0), "{}", b.log());

    // A stranger who knows a's key but is not its peer: a logs the handshake it drops, naming
    // the stranger's key, and counts it by reason.
    let key_c = key_tool("genkey", "");
    let public_c = key_tool("pubkey", &key_c);
    let conf_c = write("c.conf", &key_c, free_port(), "10.9.0.3", &public_a, port_a);
    let mut c = Process::start(DEVICE, &[&conf_c, ping[0], ping[1], ping[2], ping[3]]);
    let line = a.wait_for("unknown_peer");
    assert!(line.contains("WARN") && line.contains(&public_c), "{line}");
    assert!(line.contains("dropped=") && line.contains("suppressed="), "{line}");
    let series = r#"wireguard_drops_total{reason="unknown_peer"}"#;
    let started = Instant::now();
    while !sample(&http_get(metrics, "/metrics").1, series).is_some_and(|count| count >= 1.0) {
        assert!(started.elapsed() < WAIT_MAX, "{series} never moved");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.signal("TERM");
    assert_eq!(c.wait_exit(STOP_MAX).0.code(), Some(0), "{}", c.log());
    a.signal("TERM");
    assert_eq!(a.wait_exit(STOP_MAX).0.code(), Some(0), "{}", a.log());
    assert!(a.log().contains("stopping the device"), "{}", a.log());
}
