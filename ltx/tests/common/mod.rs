//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ltx::{Decoded, Decoder, Header, PageNum};

/// The repository's `testdata/` directory.
pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A decoded file: header, pages in order, and what `finish` returned.
pub struct Contents {
    pub header: Header,
    pub pages: Vec<(PageNum, Vec<u8>)>,
    pub decoded: Decoded,
}

pub fn decode(bytes: &[u8]) -> ltx::Result<Contents> {
    let mut dec = Decoder::from_buf_read(bytes)?;
    let header = *dec.header();
    let mut pages = Vec::new();
    let mut buf = vec![0u8; header.page_size.bytes()];
    while let Some(pgno) = dec.decode_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let decoded = dec.finish()?;
    Ok(Contents {
        header,
        pages,
        decoded,
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One page frame for [`craft`]: the page header fields, the uncompressed page (hashed),
/// and the bytes after the page header (size field and compressed data for the block form).
pub struct RawFrame {
    pub pgno: u32,
    pub flags: u16,
    pub page: Vec<u8>,
    pub body: Vec<u8>,
}

impl RawFrame {
    /// A well-formed block-form frame.
    pub fn block(pgno: u32, page: &[u8]) -> RawFrame {
        let compressed = lz4_flex::block::compress(page);
        let mut body = (compressed.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&compressed);
        RawFrame {
            pgno,
            flags: 1,
            page: page.to_vec(),
            body,
        }
    }
}

/// What follows the frames in a crafted file; `None` fields are computed correctly.
#[derive(Default)]
pub struct Tail {
    pub index: Option<Vec<u8>>,
    pub index_len: Option<u64>,
    pub post_apply: u64,
}

/// Assembles a file from parts without any validation, computing whatever `tail` leaves
/// out and a correct file checksum, so only the rule being tested is broken.
pub fn craft(header: &[u8; 100], frames: &[RawFrame], tail: Tail) -> Vec<u8> {
    let mut crc = ltx::Crc64::new();
    let mut out = header.to_vec();
    crc.update(header);
    let mut entries = Vec::new();
    for f in frames {
        let at = out.len() as u64;
        let mut head = f.pgno.to_be_bytes().to_vec();
        head.extend_from_slice(&f.flags.to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&f.body);
        crc.update(&head);
        if f.flags & 1 == 1 {
            crc.update(&f.body[..4]);
        }
        crc.update(&f.page);
        for v in [u64::from(f.pgno), at, out.len() as u64 - at] {
            put_uvarint(&mut entries, v);
        }
    }
    entries.push(0);
    let index = tail.index.unwrap_or(entries);
    let mut end = vec![0u8; 6];
    end.extend_from_slice(&index);
    end.extend_from_slice(&tail.index_len.unwrap_or(index.len() as u64).to_be_bytes());
    end.extend_from_slice(&tail.post_apply.to_be_bytes());
    crc.update(&end);
    out.extend_from_slice(&end);
    out.extend_from_slice(&(crc.value() | 1 << 63).to_be_bytes());
    out
}

pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Recomputes the file checksum of a complete file in place (strict layout assumed: block
/// frames, index, trailer), for corrupting a field without tripping the checksum.
pub fn refresh_checksum(file: &mut [u8]) {
    let tail = ltx::read_file_tail(file.len() as u64, |r| {
        Ok(file[r.start as usize..r.end as usize].to_vec())
    })
    .unwrap();
    let header: [u8; 100] = file[..100].try_into().unwrap();
    let page_size = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
    let mut crc = ltx::Crc64::new();
    crc.update(&header);
    for e in tail.index.entries() {
        let frame = &file[e.offset as usize..(e.offset + u64::from(e.size)) as usize];
        let mut page = vec![0u8; page_size];
        lz4_flex::block::decompress_into(&frame[10..], &mut page).unwrap();
        crc.update(&frame[..10]);
        crc.update(&page);
    }
    let n = file.len();
    crc.update(&file[tail.index_start as usize - 6..n - 8]);
    file[n - 8..].copy_from_slice(&(crc.value() | 1 << 63).to_be_bytes());
}
