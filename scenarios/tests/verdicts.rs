//! Every verdict is reachable and distinct.
//!
//! Goal: a panic inside the simulated system, a deadlock, a liveness failure and a safety
//! violation each end a run with their own verdict and exit code, and a healthy run passes.
//! Method: tiny scenarios written here against the public `Scenario`/`Workload` traits.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invariants::Violation;
use scenarios::plan::Topology;
use scenarios::swarm::{Bounds, Span, Swarm};
use scenarios::{RunOptions, Scenario, Verdict, Workload, run_seed};
use sim::Env;
use sim::world::{SimError, World};

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Healthy,
    Panics,
    Deadlocks,
    StopsAtHeal,
    BreaksSafety,
}

struct Tiny(Behaviour);

struct TinyRun {
    behaviour: Behaviour,
    ticks: Arc<Mutex<Vec<u64>>>,
}

impl Scenario for Tiny {
    fn name(&self) -> &'static str {
        "tiny"
    }
    fn summary(&self) -> &'static str {
        "one node ticking every 100 ms"
    }
    fn checks(&self) -> &'static [&'static str] {
        &["liveness"]
    }
    fn bounds(&self) -> Bounds {
        Bounds {
            node_count: Span::exactly(1),
            client_count: Span::exactly(0),
            key_count: Span::exactly(0),
            faulty_ms: Span::exactly(2_000),
            healed_ms: 2_000,
            liveness_bound_ms: 500,
            fault_count: Span::exactly(0),
            fault_classes: &[],
            link_loss_percent_max: 0,
            think_ms: Span::exactly(0),
            read_percent: Span::exactly(0),
        }
    }
    fn topology(&self, _: &Swarm) -> Topology {
        Topology { servers: vec!["n1".into()], clients: Vec::new() }
    }
    fn start(&self, world: &World, _: &Swarm) -> Box<dyn Workload> {
        let node = world.add_node("n1", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let env = world.env(node);
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let (behaviour, recorded) = (self.0, ticks.clone());
        world.spawn(node, async move {
            loop {
                env.sleep(Duration::from_millis(100)).await;
                let now = env.now().as_nanos();
                assert!(behaviour != Behaviour::Panics || now < 1_000_000_000, "tick past 1 s");
                if behaviour == Behaviour::StopsAtHeal && now >= 2_000_000_000 {
                    return;
                }
                recorded.lock().expect("lock").push(now);
            }
        });
        Box::new(TinyRun { behaviour: self.0, ticks })
    }
}

impl Workload for TinyRun {
    fn finish(&mut self, world: &World) -> Result<(), SimError> {
        if self.behaviour == Behaviour::Deadlocks {
            let node = world.node("n1").expect("node");
            world.block_on(node, Duration::from_secs(1), std::future::pending::<()>())?;
        }
        Ok(())
    }
    fn check_safety(&self) -> Result<(), Violation> {
        match self.behaviour {
            Behaviour::BreaksSafety => Err(Violation::new("tick-order", "ticks went backwards")),
            _ => Ok(()),
        }
    }
    fn check_liveness(&self, healed_nanos: u64, bound_nanos: u64) -> Result<(), Violation> {
        let ticks = self.ticks.lock().expect("lock");
        invariants::liveness::check_progress_after_heal(healed_nanos, &ticks, bound_nanos)
    }
    fn history(&self) -> serde_json::Value {
        serde_json::json!(*self.ticks.lock().expect("lock"))
    }
    fn op_counts(&self) -> (u64, u64) {
        let count = self.ticks.lock().expect("lock").len() as u64;
        (count, count)
    }
}

#[test]
fn each_failure_has_its_own_verdict_and_exit_code() {
    let cases = [
        (Behaviour::Healthy, Verdict::Pass, 0),
        (Behaviour::BreaksSafety, Verdict::SafetyViolation, 3),
        (Behaviour::StopsAtHeal, Verdict::LivenessFailure, 4),
        (Behaviour::Panics, Verdict::Panic, 5),
        (Behaviour::Deadlocks, Verdict::NoProgress, 6),
    ];
    for (behaviour, verdict, code) in cases {
        let outcome = run_seed(&Tiny(behaviour), 1, &RunOptions::default());
        assert_eq!(outcome.verdict, verdict, "{}", outcome.headline());
        assert_eq!(outcome.verdict.exit_code(), code);
        assert_eq!(outcome.violation.is_some(), verdict != Verdict::Pass);
    }
    let panicked = run_seed(&Tiny(Behaviour::Panics), 1, &RunOptions::default());
    let message = panicked.violation.expect("violation").to_string();
    assert!(message.contains("tick past 1 s"), "{message}");
}
