//! Page frames: the 6-byte page header and the two encodings of page data.
//!
//! Block form (page flag 0x0001, what current Litestream writes):
//! `pgno:u32 | flags:u16 | csize:u32 | csize bytes of one LZ4 block`.
//! Legacy form (page flag 0, Litestream 0.5.0 to 0.5.14): `pgno:u32 | flags:u16 | one LZ4 frame`.

use lz4_flex::block::{CompressTable, DecompressError, compress_into_with_table};

use crate::error::{Error, Result};
use crate::lz4_frame::{self, FrameError};
use crate::page::{PageNum, PageSize};

/// Size of a page header.
pub const PAGE_HEADER_SIZE: usize = 6;

/// The six zero bytes that end the page block.
pub const END_MARKER: [u8; PAGE_HEADER_SIZE] = [0; PAGE_HEADER_SIZE];

/// Page flag: a u32 compressed size and an LZ4 block follow the header.
pub const PAGE_FLAG_SIZE: u16 = 0x0001;

/// How page data is compressed in a file being written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PageEncoding {
    /// Size-prefixed LZ4 block (page flag 0x0001). Litestream 0.5.15 and later read it.
    #[default]
    Block,
    /// One LZ4 frame per page (page flag 0). Every Litestream 0.5 release reads it.
    Frame,
}

/// A stored page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// Page number; 0 only in the end marker.
    pub pgno: u32,
    /// Flag bits.
    pub flags: u16,
}

impl PageHeader {
    /// Parses stored bytes (no validation).
    pub fn from_bytes(b: &[u8; PAGE_HEADER_SIZE]) -> PageHeader {
        PageHeader {
            pgno: u32::from_be_bytes(b[..4].try_into().unwrap()),
            flags: u16::from_be_bytes(b[4..].try_into().unwrap()),
        }
    }

    /// The header as stored.
    pub fn to_bytes(self) -> [u8; PAGE_HEADER_SIZE] {
        let mut b = [0u8; PAGE_HEADER_SIZE];
        b[..4].copy_from_slice(&self.pgno.to_be_bytes());
        b[4..].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// Whether this is the end marker.
    pub fn is_end_marker(self) -> bool {
        self.pgno == 0 && self.flags == 0
    }

    /// The page number and encoding, if the header is valid (`offset` is for errors).
    pub fn validate(self, offset: u64) -> Result<(PageNum, PageEncoding)> {
        let Some(pgno) = PageNum::new(self.pgno) else {
            return Err(Error::ZeroPageNumber {
                offset,
                flags: self.flags,
            });
        };
        match self.flags {
            0 => Ok((pgno, PageEncoding::Frame)),
            PAGE_FLAG_SIZE => Ok((pgno, PageEncoding::Block)),
            flags => Err(Error::UnknownPageFlags {
                offset,
                pgno: self.pgno,
                flags,
            }),
        }
    }
}

/// Compresses pages into complete frames, reusing its buffers across pages.
pub(crate) struct FrameWriter {
    encoding: PageEncoding,
    table: CompressTable,
    buf: Vec<u8>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl FrameWriter {
    pub(crate) fn new(page_size: PageSize, encoding: PageEncoding) -> FrameWriter {
        let max = PAGE_HEADER_SIZE + lz4_frame::max_len(page_size.bytes());
        FrameWriter {
            encoding,
            // 16-bit table entries only address inputs shorter than 65535 bytes.
            table: if page_size.bytes() < u16::MAX as usize {
                CompressTable::small()
            } else {
                CompressTable::large()
            },
            // Sized once for the worst case, so no page pays for zeroing or growth.
            buf: vec![0; max],
        }
    }

    /// The complete frame for one page, and how many of its leading bytes the file
    /// checksum covers (the page header, plus the size field in the block form).
    pub(crate) fn encode(&mut self, pgno: PageNum, data: &[u8]) -> (&[u8], usize) {
        let flags = match self.encoding {
            PageEncoding::Block => PAGE_FLAG_SIZE,
            PageEncoding::Frame => 0,
        };
        let header = PageHeader {
            pgno: pgno.get(),
            flags,
        };
        self.buf[..PAGE_HEADER_SIZE].copy_from_slice(&header.to_bytes());
        let (len, hashed) = match self.encoding {
            PageEncoding::Block => {
                let body = PAGE_HEADER_SIZE + 4;
                let n = compress_into_with_table(data, &mut self.buf[body..], &mut self.table)
                    .expect("output buffer has the maximum compressed size");
                self.buf[PAGE_HEADER_SIZE..body].copy_from_slice(&(n as u32).to_be_bytes());
                (body + n, body)
            }
            PageEncoding::Frame => {
                let n = lz4_frame::write(data, &mut self.table, &mut self.buf[PAGE_HEADER_SIZE..]);
                (PAGE_HEADER_SIZE + n, PAGE_HEADER_SIZE)
            }
        };
        (&self.buf[..len], hashed)
    }
}

/// Decompresses one LZ4 block into `out`, which it must fill exactly.
pub(crate) fn decompress_block(
    compressed: &[u8],
    out: &mut [u8],
    offset: u64,
    pgno: PageNum,
) -> Result<()> {
    match lz4_flex::block::decompress_into(compressed, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(page_length(offset, pgno, n, out.len())),
        Err(DecompressError::OutputTooSmall { expected, .. }) => {
            Err(page_length(offset, pgno, expected, out.len()))
        }
        Err(e) => Err(Error::Decompress {
            offset,
            pgno: pgno.get(),
            reason: e.to_string(),
        }),
    }
}

/// Reads a legacy frame's data from `r` into `out`, mapping failures to this crate's errors.
pub(crate) fn read_legacy<R: std::io::Read>(
    r: &mut R,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    offset: u64,
    pgno: PageNum,
) -> Result<()> {
    lz4_frame::read(r, out, scratch).map_err(|e| match e {
        FrameError::Io(e) => Error::read(offset, "LZ4 frame of the page", e),
        FrameError::Syntax(reason) | FrameError::Block(reason) => Error::Decompress {
            offset,
            pgno: pgno.get(),
            reason,
        },
        FrameError::Length(len) => page_length(offset, pgno, len, out.len()),
    })
}

fn page_length(offset: u64, pgno: PageNum, len: usize, page_size: usize) -> Error {
    Error::PageLength {
        offset,
        pgno: pgno.get(),
        len,
        page_size: page_size as u32,
    }
}

/// Decodes one complete page frame held in memory, as fetched with a ranged read of the
/// `offset` and `size` a page index gives. Fills `out` (one page) and returns the page number.
///
/// `offset` is only used in error messages. This path checks the frame's structure and
/// length but not the file checksum, which only a full sequential decode covers.
pub fn decode_page_frame(
    frame: &[u8],
    offset: u64,
    page_size: PageSize,
    out: &mut [u8],
) -> Result<PageNum> {
    if out.len() != page_size.bytes() {
        return Err(Error::Usage(format!(
            "page buffer is {} bytes, page size is {page_size}",
            out.len()
        )));
    }
    let Some((head, body)) = frame.split_first_chunk::<PAGE_HEADER_SIZE>() else {
        return Err(Error::Truncated {
            offset,
            what: "page header",
        });
    };
    let (pgno, encoding) = PageHeader::from_bytes(head).validate(offset)?;
    match encoding {
        PageEncoding::Block => {
            let Some((size, data)) = body.split_first_chunk::<4>() else {
                return Err(Error::Truncated {
                    offset,
                    what: "compressed size of the page",
                });
            };
            let csize = u32::from_be_bytes(*size) as usize;
            if data.len() != csize {
                return Err(Error::Decompress {
                    offset,
                    pgno: pgno.get(),
                    reason: format!(
                        "frame holds {} bytes of compressed data, its size field says {csize}",
                        data.len()
                    ),
                });
            }
            decompress_block(data, out, offset, pgno)?;
        }
        PageEncoding::Frame => {
            let mut rest = body;
            read_legacy(&mut rest, out, &mut Vec::new(), offset, pgno)?;
            if !rest.is_empty() {
                return Err(Error::Decompress {
                    offset,
                    pgno: pgno.get(),
                    reason: format!("{} bytes follow the LZ4 frame", rest.len()),
                });
            }
        }
    }
    Ok(pgno)
}
