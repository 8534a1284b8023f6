//! Capture: every committed transaction of a live WAL-mode database becomes an L0 file.
//!
//! Each database has a capture thread (SQLite and file work block) that syncs on an
//! interval: it reads the WAL frames committed since the last position and stages them as
//! one L0 file `<n>-<n>.ltx` beside the database, or stages a full copy of the database
//! when nothing proves the log continues the last position (first sync, a restart of
//! strata after the log changed under it). It owns checkpointing. An upload task ships
//! staged files to the replica in TXID order with conditional creates.
//!
//! Why no transaction is lost: strata always holds a read transaction (see the `sqlite`
//! module), so the log can only restart once everything in it has been copied; its own
//! checkpoints run under the write lock, after a final sync. The position (TXID, WAL generation and offset,
//! chain checksum) is saved after every staged file, so a restarted strata resumes where it
//! stopped, or writes a full copy with the next TXID if the log moved on in a way it cannot
//! follow. TXIDs never repeat: the next one is above everything staged or in the replica.

mod position;
mod sqlite;
mod staging;
mod sync;
mod upload;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::{PageEncoding, PageSize, Txid};
use tokio::sync::{mpsc, watch};

use crate::storage::{Replica, StorageError};
use position::Position;
use sqlite::{Mode, Sqlite};
use staging::Staging;
use sync::{Synced, Syncer};

/// When strata checkpoints the databases it captures.
#[derive(Clone, Debug)]
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
#[derive(Clone, Debug)]
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
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
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
    /// The replica already holds a different file for a TXID strata wrote: another process
    /// replicates the same database to the same place.
    #[error(
        "TXID {txid} already exists in {replica} with different contents: is another process replicating this database there?"
    )]
    Conflict {
        /// The TXID.
        txid: Txid,
        /// The replica.
        replica: String,
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
}

impl Capture {
    /// Opens the database and the capture state. `replica_max` is the highest TXID already in
    /// the replica: capture continues above it.
    fn open(
        db: &Path,
        replica_max: Txid,
        options: CaptureOptions,
    ) -> Result<Capture, CaptureError> {
        let sql_err = |error| CaptureError::Sqlite {
            path: db.to_owned(),
            error,
        };
        if !db.is_file() {
            return Err(CaptureError::Io {
                path: db.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
            });
        }
        let sqlite = Sqlite::open(db, options.busy_timeout).map_err(sql_err)?;
        let page_size = sqlite.page_size().map_err(sql_err)?;
        let page_size = PageSize::new(page_size).ok_or_else(|| CaptureError::Io {
            path: db.to_owned(),
            source: std::io::Error::other(format!("unsupported page size {page_size}")),
        })?;
        let staging = Staging::open(db).map_err(|source| CaptureError::Io {
            path: db.to_owned(),
            source,
        })?;
        staging
            .remove_leftovers()
            .map_err(|source| CaptureError::Io {
                path: staging.dir().to_owned(),
                source,
            })?;
        let saved = Position::load(staging.dir());
        let staged_max = staging
            .staged()
            .map_err(|source| CaptureError::Io {
                path: staging.dir().to_owned(),
                source,
            })?
            .last()
            .copied()
            .unwrap_or(Txid::ZERO);
        let known = [
            saved.map_or(Txid::ZERO, |p| p.txid),
            staged_max,
            replica_max,
        ]
        .into_iter()
        .max()
        .unwrap_or(Txid::ZERO);
        // The saved position is usable only if it is the newest TXID anywhere: a newer staged
        // file (a crash before the position was saved) or a replica ahead of it (a database
        // restored from elsewhere) means starting again from a full copy.
        let position = saved.filter(|p| p.txid == known);
        if position.is_none() && known > Txid::ZERO {
            tracing::info!(db = %db.display(), after = %known, "no usable capture position: the next file is a full copy");
        }
        let mut wal_path = db.as_os_str().to_owned();
        wal_path.push("-wal");
        let db_file = std::fs::File::open(db).map_err(|source| CaptureError::Io {
            path: db.to_owned(),
            source,
        })?;
        Ok(Capture {
            sqlite,
            syncer: Syncer {
                db_path: db.to_owned(),
                db_file,
                wal_path: wal_path.into(),
                page_size,
                staging,
                position,
                live: false,
                next_txid: known.next(),
                max_wal_bytes: options.max_wal_bytes,
                encoding: options.encoding,
            },
            last_checkpoint: Instant::now(),
            synced_since_checkpoint: false,
            checkpointed: None,
            options,
        })
    }

    /// Syncs everything committed, moves the read transaction forward, and checkpoints when
    /// due. Files staged are reported as soon as they are, so uploads need not wait for the
    /// checkpoint.
    fn tick(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<(), CaptureError> {
        let started = Instant::now();
        let files = self.sync_all(report)?;
        if files > 0 {
            tracing::debug!(db = %self.syncer.db_path.display(), files, ms = started.elapsed().as_millis(), "synced");
        }
        self.sqlite.hand_off().map_err(|e| self.sql_err(e))?;
        if let Some(mode) = self.checkpoint_due()? {
            self.checkpoint(mode, report)?;
        }
        Ok(())
    }

    /// Stages everything committed, reporting each file as it is staged (a backlog cut into
    /// several files starts uploading with the first). Returns how many files were staged.
    fn sync_all(&mut self, report: &mut dyn FnMut(&Synced)) -> Result<usize, CaptureError> {
        let mut files = 0;
        loop {
            let synced = self.syncer.sync().map_err(|source| CaptureError::Io {
                path: self.syncer.db_path.clone(),
                source,
            })?;
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
        tracing::debug!(db = %self.syncer.db_path.display(), ?unlocked_work, "passive checkpoint, writers running");
        let started = Instant::now();
        if !self.sqlite.lock_writes().map_err(|e| self.sql_err(e))? {
            tracing::debug!(db = %self.syncer.db_path.display(), "checkpoint skipped: writers busy");
            return Ok(());
        }
        let sealed = self.sync_all(report);
        let result = sealed.and_then(|_| {
            self.sqlite.release().map_err(|e| self.sql_err(e))?;
            // The read transaction is taken again even if the checkpoint failed.
            let passive = self.sqlite.checkpoint(Mode::Passive);
            let held = self.sqlite.hand_off();
            let passive = passive.map_err(|e| self.sql_err(e))?;
            held.map_err(|e| self.sql_err(e))?;
            Ok(passive)
        });
        // Writers are let in whatever happened.
        let unlocked = self.sqlite.unlock_writes();
        tracing::debug!(db = %self.syncer.db_path.display(), locked_ms = started.elapsed().as_millis(), "writes were locked out");
        let passive = result?;
        unlocked.map_err(|e| self.sql_err(e))?;
        tracing::debug!(db = %self.syncer.db_path.display(), ?passive, "passive checkpoint");
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
            tracing::info!(db = %self.syncer.db_path.display(), ?truncate, "truncate checkpoint");
        }
        self.last_checkpoint = Instant::now();
        self.synced_since_checkpoint = false;
        self.sync_all(report)?;
        Ok(())
    }

    fn sql_err(&self, error: rusqlite::Error) -> CaptureError {
        CaptureError::Sqlite {
            path: self.syncer.db_path.clone(),
            error,
        }
    }
}

/// What a replication reports while it runs.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The newest TXID staged locally.
    pub staged: Txid,
    /// The newest TXID in the replica.
    pub uploaded: Txid,
    /// Full copies written.
    pub full_copies: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// A database being replicated: a capture thread and an upload task.
#[derive(Debug)]
pub struct Replication {
    db: PathBuf,
    stop: mpsc::UnboundedSender<()>,
    capture: std::thread::JoinHandle<()>,
    upload: tokio::task::JoinHandle<()>,
    staged: watch::Receiver<Txid>,
    status: Arc<Mutex<Status>>,
    staging: Staging,
    replica: Replica,
    timeout: Duration,
}

impl Replication {
    /// Starts replicating the database at `db` (which must exist) to `replica`.
    pub async fn start(
        db: &Path,
        replica: Replica,
        options: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        let db = std::path::absolute(db).map_err(|source| CaptureError::Io {
            path: db.to_owned(),
            source,
        })?;
        let replica_max = replica
            .list_all()
            .await?
            .iter()
            .map(|f| f.range.max)
            .max()
            .unwrap_or(Txid::ZERO);
        let opened = {
            let (db, options) = (db.clone(), options.clone());
            tokio::task::spawn_blocking(move || Capture::open(&db, replica_max, options))
                .await
                .expect("capture setup panicked")?
        };
        let staging = opened.syncer.staging.clone();
        let status = Arc::new(Mutex::new(Status {
            uploaded: replica_max,
            ..Status::default()
        }));
        let (staged_tx, staged_rx) = watch::channel(Txid::ZERO);
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        let capture = {
            let status = status.clone();
            std::thread::Builder::new()
                .name("strata-capture".into())
                .spawn(move || capture_loop(opened, stop_rx, staged_tx, status))
                .expect("a thread can be spawned")
        };
        let upload = tokio::spawn(upload_loop(
            staging.clone(),
            replica.clone(),
            staged_rx.clone(),
            status.clone(),
            options.sync_interval,
        ));
        Ok(Replication {
            db,
            stop: stop_tx,
            capture,
            upload,
            staged: staged_rx,
            status,
            staging,
            replica,
            timeout: options.shutdown_timeout,
        })
    }

    /// The database being replicated.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The current state.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    /// Stops: a final sync, then uploads what is staged, within the shutdown timeout.
    pub async fn stop(self) -> Result<Status, CaptureError> {
        let _ = self.stop.send(());
        let capture = self.capture;
        tokio::task::spawn_blocking(move || capture.join())
            .await
            .expect("join")
            .ok();
        self.upload.abort();
        let mut uploaded = self.status.lock().unwrap().uploaded;
        let deadline = Instant::now() + self.timeout;
        let staged = *self.staged.borrow();
        let mut last = Ok(0);
        while uploaded < staged && Instant::now() < deadline {
            last = upload::upload(&self.staging, &self.replica, &mut uploaded).await;
            if last.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut status = self.status.lock().unwrap().clone();
        status.uploaded = uploaded;
        match last {
            Err(e) if uploaded < staged => Err(e),
            _ => Ok(status),
        }
    }
}

/// The capture thread: a tick every sync interval until told to stop, then a final sync.
fn capture_loop(
    mut capture: Capture,
    mut stop: mpsc::UnboundedReceiver<()>,
    staged: watch::Sender<Txid>,
    status: Arc<Mutex<Status>>,
) {
    let interval = capture.options.sync_interval;
    let mut backoff = interval;
    let mut report = |file: &Synced| {
        if let Synced::Staged { txid, full, .. } = file {
            let mut s = status.lock().unwrap();
            s.staged = *txid;
            s.full_copies += u64::from(*full);
            staged.send_replace(*txid);
        }
    };
    loop {
        let started = Instant::now();
        let stopping = stop.try_recv().is_ok();
        let result = if stopping {
            capture.sync_all(&mut report).map(drop)
        } else {
            capture.tick(&mut report)
        };
        // Ticks keep to the interval (a slow tick does not push the next one back), and
        // back off after errors.
        let wait = match result {
            Ok(()) => {
                backoff = interval;
                status.lock().unwrap().last_error = None;
                interval
            }
            Err(e) => {
                tracing::error!(error = %e, "capture failed; retrying");
                status.lock().unwrap().last_error = Some(e.to_string());
                backoff = (backoff * 2).min(Duration::from_secs(300));
                backoff
            }
        };
        if stopping {
            return;
        }
        // Sleep until the next tick, waking early to stop.
        let deadline = started + wait;
        while Instant::now() < deadline {
            if !stop.is_empty() {
                break;
            }
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

/// The upload task: uploads when something is staged, and retries on an interval with
/// growing backoff after errors.
async fn upload_loop(
    staging: Staging,
    replica: Replica,
    mut staged: watch::Receiver<Txid>,
    status: Arc<Mutex<Status>>,
    interval: Duration,
) {
    let mut uploaded = status.lock().unwrap().uploaded;
    let mut backoff = interval;
    loop {
        match upload::upload(&staging, &replica, &mut uploaded).await {
            Ok(_) => {
                backoff = interval;
                let mut s = status.lock().unwrap();
                s.uploaded = uploaded;
            }
            Err(e) => {
                tracing::warn!(error = %e, "upload failed; retrying");
                status.lock().unwrap().last_error = Some(e.to_string());
                backoff = (backoff * 2).min(Duration::from_secs(300));
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        tokio::select! {
            _ = staged.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
