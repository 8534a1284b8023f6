//! The wal-index header at the start of the `-shm` file: what SQLite vouches is committed.
//!
//! A WAL file can hold frames that checksum correctly but were never committed: a writer
//! killed after writing its commit frame and before publishing it in the wal-index leaves
//! them behind, and the next writer overwrites them from `mxFrame + 1`. Only frames up to
//! the header's `mxFrame` are committed, so capture reads no further.
//!
//! Layout ("WAL-mode File Format" in SQLite's documentation, `WalIndexHdr` in `wal.c`): two
//! copies of a 48-byte header in native byte order (the salts excepted: raw bytes): version, unused, change counter,
//! `isInit`, `bigEndCksum`, page size (1 for 65536), `mxFrame`, database size in pages, the
//! checksum of frame `mxFrame`, the two salts, and a checksum of the first 40 bytes. A
//! writer updates the second copy, then the first; a reader that finds both equal and the
//! checksum right has read a consistent header.
//!
//! After the two copies comes the checkpoint information (`WalCkptInfo`): `nBackfill` at
//! byte 96 (frames copied back into the database), five read marks, eight lock bytes, and
//! `nBackfillAttempted` at byte 128 (set when a checkpoint starts copying, so a value above
//! `nBackfill` means one is copying now or died doing so).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::wal::{self, Checksum};

const COPY: usize = 48;
const BACKFILL: usize = 2 * COPY;
const BACKFILL_ATTEMPTED: usize = 128;
const READ_LEN: usize = BACKFILL_ATTEMPTED + 4;
const VERSION: u32 = 3_007_000;

/// A consistent wal-index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IndexHeader {
    /// Frames committed in the current generation of the log.
    pub max_frame: u32,
    /// Database size in pages after the last commit.
    pub db_pages: u32,
    /// The cumulative checksum of frame `max_frame`.
    pub frame_checksum: Checksum,
    /// The current generation's salts (those of the WAL header once one is written).
    pub salt1: u32,
    /// See `salt1`.
    pub salt2: u32,
    /// Database page size; 0 while the index has seen no WAL header.
    pub page_size: u32,
    /// The log's checksums are computed on big-endian words.
    pub big_endian: bool,
}

impl IndexHeader {
    /// Offset in the WAL just after frame `max_frame`: the end of what is committed.
    pub(super) fn committed_end(&self) -> u64 {
        wal::HEADER_SIZE
            + u64::from(self.max_frame) * (wal::FRAME_HEADER_SIZE + u64::from(self.page_size))
    }

    /// Whether the WAL generation `g` is the one this header describes.
    pub(super) fn is_generation(&self, g: &wal::Generation) -> bool {
        g.salt1 == self.salt1
            && g.salt2 == self.salt2
            && g.page_size == self.page_size
            && g.big_endian == self.big_endian
    }

    /// Parses the two copies at the start of the `-shm` file; `None` unless both are equal,
    /// initialised and checksummed (a writer is halfway through an update, or recovery is due).
    pub(super) fn parse(b: &[u8; 2 * COPY]) -> Option<IndexHeader> {
        let (first, second) = b.split_at(COPY);
        if first != second {
            return None;
        }
        let word = |at: usize| u32::from_ne_bytes(first[at..at + 4].try_into().unwrap());
        let is_init = first[12] == 1;
        let stored = (word(40), word(44));
        if word(0) != VERSION
            || !is_init
            || wal::checksum(cfg!(target_endian = "big"), (0, 0), &first[..40]) != stored
        {
            return None;
        }
        let size = u32::from(u16::from_ne_bytes([first[14], first[15]]));
        let page_size = if size == 1 { 65536 } else { size };
        Some(IndexHeader {
            max_frame: word(16),
            db_pages: word(20),
            frame_checksum: (word(24), word(28)),
            // SQLite copies the salts byte for byte into the WAL and its frames, which are
            // read as big-endian words.
            salt1: u32::from_be_bytes(first[32..36].try_into().unwrap()),
            salt2: u32::from_be_bytes(first[36..40].try_into().unwrap()),
            page_size,
            big_endian: first[13] == 1,
        })
    }

    /// Reads the header from the `-shm` file, retrying briefly while a writer is updating
    /// it. `None` if no consistent header could be read.
    pub(super) fn read(shm: &File) -> io::Result<Option<IndexHeader>> {
        LogState::read(shm).map(|s| s.index)
    }
}

/// What the wal-index says about the log: the header, and how far checkpoints have copied
/// it back into the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LogState {
    /// The header, if a consistent one could be read.
    pub index: Option<IndexHeader>,
    /// Frames copied back (`nBackfill`).
    pub backfilled: u32,
    /// Frames the last checkpoint set out to copy back (`nBackfillAttempted`).
    pub backfill_attempted: u32,
}

impl LogState {
    /// Reads the `-shm` file's header and checkpoint information in one read, retrying
    /// briefly while a writer is updating the header. A file too short to hold them reads
    /// as no header and nothing copied.
    pub(super) fn read(shm: &File) -> io::Result<LogState> {
        let mut b = [0u8; READ_LEN];
        let mut attempt = 0;
        loop {
            match shm.read_exact_at(&mut b, 0) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(LogState {
                        index: None,
                        backfilled: 0,
                        backfill_attempted: 0,
                    });
                }
                Err(e) => return Err(e),
            }
            let header = b[..2 * COPY].try_into().expect("two copies");
            let word = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
            let index = IndexHeader::parse(header);
            if index.is_some() || attempt == 99 {
                return Ok(LogState {
                    index,
                    backfilled: word(BACKFILL),
                    backfill_attempted: word(BACKFILL_ATTEMPTED),
                });
            }
            attempt += 1;
            if attempt > 10 {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }

    /// Another connection's checkpoint is copying the log back into the database now (or
    /// died doing so).
    pub(super) fn backfilling(&self) -> bool {
        self.backfill_attempted > self.backfilled
    }
}
