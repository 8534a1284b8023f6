//! The loadable extension in the `sqlite3` shell, as a user loads it: `.load` it, open a
//! replica with `vfs=strata`, query. Results equal strata's restores at every TXID.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn open_script(replica: &str) -> String {
    format!(
        ".load {}\n.open file:fixture.db?vfs=strata&replica={replica}\n",
        extension().display()
    )
}

#[test]
fn the_shell_reads_every_txid_as_its_restore() {
    let dir = tempfile::tempdir().unwrap();
    let url = fixture_dir().display().to_string();
    for txid in FIXTURE_TXIDS {
        let hex = format!("{txid:016x}");
        let script = format!(
            "{}PRAGMA strata_txid = '{hex}';\n.dump\n",
            open_script(&url)
        );
        let (ok, out, err) = shell(&script, &[]);
        assert!(ok, "txid {txid}: {err}");
        let (first, dump) = out.split_once('\n').unwrap();
        assert_eq!(first, hex);
        let restored = dir.path().join(format!("{txid}.db"));
        restore_at(&url, Some(txid), &restored);
        assert_eq!(dump, dump_file(&restored), "txid {txid}");
    }
}

#[test]
fn litestreams_variable_and_names_work_as_a_drop_in() {
    let url = fixture_dir().display().to_string();
    let script = format!(
        ".load {}\n.open file:fixture.db?vfs=strata\nSELECT litestream_txid(), count(*) FROM kv;\nPRAGMA litestream_txid = '0000000000000003';\nSELECT count(*) FROM kv;\nPRAGMA litestream_time;\n",
        extension().display()
    );
    let (ok, out, err) = shell(&script, &[("LITESTREAM_REPLICA_URL", &url)]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "0000000000000010|301\n0000000000000003\n502\ntxid 0000000000000003\n"
    );
    let source = dump_file(&testdata("litestream-0.5.17/source-final.db"));
    let (ok, out, err) = shell(
        &format!(
            ".load {}\n.open file:fixture.db?vfs=strata\n.dump\n",
            extension().display()
        ),
        &[("STRATA_REPLICA_URL", &url)],
    );
    assert!(ok, "{err}");
    assert_eq!(out, source);
}

#[test]
fn writes_are_refused() {
    let url = fixture_dir().display().to_string();
    let script = format!(
        "{}INSERT INTO kv VALUES (100000, 'x');\n",
        open_script(&url)
    );
    let (ok, _, err) = shell(&script, &[]);
    assert!(!ok);
    assert!(err.contains("readonly database"), "{err}");
}

#[test]
fn an_empty_or_unreachable_replica_is_a_clear_error_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{}SELECT count(*) FROM sqlite_schema;\n",
        open_script(&dir.path().display().to_string())
    );
    // The shell goes on after a failed .open (with an in-memory database), so the error
    // is what counts.
    let (_, _, err) = shell(&script, &[]);
    assert!(err.contains("unable to open database"), "{err}");
    assert!(
        err.contains("strata VFS: cannot open the replica") && err.contains("no LTX files"),
        "{err}"
    );
    // A server that accepts connections and never answers: the VFS's timeout ends it.
    // (In a URI file name the replica URL's own `&` is written `%26`.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let script = format!(
        "{}SELECT count(*) FROM sqlite_schema;\n",
        open_script(&format!(
            "s3://bucket/app?endpoint=http://127.0.0.1:{port}%26region=us-east-1%26forcePathStyle=true"
        ))
    );
    let (_, _, err) = shell(
        &script,
        &[
            ("STRATA_VFS_TIMEOUT", "2s"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ],
    );
    assert!(err.contains("unable to open database"), "{err}");
    assert!(
        err.contains("cannot open the replica") && err.contains("did not answer within 2s"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
    // A setting that does not parse fails the load, with its name.
    let (ok, _, err) = shell(
        &format!(".load {}\n", extension().display()),
        &[("STRATA_VFS_POLL_INTERVAL", "often")],
    );
    assert!(!ok);
    assert!(err.contains("STRATA_VFS_POLL_INTERVAL"), "{err}");
}
