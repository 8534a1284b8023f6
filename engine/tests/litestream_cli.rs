//! Litestream 0.5.17's own command lines (Go's one-dash flags), run with `litestream` and
//! with `strata` in its place: the same exit codes, the same output, the same bytes restored.

mod common;

use std::path::Path;
use std::process::Command;

use common::capture::{signal, sqlite3_dump, strata_bin};
use common::*;

/// Runs `command` with `args`: (succeeded, stdout).
fn run(mut command: Command, args: &[&str]) -> (bool, String) {
    let out = command.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs strata with `args`, which must succeed (its stderr is the message if not).
fn strata_succeeds(args: &[&str]) {
    let out = Command::new(strata_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same command line with both tools.
fn both(args: &[&str]) -> [(bool, String); 2] {
    [
        run(litestream(), args),
        run(Command::new(strata_bin()), args),
    ]
}

fn config(dir: &Path) -> String {
    let path = dir.join("litestream.yml");
    std::fs::write(
        &path,
        format!(
            "dbs:\n  - path: {0}/a.db\n    replica:\n      url: file://{0}/replica-a\n  \
             - path: {0}/long name.db\n    replica:\n      type: file\n      path: {0}/replica-b\n  \
             - path: {0}/c.db\n    replica:\n      url: s3://bucket/c\n",
            dir.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn databases_prints_what_litestream_prints() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for args in [
        vec!["databases", "-config", &config],
        vec!["databases", "-json", "-config", &config],
        vec!["databases", &format!("-config={config}"), "-no-expand-env"],
        vec!["databases", "--config", &config, "--json"],
    ] {
        let [theirs, ours] = both(&args);
        assert!(theirs.0, "litestream {args:?}: {}", theirs.1);
        assert_eq!(ours, theirs, "{args:?}");
    }
    // A missing config fails with both.
    let missing = dir.path().join("missing.yml").display().to_string();
    let [theirs, ours] = both(&["databases", "-config", &missing]);
    assert!(!theirs.0 && !ours.0);
}

#[test]
fn ltx_lists_what_litestream_lists() {
    let dir = tempfile::tempdir().unwrap();
    let root = testdata("litestream-0.5.17/replica");
    let replica = format!("file://{}", root.display());
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {0}/app.db\n    replica:\n      url: {replica}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (config, db) = (
        config.display().to_string(),
        format!("{}/app.db", dir.path().display()),
    );
    for args in [
        vec!["ltx", &replica],
        vec!["ltx", "-level", "all", &replica],
        vec!["ltx", "-json", "-level=1", &replica],
        vec!["ltx", "-level", "9", "-json", &replica],
        vec!["ltx", "-level", "3", &replica],
        vec!["ltx", "-config", &config, "-level", "all", &db],
    ] {
        let [theirs, ours] = both(&args);
        assert!(theirs.0, "litestream {args:?}: {}", theirs.1);
        assert_eq!(ours, theirs, "{args:?}");
    }
    // strata's own form stays.
    let (ok, listed) = run(Command::new(strata_bin()), &["ltx", "ls", &replica]);
    assert!(ok && listed.contains("L9"), "{listed}");
}

#[test]
fn version_prints_a_bare_version_number() {
    let [theirs, ours] = both(&["version"]);
    assert!(theirs.0 && ours.0);
    for (_, out) in [theirs, ours] {
        let version = out.trim();
        assert!(
            !version.is_empty() && version.split('.').all(|n| n.parse::<u32>().is_ok()),
            "{out:?}"
        );
    }
}

#[test]
fn restore_with_go_flags_gives_litestreams_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let replica = format!("file://{}", testdata("litestream-0.5.17/replica").display());
    let expected = expected_restores();
    for (txid, hex) in [(5usize, "0000000000000005"), (16, "0000000000000010")] {
        let outs = [
            dir.path().join(format!("l{txid}.db")),
            dir.path().join(format!("s{txid}.db")),
        ];
        let txid_flag = format!("-txid={hex}");
        let mut results = Vec::new();
        for (command, out) in [litestream(), Command::new(strata_bin())]
            .into_iter()
            .zip(&outs)
        {
            let out_arg = out.display().to_string();
            results.push(run(command, &["restore", "-o", &out_arg, &txid_flag, &replica]).0);
        }
        assert_eq!(results, [true, true], "TXID {txid}");
        for out in &outs {
            assert_eq!(
                sha256_file(out),
                expected[txid - 1].1,
                "TXID {txid}: {}",
                out.display()
            );
        }
    }
    // -if-db-not-exists: both leave an existing output alone and succeed.
    let existing = dir.path().join("s5.db").display().to_string();
    let [theirs, ours] = both(&["restore", "-if-db-not-exists", "-o", &existing, &replica]);
    assert!(theirs.0 && ours.0);
}

#[test]
fn status_prints_what_litestream_prints() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // a.db: a WAL database nothing has captured; long name.db: an empty file; c.db: none.
    let a = dir.path().join("a.db");
    let conn = rusqlite::Connection::open(&a).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1);")
        .unwrap();
    std::fs::write(dir.path().join("long name.db"), b"").unwrap();
    let a_arg = a.display().to_string();
    for args in [
        vec!["status", "-config", &config],
        vec!["status", "-json", "-config", &config],
        vec!["status", &format!("-config={config}"), &a_arg],
    ] {
        let [theirs, ours] = both(&args);
        assert!(theirs.0, "litestream {args:?}: {}", theirs.1);
        assert_eq!(ours, theirs, "{args:?}");
    }
    drop(conn);

    // Once strata has captured a.db, its row is "ok" with the TXID staged beside it: the
    // replica's newest after a stop, which uploads everything.
    let replica = dir.path().join("replica-a");
    let mut strata = Command::new(strata_bin())
        .args([
            "replicate",
            &a_arg,
            &format!("file://{}", replica.display()),
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !replica
        .join("ltx/0")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        assert!(std::time::Instant::now() < deadline, "nothing uploaded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    signal(&strata, "-TERM");
    assert!(strata.wait().unwrap().success());
    let newest = std::fs::read_dir(replica.join("ltx/0"))
        .unwrap()
        .filter_map(|e| {
            ltx::TxidRange::parse_file_name(&e.unwrap().file_name().to_string_lossy()).ok()
        })
        .map(|r| r.max)
        .max()
        .unwrap();
    let (ok, out) = run(
        Command::new(strata_bin()),
        &["status", "-json", "-config", &config],
    );
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |db: &str| {
        rows.iter()
            .find(|r| r["database"] == dir.path().join(db).display().to_string())
            .unwrap_or_else(|| panic!("no row for {db}: {out}"))
    };
    assert_eq!(row("a.db")["status"], "ok");
    assert_eq!(row("a.db")["local_txid"], newest.to_string());
    assert_eq!(row("long name.db")["status"], "not initialized");
    assert_eq!(row("c.db")["status"], "no database");
    assert_eq!(row("c.db")["wal_size"], "-");
}

/// The files of `level` in a directory replica.
fn level_files(replica: &Path, level: u8) -> usize {
    std::fs::read_dir(replica.join(format!("ltx/{level}")))
        .map_or(0, |d| d.filter(|e| e.is_ok()).count())
}

#[test]
fn replicate_once_syncs_snapshots_and_restores_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
         INSERT INTO t (v) SELECT printf('row %d %s', i, hex(randomblob(200))) FROM n;",
    )
    .unwrap();
    // Litestream adds its own tables to the database it replicates.
    let dump = |db: &Path| {
        let text = sqlite3_dump(&db.display().to_string());
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("_litestream_"))
            .collect();
        lines.join("\n")
    };
    let source = dump(&db);
    let config_for = |name: &str| {
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(
            &path,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      url: file://{}/replica-{name}\n",
                db.display(),
                dir.path().display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let (ours, theirs) = (config_for("strata"), config_for("litestream"));
    for (mut command, config) in [(litestream(), &theirs), (Command::new(strata_bin()), &ours)] {
        let args = ["replicate", "-once", "-force-snapshot", "-config", config];
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(conn);
    for name in ["litestream", "strata"] {
        let replica = dir.path().join(format!("replica-{name}"));
        assert!(level_files(&replica, 0) > 0, "{name}: no L0 file");
        assert!(level_files(&replica, 9) > 0, "{name}: no snapshot");
        let out = dir.path().join(format!("{name}.db"));
        let (ok, text) = run(
            Command::new(strata_bin()),
            &[
                "restore",
                "-o",
                &out.display().to_string(),
                &format!("file://{}", replica.display()),
            ],
        );
        assert!(ok, "{text}");
        assert!(
            dump(&out) == source,
            "{name}: the restore differs from the source"
        );
    }

    // The database gone, -restore-if-db-not-exists brings it back before the sync.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    strata_succeeds(&[
        "replicate",
        "-once",
        "-restore-if-db-not-exists",
        "-config",
        &ours,
    ]);
    assert!(
        dump(&db) == source,
        "the database restored differs from the source"
    );
    // Retention on demand leaves what the latest state needs.
    strata_succeeds(&["replicate", "-once", "-enforce-retention", "-config", &ours]);
    let restored = dir.path().join("after-retention.db");
    let replica = format!("file://{}/replica-strata", dir.path().display());
    let (ok, text) = run(
        Command::new(strata_bin()),
        &["restore", "-o", &restored.display().to_string(), &replica],
    );
    assert!(ok && dump(&restored) == source, "{text}");
    // -force-snapshot without -once is refused, as Litestream refuses it.
    let [theirs, ours] = both(&["replicate", "-force-snapshot", "-config", &ours]);
    assert!(!theirs.0 && !ours.0);
}

#[test]
fn restore_json_and_parallelism_answer_as_litestream() {
    let dir = tempfile::tempdir().unwrap();
    let replica = format!("file://{}", testdata("litestream-0.5.17/replica").display());
    let planned = dir.path().join("planned.db").display().to_string();
    // At the newest TXID both plan the one snapshot: the same bytes.
    let [theirs, ours] = both(&["restore", "-dry-run", "-json", "-o", &planned, &replica]);
    assert!(theirs.0, "{}", theirs.1);
    assert_eq!(ours, theirs);
    // At TXID 5 the planners choose different files (strata's fetch fewer bytes); the plan
    // says the same of the restore.
    let at_5 = [
        "restore",
        "-dry-run",
        "-json",
        "-txid",
        "0000000000000005",
        "-o",
        &planned,
        &replica,
    ];
    let [theirs, ours] = both(&at_5);
    assert!(theirs.0 && ours.0, "{theirs:?} {ours:?}");
    let [mut theirs, mut ours]: [serde_json::Value; 2] =
        [&theirs.1, &ours.1].map(|t| serde_json::from_str(t).unwrap());
    let files = |v: &mut serde_json::Value| v.as_object_mut().unwrap().remove("files").unwrap();
    assert!(files(&mut ours).as_array().is_some_and(|f| !f.is_empty()));
    files(&mut theirs);
    assert_eq!(ours, theirs);
    let mut summaries = Vec::new();
    for (command, name) in [(litestream(), "l.db"), (Command::new(strata_bin()), "s.db")] {
        let out = dir.path().join(name).display().to_string();
        let args = [
            "restore",
            "-json",
            "-parallelism",
            "4",
            "-txid",
            "0000000000000005",
            "-o",
            &out,
            &replica,
        ];
        let (ok, text) = run(command, &args);
        assert!(ok, "{args:?}: {text}");
        let mut summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(summary["db_path"], out.as_str());
        assert!(summary["duration_ms"].is_u64(), "{text}");
        let fields = summary.as_object_mut().unwrap();
        fields.remove("db_path");
        fields.remove("duration_ms");
        summaries.push(summary);
    }
    assert_eq!(summaries[1], summaries[0]);
    assert_eq!(summaries[1]["txid"], "0000000000000005");
}

#[test]
fn litestream_keys_strata_does_not_act_on_are_accepted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "logging:\n  level: debug\nsocket:\n  enabled: true\n  path: {0}/l.sock\ndbs:\n  - path: {0}/a.db\n    meta-path: {0}/meta\n    replica:\n      url: file://{0}/replica\n      auto-recover: true\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let [theirs, ours] = both(&["databases", "-config", &config]);
    assert!(theirs.0, "{}", theirs.1);
    assert_eq!(ours, theirs);
    let out = Command::new(strata_bin())
        .args(["databases", "-config", &config])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["logging", "dbs[0].meta-path", "dbs[0].replica.auto-recover"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("accepted but not acted on") && l.contains(key)),
            "no warning for {key}: {stderr}"
        );
    }
}

/// Litestream's top-level replica settings (the access key, bucket, endpoint, region,
/// force-path-style) with a replica that gives only its type and path, and no key in the
/// environment: strata signs with the key and writes where the settings say, and both
/// tools restore the database from there with the same config.
#[test]
fn top_level_replica_settings_and_access_key_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES ('signed');")
        .unwrap();
    drop(conn);
    let url = strata::test_support::s3_url("keyed");
    let (bucket, query) = url
        .strip_prefix("s3://")
        .and_then(|u| u.split_once("/keyed?endpoint="))
        .unwrap();
    let endpoint = query.split('&').next().unwrap();
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "access-key-id: strata-test\nsecret-access-key: strata-test\nbucket: {bucket}\n\
             endpoint: {endpoint}\nregion: us-east-1\nforce-path-style: true\n\
             dbs:\n  - path: {}\n    replica:\n      type: s3\n      path: keyed\n",
            db.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let db_path = db.display().to_string();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let (ours, theirs) = (out("ours.db"), out("theirs.db"));
    let keyless = |mut command: Command| {
        command
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CA_BUNDLE")
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
            .env("AWS_CONFIG_FILE", dir.path().join("none"));
        command
    };
    for (mut command, args) in [
        (
            keyless(Command::new(strata_bin())),
            vec!["replicate", "-once", "-config", &config],
        ),
        (
            keyless(Command::new(strata_bin())),
            vec!["restore", "-config", &config, "-o", &ours, &db_path],
        ),
        (
            keyless(litestream()),
            vec!["restore", "-config", &config, "-o", &theirs, &db_path],
        ),
    ] {
        let out = command.args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for restored in [&ours, &theirs] {
        let restored = rusqlite::Connection::open(restored).unwrap();
        let v: String = restored
            .query_row("SELECT v FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "signed");
    }
}

/// Waits until `strata replicate` has made its control socket at `socket` (30 s at most).
fn wait_for_socket(socket: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !Path::new(socket).exists() {
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The control socket answers strata's and Litestream's own `list`, `info` and `sync`.
#[test]
fn the_control_socket_answers_list_info_and_sync_as_litestreams_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v)").unwrap();
    let socket = dir.path().join("control.sock").display().to_string();
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "socket:\n  enabled: true\n  path: {socket}\n  permissions: 0600\ndbs:\n  - path: {}\n    replica:\n      url: file://{}/replica\n",
            db.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut strata = Command::new(strata_bin())
        .args(["replicate", "-config", &config.display().to_string()])
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    conn.execute("INSERT INTO t VALUES ('one')", []).unwrap();
    conn.execute("INSERT INTO t VALUES ('two')", []).unwrap();
    let db_arg = db.display().to_string();
    // sync -wait returns once the replica holds the last commit.
    let synced: Vec<serde_json::Value> = [litestream(), Command::new(strata_bin())]
        .into_iter()
        .map(|command| {
            let (ok, out) = run(
                command,
                &["sync", "-wait", "-json", "-socket", &socket, &db_arg],
            );
            assert!(ok, "{out}");
            serde_json::from_str(&out).unwrap()
        })
        .collect();
    for s in &synced {
        assert_eq!(s["db_path"], db_arg.as_str());
        assert_eq!(s["replica_txid"], s["txid"]);
    }
    let replica = format!("file://{}/replica", dir.path().display());
    let (ok, text) = run(Command::new(strata_bin()), &["ltx", "-json", &replica]);
    assert!(ok, "{text}");
    let files: serde_json::Value = serde_json::from_str(&text).unwrap();
    let newest = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| u64::from_str_radix(f["max_txid"].as_str().unwrap(), 16).unwrap())
        .max()
        .unwrap();
    assert_eq!(synced[1]["txid"], newest, "{text}");
    // list, as both tools print it; info, with the process's PID.
    let [theirs, ours] = both(&["list", "-socket", &socket]);
    assert!(theirs.0 && ours.0, "{theirs:?} {ours:?}");
    assert_eq!(ours, theirs);
    assert!(
        ours.1
            .starts_with(&format!("{db_arg} [replicating] (last sync: ")),
        "{}",
        ours.1
    );
    let (ok, out) = run(
        Command::new(strata_bin()),
        &["info", "-json", "-socket", &socket],
    );
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["pid"], strata.id());
    assert_eq!(info["database_count"], 1);
    // A database it does not replicate is an error naming it, with both clients.
    let other = dir.path().join("other.db").display().to_string();
    let [theirs, ours] = both(&["sync", "-socket", &socket, &other]);
    assert!(!theirs.0 && !ours.0);
    signal(&strata, "-TERM");
    assert!(strata.wait().unwrap().success());
    assert!(
        !Path::new(&socket).exists(),
        "the socket is removed at exit"
    );
    // With nothing listening, a clear error.
    let out = Command::new(strata_bin())
        .args(["list", "-socket", &socket])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("control socket"));
}

/// A WAL database at `path` with one row, 'kept', in table `t`.
fn kept_db(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES ('kept');")
        .unwrap();
}

/// `replicate -once` on a config listing `left_out` (a YAML `dbs` entry) before a.db: it
/// exits 1 naming the one left out (`said` in its stderr), and a.db's replica restores.
fn one_left_out_stops_no_other(dir: &Path, left_out: &str, said: &str) {
    kept_db(&dir.join("a.db"));
    let config = dir.join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "access-key-id: k\nsecret-access-key: s\ndbs:\n{left_out}  - path: {0}/a.db\n    replica:\n      url: file://{0}/replica-a\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(strata_bin())
        .args([
            "replicate",
            "-once",
            "-config",
            &config.display().to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(said), "{stderr}");
    let restored = dir.join("out.db").display().to_string();
    let replica = format!("file://{}/replica-a", dir.display());
    let (ok, text) = run(
        Command::new(strata_bin()),
        &["restore", "-o", &restored, &replica],
    );
    assert!(ok, "{text}");
    let v: String = rusqlite::Connection::open(&restored)
        .unwrap()
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "kept");
}

/// One database whose replica cannot be reached at start stops no other: the others
/// replicate, it is named, and the exit status says something was left out.
#[test]
fn a_database_that_cannot_start_stops_no_other() {
    let dir = tempfile::tempdir().unwrap();
    kept_db(&dir.path().join("b.db"));
    let unreachable = format!(
        "  - path: {}/b.db\n    replica:\n      url: \"s3://bucket/b?endpoint=http://127.0.0.1:1&region=us-east-1&forcePathStyle=true\"\n",
        dir.path().display()
    );
    one_left_out_stops_no_other(dir.path(), &unreachable, "b.db: cannot start");
}

/// One database of the config missing stops no other (as with Litestream): the others are
/// replicated, the missing one is named, and the exit status says something was left out.
#[test]
fn a_missing_database_stops_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!(
        "  - path: {0}/missing.db\n    replica:\n      url: file://{0}/replica-m\n",
        dir.path().display()
    );
    one_left_out_stops_no_other(dir.path(), &missing, "missing.db: no database here");
}

/// `strata replicate -config config`, its stderr in `log`.
fn replicate_logged(config: &Path, log: &Path) -> std::process::Child {
    Command::new(strata_bin())
        .args(["replicate", "-config", &config.display().to_string()])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until `log` says `text` (30 s at most).
fn wait_said(log: &Path, text: &str) {
    let said = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !said().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "never said {text:?}: {}",
            said()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops `strata` (SIGTERM; it must exit 0), then the rows `replica` restores to.
fn stop_and_restore(mut strata: std::process::Child, replica: &str, out: &Path) -> Vec<String> {
    signal(&strata, "-TERM");
    assert!(strata.wait().unwrap().success());
    restored_rows(replica, out)
}

/// The rows of table `t` that `replica` restores to (into `out`).
fn restored_rows(replica: &str, out: &Path) -> Vec<String> {
    let out = out.display().to_string();
    let (ok, text) = run(
        Command::new(strata_bin()),
        &["restore", "-o", &out, replica],
    );
    assert!(ok, "{text}");
    rows_of(&rusqlite::Connection::open(&out).unwrap())
}

/// The rows of table `t` in `conn`.
fn rows_of(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("SELECT v FROM t ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A database the config lists that does not exist yet is replicated once it appears (as
/// Litestream waits for it), while the others replicate from the start; the exit status
/// is 0, and its replica restores what was written to it.
#[test]
fn a_database_that_appears_later_is_replicated() {
    let dir = tempfile::tempdir().unwrap();
    kept_db(&dir.path().join("a.db"));
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {0}/a.db\n    replica:\n      url: file://{0}/replica-a\n  - path: {0}/late.db\n    replica:\n      url: file://{0}/replica-late\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("strata.log");
    let strata = replicate_logged(&config, &log);
    wait_said(
        &log,
        "late.db: no database here yet: replicated once it appears",
    );
    wait_said(&log, "replicating");
    let conn = rusqlite::Connection::open(dir.path().join("late.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES ('late');")
        .unwrap();
    wait_said(&log, "late.db: it exists now: replicating");
    conn.execute("INSERT INTO t VALUES ('later')", []).unwrap();
    let replica = format!("file://{}/replica-late", dir.path().display());
    let rows = stop_and_restore(strata, &replica, &dir.path().join("restored.db"));
    assert_eq!(rows, ["late", "later"]);
}

/// A database that cannot start (its replica's directory cannot be made: a file is in the
/// way) while another replicates is tried again on its own, as Litestream retries, and
/// replicates once the way is clear; the exit status is 0 and the replica restores
/// everything. (With nothing started, strata exits non-zero instead: see
/// `capture_holes::one_database_has_one_capture`.)
#[test]
fn a_database_that_cannot_start_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    kept_db(&db);
    kept_db(&dir.path().join("ok.db"));
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      url: file://{}/replica\n  - path: {2}/ok.db\n    replica:\n      url: file://{2}/replica-ok\n",
            db.display(),
            blocker.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("strata.log");
    let strata = replicate_logged(&config, &log);
    wait_said(&log, "a.db: cannot start");
    wait_said(&log, "tried again in 2 s");
    std::fs::remove_file(&blocker).unwrap();
    wait_said(&log, "a.db: started on a later try: replicating");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("INSERT INTO t VALUES ('after')", []).unwrap();
    let replica = format!("file://{}/replica", blocker.display());
    let rows = stop_and_restore(strata, &replica, &dir.path().join("restored.db"));
    assert_eq!(rows, ["kept", "after"]);
}

/// The config's `exec:` runs as `-exec` does (strata exits with its code); `-log-level` is
/// taken.
#[test]
fn the_configs_exec_and_log_level_work_as_litestreams() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch("CREATE TABLE t (v)").unwrap();
    drop(conn);
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "exec: sh -c 'sqlite3 {0}/a.db \"INSERT INTO t VALUES (7)\"; exit 3'\ndbs:\n  - path: {0}/a.db\n    replica:\n      url: file://{0}/replica\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = Command::new(strata_bin())
        .args(["replicate", "-log-level", "debug", "-config", &config])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the command committed was synced before strata exited.
    let restored = dir.path().join("out.db").display().to_string();
    let replica = format!("file://{}/replica", dir.path().display());
    let (ok, text) = run(
        Command::new(strata_bin()),
        &["restore", "-o", &restored, &replica],
    );
    assert!(ok, "{text}");
    let v: i64 = rusqlite::Connection::open(&restored)
        .unwrap()
        .query_row("SELECT v FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
}

/// `stop`, `start`, `register` and `unregister` over the control socket, asked by
/// Litestream's client and by strata's: a stopped database is listed as stopped and its
/// commits made meanwhile reach the replica once started again; a registered one is
/// replicated to the URL given until unregistered, after a final sync. Both clients print
/// the same fields.
#[test]
fn the_control_socket_starts_stops_registers_and_unregisters_databases() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let conn = rusqlite::Connection::open(dir.path().join(name)).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v)")
            .unwrap();
        conn
    };
    let (a, b) = (open("a.db"), open("b.db"));
    let path = |name: &str| dir.path().join(name).display().to_string();
    let socket = path("control.sock");
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "socket:\n  enabled: true\n  path: {socket}\ndbs:\n  - path: {}\n    replica:\n      url: file://{}\n",
            path("a.db"),
            path("replica-a")
        ),
    )
    .unwrap();
    let mut strata = Command::new(strata_bin())
        .args(["replicate", "-config", &config.display().to_string()])
        .spawn()
        .unwrap();
    wait_for_socket(&socket);
    // Go's flags come before the arguments.
    let ask = |command: Command, args: &[&str]| -> serde_json::Value {
        let mut all = vec![args[0], "-json", "-socket", &socket];
        all.extend(&args[1..]);
        let (ok, out) = run(command, &all);
        assert!(ok, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let listed = || run(Command::new(strata_bin()), &["list", "-socket", &socket]).1;
    let (a_path, b_path) = (path("a.db"), path("b.db"));

    // stop: Litestream's client, then strata's (already stopped).
    let theirs = ask(litestream(), &["stop", &a_path]);
    assert_eq!(theirs["status"], "stopped", "{theirs}");
    assert_eq!(theirs["state"], "stopped");
    let ours = ask(Command::new(strata_bin()), &["stop", &a_path]);
    assert_eq!(ours["status"], "already_stopped", "{ours}");
    assert_eq!(keys(&ours), keys(&theirs));
    assert!(
        listed().contains(&format!("{a_path} [stopped]")),
        "{}",
        listed()
    );
    a.execute("INSERT INTO t VALUES ('while stopped')", [])
        .unwrap();
    // start: strata's client, then Litestream's (already running).
    let ours = ask(Command::new(strata_bin()), &["start", &a_path]);
    assert_eq!(ours["status"], "started", "{ours}");
    let theirs = ask(litestream(), &["start", &a_path]);
    assert_eq!(theirs["status"], "already_running", "{theirs}");
    assert_eq!(keys(&ours), keys(&theirs));
    let synced = ask(Command::new(strata_bin()), &["sync", "-wait", &a_path]);
    assert_eq!(synced["replica_txid"], synced["txid"]);

    // register: Litestream's client, then strata's (already registered).
    let replica_b = format!("file://{}", path("replica-b"));
    let theirs = ask(litestream(), &["register", "-replica", &replica_b, &b_path]);
    assert_eq!(theirs["status"], "registered", "{theirs}");
    let ours = ask(
        Command::new(strata_bin()),
        &["register", "-replica", &replica_b, &b_path],
    );
    assert_eq!(ours["status"], "already_registered", "{ours}");
    assert_eq!(keys(&ours), keys(&theirs));
    assert!(
        listed().contains(&format!("{b_path} [replicating]")),
        "{}",
        listed()
    );
    b.execute("INSERT INTO t VALUES ('registered')", [])
        .unwrap();
    ask(Command::new(strata_bin()), &["sync", "-wait", &b_path]);
    // unregister: strata's client (a final sync), then Litestream's (already gone).
    b.execute("INSERT INTO t VALUES ('last')", []).unwrap();
    let ours = ask(Command::new(strata_bin()), &["unregister", &b_path]);
    assert_eq!(ours["status"], "unregistered", "{ours}");
    assert!(ours["final_txid"].as_u64().unwrap() > 0, "{ours}");
    let theirs = ask(litestream(), &["unregister", &b_path]);
    assert_eq!(theirs["status"], "already_unregistered", "{theirs}");
    assert_eq!(keys(&ours), keys(&theirs));
    assert!(!listed().contains(&b_path), "{}", listed());
    // A bad URL and an unknown database are refused, by both clients.
    for mut command in [litestream(), Command::new(strata_bin())] {
        let out = command
            .args([
                "register",
                "-socket",
                &socket,
                "-replica",
                "nope://x",
                &path("c.db"),
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("replica url"),
            "{said}"
        );
    }
    let [theirs, ours] = both(&["start", "-socket", &socket, &path("c.db")]);
    assert!(!theirs.0 && !ours.0, "{theirs:?} {ours:?}");
    // reset: refused while the database is replicated; afterwards it clears the staging.
    let reset = |args: &[&str]| {
        Command::new(strata_bin())
            .arg("reset")
            .args(args)
            .output()
            .unwrap()
    };
    let refused = reset(&[&a_path]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("stop its replication first"),
        "{said}"
    );
    signal(&strata, "-TERM");
    assert!(strata.wait().unwrap().success());
    let staging = dir.path().join(".a.db-strata");
    let dry = reset(&["-dry-run", &a_path]);
    let listed = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success() && listed.contains("position"),
        "{listed}"
    );
    assert!(staging.exists());
    assert!(reset(&[&a_path]).status.success());
    assert!(!staging.exists());

    // Both replicas restore what was committed, the last commits included.
    for (name, replica, source) in [("a", path("replica-a"), &a), ("b", path("replica-b"), &b)] {
        let out = dir.path().join(format!("{name}-restored.db"));
        let restored = restored_rows(&format!("file://{replica}"), &out);
        assert_eq!(restored, rows_of(source));
    }
}
