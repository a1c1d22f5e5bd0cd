//! The simulated world's executor, clocks, nodes and fault points.
//!
//! Goal: tasks, time and node lifecycles behave as documented, and every way a run can go wrong
//! (deadlock, runaway, livelock, panic) is reported as an error naming the seed. Method: small
//! programs on one or two nodes, checked against the exact simulated times they should take.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use sim::world::{SimConfig, SimErrorKind, World};
use sim::{Env, File, Instant, JoinError, OpenOptions};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn world(seed: u64) -> World {
    World::new(SimConfig::new(seed))
}

#[test]
fn idle_time_is_skipped_and_timers_fire_at_their_deadline() {
    let world = world(1);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let woke_at = world.block_on(node, Duration::from_secs(7200), async move {
        env.sleep(Duration::from_secs(3600)).await;
        env.now()
    });
    assert_eq!(woke_at.expect("runs"), Instant::from_nanos(3600 * 1_000_000_000));
}

#[test]
fn timeout_races_a_future_against_the_clock() {
    let world = world(2);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let outcome = world.block_on(node, Duration::from_secs(10), async move {
        let slow = env.timeout(Duration::from_millis(5), env.sleep(Duration::from_millis(10)));
        let fast = env.timeout(Duration::from_millis(10), env.sleep(Duration::from_millis(5)));
        (slow.await, fast.await, env.now())
    });
    let (slow, fast, now) = outcome.expect("runs");
    assert_eq!(slow, Err(sim::Elapsed));
    assert_eq!(fast, Ok(()));
    // Both sleeps take their deadlines when created, at time zero, as tokio's do.
    assert_eq!(now, Instant::from_nanos(5_000_000));
}

#[test]
fn spawned_tasks_return_their_output_and_abort_cancels() {
    let world = world(3);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let outcome = world.block_on(node, Duration::from_secs(10), async move {
        let child = env.clone();
        let value = env.spawn(async move { 6 * 7 }).await;
        let sleeper = env.spawn(async move { child.sleep(Duration::from_secs(5)).await });
        sleeper.abort();
        (value, sleeper.await)
    });
    assert_eq!(outcome.expect("runs"), (Ok(42), Err(JoinError::Cancelled)));
}

#[test]
fn a_deadlock_is_reported_with_the_seed() {
    let world = world(0x5eed);
    let node = world.add_node("a", ip(1));
    let error = world
        .block_on(node, Duration::from_secs(10), std::future::pending::<()>())
        .expect_err("never finishes");
    assert!(matches!(error.kind, SimErrorKind::NoProgress { .. }), "{error}");
    assert!(error.to_string().starts_with("seed 0x5eed"), "{error}");
}

#[test]
fn a_task_that_outlives_its_budget_is_a_runaway() {
    let world = world(4);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let error = world
        .block_on(node, Duration::from_secs(1), async move {
            loop {
                env.sleep(Duration::from_millis(100)).await;
            }
        })
        .expect_err("runs forever");
    assert!(matches!(error.kind, SimErrorKind::TimeBudgetExceeded { .. }), "{error}");
}

#[test]
fn a_busy_loop_without_time_passing_is_a_livelock() {
    let mut config = SimConfig::new(5);
    config.polls_per_instant_max = 1000;
    let world = World::new(config);
    let node = world.add_node("a", ip(1));
    world.spawn(node, async {
        loop {
            YieldNow(false).await;
        }
    });
    let error = world.run_for(Duration::from_secs(1)).expect_err("livelock");
    assert!(matches!(error.kind, SimErrorKind::Livelock { .. }), "{error}");
}

#[test]
fn a_panicking_task_is_reported_with_its_node() {
    let world = world(6);
    let node = world.add_node("alpha", ip(1));
    world.spawn(node, async { panic!("boom") });
    let error = world.run_for(Duration::from_secs(1)).expect_err("panics");
    assert_eq!(
        error.kind,
        SimErrorKind::TaskPanicked { node: "alpha".to_string(), message: "boom".to_string() }
    );
}

/// Yields once (or forever, for the livelock test, by re-waking itself).
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn crash_drops_tasks_and_unsynced_writes_restart_boots_from_disk() {
    let mut config = SimConfig::new(7);
    config.disk.crash.drop_probability = 1.0;
    config.disk.crash.tear_probability = 0.0;
    let world = World::new(config);
    let boots = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (boot_count, contents) = (Arc::clone(&boots), Arc::clone(&seen));
    let node = world.add_node_with("db", ip(1), move |env| {
        let boots = Arc::clone(&boot_count);
        let seen = Arc::clone(&contents);
        async move {
            let generation = boots.fetch_add(1, Ordering::SeqCst);
            let file = env.open("log", OpenOptions::CREATE).await.expect("open");
            let mut buf = vec![0u8; file.len().await.expect("len") as usize];
            file.read_exact_at(0, &mut buf).await.expect("read");
            seen.lock().expect("lock").push(buf);
            if generation == 0 {
                file.append(b"synced").await.expect("append");
                file.sync().await.expect("sync");
                env.sync_dir("").await.expect("sync dir");
                file.append(b"-unsynced").await.expect("append");
            }
            env.sleep(Duration::from_secs(3600)).await;
        }
    });
    world.run_for(Duration::from_secs(1)).expect("runs");
    world.crash(node);
    assert!(world.is_crashed(node));
    world.run_for(Duration::from_secs(1)).expect("runs");
    world.restart(node);
    world.run_for(Duration::from_secs(1)).expect("runs");
    assert_eq!(boots.load(Ordering::SeqCst), 2);
    assert_eq!(*seen.lock().expect("lock"), vec![b"".to_vec(), b"synced".to_vec()]);
}

#[test]
fn a_stale_env_cannot_act_after_a_crash() {
    let world = world(8);
    let node = world.add_node("a", ip(1));
    let stale = world.env(node);
    world.crash(node);
    world.restart(node);
    let handle = stale.spawn(async { 1 });
    world.run_for(Duration::from_secs(1)).expect("runs");
    assert!(handle.is_finished(), "a spawn from a dead incarnation is cancelled at once");
    let fresh = world.env(node);
    let result = world.block_on(node, Duration::from_secs(1), async move {
        let dead = stale.bind_udp("0.0.0.0:1".parse().expect("addr")).await.is_err();
        let alive = fresh.bind_udp("0.0.0.0:1".parse().expect("addr")).await.is_ok();
        (dead, alive)
    });
    assert_eq!(result.expect("runs"), (true, true));
}

#[test]
fn pause_stops_a_node_and_resume_continues_it() {
    let world = world(9);
    let node = world.add_node("a", ip(1));
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ticks);
    let env = world.env(node);
    world.spawn(node, async move {
        loop {
            env.sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    world.run_for(Duration::from_millis(105)).expect("runs");
    assert_eq!(ticks.load(Ordering::SeqCst), 10);
    world.pause(node);
    world.run_for(Duration::from_secs(1)).expect("runs");
    assert_eq!(ticks.load(Ordering::SeqCst), 10, "paused: no progress");
    world.resume(node);
    world.run_for(Duration::from_millis(1)).expect("runs");
    assert_eq!(ticks.load(Ordering::SeqCst), 11, "the overdue timer runs on resume");
}

#[test]
fn wall_clocks_carry_offset_and_drift_and_monotonic_never_goes_back() {
    let world = world(10);
    let node = world.add_node("a", ip(1));
    world.set_clock(node, -2_000_000_000, 1000);
    let env = world.env(node);
    let (wall, monotonic) = world
        .block_on(node, Duration::from_secs(2000), async move {
            env.sleep(Duration::from_secs(1000)).await;
            (env.wall(), env.now())
        })
        .expect("runs");
    // Epoch 2026-01-01 + 1000 s elapsed + 1 s of drift (1000 ppm) - 2 s of offset.
    let expected = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 1000 + 1 - 2);
    assert_eq!(wall, expected);
    assert_eq!(monotonic, Instant::from_nanos(1000 * 1_000_000_000));
}

#[test]
fn buggify_fires_only_when_enabled_and_in_the_expected_fraction() {
    let mut active_sites = 0;
    let mut fire_counts = Vec::new();
    for seed in 0..200 {
        let world = world(seed);
        let node = world.add_node("a", ip(1));
        let env = world.env(node);
        let fired = (0..100).filter(|_| env.buggify("site")).count();
        let sites = world.buggify_sites();
        let site = sites.get("site").expect("the site is counted once asked");
        assert_eq!(site.fire_count, fired as u64, "every fire is counted");
        assert!(site.fire_probability.is_some() || fired == 0);
        if fired > 0 {
            active_sites += 1;
            assert!(fired <= 80, "fire probability at most 0.5, fired {fired}/100");
            fire_counts.push(fired);
        }
    }
    // Active in 25% of runs: 50 of 200 expected.
    assert!((25..=75).contains(&active_sites), "active in {active_sites} of 200 runs");
    // The firing probability is drawn per run from [0.01, 0.5]: runs differ widely.
    let (low, high) = (fire_counts.iter().min(), fire_counts.iter().max());
    assert!(low < Some(&10) && high > Some(&30), "fire counts {low:?}..{high:?}");

    let mut config = SimConfig::new(1);
    config.buggify.enabled = false;
    let world = World::new(config);
    let env = world.env(world.add_node("a", ip(1)));
    assert!((0..1000).all(|_| !env.buggify("site")));
    let sites = world.buggify_sites();
    assert_eq!(sites.keys().copied().collect::<Vec<_>>(), ["site"], "asked, so listed");
    assert_eq!((sites["site"].fire_probability, sites["site"].fire_count), (None, 0));
}

/// Counting fires reads no randomness: the trace of a run is the same whether or not anybody
/// looks at the counts, and the counts are the same on every run of a seed.
#[test]
fn buggify_fire_counts_are_deterministic_and_leave_the_trace_alone() {
    let run = |seed: u64| {
        let world = world(seed);
        let env = world.env(world.add_node("a", ip(1)));
        let fired = (0..200).filter(|round| env.buggify(["x", "y"][round % 2])).count();
        (world.trace_hash(), world.buggify_sites(), fired as u64)
    };
    for seed in 0..50 {
        let (hash, sites, fired) = run(seed);
        assert_eq!(run(seed), (hash, sites.clone(), fired));
        assert_eq!(sites.values().map(|site| site.fire_count).sum::<u64>(), fired);
    }
}

#[test]
fn node_rng_streams_are_seeded_and_independent() {
    use rand_core::RngCore;
    let draw = |seed: u64, node: &str| {
        let world = world(seed);
        world.add_node("a", ip(1));
        world.add_node("b", ip(2));
        world.env(world.node(node).expect("node")).rng().next_u64()
    };
    assert_eq!(draw(1, "a"), draw(1, "a"));
    assert_ne!(draw(1, "a"), draw(1, "b"));
    assert_ne!(draw(1, "a"), draw(2, "a"));
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicU64>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_the_world_drops_its_tasks_so_sweeps_do_not_leak() {
    let dropped = Arc::new(AtomicU64::new(0));
    let world = world(11);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let flag = DropFlag(Arc::clone(&dropped));
    world.spawn(node, async move {
        let _flag = flag;
        // Holds the world's env and a nemesis handle, the cycle the teardown must break.
        let _nemesis = env.world();
        env.sleep(Duration::from_secs(3600)).await;
    });
    world.run_for(Duration::from_secs(1)).expect("runs");
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(world);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the task was dropped with the world");
}

#[test]
fn a_loop_of_long_timeouts_around_quick_operations_runs_in_bounded_memory() {
    let world = world(12);
    let node = world.add_node("a", ip(1));
    let env = world.env(node);
    let finished = world.block_on(node, Duration::from_secs(3600), async move {
        // 200,000 one-hour timeouts, each cancelled after a microsecond.
        for _ in 0..200_000 {
            let quick = env.sleep(Duration::from_micros(1));
            env.timeout(Duration::from_secs(3600), quick).await.expect("quick wins");
        }
        env.now()
    });
    assert_eq!(finished.expect("runs"), Instant::from_nanos(200_000 * 1_000));
    // Without sweeping, 200,000 cancelled one-hour timers would still be queued.
    let pending = world.pending_event_count();
    assert!(pending <= 10_000, "{pending} events queued");
}

/// Sweeps run worlds on parallel threads, and production runs Env code on tokio's multi-threaded
/// runtime: every handle must cross threads.
#[test]
fn world_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<World>();
    check::<sim::world::SimEnv>();
    check::<sim::world::SimUdpSocket>();
    check::<sim::world::SimTcpListener>();
    check::<sim::world::SimTcpStream>();
    check::<sim::world::SimFile>();
    check::<sim::world::SimRng>();
    check::<sim::TaskHandle<u64>>();
}
