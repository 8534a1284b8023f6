//! Each broken rule gives its own descriptive error, from the decoder and the encoder.

mod common;

use common::{RawFrame, Tail, craft, decode, read, refresh_checksum};
use ltx::{
    Checksum, Decoder, Encoder, Error, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange,
    Validation, write_snapshot,
};

const PS: usize = 512;

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PS]
}

fn header(min: u64, max: u64, commit: u32) -> Header {
    let mut h = Header::new(
        PageSize::new(PS as u32).unwrap(),
        commit,
        TxidRange::new(Txid::new(min), Txid::new(max)),
    );
    h.flags = HeaderFlags::NO_CHECKSUM;
    h
}

fn strict(bytes: &[u8]) -> Error {
    decode(bytes)
        .err()
        .expect("file decoded, expected an error")
}

fn lenient_ok(bytes: &[u8]) {
    Decoder::from_buf_read(bytes)
        .unwrap()
        .with_validation(Validation::Lenient)
        .finish()
        .unwrap();
}

#[test]
fn a_crafted_valid_file_decodes() {
    let f = craft(
        &header(2, 2, 3).to_bytes(),
        &[RawFrame::block(1, &page(1)), RawFrame::block(3, &page(3))],
        Tail::default(),
    );
    let c = decode(&f).unwrap();
    assert_eq!(c.pages.len(), 2);
}

#[test]
fn pages_out_of_order_or_repeated() {
    let f = craft(
        &header(2, 2, 3).to_bytes(),
        &[RawFrame::block(2, &page(1)), RawFrame::block(1, &page(3))],
        Tail::default(),
    );
    let e = strict(&f);
    assert!(matches!(e, Error::InvalidPage { pgno: 1, .. }), "{e}");
    assert!(e.to_string().contains("ascend"), "{e}");
    lenient_ok(&f);
    let f = craft(
        &header(2, 2, 3).to_bytes(),
        &[RawFrame::block(2, &page(1)), RawFrame::block(2, &page(3))],
        Tail::default(),
    );
    assert!(matches!(strict(&f), Error::InvalidPage { pgno: 2, .. }));
}

#[test]
fn page_above_commit() {
    let f = craft(
        &header(2, 2, 3).to_bytes(),
        &[RawFrame::block(4, &page(1))],
        Tail::default(),
    );
    let e = strict(&f);
    assert!(e.to_string().contains("above the commit of 3"), "{e}");
    lenient_ok(&f);
}

#[test]
fn lock_page_is_rejected_and_never_written() {
    let ps = PageSize::new(65536).unwrap();
    let lock = ps.lock_page().get();
    let mut h = Header::new(ps, lock + 1, TxidRange::single(Txid::new(7)));
    h.flags = HeaderFlags::NO_CHECKSUM;
    let big = vec![9u8; 65536];
    let f = craft(
        &h.to_bytes(),
        &[RawFrame::block(lock, &big)],
        Tail::default(),
    );
    let e = strict(&f);
    assert!(e.to_string().contains("lock page"), "{e}");
    let mut enc = Encoder::new(Vec::new(), &h).unwrap();
    let e = enc.encode_page(ps.lock_page(), &big).unwrap_err();
    assert!(e.to_string().contains("lock page"), "{e}");
    // Pages on either side of it are fine.
    enc.encode_page(PageNum::new(lock - 1).unwrap(), &big)
        .unwrap();
    enc.encode_page(PageNum::new(lock + 1).unwrap(), &big)
        .unwrap();
    let out = enc.finish(Checksum::ZERO).unwrap().writer;
    assert_eq!(decode(&out).unwrap().pages.len(), 2);
}

#[test]
fn snapshot_across_the_lock_page_skips_it_and_restores_zeros() {
    let ps = PageSize::new(65536).unwrap();
    let lock = ps.lock_page().get();
    let commit = lock + 1;
    let h = Header::new(ps, commit, TxidRange::single(Txid::ONE));
    let data = |p: u32| vec![(p % 251) as u8; 65536];
    let mut enc = Encoder::new(Vec::new(), &h).unwrap();
    let mut sum = ltx::DatabaseChecksum::new();
    for p in (1..=commit).filter(|&p| p != lock) {
        let pgno = PageNum::new(p).unwrap();
        enc.encode_page(pgno, &data(p)).unwrap();
        sum.add(ps, pgno, &data(p));
    }
    let file = enc.finish(sum.value()).unwrap().writer;

    // Checks each page while writing it out, without holding the 1 GiB database.
    struct Check {
        at: u64,
        lock: u32,
    }
    impl std::io::Write for Check {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            assert_eq!(buf.len(), 65536);
            let p = (self.at / 65536) as u32 + 1;
            let want = if p == self.lock { 0 } else { (p % 251) as u8 };
            assert!(buf.iter().all(|&b| b == want), "page {p}");
            self.at += 65536;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut check = Check { at: 0, lock };
    write_snapshot(Decoder::from_buf_read(&file[..]).unwrap(), &mut check).unwrap();
    assert_eq!(check.at, u64::from(commit) * 65536);
}

#[test]
fn incomplete_snapshots() {
    let f = craft(
        &header(1, 1, 3).to_bytes(),
        &[RawFrame::block(1, &page(1)), RawFrame::block(3, &page(3))],
        Tail::default(),
    );
    let e = strict(&f);
    assert!(e.to_string().contains("missing page 2"), "{e}");
    lenient_ok(&f);
    let f = craft(
        &header(1, 1, 3).to_bytes(),
        &[RawFrame::block(1, &page(1)), RawFrame::block(2, &page(3))],
        Tail::default(),
    );
    assert!(matches!(
        strict(&f),
        Error::IncompleteSnapshot { last: 2, commit: 3 }
    ));

    let mut enc = Encoder::new(Vec::new(), &header(1, 1, 3)).unwrap();
    enc.encode_page(PageNum::ONE, &page(1)).unwrap();
    assert!(enc.encode_page(PageNum::new(3).unwrap(), &page(1)).is_err());
    assert!(matches!(
        enc.finish(Checksum::ZERO),
        Err(Error::IncompleteSnapshot { last: 1, commit: 3 })
    ));
}

#[test]
fn short_and_long_pages() {
    let mut short = RawFrame::block(1, &page(1));
    let c = lz4_flex::block::compress(&page(1)[..500]);
    short.body = [(c.len() as u32).to_be_bytes().to_vec(), c].concat();
    let f = craft(&header(2, 2, 1).to_bytes(), &[short], Tail::default());
    let e = strict(&f);
    assert!(
        matches!(
            e,
            Error::PageLength {
                len: 500,
                page_size: 512,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("decompresses to 500 bytes"), "{e}");

    let mut long = RawFrame::block(1, &page(1));
    let c = lz4_flex::block::compress(&[1u8; 600]);
    long.body = [(c.len() as u32).to_be_bytes().to_vec(), c].concat();
    let f = craft(&header(2, 2, 1).to_bytes(), &[long], Tail::default());
    assert!(matches!(strict(&f), Error::PageLength { .. }));
}

#[test]
fn unknown_flags_and_zero_page_numbers() {
    let mut frame = RawFrame::block(1, &page(1));
    frame.flags = 0x0003;
    let f = craft(&header(2, 2, 1).to_bytes(), &[frame], Tail::default());
    let e = strict(&f);
    assert!(
        matches!(
            e,
            Error::UnknownPageFlags {
                offset: 100,
                pgno: 1,
                flags: 3
            }
        ),
        "{e}"
    );

    let mut frame = RawFrame::block(0, &page(1));
    frame.flags = 1;
    assert!(matches!(
        strict(&craft(
            &header(2, 2, 1).to_bytes(),
            &[frame],
            Tail::default()
        )),
        Error::ZeroPageNumber {
            offset: 100,
            flags: 1
        }
    ));

    let mut h = header(2, 2, 1).to_bytes();
    h[7] |= 0x10;
    assert!(matches!(
        strict(&craft(&h, &[], Tail::default())),
        Error::UnknownHeaderFlags { flags: 0x12 }
    ));
}

#[test]
fn wrong_index() {
    let frames = [RawFrame::block(1, &page(1)), RawFrame::block(2, &page(2))];
    let good = craft(&header(2, 2, 2).to_bytes(), &frames, Tail::default());
    let tail = ltx::read_file_tail(good.len() as u64, |r| {
        Ok(good[r.start as usize..r.end as usize].to_vec())
    })
    .unwrap();
    let e2 = tail.index.entries()[1];

    // An index naming the wrong offset for page 2, checksum correct.
    let mut index = Vec::new();
    for (p, o, s) in [
        (1, 100, u64::from(tail.index.entries()[0].size)),
        (2, e2.offset - 1, u64::from(e2.size)),
    ] {
        common::put_uvarint(&mut index, p);
        common::put_uvarint(&mut index, o);
        common::put_uvarint(&mut index, s);
    }
    index.push(0);
    let bad = craft(
        &header(2, 2, 2).to_bytes(),
        &frames,
        Tail {
            index: Some(index),
            ..Tail::default()
        },
    );
    let e = strict(&bad);
    assert!(matches!(e, Error::IndexMismatch { .. }), "{e}");
    assert!(e.to_string().contains("entry 1"), "{e}");
    lenient_ok(&bad);

    // An index missing a page.
    let mut index = Vec::new();
    for v in [1, 100, u64::from(tail.index.entries()[0].size), 0] {
        common::put_uvarint(&mut index, v);
    }
    assert!(matches!(
        strict(&craft(
            &header(2, 2, 2).to_bytes(),
            &frames,
            Tail {
                index: Some(index),
                ..Tail::default()
            }
        )),
        Error::IndexMismatch { .. }
    ));

    // A wrong index length field.
    let index_len = Some(tail.index_start.abs_diff(good.len() as u64 - 24) + 1);
    let bad = craft(
        &header(2, 2, 2).to_bytes(),
        &frames,
        Tail {
            index_len,
            ..Tail::default()
        },
    );
    let e = strict(&bad);
    assert!(matches!(e, Error::CorruptIndex { .. }), "{e}");
    assert!(e.to_string().contains("index length field"), "{e}");
}

#[test]
fn file_and_database_checksum_mismatches() {
    let mut f = read("ltx-go-reference/v3-block/0000000000000002-0000000000000002.ltx");
    let n = f.len();
    f[n - 1] ^= 0x40;
    let e = strict(&f);
    assert!(matches!(e, Error::FileChecksumMismatch { .. }), "{e}");
    assert!(e.to_string().contains("bd37e49544421e82"), "{e}");

    // A snapshot whose post-apply checksum disagrees with its pages.
    let mut f = read("ltx-go-reference/v3-block/0000000000000001-0000000000000001.ltx");
    let n = f.len();
    f[n - 12] ^= 0x01;
    refresh_checksum(&mut f);
    let e = strict(&f);
    assert!(
        matches!(
            e,
            Error::DatabaseChecksumMismatch {
                which: "post-apply",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn trailing_data_and_bad_magic() {
    let mut f = read("ltx-go-reference/v3-block/0000000000000003-0000000000000003.ltx");
    let n = f.len() as u64;
    f.push(0);
    assert!(matches!(strict(&f), Error::TrailingData { offset } if offset == n));
    let mut f = read("ltx-go-reference/v3-block/0000000000000003-0000000000000003.ltx");
    f[..4].copy_from_slice(b"SQLi");
    assert!(matches!(strict(&f), Error::BadMagic { .. }));
}

#[test]
fn corrupt_compressed_data_and_absurd_sizes() {
    let mut frame = RawFrame::block(1, &page(1));
    frame.body = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
    let e = strict(&craft(
        &header(2, 2, 1).to_bytes(),
        &[frame],
        Tail::default(),
    ));
    assert!(
        matches!(
            e,
            Error::Decompress {
                offset: 100,
                pgno: 1,
                ..
            }
        ),
        "{e}"
    );

    let mut frame = RawFrame::block(1, &page(1));
    frame.body = vec![0xff, 0xff, 0xff, 0xf0];
    let e = strict(&craft(
        &header(2, 2, 1).to_bytes(),
        &[frame],
        Tail::default(),
    ));
    assert!(e.to_string().contains("exceeds"), "{e}");
}

#[test]
fn header_rules_are_enforced_on_read() {
    let mut h = header(2, 2, 1);
    h.flags = HeaderFlags::empty();
    h.pre_apply_checksum = Checksum::ZERO;
    let e = strict(&craft(&h.to_bytes(), &[], Tail::default()));
    assert!(matches!(e, Error::InvalidHeader { .. }), "{e}");
    assert!(e.to_string().contains("bit 63"), "{e}");
}

#[test]
fn encoder_refuses_what_readers_reject() {
    let mut enc = Encoder::new(Vec::new(), &header(2, 2, 3)).unwrap();
    assert!(
        enc.encode_page(PageNum::ONE, &page(1)[..100])
            .unwrap_err()
            .to_string()
            .contains("100 bytes")
    );
    enc.encode_page(PageNum::new(2).unwrap(), &page(1)).unwrap();
    assert!(enc.encode_page(PageNum::new(2).unwrap(), &page(1)).is_err());
    assert!(
        enc.encode_page(PageNum::new(4).unwrap(), &page(1))
            .unwrap_err()
            .to_string()
            .contains("commit")
    );
    assert!(matches!(
        enc.finish(Checksum::from_crc(1)),
        Err(Error::InvalidTrailer { .. })
    ));

    let mut h = header(2, 2, 0);
    h.flags = HeaderFlags::empty();
    h.pre_apply_checksum = Checksum::from_crc(7);
    assert!(
        Encoder::new(Vec::new(), &h)
            .unwrap()
            .finish(Checksum::from_crc(7))
            .is_err()
    );
    assert!(
        Encoder::new(Vec::new(), &h)
            .unwrap()
            .finish(Checksum::EMPTY_DATABASE)
            .is_ok()
    );
}
