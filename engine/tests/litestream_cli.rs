//! Litestream 0.5.17's own command lines (Go's one-dash flags), run with `litestream` and
//! with `strata` in its place: the same exit codes, the same output, the same bytes restored.

mod common;

use std::path::Path;
use std::process::Command;

use common::capture::strata_bin;
use common::*;

/// Runs `command` with `args`: (succeeded, stdout).
fn run(mut command: Command, args: &[&str]) -> (bool, String) {
    let out = command.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
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
