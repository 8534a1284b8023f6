//! Readers through the VFS follow a replica that `strata` is writing, compacting and
//! pruning with short intervals (L1 2 s, L2 6 s, snapshots 12 s, L0 kept 3 s): every read
//! transaction sees one consistent state (an invariant the writer keeps), TXIDs never go
//! backwards, and the newest TXID is seen within a few poll intervals. A transaction may
//! fail only when its state is gone (a reader more than the L0 retention behind, on a loaded
//! machine), rarely, and the next one succeeds.
//!
//! `STRATA_VFS_FOLLOW_SECONDS` sets how long the writer runs (60 by default).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rusqlite::{Connection, OpenFlags};
use strata::capture::{CaptureOptions, Replication};
use strata::compact::CompactionOptions;
use strata::storage::{Replica, ReplicaUrl};

const ACCOUNTS: i64 = 200;
const TOTAL: i64 = ACCOUNTS * 100;
const POLL: Duration = Duration::from_millis(200);

fn capture_options() -> CaptureOptions {
    let mut c = CompactionOptions::default();
    c.levels = vec![Duration::from_secs(2), Duration::from_secs(6)];
    c.snapshot_interval = Duration::from_secs(12);
    c.retention.enabled = true;
    c.retention.l0 = Duration::from_secs(3);
    c.retention.snapshots = Duration::from_secs(24);
    c.retention.grace = Duration::from_secs(1);
    let mut o = CaptureOptions::default();
    o.sync_interval = Duration::from_millis(100);
    o.checkpoint.interval = Duration::from_secs(1);
    o.compaction = Some(c);
    o
}

fn seconds() -> u64 {
    std::env::var("STRATA_VFS_FOLLOW_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// Moves money between accounts (the sum never changes) and appends numbered ledger rows
/// (their count always equals the highest number), some with large rows so pages split
/// and files grow.
fn writer(db: &std::path::Path, until: Instant) -> i64 {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut n = 0i64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while Instant::now() < until {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        n += 1;
        let (a, b) = (
            (x % ACCOUNTS as u64) as i64,
            ((x >> 20) % ACCOUNTS as u64) as i64,
        );
        let amount = (x >> 40) as i64 % 50;
        let pad = if n % 40 == 0 {
            20_000
        } else {
            100 + (x >> 50) as i64 % 900
        };
        conn.execute_batch(&format!(
            "BEGIN;
             UPDATE acct SET bal = bal - {amount} WHERE id = {a};
             UPDATE acct SET bal = bal + {amount} WHERE id = {b};
             INSERT INTO ledger(n, pad) VALUES ({n}, randomblob({pad}));
             COMMIT;"
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    n
}

/// One reader's loop: transactions that check the invariants, until `stop`.
fn reader(
    replica: String,
    hydrate: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    newest: Arc<Mutex<String>>,
) -> Result<(usize, String, String), String> {
    let hydrate = hydrate.map_or_else(String::new, |d| format!("&hydrate={}", d.display()));
    let conn = Connection::open_with_flags_and_vfs(
        format!(
            "file:app.db?replica={}{hydrate}",
            replica.replace('&', "%26")
        ),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        "strata",
    )
    .map_err(|e| format!("open: {e}"))?;
    let mut last = String::new();
    let mut transactions = 0;
    let (mut failed, mut failed_in_a_row) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        let check = || -> rusqlite::Result<Result<String, String>> {
            let tx = conn.unchecked_transaction()?;
            // The read transaction starts with the first statement that reads the database.
            let (sum, accounts): (i64, i64) =
                tx.query_row("SELECT sum(bal), count(*) FROM acct", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let txid: String = tx.query_row("SELECT strata_txid()", [], |r| r.get(0))?;
            let (max, count, bytes): (Option<i64>, i64, Option<i64>) = tx.query_row(
                "SELECT max(n), count(*), sum(length(pad)) FROM ledger",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let again: i64 = tx.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))?;
            let txid_after: String = tx.query_row("SELECT strata_txid()", [], |r| r.get(0))?;
            tx.commit()?;
            if sum != TOTAL || again != TOTAL || accounts != ACCOUNTS {
                return Ok(Err(format!(
                    "at {txid}: sum {sum} then {again} over {accounts} accounts"
                )));
            }
            if max.unwrap_or(0) != count || (count > 0 && bytes.unwrap_or(0) < count * 100) {
                return Ok(Err(format!(
                    "at {txid}: ledger max {max:?}, count {count}, bytes {bytes:?}"
                )));
            }
            if txid != txid_after {
                return Ok(Err(format!("one transaction saw {txid} then {txid_after}")));
            }
            Ok(Ok(txid))
        };
        let txid = match check() {
            Ok(Ok(t)) => {
                failed_in_a_row = 0;
                t
            }
            Ok(Err(broken)) => return Err(broken),
            // A transaction whose state retention removed under it fails (a reader that fell
            // more than the L0 retention behind, on a loaded machine); the next one must
            // read the newest state.
            Err(e) => {
                failed += 1;
                failed_in_a_row += 1;
                if failed_in_a_row > 10 || failed > 20 {
                    return Err(format!(
                        "after {transactions} transactions at {last}: {e} ({failed} failed, {failed_in_a_row} in a row)"
                    ));
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        if txid < last {
            return Err(format!("TXID went back from {last} to {txid}"));
        }
        last = txid;
        transactions += 1;
        let mut n = newest.lock().unwrap();
        if *n < last {
            *n = last.clone();
        }
    }
    let hydrated: String = conn
        .query_row("PRAGMA strata_hydrated", [], |r| r.get(0))
        .map_err(|e| format!("PRAGMA strata_hydrated: {e}"))?;
    Ok((transactions, last, hydrated))
}

/// For a reader's failure that names a TXID ("at <txid>: ..."): what a restore of that
/// TXID holds, so a failure says whether the replica or the reader was wrong.
async fn restored_there(url: &str, failure: &str) -> String {
    let Some(txid) = failure
        .split("at ")
        .nth(1)
        .and_then(|t| t.get(..16))
        .and_then(|t| strata::ltx::Txid::from_hex(t).ok())
    else {
        return String::new();
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("there.db");
    let replica = Replica::open(&ReplicaUrl::parse(url).unwrap()).unwrap();
    let restored = strata::restore::restore(
        &replica,
        strata::restore::RestorePoint::Txid(txid),
        &out,
        &Default::default(),
        Arc::new(strata::restore::NoProgress),
    )
    .await;
    if let Err(e) = restored {
        return format!("; a restore of {txid} fails: {e}");
    }
    let state: rusqlite::Result<(i64, i64, i64)> = Connection::open(&out).and_then(|c| {
        c.query_row(
            "SELECT (SELECT sum(bal) FROM acct), (SELECT max(n) FROM ledger), (SELECT count(*) FROM ledger)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    });
    format!("; a restore of {txid} holds (sum, ledger max, ledger count) {state:?}")
}

async fn readers_follow_a_compacted_replica(url: String) {
    let mut vfs = strata_vfs::Options::default();
    vfs.poll_interval = POLL;
    vfs.replan_interval = Duration::from_secs(5);
    strata_vfs::register(vfs).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let setup = Connection::open(&db).unwrap();
    setup
        .execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
             CREATE TABLE ledger(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB);
             WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < {})
             INSERT INTO acct SELECT x, 100 FROM i;",
            ACCOUNTS - 1
        ))
        .unwrap();
    let replica = Replica::create(&ReplicaUrl::parse(&url).unwrap()).unwrap();
    let replication = Replication::start(&db, replica, capture_options())
        .await
        .unwrap();
    replication.sync().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(Mutex::new(String::new()));
    // The third reader hydrates a local copy and reads from it.
    let local = tempfile::tempdir().unwrap();
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let (url, stop, newest) = (url.clone(), stop.clone(), newest.clone());
            let hydrate = (i == 2).then(|| local.path().to_owned());
            std::thread::spawn(move || reader(url, hydrate, stop, newest))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(seconds());
    let db_path = db.clone();
    let commits = tokio::task::spawn_blocking(move || writer(&db_path, until))
        .await
        .unwrap();
    let last = replication.sync().await.unwrap().to_string();
    let synced = Instant::now();
    // Readers reach the newest TXID (within a few poll intervals on a quiet machine; how
    // soon is the benchmarks' to say, not a test's on a loaded one).
    while *newest.lock().unwrap() < last && synced.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = synced.elapsed();
    stop.store(true, Ordering::SeqCst);
    for (i, r) in readers.into_iter().enumerate() {
        let (transactions, seen, hydrated) = match r.join().unwrap() {
            Ok(seen) => seen,
            Err(e) => panic!("a reader failed: {e}{}", restored_there(&url, &e).await),
        };
        assert!(transactions > 10, "{transactions} read transactions");
        eprintln!("reader: {transactions} transactions, last at {seen}, hydrated at {hydrated:?}");
        assert_eq!(
            i == 2,
            !hydrated.is_empty(),
            "reader {i} hydrated at {hydrated:?}"
        );
    }
    eprintln!("{commits} commits; readers at {last} {caught_up:?} after the final sync");
    assert!(
        *newest.lock().unwrap() >= last,
        "readers reached {} of {last} {caught_up:?} after the final sync",
        newest.lock().unwrap()
    );
    // A fresh reader sees exactly the source.
    let fresh = Connection::open_with_flags_and_vfs(
        format!("file:app.db?replica={}", url.replace('&', "%26")),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        "strata",
    )
    .unwrap();
    assert_eq!(dump_conn(&fresh), dump_conn(&setup));
    replication.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_follow_a_compacted_directory_replica() {
    let dir = tempfile::tempdir().unwrap();
    readers_follow_a_compacted_replica(dir.path().join("replica").display().to_string()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_follow_a_compacted_s3_replica() {
    readers_follow_a_compacted_replica(s3_url("app")).await;
}
