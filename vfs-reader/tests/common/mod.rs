//! Helpers for the VFS's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strata::ltx::Txid;
use strata::restore::{NoProgress, RestoreOptions, Target, restore};
use strata::storage::{Replica, ReplicaUrl};

/// The repository's `testdata/` directory.
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
}

/// The Litestream 0.5.17 replica fixture's directory.
pub fn fixture_dir() -> PathBuf {
    testdata("litestream-0.5.17/replica")
}

/// Every TXID the fixture restores to.
pub const FIXTURE_TXIDS: std::ops::RangeInclusive<u64> = 1..=16;

/// `url` restored at `txid` (or the newest) into `out`, with strata's restore.
pub fn restore_at(url: &str, txid: Option<u64>, out: &Path) {
    let replica = Replica::open(&ReplicaUrl::parse(url).unwrap()).unwrap();
    let target = txid.map_or(Target::Latest, |t| Target::Txid(Txid::new(t)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(restore(
        &replica,
        target,
        out,
        &RestoreOptions::default(),
        Arc::new(NoProgress),
    ))
    .unwrap();
}

/// The loadable extension: `STRATA_VFS_EXTENSION` (scripts/test builds it on its own, so it
/// links no SQLite), else the one cargo built beside the tests.
pub fn extension() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_VFS_EXTENSION") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> -> target/debug/libstrata_vfs.so
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let so = dir.join("libstrata_vfs.so");
    assert!(
        so.exists(),
        "{} is missing: cargo build -p strata-vfs",
        so.display()
    );
    so
}

/// Runs the `sqlite3` shell on `script` (no database argument): (status ok, stdout, stderr).
pub fn shell(script: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail")
        .env_remove("STRATA_REPLICA_URL")
        .env_remove("LITESTREAM_REPLICA_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the sqlite3 shell");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `.dump` of a local database file, by the `sqlite3` shell.
pub fn dump_file(db: &Path) -> String {
    // immutable: the shell leaves no -shm or -wal beside the file.
    let (ok, out, err) = shell(
        &format!(".open file:{}?immutable=1\n.dump\n", db.display()),
        &[],
    );
    assert!(ok, "{err}");
    out
}

/// The schema and every row of every table, in order, through a rusqlite connection.
pub fn dump_conn(conn: &rusqlite::Connection) -> String {
    let mut out = String::new();
    let mut tables = Vec::new();
    let mut schema = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY name")
        .unwrap();
    let rows = schema
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (kind, name, sql) = row.unwrap();
        out.push_str(&format!("{kind} {name}: {sql:?}\n"));
        if kind == "table" {
            tables.push(name);
        }
    }
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let values: Vec<String> = (0..n)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect();
            out.push_str(&format!("{t}: {}\n", values.join(", ")));
        }
    }
    out
}

/// A prefix in a new bucket on the test S3 server (moto_server, which `scripts/test`
/// starts and names in `STRATA_TEST_S3_ENDPOINT`), as a Litestream-style URL.
pub fn s3_url(prefix: &str) -> String {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let endpoint = std::env::var("STRATA_TEST_S3_ENDPOINT")
        .expect("STRATA_TEST_S3_ENDPOINT is not set: run the tests with scripts/test");
    let bucket = format!(
        "vfs-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    // moto takes unsigned requests: one plain PUT makes the bucket.
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "creating {bucket}: {response}"
    );
    format!("s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1&forcePathStyle=true")
}
