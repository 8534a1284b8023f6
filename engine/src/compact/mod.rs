//! Compaction: L0 files merged into levels 1 to 8 and snapshots on wall-clock intervals,
//! and retention deleting, by TXID, what no kept restore point needs.
//!
//! A [`Compactor`] does one pass of one level, or one retention pass, against a replica and
//! its [`SharedIndex`] (no listing of its own: the index is kept current by whoever writes
//! through this process and refreshed by the uploader's periodic check). A [`Runner`] runs
//! the passes on the [`Schedule`]: every level once at start, then at each UTC-aligned
//! multiple of its interval, retention after every pass.
//!
//! Crash safety: an output is merged into a local scratch file, then written to the replica
//! in one conditional create (never overwriting); inputs are never deleted by compaction,
//! only later by retention, and only when what remains restores to the same newest TXID. A
//! pass killed at any point leaves the level as it was or with one more file, and the next
//! pass continues from the level's newest file.

mod clock;
mod compactor;
mod level_index;
mod merge;
mod retention;
mod runner;
mod schedule;
mod select;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use ltx::PageEncoding;

use crate::plan::PlanError;
use crate::storage::{FileInfo, Level, StorageError};
pub use clock::Clock;
pub use compactor::Compactor;
pub use level_index::{IndexedFile, LevelIndex, SharedIndex};
pub use retention::RetentionOptions;
pub use runner::{PassReport, Runner};
pub use schedule::Schedule;
pub use select::{Gap, Selection};

/// Levels, snapshots and retention, with Litestream's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionOptions {
    /// The intervals of levels 1, 2, ... (`levels:`; at most 8).
    pub levels: Vec<Duration>,
    /// How often a snapshot is made (`snapshot.interval`).
    pub snapshot_interval: Duration,
    /// What retention keeps.
    pub retention: RetentionOptions,
    /// How the outputs' pages are compressed.
    pub encoding: PageEncoding,
}

impl Default for CompactionOptions {
    fn default() -> CompactionOptions {
        CompactionOptions {
            levels: vec![
                Duration::from_secs(30),
                Duration::from_secs(5 * 60),
                Duration::from_secs(3600),
            ],
            snapshot_interval: Duration::from_secs(24 * 3600),
            retention: RetentionOptions::default(),
            encoding: PageEncoding::default(),
        }
    }
}

impl CompactionOptions {
    /// Every scheduled level and its interval, snapshots last.
    pub fn schedule(&self) -> Vec<(Level, Duration)> {
        let mut levels: Vec<_> = self
            .levels
            .iter()
            .take(8)
            .enumerate()
            .map(|(i, &d)| (Level::new(i as u8 + 1).expect("at most 8 levels"), d))
            .collect();
        levels.push((Level::SNAPSHOT, self.snapshot_interval));
        levels
    }
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// Reading inputs or writing the output failed, or an input is not valid LTX.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The merge refused its inputs.
    #[error("merge failed: {0}")]
    Ltx(ltx::Error),
    /// The local scratch file could not be written.
    #[error("{}: {error}", path.display())]
    Scratch {
        /// The scratch file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The replica's files do not chain into a restorable state.
    #[error("cannot build a snapshot: {0}")]
    Plan(#[from] PlanError),
    /// An input is not valid LTX (a bad checksum, a truncated file): it is left out of
    /// later passes and retention.
    #[error("{file} is corrupt: {error}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong with it.
        error: String,
    },
    /// The merge thread panicked: a bug.
    #[error("the merge panicked: {0}")]
    Panicked(String),
    /// Files of another history are in the replica: nothing more is merged into it or
    /// deleted from it.
    #[error(
        "the replica holds files of another history, so compaction and retention are stopped: {0}"
    )]
    ForeignHistory(String),
}

impl CompactError {
    /// Whether the inputs' bytes are at fault (not the storage or the scratch disk).
    fn is_bad_data(&self) -> bool {
        match self {
            CompactError::Ltx(_) => true,
            CompactError::Storage(e) => e.kind() == crate::storage::ErrorKind::InvalidData,
            _ => false,
        }
    }
}

/// What one pass of a level did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// One file written from `inputs` files (`read` bytes fetched).
    Compacted {
        /// The new file.
        file: FileInfo,
        /// How many files were merged.
        inputs: usize,
        /// Bytes read.
        read: u64,
    },
    /// The level already has a file from after its most recent boundary.
    TooEarly,
    /// Nothing new to merge.
    Nothing,
}

/// What one level has done since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LevelStatus {
    /// Files written.
    pub files_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read to write them.
    pub bytes_read: u64,
    /// When the last pass ran.
    pub last_run: Option<Timestamp>,
    /// Passes run (most find nothing to do), and how many of them failed.
    pub passes: u64,
    /// See `passes`.
    pub failed_passes: u64,
    /// Time spent in passes.
    pub busy: Duration,
    /// Gaps found in the level and not repaired.
    pub gaps: Vec<Gap>,
    /// Why the last pass failed (cleared by one that succeeds).
    pub error: Option<String>,
}

/// What compaction and retention have done since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionStatus {
    /// Per level.
    pub levels: BTreeMap<Level, LevelStatus>,
    /// Files retention deleted.
    pub deleted: u64,
    /// Why the last retention pass failed (cleared by one that succeeds).
    pub retention_error: Option<String>,
    /// Retention passes run, how many failed, and the time they took.
    pub retention_passes: u64,
    /// See `retention_passes`.
    pub failed_retention_passes: u64,
    /// See `retention_passes`.
    pub retention_busy: Duration,
}
