//! Reading an LTX file's layout from a replica, the one way restore, compaction and the VFS
//! all do it: a small file whole, a large one as its header and its tail (page index and
//! trailer), and the header held to the TXIDs the file's name says.
//!
//! (`ltx::read_file_tail` is the same read for bytes already at hand, without a replica.)

use bytes::Bytes;
use ltx::{FileTail, HEADER_SIZE, Header, TailParse};

use super::error::StorageError;
use super::replica::{FileInfo, Replica};

/// An LTX file's layout as read from a replica.
#[derive(Clone, Debug)]
pub struct LtxLayout {
    /// The header's bytes.
    pub head: [u8; HEADER_SIZE],
    /// The header.
    pub header: Header,
    /// The page index and trailer.
    pub tail: FileTail,
    /// The file from `tail_start` on: the bytes `tail` was parsed from (for a file read
    /// whole, all of it).
    pub tail_bytes: Bytes,
    /// Where `tail_bytes` starts in the file.
    pub tail_start: u64,
    /// The whole file, when it was read whole.
    pub whole: Option<Bytes>,
}

impl FileInfo {
    /// Checks that `header` covers the TXIDs this file's name says: a misnamed file would
    /// pass another state's pages off as this one's.
    pub fn check_named(&self, header: &Header) -> Result<(), ltx::Error> {
        if header.txid_range() == self.range {
            return Ok(());
        }
        Err(ltx::Error::InvalidHeader {
            reason: format!(
                "header covers {}, the file name says {}",
                header.txid_range(),
                self.range
            ),
        })
    }
}

impl Replica {
    /// The layout of `file`: all of it in one read if it is at most `whole_max` bytes;
    /// otherwise its header and its tail, read at once, and the rest of a page index
    /// larger than the first tail read in a third read. The outer error is a failed read;
    /// the inner one, bytes that are not the LTX file the name promises (not LTX, cut
    /// short, or a header for other TXIDs).
    pub async fn read_layout(
        &self,
        file: &FileInfo,
        whole_max: u64,
    ) -> Result<Result<LtxLayout, ltx::Error>, StorageError> {
        if file.size <= whole_max {
            let whole = self.read(file).await?;
            return Ok(layout_of_whole(file, whole));
        }
        let mut tail_range = ltx::tail_fetch_range(file.size);
        let (head, mut tail_bytes) = futures::try_join!(
            self.read_range(file, 0..HEADER_SIZE as u64),
            self.read_range(file, tail_range.clone())
        )?;
        let head: [u8; HEADER_SIZE] = head[..].try_into().expect("the range is a header long");
        let tail = loop {
            match ltx::parse_tail(file.size, tail_range.start, &tail_bytes) {
                Ok(TailParse::Complete(tail)) => break tail,
                Ok(TailParse::NeedMore(more)) => {
                    let before = self.read_range(file, more.clone()).await?;
                    tail_bytes = [before, tail_bytes].concat().into();
                    tail_range.start = more.start;
                }
                Err(e) => return Ok(Err(e)),
            }
        };
        Ok(checked(
            file,
            head,
            tail,
            tail_bytes,
            tail_range.start,
            None,
        ))
    }
}

fn layout_of_whole(file: &FileInfo, whole: Bytes) -> Result<LtxLayout, ltx::Error> {
    let head: [u8; HEADER_SIZE] = *whole.first_chunk().ok_or(ltx::Error::Truncated {
        offset: 0,
        what: "header",
    })?;
    let tail = match ltx::parse_tail(whole.len() as u64, 0, &whole)? {
        TailParse::Complete(tail) => tail,
        TailParse::NeedMore(_) => {
            return Err(ltx::Error::Truncated {
                offset: 0,
                what: "page index",
            });
        }
    };
    checked(file, head, tail, whole.clone(), 0, Some(whole))
}

fn checked(
    file: &FileInfo,
    head: [u8; HEADER_SIZE],
    tail: FileTail,
    tail_bytes: Bytes,
    tail_start: u64,
    whole: Option<Bytes>,
) -> Result<LtxLayout, ltx::Error> {
    let header = Header::from_bytes(&head)?;
    file.check_named(&header)?;
    Ok(LtxLayout {
        head,
        header,
        tail,
        tail_bytes,
        tail_start,
        whole,
    })
}
