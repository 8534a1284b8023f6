//! The capture of one database, blocking: its SQLite connections, the syncs that stage
//! what was committed, the read transaction that keeps the log from restarting over it, and
//! checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx::{PageSize, Txid};

use super::position::Position;
use super::sqlite::{Mode, Sqlite};
use super::staging::Staging;
use super::sync::{Held, Synced, Syncer};
use super::wal_index::LogState;
use super::{CaptureError, CaptureOptions, sync, wal};

/// How long capture keeps following another connection's checkpoint (see
/// [`Capture::following_checkpoint`]), and how often it looks meanwhile.
pub(super) const FOLLOW_CHECKPOINT_MAX: Duration = Duration::from_secs(10);
pub(super) const FOLLOW_CHECKPOINT_POLL: Duration = Duration::from_millis(10);

/// Capture of one database: the SQLite connections and the sync state. Blocking.
///
/// Field order matters: the SQLite connections close before the syncer's handle on the
/// database file, so that handle never drops SQLite's locks while they are needed.
pub(super) struct Capture {
    pub(super) sqlite: Sqlite,
    pub(super) syncer: Syncer,
    pub(super) options: CaptureOptions,
    pub(super) last_checkpoint: Instant,
    pub(super) synced_since_checkpoint: bool,
    /// Where the last complete checkpoint left the log: frames up to here are back in the
    /// database, and only frames after it count toward the next checkpoint.
    pub(super) checkpointed: Option<(wal::Generation, u64)>,
    /// The log as the read transaction strata holds saw it, if known for sure (the same
    /// before and after it was taken).
    pub(super) held: Option<LogState>,
    /// The backfill marks (attempted, done) last seen, and since when they have read so:
    /// marks that stay apart are a checkpointer that died midway, not one to follow.
    pub(super) backfill_marks: ((u32, u32), Instant),
}

impl Capture {
    /// Opens the database and the capture state. `replica_max` is the TXID the replica
    /// restores to and `replica_newest` the newest any of its files reaches: capture
    /// continues above every TXID used, and resumes from its saved position only if the
    /// replica, the staged files and the position form one unbroken history of this very
    /// database file. Otherwise the next file is a full copy, as it is if `foreign_tail`
    /// (a replica's newest files belong to another history than the saved position's: another
    /// database replicated there meanwhile).
    pub(super) fn open(
        db: &Path,
        staging: Staging,
        (replica_max, replica_newest): (Txid, Txid),
        foreign_tail: bool,
        options: CaptureOptions,
    ) -> Result<Capture, CaptureError> {
        let sql_err = |error| CaptureError::Sqlite {
            path: db.to_owned(),
            error,
        };
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CaptureError::Io {
                path,
                error: source,
            }
        };
        if !db.is_file() {
            return Err(CaptureError::Io {
                path: db.to_owned(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
            });
        }
        // The database file is held open from before SQLite opens it until after SQLite
        // closes it, and checked to be the one at the path once SQLite has it: so SQLite's
        // connections and strata's own reads are of one file even if it is replaced meanwhile.
        let with_suffix = |suffix: &str| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        let db_file = Held::open(db.to_owned()).map_err(io_err(db))?;
        if db_file
            .file
            .metadata()
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) > 1)
        {
            tracing::warn!(
                db = %db.display(),
                "the database file has more than one hard link: a capture or an application using another name would not be seen (SQLite advises against hard links)"
            );
        }
        let shm_path = with_suffix("-shm");
        let shm_before = Held::open(shm_path.clone()).ok();
        let sqlite = Sqlite::open(db, options.busy_timeout).map_err(sql_err)?;
        let page_size = sqlite.page_size().map_err(sql_err)?;
        let page_size = PageSize::new(page_size).ok_or_else(|| CaptureError::Io {
            path: db.to_owned(),
            error: std::io::Error::other(format!("unsupported page size {page_size}")),
        })?;
        // The -shm file likewise, if it existed before (else SQLite created it just now);
        // both are closed only after SQLite's connections.
        let shm = match shm_before {
            Some(held) => held,
            None => Held::open(shm_path.clone()).map_err(io_err(&shm_path))?,
        };
        // Had a path changed while SQLite opened it, SQLite might hold another file.
        db_file.check("database file")?;
        shm.check("wal-index file (-shm)")?;
        staging.remove_leftovers().map_err(io_err(staging.dir()))?;
        let saved = Position::load(staging.dir());
        let staged = staging.staged().map_err(io_err(staging.dir()))?;
        // The staged files the replica lacks must continue it, or uploading them would leave
        // a gap, and be whole (a power loss may tear what was not on disk yet): else they
        // are dropped and a full copy follows.
        let mut reach = replica_max;
        let mut continues = !foreign_tail;
        for r in staged.iter().filter(|r| r.max > replica_max) {
            if (r.min == Txid::ONE || r.min == reach.next()) && staging.intact(*r) {
                reach = r.max;
            } else {
                continues = false;
                break;
            }
        }
        // Either way the saved position is unusable, and the staged files go below.
        if foreign_tail {
            tracing::warn!(db = %db.display(), replica = %replica_max, "a replica's newest files belong to another history (another database replicated there): dropping the staged files; the next file is a full copy");
        } else if !continues {
            tracing::warn!(db = %db.display(), replica = %replica_max, "staged files do not continue the replica, or one is torn; dropping them");
        }
        let known = [
            saved.map_or(Txid::ZERO, |p| p.txid),
            staged.last().map_or(Txid::ZERO, |r| r.max),
            replica_newest,
        ]
        .into_iter()
        .max()
        .unwrap_or(Txid::ZERO);
        // The saved position is usable only if it is the newest TXID anywhere (a newer staged
        // file means a crash before it was saved; a replica ahead of it, a database restored
        // from elsewhere), the replica plus the staged files reach it, and it was taken from
        // this database file.
        let position = saved.filter(|p| {
            let usable = continues && p.txid == known && reach == p.txid && p.db == db_file.id;
            if !usable {
                tracing::info!(
                    db = %db.display(), position = %p.txid, replica = %replica_max, known = %known,
                    same_file = p.db == db_file.id,
                    "the replica and the saved position are not one history of this database: the next file is a full copy"
                );
            }
            usable
        });
        // Staged files and the local copies of uploads serve only a history this capture
        // resumes: without a usable position they may describe another file that had this
        // path (deleted and made again) or another replica, and compaction must never read
        // one in place of a replica's file of the same name. The full copy that follows
        // covers what they held.
        if position.is_none() {
            let stale = staging.staged().map_err(io_err(staging.dir()))?;
            if !stale.is_empty() {
                tracing::info!(db = %db.display(), files = stale.len(), "dropping staged files no saved position vouches for");
            }
            for r in stale {
                staging.remove(r).map_err(io_err(&staging.path(r)))?;
            }
            super::batch::remove_all(&staging).map_err(io_err(staging.dir()))?;
        }
        let syncer = Syncer {
            db: db_file,
            shm,
            wal_path: with_suffix("-wal"),
            page_size,
            staging,
            position,
            live: false,
            next_txid: known.next(),
            rebase: position.is_none() && known > Txid::ZERO,
            full_copy: Arc::default(),
            max_wal_bytes: options.max_wal_bytes,
            encoding: options.encoding,
            last_index: None,
            history: position.map_or(0, |p| p.history),
        };
        Ok(Capture {
            sqlite,
            syncer,
            last_checkpoint: Instant::now(),
            synced_since_checkpoint: false,
            checkpointed: None,
            held: None,
            backfill_marks: ((0, 0), Instant::now()),
            options,
        })
    }

    /// Closes the database, keeping what a later [`Closed::reopen`] needs.
    pub(super) fn close(self) -> Closed {
        let Capture {
            sqlite,
            syncer,
            options,
            ..
        } = self;
        let closed = Closed {
            db: syncer.db.path.clone(),
            staging: syncer.staging.clone(),
            full_copy: syncer.full_copy.clone(),
            last: syncer.next_txid.prev(),
            options,
        };
        // SQLite's connections close before the held files (see `Syncer`).
        drop(sqlite);
        drop(syncer);
        closed
    }

    /// Whether a tick now would do nothing: nothing committed, no checkpoint due, and the
    /// read transaction held where the log stands. Cheap: one read of the wal-index, plus a
    /// few `stat`s if `thorough` (file-change notification watches the rest).
    ///
    /// The read transaction must follow other connections' checkpoints, not only commits:
    /// an application's RESTART or TRUNCATE checkpoint holds the write lock while it waits
    /// for every reader to leave the log, and a reader taken before the log was copied back
    /// is in it (one taken after reads the database alone). Held where it was, it would
    /// lock every writer out until the application's busy timeout.
    pub(super) fn idle(&self, thorough: bool) -> bool {
        let checkpoint_due = self.synced_since_checkpoint
            && self.last_checkpoint.elapsed() >= self.options.checkpoint.interval;
        let Ok(now) = self.syncer.log_state() else {
            return false;
        };
        self.sqlite.is_holding()
            && !checkpoint_due
            && !self.syncer.full_copy.is_asked()
            && self.held == Some(now)
            && !self.following_checkpoint(&now)
            && self.syncer.unchanged(now.index, thorough)
    }

    /// Another connection is copying the log back: keep moving the read transaction until
    /// it has (so the log can restart at once), for at most [`FOLLOW_CHECKPOINT_MAX`] (a
    /// checkpointer that died midway leaves the same marks behind).
    pub(super) fn following_checkpoint(&self, now: &LogState) -> bool {
        let marks = (now.backfill_attempted, now.backfilled);
        now.backfilling()
            && (marks != self.backfill_marks.0
                || self.backfill_marks.1.elapsed() < FOLLOW_CHECKPOINT_MAX)
    }

    /// Whether the next tick should come sooner than the interval: another connection's
    /// checkpoint is copying the log back, and the read transaction must move once it has.
    pub(super) fn wants_soon(&self) -> bool {
        self.syncer
            .log_state()
            .is_ok_and(|now| self.following_checkpoint(&now))
    }

    /// Stages everything committed and moves the read transaction to where the log stands
    /// now. The new one is taken before the old one goes, and everything committed up to
    /// it is staged in between (see [`Sqlite::begin_next`]): frames committed after a sync
    /// are never left behind a read transaction that no longer keeps the log from
    /// restarting over them. Returns how many files were staged.
    pub(super) fn hand_off(
        &mut self,
        report: &mut dyn FnMut(&Synced),
    ) -> Result<usize, CaptureError> {
        let before = self.syncer.log_state().ok();
        self.sqlite.begin_next().map_err(|e| self.sql_err(e))?;
        let after = self.syncer.log_state().ok();
        let files = match self.stage_committed(report) {
            Ok(files) => files,
            Err(e) => {
                // The old read transaction still holds what was not staged.
                let _ = self.sqlite.abandon_next();
                return Err(e);
            }
        };
        self.sqlite.end_previous().map_err(|e| self.sql_err(e))?;
        self.held = before.filter(|_| before == after);
        if let Some(now) = after {
            let marks = (now.backfill_attempted, now.backfilled);
            if marks != self.backfill_marks.0 {
                self.backfill_marks = (marks, Instant::now());
            }
        }
        Ok(files)
    }

    /// Stages everything committed while moving the read transaction forward (one pass),
    /// and checkpoints when due. Files staged are reported as soon as they are, so uploads
    /// need not wait for the checkpoint.
    pub(super) fn tick(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<(), CaptureError> {
        let started = Instant::now();
        let files = self.hand_off(report)?;
        if files > 0 {
            tracing::debug!(db = %self.syncer.db_path().display(), files, ms = started.elapsed().as_millis(), "synced");
        }
        if let Some(mode) = self.checkpoint_due()? {
            self.checkpoint(mode, report)?;
        }
        Ok(())
    }

    /// Stages everything committed, reporting each file as it is staged (a backlog cut into
    /// several files starts uploading with the first). Returns how many files were staged.
    pub(super) fn sync_all(
        &mut self,
        report: &mut dyn FnMut(&Synced),
    ) -> Result<usize, CaptureError> {
        // Every sync runs under a read transaction. If the one held lapsed (a failure in a
        // checkpoint), the log may have restarted in between: the position is no longer
        // live. Taking one stages.
        if !self.sqlite.is_holding() {
            self.syncer.live = false;
            return self.hand_off(report);
        }
        self.stage_committed(report)
    }

    /// The syncs of [`Capture::sync_all`], under the read transaction held.
    fn stage_committed(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<usize, CaptureError> {
        let mut files = 0;
        loop {
            let synced = self.syncer.sync()?;
            match synced {
                Synced::Nothing => return Ok(files),
                Synced::Staged { more, .. } => {
                    self.synced_since_checkpoint = true;
                    files += 1;
                    report(&synced);
                    if !more {
                        return Ok(files);
                    }
                }
            }
        }
    }

    /// Which checkpoint, if any, is due.
    pub(super) fn checkpoint_due(&self) -> Result<Option<Mode>, CaptureError> {
        let wal_len = std::fs::metadata(&self.syncer.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let frame = 24 + u64::from(self.syncer.page_size.get());
        let pages = wal_len.saturating_sub(32) / frame;
        let c = &self.options.checkpoint;
        if pages >= u64::from(c.truncate_pages) {
            return Ok(Some(Mode::Truncate));
        }
        let interval = self.synced_since_checkpoint && self.last_checkpoint.elapsed() >= c.interval;
        let pending = self.syncer.position.and_then(|p| p.wal).map_or(0, |w| {
            let done = match self.checkpointed {
                Some((generation, offset)) if generation == w.generation => offset,
                _ => 32,
            };
            w.offset.saturating_sub(done) / frame
        });
        Ok((pending >= u64::from(c.min_pages) || interval).then_some(Mode::Passive))
    }

    /// A checkpoint with nothing lost, in two phases so writers hardly wait.
    ///
    /// First, with writers carrying on, a PASSIVE checkpoint copies back everything up to
    /// strata's read transaction (just moved to the end of the log): nearly all the work.
    /// Then, with writes locked out for a moment: sync the few frames since, let go of the
    /// read transaction so the checkpoint can copy back the rest, take a read transaction
    /// again, and let writers in. The next writer restarts the log, which holds nothing
    /// uncaptured. For TRUNCATE the log is then emptied while strata holds its read
    /// transaction, which makes SQLite refuse if anything new arrived in between.
    pub(super) fn checkpoint(
        &mut self,
        mode: Mode,
        report: &mut dyn FnMut(&Synced),
    ) -> Result<(), CaptureError> {
        let unlocked_work = self
            .sqlite
            .checkpoint(Mode::Passive)
            .map_err(|e| self.sql_err(e))?;
        tracing::debug!(db = %self.syncer.db_path().display(), ?unlocked_work, "passive checkpoint, writers running");
        if unlocked_work.log < 0 {
            // Another connection is checkpointing. Waiting for the write lock now could
            // wait on a RESTART that waits on this very read transaction: leave it to
            // them (the read transaction follows their checkpoint; see `idle`).
            tracing::debug!(db = %self.syncer.db_path().display(), "checkpoint skipped: another connection is checkpointing");
            return Ok(());
        }
        // The read transaction leaves the log if the passive checkpoint copied all of it
        // back, so that an application's RESTART starting now does not wait on it while
        // strata waits for the write lock.
        self.hand_off(report)?;
        let waited = Instant::now();
        if !self.sqlite.lock_writes().map_err(|e| self.sql_err(e))? {
            tracing::debug!(db = %self.syncer.db_path().display(), "checkpoint skipped: writers busy");
            return Ok(());
        }
        let waited_ms = waited.elapsed().as_millis();
        let started = Instant::now();
        let sealed = self.sync_all(report);
        let staged_ms = started.elapsed().as_millis();
        let mut copied_ms = 0;
        let result = sealed.and_then(|_| {
            self.sqlite.release().map_err(|e| self.sql_err(e))?;
            // The read transaction is taken again even if the checkpoint failed.
            let passive = self.sqlite.checkpoint(Mode::Passive);
            copied_ms = started.elapsed().as_millis();
            let held = self.hand_off(report).map(drop);
            if held.is_err() {
                self.syncer.live = false;
            }
            let passive = passive.map_err(|e| self.sql_err(e))?;
            held?;
            Ok(passive)
        });
        // Writers are let in whatever happened.
        let unlocked = self.sqlite.unlock_writes();
        tracing::debug!(db = %self.syncer.db_path().display(), waited_ms, staged_ms, copied_ms, locked_ms = started.elapsed().as_millis(), "writes were locked out");
        let passive = result?;
        unlocked.map_err(|e| self.sql_err(e))?;
        tracing::debug!(db = %self.syncer.db_path().display(), ?passive, "passive checkpoint");
        if !passive.busy && passive.log == passive.checkpointed {
            self.checkpointed = self
                .syncer
                .position
                .and_then(|p| p.wal)
                .map(|w| (w.generation, w.offset));
        }
        if mode == Mode::Truncate && !passive.busy && passive.log == passive.checkpointed {
            let truncate = self
                .sqlite
                .checkpoint(Mode::Truncate)
                .map_err(|e| self.sql_err(e))?;
            tracing::info!(db = %self.syncer.db_path().display(), ?truncate, "truncate checkpoint");
        }
        self.last_checkpoint = Instant::now();
        self.synced_since_checkpoint = false;
        self.sync_all(report)?;
        Ok(())
    }

    pub(super) fn sql_err(&self, error: rusqlite::Error) -> CaptureError {
        CaptureError::Sqlite {
            path: self.syncer.db.path.clone(),
            error,
        }
    }
}

/// A capture whose database was closed to follow a replaced file.
pub(super) struct Closed {
    pub(super) db: PathBuf,
    pub(super) staging: Staging,
    pub(super) full_copy: Arc<sync::FullCopyRequest>,
    /// The last TXID used.
    pub(super) last: Txid,
    pub(super) options: CaptureOptions,
}

impl Closed {
    /// Opens the file now at the path. Its first file is a full copy named as a snapshot
    /// (its history is not the old file's), with the next TXID.
    pub(super) fn reopen(&self) -> Result<Capture, CaptureError> {
        // The old position describes the old file: the open finds it unusable (another inode).
        let mut capture = Capture::open(
            &self.db,
            self.staging.clone(),
            (self.last, self.last),
            false,
            self.options.clone(),
        )?;
        capture.syncer.position = None;
        capture.syncer.rebase = true;
        capture.syncer.full_copy = self.full_copy.clone();
        Ok(capture)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use rusqlite::Connection;

    use super::*;

    /// The staged L0 files applied in TXID order: the database they restore to.
    fn staged_image(staging: &Staging) -> Vec<u8> {
        let mut image = Cursor::new(Vec::new());
        for range in staging.staged().unwrap() {
            let file = std::fs::File::open(staging.path(range)).unwrap();
            let decoder = ltx::Decoder::new(file).unwrap();
            ltx::apply(decoder, &mut image, ltx::ApplyChecks::FileOnly).unwrap();
        }
        image.into_inner()
    }

    /// A WAL database that only strata checkpoints, and its writer.
    fn wal_db(dir: &Path) -> (PathBuf, Connection) {
        let db = dir.join("app.db");
        let writer = Connection::open(&db).unwrap();
        writer.pragma_update(None, "journal_mode", "wal").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        (db, writer)
    }

    /// A capture of `db` that has staged everything committed so far.
    fn captured(db: &Path) -> (Staging, Capture) {
        let staging = Staging::open(db).unwrap();
        let mut capture = Capture::open(
            db,
            staging.clone(),
            (Txid::ZERO, Txid::ZERO),
            false,
            CaptureOptions::default(),
        )
        .unwrap();
        capture.sync_all(&mut |_: &Synced| {}).unwrap();
        (staging, capture)
    }

    /// A passive checkpoint by `conn`: (frames in the log, frames copied back).
    fn checkpoint(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    /// What `checkpoint` did between its first passive checkpoint and taking the write
    /// lock: a transaction committed after the tick's sync, the read transaction moved
    /// past it, a checkpoint copied it back, the read transaction moved again (now reading
    /// the database alone), and the next writer restarted the log over it. Each move must
    /// stage what the new read transaction sees before the old one goes.
    #[test]
    fn frames_committed_after_a_sync_are_staged_before_the_read_transaction_moves() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_db(dir.path());
        writer
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let insert = |n: usize| {
            for _ in 0..n {
                writer
                    .execute("INSERT INTO t (v) VALUES (randomblob(3000))", [])
                    .unwrap();
            }
        };
        insert(5);
        let (staging, mut capture) = captured(&db);
        let mut report = |_: &Synced| {};
        capture.hand_off(&mut report).unwrap();

        // Rewrites pages the database already had (new pages would be read back from the
        // database file, and hide the loss).
        writer
            .execute("UPDATE t SET v = randomblob(3000) WHERE k <= 3", [])
            .unwrap();
        capture.hand_off(&mut report).unwrap();
        let (log, checkpointed) = checkpoint(&writer);
        assert_eq!(log, checkpointed, "the whole log is copied back");
        capture.hand_off(&mut report).unwrap();
        // This writer finds the log copied back and no reader in it: it restarts the log.
        insert(1);
        capture.sync_all(&mut report).unwrap();
        assert_staged_is_source(&staging, &writer);
    }

    /// The staged files restore to the database as SQLite reads it now.
    fn assert_staged_is_source(staging: &Staging, conn: &Connection) {
        let (staged, source) = (staged_image(staging), source_image(conn));
        assert_eq!(staged.len(), source.len());
        assert!(
            staged == source,
            "the staged files restore to a state the database never had"
        );
    }

    /// The database's pages as SQLite reads them (its pager: the log included).
    fn source_image(conn: &Connection) -> Vec<u8> {
        let mut pages = conn
            .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
            .unwrap();
        pages
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .flat_map(Result::unwrap)
            .collect()
    }

    /// A full copy asked for right after a checkpoint copied the whole log back: strata's
    /// read transaction then reads the database alone, which does not keep a writer from
    /// restarting the log. One does, between the copy's scan of the log and its reads of
    /// the frames' pages, writing the new log (one page: the last row's) over the first
    /// frame the scan found (page 1). The copy must not take the new log's pages for the
    /// old ones.
    #[test]
    fn a_full_copy_overtaken_by_a_restart_of_the_log_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_db(dir.path());
        // One transaction: each page once in the log, page 1 in its first frame.
        writer
            .execute_batch(
                "BEGIN; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) \
                 INSERT INTO t (v) SELECT randomblob(3000) FROM n; COMMIT;",
            )
            .unwrap();
        let (staging, mut capture) = captured(&db);
        let mut report = |_: &Synced| {};
        let (log, checkpointed) = checkpoint(&writer);
        assert_eq!(log, checkpointed, "the whole log is copied back");
        capture.hand_off(&mut report).unwrap();

        capture.syncer.full_copy.ask_above(Txid::ZERO);
        let restarts = {
            let db = db.clone();
            let mut once = true;
            move || {
                if std::mem::take(&mut once) {
                    Connection::open(&db)
                        .unwrap()
                        .execute("UPDATE t SET v = randomblob(3000) WHERE k = 20", [])
                        .unwrap();
                }
            }
        };
        sync::hooks::AFTER_SCAN.with(|hook| *hook.borrow_mut() = Some(Box::new(restarts)));
        let synced = capture.sync_all(&mut report);
        sync::hooks::AFTER_SCAN.with(|hook| *hook.borrow_mut() = None);
        synced.unwrap();
        assert!(
            !capture.syncer.full_copy.is_asked(),
            "the full copy was made"
        );
        let (log, _) = checkpoint(&writer);
        assert!(log < 10, "the writer restarted the log ({log} frames now)");
        capture.sync_all(&mut report).unwrap();
        assert_staged_is_source(&staging, &writer);
    }

    /// A power loss tore a staged file the replica lacks (its name is there, its last
    /// bytes never reached the disk): the capture that opens next must not upload it. It
    /// drops the staged files and makes a full copy, of a new history.
    #[test]
    fn a_staged_file_torn_by_a_power_loss_is_dropped_for_a_full_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (db, writer) = wal_db(dir.path());
        writer
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let (staging, mut capture) = captured(&db);
        for _ in 0..3 {
            writer
                .execute("INSERT INTO t (v) VALUES (randomblob(3000))", [])
                .unwrap();
            capture.sync_all(&mut |_: &Synced| {}).unwrap();
        }
        let staged = staging.staged().unwrap();
        assert_eq!(staged.len(), 4, "a full copy and three commits");
        assert!(staged.iter().all(|r| staging.intact(*r)));
        let torn = staging.path(staged[2]);
        let mut bytes = std::fs::read(&torn).unwrap();
        let half = bytes.len() / 2;
        bytes[half..].fill(0);
        std::fs::write(&torn, bytes).unwrap();
        assert!(!staging.intact(staged[2]));
        drop(capture);
        drop(staging);

        let (staging, _capture) = captured(&db);
        let now = staging.staged().unwrap();
        assert_eq!(now.len(), 1, "only the full copy is staged: {now:?}");
        assert_eq!(now[0].min, Txid::ONE, "named as a snapshot");
        assert_eq!(now[0].max, Txid::new(5), "above every TXID used before");
        assert_staged_is_source(&staging, &writer);
    }
}
