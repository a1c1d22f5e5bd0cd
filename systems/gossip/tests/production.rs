//! `gossip-node` end to end (feature `tokio`): child processes on loopback. `--version`, the
//! data directory's lock, start-flag updates applied once per directory, `/metrics`, a quiet
//! broken pipe, and SIGTERM leading to a graceful leave that a peer sees at once.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of a production binary: real processes, sockets and files"
)]

use std::io::{BufRead, BufReader, Lines};
use std::net::{SocketAddr, UdpSocket};
use std::process::{ChildStdout, Command};
use std::time::Duration;

use service::testing::{Process, check_exposition, field, http, http_get, sample};

const NODE: &str = env!("CARGO_BIN_EXE_gossip-node");
const STOP_MAX: Duration = Duration::from_secs(20);
/// Status lines a test reads at most while waiting for a state (one per second).
const STATUS_LINES_MAX: usize = 40;

/// A free loopback UDP address (the node advertises it, so port 0 will not do).
fn free_addr() -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    socket.local_addr().expect("probe address").to_string()
}

fn node(id: &str, listen: &str, dir: &std::path::Path, extra: &[&str]) -> Process {
    let dir = dir.to_str().expect("utf-8 temp dir");
    let mut args = vec!["--id", id, "--listen", listen, "--data-dir", dir, "--status-secs", "1"];
    args.extend_from_slice(extra);
    Process::start(NODE, &args)
}

/// Reads status lines until one contains `needle`.
fn status_until(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> String {
    for line in lines.take(STATUS_LINES_MAX) {
        let line = line.expect("a status line");
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no status line with {needle:?}");
}

#[test]
fn version_names_the_binary_and_revision() {
    let output = Command::new(NODE).arg("--version").output().expect("running");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.starts_with("gossip-node 0."), "{text}");
    assert!(text.contains("(git "), "{text}");
}

#[test]
fn lock_flags_once_metrics_and_a_graceful_leave() {
    let (dir1, dir2) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let (addr1, addr2) = (free_addr(), free_addr());
    let extra = ["--add", "hits=5", "--metrics", "127.0.0.1:0"];
    let mut first = node("1", &addr1, dir1.path(), &extra);
    let metrics: SocketAddr =
        field(&first.wait_for("metrics on"), "addr").unwrap().parse().unwrap();
    first.wait_for("applied");
    let mut status = BufReader::new(first.stdout()).lines();

    // A second process on the same directory is refused.
    let mut again = node("1", &free_addr(), dir1.path(), &[]);
    assert_eq!(again.wait_exit(STOP_MAX).0.code(), Some(1));
    assert!(again.log().contains("in use by another gossip-node"), "{}", again.log());

    let mut second = node("2", &addr2, dir2.path(), &["--seed", &addr1]);
    status_until(&mut status, r#""alive":[1,2]"#);
    let (code, text) = http_get(metrics, "/metrics");
    assert_eq!(code, 200);
    check_exposition(&text);
    assert_eq!(sample(&text, r#"gossip_members{state="alive"}"#), Some(2.0), "{text}");
    assert!(sample(&text, "gossip_datagrams_received_total").is_some_and(|n| n > 0.0));

    control_api(metrics);

    // SIGTERM: the node leaves, and its peer sees it as left (not suspect, not dead).
    second.signal("TERM");
    assert_eq!(second.wait_exit(STOP_MAX).0.code(), Some(0), "{}", second.log());
    let line = status_until(&mut status, r#""left":[2]"#);
    assert!(line.contains(r#""hits":5"#), "{line}");
    let (_, text) = http_get(metrics, "/metrics");
    check_exposition(&text);
    let transitions =
        |to: &str| sample(&text, &format!("gossip_member_transitions_total{{to=\"{to}\"}}"));
    // A loaded machine may see a late probe as a suspicion (and its refutation as alive).
    assert!(transitions("alive").is_some_and(|count| count >= 1.0), "{text}");
    assert_eq!(transitions("left"), Some(1.0), "{text}");
    assert!(transitions("suspect").is_some() && transitions("dead").is_some(), "{text}");
    first.signal("TERM");
    assert_eq!(first.wait_exit(STOP_MAX).0.code(), Some(0), "{}", first.log());

    // The same command again: the flag was applied to this directory already.
    let mut first = node("1", &addr1, dir1.path(), &extra);
    first.wait_for("already applied");
    let mut status = BufReader::new(first.stdout()).lines();
    let line = status_until(&mut status, r#""hits":"#);
    assert!(line.contains(r#""hits":5"#), "{line}");
    first.signal("INT");
    assert_eq!(first.wait_exit(STOP_MAX).0.code(), Some(0), "{}", first.log());
}

/// The control API beside `/metrics`: members with their states, keys read and updated.
fn control_api(addr: SocketAddr) {
    let (status, members) = http_get(addr, "/members");
    assert_eq!(status, 200);
    assert!(members.contains(r#""id":2"#) && members.contains(r#""state":"alive""#), "{members}");
    assert_eq!(http(addr, "PUT", "/keys/color", "blue").0, 204);
    assert_eq!(http_get(addr, "/keys/color"), (200, "\"blue\"\n".to_string()));
    assert_eq!(http(addr, "POST", "/keys/hits/add", "2").0, 204);
    assert_eq!(http_get(addr, "/keys/hits"), (200, "7\n".to_string()));
    assert_eq!(http(addr, "POST", "/keys/hits/add", "many").0, 400);
    assert_eq!(http(addr, "POST", "/keys/color/insert", "red").0, 400, "a register is no set");
    assert_eq!(http_get(addr, "/keys/absent").0, 404);
    assert_eq!(http(addr, "POST", "/keys/hits/add", "-2").0, 204);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let mut alone = node("7", &free_addr(), dir.path(), &[]);
    drop(alone.stdout());
    let (status, _) = alone.wait_exit(STOP_MAX);
    assert_eq!(status.code(), Some(0), "{}", alone.log());
    assert!(alone.log().contains("left the cluster"), "{}", alone.log());
}
