//! The LTX file format: the transaction files Litestream 0.5 writes to replicas.
//!
//! An LTX file holds the pages a range of transactions changed, compressed with LZ4, plus a
//! page index so single pages can be fetched with ranged reads. This crate reads and writes
//! format 3 byte for byte as the Go reference library (`superfly/ltx`) does:
//!
//! - [`Encoder`] and [`Decoder`] stream a file through any `Write` / `BufRead`, holding one
//!   page (plus the index) in memory;
//! - [`read_file_tail`] / [`parse_tail`] read the page index from the end of a file, and
//!   [`decode_page_frame`] decodes one page fetched with a ranged read;
//! - [`FileLayout`] splits a file into segments that decode (and verify) independently,
//!   for parallel restores;
//! - [`compact`] merges consecutive files; [`apply`] and [`write_snapshot`] turn files back
//!   into a database;
//! - [`Checksum`], [`page_checksum`] and [`DatabaseChecksum`] are the CRC-64/GO-ISO sums.
//!
//! ```
//! use ltx::{Checksum, Decoder, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};
//!
//! let page_size = PageSize::new(4096).unwrap();
//! let mut header = Header::new(page_size, 1, TxidRange::single(Txid::ONE));
//! header.flags = HeaderFlags::NO_CHECKSUM;
//! let mut enc = Encoder::new(Vec::new(), &header)?;
//! enc.encode_page(PageNum::ONE, &[0x42; 4096])?;
//! let file = enc.finish(Checksum::ZERO)?.writer;
//!
//! let mut dec = Decoder::from_buf_read(&file[..])?;
//! let mut page = vec![0; 4096];
//! assert_eq!(dec.decode_page(&mut page)?, Some(PageNum::ONE));
//! assert_eq!(dec.decode_page(&mut page)?, None);
//! dec.finish()?; // verifies the file checksum
//! # Ok::<(), ltx::Error>(())
//! ```

// What is public is the API: everything else is private to its module or the crate.
#![warn(unreachable_pub)]

mod apply;
mod checksum;
mod compactor;
mod decoder;
mod encoder;
mod error;
mod frame;
mod header;
mod history;
mod index;
mod layout;
mod lz4_frame;
mod page;
mod sequence;
mod trailer;
mod txid;

pub use apply::{ApplyChecks, DatabaseFile, apply, write_snapshot};
pub use checksum::{Checksum, Crc64, DatabaseChecksum, database_checksum, page_checksum};
pub use compactor::{CompactOptions, compact};
pub use decoder::{Decoded, Decoder, Validation};
pub use encoder::{Encoded, Encoder};
pub use error::{Error, Result};
pub use frame::{
    END_MARKER, PAGE_FLAG_SIZE, PAGE_HEADER_SIZE, PageEncoding, PageHeader, decode_page_frame,
};
pub use header::{HEADER_SIZE, Header, HeaderFlags, MAGIC};
pub use history::common_node_id;
pub use index::{
    FileTail, MIN_FILE_SIZE, PageIndex, PageIndexEntry, TAIL_FETCH_SIZE, TailParse, parse_tail,
    read_file_tail, tail_fetch_range,
};
pub use layout::{FileLayout, Segment, SegmentSum};
pub use page::{PageNum, PageSize};
pub use trailer::{TRAILER_SIZE, Trailer};
pub use txid::{ParseError, Txid, TxidRange};
