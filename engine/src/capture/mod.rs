//! Capture: every committed transaction of a live WAL-mode database becomes an L0 file.
//!
//! Each database has a capture thread (SQLite and file work block) that syncs on an
//! interval: it reads the WAL frames committed since the last position and stages them as
//! one L0 file `<n>-<n>.ltx` beside the database, or stages a full copy of the database
//! when nothing proves the log continues the last position (first sync, a restart of
//! strata after the log changed under it). It owns checkpointing. An upload task ships
//! staged files to the replica in TXID order with conditional creates.
//!
//! What is committed is what the wal-index header (`-shm`, see `wal_index`) says, never
//! what merely checksums: frames past its `mxFrame` may be a killed writer's.
//!
//! Why no transaction is lost: strata always holds a read transaction (see the `sqlite`
//! module), so the log can only restart once everything in it has been copied; its own
//! checkpoints run under the write lock, after a final sync. The position (TXID, WAL
//! generation and offset, chain checksum, page size, the database file's inode) is saved
//! after every staged file. A restarted strata resumes from it only if the log is still that
//! generation and still holds the last frame captured, the replica and the staged files
//! continue it, and the file is the same; otherwise it writes a full copy with the next
//! TXID, named as a snapshot (`1-<n>`) when the replica's history cannot be built on. TXIDs
//! never repeat: the next one is above everything staged or in the replica.
//!
//! One capture per database: the staging directory is locked (see `staging`). A database
//! file replaced under its path is noticed on the next sync and followed.

mod notify;
mod position;
mod sqlite;
mod staging;
mod sync;
pub(crate) mod ticker;
mod upload;
pub mod wal;
pub mod wal_index;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::{PageEncoding, PageSize, Txid};
use tokio::sync::watch;

use crate::compact::{Clock, CompactionStatus, Compactor, Monitor};
use crate::storage::{FileInfo, Level, LevelIndex, Replica, SharedIndex, StorageError};
use position::Position;
use sqlite::{Mode, Sqlite};
use staging::Staging;
use sync::{Held, Synced, Syncer};
use ticker::Ticker;
use wal_index::LogState;

/// How long capture keeps following another connection's checkpoint (see
/// [`Capture::following_checkpoint`]), and how often it looks meanwhile.
const FOLLOW_CHECKPOINT_MAX: Duration = Duration::from_secs(10);
const FOLLOW_CHECKPOINT_POLL: Duration = Duration::from_millis(10);

/// When strata checkpoints the databases it captures.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointOptions {
    /// A PASSIVE checkpoint once the WAL holds this many pages.
    pub min_pages: u32,
    /// A PASSIVE checkpoint at least this often while anything is being written.
    pub interval: Duration,
    /// A TRUNCATE checkpoint (emptying the WAL file) once it is this many pages long.
    pub truncate_pages: u32,
}

impl Default for CheckpointOptions {
    fn default() -> CheckpointOptions {
        CheckpointOptions {
            min_pages: 1000,
            interval: Duration::from_secs(60),
            truncate_pages: 121_359,
        }
    }
}

/// How a database is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureOptions {
    /// How often committed frames are turned into an L0 file.
    pub sync_interval: Duration,
    /// Checkpointing.
    pub checkpoint: CheckpointOptions,
    /// WAL bytes one L0 file takes at most; a larger backlog is cut at commit boundaries.
    pub max_wal_bytes: u64,
    /// How long strata waits for the database's locks.
    pub busy_timeout: Duration,
    /// How long a shutdown may take to sync and upload what remains.
    pub shutdown_timeout: Duration,
    /// Page encoding of the L0 files.
    pub encoding: PageEncoding,
    /// How often, while uploading, the replica is checked to still hold the last file
    /// uploaded (one HEAD; every `replica_list_every`-th lists every level and plans a restore); a
    /// replica that lost files gets a full copy. Nothing is checked while nothing is
    /// uploaded: the first upload after a quiet spell checks first.
    pub replica_check_interval: Duration,
    /// One replica check in this many is the full listing (the others are one HEAD).
    pub replica_list_every: u32,
    /// Compaction, snapshots and retention in the replica (`None`: L0 files only).
    pub compaction: Option<crate::compact::CompactionOptions>,
}

impl Default for CaptureOptions {
    fn default() -> CaptureOptions {
        CaptureOptions {
            sync_interval: Duration::from_secs(1),
            checkpoint: CheckpointOptions::default(),
            max_wal_bytes: 64 << 20,
            busy_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            encoding: PageEncoding::default(),
            replica_check_interval: Duration::from_secs(60),
            replica_list_every: 10,
            compaction: Some(crate::compact::CompactionOptions::default()),
        }
    }
}

/// Why capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// SQLite refused.
    #[error("{}: {error}", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        error: rusqlite::Error,
    },
    /// A file could not be read or written.
    // `error`, not `source`: the message includes it, so it is not also the error's source
    // (a chain printer would print it twice).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A staged file does not decode.
    #[error("{} is corrupt: {error}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        error: ltx::Error,
    },
    /// The replica failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database path now names another file (replaced by a restore, a `mv`, or deleted
    /// and created again), or its page size changed under the open connections.
    #[error("{}: {detail}", path.display())]
    Replaced {
        /// The file.
        path: PathBuf,
        /// What changed.
        detail: String,
    },
    /// The staging directory was deleted or replaced under the capture: it can no longer
    /// tell its files from another capture's.
    #[error("{}: {error}", path.display())]
    StagingLost {
        /// The staging directory.
        path: PathBuf,
        /// What was found.
        error: std::io::Error,
    },
    /// The replica lost files already uploaded (wiped, or put back from an older copy).
    #[error(
        "{replica} no longer holds TXIDs through {uploaded}, only through {holds_through}: it was wiped or put back from an older copy"
    )]
    ReplicaLost {
        /// The replica.
        replica: String,
        /// How far it held.
        uploaded: Txid,
        /// How far it holds now.
        holds_through: Txid,
    },
    /// A staged file does not continue the replica: uploading it would leave a gap.
    #[error(
        "staged file {} does not continue {replica}, which holds through TXID {uploaded}: not uploaded",
        range.file_name()
    )]
    Gap {
        /// The staged file.
        range: ltx::TxidRange,
        /// The newest TXID in the replica.
        uploaded: Txid,
        /// The replica.
        replica: String,
    },
    /// The replica already holds a different file for a TXID strata wrote: another process
    /// replicates the same database to the same place.
    #[error(
        "TXID {txid} in {replica} was not written by this capture: is another process replicating (this or another database) there? This replica is stopped"
    )]
    Conflict {
        /// The TXID.
        txid: Txid,
        /// The replica.
        replica: String,
    },
    /// Files of another history were found in the replica (by a merge, a check or a
    /// restore plan): another process replicates another database there.
    #[error(
        "{replica} holds files of another history ({detail}): is another process replicating (this or another database) there? This replica is stopped"
    )]
    ForeignHistory {
        /// The replica.
        replica: String,
        /// What was found.
        detail: String,
    },
}

/// Capture of one database: the SQLite connections and the sync state. Blocking.
///
/// Field order matters: the SQLite connections close before the syncer's handle on the
/// database file, so that handle never drops SQLite's locks while they are needed.
struct Capture {
    sqlite: Sqlite,
    syncer: Syncer,
    options: CaptureOptions,
    last_checkpoint: Instant,
    synced_since_checkpoint: bool,
    /// Where the last complete checkpoint left the log: frames up to here are back in the
    /// database, and only frames after it count toward the next checkpoint.
    checkpointed: Option<(wal::Generation, u64)>,
    /// The log as the read transaction strata holds saw it, if known for sure (the same
    /// before and after it was taken).
    held: Option<LogState>,
    /// The backfill marks (attempted, done) last seen, and since when they have read so:
    /// marks that stay apart are a checkpointer that died midway, not one to follow.
    backfill_marks: ((u32, u32), Instant),
}

impl Capture {
    /// Opens the database and the capture state. `replica_max` is the TXID the replica
    /// restores to and `replica_newest` the newest any of its files reaches: capture
    /// continues above every TXID used, and resumes from its saved position only if the
    /// replica, the staged files and the position form one unbroken history of this very
    /// database file. Otherwise the next file is a full copy.
    fn open(
        db: &Path,
        staging: Staging,
        replica_max: Txid,
        replica_newest: Txid,
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
        // a gap: then they are dropped and a full copy follows.
        let mut reach = replica_max;
        let mut continues = true;
        for r in staged.iter().filter(|r| r.max > replica_max) {
            if r.min == Txid::ONE || r.min == reach.next() {
                reach = r.max;
            } else {
                continues = false;
                break;
            }
        }
        if !continues {
            tracing::warn!(db = %db.display(), replica = %replica_max, "staged files do not continue the replica; dropping them");
            for r in staged.iter().filter(|r| r.max > replica_max) {
                staging.remove(*r).map_err(io_err(&staging.path(*r)))?;
            }
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
        // Staged files the replica lacks are uploaded only as part of a history this capture
        // resumes: without a usable position they may describe another file that had this
        // path (deleted and made again), and the full copy that follows covers them anyway.
        if position.is_none() && continues {
            let stale: Vec<_> = staged.iter().filter(|r| r.max > replica_max).collect();
            if !stale.is_empty() {
                tracing::info!(db = %db.display(), files = stale.len(), "dropping staged files no saved position vouches for");
            }
            for r in stale {
                staging.remove(*r).map_err(io_err(&staging.path(*r)))?;
            }
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
    fn close(self) -> Closed {
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
    fn idle(&self, thorough: bool) -> bool {
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
    fn following_checkpoint(&self, now: &LogState) -> bool {
        let marks = (now.backfill_attempted, now.backfilled);
        now.backfilling()
            && (marks != self.backfill_marks.0
                || self.backfill_marks.1.elapsed() < FOLLOW_CHECKPOINT_MAX)
    }

    /// Whether the next tick should come sooner than the interval: another connection's
    /// checkpoint is copying the log back, and the read transaction must move once it has.
    fn wants_soon(&self) -> bool {
        self.syncer
            .log_state()
            .is_ok_and(|now| self.following_checkpoint(&now))
    }

    /// Moves the read transaction to where the log stands now (see [`Sqlite::hand_off`]).
    /// Only after everything committed is staged: the log may restart once it is let go.
    fn hand_off(&mut self) -> Result<(), CaptureError> {
        let before = self.syncer.log_state().ok();
        self.sqlite.hand_off().map_err(|e| self.sql_err(e))?;
        let after = self.syncer.log_state().ok();
        self.held = before.filter(|_| before == after);
        if let Some(now) = after {
            let marks = (now.backfill_attempted, now.backfilled);
            if marks != self.backfill_marks.0 {
                self.backfill_marks = (marks, Instant::now());
            }
        }
        Ok(())
    }

    /// Syncs everything committed, moves the read transaction forward, and checkpoints when
    /// due. Files staged are reported as soon as they are, so uploads need not wait for the
    /// checkpoint.
    fn tick(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<(), CaptureError> {
        let started = Instant::now();
        let files = self.sync_all(report)?;
        if files > 0 {
            tracing::debug!(db = %self.syncer.db_path().display(), files, ms = started.elapsed().as_millis(), "synced");
        }
        self.hand_off()?;
        if let Some(mode) = self.checkpoint_due()? {
            self.checkpoint(mode, report)?;
        }
        Ok(())
    }

    /// Stages everything committed, reporting each file as it is staged (a backlog cut into
    /// several files starts uploading with the first). Returns how many files were staged.
    fn sync_all(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<usize, CaptureError> {
        // Every sync runs under a read transaction. If the one held lapsed (a failure in a
        // checkpoint), the log may have restarted in between: the position is no longer live.
        if !self.sqlite.is_holding() {
            self.syncer.live = false;
            self.hand_off()?;
        }
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
    fn checkpoint_due(&self) -> Result<Option<Mode>, CaptureError> {
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
    fn checkpoint(
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
        self.hand_off()?;
        let started = Instant::now();
        if !self.sqlite.lock_writes().map_err(|e| self.sql_err(e))? {
            tracing::debug!(db = %self.syncer.db_path().display(), "checkpoint skipped: writers busy");
            return Ok(());
        }
        let sealed = self.sync_all(report);
        let result = sealed.and_then(|_| {
            self.sqlite.release().map_err(|e| self.sql_err(e))?;
            // The read transaction is taken again even if the checkpoint failed.
            let passive = self.sqlite.checkpoint(Mode::Passive);
            let held = self.hand_off();
            if held.is_err() {
                self.syncer.live = false;
            }
            let passive = passive.map_err(|e| self.sql_err(e))?;
            held?;
            Ok(passive)
        });
        // Writers are let in whatever happened.
        let unlocked = self.sqlite.unlock_writes();
        tracing::debug!(db = %self.syncer.db_path().display(), locked_ms = started.elapsed().as_millis(), "writes were locked out");
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

    fn sql_err(&self, error: rusqlite::Error) -> CaptureError {
        CaptureError::Sqlite {
            path: self.syncer.db.path.clone(),
            error,
        }
    }
}

/// A capture whose database was closed to follow a replaced file.
struct Closed {
    db: PathBuf,
    staging: Staging,
    full_copy: Arc<sync::FullCopyRequest>,
    /// The last TXID used.
    last: Txid,
    options: CaptureOptions,
}

impl Closed {
    /// Opens the file now at the path. Its first file is a full copy named as a snapshot
    /// (its history is not the old file's), with the next TXID.
    fn reopen(&self) -> Result<Capture, CaptureError> {
        // The old position describes the old file: the open finds it unusable (another inode).
        let mut capture = Capture::open(
            &self.db,
            self.staging.clone(),
            self.last,
            self.last,
            self.options.clone(),
        )?;
        capture.syncer.position = None;
        capture.syncer.rebase = true;
        capture.syncer.full_copy = self.full_copy.clone();
        Ok(capture)
    }
}

/// What a replication reports while it runs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Status {
    /// The newest TXID staged locally.
    pub staged: Txid,
    /// The newest TXID every replica holds.
    pub uploaded: Txid,
    /// Full copies written.
    pub full_copies: u64,
    /// Why the last sync failed, if it did (cleared by the next one that succeeds).
    pub sync_error: Option<String>,
    /// Why the last upload to some replica failed, if one did.
    pub upload_error: Option<String>,
    /// Each replica, in the order given.
    pub replicas: Vec<ReplicaStatus>,
    /// Sync ticks run (each stages what was committed, and checkpoints when due), how many
    /// failed, and the time they took.
    pub syncs: u64,
    /// See `syncs`.
    pub failed_syncs: u64,
    /// See `syncs`.
    pub sync_busy: Duration,
    /// When the last sync succeeded.
    pub last_sync: Option<jiff::Timestamp>,
}

/// One replica of a replication.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's URL.
    pub replica: String,
    /// The newest TXID in it.
    pub uploaded: Txid,
    /// Why the last upload failed, if it did (cleared by the next one that succeeds).
    pub upload_error: Option<String>,
    /// Upload rounds run (each uploads everything staged, and checks the replica when
    /// due), how many failed, and the time they took.
    pub uploads: u64,
    /// See `uploads`.
    pub failed_uploads: u64,
    /// See `uploads`.
    pub upload_busy: Duration,
    /// When the last upload round succeeded.
    pub last_upload: Option<jiff::Timestamp>,
    /// Since when the replica has lacked something staged (`None`: it holds everything
    /// staged). Its lag is the time since then.
    pub behind_since: Option<jiff::Timestamp>,
    /// Why this replica is no longer written to (another history found in it), if it is
    /// not; the database's other replicas go on.
    pub stopped: Option<String>,
    /// Requests made to it so far, by kind.
    pub requests: crate::storage::RequestCounts,
    /// Files and bytes in each level that has any, as strata's index of the replica holds
    /// them (listed at start, then kept by uploads, compaction and retention).
    pub levels: BTreeMap<Level, LevelFiles>,
    /// Compaction and retention in it (`None` if off).
    pub compaction: Option<CompactionStatus>,
}

impl ReplicaStatus {
    /// How long the replica has lacked something staged (zero if it holds everything).
    pub fn lag(&self, now: jiff::Timestamp) -> Duration {
        self.behind_since
            .and_then(|t| now.duration_since(t).try_into().ok())
            .unwrap_or(Duration::ZERO)
    }
}

/// The files of one level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LevelFiles {
    /// How many.
    pub files: u64,
    /// Their size in bytes.
    pub bytes: u64,
}

impl CaptureError {
    /// Whether retrying cannot help and the capture must stop: the staging directory lost.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CaptureError::StagingLost { .. })
    }

    /// Whether the replica it concerns must no longer be written to (another writer's or
    /// another history's files are in it); the other replicas go on.
    pub fn stops_replica(&self) -> bool {
        matches!(
            self,
            CaptureError::Conflict { .. } | CaptureError::ForeignHistory { .. }
        )
    }
}

/// Why a replication stopped short: what a final sync or upload left undone.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The capture thread panicked: a bug. Nothing after the last staged TXID was captured.
    #[error("the capture of {} panicked: {message}", db.display())]
    Panicked {
        /// The database.
        db: PathBuf,
        /// The panic message.
        message: String,
    },
    /// The final sync failed: commits after the last staged TXID are not in the replica.
    #[error("final sync failed (TXIDs through {uploaded} are in the replica): {error}")]
    Sync {
        /// The newest TXID in the replica.
        uploaded: Txid,
        /// Why.
        error: CaptureError,
    },
    /// The replica does not hold what was uploaded to it (or could not be checked).
    #[error("the replica check at stop failed: {error}")]
    Replica {
        /// Why.
        error: CaptureError,
    },
    /// A replica was stopped while running (another history found in it): what was staged
    /// since is not in it.
    #[error("{replica} was stopped: {reason}")]
    ReplicaStopped {
        /// The replica.
        replica: String,
        /// Why.
        reason: String,
    },
    /// Staged files could not all be uploaded before the shutdown timeout.
    #[error(
        "TXIDs {} through {staged} are staged but not in the replica {replica} (it holds through {uploaded}){}",
        uploaded.next(),
        error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    Upload {
        /// The replica.
        replica: String,
        /// The newest TXID staged.
        staged: Txid,
        /// The newest TXID in the replica.
        uploaded: Txid,
        /// The last upload error, if any.
        error: Option<CaptureError>,
    },
}

/// A database being replicated: a capture run by the process's ticker (shared by a
/// [`Store`](crate::store::Store)'s databases) and an upload task.
#[derive(Debug)]
pub struct Replication {
    db: PathBuf,
    job: Arc<CaptureJob>,
    ticker: Ticker,
    job_id: ticker::JobId,
    finished: tokio::sync::oneshot::Receiver<Finished>,
    staged: watch::Receiver<Txid>,
    /// The capture's part of the status (the replicas' parts are in `targets`).
    status: Arc<Mutex<Status>>,
    fatal: watch::Receiver<Option<String>>,
    targets: Vec<Target>,
    timeout: Duration,
}

/// One replica: its upload task, position, compaction and retention, independent of the
/// others' (one that fails or lags holds none of them up).
#[derive(Debug)]
struct Target {
    replica: Replica,
    index: SharedIndex,
    upload: tokio::task::JoinHandle<()>,
    uploaded: watch::Receiver<Txid>,
    /// Wakes the upload task out of its backoff (a sync is waiting).
    retry: Arc<tokio::sync::Notify>,
    status: Arc<Mutex<ReplicaStatus>>,
    uploader: Arc<tokio::sync::Mutex<upload::Uploader>>,
    monitor: Option<crate::compact::Monitor>,
}

impl Target {
    fn status(&self) -> ReplicaStatus {
        let mut status = self.status.lock().unwrap().clone();
        status.requests = self.replica.requests();
        status.compaction = self.monitor.as_ref().map(Monitor::status);
        let index = self.index.lock();
        status.levels = Level::all()
            .filter_map(|level| {
                let files = index.level(level);
                (!files.is_empty()).then(|| {
                    let bytes = files.iter().map(|f| f.file.size).sum();
                    (
                        level,
                        LevelFiles {
                            files: files.len() as u64,
                            bytes,
                        },
                    )
                })
            })
            .collect();
        status
    }
}

impl std::fmt::Debug for CaptureJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureJob").finish_non_exhaustive()
    }
}

/// Why [`Replication::sync`] could not confirm everything committed is in the replica.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The sync of the database failed (the replication keeps retrying).
    #[error("sync failed: {0}")]
    Sync(String),
    /// The replication stopped (a fatal error or a bug): nothing more will be uploaded.
    #[error("the replication has stopped: {0}")]
    Stopped(String),
    /// A replica was stopped (another history found in it): it will not hold the commits.
    #[error("{replica} is stopped: {reason}")]
    ReplicaStopped {
        /// The replica.
        replica: String,
        /// Why.
        reason: String,
    },
}

/// Reports a panic of the thread or task it lives in when dropped while unwinding.
struct PanicAlarm {
    what: &'static str,
    fatal: watch::Sender<Option<String>>,
}

impl Drop for PanicAlarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.fatal
                .send_replace(Some(format!("the {} panicked", self.what)));
        }
    }
}

impl Replication {
    /// Starts replicating the database at `db` (which must exist) to `replica`. The path is
    /// canonicalised, so two spellings of one database are one capture; a second capture of
    /// a database (in this process or another) is refused, naming the holder.
    pub async fn start(
        db: &Path,
        replica: Replica,
        options: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        Replication::start_on(None, db, vec![replica], options).await
    }

    /// [`Replication::start`] to one or more replicas, with the capture run by `ticker`
    /// (shared by the databases of a [`Store`](crate::store::Store)) or, if `None`, a ticker
    /// of its own. One capture and one staging directory serve every replica; each has its
    /// own uploads, compaction and retention.
    pub(crate) async fn start_on(
        ticker: Option<Ticker>,
        db: &Path,
        replicas: Vec<Replica>,
        options: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        if replicas.is_empty() {
            return Err(CaptureError::Io {
                path: db.to_owned(),
                error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no replica given"),
            });
        }
        let db = std::fs::canonicalize(db).map_err(|source| CaptureError::Io {
            path: db.to_owned(),
            error: if source.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(source.kind(), "no database here")
            } else {
                source
            },
        })?;
        let staging = Staging::open(&db).map_err(|source| CaptureError::Io {
            path: db.clone(),
            error: source,
        })?;
        // Each replica: what it restores to, and the newest TXID any of its files reaches,
        // from one listing (which also finds the scratch objects of uploads a killed process
        // left). A replica that cannot be listed now is listed before its first upload, as
        // long as another one can be: one replica down does not stop the others.
        let listed = list_replicas_at_start(&replicas).await;
        if listed.iter().all(Result::is_err) {
            let first = listed.into_iter().find_map(Result::err);
            return Err(first.expect("at least one replica").into());
        }
        let listings: Vec<Option<(Vec<FileInfo>, Txid, Txid)>> = replicas
            .iter()
            .zip(listed)
            .map(|(replica, listed)| match listed {
                Ok(listed) => Some(listed),
                Err(e) => {
                    tracing::warn!(replica = replica.name(), error = %e, "cannot list the replica; the others start now, it is listed before its first upload");
                    None
                }
            })
            .collect();
        // The capture continues the furthest replica; one behind asks for a full copy when
        // the staged files do not reach back to it.
        let replica_max = listings
            .iter()
            .flatten()
            .map(|l| l.1)
            .max()
            .unwrap_or(Txid::ZERO);
        let newest = listings
            .iter()
            .flatten()
            .map(|l| l.2)
            .max()
            .unwrap_or(Txid::ZERO);
        let opened = {
            let (path, staging, options) = (db.clone(), staging.clone(), options.clone());
            tokio::task::spawn_blocking(move || {
                // A file replaced while it was being opened is opened again.
                let mut attempt = 0;
                loop {
                    match Capture::open(
                        &path,
                        staging.clone(),
                        replica_max,
                        newest,
                        options.clone(),
                    ) {
                        Err(CaptureError::Replaced { .. }) if attempt < 3 => attempt += 1,
                        result => break result,
                    }
                }
            })
            .await
            .map_err(|e| CaptureError::Io {
                path: db.clone(),
                error: std::io::Error::other(format!("capture setup panicked: {e}")),
            })??
        };
        let status = Arc::new(Mutex::new(Status {
            staged: opened.syncer.next_txid.prev(),
            ..Status::default()
        }));
        // Files staged by an earlier run and not yet uploaded count as staged: a stop waits
        // for them too.
        let (staged_tx, staged_rx) = watch::channel(opened.syncer.next_txid.prev());
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let full_copy = opened.syncer.full_copy.clone();
        let job = Arc::new(CaptureJob {
            state: Mutex::new(JobState {
                db: Some(Db::Open(Box::new(opened))),
                backoff: options.sync_interval,
                failing: false,
            }),
            stopping: Default::default(),
            asked: Default::default(),
            served: watch::channel((0, None)).0,
            staged: staged_tx,
            status: status.clone(),
            fatal: fatal_tx.clone(),
            finished: Mutex::new(Some(finished_tx)),
            interval: options.sync_interval,
        });
        let ticker = ticker.unwrap_or_else(|| Ticker::new(1));
        let job_id = ticker.add(job.clone(), Some(&db));
        let peers = upload::StagedUse::new(replicas.len());
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(replicas.len()));
        let targets = replicas
            .into_iter()
            .zip(listings)
            .enumerate()
            .map(|(slot, (replica, listing))| {
                let (listed, start) = match listing {
                    Some((listed, restores_to, newest)) => (listed, Some((restores_to, newest))),
                    None => (Vec::new(), None),
                };
                let restores_to = start.map_or(Txid::ZERO, |s| s.0);
                let index =
                    SharedIndex::new(LevelIndex::from_files(listed, jiff::Timestamp::now()));
                let uploader = upload::Uploader::new(
                    staging.clone(),
                    replica.clone(),
                    start,
                    full_copy.clone(),
                    (options.replica_check_interval, options.replica_list_every),
                    (index.clone(), options.compaction.is_some()),
                    (peers.clone(), slot),
                );
                let monitor = options.compaction.clone().map(|compaction| {
                    // Each replica compacts in its own scratch directory.
                    let scratch = if slot == 0 {
                        staging.dir().join("compact")
                    } else {
                        staging.dir().join(format!("compact-{slot}"))
                    };
                    let compactor =
                        Compactor::new(replica.clone(), index.clone(), compaction, scratch);
                    Monitor::start(compactor.with_local_l0(staging.l0_dir()), Clock::System)
                });
                let uploader = Arc::new(tokio::sync::Mutex::new(uploader));
                let target_status = Arc::new(Mutex::new(ReplicaStatus {
                    replica: replica.name().to_owned(),
                    uploaded: restores_to,
                    ..ReplicaStatus::default()
                }));
                let (uploaded_tx, uploaded_rx) = watch::channel(restores_to);
                let retry = Arc::new(tokio::sync::Notify::new());
                let upload = tokio::spawn(upload_loop(
                    uploader.clone(),
                    UploadSignals {
                        staged: staged_rx.clone(),
                        uploaded: uploaded_tx,
                        retry: retry.clone(),
                        live: live.clone(),
                    },
                    target_status.clone(),
                    (options.sync_interval, index.clone()),
                    PanicAlarm {
                        what: "upload task",
                        fatal: fatal_tx.clone(),
                    },
                ));
                Target {
                    replica,
                    index,
                    upload,
                    uploaded: uploaded_rx,
                    retry,
                    status: target_status,
                    uploader,
                    monitor,
                }
            })
            .collect();
        Ok(Replication {
            db,
            job,
            ticker,
            job_id,
            finished: finished_rx,
            staged: staged_rx,
            status,
            fatal: fatal_rx,
            targets,
            timeout: options.shutdown_timeout,
        })
    }

    /// The database being replicated (canonical path).
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The current state.
    pub fn status(&self) -> Status {
        let mut status = self.status.lock().unwrap().clone();
        status.replicas = self.targets.iter().map(Target::status).collect();
        status.uploaded = held_by_all(&status.replicas);
        status.upload_error = status.replicas.iter().find_map(|r| {
            r.upload_error
                .as_ref()
                .map(|e| format!("{}: {e}", r.replica))
        });
        status
    }

    /// What compaction and retention have done in the first replica (`None` if they are
    /// off).
    pub fn compaction_status(&self) -> Option<CompactionStatus> {
        self.targets[0].monitor.as_ref().map(Monitor::status)
    }

    /// What compaction and retention have done, per replica.
    pub fn compaction_statuses(&self) -> Vec<Option<CompactionStatus>> {
        self.targets
            .iter()
            .map(|t| t.monitor.as_ref().map(Monitor::status))
            .collect()
    }

    /// Returns once everything committed to the database before the call is in the
    /// replica, with the newest TXID there: a sync is run at once (not at the next
    /// interval), then its files are uploaded. An application can wait for this before
    /// acknowledging a write. Waits through upload retries: bound it with a timeout.
    pub async fn sync(&self) -> Result<Txid, SyncError> {
        self.sync_handle().await
    }

    /// [`Replication::sync`] as a future that does not borrow the replication.
    pub(crate) fn sync_handle(
        &self,
    ) -> impl std::future::Future<Output = Result<Txid, SyncError>> + Send + 'static {
        use std::sync::atomic::Ordering;
        let ticket = self.job.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut served = self.job.served.subscribe();
        self.ticker.wake(self.job_id);
        let mut fatal = self.fatal.clone();
        let staged = self.staged.clone();
        let replicas: Vec<_> = self
            .targets
            .iter()
            .map(|t| {
                (
                    t.uploaded.clone(),
                    t.retry.clone(),
                    t.status.clone(),
                    t.replica.name().to_owned(),
                )
            })
            .collect();
        async move {
            let stopped = |fatal: &watch::Receiver<Option<String>>| {
                SyncError::Stopped(fatal.borrow().clone().unwrap_or_default())
            };
            let error = tokio::select! {
                r = served.wait_for(|(n, _)| *n >= ticket) => r.map(|r| r.1.clone()).ok(),
                _ = fatal.wait_for(Option::is_some) => None,
            };
            let Some(error) = error else {
                return Err(stopped(&fatal));
            };
            if let Some(error) = error {
                return Err(SyncError::Sync(error));
            }
            // Every replica must hold it; one waiting out a backoff tries at once.
            let target = *staged.borrow();
            let all = futures::future::join_all(replicas.into_iter().map(
                |(mut uploaded, retry, status, replica)| async move {
                    retry.notify_one();
                    match uploaded.wait_for(|t| *t >= target).await {
                        Ok(t) => Ok(*t),
                        // The upload task ended: the replica was stopped.
                        Err(_) => Err(SyncError::ReplicaStopped {
                            reason: status
                                .lock()
                                .unwrap()
                                .stopped
                                .clone()
                                .unwrap_or_else(|| "its upload task ended".to_owned()),
                            replica,
                        }),
                    }
                },
            ));
            let reached = tokio::select! {
                r = all => Some(r),
                _ = fatal.wait_for(Option::is_some) => None,
            };
            let Some(reached) = reached else {
                return Err(stopped(&fatal));
            };
            let mut lowest = Txid::MAX;
            for r in reached {
                lowest = lowest.min(r?);
            }
            Ok(lowest)
        }
    }

    /// Why the replication stopped on its own, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Resolves with the reason if the replication stops on its own (a fatal error or a
    /// bug); with `None` once it has been stopped normally.
    pub(crate) fn failed_handle(
        &self,
    ) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            fatal
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|m| m.clone())
        }
    }

    /// Resolves when the capture thread or the upload task has died (a bug): the
    /// replication no longer makes progress and should be stopped.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => "the capture ended".to_owned(),
        }
    }

    /// Stops: a final sync, then uploads what is staged to every replica at once, within
    /// the shutdown timeout. Fails unless everything committed before the call is in every
    /// replica (the error names the first replica short of it).
    pub async fn stop(self) -> Result<Status, StopError> {
        for target in &self.targets {
            target.upload.abort();
        }
        let mut monitors = Vec::new();
        let mut targets = Vec::new();
        for mut target in self.targets {
            monitors.extend(target.monitor.take());
            targets.push(target);
        }
        futures::future::join_all(monitors.into_iter().map(Monitor::stop)).await;
        for target in &mut targets {
            let _ = (&mut target.upload).await;
        }
        let deadline = Instant::now() + self.timeout;
        // Each replica is checked before the final sync: one that lost files (wiped, put
        // back from an older copy) is owed a full copy, which the final sync then writes,
        // however idle the database. A replica that does not answer gets a part of the
        // shutdown timeout, never all of it: the others' final uploads need the rest.
        let check_by = Instant::now() + (self.timeout / 3).min(STOP_CHECK_MAX);
        futures::future::join_all(targets.iter().map(|t| async move {
            if t.status.lock().unwrap().stopped.is_some() {
                return;
            }
            let left = check_by.saturating_duration_since(Instant::now());
            let mut uploader = t.uploader.lock().await;
            match tokio::time::timeout(left, uploader.check_now()).await {
                Ok(Ok(())) => {}
                // Another writer found at the last moment stops the replica, as it would
                // have while running: the stop then says so.
                Ok(Err(e)) if e.stops_replica() => {
                    let reason = e.to_string();
                    tracing::error!(error = %e, "replica stopped; the database's other replicas go on");
                    uploader.stop(&reason);
                    t.status.lock().unwrap().stopped = Some(reason);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot check the replica before the final sync");
                }
                Err(_) => tracing::warn!(
                    replica = t.replica.name(),
                    "the replica did not answer its check before the final sync"
                ),
            }
        }))
        .await;
        self.job
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.ticker.wake(self.job_id);
        let finished = self.finished.await;
        let final_sync = match finished {
            Ok(Ok(result)) => result,
            Ok(Err(message)) => {
                return Err(StopError::Panicked {
                    db: self.db,
                    message,
                });
            }
            Err(_) => {
                return Err(StopError::Panicked {
                    db: self.db,
                    message: "the capture ended without a final sync".to_owned(),
                });
            }
        };
        let staged = *self.staged.borrow();
        let (db, ticker) = (&self.db, &self.ticker);
        let finished = futures::future::join_all(targets.iter().map(|t| async move {
            if let Some(reason) = t.status.lock().unwrap().stopped.clone() {
                return Err(StopError::ReplicaStopped {
                    replica: t.replica.name().to_owned(),
                    reason,
                });
            }
            // A turn among the store's stops, within the same deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let _turn = tokio::time::timeout(left, ticker.stop_turn()).await;
            finish_uploads(db, &t.uploader, staged, deadline).await
        }))
        .await;
        let mut status = self.status.lock().unwrap().clone();
        let mut short = None;
        for (target, result) in targets.iter().zip(finished) {
            let mut replica = target.status.lock().unwrap().clone();
            match result {
                Ok(uploaded) => replica.uploaded = uploaded,
                Err(e) => {
                    short.get_or_insert(e);
                }
            }
            status.replicas.push(replica);
        }
        if let Some(e) = short {
            return Err(e);
        }
        status.uploaded = held_by_all(&status.replicas);
        final_sync.map_err(|error| StopError::Sync {
            uploaded: status.uploaded,
            error,
        })?;
        Ok(status)
    }
}

/// How long the other replicas get to answer their first listing once one has: one that
/// has not answered by then (a server that hangs) is listed before its first upload
/// instead, and holds up neither the capture nor the other replicas.
const START_LISTING_GRACE: Duration = Duration::from_secs(5);

/// Lists every replica at once (see [`list_at_start`]), waiting for the first answer
/// however long it takes, then [`START_LISTING_GRACE`] more for the rest.
async fn list_replicas_at_start(
    replicas: &[Replica],
) -> Vec<Result<(Vec<FileInfo>, Txid, Txid), StorageError>> {
    use futures::StreamExt;
    let mut pending: futures::stream::FuturesUnordered<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| async move { (i, list_at_start(r).await) })
        .collect();
    let mut results: Vec<Option<Result<_, StorageError>>> = replicas.iter().map(|_| None).collect();
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_ends {
            Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => pending.next().await,
        };
        let Some((i, result)) = next else { break };
        if result.is_ok() && grace_ends.is_none() {
            grace_ends = Some(tokio::time::Instant::now() + START_LISTING_GRACE);
        }
        results[i] = Some(result);
    }
    results
        .into_iter()
        .zip(replicas)
        .map(|(result, replica)| {
            result.unwrap_or_else(|| {
                Err(StorageError::new(
                    replica.name(),
                    crate::storage::Operation::List,
                    "",
                    crate::storage::ErrorKind::Unavailable,
                    format!(
                        "no answer within {} s of the other replicas'",
                        START_LISTING_GRACE.as_secs()
                    ),
                ))
            })
        })
        .collect()
}

/// Lists a replica at the start of a replication: its files, what they restore to, and the
/// newest TXID any reaches. Removes the scratch objects of this database's interrupted
/// uploads found on the way, whatever their age: no other process writes this replica.
async fn list_at_start(replica: &Replica) -> Result<(Vec<FileInfo>, Txid, Txid), StorageError> {
    let (listed, scratch) = replica.list_all_with_scratch().await?;
    if !scratch.is_empty() {
        match replica.delete_scratch(scratch).await {
            Ok(n) => tracing::info!(
                replica = replica.name(),
                n,
                "removed the scratch objects of interrupted uploads"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the scratch objects of interrupted uploads");
            }
        }
    }
    // A replica that does not restore to its newest TXID (files missing in the middle)
    // cannot be continued: only what it restores to counts.
    let restores_to = upload::latest_restorable(&listed);
    if listed.iter().any(|f| f.range.max > restores_to) {
        tracing::warn!(replica = replica.name(), restores_to = %restores_to, "the replica does not restore to its newest file: the next file is a full copy");
    }
    let newest = listed
        .iter()
        .map(|f| f.range.max)
        .max()
        .unwrap_or(Txid::ZERO);
    Ok((listed, restores_to, newest))
}

/// The newest TXID every replica holds.
fn held_by_all(replicas: &[ReplicaStatus]) -> Txid {
    replicas
        .iter()
        .map(|r| r.uploaded)
        .min()
        .unwrap_or(Txid::ZERO)
}

/// Uploads what is staged to one replica by `deadline`, then checks it holds it; returns
/// the newest TXID there.
async fn finish_uploads(
    db: &Path,
    uploader: &tokio::sync::Mutex<upload::Uploader>,
    staged: Txid,
    deadline: Instant,
) -> Result<Txid, StopError> {
    let mut uploader = uploader.lock().await;
    let mut last = None;
    // Each request is bounded by what is left of the timeout: a server that hangs does not
    // hold the stop past it.
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || CaptureError::Io {
        path: db.to_owned(),
        error: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the shutdown timeout passed with the replica not answering",
        ),
    };
    while uploader.uploaded < staged && !left().is_zero() {
        match tokio::time::timeout(left(), uploader.upload()).await {
            // Nothing left to upload, yet short of what was staged: nothing will change.
            Ok(Ok(0)) if uploader.uploaded < staged => break,
            Ok(Ok(_)) => last = None,
            Ok(Err(e)) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500).min(left())).await;
            }
            Err(_) => last = Some(timed_out()),
        }
    }
    let uploaded = uploader.uploaded;
    if uploaded < staged {
        return Err(StopError::Upload {
            replica: uploader.replica().name().to_owned(),
            staged,
            uploaded,
            error: last,
        });
    }
    // What is claimed must be in the replica now, not only when it was uploaded.
    let verified =
        match tokio::time::timeout(left().max(Duration::from_secs(5)), uploader.verify()).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
    verified.map_err(|error| StopError::Replica { error })?;
    Ok(uploader.uploaded)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// How a capture's work ended: its final sync's outcome, or the panic message of a bug.
type Finished = Result<Result<(), CaptureError>, String>;

/// A capture as the [`Ticker`] runs it: a tick whenever the database changed (or a
/// checkpoint is due, or the last tick failed), until told to stop, then a final sync. A
/// database replaced under its path is followed: the capture closes the old file and opens
/// the new one (retrying each tick until it can).
struct CaptureJob {
    state: Mutex<JobState>,
    stopping: std::sync::atomic::AtomicBool,
    /// Syncs asked for ([`Replication::sync`]), numbered; `served` is the number the last
    /// finished tick had seen when it started, with its error if it failed.
    asked: std::sync::atomic::AtomicU64,
    served: watch::Sender<(u64, Option<String>)>,
    staged: watch::Sender<Txid>,
    status: Arc<Mutex<Status>>,
    fatal: watch::Sender<Option<String>>,
    finished: Mutex<Option<tokio::sync::oneshot::Sender<Finished>>>,
    interval: Duration,
}

struct JobState {
    db: Option<Db>,
    backoff: Duration,
    /// The last tick failed: the next one runs without a probe.
    failing: bool,
}

impl CaptureJob {
    fn finish(&self, result: Finished) {
        if let Some(tx) = self.finished.lock().unwrap().take() {
            let _ = tx.send(result);
        }
    }
}

impl ticker::Job for CaptureJob {
    fn probe(&self, thorough: bool) -> bool {
        let state = self.state.lock().unwrap();
        match &state.db {
            Some(Db::Open(capture)) => state.failing || !capture.idle(thorough),
            _ => true,
        }
    }

    fn idle_interval(&self) -> Duration {
        self.interval
    }

    fn work(&self) -> Option<Duration> {
        let started = Instant::now();
        let mut state = self.state.lock().unwrap();
        let stopping = self.stopping.load(std::sync::atomic::Ordering::SeqCst);
        let asked = self.asked.load(std::sync::atomic::Ordering::SeqCst);
        let mut report = |file: &Synced| {
            if let Synced::Staged { range, full, .. } = file {
                let mut s = self.status.lock().unwrap();
                s.staged = range.max;
                s.full_copies += u64::from(*full);
                self.staged.send_replace(range.max);
            }
        };
        let db = state.db.take()?;
        let (db, result) = step(db, stopping, true, &mut report);
        {
            let mut s = self.status.lock().unwrap();
            s.syncs += 1;
            s.failed_syncs += u64::from(result.is_err());
            s.sync_busy += started.elapsed();
            if result.is_ok() {
                s.last_sync = Some(jiff::Timestamp::now());
            }
        }
        self.served
            .send_replace((asked, result.as_ref().err().map(ToString::to_string)));
        // Ticks keep to the interval (a slow tick does not push the next one back), and
        // back off after errors.
        let wait = match &result {
            Ok(()) => {
                state.backoff = self.interval;
                state.failing = false;
                self.status.lock().unwrap().sync_error = None;
                let wait = self.interval.saturating_sub(started.elapsed());
                match &db {
                    Db::Open(capture) if capture.wants_soon() => wait.min(FOLLOW_CHECKPOINT_POLL),
                    _ => wait,
                }
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "sync failed; stopping");
                self.status.lock().unwrap().sync_error = Some(e.to_string());
                self.fatal.send_replace(Some(e.to_string()));
                drop(db);
                self.finish(Ok(result));
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed; retrying");
                self.status.lock().unwrap().sync_error = Some(e.to_string());
                state.failing = true;
                state.backoff = (state.backoff * 2).min(Duration::from_secs(300));
                state.backoff
            }
        };
        if stopping {
            drop(db);
            self.finish(Ok(result));
            return None;
        }
        state.db = Some(db);
        Some(wait)
    }

    fn panicked(&self, message: String) {
        self.fatal
            .send_replace(Some(format!("the capture panicked: {message}")));
        self.finish(Err(message));
    }
}

/// Panics where a test asks for it (`STRATA_PANIC_AT=<name>`), to show what a bug in that
/// place does to the process. Debug builds only.
fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("STRATA_PANIC_AT").is_ok_and(|at| at == name) {
        panic!("fault point {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A capture, or one waiting to reopen its database.
enum Db {
    Open(Box<Capture>),
    Closed(Box<Closed>),
}

/// One tick (or, when `stopping`, the final sync). A database replaced under its path is
/// closed and, if `follow`, opened again and synced at once.
fn step(
    state: Db,
    stopping: bool,
    follow: bool,
    report: &mut dyn FnMut(&Synced),
) -> (Db, Result<(), CaptureError>) {
    let mut capture = match state {
        Db::Open(capture) => capture,
        Db::Closed(closed) => match closed.reopen() {
            Ok(capture) => Box::new(capture),
            Err(e) => return (Db::Closed(closed), Err(e)),
        },
    };
    fault_point("tick");
    let result = if stopping {
        capture.sync_all(report).map(drop)
    } else {
        capture.tick(report)
    };
    match result {
        Err(e @ CaptureError::Replaced { .. }) => {
            tracing::warn!(error = %e, "following the file now at the path with a full copy");
            let closed = Db::Closed(Box::new((*capture).close()));
            if follow {
                step(closed, stopping, false, report)
            } else {
                (closed, Err(e))
            }
        }
        result => (Db::Open(capture), result),
    }
}

/// The longest a stop waits for a replica's check before the final sync (at most a third
/// of the shutdown timeout): one that hangs must leave time for the others' uploads.
const STOP_CHECK_MAX: Duration = Duration::from_secs(10);

/// How long an upload task waits at most between attempts while its replica fails.
const UPLOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What an upload task is told by the rest of the replication.
struct UploadSignals {
    /// Files staged so far.
    staged: watch::Receiver<Txid>,
    /// Where this replica stands, for [`Replication::sync`].
    uploaded: watch::Sender<Txid>,
    /// Try now (a sync is waiting), whatever the backoff says.
    retry: Arc<tokio::sync::Notify>,
    /// Replicas of the database still written to.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

/// The upload task of one replica: uploads when something is staged or a check of the
/// replica is asked for, and retries with growing backoff after errors (at once when a
/// sync asks). A replica that holds another history is stopped and the task ends; the
/// other replicas go on, and the replication stops only once none is left.
async fn upload_loop(
    uploader: Arc<tokio::sync::Mutex<upload::Uploader>>,
    mut signals: UploadSignals,
    status: Arc<Mutex<ReplicaStatus>>,
    (interval, index): (Duration, SharedIndex),
    alarm: PanicAlarm,
) {
    let mut backoff = interval;
    loop {
        let started = Instant::now();
        let staged_now = *signals.staged.borrow_and_update();
        {
            // Behind from the moment it lacks something staged: set before the round, so a
            // round that hangs (a server that stopped answering) shows as growing lag.
            let mut s = status.lock().unwrap();
            if s.behind_since.is_none() && s.uploaded < staged_now {
                s.behind_since = Some(jiff::Timestamp::now());
            }
        }
        let (result, uploaded) = {
            let mut uploader = uploader.lock().await;
            (uploader.upload().await, uploader.uploaded)
        };
        {
            let mut s = status.lock().unwrap();
            s.uploaded = uploaded;
            s.upload_error = result.as_ref().err().map(ToString::to_string);
            s.uploads += 1;
            s.failed_uploads += u64::from(result.is_err());
            s.upload_busy += started.elapsed();
            if result.is_ok() {
                s.last_upload = Some(jiff::Timestamp::now());
            }
            // Caught up once it holds everything staged when a round finishes; behind (again)
            // if a check found it restores to less.
            if uploaded >= *signals.staged.borrow() {
                s.behind_since = None;
            } else if s.behind_since.is_none() {
                s.behind_since = Some(jiff::Timestamp::now());
            }
        }
        signals.uploaded.send_replace(uploaded);
        if let Err(e) = result {
            if e.stops_replica() {
                let reason = e.to_string();
                tracing::error!(error = %e, "replica stopped; the database's other replicas go on");
                uploader.lock().await.stop(&reason);
                status.lock().unwrap().stopped = Some(reason.clone());
                if signals
                    .live
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
                {
                    alarm
                        .fatal
                        .send_replace(Some(format!("every replica is stopped: {reason}")));
                }
                return;
            }
            if e.is_fatal() {
                tracing::error!(error = %e, "upload failed; stopping");
                alarm.fatal.send_replace(Some(e.to_string()));
                return;
            }
            tracing::warn!(error = %e, "upload failed; retrying");
            backoff = (backoff * 2).min(UPLOAD_BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = signals.retry.notified() => {}
            }
            continue;
        }
        backoff = interval;
        // Nothing to do until the capture stages a file or the replica must be checked; an
        // idle replica is looked at (two HEADs) now and then, so one wiped meanwhile shows
        // as behind, and gets its full copy, without waiting for a write.
        let idle_check = uploader.lock().await.idle_check_interval();
        tokio::select! {
            changed = signals.staged.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(interval).await;
                }
            }
            () = index.check_requested() => {}
            () = signals.retry.notified() => {}
            () = tokio::time::sleep(idle_check) => {}
        }
    }
}
