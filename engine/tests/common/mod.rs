//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]
// Each test binary uses its own share of these.
#![allow(unused_imports)]

use std::path::Path;

use ltx::{Decoder, Encoder};

mod chaos_proxy;
mod cutting_proxy;
pub use chaos_proxy::ChaosProxy;
pub use cutting_proxy::CuttingProxy;
use strata::storage::{Layout, Replica, ReplicaUrl};
pub use strata::test_support::*;

/// The Litestream 0.5.17 replica fixture.
pub fn fixture_replica() -> Replica {
    Replica::open(&ReplicaUrl::File {
        root: testdata("litestream-0.5.17/replica"),
    })
    .unwrap()
}

/// (TXID, SHA-256, size) of every correct restore of the fixture.
pub fn expected_restores() -> Vec<(u64, String, u64)> {
    std::fs::read_to_string(testdata("litestream-0.5.17/expected-restores.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                u64::from_str_radix(f[0], 16).unwrap(),
                f[1].to_string(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Logs strata's events to stderr when `STRATA_TEST_LOG` is set (e.g. `strata=debug`), to
/// see what an in-process run did when a test fails.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("STRATA_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// An LTX file of another history for `txid`: one page of `fill`, node ID `history`.
pub fn foreign_ltx(txid: u64, history: u64, fill: u8) -> Vec<u8> {
    use ltx::{Checksum, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};
    let page_size = PageSize::new(4096).unwrap();
    let mut header = Header::new(page_size, 1, TxidRange::single(Txid::new(txid)));
    header.flags = HeaderFlags::NO_CHECKSUM;
    header.node_id = history;
    header.timestamp = jiff::Timestamp::now().as_millisecond();
    let mut enc = Encoder::new(Vec::new(), &header).unwrap();
    enc.encode_page(PageNum::ONE, &[fill; 4096]).unwrap();
    enc.finish(Checksum::ZERO).unwrap().writer
}

/// Deletes every object of a bucket of the test S3 server (the bucket stays), with boto3
/// (moto refuses unsigned deletions).
pub fn empty_bucket(bucket: &str) {
    boto3(
        &s3_endpoint(),
        &format!("s3.Bucket('{bucket}').objects.all().delete()"),
    );
}

/// Runs Python `code` with `s3`, a boto3 resource of the S3 server at `endpoint`
/// (`s3.meta.client` is its client).
pub fn boto3(endpoint: &str, code: &str) {
    let script = format!(
        "import boto3\ns3 = boto3.resource('s3', endpoint_url='{endpoint}')\nclient = s3.meta.client\n{code}\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A moto_server of this test's own, so it can be paused without disturbing other tests.
pub struct PrivateS3 {
    child: std::process::Child,
    /// Its URL.
    pub endpoint: String,
}

impl PrivateS3 {
    /// Starts it with one empty bucket.
    pub fn start(bucket: &str) -> PrivateS3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server on PATH (scripts/test installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let s3 = PrivateS3 { child, endpoint };
        s3.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
        s3
    }

    /// Runs `code` with `s3`, a boto3 client of this server.
    pub fn boto3(&self, code: &str) {
        boto3(&self.endpoint, code);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server a signal (`-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies every file byte for byte.
pub async fn copy_raw(src: &Replica, dst: &Replica) {
    for f in src.list_all().await.unwrap() {
        let bytes = src.read(&f).await.unwrap();
        let ts = Decoder::from_buf_read(&bytes[..])
            .unwrap()
            .header()
            .timestamp;
        dst.write(
            f.level,
            f.range,
            bytes,
            jiff::Timestamp::from_millisecond(ts).unwrap(),
        )
        .await
        .unwrap();
    }
}

/// Copies every file through strata: decoded, re-encoded by the `ltx` crate, written by the
/// storage layer. `retime` may rewrite header timestamps.
pub async fn copy_reencoded(src: &Replica, dst: &Replica, retime: impl Fn(&ltx::Header) -> i64) {
    for f in src.list_all().await.unwrap() {
        let bytes = src.read(&f).await.unwrap();
        let mut dec = Decoder::from_buf_read(&bytes[..]).unwrap();
        let mut header = *dec.header();
        header.timestamp = retime(&header);
        let mut enc = Encoder::new(Vec::new(), &header).unwrap();
        let mut page = vec![0u8; header.page_size.bytes()];
        while let Some(pgno) = dec.decode_page(&mut page).unwrap() {
            enc.encode_page(pgno, &page).unwrap();
        }
        let post = dec.finish().unwrap().trailer.post_apply_checksum;
        let out = enc.finish(post).unwrap().writer;
        let ts = jiff::Timestamp::from_millisecond(header.timestamp).unwrap();
        dst.write(f.level, f.range, out.into(), ts).await.unwrap();
    }
}

/// The fixture in an in-memory replica.
pub async fn memory_fixture(layout: Layout) -> Replica {
    let replica = Replica::memory(layout);
    copy_raw(&fixture_replica(), &replica).await;
    replica
}

/// Files in `dir` other than `keep`: a failed restore must leave none behind.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

pub mod capture;
pub mod table;

/// The `litestream` 0.5.17 binary the test command installed.
pub fn litestream() -> std::process::Command {
    let mut cmd = std::process::Command::new("litestream");
    // Litestream's S3 client refuses a custom endpoint while a CA bundle is configured.
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd
}

/// A unique key prefix for one test in the emulators' shared bucket or container.
#[cfg(feature = "azure")]
fn unique_prefix(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh prefix in the container `strata-test` of the Azurite the test command started
/// (it sets `AZURE_STORAGE_USE_EMULATOR` and `AZURITE_BLOB_STORAGE_URL`, which strata's
/// Azure client reads as any user's would).
#[cfg(feature = "azure")]
pub fn azure_url(prefix: &str) -> String {
    assert!(
        std::env::var_os("AZURITE_BLOB_STORAGE_URL").is_some(),
        "AZURITE_BLOB_STORAGE_URL is not set: run the tests with scripts/test, which starts \
         Azurite on loopback and sets it"
    );
    format!("abs://strata-test/{}", unique_prefix(prefix))
}

/// xorshift64: a seeded campaign's whole run follows from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
