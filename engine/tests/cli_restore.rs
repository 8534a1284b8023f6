//! `strata restore` and `strata ltx ls`, run as a user runs them.

mod common;

use std::process::{Command, Output};

use common::*;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn restore_latest_and_a_txid() {
    let replica = testdata("litestream-0.5.17/replica");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("latest.db");
    let o = strata(&[
        "restore",
        "-o",
        out.to_str().unwrap(),
        replica.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "restored TXID 0000000000000010 to {}: 40.0 KiB (10 pages of 4096 bytes) from 1 file",
            out.display()
        )),
        "{stdout}"
    );
    assert_eq!(sha256_file(&out), expected_restores()[15].1);

    let out = dir.path().join("seven.db");
    let url = format!("file://{}", replica.display());
    let o = strata(&[
        "restore",
        "--txid",
        "7",
        "--integrity-check",
        "full",
        "-o",
        out.to_str().unwrap(),
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(sha256_file(&out), expected_restores()[6].1);

    // Refuses to overwrite, then does with --force.
    let o = strata(&["restore", "-o", out.to_str().unwrap(), &url]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .1
            .contains("already exists (use --force to replace it)"),
        "{}",
        text(&o).1
    );
    let o = strata(&["restore", "--force", "-o", out.to_str().unwrap(), &url]);
    assert!(o.status.success());
    assert_eq!(sha256_file(&out), expected_restores()[15].1);
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let replica = testdata("litestream-0.5.17/replica");
    let o = strata(&[
        "restore",
        "--dry-run",
        "--txid",
        "0000000000000008",
        replica.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("plan to TXID 0000000000000008: 4 files, 165.4 KiB"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("L2  0000000000000001-0000000000000005.ltx")
            && lines[1].contains("43831"),
        "{stdout}"
    );
    assert!(
        lines[4].contains("L0  0000000000000008-0000000000000008.ltx"),
        "{stdout}"
    );
}

#[test]
fn restore_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.db");
    let replica = testdata("litestream-0.5.17/replica");
    for (args, expected) in [
        (
            vec![
                "restore",
                "-o",
                out.to_str().unwrap(),
                dir.path().join("none").to_str().unwrap(),
            ],
            "no replica directory at",
        ),
        (
            vec![
                "restore",
                "--txid",
                "99",
                "-o",
                out.to_str().unwrap(),
                replica.to_str().unwrap(),
            ],
            "TXID 0000000000000099 is not a restore point; the latest TXID in the replica is 0000000000000010",
        ),
        (
            vec![
                "restore",
                "--timestamp",
                "2001-01-01T00:00:00Z",
                "-o",
                out.to_str().unwrap(),
                replica.to_str().unwrap(),
            ],
            "no restore point at or before 2001-01-01T00:00:00Z",
        ),
        (
            vec!["restore", replica.to_str().unwrap()],
            "give the output database with -o",
        ),
        (
            vec!["restore", "-o", "x", "s3://b/p?bogus=1"],
            "unknown query parameter \"bogus\"",
        ),
    ] {
        let o = strata(&args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn ls_lists_every_level() {
    let replica = testdata("litestream-0.5.17/replica");
    let o = strata(&["ltx", "ls", replica.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 29 + 1, "{stdout}");
    assert!(
        lines[1].starts_with("L0    0000000000000001  0000000000000001         46551  "),
        "{}",
        lines[1]
    );
    assert!(
        lines[29].starts_with("L9    0000000000000001  0000000000000010         22571  "),
        "{}",
        lines[29]
    );
    assert!(
        lines[30].starts_with("29 files, ") && lines[30].contains(" 2 LIST"),
        "{}",
        lines[30]
    );
}

#[test]
fn replicate_rejects_a_config_with_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        "dbs:\n  - path: /tmp/x.db\n    replica:\n      url: /tmp/r\n      retention: 24h\n",
    )
    .unwrap();
    let o = strata(&["replicate", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let (_, stderr) = text(&o);
    assert!(
        stderr.contains("dbs[0].replica.retention: unknown key"),
        "{stderr}"
    );

    let o = strata(&[
        "replicate",
        dir.path().join("missing.db").to_str().unwrap(),
        dir.path().join("r").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("missing.db: no database here"),
        "{}",
        text(&o).1
    );
}

#[test]
fn bad_targets_and_truncated_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    let l0 = replica.join("ltx/0");
    std::fs::create_dir_all(&l0).unwrap();
    for f in [
        "0000000000000001-0000000000000001.ltx",
        "0000000000000002-0000000000000002.ltx",
    ] {
        std::fs::copy(
            testdata(&format!("litestream-0.5.17/replica/ltx/0/{f}")),
            l0.join(f),
        )
        .unwrap();
    }
    // A file named like LTX, shorter than a header.
    std::fs::write(
        l0.join("0000000000000003-0000000000000003.ltx"),
        b"LTX1 short",
    )
    .unwrap();
    let out = dir.path().join("out.db");
    let url = replica.to_str().unwrap();

    let o = strata(&["restore", "-o", out.to_str().unwrap(), "--txid", "0", url]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("TXIDs start at 1"), "{}", text(&o).1);

    for args in [
        vec!["--timestamp", "2099-01-01T00:00:00Z"],
        vec!["--txid", "3"],
        vec![],
    ] {
        let o = strata(&[&["restore", "-o", out.to_str().unwrap()][..], &args, &[url]].concat());
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("0000000000000003-0000000000000003.ltx"),
            "{args:?}: {stderr}"
        );
        assert!(!out.exists());
    }
}

/// An S3 endpoint that accepts connections and never answers: a restore from it stalls.
fn stalled_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("s3://bucket/db?endpoint=http://127.0.0.1:{port}&region=us-east-1&forcePathStyle=true")
}

/// A restore into `out` from the stalled endpoint, once its temporary file exists.
fn stalled_restore(url: &str, out: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["restore", "-o", out.to_str().unwrap(), url])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let name = format!(
        ".{}.{}.strata-restore",
        out.file_name().unwrap().to_str().unwrap(),
        child.id()
    );
    let temp = out.with_file_name(name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !temp.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {}",
            temp.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, temp)
}

#[test]
fn a_signalled_restore_removes_its_partial_copy_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let url = stalled_endpoint();
    for (sig, number) in [("-TERM", 15), ("-INT", 2), ("-HUP", 1)] {
        let (child, _) = stalled_restore(&url, &out);
        common::capture::signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(128 + number), "{sig}: {stderr}");
        assert!(stderr.contains("restore stopped by SIG"), "{sig}: {stderr}");
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "{sig}");
    }
}

#[test]
fn a_killed_restores_partial_copy_is_removed_by_the_next_but_a_running_ones_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let url = stalled_endpoint();
    let fixture = testdata("litestream-0.5.17/replica");
    let (latest_txid, latest_sha, _) = expected_restores().pop().unwrap();
    assert_eq!(latest_txid, 0x10);

    let (mut killed, dead_temp) = stalled_restore(&url, &out);
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(dead_temp.exists(), "SIGKILL leaves the temporary file");

    let (running, live_temp) = stalled_restore(&url, &out);
    let o = strata(&[
        "restore",
        "-o",
        out.to_str().unwrap(),
        fixture.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(sha256_file(&out), latest_sha);
    assert!(!dead_temp.exists(), "the dead restore's file is removed");
    assert!(live_temp.exists(), "the running restore's file is kept");

    common::capture::signal(&running, "-TERM");
    let o = running.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{:?}", text(&o));
    assert_eq!(leftovers(dir.path()), vec!["out.db".to_owned()]);
    assert_eq!(
        sha256_file(&out),
        latest_sha,
        "the finished output is untouched"
    );
}
