//! Segmented decoding (for parallel restores) agrees with the streaming decoder on every
//! real file, for every segment size, and under every single-bit corruption.

mod common;

use common::{decode, read, testdata};
use ltx::{FileLayout, PageNum};

/// Every file of the Go reference set and the Litestream replica.
fn all_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [
        "ltx-go-reference/v3-block",
        "ltx-go-reference/v3-frame",
        "ltx-go-reference/rust-lz4flex",
    ] {
        for e in std::fs::read_dir(testdata(dir)).unwrap() {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    for level in [0, 1, 2, 9] {
        for e in
            std::fs::read_dir(testdata(&format!("litestream-0.5.17/replica/ltx/{level}"))).unwrap()
        {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// Pages in file order.
type Pages = Vec<(PageNum, Vec<u8>)>;

/// Decodes through segments of the given limits: (pages in order, trailer).
fn segmented(bytes: &[u8], max_bytes: u64, max_pages: usize) -> ltx::Result<(Pages, ltx::Trailer)> {
    let layout = FileLayout::from_bytes(bytes)?;
    let ps = layout.header().page_size.bytes();
    let mut pages = Vec::new();
    let mut sums = Vec::new();
    for seg in layout.segments(max_bytes, max_pages) {
        let mut buf = vec![0u8; seg.frames.len() * ps];
        let data = &bytes[seg.bytes.start as usize..seg.bytes.end as usize];
        sums.push(layout.decode_segment(&seg, data, &mut buf)?);
        for (k, pgno) in layout.segment_pages(&seg).enumerate() {
            pages.push((pgno, buf[k * ps..(k + 1) * ps].to_vec()));
        }
    }
    Ok((pages, layout.verify(sums)?))
}

#[test]
fn segments_decode_every_real_file_like_the_stream_does() {
    let files = all_files();
    assert!(files.len() > 40);
    for (name, bytes) in &files {
        let Ok(stream) = decode(bytes) else {
            continue; // the format-1 files are rejected either way (below)
        };
        for (max_bytes, max_pages) in [(1, 1), (1, 1000), (100_000, 3), (u64::MAX, usize::MAX)] {
            let (pages, trailer) =
                segmented(bytes, max_bytes, max_pages).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(pages, stream.pages, "{name} ({max_bytes}, {max_pages})");
            assert_eq!(trailer, stream.decoded.trailer, "{name}");
        }
    }
}

#[test]
fn segment_limits_are_respected() {
    let bytes = read("litestream-0.5.17/replica/ltx/0/0000000000000001-0000000000000001.ltx");
    let layout = FileLayout::from_bytes(&bytes).unwrap();
    let segs = layout.segments(20_000, 4);
    assert!(segs.len() > 3);
    for w in segs.windows(2) {
        assert_eq!(w[0].frames.end, w[1].frames.start);
        assert_eq!(w[0].bytes.end, w[1].bytes.start);
    }
    for s in &segs {
        assert!(s.frames.len() <= 4);
        assert!(s.bytes.end - s.bytes.start <= 20_000 || s.frames.len() == 1);
    }
    assert_eq!(segs.last().unwrap().frames.end, layout.entries().len());
}

#[test]
fn a_segment_that_is_not_this_files_is_an_error_not_a_panic() {
    let bytes = read("litestream-0.5.17/replica/ltx/0/0000000000000001-0000000000000001.ltx");
    let layout = FileLayout::from_bytes(&bytes).unwrap();
    let good = layout.segments(20_000, 4).remove(1);
    let n = layout.entries().len();
    let mut pages = vec![0u8; 64 * 4096];
    for bad in [
        ltx::Segment {
            frames: n..n + 2,
            bytes: good.bytes.clone(),
        },
        ltx::Segment {
            frames: good.frames.clone(),
            bytes: good.bytes.start + 1..good.bytes.end,
        },
        ltx::Segment {
            frames: good.frames.clone(),
            bytes: 0..10,
        },
        ltx::Segment {
            // Reversed on purpose: a caller can build one.
            frames: std::ops::Range { start: 3, end: 1 },
            bytes: good.bytes.clone(),
        },
    ] {
        let data = &bytes[(bad.bytes.start.min(bytes.len() as u64) as usize)
            ..(bad.bytes.end.min(bytes.len() as u64) as usize).max(bad.bytes.start as usize)];
        assert!(
            matches!(
                layout.decode_segment(&bad, data, &mut pages),
                Err(ltx::Error::Usage(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn format_1_files_are_rejected() {
    for name in [
        "snapshot-real4k-lz4.ltx",
        "snapshot-real512-lz4.ltx",
        "snapshot-real512-uncompressed.ltx",
    ] {
        assert!(
            FileLayout::from_bytes(&read(&format!("ltx-go-reference/v1/{name}"))).is_err(),
            "{name}"
        );
    }
}

/// Whatever the strict streaming decoder accepts, the segmented path accepts with the same
/// pages, and whatever it rejects, the segmented path rejects (or sees the same pages).
#[test]
fn every_bit_flip_is_judged_alike() {
    for name in [
        "ltx-go-reference/v3-block/0000000000000002-0000000000000002.ltx",
        "ltx-go-reference/v3-frame/0000000000000001-0000000000000001.ltx",
        "ltx-go-reference/v3-block/snapshot-real512.ltx",
    ] {
        let mut bytes = read(name);
        for at in 0..bytes.len() {
            for bit in 0..8 {
                bytes[at] ^= 1 << bit;
                let stream = decode(&bytes);
                let seg = segmented(&bytes, 64, 2);
                match (&stream, &seg) {
                    (Ok(s), Ok((pages, trailer))) => {
                        assert_eq!(&s.pages, pages, "{name} flip {at}.{bit}");
                        assert_eq!(&s.decoded.trailer, trailer);
                    }
                    (Err(_), Err(_)) => {}
                    (Ok(_), Err(e)) => {
                        panic!("{name} flip {at}.{bit}: stream accepts, segments reject: {e}")
                    }
                    (Err(e), Ok(_)) => {
                        panic!("{name} flip {at}.{bit}: segments accept, stream rejects: {e}")
                    }
                }
                bytes[at] ^= 1 << bit;
            }
        }
    }
}
