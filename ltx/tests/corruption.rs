//! Exhaustive damage: every bit flip and every truncation of real files.

mod common;

use common::{decode, read};
use ltx::{Decoder, Error, Validation};

const FILES: &[&str] = &[
    "ltx-go-reference/v3-block/0000000000000001-0000000000000001.ltx",
    "ltx-go-reference/v3-block/0000000000000002-0000000000000002.ltx",
    "ltx-go-reference/v3-block/0000000000000004-0000000000000004.ltx",
    "ltx-go-reference/v3-frame/0000000000000001-0000000000000001.ltx",
    "ltx-go-reference/v3-frame/0000000000000002-0000000000000002.ltx",
    "ltx-go-reference/v3-block/snapshot-real4k.ltx",
    "litestream-0.5.17/replica/ltx/0/0000000000000010-0000000000000010.ltx",
];

/// A flipped bit is either reported, or it landed in compressed bytes that still decompress
/// to the very same pages (the file checksum covers uncompressed data by design), in which
/// case the file is intact in every way that matters. Content never changes silently.
#[test]
fn every_bit_flip_is_caught_or_harmless() {
    for name in FILES {
        let original = read(name);
        let good = decode(&original).unwrap();
        let tail = ltx::read_file_tail(original.len() as u64, |r| {
            Ok(original[r.start as usize..r.end as usize].to_vec())
        })
        .unwrap();
        // Bytes of compressed data: after each frame's page header and size field.
        let in_payload = |at: usize| {
            tail.index.entries().iter().any(|e| {
                let start = e.offset as usize
                    + if original[e.offset as usize + 5] == 1 {
                        10
                    } else {
                        6
                    };
                (start..(e.offset + u64::from(e.size)) as usize).contains(&at)
            })
        };
        let (mut caught, mut harmless) = (0, 0);
        let mut bytes = original.clone();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                bytes[at] ^= 1 << bit;
                match decode(&bytes) {
                    Err(_) => caught += 1,
                    Ok(c) => {
                        assert!(
                            in_payload(at),
                            "{name}: flip at {at}.{bit} went unnoticed outside page data"
                        );
                        assert_eq!(
                            c.pages, good.pages,
                            "{name}: flip at {at}.{bit} changed a page silently"
                        );
                        assert_eq!(c.decoded.trailer, good.decoded.trailer);
                        harmless += 1;
                    }
                }
                bytes[at] ^= 1 << bit;
            }
        }
        assert!(
            caught > harmless * 10,
            "{name}: {caught} caught, {harmless} harmless"
        );
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    for name in FILES {
        let bytes = read(name);
        for len in 0..bytes.len() {
            match decode(&bytes[..len]) {
                Err(Error::Truncated { offset, .. }) => assert!(offset <= len as u64),
                other => panic!("{name} cut at {len}: {:?}", other.err()),
            }
            let lenient = Decoder::from_buf_read(&bytes[..len])
                .and_then(|d| d.with_validation(Validation::Lenient).finish());
            assert!(
                lenient.is_err(),
                "{name} cut at {len} passed lenient decoding"
            );
        }
    }
}

#[test]
fn flipped_bits_in_each_region_give_the_expected_kind_of_error() {
    let bytes = read("ltx-go-reference/v3-block/0000000000000002-0000000000000002.ltx");
    let n = bytes.len();
    let flip = |at: usize, mask: u8| {
        let mut b = bytes.clone();
        b[at] ^= mask;
        decode(&b).err().unwrap()
    };
    assert!(matches!(flip(1, 1), Error::BadMagic { .. }));
    assert!(
        matches!(flip(85, 1), Error::FileChecksumMismatch { .. }),
        "reserved header bytes are hashed"
    );
    assert!(matches!(
        flip(101, 0x40),
        Error::InvalidPage { .. } | Error::IndexMismatch { .. }
    ));
    assert!(matches!(flip(105, 2), Error::UnknownPageFlags { .. }));
    assert!(matches!(
        flip(n - 30, 0x10),
        Error::IndexMismatch { .. } | Error::CorruptIndex { .. }
    ));
    assert!(matches!(flip(n - 3, 1), Error::FileChecksumMismatch { .. }));
    for e in [flip(1, 1), flip(105, 2), flip(n - 3, 1)] {
        let text = e.to_string();
        assert!(
            !text.is_empty() && text.chars().next().unwrap().is_lowercase(),
            "{text}"
        );
    }
}
