//! What the engine's and the VFS's tests share (feature `test-support`, never in a release
//! build): the repository's test data, the test S3 server, a plain restore to compare
//! against, and the seeds of the campaigns.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::restore::{NoProgress, RestoreError, RestoreOptions, RestorePoint, RestoreSummary};
use crate::storage::Replica;

/// A loopback TCP port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The repository's `testdata/` directory, joined with `rel`.
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
}

/// The Litestream 0.5.17 replica fixture's directory (TXIDs 1 to 16).
pub fn fixture_dir() -> PathBuf {
    testdata("litestream-0.5.17/replica")
}

/// Copies a directory tree, keeping file times (a replica's LTX timestamps).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let modified = entry.metadata().unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(&target)
                .and_then(|f| f.set_modified(modified))
                .unwrap();
        }
    }
}

/// Restores `replica` at `point` into `out` with the default options.
pub async fn restore_to(
    replica: &Replica,
    point: RestorePoint,
    out: &Path,
) -> Result<RestoreSummary, RestoreError> {
    crate::restore::restore(
        replica,
        point,
        out,
        &RestoreOptions::default(),
        Arc::new(NoProgress),
    )
    .await
}

/// The S3-compatible server the test command started (moto_server on loopback).
pub fn s3_endpoint() -> String {
    std::env::var("STRATA_TEST_S3_ENDPOINT").expect(
        "STRATA_TEST_S3_ENDPOINT is not set: run the tests with scripts/test, which starts \
         moto_server on loopback and sets it",
    )
}

/// A new, empty bucket on the test S3 server.
pub fn new_bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "strata-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let response = s3_request("PUT", &format!("/{name}"));
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "creating bucket {name}: {response}"
    );
    name
}

/// Every key in a bucket of the test S3 server.
pub fn bucket_keys(bucket: &str) -> Vec<String> {
    let response = s3_request("GET", &format!("/{bucket}?list-type=2"));
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "listing {bucket}: {response}"
    );
    response
        .split("<Key>")
        .skip(1)
        .map(|s| s.split("</Key>").next().unwrap().to_owned())
        .collect()
}

/// The URL of a prefix in a new bucket, in Litestream's form.
pub fn s3_url(prefix: &str) -> String {
    s3_url_in(&new_bucket(), prefix)
}

/// The URL of a prefix in an existing bucket.
pub fn s3_url_in(bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1&forcePathStyle=true",
        s3_endpoint()
    )
}

/// One unsigned request to the test S3 server (moto takes them); the whole response.
fn s3_request(method: &str, target: &str) -> String {
    let endpoint = s3_endpoint();
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// The seeds of a campaign: `STRATA_CAMPAIGN_SEED` replays one; otherwise
/// `STRATA_CAMPAIGN_SEEDS` (default 1) new ones from the clock. A failure prints its seed.
pub fn campaign_seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("STRATA_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("STRATA_CAMPAIGN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = jiff::Timestamp::now().as_second() as u64;
    (0..n)
        .map(|i| base.wrapping_mul(2_654_435_761).wrapping_add(i))
        .collect()
}
