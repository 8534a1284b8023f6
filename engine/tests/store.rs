//! The Store: many databases in one process, changed at run time, and `Store::sync`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::capture::quick_capture_options;
use common::table::{create, insert, restored_rows, rows, url};
use strata::capture::CaptureOptions;
use strata::storage::ReplicaUrl;
use strata::store::{Database, Store, StoreError, StoreOptions};

fn options() -> CaptureOptions {
    // Compaction at its (slow) defaults: 200 databases compacting every second would be a
    // test of the machine, not of the store.
    let mut o = CaptureOptions::default();
    o.sync_interval = Duration::from_millis(200);
    o.shutdown_timeout = Duration::from_secs(20);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_databases_twenty_written_changed_at_run_time_all_restore_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs_dir, replicas) = (dir.path().join("dbs"), dir.path().join("replicas"));
    std::fs::create_dir_all(&dbs_dir).unwrap();
    let db = |i: usize| dbs_dir.join(format!("tenant-{i:03}.db"));
    let replica = |i: usize| url(&replicas.join(format!("tenant-{i:03}")));
    for i in 0..200 {
        create(&db(i));
    }
    let store = Arc::new(Store::new(StoreOptions::default()));
    for i in 0..200 {
        store
            .add(Database::new(db(i), replica(i)).with_options(options()))
            .await
            .unwrap();
    }
    assert!(matches!(
        store.add(Database::new(db(7), replica(7))).await,
        Err(StoreError::AlreadyAdded(_))
    ));

    // Twenty writers.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let (path, stop) = (db(i), stop.clone());
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    insert(&conn, 3);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // At run time: five new databases added, five idle ones removed (each restores to what
    // it held), one written database deleted under its capture.
    for i in 200..205 {
        create(&db(i));
        let conn = rusqlite::Connection::open(db(i)).unwrap();
        insert(&conn, 10);
        store
            .add(Database::new(db(i), replica(i)).with_options(options()))
            .await
            .unwrap();
    }
    for i in 100..105 {
        let status = store.remove(&db(i)).await.unwrap();
        assert!(status.uploaded.get() >= 1);
        assert_eq!(restored_rows(&replica(i), dir.path()).await, rows(&db(i)));
    }
    assert!(matches!(
        store.remove(&db(100)).await,
        Err(StoreError::Unknown(_))
    ));
    // The deleted database: synced first, so its replica holds at least those rows.
    let deleted = 19;
    let before = rows(&db(deleted));
    let synced = store.sync(&db(deleted)).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let final_rows = rows(&db(deleted));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db(deleted).into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The other databases go on: a write after the deletion still reaches its replica.
    {
        let conn = rusqlite::Connection::open(db(0)).unwrap();
        insert(&conn, 5);
    }
    let after = store.sync(&db(0)).await.unwrap();
    assert!(after > ltx::Txid::ONE);
    let removed = tokio::time::timeout(Duration::from_secs(30), store.remove(&db(deleted)))
        .await
        .expect("removing a deleted database returns");
    let replicated = restored_rows(&replica(deleted), dir.path()).await;
    assert!(
        replicated.len() >= before.len() && final_rows.starts_with(&replicated),
        "the deleted database's replica holds {} rows; {} were synced (TXID {synced}), {} written ({removed:?})",
        replicated.len(),
        before.len(),
        final_rows.len()
    );

    let status = store.status().await;
    assert_eq!(status.len(), 200 + 5 - 5 - 1);
    assert!(status.iter().all(|s| s.enabled && s.failed.is_none()));
    let results = store.shutdown().await;
    assert_eq!(results.len(), 199);
    for (path, result) in &results {
        assert!(result.is_ok(), "{}: {result:?}", path.display());
    }
    assert!(store.status().await.is_empty());
    for i in (0..205).filter(|i| !(100..105).contains(i) && *i != deleted) {
        assert_eq!(
            restored_rows(&replica(i), dir.path()).await,
            rows(&db(i)),
            "database {i}"
        );
    }
}

async fn sync_makes_each_write_durable(replica: ReplicaUrl) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let store = Store::new(StoreOptions::default());
    // A long interval: each write is in the replica because sync asked for it, not because
    // the interval passed.
    let mut options = quick_capture_options();
    options.sync_interval = Duration::from_secs(30);
    let key = store
        .add(Database::new(&db, replica.clone()).with_options(options))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut last = ltx::Txid::ZERO;
    for i in 1..=8 {
        insert(&conn, i);
        let txid = tokio::time::timeout(Duration::from_secs(10), store.sync(&key))
            .await
            .expect("sync returns")
            .unwrap();
        assert!(txid > last, "each sync reaches a new TXID");
        last = txid;
        assert_eq!(restored_rows(&replica, dir.path()).await, rows(&db));
    }
    // Nothing new: sync returns at once with the same TXID.
    assert_eq!(store.sync(&key).await.unwrap(), last);
    // Disabled, a database cannot be synced; enabled again it goes on from where it was.
    store.disable(&key).await.unwrap();
    assert!(matches!(
        store.sync(&key).await,
        Err(StoreError::Disabled(_))
    ));
    insert(&conn, 3);
    store.enable(&key).await.unwrap();
    let txid = store.sync(&key).await.unwrap();
    assert!(txid > last);
    assert_eq!(restored_rows(&replica, dir.path()).await, rows(&db));
    for (_, result) in store.shutdown().await {
        result.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_makes_each_write_durable_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    sync_makes_each_write_durable(url(&dir.path().join("replica"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_makes_each_write_durable_in_s3() {
    sync_makes_each_write_durable(ReplicaUrl::parse(&common::s3_url("sync")).unwrap()).await;
}

async fn full_copies(store: &Store, path: &Path) -> Option<u64> {
    let canonical = std::fs::canonicalize(path).unwrap();
    store
        .status()
        .await
        .into_iter()
        .find(|s| s.path == canonical)
        .and_then(|s| s.capture)
        .map(|c| c.full_copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_touches_only_what_changed() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.db"),
        dir.path().join("b.db"),
        dir.path().join("c.db"),
    );
    for db in [&a, &b, &c] {
        create(db);
    }
    let r = |name: &str| url(&dir.path().join(name));
    let store = Store::new(StoreOptions::default());
    let applied = store
        .apply(vec![
            Database::new(&a, r("ra")).with_options(options()),
            Database::new(&b, r("rb")).with_options(options()),
        ])
        .await;
    assert_eq!(applied.added.len(), 2);
    // After its first sync (a full copy), a's count of full copies stays put unless it is
    // restarted (a restart resumes: its new count starts at 0).
    store.sync(&a).await.unwrap();
    let a_copies = full_copies(&store, &a).await;
    // a unchanged, b's replica moved, c new.
    let applied = store
        .apply(vec![
            Database::new(&a, r("ra")).with_options(options()),
            Database::new(&b, r("rb2")).with_options(options()),
            Database::new(&c, r("rc")).with_options(options()),
        ])
        .await;
    assert_eq!(applied.added.len(), 1, "{applied:?}");
    assert_eq!(applied.changed.len(), 1, "{applied:?}");
    assert!(applied.removed.is_empty() && applied.failed.is_empty());
    assert_eq!(
        full_copies(&store, &a).await,
        a_copies,
        "a was not restarted"
    );
    // Only c left: a and b are stopped with a final sync.
    let applied = store
        .apply(vec![Database::new(&c, r("rc")).with_options(options())])
        .await;
    assert_eq!(applied.removed.len(), 2);
    assert!(
        applied.removed.iter().all(|(_, r)| r.is_ok()),
        "{:?}",
        applied.removed
    );
    assert_eq!(store.databases().await.len(), 1);
    // A replica added later starts with a full copy and then follows.
    {
        let conn = rusqlite::Connection::open(&c).unwrap();
        insert(&conn, 20);
    }
    let both = || {
        Database::new(&c, r("rc"))
            .with_replica(r("rc-second"))
            .with_options(options())
    };
    let applied = store.apply(vec![both()]).await;
    assert_eq!(applied.changed.len(), 1, "{applied:?}");
    {
        let conn = rusqlite::Connection::open(&c).unwrap();
        insert(&conn, 5);
    }
    let key = std::fs::canonicalize(&c).unwrap();
    tokio::time::timeout(Duration::from_secs(20), store.sync(&key))
        .await
        .unwrap()
        .unwrap();
    for name in ["rc", "rc-second"] {
        assert_eq!(
            restored_rows(&r(name), dir.path()).await,
            rows(&c),
            "{name}"
        );
    }
    // A database that does not exist is reported, the rest applied.
    let applied = store
        .apply(vec![
            both(),
            Database::new(dir.path().join("missing.db"), r("rm")),
        ])
        .await;
    assert_eq!(applied.failed.len(), 1);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_paused_the_other_keeps_up_and_both_restore_equal() {
    let s3 = common::PrivateS3::start("two");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let local = url(&dir.path().join("replica"));
    let remote = ReplicaUrl::parse(&format!("s3://two/app?endpoint={}", s3.endpoint)).unwrap();
    let store = Store::new(StoreOptions::default());
    let key = store
        .add(
            Database::new(&db, local.clone())
                .with_replica(remote.clone())
                .with_options(quick_capture_options()),
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                insert(&conn, 2);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let both = store.sync(&key).await.unwrap();
    assert!(both > ltx::Txid::ONE);

    // The S3 server stops answering for 20 s: the directory replica keeps up meanwhile.
    s3.signal("-STOP");
    let uploaded = |status: &[strata::store::DbStatus]| {
        let c = status[0].capture.as_ref().unwrap();
        (c.staged, c.replicas[0].uploaded, c.replicas[1].uploaded)
    };
    let mut last_local = ltx::Txid::ZERO;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = store.status().await;
        let (staged, local_at, _) = uploaded(&status);
        assert!(
            local_at > last_local,
            "the directory replica stalled at {local_at} while S3 was down"
        );
        // What it lacks was staged moments ago: within a few syncs (100 ms each) however
        // busy the machine, not since S3 stopped.
        let local_lag = status[0].capture.as_ref().unwrap().replicas[0].lag(jiff::Timestamp::now());
        assert!(
            local_lag < Duration::from_secs(2),
            "the directory replica is {local_lag:?} behind ({staged} staged, {local_at} there)"
        );
        last_local = local_at;
    }
    let (_, _, remote_during) = uploaded(&store.status().await);
    // The status says so: the S3 replica's lag is the time it has been stuck, the
    // directory's stays within a sync or two.
    let now = jiff::Timestamp::now();
    let status = store.status().await;
    let replicas = &status[0].capture.as_ref().unwrap().replicas;
    let (local_lag, remote_lag) = (replicas[0].lag(now), replicas[1].lag(now));
    assert!(
        remote_lag > Duration::from_secs(15) && local_lag < Duration::from_secs(3),
        "lag while S3 was down: directory {local_lag:?}, S3 {remote_lag:?}"
    );
    s3.signal("-CONT");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The S3 replica catches up once the server answers again.
    let txid = tokio::time::timeout(Duration::from_secs(90), store.sync(&key))
        .await
        .expect("the S3 replica caught up")
        .unwrap();
    let (staged, local_at, remote_at) = uploaded(&store.status().await);
    assert!(remote_at > remote_during, "S3 moved on after the pause");
    assert_eq!((local_at, remote_at), (staged, staged));
    assert_eq!(txid, staged);
    let status = store.status().await;
    let replicas = &status[0].capture.as_ref().unwrap().replicas;
    assert!(
        replicas.iter().all(|r| r.behind_since.is_none()),
        "caught up, yet: {replicas:?}"
    );
    for (_, result) in store.shutdown().await {
        result.unwrap();
    }
    let rows = rows(&db);
    assert_eq!(restored_rows(&local, dir.path()).await, rows);
    assert_eq!(restored_rows(&remote, dir.path()).await, rows);
}
