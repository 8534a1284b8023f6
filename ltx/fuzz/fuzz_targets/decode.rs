//! Arbitrary bytes through every reading path: the streaming decoder (strict and lenient),
//! the tail index reader and single-frame decoding. None may panic, and whatever the
//! streaming decoder accepts must agree with the random-access path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ltx::{Decoder, FileLayout, Validation, decode_page_frame, read_file_tail};

fuzz_target!(|data: &[u8]| {
    let mut pages = Vec::new();
    let strict = Decoder::from_buf_read(data).and_then(|mut dec| {
        let mut buf = vec![0u8; dec.header().page_size.bytes()];
        while let Some(pgno) = dec.decode_page(&mut buf)? {
            pages.push((pgno, buf.clone()));
        }
        let page_size = dec.header().page_size;
        dec.finish().map(|_| page_size)
    });
    let lenient = Decoder::from_buf_read(data)
        .and_then(|d| d.with_validation(Validation::Lenient).finish());
    if strict.is_ok() {
        assert!(lenient.is_ok(), "lenient rejects what strict accepts");
    }

    // The segmented path (parallel restores) accepts exactly what the strict stream accepts,
    // with the same pages.
    let segmented = FileLayout::from_bytes(data).and_then(|layout| {
        let ps = layout.header().page_size.bytes();
        let mut sums = Vec::new();
        let mut got = Vec::new();
        for seg in layout.segments(4096, 7) {
            let mut buf = vec![0u8; seg.frames.len() * ps];
            sums.push(layout.decode_segment(&seg, &data[seg.bytes.start as usize..seg.bytes.end as usize], &mut buf)?);
            for (k, pgno) in layout.segment_pages(&seg).enumerate() {
                got.push((pgno, buf[k * ps..(k + 1) * ps].to_vec()));
            }
        }
        layout.verify(sums).map(|_| got)
    });
    match (&strict, &segmented) {
        (Ok(_), Ok(got)) => assert_eq!(got, &pages, "segmented pages differ"),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("stream accepts, segments reject: {e}"),
        (Err(e), Ok(_)) => panic!("segments accept, stream rejects: {e}"),
    }

    let tail = read_file_tail(data.len() as u64, |r| Ok(data[r.start as usize..r.end as usize].to_vec()));
    if let (Ok(page_size), Ok(tail)) = (&strict, &tail) {
        assert_eq!(tail.index.len(), pages.len());
        let mut buf = vec![0u8; page_size.bytes()];
        for (pgno, want) in &pages {
            let e = tail.index.get(*pgno).expect("index has every page");
            let frame = &data[e.offset as usize..(e.offset + u64::from(e.size)) as usize];
            assert_eq!(decode_page_frame(frame, e.offset, *page_size, &mut buf).unwrap(), *pgno);
            assert_eq!(&buf, want);
        }
    } else if let Ok(tail) = tail {
        // Frames named by a damaged index must still decode or fail cleanly.
        if let Some(page_size) = data.get(8..12).and_then(|b| ltx::PageSize::new(u32::from_be_bytes(b.try_into().unwrap()))) {
            let mut buf = vec![0u8; page_size.bytes()];
            for e in tail.index.entries().iter().take(64) {
                let frame = &data[e.offset as usize..(e.offset + u64::from(e.size)) as usize];
                let _ = decode_page_frame(frame, e.offset, page_size, &mut buf);
            }
        }
    }
});
