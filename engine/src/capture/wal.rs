//! The SQLite WAL file: its header, its frames, the cumulative checksum that chains them,
//! and scanning the committed transactions that follow a position.
//!
//! Layout: a 32-byte header (magic, version, page size, checkpoint sequence, two salts, a
//! checksum of the first 24 bytes), then frames of a 24-byte header (page number, database
//! size in pages for a commit frame or 0, the two salts, a cumulative checksum) and one page.
//! A frame is valid when its salts match the header's and its checksum continues the chain.
//! Valid is not committed: only the frames up to the wal-index's `mxFrame` are (see
//! `wal_index`), so scans take their end from there and treat a broken chain before it as
//! an error. A checkpoint that restarts the log increments salt-1 and draws a new salt-2.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Size of the WAL header.
pub(super) const HEADER_SIZE: u64 = 32;
/// Size of a frame header.
pub(super) const FRAME_HEADER_SIZE: u64 = 24;

const MAGIC_LITTLE: u32 = 0x377f_0682;
const MAGIC_BIG: u32 = 0x377f_0683;
const VERSION: u32 = 3_007_000;

/// The running checksum: two 32-bit words.
pub(super) type Checksum = (u32, u32);

/// What identifies one generation of the log, and how its checksums are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Generation {
    /// Checksum words are big-endian (magic ...83) rather than little-endian (...82).
    pub big_endian: bool,
    /// Database page size.
    pub page_size: u32,
    /// Salt-1: incremented on each restart.
    pub salt1: u32,
    /// Salt-2: random on each restart.
    pub salt2: u32,
}

impl Generation {
    /// Bytes per frame.
    pub(super) fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE + u64::from(self.page_size)
    }
}

/// A parsed, valid WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// The generation it starts.
    pub generation: Generation,
    /// The checksum of its first 24 bytes, where the frame chain starts.
    pub checksum: Checksum,
}

impl Header {
    /// Parses a header; `None` if it is not a valid WAL header (an empty or reset file, or
    /// one being written).
    pub(super) fn parse(b: &[u8; HEADER_SIZE as usize]) -> Option<Header> {
        let word = |at| be_u32(b, at);
        let big_endian = match word(0) {
            MAGIC_LITTLE => false,
            MAGIC_BIG => true,
            _ => return None,
        };
        let page_size = word(8);
        if word(4) != VERSION || !page_size.is_power_of_two() || !(512..=65536).contains(&page_size)
        {
            return None;
        }
        let checksum = checksum(big_endian, (0, 0), &b[..24]);
        if checksum != (word(24), word(28)) {
            return None;
        }
        Some(Header {
            generation: Generation {
                big_endian,
                page_size,
                salt1: word(16),
                salt2: word(20),
            },
            checksum,
        })
    }

    /// Reads the header of the WAL file; `None` if the file is shorter or not valid.
    pub(super) fn read(file: &File) -> io::Result<Option<Header>> {
        let mut b = [0u8; HEADER_SIZE as usize];
        match file.read_exact_at(&mut b, 0) {
            Ok(()) => Ok(Header::parse(&b)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `init`.
pub(super) fn checksum(big_endian: bool, init: Checksum, data: &[u8]) -> Checksum {
    debug_assert_eq!(data.len() % 8, 0);
    let (mut s0, mut s1) = init;
    for pair in data.chunks_exact(8) {
        let (a, b) = (pair[..4].try_into().unwrap(), pair[4..].try_into().unwrap());
        let (x0, x1) = if big_endian {
            (u32::from_be_bytes(a), u32::from_be_bytes(b))
        } else {
            (u32::from_le_bytes(a), u32::from_le_bytes(b))
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// The committed transactions found after a position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    /// Offset just after the last commit frame read (the scan's start if there was none).
    pub end: u64,
    /// The cumulative checksum at `end`.
    pub checksum: Checksum,
    /// Database size in pages after the last commit (0 if none was read).
    pub commit: u32,
    /// The newest committed frame offset of each page changed.
    pub pages: HashMap<u32, u64>,
    /// Committed transactions read.
    pub transactions: u32,
}

/// Reads the committed frames of `generation` from `from` (where the chain stands at
/// `checksum_at`) up to `to`, the end of what the wal-index says is committed. Every frame
/// before `to` must continue the chain and `to` must follow a commit frame: anything else
/// means the log is not what the wal-index describes, an error. Stops early at the first
/// commit after `max_bytes` have been read, so a huge backlog is taken a piece at a time.
pub(super) fn scan(
    file: &File,
    generation: &Generation,
    from: u64,
    checksum_at: Checksum,
    to: u64,
    max_bytes: u64,
) -> io::Result<Scan> {
    let frame_size = generation.frame_size();
    // Sized to what is to be read (a commit's few frames, usually), at most a megabyte: no
    // large allocation, and no read past the committed frames, per commit staged.
    let span = usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX);
    let mut reader = BufReader::with_capacity(span.clamp(frame_size as usize, 1 << 20), file);
    reader.seek(SeekFrom::Start(from))?;
    let mut frame = vec![0u8; frame_size as usize];
    let mut result = Scan {
        end: from,
        checksum: checksum_at,
        ..Scan::default()
    };
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut sum = checksum_at;
    let mut offset = from;
    let broken = |offset: u64, what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "WAL frame at offset {offset} {what}, though the wal-index says frames up to offset {to} are committed"
            ),
        )
    };
    while offset < to {
        match reader.read_exact(&mut frame) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(broken(offset, "is missing"));
            }
            Err(e) => return Err(e),
        }
        let Some(next) = continue_chain(generation, sum, &frame) else {
            return Err(broken(offset, "does not continue the checksum chain"));
        };
        sum = next;
        let (pgno, commit) = (be_u32(&frame, 0), be_u32(&frame, 4));
        pending.push((pgno, offset));
        offset += frame_size;
        if commit != 0 {
            result.pages.extend(pending.drain(..));
            result.end = offset;
            result.checksum = sum;
            result.commit = commit;
            result.transactions += 1;
            if offset - from >= max_bytes {
                break;
            }
        }
    }
    if !pending.is_empty() {
        return Err(broken(
            offset - frame_size,
            "ends a transaction with no commit frame",
        ));
    }
    // Pages above the last commit were dropped by it (the database shrank).
    let commit = result.commit;
    result.pages.retain(|&pgno, _| pgno <= commit);
    Ok(result)
}

/// The cumulative checksum after `frame` if it continues the chain of `generation` whose
/// checksum so far is `sum` (its salts match and its stored checksum is the chain's); `None`
/// where the chain ends: an old frame, a torn write, or bytes that were never a frame.
fn continue_chain(generation: &Generation, sum: Checksum, frame: &[u8]) -> Option<Checksum> {
    if be_u32(frame, 8) != generation.salt1 || be_u32(frame, 12) != generation.salt2 {
        return None;
    }
    let header_sum = checksum(generation.big_endian, sum, &frame[..8]);
    let next = checksum(
        generation.big_endian,
        header_sum,
        &frame[FRAME_HEADER_SIZE as usize..],
    );
    (next == (be_u32(frame, 16), be_u32(frame, 20))).then_some(next)
}

/// The big-endian 32-bit word at byte `at` (WAL headers and frame headers are made of them).
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The cumulative checksum stored in the frame that ends at `end`, if that frame belongs to
/// `generation`: a cheap check that the log still holds the frames a position was taken at.
pub(super) fn checksum_before(
    file: &File,
    generation: &Generation,
    end: u64,
) -> io::Result<Option<Checksum>> {
    let frame_size = generation.frame_size();
    if end < HEADER_SIZE + frame_size {
        return Ok(None);
    }
    let mut head = [0u8; FRAME_HEADER_SIZE as usize];
    match file.read_exact_at(&mut head, end - frame_size) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if be_u32(&head, 8) != generation.salt1 || be_u32(&head, 12) != generation.salt2 {
        return Ok(None);
    }
    Ok(Some((be_u32(&head, 16), be_u32(&head, 20))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::wal_index::IndexHeader;
    use rusqlite::Connection;

    /// A database in WAL mode that never checkpoints on its own.
    fn wal_db(dir: &std::path::Path) -> (Connection, std::path::PathBuf) {
        let path = dir.join("db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "wal").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        (conn, path)
    }

    fn wal(path: &std::path::Path) -> File {
        File::open(path.with_file_name("db-wal")).unwrap()
    }

    fn index(path: &std::path::Path) -> IndexHeader {
        IndexHeader::read(&File::open(path.with_file_name("db-shm")).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn scans_to_the_committed_end_and_refuses_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = wal_db(dir.path());
        for i in 0..10 {
            conn.execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i])
                .unwrap();
        }
        let file = wal(&path);
        let header = Header::read(&file).unwrap().unwrap();
        assert_eq!(header.generation.page_size, 4096);
        let idx = index(&path);
        assert!(idx.is_generation(&header.generation));
        let to = idx.committed_end();
        let s = scan(
            &file,
            &header.generation,
            HEADER_SIZE,
            header.checksum,
            to,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(s.transactions, 11, "CREATE TABLE and ten inserts");
        assert_eq!(s.end, to);
        assert_eq!(s.end, file.metadata().unwrap().len());
        assert_eq!(s.checksum, idx.frame_checksum);
        let pages: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(s.commit, pages);
        assert_eq!(idx.db_pages, pages);
        assert_eq!(
            checksum_before(&file, &header.generation, s.end).unwrap(),
            Some(s.checksum)
        );
        // Resuming from the end finds nothing new.
        let again = scan(&file, &header.generation, s.end, s.checksum, to, u64::MAX).unwrap();
        assert_eq!(again.transactions, 0);

        // A flipped byte in a committed frame is an error, not the end of the log.
        let mut bytes = std::fs::read(path.with_file_name("db-wal")).unwrap();
        let frame_size = header.generation.frame_size() as usize;
        bytes[32 + 3 * frame_size + 100] ^= 1;
        let bad = dir.path().join("bad-wal");
        std::fs::write(&bad, &bytes).unwrap();
        let err = scan(
            &File::open(&bad).unwrap(),
            &header.generation,
            HEADER_SIZE,
            header.checksum,
            to,
            u64::MAX,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // So is a log cut short of the committed end.
        let short = dir.path().join("short-wal");
        std::fs::write(&short, &bytes[..bytes.len() - frame_size]).unwrap();
        assert!(
            scan(
                &File::open(&short).unwrap(),
                &header.generation,
                s.end - frame_size as u64 * 2,
                s.checksum,
                to,
                u64::MAX
            )
            .is_err()
        );
    }

    #[test]
    fn a_large_backlog_is_cut_at_commit_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = wal_db(dir.path());
        for i in 0..40 {
            conn.execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i])
                .unwrap();
        }
        let file = wal(&path);
        let header = Header::read(&file).unwrap().unwrap();
        let to = index(&path).committed_end();
        let mut pos = (HEADER_SIZE, header.checksum);
        let mut total = 0;
        let mut pieces = 0;
        while pos.0 < to {
            let s = scan(&file, &header.generation, pos.0, pos.1, to, 10 * 4096).unwrap();
            assert!(s.transactions > 0);
            assert!(
                s.end - pos.0 < 20 * 4120,
                "a piece stops soon after the limit"
            );
            total += s.transactions;
            pieces += 1;
            pos = (s.end, s.checksum);
        }
        assert_eq!(total, 41);
        assert!(pieces > 3);
    }

    #[test]
    fn a_restart_changes_the_salts_in_the_wal_and_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, path) = wal_db(dir.path());
        conn.execute("INSERT INTO t VALUES (1, x'00')", []).unwrap();
        let before = Header::read(&wal(&path)).unwrap().unwrap().generation;
        // RESTART leaves the index as it was, everything copied back: the next writer restarts.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        assert!(index(&path).is_generation(&before));
        conn.execute("INSERT INTO t VALUES (2, x'00')", []).unwrap();
        let after = Header::read(&wal(&path)).unwrap().unwrap().generation;
        assert_eq!(after.salt1, before.salt1.wrapping_add(1));
        assert!(index(&path).is_generation(&after));
        assert_eq!(index(&path).max_frame, 1);
        // TRUNCATE restarts the index itself: new salts, nothing committed.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let truncated = index(&path);
        assert_eq!(truncated.max_frame, 0);
        assert!(!truncated.is_generation(&after));
    }
}
