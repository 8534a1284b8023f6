//! One replica's compactor: a pass of a level (repairing gaps, merging what is new below
//! it, building snapshots) and a retention pass, against the replica's shared index.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use ltx::Txid;

use super::{
    CompactError, CompactionOptions, CompactionStatus, Outcome, Selection, merge, retention,
    schedule, select,
};
use super::{LevelIndex, SharedIndex};
use crate::plan::{PlanError, plan_files};
use crate::storage::{FileInfo, Level, Replica};

/// Runs passes against one replica.
#[derive(Debug)]
pub struct Compactor {
    pub(super) replica: Replica,
    pub(super) index: SharedIndex,
    pub(super) options: CompactionOptions,
    scratch: PathBuf,
    /// Where staged copies of L0 files may be read from.
    local_l0: Vec<PathBuf>,
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
            local_l0: Vec::new(),
            status: Mutex::new(CompactionStatus::default()),
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads L0 inputs from `dirs` (the capture's staging directory and its merged uploads)
    /// where a file of the same name and size is still there, instead of fetching them.
    pub fn with_local_l0(mut self, dirs: Vec<PathBuf>) -> Compactor {
        self.local_l0 = dirs;
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
        self.run(level, now, true).await
    }

    /// [`Compactor::run_level`] whatever the level's interval: a pass now even if the level
    /// has a file from after its last boundary (a snapshot on demand: Litestream's
    /// `-force-snapshot`).
    pub async fn run_level_now(
        &self,
        level: Level,
        now: Timestamp,
    ) -> Result<Outcome, CompactError> {
        self.run(level, now, false).await
    }

    async fn run(
        &self,
        level: Level,
        now: Timestamp,
        on_schedule: bool,
    ) -> Result<Outcome, CompactError> {
        let started = std::time::Instant::now();
        let mut result = match self.index.foreign() {
            Some(foreign) => Err(CompactError::ForeignHistory(foreign)),
            None => self.pass(level, now, on_schedule).await,
        };
        if let Err(CompactError::Corrupt { .. }) = &result {
            // The corrupt input is left out now (and was logged): build around it at once
            // rather than at the level's next boundary (a day, for snapshots).
            result = self.pass(level, now, on_schedule).await;
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

    async fn pass(
        &self,
        level: Level,
        now: Timestamp,
        on_schedule: bool,
    ) -> Result<Outcome, CompactError> {
        if let Some(interval) = self.interval(level).filter(|_| on_schedule) {
            let boundary = schedule::prev_boundary(now, interval);
            let index = self.index.lock();
            if index.newest(level).is_some_and(|f| f.modified > boundary) {
                return Ok(Outcome::TooEarly);
            }
        }
        if level == Level::SNAPSHOT {
            return self.snapshot(!on_schedule).await;
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
    /// `forced`: written even if one file restores as well (a snapshot asked for).
    async fn snapshot(&self, forced: bool) -> Result<Outcome, CompactError> {
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
            snapshot_inputs(&index, forced)?
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
            &self.local_l0,
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
                let corrupt = merge::find_corrupt(&self.replica, inputs, &self.local_l0).await;
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

    /// One retention pass at `now`: deletes what retention says no restore point needs. Returns how
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
    pub(super) index: SharedIndex,
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
fn snapshot_inputs(index: &LevelIndex, forced: bool) -> Result<Option<Vec<FileInfo>>, PlanError> {
    let all = index.all();
    let plan = match plan_files(&all, Txid::ZERO, None, &[]) {
        Ok(plan) => plan,
        Err(PlanError::Gap { reached, .. }) if reached > Txid::ZERO => {
            plan_files(&all, Txid::ZERO, Some(reached), &[])?
        }
        Err(e) => return Err(e),
    };
    // One file is a snapshot already (the newest, or a full copy in a lower level that
    // restores as well where it is): copying it would only duplicate it, unless asked.
    Ok((plan.files.len() > 1 || forced).then_some(plan.files))
}
