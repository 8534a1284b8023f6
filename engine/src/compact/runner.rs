//! Runs a [`Compactor`]'s passes on their schedule in tasks until stopped: every level once
//! at start, then at each UTC-aligned multiple of its interval, retention after every L1
//! pass.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

use super::{Clock, CompactionStatus, Compactor, Outcome, Schedule};
use crate::storage::Level;

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
pub struct Runner {
    compactor: Arc<Compactor>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    passes: Arc<Mutex<VecDeque<PassReport>>>,
}

/// How many passes a monitor remembers.
const PASS_HISTORY: usize = 64;

impl Runner {
    /// Starts running `compactor`'s levels on `clock`, in three lanes so a long pass never
    /// holds up a short one: L1 with retention after each pass; L2 to L8; snapshots. The
    /// last two wait, at each boundary, for L1's pass at that boundary.
    pub fn start(compactor: Compactor, clock: Clock) -> Runner {
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
        Runner {
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
