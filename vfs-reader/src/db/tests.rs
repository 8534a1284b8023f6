//! A database through the VFS over copies of the Litestream fixture: every page at every
//! TXID, states shown only between transactions, faults, hydration, the disk cache.

use std::time::Duration;

use super::*;
use strata::storage::ReplicaUrl;

/// The fixture restored by strata at every TXID 1..=16, as bytes.
fn restores() -> Vec<Vec<u8>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    (1..=16u64)
        .map(|t| {
            let out = dir.path().join(format!("{t}.db"));
            rt.block_on(strata::restore::restore(
                &fixture(),
                strata::restore::RestorePoint::Txid(Txid::new(t)),
                &out,
                &strata::restore::RestoreOptions::default(),
                Arc::new(strata::restore::NoProgress),
            ))
            .unwrap();
            std::fs::read(&out).unwrap()
        })
        .collect()
}

/// `restored` with page 1's fields as the VFS presents them (taken from `read`):
/// journal mode, change counter, size, version-valid-for.
fn as_presented(read: &[u8], restored: &[u8]) -> Vec<u8> {
    let mut want = restored.to_vec();
    for range in [18..20, 24..32, 92..96] {
        want[range.clone()].copy_from_slice(&read[range]);
    }
    want
}

fn fixture() -> Replica {
    dir_replica(&strata::test_support::fixture_dir())
}

/// The replica in directory `root`.
fn dir_replica(root: &std::path::Path) -> Replica {
    Replica::open(&ReplicaUrl::File {
        root: root.to_owned(),
    })
    .unwrap()
}

/// A copy of the fixture replica that a test may damage.
fn fixture_copy() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    strata::test_support::copy_dir(&strata::test_support::fixture_dir(), root.path());
    root
}

/// Every byte a reader sees equals a restore at the same TXID, except page 1's header
/// fields the VFS presents differently (journal mode, change counter, size).
#[test]
fn every_page_at_every_txid_equals_the_restore() {
    for (txid, want) in (1..=16u64).zip(restores()) {
        let target = RestorePoint::Txid(Txid::new(txid));
        let db = Db::open(fixture(), Options::default(), target).unwrap();
        db.set_lock(1).unwrap();
        assert_eq!(db.size(), want.len() as u64, "txid {txid}");
        // Read in pieces of odd sizes too: the header read SQLite makes is 100 bytes.
        let mut got = vec![0u8; want.len()];
        let (head, rest) = got.split_at_mut(100);
        assert!(db.read(head, 0).unwrap());
        assert!(db.read(rest, 100).unwrap());
        assert_eq!((got[18], got[19]), (1, 1), "rollback-journal mode");
        assert_eq!(
            got[24..28],
            got[92..96],
            "change counter and version-valid-for"
        );
        assert_eq!(
            u32::from_be_bytes(got[28..32].try_into().unwrap()) as usize,
            want.len() / 4096
        );
        assert!(
            got == as_presented(&got, &want),
            "txid {txid}: pages differ from the restore"
        );
        // Past the end: a short read, zero-filled.
        let mut past = [7u8; 16];
        assert!(!db.read(&mut past, want.len() as u64).unwrap());
        assert_eq!(past, [0; 16]);
    }
}

#[test]
fn a_new_state_is_shown_only_when_a_transaction_starts() {
    let db = Db::open(fixture(), Options::default(), RestorePoint::Latest).unwrap();
    assert_eq!(db.txid(), Txid::new(16));
    db.set_lock(1).unwrap();
    let counter = |db: &Db| {
        let mut head = [0u8; 100];
        db.read(&mut head, 0).unwrap();
        u32::from_be_bytes(head[24..28].try_into().unwrap())
    };
    let before = counter(&db);
    // Pinned while a transaction is open: the transaction keeps its state.
    assert_eq!(
        db.set_target(RestorePoint::Txid(Txid::new(5))).unwrap(),
        Txid::new(5)
    );
    assert_eq!(counter(&db), before);
    assert_eq!(
        db.txid(),
        Txid::new(16),
        "the TXID the open transaction reads"
    );
    assert_eq!(db.size(), 10 * 4096, "the newest state, after a VACUUM");
    db.set_lock(0).unwrap();
    db.set_lock(1).unwrap();
    assert_ne!(counter(&db), before);
    assert_eq!(db.size(), 16 * 4096);
    assert_eq!(db.txid(), Txid::new(5));
    assert_eq!(db.target(), RestorePoint::Txid(Txid::new(5)));
}

/// SQLite may call the VFS from a thread of the application's own tokio runtime: the
/// wait for the VFS's runtime must not depend on the caller's.
#[test]
fn reads_from_inside_another_tokio_runtime_complete() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let options = Options {
                cache_size: 0,
                ..Options::default()
            };
            let db = Db::open(fixture(), options, RestorePoint::Latest).unwrap();
            db.set_lock(1).unwrap();
            let mut page = vec![0u8; 4096];
            for _ in 0..50 {
                for pgno in 0..10u64 {
                    db.read(&mut page, pgno * 4096).unwrap();
                }
            }
        });
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("reads from a tokio worker hung");
}

#[test]
fn an_empty_or_missing_replica_fails_to_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir_replica(dir.path());
    let e = Db::open(empty, Options::default(), RestorePoint::Latest)
        .err()
        .unwrap();
    assert!(e.to_string().contains("no LTX files"), "{e}");
    let e = Db::open(
        fixture(),
        Options::default(),
        RestorePoint::Txid(Txid::new(99)),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("not a restore point"), "{e}");
}

/// Seeded storage faults under a reader (`STRATA_VFS_FAULT_SEEDS=1,2,3` replays; steps
/// from `STRATA_VFS_FAULT_STEPS`): failed and delayed GETs and LISTs, bodies broken
/// mid-transfer, files deleted as they are read, flipped bytes in files fetched whole.
/// Every read either fails (an error for SQLite) or returns exactly the restore's bytes.
#[test]
fn storage_faults_give_errors_never_wrong_bytes() {
    use strata::storage::faults::Fault;
    let expected = restores();
    let seeds: Vec<u64> = std::env::var("STRATA_VFS_FAULT_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            vec![now.as_nanos() as u64, now.as_nanos() as u64 ^ 0xa5a5]
        });
    let steps: u32 = std::env::var("STRATA_VFS_FAULT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in seeds {
        eprintln!("storage faults from STRATA_VFS_FAULT_SEEDS={seed}");
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let dir = fixture_copy();
        let (replica, faults) = dir_replica(dir.path()).with_faults();
        let whole = next(2) == 0;
        let options = Options {
            cache_size: 8 * 4096,
            whole_file_max: if whole { 1 << 20 } else { 0 },
            timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let db = Db::open(replica, options, RestorePoint::Latest).unwrap();
        let (mut good, mut failed) = (0, 0);
        for step in 0..steps {
            let fault = match next(if whole { 7 } else { 6 }) {
                0 => Fault::FailGet,
                1 => Fault::FailList,
                2 => Fault::Delay(Duration::from_millis(5)),
                3 => Fault::BreakGetAfter(next(300)),
                4 => Fault::VanishOnGet,
                5 => Fault::FailGet,
                _ => Fault::CorruptGetAt(next(4000)),
            };
            let level = ["", "ltx/0/", "ltx/1/", "ltx/2/", "ltx/9/"][next(5) as usize];
            faults.inject(level, fault.clone(), 1 + next(3) as u32);
            let txid = 1 + next(16);
            let read = db
                .set_target(RestorePoint::Txid(Txid::new(txid)))
                .and_then(|_| {
                    db.set_lock(0)?;
                    db.set_lock(1)?;
                    let mut got = vec![0u8; expected[txid as usize - 1].len()];
                    if db.size() != got.len() as u64 {
                        return Err(VfsError::Config(format!("size {}", db.size())));
                    }
                    db.read(&mut got, 0)?;
                    Ok(got)
                });
            match read {
                Ok(got) => {
                    let want = &expected[txid as usize - 1];
                    assert!(
                        got == as_presented(&got, want),
                        "seed {seed} step {step}: wrong bytes at TXID {txid} under {fault:?} on {level:?}"
                    );
                    good += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    failed += 1;
                }
            }
            faults.clear();
        }
        eprintln!("seed {seed}: {good} reads right, {failed} failed");
        assert!(good > 0, "seed {seed}: no read succeeded");
    }
}

/// Reads the whole database in one transaction.
fn read_all(db: &Db) -> Vec<u8> {
    db.set_lock(1).unwrap();
    let mut got = vec![0u8; db.size() as usize];
    db.read(&mut got, 0).unwrap();
    db.set_lock(0).unwrap();
    got
}

/// Starts transactions until the hydrated copy holds `txid`.
fn hydrated_to(db: &Db, txid: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.hydrated() != Some(Txid::new(txid)) {
        assert!(
            Instant::now() < deadline,
            "not hydrated to {txid}: {:?}",
            db.hydrated()
        );
        db.set_lock(1).unwrap();
        db.set_lock(0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Hydration restores the database locally, follows new files into it, and then serves
/// reads with the replica's files gone; a pin to an older state still reads the replica.
#[test]
fn a_hydrated_reader_follows_new_files_and_reads_without_the_replica() {
    let root = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let l0 = root.path().join("ltx/0");
    std::fs::create_dir_all(&l0).unwrap();
    let copy_l0 = |txids: std::ops::RangeInclusive<u64>| {
        for t in txids {
            let name = format!("{t:016x}-{t:016x}.ltx");
            std::fs::copy(
                strata::test_support::fixture_dir()
                    .join("ltx/0")
                    .join(&name),
                l0.join(&name),
            )
            .unwrap();
        }
    };
    copy_l0(1..=8);
    let replica = dir_replica(root.path());
    let options = Options {
        cache_size: 0,
        whole_file_max: 0,
        poll_interval: Duration::from_millis(50),
        hydrate_dir: Some(local.path().to_owned()),
        ..Options::default()
    };
    let restores = restores();
    let db = Db::open(replica, options, RestorePoint::Latest).unwrap();
    hydrated_to(&db, 8);
    let got = read_all(&db);
    assert!(got == as_presented(&got, &restores[7]), "at TXID 8");

    copy_l0(9..=16);
    hydrated_to(&db, 16);
    assert_eq!(db.txid(), Txid::new(16));
    db.set_target(RestorePoint::Txid(Txid::new(5))).unwrap();
    let got = read_all(&db);
    assert!(got == as_presented(&got, &restores[4]), "pinned at TXID 5");
    db.set_target(RestorePoint::Latest).unwrap();

    // Every page of the newest state now comes from the local copy.
    for entry in std::fs::read_dir(&l0).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let got = read_all(&db);
    assert!(
        got == as_presented(&got, &restores[15]),
        "at TXID 16, replica gone"
    );
    assert_eq!(db.hydrated(), Some(Txid::new(16)));
    drop(db);
    assert_eq!(
        std::fs::read_dir(local.path()).unwrap().count(),
        0,
        "the hydrated file is removed on close"
    );
}

/// Frames fetched once are read from the on-disk cache by a reader opened later: with
/// the replica's frames damaged after the first reader, the second still reads the
/// restore's bytes (and without the cache it does not).
#[test]
fn a_later_reader_reads_fetched_frames_from_the_disk_cache() {
    let root = fixture_copy();
    let disk = tempfile::tempdir().unwrap();
    let replica = || dir_replica(root.path());
    let options = |disk_cache_dir| Options {
        cache_size: 0,
        whole_file_max: 0,
        disk_cache_dir,
        ..Options::default()
    };
    let want = &restores()[15];
    let cached = Some(disk.path().to_owned());
    let first = Db::open(replica(), options(cached.clone()), RestorePoint::Latest).unwrap();
    let got = read_all(&first);
    assert!(got == as_presented(&got, want));
    drop(first);
    // The entries are written in the background.
    std::thread::sleep(Duration::from_millis(500));

    // Damage every frame byte 10 of every file (headers and indexes stay readable).
    for level in std::fs::read_dir(root.path().join("ltx")).unwrap() {
        for f in std::fs::read_dir(level.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let mut data = std::fs::read(&path).unwrap();
            data[ltx::HEADER_SIZE + 10] ^= 0x55;
            std::fs::write(&path, data).unwrap();
        }
    }
    let uncached = Db::open(replica(), options(None), RestorePoint::Latest).unwrap();
    uncached.set_lock(1).unwrap();
    let mut page = vec![0u8; uncached.size() as usize];
    let damaged = uncached.read(&mut page, 0).is_err() || page != as_presented(&page, want);
    assert!(damaged, "the damage shows without the cache");

    let second = Db::open(replica(), options(cached), RestorePoint::Latest).unwrap();
    let got = read_all(&second);
    assert!(got == as_presented(&got, want), "read from the disk cache");
}

/// A file whose header covers other TXIDs than its name says is refused, naming it,
/// read whole or by ranges.
#[test]
fn a_misnamed_file_is_an_error_naming_it() {
    let root = fixture_copy();
    for level in ["1", "2", "9"] {
        std::fs::remove_dir_all(root.path().join("ltx").join(level)).unwrap();
    }
    let l0 = root.path().join("ltx/0");
    let (d, e) = (
        l0.join(format!("{0:016x}-{0:016x}.ltx", 13)),
        l0.join(format!("{0:016x}-{0:016x}.ltx", 14)),
    );
    let tmp = l0.join("swap");
    std::fs::rename(&d, &tmp).unwrap();
    std::fs::rename(&e, &d).unwrap();
    std::fs::rename(&tmp, &e).unwrap();
    for whole in [0, 1 << 20] {
        let replica = dir_replica(root.path());
        let options = Options {
            whole_file_max: whole,
            ..Options::default()
        };
        let err = Db::open(replica, options, RestorePoint::Txid(Txid::new(14)))
            .err()
            .expect("a misnamed file is refused");
        let text = err.to_string();
        assert!(
            text.contains("the file name says") && text.contains("000000000000000d"),
            "{text}"
        );
    }
}

/// A large file that hydration finds corrupt (its checksum), with no other file to
/// plan around it, is not served by ranged reads either: reads fail naming it.
#[test]
fn a_file_hydration_finds_corrupt_is_not_served() {
    let root = fixture_copy();
    let local = tempfile::tempdir().unwrap();
    for level in ["0", "1", "2"] {
        std::fs::remove_dir_all(root.path().join("ltx").join(level)).unwrap();
    }
    let snapshot = root
        .path()
        .join("ltx/9/0000000000000001-0000000000000010.ltx");
    let mut data = std::fs::read(&snapshot).unwrap();
    data[5000] ^= 0x20;
    std::fs::write(&snapshot, data).unwrap();
    let replica = dir_replica(root.path());
    let options = Options {
        cache_size: 0,
        whole_file_max: 0,
        hydrate_dir: Some(local.path().to_owned()),
        ..Options::default()
    };
    let db = Db::open(replica, options, RestorePoint::Latest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        db.set_lock(1).unwrap();
        let mut got = vec![0u8; db.size() as usize];
        let read = db.read(&mut got, 0);
        db.set_lock(0).unwrap();
        if let Err(e) = read {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt file is still served"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = err.to_string();
    assert!(
        text.contains("is corrupt") && text.contains("0000000000000001-0000000000000010"),
        "{text}"
    );
}
