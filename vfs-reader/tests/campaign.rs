//! A seeded model-based campaign: a primary written without pause and replicated (with
//! compaction and retention on short intervals) to a directory, readers following it
//! through the VFS (one pair sharing a cache), and disturbances drawn from the seed: files
//! deleted by hand, the replica wiped and written again from another database, the page
//! size changed, the database file replaced. In every transaction a reader checks that what
//! it reads is a state the writer committed (its invariants hold), that `strata_txid`
//! names it (every reader that saw a TXID of a database saw the same state there), and now
//! and then pins a TXID seen earlier and finds that same state again; after every
//! disturbance every reader reaches the newest state the replica restores to.
//!
//! `STRATA_CAMPAIGN_SEEDS=N` runs N seeds (1 by default), `STRATA_CAMPAIGN_SEED=S` one,
//! `STRATA_CAMPAIGN_STEPS` disturbances per seed (5). A failure prints its seed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use strata::capture::{CaptureOptions, Replication};
use strata::compact::CompactionOptions;
use strata::storage::{Replica, ReplicaUrl};

const ACCOUNTS: i64 = 50;
const TOTAL: i64 = ACCOUNTS * 100;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn capture_options() -> CaptureOptions {
    let mut c = CompactionOptions::default();
    c.levels = vec![Duration::from_secs(1), Duration::from_secs(3)];
    c.snapshot_interval = Duration::from_secs(5);
    c.retention.enabled = true;
    c.retention.l0 = Duration::from_secs(2);
    c.retention.snapshots = Duration::from_secs(10);
    c.retention.grace = Duration::from_secs(1);
    let mut o = CaptureOptions::default();
    o.sync_interval = Duration::from_millis(100);
    o.checkpoint.interval = Duration::from_secs(1);
    o.replica_check_interval = Duration::from_millis(500);
    o.replica_list_every = 2;
    o.compaction = Some(c);
    o
}

/// A new database named `tag` at `path`: accounts summing to TOTAL and an empty ledger.
fn create(path: &Path, tag: &str, page_size: u32) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size};
         PRAGMA journal_mode=WAL;
         CREATE TABLE meta(name TEXT);
         INSERT INTO meta VALUES ('{tag}');
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
         CREATE TABLE ledger(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, pad BLOB);
         WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < {})
         INSERT INTO acct SELECT x, 100 FROM i;",
        ACCOUNTS - 1
    ))
    .unwrap();
}

/// Transactions that keep the invariants (the balances' sum, ledger count = highest n).
fn write(path: &Path, until: &AtomicBool, seed: u64) {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut rng = Rng(seed | 1);
    while !until.load(Ordering::SeqCst) {
        let (a, b) = (rng.below(ACCOUNTS as u64), rng.below(ACCOUNTS as u64));
        let pad = if rng.below(30) == 0 {
            12_000
        } else {
            100 + rng.below(800)
        };
        conn.execute_batch(&format!(
            "BEGIN;
             UPDATE acct SET bal = bal - 7 WHERE id = {a};
             UPDATE acct SET bal = bal + 7 WHERE id = {b};
             INSERT INTO ledger(n, pad) VALUES ((SELECT count(*) FROM ledger) + 1, randomblob({pad}));
             COMMIT;"
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// What a reader saw of one state: the database's tag, the TXID, the ledger's size.
type Seen = (String, String, i64);

/// What every reader saw, by (tag, TXID): the ledger's size there.
#[derive(Default)]
struct Model {
    states: Mutex<HashMap<(String, String), i64>>,
    /// Each reader's last state.
    last: Mutex<HashMap<usize, Seen>>,
    failures: Mutex<Vec<String>>,
}

impl Model {
    fn record(&self, reader: usize, seen: &Seen) -> Result<(), String> {
        let (tag, txid, n) = seen;
        let mut states = self.states.lock().unwrap();
        let known = states.entry((tag.clone(), txid.clone())).or_insert(*n);
        if known != n {
            return Err(format!(
                "reader {reader}: {tag} at TXID {txid} holds {n} ledger rows, another read saw {known}"
            ));
        }
        self.last.lock().unwrap().insert(reader, seen.clone());
        Ok(())
    }

    fn known(&self, tag: &str, txid: &str) -> Option<i64> {
        self.states
            .lock()
            .unwrap()
            .get(&(tag.to_owned(), txid.to_owned()))
            .copied()
    }
}

/// One read transaction: the state it reads, checked against the invariants.
fn read_state(conn: &Connection) -> Result<Seen, String> {
    let run = || -> rusqlite::Result<Result<Seen, String>> {
        let tx = conn.unchecked_transaction()?;
        let tag: String = tx.query_row("SELECT name FROM meta", [], |r| r.get(0))?;
        let (sum, accounts): (i64, i64) =
            tx.query_row("SELECT sum(bal), count(*) FROM acct", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let (max, count): (Option<i64>, i64) =
            tx.query_row("SELECT max(n), count(*) FROM ledger", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let txid: String = tx.query_row("SELECT strata_txid()", [], |r| r.get(0))?;
        tx.commit()?;
        if sum != TOTAL || accounts != ACCOUNTS || max.unwrap_or(0) != count {
            return Ok(Err(format!(
                "{tag} at {txid}: sum {sum} over {accounts} accounts, ledger max {max:?} count {count}: not a committed state"
            )));
        }
        Ok(Ok((tag, txid, count)))
    };
    match run() {
        Ok(r) => r,
        // A transaction may fail while the replica changes under it (its state gone);
        // the next one must succeed soon, which the settle check sees.
        Err(e) => Err(format!("transient: {e}")),
    }
}

fn open(replica: &Path, shared: bool) -> Connection {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    if shared {
        flags |= OpenFlags::SQLITE_OPEN_SHARED_CACHE;
    }
    Connection::open_with_flags_and_vfs(
        format!(
            "file:app.db?replica={}{}",
            replica.display(),
            if shared { "&cache=shared" } else { "" }
        ),
        flags,
        "strata",
    )
    .unwrap()
}

/// A reader: transactions until `stop`; now and then a pin of a TXID seen before.
fn reader(
    id: usize,
    replica: PathBuf,
    shared: bool,
    model: Arc<Model>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let conns: Vec<Connection> = if shared {
        vec![open(&replica, true), open(&replica, true)]
    } else {
        vec![open(&replica, false)]
    };
    let mut rng = Rng(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let conn = &conns[i % conns.len()];
        let seen = match read_state(conn) {
            Ok(seen) => seen,
            Err(e) if e.starts_with("transient") => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                model
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("reader {id}: {e}"));
                return;
            }
        };
        if let Err(e) = model.record(id, &seen) {
            model.failures.lock().unwrap().push(e);
            return;
        }
        if rng.below(25) == 0 {
            // Pin the state just seen (another connection's pin must not move this one),
            // read it again, and go back to following.
            let (tag, txid, _) = &seen;
            let pinned = conn
                .query_row(&format!("PRAGMA strata_txid = '{txid}'"), [], |_| Ok(()))
                .is_ok();
            if pinned && let Ok(again) = read_state(conn) {
                // Pinned, it reads that TXID; of the same database, the same state there.
                let expected = model.known(tag, txid);
                let wrong_txid = again.1 != *txid;
                let wrong_state = again.0 == *tag && Some(again.2) != expected;
                if wrong_txid || wrong_state {
                    model.failures.lock().unwrap().push(format!(
                        "reader {id}: pinned {txid} of {tag}, read {again:?}, expected {expected:?}"
                    ));
                    return;
                }
            }
            // Back to following; a replica that cannot be planned right now (being written
            // again) refuses, and the connection stays pinned until it can.
            while conn
                .query_row("PRAGMA strata_time = 'latest'", [], |_| Ok(()))
                .is_err()
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The primary: a database file, its writer and its replication.
struct Primary {
    db: PathBuf,
    replica: PathBuf,
    tag: String,
    stop_writer: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
    replication: Option<Replication>,
    seed: u64,
}

impl Primary {
    async fn start_replication(&mut self) {
        let replica = Replica::create(&ReplicaUrl::File {
            root: self.replica.clone(),
        })
        .unwrap();
        self.replication = Some(
            Replication::start(&self.db, replica, capture_options())
                .await
                .unwrap(),
        );
    }

    fn start_writer(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let (db, seed) = (self.db.clone(), self.seed);
        let s = stop.clone();
        self.writer = Some(std::thread::spawn(move || write(&db, &s, seed)));
        self.stop_writer = stop;
    }

    fn stop_writer(&mut self) {
        self.stop_writer.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            w.join().unwrap();
        }
    }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Primary {
        db: dir.path().join("app.db"),
        replica: dir.path().join("replica"),
        tag: "db0".to_owned(),
        stop_writer: Arc::new(AtomicBool::new(false)),
        writer: None,
        replication: None,
        seed,
    };
    create(&primary.db, &primary.tag, 4096);
    primary.start_replication().await;
    primary.replication.as_ref().unwrap().sync().await.unwrap();
    primary.start_writer();
    let model = Arc::new(Model::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|id| {
            let (replica, model, stop) = (primary.replica.clone(), model.clone(), stop.clone());
            std::thread::spawn(move || reader(id, replica, id == 2, model, stop, seed))
        })
        .collect();
    static DATABASES: AtomicU64 = AtomicU64::new(1);
    for step in 0..steps {
        tokio::time::sleep(Duration::from_millis(800 + rng.below(1500))).await;
        let what = rng.below(5);
        eprintln!("seed {seed} step {step}: disturbance {what}");
        match what {
            // Files deleted by hand: one at random, of any level.
            0 => {
                let files: Vec<PathBuf> = walk(&primary.replica.join("ltx"));
                if !files.is_empty() {
                    let f = &files[rng.below(files.len() as u64) as usize];
                    eprintln!("  deleting {}", f.display());
                    let _ = std::fs::remove_file(f);
                }
            }
            // The replica wiped and written again from another database.
            1 => {
                primary.stop_writer();
                let _ = primary.replication.take().unwrap().stop().await;
                let _ = std::fs::remove_dir_all(&primary.replica);
                let n = DATABASES.fetch_add(1, Ordering::SeqCst);
                primary.tag = format!("db{n}");
                primary.db = dir.path().join(format!("app{n}.db"));
                create(&primary.db, &primary.tag, 4096);
                primary.start_replication().await;
                primary.start_writer();
            }
            // The page size changed: the database rewritten with another one (VACUUM INTO
            // a copy, moved over the file: WAL mode cannot change it in place while strata
            // reads); its content continues, a full copy starts a new history.
            2 => {
                primary.stop_writer();
                let conn = Connection::open(&primary.db).unwrap();
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                let current: u32 = conn
                    .query_row("PRAGMA page_size", [], |r| r.get(0))
                    .unwrap();
                let next = if current == 4096 { 8192 } else { 4096 };
                let copy = dir.path().join("resized.db");
                let _ = std::fs::remove_file(&copy);
                conn.execute_batch(&format!(
                    "PRAGMA page_size={next}; VACUUM INTO '{}';",
                    copy.display()
                ))
                .unwrap();
                drop(conn);
                Connection::open(&copy)
                    .unwrap()
                    .execute_batch("PRAGMA journal_mode=WAL")
                    .unwrap();
                move_over(&copy, &primary.db);
                primary.start_writer();
            }
            // The database file replaced under its path by another database.
            3 => {
                primary.stop_writer();
                let n = DATABASES.fetch_add(1, Ordering::SeqCst);
                let tag = format!("db{n}");
                let other = dir.path().join(format!("new{n}.db"));
                create(&other, &tag, 4096);
                move_over(&other, &primary.db);
                primary.tag = tag;
                primary.start_writer();
            }
            _ => {}
        }
        // Settle: the writer pauses, everything committed reaches the replica, and every
        // reader shows it soon.
        tokio::time::sleep(Duration::from_millis(500)).await;
        primary.stop_writer();
        let replication = primary.replication.as_ref().unwrap();
        let txid = tokio::time::timeout(Duration::from_secs(60), replication.sync())
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the replication did not sync"))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let want = (primary.tag.clone(), txid.to_string());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(f) = model.failures.lock().unwrap().first() {
                panic!("seed {seed} step {step}: {f}");
            }
            let last = model.last.lock().unwrap().clone();
            let behind: Vec<_> = (0..3)
                .filter(|r| {
                    last.get(r)
                        .is_none_or(|(t, x, _)| (t.clone(), x.clone()) != want)
                })
                .map(|r| (r, last.get(&r).cloned()))
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed} step {step}: readers did not reach {want:?}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        primary.start_writer();
    }
    primary.stop_writer();
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    if let Some(f) = model.failures.lock().unwrap().first() {
        panic!("seed {seed}: {f}");
    }
    let _ = primary.replication.take().unwrap().stop().await;
}

/// Moves the database `from` over `to`, as an operator replacing a database does: its
/// log checkpointed into it first, `to`'s old log and index removed with it.
fn move_over(from: &Path, to: &Path) {
    Connection::open(from)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut old = to.as_os_str().to_owned();
        old.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(old));
    }
    std::fs::rename(from, to).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn campaign(disk_cache: bool) {
    let mut vfs = strata_vfs::Options::default();
    vfs.poll_interval = Duration::from_millis(100);
    vfs.replan_interval = Duration::from_secs(3);
    vfs.cache_size = 1 << 20;
    vfs.whole_file_max = 16 << 10;
    let cache_dir = tempfile::tempdir().unwrap();
    if disk_cache {
        vfs.disk_cache_dir = Some(cache_dir.path().to_owned());
    }
    strata_vfs::register(vfs).unwrap();
    let steps = std::env::var("STRATA_CAMPAIGN_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for seed in strata::test_support::campaign_seeds() {
        eprintln!(
            "VFS campaign (disk cache {disk_cache}): seed {seed} (STRATA_CAMPAIGN_SEED={seed} runs it again)"
        );
        rt.block_on(run(seed, steps));
    }
}

#[test]
fn readers_see_only_committed_states_through_every_disturbance() {
    campaign(false);
}

#[test]
fn readers_with_a_disk_cache_see_only_committed_states_through_every_disturbance() {
    campaign(true);
}
