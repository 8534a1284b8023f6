//! Applying fetched files to the output, in plan (TXID) order, on a blocking thread.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use ltx::{Decoder, PageNum, PageSize, Txid};
use tokio::sync::mpsc;

use super::Progress;
use super::fetch::Chunk;
use crate::storage::{FileInfo, StorageError};

/// Consecutive pages are gathered into writes of up to this many bytes.
const RUN_BYTES: usize = 1 << 20;

/// What the output file holds so far.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// The page size, once the first file is read.
    pub page_size: Option<PageSize>,
    /// The last TXID whose file was applied completely and verified.
    pub txid: Txid,
    /// Files applied completely, across re-plans.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl Applied {
    /// Nothing applied yet, keeping the tally of work done.
    pub fn restart(&self) -> Applied {
        Applied {
            files: self.files,
            bytes: self.bytes,
            ..Applied::default()
        }
    }
}

/// Why applying stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A planned file is gone (retention deleted it). `partial`: some of it was applied.
    Vanished { file: FileInfo, partial: bool },
    /// A file's bytes failed verification.
    Corrupt { file: FileInfo, error: ltx::Error },
    /// The page size differs from the files before.
    PageSize {
        file: FileInfo,
        expected: PageSize,
        found: PageSize,
    },
    /// Reading failed for another reason.
    Storage(StorageError),
    /// Writing the output failed.
    Output(io::Error),
}

/// Applies `files` in order to `out`, each verified in full (file checksum and every format
/// rule) as it streams past. Returns when all are applied or one fails.
pub(crate) fn apply_files(
    rx: mpsc::Receiver<Chunk>,
    files: &[FileInfo],
    out: &File,
    applied: &mut Applied,
    progress: &dyn Progress,
) -> Result<(), Stop> {
    let mut source = ChunkSource { rx, pending: None };
    let mut writer: Option<PageWriter<'_>> = None;
    for (index, file) in files.iter().enumerate() {
        let mut reader = FileReader {
            source: &mut source,
            index,
            size: file.size,
            received: 0,
            current: Bytes::new(),
            pos: 0,
            failure: None,
            progress,
        };
        let result = apply_one(&mut reader, file, out, applied, &mut writer);
        let (received, failure) = (reader.received, reader.failure.take());
        match (result, failure) {
            (Ok(()), _) => {
                applied.txid = file.range.max;
                applied.files += 1;
                applied.bytes += file.size;
            }
            (Err(_), Some(e)) if e.is_not_found() => {
                return Err(Stop::Vanished {
                    file: file.clone(),
                    partial: received > 0,
                });
            }
            (Err(_), Some(e)) => return Err(Stop::Storage(e)),
            (Err(e), None) => return Err(e),
        }
    }
    Ok(())
}

fn apply_one<'f>(
    reader: &mut FileReader<'_, '_>,
    file: &FileInfo,
    out: &'f File,
    applied: &mut Applied,
    writer: &mut Option<PageWriter<'f>>,
) -> Result<(), Stop> {
    let corrupt = |error| Stop::Corrupt {
        file: file.clone(),
        error,
    };
    let mut dec = Decoder::from_buf_read(reader).map_err(corrupt)?;
    let header = *dec.header();
    if header.txid_range() != file.range {
        return Err(corrupt(ltx::Error::InvalidHeader {
            reason: format!(
                "header covers {}, its name says {}",
                header.txid_range(),
                file.range
            ),
        }));
    }
    let page_size = *applied.page_size.get_or_insert(header.page_size);
    if header.page_size != page_size {
        return Err(Stop::PageSize {
            file: file.clone(),
            expected: page_size,
            found: header.page_size,
        });
    }
    let w = writer.get_or_insert_with(|| PageWriter::new(out, page_size));
    loop {
        let slot = w.slot().map_err(Stop::Output)?;
        match dec.decode_page(slot).map_err(corrupt)? {
            Some(pgno) => w.commit(pgno).map_err(Stop::Output)?,
            None => break,
        }
    }
    w.flush().map_err(Stop::Output)?;
    dec.finish().map_err(corrupt)?;
    out.set_len(page_size.db_len(header.commit))
        .map_err(Stop::Output)
}

/// The ordered chunks, with at most one held back for the next file.
struct ChunkSource {
    rx: mpsc::Receiver<Chunk>,
    pending: Option<Chunk>,
}

/// One planned file's bytes as a `BufRead`, straight from the fetched chunks (no copy).
struct FileReader<'s, 'p> {
    source: &'s mut ChunkSource,
    index: usize,
    size: u64,
    received: u64,
    current: Bytes,
    pos: usize,
    /// The storage error behind an I/O error this reader returned.
    failure: Option<StorageError>,
    progress: &'p dyn Progress,
}

impl Read for FileReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for FileReader<'_, '_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.current.len() && self.received < self.size {
            let chunk = match self.source.pending.take() {
                Some(c) => Some(c),
                None => self.source.rx.blocking_recv(),
            };
            let Some(chunk) = chunk else {
                return Err(io::Error::other(
                    "the fetch stopped before the file was complete",
                ));
            };
            if chunk.file != self.index {
                // The fetcher moved on (an empty object): this file ends here, short.
                self.source.pending = Some(chunk);
                return Ok(&[]);
            }
            debug_assert_eq!(chunk.offset, self.received);
            match chunk.bytes {
                Ok(bytes) => {
                    self.received += bytes.len() as u64;
                    self.progress.fetched(bytes.len() as u64);
                    self.current = bytes;
                    self.pos = 0;
                }
                Err(e) => {
                    let io = io::Error::other(e.to_string());
                    self.failure = Some(e);
                    return Err(io);
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt;
    }
}

/// Writes decoded pages at their offsets, gathering consecutive pages into large writes.
/// Pages are decoded straight into its buffer.
struct PageWriter<'f> {
    out: &'f File,
    page_size: usize,
    buf: Vec<u8>,
    /// Page number of the first page in `buf`.
    first: u32,
    /// Pages held in `buf`.
    count: usize,
}

impl<'f> PageWriter<'f> {
    fn new(out: &'f File, page_size: PageSize) -> PageWriter<'f> {
        let page_size = page_size.bytes();
        PageWriter {
            out,
            page_size,
            buf: vec![0; RUN_BYTES.max(page_size)],
            first: 0,
            count: 0,
        }
    }

    /// The slot the next page is decoded into.
    fn slot(&mut self) -> io::Result<&mut [u8]> {
        if (self.count + 1) * self.page_size > self.buf.len() {
            self.flush()?;
        }
        let at = self.count * self.page_size;
        Ok(&mut self.buf[at..at + self.page_size])
    }

    /// Records that the slot now holds page `pgno`.
    fn commit(&mut self, pgno: PageNum) -> io::Result<()> {
        let pgno = pgno.get();
        if self.count > 0 && pgno != self.first + self.count as u32 {
            // Not consecutive: write out the run so far and start a new one with this page.
            let ps = self.page_size;
            let held = self.count;
            self.write_run(held)?;
            self.buf.copy_within(held * ps..(held + 1) * ps, 0);
            self.count = 0;
        }
        if self.count == 0 {
            self.first = pgno;
        }
        self.count += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_run(self.count)?;
        self.count = 0;
        Ok(())
    }

    fn write_run(&self, pages: usize) -> io::Result<()> {
        if pages == 0 {
            return Ok(());
        }
        let offset = u64::from(self.first - 1) * self.page_size as u64;
        self.out
            .write_all_at(&self.buf[..pages * self.page_size], offset)
    }
}
