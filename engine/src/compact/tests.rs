//! Passes of the compactor and its runner over in-memory replicas, under a paused clock.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};

use super::*;
use super::{LevelIndex, SharedIndex};
use crate::storage::Replica;

fn at(s: &str) -> Timestamp {
    format!("2026-12-01T{s}Z").parse().unwrap()
}

/// A one-page file for `min..=max` written at `time`.
async fn put(replica: &Replica, level: u8, min: u64, max: u64, time: &str) {
    let range = TxidRange::new(Txid::new(min), Txid::new(max));
    let mut header = Header::new(PageSize::new(512).unwrap(), 1, range);
    header.flags = HeaderFlags::NO_CHECKSUM;
    header.timestamp = at(time).as_millisecond();
    let mut enc = Encoder::new(Vec::new(), &header).unwrap();
    enc.encode_page(PageNum::ONE, &[max as u8; 512]).unwrap();
    let bytes = enc.finish(Checksum::ZERO).unwrap().writer;
    let level = Level::new(level).unwrap();
    replica
        .write(level, range, bytes.into(), at(time))
        .await
        .unwrap();
}

fn compacted(p: &PassReport) -> Option<String> {
    match &p.outcome {
        Ok(Outcome::Compacted { file, .. }) => Some(file.range.to_string()),
        _ => None,
    }
}

/// Drives the monitor through a few minutes of virtual time: the start-up pass, each
/// level at its own boundaries, nothing to compact, the first compaction into an empty
/// level seeded from the snapshot, and a pass that comes too early.
#[tokio::test(start_paused = true)]
async fn the_schedule_under_a_paused_clock() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::storage::ReplicaUrl::parse(dir.path().to_str().unwrap()).unwrap();
    let replica = Replica::create(&url).unwrap();
    put(&replica, 9, 1, 3, "10:00:00").await;
    for t in 1..=3 {
        put(&replica, 0, t, t, "10:00:00").await;
    }
    put(&replica, 0, 4, 4, "10:07:00").await;
    put(&replica, 0, 5, 5, "10:07:20").await;
    let options = CompactionOptions {
        levels: vec![Duration::from_secs(30), Duration::from_secs(300)],
        snapshot_interval: Duration::from_secs(3600),
        retention: RetentionOptions {
            enabled: false,
            ..RetentionOptions::default()
        },
        ..CompactionOptions::default()
    };
    let index = SharedIndex::new(LevelIndex::from_files(
        replica.list_all().await.unwrap(),
        at("10:07:43"),
    ));
    let scratch = dir.path().join("scratch");
    let compactor = Compactor::new(replica.clone(), index.clone(), options.clone(), scratch);
    let start = tokio::time::Instant::now();
    let monitor = Runner::start(compactor, Clock::tokio(at("10:07:43")));
    let (l1, l2) = (Level::new(1).unwrap(), Level::new(2).unwrap());
    let wait_until = |t: &str| {
        let offset = Duration::try_from(at(t).duration_since(at("10:07:43"))).unwrap();
        tokio::time::sleep_until(start + offset)
    };

    // Start-up: every level once. L1 starts from the snapshot (4-5, not 1-5); L2 has
    // one L1 file to take, which it leaves where it is; the snapshot level merges the
    // snapshot with L1.
    wait_until("10:07:44").await;
    let p = monitor.passes();
    assert_eq!(
        p.iter().map(|p| p.level).collect::<Vec<_>>(),
        vec![l1, l2, Level::SNAPSHOT]
    );
    assert!(p.iter().all(|p| p.at == at("10:07:43")));
    let made: Vec<_> = p.iter().map(compacted).collect();
    assert_eq!(
        made,
        vec![
            Some("0000000000000004-0000000000000005".to_owned()),
            None,
            Some("0000000000000001-0000000000000005".to_owned()),
        ]
    );
    assert_eq!(p[1].outcome, Ok(Outcome::Nothing));

    // Two new L0 files; L1 takes them at its next boundary, then finds nothing.
    for t in [6, 7] {
        put(&replica, 0, t, t, "10:07:50").await;
        let file = replica.list(Level::L0, Txid::new(t)).await.unwrap()[0].clone();
        index.lock().insert(file, at("10:07:50"));
    }
    wait_until("10:08:31").await;
    let p = monitor.passes();
    assert_eq!(p.len(), 5, "{p:?}");
    assert_eq!((p[3].level, p[3].at), (l1, at("10:08:00")));
    assert_eq!(
        compacted(&p[3]).as_deref(),
        Some("0000000000000006-0000000000000007")
    );
    assert_eq!(
        (p[4].level, p[4].at, &p[4].outcome),
        (l1, at("10:08:30"), &Ok(Outcome::Nothing))
    );

    // 8 and 9 arrive after the 10:09:30 pass; at 10:10:00 L1 runs first, then L2
    // merges from the snapshot on.
    wait_until("10:09:31").await;
    for t in [8, 9] {
        put(&replica, 0, t, t, "10:09:40").await;
        let file = replica.list(Level::L0, Txid::new(t)).await.unwrap()[0].clone();
        index.lock().insert(file, at("10:09:40"));
    }
    wait_until("10:10:01").await;
    let p = monitor.passes();
    let at_ten: Vec<_> = p.iter().filter(|p| p.at == at("10:10:00")).collect();
    assert_eq!(
        at_ten.iter().map(|p| p.level).collect::<Vec<_>>(),
        vec![l1, l2]
    );
    let l1_at_950 = p.iter().find(|p| p.at == at("10:09:30") && p.level == l1);
    assert_eq!(
        l1_at_950.and_then(compacted),
        None,
        "9-9 was not there yet at 10:09:30"
    );
    assert_eq!(
        compacted(at_ten[0]).as_deref(),
        Some("0000000000000008-0000000000000009")
    );
    assert_eq!(
        compacted(at_ten[1]).as_deref(),
        Some("0000000000000006-0000000000000009")
    );
    monitor.stop().await;

    // A restart within the window of a file already written: too early.
    let again = Compactor::new(replica.clone(), index, options, dir.path().join("s2"));
    assert_eq!(
        again.run_level(l1, at("10:09:59")).await.unwrap(),
        Outcome::TooEarly
    );
    assert_eq!(
        again.run_level(l1, at("10:10:10")).await.unwrap(),
        Outcome::Nothing
    );
}

/// A corrupt snapshot is named, left out, and never becomes the floor that retention
/// deletes the alternatives by; the next snapshot is built around it.
#[tokio::test]
async fn a_corrupt_snapshot_is_left_out_not_built_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::storage::ReplicaUrl::parse(dir.path().to_str().unwrap()).unwrap();
    let replica = Replica::create(&url).unwrap();
    put(&replica, 9, 1, 3, "09:00:00").await;
    put(&replica, 1, 4, 5, "09:30:00").await;
    put(&replica, 9, 1, 5, "10:00:00").await;
    put(&replica, 0, 6, 6, "10:30:00").await;
    put(&replica, 0, 7, 7, "10:30:01").await;
    let bad = dir
        .path()
        .join("ltx/9/0000000000000001-0000000000000005.ltx");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[ltx::HEADER_SIZE + 10] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&bad).unwrap();
    f.set_modified(at("10:00:00").into()).unwrap();
    let options = CompactionOptions {
        levels: vec![Duration::from_secs(30)],
        snapshot_interval: Duration::from_secs(3600),
        retention: RetentionOptions {
            enabled: true,
            l0: Duration::ZERO,
            snapshots: Duration::from_secs(1),
            grace: Duration::ZERO,
        },
        ..CompactionOptions::default()
    };
    let files = replica.list_all().await.unwrap();
    let fresh = || SharedIndex::new(LevelIndex::from_files(files.clone(), at("09:00:00")));
    let left = |l: u8| {
        let replica = replica.clone();
        async move {
            replica
                .list(Level::new(l).unwrap(), Txid::ZERO)
                .await
                .unwrap()
                .len()
        }
    };
    // Retention before any merge read the corrupt snapshot: it reads through what the
    // newest state would restore from before deleting on its strength.
    let first = Compactor::new(
        replica.clone(),
        fresh(),
        options.clone(),
        dir.path().join("s"),
    );
    first.run_retention(at("11:00:00")).await.unwrap();
    assert_eq!(
        (left(9).await, left(1).await),
        (2, 1),
        "retention trusted an unread snapshot"
    );
    let c = Compactor::new(replica.clone(), fresh(), options, dir.path().join("s"));
    // The snapshot pass finds it, names it, leaves it out and builds around it at once:
    // the older snapshot, L1 and L0.
    let made = c.run_level(Level::SNAPSHOT, at("11:00:00")).await.unwrap();
    assert!(
        matches!(&made, Outcome::Compacted { file, inputs: 4, .. } if file.range.max == Txid::new(7)),
        "{made:?}"
    );
    let corrupt = files
        .iter()
        .find(|f| f.range.max == Txid::new(5) && f.level == Level::SNAPSHOT);
    assert!(c.index.lock().is_suspect(corrupt.unwrap()));
    c.run_retention(at("11:00:00")).await.unwrap();
    assert!(
        left(9).await >= 2 && left(1).await == 1,
        "retention built on the corrupt snapshot"
    );
    let out = dir.path().join("restored.db");
    crate::restore::restore(
        &replica,
        crate::restore::RestorePoint::Latest,
        &out,
        &crate::restore::RestoreOptions::default(),
        Arc::new(crate::restore::NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 512]);
}
