//! What the ticker runs: a job that says whether it has work (cheaply), does it, and is
//! known by an id.

use std::time::Duration;

/// What the ticker runs.
pub(crate) trait Job: Send + Sync + 'static {
    /// Whether the job has work now. Blocking, but brief: no SQLite, no large reads.
    /// `thorough` asks for every check; otherwise file-change notification watches what
    /// only a thorough probe would see (files replaced or deleted), and the probe may be
    /// reduced to what notification misses.
    fn probe(&self, thorough: bool) -> bool;
    /// Does the work. Returns when the job is next due, or `None` once it has finished
    /// (it is then forgotten).
    fn work(&self) -> Option<Duration>;
    /// How long to wait after a probe that found nothing.
    fn idle_interval(&self) -> Duration;
    /// How soon after a change to its files (file-change notification) the job is probed,
    /// and the least time between two works while changes keep coming.
    fn debounce(&self) -> Duration;
    /// The job panicked (a bug): it is forgotten; this reports it.
    fn panicked(&self, message: String);
}

/// Identifies a job in its ticker.
pub(crate) type JobId = u64;
