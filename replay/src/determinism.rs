//! `check-determinism` in bounded memory: running hashes at checkpoints, not whole traces.
//!
//! A large world makes tens of millions of trace records; keeping both runs' records to compare
//! them once took 6.4 GB for `gossip-large`. Instead each run folds its records into a running
//! hash and keeps that hash every [`CHECKPOINT_RECORDS`] records (TigerBeetle's hash log): a
//! few kilobytes per run. Two runs agree iff their logs do; the first checkpoint whose hash
//! differs bounds the first divergence to one window of records. Both runs are then made again,
//! this time keeping only that window's records, and the two windows are compared record by
//! record to name the first diverging event and show the records around it.
//!
//! A nondeterminism need not recur in the same place on the re-runs; when the re-runs first
//! differ in another window, that window is collected instead (at most [`RERUNS_MAX`] times),
//! and when they do not differ at all the report says so.

use std::io::Write;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use sim::world::TraceRecord;
use sim::world::trace::TraceSink;

/// Records between two checkpoints of the hash log (also the window re-runs collect).
pub const CHECKPOINT_RECORDS: u64 = 1 << 16;
/// How many times the pair of runs is made again when the divergence moves between runs.
pub const RERUNS_MAX: u32 = 3;
/// Records shown before the first diverging one.
const CONTEXT_BEFORE: usize = 5;
/// Records of each run shown after the first diverging one.
const CONTEXT_AFTER: usize = 3;

/// How one run ended, besides its trace: a line for people, and everything else a
/// deterministic run must repeat (the outcome's summary and history).
pub struct RunEnd {
    /// Shown after `run N: `, e.g. trace hash, event count and verdict.
    pub headline: String,
    /// Compared between the runs.
    pub digest: String,
}

/// What one run leaves for the comparison.
#[derive(Debug, Default)]
struct HashLog {
    /// The running hash after records `[0, (i + 1) * CHECKPOINT_RECORDS)`, per checkpoint `i`.
    checkpoints: Vec<u64>,
    hash: u64,
    count: u64,
    /// Which records to keep, by index.
    window: Range<u64>,
    records: Vec<TraceRecord>,
}

impl HashLog {
    fn new(window: Range<u64>) -> HashLog {
        assert!(window.end - window.start <= CHECKPOINT_RECORDS, "a window is one checkpoint");
        HashLog { window, ..HashLog::default() }
    }

    fn push(&mut self, record: &TraceRecord) {
        if self.window.contains(&self.count) {
            self.records.push(*record);
        }
        self.hash = record.fold_into(self.hash);
        self.count += 1;
        if self.count.is_multiple_of(CHECKPOINT_RECORDS) {
            self.checkpoints.push(self.hash);
        }
        debug_assert!(self.records.len() as u64 <= CHECKPOINT_RECORDS);
    }

    /// The first checkpoint interval (index `i`: records `[i * N, (i + 1) * N)`) in which the
    /// two runs differ, if they do.
    fn first_divergent_checkpoint(&self, other: &HashLog) -> Option<u64> {
        let pairs = self.checkpoints.iter().zip(&other.checkpoints);
        if let Some(index) = pairs.into_iter().position(|(left, right)| left != right) {
            return Some(index as u64);
        }
        let common = self.checkpoints.len().min(other.checkpoints.len()) as u64;
        let same_end = self.count == other.count && self.hash == other.hash;
        (!same_end).then_some(common)
    }
}

/// Makes one run through `run`, with a sink that keeps the hash log and `window`'s records.
fn logged_run(run: &mut dyn FnMut(TraceSink) -> RunEnd, window: Range<u64>) -> (RunEnd, HashLog) {
    let log = Arc::new(Mutex::new(HashLog::new(window)));
    let sink_log = Arc::clone(&log);
    let end = run(Box::new(move |record: &TraceRecord| {
        sink_log.lock().expect("hash log lock").push(record);
    }));
    let log = std::mem::take(&mut *log.lock().expect("hash log lock"));
    (end, log)
}

/// Runs twice through `run` (a fresh, seeded run that sends its trace to the sink) and reports
/// to `out` whether both runs were identical, and if not, the first diverging event.
pub fn check(
    run: &mut dyn FnMut(TraceSink) -> RunEnd,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let (first, first_log) = logged_run(run, 0..0);
    writeln!(out, "run 1: {}", first.headline)?;
    let (second, second_log) = logged_run(run, 0..0);
    writeln!(out, "run 2: {}", second.headline)?;
    let Some(checkpoint) = first_log.first_divergent_checkpoint(&second_log) else {
        if first.digest == second.digest {
            writeln!(out, "deterministic: both runs produced the identical trace")?;
            return Ok(true);
        }
        writeln!(out, "NOT deterministic: records agree but the outcomes differ")?;
        return Ok(false);
    };
    writeln!(
        out,
        "trace hashes (one per {CHECKPOINT_RECORDS} events) first differ at checkpoint \
         {checkpoint}; re-running both to collect the records of that window"
    )?;
    rerun_for_window(run, checkpoint, out)?;
    Ok(false)
}

/// Runs the pair again keeping only the records of `checkpoint`'s window, and reports them.
fn rerun_for_window(
    run: &mut dyn FnMut(TraceSink) -> RunEnd,
    mut checkpoint: u64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for _ in 0..RERUNS_MAX {
        let start = checkpoint * CHECKPOINT_RECORDS;
        let window = start..start + CHECKPOINT_RECORDS;
        let (_, left) = logged_run(run, window.clone());
        let (_, right) = logged_run(run, window.clone());
        match left.first_divergent_checkpoint(&right) {
            Some(found) if found == checkpoint => {
                return report_window(start, &left.records, &right.records, out);
            }
            Some(found) => {
                writeln!(out, "the re-runs first differ at checkpoint {found} instead; again")?;
                checkpoint = found;
            }
            None => {
                return writeln!(
                    out,
                    "NOT deterministic, but the re-runs were identical: the divergence did not \
                     recur (it lies within events {}..{})",
                    window.start, window.end
                );
            }
        }
    }
    writeln!(out, "the divergence moved on each of {RERUNS_MAX} re-runs; no window collected")
}

/// Names the first record where the windows (starting at event `start`) differ, with context.
fn report_window(
    start: u64,
    left: &[TraceRecord],
    right: &[TraceRecord],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let length = left.len().max(right.len());
    let Some(offset) = (0..length).find(|index| left.get(*index) != right.get(*index)) else {
        return writeln!(out, "NOT deterministic: the windows agree but the hashes differ");
    };
    let shown = |record: Option<&TraceRecord>| {
        record.map_or_else(|| "<end of trace>".to_string(), ToString::to_string)
    };
    writeln!(out, "NOT deterministic: first divergence at event {}", start + offset as u64)?;
    writeln!(out, "  run 1: {}", shown(left.get(offset)))?;
    writeln!(out, "  run 2: {}", shown(right.get(offset)))?;
    let before = offset.saturating_sub(CONTEXT_BEFORE);
    if before < offset {
        writeln!(out, "  before it, in both runs:")?;
        for (index, record) in left[before..offset].iter().enumerate() {
            writeln!(out, "    event {}: {record}", start + (before + index) as u64)?;
        }
    }
    for (name, records) in [("run 1", left), ("run 2", right)] {
        let after: Vec<&TraceRecord> =
            records.iter().skip(offset + 1).take(CONTEXT_AFTER).collect();
        if !after.is_empty() {
            writeln!(out, "  after it, {name}:")?;
            for (index, record) in after.into_iter().enumerate() {
                writeln!(out, "    event {}: {record}", start + (offset + 1 + index) as u64)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim::time::Instant;
    use sim::world::TraceKind;

    /// A synthetic run of `count` records; on odd-numbered runs (the second of each pair),
    /// record `flipped` differs, if given.
    fn synthetic(count: u64, flipped: Option<u64>) -> impl FnMut(TraceSink) -> RunEnd {
        let mut run_number = 0u32;
        move |mut sink: TraceSink| {
            run_number += 1;
            let second = run_number.is_multiple_of(2);
            for index in 0..count {
                let b = u64::from(second && flipped == Some(index));
                let time = Instant::from_nanos(index * 1_000);
                sink(&TraceRecord { time, node: 0, kind: TraceKind::Poll, a: index, b });
            }
            RunEnd { headline: format!("{count} events"), digest: String::new() }
        }
    }

    #[track_caller]
    fn check_report(count: u64, flipped: Option<u64>, expected: &[&str]) -> String {
        let mut out = Vec::new();
        let deterministic = check(&mut synthetic(count, flipped), &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(deterministic, flipped.is_none_or(|index| index >= count), "{text}");
        for line in expected {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        text
    }

    #[test]
    fn identical_runs_are_deterministic() {
        check_report(3 * CHECKPOINT_RECORDS + 17, None, &["identical trace"]);
        check_report(0, None, &["identical trace"]);
    }

    #[test]
    fn a_divergence_is_found_in_its_window_with_context() {
        let index = 2 * CHECKPOINT_RECORDS + 5;
        let text = check_report(
            3 * CHECKPOINT_RECORDS,
            Some(index),
            &[
                "first differ at checkpoint 2;",
                &format!("first divergence at event {index}\n"),
                &format!("  run 1: 0.{:09}s n0 Poll a={index} b=0\n", index * 1_000),
                &format!("  run 2: 0.{:09}s n0 Poll a={index} b=1\n", index * 1_000),
                "  before it, in both runs:",
                &format!("    event {}: ", index - 1),
                "  after it, run 2:",
            ],
        );
        // Only one window was kept, so nothing else of the trace is printed.
        assert!(text.lines().count() < 30, "{text}");
    }

    /// A real scenario whose second run of each pair sees one record changed, as a
    /// nondeterministic system would make it: the report names that event.
    #[test]
    fn injected_nondeterminism_in_a_scenario_is_reported_at_its_event() {
        let scenario = scenarios::find("register-abd").expect("scenario exists");
        let plan = scenarios::draw_plan(scenario.as_ref(), 1);
        let options = scenarios::RunOptions::default();
        let mut run_number = 0u32;
        let mut run = |mut sink: TraceSink| {
            run_number += 1;
            let second = run_number.is_multiple_of(2);
            let mut index = 0u64;
            let injecting: TraceSink = Box::new(move |record: &TraceRecord| {
                let mut record = *record;
                record.a ^= u64::from(second && index == 777);
                index += 1;
                sink(&record);
            });
            let run = scenarios::runner::run_plan_with_sink;
            let outcome = run(scenario.as_ref(), &plan, &options, Some(injecting)).0;
            RunEnd { headline: outcome.verdict.label().to_string(), digest: outcome.summary() }
        };
        let mut out = Vec::new();
        assert!(!check(&mut run, &mut out).expect("writes"));
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(run_number, 4, "two runs, then both again for the window");
        assert!(text.contains("first differ at checkpoint 0;"), "{text}");
        assert!(text.contains("NOT deterministic: first divergence at event 777\n"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|line| line.ends_with("event 777")).expect("named");
        assert_ne!(lines[at + 1].replace("run 1", ""), lines[at + 2].replace("run 2", ""));
    }

    #[test]
    fn a_divergence_in_the_last_partial_window_and_at_the_start() {
        let count = CHECKPOINT_RECORDS + 10;
        check_report(
            count,
            Some(count - 1),
            &[&format!("first divergence at event {}", count - 1)],
        );
        check_report(count, Some(0), &["first divergence at event 0\n"]);
    }

    #[test]
    fn a_run_that_ends_early_diverges_at_its_end() {
        let mut run_number = 0u32;
        let mut run = |mut sink: TraceSink| {
            run_number += 1;
            let count = if run_number.is_multiple_of(2) { 100 } else { 101 };
            for index in 0..count {
                let time = Instant::from_nanos(index);
                sink(&TraceRecord { time, node: 1, kind: TraceKind::Spawn, a: index, b: 0 });
            }
            RunEnd { headline: String::new(), digest: String::new() }
        };
        let mut out = Vec::new();
        assert!(!check(&mut run, &mut out).expect("writes"));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("first divergence at event 100\n"), "{text}");
        assert!(text.contains("  run 2: <end of trace>\n"), "{text}");
    }

    #[test]
    fn equal_traces_with_different_outcomes_are_reported() {
        let mut run_number = 0u32;
        let mut run = |_sink: TraceSink| {
            run_number += 1;
            RunEnd { headline: String::new(), digest: run_number.to_string() }
        };
        let mut out = Vec::new();
        assert!(!check(&mut run, &mut out).expect("writes"));
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("records agree but the outcomes differ"), "{text}");
    }
}
