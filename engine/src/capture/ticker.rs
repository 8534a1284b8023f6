//! One scheduler for the sync ticks of every capture in a process.
//!
//! A capture is a [`Job`]: a cheap probe (has anything been committed? a read of the
//! wal-index header and a `stat`) and the real work (stage, checkpoint). The ticker keeps one
//! queue of when each job is next due and one timer for the earliest: a process with 200
//! idle databases wakes once per sync interval, probes all that are due in one blocking call,
//! and hands only the changed ones to the blocking pool, a bounded number at a time. There
//! is no thread and no timer per database, and nothing runs between ticks.
//!
//! A job is never run twice at once: while it works it is out of the queue; a wake-up
//! meanwhile (a sync asked for, a stop) makes it due again as soon as it finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// What the ticker runs.
pub(crate) trait Job: Send + Sync + 'static {
    /// Whether the job has work now. Blocking, but brief: no SQLite, no large reads.
    fn probe(&self) -> bool;
    /// Does the work. Returns when the job is next due, or `None` once it has finished
    /// (it is then forgotten).
    fn work(&self) -> Option<Duration>;
    /// How long to wait after a probe that found nothing.
    fn idle_interval(&self) -> Duration;
    /// The job panicked (a bug): it is forgotten; this reports it.
    fn panicked(&self, message: String);
}

/// Identifies a job in its ticker.
pub(crate) type JobId = u64;

/// Schedules jobs on the blocking pool of the runtime it was made on. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Ticker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker").finish_non_exhaustive()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the scheduling task: a job added, woken or finished, or the ticker dropped.
    changed: Arc<Notify>,
    /// Bounds the jobs working at once.
    permits: Arc<Semaphore>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The scheduling task sees the ticker gone and ends.
        self.changed.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    /// (due, id), earliest first; an entry whose due is not `due[id]` is stale.
    heap: BinaryHeap<Reverse<(Instant, JobId)>>,
    jobs: HashMap<JobId, Entry>,
    next_id: JobId,
}

struct Entry {
    job: Arc<dyn Job>,
    /// When it is next due; `None` while it is probing or working.
    due: Option<Instant>,
    /// Woken while busy: due again the moment it is done, and worked without a probe.
    woken: bool,
}

impl Queue {
    fn schedule(&mut self, id: JobId, at: Instant) {
        if let Some(entry) = self.jobs.get_mut(&id) {
            entry.due = Some(at);
            self.heap.push(Reverse((at, id)));
        }
    }

    /// Takes every job due by `now` out of the queue.
    fn take_due(&mut self, now: Instant) -> Vec<(JobId, Arc<dyn Job>, bool)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(entry) = self.jobs.get_mut(&id)
                && entry.due == Some(at)
            {
                entry.due = None;
                due.push((id, entry.job.clone(), std::mem::take(&mut entry.woken)));
            }
        }
        due
    }

    fn next_due(&mut self) -> Option<Instant> {
        // Stale entries are dropped as they reach the top.
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.jobs.get(&id).is_some_and(|e| e.due == Some(at)) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

impl Ticker {
    /// A ticker running at most `concurrency` jobs' work at once, scheduled from a task on
    /// the current tokio runtime. The task ends when the last handle is dropped.
    pub(crate) fn new(concurrency: usize) -> Ticker {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Arc::new(Notify::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        });
        tokio::spawn(schedule(Arc::downgrade(&shared)));
        Ticker { shared }
    }

    /// Adds a job, due at once.
    pub(crate) fn add(&self, job: Arc<dyn Job>) -> JobId {
        let mut queue = self.shared.queue.lock().unwrap();
        let id = queue.next_id;
        queue.next_id += 1;
        queue.jobs.insert(
            id,
            Entry {
                job,
                due: None,
                woken: true,
            },
        );
        queue.schedule(id, Instant::now());
        drop(queue);
        self.shared.changed.notify_one();
        id
    }

    /// Makes a job due now, skipping its probe.
    pub(crate) fn wake(&self, id: JobId) {
        let mut queue = self.shared.queue.lock().unwrap();
        let Some(entry) = queue.jobs.get_mut(&id) else {
            return;
        };
        entry.woken = true;
        if entry.due.is_some() {
            queue.schedule(id, Instant::now());
        }
        drop(queue);
        self.shared.changed.notify_one();
    }
}

/// The scheduling task: sleeps until the earliest job is due (or something changes), probes
/// the due jobs in one blocking call, and starts the work of those that need it.
async fn schedule(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let (due, next) = {
            let mut queue = strong.queue.lock().unwrap();
            let due = queue.take_due(now);
            (due, queue.next_due())
        };
        if !due.is_empty() {
            let ticker = strong.clone();
            tokio::spawn(async move {
                let probed = tokio::task::spawn_blocking(move || {
                    due.into_iter()
                        .map(|(id, job, woken)| {
                            let busy = woken
                                || std::panic::catch_unwind(AssertUnwindSafe(|| job.probe()))
                                    .unwrap_or(true);
                            (id, job, busy)
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                let Ok(probed) = probed else { return };
                for (id, job, busy) in probed {
                    if busy {
                        tokio::spawn(work(ticker.clone(), id, job));
                    } else {
                        let at = Instant::now() + job.idle_interval();
                        ticker.queue.lock().unwrap().schedule(id, at);
                        ticker.changed.notify_one();
                    }
                }
            });
            continue;
        }
        let notify = strong.changed.clone();
        drop(strong);
        let changed = notify.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// Runs one job's work under a permit and puts it back in the queue (or forgets it).
async fn work(shared: Arc<Shared>, id: JobId, job: Arc<dyn Job>) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let ran = {
        let job = job.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            std::panic::catch_unwind(AssertUnwindSafe(|| job.work()))
        })
        .await
    };
    let next = match ran {
        Ok(Ok(next)) => next,
        Ok(Err(panic)) => {
            job.panicked(super::panic_message(&*panic));
            None
        }
        Err(e) => {
            job.panicked(e.to_string());
            None
        }
    };
    let mut queue = shared.queue.lock().unwrap();
    match next {
        None => {
            queue.jobs.remove(&id);
        }
        Some(wait) => {
            let woken = queue.jobs.get(&id).is_some_and(|e| e.woken);
            let at = if woken {
                Instant::now()
            } else {
                Instant::now() + wait
            };
            queue.schedule(id, at);
        }
    }
    drop(queue);
    shared.changed.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    struct Counter {
        probes: AtomicU32,
        works: AtomicU32,
        busy: AtomicBool,
        finish_after: u32,
        running: AtomicBool,
        overlapped: AtomicBool,
    }

    impl Counter {
        fn new(finish_after: u32) -> Arc<Counter> {
            Arc::new(Counter {
                probes: AtomicU32::new(0),
                works: AtomicU32::new(0),
                busy: AtomicBool::new(false),
                finish_after,
                running: AtomicBool::new(false),
                overlapped: AtomicBool::new(false),
            })
        }
    }

    impl Job for Counter {
        fn probe(&self) -> bool {
            self.probes.fetch_add(1, Ordering::SeqCst);
            self.busy.load(Ordering::SeqCst)
        }
        fn work(&self) -> Option<Duration> {
            if self.running.swap(true, Ordering::SeqCst) {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
            self.running.store(false, Ordering::SeqCst);
            let n = self.works.fetch_add(1, Ordering::SeqCst) + 1;
            (n < self.finish_after).then_some(Duration::from_millis(10))
        }
        fn idle_interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        fn panicked(&self, _: String) {}
    }

    #[tokio::test]
    async fn idle_jobs_are_probed_not_worked_and_a_wake_works_at_once() {
        let ticker = Ticker::new(2);
        let jobs: Vec<_> = (0..50).map(|_| Counter::new(u32::MAX)).collect();
        let ids: Vec<_> = jobs.iter().map(|j| ticker.add(j.clone())).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for job in &jobs {
            // Added jobs work once (they start woken), then only probe.
            assert_eq!(job.works.load(Ordering::SeqCst), 1);
            assert!(job.probes.load(Ordering::SeqCst) >= 3);
        }
        ticker.wake(ids[7]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(jobs[7].works.load(Ordering::SeqCst), 2);
        jobs[3].busy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(jobs[3].works.load(Ordering::SeqCst) >= 4);
        assert!(jobs.iter().all(|j| !j.overlapped.load(Ordering::SeqCst)));
    }

    #[tokio::test]
    async fn a_finished_job_is_forgotten() {
        let ticker = Ticker::new(1);
        let job = Counter::new(3);
        job.busy.store(true, Ordering::SeqCst);
        let id = ticker.add(job.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(job.works.load(Ordering::SeqCst), 3);
        ticker.wake(id);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(job.works.load(Ordering::SeqCst), 3);
        assert!(ticker.shared.queue.lock().unwrap().jobs.is_empty());
    }
}
