//! Compaction, snapshots and retention end to end: a live database written by Python's
//! SQLite, replicated with short intervals into a directory and into S3 (moto), restores
//! running in a loop meanwhile; afterwards every restore point restores to a state the
//! source passed through, files outside retention are gone and files inside are not.
//!
//! `STRATA_COMPACTION_SECONDS` sets how long the writers run (default 60).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::capture::*;
use common::{restore_to, s3_url};
use ltx::Txid;
use strata::capture::Replication;
use strata::compact::CompactionOptions;
use strata::restore::RestorePoint;
use strata::storage::{FileInfo, Level, Replica, ReplicaUrl};

/// The intervals: L1 2 s, L2 6 s, snapshots 12 s kept 24 s, L0 kept 3 s.
fn options() -> CompactionOptions {
    let mut o = CompactionOptions::default();
    o.levels = vec![Duration::from_secs(2), Duration::from_secs(6)];
    o.snapshot_interval = Duration::from_secs(12);
    o.retention.enabled = true;
    o.retention.l0 = Duration::from_secs(3);
    o.retention.snapshots = Duration::from_secs(24);
    o.retention.grace = Duration::from_secs(1);
    o
}

fn seconds() -> f64 {
    std::env::var("STRATA_COMPACTION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn levels_snapshots_and_retention_in_a_directory() {
    end_to_end(Setup::new(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn levels_snapshots_and_retention_in_s3() {
    end_to_end(Setup::new(Some(s3_url("compaction-e2e")))).await;
}

async fn end_to_end(setup: Setup) {
    common::init_logging();
    let replica = Replica::create(&ReplicaUrl::parse(&setup.replica_url).unwrap()).unwrap();
    let mut capture = quick_capture_options();
    capture.compaction = Some(options());
    let replication = Replication::start(&setup.db, replica, capture)
        .await
        .unwrap();

    // Restores of the latest state in a loop, from a separate client, while retention
    // deletes: none may fail.
    let restores = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (stop_loop, mut stopped) = tokio::sync::watch::channel(false);
    let restore_loop = {
        let (restores, failures) = (restores.clone(), failures.clone());
        let reader = setup.replica();
        let out = setup.dir.join("loop.db");
        tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                let _ = std::fs::remove_file(&out);
                match restore_to(&reader, RestorePoint::Latest, &out).await {
                    Ok(_) => {
                        restores.fetch_add(1, Ordering::Relaxed);
                    }
                    // Nothing to restore before the first upload.
                    Err(e)
                        if restores.load(Ordering::Relaxed) == 0
                            && e.to_string().contains("no LTX files") => {}
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let writers = setup.writers(2, seconds());
    tokio::task::spawn_blocking(move || wait_all(writers))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let compaction = replication.compaction_status().unwrap();
    let stopped_at = jiff::Timestamp::now();
    let status = replication.stop().await.unwrap();
    stop_loop.send(true).unwrap();
    restore_loop.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} restores failed while retention ran: {failures:?}",
        failures.len(),
        restores.load(Ordering::Relaxed) + failures.len() as u64
    );
    assert!(restores.load(Ordering::Relaxed) > 10);
    for level in [1, 2, 9] {
        let l = &compaction.levels[&Level::new(level).unwrap()];
        assert!(
            l.files_written > 0,
            "L{level} wrote nothing: {compaction:?}"
        );
        assert!(l.gaps.is_empty() && l.error.is_none(), "{compaction:?}");
    }
    assert!(compaction.deleted > 0, "retention deleted nothing");

    check_history(&setup).await;
    check_retention(&setup.replica(), stopped_at).await;
    check_no_copies(&setup.replica()).await;
    assert!(status.uploaded > Txid::ZERO);
    assert_litestream_restores_the_source(&setup);
}

fn age(f: &FileInfo, now: jiff::Timestamp) -> f64 {
    now.duration_since(f.modified).as_secs_f64()
}

/// What retention must have deleted by `now` is gone, and what it must keep is there.
async fn check_retention(replica: &Replica, now: jiff::Timestamp) {
    let o = options();
    let r = o.retention;
    let slack = 3.0;
    let l0 = replica.list(Level::L0, Txid::ZERO).await.unwrap();
    // An L0 file goes once older than its retention and covered by an L1 file that has
    // settled: at most l0 + one L1 interval + grace after it was written.
    let l0_limit = r.l0.as_secs_f64() + o.levels[0].as_secs_f64() + r.grace.as_secs_f64() + slack;
    let old: Vec<_> = l0[..l0.len() - 1]
        .iter()
        .filter(|f| age(f, now) > l0_limit)
        .map(|f| format!("{f} ({:.1}s old)", age(f, now)))
        .collect();
    assert!(old.is_empty(), "L0 files past retention remain: {old:?}");

    let mut snapshots = replica.list(Level::SNAPSHOT, Txid::ZERO).await.unwrap();
    snapshots.sort_by_key(|f| f.range.max);
    let snap_limit = r.snapshots.as_secs_f64()
        + o.snapshot_interval.as_secs_f64()
        + r.grace.as_secs_f64()
        + slack;
    let (newest, older) = snapshots.split_last().expect("a snapshot");
    for s in older {
        assert!(
            age(s, now) <= snap_limit,
            "snapshot {s} is {:.1}s old",
            age(s, now)
        );
    }
    // Inside retention: the snapshots of the last retention period are all there (one
    // every interval, so more than one after a run longer than the retention, unless the
    // next is due: on a loaded machine it can be written a few seconds after its boundary,
    // when the one before it has already left the retention period).
    let kept_for = age(&snapshots[0], now);
    let next_due = age(newest, now) > o.snapshot_interval.as_secs_f64() - slack;
    if seconds() > r.snapshots.as_secs_f64() + 2.0 * o.snapshot_interval.as_secs_f64() {
        assert!(
            (snapshots.len() >= 2 || next_due)
                && kept_for
                    >= r.snapshots.as_secs_f64() - o.snapshot_interval.as_secs_f64() - slack,
            "snapshots {snapshots:?} do not reach back through the retention period (at {now})"
        );
    }

    // L1 and up: nothing at or below the oldest snapshot except each level's newest.
    let floor = snapshots[0].range.max;
    for level in [1, 2] {
        let mut files = replica
            .list(Level::new(level).unwrap(), Txid::ZERO)
            .await
            .unwrap();
        files.sort_by_key(|f| f.range.max);
        files.pop();
        let below: Vec<_> = files.iter().filter(|f| f.range.max <= floor).collect();
        assert!(
            below.is_empty(),
            "L{level} files below the floor {floor} remain: {below:?}"
        );
    }
}

/// No file of one level has the same TXID range as a file of another: nothing is copied up
/// unchanged.
async fn check_no_copies(replica: &Replica) {
    let files = replica.list_all().await.unwrap();
    for f in &files {
        let same: Vec<_> = files
            .iter()
            .filter(|g| g.range == f.range && g.level != f.level)
            .collect();
        assert!(same.is_empty(), "{f} is also in {same:?}");
    }
}

/// An operator's `strata compact` beside a live replication of the same replica: its
/// snapshots are of the same history, so the replication carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn strata_compact_beside_a_live_replication_does_not_stop_it() {
    let setup = Setup::new(None);
    let running = start_in_process(&setup, &setup.replica_url).await;
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.5)));
    let settings = setup.dir.join("compact.yml");
    std::fs::write(
        &settings,
        "levels: [{interval: 1s}]\nsnapshot: {interval: 1s}\n",
    )
    .unwrap();
    let writers = setup.writers(1, 3.0);
    let mut wrote = false;
    for _ in 0..5 {
        let out = std::process::Command::new(strata_bin())
            .args(["compact", &setup.replica_url, "--no-retention", "--config"])
            .arg(&settings)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        wrote |= said.contains("L9: wrote");
        std::thread::sleep(Duration::from_millis(300));
    }
    tokio::task::block_in_place(|| wait_all(writers));
    assert!(wrote, "strata compact wrote no snapshot");
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop().await.unwrap();
    check_history(&setup).await;
}
