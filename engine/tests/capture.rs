//! `strata replicate` on a live database that other processes write to, with Python's own
//! SQLite: every captured TXID restores to a state the source passed through, the latest
//! equals the source, nothing is lost across kill -9, and Litestream restores it too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ltx::Txid;
use strata::restore::Target;
use strata::storage::{Level, Replica, ReplicaUrl};

const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload.py");

/// A database, the states it passed through, and a replica.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    states: PathBuf,
    replica_url: String,
}

impl Setup {
    fn new(replica_url: Option<String>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let setup = Setup {
            db: path.join("app.db"),
            states: path.join("states"),
            replica_url: replica_url
                .unwrap_or_else(|| format!("file://{}", path.join("replica").display())),
            dir: path,
            _dir: dir,
        };
        python(&[
            "init",
            setup.db.to_str().unwrap(),
            setup.states.to_str().unwrap(),
        ]);
        setup
    }

    /// A config with tight intervals and thresholds, so a short run syncs and checkpoints
    /// (PASSIVE and TRUNCATE) many times.
    fn config(&self) -> PathBuf {
        let path = self.dir.join("strata.yml");
        std::fs::write(
            &path,
            format!(
                "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    checkpoint-interval: 1s\n    min-checkpoint-page-count: 64\n    truncate-page-n: 400\n    replica:\n      url: {}\n",
                self.db.display(),
                self.replica_url
            ),
        )
        .unwrap();
        path
    }

    fn strata(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["replicate", "--config", self.config().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("strata.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    }

    fn writers(&self, n: u64, seconds: f64) -> Vec<Child> {
        (0..n)
            .map(|seed| {
                Command::new("python3")
                    .args([
                        WORKLOAD,
                        "write",
                        self.db.to_str().unwrap(),
                        self.states.to_str().unwrap(),
                    ])
                    .args([
                        "--seconds",
                        &seconds.to_string(),
                        "--seed",
                        &seed.to_string(),
                    ])
                    .spawn()
                    .unwrap()
            })
            .collect()
    }

    fn states(&self) -> std::collections::HashSet<String> {
        std::fs::read_to_string(&self.states)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("strata.log")).unwrap_or_default()
    }

    fn replica(&self) -> Replica {
        Replica::open(&ReplicaUrl::parse(&self.replica_url).unwrap()).unwrap()
    }
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(WORKLOAD)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "workload.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sqlite3 DB .dump` from the sqlite3 shell, after checking `PRAGMA integrity_check` is ok.
fn sqlite3_dump(db: &str) -> String {
    let out = Command::new("sqlite3")
        .args([db, "PRAGMA integrity_check", ".dump"])
        .output()
        .expect("the sqlite3 shell (scripts/test installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {db} .dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (integrity, dump) = text.split_once('\n').unwrap();
    assert_eq!(integrity, "ok", "integrity_check of {db}");
    dump.to_owned()
}

fn wait_all(children: Vec<Child>) {
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Stops strata the way an operator does, and expects a clean exit.
fn stop(setup: &Setup, mut strata: Child) {
    signal(&strata, "-TERM");
    let status = strata.wait().unwrap();
    assert!(
        status.success(),
        "strata replicate exited {status}:\n{}",
        setup.log()
    );
}

async fn restore_at(replica: &Replica, target: Target, out: &Path) {
    restore_to(replica, target, out)
        .await
        .unwrap_or_else(|e| panic!("restore {target:?}: {e}"));
}

/// Every L0 TXID from 1 up, without a gap; returns the last.
async fn contiguous_l0(replica: &Replica) -> u64 {
    let l0: Vec<u64> = replica
        .list(Level::L0, Txid::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|f| f.range.max.get())
        .collect();
    assert!(!l0.is_empty());
    assert_eq!(
        l0,
        (1..=l0.len() as u64).collect::<Vec<_>>(),
        "L0 TXIDs must be 1..=n with no gap"
    );
    *l0.last().unwrap()
}

/// The latest restore equals the source (dump, integrity), and every TXID restores to a
/// state the source passed through.
async fn check_history(setup: &Setup) {
    let replica = setup.replica();
    let last = contiguous_l0(&replica).await;
    let out = setup.dir.join("latest.db");
    restore_at(&replica, Target::Latest, &out).await;
    let history: Vec<String> = std::fs::read_to_string(&setup.states)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let restored = python(&["hash", out.to_str().unwrap()]);
    let at = history.iter().position(|h| h == restored.trim());
    assert_eq!(
        at,
        Some(history.len() - 1),
        "the latest restore (TXID {last}) is state {at:?} of {} the source went through; log:\n{}",
        history.len(),
        setup.log()
    );
    assert!(
        sqlite3_dump(out.to_str().unwrap()) == sqlite3_dump(setup.db.to_str().unwrap()),
        "the latest restore's dump differs from the source's"
    );
    let states = setup.states();
    for txid in 1..=last {
        let out = setup.dir.join(format!("at-{txid}.db"));
        restore_at(&replica, Target::Txid(Txid::new(txid)), &out).await;
        let hash = python(&["hash", out.to_str().unwrap()]);
        assert!(
            states.contains(hash.trim()),
            "TXID {txid} restores to a state the source never had"
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_txid_restores_a_state_the_source_passed_through() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    std::thread::sleep(Duration::from_millis(500));
    wait_all(setup.writers(3, 8.0));
    std::thread::sleep(Duration::from_millis(300));
    stop(&setup, strata);
    let log = setup.log();
    assert!(
        log.contains("truncate checkpoint"),
        "the run should have exercised TRUNCATE:\n{log}"
    );
    // Checkpoints (strata's and the application's) never force a full copy: only the first
    // sync is one.
    assert_eq!(log.matches("writing a full copy").count(), 1, "{log}");
    check_history(&setup).await;

    assert_litestream_restores_the_source(&setup);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_never_reuses_a_txid() {
    let setup = Setup::new(None);
    let writers = setup.writers(2, 9.0);
    let mut strata = setup.strata();
    // Random moments, from a seed printed so a failure can be replayed.
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill -9 moments from STRATA_TEST_SEED={seed}");
    let mut x = seed | 1;
    for _ in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(200 + x % 1600));
        signal(&strata, "-KILL");
        strata.wait().unwrap();
        strata = setup.strata();
    }
    wait_all(writers);
    std::thread::sleep(Duration::from_millis(300));
    stop(&setup, strata);
    check_history(&setup).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_where_it_stopped_even_if_the_wal_moved_on() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    wait_all(setup.writers(1, 2.0));
    std::thread::sleep(Duration::from_millis(300));
    stop(&setup, strata);
    let first = contiguous_l0(&setup.replica()).await;

    // While strata is down the application keeps writing, checkpoints and restarts its WAL.
    wait_all(setup.writers(1, 1.5));
    let strata = setup.strata();
    wait_all(setup.writers(1, 1.5));
    std::thread::sleep(Duration::from_millis(300));
    stop(&setup, strata);
    assert!(contiguous_l0(&setup.replica()).await > first);
    check_history(&setup).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn captures_to_s3_and_litestream_restores_it() {
    let setup = Setup::new(Some(s3_url("captured")));
    let strata = setup.strata();
    wait_all(setup.writers(2, 3.0));
    std::thread::sleep(Duration::from_millis(300));
    stop(&setup, strata);
    check_history(&setup).await;
    assert_litestream_restores_the_source(&setup);
}

/// Litestream 0.5.17 restores the replica strata wrote to the source's content.
fn assert_litestream_restores_the_source(setup: &Setup) {
    let out = setup.dir.join("litestream.db");
    let status = litestream()
        .args(["restore", "-o", out.to_str().unwrap()])
        .arg(&setup.replica_url)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        sqlite3_dump(out.to_str().unwrap()),
        sqlite3_dump(setup.db.to_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_config_replicates_several_databases_and_switches_them_to_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    for (db, mode) in [(&a, "wal"), (&b, "delete")] {
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3; c = sqlite3.connect('{}'); c.execute('PRAGMA journal_mode={mode}'); \
                 c.execute('CREATE TABLE t (v)'); c.executemany('INSERT INTO t VALUES (?)', [(i,) for i in range(500)]); c.commit()",
                db.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: file\n      path: {}\n  - path: {}\n    replicas:\n      - url: file://{}\n",
            a.display(),
            dir.path().join("ra").display(),
            b.display(),
            dir.path().join("rb").display()
        ),
    )
    .unwrap();
    let strata = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["replicate", "--config", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&strata, "-TERM");
    let out = strata.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode: String = rusqlite::Connection::open(&b)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for (db, replica) in [(&a, "ra"), (&b, "rb")] {
        let out = dir.path().join(format!("{replica}.db"));
        let replica = Replica::open(&ReplicaUrl::File {
            root: dir.path().join(replica),
        })
        .unwrap();
        restore_at(&replica, Target::Latest, &out).await;
        assert_eq!(
            sqlite3_dump(out.to_str().unwrap()),
            sqlite3_dump(db.to_str().unwrap())
        );
    }
}
