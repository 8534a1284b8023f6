//! A replica file read as a blocking `BufRead`, one ranged read per chunk: what a decoder
//! on a blocking thread streams from a remote file with memory of one chunk, never the
//! file's size.

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::runtime::Handle;

use super::{FileInfo, Replica};

/// `file` read front to back in chunks (each resumed if its body breaks, see
/// [`Replica::read_range`]). Made inside a Tokio runtime; read from a blocking thread.
#[derive(Debug)]
pub struct ChunkedReader {
    replica: Replica,
    file: FileInfo,
    handle: Handle,
    buf: Vec<u8>,
    pos: usize,
    /// Where the next read starts.
    offset: u64,
    chunk: u64,
    read: Option<Arc<AtomicU64>>,
}

impl ChunkedReader {
    /// Reads `file` of `replica` `chunk` bytes at a time.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(replica: Replica, file: FileInfo, chunk: u64) -> ChunkedReader {
        ChunkedReader {
            replica,
            file,
            handle: Handle::current(),
            buf: Vec::new(),
            pos: 0,
            offset: 0,
            chunk: chunk.max(1),
            read: None,
        }
    }

    /// Starts from bytes already fetched from the start of the file.
    pub fn with_prefetched(mut self, first: Vec<u8>) -> ChunkedReader {
        self.offset = first.len() as u64;
        self.buf = first;
        self.pos = 0;
        self
    }

    /// Adds the bytes of every later read to `read` (for progress).
    pub fn counting(mut self, read: Arc<AtomicU64>) -> ChunkedReader {
        self.read = Some(read);
        self
    }

    /// The file being read.
    pub fn file(&self) -> &FileInfo {
        &self.file
    }
}

impl BufRead for ChunkedReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() && self.offset < self.file.size {
            let end = (self.offset + self.chunk).min(self.file.size);
            let buf = std::mem::take(&mut self.buf);
            let fetch = self
                .replica
                .read_range_into(&self.file, self.offset..end, buf);
            self.buf = self.handle.block_on(fetch).map_err(io::Error::other)?;
            if let Some(read) = &self.read {
                read.fetch_add(end - self.offset, Ordering::Relaxed);
            }
            self.pos = 0;
            self.offset = end;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

impl Read for ChunkedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}
