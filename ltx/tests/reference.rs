//! The crate against files written by the Go reference library and by Litestream 0.5.17.

mod common;

use std::io::Cursor;

use common::{Contents, decode, read, sha256_hex, testdata};
use ltx::{
    ApplyChecks, Checksum, CompactOptions, Decoder, Encoder, Error, PageEncoding, TxidRange, apply,
    compact, decode_page_frame, read_file_tail, write_snapshot,
};

/// What `testdata/ltx-go-reference/README.md` publishes for one file.
struct Expected {
    name: &'static str,
    commit: u32,
    pages: &'static [u32],
    pre_apply: u64,
    post_apply: u64,
    file_checksum_block: u64,
    file_checksum_frame: u64,
}

const CHAIN: &[Expected] = &[
    Expected {
        name: "0000000000000001-0000000000000001.ltx",
        commit: 4,
        pages: &[1, 2, 3, 4],
        pre_apply: 0,
        post_apply: 0xcda2d000a8894617,
        file_checksum_block: 0xaf1488f353885365,
        file_checksum_frame: 0xf3dcbe704f097803,
    },
    Expected {
        name: "0000000000000002-0000000000000002.ltx",
        commit: 5,
        pages: &[2, 5],
        pre_apply: 0xcda2d000a8894617,
        post_apply: 0xaf432fded448bd6f,
        file_checksum_block: 0xbd37e49544421e82,
        file_checksum_frame: 0xa29bdef866c2f8c6,
    },
    Expected {
        name: "0000000000000003-0000000000000003.ltx",
        commit: 3,
        pages: &[1],
        pre_apply: 0xaf432fded448bd6f,
        post_apply: 0xa36ccf7fe94c2099,
        file_checksum_block: 0x9ce9c8d93f925d2c,
        file_checksum_frame: 0xd6b15a55559b47e9,
    },
    Expected {
        name: "0000000000000004-0000000000000004.ltx",
        commit: 0,
        pages: &[],
        pre_apply: 0xa36ccf7fe94c2099,
        post_apply: 0x8000000000000000,
        file_checksum_block: 0xd343cd2749f6a156,
        file_checksum_frame: 0xd343cd2749f6a156,
    },
    Expected {
        name: "compacted-0000000000000001-0000000000000003.ltx",
        commit: 3,
        pages: &[1, 2, 3],
        pre_apply: 0,
        post_apply: 0xa36ccf7fe94c2099,
        file_checksum_block: 0xae7b869ec11065a8,
        file_checksum_frame: 0xabe30e5832f6c2f6,
    },
    Expected {
        name: "compacted-0000000000000002-0000000000000003.ltx",
        commit: 3,
        pages: &[1, 2],
        pre_apply: 0xcda2d000a8894617,
        post_apply: 0xa36ccf7fe94c2099,
        file_checksum_block: 0xd6ac51f15850ecd0,
        file_checksum_frame: 0xb742413644f42813,
    },
    Expected {
        name: "nochecksum-0000000000000005-0000000000000006.ltx",
        commit: 3,
        pages: &[2],
        pre_apply: 0,
        post_apply: 0,
        file_checksum_block: 0x9c2aef9f6db737ca,
        file_checksum_frame: 0xf1717c49ab3d9708,
    },
    Expected {
        name: "snapshot-real4k.ltx",
        commit: 5,
        pages: &[1, 2, 3, 4, 5],
        pre_apply: 0,
        post_apply: 0xf19f6f5ec75fb32b,
        file_checksum_block: 0xa0725b5b6c4dca2f,
        file_checksum_frame: 0x997fad48a1d71331,
    },
    Expected {
        name: "snapshot-real512.ltx",
        commit: 2,
        pages: &[1, 2],
        pre_apply: 0,
        post_apply: 0xb571d8fb3d68b79c,
        file_checksum_block: 0xf319226aeea3176b,
        file_checksum_frame: 0xb93714e1534ca20a,
    },
];

fn forms() -> [(&'static str, PageEncoding); 2] {
    [
        ("v3-block", PageEncoding::Block),
        ("v3-frame", PageEncoding::Frame),
    ]
}

fn go_file(dir: &str, name: &str) -> Option<Vec<u8>> {
    let path = testdata(&format!("ltx-go-reference/{dir}/{name}"));
    path.exists().then(|| std::fs::read(path).unwrap())
}

#[test]
fn go_reference_files_decode_with_their_published_checksums() {
    let mut checked = 0;
    for (dir, _) in forms() {
        for e in CHAIN {
            let (name, commit, pages, pre, post) =
                (e.name, e.commit, e.pages, e.pre_apply, e.post_apply);
            let Some(bytes) = go_file(dir, name) else {
                continue;
            };
            let c = decode(&bytes).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            let got: Vec<u32> = c.pages.iter().map(|(p, _)| p.get()).collect();
            assert_eq!(got, pages, "{dir}/{name} pages");
            assert_eq!(c.header.commit, commit, "{dir}/{name} commit");
            assert_eq!(
                c.header.pre_apply_checksum.get(),
                pre,
                "{dir}/{name} pre-apply"
            );
            assert_eq!(
                c.decoded.trailer.post_apply_checksum.get(),
                post,
                "{dir}/{name} post-apply"
            );
            let expected = if dir == "v3-block" {
                e.file_checksum_block
            } else {
                e.file_checksum_frame
            };
            assert_eq!(
                c.decoded.trailer.file_checksum.get(),
                expected,
                "{dir}/{name} file checksum"
            );
            assert_eq!(c.decoded.file_size, bytes.len() as u64);
            checked += 1;
        }
    }
    // v3-frame has the transaction chain but not the compacted, nochecksum or real files.
    assert!(checked >= 12, "only {checked} reference files found");
}

#[test]
fn nochecksum_file_keeps_its_wal_fields() {
    let bytes = go_file(
        "v3-block",
        "nochecksum-0000000000000005-0000000000000006.ltx",
    )
    .unwrap();
    let h = *Decoder::from_buf_read(&bytes[..]).unwrap().header();
    assert!(h.no_checksum());
    assert_eq!((h.wal_offset, h.wal_size), (32, 1056));
    assert_eq!(
        (h.wal_salt1, h.wal_salt2, h.node_id),
        (0x11223344, 0x55667788, 0xabc)
    );
    assert_eq!(h.timestamp % 1000, 0);
}

#[test]
fn re_encoding_reference_files_gives_files_that_decode_to_the_same_pages() {
    for (dir, _) in forms() {
        for &Expected { name, .. } in CHAIN {
            let Some(bytes) = go_file(dir, name) else {
                continue;
            };
            let original = decode(&bytes).unwrap();
            for (_, encoding) in forms() {
                let mut enc =
                    Encoder::with_encoding(Vec::new(), &original.header, encoding).unwrap();
                for (pgno, data) in &original.pages {
                    enc.encode_page(*pgno, data).unwrap();
                }
                let out = enc
                    .finish(original.decoded.trailer.post_apply_checksum)
                    .unwrap();
                let again =
                    decode(&out.writer).unwrap_or_else(|e| panic!("{dir}/{name} re-encoded: {e}"));
                assert_eq!(again.header, original.header, "{dir}/{name}");
                assert_eq!(again.pages, original.pages, "{dir}/{name}");
                assert_eq!(again.decoded.trailer, out.trailer);
            }
        }
    }
}

#[test]
fn compacting_the_reference_inputs_matches_the_reference_compactions() {
    for (dir, encoding) in forms() {
        for (target, inputs) in [
            (
                "compacted-0000000000000001-0000000000000003.ltx",
                &[
                    "0000000000000001-0000000000000001.ltx",
                    "0000000000000002-0000000000000002.ltx",
                    "0000000000000003-0000000000000003.ltx",
                ][..],
            ),
            (
                "compacted-0000000000000002-0000000000000003.ltx",
                &[
                    "0000000000000002-0000000000000002.ltx",
                    "0000000000000003-0000000000000003.ltx",
                ][..],
            ),
        ] {
            let Some(expected) = go_file(dir, target) else {
                continue;
            };
            let files: Vec<Vec<u8>> = inputs.iter().map(|n| go_file(dir, n).unwrap()).collect();
            let decoders = files
                .iter()
                .map(|f| Decoder::from_buf_read(&f[..]).unwrap())
                .collect();
            let options = CompactOptions {
                encoding,
                ..Default::default()
            };
            let out = compact(decoders, Vec::new(), options).unwrap();
            let ours = decode(&out.writer).unwrap();
            let theirs = decode(&expected).unwrap();
            assert_eq!(ours.header, theirs.header, "{dir}/{target} header");
            assert_eq!(ours.pages, theirs.pages, "{dir}/{target} pages");
            // File checksums differ: they cover the index, whose frame sizes depend on the
            // LZ4 compressor (spec section 6.3).
            assert_eq!(
                ours.decoded.trailer.post_apply_checksum,
                theirs.decoded.trailer.post_apply_checksum
            );
        }
    }
}

#[test]
fn applying_the_chain_reproduces_each_post_apply_checksum() {
    for (dir, _) in forms() {
        let mut db = Cursor::new(Vec::new());
        for &Expected {
            name,
            commit,
            post_apply: post,
            ..
        } in &CHAIN[..4]
        {
            let bytes = go_file(dir, name).unwrap();
            let dec = Decoder::from_buf_read(&bytes[..]).unwrap();
            let decoded = apply(dec, &mut db, ApplyChecks::Database)
                .unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
            assert_eq!(decoded.trailer.post_apply_checksum.get(), post);
            assert_eq!(db.get_ref().len(), commit as usize * 512);
        }
    }
    // Applying 1..3 equals applying the compaction of 1..3.
    let mut chained = Cursor::new(Vec::new());
    for e in &CHAIN[..3] {
        let bytes = go_file("v3-block", e.name).unwrap();
        apply(
            Decoder::from_buf_read(&bytes[..]).unwrap(),
            &mut chained,
            ApplyChecks::Database,
        )
        .unwrap();
    }
    let compacted = go_file("v3-block", CHAIN[4].name).unwrap();
    let mut whole = Vec::new();
    write_snapshot(Decoder::from_buf_read(&compacted[..]).unwrap(), &mut whole).unwrap();
    assert_eq!(chained.into_inner(), whole);
}

#[test]
fn apply_detects_a_pre_apply_mismatch() {
    let bytes = go_file("v3-block", CHAIN[2].name).unwrap();
    let mut db = Cursor::new(vec![0u8; 5 * 512]);
    let err = apply(
        Decoder::from_buf_read(&bytes[..]).unwrap(),
        &mut db,
        ApplyChecks::Database,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DatabaseChecksumMismatch {
                which: "pre-apply",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn real_snapshots_rebuild_their_databases_byte_for_byte() {
    for (dir, _) in forms() {
        for (snap, db) in [
            ("snapshot-real4k.ltx", "real4k.db"),
            ("snapshot-real512.ltx", "real512.db"),
        ] {
            let Some(bytes) = go_file(dir, snap) else {
                continue;
            };
            let mut out = Vec::new();
            write_snapshot(Decoder::from_buf_read(&bytes[..]).unwrap(), &mut out).unwrap();
            assert_eq!(
                out,
                read(&format!("ltx-go-reference/db/{db}")),
                "{dir}/{snap}"
            );
        }
    }
}

#[test]
fn rust_lz4flex_files_verify_with_their_own_checksums() {
    for (name, ck) in [
        (
            "0000000000000001-0000000000000001.ltx",
            0xd9d93703b2b30166u64,
        ),
        ("0000000000000002-0000000000000002.ltx", 0x8ee7e2ccaac85528),
        ("snapshot-real4k.ltx", 0x918e94df06f70d85),
    ] {
        let c = decode(&read(&format!("ltx-go-reference/rust-lz4flex/{name}"))).unwrap();
        assert_eq!(c.decoded.trailer.file_checksum.get(), ck, "{name}");
        let go = decode(&go_file("v3-block", name).unwrap()).unwrap();
        assert_eq!(c.pages, go.pages, "{name}: same pages as the Go file");
    }
}

#[test]
fn format_1_files_are_rejected_as_format_1() {
    for name in [
        "snapshot-real4k-lz4.ltx",
        "snapshot-real512-lz4.ltx",
        "snapshot-real512-uncompressed.ltx",
    ] {
        let bytes = read(&format!("ltx-go-reference/v1/{name}"));
        let err = decode(&bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} decoded"));
        assert!(matches!(err, Error::Format1 { .. }), "{name}: {err}");
        assert!(err.to_string().contains("format-1"), "{err}");
        // With no page index, reading the tail fails too.
        let tail = read_file_tail(bytes.len() as u64, |r| {
            Ok(bytes[r.start as usize..r.end as usize].to_vec())
        });
        assert!(tail.is_err(), "{name}: tail parsed");
    }
}

/// Every page fetched through the tail index equals the page the stream decoder produced.
fn check_random_access(bytes: &[u8], c: &Contents, what: &str) {
    let mut reads = 0;
    let tail = read_file_tail(bytes.len() as u64, |r| {
        reads += 1;
        Ok(bytes[r.start as usize..r.end as usize].to_vec())
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(reads <= 2, "{what}: {reads} reads");
    assert_eq!(tail.trailer, c.decoded.trailer, "{what}");
    assert_eq!(tail.index.len(), c.pages.len(), "{what}");
    let mut page = vec![0u8; c.header.page_size.bytes()];
    for (pgno, data) in &c.pages {
        let e = tail.index.get(*pgno).unwrap();
        let frame = &bytes[e.offset as usize..(e.offset + u64::from(e.size)) as usize];
        assert_eq!(
            decode_page_frame(frame, e.offset, c.header.page_size, &mut page).unwrap(),
            *pgno
        );
        assert_eq!(&page, data, "{what} page {pgno}");
    }
}

#[test]
fn page_index_read_from_the_tail_serves_every_page() {
    for (dir, _) in forms() {
        for &Expected { name, .. } in CHAIN {
            let Some(bytes) = go_file(dir, name) else {
                continue;
            };
            check_random_access(&bytes, &decode(&bytes).unwrap(), &format!("{dir}/{name}"));
        }
    }
}

fn replica_files(level: u32) -> Vec<(TxidRange, Vec<u8>)> {
    let dir = testdata(&format!("litestream-0.5.17/replica/ltx/{level}"));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let range = TxidRange::parse_file_name(e.file_name().to_str().unwrap()).unwrap();
            (range, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort_by_key(|(r, _)| *r);
    files
}

#[test]
fn every_litestream_replica_file_decodes_and_verifies() {
    let mut n = 0;
    for level in [0, 1, 2, 9] {
        for (range, bytes) in replica_files(level) {
            let c = decode(&bytes).unwrap_or_else(|e| panic!("L{level} {range}: {e}"));
            assert_eq!(c.header.txid_range(), range);
            assert!(c.header.no_checksum(), "Litestream writes NoChecksum");
            assert_eq!(c.decoded.trailer.post_apply_checksum, Checksum::ZERO);
            check_random_access(&bytes, &c, &format!("L{level} {range}"));
            n += 1;
        }
    }
    assert_eq!(n, 29);
}

fn expected_restores() -> Vec<(u64, String, usize)> {
    std::fs::read_to_string(testdata("litestream-0.5.17/expected-restores.txt"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                u64::from_str_radix(f[0], 16).unwrap(),
                f[1].to_string(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn snapshot_then_l0_files_reproduce_every_litestream_restore() {
    let expected = expected_restores();
    assert_eq!(expected.len(), 16);
    let snapshot = &replica_files(9)[0];
    assert_eq!(snapshot.0, TxidRange::single(ltx::Txid::ONE));
    let mut db = Cursor::new(Vec::new());
    apply(
        Decoder::from_buf_read(&snapshot.1[..]).unwrap(),
        &mut db,
        ApplyChecks::FileOnly,
    )
    .unwrap();
    let l0 = replica_files(0);
    for (txid, sha, size) in expected {
        if txid > 1 {
            let (range, bytes) = l0.iter().find(|(r, _)| r.max.get() == txid).unwrap();
            assert_eq!(range.min.get(), txid);
            apply(
                Decoder::from_buf_read(&bytes[..]).unwrap(),
                &mut db,
                ApplyChecks::FileOnly,
            )
            .unwrap();
        }
        assert_eq!(db.get_ref().len(), size, "TXID {txid}");
        assert_eq!(sha256_hex(db.get_ref()), sha, "TXID {txid}");
    }
}

#[test]
fn compacting_all_l0_files_equals_the_latest_restore() {
    let l0 = replica_files(0);
    let decoders = l0
        .iter()
        .map(|(_, b)| Decoder::from_buf_read(&b[..]).unwrap())
        .collect();
    let out = compact(decoders, Vec::new(), CompactOptions::default()).unwrap();
    let mut db = Vec::new();
    write_snapshot(Decoder::from_buf_read(&out.writer[..]).unwrap(), &mut db).unwrap();
    let (_, sha, _) = expected_restores().pop().unwrap();
    assert_eq!(sha256_hex(&db), sha);
    // And matches Litestream's own compaction of the same range at L9, page for page.
    let theirs = decode(&replica_files(9).pop().unwrap().1).unwrap();
    let ours = decode(&out.writer).unwrap();
    assert_eq!(ours.pages, theirs.pages);
    assert_eq!(ours.header.commit, theirs.header.commit);
}
