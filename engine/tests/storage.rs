//! One conformance suite for the replica client, run against every backend: memory, a
//! local directory, and S3 (moto_server on loopback).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};
use object_store::memory::InMemory;
use object_store::path::Path;
use strata::storage::faults::{Fault, FaultStore};
use strata::storage::{ErrorKind, Layout, Level, Replica, ReplicaUrl, UploadLimits};

fn ts() -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(1_700_000_000_000).unwrap()
}

/// A small valid LTX file covering `min..=max` with `pages` pages.
fn ltx_file(min: u64, max: u64, pages: u32) -> Bytes {
    let mut h = Header::new(
        PageSize::new(512).unwrap(),
        pages.max(1),
        TxidRange::new(Txid::new(min), Txid::new(max)),
    );
    h.flags = HeaderFlags::NO_CHECKSUM;
    h.timestamp = 1_700_000_000_000 + max as i64;
    let mut enc = Encoder::new(Vec::new(), &h).unwrap();
    for p in 1..=pages {
        enc.encode_page(PageNum::new(p).unwrap(), &[p as u8; 512])
            .unwrap();
    }
    enc.finish(Checksum::ZERO).unwrap().writer.into()
}

fn range(min: u64, max: u64) -> TxidRange {
    TxidRange::new(Txid::new(min), Txid::new(max))
}

async fn conformance(replica: Replica) {
    let name = replica.name().to_owned();
    // Empty.
    assert!(replica.list_all().await.unwrap().is_empty(), "{name}");

    // Written out of order, listed in TXID order.
    for (min, max) in [(5, 5), (1, 1), (3, 4), (2, 2), (10, 10), (6, 9)] {
        replica
            .write(Level::L0, range(min, max), ltx_file(min, max, 2), ts())
            .await
            .unwrap();
    }
    let l0 = replica.list(Level::L0, Txid::ZERO).await.unwrap();
    let got: Vec<_> = l0
        .iter()
        .map(|f| (f.range.min.get(), f.range.max.get()))
        .collect();
    assert_eq!(
        got,
        [(1, 1), (2, 2), (3, 4), (5, 5), (6, 9), (10, 10)],
        "{name}"
    );
    assert!(
        l0.iter()
            .all(|f| f.level == Level::L0 && f.size == ltx_file(1, 1, 2).len() as u64)
    );

    // Start-after listing: files whose min TXID is at least `from`.
    let from5: Vec<_> = replica
        .list(Level::L0, Txid::new(5))
        .await
        .unwrap()
        .iter()
        .map(|f| f.range.min.get())
        .collect();
    assert_eq!(from5, [5, 6, 10], "{name}");
    assert!(
        replica
            .list(Level::L0, Txid::new(11))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        replica
            .list(Level::new(3).unwrap(), Txid::ZERO)
            .await
            .unwrap()
            .is_empty()
    );

    // Conditional create: a second write of the same name fails and changes nothing.
    let err = replica
        .write(Level::L0, range(2, 2), ltx_file(2, 2, 5), ts())
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{name}: {err}");
    assert!(
        err.to_string().contains("PUT")
            && err
                .to_string()
                .contains("0000000000000002-0000000000000002.ltx"),
        "{err}"
    );
    let f2 = &replica.list(Level::L0, Txid::new(2)).await.unwrap()[0];
    assert_eq!(replica.read(f2).await.unwrap(), ltx_file(2, 2, 2));

    // Ranged reads, header and tail.
    let whole = replica.read(f2).await.unwrap();
    assert_eq!(
        replica.read_range(f2, 7..31).await.unwrap(),
        whole.slice(7..31)
    );
    let h = replica.read_header(f2).await.unwrap();
    assert_eq!(h.txid_range(), range(2, 2));
    let tail = replica.read_tail(f2).await.unwrap();
    assert_eq!(tail.index.len(), 2);

    // An empty object (an upload cut short by some other tool) reads as no bytes, not a
    // panic: an S3 body of no chunks at all still delivers its one empty piece.
    let l3 = Level::new(3).unwrap();
    replica
        .write(l3, range(50, 50), Bytes::new(), ts())
        .await
        .unwrap();
    let empty = replica.list(l3, Txid::ZERO).await.unwrap().remove(0);
    assert_eq!(empty.size, 0, "{name}");
    assert!(replica.read(&empty).await.unwrap().is_empty(), "{name}");
    assert!(replica.read_header(&empty).await.is_err(), "{name}");
    replica.delete(&[empty]).await.unwrap();

    // Snapshot level and layouts.
    replica
        .write(Level::SNAPSHOT, range(1, 10), ltx_file(1, 10, 3), ts())
        .await
        .unwrap();
    assert_eq!(replica.list_all().await.unwrap().len(), 7);
    let other = replica.with_layout(replica.layout().other());
    assert!(
        other.list_all().await.unwrap().is_empty(),
        "{name}: layouts must not see each other"
    );
    let detected = other.detect_layout().await.unwrap();
    assert_eq!(detected.layout(), replica.layout(), "{name}");

    // A missing object is NotFound, naming the operation and path.
    let mut ghost = f2.clone();
    ghost.range = range(77, 77);
    let err = replica.read(&ghost).await.unwrap_err();
    assert!(err.is_not_found(), "{name}: {err}");
    assert!(err.to_string().starts_with("GET "), "{err}");

    // Batched deletes; deleting what is gone is fine.
    let all = replica.list(Level::L0, Txid::ZERO).await.unwrap();
    replica.delete(&all[..3]).await.unwrap();
    replica.delete(&all[..3]).await.unwrap();
    assert_eq!(replica.list(Level::L0, Txid::ZERO).await.unwrap().len(), 3);

    // Writing from a file: linked or copied locally, one PUT elsewhere; never overwriting.
    let dir = tempfile::tempdir().unwrap();
    let staged = dir.path().join("staged.ltx");
    std::fs::write(&staged, ltx_file(40, 40, 3)).unwrap();
    let info = replica
        .write_file(Level::L0, range(40, 40), &staged, ts())
        .await
        .unwrap();
    assert_eq!(info.size, ltx_file(40, 40, 3).len() as u64);
    let listed = replica.list(Level::L0, Txid::new(40)).await.unwrap();
    assert_eq!(
        replica.read(&listed[0]).await.unwrap(),
        ltx_file(40, 40, 3),
        "{name}"
    );
    // A linked staged file shares its inode with the replica's: replace it, never edit it.
    std::fs::remove_file(&staged).unwrap();
    std::fs::write(&staged, ltx_file(40, 40, 1)).unwrap();
    let err = replica
        .write_file(Level::L0, range(40, 40), &staged, ts())
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{name}: {err}");
    assert_eq!(
        replica.read(&listed[0]).await.unwrap(),
        ltx_file(40, 40, 3),
        "{name}: unchanged"
    );

    let counts = replica.requests();
    assert!(
        counts.put >= 8 && counts.list >= 10 && counts.get >= 5 && counts.delete >= 3,
        "{name}: {counts}"
    );
}

#[tokio::test]
async fn memory_backend() {
    conformance(Replica::memory(Layout::File)).await;
    conformance(Replica::memory(Layout::S3)).await;
}

#[tokio::test]
async fn directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::create(&ReplicaUrl::File {
        root: dir.path().join("replica"),
    })
    .unwrap();
    conformance(replica).await;
    // Litestream's file layout on disk, and file times set to the LTX timestamp.
    let meta = std::fs::metadata(
        dir.path()
            .join("replica/ltx/9/0000000000000001-000000000000000a.ltx"),
    )
    .unwrap();
    assert_eq!(
        jiff::Timestamp::try_from(meta.modified().unwrap()).unwrap(),
        ts()
    );
}

#[tokio::test]
async fn s3_backend() {
    let url = ReplicaUrl::parse(&s3_url("some/prefix")).unwrap();
    conformance(Replica::create(&url).unwrap()).await;
}

#[cfg(feature = "azure")]
#[tokio::test]
async fn azure_backend() {
    let url = ReplicaUrl::parse(&common::azure_url("conformance")).unwrap();
    conformance(Replica::create(&url).unwrap()).await;
}

/// Files above the single-PUT limit go in parts (here 5 MiB, S3's smallest, two in
/// flight), still land only if the name is free, and leave no scratch object behind.
async fn large_files_go_in_parts(replica: Replica, all_keys: impl Fn() -> Vec<String>) {
    let replica = replica.with_upload_limits(UploadLimits {
        single_put_max: 5 << 20,
        part_size: 5 << 20,
        parts_in_flight: 2,
    });
    let name = replica.name().to_owned();
    let dir = tempfile::tempdir().unwrap();
    // 12 MiB and a bit: two full parts and a short last one; bytes that differ per part.
    let big: Vec<u8> = (0..(12u32 << 20) + 4321)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let staged = dir.path().join("big.ltx");
    std::fs::write(&staged, &big).unwrap();

    let info = replica
        .write_file(Level::L0, range(7, 7), &staged, ts())
        .await
        .unwrap();
    assert_eq!(info.size, big.len() as u64, "{name}");
    let listed = replica.list_all().await.unwrap();
    assert_eq!(listed.len(), 1, "{name}: {listed:?}");
    assert_eq!(listed[0].size, big.len() as u64, "{name}");
    assert!(
        replica.read(&listed[0]).await.unwrap() == big,
        "{name}: bytes differ"
    );

    // The name is taken: refused, the first file unchanged.
    let other: Vec<u8> = big.iter().map(|b| !b).collect();
    std::fs::write(&staged, &other).unwrap();
    let err = replica
        .write_file(Level::L0, range(7, 7), &staged, ts())
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{name}: {err}");
    assert!(
        replica.read(&listed[0]).await.unwrap() == big,
        "{name}: overwritten"
    );

    // Scratch objects are gone, after the success and after the refusal.
    let keys = all_keys();
    assert_eq!(keys.len(), 1, "{name}: {keys:?}");
    assert!(
        keys[0].ends_with("0000000000000007-0000000000000007.ltx"),
        "{keys:?}"
    );

    // A staged file that vanished: the error names it.
    let missing = dir.path().join("missing.ltx");
    let err = replica
        .write_file(Level::L0, range(8, 8), &missing, ts())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.ltx"), "{name}: {err}");
}

#[tokio::test]
async fn large_files_go_in_parts_in_memory() {
    let store = Arc::new(InMemory::new());
    let replica = Replica::from_store(store.clone(), "memory://", Path::default(), Layout::S3);
    large_files_go_in_parts(replica, || {
        futures::executor::block_on(async {
            use futures::TryStreamExt;
            use object_store::ObjectStore;
            let all: Vec<_> = store.list(None).try_collect().await.unwrap();
            all.into_iter().map(|m| m.location.to_string()).collect()
        })
    })
    .await;
}

#[tokio::test]
async fn large_files_go_in_parts_on_s3() {
    let bucket = new_bucket();
    let url = ReplicaUrl::parse(&s3_url_in(&bucket, "big")).unwrap();
    large_files_go_in_parts(Replica::create(&url).unwrap(), || bucket_keys(&bucket)).await;
}

#[tokio::test]
async fn listing_starts_after_the_last_seen_key_on_s3() {
    let url = ReplicaUrl::parse(&s3_url("many")).unwrap();
    let replica = Replica::create(&url).unwrap();
    for t in 1..=30 {
        replica
            .write(Level::L0, range(t, t), ltx_file(t, t, 1), ts())
            .await
            .unwrap();
    }
    let before = replica.requests();
    let tail = replica.list(Level::L0, Txid::new(29)).await.unwrap();
    assert_eq!(tail.len(), 2);
    let after = replica.requests();
    assert_eq!(after.list - before.list, 1);
    // Only the keys after the offset came back, not all 30.
    assert_eq!(after.listed - before.listed, 2);
}

#[tokio::test]
async fn a_read_that_breaks_mid_body_resumes_where_it_stopped() {
    let (store, faults) = FaultStore::new(InMemory::new());
    let replica = Replica::from_store(Arc::new(store), "faulty", Path::default(), Layout::File);
    let bytes = ltx_file(1, 1, 40);
    replica
        .write(Level::L0, range(1, 1), bytes.clone(), ts())
        .await
        .unwrap();
    let file = replica.list(Level::L0, Txid::ZERO).await.unwrap().remove(0);
    faults.inject("0000000000000001", Fault::BreakGetAfter(100), 2);
    let before = replica.requests();
    assert_eq!(replica.read(&file).await.unwrap(), bytes);
    assert_eq!(
        replica.requests().get - before.get,
        3,
        "two broken reads, then the rest"
    );

    // A persistent failure gives up with the error, after a bounded number of attempts.
    faults.inject("", Fault::FailGet, u32::MAX);
    let err = replica.read(&file).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.to_string().contains("injected fault"), "{err}");
}
