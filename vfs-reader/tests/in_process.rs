//! The VFS registered in-process (rusqlite's SQLite) over the Litestream 0.5.17 fixture:
//! every TXID reads what a restore at that TXID holds.

mod common;

use common::*;
use rusqlite::{Connection, OpenFlags};

fn open(replica: &std::path::Path) -> Connection {
    strata_vfs::register(strata_vfs::Options::default()).unwrap();
    Connection::open_with_flags_and_vfs(
        format!("file:fixture.db?replica={}", replica.display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        "strata",
    )
    .unwrap()
}

#[test]
fn every_txid_reads_as_its_restore() {
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&fixture_dir());
    let url = fixture_dir().display().to_string();
    let latest: String = conn
        .query_row("SELECT strata_txid()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(latest, "0000000000000010");
    // immutable: no -shm or -wal beside the fixture.
    let source = Connection::open_with_flags(
        format!(
            "file:{}?immutable=1",
            testdata("litestream-0.5.17/source-final.db").display()
        ),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    assert_eq!(dump_conn(&conn), dump_conn(&source));
    for txid in FIXTURE_TXIDS {
        let hex = format!("{txid:016x}");
        let set: String = conn
            .query_row(&format!("PRAGMA strata_txid = '{hex}'"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(set, hex);
        let out = dir.path().join(format!("{txid}.db"));
        restore_at(&url, Some(txid), &out);
        let restored = Connection::open_with_flags(&out, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(dump_conn(&conn), dump_conn(&restored), "txid {txid}");
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "txid {txid}");
        // Litestream's names answer the same.
        let txid_fn: String = conn
            .query_row("SELECT litestream_txid()", [], |r| r.get(0))
            .unwrap();
        assert_eq!(txid_fn, hex);
    }
    // Back to the newest, by time.
    let back: String = conn
        .query_row("SELECT strata_set_time('latest')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(back, "0000000000000010");
    assert_eq!(dump_conn(&conn), dump_conn(&source));
}

#[test]
fn writes_are_refused_and_bad_pragmas_are_errors() {
    let conn = open(&fixture_dir());
    let e = conn
        .execute("INSERT INTO kv VALUES (100000, 'x')", [])
        .unwrap_err();
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly),
        "{e}"
    );
    let e = conn
        .query_row("PRAGMA strata_txid = 'zz'", [], |r| r.get::<_, String>(0))
        .unwrap_err();
    assert!(e.to_string().contains("not a TXID"), "{e}");
    let e = conn
        .query_row("PRAGMA strata_txid = '00000000000000ff'", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err();
    assert!(e.to_string().contains("not a restore point"), "{e}");
    let e = conn
        .query_row("SELECT strata_set_time('in a while')", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err();
    assert!(e.to_string().contains("not a time"), "{e}");
    // Still readable, still at the newest.
    let n: i64 = conn
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 301);
    let lag: String = conn
        .query_row("PRAGMA strata_lag", [], |r| r.get(0))
        .unwrap();
    let lag: i64 = lag.parse().unwrap();
    assert!((0..5).contains(&lag), "{lag}");
    // A connection on another VFS has no strata state to report.
    let plain = Connection::open_in_memory().unwrap();
    let e = plain
        .query_row("SELECT strata_txid()", [], |r| r.get::<_, String>(0))
        .unwrap_err();
    assert!(
        e.to_string().contains("not opened with the strata VFS"),
        "{e}"
    );
}

#[test]
fn an_empty_replica_fails_to_open() {
    strata_vfs::register(strata_vfs::Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let r = Connection::open_with_flags_and_vfs(
        format!("file:x.db?replica={}", dir.path().display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        "strata",
    )
    .and_then(|c| {
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    let e = r.unwrap_err();
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
