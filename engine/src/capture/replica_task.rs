//! One replica of a replication: its listing at start, its upload task (uploads, checks,
//! retries), and its last uploads at a stop.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::Txid;
use tokio::sync::watch;

use super::batch::Batches;
use super::panic_alarm::PanicAlarm;
use super::staging::Staging;
use super::sync::FullCopyRequest;
use super::upload::NewestStaged;
use super::{CaptureError, CaptureOptions, LevelFiles, ReplicaStatus, StopError, upload, uploader};
use crate::compact::{Clock, Compactor, Runner};
use crate::compact::{LevelIndex, SharedIndex};
use crate::storage::{FileInfo, Level, Replica, StorageError};

/// One replica: its upload task, position, compaction and retention, independent of the
/// others' (one that fails or lags holds none of them up).
#[derive(Debug)]
pub(super) struct ReplicaTask {
    pub(super) replica: Replica,
    pub(super) index: SharedIndex,
    pub(super) upload: tokio::task::JoinHandle<()>,
    pub(super) uploaded: watch::Receiver<Txid>,
    /// Wakes the upload task out of its backoff (a sync is waiting).
    pub(super) retry: Arc<tokio::sync::Notify>,
    pub(super) status: Arc<Mutex<ReplicaStatus>>,
    pub(super) uploader: Arc<tokio::sync::Mutex<uploader::Uploader>>,
    pub(super) compaction: Option<crate::compact::Runner>,
}

/// A replica's listing at start: its files, what they restore to, and the newest TXID
/// any of them reaches.
pub(super) struct Listing {
    pub(super) files: Vec<FileInfo>,
    pub(super) restores_to: Txid,
    pub(super) newest: Txid,
    /// The history (LTX node ID) of the file the replica's restore chain ends with, if it
    /// names one (Litestream's files name none).
    pub(super) tail_history: Option<u64>,
}

/// What every replica task of one replication shares.
pub(super) struct TaskShared {
    pub(super) staging: Staging,
    pub(super) full_copy: Arc<FullCopyRequest>,
    pub(super) peers: Arc<upload::StagedUse>,
    /// Replicas still written to.
    pub(super) live: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) staged: watch::Receiver<Txid>,
    pub(super) fatal: watch::Sender<Option<String>>,
}

impl ReplicaTask {
    /// Starts replica `slot`'s uploads, compaction and retention, from its listing at start
    /// (`None`: it did not answer, and is listed before its first upload).
    pub(super) fn start(
        replica: Replica,
        listing: Option<Listing>,
        slot: usize,
        shared: &TaskShared,
        options: &CaptureOptions,
    ) -> ReplicaTask {
        let (files, start) = match listing {
            Some(l) => (l.files, Some((l.restores_to, l.newest))),
            None => (Vec::new(), None),
        };
        let restores_to = start.map_or(Txid::ZERO, |s| s.0);
        let index = SharedIndex::new(LevelIndex::from_files(files, jiff::Timestamp::now()));
        let batches = Batches::new(&shared.staging, slot, options.encoding);
        let uploader = uploader::Uploader::new(
            (shared.staging.clone(), batches.clone()),
            replica.clone(),
            start,
            shared.full_copy.clone(),
            (options.replica_check_interval, options.replica_list_every),
            (index.clone(), options.compaction.is_some()),
            (shared.peers.clone(), slot),
        );
        let compaction = options.compaction.clone().map(|compaction| {
            // Each replica compacts in its own scratch directory.
            let scratch = if slot == 0 {
                shared.staging.dir().join("compact")
            } else {
                shared.staging.dir().join(format!("compact-{slot}"))
            };
            let compactor = Compactor::new(replica.clone(), index.clone(), compaction, scratch);
            Runner::start(
                compactor.with_local_l0(vec![shared.staging.l0_dir(), batches.dir().to_owned()]),
                Clock::System,
            )
        });
        let uploader = Arc::new(tokio::sync::Mutex::new(uploader));
        let status = Arc::new(Mutex::new(ReplicaStatus {
            replica: replica.name().to_owned(),
            uploaded: restores_to,
            ..ReplicaStatus::default()
        }));
        let (uploaded_tx, uploaded_rx) = watch::channel(restores_to);
        let retry = Arc::new(tokio::sync::Notify::new());
        let upload = tokio::spawn(upload_loop(
            uploader.clone(),
            UploadSignals {
                staged: shared.staged.clone(),
                uploaded: uploaded_tx,
                retry: retry.clone(),
                live: shared.live.clone(),
            },
            status.clone(),
            (options.sync_interval, index.clone()),
            PanicAlarm {
                what: "upload task",
                fatal: shared.fatal.clone(),
            },
        ));
        ReplicaTask {
            replica,
            index,
            upload,
            uploaded: uploaded_rx,
            retry,
            status,
            uploader,
            compaction,
        }
    }

    pub(super) fn status(&self) -> ReplicaStatus {
        let mut status = self.status.lock().unwrap().clone();
        status.requests = self.replica.requests();
        status.compaction = self.compaction.as_ref().map(Runner::status);
        let index = self.index.lock();
        status.levels = Level::all()
            .filter_map(|level| {
                let files = index.level(level);
                (!files.is_empty()).then(|| {
                    let bytes = files.iter().map(|f| f.file.size).sum();
                    (
                        level,
                        LevelFiles {
                            files: files.len() as u64,
                            bytes,
                        },
                    )
                })
            })
            .collect();
        status
    }
}

/// How long the other replicas get to answer their first listing once one has: one that
/// has not answered by then (a server that hangs) is listed before its first upload
/// instead, and holds up neither the capture nor the other replicas.
pub(super) const START_LISTING_GRACE: Duration = Duration::from_secs(5);

/// Lists every replica at once (see [`list_one_at_start`]), waiting for the first answer
/// however long it takes, then [`START_LISTING_GRACE`] more for the rest.
pub(super) async fn list_replicas_at_start(
    replicas: &[Replica],
) -> Vec<Result<Listing, StorageError>> {
    use futures::StreamExt;
    let mut pending: futures::stream::FuturesUnordered<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| async move { (i, list_one_at_start(r).await) })
        .collect();
    let mut results: Vec<Option<Result<_, StorageError>>> = replicas.iter().map(|_| None).collect();
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_ends {
            Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => pending.next().await,
        };
        let Some((i, result)) = next else { break };
        if result.is_ok() && grace_ends.is_none() {
            grace_ends = Some(tokio::time::Instant::now() + START_LISTING_GRACE);
        }
        results[i] = Some(result);
    }
    results
        .into_iter()
        .zip(replicas)
        .map(|(result, replica)| {
            result.unwrap_or_else(|| {
                Err(StorageError::new(
                    replica.name(),
                    crate::storage::Operation::List,
                    "",
                    crate::storage::ErrorKind::Unavailable,
                    format!(
                        "no answer within {} s of the other replicas'",
                        START_LISTING_GRACE.as_secs()
                    ),
                ))
            })
        })
        .collect()
}

/// Lists a replica at the start of a replication: its files, what they restore to, and the
/// newest TXID any reaches. Removes the scratch objects of this database's interrupted
/// uploads found on the way, whatever their age: no other process writes this replica.
async fn list_one_at_start(replica: &Replica) -> Result<Listing, StorageError> {
    let (listed, scratch) = replica.list_all_with_scratch().await?;
    if !scratch.is_empty() {
        match replica.delete_scratch(scratch).await {
            Ok(n) => tracing::info!(
                replica = replica.name(),
                n,
                "removed the scratch objects of interrupted uploads"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the scratch objects of interrupted uploads");
            }
        }
    }
    // A replica that does not restore to its newest TXID (files missing in the middle)
    // cannot be continued: only what it restores to counts.
    let restores_to = uploader::latest_restorable(&listed);
    if listed.iter().any(|f| f.range.max > restores_to) {
        tracing::warn!(replica = replica.name(), restores_to = %restores_to, "the replica does not restore to its newest file: the next file is a full copy");
    }
    let newest = listed
        .iter()
        .map(|f| f.range.max)
        .max()
        .unwrap_or(Txid::ZERO);
    // One ranged read: whose history the replica ends with.
    let tail = listed
        .iter()
        .filter(|f| f.range.max == restores_to && restores_to > Txid::ZERO)
        .min_by_key(|f| f.level.get());
    let tail_history = match tail {
        Some(f) => Some(replica.read_header(f).await?.node_id).filter(|&h| h != 0),
        None => None,
    };
    Ok(Listing {
        files: listed,
        restores_to,
        newest,
        tail_history,
    })
}

/// Uploads what is staged to one replica by `deadline`, then checks it holds it; returns
/// the newest TXID there.
pub(super) async fn finish_uploads(
    db: &Path,
    uploader: &tokio::sync::Mutex<uploader::Uploader>,
    staged: Txid,
    deadline: Instant,
) -> Result<Txid, StopError> {
    let mut uploader = uploader.lock().await;
    uploader.newest = NewestStaged::Alone;
    let mut last = None;
    // Each request is bounded by what is left of the timeout: a server that hangs does not
    // hold the stop past it.
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || CaptureError::Io {
        path: db.to_owned(),
        error: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the shutdown timeout passed with the replica not answering",
        ),
    };
    while uploader.uploaded < staged && !left().is_zero() {
        match tokio::time::timeout(left(), uploader.upload()).await {
            // Nothing left to upload, yet short of what was staged: nothing will change.
            Ok(Ok(0)) if uploader.uploaded < staged => break,
            Ok(Ok(_)) => last = None,
            Ok(Err(e)) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500).min(left())).await;
            }
            Err(_) => last = Some(timed_out()),
        }
    }
    let uploaded = uploader.uploaded;
    if uploaded < staged {
        return Err(StopError::Upload {
            replica: uploader.replica().name().to_owned(),
            staged,
            uploaded,
            error: last,
        });
    }
    // What is claimed must be in the replica now, not only when it was uploaded.
    let verified =
        match tokio::time::timeout(left().max(Duration::from_secs(5)), uploader.verify()).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
    verified.map_err(|error| StopError::Replica { error })?;
    Ok(uploader.uploaded)
}

/// How long an upload task waits at most between attempts while its replica fails.
pub(super) const UPLOAD_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What an upload task is told by the rest of the replication.
pub(super) struct UploadSignals {
    /// Files staged so far.
    pub(super) staged: watch::Receiver<Txid>,
    /// Where this replica stands, for [`Replication::sync`].
    pub(super) uploaded: watch::Sender<Txid>,
    /// Try now (a sync is waiting), whatever the backoff says.
    pub(super) retry: Arc<tokio::sync::Notify>,
    /// Replicas of the database still written to.
    pub(super) live: Arc<std::sync::atomic::AtomicUsize>,
}

/// A replica is behind from the moment it lacks something staged, not from the round that
/// sends it.
fn mark_behind(status: &Mutex<ReplicaStatus>, staged: Txid) {
    let mut s = status.lock().unwrap();
    if s.behind_since.is_none() && s.uploaded < staged {
        s.behind_since = Some(jiff::Timestamp::now());
    }
}

/// The upload task of one replica: uploads when something is staged or a check of the
/// replica is asked for, and retries with growing backoff after errors (at once when a
/// sync asks). A replica that holds another history is stopped and the task ends; the
/// other replicas go on, and the replication stops only once none is left.
pub(super) async fn upload_loop(
    uploader: Arc<tokio::sync::Mutex<uploader::Uploader>>,
    mut signals: UploadSignals,
    status: Arc<Mutex<ReplicaStatus>>,
    (interval, index): (Duration, SharedIndex),
    alarm: PanicAlarm,
) {
    let mut backoff = interval;
    // When the last round that wrote to the replica started: the next waits an interval
    // from then, so the first file (a new database's full copy) goes at once.
    let mut last_write: Option<Instant> = None;
    // A sync waiting (or a retry) does not leave the newest staged file for a later round.
    let mut waited_for = true;
    loop {
        let started = Instant::now();
        let staged_now = *signals.staged.borrow_and_update();
        // Set before the round too, so a round that hangs (a server that stopped answering)
        // shows as growing lag.
        mark_behind(&status, staged_now);
        let (result, uploaded, pending_since) = {
            let mut uploader = uploader.lock().await;
            uploader.newest = if waited_for {
                NewestStaged::Alone
            } else {
                NewestStaged::Held
            };
            let before = uploader.uploaded;
            let result = uploader.upload().await;
            if uploader.uploaded != before {
                last_write = Some(started);
            }
            (result, uploader.uploaded, uploader.pending_since())
        };
        {
            let mut s = status.lock().unwrap();
            s.uploaded = uploaded;
            s.upload_error = result.as_ref().err().map(ToString::to_string);
            s.uploads += 1;
            s.failed_uploads += u64::from(result.is_err());
            s.upload_busy += started.elapsed();
            if result.is_ok() {
                s.last_upload = Some(jiff::Timestamp::now());
            }
            // Caught up once it holds everything staged when a round finishes; otherwise
            // behind since the oldest commit it lacks was staged (a file held for the next
            // round, or what a check found it no longer restores to).
            if uploaded >= *signals.staged.borrow() {
                s.behind_since = None;
            } else {
                s.behind_since = pending_since
                    .or(s.behind_since)
                    .or_else(|| Some(jiff::Timestamp::now()));
            }
        }
        signals.uploaded.send_replace(uploaded);
        if let Err(e) = result {
            if e.stops_replica() {
                let reason = e.to_string();
                tracing::error!(error = %e, "replica stopped; the database's other replicas go on");
                uploader.lock().await.stop(&reason);
                status.lock().unwrap().stopped = Some(reason.clone());
                if signals
                    .live
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                    == 1
                {
                    alarm
                        .fatal
                        .send_replace(Some(format!("every replica is stopped: {reason}")));
                }
                return;
            }
            if e.is_fatal() {
                tracing::error!(error = %e, "upload failed; stopping");
                alarm.fatal.send_replace(Some(e.to_string()));
                return;
            }
            tracing::warn!(error = %e, "upload failed; retrying");
            backoff = (backoff * 2).min(UPLOAD_BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = signals.retry.notified() => {}
            }
            continue;
        }
        backoff = interval;
        // Still behind what was staged when the round began (the newest file held for the
        // next round, or a full copy awaited): another round an interval after this one,
        // staged changes or not. A file staged during the round is a change like any other
        // (taken for held, a new database's first full copy waited a whole interval).
        let holding = uploaded < staged_now;
        // Otherwise nothing to do until the capture stages a file or the replica must be
        // checked; an idle replica is looked at (two HEADs) now and then, so one wiped
        // meanwhile shows as behind, and gets its full copy, without waiting for a write.
        let idle_check = uploader.lock().await.idle_check_interval();
        let (staged, retried) = if holding {
            (true, false)
        } else {
            tokio::select! {
                changed = signals.staged.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(interval).await;
                    }
                    (true, false)
                }
                () = index.check_requested() => (false, false),
                () = signals.retry.notified() => (false, true),
                () = tokio::time::sleep(idle_check) => (false, false),
            }
        };
        waited_for = retried;
        if staged {
            mark_behind(&status, *signals.staged.borrow());
        }
        // Capture stages at commit speed; the replica gets at most one round (one merged L0
        // file) per interval. A sync waiting does not wait for the interval.
        let wait_from = if holding {
            Some(started)
        } else {
            last_write.filter(|_| staged)
        };
        if let Some(from) = wait_from {
            tokio::select! {
                () = tokio::time::sleep_until((from + interval).into()) => {}
                () = signals.retry.notified() => waited_for = true,
            }
        }
    }
}
