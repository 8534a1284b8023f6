//! The SQLite side of capture, through the SQLite strata links (applications may use any
//! other): a read transaction held at all times, the write lock taken around strata's own
//! checkpoints, and the checkpoints themselves.
//!
//! Why holding a read transaction is enough: a reader at a WAL mark above 0 forbids
//! restarting the log, and a reader at mark 0 (everything already copied into the database)
//! forbids copying any newer frame into the database, because a checkpoint needs read lock
//! 0 exclusively to backfill (`walCheckpoint` in SQLite). A restart needs everything
//! backfilled. So while strata holds some read transaction, the log can only restart (or be
//! truncated) once every frame in it has been written back, and the frames strata has not
//! copied yet stay in the log. Handing the read transaction from one connection to another
//! keeps one held at every moment, and the old one goes only once everything the new one
//! sees is staged: a reader taken after a checkpoint copied the whole log back reads the
//! database alone (mark 0), which keeps the next writer from restarting the log over
//! nothing, staged or not.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

/// The result of `PRAGMA wal_checkpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CheckpointResult {
    /// The checkpoint could not finish because of readers or writers.
    pub busy: bool,
    /// Frames in the log (-1 if it could not run).
    pub log: i64,
    /// Frames copied back into the database.
    pub checkpointed: i64,
}

/// Checkpoint modes strata uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Copy what readers allow; never blocks anyone.
    Passive,
    /// Copy everything and empty the log file.
    Truncate,
}

/// strata's connections to one database.
pub(super) struct Sqlite {
    /// Two readers take turns holding the read transaction, so one is always held.
    readers: [Connection; 2],
    /// Which reader holds it, if any.
    holding: Option<usize>,
    /// The reader that held it before, while the capture stages what `holding` sees.
    previous: Option<usize>,
    /// Takes the write lock (a write transaction it never commits) around checkpoints.
    /// Opened with the others, at start: opening it (or the checkpointer) later, while
    /// writers were busy, left them locked out for over 30 s under load in the end-to-end
    /// tests (not understood; opening all four at start never did).
    lock: Connection,
    /// Runs checkpoints.
    checkpointer: Connection,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite")
            .field("holding", &self.holding)
            .finish_non_exhaustive()
    }
}

impl Sqlite {
    /// Opens the database (which must exist), switches it to WAL mode if needed, and takes
    /// the first read transaction.
    pub(super) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Sqlite> {
        let open = || connect(path, busy_timeout);
        let lock = open_lock(path, busy_timeout)?;
        let mode: String = lock.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some(format!(
                    "cannot switch to WAL mode (the database stays in {mode} mode; is it in use?)"
                )),
            ));
        }
        let mut sqlite = Sqlite {
            readers: [open()?, open()?],
            holding: None,
            previous: None,
            lock,
            checkpointer: open()?,
        };
        sqlite.hand_off()?;
        Ok(sqlite)
    }

    /// The database page size.
    pub(super) fn page_size(&self) -> rusqlite::Result<u32> {
        self.readers[0].query_row("PRAGMA page_size", [], |r| r.get(0))
    }

    /// Starts a read transaction on the idle reader, then ends the one held before: at no
    /// moment is none held. Only where nothing can be committed that is not staged (at
    /// open, or with writes locked out); otherwise see [`Sqlite::begin_next`].
    pub(super) fn hand_off(&mut self) -> rusqlite::Result<()> {
        self.begin_next()?;
        self.end_previous()
    }

    /// Starts a read transaction on the idle reader and keeps the one held before until
    /// [`Sqlite::end_previous`] (or [`Sqlite::abandon_next`]): in between, the capture
    /// stages what the new one sees. The old one is what keeps those frames in the log:
    /// let go first, the new one may read the database alone (a checkpoint copied the
    /// frames back), and such a reader does not keep the next writer from restarting
    /// the log over frames never staged.
    pub(super) fn begin_next(&mut self) -> rusqlite::Result<()> {
        self.end_previous()?;
        let next = self.holding.map_or(0, |i| 1 - i);
        begin_read(&self.readers[next])?;
        self.previous = self.holding.replace(next);
        Ok(())
    }

    /// Ends the read transaction held before the last [`Sqlite::begin_next`].
    pub(super) fn end_previous(&mut self) -> rusqlite::Result<()> {
        if let Some(prev) = self.previous.take() {
            self.readers[prev].execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Ends the read transaction the last [`Sqlite::begin_next`] took, holding on to the
    /// one before (staging what it saw failed).
    pub(super) fn abandon_next(&mut self) -> rusqlite::Result<()> {
        if let Some(prev) = self.previous.take()
            && let Some(next) = self.holding.replace(prev)
        {
            self.readers[next].execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Whether a read transaction is held.
    pub(super) fn is_holding(&self) -> bool {
        self.holding.is_some()
    }

    /// Ends the read transaction (for a checkpoint that must copy everything).
    pub(super) fn release(&mut self) -> rusqlite::Result<()> {
        self.end_previous()?;
        if let Some(i) = self.holding.take() {
            self.readers[i].execute_batch("COMMIT")?;
        }
        Ok(())
    }

    /// Takes the write lock; `false` if writers kept it busy past the busy timeout.
    pub(super) fn lock_writes(&self) -> rusqlite::Result<bool> {
        match self.lock.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the write lock (the transaction wrote nothing).
    pub(super) fn unlock_writes(&self) -> rusqlite::Result<()> {
        self.lock.execute_batch("ROLLBACK")
    }

    /// Runs a checkpoint on the checkpointing connection.
    pub(super) fn checkpoint(&self, mode: Mode) -> rusqlite::Result<CheckpointResult> {
        let sql = match mode {
            Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        };
        self.checkpointer.query_row(sql, [], |r| {
            Ok(CheckpointResult {
                busy: r.get::<_, i64>(0)? != 0,
                log: r.get(1)?,
                checkpointed: r.get(2)?,
            })
        })
    }
}

/// A connection as strata uses it.
fn connect(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // strata's connections run a handful of statements: the lookaside allocator (about
    // 48 KiB per connection) would be memory held for nothing, hundreds of databases over.
    // SAFETY: a connection just opened, with no lookaside memory in use yet; a NULL buffer
    // with size 0 and count 0 turns it off (sqlite3_db_config, SQLITE_DBCONFIG_LOOKASIDE).
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
    }
    conn.busy_timeout(busy_timeout)?;
    // strata never writes, so it never checkpoints on its own; and closing its
    // connections must not checkpoint or delete the WAL either.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(conn)
}

/// The connection that takes the write lock.
fn open_lock(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let mut lock = connect(path, busy_timeout)?;
    // Writers that commit back to back leave only brief gaps; SQLite's default busy
    // handler sleeps in growing steps and keeps missing them. Poll instead.
    lock.busy_handler(Some(poll_for_lock))?;
    Ok(lock)
}

/// Retries every 100 µs for about a quarter of a second. Not longer: while strata waits
/// for the write lock it holds its read transaction, and an application's RESTART
/// checkpoint that holds the write lock waits for that reader; the checkpoint is tried
/// again at the next tick.
fn poll_for_lock(attempts: i32) -> bool {
    std::thread::sleep(Duration::from_micros(100));
    attempts < 2_500
}

/// A read transaction: BEGIN alone takes no lock; the first read does.
fn begin_read(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}
