//! A seeded campaign over three replicas of one database (two directories, one S3 server of
//! its own) while a writer runs: one replica at a time is broken in a way drawn from the
//! seed (a path component replaced by a file, its tree removed, its bucket emptied or
//! deleted and made again, its server stopped, another history written into it), then
//! repaired. Throughout, the capture keeps going and every other replica keeps its lag;
//! at the end every replica restores to the source, or says exactly why not.
//!
//! `STRATA_CAMPAIGN_SEEDS=N` runs N seeds (1 by default), `STRATA_CAMPAIGN_SEED=S` one
//! given seed, `STRATA_CAMPAIGN_STEPS` the faults per seed (6). A failure prints its seed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::PrivateS3;
use common::capture::quick_capture_options;
use common::table::{Writer, create, rows, try_restored_rows, url};
use ltx::{Txid, TxidRange};
use strata::storage::{Level, Replica, ReplicaUrl};
use strata::store::{Database, Store, StoreOptions};

/// xorshift64*: a small deterministic generator for the campaign's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A way to break a replica.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A level directory replaced by a plain file (directory replicas).
    FileForDirectory,
    /// The whole replica removed (a directory) or its bucket emptied (S3).
    Wiped,
    /// The bucket deleted, then made again (S3).
    BucketRecreated,
    /// The server stops answering for a while (S3).
    ServerStopped,
    /// Another history's files at the TXIDs the capture is about to use.
    AnotherHistory,
}

/// What a replica is.
enum Where {
    Directory(PathBuf),
    S3,
}

struct Campaign {
    dir: tempfile::TempDir,
    s3: PrivateS3,
    db: PathBuf,
    replicas: Vec<(ReplicaUrl, Where)>,
}

impl Campaign {
    fn new() -> Campaign {
        let dir = tempfile::tempdir().unwrap();
        let s3 = PrivateS3::start("campaign");
        let db = dir.path().join("app.db");
        create(&db);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let remote = format!(
            "s3://campaign/app?endpoint={}&region=us-east-1&forcePathStyle=true",
            s3.endpoint
        );
        let replicas = vec![
            (url(&a), Where::Directory(a)),
            (url(&b), Where::Directory(b)),
            (ReplicaUrl::parse(&remote).unwrap(), Where::S3),
        ];
        Campaign {
            dir,
            s3,
            db,
            replicas,
        }
    }

    /// Breaks replica `i` with `fault` (one that fits its kind); returns how to repair it.
    async fn break_replica(&self, i: usize, fault: Fault, staged: Txid) -> Box<dyn FnOnce()> {
        match (&self.replicas[i].1, fault) {
            (Where::Directory(root), Fault::FileForDirectory) => {
                let level = root.join("ltx/0");
                // The capture may make the directory again in between: until the file wins.
                for attempt in 0.. {
                    let _ = std::fs::remove_dir_all(&level);
                    let _ = std::fs::create_dir_all(root.join("ltx"));
                    match std::fs::write(&level, b"in the way") {
                        Ok(()) => break,
                        Err(e) => assert!(attempt < 100, "cannot put a file in the way: {e}"),
                    }
                }
                Box::new(move || std::fs::remove_file(&level).unwrap())
            }
            // A directory has no bucket or server: it is wiped instead.
            (
                Where::Directory(root),
                Fault::Wiped | Fault::BucketRecreated | Fault::ServerStopped,
            ) => {
                let _ = std::fs::remove_dir_all(root);
                Box::new(|| {})
            }
            (Where::S3, Fault::Wiped | Fault::FileForDirectory) => {
                self.s3
                    .boto3("s3.Bucket('campaign').objects.all().delete()");
                Box::new(|| {})
            }
            (Where::S3, Fault::BucketRecreated) => {
                // strata may upload between the deletions and the bucket's: until it goes.
                self.s3.boto3(
                    "import time\nb = s3.Bucket('campaign')\nfor attempt in range(100):\n    try:\n        b.objects.all().delete()\n        b.delete()\n        break\n    except Exception:\n        time.sleep(0.05)\nelse:\n    raise SystemExit('the bucket never emptied')",
                );
                let endpoint = self.s3.endpoint.clone();
                Box::new(move || common::boto3(&endpoint, "s3.create_bucket(Bucket='campaign')"))
            }
            (Where::S3, Fault::ServerStopped) => {
                self.s3.signal("-STOP");
                let pid = self.s3.pid();
                Box::new(move || {
                    std::process::Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .status()
                        .unwrap();
                })
            }
            (_, Fault::AnotherHistory) => {
                let replica = Replica::create(&self.replicas[i].0).unwrap();
                // A few TXIDs ahead, never over a file already there (a conditional create).
                for txid in staged.get() + 3..staged.get() + 40 {
                    let bytes = common::foreign_ltx(txid, 0xbad, 9);
                    let _ = replica
                        .write(
                            Level::L0,
                            TxidRange::single(Txid::new(txid)),
                            bytes.into(),
                            jiff::Timestamp::now(),
                        )
                        .await;
                }
                Box::new(|| {})
            }
        }
    }
}

async fn run(seed: u64, steps: usize) {
    common::init_logging();
    let mut rng = Rng(seed.max(1));
    let campaign = Campaign::new();
    let store = Store::new(StoreOptions::default());
    let mut database = Database::new(&campaign.db, campaign.replicas[0].0.clone())
        .with_options(quick_capture_options());
    for (url, _) in &campaign.replicas[1..] {
        database = database.with_replica(url.clone());
    }
    let key = store.add(database).await.unwrap();
    let writer = Writer::start(&campaign.db, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let faults = [
        Fault::FileForDirectory,
        Fault::Wiped,
        Fault::BucketRecreated,
        Fault::ServerStopped,
        Fault::AnotherHistory,
    ];
    let mut foreign_done = false;
    for step in 0..steps {
        let i = rng.below(campaign.replicas.len() as u64) as usize;
        let mut fault = faults[rng.below(faults.len() as u64) as usize];
        if matches!(fault, Fault::AnotherHistory) {
            // Once per run: the replica is stopped for good after it.
            if foreign_done {
                fault = Fault::Wiped;
            }
            foreign_done = true;
        }
        let status = store.status().await;
        let capture = status[0].capture.clone().unwrap();
        let hold = Duration::from_millis(1000 + rng.below(2000));
        eprintln!("seed {seed} step {step}: replica {i} {fault:?} for {hold:?}");
        let repair = campaign.break_replica(i, fault, capture.staged).await;
        let started = Instant::now();
        let staged_before = capture.staged;
        while started.elapsed() < hold {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = store.status().await;
            assert!(
                status[0].failed.is_none(),
                "seed {seed}: the replication stopped: {:?}",
                status[0].failed
            );
            let capture = status[0].capture.clone().unwrap();
            let now = jiff::Timestamp::now();
            for (j, r) in capture.replicas.iter().enumerate() {
                if j == i || r.stopped.is_some() {
                    continue;
                }
                assert!(
                    r.lag(now) < Duration::from_secs(5),
                    "seed {seed} step {step}: replica {j} fell behind while {i} was broken: {r:?}"
                );
            }
        }
        let staged_after = store.status().await[0].capture.clone().unwrap().staged;
        assert!(
            staged_after > staged_before,
            "seed {seed}: the capture stopped at {staged_after}"
        );
        repair();
        // Repaired, it catches up (with a full copy where it lost files) before the next.
        let target = store.status().await[0].capture.clone().unwrap().staged;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(2), store.sync(&key)).await;
            let capture = store.status().await[0].capture.clone().unwrap();
            let r = &capture.replicas[i];
            if r.stopped.is_some() || r.uploaded >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed} step {step}: replica {i} never caught up to {target} once repaired: {r:?}"
            );
        }
    }
    writer.stop();
    // Every replica that is not stopped catches up.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(5), store.sync(&key)).await;
        let capture = store.status().await[0].capture.clone().unwrap();
        let behind: Vec<_> = capture
            .replicas
            .iter()
            .filter(|r| r.stopped.is_none() && r.uploaded < capture.staged)
            .map(|r| (r.replica.clone(), r.uploaded, r.upload_error.clone()))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: replicas never caught up to {}: {behind:?}",
            capture.staged
        );
    }
    let stopped: Vec<Option<String>> = store.status().await[0]
        .capture
        .clone()
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.stopped.clone())
        .collect();
    let results = store.shutdown().await;
    let source = rows(&campaign.db);
    for (i, (url, _)) in campaign.replicas.iter().enumerate() {
        match &stopped[i] {
            None => assert_eq!(
                try_restored_rows(url, campaign.dir.path())
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: replica {i}: {e}")),
                source,
                "seed {seed}: replica {i} does not restore to the source"
            ),
            Some(why) => {
                assert!(
                    why.contains("another process"),
                    "seed {seed}: replica {i}: {why}"
                );
                let stop = results[0].1.as_ref().unwrap_err().to_string();
                assert!(
                    stop.contains("was stopped"),
                    "seed {seed}: the stop hid replica {i}'s state: {stop}"
                );
            }
        }
    }
    if stopped.iter().all(Option::is_none) {
        results.into_iter().next().unwrap().1.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_replica_at_a_time_stops_nothing() {
    let steps = std::env::var("STRATA_CAMPAIGN_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for seed in strata::test_support::campaign_seeds() {
        eprintln!("replica campaign: seed {seed} (STRATA_CAMPAIGN_SEED={seed} runs it again)");
        run(seed, steps).await;
    }
}
