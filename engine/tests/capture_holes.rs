//! The ways a real deployment differs from the happy path, each once made capture lose,
//! invent or misattribute transactions while `strata replicate` reported success: frames a
//! killed writer left past the wal-index's end, two captures of one database, a database
//! replaced under its path, a replica that does not hold the local history, writes made
//! while strata was stopped, failures, and a page-size change. Real SQLite (Python's, not
//! the one strata links), real `strata` processes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::capture::*;
use strata::test_support::copy_dir;

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_past_the_wal_index_end_are_never_shipped() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    sleep_ms(700);
    // A writer killed between writing its frames and publishing them: valid, checksummed
    // frames with a commit mark, past mxFrame. strata syncs every 100 ms while they sit
    // there; then a real commit overwrites them.
    python(&["orphan", setup.db.to_str().unwrap()]);
    sleep_ms(500);
    wait_all(setup.writers(1, 0.3));
    // And at random among ordinary transactions, from two writers.
    wait_all(setup.writers_with(2, 4.0, &["--orphans", "1"]));
    sleep_ms(400);
    stop(&setup, strata);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[test]
fn one_database_has_one_capture() {
    let setup = Setup::new(None);
    let mut first = setup.strata();
    sleep_ms(700);
    // A second process on the same database is refused, naming the holder.
    let out = Command::new(strata_bin())
        .args(["replicate", "--config", setup.config().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("already being captured")
            && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    // One config naming the database twice, by two spellings.
    let config = setup.dir.join("twice.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: ./app.db\n    replica:\n      url: file://{0}/r1\n  - path: {0}/app.db\n    replica:\n      url: file://{0}/r2\n",
            setup.dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(strata_bin())
        .args(["replicate", "--config", config.to_str().unwrap()])
        .current_dir(&setup.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listed twice"), "{stderr}");
    signal(&first, "-TERM");
    assert!(first.wait().unwrap().success(), "{}", setup.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_replaced_under_its_path_is_followed_with_a_full_copy() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.5));
    sleep_ms(300);
    // What a restore over it does: a new file (here with another page size) renamed over
    // the database, its old WAL and wal-index removed.
    let new = setup.dir.join("new.db");
    python(&[
        "init",
        new.to_str().unwrap(),
        setup.states.to_str().unwrap(),
        "8192",
    ]);
    python(&["checkpoint", new.to_str().unwrap(), "TRUNCATE"]);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", setup.db.display()));
    }
    std::fs::rename(&new, &setup.db).unwrap();
    wait_all(setup.writers(1, 1.5));
    sleep_ms(500);
    stop(&setup, strata);
    let log = setup.log();
    assert!(log.contains("was replaced"), "{log}");
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_does_not_hold_the_history_gets_a_full_copy_at_once() {
    let mut setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.0));
    sleep_ms(300);
    stop(&setup, strata);
    let older = setup.dir.join("older-replica");
    copy_dir(&setup.dir.join("replica"), &older);
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.0));
    sleep_ms(300);
    stop(&setup, strata);

    // A new replica, with no write after the switch: restorable at once.
    setup.replica_url = format!("file://{}", setup.dir.join("fresh").display());
    let strata = setup.strata();
    sleep_ms(800);
    stop(&setup, strata);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);

    // A replica behind the saved position (put back from an older copy).
    setup.replica_url = format!("file://{}", older.display());
    let strata = setup.strata();
    sleep_ms(800);
    stop(&setup, strata);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_made_while_strata_was_stopped_are_captured_at_start() {
    let setup = Setup::new(None);
    let db = setup.db.to_str().unwrap();
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.0));
    sleep_ms(300);
    stop(&setup, strata);
    // The application writes and restarts its log while strata is down, and strata comes
    // back without a write to see.
    wait_all(setup.writers(1, 0.5));
    python(&["checkpoint", db, "RESTART"]);
    let strata = setup.strata();
    sleep_ms(800);
    stop(&setup, strata);
    // Again, and this time it also empties its log and closes; nothing is written once
    // strata is back.
    wait_all(setup.writers(1, 1.0));
    python(&["checkpoint", db, "TRUNCATE"]);
    let strata = setup.strata();
    sleep_ms(800);
    stop(&setup, strata);
    check_history(&setup).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_size_change_while_stopped_starts_a_new_base() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.0));
    sleep_ms(300);
    stop(&setup, strata);
    python(&["page-size", setup.db.to_str().unwrap(), "8192"]);
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.0));
    sleep_ms(300);
    stop(&setup, strata);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[test]
fn failures_exit_non_zero_and_claim_only_what_the_replica_holds() {
    // Uploads fail: the replica's directory becomes a file.
    let setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 0.5));
    sleep_ms(400);
    let replica = setup.dir.join("replica");
    std::fs::remove_dir_all(&replica).unwrap();
    std::fs::write(&replica, b"not a directory").unwrap();
    wait_all(setup.writers(1, 0.5));
    let out = terminate(strata);
    let stderr = std::fs::read_to_string(setup.dir.join("strata.log")).unwrap();
    assert!(!out.success(), "{stderr}");
    assert!(stderr.contains("not in the replica"), "{stderr}");
    assert!(!stderr.contains("replicated through"), "{stderr}");

    // Syncs fail: the database is deleted under a running capture.
    let setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 0.5));
    sleep_ms(400);
    std::fs::remove_file(&setup.db).unwrap();
    sleep_ms(400);
    let out = terminate(strata);
    let stderr = setup.log();
    assert!(!out.success(), "{stderr}");
    assert!(
        stderr.contains("final sync failed") && stderr.contains("gone from its path"),
        "{stderr}"
    );
    assert!(!stderr.contains("replicated through"), "{stderr}");
}

#[test]
fn a_capture_that_panics_stops_the_process_with_an_error() {
    let setup = Setup::new(None);
    let out = Command::new(strata_bin())
        .args(["replicate", "--config", setup.config().to_str().unwrap()])
        .env("STRATA_PANIC_AT", "tick")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the capture panicked"), "{stderr}");
    assert!(!stderr.contains("replicated through"), "{stderr}");
}

fn terminate(strata: std::process::Child) -> std::process::ExitStatus {
    signal(&strata, "-TERM");
    let mut strata = strata;
    strata.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_replica_wiped_while_running_gets_a_full_copy() {
    let setup = Setup::new(None);
    let running = start_in_process(&setup, &setup.replica_url).await;
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.0)));
    sleep_ms(500);
    std::fs::remove_dir_all(setup.dir.join("replica/ltx")).unwrap();
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.5)));
    sleep_ms(500);
    running.stop().await.unwrap();
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

#[test]
fn a_staging_directory_deleted_under_a_capture_stops_it() {
    let setup = Setup::new(None);
    let mut strata = setup.strata();
    wait_all(setup.writers(1, 0.5));
    std::fs::remove_dir_all(setup.dir.join(".app.db-strata")).unwrap();
    wait_all(setup.writers(1, 0.5));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = strata.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "strata kept running");
        sleep_ms(100);
    };
    let log = setup.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("deleted or replaced while in use"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn two_databases_writing_one_replica_is_an_error_not_a_mix() {
    let a = Setup::new(None);
    let b = Setup::new(Some(a.replica_url.clone()));
    let ra = start_in_process(&a, &a.replica_url).await;
    tokio::task::block_in_place(|| wait_all(a.writers(1, 0.5)));
    sleep_ms(300);
    let rb = start_in_process(&b, &a.replica_url).await;
    tokio::task::block_in_place(|| {
        let mut writers = a.writers(1, 2.0);
        writers.extend(b.writers(1, 2.0));
        wait_all(writers);
    });
    sleep_ms(500);
    let (sa, sb) = (ra.stop().await, rb.stop().await);
    assert!(
        sa.is_err() || sb.is_err(),
        "both claimed success: {sa:?} {sb:?}"
    );
    let err = sa.err().or(sb.err()).unwrap().to_string();
    assert!(err.contains("another process"), "{err}");
}

/// The latest restore of the replica equals the source, and Litestream agrees.
async fn latest_equals_source(setup: &Setup) {
    let out = setup.dir.join("latest-only.db");
    let _ = std::fs::remove_file(&out);
    restore_at(
        &setup.replica(),
        strata::restore::RestorePoint::Latest,
        &out,
    )
    .await;
    assert_eq!(
        sqlite3_dump(out.to_str().unwrap()),
        sqlite3_dump(setup.db.to_str().unwrap()),
        "{}",
        setup.log()
    );
    assert_litestream_restores_the_source(setup);
}

fn l0_files(setup: &Setup) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(setup.dir.join("replica/ltx/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_replica_missing_files_or_put_back_gets_a_full_copy_and_a_stop_says_so() {
    let setup = Setup::new(None);
    // L0 only: with compaction, a deleted L0 file that L1 covers is no loss (tested in
    // `compaction.rs`), and this test is about the losses the uploader must notice.
    async fn start_in_process(setup: &Setup, url: &str) -> strata::capture::Replication {
        let mut options = quick_capture_options();
        options.compaction = None;
        start_in_process_with(setup, url, options).await
    }
    let running = start_in_process(&setup, &setup.replica_url).await;
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.0)));
    sleep_ms(400);
    let older = setup.dir.join("older");
    copy_dir(&setup.dir.join("replica"), &older);
    // A file from the middle of the chain goes missing, with writes going on.
    std::fs::remove_file(&l0_files(&setup)[2]).unwrap();
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.5)));
    sleep_ms(500);
    running.stop().await.unwrap();
    latest_equals_source(&setup).await;

    // Put back from an older copy while it runs, with writes going on.
    let running = start_in_process(&setup, &setup.replica_url).await;
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 0.5)));
    // The capture may write a file into the tree while it is being removed: try again.
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir_all(setup.dir.join("replica")) {
        tries += 1;
        assert!(tries < 50, "cannot remove the replica: {e}");
    }
    copy_dir(&older, &setup.dir.join("replica"));
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 1.5)));
    sleep_ms(500);
    running.stop().await.unwrap();
    latest_equals_source(&setup).await;

    // A file goes missing and the replication stops at once: the stop finds the loss and
    // writes the full copy it owes before it claims success, idle as the database is.
    let running = start_in_process(&setup, &setup.replica_url).await;
    tokio::task::block_in_place(|| wait_all(setup.writers(1, 0.5)));
    sleep_ms(300);
    let before = running.status().full_copies;
    let files = l0_files(&setup);
    std::fs::remove_file(&files[files.len() - 2]).unwrap();
    let status = running.stop().await.unwrap();
    assert_eq!(status.full_copies, before + 1, "{status:?}");
    latest_equals_source(&setup).await;

    // Missing files found at start: the first file is a full copy.
    let running = start_in_process(&setup, &setup.replica_url).await;
    sleep_ms(500);
    running.stop().await.unwrap();
    latest_equals_source(&setup).await;
}
