//! A database being replicated: its capture, run by the process's ticker, and a task per
//! replica; started, synced and stopped as one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::Txid;
use tokio::sync::watch;

use super::database::Capture;
use super::feed::Feed;
use super::job::{CaptureJob, CaptureSlot, Finished, JobState};
use super::replica_task::{
    Listing, ReplicaTask, TaskShared, finish_uploads, list_replicas_at_start,
};
use super::staging::Staging;
use super::{CaptureError, CaptureOptions, ReplicaStatus, Status, StopError, SyncError, upload};
use crate::compact::{CompactionStatus, Runner};
use crate::storage::Replica;
use crate::ticker::{self, Ticker};

/// A database being replicated: a capture run by the process's ticker (shared by a
/// [`Store`](crate::store::Store)'s databases) and an upload task.
#[derive(Debug)]
pub struct Replication {
    pub(super) db: PathBuf,
    pub(super) job: Arc<CaptureJob>,
    pub(super) ticker: Ticker,
    pub(super) job_id: ticker::JobId,
    pub(super) finished: tokio::sync::oneshot::Receiver<Finished>,
    pub(super) staged: watch::Receiver<Txid>,
    /// The capture's part of the status (the replicas' parts are in `tasks`).
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) fatal: watch::Receiver<Option<String>>,
    pub(super) tasks: Vec<ReplicaTask>,
    pub(super) timeout: Duration,
    /// The staged L0 files' directory, read by followers' streams (see [`Feed`]).
    pub(super) staged_l0: PathBuf,
}

impl Replication {
    /// Starts replicating the database at `db` (which must exist) to `replica`. The path is
    /// canonicalised, so two spellings of one database are one capture; a second capture of
    /// a database (in this process or another) is refused, naming the holder.
    pub async fn start(
        db: &Path,
        replica: Replica,
        options: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        Replication::start_on(None, db, vec![replica], options).await
    }

    /// [`Replication::start`] to one or more replicas, with the capture run by `ticker`
    /// (shared by the databases of a [`Store`](crate::store::Store)) or, if `None`, a ticker
    /// of its own. One capture and one staging directory serve every replica; each has its
    /// own uploads, compaction and retention.
    pub(crate) async fn start_on(
        ticker: Option<Ticker>,
        db: &Path,
        replicas: Vec<Replica>,
        options: CaptureOptions,
    ) -> Result<Replication, CaptureError> {
        if replicas.is_empty() {
            return Err(CaptureError::Io {
                path: db.to_owned(),
                error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no replica given"),
            });
        }
        let db = canonical(db)?;
        let staging = Staging::open(&db).map_err(|source| CaptureError::Io {
            path: db.clone(),
            error: source,
        })?;
        let listings = list_at_start(&replicas).await?;
        // The capture continues the furthest replica; one behind asks for a full copy when
        // the staged files do not reach back to it.
        let furthest = |of: fn(&Listing) -> Txid| {
            listings
                .iter()
                .flatten()
                .map(of)
                .max()
                .unwrap_or(Txid::ZERO)
        };
        let reach = (furthest(|l| l.restores_to), furthest(|l| l.newest));
        // A replica whose newest files are another history's (another database replicated
        // there since) is never continued with this one's files.
        let ours = super::position::Position::load(staging.dir()).map(|p| p.history);
        let foreign: Vec<&Replica> = replicas
            .iter()
            .zip(&listings)
            .filter(|(_, l)| {
                l.as_ref()
                    .and_then(|l| l.tail_history)
                    .is_some_and(|theirs| Some(theirs) != ours)
            })
            .map(|(r, _)| r)
            .collect();
        for replica in &foreign {
            tracing::warn!(db = %db.display(), replica = replica.name(), "the replica's newest files belong to another history than this database's: the next file is a full copy");
        }
        let opened = open_capture(&db, &staging, reach, !foreign.is_empty(), &options).await?;
        let status = Arc::new(Mutex::new(Status {
            staged: opened.syncer.next_txid.prev(),
            ..Status::default()
        }));
        // Files staged by an earlier run and not yet uploaded count as staged: a stop waits
        // for them too.
        let (staged_tx, staged_rx) = watch::channel(opened.syncer.next_txid.prev());
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let full_copy = opened.syncer.full_copy.clone();
        let job = Arc::new(CaptureJob {
            state: Mutex::new(JobState {
                db: Some(CaptureSlot::Open(Box::new(opened))),
                backoff: options.sync_interval,
                failing: false,
            }),
            stopping: Default::default(),
            asked: Default::default(),
            served: watch::channel((0, None)).0,
            staged: staged_tx,
            status: status.clone(),
            fatal: fatal_tx.clone(),
            finished: Mutex::new(Some(finished_tx)),
            interval: options.sync_interval,
            debounce: options.commit_debounce.min(options.sync_interval),
        });
        let ticker = ticker.unwrap_or_else(|| Ticker::new(1));
        let job_id = ticker.add(job.clone(), Some(&db));
        let staged_l0 = staging.l0_dir();
        let shared = TaskShared {
            staging,
            full_copy,
            peers: upload::StagedUse::new(replicas.len()),
            live: Arc::new(std::sync::atomic::AtomicUsize::new(replicas.len())),
            staged: staged_rx.clone(),
            fatal: fatal_tx,
        };
        let tasks = replicas
            .into_iter()
            .zip(listings)
            .enumerate()
            .map(|(slot, (replica, listing))| {
                ReplicaTask::start(replica, listing, slot, &shared, &options)
            })
            .collect();
        Ok(Replication {
            db,
            job,
            ticker,
            job_id,
            finished: finished_rx,
            staged: staged_rx,
            status,
            fatal: fatal_rx,
            tasks,
            timeout: options.shutdown_timeout,
            staged_l0,
        })
    }

    /// The database being replicated (canonical path).
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The staged files as they come, for followers' streams.
    pub fn feed(&self) -> Feed {
        Feed::new(
            self.staged_l0.clone(),
            self.staged.clone(),
            self.tasks.iter().map(|t| t.uploaded.clone()).collect(),
        )
    }

    /// The current state.
    pub fn status(&self) -> Status {
        let mut status = self.status.lock().unwrap().clone();
        status.replicas = self.tasks.iter().map(ReplicaTask::status).collect();
        status.uploaded = held_by_all(&status.replicas);
        status.upload_error = status.replicas.iter().find_map(|r| {
            r.upload_error
                .as_ref()
                .map(|e| format!("{}: {e}", r.replica))
        });
        status
    }

    /// What compaction and retention have done in the first replica (`None` if they are
    /// off).
    pub fn compaction_status(&self) -> Option<CompactionStatus> {
        self.tasks[0].compaction.as_ref().map(Runner::status)
    }

    /// What compaction and retention have done, per replica.
    pub fn compaction_statuses(&self) -> Vec<Option<CompactionStatus>> {
        self.tasks
            .iter()
            .map(|t| t.compaction.as_ref().map(Runner::status))
            .collect()
    }

    /// Returns once everything committed to the database before the call is in the
    /// replica, with the newest TXID there: a sync is run at once (not at the next
    /// interval), then its files are uploaded. An application can wait for this before
    /// acknowledging a write. Waits through upload retries: bound it with a timeout.
    pub async fn sync(&self) -> Result<Txid, SyncError> {
        self.sync_handle().await
    }

    /// [`Replication::sync`] as a future that does not borrow the replication.
    pub(crate) fn sync_handle(
        &self,
    ) -> impl std::future::Future<Output = Result<Txid, SyncError>> + Send + 'static {
        use std::sync::atomic::Ordering;
        let ticket = self.job.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut served = self.job.served.subscribe();
        self.ticker.wake(self.job_id);
        let mut fatal = self.fatal.clone();
        let staged = self.staged.clone();
        let replicas: Vec<_> = self
            .tasks
            .iter()
            .map(|t| {
                (
                    t.uploaded.clone(),
                    t.retry.clone(),
                    t.status.clone(),
                    t.replica.name().to_owned(),
                )
            })
            .collect();
        async move {
            let stopped = |fatal: &watch::Receiver<Option<String>>| {
                SyncError::Stopped(fatal.borrow().clone().unwrap_or_default())
            };
            let error = tokio::select! {
                r = served.wait_for(|(n, _)| *n >= ticket) => r.map(|r| r.1.clone()).ok(),
                _ = fatal.wait_for(Option::is_some) => None,
            };
            let Some(error) = error else {
                return Err(stopped(&fatal));
            };
            if let Some(error) = error {
                return Err(SyncError::Sync(error));
            }
            // Every replica must hold it; one waiting out a backoff tries at once.
            let target = *staged.borrow();
            let all = futures::future::join_all(replicas.into_iter().map(
                |(mut uploaded, retry, status, replica)| async move {
                    retry.notify_one();
                    match uploaded.wait_for(|t| *t >= target).await {
                        Ok(t) => Ok(*t),
                        // The upload task ended: the replica was stopped.
                        Err(_) => Err(SyncError::ReplicaStopped {
                            reason: status
                                .lock()
                                .unwrap()
                                .stopped
                                .clone()
                                .unwrap_or_else(|| "its upload task ended".to_owned()),
                            replica,
                        }),
                    }
                },
            ));
            let reached = tokio::select! {
                r = all => Some(r),
                _ = fatal.wait_for(Option::is_some) => None,
            };
            let Some(reached) = reached else {
                return Err(stopped(&fatal));
            };
            let mut lowest = Txid::MAX;
            for r in reached {
                lowest = lowest.min(r?);
            }
            Ok(lowest)
        }
    }

    /// Why the replication stopped on its own, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Resolves with the reason if the replication stops on its own (a fatal error or a
    /// bug); with `None` once it has been stopped normally.
    pub(crate) fn failed_handle(
        &self,
    ) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            fatal
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|m| m.clone())
        }
    }

    /// Resolves when the capture thread or the upload task has died (a bug): the
    /// replication no longer makes progress and should be stopped.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => "the capture ended".to_owned(),
        }
    }

    /// Stops: a final sync, then uploads what is staged to every replica at once, within
    /// the shutdown timeout. Fails unless everything committed before the call is in every
    /// replica (the error names the first replica short of it).
    pub async fn stop(self) -> Result<Status, StopError> {
        for task in &self.tasks {
            task.upload.abort();
        }
        let mut runners = Vec::new();
        let mut tasks = Vec::new();
        for mut task in self.tasks {
            runners.extend(task.compaction.take());
            tasks.push(task);
        }
        futures::future::join_all(runners.into_iter().map(Runner::stop)).await;
        for task in &mut tasks {
            let _ = (&mut task.upload).await;
        }
        let deadline = Instant::now() + self.timeout;
        // Each replica is checked before the final sync: one that lost files (wiped, put
        // back from an older copy) is owed a full copy, which the final sync then writes,
        // however idle the database. A replica that does not answer gets a part of the
        // shutdown timeout, never all of it: the others' final uploads need the rest.
        let check_by = Instant::now() + (self.timeout / 3).min(STOP_CHECK_MAX);
        futures::future::join_all(tasks.iter().map(|t| async move {
            if t.status.lock().unwrap().stopped.is_some() {
                return;
            }
            let left = check_by.saturating_duration_since(Instant::now());
            let mut uploader = t.uploader.lock().await;
            match tokio::time::timeout(left, uploader.check_now()).await {
                Ok(Ok(())) => {}
                // Another writer found at the last moment stops the replica, as it would
                // have while running: the stop then says so.
                Ok(Err(e)) if e.stops_replica() => {
                    let reason = e.to_string();
                    tracing::error!(error = %e, "replica stopped; the database's other replicas go on");
                    uploader.stop(&reason);
                    t.status.lock().unwrap().stopped = Some(reason);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot check the replica before the final sync");
                }
                Err(_) => tracing::warn!(
                    replica = t.replica.name(),
                    "the replica did not answer its check before the final sync"
                ),
            }
        }))
        .await;
        self.job
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.ticker.wake(self.job_id);
        let finished = self.finished.await;
        let final_sync = match finished {
            Ok(Ok(result)) => result,
            Ok(Err(message)) => {
                return Err(StopError::Panicked {
                    db: self.db,
                    message,
                });
            }
            Err(_) => {
                return Err(StopError::Panicked {
                    db: self.db,
                    message: "the capture ended without a final sync".to_owned(),
                });
            }
        };
        let staged = *self.staged.borrow();
        let (db, ticker) = (&self.db, &self.ticker);
        let finished = futures::future::join_all(tasks.iter().map(|t| async move {
            if let Some(reason) = t.status.lock().unwrap().stopped.clone() {
                return Err(StopError::ReplicaStopped {
                    replica: t.replica.name().to_owned(),
                    reason,
                });
            }
            // A turn among the store's stops, within the same deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let _turn = tokio::time::timeout(left, ticker.stop_turn()).await;
            finish_uploads(db, &t.uploader, staged, deadline).await
        }))
        .await;
        let mut status = self.status.lock().unwrap().clone();
        let mut short = None;
        for (task, result) in tasks.iter().zip(finished) {
            let mut replica = task.status.lock().unwrap().clone();
            match result {
                Ok(uploaded) => replica.uploaded = uploaded,
                Err(e) => {
                    short.get_or_insert(e);
                }
            }
            status.replicas.push(replica);
        }
        if let Some(e) = short {
            return Err(e);
        }
        status.uploaded = held_by_all(&status.replicas);
        final_sync.map_err(|error| StopError::Sync {
            uploaded: status.uploaded,
            error,
        })?;
        Ok(status)
    }
}

/// The database's canonical path: two spellings of one database are one capture.
fn canonical(db: &Path) -> Result<PathBuf, CaptureError> {
    std::fs::canonicalize(db).map_err(|source| CaptureError::Io {
        path: db.to_owned(),
        error: if source.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(source.kind(), "no database here")
        } else {
            source
        },
    })
}

/// Lists every replica (see [`list_replicas_at_start`]): `None` for one that did not answer
/// (it is listed before its first upload), an error if none did.
async fn list_at_start(replicas: &[Replica]) -> Result<Vec<Option<Listing>>, CaptureError> {
    let listed = list_replicas_at_start(replicas).await;
    if listed.iter().all(Result::is_err) {
        let first = listed.into_iter().find_map(Result::err);
        return Err(first.expect("at least one replica").into());
    }
    Ok(replicas
        .iter()
        .zip(listed)
        .map(|(replica, listed)| match listed {
            Ok(listed) => Some(listed),
            Err(e) => {
                tracing::warn!(replica = replica.name(), error = %e, "cannot list the replica; the others start now, it is listed before its first upload");
                None
            }
        })
        .collect())
}

/// Opens the capture on the blocking pool, again if the file was replaced meanwhile;
/// `reach` is what the replicas restore to and the newest TXID any of their files reaches.
async fn open_capture(
    db: &Path,
    staging: &Staging,
    reach: (Txid, Txid),
    foreign_tail: bool,
    options: &CaptureOptions,
) -> Result<Capture, CaptureError> {
    let (path, staging, options) = (db.to_owned(), staging.clone(), options.clone());
    tokio::task::spawn_blocking(move || {
        let mut attempt = 0;
        loop {
            match Capture::open(&path, staging.clone(), reach, foreign_tail, options.clone()) {
                Err(CaptureError::Replaced { .. }) if attempt < 3 => attempt += 1,
                result => break result,
            }
        }
    })
    .await
    .map_err(|e| CaptureError::Io {
        path: db.to_owned(),
        error: std::io::Error::other(format!("capture setup panicked: {e}")),
    })?
}

/// The newest TXID every replica holds.
pub(super) fn held_by_all(replicas: &[ReplicaStatus]) -> Txid {
    replicas
        .iter()
        .map(|r| r.uploaded)
        .min()
        .unwrap_or(Txid::ZERO)
}

/// The longest a stop waits for a replica's check before the final sync (at most a third
/// of the shutdown timeout): one that hangs must leave time for the others' uploads.
pub(super) const STOP_CHECK_MAX: Duration = Duration::from_secs(10);
