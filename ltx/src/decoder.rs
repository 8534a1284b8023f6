//! The streaming decoder: header, pages one at a time, then index, trailer and checksums.

use std::io::{self, BufRead, BufReader, Read};

use crate::checksum::{Checksum, Crc64, DatabaseChecksum};
use crate::error::{Error, Result};
use crate::frame::{self, PAGE_HEADER_SIZE, PageEncoding, PageHeader};
use crate::header::{HEADER_SIZE, Header};
use crate::index::{PageIndex, PageIndexEntry, read_uvarint};
use crate::page::PageNum;
use crate::sequence::{check_next_page, check_snapshot_complete};
use crate::trailer::{TRAILER_SIZE, Trailer};

/// How much a decoder checks beyond the file checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Validation {
    /// Everything the Go encoder guarantees: pages ascend, none above the commit or on the
    /// lock page, snapshots complete, the index agrees with the frames, the index length and
    /// trailer are right, and nothing follows the trailer.
    #[default]
    Strict,
    /// Only what the Go decoder checks: header, page headers, page lengths, file checksum
    /// and a snapshot's post-apply checksum.
    Lenient,
}

/// What a fully decoded file held besides its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The verified trailer.
    pub trailer: Trailer,
    /// Pages in the file.
    pub page_count: u32,
    /// Bytes read.
    pub file_size: u64,
}

/// Reads one LTX file from a buffered reader, one page at a time.
///
/// Memory is one compressed page plus, in strict mode, the list of frames to compare with
/// the index. Call [`Decoder::decode_page`] until it returns `None`, then
/// [`Decoder::finish`], which verifies the file checksum; or call `finish` directly to
/// verify a file without looking at its pages.
#[derive(Debug)]
pub struct Decoder<R> {
    r: R,
    header: Header,
    validation: Validation,
    crc: Crc64,
    offset: u64,
    last_pgno: u32,
    page_count: u32,
    pages_done: bool,
    /// Frames seen, to compare with the index (strict mode only).
    frames: Vec<PageIndexEntry>,
    /// Database checksum of a snapshot's pages, when the file carries checksums.
    db_checksum: Option<DatabaseChecksum>,
    /// Compressed data that did not sit whole in the reader's buffer.
    scratch: Vec<u8>,
}

impl<R: Read> Decoder<BufReader<R>> {
    /// Starts decoding from an unbuffered reader (a file, a socket), reading the header.
    pub fn new(r: R) -> Result<Decoder<BufReader<R>>> {
        Decoder::from_buf_read(BufReader::with_capacity(64 * 1024, r))
    }
}

impl<R: BufRead> Decoder<R> {
    /// Starts decoding from a buffered reader (`&[u8]`, a `BufReader`), reading the header.
    /// Compressed pages that sit whole in the reader's buffer are decoded without a copy.
    pub fn from_buf_read(mut r: R) -> Result<Decoder<R>> {
        let mut bytes = [0u8; HEADER_SIZE];
        r.read_exact(&mut bytes)
            .map_err(|e| Error::read(0, "header", e))?;
        let header = Header::from_bytes(&bytes)?;
        let mut crc = Crc64::new();
        crc.update(&bytes);
        Ok(Decoder {
            r,
            db_checksum: (header.is_snapshot() && !header.no_checksum())
                .then(DatabaseChecksum::new),
            header,
            validation: Validation::Strict,
            crc,
            offset: HEADER_SIZE as u64,
            last_pgno: 0,
            page_count: 0,
            pages_done: false,
            frames: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Chooses how much to check; [`Validation::Strict`] unless set.
    pub fn with_validation(mut self, validation: Validation) -> Decoder<R> {
        self.validation = validation;
        self
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Decodes the next page into `out` (exactly one page long) and returns its number, or
    /// `None` after the last page.
    pub fn decode_page(&mut self, out: &mut [u8]) -> Result<Option<PageNum>> {
        if self.pages_done {
            return Ok(None);
        }
        let page_size = self.header.page_size;
        if out.len() != page_size.bytes() {
            return Err(Error::Usage(format!(
                "page buffer is {} bytes, page size is {page_size}",
                out.len()
            )));
        }
        let at = self.offset;
        let mut head = [0u8; PAGE_HEADER_SIZE];
        self.read_exact(&mut head, "page header")?;
        let header = PageHeader::from_bytes(&head);
        self.crc.update(&head);
        if header.is_end_marker() {
            self.pages_done = true;
            return Ok(None);
        }
        let (pgno, encoding) = header.validate(at).map_err(|e| self.explain_format1(e))?;
        if self.validation == Validation::Strict {
            check_next_page(&self.header, self.last_pgno, pgno, at)?;
        }
        match encoding {
            PageEncoding::Block => self.read_block(at, pgno, out)?,
            PageEncoding::Frame => {
                let mut counted = Counted {
                    inner: &mut self.r,
                    n: 0,
                };
                let res = frame::read_legacy(&mut counted, out, &mut self.scratch, at, pgno);
                self.offset += counted.n;
                res?;
            }
        }
        self.crc.update(out);
        if let Some(sum) = &mut self.db_checksum {
            sum.add(page_size, pgno, out);
        }
        if self.validation == Validation::Strict {
            self.frames.push(PageIndexEntry {
                pgno,
                offset: at,
                size: (self.offset - at) as u32,
            });
        }
        self.last_pgno = pgno.get();
        self.page_count += 1;
        Ok(Some(pgno))
    }

    fn read_block(&mut self, at: u64, pgno: PageNum, out: &mut [u8]) -> Result<()> {
        let mut size = [0u8; 4];
        self.read_exact(&mut size, "compressed size of the page")?;
        self.crc.update(&size);
        let csize = u32::from_be_bytes(size) as usize;
        // Bounds the read before anything is buffered, so a corrupt size cannot make the
        // decoder allocate gigabytes.
        let max = lz4_flex::block::get_maximum_output_size(out.len());
        if csize > max {
            return Err(Error::Decompress {
                offset: at,
                pgno: pgno.get(),
                reason: format!(
                    "compressed size {csize} exceeds the {max}-byte maximum for the page size"
                ),
            });
        }
        let buffered = self
            .r
            .fill_buf()
            .map_err(|e| Error::read(self.offset, "compressed page", e))?;
        if buffered.len() >= csize {
            frame::decompress_block(&buffered[..csize], out, at, pgno)?;
            self.r.consume(csize);
            self.offset += csize as u64;
        } else {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(csize, 0);
            let res = self
                .read_exact(&mut scratch, "compressed page")
                .and_then(|()| frame::decompress_block(&scratch, out, at, pgno));
            self.scratch = scratch;
            res?;
        }
        Ok(())
    }

    /// A format-1 file without compression stores raw pages behind 4-byte page headers, so
    /// a format-3 reader sees the start of page 1's data ("SQ" of "SQLite format 3") as
    /// page flags. Say so instead of reporting unknown flags.
    fn explain_format1(&mut self, e: Error) -> Error {
        const REST_OF_MAGIC: &[u8] = b"Lite format 3\0";
        if let Error::UnknownPageFlags {
            pgno: 1,
            flags: 0x5351,
            ..
        } = e
            && self.page_count == 0
            && self
                .r
                .fill_buf()
                .is_ok_and(|b| b.starts_with(REST_OF_MAGIC))
        {
            return Error::Format1 {
                evidence: "page 1 data starts right after a 4-byte page header",
            };
        }
        e
    }

    /// Reads whatever pages remain, then the index and trailer, and verifies the file
    /// checksum (and, for snapshots with checksums, the post-apply checksum).
    pub fn finish(mut self) -> Result<Decoded> {
        if !self.pages_done {
            let mut page = vec![0u8; self.header.page_size.bytes()];
            while self.decode_page(&mut page)?.is_some() {}
        }
        let trailer = match self.validation {
            Validation::Strict => self.read_tail_strict()?,
            Validation::Lenient => self.read_tail_lenient()?,
        };
        let computed = Checksum::from_crc(self.crc.value());
        if trailer.file_checksum != computed {
            return Err(Error::FileChecksumMismatch {
                stored: trailer.file_checksum,
                computed,
            });
        }
        let h = &self.header;
        if self.validation == Validation::Strict {
            Trailer::validate_post_apply(
                trailer.post_apply_checksum,
                h,
                self.offset - TRAILER_SIZE as u64,
            )?;
            check_snapshot_complete(h, self.last_pgno)?;
        }
        if let Some(sum) = self.db_checksum {
            let computed = sum.value();
            if computed != trailer.post_apply_checksum {
                return Err(Error::DatabaseChecksumMismatch {
                    which: "post-apply",
                    stored: trailer.post_apply_checksum,
                    computed,
                });
            }
        }
        Ok(Decoded {
            trailer,
            page_count: self.page_count,
            file_size: self.offset,
        })
    }

    /// Parses the index entry by entry, compares it with the frames read, then checks the
    /// index length, reads the trailer and requires the input to end there.
    fn read_tail_strict(&mut self) -> Result<Trailer> {
        let index_start = self.offset;
        let mut bytes = Vec::with_capacity(self.frames.len() * 8 + 1);
        let mut entries = 0usize;
        while self.read_index_varint(&mut bytes, index_start)? != 0 {
            entries += 1;
            if entries > self.frames.len() {
                return Err(Error::IndexMismatch {
                    offset: index_start,
                    reason: format!("more index entries than the {} frames", self.frames.len()),
                });
            }
            self.read_index_varint(&mut bytes, index_start)?;
            self.read_index_varint(&mut bytes, index_start)?;
        }
        self.crc.update(&bytes);
        let index = PageIndex::parse(&bytes, index_start)?;
        self.compare_index(&index, index_start)?;

        let mut len = [0u8; 8];
        self.read_exact(&mut len, "page index length")?;
        self.crc.update(&len);
        let stored = u64::from_be_bytes(len);
        if stored != bytes.len() as u64 {
            return Err(Error::CorruptIndex {
                offset: self.offset - 8,
                reason: format!(
                    "index length field says {stored} bytes, the index is {} bytes",
                    bytes.len()
                ),
            });
        }
        let mut raw = [0u8; TRAILER_SIZE];
        self.read_exact(&mut raw, "trailer")?;
        self.crc.update(&raw[..8]);
        let extra = self
            .r
            .fill_buf()
            .map_err(|e| Error::read(self.offset, "end of file", e))?;
        if !extra.is_empty() {
            return Err(Error::TrailingData {
                offset: self.offset,
            });
        }
        Ok(Trailer::from_bytes(&raw))
    }

    /// Reads one varint of the index byte by byte, appending its bytes to `bytes`.
    fn read_index_varint(&mut self, bytes: &mut Vec<u8>, index_start: u64) -> Result<u64> {
        let start = bytes.len();
        loop {
            let mut b = [0u8; 1];
            self.read_exact(&mut b, "page index")?;
            bytes.push(b[0]);
            if b[0] < 0x80 || bytes.len() - start == 10 {
                break;
            }
        }
        let mut pos = start;
        read_uvarint(bytes, &mut pos).map_err(|reason| Error::CorruptIndex {
            offset: index_start + start as u64,
            reason,
        })
    }

    fn compare_index(&self, index: &PageIndex, index_start: u64) -> Result<()> {
        let entries = index.entries();
        if let Some(i) = (0..entries.len().max(self.frames.len()))
            .find(|&i| entries.get(i) != self.frames.get(i))
        {
            let show = |e: Option<&PageIndexEntry>| match e {
                Some(e) => format!("page {} at {} size {}", e.pgno, e.offset, e.size),
                None => "nothing".to_string(),
            };
            return Err(Error::IndexMismatch {
                offset: index_start,
                reason: format!(
                    "entry {i} says {}, the file holds {}",
                    show(entries.get(i)),
                    show(self.frames.get(i))
                ),
            });
        }
        Ok(())
    }

    /// Go's way: everything after the end marker is index and trailer; hash all of it but
    /// the file checksum itself. Streamed, keeping only the last trailer's worth of bytes
    /// back, so an index of any size (or junk after it) costs no memory.
    fn read_tail_lenient(&mut self) -> Result<Trailer> {
        let mut chunk = vec![0u8; 64 << 10];
        // The last TRAILER_SIZE bytes read so far, not yet hashed.
        let mut held: Vec<u8> = Vec::with_capacity(TRAILER_SIZE + chunk.len());
        let mut total = 0u64;
        loop {
            let n = match self.r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::read(self.offset, "page index", e)),
            };
            self.offset += n as u64;
            total += n as u64;
            held.extend_from_slice(&chunk[..n]);
            if held.len() > TRAILER_SIZE {
                let hash = held.len() - TRAILER_SIZE;
                self.crc.update(&held[..hash]);
                held.drain(..hash);
            }
        }
        if total < (TRAILER_SIZE + 8) as u64 {
            return Err(Error::Truncated {
                offset: self.offset,
                what: "page index and trailer",
            });
        }
        // The post-apply checksum is hashed; the file checksum is not.
        self.crc.update(&held[..8]);
        let raw: &[u8; TRAILER_SIZE] = held[..].try_into().unwrap();
        Ok(Trailer::from_bytes(raw))
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) => Err(Error::read(self.offset, what, e)),
        }
    }
}

/// Counts the bytes a parser pulls through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
