//! `docdb-server` end to end (feature `tokio`): a child process on loopback. `--version`,
//! `/metrics` and `/healthz`, and SIGTERM leading to a clean close that lets the next process
//! open the same directory (its lock released).

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "end-to-end tests of a production binary: real processes and files"
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use service::testing::{Process, check_exposition, field, http_get, sample};

const SERVER: &str = env!("CARGO_BIN_EXE_docdb-server");
const STOP_MAX: Duration = Duration::from_secs(20);

fn start(dir: &std::path::Path) -> (Process, SocketAddr) {
    let dir = dir.to_str().expect("utf-8 temp dir");
    let args = ["--dir", dir, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    let mut server = Process::start(SERVER, &args);
    let metrics = field(&server.wait_for("metrics on"), "addr").expect("metrics addr");
    server.wait_for("serving the database");
    (server, metrics.parse().expect("metrics addr"))
}

#[test]
fn version_metrics_stop_and_reopen() {
    let output = Command::new(SERVER).arg("--version").output().expect("running");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.starts_with("docdb-server 0."), "{text}");

    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, metrics) = start(dir.path());
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_string()));
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    check_exposition(&text);
    assert!(sample(&text, "docdb_last_commit").is_some(), "{text}");
    assert!(sample(&text, "lsm_wal_syncs_total").is_some(), "{text}");
    server.signal("TERM");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("database closed"), "{}", server.log());

    // The same directory opens again: the first process released its lock, and its store
    // closed cleanly.
    let (mut server, metrics) = start(dir.path());
    let log = server.log();
    let recovered = log.lines().find(|line| line.contains("recovered the store"));
    let line = recovered.unwrap_or_else(|| panic!("no recovery line in\n{log}"));
    assert_eq!(field(line, "clean_shutdown").as_deref(), Some("true"), "{line}");
    let (_, text) = http_get(metrics, "/metrics");
    assert_eq!(sample(&text, "lsm_recovery_clean_shutdown"), Some(1.0), "{text}");
    server.signal("INT");
    assert_eq!(server.wait_exit(STOP_MAX).0.code(), Some(0), "{}", server.log());
}
