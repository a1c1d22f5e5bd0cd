//! `wireguard-mesh`: WireGuard devices in a full mesh under a hostile network.
//!
//! Every peer sends a numbered IP packet to every other peer each `SEND_INTERVAL` through its
//! `wireguard::Device` over simulated UDP. An attacker node that is nobody's peer handshakes
//! under its own key, spoofs a member's tunnel address and sends garbage. The nemesis splits,
//! cuts one direction, crashes, pauses and clogs peers, raises loss, duplication and
//! reordering, and jumps wall clocks (TAI64N timestamps come from them).
//!
//! Safety (whole run): every delivered packet was sent by the peer whose key authenticated it,
//! to the node that received it, from that peer's tunnel address (authenticity), and no packet
//! is delivered twice. Liveness (healed phase): every ordered pair of peers delivers a packet
//! sent after the heal within `REKEY_TIMEOUT` + jitter + 1 s + `KEEPALIVE_TIMEOUT` (the time a
//! peer needs to notice that a crashed peer's old session is dead).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invariants::{Subject, Violation};
use sim::Instant;
use sim::world::{SimConfig, SimError, World};
use wireguard::PlantedBug;
use wireguard::mesh::{MeshHistory, MeshViolation, attacker_main, check_deliveries, node_ip};
use wireguard::mesh::{first_deliveries_after, peer_main_planted};
use wireguard::timers::{KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};

use crate::plan::{FaultClass, Topology};
use crate::runner::{Scenario, Workload};
use crate::swarm::{Bounds, Span, Swarm};

fn liveness_bound() -> Duration {
    REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_secs(1) + KEEPALIVE_TIMEOUT
}

type Shared = Arc<Mutex<MeshHistory>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, MeshHistory> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The `wireguard-mesh` scenario, or with a bug planted in every device.
#[derive(Clone, Copy, Debug)]
pub struct WireguardMesh {
    name: &'static str,
    bug: Option<PlantedBug>,
}

impl WireguardMesh {
    /// The correct mesh.
    pub const CORRECT: WireguardMesh = WireguardMesh { name: "wireguard-mesh", bug: None };
    /// The mesh whose replay window accepts its greatest counter twice (`planted-bugs`).
    pub const PLANTED_REPLAY: WireguardMesh = WireguardMesh {
        name: "planted-wg-replay-greatest",
        bug: Some(PlantedBug::ReplayAcceptsGreatestAgain),
    };
    /// The mesh whose replay window forgets the word it slides out of (`planted-bugs`).
    pub const PLANTED_SLIDE: WireguardMesh = WireguardMesh {
        name: "planted-wg-replay-slide",
        bug: Some(PlantedBug::ReplaySlideClearsLiveWord),
    };
}

impl Scenario for WireguardMesh {
    fn name(&self) -> &'static str {
        self.name
    }

    fn summary(&self) -> &'static str {
        match self.bug {
            None => {
                "3-6 WireGuard peers in a full mesh plus an attacker: splits, one-way cuts, \
                 crashes, pauses, clogs, loss/duplication/reordering spikes, clock jumps"
            }
            Some(PlantedBug::ReplaySlideClearsLiveWord) => {
                "planted bug: the replay window forgets the word it slides out of"
            }
            Some(_) => "planted bug: the replay window accepts its greatest counter twice",
        }
    }

    fn feature(&self) -> Option<&'static str> {
        self.bug.map(|_| "planted-bugs")
    }

    fn checks(&self) -> &'static [&'static str] {
        &["authenticity", "no-duplicates", "liveness"]
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::new(3, 6),
            client_count: Span::exactly(1),
            key_count: Span::exactly(0),
            faulty_ms: Span::new(20_000, 240_000),
            healed_ms: 30_000,
            liveness_bound_ms: liveness_bound().as_millis() as u64,
            fault_count: Span::new(1, 8),
            fault_classes: FaultClass::CLUSTER,
            link_loss_percent_max: 5,
            think_ms: Span::exactly(0),
            read_percent: Span::exactly(0),
        }
    }

    fn configure(&self, config: &mut SimConfig, _: &Swarm) {
        // A device that spins at one instant is a bug: fail fast, not after ten million polls.
        config.polls_per_instant_max = 100_000;
        // Skewed, drifting wall clocks: TAI64N timestamps come from them.
        config.clock_offset_max = Duration::from_secs(30);
        config.clock_drift_ppm_max = 200;
    }

    fn topology(&self, swarm: &Swarm) -> Topology {
        Topology {
            servers: (1..=swarm.node_count).map(|i| format!("wg{i}")).collect(),
            clients: vec!["attacker".to_string()],
        }
    }

    fn start(&self, world: &World, swarm: &Swarm) -> Box<dyn Workload> {
        let seed = world.seed();
        let peer_count = swarm.node_count as usize;
        let history: Shared = Arc::default();
        let bug = self.bug;
        for index in 0..peer_count {
            let history = Arc::clone(&history);
            world.add_node_with(&format!("wg{}", index + 1), node_ip(index), move |env| {
                let generation = env.generation() as u8;
                let history = Arc::clone(&history);
                peer_main_planted(env, seed, index, peer_count, generation, history, bug)
            });
        }
        world.add_node_with("attacker", node_ip(peer_count), move |env| {
            attacker_main(env, seed, peer_count)
        });
        Box::new(MeshRun { seed, peer_count, history })
    }
}

struct MeshRun {
    seed: u64,
    peer_count: usize,
    history: Shared,
}

impl Workload for MeshRun {
    fn finish(&mut self, _: &World) -> Result<(), SimError> {
        Ok(())
    }

    fn check_safety(&self) -> Result<(), Violation> {
        match check_deliveries(&lock(&self.history), self.seed, self.peer_count) {
            Ok(()) => Ok(()),
            Err(MeshViolation::Authenticity(message)) => {
                Err(Violation::new("authenticity", message))
            }
            Err(MeshViolation::Duplicate(message)) => Err(Violation::new("no-duplicates", message)),
        }
    }

    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let first = first_deliveries_after(&lock(&self.history), Instant::from_nanos(healed_nanos));
        for sender in 0..self.peer_count {
            for receiver in (0..self.peer_count).filter(|receiver| *receiver != sender) {
                let progress: Vec<u64> =
                    first.get(&(sender, receiver)).map(|at| at.as_nanos()).into_iter().collect();
                invariants::liveness::check_progress_after_heal(
                    healed_nanos,
                    &progress,
                    bound_nanos,
                )
                .map_err(|violation| {
                    let (from, to) = (format!("wg{}", sender + 1), format!("wg{}", receiver + 1));
                    let message = format!("{from} -> {to}: {}", violation.message);
                    Violation::new(violation.kind, message).concerning(Subject::Link { from, to })
                })?;
            }
        }
        Ok(())
    }

    fn history(&self) -> serde_json::Value {
        let history = lock(&self.history);
        let drops: BTreeMap<String, u64> = history
            .drops
            .iter()
            .map(|((node, reason), count)| (format!("wg{} {reason}", node + 1), *count))
            .collect();
        serde_json::json!({
            "sent": history.sent.len(),
            "delivered": history.deliveries.len(),
            "drops": drops,
        })
    }

    fn op_counts(&self) -> (u64, u64) {
        let history = lock(&self.history);
        (history.sent.len() as u64, history.deliveries.len() as u64)
    }
}
