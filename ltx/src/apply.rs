//! Applying LTX files to a database file, and writing a snapshot out as one.

use std::fs::File;
use std::io::{self, BufRead, Cursor, Read, Seek, SeekFrom, Write};

use crate::checksum::{Checksum, database_checksum};
use crate::decoder::{Decoded, Decoder};
use crate::error::{Error, Result};
use crate::page::{PageNum, PageSize};

/// A database file that pages can be written into at any offset and that can be resized.
pub trait DatabaseFile: Read + Write + Seek {
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl DatabaseFile for File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

impl DatabaseFile for Cursor<Vec<u8>> {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.get_mut().resize(len, 0);
        Ok(())
    }
}

/// Whether [`apply`] checks the database checksums a file carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyChecks {
    /// Only the file's own checksum (always verified).
    #[default]
    FileOnly,
    /// Also compare the database before and after with the pre- and post-apply checksums,
    /// reading the whole database twice. Skipped for NoChecksum files.
    Database,
}

/// Writes every page of the file being decoded into `db` at its offset, then truncates or
/// extends `db` to the file's commit. Pages are written as they are decoded: if the file
/// turns out corrupt, `db` is left part-written, so apply to a copy you can discard.
pub fn apply<R: BufRead, D: DatabaseFile>(
    mut decoder: Decoder<R>,
    db: &mut D,
    checks: ApplyChecks,
) -> Result<Decoded> {
    let header = *decoder.header();
    let page_size = header.page_size;
    let verify = checks == ApplyChecks::Database && !header.no_checksum();
    if verify && !header.is_snapshot() {
        let pages = current_pages(db, page_size)?;
        let computed = checksum_of(db, page_size, pages)?;
        if computed != header.pre_apply_checksum {
            return Err(Error::DatabaseChecksumMismatch {
                which: "pre-apply",
                stored: header.pre_apply_checksum,
                computed,
            });
        }
    }
    let mut page = vec![0u8; page_size.bytes()];
    while let Some(pgno) = decoder.decode_page(&mut page)? {
        write_page(db, page_size, pgno, &page)?;
    }
    let decoded = decoder.finish()?;
    db.set_len(page_size.db_len(header.commit))
        .map_err(|e| db_error(page_size.db_len(header.commit), e))?;
    if verify {
        let computed = checksum_of(db, page_size, header.commit)?;
        if computed != decoded.trailer.post_apply_checksum {
            return Err(Error::DatabaseChecksumMismatch {
                which: "post-apply",
                stored: decoded.trailer.post_apply_checksum,
                computed,
            });
        }
    }
    Ok(decoded)
}

/// Writes a snapshot's pages out in order as a whole database file (zeros for the lock page)
/// to any sequential writer. The snapshot's checks all run; on error the output is partial.
pub fn write_snapshot<R: BufRead, W: Write>(
    mut decoder: Decoder<R>,
    mut out: W,
) -> Result<Decoded> {
    let header = *decoder.header();
    if !header.is_snapshot() {
        return Err(Error::Usage(format!(
            "{} is not a snapshot (its min TXID is not 1)",
            header.txid_range()
        )));
    }
    let page_size = header.page_size;
    let mut page = vec![0u8; page_size.bytes()];
    let zeros = vec![0u8; page_size.bytes()];
    let mut written = 0u32;
    while let Some(pgno) = decoder.decode_page(&mut page)? {
        if pgno.get() <= written {
            return Err(Error::page(
                decoder.offset(),
                pgno.get(),
                format!("snapshot pages must ascend, but page {written} was written"),
            ));
        }
        // Only the lock page may be absent from a snapshot; a lenient decoder lets gaps
        // through, and zeros are what SQLite has there.
        while written + 1 < pgno.get() {
            out.write_all(&zeros)
                .map_err(|e| db_error(page_size.db_len(written), e))?;
            written += 1;
        }
        out.write_all(&page)
            .map_err(|e| db_error(page_size.db_len(written), e))?;
        written = pgno.get();
    }
    let decoded = decoder.finish()?;
    out.flush()
        .map_err(|e| db_error(page_size.db_len(written), e))?;
    Ok(decoded)
}

fn write_page<D: DatabaseFile>(
    db: &mut D,
    page_size: PageSize,
    pgno: PageNum,
    page: &[u8],
) -> Result<()> {
    let at = page_size.offset_of(pgno);
    db.seek(SeekFrom::Start(at))
        .and_then(|_| db.write_all(page))
        .map_err(|e| db_error(at, e))
}

fn current_pages<D: DatabaseFile>(db: &mut D, page_size: PageSize) -> Result<u32> {
    let len = db.seek(SeekFrom::End(0)).map_err(|e| db_error(0, e))?;
    if len % u64::from(page_size.get()) != 0 {
        return Err(Error::Usage(format!(
            "database is {len} bytes, not a whole number of {page_size}-byte pages"
        )));
    }
    u32::try_from(len / u64::from(page_size.get()))
        .map_err(|_| Error::Usage(format!("database of {len} bytes has too many pages")))
}

fn checksum_of<D: DatabaseFile>(db: &mut D, page_size: PageSize, pages: u32) -> Result<Checksum> {
    db.seek(SeekFrom::Start(0)).map_err(|e| db_error(0, e))?;
    database_checksum(io::BufReader::new(&mut *db), page_size, pages).map_err(|e| db_error(0, e))
}

fn db_error(offset: u64, source: io::Error) -> Error {
    Error::DatabaseIo { offset, source }
}
