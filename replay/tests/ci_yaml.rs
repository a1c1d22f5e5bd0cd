//! The nightly sweep's GitHub Actions workflow and Kubernetes Indexed Job, checked here because
//! neither engine runs in this repository's CI.
//!
//! Goal: the YAML parses, and the shard arithmetic holds, so the K machines of a sharded sweep
//! cover the range once: the workflow's matrix lists shards 0..K and every shard job passes
//! `I/K` with that K; the Job runs K completions K at a time and its completion index feeds
//! `--shard`. Method: parse the files with serde_yaml_ng and walk the documents.

#![allow(clippy::disallowed_methods, reason = "reads the repository's own CI files")]

use serde_yaml_ng::Value;

fn load(path: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&path).expect("CI file present");
    serde_yaml_ng::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// `I/K` from a `--shard` value with a placeholder for `I`; returns K.
#[track_caller]
fn shard_count(value: &Value, placeholder: &str) -> u64 {
    let text = value.as_str().expect("a string");
    let count = text.strip_prefix(placeholder).and_then(|rest| rest.strip_prefix('/'));
    count.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("not I/K: {text:?}"))
}

#[test]
fn nightly_workflow_matrix_covers_every_shard_once() {
    let workflow = load("ci/github/nightly-sweep.yml");
    assert!(workflow["on"]["schedule"][0]["cron"].is_string(), "runs nightly");
    let shard = &workflow["jobs"]["shard"];
    let matrix = shard["strategy"]["matrix"]["shard"].as_sequence().expect("a shard matrix");
    let indices: Vec<u64> = matrix.iter().map(|index| index.as_u64().expect("an index")).collect();
    let count = indices.len() as u64;
    assert!(count >= 2, "a matrix of shards");
    assert_eq!(indices, (0..count).collect::<Vec<_>>(), "the matrix lists shards 0..K once");
    assert_eq!(shard["strategy"]["fail-fast"], Value::Bool(false), "one failure stops no shard");
    let steps = shard["steps"].as_sequence().expect("steps");
    let sweep = steps.iter().find(|step| step["env"]["SWEEP_SHARD"].is_string()).expect("sweep");
    assert_eq!(shard_count(&sweep["env"]["SWEEP_SHARD"], "${{ matrix.shard }}"), count);
    assert!(sweep["run"].as_str().expect("a command").contains("ci/sweep"));
    // Every shard sweeps the one range the plan job picked.
    assert_eq!(sweep["env"]["SWEEP_START"], "${{ needs.plan.outputs.start }}");
    let out = sweep["env"]["SWEEP_OUT"].as_str().expect("a report path");
    assert!(out.contains("${{ matrix.shard }}"), "one report file per shard: {out}");
    let merge = &workflow["jobs"]["merge"];
    let needs = merge["needs"].as_sequence().expect("needs");
    assert!(needs.contains(&Value::from("shard")), "the merge waits for every shard");
    let merge_steps = serde_yaml_ng::to_string(&merge["steps"]).expect("steps");
    assert!(merge_steps.contains("ghostmesh merge reports/shard-*.json"), "{merge_steps}");
    assert!(merge_steps.contains("target/ghostmesh/*.plan.json"), "failing plans uploaded");
}

#[test]
fn kubernetes_indexed_job_shards_by_completion_index() {
    let job = load("ci/k8s/sweep-job.yaml");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().expect("completions");
    assert_eq!(spec["parallelism"].as_u64(), Some(completions), "every shard at once");
    let container = &spec["template"]["spec"]["containers"][0];
    let env = container["env"].as_sequence().expect("env");
    let var = |name: &str| env.iter().find(|var| var["name"] == name).expect(name).clone();
    let index = &var("SHARD_INDEX")["valueFrom"]["fieldRef"]["fieldPath"];
    assert_eq!(index, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
    assert_eq!(shard_count(&var("SWEEP_SHARD")["value"], "$(SHARD_INDEX)"), completions);
    let script = container["args"][0].as_str().expect("a script");
    assert!(script.contains("--shard \"$SWEEP_SHARD\""), "{script}");
    assert!(script.contains("ghostmesh-report-begin"), "the report is collected from the logs");
}
