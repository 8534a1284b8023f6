//! Takeover, both ways, with Litestream 0.5.17: Litestream replicates and compacts a live
//! database (L0 to L2 and snapshots), `strata replicate` continues the same database and
//! replica, then Litestream continues what strata compacted. Afterwards every restore point
//! restores to the same bytes with both tools, and the latest equals the source. On a
//! directory and on S3 (moto).

mod common;

use std::process::Child;
use std::time::Duration;

use common::capture::*;
use common::{litestream, s3_url, sha256_file};
use ltx::Txid;
use strata::restore::RestorePoint;

fn terminate(mut child: Child) {
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
}

/// The replica's newest L0 file holds one TXID, as Litestream 0.5.17 needs to continue it.
async fn assert_newest_l0_holds_one_txid(setup: &Setup) {
    let newest = setup
        .replica()
        .list(strata::storage::Level::L0, Txid::ZERO)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|f| f.range.max)
        .unwrap();
    assert_eq!(newest.range.min, newest.range.max, "newest L0 {newest}");
}

fn litestream_restore(setup: &Setup, txid: u64, out: &std::path::Path) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let result = litestream()
        .args(["restore", "-txid", &format!("{txid:016x}"), "-o"])
        .arg(out)
        .arg(&setup.replica_url)
        .output()
        .unwrap();
    if result.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&result.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn takeover_in_a_directory() {
    takeover(Setup::new(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn takeover_in_s3() {
    takeover(Setup::new(Some(s3_url("takeover")))).await;
}

async fn takeover(setup: Setup) {
    let blocking = |f: &dyn Fn()| tokio::task::block_in_place(f);
    // Litestream first, long enough for L1, L2 and a snapshot.
    let ls = litestream_replicate(&setup);
    std::thread::sleep(Duration::from_millis(500));
    blocking(&|| wait_all(setup.writers(1, 14.0)));
    std::thread::sleep(Duration::from_secs(1));
    terminate(ls);
    let by_litestream = setup.replica().list_all().await.unwrap();
    for level in [0, 1, 2, 9] {
        assert!(
            by_litestream.iter().any(|f| f.level.get() == level),
            "Litestream wrote nothing to L{level}: {by_litestream:?}\n{}",
            std::fs::read_to_string(setup.dir.join("litestream.log")).unwrap_or_default()
        );
    }
    let litestream_max = by_litestream.iter().map(|f| f.range.max).max().unwrap();

    // strata continues, compacting above what Litestream left.
    let strata = setup.strata();
    blocking(&|| wait_all(setup.writers(1, 8.0)));
    std::thread::sleep(Duration::from_secs(1));
    stop(&setup, strata);
    let by_strata = setup.replica().list_all().await.unwrap();
    for level in [1, 2] {
        assert!(
            by_strata
                .iter()
                .any(|f| f.level.get() == level && f.range.max > litestream_max),
            "strata compacted nothing into L{level} above Litestream's {litestream_max}: {by_strata:?}\n{}",
            setup.log()
        );
    }

    // And Litestream continues what strata compacted.
    let ls = litestream_replicate(&setup);
    std::thread::sleep(Duration::from_millis(500));
    blocking(&|| wait_all(setup.writers(1, 8.0)));
    std::thread::sleep(Duration::from_secs(1));
    terminate(ls);

    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
    let replica = setup.replica();
    let mut differ = Vec::new();
    let mut refused = Vec::new();
    let points = restore_points(&replica).await;
    for &txid in &points {
        let ours = setup.dir.join("ours.db");
        let _ = std::fs::remove_file(&ours);
        restore_at(&replica, RestorePoint::Txid(Txid::new(txid)), &ours).await;
        let theirs = setup.dir.join("theirs.db");
        match litestream_restore(&setup, txid, &theirs) {
            Ok(()) if sha256_file(&ours) == sha256_file(&theirs) => {}
            Ok(()) => differ.push(txid),
            Err(e) => refused.push(format!("{txid:x}: {}", e.trim())),
        }
    }
    assert!(differ.is_empty(), "restores differ at TXIDs {differ:x?}");
    assert!(
        refused.is_empty(),
        "Litestream refuses restore points strata restores: {refused:?} of {}",
        points.len()
    );
}

/// strata merges a burst of commits into one L0 upload; once writes pause, its newest L0
/// file holds one TXID again, so a Litestream that never ran on this database continues the
/// replica after strata stops (it fetches the newest L0 file and looks for it by its last
/// TXID alone), and its restore equals the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_litestream_continues_a_replica_strata_left_after_a_burst() {
    let blocking = |f: &dyn Fn()| tokio::task::block_in_place(f);
    let setup = Setup::new(None);
    let strata = setup.strata();
    blocking(&|| wait_all(setup.writers(1, 1.0)));
    // Writes paused for more than a sync interval before the stop.
    std::thread::sleep(Duration::from_millis(2500));
    stop(&setup, strata);
    assert_newest_l0_holds_one_txid(&setup).await;
    let ls = litestream_replicate(&setup);
    std::thread::sleep(Duration::from_millis(500));
    blocking(&|| wait_all(setup.writers(1, 2.0)));
    std::thread::sleep(Duration::from_millis(1500));
    terminate(ls);
    let log = std::fs::read_to_string(setup.dir.join("litestream.log")).unwrap_or_default();
    assert!(!log.contains("level=ERROR"), "{log}");
    assert_litestream_restores_the_source(&setup);
}

/// strata killed with `kill -9` in the middle of a burst of commits: its newest L0 upload
/// merges many TXIDs, and Litestream 0.5.17 cannot continue such a replica (it looks for a
/// local copy of the newest file named by its last TXID alone and stops with "cannot verify
/// wal state"). `strata replicate -once`, run once while the writers go on, sends what was
/// staged with the newest file on its own; a Litestream started then continues the replica
/// with no error, and its restore equals the source.
#[tokio::test(flavor = "multi_thread")]
async fn after_strata_is_killed_under_writes_replicate_once_lets_litestream_continue() {
    let blocking = |f: &dyn Fn()| tokio::task::block_in_place(f);
    let setup = Setup::new(None);
    let mut strata = setup.strata();
    let writers = setup.writers(2, 6.0);
    std::thread::sleep(Duration::from_millis(2500));
    strata.kill().unwrap();
    strata.wait().unwrap();
    let once = std::process::Command::new(strata_bin())
        .args(["replicate", "-once", "-config"])
        .arg(setup.config())
        .output()
        .unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert_newest_l0_holds_one_txid(&setup).await;
    let ls = litestream_replicate(&setup);
    tokio::task::block_in_place(|| wait_all(writers));
    blocking(&|| wait_all(setup.writers(1, 2.0)));
    std::thread::sleep(Duration::from_millis(2000));
    terminate(ls);
    let log = std::fs::read_to_string(setup.dir.join("litestream.log")).unwrap_or_default();
    assert!(log.contains("level=INFO"), "Litestream said nothing: {log}");
    // Litestream's own busy errors beside the writers (its busy timeout is 1 s) are retried.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=ERROR") && !l.contains("database is locked"))
        .collect();
    assert!(errors.is_empty(), "{log}");
    assert_litestream_restores_the_source(&setup);
    check_history(&setup).await;
}
