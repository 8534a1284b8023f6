//! How a database is captured: sync interval, checkpoints, shutdown, replica checks.

use std::time::Duration;

use ltx::PageEncoding;

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
    /// How often staged L0 files are uploaded (merged into one file per replica), and how
    /// often committed frames are staged where file-change notification is missing.
    pub sync_interval: Duration,
    /// How soon after a write to the database's files what it committed is staged (and
    /// streamed to followers), where file-change notification is available (Linux).
    pub commit_debounce: Duration,
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
            commit_debounce: Duration::from_millis(5),
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
