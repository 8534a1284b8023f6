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
