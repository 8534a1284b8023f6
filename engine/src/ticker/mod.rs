//! One scheduler for the sync ticks of every capture in a process.
//!
//! A capture is a [`Job`]: a cheap probe (has anything been committed? a read of the
//! wal-index header and a `stat`) and the real work (stage, checkpoint). The ticker keeps one
//! queue of when each job is next due and one timer for the earliest: a process with 200
//! idle databases wakes once per sync interval, probes all that are due in one blocking call,
//! and hands only the changed ones to the blocking pool, a bounded number at a time. There
//! is no thread and no timer per database, and nothing runs between ticks.
//!
//! With file-change notification (see `watch`), a job whose database is watched is probed
//! a debounce after its files change (a few milliseconds: capture follows commits as they
//! happen) and, once quiet for a few intervals, only every [`WATCHED_PROBE_FACTOR`]
//! intervals besides: what no notification shows (a wal-index rewritten by recovery) is
//! caught then. A file event comes before the commit it belongs to is published (the
//! wal-index is updated through shared memory after the WAL is written and, with
//! `synchronous=FULL`, synced), so a probe after an event that finds nothing probes again
//! a few times, [`CHASE_PROBES`], at growing waits.
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

mod job;
mod watch;

pub(crate) use job::{Job, JobId};
use watch::DirWatch;

/// How early a job may be probed so that it shares a wake-up with others: this, or a tenth
/// of its interval if that is less (a probe that finds work starts the work, and work must
/// keep to the interval: a 100 ms interval taken 100 ms early would work on every commit).
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// How early `job` may be taken (see [`BATCH_WINDOW`]): never by much of its debounce,
/// which would work on each commit as it comes instead of on the burst.
fn batch_window(job: &dyn Job) -> Duration {
    BATCH_WINDOW
        .min(job.idle_interval() / 10)
        .min(job.debounce() / 4)
}

/// Replicas finishing a stop at once, per ticker.
const STOPS_AT_ONCE: usize = 16;

/// Probes after a file event that found nothing yet, each after twice the wait of the one
/// before (from the job's debounce): with a 5 ms debounce they cover over half a second.
const CHASE_PROBES: u32 = 7;

/// A watched job quiet for a few intervals is probed this many times less often.
const WATCHED_PROBE_FACTOR: u32 = 30;

/// How many intervals a job stays on its interval's probes after a change or its work: a
/// file event may come before the commit it belongs to is published in the wal-index.
const HOT_INTERVALS: u32 = 3;

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
    /// Where the probe grid starts.
    origin: Instant,
    /// File-change notification, if this system has it.
    watch: Option<Arc<DirWatch>>,
    /// Wakes the scheduling task: a job added, woken or finished, or the ticker dropped.
    changed: Arc<Notify>,
    /// Bounds the jobs working at once.
    permits: Arc<Semaphore>,
    /// Bounds the replicas finishing their uploads and checks at a stop at once (a store
    /// stopping hundreds of databases would otherwise send every request at the same
    /// moment).
    stop_permits: Arc<Semaphore>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The scheduling task sees the ticker gone and ends, and so does the watch's.
        self.changed.notify_one();
        if let Some(watch) = &self.watch {
            watch.close();
        }
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
    /// The database file watched for changes, if it is.
    watched: Option<std::path::PathBuf>,
    /// A file event does not bring the job forward past this (its interval since it last
    /// worked).
    not_before: Instant,
    /// Until then the job is probed every interval, watched or not.
    hot_until: Instant,
    /// A file event came since the last probe: the next one checks everything.
    nudged: bool,
    /// Probes left chasing the commit of the last file event (see [`CHASE_PROBES`]).
    chase: u32,
}

impl Entry {
    /// When to probe again after a probe found nothing: an interval from now, or many if the
    /// job is watched and quiet. The time is rounded up to a grid (a tenth of the wait, at
    /// most a second) so that quiet jobs share wake-ups instead of spreading over the wait.
    fn next_probe(&self, now: Instant, origin: Instant) -> Instant {
        let interval = self.job.idle_interval();
        let wait = if self.watched.is_some() && now >= self.hot_until {
            interval * WATCHED_PROBE_FACTOR
        } else {
            interval
        };
        let grid = (wait / 10).min(Duration::from_secs(1));
        let at = now + wait;
        let grid_ns = grid.as_nanos().max(1);
        let past = at.duration_since(origin).as_nanos();
        let rounded = past.div_ceil(grid_ns) * grid_ns;
        origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
    }
}

impl Queue {
    fn schedule(&mut self, id: JobId, at: Instant) {
        if let Some(entry) = self.jobs.get_mut(&id) {
            entry.due = Some(at);
            self.heap.push(Reverse((at, id)));
        }
    }

    /// Takes every job due by `now` (or a little later, see [`BATCH_WINDOW`]) out of the
    /// queue: each with whether it was woken (to work without a probe) and whether its probe
    /// must be thorough.
    fn take_due(&mut self, now: Instant) -> Vec<(JobId, Arc<dyn Job>, bool, bool)> {
        let mut due = Vec::new();
        let mut not_yet = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now + BATCH_WINDOW {
                break;
            }
            self.heap.pop();
            if let Some(entry) = self.jobs.get_mut(&id)
                && entry.due == Some(at)
            {
                if at > now + batch_window(&*entry.job) {
                    not_yet.push(Reverse((at, id)));
                    continue;
                }
                entry.due = None;
                let thorough = entry.watched.is_none() || std::mem::take(&mut entry.nudged);
                due.push((
                    id,
                    entry.job.clone(),
                    std::mem::take(&mut entry.woken),
                    thorough,
                ));
            }
        }
        self.heap.extend(not_yet);
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
        let watch = match DirWatch::new() {
            Ok(watch) => Some(Arc::new(watch)),
            Err(e) => {
                tracing::warn!(error = %e, "no file-change notification: idle databases are probed every sync interval");
                None
            }
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            origin: Instant::now(),
            watch,
            changed: Arc::new(Notify::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            stop_permits: Arc::new(Semaphore::new(STOPS_AT_ONCE)),
        });
        tokio::spawn(schedule(Arc::downgrade(&shared)));
        if let Some(watch) = shared.watch.clone() {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                watch
                    .run(|id| {
                        if let Some(shared) = weak.upgrade() {
                            nudge(&shared, id);
                        }
                    })
                    .await;
            });
        }
        Ticker { shared }
    }

    /// Adds a job, due at once. If `db` is given, changes to it and its WAL bring the job's
    /// probe forward (file-change notification), and it is probed less often while quiet.
    pub(crate) fn add(&self, job: Arc<dyn Job>, db: Option<&std::path::Path>) -> JobId {
        let now = Instant::now();
        let mut queue = self.shared.queue.lock().unwrap();
        let id = queue.next_id;
        queue.next_id += 1;
        let watched = db.and_then(|db| {
            let watch = self.shared.watch.as_ref()?;
            match watch.add(db, id) {
                Ok(()) => Some(db.to_owned()),
                Err(e) => {
                    tracing::warn!(db = %db.display(), error = %e, "cannot watch for changes: probing every sync interval");
                    None
                }
            }
        });
        queue.jobs.insert(
            id,
            Entry {
                job,
                due: None,
                woken: true,
                watched,
                not_before: now,
                hot_until: now,
                nudged: true,
                chase: 0,
            },
        );
        queue.schedule(id, now);
        drop(queue);
        self.shared.changed.notify_one();
        id
    }

    /// Waits for a turn to finish a stop (see `stop_permits`).
    pub(crate) async fn stop_turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.shared.stop_permits.clone().acquire_owned().await.ok()
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
        // Jobs due a little later are taken now too: one wake-up probes them all, so idle
        // databases cost a few wake-ups a second, not one each.
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
                        .map(|(id, job, woken, thorough)| {
                            let busy = woken
                                || std::panic::catch_unwind(AssertUnwindSafe(|| {
                                    job.probe(thorough)
                                }))
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
                        let now = Instant::now();
                        let mut queue = ticker.queue.lock().unwrap();
                        let origin = ticker.origin;
                        let at = queue.jobs.get_mut(&id).map(|e| {
                            if e.chase == 0 {
                                return e.next_probe(now, origin);
                            }
                            e.chase -= 1;
                            now + e.job.debounce() * (1 << (CHASE_PROBES - 1 - e.chase))
                        });
                        if let Some(at) = at {
                            queue.schedule(id, at);
                        }
                        drop(queue);
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

/// A file of the job's database changed: probe it a debounce from now (not before a
/// debounce since it last worked), chase the commit if that probe is early, and keep
/// probing it every interval for a while.
fn nudge(shared: &Shared, id: JobId) {
    let now = Instant::now();
    let mut queue = shared.queue.lock().unwrap();
    let Some(entry) = queue.jobs.get_mut(&id) else {
        return;
    };
    entry.hot_until = now + entry.job.idle_interval() * HOT_INTERVALS;
    entry.nudged = true;
    entry.chase = CHASE_PROBES;
    let at = entry.not_before.max(now + entry.job.debounce());
    if entry.due.is_some_and(|due| due > at) {
        queue.schedule(id, at);
        drop(queue);
        shared.changed.notify_one();
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
            job.panicked(panic_message(&*panic));
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
            let entry = queue.jobs.remove(&id);
            if let (Some(watch), Some(db)) = (&shared.watch, entry.and_then(|e| e.watched)) {
                watch.remove(&db, id);
            }
        }
        Some(wait) => {
            let now = Instant::now();
            let Some(entry) = queue.jobs.get_mut(&id) else {
                return;
            };
            // A watched job follows its file events: one that came while it worked brings
            // the next probe to a debounce from now.
            let watched = entry.watched.is_some();
            entry.not_before = now
                + if watched {
                    wait.min(entry.job.debounce())
                } else {
                    wait
                };
            entry.hot_until = now + entry.job.idle_interval() * HOT_INTERVALS;
            let at = if entry.woken {
                now
            } else if watched && entry.nudged {
                entry.not_before
            } else {
                now + wait
            };
            queue.schedule(id, at);
        }
    }
    drop(queue);
    shared.changed.notify_one();
}

/// The message of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
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
        interval: Duration,
        debounce: Duration,
    }

    impl Counter {
        fn new(finish_after: u32) -> Arc<Counter> {
            Counter::every(finish_after, Duration::from_millis(10))
        }

        fn every(finish_after: u32, interval: Duration) -> Arc<Counter> {
            Arc::new(Counter {
                probes: AtomicU32::new(0),
                works: AtomicU32::new(0),
                busy: AtomicBool::new(false),
                finish_after,
                running: AtomicBool::new(false),
                overlapped: AtomicBool::new(false),
                interval,
                debounce: interval,
            })
        }
    }

    impl Job for Counter {
        fn probe(&self, _: bool) -> bool {
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
            (n < self.finish_after).then_some(self.interval)
        }
        fn idle_interval(&self) -> Duration {
            self.interval
        }
        fn debounce(&self) -> Duration {
            self.debounce
        }
        fn panicked(&self, _: String) {}
    }

    /// Waits until `done` holds, failing after a deadline generous enough for a loaded
    /// machine (the test suite runs tests in parallel on two cores).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn idle_jobs_are_probed_not_worked_and_a_wake_works_at_once() {
        let ticker = Ticker::new(2);
        let jobs: Vec<_> = (0..50).map(|_| Counter::new(u32::MAX)).collect();
        let ids: Vec<_> = jobs.iter().map(|j| ticker.add(j.clone(), None)).collect();
        until("every job is probed three times", || {
            jobs.iter().all(|j| j.probes.load(Ordering::SeqCst) >= 3)
        })
        .await;
        for job in &jobs {
            // Added jobs work once (they start woken), then only probe.
            assert_eq!(job.works.load(Ordering::SeqCst), 1);
        }
        ticker.wake(ids[7]);
        until("the woken job works", || {
            jobs[7].works.load(Ordering::SeqCst) == 2
        })
        .await;
        jobs[3].busy.store(true, Ordering::SeqCst);
        until("a busy job works on each probe", || {
            jobs[3].works.load(Ordering::SeqCst) >= 4
        })
        .await;
        for (i, job) in jobs.iter().enumerate() {
            let expected = match i {
                3 => continue,
                7 => 2,
                _ => 1,
            };
            assert_eq!(job.works.load(Ordering::SeqCst), expected, "job {i}");
        }
        assert!(jobs.iter().all(|j| !j.overlapped.load(Ordering::SeqCst)));
    }

    #[tokio::test]
    async fn a_finished_job_is_forgotten() {
        let ticker = Ticker::new(1);
        let job = Counter::new(3);
        job.busy.store(true, Ordering::SeqCst);
        let id = ticker.add(job.clone(), None);
        until("the job finishes and is forgotten", || {
            ticker.shared.queue.lock().unwrap().jobs.is_empty()
        })
        .await;
        assert_eq!(job.works.load(Ordering::SeqCst), 3);
        ticker.wake(id);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(job.works.load(Ordering::SeqCst), 3);
        assert!(ticker.shared.queue.lock().unwrap().jobs.is_empty());
    }

    #[tokio::test]
    async fn a_busy_job_keeps_to_its_interval() {
        // An interval no longer than the batch window: taken early by the whole window, it
        // would work back to back (one L0 file per commit under a steady writer).
        let ticker = Ticker::new(1);
        let job = Counter::every(u32::MAX, BATCH_WINDOW);
        job.busy.store(true, Ordering::SeqCst);
        ticker.add(job.clone(), None);
        tokio::time::sleep(BATCH_WINDOW * 10).await;
        let works = job.works.load(Ordering::SeqCst);
        // At most one work per interval; the lower bound only says it ran at all (a loaded
        // machine may run it late, never early).
        assert!((2..=12).contains(&works), "{works} works in 10 intervals");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watched_job_works_a_debounce_after_its_files_change_and_once_per_debounce_in_a_burst()
     {
        let dir = tempfile::tempdir().unwrap();
        let db = std::fs::canonicalize(dir.path()).unwrap().join("app.db");
        std::fs::write(&db, b"").unwrap();
        let ticker = Ticker::new(1);
        let mut counter = Counter::every(u32::MAX, Duration::from_secs(10));
        let debounce = Duration::from_millis(20);
        Arc::get_mut(&mut counter).unwrap().debounce = debounce;
        let job = counter;
        job.busy.store(true, Ordering::SeqCst);
        ticker.add(job.clone(), Some(&db));
        until("the first work (a job starts woken)", || {
            job.works.load(Ordering::SeqCst) >= 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = job.works.load(Ordering::SeqCst);
        assert_eq!(before, 1, "worked again with nothing changed");
        // Writes every 2 ms for 200 ms: worked within the burst, far sooner than the 10 s
        // interval, but at most once per debounce, not once per write.
        let wal = db.with_file_name("app.db-wal");
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            std::fs::write(&wal, b"frames").unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        until("the burst is worked", || {
            job.works.load(Ordering::SeqCst) > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let works = job.works.load(Ordering::SeqCst) - before;
        assert!(
            (1..=200 / 20 + 3).contains(&works),
            "{works} works for a 200 ms burst of writes at a 20 ms debounce"
        );
    }
}
