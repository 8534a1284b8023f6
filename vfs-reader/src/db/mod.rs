//! One database opened through the VFS: the page map it reads from, the page cache, how
//! pages are fetched (adjacent frames in one ranged read, read-ahead while access is
//! sequential), and following the primary (a poller that prepares newer maps, and with
//! `primary=` the files its live stream pushes, applied only when a read transaction
//! starts).

mod fetch;
mod follow;
mod push;
mod read_ahead;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ltx::Txid;
use strata::storage::Replica;

use crate::Options;
use crate::cache::{FileBodies, PageCache};
use crate::disk_cache::DiskCache;
use crate::hydrate::{self, Hydrated};
use crate::page_map::PageMap;
use crate::runtime;
use crate::state::{self, RestorePoint, VfsError};
use follow::{ACTIVE_INTERVALS, Follow, Pending, poller};
use push::{Pushed, Top, streamer};
use read_ahead::{STREAMS, Stream};

/// The longest an open waits for the primary's stream to bring its newest state.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A database opened through the VFS.
pub(crate) struct Db {
    replica: Replica,
    options: Options,
    /// Fetched frames kept on disk (`Options::disk_cache_dir`).
    disk: Option<Arc<DiskCache>>,
    inner: Mutex<Inner>,
    follow: Arc<Follow>,
    /// Where SQLite keeps the connection that uses the file (`SQLITE_FCNTL_PDB`), to ask
    /// whether the application has a transaction open.
    connection: std::sync::atomic::AtomicPtr<*mut crate::ffi::sqlite3>,
}

struct Inner {
    map: Arc<PageMap>,
    /// The replica's state `map` is built on: `map` itself, or with `top` folded in.
    base: Arc<PageMap>,
    /// Files the primary pushed that `map` holds on top of `base`.
    top: Top,
    /// Changes whenever the state shown changes; presented as page 1's change counter so
    /// SQLite drops pages it cached from another state.
    generation: u32,
    target: RestorePoint,
    /// A state asked for (a pin, or back to latest) while a transaction was open.
    next: Option<(RestorePoint, Pending)>,
    cache: PageCache,
    bodies: FileBodies,
    /// SQLite's lock level on the file.
    lock: i32,
    /// Recent sequential streams of misses, oldest first.
    streams: Vec<Stream>,
    /// The local copy reads come from where it holds the page (`Options::hydrate_dir`).
    hydrated: Option<Hydrated>,
    /// The TXID the next read transaction shows was reported (`strata_txid` outside a
    /// transaction, or inside a deferred one before its first read): it shows that one.
    promise: Option<Promise>,
}

/// A TXID reported before the read transaction that shows it started.
#[derive(Clone, Copy, Debug)]
struct Promise {
    /// Reported inside a transaction the application opened (`BEGIN`): every read
    /// transaction SQLite starts before it ends (loading the schema is one) shows it.
    until_commit: bool,
}

impl Db {
    /// Opens `replica` at `target`: plans it and builds the page map.
    pub(crate) fn open(
        replica: Replica,
        options: Options,
        target: RestorePoint,
    ) -> Result<Db, VfsError> {
        let whole = options.whole_file_max;
        let map = {
            let replica = replica.clone();
            runtime::run(options.timeout, async move {
                let replica = replica.detect_layout().await?;
                let map = state::load(&replica, target, whole).await?;
                Ok((replica, map))
            })?
        };
        let (replica, mut loaded) = map;
        let snapshots = loaded.snapshots.take().unwrap_or_default();
        let Pending { map, bodies } = Pending::from(loaded);
        let page_size = map.page_size.bytes();
        // Within the cache's budget: decoded pages, files held whole and a read-ahead together
        // stay near `cache_size`.
        let mut held = FileBodies::new(options.cache_size / 4);
        held.keep(bodies);
        let now = Instant::now();
        let follow = Arc::new(Follow {
            newest: Mutex::new(map.clone()),
            pending: Mutex::new(None),
            polled: Mutex::new(Some(now)),
            planned: Mutex::new(now),
            replan_now: AtomicBool::new(false),
            snapshots: Mutex::new(snapshots),
            active_until: Mutex::new((target == RestorePoint::Latest).then_some(now)),
            wake: tokio::sync::Notify::new(),
            wake_stream: tokio::sync::Notify::new(),
            pushed: Mutex::new(Pushed::default()),
            closed: AtomicBool::new(false),
            hydration: options
                .hydrate_dir
                .is_some()
                .then(|| Arc::new(hydrate::Shared::default())),
        });
        let disk = match &options.disk_cache_dir {
            Some(dir) => Some(Arc::new(
                DiskCache::open(dir, replica.name(), options.disk_cache_size)
                    .map_err(|e| VfsError::Config(format!("disk cache {}: {e}", dir.display())))?,
            )),
            None => None,
        };
        runtime::spawn(poller(replica.clone(), options.clone(), follow.clone()));
        if let Some(primary) = options
            .primary
            .as_ref()
            .filter(|_| target == RestorePoint::Latest)
        {
            // A new reader shows the primary's newest state from its first transaction, as
            // one that was open all along would: it waits (briefly) for the stream.
            *follow.active_until.lock().unwrap() =
                Some(now + options.poll_interval * ACTIVE_INTERVALS);
            runtime::spawn(streamer(primary.clone(), options.clone(), follow.clone()));
            let deadline = now + OPEN_WAIT.min(options.timeout);
            while !follow.pushed.lock().unwrap().settled() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if let (Some(dir), Some(shared)) = (&options.hydrate_dir, &follow.hydration) {
            let (newest, closed) = (follow.clone(), follow.clone());
            runtime::spawn(hydrate::run(
                replica.clone(),
                dir.clone(),
                shared.clone(),
                move || newest.newest.lock().unwrap().clone(),
                move || closed.closed.load(Ordering::SeqCst),
            ));
        }
        Ok(Db {
            replica,
            disk,
            inner: Mutex::new(Inner {
                base: map.clone(),
                top: Top::default(),
                map,
                generation: 1,
                target,
                next: None,
                cache: PageCache::new(options.cache_size, page_size),
                bodies: held,
                lock: 0,
                streams: Vec::with_capacity(STREAMS),
                hydrated: None,
                promise: None,
            }),
            options,
            follow,
            connection: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        })
    }

    /// Where SQLite keeps the connection using this file (`SQLITE_FCNTL_PDB`).
    pub(crate) fn set_connection(&self, connection: *mut *mut crate::ffi::sqlite3) {
        self.connection.store(connection, Ordering::SeqCst);
    }

    /// Whether the connection has a transaction of the application's open (`BEGIN` ...
    /// `COMMIT`); `None` if SQLite did not say which connection it is.
    fn in_application_transaction(&self) -> Option<bool> {
        let connection = self.connection.load(Ordering::SeqCst);
        let api = crate::api()?;
        if connection.is_null() {
            return None;
        }
        // SAFETY: SQLite passed the address of the field that names the connection using
        // the file, which lives as long as the file is open; it calls the VFS on that
        // connection's thread, so reading the field and its flag does not race.
        unsafe {
            let db = *connection;
            (!db.is_null()).then(|| (api.get_autocommit)(db) == 0)
        }
    }

    /// The database size in bytes, at the state shown.
    pub(crate) fn size(&self) -> u64 {
        let inner = self.inner.lock().unwrap();
        u64::from(inner.map.pages()) * inner.map.page_size.bytes() as u64
    }

    /// SQLite's lock level moves to `level`. A read transaction starts when it leaves 0:
    /// the state shown moves then, never inside a transaction.
    pub(crate) fn set_lock(&self, level: i32) -> Result<(), VfsError> {
        let mut inner = self.inner.lock().unwrap();
        let starting = inner.lock == 0 && level > 0;
        let ending = inner.lock > 0 && level == 0;
        inner.lock = level;
        if starting {
            self.begin_read(&mut inner)?;
        }
        // The application's transaction is over (SQLite has left it by the time it lets go
        // of the file): a TXID reported in it binds no later one.
        if ending
            && inner.promise.is_some_and(|p| p.until_commit)
            && self.in_application_transaction() == Some(false)
        {
            inner.promise = None;
        }
        Ok(())
    }

    fn begin_read(&self, inner: &mut Inner) -> Result<(), VfsError> {
        // A TXID reported before the transaction started is the one it shows: for one read
        // transaction, or for each until the application's transaction ends.
        let keep = match inner.promise {
            Some(p) if p.until_commit => {
                let open = self.in_application_transaction() != Some(false);
                if !open {
                    inner.promise = None;
                }
                open
            }
            Some(_) => {
                inner.promise = None;
                true
            }
            None => false,
        };
        if !keep {
            self.choose_next(inner);
        }
        if let Some(hydration) = &self.follow.hydration {
            hydration.adopt(&mut inner.hydrated, &inner.map);
        }
        Ok(())
    }

    /// Moves the state shown to the one the next read transaction is to show: a target set
    /// meanwhile, or the newest state known when following.
    fn choose_next(&self, inner: &mut Inner) {
        if let Some((target, pending)) = inner.next.take() {
            inner.target = target;
            self.show(inner, pending);
            self.follow.set_newest(inner.map.clone());
            *self.follow.pending.lock().unwrap() = None;
            *self.follow.active_until.lock().unwrap() = None;
        }
        if inner.target == RestorePoint::Latest {
            self.follow_newest(inner);
        }
    }

    /// At the start of a read transaction that shows the newest state: the poller runs
    /// again, and a newer state known (or found now, after a pause) is shown.
    fn follow_newest(&self, inner: &mut Inner) {
        let now = Instant::now();
        let was_idle = {
            let mut active = self.follow.active_until.lock().unwrap();
            let idle = active.is_none_or(|until| until < now);
            *active = Some(now + self.options.poll_interval * ACTIVE_INTERVALS);
            idle
        };
        if was_idle {
            self.follow.wake.notify_one();
            self.follow.wake_stream.notify_one();
        }
        // Back from idle, the newest state is fetched now rather than a poll interval late.
        let stale = self
            .follow
            .polled
            .lock()
            .unwrap()
            .is_none_or(|at| at.elapsed() > self.options.poll_interval * 2);
        if stale {
            let replica = self.replica.clone();
            let base = self.follow.newest.lock().unwrap().clone();
            let known = self.follow.snapshots.lock().unwrap().clone();
            let whole = self.options.whole_file_max;
            match runtime::run(self.options.timeout, async move {
                state::poll(&replica, &base, &known, whole).await
            }) {
                Ok(polled) => self.follow.record(polled),
                // The state already shown still reads; the lag says how old it is.
                Err(e) => tracing::warn!(error = %e, "cannot poll the replica"),
            }
        }
        let pending = self.follow.pending.lock().unwrap().take();
        let pending =
            pending.filter(|p| p.map.epoch > inner.base.epoch || p.map.txid >= inner.base.txid);
        self.show_newest(inner, pending);
    }

    /// Shows the newest state held: the replica's (`pending`, if it moved on) with the files
    /// the primary pushed on top. Within an epoch the state shown never goes back: a newer
    /// replica state below what pushed files showed waits (in `pending`) until it reaches it.
    fn show_newest(&self, inner: &mut Inner, pending: Option<Pending>) {
        let base = pending
            .as_ref()
            .map_or_else(|| inner.base.clone(), |p| p.map.clone());
        let top = match self.options.primary {
            Some(_) => self.follow.pushed.lock().unwrap().on_top(&base),
            None => None,
        };
        let txid = top.as_ref().map_or(base.txid, |(map, _)| map.txid);
        if base.epoch == inner.map.epoch && txid < inner.map.txid {
            if let Some(p) = pending {
                self.follow.pending.lock().unwrap().get_or_insert(p);
            }
            return;
        }
        if pending.is_none() && txid == inner.map.txid {
            return;
        }
        if let Some(p) = pending {
            self.show(inner, p);
        }
        if let Some((map, top)) = top {
            inner.map = Arc::new(map);
            inner.top = top;
            inner.generation = inner.generation.wrapping_add(1).max(1);
        }
    }

    fn show(&self, inner: &mut Inner, Pending { map, bodies }: Pending) {
        if map.page_size != inner.map.page_size {
            inner.cache = PageCache::new(self.options.cache_size, map.page_size.bytes());
        }
        inner.bodies.keep(bodies);
        inner.base = map.clone();
        inner.map = map;
        inner.top = Top::default();
        inner.generation = inner.generation.wrapping_add(1).max(1);
    }

    /// Shows `target` from the next read transaction on; returns its TXID.
    pub(crate) fn set_target(&self, target: RestorePoint) -> Result<Txid, VfsError> {
        let replica = self.replica.clone();
        let whole = self.options.whole_file_max;
        let map = runtime::run(self.options.timeout, async move {
            state::load(&replica, target, whole).await
        })?;
        let mut inner = self.inner.lock().unwrap();
        let mut map = Pending::from(map);
        {
            // The newest state of another history, or below the newest known, does not
            // continue what a hydrated copy holds: a new epoch.
            let newest = self.follow.newest.lock().unwrap();
            let planned = Arc::get_mut(&mut map.map).expect("not shared yet");
            let other_history =
                planned.history != 0 && newest.history != 0 && planned.history != newest.history;
            let went_back = target == RestorePoint::Latest && planned.txid < newest.txid;
            planned.epoch = newest.epoch + u64::from(other_history || went_back);
        }
        if target == RestorePoint::Latest {
            *self.follow.polled.lock().unwrap() = Some(Instant::now());
            *self.follow.planned.lock().unwrap() = Instant::now();
        }
        let txid = map.map.txid;
        inner.next = Some((target, map));
        // A target set now supersedes a TXID reported before.
        inner.promise = None;
        if inner.lock == 0 {
            self.begin_read(&mut inner)?;
        }
        Ok(txid)
    }

    /// The TXID the open read transaction shows; outside one (or inside a deferred one
    /// before its first read), the TXID the next will show: it is chosen now, and that
    /// transaction shows it (inside the application's `BEGIN`, every read until `COMMIT`).
    pub(crate) fn txid(&self) -> Txid {
        let mut inner = self.inner.lock().unwrap();
        if inner.lock == 0 && inner.promise.is_none() {
            self.choose_next(&mut inner);
            inner.promise = Some(Promise {
                until_commit: self.in_application_transaction() == Some(true),
            });
        }
        inner.map.txid
    }

    /// Seconds since the last successful poll; with a primary, since this reader last held
    /// the primary's newest TXID. `None` if never.
    pub(crate) fn lag(&self) -> Option<f64> {
        if self.options.primary.is_some() {
            return self.follow.pushed.lock().unwrap().lag();
        }
        self.follow
            .polled
            .lock()
            .unwrap()
            .map(|at| at.elapsed().as_secs_f64())
    }

    /// The TXID the hydrated local copy in use holds, if there is one.
    pub(crate) fn hydrated(&self) -> Option<Txid> {
        self.inner
            .lock()
            .unwrap()
            .hydrated
            .as_ref()
            .map(Hydrated::txid)
    }

    /// The target shown.
    pub(crate) fn target(&self) -> RestorePoint {
        let inner = self.inner.lock().unwrap();
        inner.next.as_ref().map_or(inner.target, |(t, _)| *t)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.follow.closed.store(true, Ordering::SeqCst);
        self.follow.wake.notify_one();
        self.follow.wake_stream.notify_one();
        if let Some(hydration) = &self.follow.hydration {
            hydration.wake();
        }
    }
}
