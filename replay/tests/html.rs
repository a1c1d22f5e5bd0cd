//! `ghostmesh replay ... --html FILE`: the picture of a run.
//!
//! Goal: the page has a lane per node, a band per fault of the plan, a bar per operation of the
//! history, the violating operations highlighted when the run failed, and nothing that loads
//! from the network; and it opens in a real browser. Method: run the built binary in a temp
//! dir and read the page, the plan and the history it wrote; render the page in headless
//! Chromium when one is installed (the test says it skipped otherwise).

#![allow(clippy::disallowed_methods, reason = "drives the real binary, reads its real files")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::ghostmesh;

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("file written");
    serde_json::from_str(&text).expect("json")
}

/// Replays `scenario` seed `seed` with `--html`; returns the page, the plan and the history.
fn replay_page(
    dir: &Path,
    scenario: &str,
    seed: &str,
    code: i32,
) -> (String, serde_json::Value, serde_json::Value) {
    let output = ghostmesh(dir, &["replay", scenario, "--seed", seed, "--html", "run.html"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(code), "{stdout}");
    assert!(stdout.contains("html    run.html"), "{stdout}");
    let page = std::fs::read_to_string(dir.join("run.html")).expect("page written");
    let stem = dir.join(format!("target/ghostmesh/{scenario}-{seed}"));
    let plan = read_json(&stem.with_extension("plan.json"));
    let history = read_json(&stem.with_extension("history.json"));
    (page, plan, history)
}

/// Checks what every page must have; returns how many operation bars it has.
#[track_caller]
fn check_structure(page: &str, plan: &serde_json::Value, history: &serde_json::Value) -> usize {
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.trim_end().ends_with("</html>"));
    for external in ["http://", "https://", "<link", " src=", "@import", "url("] {
        assert!(!page.contains(external), "the page must load nothing: {external}");
    }
    let swarm = &plan["swarm"];
    let node_count = swarm["node_count"].as_u64().expect("nodes") as usize
        + swarm["client_count"].as_u64().expect("clients") as usize;
    assert_eq!(page.matches("<g class=\"lane\"").count(), node_count, "a lane per node");
    for (server, name) in (1..=swarm["node_count"].as_u64().expect("nodes")).map(|i| (i, "r")) {
        assert!(page.contains(&format!("data-node=\"{name}{server}\"")));
    }
    let faults = plan["faults"].as_array().expect("faults");
    for index in 0..faults.len() {
        let band = format!("data-fault=\"{index}\" x=");
        assert!(page.contains(&band), "fault {index} has a band");
    }
    assert!(page.matches("<rect class=\"fault ").count() >= faults.len());
    let operations = history["operations"].as_array().expect("operations").len();
    assert_eq!(page.matches("<rect class=\"op ").count(), operations, "a bar per operation");
    assert!(page.contains("<svg id=\"timeline\"") && page.contains("<svg id=\"latency\""));
    operations
}

#[test]
fn page_of_a_passing_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, plan, history) = replay_page(dir.path(), "register-abd", "0x1", 0);
    assert!(check_structure(&page, &plan, &history) > 10);
    assert!(page.contains("<span class=\"verdict good\">pass</span>"));
    assert!(!page.contains("violating") || !page.contains("class=\"op ok violating"));
    assert!(!page.contains("class=\"violation\""));
}

#[test]
fn page_of_a_scenario_without_operations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output =
        ghostmesh(dir.path(), &["replay", "gossip-cluster", "--seed", "1", "--html", "g.html"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    let page = std::fs::read_to_string(dir.path().join("g.html")).expect("page written");
    assert!(page.contains("records counts, not single operations"));
    assert!(page.matches("<g class=\"lane\"").count() >= 3);
    assert!(!page.contains("http://") && !page.contains("https://"));
}

/// `lsm-crash` keeps an op log (`ops`) of its writers' operations: the page draws a bar for
/// each, on a lane per writer beside the store's node, with the faults of the plan.
#[test]
fn page_of_lsm_crash_has_op_bars() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, plan, history) = replay_page(dir.path(), "lsm-crash", "0x1", 0);
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("<svg id=\"timeline\"") && page.contains("<svg id=\"latency\""));
    assert!(page.contains("data-node=\"db\""), "the store's node has a lane");
    let writers = plan["swarm"]["client_count"].as_u64().expect("clients");
    for writer in 0..writers {
        assert!(page.contains(&format!("data-node=\"writer {writer}\"")), "writer {writer}");
    }
    let ops = history["ops"].as_array().expect("an op log");
    assert!(ops.len() > 10, "{} operations", ops.len());
    assert!(history["ops_not_recorded"].is_u64());
    assert_eq!(page.matches("<rect class=\"op ").count(), ops.len(), "a bar per operation");
    assert!(page.contains("<rect class=\"op ok"), "answered operations are green");
    assert!(page.contains("<circle class=\"pt ok"), "and in the latency plot");
    assert!(!page.contains("records counts, not single operations"));
    for index in 0..plan["faults"].as_array().expect("faults").len() {
        assert!(page.contains(&format!("data-fault=\"{index}\" x=")), "fault {index}");
    }
}

/// `docdb-txn` turns its transactions into an op log: a bar from begin to the commit's
/// return on the lane of its client.
#[test]
fn page_of_docdb_txn_has_transaction_bars() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, plan, history) = replay_page(dir.path(), "docdb-txn", "0x1", 0);
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("data-node=\"db\""), "the database's node has a lane");
    let clients = plan["swarm"]["client_count"].as_u64().expect("clients");
    for client in 0..clients {
        assert!(page.contains(&format!("data-node=\"client {client}\"")), "client {client}");
    }
    let ops = history["ops"].as_array().expect("an op log");
    assert!(ops.len() > 10, "{} transactions", ops.len());
    assert_eq!(page.matches("<rect class=\"op ").count(), ops.len(), "a bar per transaction");
    assert!(page.contains("<rect class=\"op ok") && page.contains("<title>client 0: txn ["));
    assert!(!page.contains("records counts, not single operations"));
}

/// A planted bug's safety violation names operations; the page outlines them.
#[cfg(feature = "planted-bugs")]
#[test]
fn page_of_a_planted_bug_highlights_the_violation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, plan, history) = replay_page(dir.path(), "planted-ack-early", "0x7", 3);
    check_structure(&page, &plan, &history);
    assert!(page.contains("<span class=\"verdict bad\">safety violation</span>"));
    assert!(page.contains("<div class=\"violation\"><b>violated: "));
    let violating = page.matches("<rect class=\"op ok violating\"").count()
        + page.matches("<rect class=\"op unknown violating\"").count();
    assert!(violating >= 1, "the operations the violation names are outlined");
    assert!(page.contains("<line class=\"culprit\""), "a marker at each named operation");
    assert!(page.contains("<circle class=\"pt ok violating\""), "and in the latency plot");
}

/// The browsers a test may use, by the names their packages install.
const BROWSERS: [&str; 4] = ["chromium", "chromium-browser", "google-chrome", "chrome"];

fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| BROWSERS.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs `browser` headless with `args`; its standard output (a file, since a full pipe would
/// stall it) or `None` if it did not end within a minute.
fn headless(browser: &Path, dir: &Path, args: &[&str]) -> Option<String> {
    let stdout_path = dir.join("browser.out");
    let stdout = std::fs::File::create(&stdout_path).expect("browser output file");
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args(["--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("browser starts");
    for _ in 0..600 {
        if child.try_wait().expect("wait").is_some() {
            return Some(std::fs::read_to_string(&stdout_path).expect("browser output"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn page_renders_in_headless_chromium() {
    let Some(browser) = find_browser() else {
        println!("skipped: no chromium, chromium-browser or google-chrome on PATH");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, _, _) = replay_page(dir.path(), "register-abd", "0x1", 0);
    let page = dir.path().join("run.html");
    let url = format!("file://{}", page.display());
    let dom = headless(&browser, dir.path(), &["--dump-dom", &url]).expect("the browser ends");
    assert!(dom.contains("data-ready=\"yes\""), "the page's script ran without error: {dom:.400}");
    assert!(dom.contains("<svg id=\"timeline\""));
    let shot = dir.path().join("run.png");
    let screenshot = format!("--screenshot={}", shot.display());
    let args = [screenshot.as_str(), "--window-size=1280,1100", &url];
    headless(&browser, dir.path(), &args).expect("the browser ends");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    if let Some(keep) = std::env::var_os("GHOSTMESH_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("screenshot kept");
    }
}
