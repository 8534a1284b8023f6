//! Following a replica: a local SQLite database kept at the replica's newest TXID while
//! any SQLite reads it (Litestream's `restore -f`), by polling the replica or by a
//! primary's live stream (see [`crate::stream`]), the replica then being the safety net.
//!
//! The database is made by an ordinary restore the first time. From then on each new TXID
//! is applied as one SQLite transaction through SQLite's own pager (see `local`), so a
//! reader's transaction sees exactly one TXID. The position beside the database (see
//! `position`) lets a restarted follower go on where it stopped, with no download again.
//!
//! Catching up: while the replica's L0 files continue the position, each is applied as it
//! appears; when they no longer reach back to it (retention removed them while the
//! follower was stopped), the fewest files from the position to the newest TXID are
//! applied as one transaction. A replica whose history was replaced (another database, a
//! restore over the primary) is recognised by its files' history identity, or by its
//! newest TXID going back, and the database is rebuilt from it, again as one
//! transaction; an old history's files are never applied on top of a new one.

mod channel;
mod follower;
mod local;
mod open;
mod position;

use std::path::PathBuf;
use std::time::Duration;

use ltx::{PageSize, Txid};

use crate::plan::PlanError;
use crate::restore::RestoreError;
use crate::storage::StorageError;

pub use crate::stream::PrimaryUrl;
pub use follower::Follower;
pub use position::is_followed;

/// How a follower works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FollowOptions {
    /// How often the replica is asked for new files (Litestream's `-follow-interval`).
    pub interval: Duration,
    /// Every this many polls that find nothing new, the whole replica is listed to notice
    /// a history replaced under the follower.
    pub check_every: u32,
}

impl Default for FollowOptions {
    fn default() -> FollowOptions {
        FollowOptions {
            interval: Duration::from_secs(1),
            check_every: 10,
        }
    }
}

/// Where a follower stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowStatus {
    /// The TXID the local database holds.
    pub txid: Txid,
    /// The newest TXID seen in the source (the primary's newest staged, when streaming).
    pub newest: Txid,
    /// The newest TXID the primary's replicas all hold, from its heartbeats.
    pub uploaded: Txid,
    /// Files applied from the primary's stream.
    pub streamed: u64,
    /// Transactions applied from the replica (polls, catch-ups, rebuilds).
    pub from_replica: u64,
    /// Whether the primary's stream is connected now.
    pub connected: bool,
    /// The history the database belongs to (the node ID its files carry; 0 if unknown).
    pub history: u64,
    /// When the last TXID applied was committed on the primary (its file's timestamp).
    pub committed: Option<jiff::Timestamp>,
    /// Times the database was rebuilt because the source's history was replaced.
    pub rebuilds: u64,
    /// The last failure, cleared by the next successful poll.
    pub error: Option<String>,
    /// The follower has stopped (for good, after `stop` or a failure it cannot go past).
    pub stopped: bool,
}

/// Why following failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    /// The first restore of the local database failed.
    #[error("restoring {path}: {error}")]
    Restore {
        /// The local database.
        path: PathBuf,
        /// Why.
        error: Box<RestoreError>,
    },
    /// Reading the replica failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No chain of files leads from the database's TXID to the replica's newest.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// SQLite refused something on the local database.
    #[error("{path}: {error}")]
    Local {
        /// The local database.
        path: PathBuf,
        /// SQLite's error.
        error: rusqlite::Error,
    },
    /// The local database cannot be put in WAL mode.
    #[error("{path} is in {mode} mode and cannot be switched to WAL (is it in use?)")]
    NotWal {
        /// The local database.
        path: PathBuf,
        /// The journal mode it stays in.
        mode: String,
    },
    /// The local database exists but was not made by a follower.
    #[error(
        "{path} exists and has no follower position beside it ({position}): it was not made by `restore --follow`; remove it, or give --force to replace it"
    )]
    NotAFollower {
        /// The local database.
        path: PathBuf,
        /// Where its position would be.
        position: PathBuf,
    },
    /// The position file cannot be read or written.
    #[error("follower position {path}: {error}")]
    Position {
        /// The position file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The source's page size is not the local database's: SQLite cannot change it under
    /// its readers.
    #[error(
        "the source's page size is {source_size}, the local database's {local}: a page size cannot change under readers; stop them, remove the database and follow again"
    )]
    PageSizeChanged {
        /// The local database's page size.
        local: PageSize,
        /// The source's.
        source_size: PageSize,
    },
    /// A file of another history than the database's (the follower rebuilds).
    #[error("{file} belongs to history {found:016x}, the database to {expected:016x}")]
    HistoryChanged {
        /// The database's history.
        expected: u64,
        /// The file's.
        found: u64,
        /// The file.
        file: String,
    },
    /// A file to apply is not valid LTX (nothing of it was applied).
    #[error("{file}: {error}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong with it.
        error: ltx::Error,
    },
    /// The local database was replaced or removed while it was followed.
    #[error(
        "{} was {what} while it was followed: start the follower again, which rebuilds it from the replica",
        path.display()
    )]
    LocalReplaced {
        /// The local database.
        path: PathBuf,
        /// What happened to it.
        what: &'static str,
    },
    /// Another connection wrote to the local database (a follower's database is read-only).
    #[error(
        "{} was written by another connection: a follower's database is for reading; it is rebuilt from the replica",
        path.display()
    )]
    LocalWritten {
        /// The local database.
        path: PathBuf,
    },
    /// A listing of the replica did not answer in time.
    #[error("{replica} did not answer a listing in {}s", waited.as_secs())]
    ReplicaSlow {
        /// The replica.
        replica: String,
        /// How long it was given.
        waited: Duration,
    },
    /// The primary's stream broke or said something unexpected.
    #[error("the primary's stream: {0}")]
    Stream(String),
    /// The follower stopped before its database reached the TXID waited for.
    #[error("the follower stopped at TXID {at} before reaching {wanted}{}", why.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    Stopped {
        /// Where it stopped.
        at: Txid,
        /// The TXID waited for.
        wanted: Txid,
        /// The failure that stopped it, if one did.
        why: Option<String>,
    },
    /// The follower's task panicked.
    #[error("the follower stopped unexpectedly: {0}")]
    Panicked(String),
}

impl FollowError {
    /// Whether following cannot go on past this without someone's help.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            FollowError::NotWal { .. }
                | FollowError::NotAFollower { .. }
                | FollowError::LocalReplaced { .. }
                | FollowError::Position { .. }
                | FollowError::PageSizeChanged { .. }
                | FollowError::Panicked(_)
        )
    }
}
