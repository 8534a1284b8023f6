//! Litestream 0.5.17 restores replicas that strata wrote, to the same bytes.

mod common;

use common::*;
use strata::storage::{Replica, ReplicaUrl};

/// Runs `litestream restore` and returns the SHA-256 of what it wrote.
fn litestream_restore(url: &str, txid: Option<u64>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.db");
    let mut cmd = litestream();
    cmd.arg("restore").arg("-o").arg(&out);
    if let Some(t) = txid {
        cmd.arg("-txid").arg(format!("{t:016x}"));
    }
    let result = cmd
        .arg(url)
        .output()
        .expect("litestream 0.5.17 must be on PATH (scripts/test installs it)");
    assert!(
        result.status.success(),
        "litestream restore {url} failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    sha256_file(&out)
}

async fn check(url: &str) {
    let expected = expected_restores();
    assert_eq!(litestream_restore(url, None), expected[15].1, "latest");
    for txid in [1u64, 5, 8, 13] {
        assert_eq!(
            litestream_restore(url, Some(txid)),
            expected[txid as usize - 1].1,
            "TXID {txid}"
        );
    }
}

#[tokio::test]
async fn litestream_restores_a_directory_replica_strata_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("replica");
    let replica = Replica::create(&ReplicaUrl::File { root: root.clone() }).unwrap();
    copy_reencoded(&fixture_replica(), &replica, |h| h.timestamp).await;
    // Every file really is strata's encoding, not a copy of Litestream's bytes.
    let ours = std::fs::read(root.join("ltx/0/0000000000000002-0000000000000002.ltx")).unwrap();
    let theirs = std::fs::read(testdata(
        "litestream-0.5.17/replica/ltx/0/0000000000000002-0000000000000002.ltx",
    ))
    .unwrap();
    assert_ne!(ours, theirs);
    check(&format!("file://{}", root.display())).await;
}

#[tokio::test]
async fn litestream_restores_an_s3_replica_strata_wrote() {
    let url = s3_url("strata-wrote");
    let replica = Replica::create(&ReplicaUrl::parse(&url).unwrap()).unwrap();
    copy_reencoded(&fixture_replica(), &replica, |h| h.timestamp).await;
    check(&url).await;
}
