//! `strata ltx verify` and `strata ltx dump`, run as a user runs them.

use std::process::{Command, Output};

use strata::test_support::testdata;

fn strata(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn verify_prints_ok_per_file_and_exits_zero() {
    let a = testdata("ltx-go-reference/v3-block/0000000000000001-0000000000000001.ltx");
    let b = testdata("litestream-0.5.17/replica/ltx/9/0000000000000001-0000000000000010.ltx");
    let out = strata(&[
        "ltx".as_ref(),
        "verify".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].ends_with("ok (0000000000000001-0000000000000001, 4 pages, commit 4, page size 512, file checksum af1488f353885365)"), "{}", lines[0]);
    assert!(
        lines[1].contains(
            ": ok (0000000000000001-0000000000000010, 10 pages, commit 10, page size 4096"
        ),
        "{}",
        lines[1]
    );
}

#[test]
fn verify_reports_each_failure_with_its_offset_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let good = testdata("ltx-go-reference/v3-block/0000000000000002-0000000000000002.ltx");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.ltx");
    std::fs::write(&truncated, &bytes[..150]).unwrap();
    let flipped = dir.path().join("flipped.ltx");
    let mut b = bytes.clone();
    *b.last_mut().unwrap() ^= 1;
    std::fs::write(&flipped, &b).unwrap();
    let missing = dir.path().join("missing.ltx");
    let v1 = testdata("ltx-go-reference/v1/snapshot-real512-uncompressed.ltx");

    let args = [
        good.as_os_str(),
        truncated.as_os_str(),
        flipped.as_os_str(),
        missing.as_os_str(),
        v1.as_os_str(),
    ];
    let out = strata(&[&["ltx".as_ref(), "verify".as_ref()][..], &args].concat());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains(": ok ("));
    assert!(
        lines[1].starts_with(&format!(
            "{}: FAILED: truncated file: the compressed size of the page at offset 149",
            truncated.display()
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("FAILED: file checksum mismatch"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("FAILED: cannot open"), "{}", lines[3]);
    assert!(
        lines[4].contains("FAILED: format-1 (LiteFS-era) LTX file"),
        "{}",
        lines[4]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 of 5 files failed"));
}

#[test]
fn dump_shows_header_pages_and_trailer() {
    let f = testdata("ltx-go-reference/v3-block/nochecksum-0000000000000005-0000000000000006.ltx");
    let out = strata(&["ltx".as_ref(), "dump".as_ref(), f.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for want in [
        "flags:             0x00000002 (NoChecksum)",
        "commit:            3 pages",
        "min TXID:          0000000000000005",
        "timestamp:         2023-11-14T22:13:24.000Z (1700000004000 ms)",
        "WAL offset:        32",
        "WAL salts:         11223344 55667788",
        "node ID:           2748",
        "file checksum:     9c2aef9f6db737ca (verified)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let page_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("2 "))
        .unwrap();
    assert!(
        page_line.split_whitespace().nth(1) == Some("100"),
        "{page_line}"
    );
}
