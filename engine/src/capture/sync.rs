//! One sync: decide what changed since the last position, and write it as one L0 file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ltx::{
    Checksum, Encoder, Header, HeaderFlags, PageEncoding, PageNum, PageSize, Txid, TxidRange,
};

use super::CaptureError;
use super::decide::{Source, decide, inconsistent};
use super::position::{FileId, Position, WalPosition};
use super::staging::Staging;
use super::wal::{self, Generation, Scan};
use super::wal_index::{IndexHeader, LogState};

/// What one sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Synced {
    /// An L0 file was staged.
    Staged {
        range: TxidRange,
        /// The WAL held more than one file's worth; sync again at once.
        more: bool,
        /// It is a full copy of the database.
        full: bool,
    },
    /// Nothing new was committed.
    Nothing,
}

/// A file capture keeps open and checks is still the one at its path.
#[derive(Debug)]
pub(super) struct Held {
    pub path: PathBuf,
    pub file: File,
    pub id: FileId,
}

impl Held {
    /// Opens the file at `path` and remembers which one it is.
    pub(super) fn open(path: PathBuf) -> io::Result<Held> {
        let file = File::open(&path)?;
        let id = FileId::of(&file.metadata()?);
        Ok(Held { path, file, id })
    }

    /// Fails if the path no longer names the file held open.
    pub(super) fn check(&self, what: &str) -> Result<(), CaptureError> {
        match std::fs::metadata(&self.path) {
            Ok(m) if FileId::of(&m) == self.id => Ok(()),
            Ok(m) => Err(CaptureError::Replaced {
                path: self.path.clone(),
                detail: format!(
                    "the {what} was replaced (inode {} is now {})",
                    self.id.ino,
                    FileId::of(&m).ino
                ),
            }),
            Err(source) => Err(CaptureError::Io {
                path: self.path.clone(),
                error: io::Error::new(
                    source.kind(),
                    format!("the {what} is gone from its path: {source}"),
                ),
            }),
        }
    }
}

/// The files of one database and how to write L0 files for it.
#[derive(Debug)]
pub(super) struct Syncer {
    /// The database file, open for as long as capture runs. Never reopened while SQLite's
    /// connections are open: closing any descriptor of a file drops every POSIX lock the
    /// process holds on it, including SQLite's, and an application would then think
    /// strata's connections gone and delete the WAL with frames strata has not copied.
    pub db: Held,
    /// The wal-index (`-shm`), held open for the same reason: SQLite's WAL locks live there.
    pub shm: Held,
    pub wal_path: PathBuf,
    pub page_size: PageSize,
    pub staging: Staging,
    pub position: Option<Position>,
    /// See [`decide`].
    pub live: bool,
    pub next_txid: Txid,
    /// The next full copy is named as a snapshot (`1-<txid>`): the replica does not hold
    /// the history it would continue.
    pub rebase: bool,
    /// Set by an uploader when its replica lost files it had, or cannot be continued from
    /// the staged files: the next file is a full copy named as a snapshot.
    pub full_copy: Arc<FullCopyRequest>,
    /// Bytes of WAL one L0 file takes at most (cut at a commit boundary).
    pub max_wal_bytes: u64,
    pub encoding: PageEncoding,
    /// The wal-index header the last sync read: while the header reads the same, nothing
    /// was committed and the log did not restart (see [`Syncer::unchanged`]).
    pub last_index: Option<IndexHeader>,
    /// The identity of the history being written (every file's node ID): kept while the
    /// position is, new with every full copy made without one (nothing is known of the
    /// history it would continue) or after a page-size change. 0 until the first file.
    pub history: u64,
}

impl Syncer {
    /// The database path.
    pub(super) fn db_path(&self) -> &Path {
        &self.db.path
    }

    fn io(&self, source: io::Error) -> CaptureError {
        CaptureError::Io {
            path: self.db.path.clone(),
            error: source,
        }
    }

    /// Syncs once: stages an L0 file for what was committed since the last position, or a
    /// full copy when continuity cannot be shown. A read the log's restart overtook (see
    /// [`write_l0`]) is done again from the new log: a restart happens once, and the next
    /// one needs the new log copied back, which strata's read transaction holds off.
    pub(super) fn sync(&mut self) -> Result<Synced, CaptureError> {
        let mut attempts = 0;
        loop {
            match self.sync_once() {
                Err(CaptureError::Io { error, .. })
                    if attempts < 3 && error.get_ref().is_some_and(|e| e.is::<LogRestarted>()) =>
                {
                    attempts += 1;
                    tracing::debug!(db = %self.db.path.display(), "the log restarted while it was read: reading again");
                }
                other => return other,
            }
        }
    }

    fn sync_once(&mut self) -> Result<Synced, CaptureError> {
        self.staging
            .check_lock()
            .map_err(|source| CaptureError::StagingLost {
                path: self.staging.dir().to_owned(),
                error: source,
            })?;
        self.db.check("database file")?;
        self.shm.check("wal-index file (-shm)")?;
        let index = IndexHeader::read(&self.shm.file)
            .map_err(|e| self.io(e))?
            .ok_or_else(|| {
                self.io(inconsistent(
                    "no consistent wal-index header could be read (a writer may have died mid-update)",
                ))
            })?;
        self.last_index = Some(index);
        // An index that has seen no frame yet gives no page size.
        if index.page_size != 0 && index.page_size != self.page_size.get() {
            return Err(CaptureError::Replaced {
                path: self.db.path.clone(),
                detail: format!(
                    "the page size changed from {} to {} under the open database",
                    self.page_size.get(),
                    index.page_size
                ),
            });
        }
        let wal = open_if_exists(&self.wal_path).map_err(|e| self.io(e))?;
        let source = if self.full_copy.is_asked() {
            Source::Full {
                reason: "a replica does not continue from the staged files (added later, or it lost files)",
                base: true,
            }
        } else {
            decide(
                &index,
                wal.as_ref(),
                self.position.as_ref(),
                self.live,
                self.page_size.get(),
            )
            .map_err(|e| self.io(e))?
        };
        match source {
            Source::Nothing => Ok(Synced::Nothing),
            Source::Restarted => {
                let prev = self.position.expect("a restart follows a position");
                self.set_position(Position { wal: None, ..prev })
                    .map_err(|e| self.io(e))?;
                Ok(Synced::Nothing)
            }
            Source::Full { reason, base } => {
                tracing::info!(db = %self.db.path.display(), txid = %self.next_txid, reason, "writing a full copy");
                self.full(&index, wal.as_ref(), base)
                    .map_err(|e| self.io(e))
            }
            Source::Frames {
                generation,
                from,
                checksum,
                to,
            } => {
                let file = wal
                    .as_ref()
                    .ok_or_else(|| self.io(inconsistent("the WAL file is gone")))?;
                self.incremental(&index, file, generation, from, checksum, to)
                    .map_err(|e| self.io(e))
            }
        }
    }

    /// The wal-index as it is now (one read).
    pub(super) fn log_state(&self) -> io::Result<LogState> {
        LogState::read(&self.shm.file)
    }

    /// Whether a sync now would surely find nothing, given the wal-index header `index` read
    /// just now: it is the one the last sync read (every commit and every restart of the
    /// log rewrites it) and, if `thorough`, the files are the ones held and the staging
    /// directory is intact (a few `stat`s). (A staging directory deleted while nothing is
    /// written is found by the next sync, before anything is staged into it.)
    pub(super) fn unchanged(&self, index: Option<IndexHeader>, thorough: bool) -> bool {
        let files_held = || {
            self.db.check("database file").is_ok()
                && self.shm.check("wal-index file (-shm)").is_ok()
                && self.staging.check_lock().is_ok()
        };
        index.is_some() && index == self.last_index && (!thorough || files_held())
    }

    fn incremental(
        &mut self,
        index: &IndexHeader,
        file: &File,
        generation: Generation,
        from: u64,
        checksum: wal::Checksum,
        to: u64,
    ) -> io::Result<Synced> {
        let scan = wal::scan(file, &generation, from, checksum, to, self.max_wal_bytes)?;
        if scan.end == to
            && (scan.checksum != index.frame_checksum || scan.commit != index.db_pages)
        {
            return Err(inconsistent(
                "the WAL's last committed frame does not match the wal-index header",
            ));
        }
        let prev = self.position.expect("frames follow a position");
        let range = TxidRange::single(self.next_txid);
        let header = self.l0_header(range, scan.commit, Some((generation, from, scan.end)));
        let grown = (prev.commit + 1)..=scan.commit;
        #[cfg(test)]
        hooks::after_scan();
        let written = self.staging.write(range, |out| {
            let pages = incremental_pages(&scan, grown, self.page_size);
            write_l0(
                out,
                &header,
                self.encoding,
                pages,
                Some((file, &generation)),
                &self.db.file,
                self.page_size,
            )
        });
        self.staged(
            range,
            written,
            scan.commit,
            Some(WalPosition {
                generation,
                offset: scan.end,
                checksum: scan.checksum,
            }),
        )?;
        Ok(Synced::Staged {
            range,
            more: scan.end < to,
            full: false,
        })
    }

    /// Stages the whole database as the next TXID: every page from the newest committed WAL
    /// frame that holds it, or from the database file. The read transaction strata holds
    /// keeps both consistent while they are read: no frame above its mark is copied back.
    fn full(&mut self, index: &IndexHeader, wal: Option<&File>, base: bool) -> io::Result<Synced> {
        let (scan, frames, generation) = match wal {
            Some(f) if index.max_frame > 0 => {
                let h = wal::Header::read(f)?
                    .filter(|h| index.is_generation(&h.generation))
                    .ok_or_else(|| {
                        inconsistent(
                            "the WAL file does not start the generation the wal-index describes",
                        )
                    })?;
                let to = index.committed_end();
                let scan = wal::scan(f, &h.generation, wal::HEADER_SIZE, h.checksum, to, u64::MAX)?;
                if scan.end != to {
                    // Pages from the database file would then be newer than the frames.
                    return Err(match wal::Header::read(f)? {
                        Some(now) if now.generation == h.generation => {
                            inconsistent("the WAL ends before the wal-index's last commit")
                        }
                        _ => io::Error::other(LogRestarted),
                    });
                }
                (scan, Some(f), Some(h.generation))
            }
            None if index.max_frame > 0 => return Err(inconsistent("the WAL file is gone")),
            _ => (Scan::default(), None, None),
        };
        let db = &self.db.file;
        let commit = if scan.commit != 0 {
            scan.commit
        } else {
            db_pages(db, self.page_size)?
        };
        let rebase = base || self.rebase || self.full_copy.is_asked();
        if rebase {
            // Above every TXID a replica is known to hold, so none is ever used twice.
            self.next_txid = self.next_txid.max(self.full_copy.above().next());
        }
        let range = if rebase {
            TxidRange::new(Txid::ONE, self.next_txid)
        } else {
            TxidRange::single(self.next_txid)
        };
        if base || self.position.is_none() || self.history == 0 {
            self.history = new_history();
            tracing::info!(db = %self.db.path.display(), history = %format!("{:016x}", self.history), "a new history starts");
        }
        let wal_range = generation.map(|g| (g, wal::HEADER_SIZE, scan.end));
        let ltx_header = self.l0_header(range, commit, wal_range);
        let lock = self.page_size.lock_page().get();
        #[cfg(test)]
        hooks::after_scan();
        let written = self.staging.write(range, |out| {
            let pages = (1..=commit).filter(|&p| p != lock).map(|p| {
                let pgno = PageNum::new(p).expect("page numbers start at 1");
                (pgno, scan.pages.get(&p).copied())
            });
            write_l0(
                out,
                &ltx_header,
                self.encoding,
                pages,
                frames.zip(generation.as_ref()),
                db,
                self.page_size,
            )
        });
        self.staged(
            range,
            written,
            commit,
            generation.map(|generation| WalPosition {
                generation,
                offset: scan.end,
                checksum: scan.checksum,
            }),
        )?;
        self.rebase = false;
        self.full_copy.done();
        Ok(Synced::Staged {
            range,
            more: false,
            full: true,
        })
    }

    fn l0_header(
        &self,
        range: TxidRange,
        commit: u32,
        wal: Option<(Generation, u64, u64)>,
    ) -> Header {
        let mut h = Header::new(self.page_size, commit, range);
        h.flags = HeaderFlags::NO_CHECKSUM;
        h.timestamp = jiff::Timestamp::now().as_millisecond();
        h.node_id = self.history;
        if let Some((generation, from, end)) = wal {
            h.wal_offset = from as i64;
            h.wal_size = (end - from) as i64;
            h.wal_salt1 = generation.salt1;
            h.wal_salt2 = generation.salt2;
        }
        h
    }

    /// Records the file for `range` as staged, whatever `written` says, if it is in place:
    /// a file that reached its name (say, syncing its directory failed after the rename)
    /// may be uploaded, so its TXID is used and the position moves past it in memory even
    /// if saving the position fails. Staging the same TXID again with more frames would
    /// lose those frames from the replica. Returns the first error.
    fn staged(
        &mut self,
        range: TxidRange,
        written: io::Result<()>,
        commit: u32,
        wal: Option<WalPosition>,
    ) -> io::Result<()> {
        if written.is_err() && !self.staging.path(range).exists() {
            return written;
        }
        self.next_txid = range.max.next();
        let saved = self.set_position(Position {
            txid: range.max,
            commit,
            page_size: self.page_size.get(),
            db: self.db.id,
            wal,
            history: self.history,
        });
        written.and(saved)
    }

    /// Moves the position, in memory first: a failure to save it (a full disk) only means a
    /// restarted capture starts with a full copy.
    fn set_position(&mut self, position: Position) -> io::Result<()> {
        self.position = Some(position);
        self.live = true;
        self.staging.save_position(&position)
    }
}

/// A replica's request for a full copy named as a snapshot, shared by the uploaders and the
/// capture: a replica lost files, or the staged files do not continue it.
#[derive(Debug, Default)]
pub(super) struct FullCopyRequest {
    asked: AtomicBool,
    /// The copy's TXID must be above this: a replica holds files up to it.
    above: AtomicU64,
}

impl FullCopyRequest {
    /// Asks for a full copy with a TXID above `txid`.
    pub(super) fn ask_above(&self, txid: Txid) {
        self.above.fetch_max(txid.get(), Ordering::SeqCst);
        self.asked.store(true, Ordering::SeqCst);
    }

    /// Whether a full copy is asked for.
    pub(super) fn is_asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// The TXID the next full copy must be above.
    fn above(&self) -> Txid {
        Txid::new(self.above.load(Ordering::SeqCst))
    }

    /// A full copy was staged.
    fn done(&self) {
        self.asked.store(false, Ordering::SeqCst);
    }
}

/// The log restarted (or was truncated) while pages were read from its frames: what was
/// read may be the new log's. Nothing is staged; the sync reads again.
#[derive(Debug, thiserror::Error)]
#[error("the WAL restarted while its frames were read")]
pub(super) struct LogRestarted;

/// A random history identity, never 0 (0 is Litestream's "unknown").
pub(super) fn new_history() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let mut id = u64::from_ne_bytes(bytes);
    if got != bytes.len() as isize {
        // No kernel randomness: the time and the process are unique enough for an identity.
        let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
        id = nanos.rotate_left(17)
            ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    id.max(1)
}

pub(super) fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
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

/// Encodes an L0 file: each page from its WAL frame (at the given offset, in the log of
/// the given generation) or, for `None`, from the database file.
///
/// The frames were found by a scan, and their pages are read after it. A writer may restart
/// the log in between when strata's read transaction reads the database alone (the log was
/// all copied back when it began), writing the new log over the old frames. SQLite writes
/// the log's header before any frame of a new log, so a header unchanged once every page
/// is read means every page read was the old log's; a changed one fails with
/// [`LogRestarted`].
fn write_l0(
    out: BufWriter<File>,
    header: &Header,
    encoding: PageEncoding,
    pages: impl Iterator<Item = (PageNum, Option<u64>)>,
    wal: Option<(&File, &Generation)>,
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
                .0
                .read_exact_at(&mut page, offset + wal::FRAME_HEADER_SIZE)
                .map_err(|e| match e.kind() {
                    // Truncated under the read: a TRUNCATE checkpoint, then maybe a new log.
                    io::ErrorKind::UnexpectedEof => io::Error::other(LogRestarted),
                    _ => e,
                })?,
            None => db_reader.read(pgno, &mut page)?,
        }
        enc.encode_page(pgno, &page).map_err(to_io)?;
    }
    if let Some((file, generation)) = wal {
        let now = wal::Header::read(file)?;
        if now.is_none_or(|h| h.generation != *generation) {
            return Err(io::Error::other(LogRestarted));
        }
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

/// Lets a test act between the scan of the log and the reads of its pages.
#[cfg(test)]
pub(super) mod hooks {
    use std::cell::RefCell;

    thread_local! {
        /// Run (on the syncing thread) after each scan, before any page is read.
        pub(in crate::capture) static AFTER_SCAN: RefCell<Option<Box<dyn FnMut()>>> =
            RefCell::new(None);
    }

    pub(in crate::capture) fn after_scan() {
        AFTER_SCAN.with(|hook| {
            if let Some(run) = hook.borrow_mut().as_mut() {
                run();
            }
        });
    }
}
