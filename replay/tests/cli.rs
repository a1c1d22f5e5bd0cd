//! The `ghostmesh` command line as a user meets it.
//!
//! Goal: help texts, the scenario list and the sweep report are pinned (insta snapshots, so a
//! change is reviewed), exit codes are distinct per verdict, and replay, shrink and
//! check-determinism work end to end from a fresh directory, and the shards of a sweep merge to
//! the unsharded sweep's report (BUGGIFY, fault kind and situation counts included). Method:
//! run the built binary in a temp dir; wall-clock figures are masked before snapshotting and
//! left out of report comparisons.

#![allow(clippy::disallowed_methods, reason = "drives the real binary, reads its real files")]

mod common;

use std::path::Path;
use std::process::Output;

use common::ghostmesh;

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
        ("help_merge", vec!["merge", "--help"]),
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
    // Coverage: every kind the scenario allows is listed, and the seeds applied some of them,
    // hitting the replica in states it reported.
    let faults = report[0]["faults"].as_object().expect("per-kind counts");
    assert_eq!(faults.len(), 4, "{faults:?}");
    assert!(faults.values().any(|kind| kind["seeds_applied"].as_u64() > Some(0)), "{faults:?}");
    let situations = report[0]["situations"].as_object().expect("per-kind situations");
    let states: Vec<&String> =
        situations.values().flat_map(|s| s.as_object().unwrap().keys()).collect();
    assert!(states.iter().any(|state| state.starts_with("up/")), "{states:?}");
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("report is json")
}

/// A report without its wall-clock figures and worker count, the fields that may differ between
/// two sweeps of the same seeds.
fn without_timing(mut reports: serde_json::Value) -> serde_json::Value {
    for report in reports.as_array_mut().expect("an array of reports") {
        let report = report.as_object_mut().expect("a report");
        for field in ["wall_secs", "seeds_per_minute", "sim_secs_per_wall_sec", "jobs"] {
            assert!(report.remove(field).is_some(), "{field}");
        }
        for run in report["runs"].as_array_mut().expect("runs") {
            assert!(run.as_object_mut().expect("a run").remove("wall_nanos").is_some());
        }
    }
    reports
}

/// Runs register-abd's 12 seeds from 5 as `count` shards and merges them into `merged.json`.
fn sharded_sweep(dir: &Path, count: u64) -> Output {
    let mut paths = Vec::new();
    for index in 0..count {
        let (shard, path) = (format!("{index}/{count}"), format!("shard-{index}-of-{count}.json"));
        let args = ["run", "register-abd", "--seeds", "12", "--start", "5", "--jobs", "1"];
        let output = ghostmesh(dir, &[&args[..], &["--shard", &shard, "--json", &path]].concat());
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        let report = read_json(&dir.join(&path));
        assert_eq!(report[0]["shard"]["index"], index);
        assert_eq!(report[0]["shard"]["count"], count);
        paths.push(path);
    }
    // Merged in reverse order: the order of the files does not matter.
    paths.reverse();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    ghostmesh(dir, &[&["merge"], &args[..], &["--json", "merged.json"]].concat())
}

#[test]
fn sharded_sweeps_merge_to_the_unsharded_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["run", "register-abd", "--seeds", "12", "--start", "5", "--json", "whole.json"];
    let output = ghostmesh(dir.path(), &args);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let whole = without_timing(read_json(&dir.path().join("whole.json")));
    assert_eq!(whole[0]["shard"], serde_json::Value::Null);
    // The register's BUGGIFY sites are counted per seed, so the merge must add them up.
    let sites = whole[0]["buggify"].as_object().expect("per-site counts");
    assert!(sites.values().any(|site| site["seeds_fired"].as_u64() > Some(0)), "{sites:?}");
    // So are the fault kinds and the situations.
    let faults = whole[0]["faults"].as_object().expect("per-kind counts");
    assert!(faults.values().any(|kind| kind["seeds_applied"].as_u64() > Some(1)), "{faults:?}");
    let situations = whole[0]["situations"].as_object().expect("per-kind situations");
    assert!(!situations.is_empty());
    // 13 shards of 12 seeds: one shard is empty.
    for count in [3, 5, 13] {
        let output = sharded_sweep(dir.path(), count);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        let merged = without_timing(read_json(&dir.path().join("merged.json")));
        assert_eq!(merged, whole, "{count} shards");
    }
    insta::assert_snapshot!("merge_report", mask_timing(&stdout(&sharded_sweep(dir.path(), 2))));
}

/// Marks the run of `seed` in a shard report as failed with `verdict`, counts included.
fn plant_failure(path: &Path, seed: u64, verdict: &str) {
    let mut report = read_json(path);
    let runs = report[0]["runs"].as_array_mut().expect("runs");
    let run = runs.iter_mut().find(|run| run["seed"] == seed).expect("seed in shard");
    run["verdict"] = verdict.into();
    let counts = report[0]["counts"].as_array_mut().expect("counts");
    counts[0][1] = (counts[0][1].as_u64().expect("count") - 1).into();
    let slot = counts.iter_mut().find(|count| count[0] == verdict).expect("verdict counted");
    slot[1] = (slot[1].as_u64().expect("count") + 1).into();
    std::fs::write(path, report.to_string()).expect("write");
}

#[test]
fn merge_exit_code_and_bad_shard_sets() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(sharded_sweep(dir.path(), 3).status.code(), Some(0));
    let shard = |index: u64| format!("shard-{index}-of-3.json");
    plant_failure(&dir.path().join(shard(0)), 5, "liveness_failure");
    plant_failure(&dir.path().join(shard(1)), 6, "safety_violation");
    plant_failure(&dir.path().join(shard(2)), 7, "no_progress");
    let output = ghostmesh(dir.path(), &["merge", &shard(2), &shard(0), &shard(1)]);
    assert_eq!(output.status.code(), Some(3), "safety first: {}", stdout(&output));
    let text = stdout(&output);
    let order = ["seed 0x5: liveness failure", "seed 0x6: safety violation", "seed 0x7: no"];
    let found: Vec<usize> = order.iter().map(|line| text.find(line).expect(line)).collect();
    assert!(found.is_sorted(), "failures sorted by seed: {text}");
    for (args, error) in [
        (vec![shard(0), shard(1)], "shards missing: 2/3"),
        (vec![shard(0), shard(1), shard(1), shard(2)], "shard 1/3 given twice"),
    ] {
        let output = ghostmesh(
            dir.path(),
            &[&["merge"], &args.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat(),
        );
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(error), "{stderr}");
    }
}

#[test]
fn replay_writes_trace_history_and_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = ghostmesh(dir.path(), &["replay", "register-abd", "--seed", "0x1"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("seed 0x1\n"), "the seed comes first: {text}");
    assert!(text.contains("situations (fault kind (faults): node state hits)\n"), "{text}");
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
/// command, and shrink leaves a one-fault plan. Seeds 5 to 7: since the register's BUGGIFY
/// sites (issue 17) seed 2 no longer fails (it loses half its replies), seed 7 does.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_sweep_exit_code_and_shrink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["run", "planted-ack-early", "--seeds", "3", "--start", "5", "--jobs", "1"];
    let output = ghostmesh(dir.path(), &args);
    assert_eq!(output.status.code(), Some(3), "safety violation exit code");
    insta::assert_snapshot!("run_report_planted", mask_timing(&stdout(&output)));
    let output = ghostmesh(dir.path(), &["shrink", "planted-ack-early", "--seed", "7"]);
    assert_eq!(output.status.code(), Some(3));
    let text = stdout(&output);
    assert!(text.contains("1 of 5 faults remain"), "{text}");
    assert!(dir.path().join("target/ghostmesh/planted-ack-early-0x7.min.plan.json").exists());
}

/// Without BUGGIFY the sweep reports the sites as reached but never fired, and the replay
/// command of a failure carries `--no-buggify`; `replay` lists each site's fires.
#[cfg(feature = "planted-bugs")]
#[test]
fn no_buggify_sweep_and_replay_list_the_sites() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["run", "planted-ack-early", "--seeds", "1", "--start", "2", "--no-buggify"];
    let output = ghostmesh(dir.path(), &[&args[..], &["--json", "off.json"]].concat());
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("BUGGIFY off") && text.contains("--seed 0x2 --no-buggify"), "{text}");
    let report = read_json(&dir.path().join("off.json"));
    assert_eq!(report[0]["no_buggify"], true);
    let sites = report[0]["buggify"].as_object().expect("per-site counts");
    assert!(!sites.is_empty() && sites.values().all(|site| site["seeds_fired"] == 0));
    let output = ghostmesh(dir.path(), &["replay", "planted-ack-early", "--seed", "2"]);
    let text = stdout(&output);
    assert!(text.contains("register.replica.reply_lost   fired "), "{text}");
    let args = ["replay", "planted-ack-early", "--seed", "2", "--no-buggify"];
    let output = ghostmesh(dir.path(), &args);
    assert_eq!(output.status.code(), Some(3), "the seed fails again without BUGGIFY");
    assert!(stdout(&output).contains("register.replica.reply_lost   inactive"));
}
