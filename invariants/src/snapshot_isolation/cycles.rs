//! Finds the dependency cycles of a graph and classifies them (module doc of
//! `snapshot_isolation`, "Cycle search"): iterative Tarjan over four views of the graph, then
//! one cheapest witness cycle per non-trivial component, by Dijkstra inside the component.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::graph::DependencyGraph;
use super::{Anomaly, CycleClass, Edge, EdgeKind, RW_EDGES_TRIED_MAX};

/// What an rw edge costs in a witness search: more than any path of other edges, so a witness
/// has as few rw edges as possible, then as few edges as possible.
const READ_WRITE_COST: u64 = 1 << 32;

/// An arc between states of a view: enters state `target`; it is edge `arc` of node `source` in
/// the dependency graph (a state is a node, or a node and a flag in the doubled view).
#[derive(Clone, Copy, Debug)]
struct StateArc {
    target: u32,
    source: u32,
    arc: u32,
}

/// A view of the graph: outgoing arcs per state.
type States = Vec<Vec<StateArc>>;

/// Strongly connected components of a view.
struct Components {
    component_of: Vec<u32>,
    /// States per component, ascending.
    members: Vec<Vec<u32>>,
}

impl Components {
    /// The components with more than one state (no view has self arcs), in a fixed order.
    fn nontrivial(&self) -> impl Iterator<Item = &Vec<u32>> {
        self.members.iter().filter(|members| members.len() > 1)
    }

    /// Arcs of `states` that stay inside the component of `members`, in state order.
    fn internal_arcs<'s>(
        &'s self,
        states: &'s States,
        members: &'s [u32],
    ) -> impl Iterator<Item = (u32, StateArc)> + 's {
        let component = self.component_of[members[0] as usize];
        members.iter().flat_map(move |&state| {
            let arcs = states[state as usize].iter();
            let internal =
                arcs.filter(move |arc| self.component_of[arc.target as usize] == component);
            internal.map(move |&arc| (state, arc))
        })
    }
}

/// Every dependency cycle class found in `graph`: G0, then G1c, then G-single and
/// G-nonadjacent, then G2 where no cycle of the other classes shares the component.
pub(super) fn find(graph: &DependencyGraph<'_>) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut flagged = vec![false; graph.transactions.len()];
    let write_states = node_states(graph, |kind| kind == EdgeKind::WriteWrite);
    let write_components = strongly_connected(&write_states);
    for members in write_components.nontrivial() {
        let (state, arc) =
            write_components.internal_arcs(&write_states, members).next().expect("a cycle");
        let cycle = cycle_through(graph, &write_states, &write_components, state, arc);
        anomalies.push(cycle_anomaly(graph, CycleClass::G0, &cycle));
    }
    let dependency_states = node_states(graph, |kind| kind != EdgeKind::ReadWrite);
    let dependency_components = strongly_connected(&dependency_states);
    for members in dependency_components.nontrivial() {
        members.iter().for_each(|&node| flagged[node as usize] = true);
        let mut internal = dependency_components.internal_arcs(&dependency_states, members);
        let Some((state, arc)) = internal.find(|&(_, arc)| kind(graph, arc) == EdgeKind::WriteRead)
        else {
            continue; // Only ww edges: reported as G0 above.
        };
        let cycle = cycle_through(graph, &dependency_states, &dependency_components, state, arc);
        anomalies.push(cycle_anomaly(graph, CycleClass::G1c, &cycle));
    }
    let dependency = (&dependency_states, &dependency_components);
    let doubled_states = doubled_states(graph);
    let doubled_components = strongly_connected(&doubled_states);
    for members in doubled_components.nontrivial() {
        members.iter().for_each(|&state| flagged[state as usize / 2] = true);
        let doubled = (&doubled_states, &doubled_components);
        if let Some(anomaly) = anti_dependency_cycle(graph, doubled, dependency, members) {
            anomalies.push(anomaly);
        }
    }
    let all_states = node_states(graph, |_| true);
    let all_components = strongly_connected(&all_states);
    for members in all_components.nontrivial() {
        if members.iter().any(|&node| flagged[node as usize]) {
            continue; // Already not serializable for a reason snapshot isolation forbids.
        }
        let mut internal = all_components.internal_arcs(&all_states, members);
        let is_read_write = |&(_, arc): &(u32, StateArc)| kind(graph, arc) == EdgeKind::ReadWrite;
        let (state, arc) = internal.find(is_read_write).expect("a cycle with an rw edge");
        let cycle = cycle_through(graph, &all_states, &all_components, state, arc);
        assert!(read_write_count(graph, &cycle) >= 2, "one rw edge would be G-single");
        anomalies.push(cycle_anomaly(graph, CycleClass::G2, &cycle));
    }
    anomalies
}

/// The witness for one component of the doubled view: a cycle with exactly one rw edge if one
/// is found (G-single), else one with the fewest rw edges found (G-nonadjacent); `None` if the
/// component has no rw edge (a cycle of ww and wr edges, reported as G0 or G1c).
fn anti_dependency_cycle(
    graph: &DependencyGraph<'_>,
    (doubled_states, doubled_components): (&States, &Components),
    (dependency_states, dependency_components): (&States, &Components),
    members: &[u32],
) -> Option<Anomaly> {
    let internal = doubled_components.internal_arcs(doubled_states, members);
    let read_writes: Vec<(u32, StateArc)> =
        internal.filter(|&(_, arc)| kind(graph, arc) == EdgeKind::ReadWrite).collect();
    let &first = read_writes.first()?;
    // An rw edge whose ends share a component of ww and wr edges closes a G-single for sure.
    let component_of = &dependency_components.component_of;
    let closed = read_writes.iter().find(|(_, arc)| {
        component_of[arc.source as usize] == component_of[arc.target as usize / 2]
    });
    if let Some(&(_, arc)) = closed {
        let (source, target) = (arc.source, arc.target / 2);
        let path = cheapest_path(graph, dependency_states, dependency_components, target, source);
        let cycle: Vec<StateArc> = std::iter::once(arc).chain(path).collect();
        return Some(cycle_anomaly(graph, CycleClass::GSingle, &cycle));
    }
    let mut best = cycle_through(graph, doubled_states, doubled_components, first.0, first.1);
    for &(state, arc) in read_writes.iter().skip(1).take(RW_EDGES_TRIED_MAX - 1) {
        if read_write_count(graph, &best) == 1 {
            break;
        }
        let cycle = cycle_through(graph, doubled_states, doubled_components, state, arc);
        if read_write_count(graph, &cycle) < read_write_count(graph, &best) {
            best = cycle;
        }
    }
    let class = match read_write_count(graph, &best) {
        1 => CycleClass::GSingle,
        _ => CycleClass::GNonadjacent,
    };
    Some(cycle_anomaly(graph, class, &best))
}

/// One state per node, with the edges whose kind `keep` accepts.
fn node_states(graph: &DependencyGraph<'_>, keep: impl Fn(EdgeKind) -> bool) -> States {
    let states: States = graph
        .adjacency
        .iter()
        .enumerate()
        .map(|(source, arcs)| {
            let kept = arcs.iter().enumerate().filter(|(_, arc)| keep(arc.kind));
            let source = u32::try_from(source).expect("fewer than 2^32 nodes");
            let state_arc = |(index, arc): (usize, &super::graph::Arc)| StateArc {
                target: arc.target,
                source,
                arc: u32::try_from(index).expect("fewer than 2^32 edges per node"),
            };
            kept.map(state_arc).collect()
        })
        .collect();
    assert_eq!(states.len(), graph.transactions.len());
    states
}

/// Two states per node: `2 * node` arrived by a ww or wr edge (or is where a cycle starts),
/// `2 * node + 1` arrived by an rw edge, which no rw edge may leave. A cycle in this view is a
/// cycle of the graph with no two adjacent rw edges.
fn doubled_states(graph: &DependencyGraph<'_>) -> States {
    let mut states: States = vec![Vec::new(); graph.transactions.len() * 2];
    for (source, arcs) in graph.adjacency.iter().enumerate() {
        let source_node = u32::try_from(source).expect("fewer than 2^31 nodes");
        for (index, arc) in arcs.iter().enumerate() {
            let arc_index = u32::try_from(index).expect("fewer than 2^32 edges per node");
            let state_arc = |target| StateArc { target, source: source_node, arc: arc_index };
            if arc.kind == EdgeKind::ReadWrite {
                states[source * 2].push(state_arc(arc.target * 2 + 1));
            } else {
                states[source * 2].push(state_arc(arc.target * 2));
                states[source * 2 + 1].push(state_arc(arc.target * 2));
            }
        }
    }
    states
}

/// A state not visited yet by [`strongly_connected`].
const UNVISITED: u32 = u32::MAX;

/// The working state of Tarjan's algorithm.
struct Tarjan {
    index_of: Vec<u32>,
    lowlink: Vec<u32>,
    on_stack: Vec<bool>,
    stack: Vec<u32>,
    /// Per frame of the explicit call stack: the state and the position of its next arc.
    calls: Vec<(u32, usize)>,
    index_next: u32,
    component_of: Vec<u32>,
    members: Vec<Vec<u32>>,
}

impl Tarjan {
    fn visit(&mut self, state: u32) {
        let index = state as usize;
        assert_eq!(self.index_of[index], UNVISITED);
        self.index_of[index] = self.index_next;
        self.lowlink[index] = self.index_next;
        self.index_next += 1;
        self.on_stack[index] = true;
        self.stack.push(state);
        self.calls.push((state, 0));
    }

    /// Pops the component whose root is `state` off the stack.
    fn pop_component(&mut self, state: u32) {
        let component = u32::try_from(self.members.len()).expect("fewer than 2^32 components");
        let mut members = Vec::new();
        loop {
            let member = self.stack.pop().expect("the root is on the stack");
            self.on_stack[member as usize] = false;
            self.component_of[member as usize] = component;
            members.push(member);
            if member == state {
                break;
            }
        }
        members.sort_unstable();
        self.members.push(members);
    }
}

/// Tarjan's strongly connected components, iterative (an explicit call stack, bounded by the
/// state count) so deep graphs cannot overflow the thread's stack.
fn strongly_connected(states: &States) -> Components {
    let state_count = states.len();
    assert!(state_count < UNVISITED as usize);
    let mut tarjan = Tarjan {
        index_of: vec![UNVISITED; state_count],
        lowlink: vec![0; state_count],
        on_stack: vec![false; state_count],
        stack: Vec::new(),
        calls: Vec::new(),
        index_next: 0,
        component_of: vec![UNVISITED; state_count],
        members: Vec::new(),
    };
    for root in 0..state_count {
        if tarjan.index_of[root] != UNVISITED {
            continue;
        }
        tarjan.visit(root as u32);
        while let Some(&mut (state, ref mut position)) = tarjan.calls.last_mut() {
            let index = state as usize;
            if let Some(arc) = states[index].get(*position) {
                *position += 1;
                let target = arc.target as usize;
                if tarjan.index_of[target] == UNVISITED {
                    tarjan.visit(arc.target);
                } else if tarjan.on_stack[target] {
                    tarjan.lowlink[index] = tarjan.lowlink[index].min(tarjan.index_of[target]);
                }
                continue;
            }
            tarjan.calls.pop();
            if let Some(&(parent, _)) = tarjan.calls.last() {
                let parent = parent as usize;
                tarjan.lowlink[parent] = tarjan.lowlink[parent].min(tarjan.lowlink[index]);
            }
            if tarjan.lowlink[index] == tarjan.index_of[index] {
                tarjan.pop_component(state);
            }
        }
    }
    assert!(tarjan.stack.is_empty());
    assert!(tarjan.component_of.iter().all(|&component| component != UNVISITED));
    Components { component_of: tarjan.component_of, members: tarjan.members }
}

/// A cheapest cycle that starts with `arc` (leaving `state`) and returns to `state` inside the
/// component they share.
fn cycle_through(
    graph: &DependencyGraph<'_>,
    states: &States,
    components: &Components,
    state: u32,
    arc: StateArc,
) -> Vec<StateArc> {
    let path = cheapest_path(graph, states, components, arc.target, state);
    std::iter::once(arc).chain(path).collect()
}

/// The cheapest path from `source` to `target` (same component) that stays in the component,
/// by Dijkstra; ties go to the smaller state, so the answer is deterministic.
fn cheapest_path(
    graph: &DependencyGraph<'_>,
    states: &States,
    components: &Components,
    source: u32,
    target: u32,
) -> Vec<StateArc> {
    let component = components.component_of[source as usize];
    assert_eq!(components.component_of[target as usize], component, "a path must exist");
    // Per state reached: its cost, and the state and arc it was reached by.
    let mut best: BTreeMap<u32, (u64, Option<(u32, StateArc)>)> = BTreeMap::new();
    let mut heap = BinaryHeap::new();
    best.insert(source, (0, None));
    heap.push(Reverse((0_u64, source)));
    while let Some(Reverse((cost, state))) = heap.pop() {
        if state == target {
            break;
        }
        if best[&state].0 < cost {
            continue;
        }
        for &arc in &states[state as usize] {
            if components.component_of[arc.target as usize] != component {
                continue;
            }
            let step_cost =
                if kind(graph, arc) == EdgeKind::ReadWrite { READ_WRITE_COST } else { 1 };
            let next_cost = cost + step_cost;
            if best.get(&arc.target).is_none_or(|&(known, _)| next_cost < known) {
                best.insert(arc.target, (next_cost, Some((state, arc))));
                heap.push(Reverse((next_cost, arc.target)));
            }
        }
    }
    let member_count = components.members[component as usize].len();
    let mut path = Vec::new();
    let mut state = target;
    while state != source {
        let (_, reached_by) = best[&state];
        let (previous, arc) = reached_by.expect("every state of a component is reachable");
        path.push(arc);
        state = previous;
        assert!(path.len() <= member_count, "a cheapest path visits each state once");
    }
    path.reverse();
    path
}

/// The kind of the dependency edge behind `arc`.
fn kind(graph: &DependencyGraph<'_>, arc: StateArc) -> EdgeKind {
    graph.adjacency[arc.source as usize][arc.arc as usize].kind
}

fn read_write_count(graph: &DependencyGraph<'_>, cycle: &[StateArc]) -> usize {
    cycle.iter().filter(|&&arc| kind(graph, arc) == EdgeKind::ReadWrite).count()
}

/// `cycle` as an anomaly of `class`, with transaction ids and key names.
fn cycle_anomaly(graph: &DependencyGraph<'_>, class: CycleClass, cycle: &[StateArc]) -> Anomaly {
    let edges: Vec<Edge> = cycle
        .iter()
        .map(|state_arc| {
            let arc = graph.adjacency[state_arc.source as usize][state_arc.arc as usize];
            Edge {
                source: graph.transactions[state_arc.source as usize].id,
                target: graph.transactions[arc.target as usize].id,
                kind: arc.kind,
                key: graph.keys[arc.key as usize].to_string(),
            }
        })
        .collect();
    assert!(edges.len() >= 2, "no self edges, so a cycle has two edges or more");
    let closes = edges.last().map(|edge| edge.target) == edges.first().map(|edge| edge.source);
    assert!(closes, "a cycle ends where it starts");
    assert!(edges.windows(2).all(|pair| pair[0].target == pair[1].source));
    Anomaly::Cycle { class, edges }
}
