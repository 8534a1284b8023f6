//! A capture as the ticker runs it: a tick whenever the database changed, the final sync
//! when told to stop, and the following of a database file replaced under its path.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ltx::Txid;
use tokio::sync::watch;

use super::database::{Capture, Closed, FOLLOW_CHECKPOINT_POLL};
use super::sync::Synced;
use super::{CaptureError, Status};
use crate::ticker;

impl std::fmt::Debug for CaptureJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureJob").finish_non_exhaustive()
    }
}

/// How a capture's work ended: its final sync's outcome, or the panic message of a bug.
pub(super) type Finished = Result<Result<(), CaptureError>, String>;

/// A capture as the [`Ticker`] runs it: a tick whenever the database changed (or a
/// checkpoint is due, or the last tick failed), until told to stop, then a final sync. A
/// database replaced under its path is followed: the capture closes the old file and opens
/// the new one (retrying each tick until it can).
pub(super) struct CaptureJob {
    pub(super) state: Mutex<JobState>,
    pub(super) stopping: std::sync::atomic::AtomicBool,
    /// Syncs asked for ([`Replication::sync`]), numbered; `served` is the number the last
    /// finished tick had seen when it started, with its error if it failed.
    pub(super) asked: std::sync::atomic::AtomicU64,
    pub(super) served: watch::Sender<(u64, Option<String>)>,
    pub(super) staged: watch::Sender<Txid>,
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) fatal: watch::Sender<Option<String>>,
    pub(super) finished: Mutex<Option<tokio::sync::oneshot::Sender<Finished>>>,
    pub(super) interval: Duration,
    /// How soon after a write to the database's files it is staged.
    pub(super) debounce: Duration,
}

pub(super) struct JobState {
    pub(super) db: Option<CaptureSlot>,
    pub(super) backoff: Duration,
    /// The last tick failed: the next one runs without a probe.
    pub(super) failing: bool,
}

impl CaptureJob {
    pub(super) fn finish(&self, result: Finished) {
        if let Some(tx) = self.finished.lock().unwrap().take() {
            let _ = tx.send(result);
        }
    }
}

impl ticker::Job for CaptureJob {
    fn probe(&self, thorough: bool) -> bool {
        let state = self.state.lock().unwrap();
        match &state.db {
            Some(CaptureSlot::Open(capture)) => state.failing || !capture.idle(thorough),
            _ => true,
        }
    }

    fn idle_interval(&self) -> Duration {
        self.interval
    }

    fn debounce(&self) -> Duration {
        self.debounce
    }

    fn work(&self) -> Option<Duration> {
        let started = Instant::now();
        let mut state = self.state.lock().unwrap();
        let stopping = self.stopping.load(std::sync::atomic::Ordering::SeqCst);
        let asked = self.asked.load(std::sync::atomic::Ordering::SeqCst);
        let mut report = |file: &Synced| {
            if let Synced::Staged { range, full, .. } = file {
                let mut s = self.status.lock().unwrap();
                s.staged = range.max;
                s.full_copies += u64::from(*full);
                self.staged.send_replace(range.max);
            }
        };
        let db = state.db.take()?;
        let (db, result) = step(db, stopping, true, &mut report);
        {
            let mut s = self.status.lock().unwrap();
            s.syncs += 1;
            s.failed_syncs += u64::from(result.is_err());
            s.sync_busy += started.elapsed();
            if result.is_ok() {
                s.last_sync = Some(jiff::Timestamp::now());
            }
        }
        self.served
            .send_replace((asked, result.as_ref().err().map(ToString::to_string)));
        // Ticks keep to the interval (a slow tick does not push the next one back), and
        // back off after errors.
        let wait = match &result {
            Ok(()) => {
                state.backoff = self.interval;
                state.failing = false;
                self.status.lock().unwrap().sync_error = None;
                let wait = self.interval.saturating_sub(started.elapsed());
                match &db {
                    CaptureSlot::Open(capture) if capture.wants_soon() => {
                        wait.min(FOLLOW_CHECKPOINT_POLL)
                    }
                    _ => wait,
                }
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "sync failed; stopping");
                self.status.lock().unwrap().sync_error = Some(e.to_string());
                self.fatal.send_replace(Some(e.to_string()));
                drop(db);
                self.finish(Ok(result));
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed; retrying");
                self.status.lock().unwrap().sync_error = Some(e.to_string());
                state.failing = true;
                state.backoff = (state.backoff * 2).min(Duration::from_secs(300));
                state.backoff
            }
        };
        if stopping {
            drop(db);
            self.finish(Ok(result));
            return None;
        }
        state.db = Some(db);
        Some(wait)
    }

    fn panicked(&self, message: String) {
        self.fatal
            .send_replace(Some(format!("the capture panicked: {message}")));
        self.finish(Err(message));
    }
}

/// Panics where a test asks for it (`STRATA_PANIC_AT=<name>`), to show what a bug in that
/// place does to the process. Debug builds only.
pub(super) fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("STRATA_PANIC_AT").is_ok_and(|at| at == name) {
        panic!("fault point {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A capture, or one waiting to reopen its database.
pub(super) enum CaptureSlot {
    Open(Box<Capture>),
    Closed(Box<Closed>),
}

/// One tick (or, when `stopping`, the final sync). A database replaced under its path is
/// closed and, if `follow`, opened again and synced at once.
pub(super) fn step(
    state: CaptureSlot,
    stopping: bool,
    follow: bool,
    report: &mut dyn FnMut(&Synced),
) -> (CaptureSlot, Result<(), CaptureError>) {
    let mut capture = match state {
        CaptureSlot::Open(capture) => capture,
        CaptureSlot::Closed(closed) => match closed.reopen() {
            Ok(capture) => Box::new(capture),
            Err(e) => return (CaptureSlot::Closed(closed), Err(e)),
        },
    };
    fault_point("tick");
    let result = if stopping {
        capture.sync_all(report).map(drop)
    } else {
        capture.tick(report)
    };
    match result {
        Err(e @ CaptureError::Replaced { .. }) => {
            tracing::warn!(error = %e, "following the file now at the path with a full copy");
            let closed = CaptureSlot::Closed(Box::new((*capture).close()));
            if follow {
                step(closed, stopping, false, report)
            } else {
                (closed, Err(e))
            }
        }
        result => (CaptureSlot::Open(capture), result),
    }
}
