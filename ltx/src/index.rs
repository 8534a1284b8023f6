//! The page index at the end of a file, and reading it from the tail alone.
//!
//! Layout after the end marker: for each page in ascending order `uvarint(pgno)
//! uvarint(offset) uvarint(size)`, then `uvarint(0)`, then the byte length of all that as a
//! u64 BE, then the trailer. Given a file's size, the last 24 bytes locate the index, so one
//! ranged read of the tail (a second only if the index is larger than the first read) gives
//! the offset and size of every page frame.

use std::io;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::frame::{END_MARKER, PAGE_HEADER_SIZE};
use crate::header::HEADER_SIZE;
use crate::page::PageNum;
use crate::trailer::{TRAILER_SIZE, Trailer};

/// How many bytes of the tail to fetch first (Litestream uses the same guess).
pub const TAIL_FETCH_SIZE: u64 = 32 * 1024;

/// Bytes after the index entries: the u64 index length and the trailer.
const INDEX_FOOTER: u64 = 8 + TRAILER_SIZE as u64;

/// The smallest possible file: header, end marker, empty index, index length, trailer.
pub const MIN_FILE_SIZE: u64 = (HEADER_SIZE + PAGE_HEADER_SIZE) as u64 + 1 + INDEX_FOOTER;

/// Where one page frame sits in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageIndexEntry {
    /// The page number.
    pub pgno: PageNum,
    /// Absolute offset of the frame's page header.
    pub offset: u64,
    /// Length of the whole frame, page header included.
    pub size: u32,
}

impl PageIndexEntry {
    /// The byte range of the frame in its file.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.size)
    }

    /// Appends the entry's varints to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_uvarint(out, u64::from(self.pgno.get()));
        put_uvarint(out, self.offset);
        put_uvarint(out, u64::from(self.size));
    }
}

/// Every page frame of one file, in ascending page order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageIndex {
    entries: Vec<PageIndexEntry>,
}

impl PageIndex {
    /// Parses index bytes (entries and the 0 terminator, nothing more) found at `index_start`.
    ///
    /// Checks that page numbers ascend and every frame lies between the header and the end
    /// marker, which sits just before `index_start`.
    pub fn parse(bytes: &[u8], index_start: u64) -> Result<PageIndex> {
        let mut entries = Vec::new();
        let mut pos = 0usize;
        let frames_end = index_start.saturating_sub(PAGE_HEADER_SIZE as u64);
        let corrupt = |pos: usize, reason: String| Error::CorruptIndex {
            offset: index_start + pos as u64,
            reason,
        };
        loop {
            let at = pos;
            let pgno = read_uvarint(bytes, &mut pos).map_err(|r| corrupt(at, r))?;
            if pgno == 0 {
                break;
            }
            let offset = read_uvarint(bytes, &mut pos).map_err(|r| corrupt(at, r))?;
            let size = read_uvarint(bytes, &mut pos).map_err(|r| corrupt(at, r))?;
            let (Ok(pgno), Ok(size)) = (u32::try_from(pgno), u32::try_from(size)) else {
                return Err(corrupt(at, format!("page {pgno} size {size} out of range")));
            };
            let pgno = PageNum::new(pgno).expect("checked non-zero");
            if let Some(prev) = entries.last().map(|e: &PageIndexEntry| e.pgno)
                && pgno <= prev
            {
                return Err(corrupt(at, format!("page {pgno} follows page {prev}")));
            }
            let end = offset.checked_add(u64::from(size));
            if offset < HEADER_SIZE as u64 || end.is_none_or(|end| end > frames_end) {
                return Err(corrupt(
                    at,
                    format!(
                        "page {pgno} frame at {offset} (size {size}) lies outside the page block \
                         {HEADER_SIZE}..{frames_end}"
                    ),
                ));
            }
            entries.push(PageIndexEntry { pgno, offset, size });
        }
        if pos != bytes.len() {
            return Err(corrupt(
                pos,
                format!("{} bytes follow the terminator", bytes.len() - pos),
            ));
        }
        Ok(PageIndex { entries })
    }

    /// The entry for `pgno`, if the file holds that page.
    pub fn get(&self, pgno: PageNum) -> Option<&PageIndexEntry> {
        self.entries
            .binary_search_by_key(&pgno, |e| e.pgno)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// All entries in ascending page order.
    pub fn entries(&self) -> &[PageIndexEntry] {
        &self.entries
    }

    /// Number of pages in the file.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no pages.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the tail of a file holds: its page index and trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileTail {
    /// Offset of the first index byte.
    pub index_start: u64,
    /// The page index.
    pub index: PageIndex,
    /// The trailer (not verified: only a full decode checks the file checksum).
    pub trailer: Trailer,
}

/// Result of parsing a tail fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailParse {
    /// The bytes held everything.
    Complete(FileTail),
    /// The index starts before the bytes given: fetch this range and call again with it
    /// prepended.
    NeedMore(Range<u64>),
}

/// The range to fetch first to read the tail of a file of `file_size` bytes.
pub fn tail_fetch_range(file_size: u64) -> Range<u64> {
    file_size.saturating_sub(TAIL_FETCH_SIZE)..file_size
}

/// Parses the end of a file: `tail` holds bytes `tail_start..file_size`.
///
/// The end marker just before the index must be included, so a format-1 file (which has no
/// index) is caught here rather than when a page is fetched.
pub fn parse_tail(file_size: u64, tail_start: u64, tail: &[u8]) -> Result<TailParse> {
    if file_size < MIN_FILE_SIZE {
        return Err(Error::Truncated {
            offset: file_size,
            what: "file: an LTX file is at least 131 bytes",
        });
    }
    if tail_start + tail.len() as u64 != file_size || tail.len() < INDEX_FOOTER as usize {
        return Err(Error::Usage(format!(
            "tail of {} bytes at {tail_start} does not end a file of {file_size} bytes \
             with at least the last {INDEX_FOOTER}",
            tail.len()
        )));
    }
    let footer_at = file_size - INDEX_FOOTER;
    let local = |abs: u64| (abs - tail_start) as usize;
    let footer = &tail[local(footer_at)..];
    let index_len = u64::from_be_bytes(footer[..8].try_into().unwrap());
    let max_len = footer_at - (HEADER_SIZE + PAGE_HEADER_SIZE) as u64;
    if index_len == 0 || index_len > max_len {
        return Err(Error::CorruptIndex {
            offset: footer_at,
            reason: format!(
                "index length {index_len} does not fit a {file_size}-byte file (no page index: \
                 a format-1 file or not LTX at all?)"
            ),
        });
    }
    let index_start = footer_at - index_len;
    let marker_at = index_start - PAGE_HEADER_SIZE as u64;
    if marker_at < tail_start {
        return Ok(TailParse::NeedMore(marker_at..tail_start));
    }
    if tail[local(marker_at)..local(index_start)] != END_MARKER {
        return Err(Error::CorruptIndex {
            offset: marker_at,
            reason: "no end marker before the page index".into(),
        });
    }
    let index = PageIndex::parse(&tail[local(index_start)..local(footer_at)], index_start)?;
    let trailer = Trailer::from_bytes(footer[8..].try_into().unwrap());
    Ok(TailParse::Complete(FileTail {
        index_start,
        index,
        trailer,
    }))
}

/// Reads a file's page index and trailer with `read(range)`, a ranged read returning exactly
/// the bytes asked for: two reads at most.
pub fn read_file_tail<F>(file_size: u64, mut read: F) -> Result<FileTail>
where
    F: FnMut(Range<u64>) -> io::Result<Vec<u8>>,
{
    let mut range = tail_fetch_range(file_size);
    let mut tail = fetch(&mut read, range.clone())?;
    loop {
        match parse_tail(file_size, range.start, &tail)? {
            TailParse::Complete(t) => return Ok(t),
            TailParse::NeedMore(more) => {
                let mut head = fetch(&mut read, more.clone())?;
                head.extend_from_slice(&tail);
                tail = head;
                range.start = more.start;
            }
        }
    }
}

fn fetch<F>(read: &mut F, range: Range<u64>) -> Result<Vec<u8>>
where
    F: FnMut(Range<u64>) -> io::Result<Vec<u8>>,
{
    let want = range.end - range.start;
    let bytes = read(range.clone()).map_err(|e| Error::read(range.start, "page index", e))?;
    if bytes.len() as u64 != want {
        return Err(Error::Truncated {
            offset: range.start + bytes.len() as u64,
            what: "ranged read of the page index",
        });
    }
    Ok(bytes)
}

/// Appends `v` as an unsigned LEB128 varint (Go's `binary.AppendUvarint`).
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint of at most 10 bytes at `*pos`, advancing it.
pub(crate) fn read_uvarint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&b) = bytes.get(*pos) else {
            return Err("index ends inside a varint (no terminator)".into());
        };
        *pos += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_go() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            out.clear();
            put_uvarint(&mut out, v);
            let mut pos = 0;
            assert_eq!(read_uvarint(&out, &mut pos).unwrap(), v);
            assert_eq!(pos, out.len());
        }
        out.clear();
        put_uvarint(&mut out, 143);
        assert_eq!(out, [0x8f, 0x01]);
        let mut pos = 0;
        assert!(read_uvarint(&[0xff; 11], &mut pos).is_err());
    }

    #[test]
    fn parses_the_spec_sample() {
        // v3-block TX1: four 512-byte pages.
        let bytes = [
            0x01, 0x64, 0x2b, 0x02, 0x8f, 0x01, 0x2b, 0x03, 0xba, 0x01, 0x8d, 0x04, 0x04, 0xc7,
            0x05, 0x2b, 0x00,
        ];
        let index = PageIndex::parse(&bytes, 760).unwrap();
        let got: Vec<_> = index
            .entries()
            .iter()
            .map(|e| (e.pgno.get(), e.offset, e.size))
            .collect();
        assert_eq!(
            got,
            [(1, 100, 43), (2, 143, 43), (3, 186, 525), (4, 711, 43)]
        );
        assert_eq!(index.get(PageNum::new(3).unwrap()).unwrap().offset, 186);
        assert!(index.get(PageNum::new(5).unwrap()).is_none());
        let err = PageIndex::parse(&bytes, 700).unwrap_err().to_string();
        assert!(err.contains("outside the page block"), "{err}");
    }
}
