//! The streaming encoder: header, pages in ascending order, then index and trailer.

use std::io::Write;

use crate::checksum::{Checksum, Crc64};
use crate::error::{Error, Result};
use crate::frame::{END_MARKER, FrameWriter, PAGE_HEADER_SIZE, PageEncoding};
use crate::header::{HEADER_SIZE, Header};
use crate::index::{PageIndexEntry, put_uvarint};
use crate::page::PageNum;
use crate::sequence::{check_next_page, check_snapshot_complete};
use crate::trailer::Trailer;

/// What a finished encoder hands back.
#[derive(Debug)]
pub struct Encoded<W> {
    /// The writer, flushed (so a file can be synced).
    pub writer: W,
    /// The trailer written.
    pub trailer: Trailer,
    /// Bytes written in all.
    pub file_size: u64,
    /// Pages written.
    pub page_count: u32,
}

/// Writes one LTX file to any [`Write`], holding one compressed page and the page index in
/// memory. Wrap a file in a `BufWriter`: each page is one `write_all`.
///
/// The encoder enforces every rule a reader checks: pages ascend, none lies above the
/// commit, the lock page is never written, a snapshot holds every page, and the trailer
/// agrees with the header's flags.
#[derive(Debug)]
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    frames: FrameWriter,
    crc: Crc64,
    offset: u64,
    index: Vec<u8>,
    last_pgno: u32,
    page_count: u32,
    failed: bool,
}

impl<W: Write> Encoder<W> {
    /// Starts a file with the default (block) page encoding and writes its header.
    pub fn new(w: W, header: &Header) -> Result<Encoder<W>> {
        Encoder::with_encoding(w, header, PageEncoding::default())
    }

    /// Starts a file with the given page encoding and writes its header.
    pub fn with_encoding(mut w: W, header: &Header, encoding: PageEncoding) -> Result<Encoder<W>> {
        header.validate()?;
        let bytes = header.to_bytes();
        w.write_all(&bytes)
            .map_err(|source| Error::Io { offset: 0, source })?;
        let mut crc = Crc64::new();
        crc.update(&bytes);
        Ok(Encoder {
            w,
            header: *header,
            frames: FrameWriter::new(header.page_size, encoding),
            crc,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            last_pgno: 0,
            page_count: 0,
            failed: false,
        })
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Writes one page. Pages must come in strictly ascending order.
    pub fn encode_page(&mut self, pgno: PageNum, data: &[u8]) -> Result<()> {
        if self.failed {
            return Err(Error::Usage(
                "encoder used after a failed write; the output is incomplete".into(),
            ));
        }
        self.check_page(pgno, data)?;
        let (frame, hashed_prefix) = self.frames.encode(pgno, data);
        // The file checksum covers the page header, the block form's size field, and the
        // uncompressed page; never the compressed bytes.
        self.crc.update(&frame[..hashed_prefix]);
        self.crc.update(data);
        let size = frame.len();
        if let Err(source) = self.w.write_all(frame) {
            self.failed = true;
            return Err(Error::Io {
                offset: self.offset,
                source,
            });
        }
        PageIndexEntry {
            pgno,
            offset: self.offset,
            size: size as u32,
        }
        .encode(&mut self.index);
        self.offset += size as u64;
        self.last_pgno = pgno.get();
        self.page_count += 1;
        Ok(())
    }

    fn check_page(&self, pgno: PageNum, data: &[u8]) -> Result<()> {
        let h = &self.header;
        let n = pgno.get();
        let fail = |reason: String| Err(Error::page(self.offset, n, reason));
        if data.len() != h.page_size.bytes() {
            return fail(format!(
                "data is {} bytes, page size is {}",
                data.len(),
                h.page_size
            ));
        }
        check_next_page(h, self.last_pgno, pgno, self.offset)
    }

    /// Ends the page block, writes the index and trailer, and flushes.
    ///
    /// `post_apply` is the database checksum after this file is applied: 0 with NoChecksum,
    /// the empty-database checksum when commit is 0.
    pub fn finish(mut self, post_apply: Checksum) -> Result<Encoded<W>> {
        if self.failed {
            return Err(Error::Usage("encoder finished after a failed write".into()));
        }
        let h = self.header;
        check_snapshot_complete(&h, self.last_pgno)?;
        let index_start = self.offset + PAGE_HEADER_SIZE as u64;
        Trailer::validate_post_apply(post_apply, &h, index_start)?;

        let mut tail = std::mem::take(&mut self.index);
        put_uvarint(&mut tail, 0);
        let index_len = tail.len() as u64;
        tail.extend_from_slice(&index_len.to_be_bytes());
        tail.extend_from_slice(&post_apply.get().to_be_bytes());
        self.crc.update(&END_MARKER);
        self.crc.update(&tail);
        let trailer = Trailer {
            post_apply_checksum: post_apply,
            file_checksum: Checksum::from_crc(self.crc.value()),
        };
        tail.extend_from_slice(&trailer.file_checksum.get().to_be_bytes());

        let offset = self.offset;
        let write = |w: &mut W| -> std::io::Result<()> {
            w.write_all(&END_MARKER)?;
            w.write_all(&tail)?;
            w.flush()
        };
        write(&mut self.w).map_err(|source| Error::Io { offset, source })?;
        Ok(Encoded {
            writer: self.w,
            trailer,
            file_size: offset + (PAGE_HEADER_SIZE + tail.len()) as u64,
            page_count: self.page_count,
        })
    }
}
