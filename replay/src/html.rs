//! `replay --html FILE`: one self-contained page that pictures a run, as Jepsen's timeline and
//! latency plots do.
//!
//! The page is a timeline with one lane per node (servers first, then clients) over the whole
//! run: the faulty phase shaded, the heal marked, each fault of the plan as a band on the lanes
//! it touches (partitions, crashes, pauses, clogs, clock jumps, disk faults; link spikes on a
//! network lane above the nodes), and each client operation of the history as a bar from call
//! to return on its client's lane, coloured by outcome. Operations the violation names are
//! outlined in red, the other operations on the keys it names in orange. Below the timeline a
//! latency plot (latency over call time) and the fault table.
//!
//! Everything is inline (CSS, SVG, a few lines of JavaScript for details on click and for
//! dimming the uninvolved): the page loads nothing, so it opens offline and can be attached to
//! an issue. Histories draw bars when they record single operations: the register scenarios'
//! single-key operations under `operations` (`invariants::linearizability::Operation`, on lane
//! `cN` for client N), or a scenario's op log under `ops` (`scenarios::oplog::OpRecord`, each on
//! the lane it names, as `lsm-crash` records its writers' puts, deletes, batches, gets, flushes
//! and compactions, and `docdb-txn` its transactions). Other scenarios record counts: their
//! page has lanes and faults only.

use std::fmt::Write as _;

use invariants::linearizability::{Input, Operation, Output};
use scenarios::oplog::{self, OpRecord};
use scenarios::plan::Topology;
use scenarios::{Fault, FaultKind, Outcome};

/// Width of the lane labels, in SVG units.
const LABEL_WIDTH: f64 = 90.0;
/// Width of the plotted time range, in SVG units.
const PLOT_WIDTH: f64 = 1100.0;
/// Height of one row of operation bars.
const ROW_HEIGHT: f64 = 16.0;
/// Most rows of bars one lane stacks overlapping operations into.
const ROWS_PER_LANE_MAX: usize = 4;
/// Height of the time axis above the lanes.
const AXIS_HEIGHT: f64 = 26.0;
/// Height of the latency plot's drawing area.
const LATENCY_HEIGHT: f64 = 220.0;
/// How far an unknown operation is drawn when its client issued nothing after it.
const UNKNOWN_DRAWN_NANOS_MAX: u64 = 1_000_000_000;
/// Most lanes an op log's lane names add; later names share a `clients` lane.
const LANES_ADDED_MAX: usize = 16;

/// How an operation ended, as the page colours it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpOutcome {
    /// Acknowledged (a write) or answered (a read).
    Ok,
    /// Timed out or cut off by a crash: it may or may not have taken effect.
    Unknown,
    /// Refused with an error: it took no effect.
    Failed,
}

/// How the violation implicates an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Blame {
    /// Not at all.
    None,
    /// It touches a key the violation names.
    Key,
    /// The violation names this very operation.
    Named,
}

/// One client operation, placed on the timeline.
struct OpBar {
    lane: usize,
    row: usize,
    text: String,
    call_nanos: u64,
    /// Where the bar ends: the return, or for an unknown operation the client's next call.
    end_nanos: u64,
    outcome: OpOutcome,
    blame: Blame,
}

/// One fault of the plan on one lane.
struct FaultBand {
    index: usize,
    lane: Option<usize>,
    class: &'static str,
    text: String,
    start_nanos: u64,
    end_nanos: u64,
}

/// Everything the page draws, in SVG units and nanoseconds.
struct Picture {
    lanes: Vec<String>,
    rows: Vec<usize>,
    ops: Vec<OpBar>,
    bands: Vec<FaultBand>,
    faulty_nanos: u64,
    total_nanos: u64,
}

impl Picture {
    fn x(&self, nanos: u64) -> f64 {
        LABEL_WIDTH + nanos.min(self.total_nanos) as f64 * PLOT_WIDTH / self.total_nanos as f64
    }

    /// The top of lane `index` and its height (the network lane is lane `None`, at the top).
    fn lane_box(&self, index: Option<usize>) -> (f64, f64) {
        let network = ROW_HEIGHT + 4.0;
        let Some(index) = index else { return (AXIS_HEIGHT, network) };
        let above: f64 = self.rows[..index].iter().map(|rows| lane_height(*rows)).sum();
        (AXIS_HEIGHT + network + above, lane_height(self.rows[index]))
    }

    fn height(&self) -> f64 {
        let (top, height) = self.lane_box(Some(self.lanes.len() - 1));
        top + height + 4.0
    }
}

fn lane_height(rows: usize) -> f64 {
    rows.max(1) as f64 * ROW_HEIGHT + 8.0
}

/// The page for `outcome`, whose nodes are `topology`'s.
pub fn render(outcome: &Outcome, topology: &Topology) -> String {
    let picture = picture(outcome, topology);
    assert!(picture.lanes.len() >= topology.all().len(), "a lane per node");
    let mut page = String::with_capacity(64 * 1024);
    page.push_str(HEAD);
    push_header(&mut page, outcome, &picture);
    page.push_str("<h2>Timeline</h2>\n");
    page.push_str(LEGEND);
    push_timeline(&mut page, &picture);
    page.push_str("<div id=\"detail\">Click an operation or a fault for its details.</div>\n");
    page.push_str("<h2>Latency</h2>\n");
    push_latency(&mut page, &picture);
    push_faults_table(&mut page, &outcome.plan.faults);
    page.push_str("<h2>History</h2>\n<details><summary>as the scenario recorded it</summary><pre>");
    let history = serde_json::to_string_pretty(&history_without_operations(&outcome.history))
        .unwrap_or_default();
    page.push_str(&escape(&history));
    page.push_str("</pre></details>\n");
    page.push_str(SCRIPT);
    page.push_str("</body>\n</html>\n");
    assert!(!page.contains("http://") && !page.contains("https://"), "the page loads nothing");
    page
}

fn picture(outcome: &Outcome, topology: &Topology) -> Picture {
    let swarm = &outcome.plan.swarm;
    let mut lanes = topology.all();
    let operations = operations(&outcome.history);
    let mut ops = op_bars(&operations, &mut lanes, outcome);
    ops.extend(log_bars(&op_log(&outcome.history), &mut lanes, outcome));
    let end_nanos = ops.iter().map(|op| op.end_nanos).max().unwrap_or(0);
    let total_nanos = (swarm.total_ms() * 1_000_000).max(end_nanos).max(1);
    let rows = stack_rows(&mut ops, lanes.len());
    let faulty_nanos = swarm.faulty_ms * 1_000_000;
    let bands = fault_bands(&outcome.plan.faults, &lanes, faulty_nanos);
    Picture { lanes, rows, ops, bands, faulty_nanos, total_nanos }
}

/// The history's single-key operations, if it records them (the register scenarios do).
fn operations(history: &serde_json::Value) -> Vec<Operation> {
    history
        .get("operations")
        .and_then(|operations| serde_json::from_value(operations.clone()).ok())
        .unwrap_or_default()
}

/// The history's op log (`scenarios::oplog`), if it keeps one (`lsm-crash` does).
fn op_log(history: &serde_json::Value) -> Vec<OpRecord> {
    history.get("ops").and_then(|ops| serde_json::from_value(ops.clone()).ok()).unwrap_or_default()
}

fn history_without_operations(history: &serde_json::Value) -> serde_json::Value {
    let mut history = history.clone();
    for field in ["operations", "ops"] {
        if let Some(map) = history.as_object_mut()
            && let Some(operations) = map.remove(field)
        {
            let count = operations.as_array().map_or(0, Vec::len);
            map.insert(field.to_string(), format!("{count} (on the timeline)").into());
        }
    }
    history
}

/// Bars for an op log's `records`, each on the lane it names.
fn log_bars(records: &[OpRecord], lanes: &mut Vec<String>, outcome: &Outcome) -> Vec<OpBar> {
    let blame = Blamed::from_violation(outcome.violation.as_ref().map(|v| v.message.as_str()));
    let lanes_before = lanes.len();
    let mut order: Vec<&OpRecord> = records.iter().collect();
    order.sort_by(|a, b| (&a.lane, a.call_nanos).cmp(&(&b.lane, b.call_nanos)));
    let mut bars = Vec::with_capacity(order.len());
    for (position, record) in order.iter().enumerate() {
        let lane = lane_named(lanes, &record.lane, lanes_before);
        let next_call = order
            .get(position + 1)
            .filter(|next| next.lane == record.lane)
            .map(|next| next.call_nanos);
        let cap = record.call_nanos + UNKNOWN_DRAWN_NANOS_MAX;
        let end_nanos = record.return_nanos.unwrap_or(next_call.unwrap_or(cap).min(cap));
        let outcome = match record.outcome {
            oplog::OpOutcome::Ok => OpOutcome::Ok,
            oplog::OpOutcome::Failed => OpOutcome::Failed,
            oplog::OpOutcome::Unknown => OpOutcome::Unknown,
        };
        let on_blamed_key = record.keys.iter().any(|key| blame.keys.contains(key));
        bars.push(OpBar {
            lane,
            row: 0,
            text: describe_record(record),
            call_nanos: record.call_nanos,
            end_nanos: end_nanos.max(record.call_nanos),
            outcome,
            blame: if on_blamed_key { Blame::Key } else { Blame::None },
        });
    }
    assert!(lanes.len() <= lanes_before + LANES_ADDED_MAX + 1, "the added lanes are bounded");
    bars
}

/// The lane called `name`, added if need be (past `LANES_ADDED_MAX` added, a `clients` lane).
fn lane_named(lanes: &mut Vec<String>, name: &str, lanes_before: usize) -> usize {
    if let Some(index) = lanes.iter().position(|lane| lane == name) {
        return index;
    }
    if lanes.len() - lanes_before < LANES_ADDED_MAX {
        lanes.push(name.to_string());
        return lanes.len() - 1;
    }
    if let Some(index) = lanes.iter().position(|lane| lane == "clients") {
        return index;
    }
    lanes.push("clients".to_string());
    lanes.len() - 1
}

/// One op log record: `writer 0: put key-003 (sync) ok [1.000ms, 2.500ms]`.
fn describe_record(record: &OpRecord) -> String {
    let returned = record.return_nanos.map_or_else(|| "never returned".to_string(), ms);
    let outcome = match record.outcome {
        oplog::OpOutcome::Ok => "ok",
        oplog::OpOutcome::Failed => "failed",
        oplog::OpOutcome::Unknown => "outcome unknown",
    };
    let (lane, what, call) = (&record.lane, &record.what, ms(record.call_nanos));
    format!("{lane}: {what} {outcome} [{call}, {returned}]")
}

/// Bars for `operations`, on lane `cN` for client N (a `clients` lane is added if need be).
fn op_bars(operations: &[Operation], lanes: &mut Vec<String>, outcome: &Outcome) -> Vec<OpBar> {
    let blame = Blamed::from_violation(outcome.violation.as_ref().map(|v| v.message.as_str()));
    let mut order: Vec<&Operation> = operations.iter().collect();
    order.sort_by_key(|operation| (operation.client, operation.call_nanos));
    let mut bars = Vec::with_capacity(order.len());
    for (position, operation) in order.iter().enumerate() {
        let lane = lane_of(lanes, operation.client);
        let next_call = order
            .get(position + 1)
            .filter(|next| next.client == operation.client)
            .map(|next| next.call_nanos);
        let (end_nanos, outcome) = match (&operation.output, operation.return_nanos) {
            (Output::Unknown, _) | (_, None) => {
                let cap = operation.call_nanos + UNKNOWN_DRAWN_NANOS_MAX;
                (next_call.unwrap_or(cap).min(cap), OpOutcome::Unknown)
            }
            (_, Some(return_nanos)) => (return_nanos, OpOutcome::Ok),
        };
        bars.push(OpBar {
            lane,
            row: 0,
            text: describe(operation),
            call_nanos: operation.call_nanos,
            end_nanos: end_nanos.max(operation.call_nanos),
            outcome,
            blame: blame.of(operation),
        });
    }
    // When every operation is on a key the violation names, marking them tells nothing.
    if bars.iter().all(|bar| bar.blame != Blame::None) {
        bars.iter_mut()
            .filter(|bar| bar.blame == Blame::Key)
            .for_each(|bar| bar.blame = Blame::None);
    }
    bars
}

fn lane_of(lanes: &mut Vec<String>, client: u64) -> usize {
    let name = format!("c{client}");
    if let Some(index) = lanes.iter().position(|lane| *lane == name) {
        return index;
    }
    if let Some(index) = lanes.iter().position(|lane| lane == "clients") {
        return index;
    }
    lanes.push("clients".to_string());
    lanes.len() - 1
}

/// Puts overlapping bars of one lane on separate rows; returns each lane's row count.
fn stack_rows(ops: &mut [OpBar], lane_count: usize) -> Vec<usize> {
    let mut row_ends: Vec<Vec<u64>> = vec![Vec::new(); lane_count];
    ops.sort_by_key(|op| (op.lane, op.call_nanos));
    for op in ops.iter_mut() {
        let ends = &mut row_ends[op.lane];
        let free = ends.iter().position(|end| *end <= op.call_nanos);
        op.row = match free {
            Some(row) => row,
            None if ends.len() < ROWS_PER_LANE_MAX => {
                ends.push(0);
                ends.len() - 1
            }
            None => ROWS_PER_LANE_MAX - 1,
        };
        ends[op.row] = ends[op.row].max(op.end_nanos);
    }
    let rows: Vec<usize> = row_ends.iter().map(|ends| ends.len().max(1)).collect();
    assert!(rows.iter().all(|rows| *rows <= ROWS_PER_LANE_MAX));
    rows
}

/// One operation in the words of the linearizability counterexamples.
fn describe(operation: &Operation) -> String {
    let returned = operation.return_nanos.map_or_else(|| "unknown".to_string(), ms);
    let what = match (&operation.input, &operation.output) {
        (Input::Read, Output::Read(Some(value))) => {
            format!("read {:?} returned {value}", operation.key)
        }
        (Input::Read, Output::Read(None)) => format!("read {:?} returned absent", operation.key),
        (Input::Read, _) => format!("read {:?}, outcome unknown", operation.key),
        (Input::Write(value), Output::WriteOk) => {
            format!("write {value} to {:?} ok", operation.key)
        }
        (Input::Write(value), _) => {
            format!("write {value} to {:?}, outcome unknown", operation.key)
        }
    };
    format!("client {}: {what} [{}, {returned}]", operation.client, ms(operation.call_nanos))
}

/// Nanoseconds as the checkers print them: `12.500ms`.
fn ms(nanos: u64) -> String {
    format!("{}.{:03}ms", nanos / 1_000_000, (nanos % 1_000_000) / 1_000)
}

/// What the violation's message names: keys (`key "k1"`) and operations (`by client 3 at
/// [12.000ms, ...]`). In a linearizability counterexample only the operations after "nothing
/// can be linearized next" are the culprits; the prefix before it was fine.
#[derive(Debug, Default, PartialEq)]
struct Blamed {
    keys: Vec<String>,
    ops: Vec<(u64, String)>,
}

impl Blamed {
    fn from_violation(message: Option<&str>) -> Blamed {
        let Some(message) = message else { return Blamed::default() };
        let culprits =
            message.split_once("nothing can be linearized next").map_or(message, |s| s.1);
        let mut keys = Vec::new();
        for part in message.split("key \"").skip(1) {
            if let Some((key, _)) = part.split_once('"') {
                keys.push(key.to_string());
            }
        }
        let mut ops = Vec::new();
        for part in culprits.split("by client ").skip(1) {
            let Some((client, rest)) = part.split_once(" at [") else { continue };
            let Some((call, _)) = rest.split_once(',') else { continue };
            if let Ok(client) = client.parse() {
                ops.push((client, call.to_string()));
            }
        }
        keys.sort();
        keys.dedup();
        Blamed { keys, ops }
    }

    fn of(&self, operation: &Operation) -> Blame {
        let call = ms(operation.call_nanos);
        let named = |(client, at): &(u64, String)| *client == operation.client && *at == call;
        if self.keys.contains(&operation.key) && self.ops.iter().any(named) {
            Blame::Named
        } else if self.keys.contains(&operation.key) {
            Blame::Key
        } else {
            Blame::None
        }
    }
}

/// The bands of `faults`, each on the lanes of the nodes it touches, cut at the heal.
fn fault_bands(faults: &[Fault], lanes: &[String], faulty_nanos: u64) -> Vec<FaultBand> {
    let lane = |name: &String| lanes.iter().position(|lane| lane == name);
    let mut bands = Vec::new();
    for (index, fault) in faults.iter().enumerate() {
        let start_nanos = fault.at_ms * 1_000_000;
        let end_nanos = ((fault.at_ms + fault.duration_ms) * 1_000_000).min(faulty_nanos);
        let (class, nodes, what): (_, Vec<&String>, String) = match &fault.kind {
            FaultKind::Split { side } => {
                ("partition", side.iter().collect(), format!("split off {}", side.join(", ")))
            }
            FaultKind::Oneway { source, target } => {
                ("partition", vec![source, target], format!("{source} cannot reach {target}"))
            }
            FaultKind::Crash { node } => ("crash", vec![node], format!("crash {node}")),
            FaultKind::Pause { node } => ("pause", vec![node], format!("pause {node}")),
            FaultKind::Clog { node } => ("clog", vec![node], format!("clog {node}")),
            FaultKind::ClockJump { node, offset_ms } => {
                ("clock", vec![node], format!("clock of {node} jumps {offset_ms:+} ms"))
            }
            FaultKind::DiskFaults { node, .. } => {
                ("disk", vec![node], format!("disk faults {node}"))
            }
            FaultKind::LinkSpike { loss, latency_ms, .. } => {
                ("link", Vec::new(), format!("link spike: loss {loss}, +{latency_ms} ms"))
            }
        };
        let text = format!("fault {}: {what} [{}, {}]", index + 1, ms(start_nanos), ms(end_nanos));
        let mut targets: Vec<Option<usize>> =
            nodes.into_iter().filter_map(lane).map(Some).collect();
        if targets.is_empty() {
            targets.push(None);
        }
        for lane in targets {
            let text = text.clone();
            bands.push(FaultBand { index, lane, class, text, start_nanos, end_nanos });
        }
    }
    bands
}

fn push_header(page: &mut String, outcome: &Outcome, picture: &Picture) {
    let plan = &outcome.plan;
    let verdict = outcome.verdict;
    let class = if verdict.is_failure() { "bad" } else { "good" };
    let _ = writeln!(
        page,
        "<h1>{} seed {:#x} <span class=\"verdict {class}\">{}</span></h1>",
        escape(&plan.scenario),
        plan.seed,
        verdict.label()
    );
    let metrics = &outcome.metrics;
    let _ = writeln!(
        page,
        "<p class=\"facts\">{} nodes, {} operations ({} ok), {} faults, {} crashes; faulty phase \
         {} ms then healed to {} ms; trace {:#018x} ({} events)</p>",
        picture.lanes.len(),
        metrics.op_count,
        metrics.op_ok_count,
        plan.faults.len(),
        metrics.crash_count,
        plan.swarm.faulty_ms,
        plan.swarm.total_ms(),
        outcome.trace_hash,
        outcome.trace_count,
    );
    if let Some(violation) = &outcome.violation {
        let _ = writeln!(
            page,
            "<div class=\"violation\"><b>violated: {}</b><pre>{}</pre></div>",
            escape(violation.name()),
            escape(&violation.message)
        );
    }
    if picture.ops.is_empty() {
        page.push_str(
            "<p class=\"note\">This scenario's history records counts, not single operations: \
             the timeline shows its nodes and faults only (the counts are below).</p>\n",
        );
    }
}

fn push_timeline(page: &mut String, picture: &Picture) {
    let width = LABEL_WIDTH + PLOT_WIDTH + 10.0;
    let height = picture.height();
    let _ = writeln!(
        page,
        "<div class=\"scroll\"><svg id=\"timeline\" viewBox=\"0 0 {width} {height:.0}\" \
         width=\"{width}\" height=\"{height:.0}\" role=\"img\">"
    );
    let (x0, x_heal) = (picture.x(0), picture.x(picture.faulty_nanos));
    let _ = writeln!(
        page,
        "<rect class=\"phase-faulty\" x=\"{x0:.1}\" y=\"{AXIS_HEIGHT}\" width=\"{:.1}\" \
         height=\"{:.0}\"><title>faulty phase</title></rect>",
        x_heal - x0,
        height - AXIS_HEIGHT
    );
    push_axis(page, picture, height);
    push_lanes(page, picture, width);
    for band in &picture.bands {
        let (top, lane_height) = picture.lane_box(band.lane);
        let (x, end) = (picture.x(band.start_nanos), picture.x(band.end_nanos));
        let _ = writeln!(
            page,
            "<rect class=\"fault {}\" data-fault=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
             height=\"{:.1}\"><title>{}</title></rect>",
            band.class,
            band.index,
            top + 1.0,
            (end - x).max(1.5),
            lane_height - 2.0,
            escape(&band.text)
        );
    }
    for op in &picture.ops {
        push_op(page, picture, op);
    }
    for op in picture.ops.iter().filter(|op| op.blame == Blame::Named) {
        let x = picture.x(op.call_nanos);
        let _ = writeln!(
            page,
            "<line class=\"culprit\" x1=\"{x:.1}\" y1=\"{AXIS_HEIGHT}\" x2=\"{x:.1}\" \
             y2=\"{height:.0}\"/><text class=\"culprit-label\" x=\"{:.1}\" y=\"{:.0}\">\
             violation</text>",
            x + 3.0,
            AXIS_HEIGHT + 12.0
        );
    }
    let _ = writeln!(
        page,
        "<line class=\"heal\" x1=\"{x_heal:.1}\" y1=\"{:.0}\" x2=\"{x_heal:.1}\" \
         y2=\"{height:.0}\"/><text class=\"heal-label\" x=\"{:.1}\" y=\"{:.0}\">heal</text>",
        AXIS_HEIGHT - 4.0,
        x_heal + 3.0,
        AXIS_HEIGHT - 6.0
    );
    page.push_str("</svg></div>\n");
}

fn push_axis(page: &mut String, picture: &Picture, height: f64) {
    let step_nanos = tick_step(picture.total_nanos);
    let mut nanos = 0;
    while nanos <= picture.total_nanos {
        let x = picture.x(nanos);
        let _ = writeln!(
            page,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{height:.0}\"/>\
             <text class=\"tick-label\" x=\"{x:.1}\" y=\"12\">{}</text>",
            AXIS_HEIGHT - 6.0,
            seconds(nanos)
        );
        nanos += step_nanos;
    }
}

/// A round step (1, 2 or 5 times a power of ten) giving about ten ticks over `total_nanos`.
fn tick_step(total_nanos: u64) -> u64 {
    let target = (total_nanos / 10).max(1);
    let mut power = 1u64;
    while power.saturating_mul(10) <= target {
        power *= 10;
    }
    let step = [1, 2, 5, 10].iter().map(|m| m * power).find(|step| *step >= target);
    step.unwrap_or(power * 10)
}

/// A round time for an axis: `2s`, `250ms`, `0.5ms`.
fn seconds(nanos: u64) -> String {
    if nanos > 0 && nanos < 1_000_000 {
        return format!("{}ms", nanos as f64 / 1e6);
    }
    let millis = nanos / 1_000_000;
    if millis.is_multiple_of(1_000) {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

fn push_lanes(page: &mut String, picture: &Picture, width: f64) {
    let (top, height) = picture.lane_box(None);
    let _ = writeln!(
        page,
        "<g class=\"netlane\"><rect class=\"lane-bg\" x=\"0\" y=\"{top:.1}\" width=\"{width}\" \
         height=\"{height:.1}\"/><text class=\"lane-label\" x=\"6\" y=\"{:.1}\">network</text></g>",
        top + height / 2.0 + 4.0
    );
    for (index, name) in picture.lanes.iter().enumerate() {
        let (top, height) = picture.lane_box(Some(index));
        let stripe = if index % 2 == 0 { "even" } else { "odd" };
        let _ = writeln!(
            page,
            "<g class=\"lane\" data-node=\"{}\"><rect class=\"lane-bg {stripe}\" x=\"0\" \
             y=\"{top:.1}\" width=\"{width}\" height=\"{height:.1}\"/><text class=\"lane-label\" \
             x=\"6\" y=\"{:.1}\">{}</text></g>",
            escape(name),
            top + height / 2.0 + 4.0,
            escape(name)
        );
    }
}

fn op_classes(op: &OpBar) -> String {
    let outcome = match op.outcome {
        OpOutcome::Ok => "ok",
        OpOutcome::Unknown => "unknown",
        OpOutcome::Failed => "failed",
    };
    let blame = match op.blame {
        Blame::None => "",
        Blame::Key => " suspect",
        Blame::Named => " violating",
    };
    format!("{outcome}{blame}")
}

fn push_op(page: &mut String, picture: &Picture, op: &OpBar) {
    let (top, _) = picture.lane_box(Some(op.lane));
    let (x, end) = (picture.x(op.call_nanos), picture.x(op.end_nanos));
    let y = top + 4.0 + op.row as f64 * ROW_HEIGHT;
    let _ = writeln!(
        page,
        "<rect class=\"op {}\" x=\"{x:.2}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{:.1}\">\
         <title>{}</title></rect>",
        op_classes(op),
        (end - x).max(1.0),
        ROW_HEIGHT - 4.0,
        escape(&op.text)
    );
}

fn push_latency(page: &mut String, picture: &Picture) {
    let returned = || picture.ops.iter().filter(|op| op.outcome == OpOutcome::Ok);
    let slowest = returned().map(|op| op.end_nanos - op.call_nanos).max().unwrap_or(0);
    let top_nanos = tick_step(slowest.max(1)) * 10;
    let top_nanos = (1..=10)
        .map(|m| m * tick_step(slowest.max(1)))
        .find(|top| *top >= slowest)
        .unwrap_or(top_nanos);
    let (width, height) = (LABEL_WIDTH + PLOT_WIDTH + 10.0, LATENCY_HEIGHT + 40.0);
    let y = |nanos: u64| 10.0 + LATENCY_HEIGHT * (1.0 - nanos as f64 / top_nanos as f64);
    let _ = writeln!(
        page,
        "<div class=\"scroll\"><svg id=\"latency\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" role=\"img\">"
    );
    for step in 0..=4 {
        let nanos = top_nanos / 4 * step;
        let _ = writeln!(
            page,
            "<line class=\"tick\" x1=\"{LABEL_WIDTH}\" y1=\"{0:.1}\" x2=\"{width}\" y2=\"{0:.1}\"/>\
             <text class=\"tick-label\" x=\"{1}\" y=\"{2:.1}\">{3}</text>",
            y(nanos),
            LABEL_WIDTH - 6.0,
            y(nanos) + 4.0,
            seconds(nanos)
        );
    }
    for op in returned() {
        let radius = if op.blame == Blame::Named { 4.5 } else { 2.5 };
        let _ = writeln!(
            page,
            "<circle class=\"pt {}\" cx=\"{:.2}\" cy=\"{:.2}\" r=\"{radius}\"><title>{}</title>\
             </circle>",
            op_classes(op),
            picture.x(op.call_nanos),
            y(op.end_nanos - op.call_nanos),
            escape(&op.text)
        );
    }
    let _ = writeln!(
        page,
        "<text class=\"axis-label\" x=\"{LABEL_WIDTH}\" y=\"{:.0}\">latency (call to return) \
         of each answered operation over its call time; unknown operations have none</text>",
        height - 6.0
    );
    page.push_str("</svg></div>\n");
}

fn push_faults_table(page: &mut String, faults: &[Fault]) {
    page.push_str("<h2>Faults</h2>\n");
    if faults.is_empty() {
        page.push_str("<p>The plan has no faults.</p>\n");
        return;
    }
    page.push_str("<table><tr><th>#</th><th>at</th><th>lasts</th><th>fault</th></tr>\n");
    for (index, fault) in faults.iter().enumerate() {
        let kind = serde_json::to_string(&fault.kind).unwrap_or_default();
        let _ = writeln!(
            page,
            "<tr data-fault=\"{index}\"><td>{}</td><td>{} ms</td><td>{} ms</td><td><code>{}</code>\
             </td></tr>",
            index + 1,
            fault.at_ms,
            fault.duration_ms,
            escape(&kind)
        );
    }
    page.push_str("</table>\n");
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ghostmesh run</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
.verdict { padding: 1px 8px; border-radius: 8px; color: #fff; font-size: 14px; }
.verdict.good { background: #2e7d32; } .verdict.bad { background: #c62828; }
.violation { border-left: 4px solid #c62828; background: #fdecea; padding: 4px 10px; }
.violation pre { margin: 4px 0; white-space: pre-wrap; }
.note { color: #555; font-style: italic; }
.scroll { overflow-x: auto; border: 1px solid #ddd; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 18px; height: 10px; margin-right: 4px;
  vertical-align: middle; }
#detail { margin: 6px 0; padding: 4px 8px; background: #f4f4f4; min-height: 1.4em;
  font-family: ui-monospace, monospace; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 2px 6px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.tick { stroke: #e4e4e4; } .tick-label { text-anchor: middle; fill: #777; }
#latency .tick-label { text-anchor: end; }
.lane-bg { fill: #fff; } .lane-bg.odd { fill: #f7f7f7; } .netlane .lane-bg { fill: #eef3f8; }
.lane-label { font-weight: 600; }
.phase-faulty { fill: #fff4d6; opacity: 0.6; }
.heal { stroke: #2e7d32; stroke-width: 2; stroke-dasharray: 4 3; }
.heal-label { fill: #2e7d32; font-weight: 600; }
.culprit { stroke: #d50000; stroke-width: 1.5; stroke-dasharray: 2 2; }
.culprit-label { fill: #d50000; font-weight: 600; }
.fault { opacity: 0.45; cursor: pointer; }
.fault.partition { fill: #8e24aa; } .fault.crash { fill: #212121; }
.fault.pause { fill: #1565c0; } .fault.clog { fill: #6d4c41; }
.fault.clock { fill: #00897b; } .fault.disk { fill: #ef6c00; } .fault.link { fill: #5c6bc0; }
.op { cursor: pointer; stroke: none; }
.op.ok, .pt.ok { fill: #43a047; } .op.failed, .pt.failed { fill: #e53935; }
.op.unknown, .pt.unknown { fill: #fbc02d; }
.op.suspect { stroke: #fb8c00; stroke-width: 1; }
.op.violating { stroke: #d50000; stroke-width: 3; }
.pt.violating { stroke: #d50000; stroke-width: 2; }
.dim .op:not(.violating):not(.suspect), .dim .pt:not(.violating) { opacity: 0.15; }
.axis-label { fill: #555; }
</style>
</head>
<body>
"#;

const LEGEND: &str = r#"<div class="legend">
<span><i style="background:#43a047"></i>ok</span>
<span><i style="background:#fbc02d"></i>unknown (timed out or cut off)</span>
<span><i style="background:#e53935"></i>failed (refused, no effect)</span>
<span><i style="border:3px solid #d50000"></i>named by the violation</span>
<span><i style="border:2px solid #fb8c00"></i>on a key the violation names</span>
<span><i style="background:#fff4d6"></i>faulty phase</span>
<span><i style="background:#8e24aa;opacity:.5"></i>partition</span>
<span><i style="background:#212121;opacity:.5"></i>crash</span>
<span><i style="background:#1565c0;opacity:.5"></i>pause</span>
<span><i style="background:#6d4c41;opacity:.5"></i>clog</span>
<span><i style="background:#00897b;opacity:.5"></i>clock jump</span>
<span><i style="background:#ef6c00;opacity:.5"></i>disk faults</span>
<span><i style="background:#5c6bc0;opacity:.5"></i>link spike</span>
</div>
<p><label><input type="checkbox" id="dim"> dim operations the violation does not involve</label>
</p>
"#;

const SCRIPT: &str = r#"<script>
(function () {
  var detail = document.getElementById('detail');
  document.querySelectorAll('.op, .fault, .pt').forEach(function (element) {
    element.addEventListener('click', function () {
      var title = element.querySelector('title');
      detail.textContent = title ? title.textContent : '';
    });
  });
  document.getElementById('dim').addEventListener('change', function (event) {
    document.body.classList.toggle('dim', event.target.checked);
  });
  document.body.setAttribute('data-ready', 'yes');
})();
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(client: u64, key: &str, call_nanos: u64) -> Operation {
        let return_nanos = Some(call_nanos + 1_000_000);
        let (input, output) = (Input::Read, Output::Read(Some(7)));
        Operation { client, key: key.to_string(), call_nanos, return_nanos, input, output }
    }

    #[track_caller]
    fn check(message: &str, operation: &Operation, expected: Blame) {
        assert_eq!(Blamed::from_violation(Some(message)).of(operation), expected, "{message}");
    }

    #[test]
    fn the_violation_blames_named_operations_and_keys() {
        let linearizability = "key \"k1\": no linearization exists for its 3 operations\n\
            longest linearizable prefix found (1 operation):\n  1. read by client 2 at \
            [1.000ms, 2.000ms] returned absent\nnothing can be linearized next (the register \
            was absent):\n  read by client 3 at [12.500ms, 13.500ms] returned 7 but ...";
        check(linearizability, &operation(3, "k1", 12_500_000), Blame::Named);
        check(linearizability, &operation(2, "k1", 1_000_000), Blame::Key);
        check(linearizability, &operation(3, "k2", 12_500_000), Blame::None);
        let durability = "1 of 2 keys lost or invented data:\n  key \"c1/k2\": observed 5";
        check(durability, &operation(1, "c1/k2", 0), Blame::Key);
        check(durability, &operation(1, "c1/k1", 0), Blame::None);
        assert_eq!(Blamed::from_violation(None), Blamed::default());
    }

    #[test]
    fn escapes_and_round_ticks() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(tick_step(22_446_000_000), 5_000_000_000);
        assert_eq!(tick_step(1), 1);
        assert_eq!(seconds(2_000_000_000), "2s");
        assert_eq!(seconds(250_000_000), "250ms");
        assert_eq!(seconds(500_000), "0.5ms");
    }
}
