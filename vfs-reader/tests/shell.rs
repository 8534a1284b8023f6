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

/// A copy of the fixture replica holding only the files that end at or before `txid`: a
/// replica of the same database at an earlier state.
fn fixture_until(txid: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for level in std::fs::read_dir(fixture_dir().join("ltx")).unwrap() {
        let level = level.unwrap().path();
        let to = dir.path().join("ltx").join(level.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&level).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let max = u64::from_str_radix(&name[17..33], 16).unwrap();
            if max <= txid {
                std::fs::copy(&file, to.join(&name)).unwrap();
            }
        }
    }
    dir
}

#[test]
fn two_replicas_under_one_name_share_no_cache() {
    let early = fixture_until(3);
    let (a, b) = (
        fixture_dir().display().to_string(),
        early.path().display().to_string(),
    );
    // Both under one file name, both asking for a shared cache.
    let script = format!(
        ".load {}\n.open file:app.db?vfs=strata&replica={a}&cache=shared\nATTACH 'file:app.db?vfs=strata&replica={b}&cache=shared' AS b;\nSELECT count(*) FROM main.kv;\nSELECT count(*) FROM b.kv;\nPRAGMA b.strata_txid;\nPRAGMA main.strata_txid = '0000000000000005';\nPRAGMA b.strata_txid;\nSELECT count(*) FROM b.kv;\n",
        extension().display()
    );
    let (ok, out, err) = shell(&script, &[]);
    assert!(ok, "{err}");
    assert_eq!(
        out, "301\n502\n0000000000000003\n0000000000000005\n0000000000000003\n502\n",
        "each replica its own state, a pin on one leaves the other"
    );
}

#[test]
fn with_the_replica_in_the_environment_local_files_stay_local() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.db");
    let (ok, _, err) = shell(
        &format!(
            ".open {}\nCREATE TABLE notes(x);\nINSERT INTO notes VALUES ('kept locally');\n",
            local.display()
        ),
        &[],
    );
    assert!(ok, "{err}");
    let copy = dir.path().join("copy.db");
    let url = fixture_dir().display().to_string();
    let script = format!(
        ".load {}\n.open file:fixture.db?vfs=strata\nATTACH '{}' AS l;\nSELECT x FROM l.notes;\nSELECT count(*) FROM kv;\nVACUUM INTO '{}';\n",
        extension().display(),
        local.display(),
        copy.display()
    );
    let (ok, out, err) = shell(&script, &[("STRATA_REPLICA_URL", &url)]);
    assert!(ok, "{err}");
    assert_eq!(out, "kept locally\n301\n");
    // VACUUM INTO wrote a local copy of the replica's newest state.
    assert_eq!(
        dump_file(&copy),
        dump_file(&testdata("litestream-0.5.17/source-final.db"))
    );
}

#[test]
fn a_txid_reported_in_a_deferred_transaction_is_the_one_it_reads_schema_load_and_all() {
    // A fresh connection loads the schema in a read of its own before the transaction's
    // first read: both show the TXID reported.
    let replica = fixture_until(8);
    let url = replica.path().display().to_string();
    let script = format!(
        ".load {}\n.open file:fixture.db?vfs=strata&replica={url}\nBEGIN;\nSELECT strata_txid();\n.shell cp -rn {}/ltx/. {url}/ltx/\n.shell sleep 0.5\nSELECT count(*) FROM kv;\nSELECT strata_txid();\nCOMMIT;\n.shell sleep 0.5\nSELECT count(*) FROM kv;\n",
        extension().display(),
        fixture_dir().display()
    );
    let (ok, out, err) = shell(&script, &[("STRATA_VFS_POLL_INTERVAL", "50ms")]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let rows_at = |txid| {
        let out = dir.path().join(format!("{txid}.db"));
        restore_at(&fixture_dir().display().to_string(), Some(txid), &out);
        let (_, count, _) = shell(
            &format!(".open {}\nSELECT count(*) FROM kv;\n", out.display()),
            &[],
        );
        count
    };
    assert_eq!(
        out,
        format!(
            "0000000000000008\n{}0000000000000008\n{}",
            rows_at(8),
            rows_at(16)
        )
    );
}

#[test]
fn litestreams_uri_parameters_work_as_a_drop_in() {
    let dir = tempfile::tempdir().unwrap();
    let url = fixture_dir().display().to_string();
    let load = format!(".load {}\n", extension().display());
    // replica_url, poll_interval, cache_size and hydration as Litestream names them.
    let hydrated = dir.path().join("hydrated.db");
    let script = format!(
        "{load}.open file:fixture.db?vfs=strata&replica_url={url}&poll_interval=250ms&cache_size=2000000&write_enabled=false&hydration_enabled=true&hydration_path={}\nSELECT count(*) FROM kv;\n",
        hydrated.display()
    );
    let (ok, out, err) = shell(&script, &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "301\n");
    // Hydration writes into hydration_path's directory (removed at close: it was used).
    let deadline = Instant::now() + Duration::from_secs(30);
    let script = format!(
        "{load}.open file:fixture.db?vfs=strata&replica_url={url}&hydration_enabled=true&hydration_path={}\nSELECT count(*) FROM kv;\n.shell sleep 1\nSELECT count(*) FROM kv;\nPRAGMA strata_hydrated;\n",
        hydrated.display()
    );
    loop {
        let (ok, out, err) = shell(&script, &[]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"301"), "{out}");
        // The hydrated copy is taken up by the next read transaction once it is ready.
        if lines.get(2).is_some_and(|t| t.len() == 16) {
            break;
        }
        assert!(Instant::now() < deadline, "never hydrated: {out}");
    }
    // Bad values and the write mode are refused with the parameter named.
    for (params, said) in [
        ("poll_interval=soon", "poll_interval"),
        ("cache_size=big", "cache_size"),
        ("hydration_enabled=yes", "hydration_enabled"),
        ("write_enabled=true", "write_enabled"),
        ("write_enabled=1", "write_enabled"),
        ("write_enabled=TRUE", "write_enabled"),
        ("write_enabled=yes", "write_enabled"),
        ("write_enabled=", "write_enabled"),
    ] {
        let script = format!(
            "{load}.open file:fixture.db?vfs=strata&replica_url={url}&{params}\nSELECT 1 FROM kv LIMIT 1;\n"
        );
        let (ok, _, err) = shell(&script, &[]);
        assert!(!ok && err.contains(said), "{params}: {err}");
    }
}

/// Files a killed process left in the hydration directory (its hydrated database, a
/// restore's temporary file) go when hydration next runs there; a running process's stay.
#[test]
fn hydration_removes_what_dead_processes_left() {
    let dir = tempfile::tempdir().unwrap();
    let url = fixture_dir().display().to_string();
    // A pid above the kernel's limit is no process.
    let dead = 4_194_304 + 17;
    let live = std::process::id();
    let left = [
        format!("strata-vfs-{dead}-0.db"),
        format!(".strata-vfs-{dead}-1.db.{dead}.strata-restore"),
    ];
    let kept = [format!("strata-vfs-{live}-0.db"), "other.db".to_owned()];
    for name in left.iter().chain(&kept) {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let script = format!(
        ".load {}\n.open file:fixture.db?vfs=strata&replica={url}&hydrate={}\nSELECT count(*) FROM kv;\n.shell sleep 1\nSELECT count(*) FROM kv;\n",
        extension().display(),
        dir.path().display()
    );
    let (ok, out, err) = shell(&script, &[]);
    assert!(ok && out == "301\n301\n", "{out} {err}");
    for name in &left {
        assert!(!dir.path().join(name).exists(), "{name} is still there");
    }
    for name in &kept {
        assert!(dir.path().join(name).exists(), "{name} was removed");
    }
}
