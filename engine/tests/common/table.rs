//! A database of one table `t(id, v)` written with random rows, and its rows read back from
//! the source or from a restore of a replica.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use strata::restore::{NoProgress, RestoreError, RestoreOptions, RestorePoint};
use strata::storage::{Replica, ReplicaUrl};

/// The rows of `t`, by id.
pub type Rows = Vec<(i64, Vec<u8>)>;

/// Creates the database in WAL mode with its table.
pub fn create(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
}

/// The rows of the database at `db`.
pub fn rows(db: &Path) -> Rows {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `n` transactions of one random row each.
pub fn insert(conn: &rusqlite::Connection, n: usize) {
    for _ in 0..n {
        conn.execute(
            "INSERT INTO t(v) VALUES (randomblob(100 + abs(random()) % 3000))",
            [],
        )
        .unwrap();
    }
}

/// A directory replica.
pub fn url(root: &Path) -> ReplicaUrl {
    ReplicaUrl::File {
        root: root.to_owned(),
    }
}

/// Restores the latest state of `replica` and returns its rows.
pub async fn restored_rows(replica: &ReplicaUrl, work: &Path) -> Rows {
    try_restored_rows(replica, work)
        .await
        .unwrap_or_else(|e| panic!("restore of {replica}: {e}"))
}

/// [`restored_rows`], or why the restore failed; the restored database must pass SQLite's
/// integrity check.
pub async fn try_restored_rows(replica: &ReplicaUrl, work: &Path) -> Result<Rows, RestoreError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let out = work.join(format!("restored-{}.db", N.fetch_add(1, Ordering::Relaxed)));
    let options = RestoreOptions {
        integrity_check: strata::restore::IntegrityCheck::Full,
        ..RestoreOptions::default()
    };
    strata::restore::restore(
        &Replica::open(replica).unwrap(),
        RestorePoint::Latest,
        &out,
        &options,
        Arc::new(NoProgress),
    )
    .await?;
    let rows = rows(&out);
    std::fs::remove_file(&out).unwrap();
    Ok(rows)
}

/// A thread inserting a row every `every` until told to stop.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing to `db`.
    pub fn start(db: &Path, every: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (db, stop) = (db.to_owned(), stop.clone());
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    insert(&conn, 1);
                    std::thread::sleep(every);
                }
            })
        };
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}
