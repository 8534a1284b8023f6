//! A live database written by Python's own SQLite (not the one strata links), `strata
//! replicate` run as a real process, and checks that the replica holds exactly the states
//! the source passed through.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ltx::Txid;
use std::time::Duration;

use strata::capture::{CaptureOptions, Replication};
use strata::compact::CompactionOptions;
use strata::restore::RestorePoint;
use strata::storage::{Level, Replica, ReplicaUrl};

use super::{litestream, restore_to};

/// The strata binary under test: this build's, or `STRATA_BIN` (to show a regression test
/// fails against an older build).
pub fn strata_bin() -> String {
    std::env::var("STRATA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").to_owned())
}

pub const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload.py");

/// A database, the states it passed through, and a replica.
pub struct Setup {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub states: PathBuf,
    pub replica_url: String,
    /// Extra lines for the database's entry in the config (indented as its keys).
    pub db_keys: String,
}

impl Setup {
    pub fn new(replica_url: Option<String>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let setup = Setup {
            db: path.join("app.db"),
            states: path.join("states"),
            replica_url: replica_url
                .unwrap_or_else(|| format!("file://{}", path.join("replica").display())),
            dir: path,
            _dir: dir,
            db_keys: String::new(),
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
    pub fn config(&self) -> PathBuf {
        let path = self.dir.join("strata.yml");
        // Builds from before the key existed (see `strata_bin`) reject it.
        let shutdown = if std::env::var_os("STRATA_BIN").is_some() {
            ""
        } else {
            concat!(
                "shutdown-sync-timeout: 3s\n",
                // Compaction, snapshots and retention all run within a few seconds.
                "levels: [{interval: 1s}, {interval: 3s}]\n",
                "snapshot: {interval: 5s, retention: 10s}\n",
                "l0-retention: 2s\n",
                "retention: {grace: 1s}\n",
            )
        };
        std::fs::write(
            &path,
            format!(
                "{shutdown}dbs:\n  - path: {}\n    monitor-interval: 100ms\n    checkpoint-interval: 1s\n    min-checkpoint-page-count: 64\n    truncate-page-n: 400\n{}    replica:\n      url: {}\n",
                self.db.display(),
                self.db_keys,
                self.replica_url
            ),
        )
        .unwrap();
        path
    }

    /// `strata replicate --config`, its stderr appended to `strata.log`, once it says it is
    /// replicating (a signal before then would find no handler yet).
    pub fn strata(&self) -> Child {
        let started = self.log().matches("replicating ").count();
        let mut child = self.spawn_strata();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.log().matches("replicating ").count() == started {
            if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    fn spawn_strata(&self) -> Child {
        Command::new(strata_bin())
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

    /// Writer processes running random transactions for `seconds`.
    pub fn writers(&self, n: u64, seconds: f64) -> Vec<Child> {
        self.writers_with(n, seconds, &[])
    }

    /// Writers with extra `workload.py write` flags.
    pub fn writers_with(&self, n: u64, seconds: f64, flags: &[&str]) -> Vec<Child> {
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
                    .args(flags)
                    .spawn()
                    .unwrap()
            })
            .collect()
    }

    /// `n` writers for `seconds`, waited for off the runtime's threads; each must succeed.
    pub async fn write_for(&self, n: u64, seconds: f64) {
        let writers = self.writers(n, seconds);
        tokio::task::spawn_blocking(move || wait_all(writers))
            .await
            .unwrap();
    }

    pub fn states(&self) -> HashSet<String> {
        std::fs::read_to_string(&self.states)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Copies the test's directory where it outlives the test (a failure's evidence).
    pub fn keep_evidence(&self) -> PathBuf {
        let kept = std::env::temp_dir().join(format!(
            "strata-evidence-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_millisecond()
        ));
        super::copy_dir(&self.dir, &kept);
        kept
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("strata.log")).unwrap_or_default()
    }

    pub fn replica(&self) -> Replica {
        Replica::open(&ReplicaUrl::parse(&self.replica_url).unwrap()).unwrap()
    }
}

/// Capture options for in-process runs: the same tight intervals as [`Setup::config`], and
/// replica checks every 300 ms (a full listing every third).
pub fn quick_capture_options() -> CaptureOptions {
    let mut o = CaptureOptions::default();
    o.sync_interval = Duration::from_millis(100);
    o.checkpoint.min_pages = 64;
    o.checkpoint.interval = Duration::from_secs(1);
    o.checkpoint.truncate_pages = 400;
    o.shutdown_timeout = Duration::from_secs(5);
    o.replica_check_interval = Duration::from_millis(300);
    o.replica_list_every = 3;
    o.compaction = Some(quick_compaction_options());
    o
}

/// Compaction for in-process runs, matching [`Setup::config`]: L1 every second, L2 every
/// 3 s, snapshots every 5 s kept 10 s, L0 kept 2 s, a 1 s grace period.
pub fn quick_compaction_options() -> CompactionOptions {
    let mut o = CompactionOptions::default();
    o.levels = vec![Duration::from_secs(1), Duration::from_secs(3)];
    o.snapshot_interval = Duration::from_secs(5);
    o.retention.enabled = true;
    o.retention.l0 = Duration::from_secs(2);
    o.retention.snapshots = Duration::from_secs(10);
    o.retention.grace = Duration::from_secs(1);
    o
}

/// Starts replicating `setup`'s database to `url` in this process.
pub async fn start_in_process(setup: &Setup, url: &str) -> Replication {
    start_in_process_with(setup, url, quick_capture_options()).await
}

/// Starts replicating `setup`'s database to `url` in this process with `options`.
pub async fn start_in_process_with(
    setup: &Setup,
    url: &str,
    options: CaptureOptions,
) -> Replication {
    let replica = Replica::create(&ReplicaUrl::parse(url).unwrap()).unwrap();
    Replication::start(&setup.db, replica, options)
        .await
        .unwrap()
}

/// Runs `workload.py` and returns its output.
pub fn python(args: &[&str]) -> String {
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
pub fn sqlite3_dump(db: &str) -> String {
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

pub fn wait_all(children: Vec<Child>) {
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
}

pub fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Stops strata the way an operator does, and expects a clean exit.
pub fn stop(setup: &Setup, mut strata: Child) {
    signal(&strata, "-TERM");
    let status = strata.wait().unwrap();
    assert!(
        status.success(),
        "strata replicate exited {status}:\n{}",
        setup.log()
    );
}

pub async fn restore_at(replica: &Replica, target: RestorePoint, out: &Path) {
    if let Err(e) = restore_to(replica, target, out).await {
        let files: Vec<String> = replica
            .list_all()
            .await
            .unwrap_or_default()
            .iter()
            .map(|f| format!("{f} ({})", f.modified))
            .collect();
        panic!("restore {target:?}: {e}\nreplica: {files:#?}");
    }
}

/// The restore points of L0: the max TXID of each file, strictly increasing, each file
/// continuing the one before or starting at 1 (a full copy named as a snapshot). Files
/// below the first that retention deleted are not asked for.
pub async fn l0_txids(replica: &Replica) -> Vec<u64> {
    let mut l0 = replica.list(Level::L0, Txid::ZERO).await.unwrap();
    l0.sort_by_key(|f| (f.range.max, f.range.min));
    // A full copy that restarts the history is a snapshot in L9: L0 goes on after it.
    let snapshot_ends: Vec<Txid> = replica
        .list(Level::SNAPSHOT, Txid::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|f| f.range.max)
        .collect();
    assert!(
        !l0.is_empty() || !snapshot_ends.is_empty(),
        "L0 and L9 are empty"
    );
    if l0.is_empty() {
        return snapshot_ends.iter().map(|t| t.get()).collect();
    }
    let mut reached = l0[0].range.min.prev();
    for f in &l0 {
        assert!(
            f.range.min == Txid::ONE
                || f.range.min == reached.next()
                || (f.range.min > reached && snapshot_ends.contains(&f.range.min.prev())),
            "L0 file {} does not continue TXID {reached}",
            f.range.file_name()
        );
        assert!(f.range.max > reached);
        reached = f.range.max;
    }
    l0.iter().map(|f| f.range.max.get()).collect()
}

/// Every TXID some file of any level ends at, ascending, from the oldest snapshot on (below
/// it, retention keeps each level's newest file, which need not restore).
pub async fn restore_points(replica: &Replica) -> Vec<u64> {
    let files = replica.list_all().await.unwrap();
    // The retention window starts at the oldest snapshot; with none, at the oldest file
    // starting at TXID 1.
    let starts = |level: Option<Level>| {
        files
            .iter()
            .filter(|f| f.range.min == Txid::ONE && level.is_none_or(|l| f.level == l))
            .map(|f| f.range.max)
            .min()
    };
    let floor = starts(Some(Level::SNAPSHOT))
        .or(starts(None))
        .unwrap_or(Txid::ZERO);
    let mut txids: Vec<u64> = files
        .iter()
        .map(|f| f.range.max)
        .filter(|&t| t >= floor)
        .map(Txid::get)
        .collect();
    txids.sort_unstable();
    txids.dedup();
    txids
}

/// The latest restore equals the source (dump, integrity) and is the last state it
/// recorded, and every restore point restores to a state the source passed through.
pub async fn check_history(setup: &Setup) {
    let replica = setup.replica();
    l0_txids(&replica).await;
    let txids = restore_points(&replica).await;
    let out = setup.dir.join("latest.db");
    let _ = std::fs::remove_file(&out);
    restore_at(&replica, RestorePoint::Latest, &out).await;
    let history: Vec<String> = std::fs::read_to_string(&setup.states)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let restored = python(&["hash", out.to_str().unwrap()]);
    let at = history.iter().rposition(|h| h == restored.trim());
    assert_eq!(
        at,
        Some(history.len() - 1),
        "the latest restore (TXID {:?}) is state {at:?} of {} the source went through; kept in {}; log:\n{}",
        txids.last(),
        history.len(),
        if at == Some(history.len() - 1) {
            String::new()
        } else {
            setup.keep_evidence().display().to_string()
        },
        setup.log()
    );
    assert!(
        sqlite3_dump(out.to_str().unwrap()) == sqlite3_dump(setup.db.to_str().unwrap()),
        "the latest restore's dump differs from the source's"
    );
    let states = setup.states();
    for txid in txids {
        assert_restores_a_recorded_state(setup, &replica, &states, txid).await;
    }
}

/// Restores `txid` and checks it is a sound database in a state the source passed through.
async fn assert_restores_a_recorded_state(
    setup: &Setup,
    replica: &Replica,
    states: &HashSet<String>,
    txid: u64,
) {
    let out = setup.dir.join(format!("at-{txid}.db"));
    let _ = std::fs::remove_file(&out);
    restore_at(replica, RestorePoint::Txid(Txid::new(txid)), &out).await;
    assert_restored_a_recorded_state(setup, states, txid, &out);
}

/// Checks the database restored at `out` for `txid` is a state the source passed through.
fn assert_restored_a_recorded_state(
    setup: &Setup,
    states: &HashSet<String>,
    txid: u64,
    out: &Path,
) {
    let hash = python(&["hash", out.to_str().unwrap()]);
    if !states.contains(hash.trim()) {
        panic!(
            "TXID {txid} restores to a state the source never had; the database, its states, \
             the restore and a directory replica are kept in {} (replica {}); log:\n{}",
            setup.keep_evidence().display(),
            setup.replica_url,
            setup.log()
        );
    }
    std::fs::remove_file(out).unwrap();
}

/// Restores every restore point above `checked` now in the replica (it may be being
/// written) and checks each is a state the source passed through and a sound database;
/// returns the highest checked. For checking after every step of a campaign.
pub async fn check_new_restore_points(setup: &Setup, checked: u64) -> u64 {
    let replica = setup.replica();
    let states = setup.states();
    let mut highest = checked;
    for txid in restore_points(&replica)
        .await
        .into_iter()
        .filter(|t| *t > checked)
    {
        // Retention runs meanwhile: a restore point it has just removed is not one to check.
        let out = setup.dir.join(format!("at-{txid}.db"));
        let _ = std::fs::remove_file(&out);
        let mut attempts = 0;
        let restored = loop {
            let _ = std::fs::remove_file(&out);
            match restore_to(&replica, RestorePoint::Txid(Txid::new(txid)), &out).await {
                Ok(_) => break true,
                Err(_) if !restore_points(&replica).await.contains(&txid) => break false,
                // Still listed: it must restore, unless retention took it in between again.
                Err(_) if attempts < 3 => attempts += 1,
                Err(_) => {
                    restore_at(&replica, RestorePoint::Txid(Txid::new(txid)), &out).await;
                    break true;
                }
            }
        };
        if restored {
            assert_restored_a_recorded_state(setup, &states, txid, &out);
            highest = highest.max(txid);
        }
    }
    highest
}

/// Litestream 0.5.17 restores the replica strata wrote to the source's content.
pub fn assert_litestream_restores_the_source(setup: &Setup) {
    let out = setup.dir.join("litestream.db");
    let _ = std::fs::remove_file(&out);
    let result = litestream()
        .args(["restore", "-o", out.to_str().unwrap()])
        .arg(&setup.replica_url)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "litestream restore failed: {}\nreplica: {:?}",
        String::from_utf8_lossy(&result.stderr),
        std::process::Command::new("find")
            .arg(setup.dir.join("replica"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    );
    assert_eq!(
        sqlite3_dump(out.to_str().unwrap()),
        sqlite3_dump(setup.db.to_str().unwrap())
    );
}

/// Litestream's config for the setup's database: L1 every 2 s, L2 every 6 s, snapshots
/// every 12 s, L0 kept 3 s.
fn litestream_config(setup: &Setup) -> PathBuf {
    let path = setup.dir.join("litestream.yml");
    std::fs::write(
        &path,
        format!(
            "levels:\n  - interval: 2s\n  - interval: 6s\nsnapshot:\n  interval: 12s\n  retention: 1m\nl0-retention: 3s\ndbs:\n  - path: {}\n    replica:\n      url: {}\n",
            setup.db.display(),
            setup.replica_url
        ),
    )
    .unwrap();
    path
}

/// `litestream replicate` of the setup's database to its replica, with the config above,
/// its output (its log goes to stdout) appended to `litestream.log`.
pub fn litestream_replicate(setup: &Setup) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join("litestream.log"))
        .unwrap();
    litestream()
        .args(["replicate", "-config"])
        .arg(litestream_config(setup))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}
