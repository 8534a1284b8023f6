//! What a replication reports while it runs: the capture's part and each replica's.

use std::collections::BTreeMap;
use std::time::Duration;

use ltx::Txid;

use crate::compact::CompactionStatus;
use crate::storage::Level;

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
