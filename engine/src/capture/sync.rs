//! One sync: decide what changed since the last position, and write it as one L0 file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ltx::{
    Checksum, Encoder, Header, HeaderFlags, PageEncoding, PageNum, PageSize, Txid, TxidRange,
};

use super::position::{Position, WalPosition};
use super::staging::Staging;
use super::wal::{self, Generation, Scan};

/// What to read for the next L0 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Committed frames of `generation` after `from`. `ends_generation`: the log has since
    /// moved to the next generation, and this is the last of this one.
    Frames {
        generation: Generation,
        from: u64,
        checksum: wal::Checksum,
        ends_generation: bool,
    },
    /// The whole database: nothing proves the log still continues the last position.
    Full { reason: &'static str },
    /// Nothing to read yet.
    Nothing,
}

/// Decides what to read. `live`: strata has held a read transaction since `position` was
/// taken (see `sqlite`), so any later generation of the log follows on with nothing missed;
/// otherwise (strata restarted) continuity is checked against what the log file still
/// shows: one restart since the position, and the old generation's frames after it intact.
pub fn decide(wal: Option<&File>, position: Option<&Position>, live: bool) -> io::Result<Source> {
    let Some(position) = position else {
        return Ok(Source::Full {
            reason: "first sync",
        });
    };
    let header = match wal {
        Some(f) => wal::Header::read(f)?,
        None => None,
    };
    let Some(at) = position.wal else {
        // The log was empty at the last position; the database file held everything.
        return Ok(match header {
            None => Source::Nothing,
            Some(h) if live => Source::Frames {
                generation: h.generation,
                from: wal::HEADER_SIZE,
                checksum: h.checksum,
                ends_generation: false,
            },
            Some(_) => Source::Full {
                reason: "the WAL was written while strata was not running",
            },
        });
    };
    let Some(header) = header else {
        return Ok(if live || at.proven_end {
            Source::Nothing
        } else {
            Source::Full {
                reason: "the WAL was emptied while strata was not running",
            }
        });
    };
    let file = wal.expect("a header was read from it");
    if header.generation == at.generation {
        let intact = if at.offset == wal::HEADER_SIZE {
            header.checksum == at.checksum
        } else {
            wal::checksum_before(file, &at.generation, at.offset)? == Some(at.checksum)
        };
        return Ok(if intact {
            Source::Frames {
                generation: at.generation,
                from: at.offset,
                checksum: at.checksum,
                ends_generation: false,
            }
        } else {
            Source::Full {
                reason: "the WAL no longer holds the frames last captured",
            }
        });
    }
    if live {
        // Every frame of the generations in between was captured or never existed: a
        // generation can only end once its frames are copied back into the database, which
        // strata's read transaction forbids for frames it has not seen. Several restarts in
        // a row (the application's RESTART, then strata's TRUNCATE) leave empty generations.
        return Ok(next_generation(&header));
    }
    if !at.generation.is_followed_by(&header.generation) {
        return Ok(Source::Full {
            reason: "the WAL restarted more than once while strata was not running",
        });
    }
    if at.proven_end {
        return Ok(next_generation(&header));
    }
    // Strata was not running when the log restarted. The old generation's frames after the
    // position are still in the file, readable, unless the file was truncated below the
    // position or the new generation has grown over it.
    Ok(if old_tail_intact(file, &at, &header)? {
        Source::Frames {
            generation: at.generation,
            from: at.offset,
            checksum: at.checksum,
            ends_generation: true,
        }
    } else {
        Source::Full {
            reason: "the WAL restarted while strata was not running and its old frames are gone",
        }
    })
}

fn next_generation(header: &wal::Header) -> Source {
    Source::Frames {
        generation: header.generation,
        from: wal::HEADER_SIZE,
        checksum: header.checksum,
        ends_generation: false,
    }
}

/// Whether frames of the old generation from `at.offset` on are untouched: the file reaches
/// that far and the new generation's frames end before it.
fn old_tail_intact(file: &File, at: &WalPosition, header: &wal::Header) -> io::Result<bool> {
    let len = file.metadata()?.len();
    let new_end = wal::chain_end(
        file,
        &header.generation,
        wal::HEADER_SIZE,
        header.checksum,
        at.offset,
    )?;
    Ok(len >= at.offset && new_end < at.offset)
}

/// What one sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// An L0 file for this TXID was staged.
    Staged {
        txid: Txid,
        /// The WAL held more than one file's worth; sync again at once.
        more: bool,
        /// It is a full copy of the database.
        full: bool,
    },
    /// Nothing new was committed.
    Nothing,
}

/// The files of one database and how to write L0 files for it.
#[derive(Debug)]
pub struct Syncer {
    pub db_path: PathBuf,
    /// The database file, open for as long as capture runs. Never reopened: closing any
    /// descriptor of a file drops every POSIX lock the process holds on it, including
    /// SQLite's, and an application would then think strata's connections gone and delete
    /// the WAL with frames strata has not copied.
    pub db_file: File,
    pub wal_path: PathBuf,
    pub page_size: PageSize,
    pub staging: Staging,
    pub position: Option<Position>,
    /// See [`decide`].
    pub live: bool,
    pub next_txid: Txid,
    /// Bytes of WAL one L0 file takes at most (cut at a commit boundary).
    pub max_wal_bytes: u64,
    pub encoding: PageEncoding,
}

impl Syncer {
    /// Syncs once: stages an L0 file for what was committed since the last position, or a
    /// full copy when continuity cannot be shown.
    pub fn sync(&mut self) -> io::Result<Synced> {
        // A generation change with nothing committed yet moves the position without a file,
        // then looks again.
        for _ in 0..3 {
            let wal = open_if_exists(&self.wal_path)?;
            let source = decide(wal.as_ref(), self.position.as_ref(), self.live)?;
            match source {
                Source::Nothing => return Ok(Synced::Nothing),
                Source::Full { reason } => {
                    tracing::info!(db = %self.db_path.display(), txid = %self.next_txid, reason, "writing a full copy");
                    return self.full(wal.as_ref());
                }
                Source::Frames {
                    generation,
                    from,
                    checksum,
                    ends_generation,
                } => {
                    let file = wal.as_ref().expect("frames come from a WAL file");
                    let max = if ends_generation {
                        u64::MAX
                    } else {
                        self.max_wal_bytes
                    };
                    let scan = wal::scan(file, &generation, from, checksum, max)?;
                    let prev = self.position.expect("frames follow a position");
                    if scan.is_empty() {
                        // Nothing new in this generation: record that the position now stands
                        // in it (or that the old one is proven complete) and look again.
                        let moved = Position {
                            wal: Some(WalPosition {
                                generation,
                                offset: from,
                                checksum,
                                proven_end: ends_generation,
                            }),
                            ..prev
                        };
                        if self.position == Some(moved) {
                            return Ok(Synced::Nothing);
                        }
                        self.set_position(moved)?;
                        continue;
                    }
                    let txid = self.next_txid;
                    let header = self.l0_header(scan.commit, Some((generation, from, scan.end)));
                    let grown = (prev.commit + 1)..=scan.commit;
                    self.staging.write(txid, |out| {
                        let pages = incremental_pages(&scan, grown, self.page_size);
                        write_l0(
                            out,
                            &header,
                            self.encoding,
                            pages,
                            Some(file),
                            &self.db_file,
                            self.page_size,
                        )
                    })?;
                    if ends_generation && !self.tail_still_intact(file, &generation, from)? {
                        // The new generation grew over the frames while they were read.
                        self.staging.remove(txid)?;
                        return self.full(wal.as_ref());
                    }
                    let more = scan.limited;
                    self.staged(
                        txid,
                        Position {
                            txid,
                            commit: scan.commit,
                            wal: Some(WalPosition {
                                generation,
                                offset: scan.end,
                                checksum: scan.checksum,
                                proven_end: ends_generation,
                            }),
                        },
                    )?;
                    return Ok(Synced::Staged {
                        txid,
                        more,
                        full: false,
                    });
                }
            }
        }
        Ok(Synced::Nothing)
    }

    fn tail_still_intact(&self, file: &File, old: &Generation, from: u64) -> io::Result<bool> {
        let Some(header) = wal::Header::read(file)? else {
            return Ok(false);
        };
        let at = WalPosition {
            generation: *old,
            offset: from,
            checksum: (0, 0),
            proven_end: false,
        };
        old_tail_intact(file, &at, &header)
    }

    /// Stages the whole database as the next TXID: every page from the newest committed WAL
    /// frame that holds it, or from the database file. The read transaction strata holds
    /// keeps both consistent while they are read.
    fn full(&mut self, wal: Option<&File>) -> io::Result<Synced> {
        let header = match wal {
            Some(f) => wal::Header::read(f)?,
            None => None,
        };
        let db = &self.db_file;
        let (scan, frames) = match (&header, wal) {
            (Some(h), Some(f)) => (
                wal::scan(f, &h.generation, wal::HEADER_SIZE, h.checksum, u64::MAX)?,
                Some(f),
            ),
            _ => (Scan::default(), None),
        };
        let commit = if scan.commit != 0 {
            scan.commit
        } else {
            db_pages(db, self.page_size)?
        };
        let txid = self.next_txid;
        let wal_range = header.map(|h| (h.generation, wal::HEADER_SIZE, scan.end));
        let ltx_header = self.l0_header(commit, wal_range);
        let lock = self.page_size.lock_page().get();
        self.staging.write(txid, |out| {
            let pages = (1..=commit).filter(|&p| p != lock).map(|p| {
                let pgno = PageNum::new(p).expect("page numbers start at 1");
                (pgno, scan.pages.get(&p).copied())
            });
            write_l0(
                out,
                &ltx_header,
                self.encoding,
                pages,
                frames,
                db,
                self.page_size,
            )
        })?;
        self.staged(
            txid,
            Position {
                txid,
                commit,
                wal: header.map(|h| WalPosition {
                    generation: h.generation,
                    offset: scan.end,
                    checksum: if scan.end == wal::HEADER_SIZE {
                        h.checksum
                    } else {
                        scan.checksum
                    },
                    proven_end: false,
                }),
            },
        )?;
        Ok(Synced::Staged {
            txid,
            more: false,
            full: true,
        })
    }

    fn l0_header(&self, commit: u32, wal: Option<(Generation, u64, u64)>) -> Header {
        let txid = self.next_txid;
        let mut h = Header::new(self.page_size, commit, TxidRange::single(txid));
        h.flags = HeaderFlags::NO_CHECKSUM;
        h.timestamp = jiff::Timestamp::now().as_millisecond();
        if let Some((generation, from, end)) = wal {
            h.wal_offset = from as i64;
            h.wal_size = (end - from) as i64;
            h.wal_salt1 = generation.salt1;
            h.wal_salt2 = generation.salt2;
        }
        h
    }

    fn staged(&mut self, txid: Txid, position: Position) -> io::Result<()> {
        self.set_position(position)?;
        self.next_txid = txid.next();
        Ok(())
    }

    fn set_position(&mut self, position: Position) -> io::Result<()> {
        position.save(self.staging.dir())?;
        self.position = Some(position);
        self.live = true;
        Ok(())
    }
}

fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pages of an incremental file: those the frames changed, plus pages the database grew
/// by that no frame holds (read from the database file), in page order.
fn incremental_pages(
    scan: &Scan,
    grown: std::ops::RangeInclusive<u32>,
    page_size: PageSize,
) -> impl Iterator<Item = (PageNum, Option<u64>)> {
    let lock = page_size.lock_page().get();
    let mut pages: Vec<(u32, Option<u64>)> =
        scan.pages.iter().map(|(&p, &o)| (p, Some(o))).collect();
    pages.extend(
        grown
            .filter(|p| *p != lock && !scan.pages.contains_key(p))
            .map(|p| (p, None)),
    );
    pages.sort_unstable_by_key(|&(p, _)| p);
    pages
        .into_iter()
        .map(|(p, o)| (PageNum::new(p).expect("page numbers start at 1"), o))
}

/// Encodes an L0 file: each page from its WAL frame (at the given offset) or, for `None`,
/// from the database file.
fn write_l0(
    out: BufWriter<File>,
    header: &Header,
    encoding: PageEncoding,
    pages: impl Iterator<Item = (PageNum, Option<u64>)>,
    wal: Option<&File>,
    db: &File,
    page_size: PageSize,
) -> io::Result<(BufWriter<File>, ())> {
    let to_io = |e: ltx::Error| io::Error::other(e);
    let mut enc = Encoder::with_encoding(out, header, encoding).map_err(to_io)?;
    let mut page = vec![0u8; page_size.bytes()];
    let mut db_reader = PageReader::new(db, page_size);
    for (pgno, frame) in pages {
        match frame {
            Some(offset) => wal
                .expect("pages from frames come with the WAL they were found in")
                .read_exact_at(&mut page, offset + wal::FRAME_HEADER_SIZE)?,
            None => db_reader.read(pgno, &mut page)?,
        }
        enc.encode_page(pgno, &page).map_err(to_io)?;
    }
    let mut done = enc.finish(Checksum::ZERO).map_err(to_io)?;
    done.writer.flush()?;
    Ok((done.writer, ()))
}

/// Reads database pages mostly in order, a megabyte at a time.
struct PageReader<'f> {
    file: &'f File,
    page_size: usize,
    buf: Vec<u8>,
    /// File offset of `buf[0]`, and how much of `buf` is filled.
    start: u64,
    len: usize,
}

impl<'f> PageReader<'f> {
    fn new(file: &'f File, page_size: PageSize) -> PageReader<'f> {
        PageReader {
            file,
            page_size: page_size.bytes(),
            buf: vec![0; (1 << 20).max(page_size.bytes())],
            start: 0,
            len: 0,
        }
    }

    /// Page `pgno`; zeros past the end of the file (pages SQLite has not written yet).
    fn read(&mut self, pgno: PageNum, out: &mut [u8]) -> io::Result<()> {
        let at = (u64::from(pgno.get()) - 1) * self.page_size as u64;
        if at < self.start || at + self.page_size as u64 > self.start + self.len as u64 {
            self.start = at;
            self.len = 0;
            while self.len < self.buf.len() {
                let n = self
                    .file
                    .read_at(&mut self.buf[self.len..], at + self.len as u64)?;
                if n == 0 {
                    break;
                }
                self.len += n;
            }
        }
        let from = (at - self.start) as usize;
        let have = self.len.saturating_sub(from).min(out.len());
        out[..have].copy_from_slice(&self.buf[from..from + have]);
        out[have..].fill(0);
        Ok(())
    }
}

/// The database's size in pages from its header (when the header's size is current) or
/// from the file's length.
fn db_pages(db: &File, page_size: PageSize) -> io::Result<u32> {
    let len = db.metadata()?.len();
    let mut header = [0u8; 100];
    if len >= 100 {
        db.read_exact_at(&mut header, 0)?;
        let word = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().unwrap());
        if word(28) != 0 && word(24) == word(92) {
            return Ok(word(28));
        }
    }
    Ok((len / u64::from(page_size.get())) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// A WAL-mode database written by a connection that never checkpoints on its own.
    struct Db {
        _dir: tempfile::TempDir,
        path: PathBuf,
        conn: Connection,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
                .unwrap();
            Db {
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

        /// A position at the current end of the log, as a sync would have saved it.
        fn position(&self) -> Position {
            let wal = self.wal().unwrap();
            let h = wal::Header::read(&wal).unwrap().unwrap();
            let s = wal::scan(&wal, &h.generation, wal::HEADER_SIZE, h.checksum, u64::MAX).unwrap();
            Position {
                txid: Txid::new(5),
                commit: s.commit,
                wal: Some(WalPosition {
                    generation: h.generation,
                    offset: s.end,
                    checksum: s.checksum,
                    proven_end: false,
                }),
            }
        }

        fn decide(&self, p: &Position, live: bool) -> Source {
            decide(self.wal().as_ref(), Some(p), live).unwrap()
        }
    }

    fn is_full(s: Source) -> bool {
        matches!(s, Source::Full { .. })
    }

    #[test]
    fn the_same_generation_continues_where_it_stopped() {
        let db = Db::new();
        db.write(5);
        let p = db.position();
        db.write(5);
        let at = p.wal.unwrap().offset;
        assert!(
            matches!(db.decide(&p, false), Source::Frames { from, ends_generation: false, .. } if from == at)
        );
    }

    #[test]
    fn a_log_that_no_longer_holds_the_last_frames_needs_a_full_copy() {
        let db = Db::new();
        db.write(5);
        let mut p = db.position();
        p.wal.as_mut().unwrap().checksum.0 ^= 1;
        assert!(is_full(db.decide(&p, false)));
        assert!(
            is_full(db.decide(&p, true)),
            "even while live: these are not the frames captured"
        );
    }

    #[test]
    fn after_one_restart_the_old_generations_tail_is_read_first() {
        let db = Db::new();
        db.write(20);
        let p = db.position();
        // The old generation goes on past the position, then restarts, and the new one is
        // still shorter than the position.
        db.write(3);
        db.checkpoint("RESTART");
        db.write(1);
        match db.decide(&p, false) {
            Source::Frames {
                generation,
                from,
                ends_generation,
                checksum,
            } => {
                assert_eq!(generation, p.wal.unwrap().generation);
                assert!(ends_generation);
                let tail = wal::scan(
                    db.wal().as_ref().unwrap(),
                    &generation,
                    from,
                    checksum,
                    u64::MAX,
                )
                .unwrap();
                assert_eq!(
                    tail.transactions, 3,
                    "the three commits after the position are recovered"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            db.decide(&p, true),
            Source::Frames {
                from: wal::HEADER_SIZE,
                ..
            }
        ));
    }

    #[test]
    fn evidence_overwritten_or_truncated_away_needs_a_full_copy() {
        let db = Db::new();
        db.write(3);
        let p = db.position();
        db.checkpoint("RESTART");
        db.write(10); // the new generation grows past the position
        assert!(is_full(db.decide(&p, false)));

        let db = Db::new();
        db.write(3);
        let p = db.position();
        db.checkpoint("TRUNCATE");
        assert!(
            is_full(db.decide(&p, false)),
            "an emptied log proves nothing after a strata restart"
        );
        assert_eq!(
            db.decide(&p, true),
            Source::Nothing,
            "while live, an empty log just means nothing new"
        );
        db.write(1);
        assert!(is_full(db.decide(&p, false)), "the old frames are gone");
    }

    #[test]
    fn several_restarts_are_followed_only_while_live() {
        let db = Db::new();
        db.write(3);
        let p = db.position();
        for _ in 0..2 {
            db.checkpoint("RESTART");
            db.write(1);
        }
        assert!(is_full(db.decide(&p, false)));
        assert!(matches!(
            db.decide(&p, true),
            Source::Frames {
                from: wal::HEADER_SIZE,
                ..
            }
        ));
    }
}
