//! User flushes and compactions under writes that never pause (issue 14).
//!
//! Goal: a `flush` or `compact_all` asked for by the user finishes within a bound however hard
//! writers push; before the fix one waited 2.6 simulated seconds, until the writes ended.
//! Method: three writers commit back to back (no think time) for two simulated seconds; a clone
//! asks for flushes and compactions meanwhile, and each must end within `USER_WORK_BOUND`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{run, seeds, small_options, world};
use lsm::{Db, Durability};
use sim::Env;
use sim::world::SimEnv;

/// The longest a user flush or compaction may take under the burst.
const USER_WORK_BOUND: Duration = Duration::from_millis(250);
/// How long the writers push.
const BURST: Duration = Duration::from_secs(2);

async fn writer(db: Db<SimEnv>, which: u32, stop: Arc<AtomicBool>) {
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w{which}-{:04}", step % 500);
        let durability =
            if step.is_multiple_of(2) { Durability::Sync } else { Durability::Buffered };
        db.put(key.as_bytes(), &[b'v'; 40], durability).await.expect("put");
        step += 1;
    }
}

#[test]
fn user_flush_and_compaction_finish_within_a_bound_under_a_write_burst() {
    for seed in seeds(4) {
        let (world, node) = world(seed);
        run(&world, node, |env: SimEnv| async move {
            let db = Db::open(env.clone(), "db", small_options()).await.expect("open");
            let stop = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> =
                (0..3).map(|which| env.spawn(writer(db.clone(), which, stop.clone()))).collect();
            let end = env.now() + BURST;
            let mut round = 0u32;
            while env.now() < end {
                env.sleep(Duration::from_millis(20)).await;
                let started = env.now();
                let result =
                    if round.is_multiple_of(2) { db.flush().await } else { db.compact_all().await };
                result.expect("user work");
                let took = env.now() - started;
                assert!(took <= USER_WORK_BOUND, "seed {seed:#x}: round {round} took {took:?}");
                round += 1;
            }
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                writer.await.expect("writer");
            }
            assert!(round >= 4, "seed {seed:#x}: only {round} rounds");
            db.close().await.expect("close");
        });
    }
}
