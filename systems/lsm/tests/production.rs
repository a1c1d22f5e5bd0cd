//! The production binaries end to end (feature `tokio`): `lsm-server` and `ghostmesh-kv` as
//! child processes on loopback. `--version`, exit codes a script can use, a quiet broken pipe,
//! `/metrics` that moves with traffic, SIGTERM leading to a clean close that the next open
//! of the same directory accepts and reports, and kill -9 leading to an open that reports no
//! clean close but keeps every acknowledged write.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of production binaries: real processes and files"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use service::testing::{Process, check_exposition, field, http_get, sample};

const SERVER: &str = env!("CARGO_BIN_EXE_lsm-server");
const KV: &str = env!("CARGO_BIN_EXE_ghostmesh-kv");
/// How long a clean shutdown may take on a loaded machine.
const STOP_MAX: Duration = Duration::from_secs(20);

fn kv(args: &[&str]) -> Output {
    Command::new(KV).args(args).output().expect("running ghostmesh-kv")
}

fn start(dir: &std::path::Path) -> (Process, String, SocketAddr) {
    let (server, addr, metrics, _) = start_recovered(dir);
    (server, addr, metrics)
}

/// Starts the server on `dir`; also returns its "recovered the store" log line.
fn start_recovered(dir: &std::path::Path) -> (Process, String, SocketAddr, String) {
    let dir = dir.to_str().expect("utf-8 temp dir");
    let args = ["--dir", dir, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    let mut server = Process::start(SERVER, &args);
    let metrics = field(&server.wait_for("metrics on"), "addr").expect("metrics addr");
    let recovered = server.wait_for("recovered the store");
    let addr = field(&server.wait_for("serving the store"), "addr").expect("listen addr");
    (server, addr, metrics.parse().expect("metrics addr"), recovered)
}

/// The recovery report's `key` from its log line, and its metric `name` from a scrape.
fn recovered(line: &str, key: &str, metrics: SocketAddr, name: &str) -> (String, f64) {
    let logged = field(line, key).unwrap_or_else(|| panic!("no {key} in {line}"));
    let (_, text) = http_get(metrics, "/metrics");
    check_exposition(&text);
    (logged, sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}")))
}

#[test]
fn version_names_the_binary_and_revision() {
    for (binary, name) in [(SERVER, "lsm-server"), (KV, "ghostmesh-kv")] {
        let output = Command::new(binary).arg("--version").output().expect("running");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success());
        assert!(text.starts_with(&format!("{name} 0.")) && text.contains("(git "), "{text}");
    }
}

/// A server that reads one request and hangs up without an answer.
fn hang_up_after_request() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let addr = listener.local_addr().expect("address").to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepting");
        let mut request = [0u8; 4];
        std::io::Read::read_exact(&mut stream, &mut request).expect("reading the request");
    });
    (addr, server)
}

#[test]
fn a_broken_connection_after_a_write_is_outcome_unknown() {
    let (addr, server) = hang_up_after_request();
    let put = kv(&["put", "k", "v", "--addr", &addr]);
    server.join().expect("fake server");
    assert_eq!(put.status.code(), Some(4), "{}", String::from_utf8_lossy(&put.stderr));
    assert!(String::from_utf8_lossy(&put.stderr).contains("outcome unknown"));
    // A read that breaks changed nothing: it failed.
    let (addr, server) = hang_up_after_request();
    let get = kv(&["get", "k", "--addr", &addr]);
    server.join().expect("fake server");
    assert_eq!(get.status.code(), Some(3), "{}", String::from_utf8_lossy(&get.stderr));
}

#[test]
fn json_logs_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_str().expect("utf-8 temp dir");
    let args = ["--dir", dir, "--listen", "127.0.0.1:0", "--log-format", "json"];
    let mut server = Process::start(SERVER, &args);
    let line = server.wait_for("serving the store");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains(r#""level":"INFO""#) && line.contains(r#""addr":"127.0.0.1:"#), "{line}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
}

#[test]
fn serve_scrape_stop_and_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, addr, metrics) = start(dir.path());
    let (status, before) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    check_exposition(&before);
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_string()));

    // Flags before or after the subcommand; a host name resolves.
    let host = addr.replace("127.0.0.1", "localhost");
    assert_eq!(kv(&["put", "k", "v", "--addr", &host]).status.code(), Some(0));
    assert_eq!(kv(&["--addr", &addr, "--buffered", "put", "k2", "v2"]).status.code(), Some(0));
    let found = kv(&["get", "k", "--addr", &addr]);
    assert_eq!((found.status.code(), found.stdout.as_slice()), (Some(0), &b"v\n"[..]));
    let missing = kv(&["get", "absent", "--addr", &addr]);
    assert_eq!((missing.status.code(), missing.stdout.len()), (Some(1), 0));

    let (_, after) = http_get(metrics, "/metrics");
    check_exposition(&after);
    let written = |text: &str| sample(text, "lsm_user_bytes_total").expect("user bytes");
    assert!(written(&after) >= written(&before) + 6.0, "{after}");
    assert!(sample(&after, "lsm_wal_syncs_total").is_some_and(|syncs| syncs >= 1.0));

    server.signal("TERM");
    let (status, _) = server.wait_exit(STOP_MAX);
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("store closed"), "{}", server.log());

    // The lock was released and the log closed: the next open serves the same data.
    let (mut server, addr, _) = start(dir.path());
    let found = kv(&["get", "k2", "--addr", &addr]);
    assert_eq!((found.status.code(), found.stdout.as_slice()), (Some(0), &b"v2\n"[..]));
    server.signal("INT");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
    // Nothing listens now: the request was not applied.
    assert_eq!(kv(&["put", "k", "w", "--addr", &addr]).status.code(), Some(3));
}

#[test]
fn scan_pages_and_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, addr, _) = start(dir.path());
    // More than a pipe holds (64 KiB) and more than one page would be needed past 10,000.
    let value = "x".repeat(100);
    let ops: Vec<String> = (0..1200).map(|i| format!("put:key{i:05}={value}")).collect();
    let mut args = vec!["--addr", addr.as_str(), "batch"];
    args.extend(ops.iter().map(String::as_str));
    assert_eq!(kv(&args).status.code(), Some(0));

    let all = kv(&["scan", "--limit", "1000000", "--addr", &addr]);
    assert_eq!(all.status.code(), Some(0));
    assert_eq!(all.stdout.iter().filter(|byte| **byte == b'\n').count(), 1200);

    // `ghostmesh-kv scan | head -1`: the reader goes away after one line.
    let mut scan = Process::start(KV, &["scan", "--limit", "5000", "--addr", &addr]);
    let mut first = String::new();
    BufReader::new(scan.stdout()).read_line(&mut first).expect("first line");
    assert!(first.starts_with("key00000\t"), "{first}");
    let (status, _) = scan.wait_exit(STOP_MAX);
    assert_eq!(status.code(), Some(0), "{}", scan.log());
    server.signal("TERM");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
}

#[test]
fn the_next_open_reports_a_clean_close_after_sigterm_and_not_after_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = |line: &str, metrics| {
        recovered(line, "clean_shutdown", metrics, "lsm_recovery_clean_shutdown")
    };
    // A new store: nothing closed it before.
    let (mut server, addr, metrics, line) = start_recovered(dir.path());
    assert_eq!(clean(&line, metrics), ("false".to_string(), 0.0), "{line}");
    assert_eq!(kv(&["put", "k", "v", "--addr", &addr]).status.code(), Some(0));
    let (_, text) = http_get(metrics, "/metrics");
    assert!(sample(&text, "lsm_group_commits_total").is_some_and(|count| count >= 1.0), "{text}");
    assert!(sample(&text, "lsm_group_commit_writes_total").is_some_and(|n| n >= 1.0), "{text}");
    for name in ["lsm_write_stalls_total", "lsm_write_stall_seconds_total"] {
        assert!(sample(&text, name).is_some(), "no {name} in {text}");
    }
    assert!(sample(&text, "lsm_wal_sync_seconds_total").is_some_and(|s| s > 0.0), "{text}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());

    // After SIGTERM: a clean close, and the write replayed from the log.
    let (mut server, addr, metrics, line) = start_recovered(dir.path());
    assert_eq!(clean(&line, metrics), ("true".to_string(), 1.0), "{line}");
    let (records, replayed) = recovered(&line, "log_records", metrics, "lsm_recovery_log_records");
    assert!(records.parse::<u64>().is_ok_and(|n| n >= 1) && replayed >= 1.0, "{line}");
    assert_eq!(kv(&["put", "k2", "v2", "--addr", &addr]).status.code(), Some(0));
    server.signal("KILL");
    assert!(!server.wait_exit(STOP_MAX).0.success());

    // After kill -9: no clean close, and still every acknowledged write.
    let (mut server, addr, metrics, line) = start_recovered(dir.path());
    assert_eq!(clean(&line, metrics), ("false".to_string(), 0.0), "{line}");
    let (tables, _) = recovered(&line, "tables", metrics, "lsm_recovery_tables");
    assert!(tables.parse::<u64>().is_ok_and(|n| n >= 1), "{line}");
    for (key, value) in [("k", &b"v\n"[..]), ("k2", &b"v2\n"[..])] {
        let found = kv(&["get", key, "--addr", &addr]);
        assert_eq!((found.status.code(), found.stdout.as_slice()), (Some(0), value));
    }
    server.signal("TERM");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
}
