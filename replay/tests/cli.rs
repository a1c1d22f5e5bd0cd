//! The `ghostmesh` command line as a user meets it.
//!
//! Goal: help texts, the scenario list and the sweep report are pinned (insta snapshots, so a
//! change is reviewed), exit codes are distinct per verdict, and replay, shrink and
//! check-determinism work end to end from a fresh directory. Method: run the built binary in a
//! temp dir; wall-clock figures are masked before snapshotting.

#![allow(clippy::disallowed_methods, reason = "drives the real binary, reads its real files")]

use std::path::Path;
use std::process::{Command, Output};

fn ghostmesh(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ghostmesh"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ghostmesh runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

/// Replaces the wall-clock figures of a sweep report, the only lines that vary between runs.
fn mask_timing(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start() {
            l if l.starts_with("seeds/minute") => "  seeds/minute       [masked]".to_string(),
            l if l.starts_with("sim-s/wall-s") => "  sim-s/wall-s       [masked]".to_string(),
            _ => line.to_string(),
        })
        .map(|line| line + "\n")
        .collect()
}

#[test]
fn help_texts() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_run", vec!["run", "--help"]),
        ("help_replay", vec!["replay", "--help"]),
        ("help_shrink", vec!["shrink", "--help"]),
    ] {
        let output = ghostmesh(dir.path(), &args);
        assert!(output.status.success());
        insta::assert_snapshot!(name, stdout(&output));
    }
}

#[test]
fn list_names_every_scenario_and_its_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = ghostmesh(dir.path(), &["list"]);
    assert!(output.status.success());
    let name = if cfg!(feature = "planted-bugs") { "list_planted" } else { "list" };
    insta::assert_snapshot!(name, stdout(&output));
}

#[test]
fn sweep_report_and_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["run", "register-crash", "--seeds", "3", "--jobs", "2", "--json", "report.json"];
    let output = ghostmesh(dir.path(), &args);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    insta::assert_snapshot!("run_report", mask_timing(&stdout(&output)));
    let json = std::fs::read_to_string(dir.path().join("report.json")).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("report is json");
    assert_eq!(report[0]["runs"].as_array().map(Vec::len), Some(3));
    assert_eq!(report[0]["counts"][0], serde_json::json!(["pass", 3]));
}

#[test]
fn replay_writes_trace_history_and_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = ghostmesh(dir.path(), &["replay", "register-abd", "--seed", "0x1"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("seed 0x1\n"), "the seed comes first: {text}");
    let trace = std::fs::read_to_string(dir.path().join("target/ghostmesh/register-abd-0x1.trace"))
        .expect("trace written");
    assert!(trace.lines().count() > 1_000);
    let plan = dir.path().join("target/ghostmesh/register-abd-0x1.plan.json");
    // The written plan replays to the same trace.
    let plan = plan.to_str().expect("utf-8 path");
    let again = ghostmesh(dir.path(), &["replay", "register-abd", "--plan", plan, "--trace", "t2"]);
    assert_eq!(again.status.code(), Some(0));
    let trace_again = std::fs::read_to_string(dir.path().join("t2")).expect("trace written");
    assert_eq!(trace, trace_again);
}

#[test]
fn check_determinism_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = ghostmesh(dir.path(), &["check-determinism", "register-crash", "--seed", "7"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("deterministic: both runs produced the identical trace"));
}

#[test]
fn unknown_scenario_and_bad_plan_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = ghostmesh(dir.path(), &["run", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no scenario \"nope\"; choose one of register-abd"), "{stderr}");
    std::fs::write(dir.path().join("bad.json"), "{}").expect("write");
    let output = ghostmesh(dir.path(), &["replay", "register-abd", "--plan", "bad.json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a plan file"));
}

/// With the planted bugs: a sweep fails with the safety exit code and prints the replay
/// command, and shrink leaves a one-fault plan.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_sweep_exit_code_and_shrink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output =
        ghostmesh(dir.path(), &["run", "planted-ack-early", "--seeds", "3", "--jobs", "1"]);
    assert_eq!(output.status.code(), Some(3), "safety violation exit code");
    insta::assert_snapshot!("run_report_planted", mask_timing(&stdout(&output)));
    let output = ghostmesh(dir.path(), &["shrink", "planted-ack-early", "--seed", "2"]);
    assert_eq!(output.status.code(), Some(3));
    let text = stdout(&output);
    assert!(text.contains("1 of 6 faults remain"), "{text}");
    assert!(dir.path().join("target/ghostmesh/planted-ack-early-0x2.min.plan.json").exists());
}
