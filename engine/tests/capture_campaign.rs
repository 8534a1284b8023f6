//! The fault campaign: a seeded random interleaving of what happens to a real deployment
//! (bursts of writes from Python's SQLite with its own checkpoints and VACUUMs, writers
//! killed between writing frames and publishing them, `kill -9` of strata at random
//! moments, strata stopped while the application writes and empties its log, the database
//! file replaced under strata). After every step, each new restore point in the replica must
//! restore to a state the writers committed; at the end, the latest must equal the source,
//! and Litestream 0.5.17 must restore it too.
//!
//! The same campaign runs in-process against S3 on `moto_server`, through the storage fault
//! wrapper injecting failed and slow requests and broken reads, with the replication stopped
//! and started while the application goes on.
//!
//! `STRATA_FAULT_SEEDS=1,2,3` replays seeds (a failure prints its seed);
//! `STRATA_FAULT_STEPS=40` makes each run longer. CI runs one short seed drawn at random.

mod common;

use std::process::Child;
use std::time::Duration;

use common::capture::*;
use common::{Rng, s3_url};
use strata::capture::Replication;
use strata::storage::faults::Fault;
use strata::storage::{Replica, ReplicaUrl};

fn seeds() -> Vec<u64> {
    match std::env::var("STRATA_FAULT_SEEDS") {
        Ok(s) => s.split(',').map(|x| x.trim().parse().unwrap()).collect(),
        Err(_) => vec![
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1,
        ],
    }
}

fn steps() -> usize {
    std::env::var("STRATA_FAULT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fault_campaign() {
    for seed in seeds() {
        eprintln!("fault campaign: STRATA_FAULT_SEEDS={seed}");
        run(seed, steps()).await;
    }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let setup = Setup::new(None);
    let mut strata: Option<Child> = Some(setup.strata());
    let mut log = Vec::new();
    let mut checked = 0;
    for step in 0..steps {
        let seconds = 0.3 + rng.below(12) as f64 / 10.0;
        let action = rng.below(6);
        log.push(format!("step {step}: action {action}, {seconds:.1}s"));
        match action {
            // Writes, now and then with orphan frames a killed writer leaves.
            0 | 1 => {
                let flags: &[&str] = if action == 1 {
                    &["--orphans", "1"]
                } else {
                    &[]
                };
                wait_all(setup.writers_with(1 + rng.below(2), seconds, flags));
            }
            // kill -9 of strata in the middle of writes (mid-sync, mid-upload, mid-checkpoint).
            2 => {
                let writers = setup.writers(1, seconds);
                std::thread::sleep(Duration::from_millis(100 + rng.below(800)));
                if let Some(s) = strata.take() {
                    signal(&s, "-KILL");
                    let mut s = s;
                    s.wait().unwrap();
                }
                wait_all(writers);
                strata = Some(setup.strata());
            }
            // strata stopped; the application writes and empties its log; strata comes back.
            3 => {
                if let Some(s) = strata.take() {
                    stop(&setup, s);
                }
                wait_all(setup.writers(1, seconds));
                let mode = ["PASSIVE", "RESTART", "TRUNCATE"][rng.below(3) as usize];
                python(&["checkpoint", setup.db.to_str().unwrap(), mode]);
                strata = Some(setup.strata());
            }
            // The database replaced under its path while strata runs.
            4 => {
                let new = setup.dir.join("new.db");
                let page_size = ["4096", "8192", "1024"][rng.below(3) as usize];
                python(&[
                    "init",
                    new.to_str().unwrap(),
                    setup.states.to_str().unwrap(),
                    page_size,
                ]);
                python(&["checkpoint", new.to_str().unwrap(), "TRUNCATE"]);
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", setup.db.display()));
                }
                std::fs::rename(&new, &setup.db).unwrap();
                wait_all(setup.writers(1, seconds));
            }
            // Idle: strata syncs and checkpoints on its own.
            _ => std::thread::sleep(Duration::from_secs_f64(seconds)),
        }
        checked = check_new_restore_points(&setup, checked).await;
    }
    std::thread::sleep(Duration::from_millis(500));
    if let Some(s) = strata.take() {
        stop(&setup, s);
    }
    eprintln!("seed {seed}: {}", log.join("; "));
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn the_fault_campaign_against_s3_with_storage_faults() {
    for seed in seeds() {
        eprintln!("S3 fault campaign: STRATA_FAULT_SEEDS={seed}");
        run_s3(seed, steps()).await;
    }
}

async fn run_s3(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let setup = Setup::new(Some(s3_url(&format!("campaign-{seed}"))));
    let base = Replica::create(&ReplicaUrl::parse(&setup.replica_url).unwrap()).unwrap();
    let (replica, faults) = base.with_faults();
    let start = || Replication::start(&setup.db, replica.clone(), quick_capture_options());
    let mut running = Some(start().await.unwrap());
    let blocking = |f: &dyn Fn()| tokio::task::block_in_place(f);
    let mut log = Vec::new();
    let mut checked = 0;
    for step in 0..steps {
        let seconds = 0.3 + rng.below(10) as f64 / 10.0;
        let action = rng.below(5);
        log.push(format!("step {step}: action {action}, {seconds:.1}s"));
        match action {
            0 => {
                let n = 1 + rng.below(2);
                blocking(&|| wait_all(setup.writers(n, seconds)));
            }
            // Storage misbehaves for a while under writes.
            1 => {
                let fault = match rng.below(4) {
                    0 => Fault::FailPut,
                    1 => Fault::FailList,
                    2 => Fault::Delay(Duration::from_millis(150)),
                    _ => Fault::BreakGetAfter(64),
                };
                faults.inject("", fault, 1 + rng.below(6) as u32);
                blocking(&|| wait_all(setup.writers_with(1, seconds, &["--orphans", "1"])));
            }
            // Stopped (perhaps failing to finish, while faults last), the application goes
            // on and checkpoints, then the replication starts again.
            2 => {
                let failed = match running.take() {
                    Some(r) => r.stop().await.err(),
                    None => None,
                };
                if let Some(e) = failed {
                    log.push(format!("stop failed: {e}"));
                }
                blocking(&|| wait_all(setup.writers(1, seconds)));
                let mode = ["PASSIVE", "RESTART", "TRUNCATE"][rng.below(3) as usize];
                python(&["checkpoint", setup.db.to_str().unwrap(), mode]);
                running = Some(loop {
                    match start().await {
                        Ok(r) => break r,
                        Err(e) => {
                            log.push(format!("start failed: {e}"));
                            faults.clear();
                        }
                    }
                });
            }
            3 => blocking(&|| wait_all(setup.writers_with(2, seconds, &["--orphans", "1"]))),
            _ => tokio::time::sleep(Duration::from_secs_f64(seconds)).await,
        }
        checked = check_new_restore_points(&setup, checked).await;
    }
    faults.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = running.take().unwrap().stop().await;
    eprintln!("seed {seed}: {}", log.join("; "));
    let status = status.unwrap_or_else(|e| panic!("seed {seed}: the final stop failed: {e}"));
    assert!(status.uploaded.get() > 0);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}
