//! One conformance suite for storage: every named check below runs against every backend
//! and every wrapper listed in `subjects` at the end, one line each. Then what only some
//! backends do (file times, uploads in parts, S3's StartAfter) and the fault wrapper.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};
use object_store::memory::InMemory;
use object_store::path::Path;
use strata::storage::faults::Fault;
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

/// A replica under test and what must live as long as it (its directory).
type Subject = (Replica, Option<tempfile::TempDir>);

/// Writes L0 files out of order: TXIDs 1, 2, 3-4, 5, 6-9, 10, two pages each.
async fn write_l0(replica: &Replica) {
    for (min, max) in [(5, 5), (1, 1), (3, 4), (2, 2), (10, 10), (6, 9)] {
        replica
            .write(Level::L0, range(min, max), ltx_file(min, max, 2), ts())
            .await
            .unwrap();
    }
}

fn txids(files: &[strata::storage::FileInfo]) -> Vec<(u64, u64)> {
    files
        .iter()
        .map(|f| (f.range.min.get(), f.range.max.get()))
        .collect()
}

/// The checks every backend and wrapper passes.
mod check {
    use super::*;

    pub async fn an_empty_replica_lists_nothing(replica: Replica) {
        assert!(replica.list_all().await.unwrap().is_empty());
        assert!(
            replica
                .list(Level::L0, Txid::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        let other = replica.with_layout(replica.layout().other());
        assert!(other.list_all().await.unwrap().is_empty());
    }

    pub async fn files_list_in_txid_order(replica: Replica) {
        write_l0(&replica).await;
        let l0 = replica.list(Level::L0, Txid::ZERO).await.unwrap();
        assert_eq!(
            txids(&l0),
            [(1, 1), (2, 2), (3, 4), (5, 5), (6, 9), (10, 10)]
        );
        let size = ltx_file(1, 1, 2).len() as u64;
        assert!(
            l0.iter().all(|f| f.level == Level::L0 && f.size == size),
            "{l0:?}"
        );
    }

    pub async fn a_listing_starts_at_a_txid(replica: Replica) {
        write_l0(&replica).await;
        let from5 = replica.list(Level::L0, Txid::new(5)).await.unwrap();
        assert_eq!(txids(&from5), [(5, 5), (6, 9), (10, 10)]);
        assert!(
            replica
                .list(Level::L0, Txid::new(11))
                .await
                .unwrap()
                .is_empty()
        );
        let l3 = Level::new(3).unwrap();
        assert!(replica.list(l3, Txid::ZERO).await.unwrap().is_empty());
    }

    pub async fn every_level_is_listed_at_once(replica: Replica) {
        write_l0(&replica).await;
        replica
            .write(Level::SNAPSHOT, range(1, 10), ltx_file(1, 10, 3), ts())
            .await
            .unwrap();
        let all = replica.list_all().await.unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(all[6].level, Level::SNAPSHOT, "ordered by level: {all:?}");
    }

    pub async fn a_name_is_created_once(replica: Replica) {
        write_l0(&replica).await;
        let err = replica
            .write(Level::L0, range(2, 2), ltx_file(2, 2, 5), ts())
            .await
            .unwrap_err();
        assert!(err.is_already_exists(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("PUT") && text.contains("0000000000000002-0000000000000002.ltx"),
            "{text}"
        );
        let f2 = &replica.list(Level::L0, Txid::new(2)).await.unwrap()[0];
        assert_eq!(replica.read(f2).await.unwrap(), ltx_file(2, 2, 2));
    }

    pub async fn ranges_headers_and_tails_read_back(replica: Replica) {
        write_l0(&replica).await;
        let f2 = &replica.list(Level::L0, Txid::new(2)).await.unwrap()[0];
        let whole = replica.read(f2).await.unwrap();
        assert_eq!(whole, ltx_file(2, 2, 2));
        assert_eq!(
            replica.read_range(f2, 7..31).await.unwrap(),
            whole.slice(7..31)
        );
        let h = replica.read_header(f2).await.unwrap();
        assert_eq!(h.txid_range(), range(2, 2));
        for whole_max in [0, u64::MAX] {
            let layout = replica.read_layout(f2, whole_max).await.unwrap().unwrap();
            assert_eq!(layout.tail.index.len(), 2);
            assert_eq!(layout.header.txid_range(), range(2, 2));
            assert_eq!(layout.whole.is_some(), whole_max > 0);
        }
        // In pieces from one read.
        let (mut pieces, end) = (Vec::new(), f2.size - 10);
        replica
            .read_pieces(f2, 10..end, &[50, 51, end], |p| {
                pieces.push(p);
                true
            })
            .await
            .unwrap();
        assert_eq!(
            pieces,
            [
                whole.slice(10..50),
                whole.slice(50..51),
                whole.slice(51..end as usize)
            ]
        );
    }

    pub async fn a_misnamed_file_is_refused(replica: Replica) {
        replica
            .write(Level::L0, range(2, 2), ltx_file(3, 3, 2), ts())
            .await
            .unwrap();
        let file = &replica.list(Level::L0, Txid::ZERO).await.unwrap()[0];
        for whole_max in [0, u64::MAX] {
            let err = replica
                .read_layout(file, whole_max)
                .await
                .unwrap()
                .unwrap_err();
            assert!(err.to_string().contains("the file name says"), "{err}");
        }
    }

    pub async fn a_range_reads_into_a_recycled_buffer(replica: Replica) {
        write_l0(&replica).await;
        let f2 = &replica.list(Level::L0, Txid::new(2)).await.unwrap()[0];
        let whole = replica.read(f2).await.unwrap();
        let buf = replica
            .read_range_into(f2, 20..f2.size - 5, vec![7u8; 1000])
            .await
            .unwrap();
        assert_eq!(buf, whole.slice(20..whole.len() - 5));
        let buf = replica.read_range_into(f2, 0..f2.size, buf).await.unwrap();
        assert_eq!(buf, whole);
    }

    pub async fn an_empty_object_reads_as_no_bytes(replica: Replica) {
        // An upload cut short by some other tool: no bytes, not a panic (an S3 body of no
        // chunks at all still delivers its one empty piece).
        let l3 = Level::new(3).unwrap();
        replica
            .write(l3, range(50, 50), Bytes::new(), ts())
            .await
            .unwrap();
        let empty = replica.list(l3, Txid::ZERO).await.unwrap().remove(0);
        assert_eq!(empty.size, 0);
        assert!(replica.read(&empty).await.unwrap().is_empty());
        assert!(replica.read_header(&empty).await.is_err());
        replica.delete(&[empty]).await.unwrap();
        assert!(replica.list_all().await.unwrap().is_empty());
    }

    pub async fn layouts_do_not_see_each_other_and_are_detected(replica: Replica) {
        write_l0(&replica).await;
        let other = replica.with_layout(replica.layout().other());
        assert!(
            other.list_all().await.unwrap().is_empty(),
            "layouts must not see each other"
        );
        let detected = other.detect_layout().await.unwrap();
        assert_eq!(detected.layout(), replica.layout());
        assert_eq!(detected.list_all().await.unwrap().len(), 6);
    }

    pub async fn a_missing_object_is_not_found(replica: Replica) {
        write_l0(&replica).await;
        let mut ghost = replica.list(Level::L0, Txid::ZERO).await.unwrap().remove(0);
        ghost.range = range(77, 77);
        let err = replica.read(&ghost).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().starts_with("GET "), "{err}");
        let err = replica
            .read_range_into(&ghost, 0..10, Vec::new())
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    pub async fn existence_is_one_request(replica: Replica) {
        write_l0(&replica).await;
        let before = replica.requests();
        assert!(replica.exists(Level::L0, range(3, 4)).await.unwrap());
        assert!(!replica.exists(Level::L0, range(3, 3)).await.unwrap());
        assert_eq!(replica.requests().get - before.get, 2);
    }

    pub async fn deletes_are_batched_and_idempotent(replica: Replica) {
        write_l0(&replica).await;
        let all = replica.list(Level::L0, Txid::ZERO).await.unwrap();
        replica.delete(&all[..3]).await.unwrap();
        replica.delete(&all[..3]).await.unwrap();
        let left = replica.list(Level::L0, Txid::ZERO).await.unwrap();
        assert_eq!(txids(&left), [(5, 5), (6, 9), (10, 10)]);
    }

    pub async fn a_file_is_written_from_disk_and_never_overwritten(replica: Replica) {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged.ltx");
        std::fs::write(&staged, ltx_file(40, 40, 3)).unwrap();
        let info = replica
            .write_file(Level::L0, range(40, 40), &staged, ts())
            .await
            .unwrap();
        assert_eq!(info.size, ltx_file(40, 40, 3).len() as u64);
        let listed = replica.list(Level::L0, Txid::new(40)).await.unwrap();
        assert_eq!(replica.read(&listed[0]).await.unwrap(), ltx_file(40, 40, 3));
        // A linked staged file shares its inode with the replica's: replace it, never edit it.
        std::fs::remove_file(&staged).unwrap();
        std::fs::write(&staged, ltx_file(40, 40, 1)).unwrap();
        let err = replica
            .write_file(Level::L0, range(40, 40), &staged, ts())
            .await
            .unwrap_err();
        assert!(err.is_already_exists(), "{err}");
        assert_eq!(
            replica.read(&listed[0]).await.unwrap(),
            ltx_file(40, 40, 3),
            "unchanged"
        );
        // A staged file that is gone: the error names it, and it is no missing object.
        let err = replica
            .write_file(Level::L0, range(41, 41), &dir.path().join("gone.ltx"), ts())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("gone.ltx"), "{err}");
        assert!(!err.is_not_found(), "{err}");
    }

    pub async fn requests_are_counted(replica: Replica) {
        write_l0(&replica).await;
        let all = replica.list_all().await.unwrap();
        replica.read(&all[0]).await.unwrap();
        replica
            .read_range_into(&all[1], 0..10, Vec::new())
            .await
            .unwrap();
        replica.delete(&all[..2]).await.unwrap();
        let counts = replica.requests();
        assert_eq!(
            (counts.put, counts.list, counts.get, counts.delete),
            (6, 1, 2, 2),
            "{counts}"
        );
        assert_eq!(counts.listed, 6, "{counts}");
        assert_eq!(counts.get_bytes, all[0].size + 10, "{counts}");
    }
}

/// Runs every check against the replicas `$make` (an async block giving a [`Subject`])
/// makes, one fresh replica per check.
macro_rules! conformance {
    ($subject:ident, $make:expr) => {
        mod $subject {
            use super::*;
            checks!($make;
                an_empty_replica_lists_nothing,
                files_list_in_txid_order,
                a_listing_starts_at_a_txid,
                every_level_is_listed_at_once,
                a_name_is_created_once,
                ranges_headers_and_tails_read_back,
                a_misnamed_file_is_refused,
                a_range_reads_into_a_recycled_buffer,
                an_empty_object_reads_as_no_bytes,
                layouts_do_not_see_each_other_and_are_detected,
                a_missing_object_is_not_found,
                existence_is_one_request,
                deletes_are_batched_and_idempotent,
                a_file_is_written_from_disk_and_never_overwritten,
                requests_are_counted
            );
        }
    };
}

macro_rules! checks {
    ($make:expr; $($check:ident),*) => {$(
        #[tokio::test]
        async fn $check() {
            let (replica, _dir): Subject = $make.await;
            check::$check(replica).await;
        }
    )*};
}

fn directory() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let url = ReplicaUrl::File {
        root: dir.path().join("replica"),
    };
    (Replica::create(&url).unwrap(), Some(dir))
}

fn s3() -> Subject {
    let url = ReplicaUrl::parse(&s3_url("some/prefix")).unwrap();
    (Replica::create(&url).unwrap(), None)
}

fn faulty((replica, dir): Subject) -> Subject {
    (replica.with_faults().0, dir)
}

/// The backends and wrappers: one line each.
mod subjects {
    use super::*;

    conformance!(memory, async { (Replica::memory(Layout::S3), None) });
    conformance!(memory_in_file_layout, async {
        (Replica::memory(Layout::File), None)
    });
    conformance!(directory, async { super::directory() });
    conformance!(s3, async { super::s3() });
    #[cfg(feature = "azure")]
    conformance!(azure, async {
        let url = ReplicaUrl::parse(&common::azure_url("conformance")).unwrap();
        (Replica::create(&url).unwrap(), None)
    });
    conformance!(faults_over_memory, async {
        faulty((Replica::memory(Layout::S3), None))
    });
    conformance!(faults_over_directory, async { faulty(super::directory()) });
}

#[tokio::test]
async fn a_directory_keeps_litestreams_layout_and_file_times() {
    let (replica, dir) = directory();
    replica
        .write(Level::SNAPSHOT, range(1, 10), ltx_file(1, 10, 3), ts())
        .await
        .unwrap();
    let meta = std::fs::metadata(
        dir.unwrap()
            .path()
            .join("replica/ltx/9/0000000000000001-000000000000000a.ltx"),
    )
    .unwrap();
    assert_eq!(
        jiff::Timestamp::try_from(meta.modified().unwrap()).unwrap(),
        ts()
    );
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

/// `forcePathStyle=false` (Litestream's `force-path-style: false`) with an endpoint that is
/// an IP address: requests go path-style, as AWS's SDKs fall back to, and name the bucket
/// (they once left it out and wrote into a bucket named by the prefix).
#[tokio::test]
async fn virtual_hosted_style_to_an_ip_endpoint_goes_path_style() {
    let url = s3_url("hosted").replace("forcePathStyle=true", "forcePathStyle=false");
    let replica = Replica::create(&ReplicaUrl::parse(&url).unwrap()).unwrap();
    write_l0(&replica).await;
    let listed = replica.list(Level::L0, Txid::ZERO).await.unwrap();
    assert_eq!(listed.len(), 6);
    let path_style = Replica::open(
        &ReplicaUrl::parse(&s3_url_in(
            url.strip_prefix("s3://")
                .unwrap()
                .split('/')
                .next()
                .unwrap(),
            "hosted",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        path_style.list(Level::L0, Txid::ZERO).await.unwrap().len(),
        6
    );
}

/// Strata does not retry a read on top of the network client (which resumes a broken body
/// itself, see `restore::a_body_broken_on_the_way_is_resumed_by_the_client`): a body that
/// breaks here is an error, never fewer bytes, and one request.
#[tokio::test]
async fn a_broken_body_is_an_error_and_one_request() {
    let (replica, faults) = Replica::memory(Layout::File).with_faults();
    let bytes = ltx_file(1, 1, 40);
    replica
        .write(Level::L0, range(1, 1), bytes.clone(), ts())
        .await
        .unwrap();
    let file = replica.list(Level::L0, Txid::ZERO).await.unwrap().remove(0);
    faults.inject("0000000000000001", Fault::BreakGetAfter(100), 1);
    let before = replica.requests();
    let err = replica.read(&file).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(replica.requests().get - before.get, 1);
    assert_eq!(
        replica.read(&file).await.unwrap(),
        bytes,
        "the next read is whole"
    );
}
