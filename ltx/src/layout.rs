//! A file's layout from its header and tail alone, for decoding it in independent pieces.
//!
//! The page index says where every frame is, so a file can be split into segments of whole
//! frames, fetched with ranged reads and decoded on separate threads. CRC combination joins
//! the segments' checksums into the file checksum, so a file decoded this way is verified
//! exactly as a sequential decode verifies it.

use std::ops::Range;

use crate::checksum::{Checksum, Crc64};
use crate::error::{Error, Result};
use crate::frame::{PAGE_HEADER_SIZE, PageEncoding, PageHeader, decode_page_frame};
use crate::header::{HEADER_SIZE, Header};
use crate::index::{FileTail, PageIndexEntry, TailParse, parse_tail};
use crate::page::PageNum;
use crate::sequence::{check_next_page, check_snapshot_complete};
use crate::trailer::{TRAILER_SIZE, Trailer};

/// A validated file layout: header, page index and trailer.
#[derive(Clone, Debug)]
pub struct FileLayout {
    header: Header,
    header_crc: u64,
    file_size: u64,
    tail: FileTail,
    /// CRC and length of what the file checksum covers after the frames: end marker,
    /// index, index length and post-apply checksum.
    tail_crc: (u64, u64),
}

/// A run of whole frames: which index entries, and the bytes they occupy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Positions in the page index.
    pub frames: Range<usize>,
    /// File offsets of those frames.
    pub bytes: Range<u64>,
}

/// What decoding a segment contributes to the file's checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSum {
    crc: u64,
    len: u64,
    /// XOR of the page checksums, when the file's database checksum is checked.
    pages: Option<u64>,
}

impl FileLayout {
    /// Builds the layout of a file of `file_size` bytes from its first 100 bytes and its
    /// tail (`tail` holds bytes `tail_start..file_size`, starting at or before the end
    /// marker, as [`parse_tail`] asks). Checks every rule a strict sequential decode checks
    /// on the index: frames tile the page block exactly, pages ascend, none is above the
    /// commit or the lock page, snapshots are complete, the trailer agrees with the flags.
    pub fn new(
        header_bytes: &[u8; HEADER_SIZE],
        file_size: u64,
        tail_start: u64,
        tail: &[u8],
    ) -> Result<FileLayout> {
        let header = Header::from_bytes(header_bytes)?;
        let parsed = match parse_tail(file_size, tail_start, tail)? {
            TailParse::Complete(t) => t,
            TailParse::NeedMore(range) => {
                return Err(Error::Usage(format!(
                    "the tail must start at or before {}",
                    range.start
                )));
            }
        };
        let mut last = 0u32;
        let mut next_offset = HEADER_SIZE as u64;
        for e in parsed.index.entries() {
            if e.offset != next_offset {
                return Err(Error::IndexMismatch {
                    offset: parsed.index_start,
                    reason: format!(
                        "page {} is at {}, the previous frame ends at {next_offset}",
                        e.pgno, e.offset
                    ),
                });
            }
            check_next_page(&header, last, e.pgno, e.offset)?;
            last = e.pgno.get();
            next_offset = e.offset + u64::from(e.size);
        }
        let marker_at = parsed.index_start - PAGE_HEADER_SIZE as u64;
        if next_offset != marker_at {
            return Err(Error::IndexMismatch {
                offset: parsed.index_start,
                reason: format!(
                    "the frames end at {next_offset}, the end marker is at {marker_at}"
                ),
            });
        }
        check_snapshot_complete(&header, last)?;
        Trailer::validate_post_apply(
            parsed.trailer.post_apply_checksum,
            &header,
            file_size - TRAILER_SIZE as u64,
        )?;

        let mut crc = Crc64::new();
        crc.update(header_bytes);
        let header_crc = crc.value();
        let hashed = &tail[(marker_at - tail_start) as usize..tail.len() - 8];
        let mut crc = Crc64::new();
        crc.update(hashed);
        Ok(FileLayout {
            header,
            header_crc,
            file_size,
            tail: parsed,
            tail_crc: (crc.value(), hashed.len() as u64),
        })
    }

    /// Builds the layout from the whole file in memory.
    pub fn from_bytes(file: &[u8]) -> Result<FileLayout> {
        let Some(header) = file.first_chunk::<HEADER_SIZE>() else {
            return Err(Error::Truncated {
                offset: 0,
                what: "header",
            });
        };
        FileLayout::new(header, file.len() as u64, 0, file)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The page index entries, in page order.
    pub fn entries(&self) -> &[PageIndexEntry] {
        self.tail.index.entries()
    }

    /// The trailer.
    pub fn trailer(&self) -> &Trailer {
        &self.tail.trailer
    }

    /// The file's size.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Splits the frames into segments of at most `max_bytes` (unless one frame is larger)
    /// and at most `max_pages` pages. A file without pages has no segments.
    pub fn segments(&self, max_bytes: u64, max_pages: usize) -> Vec<Segment> {
        let entries = self.entries();
        let mut out = Vec::new();
        let mut start = 0;
        while start < entries.len() {
            let first = entries[start].offset;
            let mut end = start + 1;
            while end < entries.len()
                && end - start < max_pages.max(1)
                && entries[end].offset + u64::from(entries[end].size) - first <= max_bytes
            {
                end += 1;
            }
            let last = &entries[end - 1];
            out.push(Segment {
                frames: start..end,
                bytes: first..last.offset + u64::from(last.size),
            });
            start = end;
        }
        out
    }

    /// Decodes a segment's frames from `bytes` (exactly the segment's byte range) into
    /// `pages`, one page after another, and returns its share of the checksums. Each frame
    /// must hold the page the index says.
    pub fn decode_segment(
        &self,
        segment: &Segment,
        bytes: &[u8],
        pages: &mut [u8],
    ) -> Result<SegmentSum> {
        let page_size = self.header.page_size;
        let ps = page_size.bytes();
        let count = segment.frames.len();
        // A segment is plain data a caller can build: check it describes frames of this file
        // before indexing with it.
        let fits = segment.frames.start <= segment.frames.end
            && segment.frames.end <= self.entries().len()
            && segment.bytes.start <= segment.bytes.end
            && self.entries()[segment.frames.clone()].iter().all(|e| {
                e.offset >= segment.bytes.start
                    && e.offset.saturating_add(u64::from(e.size)) <= segment.bytes.end
            });
        if !fits {
            return Err(Error::Usage(format!(
                "segment {:?} (frames {:?}) is not a run of this file's frames",
                segment.bytes, segment.frames
            )));
        }
        if bytes.len() as u64 != segment.bytes.end - segment.bytes.start || pages.len() < count * ps
        {
            return Err(Error::Usage(format!(
                "segment {:?} needs {} bytes and room for {count} pages",
                segment.bytes,
                segment.bytes.end - segment.bytes.start
            )));
        }
        let with_pages = self.header.is_snapshot() && !self.header.no_checksum();
        let mut crc = Crc64::new();
        let mut len = 0u64;
        let mut xor = 0u64;
        for (k, e) in self.entries()[segment.frames.clone()].iter().enumerate() {
            let at = (e.offset - segment.bytes.start) as usize;
            let frame = &bytes[at..at + e.size as usize];
            let page = &mut pages[k * ps..(k + 1) * ps];
            let pgno = decode_page_frame(frame, e.offset, page_size, page)?;
            if pgno != e.pgno {
                return Err(Error::IndexMismatch {
                    offset: e.offset,
                    reason: format!(
                        "the index says page {}, the frame holds page {pgno}",
                        e.pgno
                    ),
                });
            }
            let hashed_head =
                match PageHeader::from_bytes(frame[..PAGE_HEADER_SIZE].try_into().unwrap())
                    .validate(e.offset)?
                    .1
                {
                    PageEncoding::Block => PAGE_HEADER_SIZE + 4,
                    PageEncoding::Frame => PAGE_HEADER_SIZE,
                };
            crc.update(&frame[..hashed_head]);
            crc.update(page);
            len += (hashed_head + ps) as u64;
            if with_pages && !pgno.is_lock_page(page_size) {
                xor ^= crate::checksum::page_checksum(pgno, page).get();
            }
        }
        Ok(SegmentSum {
            crc: crc.value(),
            len,
            pages: with_pages.then_some(xor),
        })
    }

    /// Verifies the file checksum (and a snapshot's post-apply checksum) from the sums of
    /// every segment, in order.
    pub fn verify(&self, sums: impl IntoIterator<Item = SegmentSum>) -> Result<Trailer> {
        let mut crc = self.header_crc;
        let mut xor = 0u64;
        for s in sums {
            crc = Crc64::combine(crc, s.crc, s.len);
            xor ^= s.pages.unwrap_or(0);
        }
        crc = Crc64::combine(crc, self.tail_crc.0, self.tail_crc.1);
        let trailer = self.tail.trailer;
        let computed = Checksum::from_crc(crc);
        if computed != trailer.file_checksum {
            return Err(Error::FileChecksumMismatch {
                stored: trailer.file_checksum,
                computed,
            });
        }
        if self.header.is_snapshot() && !self.header.no_checksum() {
            let computed = Checksum::from_crc(xor);
            if computed != trailer.post_apply_checksum {
                return Err(Error::DatabaseChecksumMismatch {
                    which: "post-apply",
                    stored: trailer.post_apply_checksum,
                    computed,
                });
            }
        }
        Ok(trailer)
    }

    /// The pages of a segment as page numbers, for writing out what
    /// [`FileLayout::decode_segment`] produced.
    pub fn segment_pages(&self, segment: &Segment) -> impl Iterator<Item = PageNum> + '_ {
        self.entries()[segment.frames.clone()]
            .iter()
            .map(|e| e.pgno)
    }
}
