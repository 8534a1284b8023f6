//! Compaction: L0 files merged into levels 1 to 8 and snapshots on wall-clock intervals,
//! and retention deleting, by TXID, what no kept restore point needs.
//!
//! A [`Compactor`] does one pass of one level, or one retention pass, against a replica and
//! its [`SharedIndex`] (no listing of its own: the index is kept current by whoever writes
//! through this process and refreshed by the uploader's periodic check). A [`Monitor`] runs
//! the passes on the [`Schedule`]: every level once at start, then at each UTC-aligned
//! multiple of its interval, retention after every pass.
//!
//! Crash safety: an output is merged into a local scratch file, then written to the replica
//! in one conditional create (never overwriting); inputs are never deleted by compaction,
//! only later by retention, and only when what remains restores to the same newest TXID. A
//! pass killed at any point leaves the level as it was or with one more file, and the next
//! pass continues from the level's newest file.

mod merge;
pub mod retention;
pub mod schedule;
pub mod select;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use ltx::{PageEncoding, Txid};
use tokio::sync::watch;

use crate::restore::{PlanError, plan_files};
use crate::storage::{FileInfo, Level, LevelIndex, Replica, SharedIndex, StorageError};
pub use retention::RetentionOptions;
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
            CompactError::Storage(e) => e.kind == crate::storage::ErrorKind::InvalidData,
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

/// Runs passes against one replica.
#[derive(Debug)]
pub struct Compactor {
    replica: Replica,
    index: SharedIndex,
    options: CompactionOptions,
    scratch: PathBuf,
    /// Where staged copies of L0 files may be read from.
    local_l0: Option<PathBuf>,
    status: Mutex<CompactionStatus>,
    /// Bytes fetched by merges, for progress.
    read: Arc<AtomicU64>,
}

impl Compactor {
    /// A compactor for `replica` as `index` describes it, merging through files in
    /// `scratch` (a directory only this compactor uses; leftovers are removed).
    pub fn new(
        replica: Replica,
        index: SharedIndex,
        options: CompactionOptions,
        scratch: PathBuf,
    ) -> Compactor {
        if let Ok(entries) = std::fs::read_dir(&scratch) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Compactor {
            replica,
            index,
            options,
            scratch,
            local_l0: None,
            status: Mutex::new(CompactionStatus::default()),
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads L0 inputs from `dir` (the capture's staging directory) where a file of the
    /// same name and size is still there, instead of fetching them.
    pub fn with_local_l0(mut self, dir: PathBuf) -> Compactor {
        self.local_l0 = Some(dir);
        self
    }

    /// What has been done so far.
    pub fn status(&self) -> CompactionStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bytes fetched by merges so far.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    fn update(&self, f: impl FnOnce(&mut CompactionStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// One pass of `level` at `now`: repair gaps in it from the level below, then merge
    /// what is new below it into one file (a snapshot for level 9).
    pub async fn run_level(&self, level: Level, now: Timestamp) -> Result<Outcome, CompactError> {
        let started = std::time::Instant::now();
        let mut result = match self.index.foreign() {
            Some(foreign) => Err(CompactError::ForeignHistory(foreign)),
            None => self.pass(level, now).await,
        };
        if let Err(CompactError::Corrupt { .. }) = &result {
            // The corrupt input is left out now (and was logged): build around it at once
            // rather than at the level's next boundary (a day, for snapshots).
            result = self.pass(level, now).await;
        }
        match &result {
            Err(CompactError::Storage(e)) if e.is_not_found() => {
                // A file the index holds is gone (retention elsewhere, a wiped replica): the
                // index is stale, so list again before the next pass, and have the replica
                // checked (a replica that lost its history gets a full copy).
                self.index.request_check();
                self.refresh().await?;
            }
            // The replica's files do not chain to a restorable state: the same.
            Err(CompactError::Plan(_)) => self.index.request_check(),
            _ => {}
        }
        self.update(|s| {
            let l = s.levels.entry(level).or_default();
            l.last_run = Some(now);
            l.passes += 1;
            l.failed_passes += u64::from(result.is_err());
            l.busy += started.elapsed();
            match &result {
                Ok(Outcome::Compacted { file, read, .. }) => {
                    l.files_written += 1;
                    l.bytes_written += file.size;
                    l.bytes_read += read;
                    l.error = None;
                }
                Ok(_) => l.error = None,
                Err(e) => l.error = Some(e.to_string()),
            }
        });
        result
    }

    /// Lists the whole replica into the index again.
    pub async fn refresh(&self) -> Result<(), CompactError> {
        let files = self.replica.list_all().await?;
        self.index.lock().replace(files, Timestamp::now());
        Ok(())
    }

    async fn pass(&self, level: Level, now: Timestamp) -> Result<Outcome, CompactError> {
        if let Some(interval) = self.interval(level) {
            let boundary = schedule::prev_boundary(now, interval);
            let index = self.index.lock();
            if index.newest(level).is_some_and(|f| f.modified > boundary) {
                return Ok(Outcome::TooEarly);
            }
        }
        if level == Level::SNAPSHOT {
            return self.snapshot().await;
        }
        let src = Level::new(level.get() - 1).expect("levels 1 to 9");
        self.repair_gaps(src, level).await?;
        let selection = select::select(&self.index.lock(), src, level);
        match selection {
            Selection::Merge(inputs) => self.write(level, &inputs).await,
            Selection::Nothing => Ok(Outcome::Nothing),
        }
    }

    fn interval(&self, level: Level) -> Option<Duration> {
        self.options
            .schedule()
            .into_iter()
            .find(|(l, _)| *l == level)
            .map(|(_, i)| i)
    }

    /// Fills each gap of `level` from `src` while `src` still holds the files; a gap that
    /// cannot be filled is logged as an error and kept in the status.
    async fn repair_gaps(&self, src: Level, level: Level) -> Result<(), CompactError> {
        let found = select::gaps(&self.index.lock(), level);
        let mut unrepaired = Vec::new();
        for gap in found {
            let inputs = select::repair(&self.index.lock(), src, gap);
            match inputs {
                Some(inputs) => {
                    tracing::warn!(replica = self.replica.name(), %gap, "repairing from {src}");
                    self.write(level, &inputs).await?;
                }
                None => {
                    tracing::error!(replica = self.replica.name(), %gap, "{src} no longer holds the files to repair it");
                    unrepaired.push(gap);
                }
            }
        }
        self.update(|s| s.levels.entry(level).or_default().gaps = unrepaired);
        Ok(())
    }

    /// A snapshot from the newest snapshot and the levels above it: the files a restore of
    /// the newest TXID would apply, merged.
    async fn snapshot(&self) -> Result<Outcome, CompactError> {
        let inputs = {
            let index = self.index.lock();
            // The newest snapshot that is not corrupt: a corrupt one is built again.
            let newest_snapshot = index
                .files(Level::SNAPSHOT)
                .last()
                .map_or(Txid::ZERO, |s| s.range.max);
            if index.max_txid() <= newest_snapshot {
                return Ok(Outcome::Nothing);
            }
            snapshot_inputs(&index)?
        };
        match inputs {
            Some(inputs) => self.write(Level::SNAPSHOT, &inputs).await,
            None => Ok(Outcome::Nothing),
        }
    }

    async fn write(&self, level: Level, inputs: &[FileInfo]) -> Result<Outcome, CompactError> {
        let _pinned = Pinned::new(&self.index, inputs);
        let before = self.read.load(std::sync::atomic::Ordering::Relaxed);
        let merged = match merge::merge(
            &self.replica,
            inputs,
            self.local_l0.as_deref(),
            &self.scratch,
            self.options.encoding,
            self.read.clone(),
        )
        .await
        {
            Ok(merged) => merged,
            // The inputs chain by TXID but belong to two histories: another process writes
            // another database here. Nothing more is written to or deleted from it.
            Err(CompactError::Ltx(e @ ltx::Error::TwoHistories { .. })) => {
                let what = format!("{level} merge: {e}");
                tracing::error!(replica = self.replica.name(), error = %what, "files of another history: compaction and retention stop");
                self.index.report_foreign(what.clone());
                return Err(CompactError::ForeignHistory(what));
            }
            Err(e) if e.is_bad_data() => {
                // Find the input at fault, name it, and keep it out of every later merge,
                // plan and retention decision of this process.
                let corrupt =
                    merge::find_corrupt(&self.replica, inputs, self.local_l0.as_deref()).await;
                let Some((file, error)) = corrupt else {
                    return Err(e);
                };
                tracing::error!(replica = self.replica.name(), %file, %error, "corrupt file: left out of compaction and retention");
                self.index.lock().mark_suspect(&file);
                return Err(CompactError::Corrupt {
                    file: file.to_string(),
                    error,
                });
            }
            Err(e) => return Err(e),
        };
        let range = merged.header.txid_range();
        self.index.lock().begin_write(level, range);
        let written = self.replica.write_ltx_file(level, &merged.path).await;
        if written.is_err() {
            self.index.lock().abandon(level, range);
        }
        let file = match written {
            Ok(file) => file,
            // A pass killed after its upload, or another compactor, wrote it already.
            Err(e) if e.is_already_exists() => {
                tracing::debug!(replica = self.replica.name(), %level, range = %merged.header.txid_range(), "already in the replica");
                FileInfo {
                    level,
                    range: merged.header.txid_range(),
                    size: merged.size,
                    modified: Timestamp::from_millisecond(merged.header.timestamp)
                        .unwrap_or(Timestamp::UNIX_EPOCH),
                }
            }
            Err(e) => return Err(e.into()),
        };
        {
            let mut index = self.index.lock();
            index.insert(file.clone(), Timestamp::now());
            index.mark_verified(&file);
        }
        let read = self.read.load(std::sync::atomic::Ordering::Relaxed) - before;
        tracing::info!(replica = self.replica.name(), file = %file, inputs = inputs.len(), bytes = file.size, read, "compacted");
        Ok(Outcome::Compacted {
            file,
            inputs: inputs.len(),
            read,
        })
    }

    /// One retention pass at `now`: deletes what [`retention::expired`] names. Returns how
    /// many files went.
    pub async fn run_retention(&self, now: Timestamp) -> Result<usize, CompactError> {
        let started = std::time::Instant::now();
        let result = match self.index.foreign() {
            Some(foreign) => Err(CompactError::ForeignHistory(foreign)),
            None => self.retain(now).await,
        };
        self.update(|s| {
            s.retention_passes += 1;
            s.failed_retention_passes += u64::from(result.is_err());
            s.retention_busy += started.elapsed();
        });
        result
    }

    async fn retain(&self, now: Timestamp) -> Result<usize, CompactError> {
        let expired = retention::expired(&self.index.lock(), &self.options.retention, now);
        if expired.is_empty() {
            return Ok(0);
        }
        // What the newest state restores from once they are gone must decode: a file this
        // process did not write is read through once before anything is deleted on its
        // strength, and a corrupt one is left out (and nothing deleted this pass).
        let plan = {
            let index = self.index.lock();
            let remaining: Vec<FileInfo> = index
                .all()
                .into_iter()
                .filter(|f| !expired.contains(f))
                .collect();
            plan_files(&remaining, Txid::ZERO, None, &[])
                .map(|p| p.files)
                .unwrap_or_default()
        };
        for file in plan {
            if self.index.lock().is_verified(&file) {
                continue;
            }
            match merge::verify_file(&self.replica, &file).await {
                None => self.index.lock().mark_verified(&file),
                Some(error) => {
                    tracing::error!(replica = self.replica.name(), %file, %error, "corrupt file: left out of compaction and retention");
                    self.index.lock().mark_suspect(&file);
                    return Ok(0);
                }
            }
        }
        let _no_listing = self.index.exclusive().await;
        let result = self.replica.delete(&expired).await;
        match &result {
            Ok(()) => {
                let mut index = self.index.lock();
                for f in &expired {
                    index.remove(f);
                }
                tracing::debug!(
                    replica = self.replica.name(),
                    files = expired.len(),
                    "retention deleted files"
                );
                self.update(|s| {
                    s.deleted += expired.len() as u64;
                    s.retention_error = None;
                });
            }
            Err(e) => self.update(|s| s.retention_error = Some(e.to_string())),
        }
        result?;
        Ok(expired.len())
    }
}

/// Files pinned in the index against retention while a merge reads them; unpinned when
/// dropped, however the merge ends (finished, failed, or its task aborted).
struct Pinned {
    index: SharedIndex,
    files: Vec<FileInfo>,
}

impl Pinned {
    fn new(index: &SharedIndex, files: &[FileInfo]) -> Pinned {
        index.lock().pin(files);
        Pinned {
            index: index.clone(),
            files: files.to_vec(),
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.index.lock().unpin(&self.files);
    }
}

/// The files a snapshot of the newest restorable TXID merges, or `None` if that is one file.
fn snapshot_inputs(index: &LevelIndex) -> Result<Option<Vec<FileInfo>>, PlanError> {
    let all = index.all();
    let plan = match plan_files(&all, Txid::ZERO, None, &[]) {
        Ok(plan) => plan,
        Err(PlanError::Gap { reached, .. }) if reached > Txid::ZERO => {
            plan_files(&all, Txid::ZERO, Some(reached), &[])?
        }
        Err(e) => return Err(e),
    };
    // One file is a snapshot already (the newest, or a full copy in a lower level that
    // restores as well where it is): copying it would only duplicate it.
    Ok((plan.files.len() > 1).then_some(plan.files))
}

/// Where the monitor's clock comes from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `base` plus the time tokio has counted since `start`: under a paused tokio clock,
    /// a schedule can be driven through hours in a test.
    Tokio {
        /// The wall time at `start`.
        base: Timestamp,
        /// When counting began.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock starting at `base` that follows tokio's (possibly paused) time.
    pub fn tokio(base: Timestamp) -> Clock {
        Clock::Tokio {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Tokio { base, start } => {
                let elapsed = jiff::SignedDuration::try_from(start.elapsed()).unwrap_or_default();
                base.checked_add(elapsed).unwrap_or(Timestamp::MAX)
            }
        }
    }

    async fn sleep_until(&self, t: Timestamp) {
        let wait = t.duration_since(self.now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One pass the monitor ran, for observers (tests, status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassReport {
    /// When it ran.
    pub at: Timestamp,
    /// The level.
    pub level: Level,
    /// What it did (or why it failed).
    pub outcome: Result<Outcome, String>,
}

/// Runs a [`Compactor`] on its schedule in a task until stopped.
#[derive(Debug)]
pub struct Monitor {
    compactor: Arc<Compactor>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    passes: Arc<Mutex<VecDeque<PassReport>>>,
}

/// How many passes a monitor remembers.
const PASS_HISTORY: usize = 64;

impl Monitor {
    /// Starts running `compactor`'s levels on `clock`, in three lanes so a long pass never
    /// holds up a short one: L1 with retention after each pass; L2 to L8; snapshots. The
    /// last two wait, at each boundary, for L1's pass at that boundary.
    pub fn start(compactor: Compactor, clock: Clock) -> Monitor {
        let compactor = Arc::new(compactor);
        let (stop, stopped) = watch::channel(false);
        let passes = Arc::new(Mutex::new(VecDeque::new()));
        let schedule = compactor.options.schedule();
        let (first, rest): (Vec<_>, Vec<_>) = schedule
            .iter()
            .partition(|(l, _)| *l == Level::new(1).expect("level 1"));
        let (snapshots, middle): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|(l, _)| *l == Level::SNAPSHOT);
        let (l1_done, l1_passes) = watch::channel(None);
        let after = (!first.is_empty()).then_some(l1_passes);
        let lanes = [
            Lane {
                levels: first,
                after: None,
                done: Some(l1_done),
                retention: true,
            },
            Lane {
                levels: middle,
                after: after.clone(),
                done: None,
                retention: false,
            },
            Lane {
                levels: snapshots,
                after,
                done: None,
                retention: false,
            },
        ];
        let tasks = lanes
            .into_iter()
            .filter(|lane| !lane.levels.is_empty() || lane.retention)
            .map(|lane| {
                tokio::spawn(run(
                    compactor.clone(),
                    clock,
                    lane,
                    stopped.clone(),
                    passes.clone(),
                ))
            })
            .collect();
        Monitor {
            compactor,
            stop,
            tasks,
            passes,
        }
    }

    /// What has been done so far.
    pub fn status(&self) -> CompactionStatus {
        self.compactor.status()
    }

    /// The most recent passes, oldest first.
    pub fn passes(&self) -> Vec<PassReport> {
        let passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.iter().cloned().collect()
    }

    /// Stops, abandoning a pass in progress (its output is either complete in the replica
    /// or absent; the next start continues).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// One lane of the monitor: `levels` run in order on their schedule; `after`, if given, is
/// the lane whose pass at the same boundary must finish first (so L2 sees the L1 file just
/// written); `done` announces each finished pass; `retention` runs retention after each.
struct Lane {
    levels: Vec<(Level, Duration)>,
    after: Option<watch::Receiver<Option<Timestamp>>>,
    done: Option<watch::Sender<Option<Timestamp>>>,
    retention: bool,
}

async fn run(
    compactor: Arc<Compactor>,
    clock: Clock,
    mut lane: Lane,
    mut stopped: watch::Receiver<bool>,
    passes: Arc<Mutex<VecDeque<PassReport>>>,
) {
    let mut schedule = Schedule::new(lane.levels.clone());
    loop {
        let now = clock.now();
        let due = schedule.take_due(now);
        if !due.is_empty()
            && let Some(after) = &mut lane.after
        {
            // If the lane below is gone, go on alone.
            let _ = after.wait_for(|t| t.is_some_and(|t| t >= now)).await;
        }
        for level in due {
            let outcome = compactor.run_level(level, now).await;
            match &outcome {
                Ok(Outcome::Compacted { .. }) => {}
                Ok(o) => {
                    tracing::debug!(replica = compactor.replica.name(), %level, outcome = ?o, "compaction");
                }
                Err(e) => {
                    tracing::warn!(replica = compactor.replica.name(), %level, error = %e, "compaction failed");
                }
            }
            let mut passes = passes.lock().unwrap_or_else(|e| e.into_inner());
            if passes.len() == PASS_HISTORY {
                passes.pop_front();
            }
            passes.push_back(PassReport {
                at: now,
                level,
                outcome: outcome.map_err(|e| e.to_string()),
            });
        }
        if lane.retention
            && let Err(e) = compactor.run_retention(clock.now()).await
        {
            tracing::warn!(replica = compactor.replica.name(), error = %e, "retention failed");
        }
        if let Some(done) = &lane.done {
            done.send_replace(Some(now));
        }
        let Some(wake) = schedule.next_due() else {
            return;
        };
        tokio::select! {
            () = clock.sleep_until(wake) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, TxidRange};

    fn at(s: &str) -> Timestamp {
        format!("2026-12-01T{s}Z").parse().unwrap()
    }

    /// A one-page file for `min..=max` written at `time`.
    async fn put(replica: &Replica, level: u8, min: u64, max: u64, time: &str) {
        let range = TxidRange::new(Txid::new(min), Txid::new(max));
        let mut header = Header::new(PageSize::new(512).unwrap(), 1, range);
        header.flags = HeaderFlags::NO_CHECKSUM;
        header.timestamp = at(time).as_millisecond();
        let mut enc = Encoder::new(Vec::new(), &header).unwrap();
        enc.encode_page(PageNum::ONE, &[max as u8; 512]).unwrap();
        let bytes = enc.finish(Checksum::ZERO).unwrap().writer;
        let level = Level::new(level).unwrap();
        replica
            .write(level, range, bytes.into(), at(time))
            .await
            .unwrap();
    }

    fn compacted(p: &PassReport) -> Option<String> {
        match &p.outcome {
            Ok(Outcome::Compacted { file, .. }) => Some(file.range.to_string()),
            _ => None,
        }
    }

    /// Drives the monitor through a few minutes of virtual time: the start-up pass, each
    /// level at its own boundaries, nothing to compact, the first compaction into an empty
    /// level seeded from the snapshot, and a pass that comes too early.
    #[tokio::test(start_paused = true)]
    async fn the_schedule_under_a_paused_clock() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::storage::ReplicaUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let replica = Replica::create(&url).unwrap();
        put(&replica, 9, 1, 3, "10:00:00").await;
        for t in 1..=3 {
            put(&replica, 0, t, t, "10:00:00").await;
        }
        put(&replica, 0, 4, 4, "10:07:00").await;
        put(&replica, 0, 5, 5, "10:07:20").await;
        let options = CompactionOptions {
            levels: vec![Duration::from_secs(30), Duration::from_secs(300)],
            snapshot_interval: Duration::from_secs(3600),
            retention: RetentionOptions {
                enabled: false,
                ..RetentionOptions::default()
            },
            ..CompactionOptions::default()
        };
        let index = SharedIndex::new(LevelIndex::from_files(
            replica.list_all().await.unwrap(),
            at("10:07:43"),
        ));
        let scratch = dir.path().join("scratch");
        let compactor = Compactor::new(replica.clone(), index.clone(), options.clone(), scratch);
        let start = tokio::time::Instant::now();
        let monitor = Monitor::start(compactor, Clock::tokio(at("10:07:43")));
        let (l1, l2) = (Level::new(1).unwrap(), Level::new(2).unwrap());
        let wait_until = |t: &str| {
            let offset = Duration::try_from(at(t).duration_since(at("10:07:43"))).unwrap();
            tokio::time::sleep_until(start + offset)
        };

        // Start-up: every level once. L1 starts from the snapshot (4-5, not 1-5); L2 has
        // one L1 file to take, which it leaves where it is; the snapshot level merges the
        // snapshot with L1.
        wait_until("10:07:44").await;
        let p = monitor.passes();
        assert_eq!(
            p.iter().map(|p| p.level).collect::<Vec<_>>(),
            vec![l1, l2, Level::SNAPSHOT]
        );
        assert!(p.iter().all(|p| p.at == at("10:07:43")));
        let made: Vec<_> = p.iter().map(compacted).collect();
        assert_eq!(
            made,
            vec![
                Some("0000000000000004-0000000000000005".to_owned()),
                None,
                Some("0000000000000001-0000000000000005".to_owned()),
            ]
        );
        assert_eq!(p[1].outcome, Ok(Outcome::Nothing));

        // Two new L0 files; L1 takes them at its next boundary, then finds nothing.
        for t in [6, 7] {
            put(&replica, 0, t, t, "10:07:50").await;
            let file = replica.list(Level::L0, Txid::new(t)).await.unwrap()[0].clone();
            index.lock().insert(file, at("10:07:50"));
        }
        wait_until("10:08:31").await;
        let p = monitor.passes();
        assert_eq!(p.len(), 5, "{p:?}");
        assert_eq!((p[3].level, p[3].at), (l1, at("10:08:00")));
        assert_eq!(
            compacted(&p[3]).as_deref(),
            Some("0000000000000006-0000000000000007")
        );
        assert_eq!(
            (p[4].level, p[4].at, &p[4].outcome),
            (l1, at("10:08:30"), &Ok(Outcome::Nothing))
        );

        // 8 and 9 arrive after the 10:09:30 pass; at 10:10:00 L1 runs first, then L2
        // merges from the snapshot on.
        wait_until("10:09:31").await;
        for t in [8, 9] {
            put(&replica, 0, t, t, "10:09:40").await;
            let file = replica.list(Level::L0, Txid::new(t)).await.unwrap()[0].clone();
            index.lock().insert(file, at("10:09:40"));
        }
        wait_until("10:10:01").await;
        let p = monitor.passes();
        let at_ten: Vec<_> = p.iter().filter(|p| p.at == at("10:10:00")).collect();
        assert_eq!(
            at_ten.iter().map(|p| p.level).collect::<Vec<_>>(),
            vec![l1, l2]
        );
        let l1_at_950 = p.iter().find(|p| p.at == at("10:09:30") && p.level == l1);
        assert_eq!(
            l1_at_950.and_then(compacted),
            None,
            "9-9 was not there yet at 10:09:30"
        );
        assert_eq!(
            compacted(at_ten[0]).as_deref(),
            Some("0000000000000008-0000000000000009")
        );
        assert_eq!(
            compacted(at_ten[1]).as_deref(),
            Some("0000000000000006-0000000000000009")
        );
        monitor.stop().await;

        // A restart within the window of a file already written: too early.
        let again = Compactor::new(replica.clone(), index, options, dir.path().join("s2"));
        assert_eq!(
            again.run_level(l1, at("10:09:59")).await.unwrap(),
            Outcome::TooEarly
        );
        assert_eq!(
            again.run_level(l1, at("10:10:10")).await.unwrap(),
            Outcome::Nothing
        );
    }

    /// A corrupt snapshot is named, left out, and never becomes the floor that retention
    /// deletes the alternatives by; the next snapshot is built around it.
    #[tokio::test]
    async fn a_corrupt_snapshot_is_left_out_not_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::storage::ReplicaUrl::parse(dir.path().to_str().unwrap()).unwrap();
        let replica = Replica::create(&url).unwrap();
        put(&replica, 9, 1, 3, "09:00:00").await;
        put(&replica, 1, 4, 5, "09:30:00").await;
        put(&replica, 9, 1, 5, "10:00:00").await;
        put(&replica, 0, 6, 6, "10:30:00").await;
        put(&replica, 0, 7, 7, "10:30:01").await;
        let bad = dir
            .path()
            .join("ltx/9/0000000000000001-0000000000000005.ltx");
        let mut bytes = std::fs::read(&bad).unwrap();
        bytes[ltx::HEADER_SIZE + 10] ^= 0xff;
        std::fs::write(&bad, bytes).unwrap();
        let f = std::fs::File::options().write(true).open(&bad).unwrap();
        f.set_modified(at("10:00:00").into()).unwrap();
        let options = CompactionOptions {
            levels: vec![Duration::from_secs(30)],
            snapshot_interval: Duration::from_secs(3600),
            retention: RetentionOptions {
                enabled: true,
                l0: Duration::ZERO,
                snapshots: Duration::from_secs(1),
                grace: Duration::ZERO,
            },
            ..CompactionOptions::default()
        };
        let files = replica.list_all().await.unwrap();
        let fresh = || SharedIndex::new(LevelIndex::from_files(files.clone(), at("09:00:00")));
        let left = |l: u8| {
            let replica = replica.clone();
            async move {
                replica
                    .list(Level::new(l).unwrap(), Txid::ZERO)
                    .await
                    .unwrap()
                    .len()
            }
        };
        // Retention before any merge read the corrupt snapshot: it reads through what the
        // newest state would restore from before deleting on its strength.
        let first = Compactor::new(
            replica.clone(),
            fresh(),
            options.clone(),
            dir.path().join("s"),
        );
        first.run_retention(at("11:00:00")).await.unwrap();
        assert_eq!(
            (left(9).await, left(1).await),
            (2, 1),
            "retention trusted an unread snapshot"
        );
        let c = Compactor::new(replica.clone(), fresh(), options, dir.path().join("s"));
        // The snapshot pass finds it, names it, leaves it out and builds around it at once:
        // the older snapshot, L1 and L0.
        let made = c.run_level(Level::SNAPSHOT, at("11:00:00")).await.unwrap();
        assert!(
            matches!(&made, Outcome::Compacted { file, inputs: 4, .. } if file.range.max == Txid::new(7)),
            "{made:?}"
        );
        let corrupt = files
            .iter()
            .find(|f| f.range.max == Txid::new(5) && f.level == Level::SNAPSHOT);
        assert!(c.index.lock().is_suspect(corrupt.unwrap()));
        c.run_retention(at("11:00:00")).await.unwrap();
        assert!(
            left(9).await >= 2 && left(1).await == 1,
            "retention built on the corrupt snapshot"
        );
        let out = dir.path().join("restored.db");
        crate::restore::restore(
            &replica,
            crate::restore::Target::Latest,
            &out,
            &crate::restore::RestoreOptions::default(),
            Arc::new(crate::restore::NoProgress),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 512]);
    }
}
