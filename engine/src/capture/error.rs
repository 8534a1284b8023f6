//! What goes wrong in a replication: a capture's errors, and what a stop or a sync left
//! undone.

use std::path::PathBuf;

use ltx::Txid;

use crate::storage::StorageError;

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
    /// A staged file is not what its name says (damaged or replaced on disk): it is never
    /// uploaded; the capture writes a full copy instead.
    #[error("staged file {} is damaged ({detail}): not uploaded", range.file_name())]
    StagedDamaged {
        /// The staged file.
        range: ltx::TxidRange,
        /// What is wrong with it.
        detail: String,
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

/// Why [`Replication::sync`](super::Replication::sync) could not confirm everything committed is in the replica.
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
