//! What goes wrong in one replica stays there: a broken replica stops neither the capture
//! nor the database's other replicas, another history found in a replica stops that replica
//! only, two databases replicated to one place are never joined into one, and a replica
//! that lost its files is noticed, reported behind, and given a full copy (at stop too).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::capture::quick_capture_options;
use common::table::{Writer, create, insert, rows, try_restored_rows, url};
use ltx::{Txid, TxidRange};
use strata::capture::ReplicaStatus;
use strata::storage::ReplicaUrl;
use strata::store::{Database, Store, StoreOptions};

async fn replicas(store: &Store) -> (Txid, Vec<ReplicaStatus>) {
    let status = store.status().await;
    let capture = status[0].capture.clone().unwrap();
    assert!(status[0].failed.is_none(), "{:?}", status[0].failed);
    (capture.staged, capture.replicas)
}

/// Polls `check` every 100 ms until it holds, for at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replica_stops_nothing_and_catches_up_once_repaired() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let store = Store::new(StoreOptions::default());
    let key = store
        .add(
            Database::new(&db, url(&a))
                .with_replica(url(&b))
                .with_options(quick_capture_options()),
        )
        .await
        .unwrap();
    let writer = Writer::start(&db, Duration::from_millis(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.sync(&key).await.unwrap();

    // B's L0 directory becomes a plain file: every upload to B fails with "File exists"
    // (a failed mkdir, not another writer).
    let l0 = b.join("ltx/0");
    std::fs::remove_dir_all(&l0).unwrap();
    std::fs::write(&l0, b"not a directory").unwrap();
    let mut b_failed = false;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (staged, r) = replicas(&store).await;
        let now = jiff::Timestamp::now();
        assert!(
            staged.get() - r[0].uploaded.get() <= 10 && r[0].lag(now) < Duration::from_secs(3),
            "A fell behind while B was broken: staged {staged}, A {:?}",
            r[0]
        );
        assert!(r[1].stopped.is_none(), "B was stopped: {:?}", r[1].stopped);
        b_failed |= r[1].upload_error.is_some();
    }
    let (_, r) = replicas(&store).await;
    assert!(b_failed, "B never reported its failure: {:?}", r[1]);
    assert!(
        r[1].lag(jiff::Timestamp::now()) > Duration::from_secs(2),
        "B's lag hides its failure: {:?}",
        r[1]
    );

    // Repaired: B catches up (its lost L0 files need a full copy) and both restore equal.
    std::fs::remove_file(&l0).unwrap();
    tokio::time::timeout(Duration::from_secs(60), store.sync(&key))
        .await
        .expect("B caught up within a minute")
        .unwrap();
    writer.stop();
    store.sync(&key).await.unwrap();
    for (_, stopped) in store.shutdown().await {
        stopped.unwrap();
    }
    let source = rows(&db);
    for replica in [&a, &b] {
        let restored = try_restored_rows(&url(replica), dir.path()).await.unwrap();
        assert_eq!(restored, source, "{}", replica.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_file_stops_that_replica_and_only_that_one() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut options = quick_capture_options();
    options.compaction = None;
    let store = Store::new(StoreOptions::default());
    let key = store
        .add(
            Database::new(&db, url(&a))
                .with_replica(url(&b))
                .with_options(options),
        )
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        insert(&conn, 3);
    }
    let at = store.sync(&key).await.unwrap();
    // Another process takes the next TXIDs in B first.
    for txid in at.get() + 1..=at.get() + 5 {
        let name = TxidRange::single(Txid::new(txid)).file_name();
        std::fs::write(
            b.join("ltx/0").join(name),
            common::foreign_ltx(txid, 0xdead, 7),
        )
        .unwrap();
    }
    let writer = Writer::start(&db, Duration::from_millis(30));
    eventually(Duration::from_secs(20), "B stopped", || async {
        replicas(&store).await.1[1].stopped.is_some()
    })
    .await;
    // A goes on as if nothing happened.
    let (_, r) = replicas(&store).await;
    let stopped_at = r[0].uploaded;
    eventually(Duration::from_secs(10), "A moved on", || async {
        replicas(&store).await.1[0].uploaded > stopped_at
    })
    .await;
    writer.stop();
    let err = store.sync(&key).await.unwrap_err().to_string();
    assert!(
        err.contains("is stopped") && err.contains(&b.display().to_string()),
        "{err}"
    );
    let (_, r) = replicas(&store).await;
    assert!(
        r[1].stopped.as_deref().unwrap().contains("another process"),
        "{:?}",
        r[1].stopped
    );
    // The foreign files are left alone, and the stop says B fell short.
    assert!(
        b.join("ltx/0")
            .join(TxidRange::single(at.next()).file_name())
            .exists()
    );
    let stopped = store.shutdown().await;
    let err = stopped[0].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("was stopped"), "{err}");
    assert_eq!(
        try_restored_rows(&url(&a), dir.path()).await.unwrap(),
        rows(&db)
    );
}

/// Rows of one database: every value starts with its tag, ids run 1..=n.
fn check_one_database(rows: &[(i64, Vec<u8>)]) -> Option<u8> {
    let tag = rows.first().map(|r| r.1[0]);
    for (i, (id, v)) in rows.iter().enumerate() {
        assert_eq!(
            *id,
            i as i64 + 1,
            "ids do not run 1..=n: a mix of two databases"
        );
        assert_eq!(Some(v[0]), tag, "rows of two databases in one restore");
    }
    tag
}

fn insert_tagged(db: &Path, tag: u8, n: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..n {
        conn.execute(
            "INSERT INTO t(v) VALUES (CAST(?1 || randomblob(200 + abs(random()) % 2000) AS BLOB))",
            [vec![tag]],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_in_one_replica_are_never_joined() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let replica = url(&dir.path().join("shared"));
    let dbs: Vec<PathBuf> = ["one.db", "two.db"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for db in &dbs {
        create(db);
    }
    // Two stores stand for two processes, each sure the replica is its own.
    let stores = [
        Store::new(StoreOptions::default()),
        Store::new(StoreOptions::default()),
    ];
    let first = stores[0]
        .add(Database::new(&dbs[0], replica.clone()).with_options(quick_capture_options()))
        .await
        .unwrap();
    insert_tagged(&dbs[0], b'A', 4);
    stores[0].sync(&first).await.unwrap();
    let second = stores[1]
        .add(Database::new(&dbs[1], replica.clone()).with_options(quick_capture_options()))
        .await
        .unwrap();
    let keys = [first, second];
    // Both write on, compaction and retention running in both, until each has found the
    // other's files and stopped the replica.
    let started = Instant::now();
    loop {
        for (i, tag) in [(0, b'A'), (1, b'B')] {
            insert_tagged(&dbs[i], tag, 2);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut stopped = 0;
        for (store, key) in stores.iter().zip(&keys) {
            let status = store.status().await;
            let capture = status[0].capture.as_ref().unwrap();
            stopped += usize::from(capture.replicas[0].stopped.is_some());
            let _ = key;
        }
        if stopped == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "both writers went on in one replica for 30 s"
        );
    }
    for store in &stores {
        store.shutdown().await;
    }
    // Whatever the replica restores to is one of the two databases, whole; or it says why
    // it cannot be restored. Never a mix that passes for a database.
    let files = strata::storage::Replica::open(&replica)
        .unwrap()
        .list_all()
        .await
        .unwrap();
    let mut points: Vec<Txid> = files.iter().map(|f| f.range.max).collect();
    points.sort();
    points.dedup();
    let mut restored = 0;
    for txid in points {
        let out = dir.path().join(format!("at-{txid}.db"));
        let result = strata::restore::restore(
            &strata::storage::Replica::open(&replica).unwrap(),
            strata::restore::RestorePoint::Txid(txid),
            &out,
            &strata::restore::RestoreOptions {
                integrity_check: strata::restore::IntegrityCheck::Full,
                ..Default::default()
            },
            Arc::new(strata::restore::NoProgress),
        )
        .await;
        match result {
            Ok(_) => {
                check_one_database(&rows(&out));
                restored += 1;
            }
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains("integrity check failed"), "TXID {txid}: {e}");
            }
        }
    }
    assert!(restored > 0, "nothing in the replica restores");
    let latest = try_restored_rows(&replica, dir.path()).await;
    if let Ok(rows) = latest {
        check_one_database(&rows);
    }
}

/// A database that was replicated elsewhere before (its staging holds its own history) and
/// is then replicated to a replica another database wrote to meanwhile: the replica's tail
/// is another history, so the first file is a full copy, never its own later files on top
/// of the other's. Whatever the replica restores to is one database whole, and the latest
/// is the second one; Litestream restores the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_moved_onto_a_replica_another_wrote_is_never_joined_to_it() {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.db"), dir.path().join("two.db"));
    create(&one);
    create(&two);
    let shared = url(&dir.path().join("shared"));
    let own = url(&dir.path().join("own"));
    let replicate = |db: &Path, replica: &ReplicaUrl, tag: u8| {
        let (db, replica) = (db.to_owned(), replica.clone());
        async move {
            let store = Store::new(StoreOptions::default());
            let key = store
                .add(Database::new(&db, replica).with_options(quick_capture_options()))
                .await
                .unwrap();
            insert_tagged(&db, tag, 3);
            store.sync(&key).await.unwrap();
            store.shutdown().await;
        }
    };
    // The second database first gets a history of its own elsewhere, further than the
    // first will reach.
    for _ in 0..3 {
        replicate(&two, &own, b'B').await;
    }
    replicate(&one, &shared, b'A').await;
    replicate(&two, &shared, b'B').await;
    let latest = try_restored_rows(&shared, dir.path()).await.unwrap();
    assert_eq!(check_one_database(&latest), Some(b'B'));
    assert_eq!(latest, rows(&two));
    let out = dir.path().join("litestream.db");
    let restored = common::litestream()
        .args(["restore", "-o", out.to_str().unwrap()])
        .arg(shared.to_string())
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(rows(&out), rows(&two));
}

#[test]
fn a_config_with_two_databases_in_one_replica_is_refused() {
    let config = "dbs:\n  - path: /a.db\n    replica:\n      url: s3://bucket/app\n  - path: /b.db\n    replica:\n      url: s3://bucket//app/\n";
    let err = strata::config::Config::parse(config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dbs[1]") && err.contains("also the replica of dbs[0]"),
        "{err}"
    );
    let config = "dbs:\n  - path: /a.db\n    replica:\n      path: /tmp/r/x/..\n  - path: /b.db\n    replica:\n      url: file:///tmp/r\n";
    assert!(strata::config::Config::parse(config).is_err());
    let ok = "dbs:\n  - path: /a.db\n    replica:\n      url: s3://bucket/app\n  - path: /b.db\n    replica:\n      url: s3://bucket/app2\n";
    strata::config::Config::parse(ok).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_database_on_a_replica_in_use_is_refused_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one.db"), dir.path().join("two.db"));
    create(&one);
    create(&two);
    let store = Store::new(StoreOptions::default());
    store
        .add(Database::new(&one, url(&dir.path().join("r"))))
        .await
        .unwrap();
    // The same place spelled otherwise, or a place inside its files.
    for other in ["r/./", "r/ltx", "r/ltx/0/x"] {
        let err = store
            .add(Database::new(&two, url(&dir.path().join(other))))
            .await
            .unwrap_err();
        assert!(
            matches!(err, strata::store::StoreError::ReplicaShared { .. }),
            "{other}: {err}"
        );
    }
    // Inside a staging directory (its own, or another database's), which strata removes.
    for inside in [".two.db-strata/r", ".one.db-strata"] {
        let err = store
            .add(Database::new(&two, url(&dir.path().join(inside))))
            .await
            .unwrap_err();
        assert!(
            matches!(err, strata::store::StoreError::ReplicaInStaging { .. }),
            "{inside}: {err}"
        );
    }
    // Beside another's files (Litestream's layout keeps them apart): allowed.
    store
        .add(Database::new(&two, url(&dir.path().join("r/two"))))
        .await
        .unwrap();
    store.shutdown().await;
}

async fn wiped_replica_gets_a_full_copy(replica: ReplicaUrl, wipe: impl Fn()) {
    common::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let store = Store::new(StoreOptions::default());
    let key = store
        .add(Database::new(&db, replica.clone()).with_options(quick_capture_options()))
        .await
        .unwrap();
    let writer = Writer::start(&db, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.sync(&key).await.unwrap();
    let full_copies = || async {
        store.status().await[0]
            .capture
            .as_ref()
            .unwrap()
            .full_copies
    };
    // Wiped, and a full copy makes it restorable again: while written (the loss found by
    // the replica check, or by compaction failing to build on it), then while idle (the
    // replica is looked at now and then even so, and shows as behind until then).
    let mut writer = Some(writer);
    for (what, limit) in [("while written", 20), ("while idle", 60)] {
        let before = full_copies().await;
        wipe();
        eventually(Duration::from_secs(limit), what, || async {
            full_copies().await > before
        })
        .await;
        if let Some(w) = writer.take() {
            w.stop();
        }
        store.sync(&key).await.unwrap();
        let restored = try_restored_rows(&replica, dir.path()).await;
        if !matches!(&restored, Ok(r) if *r == rows(&db)) {
            // The evidence outlives the test: the database, and a directory replica's files.
            let kept = std::env::temp_dir().join(format!("strata-evidence-{}", std::process::id()));
            strata::test_support::copy_dir(dir.path(), &kept.join("db"));
            if let ReplicaUrl::File { root } = &replica {
                strata::test_support::copy_dir(root, &kept.join("replica"));
            }
            panic!(
                "{what}: the restore gave {:?}; evidence in {}",
                restored.map(|r| r.len()),
                kept.display()
            );
        }
    }
    // Wiped while idle and stopped at once: the stop finds the loss and writes the full
    // copy it owes.
    let before = full_copies().await;
    wipe();
    let stopped = store.shutdown().await;
    let status = stopped.into_iter().next().unwrap().1.unwrap();
    assert_eq!(status.full_copies, before + 1, "{status:?}");
    assert_eq!(
        try_restored_rows(&replica, dir.path()).await.unwrap(),
        rows(&db)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_directory_replica_gets_a_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    let wipe = || {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
    };
    wiped_replica_gets_a_full_copy(url(&root), wipe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_s3_replica_gets_a_full_copy() {
    let bucket = common::new_bucket();
    let replica = ReplicaUrl::parse(&common::s3_url_in(&bucket, "app")).unwrap();
    wiped_replica_gets_a_full_copy(replica, || common::empty_bucket(&bucket)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_objects_of_an_interrupted_upload_go_at_the_next_start_whatever_their_age() {
    let bucket = common::new_bucket();
    let url = common::s3_url_in(&bucket, "app");
    // What a process killed mid-upload leaves: a scratch object a moment old.
    common::boto3(
        &common::s3_endpoint(),
        &format!(
            "client.put_object(Bucket='{bucket}', Key='app/strata-uploads/0000000000000001-0000000000000009.ltx.4242.1', Body=b'x' * 1000)"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let store = Store::new(StoreOptions::default());
    store
        .add(Database::new(&db, ReplicaUrl::parse(&url).unwrap()))
        .await
        .unwrap();
    let keys = common::bucket_keys(&bucket);
    assert!(
        keys.iter().all(|k| !k.contains("strata-uploads")),
        "{keys:?}"
    );
    for (_, stopped) in store.shutdown().await {
        stopped.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_lists_its_replica_once_at_start_and_once_at_stop() {
    let url = common::s3_url("app");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    // The default intervals: a replica check every minute, compaction from 30 s on.
    let replica = strata::storage::Replica::create(&ReplicaUrl::parse(&url).unwrap()).unwrap();
    let options = strata::capture::CaptureOptions::default();
    let replication = strata::capture::Replication::start(&db, replica.clone(), options)
        .await
        .unwrap();
    let writer = Writer::start(&db, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(3)).await;
    writer.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    replication.stop().await.unwrap();
    let requests = replica.requests();
    assert!(requests.list <= 2, "{requests:?}");
    assert_eq!(
        try_restored_rows(&ReplicaUrl::parse(&url).unwrap(), dir.path())
            .await
            .unwrap(),
        rows(&db)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_holds_up_neither_the_start_nor_the_stop_of_the_others() {
    let s3 = common::PrivateS3::start("hung");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db);
    let local = url(&dir.path().join("local"));
    let remote = ReplicaUrl::parse(&format!(
        "s3://hung/app?endpoint={}&region=us-east-1&forcePathStyle=true",
        s3.endpoint
    ))
    .unwrap();
    // The S3 server stops answering (a hung process, a black-holed network) before start.
    s3.signal("-STOP");
    let store = Arc::new(Store::new(StoreOptions::default()));
    let started = Instant::now();
    store
        .add(
            Database::new(&db, local.clone())
                .with_replica(remote.clone())
                .with_options(quick_capture_options()),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the start waited {:?} for the hung replica",
        started.elapsed()
    );
    // A database whose only replica hangs does not start, but the store answers meanwhile.
    let other = dir.path().join("other.db");
    create(&other);
    let adding = tokio::spawn({
        let (store, other) = (store.clone(), other.clone());
        let url = ReplicaUrl::parse(&format!(
            "s3://hung/other?endpoint={}&region=us-east-1&forcePathStyle=true",
            s3.endpoint
        ))
        .unwrap();
        async move { store.add(Database::new(&other, url)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let status = store.status().await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "the store is stuck behind a start"
    );
    assert_eq!(status.len(), 1);
    // The directory replica keeps up, up to the last write before the stop.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        insert(&conn, 20);
    }
    eventually(
        Duration::from_secs(20),
        "the directory replica caught up",
        || async {
            let (staged, r) = replicas(&store).await;
            r[0].uploaded == staged
        },
    )
    .await;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        insert(&conn, 5);
    }
    let stopping = Instant::now();
    let stopped = store.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "the stop took {:?}",
        stopping.elapsed()
    );
    let err = stopped[0].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("hung/app"), "{err}");
    assert_eq!(
        try_restored_rows(&local, dir.path()).await.unwrap(),
        rows(&db),
        "the final sync reached the directory replica"
    );
    s3.signal("-CONT");
    let _ = tokio::time::timeout(Duration::from_secs(30), adding).await;
}
