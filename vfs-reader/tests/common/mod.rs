//! Helpers for the VFS's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use strata::ltx::Txid;
use strata::restore::RestorePoint;
use strata::storage::{Replica, ReplicaUrl};

// Each test binary uses its own share of these.
#[allow(unused_imports)]
pub use strata::test_support::{copy_dir, fixture_dir, free_port, s3_url, testdata};

/// Every TXID the fixture restores to.
pub const FIXTURE_TXIDS: std::ops::RangeInclusive<u64> = 1..=16;

/// `url` restored at `txid` (or the newest) into `out`, with strata's restore.
pub fn restore_at(url: &str, txid: Option<u64>, out: &Path) {
    let replica = Replica::open(&ReplicaUrl::parse(url).unwrap()).unwrap();
    let target = txid.map_or(RestorePoint::Latest, |t| RestorePoint::Txid(Txid::new(t)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(strata::test_support::restore_to(&replica, target, out))
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
