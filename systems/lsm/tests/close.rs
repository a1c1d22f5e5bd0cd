//! `close` against work running on clones of the handle (issue 14).
//!
//! Goal: `close` returns only when no operation of the store runs or can start; the directory
//! lock is released last, so a second opener racing the close gets `Locked` until it returned,
//! and then opens a store that holds every acknowledged write. Method: one node; writers,
//! flushes and compactions run on clones while another clone closes; every operation notes when
//! it ended on a shared logical clock, and nothing may end after `close` returned.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{run, seeds, small_options, world};
use lsm::{Db, Durability, Error};
use rand::Rng;
use sim::Env;
use sim::world::SimEnv;

/// What happened, in order: (event, result was ok).
type Log = Arc<Mutex<Vec<(String, bool)>>>;

fn note(log: &Log, event: String, ok: bool) {
    log.lock().unwrap_or_else(|poison| poison.into_inner()).push((event, ok));
}

async fn clone_work(env: SimEnv, db: Db<SimEnv>, which: u32, log: Log) {
    let mut rng = env.rng();
    for step in 0..200u32 {
        let result = match (which + step) % 4 {
            0 => db.flush().await,
            1 => db.compact_all().await,
            _ => db.put(format!("k{which}-{step}").as_bytes(), b"v", Durability::Sync).await,
        };
        let closed = matches!(result, Err(Error::Closed));
        note(&log, format!("op {which}/{step}"), !closed);
        if closed {
            return;
        }
        env.sleep(Duration::from_micros(rng.random_range(0..500))).await;
    }
}

/// Goal and method: see the module doc; the opener tries every 100 µs while the close runs.
#[test]
fn close_waits_for_work_on_clones_and_releases_the_lock_last() {
    for seed in seeds(16) {
        let (world, node) = world(seed);
        run(&world, node, |env: SimEnv| async move {
            let log: Log = Arc::default();
            let db = Db::open(env.clone(), "db", small_options()).await.expect("open");
            let workers: Vec<_> = (0..3)
                .map(|which| env.spawn(clone_work(env.clone(), db.clone(), which, log.clone())))
                .collect();
            env.sleep(Duration::from_millis(env.rng().random_range(1..30))).await;
            let opener_log = log.clone();
            let opener_env = env.clone();
            let opener = env.spawn(async move {
                loop {
                    match Db::open(opener_env.clone(), "db", small_options()).await {
                        Ok(db) => {
                            note(&opener_log, "second open".to_string(), true);
                            return db;
                        }
                        Err(Error::Locked { .. }) => {}
                        Err(error) => panic!("second open failed: {error}"),
                    }
                    opener_env.sleep(Duration::from_micros(100)).await;
                }
            });
            db.close().await.expect("close");
            note(&log, "close returned".to_string(), true);
            for worker in workers {
                worker.await.expect("worker");
            }
            let second = opener.await.expect("opener");
            let log = log.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
            let closed_at = log.iter().position(|(event, _)| event == "close returned");
            let closed_at = closed_at.expect("close noted");
            let late = log[closed_at..].iter().find(|(event, ok)| event.starts_with("op") && *ok);
            assert!(late.is_none(), "seed {seed:#x}: {late:?} ran after close returned");
            let opened_at = log.iter().position(|(event, _)| event == "second open");
            assert!(opened_at > Some(closed_at), "seed {seed:#x}: opened before close returned");
            for (event, ok) in &log[..closed_at] {
                let Some(name) = event.strip_prefix("op ") else { continue };
                let (which, step) = name.split_once('/').expect("op name");
                let step: u32 = step.parse().expect("step");
                if *ok && (which.parse::<u32>().expect("which") + step) % 4 >= 2 {
                    let key = format!("k{which}-{step}");
                    let got = second.get(key.as_bytes()).await.expect("get");
                    assert_eq!(got.as_deref(), Some(&b"v"[..]), "seed {seed:#x}: {key} lost");
                }
            }
            second.close().await.expect("close second");
        });
    }
}
