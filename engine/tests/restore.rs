//! Restore: exact bytes at every TXID from every backend, and every failure reported
//! clearly with nothing left behind.

mod common;

use std::sync::Arc;

use common::*;
use ltx::{Txid, TxidRange};
use strata::restore::{self, NoProgress, PlanError, RestoreError, RestoreOptions, RestorePoint};
use strata::storage::{Layout, Level, Replica, ReplicaUrl};

/// Restores at every TXID and compares with Litestream's own restores.
async fn check_every_txid(replica: &Replica) {
    let dir = tempfile::tempdir().unwrap();
    for (txid, sha, size) in expected_restores() {
        let out = dir.path().join(format!("{txid}.db"));
        let s = restore_to(replica, RestorePoint::Txid(Txid::new(txid)), &out)
            .await
            .unwrap_or_else(|e| panic!("TXID {txid}: {e}"));
        assert_eq!(s.txid.get(), txid);
        assert_eq!(s.db_size, size, "TXID {txid}");
        assert_eq!(sha256_file(&out), sha, "TXID {txid}");
    }
    let out = dir.path().join("latest.db");
    let s = restore_to(replica, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(s.txid.get(), 16);
    assert_eq!(
        s.files, 1,
        "the newest snapshot alone reaches the latest TXID"
    );
    assert_eq!(sha256_file(&out), expected_restores()[15].1);
}

#[tokio::test]
async fn every_txid_from_the_litestream_directory() {
    check_every_txid(&fixture_replica()).await;
}

#[tokio::test]
async fn every_txid_from_s3_in_the_s3_layout() {
    let url = ReplicaUrl::parse(&s3_url("db")).unwrap();
    let s3 = Replica::create(&url).unwrap();
    assert_eq!(s3.layout(), Layout::S3);
    copy_raw(&fixture_replica(), &s3).await;
    // Litestream's S3 layout: <prefix>/<level as %04x>/.
    let listed = s3.list(Level::SNAPSHOT, Txid::ZERO).await.unwrap();
    assert_eq!(listed.len(), 3);
    check_every_txid(&Replica::open(&url).unwrap()).await;
}

#[tokio::test]
async fn a_replica_in_the_other_layout_is_detected() {
    // File-layout objects in an S3 bucket (someone synced a directory up).
    let url = ReplicaUrl::parse(&s3_url("synced")).unwrap();
    copy_raw(
        &fixture_replica(),
        &Replica::create(&url).unwrap().with_layout(Layout::File),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db");
    restore_to(&Replica::open(&url).unwrap(), RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(sha256_file(&out), expected_restores()[15].1);
}

#[tokio::test]
async fn timestamps_resolve_to_the_newest_state_at_or_before_them() {
    // Every file's header timestamp set to 1000 s + 10 s per TXID of its max.
    let at = |txid: u64| 1_000_000 + txid as i64 * 10_000;
    let replica = Replica::memory(Layout::File);
    copy_reencoded(&fixture_replica(), &replica, |h| at(h.max_txid.get())).await;
    let dir = tempfile::tempdir().unwrap();
    let expected = expected_restores();
    for (ts, txid) in [
        (at(8), 8),
        (at(8) + 9_999, 8),
        (at(1), 1),
        (at(16) + 1, 16),
        (at(13) - 1, 12),
    ] {
        let out = dir.path().join(format!("{ts}.db"));
        let target = RestorePoint::Timestamp(jiff::Timestamp::from_millisecond(ts).unwrap());
        let s = restore_to(&replica, target, &out).await.unwrap();
        assert_eq!(s.txid.get(), txid, "timestamp {ts}");
        assert_eq!(sha256_file(&out), expected[txid as usize - 1].1);
    }
    let too_early = RestorePoint::Timestamp(jiff::Timestamp::from_millisecond(at(1) - 1).unwrap());
    let err = restore_to(&replica, too_early, &dir.path().join("early.db"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RestoreError::Plan(PlanError::TooEarly { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn the_output_is_not_replaced_without_force_and_sidecars_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app.db");
    std::fs::write(&out, b"precious").unwrap();
    let err = restore_to(&fixture_replica(), RestorePoint::Latest, &out)
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    std::fs::write(dir.path().join("app.db-wal"), b"stale wal").unwrap();
    let options = RestoreOptions {
        force: true,
        ..Default::default()
    };
    restore::restore(
        &fixture_replica(),
        RestorePoint::Latest,
        &out,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(sha256_file(&out), expected_restores()[15].1);
    assert!(
        !dir.path().join("app.db-wal").exists(),
        "a stale WAL would be replayed into the restore"
    );
    assert_eq!(leftovers(dir.path()), ["app.db"]);
}

/// Runs a restore expected to fail, checks nothing is left in the output directory, and
/// returns the error.
async fn failing(replica: &Replica, target: RestorePoint) -> RestoreError {
    let dir = tempfile::tempdir().unwrap();
    let err = restore_to(replica, target, &dir.path().join("out.db"))
        .await
        .unwrap_err();
    assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "after: {err}");
    err
}

#[tokio::test]
async fn a_missing_replica_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Replica::open(&ReplicaUrl::File {
        root: dir.path().join("nope"),
    })
    .unwrap_err();
    assert!(err.is_not_found());
    assert!(err.to_string().contains("no replica directory at"), "{err}");
}

#[tokio::test]
async fn an_empty_replica_says_so() {
    let err = failing(&Replica::memory(Layout::File), RestorePoint::Latest).await;
    assert!(matches!(err, RestoreError::Plan(PlanError::Empty)), "{err}");
}

#[tokio::test]
async fn a_gap_between_levels_names_where_the_chain_breaks() {
    let full = memory_fixture(Layout::File).await;
    let gapped = Replica::memory(Layout::File);
    for f in full.list_all().await.unwrap() {
        // Keep the first snapshot, L1 up to 5 and L0 from 7: TXID 6 exists nowhere.
        let keep = match f.level.get() {
            9 => f.range.max.get() == 1,
            1 => f.range.max.get() <= 5,
            0 => f.range.min.get() >= 7,
            _ => false,
        };
        if keep {
            gapped
                .write(f.level, f.range, full.read(&f).await.unwrap(), f.modified)
                .await
                .unwrap();
        }
    }
    let err = failing(&gapped, RestorePoint::Latest).await;
    assert!(
        matches!(err, RestoreError::Plan(PlanError::Gap { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("no file continues from TXID 0000000000000005 (the next file starts at 0000000000000007)"), "{err}");
    // Up to the gap still restores.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db");
    restore_to(&gapped, RestorePoint::Txid(Txid::new(5)), &out)
        .await
        .unwrap();
    assert_eq!(sha256_file(&out), expected_restores()[4].1);
}

#[tokio::test]
async fn a_txid_that_is_not_a_restore_point_names_the_nearest_ones() {
    let full = memory_fixture(Layout::File).await;
    let compacted = Replica::memory(Layout::File);
    for f in full
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.level.get() == 2)
    {
        compacted
            .write(f.level, f.range, full.read(&f).await.unwrap(), f.modified)
            .await
            .unwrap();
    }
    let err = failing(&compacted, RestorePoint::Txid(Txid::new(7))).await;
    let text = err.to_string();
    assert!(
        text.contains("TXID 0000000000000007 is not a restore point"),
        "{text}"
    );
    assert!(
        text.contains("below it is 0000000000000005") && text.contains("above is 000000000000000c"),
        "{text}"
    );
}

#[tokio::test]
async fn a_corrupt_file_without_an_alternative_fails_naming_it() {
    let full = memory_fixture(Layout::File).await;
    let only = Replica::memory(Layout::File);
    let snap = full
        .list(Level::SNAPSHOT, Txid::ZERO)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = full.read(&snap).await.unwrap().to_vec();
    bytes[5000] ^= 0x55;
    only.write(snap.level, snap.range, bytes.into(), snap.modified)
        .await
        .unwrap();
    let err = failing(&only, RestorePoint::Latest).await;
    assert!(matches!(err, RestoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("L9/0000000000000001-0000000000000010.ltx is corrupt: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_page_size_change_mid_plan_is_refused() {
    let full = memory_fixture(Layout::File).await;
    let mixed = Replica::memory(Layout::File);
    let first = full.list(Level::L0, Txid::ZERO).await.unwrap().remove(0);
    mixed
        .write(
            first.level,
            first.range,
            full.read(&first).await.unwrap(),
            first.modified,
        )
        .await
        .unwrap();
    // TXID 2 with 1024-byte pages.
    let mut h = ltx::Header::new(
        ltx::PageSize::new(1024).unwrap(),
        16,
        TxidRange::single(Txid::new(2)),
    );
    h.flags = ltx::HeaderFlags::NO_CHECKSUM;
    let mut enc = ltx::Encoder::new(Vec::new(), &h).unwrap();
    enc.encode_page(ltx::PageNum::ONE, &[0u8; 1024]).unwrap();
    let bytes = enc.finish(ltx::Checksum::ZERO).unwrap().writer;
    mixed
        .write(Level::L0, h.txid_range(), bytes.into(), first.modified)
        .await
        .unwrap();
    let err = failing(&mixed, RestorePoint::Latest).await;
    assert!(
        matches!(err, RestoreError::PageSizeMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("has page size 1024, the files before it have 4096"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_fast_and_says_where() {
    let url =
        ReplicaUrl::parse("s3://bucket/db?endpoint=http://127.0.0.1:9&region=us-east-1").unwrap();
    let started = std::time::Instant::now();
    let err = failing(&Replica::open(&url).unwrap(), RestorePoint::Latest).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(
        matches!(err, RestoreError::Storage(ref e) if e.kind() == strata::storage::ErrorKind::Unavailable),
        "{text}"
    );
    assert!(
        text.contains("LIST") && text.contains("127.0.0.1:9"),
        "{text}"
    );
}

/// The fixture in memory behind a fault-injecting wrapper.
async fn faulty_fixture() -> (Replica, strata::storage::faults::Faults) {
    let (replica, faults) = Replica::memory(Layout::File).with_faults();
    copy_raw(&fixture_replica(), &replica).await;
    (replica, faults)
}

async fn restore_ok(replica: &Replica, txid: u64) -> restore::RestoreSummary {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db");
    let s = restore_to(replica, RestorePoint::Txid(Txid::new(txid)), &out)
        .await
        .unwrap();
    assert_eq!(
        sha256_file(&out),
        expected_restores()[txid as usize - 1].1,
        "TXID {txid}"
    );
    assert_eq!(leftovers(dir.path()), ["db"]);
    s
}

#[tokio::test]
async fn a_file_deleted_by_retention_before_it_is_read_is_replanned_around() {
    use strata::storage::faults::Fault;
    let (replica, faults) = faulty_fixture().await;
    // The plan for TXID 10 is L2 1-5, L1 6-9, L0 10; retention takes L1 6-9.
    let plan = restore::plan(&replica, RestorePoint::Txid(Txid::new(10)))
        .await
        .unwrap();
    assert_eq!(
        plan.files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        [
            "L2/0000000000000001-0000000000000005.ltx",
            "L1/0000000000000006-0000000000000009.ltx",
            "L0/000000000000000a-000000000000000a.ltx"
        ]
    );
    faults.inject(
        "ltx/1/0000000000000006-0000000000000009",
        Fault::VanishOnGet,
        1,
    );
    let s = restore_ok(&replica, 10).await;
    assert_eq!(s.replans, 1);
    // It carried on from TXID 5 with L0 6..=10: nothing applied was fetched twice.
    assert_eq!(s.files, 1 + 5);
}

#[tokio::test]
async fn a_file_deleted_mid_read_makes_the_restore_start_over() {
    use strata::storage::faults::Fault;
    let (replica, faults) = faulty_fixture().await;
    // Plan for TXID 10: L2 1-5, L1 6-9, L0 10. Read in 4 KiB segments one at a time, L1 6-9
    // vanishes after its header, its tail and its first segment were read, so pages of it
    // are already in the output: only a fresh start is safe (L2 1-5, then L0 6..=10).
    faults.inject_after(
        "ltx/1/0000000000000006-0000000000000009",
        3,
        Fault::VanishOnGet,
        1,
    );
    let options = RestoreOptions {
        chunk_size: 4096,
        concurrency: Some(1),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db");
    let s = restore::restore(
        &replica,
        RestorePoint::Txid(Txid::new(10)),
        &out,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(s.replans, 1);
    assert_eq!(
        s.files,
        1 + 6,
        "L2 1-5 before the restart, then L2 1-5 and L0 6..=10"
    );
    assert_eq!(sha256_file(&out), expected_restores()[9].1);
}

#[tokio::test]
async fn a_corrupt_file_is_avoided_when_another_plan_exists() {
    use strata::storage::faults::Fault;
    let (replica, faults) = faulty_fixture().await;
    faults.inject(
        "ltx/9/0000000000000001-0000000000000010",
        Fault::CorruptGetAt(3000),
        u32::MAX,
    );
    let s = restore_ok(&replica, 16).await;
    assert_eq!(
        s.replans, 2,
        "read the snapshot again, then started over on snapshot 1-15 + L0 16"
    );
}

#[tokio::test]
async fn a_file_damaged_once_on_the_way_is_read_again_and_used() {
    use strata::storage::faults::Fault;
    let (replica, faults) = faulty_fixture().await;
    faults.inject(
        "ltx/9/0000000000000001-0000000000000010",
        Fault::CorruptGetAt(3000),
        1,
    );
    let s = restore_ok(&replica, 16).await;
    assert_eq!(s.replans, 1);
    assert_eq!(s.files, 1, "the snapshot alone, the second time");
}

/// The fixture in a new S3 bucket, and the same replica read through a proxy that cuts the
/// bodies it is told to.
async fn proxied_fixture() -> (Replica, CuttingProxy) {
    let bucket = new_bucket();
    let direct = Replica::create(&ReplicaUrl::parse(&s3_url_in(&bucket, "fixture")).unwrap())
        .unwrap()
        .with_layout(Layout::File);
    copy_raw(&fixture_replica(), &direct).await;
    let proxy = CuttingProxy::start(&s3_endpoint());
    let url = format!(
        "s3://{bucket}/fixture?endpoint={}&region=us-east-1&forcePathStyle=true",
        proxy.endpoint()
    );
    let proxied = Replica::create(&ReplicaUrl::parse(&url).unwrap()).unwrap();
    (proxied.with_layout(Layout::File), proxy)
}

/// The one retry layer: the network client resumes a body cut mid-transfer from where it
/// stopped, and nothing above it reads the file again.
#[tokio::test]
async fn a_body_broken_on_the_way_is_resumed_by_the_client() {
    let (replica, proxy) = proxied_fixture().await;
    let snapshot = "ltx/9/0000000000000001-0000000000000010";
    proxy.cut(snapshot, 1000, 2);
    let s = restore_ok(&replica, 16).await;
    assert_eq!(s.replans, 0);
    assert_eq!(proxy.gets(snapshot), 3, "one GET, cut twice, resumed twice");
}

#[tokio::test]
async fn restores_where_direct_writes_are_refused() {
    // tmpfs refuses O_DIRECT: the restore writes through the page cache instead.
    let shm = std::path::Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let out = dir.path().join("db");
    restore_to(&fixture_replica(), RestorePoint::Txid(Txid::new(9)), &out)
        .await
        .unwrap();
    assert_eq!(sha256_file(&out), expected_restores()[8].1);
}

#[tokio::test]
async fn restores_small_pages_that_direct_writes_cannot_take() {
    // 512-byte pages: runs are not 4 KiB aligned, so they are written through the page
    // cache while aligned ones go direct.
    let replica = Replica::memory(Layout::File);
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let ps = ltx::PageSize::new(512).unwrap();
    for (txid, pages) in [(1u64, 1..=20u32), (2, 3..=3), (3, 9..=17)] {
        let mut h = ltx::Header::new(ps, 20, TxidRange::single(Txid::new(txid)));
        h.flags = ltx::HeaderFlags::NO_CHECKSUM;
        let mut enc = ltx::Encoder::new(Vec::new(), &h).unwrap();
        expected.resize(20 * 512, 0);
        for p in pages {
            let data = vec![(p as u8).wrapping_mul(txid as u8 + 3); 512];
            expected[(p as usize - 1) * 512..p as usize * 512].copy_from_slice(&data);
            enc.encode_page(ltx::PageNum::new(p).unwrap(), &data)
                .unwrap();
        }
        let bytes = enc.finish(ltx::Checksum::ZERO).unwrap().writer;
        replica
            .write(
                Level::L0,
                h.txid_range(),
                bytes.into(),
                jiff::Timestamp::UNIX_EPOCH,
            )
            .await
            .unwrap();
    }
    let out = dir.path().join("db");
    restore_to(&replica, RestorePoint::Latest, &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), expected);
}

/// A restore from a remote store with `chunk_size` and `concurrency`, checked against
/// Litestream's restore of `txid`.
async fn restore_remote_ok(
    replica: &Replica,
    txid: u64,
    chunk_size: u64,
    concurrency: usize,
) -> Result<restore::RestoreSummary, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db");
    let options = RestoreOptions {
        chunk_size,
        concurrency: Some(concurrency),
        ..Default::default()
    };
    let s = restore::restore(
        replica,
        RestorePoint::Txid(Txid::new(txid)),
        &out,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .map_err(|e| e.to_string())?;
    if sha256_file(&out) != expected_restores()[txid as usize - 1].1 {
        return Err(format!("TXID {txid}: restored bytes differ"));
    }
    Ok(s)
}

#[tokio::test]
async fn a_remote_file_is_read_in_spans_of_several_segments() {
    // One page per segment: the snapshot (46 KiB, 64 pages) would take a GET per page.
    let (replica, _) = faulty_fixture().await;
    let s = restore_remote_ok(&replica, 1, 4096, 4).await.unwrap();
    let pages = s.db_size / 4096;
    assert!(
        s.requests.get < 2 + pages / 4,
        "{} GETs for {pages} one-page segments",
        s.requests.get
    );
}

/// Bodies cut at random offsets of random levels' files, read in spans of random size with
/// random concurrency: every restore resumes where its bodies broke and equals Litestream's.
/// `STRATA_RESTORE_SEEDS=N` runs more seeds; a failure names the seed that replays it.
#[tokio::test]
async fn span_reads_resume_bodies_broken_at_any_offset() {
    let seeds: u64 = std::env::var("STRATA_RESTORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let (replica, proxy) = proxied_fixture().await;
    for seed in 0..seeds {
        // xorshift64*: enough randomness for choosing cases, and the same on every machine.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: u64| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        };
        let txid = 1 + next(16);
        for _ in 0..3 {
            let level = ["ltx/0/", "ltx/1/", "ltx/2/", "ltx/9/"][next(4) as usize];
            proxy.cut(level, 1 + next(40_000), 2);
        }
        let chunk = 4096 * (1 + next(4));
        let concurrency = 1 + next(8) as usize;
        if let Err(e) = restore_remote_ok(&replica, txid, chunk, concurrency).await {
            panic!("seed {seed} (TXID {txid}, chunk {chunk}, concurrency {concurrency}): {e}");
        }
        proxy.clear();
    }
}
