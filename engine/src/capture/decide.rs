//! What a sync reads: committed frames after the last position, nothing, or (when nothing
//! proves the log continues it) the whole database.

use std::fs::File;
use std::io;

use super::position::Position;
use super::wal::{self, Generation};
use super::wal_index::IndexHeader;

/// What to read for the next L0 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Committed frames of `generation` from `from` (where the chain stands at `checksum`)
    /// to `to`, the committed end the wal-index gives.
    Frames {
        generation: Generation,
        from: u64,
        checksum: wal::Checksum,
        to: u64,
    },
    /// The log restarted and holds nothing committed yet: the position moves to the start
    /// of the next generation, with no file.
    Restarted,
    /// The whole database: nothing proves the log still continues the last position.
    /// `base`: the earlier history cannot be built on (the page size changed), so the copy
    /// is named as a snapshot, `1-<txid>`, and restores start from it.
    Full { reason: &'static str, base: bool },
    /// Nothing new is committed.
    Nothing,
}

/// Decides what to read, from the wal-index header (what SQLite vouches is committed) and
/// the WAL file. `page_size` is the database's now.
///
/// `live`: strata has held a read transaction since `position` was taken (see `sqlite`), so
/// whatever generation of the log the index now shows follows on with nothing missed.
/// Otherwise (strata restarted) only the same generation, still holding the last frame
/// captured, proves continuity: the frames of a generation that ended while strata was
/// not running cannot be told apart from frames a killed writer left uncommitted.
pub(super) fn decide(
    index: &IndexHeader,
    wal: Option<&File>,
    position: Option<&Position>,
    live: bool,
    page_size: u32,
) -> io::Result<Source> {
    let Some(position) = position else {
        return Ok(Source::Full {
            reason: "first sync",
            base: false,
        });
    };
    if position.page_size != page_size {
        return Ok(Source::Full {
            reason: "the page size changed",
            base: true,
        });
    }
    let header = match wal {
        Some(f) => wal::Header::read(f)?,
        None => None,
    };
    if let Some(at) = position
        .wal
        .filter(|at| index.is_generation(&at.generation))
    {
        let to = index.committed_end();
        let start = header.filter(|h| h.generation == at.generation);
        let intact = at.offset <= to
            && match wal {
                _ if at.offset == wal::HEADER_SIZE => start.is_some(),
                Some(f) => wal::checksum_before(f, &at.generation, at.offset)? == Some(at.checksum),
                None => false,
            };
        if !intact {
            return Ok(Source::Full {
                reason: "the WAL no longer holds the frames last captured",
                base: false,
            });
        }
        if at.offset == to {
            return Ok(Source::Nothing);
        }
        let checksum = match start {
            Some(h) if at.offset == wal::HEADER_SIZE => h.checksum,
            _ => at.checksum,
        };
        return Ok(Source::Frames {
            generation: at.generation,
            from: at.offset,
            checksum,
            to,
        });
    }
    if !live {
        return Ok(Source::Full {
            reason: if position.wal.is_some() {
                "the WAL restarted while strata was not running"
            } else {
                "strata was not running, and nothing proves the database is unchanged"
            },
            base: false,
        });
    }
    if index.max_frame == 0 {
        return Ok(if position.wal.is_none() {
            Source::Nothing
        } else {
            Source::Restarted
        });
    }
    match header {
        Some(h) if index.is_generation(&h.generation) => Ok(Source::Frames {
            generation: h.generation,
            from: wal::HEADER_SIZE,
            checksum: h.checksum,
            to: index.committed_end(),
        }),
        _ => Err(inconsistent(
            "the wal-index says frames are committed in a generation the WAL file does not start",
        )),
    }
}

pub(super) fn inconsistent(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ltx::Txid;

    use super::*;
    use crate::capture::position::{FileId, WalPosition};
    use crate::capture::sync::open_if_exists;
    use rusqlite::Connection;

    /// A WAL-mode database written by a connection that never checkpoints on its own.
    struct WalDb {
        _dir: tempfile::TempDir,
        path: PathBuf,
        conn: Connection,
    }

    impl WalDb {
        fn new() -> WalDb {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
                .unwrap();
            WalDb {
                _dir: dir,
                path,
                conn,
            }
        }

        fn write(&self, n: usize) {
            for _ in 0..n {
                self.conn
                    .execute("INSERT INTO t (v) VALUES (randomblob(100))", [])
                    .unwrap();
            }
        }

        fn checkpoint(&self, mode: &str) {
            self.conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .unwrap();
        }

        fn wal(&self) -> Option<File> {
            open_if_exists(&self.path.with_file_name("db-wal")).unwrap()
        }

        fn index(&self) -> IndexHeader {
            IndexHeader::read(&File::open(self.path.with_file_name("db-shm")).unwrap())
                .unwrap()
                .unwrap()
        }

        /// A position at the committed end of the log, as a sync would have saved it.
        fn position(&self) -> Position {
            let idx = self.index();
            let wal = self.wal().unwrap();
            let h = wal::Header::read(&wal).unwrap().unwrap();
            Position {
                txid: Txid::new(5),
                commit: idx.db_pages,
                page_size: idx.page_size,
                db: FileId { dev: 0, ino: 0 },
                wal: Some(WalPosition {
                    generation: h.generation,
                    offset: idx.committed_end(),
                    checksum: idx.frame_checksum,
                }),
                history: 1,
            }
        }

        fn decide(&self, p: &Position, live: bool) -> Source {
            decide(&self.index(), self.wal().as_ref(), Some(p), live, 4096).unwrap()
        }
    }

    fn is_full(s: Source) -> bool {
        matches!(s, Source::Full { base: false, .. })
    }

    #[test]
    fn the_same_generation_continues_where_it_stopped_live_or_not() {
        let db = WalDb::new();
        db.write(5);
        let p = db.position();
        assert_eq!(db.decide(&p, false), Source::Nothing);
        db.write(5);
        db.checkpoint("PASSIVE");
        let at = p.wal.unwrap().offset;
        for live in [false, true] {
            assert!(
                matches!(db.decide(&p, live), Source::Frames { from, to, .. } if from == at && to == db.index().committed_end())
            );
        }
    }

    #[test]
    fn a_log_that_no_longer_holds_the_last_frames_needs_a_full_copy() {
        let db = WalDb::new();
        db.write(5);
        let mut p = db.position();
        p.wal.as_mut().unwrap().checksum.0 ^= 1;
        assert!(is_full(db.decide(&p, false)));
        assert!(
            is_full(db.decide(&p, true)),
            "even while live: these are not the frames captured"
        );
        let mut p = db.position();
        p.wal.as_mut().unwrap().offset += 10 * 4120;
        assert!(
            is_full(db.decide(&p, true)),
            "a position past the committed end"
        );
    }

    #[test]
    fn a_restart_is_followed_only_while_live() {
        let db = WalDb::new();
        db.write(3);
        let p = db.position();
        db.checkpoint("RESTART");
        // Everything is copied back, but the log restarts only with the next writer.
        assert_eq!(db.decide(&p, false), Source::Nothing);
        db.checkpoint("TRUNCATE");
        assert_eq!(db.decide(&p, true), Source::Restarted);
        assert!(is_full(db.decide(&p, false)));
        let moved = Position { wal: None, ..p };
        assert_eq!(db.decide(&moved, true), Source::Nothing);
        assert!(
            is_full(db.decide(&moved, false)),
            "nothing proves the database unchanged"
        );
        db.write(2);
        for p in [p, moved] {
            assert!(matches!(
                db.decide(&p, true),
                Source::Frames {
                    from: wal::HEADER_SIZE,
                    ..
                }
            ));
            assert!(is_full(db.decide(&p, false)));
        }
        // Even when the old generation's frames after the position are still in the file:
        // they cannot be told apart from frames a killed writer never committed.
        let db = WalDb::new();
        db.write(20);
        let p = db.position();
        db.write(3);
        db.checkpoint("RESTART");
        db.write(1);
        assert!(is_full(db.decide(&p, false)));
    }

    #[test]
    fn a_new_page_size_starts_a_new_base() {
        let db = WalDb::new();
        db.write(3);
        let mut p = db.position();
        p.page_size = 1024;
        p.wal.as_mut().unwrap().generation.page_size = 1024;
        for live in [false, true] {
            assert!(matches!(
                db.decide(&p, live),
                Source::Full { base: true, .. }
            ));
        }
    }
}
