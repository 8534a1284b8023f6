//! Restore: rebuild a database at a chosen point from a replica.
//!
//! 1. **Plan** ([`plan_files`]): the fewest files from nothing (a snapshot at any level) to
//!    the target TXID.
//! 2. **Fetch and decode**: each planned file is split into segments of whole frames (its
//!    page index says where they are); many segments are fetched with ranged reads and
//!    decoded on every core at once, bounded in number and size, and delivered in plan order.
//!    CRC combination joins the segments' checksums, so every file is verified in full.
//! 3. **Apply**: one thread writes each file's pages at their offsets in a temporary file
//!    beside the output, file after file in TXID order, and truncates or extends the
//!    database to each file's commit once the file's checksum has checked out.
//! 4. **Finish**: optional integrity check, fsync, rename over the output, fsync the
//!    directory.
//!
//! The temporary file always holds the database at the last fully applied TXID. If a planned
//! file disappears (retention ran), restore re-plans from that TXID and carries on; if one
//! is corrupt, it starts over on a plan that avoids it when one exists.

mod apply;
mod output;
mod pipeline;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx::{PageSize, Txid};
use tokio::sync::mpsc;

pub use crate::plan::{Plan, PlanError};
use crate::plan::{plan_files, resolve_timestamp};

use crate::storage::{FileInfo, Replica, RequestCounts, StorageError};
use apply::{Applied, Stop};
use output::Output;
pub use output::process_exists;

/// Segments in flight by default for remote stores: enough to hide ~20 ms of request
/// latency behind 1 MiB reads.
const REMOTE_CONCURRENCY: usize = 16;

/// The point to restore to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePoint {
    /// The newest TXID in the replica.
    Latest,
    /// Exactly this TXID (it must be the end of some file).
    Txid(Txid),
    /// The newest state at or before this time.
    Timestamp(jiff::Timestamp),
}

/// SQLite's check of the restored database before it replaces the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IntegrityCheck {
    /// None.
    #[default]
    None,
    /// `PRAGMA quick_check`.
    Quick,
    /// `PRAGMA integrity_check`.
    Full,
}

/// How a restore runs.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Segments fetched and decoded at once; `None` picks two per core for a local
    /// directory (nothing to wait for but the disk) and 16 for remote stores, where it hides
    /// request latency.
    pub concurrency: Option<usize>,
    /// Segment size in bytes: the most frame bytes fetched and decoded as one unit (a remote
    /// store is read eight segments per request), and the most bytes of pages a segment
    /// decodes to. Memory for data in flight stays around `2 * (concurrency + 2) * chunk_size`,
    /// plus up to eight chunks a remote read brings in ahead (one request per eight).
    pub chunk_size: u64,
    /// Replace an existing output (and remove its `-wal`, `-shm`, `-journal`).
    pub force: bool,
    /// Check the result with SQLite before it replaces the output.
    pub integrity_check: IntegrityCheck,
    /// How often to re-plan after files vanish or fail verification.
    pub max_replans: u32,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions {
            concurrency: None,
            chunk_size: 1 << 20,
            force: false,
            integrity_check: IntegrityCheck::None,
            max_replans: 5,
        }
    }
}

/// Receives progress reports; the command line draws a bar with them.
pub trait Progress: Send + Sync {
    /// A plan was made (again, after a re-plan).
    fn planned(&self, _plan: &Plan) {}
    /// More bytes of planned files arrived.
    fn fetched(&self, _bytes: u64) {}
    /// Something forced a new plan.
    fn replanned(&self, _reason: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a finished restore did.
#[derive(Clone, Debug)]
pub struct RestoreSummary {
    /// The TXID restored.
    pub txid: Txid,
    /// Files applied completely (across re-plans).
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// Page size of the database.
    pub page_size: PageSize,
    /// Size of the restored database in bytes.
    pub db_size: u64,
    /// Times the plan had to change.
    pub replans: u32,
    /// The result matched the last file's post-apply database checksum (only files written
    /// with checksums carry one; Litestream's and strata's L0 files do not).
    pub verified: bool,
    /// Requests made.
    pub requests: RequestCounts,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a restore failed. Whatever the reason, no output file is left behind. Each message is
/// complete on its own.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The replica could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No plan reaches the target.
    #[error("cannot restore: {0}")]
    Plan(PlanError),
    /// A file failed verification and no plan avoids it.
    #[error("{file} is corrupt: {error}")]
    Corrupt {
        /// The file, as `L<level>/<name>`.
        file: String,
        /// What is wrong with it.
        error: ltx::Error,
    },
    /// The only plans join files of two histories (two databases replicated to one place):
    /// they would make a database that never existed.
    #[error("cannot restore: {error}; no plan avoids joining them")]
    TwoHistories {
        /// What the headers say.
        error: ltx::Error,
    },
    /// A file's page size differs from the rest of the plan.
    #[error("{file} has page size {found}, the files before it have {expected}")]
    PageSizeMismatch {
        /// The file.
        file: String,
        /// The page size so far.
        expected: PageSize,
        /// The file's page size.
        found: PageSize,
    },
    /// The output exists and `force` was not given.
    #[error("{} already exists (use --force to replace it)", path.display())]
    OutputExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Writing the output failed.
    #[error("cannot write {}: {error}", path.display())]
    Output {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The restored database does not match the last file's post-apply checksum.
    #[error(
        "the restored database at TXID {txid} has checksum {computed}, but its last file says {expected}"
    )]
    ChecksumMismatch {
        /// The TXID restored.
        txid: Txid,
        /// The checksum the last file carries.
        expected: ltx::Checksum,
        /// The checksum of the result.
        computed: ltx::Checksum,
    },
    /// SQLite found the restored database damaged.
    #[error("integrity check failed: {result}")]
    IntegrityCheck {
        /// What SQLite reported.
        result: String,
    },
    /// Files kept vanishing or failing faster than plans could be made.
    #[error("gave up after {replans} re-plans; last problem: {last}")]
    TooManyReplans {
        /// Re-plans made.
        replans: u32,
        /// The last reason.
        last: String,
    },
}

impl From<PlanError> for RestoreError {
    fn from(e: PlanError) -> RestoreError {
        RestoreError::Plan(e)
    }
}

/// Works out the plan for `target` without fetching any file content (listings, and for a
/// timestamp a few 100-byte header reads).
pub async fn plan(replica: &Replica, target: RestorePoint) -> Result<Plan, RestoreError> {
    list_and_plan(replica, target, Txid::ZERO, &[]).await
}

/// Lists the replica and plans. A plan that finds a gap or misses its target is tried again
/// on a fresh listing (twice, 100 ms apart): the levels are listed one request each, and a
/// listing that raced retention elsewhere (one level listed before a deletion, the next
/// after) can see a gap that is not there.
async fn list_and_plan(
    replica: &Replica,
    target: RestorePoint,
    start: Txid,
    exclude: &[FileInfo],
) -> Result<Plan, RestoreError> {
    let mut attempt = 0;
    loop {
        let files = replica.list_all().await?;
        match plan_for(replica, &files, target, start, exclude).await {
            Err(RestoreError::Plan(PlanError::Gap { .. } | PlanError::Unavailable { .. }))
                if attempt < 2 =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

async fn plan_for(
    replica: &Replica,
    files: &[FileInfo],
    target: RestorePoint,
    start: Txid,
    exclude: &[FileInfo],
) -> Result<Plan, RestoreError> {
    let txid = match target {
        RestorePoint::Latest => None,
        RestorePoint::Txid(t) => Some(t),
        RestorePoint::Timestamp(ts) => Some(resolve_timestamp(replica, files, ts).await??),
    };
    Ok(plan_files(files, start, txid, exclude)?)
}

/// Restores the replica at `target` into `output`.
///
/// The replica's layout is detected first, so a Litestream replica restores whichever
/// backend wrote it.
pub async fn restore(
    replica: &Replica,
    target: RestorePoint,
    output: &Path,
    options: &RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let out = Output::create(output, options.force)?;
    let replica = replica.clone().detect_layout().await?;
    let mut plan = list_and_plan(&replica, target, Txid::ZERO, &[]).await?;
    let target_txid = plan.txid;
    progress.planned(&plan);

    let mut applied = Applied::default();
    let mut excluded: Vec<FileInfo> = Vec::new();
    let mut suspect: Vec<FileInfo> = Vec::new();
    let mut replans = 0u32;
    loop {
        let (now, result) = run_plan(&replica, &plan, &out, applied, options, &progress).await;
        applied = now;
        let stop = match result {
            Ok(()) => break,
            Err(stop) => stop,
        };
        // Decide where to start again, or give up.
        let (start, reason) = match stop {
            Stop::Vanished { file, partial } => {
                // A file only partly applied leaves pages the new plan may not overwrite.
                let start = if partial { Txid::ZERO } else { applied.txid };
                (start, format!("{file} disappeared (retention?)"))
            }
            // Bytes that crossed a network may have been damaged on the way: such a file is
            // read once more before it counts as corrupt.
            Stop::Corrupt { file, error }
                if replica.capabilities().networked && !suspect.contains(&file) =>
            {
                let reason = format!("{file} read corrupt ({error}); reading it again");
                suspect.push(file);
                (Txid::ZERO, reason)
            }
            Stop::Corrupt { file, error } => {
                let reason = format!("{file} is corrupt: {error}");
                excluded.push(file.clone());
                let files = replica.list_all().await?;
                if plan_files(&files, Txid::ZERO, Some(target_txid), &excluded).is_err() {
                    return Err(RestoreError::Corrupt {
                        file: file.to_string(),
                        error,
                    });
                }
                (Txid::ZERO, reason)
            }
            // The files of the history that reaches the target are kept: the earlier file is
            // left out first, the later one if no plan goes around the earlier.
            Stop::TwoHistories(two) => {
                let apply::TwoHistories {
                    earlier,
                    file,
                    error,
                } = *two;
                let files = replica.list_all().await?;
                let around = [earlier.clone(), file.clone()].into_iter().find(|f| {
                    let mut without = excluded.clone();
                    without.push(f.clone());
                    plan_files(&files, Txid::ZERO, Some(target_txid), &without).is_ok()
                });
                let Some(left_out) = around else {
                    return Err(RestoreError::TwoHistories { error });
                };
                excluded.push(left_out.clone());
                (Txid::ZERO, format!("{error}: leaving {left_out} out"))
            }
            Stop::PageSize {
                file,
                expected,
                found,
            } => {
                return Err(RestoreError::PageSizeMismatch {
                    file: file.to_string(),
                    expected,
                    found,
                });
            }
            Stop::Storage(e) => return Err(e.into()),
            Stop::Output(error) => {
                return Err(out.error(error));
            }
        };
        replans += 1;
        if replans > options.max_replans {
            return Err(RestoreError::TooManyReplans {
                replans,
                last: reason,
            });
        }
        tracing::warn!(%reason, from = %start, "re-planning the restore");
        progress.replanned(&reason);
        if start == Txid::ZERO {
            out.reset()?;
            applied = applied.restart();
        }
        plan = list_and_plan(&replica, RestorePoint::Txid(target_txid), start, &excluded).await?;
        progress.planned(&plan);
    }

    let Some(page_size) = applied.page_size else {
        return Err(RestoreError::Plan(PlanError::Unavailable {
            target: target_txid,
            available: "the plan holds no file".to_owned(),
        }));
    };
    let db_size = out.file.metadata().map_err(|error| out.error(error))?.len();
    // The last file's post-apply checksum, when it has one, covers the whole result.
    let verified = match applied.post_apply {
        Some(expected) => {
            let path = out.temp_path().to_owned();
            let pages = (db_size / u64::from(page_size.get())) as u32;
            let computed = tokio::task::spawn_blocking(move || {
                let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
                ltx::database_checksum(file, page_size, pages)
            })
            .await
            .map_err(|e| out.error(std::io::Error::other(e.to_string())))?
            .map_err(|error| out.error(error))?;
            if computed != expected {
                return Err(RestoreError::ChecksumMismatch {
                    txid: target_txid,
                    expected,
                    computed,
                });
            }
            true
        }
        None => false,
    };
    if options.integrity_check != IntegrityCheck::None {
        let path = out.temp_path().to_owned();
        let full = options.integrity_check == IntegrityCheck::Full;
        tokio::task::spawn_blocking(move || output::integrity_check(&path, full))
            .await
            .expect("integrity check panicked")?;
    }
    out.commit().await?;
    Ok(RestoreSummary {
        txid: target_txid,
        files: applied.files,
        bytes: applied.bytes,
        page_size,
        db_size,
        replans,
        verified,
        requests: replica.requests(),
        elapsed: started.elapsed(),
    })
}

/// Fetches, decodes and applies one plan. The writer runs on a blocking thread and hands
/// the applied state back; when it stops, the pipeline stops with it.
async fn run_plan(
    replica: &Replica,
    plan: &Plan,
    out: &Output,
    mut applied: Applied,
    options: &RestoreOptions,
    progress: &Arc<dyn Progress>,
) -> (Applied, Result<(), Stop>) {
    let file = match out.file.try_clone() {
        Ok(f) => f,
        Err(e) => return (applied, Err(Stop::Output(e))),
    };
    let pool = pipeline::Pool::default();
    let (tx, rx) = mpsc::channel(2);
    let concurrency = options.concurrency.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        if !replica.capabilities().networked {
            2 * cores
        } else {
            REMOTE_CONCURRENCY
        }
    });
    let fetch = pipeline::spawn(
        replica.clone(),
        plan.files.clone(),
        concurrency,
        options.chunk_size,
        pool.clone(),
        tx,
    );
    let files = plan.files.clone();
    let progress = progress.clone();
    let direct = out.open_direct();
    let joined = tokio::task::spawn_blocking(move || {
        let result = apply::write_files(
            rx,
            &files,
            &file,
            direct.as_ref(),
            &mut applied,
            &pool,
            progress.as_ref(),
        );
        (applied, result)
    })
    .await;
    fetch.abort();
    joined.expect("the restore writer panicked")
}
