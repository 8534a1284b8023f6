//! Errors. Every error about a file's bytes names the offset where the problem starts.

use std::io;

use crate::checksum::Checksum;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or merging LTX files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error at offset {offset}: {source}")]
    Io {
        /// Offset in the LTX file being read or written.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading or writing the database file that pages are applied to failed.
    #[error("I/O error on the database file at offset {offset}: {source}")]
    DatabaseIo {
        /// Offset in the database file.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The input ended early.
    #[error("truncated file: the {what} at offset {offset} is cut short")]
    Truncated {
        /// Where the item that was cut short starts.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },

    /// The first four bytes are not `LTX1`.
    #[error("not an LTX file: magic at offset 0 is {found:02x?}, expected \"LTX1\"")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },

    /// A format-1 (LiteFS-era, ltx <= v0.3) file: this crate reads format 3 only.
    #[error(
        "format-1 (LiteFS-era) LTX file: {evidence}; only format 3 (Litestream 0.5) is supported"
    )]
    Format1 {
        /// What gave it away.
        evidence: &'static str,
    },

    /// A header flag bit that format 3 does not define.
    #[error(
        "unknown header flags {flags:#010x} at offset 4 (format 3 defines only 0x2, NoChecksum)"
    )]
    UnknownHeaderFlags {
        /// The flags field.
        flags: u32,
    },

    /// Files that were to be joined belong to two histories (two node IDs).
    #[error(
        "{first} (history {first_node:016x}) and {second} (history {second_node:016x}) belong to two different histories: they are never joined"
    )]
    TwoHistories {
        /// The earlier file.
        first: crate::TxidRange,
        /// Its node ID.
        first_node: u64,
        /// The later file, of another history.
        second: crate::TxidRange,
        /// Its node ID.
        second_node: u64,
    },

    /// A header field breaks a format rule.
    #[error("invalid header: {reason}")]
    InvalidHeader {
        /// Which rule, with the values involved.
        reason: String,
    },

    /// A page header with page number 0 that is not the end marker.
    #[error("page header at offset {offset} has page number 0 but flags {flags:#06x}")]
    ZeroPageNumber {
        /// Offset of the page header.
        offset: u64,
        /// Its flags.
        flags: u16,
    },

    /// A page flag bit that format 3 does not define.
    #[error(
        "unknown page flags {flags:#06x} for page {pgno} at offset {offset} (format 3 defines only 0x0001)"
    )]
    UnknownPageFlags {
        /// Offset of the page header.
        offset: u64,
        /// The page number in that header.
        pgno: u32,
        /// Its flags.
        flags: u16,
    },

    /// A page that breaks the ordering, commit or snapshot rules.
    #[error("page {pgno} at offset {offset}: {reason}")]
    InvalidPage {
        /// Offset of the page frame (or, when encoding, where it would have been written).
        offset: u64,
        /// The page number.
        pgno: u32,
        /// Which rule.
        reason: String,
    },

    /// Compressed page data that does not decode.
    #[error("page {pgno} at offset {offset}: corrupt compressed data: {reason}")]
    Decompress {
        /// Offset of the page frame.
        offset: u64,
        /// The page number.
        pgno: u32,
        /// What the decompressor reported.
        reason: String,
    },

    /// A page that decompresses to a size other than the page size.
    #[error(
        "page {pgno} at offset {offset} decompresses to {len} bytes, but the page size is {page_size}"
    )]
    PageLength {
        /// Offset of the page frame.
        offset: u64,
        /// The page number.
        pgno: u32,
        /// The decompressed length.
        len: usize,
        /// The header's page size.
        page_size: u32,
    },

    /// A snapshot that does not hold every page up to its commit.
    #[error("incomplete snapshot: the last page is {last}, but commit is {commit} pages")]
    IncompleteSnapshot {
        /// The last page present (0 for none).
        last: u32,
        /// The header's commit.
        commit: u32,
    },

    /// The page index cannot be parsed or is out of bounds.
    #[error("corrupt page index at offset {offset}: {reason}")]
    CorruptIndex {
        /// Offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The page index disagrees with the page frames actually in the file.
    #[error("page index at offset {offset} disagrees with the page frames: {reason}")]
    IndexMismatch {
        /// Offset of the index entry.
        offset: u64,
        /// The disagreement.
        reason: String,
    },

    /// The trailer's file checksum does not match the file's contents.
    #[error("file checksum mismatch: trailer says {stored}, contents give {computed}")]
    FileChecksumMismatch {
        /// The trailer's value.
        stored: Checksum,
        /// The value computed from the bytes read.
        computed: Checksum,
    },

    /// A database checksum does not match the pages.
    #[error("{which} checksum mismatch: file says {stored}, database gives {computed}")]
    DatabaseChecksumMismatch {
        /// `"post-apply"` or `"pre-apply"`.
        which: &'static str,
        /// The value in the header or trailer.
        stored: Checksum,
        /// The value computed from the pages.
        computed: Checksum,
    },

    /// The trailer breaks a format rule.
    #[error("invalid trailer at offset {offset}: {reason}")]
    InvalidTrailer {
        /// Offset of the trailer.
        offset: u64,
        /// Which rule.
        reason: String,
    },

    /// Bytes follow the trailer.
    #[error("unexpected data after the trailer at offset {offset}")]
    TrailingData {
        /// Where the extra bytes start.
        offset: u64,
    },

    /// Inputs to a compaction that cannot be merged.
    #[error("cannot compact: {reason}")]
    Compaction {
        /// Why.
        reason: String,
    },

    /// A caller broke an API contract (wrong buffer length, encoder used after an error).
    #[error("invalid use: {0}")]
    Usage(String),
}

impl Error {
    /// Maps an I/O error at `offset`, turning an early end of input into [`Error::Truncated`].
    pub(crate) fn read(offset: u64, what: &'static str, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::Truncated { offset, what }
        } else {
            Error::Io { offset, source }
        }
    }

    pub(crate) fn header(reason: impl Into<String>) -> Error {
        Error::InvalidHeader {
            reason: reason.into(),
        }
    }

    pub(crate) fn page(offset: u64, pgno: u32, reason: impl Into<String>) -> Error {
        Error::InvalidPage {
            offset,
            pgno,
            reason: reason.into(),
        }
    }
}
