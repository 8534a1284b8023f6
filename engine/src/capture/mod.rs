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

mod batch;
mod database;
mod decide;
mod error;
mod feed;
mod job;
mod options;
mod panic_alarm;
mod position;
mod replica_task;
mod replication;
mod sqlite;
mod staging;
mod status;
mod sync;
mod upload;
mod uploader;
mod wal;
mod wal_index;

pub use error::{CaptureError, StopError, SyncError};
pub use feed::{Feed, NextFile};
pub use options::{CaptureOptions, CheckpointOptions};
pub use replication::Replication;
pub use staging::{LocalState, reset};
pub use status::{LevelFiles, ReplicaStatus, Status};

/// The staging directory capture keeps beside the database at `db` (`.NAME-strata`).
pub fn staging_dir(db: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    staging::dir_of(db)
}

/// The newest TXID captured beside the database at `db` (its staging directory's position,
/// or a staged file above it), read without the capture's lock, as Litestream's `status`
/// reports its "local TXID". `None` if nothing was captured there.
pub fn local_txid(db: &std::path::Path) -> std::io::Result<Option<ltx::Txid>> {
    let dir = staging::dir_of(db)?;
    let saved = position::Position::load(&dir).map(|p| p.txid);
    let staged = match staging::staged_in(&dir.join("ltx").join("0")) {
        Ok(ranges) => ranges.iter().map(|r| r.max).max(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(saved.max(staged))
}
