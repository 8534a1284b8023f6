//! What operators run strata with: directory mode, SIGHUP, `--exec`, and restore's
//! start-up flags. The `strata` binary runs as a real process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::capture::{signal, strata_bin};

fn create(db: &Path, rows: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    for i in 0..rows {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
}

fn dump(db: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn restore(replica: &Path, out: &Path) -> std::process::Output {
    Command::new(strata_bin())
        .args(["restore", "-o"])
        .arg(out)
        .arg(format!("file://{}", replica.display()))
        .output()
        .unwrap()
}

fn replicate(config: &Path, log: &Path) -> Child {
    Command::new(strata_bin())
        .args(["replicate", "--config"])
        .arg(config)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until `cond` holds, for at most `limit`; returns how long it took.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn has_l0(replica: &Path) -> bool {
    std::fs::read_dir(replica.join("ltx/0")).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn a_watched_directory_picks_up_new_databases_and_drops_deleted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (dbs, replicas) = (dir.path().join("dbs"), dir.path().join("replicas"));
    std::fs::create_dir_all(dbs.join("team")).unwrap();
    create(&dbs.join("a.db"), 3);
    // Matches the pattern but is no database: never taken.
    std::fs::write(dbs.join("notes.db"), "not a database").unwrap();
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - dir: {}\n    pattern: \"*.db\"\n    recursive: true\n    watch: true\n    replica:\n      url: file://{}\n",
            dbs.display(),
            replicas.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let strata = replicate(&config, &log);
    wait_for(Duration::from_secs(20), "a.db replicated", || {
        has_l0(&replicas.join("a.db"))
    });

    // A database created later, in a subdirectory.
    create(&dbs.join("team/b.db"), 5);
    let took = wait_for(Duration::from_secs(10), "team/b.db replicated", || {
        has_l0(&replicas.join("team/b.db"))
    });
    eprintln!("a new database was in its replica {took:?} after it was created");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // An application that closes its connection after each write: strata's own connections
    // keep the WAL from being checkpointed away and deleted, rescans of the directory and
    // all (a rescan that opened and closed the file once dropped strata's locks on it, and
    // the application's last close then deleted the WAL under the capture).
    for round in 0..3 {
        // Python's own SQLite, as an application would be.
        let wrote = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('INSERT INTO t(v) VALUES (?)', (sys.argv[2],))\nc.commit()\nc.close()",
                dbs.join("a.db").to_str().unwrap(),
                &format!("round {round}"),
            ])
            .status()
            .unwrap();
        assert!(wrote.success());
        assert!(
            dbs.join("a.db-wal").exists(),
            "the WAL was deleted under the capture"
        );
        std::thread::sleep(Duration::from_millis(1200));
    }
    let out = dir.path().join("a.restored");
    let restored = restore(&replicas.join("a.db"), &out);
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(dump(&out), dump(&dbs.join("a.db")));

    // One deleted is stopped; the others go on.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dbs.join(format!("a.db{suffix}")));
    }
    wait_for(Duration::from_secs(10), "a.db stopped", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("a.db: deleted; stopped"))
    });
    create(&dbs.join("team/b.db"), 4);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&strata, "-TERM");
    let mut strata = strata;
    let status = strata.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!replicas.join("notes.db").exists(), "{log}");
    let out = dir.path().join("b.restored");
    let restored = restore(&replicas.join("team/b.db"), &out);
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(dump(&out), dump(&dbs.join("team/b.db")));
}

#[test]
fn sighup_applies_a_changed_config_and_leaves_the_rest_running() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    create(&a, 3);
    create(&b, 3);
    let entry = |db: &Path, name: &str| {
        format!(
            "  - path: {}\n    replica:\n      path: {}\n",
            db.display(),
            dir.path().join(name).display()
        )
    };
    let config = dir.path().join("strata.yml");
    std::fs::write(&config, format!("dbs:\n{}", entry(&a, "ra"))).unwrap();
    let log = dir.path().join("log");
    let strata = replicate(&config, &log);
    wait_for(Duration::from_secs(20), "a.db replicated", || {
        has_l0(&dir.path().join("ra"))
    });
    // A broken config is reported and changes nothing.
    std::fs::write(&config, "dbs: [ {").unwrap();
    signal(&strata, "-HUP");
    wait_for(
        Duration::from_secs(10),
        "the broken config reported",
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("config not applied")),
    );
    // So is one whose aliases would expand to gigabytes (a few hundred bytes of YAML).
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{p}"); 10].join(", ")
        ));
    }
    std::fs::write(&config, bomb).unwrap();
    signal(&strata, "-HUP");
    wait_for(Duration::from_secs(10), "the alias bomb refused", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("aliases are resolved"))
    });
    std::fs::write(
        &config,
        format!("dbs:\n{}{}", entry(&a, "ra"), entry(&b, "rb")),
    )
    .unwrap();
    signal(&strata, "-HUP");
    wait_for(Duration::from_secs(10), "b.db replicated", || {
        has_l0(&dir.path().join("rb"))
    });
    create(&a, 2);
    create(&b, 2);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&strata, "-TERM");
    let mut strata = strata;
    let status = strata.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}");
    // a was never restarted: one full copy, at its start.
    assert!(!log.contains("settings changed"), "{log}");
    assert_eq!(log.matches("writing a full copy").count(), 2, "{log}");
    for (db, replica) in [(&a, "ra"), (&b, "rb")] {
        let out = dir.path().join(format!("{replica}.restored"));
        assert!(restore(&dir.path().join(replica), &out).status.success());
        assert_eq!(dump(&out), dump(db));
    }
}

#[test]
fn exec_runs_the_application_and_exits_with_its_code_after_a_final_sync() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db, 1);
    let replica = dir.path().join("replica");
    // The application commits as fast as it can, then exits with 3 at once: what it
    // committed last is in the replica only thanks to the final sync.
    let app = format!(
        "python3 -c 'import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nfor i in range(500):\n    c.execute(\"INSERT INTO t(v) VALUES (?)\", (\"app %d\" % i,)); c.commit()\nsys.exit(3)' {}",
        db.display()
    );
    let out = Command::new(strata_bin())
        .arg("replicate")
        .arg(&db)
        .arg(format!("file://{}", replica.display()))
        .args(["-exec", &app])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("replicated through"), "{stderr}");
    let restored = dir.path().join("restored.db");
    assert!(restore(&replica, &restored).status.success());
    let rows = dump(&restored);
    assert_eq!(rows, dump(&db));
    assert_eq!(rows.len(), 501);

    // A command that cannot start is an error, not a replication without it.
    let out = Command::new(strata_bin())
        .arg("replicate")
        .arg(&db)
        .arg(format!("file://{}", replica.display()))
        .args(["--exec", "/nonexistent/app"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn exec_a_command_that_ignores_signals_is_killed_after_a_second_one_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&db, 1);
    let replica = dir.path().join("replica");
    // The application commits 50 rows, then ignores SIGTERM and SIGINT and sleeps.
    let app = format!(
        "python3 -c 'import signal, sqlite3, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nc = sqlite3.connect(sys.argv[1])\nfor i in range(50):\n    c.execute(\"INSERT INTO t(v) VALUES (?)\", (\"app %d\" % i,)); c.commit()\ntime.sleep(600)' {}",
        db.display()
    );
    let log = dir.path().join("log");
    let mut strata = Command::new(strata_bin())
        .arg("replicate")
        .arg(&db)
        .arg(format!("file://{}", replica.display()))
        .args(["-exec", &app])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the application's rows", || {
        dump(&db).len() == 51
    });
    signal(&strata, "-TERM");
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    signal(&strata, "-TERM");
    let status = loop {
        if let Some(status) = strata.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(20),
            "strata still waits for its command 20 s after a second signal"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    // Killed by SIGKILL, as a shell reports it; after the final sync.
    assert_eq!(status.code(), Some(128 + 9), "{log}");
    assert!(
        log.contains("second signal") && log.contains("replicated through"),
        "{log}"
    );
    let restored = dir.path().join("restored.db");
    assert!(restore(&replica, &restored).status.success());
    assert_eq!(dump(&restored), dump(&db));
}

#[test]
fn restore_start_up_flags_skip_what_is_there_or_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let run = |args: &[&str]| {
        Command::new(strata_bin())
            .arg("restore")
            .args(args)
            .output()
            .unwrap()
    };
    let missing = format!("file://{}", dir.path().join("no-replica").display());
    // No replica: an error, unless -if-replica-exists.
    assert!(
        !run(&["-o", out.to_str().unwrap(), &missing])
            .status
            .success()
    );
    let skipped = run(&["-if-replica-exists", "-o", out.to_str().unwrap(), &missing]);
    assert!(skipped.status.success(), "{skipped:?}");
    assert!(!out.exists());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty = format!("file://{}", empty.display());
    assert!(
        run(&["-if-replica-exists", "-o", out.to_str().unwrap(), &empty])
            .status
            .success()
    );
    assert!(!out.exists());

    // A replica, restored through the config's entry for the database.
    let db = dir.path().join("app.db");
    create(&db, 7);
    let replica = dir.path().join("replica");
    let mut strata = Command::new(strata_bin())
        .arg("replicate")
        .arg(&db)
        .arg(&replica)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "replicated", || has_l0(&replica));
    signal(&strata, "-TERM");
    assert!(strata.wait().unwrap().success());
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      path: {}\n",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    // The database exists: -if-db-not-exists leaves it alone.
    let before = std::fs::read(&db).unwrap();
    let kept = run(&[
        "-config",
        config.to_str().unwrap(),
        "-if-db-not-exists",
        db.to_str().unwrap(),
    ]);
    assert!(kept.status.success(), "{kept:?}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    // Gone: restored to its own path.
    let rows = dump(&db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", db.display())));
    }
    let restored = run(&[
        "-config",
        config.to_str().unwrap(),
        "-if-db-not-exists",
        "-if-replica-exists",
        db.to_str().unwrap(),
    ]);
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(dump(&db), rows);
}

/// A GET over plain HTTP/1.1: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A server that counts the requests it gets (the heartbeat's monitor).
fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, hits)
}

#[test]
fn metrics_status_and_heartbeat_report_what_replication_does() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create(&db, 5);
    let (monitor, pings) = counting_server();
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            "shutdown-sync-timeout: 2s\naddr: 127.0.0.1:0\nheartbeat-url: http://{monitor}/ping\nheartbeat-interval: 1s\nlevels: [{{interval: 1s}}]\ndbs:\n  - path: {}\n    replica:\n      url: file://{}\n",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("strata.log");
    let mut strata = replicate(&config, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(10), "the endpoint", || {
        read_log().contains("serving http://")
    });
    let text = read_log();
    let addr = text
        .split("serving http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    wait_for(Duration::from_secs(10), "the first L0 file", || {
        has_l0(&replica)
    });
    create(&db, 5);
    wait_for(Duration::from_secs(10), "an L1 file", || {
        std::fs::read_dir(replica.join("ltx/1")).is_ok_and(|d| d.count() >= 1)
    });
    // Everything written is in by now; the newest TXID, from the file names.
    std::thread::sleep(Duration::from_millis(1500));
    let newest = ["ltx/0", "ltx/1"]
        .iter()
        .flat_map(|level| std::fs::read_dir(replica.join(level)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy()[17..33].to_owned())
        .max()
        .unwrap();
    let txid = u64::from_str_radix(&newest, 16).unwrap();

    let canonical = std::fs::canonicalize(&db).unwrap();
    let series = format!(
        "{{db=\"{}\",replica=\"file://{}\"}}",
        canonical.display(),
        replica.display()
    );
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    for expected in [
        format!("strata_replica_txid{series} {txid}.0"),
        format!("strata_replica_lag_seconds{series} 0.0"),
        format!("strata_upload_errors_total{series} 0.0"),
        "strata_databases{state=\"running\"} 1.0".to_owned(),
    ] {
        assert!(metrics.contains(&expected), "no {expected} in:\n{metrics}");
    }
    for family in [
        "strata_syncs_total{",
        "strata_sync_seconds_total{",
        "strata_requests_total{",
        "strata_level_files{",
        "strata_level_bytes{",
        "strata_compaction_passes_total{",
        "strata_compaction_files_written_total{",
        "strata_retention_passes_total{",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    // Litestream's names for what both measure, so its dashboards keep working.
    let db_series = format!("{{db=\"{}\"}}", canonical.display());
    let staged = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("strata_staged_txid{db_series} ")))
        .unwrap_or_else(|| panic!("no strata_staged_txid in:\n{metrics}"));
    for expected in [
        format!("litestream_txid{db_series} {staged}"),
        format!("litestream_sync_error_count{db_series} 0.0"),
    ] {
        assert!(metrics.contains(&expected), "no {expected} in:\n{metrics}");
    }
    for family in [
        "litestream_sync_count{",
        "litestream_db_size{",
        "litestream_sync_seconds{",
        "litestream_wal_size{",
        "litestream_replica_operation_total{replica_type=\"file\",operation=\"PUT\"}",
        "litestream_replica_operation_bytes{replica_type=\"file\",operation=\"GET\"}",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert_eq!(http_get(&addr, "/nothing").0, 404);

    // Clients that connect and say nothing (fewer than the 64 served at once): the
    // endpoint still answers, and they are closed once the header timeout (5 s) has
    // passed, so they cannot pile up and take the descriptors replication needs.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    assert_eq!(http_get(&addr, "/status").0, 200);
    std::thread::sleep(Duration::from_secs(7));
    for mut stream in idle {
        use std::io::Read;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        // Closed by the server: end of stream (after a 408, perhaps), never a timeout.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("an idle connection is still open: {e}"),
            }
        }
    }

    let status = Command::new(strata_bin())
        .args(["status", "--addr", &addr])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{shown}");
    assert!(
        shown.contains(&canonical.display().to_string())
            && shown.contains(&format!("TXID {newest}, lag 0.0 s")),
        "{shown}"
    );
    let from_replica = Command::new(strata_bin())
        .args(["status", &format!("file://{}", replica.display())])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&from_replica.stdout);
    assert!(from_replica.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("restores to TXID {newest}")),
        "{shown}"
    );

    // Healthy: pinged about once a second.
    wait_for(Duration::from_secs(10), "two heartbeats", || {
        pings.load(SeqCst) >= 2
    });

    // The replica breaks (its directory replaced by a file): uploads fail, the heartbeat
    // stops, and the status says why.
    std::fs::rename(&replica, dir.path().join("moved")).unwrap();
    std::fs::write(&replica, "not a directory").unwrap();
    create(&db, 1);
    wait_for(Duration::from_secs(10), "the upload error", || {
        let (_, metrics) = http_get(&addr, "/metrics");
        !metrics.contains(&format!("strata_upload_errors_total{series} 0.0"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before = pings.load(SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pings.load(SeqCst),
        before,
        "a heartbeat was sent while uploads failed"
    );
    let (_, shown) = http_get(&addr, "/status");
    assert!(shown.contains("last upload error"), "{shown}");

    signal(&strata, "-TERM");
    let _ = strata.wait();
    let bad = Command::new(strata_bin())
        .args(["status", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no strata replicate answered"));
}
