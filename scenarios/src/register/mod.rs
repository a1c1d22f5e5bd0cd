//! The test register's scenarios: a replicated ABD register under network faults and crashes
//! (linearizability, liveness), and a single durable replica under crashes and disk faults
//! (durability, linearizability, liveness). With feature `planted-bugs`, the same scenarios
//! with one known bug each, which the harness must find, replay and shrink.

mod client;
mod protocol;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use invariants::durability::{KeyHistory, WriteRecord, check_durability};
use invariants::linearizability::{
    CheckResult, Input, Output, STEPS_MAX_DEFAULT, check_register_history,
};
use invariants::liveness::check_progress_after_heal;
use invariants::{InvariantKind, Subject, Violation};
use sim::TaskHandle;
use sim::world::{NodeId, SimError, World};

pub use client::{Client, ClientConfig, History, OP_TIMEOUT};
pub use protocol::{PlantedBug, REPLICA_PORT, Tag};

use crate::coverage::NodeState;
use crate::nemesis::at;
use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

/// Final reads after the healed phase: attempts per key before the register counts as down.
const FINAL_READ_ATTEMPTS_MAX: u32 = 10;

/// Which register scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 3-5 replicas, shared keys, every network fault and crashes.
    Replicated,
    /// One replica, each key written by one client, crashes and disk faults; final reads.
    Durable,
}

/// A register scenario, with or without a planted bug.
#[derive(Clone, Copy, Debug)]
pub struct RegisterScenario {
    /// Its name.
    pub name: &'static str,
    /// Which shape.
    pub mode: Mode,
    /// The planted bug, if any.
    pub bug: Option<PlantedBug>,
}

/// Every cluster fault, and disk errors (not bit flips: this test register's log treats any bad
/// record as a torn tail).
const REPLICATED_FAULTS: &[FaultClass] = &[
    FaultClass::Split,
    FaultClass::Oneway,
    FaultClass::Crash,
    FaultClass::Pause,
    FaultClass::Clog,
    FaultClass::LinkSpike,
    FaultClass::ClockJump,
    FaultClass::DiskFaults,
];

const DURABLE_FAULTS: &[FaultClass] =
    &[FaultClass::Crash, FaultClass::DiskFaults, FaultClass::Pause, FaultClass::LinkSpike];

impl Scenario for RegisterScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        match (self.mode, self.bug) {
            (Mode::Replicated, None) => {
                "ABD quorum register: 3-5 replicas, 2-4 clients, splits, one-way cuts, crashes, \
                 pauses, clogs, loss spikes, clock jumps, disk errors"
            }
            (Mode::Durable, None) => {
                "one durable register replica under crashes (torn and lost unsynced writes) and \
                 disk errors; final reads of every key"
            }
            (_, Some(PlantedBug::AckBeforeReplicate)) => {
                "planted bug: writes acknowledged after one replica stores them"
            }
            (_, Some(PlantedBug::SkipFsync)) => "planted bug: the replica never syncs its log",
        }
    }

    fn checks(&self) -> &'static [&'static str] {
        match self.mode {
            Mode::Replicated => &["linearizability", "liveness"],
            Mode::Durable => &["durability", "linearizability", "liveness"],
        }
    }

    fn feature(&self) -> Option<&'static str> {
        self.bug.map(|_| "planted-bugs")
    }

    fn bounds(&self) -> Bounds {
        let (node_count, client_count, key_count, classes, loss) = match self.mode {
            Mode::Replicated => {
                (Span::new(3, 5), Span::new(2, 4), Span::new(1, 3), REPLICATED_FAULTS, 5)
            }
            Mode::Durable => {
                (Span::exactly(1), Span::new(1, 2), Span::new(2, 6), DURABLE_FAULTS, 2)
            }
        };
        Bounds {
            node_count,
            client_count,
            key_count,
            faulty_ms: Span::new(5_000, 20_000),
            healed_ms: 10_000,
            liveness_bound_ms: 5_000,
            fault_count: Span::new(1, 8),
            fault_classes: classes,
            link_loss_percent_max: loss,
            think_ms: Span::new(0, 50),
            read_percent: Span::new(20, 80),
        }
    }

    fn topology(&self, swarm: &Swarm) -> Topology {
        Topology {
            servers: (1..=swarm.node_count).map(|i| format!("r{i}")).collect(),
            clients: (1..=swarm.client_count).map(|i| format!("c{i}")).collect(),
        }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let replicas: Vec<_> = (1..=swarm.node_count)
            .map(|i| protocol::replica_addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8))))
            .collect();
        let mut states = BTreeMap::new();
        for (index, addr) in replicas.iter().enumerate() {
            let bug = self.bug;
            let name = format!("r{}", index + 1);
            let state = NodeState::new("recovering", &[]);
            let boot_state = state.clone();
            world.add_node_with(&name, addr.ip(), move |env| {
                protocol::replica_main(env, bug, boot_state.clone())
            });
            states.insert(name, state);
        }
        let history: History = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for id in 1..=u64::from(swarm.client_count) {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8));
            let node = world.add_node(&format!("c{id}"), ip);
            let config = ClientConfig {
                id,
                replicas: replicas.clone(),
                keys: self.keys(swarm, id),
                read_percent: swarm.read_percent,
                think_ms_max: swarm.think_ms_max,
                stop_at: at(swarm.total_ms()),
                bug: self.bug,
            };
            let main = client::client_main(world.env(node), config.clone(), history.clone());
            clients.push(ClientHandle { node, config, main: Some(world.spawn(node, main)) });
        }
        let final_reads = BTreeMap::new();
        Box::new(RegisterRun { mode: self.mode, history, clients, final_reads, states })
    }
}

impl RegisterScenario {
    fn keys(&self, swarm: &Swarm, client: u64) -> Vec<String> {
        match self.mode {
            Mode::Replicated => (1..=swarm.key_count).map(|k| format!("k{k}")).collect(),
            // One writer per key, so durability can be judged from the writer's own order.
            Mode::Durable => (1..=swarm.key_count).map(|k| format!("c{client}/k{k}")).collect(),
        }
    }
}

/// A client node and its workload task.
struct ClientHandle {
    node: NodeId,
    config: ClientConfig,
    main: Option<TaskHandle<()>>,
}

/// One run of a register scenario.
struct RegisterRun {
    mode: Mode,
    history: History,
    clients: Vec<ClientHandle>,
    /// Per key, what the final read returned (`None` inside: absent; missing: unreadable).
    final_reads: BTreeMap<String, Option<u64>>,
    /// Per replica, what it says it does (`protocol::REPLICA_STATES`).
    states: BTreeMap<String, NodeState>,
}

impl Workload for RegisterRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        // Let every operation in flight complete first: a final read must not overlap a write.
        for client in &mut self.clients {
            if let Some(main) = client.main.take() {
                // The task only ends by itself (clients never crash), so it cannot be cancelled.
                let _ = world.block_on(client.node, OP_TIMEOUT * 4, main)?;
            }
        }
        if self.mode != Mode::Durable {
            return Ok(());
        }
        for client in &self.clients {
            let env = world.env(client.node);
            let config = client.config.clone();
            let budget = OP_TIMEOUT * 2 * FINAL_READ_ATTEMPTS_MAX * config.keys.len() as u32;
            let reads = world.block_on(client.node, budget, final_reads(env, config))?;
            self.final_reads.extend(reads);
        }
        Ok(())
    }

    fn check_safety(&self) -> Result<(), Violation> {
        let history = self.history.lock().expect("history lock");
        if self.mode == Mode::Durable {
            check_durability(&self.key_histories(&history))?;
        }
        match check_register_history(&history, STEPS_MAX_DEFAULT) {
            CheckResult::Ok => Ok(()),
            CheckResult::Violation(violation) => Err(violation),
            // Too costly to decide is not a failure of the system; it is logged.
            CheckResult::Unknown { key, steps } => {
                tracing::warn!(target: "scenarios", key, steps, "linearizability undecided");
                Ok(())
            }
        }
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let history = self.history.lock().expect("history lock");
        for ClientHandle { config, .. } in &self.clients {
            let progress: Vec<u64> = history
                .iter()
                .filter(|op| op.client == config.id && op.output != Output::Unknown)
                .filter_map(|op| op.return_nanos)
                .collect();
            check_progress_after_heal(healed_nanos, &progress, bound_nanos).map_err(|v| {
                let client = format!("c{}", config.id);
                let message = format!("client {client}: {}", v.message);
                Violation::new(v.kind, message).concerning(Subject::Node(client))
            })?;
        }
        let unreadable: Vec<_> =
            self.expected_keys().filter(|k| !self.final_reads.contains_key(k)).collect();
        if self.mode == Mode::Durable && !unreadable.is_empty() {
            let message = format!("final reads failed for {}", unreadable.join(", "));
            let first = Subject::Key(unreadable[0].clone());
            return Err(Violation::new(InvariantKind::Liveness, message).concerning(first));
        }
        Ok(())
    }

    fn history(&self) -> serde_json::Value {
        let history = self.history.lock().expect("history lock");
        serde_json::json!({ "operations": *history, "final_reads": self.final_reads })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = self.history.lock().expect("history lock");
        let ok = history.iter().filter(|op| op.output != Output::Unknown).count();
        (history.len() as u64, ok as u64)
    }

    fn node_state(&self, node: &str) -> Option<&'static str> {
        let state = self.states.get(node)?.get();
        assert!(protocol::REPLICA_STATES.contains(&state), "{state}");
        Some(state)
    }
}

impl RegisterRun {
    fn expected_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.clients.iter().flat_map(|client| client.config.keys.iter().cloned())
    }

    fn key_histories(&self, history: &[invariants::linearizability::Operation]) -> Vec<KeyHistory> {
        let mut keys: Vec<KeyHistory> = Vec::new();
        for key in self.expected_keys() {
            let Some(observed) = self.final_reads.get(&key) else { continue };
            let writes = history
                .iter()
                .filter(|op| op.key == key)
                .filter_map(|op| match op.input {
                    Input::Write(value) => Some(WriteRecord {
                        value: Some(value),
                        acknowledged: op.output == Output::WriteOk,
                    }),
                    Input::Read => None,
                })
                .collect();
            keys.push(KeyHistory { key, writes, observed: *observed });
        }
        keys
    }
}

async fn final_reads(env: sim::world::SimEnv, config: ClientConfig) -> Vec<(String, Option<u64>)> {
    let mut reads = Vec::new();
    let Ok(mut client) = Client::connect(env, config.clone()).await else { return reads };
    for key in &config.keys {
        for _ in 0..FINAL_READ_ATTEMPTS_MAX {
            if let Some(value) = client.read(key).await {
                reads.push((key.clone(), value));
                break;
            }
        }
    }
    reads
}

/// Every register scenario of this build.
pub fn scenarios() -> Vec<RegisterScenario> {
    let mut list = vec![
        RegisterScenario { name: "register-abd", mode: Mode::Replicated, bug: None },
        RegisterScenario { name: "register-crash", mode: Mode::Durable, bug: None },
    ];
    if cfg!(feature = "planted-bugs") {
        list.push(RegisterScenario {
            name: "planted-ack-early",
            mode: Mode::Replicated,
            bug: Some(PlantedBug::AckBeforeReplicate),
        });
        list.push(RegisterScenario {
            name: "planted-skip-fsync",
            mode: Mode::Durable,
            bug: Some(PlantedBug::SkipFsync),
        });
    }
    list
}
