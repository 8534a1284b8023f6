//! Following the primary: a poller that prepares newer maps while a reader is active, and
//! what it shares with the reader (the newest map, the one to show next, the lag).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::storage::{FileInfo, Replica};

use super::push::Pushed;
use crate::Options;
use crate::hydrate;
use crate::page_map::PageMap;
use crate::state::{self, Body, Change, Loaded, Newer, Polled, VfsError};

/// A reader is "active" this many poll intervals after its last transaction: the poller
/// runs only while a reader is active, so an idle connection costs no requests.
pub(super) const ACTIVE_INTERVALS: u32 = 10;

/// A map to show, with the small files fetched whole to build it.
pub(super) struct Pending {
    pub(super) map: Arc<PageMap>,
    pub(super) bodies: Vec<Body>,
}

impl From<Loaded> for Pending {
    fn from(l: Loaded) -> Pending {
        Pending {
            map: Arc::new(l.map),
            bodies: l.bodies,
        }
    }
}

/// What the poller and the reader share.
pub(super) struct Follow {
    /// The newest map known: the poller's base.
    pub(super) newest: Mutex<Arc<PageMap>>,
    /// A newer map than the one shown, for the next transaction.
    pub(super) pending: Mutex<Option<Pending>>,
    /// When the last poll succeeded.
    pub(super) polled: Mutex<Option<Instant>>,
    /// When the newest map was last planned from a full listing.
    pub(super) planned: Mutex<Instant>,
    /// Plan afresh at the next poll (the state shown is gone from the replica).
    pub(super) replan_now: AtomicBool,
    /// The snapshots (L9) the replica held when last listed: one that appears there alone
    /// is a new restore point, and snapshots going back are a history restarted.
    pub(super) snapshots: Mutex<Vec<FileInfo>>,
    /// Until when the poller runs (see [`ACTIVE_INTERVALS`]); `None`: pinned, no polling.
    pub(super) active_until: Mutex<Option<Instant>>,
    /// Wakes the poller.
    pub(super) wake: tokio::sync::Notify,
    /// Wakes the primary's stream reader (`primary=`).
    pub(super) wake_stream: tokio::sync::Notify,
    /// Files the primary pushed beyond `newest`.
    pub(super) pushed: Mutex<Pushed>,
    pub(super) closed: AtomicBool,
    /// With hydration on, what its task and the reader share.
    pub(super) hydration: Option<Arc<hydrate::Shared>>,
}

impl Follow {
    /// Whether a reader used the database lately (see [`ACTIVE_INTERVALS`]).
    pub(super) fn is_active(&self) -> bool {
        self.active_until
            .lock()
            .unwrap()
            .is_some_and(|until| until > Instant::now())
    }

    /// Waits until a reader is active, on `wake` while none is; `false` once closed.
    pub(super) async fn until_active(&self, wake: &tokio::sync::Notify) -> bool {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            if self.is_active() {
                return true;
            }
            wake.notified().await;
        }
    }

    /// The replica's state followed is now `map`: pushed files it holds are let go.
    pub(super) fn set_newest(&self, map: Arc<PageMap>) {
        let mut newest = self.newest.lock().unwrap();
        self.pushed.lock().unwrap().prune(&map);
        *newest = map;
    }

    /// A successful poll: the lag restarts, and a newer map is offered. Nothing, once a pin
    /// stopped the following meanwhile.
    pub(super) fn record(&self, polled: Polled) {
        if self.active_until.lock().unwrap().is_none() {
            return;
        }
        *self.polled.lock().unwrap() = Some(Instant::now());
        *self.snapshots.lock().unwrap() = polled.snapshots;
        if let Some(newer) = polled.newer {
            self.offer(newer);
        }
    }

    /// A newer map from a poll. An extension of an earlier map, or a plan that continues
    /// it, is kept only if no map at least as new is known (a poll from an older base can
    /// finish after one from a newer); a map that replaces the state followed (checked to be
    /// gone from the replica) is kept whatever its TXID, in a new epoch.
    pub(super) fn offer(&self, newer: Newer) {
        let mut newest = self.newest.lock().unwrap();
        let Newer { mut loaded, change } = newer;
        let keep = match change {
            Change::Extends => loaded.map.epoch == newest.epoch && loaded.map.txid >= newest.txid,
            Change::Planned => {
                loaded.map.epoch = newest.epoch;
                loaded.map.txid >= newest.txid
            }
            Change::Replaces => {
                loaded.map.epoch = newest.epoch + 1;
                true
            }
        };
        if keep {
            let pending = Pending::from(loaded);
            self.pushed.lock().unwrap().prune(&pending.map);
            *newest = pending.map.clone();
            if let Some(hydration) = &self.hydration {
                hydration.newer(&pending.bodies);
            }
            let mut slot = self.pending.lock().unwrap();
            // Files fetched for a pending map not yet shown are kept for the next one.
            let mut bodies = slot.take().map(|p| p.bodies).unwrap_or_default();
            bodies.extend(pending.bodies);
            *slot = Some(Pending {
                map: pending.map,
                bodies,
            });
        }
    }
}

/// Prepares newer maps while a reader is active; sleeps on `wake` otherwise.
pub(super) async fn poller(replica: Replica, options: Options, follow: Arc<Follow>) {
    while follow.until_active(&follow.wake).await {
        tokio::time::sleep(options.poll_interval).await;
        if follow.closed.load(Ordering::SeqCst) {
            return;
        }
        let base = follow.newest.lock().unwrap().clone();
        let known = follow.snapshots.lock().unwrap().clone();
        let replan = follow.planned.lock().unwrap().elapsed() >= options.replan_interval
            || follow.replan_now.swap(false, Ordering::SeqCst);
        let polled = tokio::time::timeout(options.timeout, async {
            if replan {
                // Pages that never change keep pointing at old files; retention deletes
                // those in time. A fresh plan points at what the replica holds now.
                state::replan(&replica, &base, options.whole_file_max).await
            } else {
                state::poll(&replica, &base, &known, options.whole_file_max).await
            }
        })
        .await
        .unwrap_or(Err(VfsError::Timeout(options.timeout)));
        match polled {
            Ok(polled) => {
                if replan {
                    *follow.planned.lock().unwrap() = Instant::now();
                }
                follow.record(polled);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll the replica");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
