//! A reader through the VFS when the replica changes under it in ways a primary's ordinary
//! writes never do: a full copy that lands in L9 alone, the newest files lost, a replica
//! written again from another database under the same file names; and the TXID a
//! transaction reports before its first read.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::{Connection, OpenFlags};
use strata::ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};

/// Every test of this file reads through one registration: polls every 50 ms, plans afresh
/// from a full listing only every 5 minutes (the default: nothing here may wait for it), a
/// page cache of a few pages and no whole-file fetches (so reads reach the replica), and an
/// on-disk frame cache in `disk_cache()`.
fn open(replica: &Path) -> Connection {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let mut o = strata_vfs::Options::default();
        o.poll_interval = Duration::from_millis(50);
        o.cache_size = 0;
        o.whole_file_max = 0;
        o.disk_cache_dir = Some(disk_cache());
        strata_vfs::register(o).unwrap();
    });
    Connection::open_with_flags_and_vfs(
        format!("file:app.db?replica={}", replica.display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        "strata",
    )
    .unwrap()
}

/// The on-disk cache directory of this test process.
fn disk_cache() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("strata-vfs-test-cache-{}", std::process::id()))
}

/// A copy of the fixture replica with only the files ending at or before `txid`.
fn fixture_until(txid: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_fixture_files(dir.path(), txid);
    dir
}

fn add_fixture_files(root: &Path, until: u64) {
    for level in std::fs::read_dir(fixture_dir().join("ltx")).unwrap() {
        let level = level.unwrap().path();
        let to = root.join("ltx").join(level.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&level).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if max_txid(&name) <= until && !to.join(&name).exists() {
                std::fs::copy(&file, to.join(&name)).unwrap();
            }
        }
    }
}

fn max_txid(file_name: &str) -> u64 {
    u64::from_str_radix(&file_name[17..33], 16).unwrap()
}

/// The rows of `kv` and the TXID, in one read transaction.
fn state(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    let tx = conn.unchecked_transaction()?;
    let count: i64 = tx.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?;
    let txid: String = tx.query_row("SELECT strata_txid()", [], |r| r.get(0))?;
    tx.commit()?;
    Ok((count, txid))
}

/// The rows of `kv` in the fixture restored at `txid`.
fn rows_at(txid: u64) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("at.db");
    restore_at(&fixture_dir().display().to_string(), Some(txid), &out);
    Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap()
}

/// The database file `db` as one snapshot LTX file covering TXIDs 1 to `txid`.
fn snapshot_of(db: &Path, txid: u64, node_id: u64) -> Vec<u8> {
    let bytes = std::fs::read(db).unwrap();
    let page_size = PageSize::new(4096).unwrap();
    let pages = (bytes.len() / 4096) as u32;
    let mut header = Header::new(page_size, pages, TxidRange::new(Txid::ONE, Txid::new(txid)));
    header.flags = HeaderFlags::NO_CHECKSUM;
    header.node_id = node_id;
    header.timestamp = 1_700_000_000_000;
    let mut enc = Encoder::new(Vec::new(), &header).unwrap();
    for p in 1..=pages {
        if p == page_size.lock_page().get() {
            continue;
        }
        let at = (p as usize - 1) * 4096;
        enc.encode_page(PageNum::new(p).unwrap(), &bytes[at..at + 4096])
            .unwrap();
    }
    enc.finish(Checksum::ZERO).unwrap().writer
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_copy_written_only_to_l9_is_followed() {
    let root = fixture_until(16);
    let conn = open(root.path());
    assert_eq!(state(&conn).unwrap(), (rows_at(16), format!("{:016x}", 16)));
    // A full copy restarts the history at TXID 17 (a replaced database, say), in L9 only,
    // with the content of TXID 5; no L0 file follows it.
    let dir = tempfile::tempdir().unwrap();
    let five = dir.path().join("five.db");
    restore_at(&fixture_dir().display().to_string(), Some(5), &five);
    let name = TxidRange::new(Txid::ONE, Txid::new(17)).file_name();
    std::fs::write(
        root.path().join("ltx/9").join(name),
        snapshot_of(&five, 17, 0),
    )
    .unwrap();
    let seen = eventually("TXID 17 shown", || {
        let s = state(&conn).unwrap();
        (s.1 == format!("{:016x}", 17)).then_some(s)
    });
    assert_eq!(seen.0, rows_at(5));
}

#[test]
fn a_reader_whose_newest_files_are_lost_follows_what_the_replica_restores_to() {
    let root = fixture_until(16);
    let conn = open(root.path());
    assert_eq!(state(&conn).unwrap().1, format!("{:016x}", 16));
    // Every file reaching TXID 16 is gone: the replica restores to 15 now.
    for level in std::fs::read_dir(root.path().join("ltx")).unwrap() {
        for file in std::fs::read_dir(level.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if max_txid(&path.file_name().unwrap().to_string_lossy()) == 16 {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    // Transactions may fail while the state they show is gone; soon they read 15.
    let seen = eventually("TXID 15 shown", || {
        state(&conn).ok().filter(|s| s.1 == format!("{:016x}", 15))
    });
    assert_eq!(seen.0, rows_at(15));
}

#[test]
fn the_txid_reported_before_the_first_read_is_the_one_the_transaction_reads() {
    let root = fixture_until(8);
    let conn = open(root.path());
    conn.execute_batch("BEGIN").unwrap();
    let before: String = conn
        .query_row("SELECT strata_txid()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, format!("{:016x}", 8));
    // The primary moves on before the transaction's first read.
    add_fixture_files(root.path(), 16);
    std::thread::sleep(Duration::from_millis(300));
    let count: i64 = conn
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    let inside: String = conn
        .query_row("SELECT strata_txid()", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!((count, inside), (rows_at(8), before));
    // The next transaction moves on.
    eventually("TXID 16 shown", || {
        (state(&conn).unwrap() == (rows_at(16), format!("{:016x}", 16))).then_some(())
    });
}

/// A database of one table holding two incompressible rows (so LTX files of two such
/// databases have the same size), as a snapshot LTX file for TXID 1.
fn random_database(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size=4096; CREATE TABLE t(v BLOB);
         INSERT INTO t VALUES (randomblob(3000)), (randomblob(3000));",
    )
    .unwrap();
    drop(conn);
    snapshot_of(&path, 1, 0)
}

#[test]
fn the_disk_cache_never_serves_another_replicas_bytes_under_the_same_names() {
    let dir = tempfile::tempdir().unwrap();
    let first = random_database(dir.path(), "a.db");
    // A second database whose file has the same name and size (random rows compress to
    // the same length, nearly always; try until one does).
    let (i, second) = (0..50)
        .map(|i| (i, random_database(dir.path(), &format!("b{i}.db"))))
        .find(|(_, b)| b.len() == first.len())
        .expect("a database of the same file size");
    let root = tempfile::tempdir().unwrap();
    let l0 = root.path().join("ltx/0");
    std::fs::create_dir_all(&l0).unwrap();
    let name = TxidRange::single(Txid::ONE).file_name();
    let rows = |conn: &Connection| -> Vec<Vec<u8>> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    std::fs::write(l0.join(&name), &first).unwrap();
    let before = rows(&open(root.path()));
    // The replica is wiped and written again from the other database: same name, same size.
    std::fs::write(l0.join(&name), &second).unwrap();
    let after = rows(&open(root.path()));
    let source = |name: &str| rows(&Connection::open(dir.path().join(name)).unwrap());
    assert_eq!(before, source("a.db"));
    assert_eq!(
        after,
        source(&format!("b{i}.db")),
        "the cached first database's rows"
    );
    let _ = std::fs::remove_dir_all(disk_cache());
}

#[test]
fn a_reader_whose_newest_l0_files_are_lost_goes_back_to_what_the_replica_restores_to() {
    // L0 alone, as a replica without compaction holds it: the newest two files go, nothing
    // in L9 changes, and SQLite's own cache may answer every query without a read.
    let root = tempfile::tempdir().unwrap();
    let l0 = root.path().join("ltx/0");
    std::fs::create_dir_all(&l0).unwrap();
    for entry in std::fs::read_dir(fixture_dir().join("ltx/0")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, l0.join(path.file_name().unwrap())).unwrap();
    }
    let conn = open(root.path());
    assert_eq!(state(&conn).unwrap().1, format!("{:016x}", 16));
    for txid in [15u64, 16] {
        std::fs::remove_file(l0.join(TxidRange::single(Txid::new(txid)).file_name())).unwrap();
    }
    let seen = eventually("TXID 14 shown", || {
        state(&conn).ok().filter(|s| s.1 == format!("{:016x}", 14))
    });
    assert_eq!(seen.0, rows_at(14));
}
