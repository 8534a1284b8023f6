//! The VFS with `primary=`, against a primary running `strata replicate --addr` for real:
//! - a reader sees each commit as soon as it is staged, while the replica (uploads once
//!   every 30 s there) does not hold it yet; with the primary killed it keeps reading what it
//!   had and says its lag grows; with the primary back it catches up;
//! - a seeded campaign (`STRATA_VFS_PRIMARY_SEED`, `STRATA_VFS_PRIMARY_SECONDS`, 15 by
//!   default) with every kind of follower at once: the VFS reader, a `strata restore -f` of
//!   the primary's stream and one polling the replica. At random: `kill -9` of the primary
//!   and of either follower, a proxy between the primary and the stream's readers that
//!   stalls, cuts connections mid-file and refuses them, the VFS reader reopened, the
//!   database replaced by a copy of itself (a new history: TXIDs from 1 again, the same
//!   rows); compaction and retention with short intervals.
//!
//! Every read transaction must show exactly the state some commit left (each commit's
//! state is known: its row count and a weighted sum of the balances), the VFS reader's
//! count never goes back, and every follower ends equal to the source.

#[allow(dead_code)]
#[path = "../../engine/tests/common/chaos_proxy.rs"]
mod chaos_proxy;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rusqlite::{Connection, OpenFlags};
use strata::storage::{Replica, ReplicaUrl};

const ACCOUNTS: i64 = 10;
const TOTAL: i64 = ACCOUNTS * 100;

/// The `strata` command cargo built beside the tests (or `STRATA_BIN`).
fn strata_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("strata");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p strata",
        bin.display()
    );
    bin
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A log file that several runs of a process append to.
fn append_to(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap()
}

fn spawn_primary(config: &Path, addr: &str, log: &Path) -> Killed {
    let log = append_to(log);
    Killed(
        Command::new(strata_bin())
            .args(["replicate", "--config"])
            .arg(config)
            .args(["--addr", addr])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The newest TXID the replica holds (0 while empty).
fn replica_txid(replica: &Replica, rt: &tokio::runtime::Runtime) -> u64 {
    rt.block_on(replica.list_all())
        .unwrap_or_default()
        .iter()
        .map(|f| f.range.max.get())
        .max()
        .unwrap_or(0)
}

/// The accounts commit `n` moves money between.
fn transfer(n: i64) -> (i64, i64) {
    (n % ACCOUNTS, (n * 7 + 3) % ACCOUNTS)
}

/// The most commits a test makes.
const MAX_COMMITS: i64 = 1_000_000;

/// `sum(id * bal)` after each commit: what a state that shows `n` log rows must hold.
fn weighted_sums() -> &'static [i64] {
    static SUMS: std::sync::OnceLock<Vec<i64>> = std::sync::OnceLock::new();
    SUMS.get_or_init(|| {
        let mut bal = vec![100i64; ACCOUNTS as usize];
        let weighted = |bal: &[i64]| bal.iter().enumerate().map(|(i, b)| i as i64 * b).sum();
        let mut sums = vec![weighted(&bal)];
        for n in 1..=MAX_COMMITS {
            let (from, to) = transfer(n);
            bal[from as usize] -= n;
            bal[to as usize] += n;
            sums.push(weighted(&bal));
        }
        sums
    })
}

/// One commit: money moves between two accounts (the sum stays `TOTAL`) and row `n` joins
/// the log.
fn commit(conn: &Connection, n: i64) {
    let (from, to) = transfer(n);
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; UPDATE acct SET bal = bal - {n} WHERE id = {from}; \
         UPDATE acct SET bal = bal + {n} WHERE id = {to}; INSERT INTO log VALUES ({n}); COMMIT;"
    ))
    .unwrap();
}

/// One read transaction through the VFS: (TXID, log rows, lag), after checking that the state
/// is the one commit `count` left (the sum kept, rows 1..=count all there, the balances
/// commit `count` leaves).
fn read(conn: &Connection) -> (u64, i64, i64) {
    try_read(conn).unwrap()
}

fn try_read(conn: &Connection) -> rusqlite::Result<(u64, i64, i64)> {
    conn.execute_batch("BEGIN")?;
    let row = conn.query_row(
        "SELECT strata_txid(), (SELECT sum(bal) FROM acct), (SELECT sum(id * bal) FROM acct), \
         count(*), coalesce(max(n), 0), strata_lag() FROM log",
        [],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    );
    let _ = conn.execute_batch("COMMIT");
    let (txid, sum, weighted, count, max, lag) = row?;
    check_state(&format!("TXID {txid}"), (sum, weighted, count, max));
    Ok((u64::from_str_radix(&txid, 16).unwrap(), count, lag))
}

/// Panics unless (sum, weighted sum, rows, largest row) is the state commit `rows` left.
fn check_state(what: &str, (sum, weighted, count, max): (i64, i64, i64, i64)) {
    assert_eq!(sum, TOTAL, "{what}: a state no commit left");
    assert_eq!(count, max, "{what}: a state no commit left");
    assert_eq!(
        weighted,
        weighted_sums()[count as usize],
        "{what}: {count} rows with balances no commit left"
    );
}

/// One read transaction of a follower's database through plain SQLite, checked as
/// [`try_read`] checks the VFS's; the rows.
fn try_read_plain(conn: &Connection, what: &str) -> rusqlite::Result<i64> {
    let state = conn.query_row(
        "SELECT (SELECT sum(bal) FROM acct), (SELECT sum(id * bal) FROM acct), count(*), \
         coalesce(max(n), 0) FROM log",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    check_state(what, state);
    Ok(state.2)
}

/// `strata restore -f` into `out`, following `source` (a replica, or a primary's stream
/// with `--replica` for catching up).
fn spawn_follower(out: &Path, source: &str, replica: Option<&Path>, log: &Path) -> Killed {
    let log = append_to(log);
    let mut command = Command::new(strata_bin());
    command
        .args(["restore", "-f", "--follow-interval", "200ms", "-o"])
        .arg(out)
        .arg(source);
    if let Some(replica) = replica {
        command.arg("--replica").arg(replica);
    }
    Killed(
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A thread reading a follower's database until `stop`, checking every state it sees;
/// returns how many reads it made.
fn follower_reader(
    db: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut reads = 0;
        let mut conn: Option<Connection> = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
            if conn.is_none() && db.exists() {
                conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok();
                if let Some(c) = &conn {
                    c.busy_timeout(Duration::from_secs(10)).unwrap();
                }
            }
            let Some(c) = &conn else { continue };
            match try_read_plain(c, &db.display().to_string()) {
                Ok(_) => reads += 1,
                // Before the follower's first restore the tables are not there yet.
                Err(e) if e.to_string().contains("no such table") => {}
                Err(e) => panic!("{}: a read failed: {e}", db.display()),
            }
        }
        reads
    })
}

/// Reads until the log holds `rows`; panics with `what` past `within`.
fn read_until(conn: &Connection, rows: i64, within: Duration, what: &str) -> (u64, i64) {
    let deadline = Instant::now() + within;
    let mut last = 0;
    loop {
        let (txid, count, lag) = read(conn);
        assert!(
            count >= last,
            "the log went back from {last} to {count} rows"
        );
        last = count;
        if count == rows {
            return (txid, lag);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {count} of {rows} rows after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A source database with the accounts and an empty log, replicated by `strata replicate
/// --addr` to a directory replica.
struct Primary {
    dir: tempfile::TempDir,
    config: PathBuf,
    addr: String,
    process: Option<Killed>,
}

impl Primary {
    /// `keys`: the database's replica keys beyond its URL; `global`: top-level keys.
    fn new(replica_keys: &str, global: &str) -> (Primary, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let source = Connection::open(&db).unwrap();
        source
            .execute_batch(&format!(
                "PRAGMA journal_mode=WAL; CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER); \
                 CREATE TABLE log(n INTEGER PRIMARY KEY); \
                 WITH RECURSIVE i(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM i WHERE x < {}) \
                 INSERT INTO acct SELECT x, 100 FROM i;",
                ACCOUNTS - 1
            ))
            .unwrap();
        source.busy_timeout(Duration::from_secs(10)).unwrap();
        let replica = dir.path().join("replica");
        std::fs::create_dir_all(&replica).unwrap();
        let config = dir.path().join("strata.yml");
        std::fs::write(
            &config,
            format!(
                "{global}dbs:\n  - path: {}\n    replica:\n      url: {}\n{replica_keys}",
                db.display(),
                replica.display()
            ),
        )
        .unwrap();
        let primary = Primary {
            dir,
            config,
            addr: format!("127.0.0.1:{}", free_port()),
            process: None,
        };
        (primary, source)
    }

    fn replica_dir(&self) -> PathBuf {
        self.dir.path().join("replica")
    }

    fn replica(&self) -> Replica {
        Replica::open(&ReplicaUrl::parse(&self.replica_dir().display().to_string()).unwrap())
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("strata.log")).unwrap_or_default()
    }

    fn start(&mut self) {
        self.process = Some(spawn_primary(
            &self.config,
            &self.addr,
            &self.dir.path().join("strata.log"),
        ));
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.process = None;
    }

    /// Waits for the replica's first file; its TXID.
    fn first_upload(&self, rt: &tokio::runtime::Runtime) -> u64 {
        let replica = self.replica();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let txid = replica_txid(&replica, rt);
            if txid > 0 {
                return txid;
            }
            assert!(Instant::now() < deadline, "no first upload: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A reader through the VFS, following the stream at `stream` (`HOST:PORT`).
    fn reader(&self, stream: &str) -> Connection {
        strata_vfs::register(strata_vfs::Options::default()).unwrap();
        Connection::open_with_flags_and_vfs(
            format!(
                "file:app.db?replica={}&primary=http://{stream}/app.db",
                self.replica_dir().display()
            ),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
            "strata",
        )
        .unwrap()
    }
}

#[test]
fn pushed_commits_are_read_before_the_replica_holds_them_and_a_lost_primary_is_survived() {
    let (mut primary, source) = Primary::new("      sync-interval: 30s\n", "");
    primary.start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = primary.first_upload(&rt);
    let replica = primary.replica();
    let reader = primary.reader(&primary.addr);
    let (opened, _) = read_until(&reader, 0, Duration::from_secs(10), "the first state");
    assert!(opened >= first);

    // Each commit is read long before the replica could hold it.
    for n in 1..=100 {
        commit(&source, n);
        let (txid, lag) = read_until(&reader, n, Duration::from_secs(10), "a pushed commit");
        assert!(lag <= 1, "commit {n}: lag {lag} s while the stream is up");
        let uploaded = replica_txid(&replica, &rt);
        assert!(
            uploaded < txid,
            "commit {n} (TXID {txid}) read from the replica ({uploaded}), not the stream"
        );
    }

    // A reader opened now starts where the primary is, not where the replica is.
    let (_, count, _) = read(&primary.reader(&primary.addr));
    assert_eq!(count, 100, "a new reader's first transaction");

    // The primary goes: the reader keeps what it holds, and says how long it has heard nothing.
    primary.kill();
    for n in 101..=120 {
        commit(&source, n);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let (_, count, lag) = read(&reader);
    assert_eq!(
        count, 100,
        "nothing is pushed or uploaded while the primary is away"
    );
    assert!(lag >= 2, "lag {lag} s with the primary gone for 2.5 s");

    // Back: it catches up (from the stream or the replica) and ends equal to the source.
    primary.start();
    read_until(
        &reader,
        120,
        Duration::from_secs(20),
        "after the primary came back",
    );
    for n in 121..=150 {
        commit(&source, n);
    }
    let (_, lag) = read_until(&reader, 150, Duration::from_secs(20), "the last commits");
    assert!(lag <= 1, "lag {lag} s once caught up");
    assert_eq!(dump_conn(&reader), dump_conn(&source));
}

fn campaign_seconds() -> u64 {
    std::env::var("STRATA_VFS_PRIMARY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// A small xorshift generator: the campaign's choices, repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_seeded_campaign_of_kills_and_network_faults_shows_followers_and_a_vfs_reader_only_committed_states()
 {
    let seed: u64 = std::env::var("STRATA_VFS_PRIMARY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207);
    eprintln!("STRATA_VFS_PRIMARY_SEED={seed}");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Uploads every 500 ms; compaction, snapshots and retention within seconds, so pushed
    // files meet a replica that moves, and files a map points at are deleted.
    let (mut primary, source) = Primary::new(
        "      sync-interval: 500ms\n",
        "levels: [{interval: 1s}, {interval: 3s}]\nsnapshot: {interval: 5s, retention: 10s}\nl0-retention: 2s\nretention: {grace: 1s}\n",
    );
    primary.start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    primary.first_upload(&rt);
    let proxy = chaos_proxy::ChaosProxy::start(&primary.addr);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let replace = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, written, replace) = (stop.clone(), written.clone(), replace.clone());
        let db = primary.dir.path().join("app.db");
        std::thread::spawn(move || {
            let open = || {
                let conn = Connection::open(&db).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch("PRAGMA journal_mode=WAL").unwrap();
                conn
            };
            let mut conn = open();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < MAX_COMMITS {
                if replace.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // The database replaced by a copy of itself, as an operator restoring
                    // over it would (the application stopped, the old log removed): the
                    // same rows, a new file and a new history with TXIDs from 1 again.
                    let copy = db.with_extension("copy");
                    let _ = std::fs::remove_file(&copy);
                    conn.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
                        .unwrap();
                    drop(conn);
                    std::fs::rename(&copy, &db).unwrap();
                    for suffix in ["-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                    }
                    conn = open();
                }
                n += 1;
                commit(&conn, n);
                written.store(n, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reopen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, reads, reopen) = (stop.clone(), reads.clone(), reopen.clone());
        let stream = proxy.addr();
        let open = {
            let replica = primary.replica_dir();
            move || {
                strata_vfs::register(strata_vfs::Options::default()).unwrap();
                Connection::open_with_flags_and_vfs(
                    format!(
                        "file:app.db?replica={}&primary=http://{stream}/app.db",
                        replica.display()
                    ),
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
                    "strata",
                )
                .unwrap()
            }
        };
        std::thread::spawn(move || {
            let mut conn = open();
            let mut last = 0;
            let mut failures = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if reopen.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // A new reader: it starts from the primary's newest state, or the
                    // replica's while the primary cannot be reached.
                    conn = open();
                    last = 0;
                }
                match try_read(&conn) {
                    Ok((_, count, _)) => {
                        assert!(
                            count >= last,
                            "the log went back from {last} to {count} rows"
                        );
                        last = count;
                        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // A state retention deleted under a reader far behind: rare, and the
                    // next transaction reads again.
                    Err(e) => {
                        failures += 1;
                        eprintln!("a read failed: {e}");
                        assert!(failures < 20, "reads keep failing: {e}");
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (conn, last)
        })
    };

    // Two followers beside the VFS: one of the stream (through the same proxy, catching
    // up from the replica), one polling the replica; each read all along by plain SQLite.
    let dir = primary.dir.path().to_owned();
    let (stream_db, poll_db) = (dir.join("stream.db"), dir.join("poll.db"));
    let stream_source = format!("http://{}/app.db", proxy.addr());
    let replica_dir = primary.replica_dir();
    let replica_source = replica_dir.display().to_string();
    let spawn_stream = || {
        spawn_follower(
            &stream_db,
            &stream_source,
            Some(&replica_dir),
            &dir.join("stream.log"),
        )
    };
    let spawn_poll = || spawn_follower(&poll_db, &replica_source, None, &dir.join("poll.log"));
    let mut followers = [Some(spawn_stream()), Some(spawn_poll())];
    let follower_readers = [
        follower_reader(stream_db.clone(), stop.clone()),
        follower_reader(poll_db.clone(), stop.clone()),
    ];

    let until = Instant::now() + Duration::from_secs(campaign_seconds());
    let mut actions = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        let action = rng.below(8);
        actions.push(action);
        match action {
            0 => {
                primary.kill();
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                primary.start();
            }
            1 => {
                proxy.stall();
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                proxy.resume();
            }
            2 => proxy.cut(rng.below(4096)),
            3 => {
                proxy.refuse(true);
                proxy.cut(0);
                std::thread::sleep(Duration::from_millis(rng.below(2000)));
                proxy.refuse(false);
            }
            4 => reopen.store(true, std::sync::atomic::Ordering::SeqCst),
            // `kill -9` of a follower, started again at once: it goes on from its position.
            5 => {
                followers[0] = None;
                followers[0] = Some(spawn_stream());
            }
            6 => {
                followers[1] = None;
                followers[1] = Some(spawn_poll());
            }
            _ => replace.store(true, std::sync::atomic::Ordering::SeqCst),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let (conn, _) = reader.join().unwrap();
    let total = written.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "{total} commits, {} reads, actions {actions:?}, {} connections through the proxy, {} bytes",
        reads.load(std::sync::atomic::Ordering::SeqCst),
        proxy.connections(),
        proxy.forwarded()
    );
    assert!(proxy.forwarded() > 0, "the stream carried nothing");
    if actions.contains(&7) {
        let log = primary.log();
        assert!(
            log.contains("following the file now at the path"),
            "the primary never saw the database replaced:\n{log}"
        );
    }
    // The source as it is now (the database may have been replaced under `source`).
    drop(source);
    let source = Connection::open(primary.dir.path().join("app.db")).unwrap();
    read_until(&conn, total, Duration::from_secs(30), "the end");
    assert_eq!(dump_conn(&conn), dump_conn(&source));
    let follower_reads: Vec<u64> = follower_readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .collect();
    eprintln!("follower reads (stream, replica): {follower_reads:?}");
    // Each follower ends equal to the source.
    for (db, log) in [(&stream_db, "stream.log"), (&poll_db, "poll.log")] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        while try_read_plain(&conn, &db.display().to_string()).ok() != Some(total) {
            assert!(
                Instant::now() < deadline,
                "{} never reached the source's {total} rows:\n{}",
                db.display(),
                std::fs::read_to_string(dir.join(log)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(dump_conn(&conn), dump_conn(&source), "{}", db.display());
    }
    drop(followers);
}
