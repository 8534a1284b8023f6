//! One database opened through the VFS: the page map it reads from, the page cache, how
//! pages are fetched (adjacent frames in one ranged read, read-ahead while access is
//! sequential), and following the primary (a poller that prepares newer maps, applied only
//! when a read transaction starts).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use ltx::Txid;
use strata::storage::{FileInfo, Replica};

use crate::Options;
use crate::cache::{FileBodies, FrameKey, PageCache};
use crate::disk_cache::DiskCache;
use crate::hydrate::{self, Hydrated};
use crate::page_map::{Frame, PageMap};
use crate::runtime;
use crate::state::{self, Body, Change, Loaded, Newer, Polled, Target, VfsError};

/// The most pages one read-ahead fetches.
const MAX_WINDOW: u32 = 4096;

/// A read-ahead's ranged reads are cut at this many bytes and made at once: latency, not
/// bandwidth, is what a scan waits for.
const CHUNK: u64 = 512 << 10;

/// A miss this many pages past the previous read-ahead window still counts as sequential.
const SKIP: u32 = 16;

/// The pages a miss that starts a stream looks at (it fetches those that come in the same
/// request as its own).
const FRESH_WINDOW: u32 = 4;

/// How many streams of sequential misses are told apart.
const STREAMS: usize = 4;

/// Frames of one file this many bytes apart or less are read in one request (the bytes
/// between, frames of pages rewritten later, are read and dropped).
const GAP_MAX: u64 = 64 << 10;

/// A reader is "active" this many poll intervals after its last transaction: the poller
/// runs only while a reader is active, so an idle connection costs no requests.
const ACTIVE_INTERVALS: u32 = 10;

/// A database opened through the VFS.
pub struct Db {
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
    /// Changes whenever the state shown changes; presented as page 1's change counter so
    /// SQLite drops pages it cached from another state.
    generation: u32,
    target: Target,
    /// A state asked for (a pin, or back to latest) while a transaction was open.
    next: Option<(Target, Pending)>,
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

/// A map to show, with the small files fetched whole to build it.
struct Pending {
    map: Arc<PageMap>,
    bodies: Vec<Body>,
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
struct Follow {
    /// The newest map known: the poller's base.
    newest: Mutex<Arc<PageMap>>,
    /// A newer map than the one shown, for the next transaction.
    pending: Mutex<Option<Pending>>,
    /// When the last poll succeeded.
    polled: Mutex<Option<Instant>>,
    /// When the newest map was last planned from a full listing.
    planned: Mutex<Instant>,
    /// Plan afresh at the next poll (the state shown is gone from the replica).
    replan_now: AtomicBool,
    /// The snapshots (L9) the replica held when last listed: one that appears there alone
    /// is a new restore point, and snapshots going back are a history restarted.
    snapshots: Mutex<Vec<FileInfo>>,
    /// Until when the poller runs (see [`ACTIVE_INTERVALS`]); `None`: pinned, no polling.
    active_until: Mutex<Option<Instant>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
    /// With hydration on, what its task and the reader share.
    hydration: Option<Arc<hydrate::Shared>>,
}

impl Follow {
    /// A successful poll: the lag restarts, and a newer map is offered. Nothing, once a pin
    /// stopped the following meanwhile.
    fn record(&self, polled: Polled) {
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
    fn offer(&self, newer: Newer) {
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

impl Db {
    /// Opens `replica` at `target`: plans it and builds the page map.
    pub fn open(replica: Replica, options: Options, target: Target) -> Result<Db, VfsError> {
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
            active_until: Mutex::new((target == Target::Latest).then_some(now)),
            wake: tokio::sync::Notify::new(),
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
    pub fn set_connection(&self, connection: *mut *mut crate::ffi::sqlite3) {
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
    pub fn size(&self) -> u64 {
        let inner = self.inner.lock().unwrap();
        u64::from(inner.map.pages()) * inner.map.page_size.bytes() as u64
    }

    /// SQLite's lock level moves to `level`. A read transaction starts when it leaves 0:
    /// the state shown moves then, never inside a transaction.
    pub fn set_lock(&self, level: i32) -> Result<(), VfsError> {
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
            *self.follow.newest.lock().unwrap() = inner.map.clone();
            *self.follow.pending.lock().unwrap() = None;
            *self.follow.active_until.lock().unwrap() = None;
        }
        if inner.target == Target::Latest {
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
        if let Some(pending) =
            pending.filter(|p| p.map.epoch > inner.map.epoch || p.map.txid >= inner.map.txid)
        {
            self.show(inner, pending);
        }
    }

    fn show(&self, inner: &mut Inner, Pending { map, bodies }: Pending) {
        if map.page_size != inner.map.page_size {
            inner.cache = PageCache::new(self.options.cache_size, map.page_size.bytes());
        }
        inner.bodies.keep(bodies);
        inner.map = map;
        inner.generation = inner.generation.wrapping_add(1).max(1);
    }

    /// Shows `target` from the next read transaction on; returns its TXID.
    pub fn set_target(&self, target: Target) -> Result<Txid, VfsError> {
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
            let went_back = target == Target::Latest && planned.txid < newest.txid;
            planned.epoch = newest.epoch + u64::from(other_history || went_back);
        }
        if target == Target::Latest {
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
    pub fn txid(&self) -> Txid {
        let mut inner = self.inner.lock().unwrap();
        if inner.lock == 0 && inner.promise.is_none() {
            self.choose_next(&mut inner);
            inner.promise = Some(Promise {
                until_commit: self.in_application_transaction() == Some(true),
            });
        }
        inner.map.txid
    }

    /// Seconds since the last successful poll; `None` if none has succeeded.
    pub fn lag(&self) -> Option<f64> {
        self.follow
            .polled
            .lock()
            .unwrap()
            .map(|at| at.elapsed().as_secs_f64())
    }

    /// The TXID the hydrated local copy in use holds, if there is one.
    pub fn hydrated(&self) -> Option<Txid> {
        self.inner
            .lock()
            .unwrap()
            .hydrated
            .as_ref()
            .map(Hydrated::txid)
    }

    /// The target shown.
    pub fn target(&self) -> Target {
        let inner = self.inner.lock().unwrap();
        inner.next.as_ref().map_or(inner.target, |(t, _)| *t)
    }

    /// Fills `buf` from byte `offset` of the database. Returns `false` for a short read
    /// (past the end; the rest is zeroed).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<bool, VfsError> {
        let mut inner = self.inner.lock().unwrap();
        let page_size = inner.map.page_size.bytes() as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let pgno = at / page_size + 1;
            if pgno > u64::from(inner.map.pages()) {
                buf[done..].fill(0);
                return Ok(false);
            }
            let pgno = pgno as u32;
            let within = (at % page_size) as usize;
            let n = (page_size as usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            self.read_page(&mut inner, pgno, within, out, true)?;
            if pgno == 1 {
                patch_header(&inner, within, out);
            }
            done += n;
        }
        Ok(true)
    }

    fn read_page(
        &self,
        inner: &mut Inner,
        pgno: u32,
        within: usize,
        out: &mut [u8],
        retry: bool,
    ) -> Result<(), VfsError> {
        let Some(frame) = inner.map.frame(pgno) else {
            out.fill(0);
            return Ok(());
        };
        if let Some(hydrated) = inner
            .hydrated
            .as_ref()
            .filter(|h| h.holds(&inner.map, frame))
        {
            match hydrated.read(pgno, within, out) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    crate::report(
                        crate::ffi::SQLITE_IOERR,
                        &format!(
                            "strata vfs: cannot read the hydrated file: {e}; reading from the replica"
                        ),
                    );
                    inner.hydrated = None;
                }
            }
        }
        let file = &inner.map.files[frame.file as usize];
        if let Some(reason) = self.follow.hydration.as_ref().and_then(|h| h.corrupt(file)) {
            return Err(VfsError::Corrupt {
                file: file.to_string(),
                reason,
            });
        }
        let key = FrameKey::new(inner.map.ids[frame.file as usize], frame.offset);
        if let Some(page) = inner.cache.get(&key) {
            out.copy_from_slice(&page[within..within + out.len()]);
            return Ok(());
        }
        match self.fetch(inner, pgno) {
            Err(e) if retry && e.is_not_found() => {
                // Compaction and retention moved on: plan the same TXID again, retry once.
                let replica = self.replica.clone();
                let txid = inner.map.txid;
                let whole = self.options.whole_file_max;
                let loaded = runtime::run(self.options.timeout, async move {
                    state::load(&replica, Target::Txid(txid), whole).await
                });
                let history = inner.map.history;
                let loaded = match loaded {
                    // The same TXID of another history is not the state this transaction
                    // reads: as good as gone.
                    Ok(l) if l.map.history != 0 && history != 0 && l.map.history != history => {
                        Err(VfsError::Gone {
                            txid,
                            plan: strata::restore::PlanError::Unavailable {
                                target: txid,
                                available: "the replica holds another history now".to_owned(),
                            },
                        })
                    }
                    Ok(l) => Ok(l),
                    Err(VfsError::Plan(plan)) => Err(VfsError::Gone { txid, plan }),
                    Err(e) => Err(e),
                };
                let loaded = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        // The state is gone: the next transaction shows what the replica
                        // restores to now, planned at the next poll.
                        if matches!(e, VfsError::Gone { .. }) && inner.target == Target::Latest {
                            self.follow.replan_now.store(true, Ordering::SeqCst);
                            self.follow.wake.notify_one();
                        }
                        return Err(e);
                    }
                };
                let mut map = loaded.map;
                map.epoch = inner.map.epoch;
                inner.bodies.keep(loaded.bodies);
                inner.map = Arc::new(map);
                return self.read_page(inner, pgno, within, out, false);
            }
            r => r?,
        }
        let page = inner.cache.get(&key).ok_or_else(|| {
            VfsError::Config(format!("page {pgno} was fetched but is not in the cache"))
        })?;
        out.copy_from_slice(&page[within..within + out.len()]);
        Ok(())
    }

    /// Fetches page `pgno` and its read-ahead ([`read_ahead`]). The frames are spread over
    /// several files (a page's newest version is in whichever file last wrote it); each
    /// file's are read in ranged reads that cover neighbours together ([`GAP_MAX`]) up to
    /// [`CHUNK`] bytes each, all at once.
    fn fetch(&self, inner: &mut Inner, pgno: u32) -> Result<(), VfsError> {
        let runs = read_ahead(inner, pgno);
        // Bytes of each run: from a file held whole, or one ranged read each, all at once.
        let mut bytes: Vec<Option<bytes::Bytes>> = runs
            .iter()
            .map(|run| {
                let body = inner.bodies.get(inner.map.ids[run.file as usize])?;
                let range = run.range.start as usize..run.range.end as usize;
                body.get(range.clone()).map(|_| body.slice(range))
            })
            .collect();
        if let Some(disk) = &self.disk {
            for (i, run) in runs.iter().enumerate() {
                if bytes[i].is_none() {
                    let f = run.file as usize;
                    bytes[i] = disk.get(&inner.map.files[f], inner.map.ids[f], &run.range);
                }
            }
        }
        let missing: Vec<(usize, FileInfo, u64, std::ops::Range<u64>)> = runs
            .iter()
            .enumerate()
            .filter(|(i, _)| bytes[*i].is_none())
            .map(|(i, run)| {
                let info = FileInfo::clone(&inner.map.files[run.file as usize]);
                (i, info, inner.map.ids[run.file as usize], run.range.clone())
            })
            .collect();
        if !missing.is_empty() {
            let replica = self.replica.clone();
            let disk = self.disk.clone();
            let fetched = runtime::run(self.options.timeout, async move {
                let reads = missing.into_iter().map(|(i, info, id, range)| {
                    let replica = replica.clone();
                    let disk = disk.clone();
                    async move {
                        let b = replica.read_range(&info, range.clone()).await?;
                        if let Some(disk) = disk {
                            // Kept in the background, checksummed as fetched.
                            tokio::task::spawn_blocking({
                                let b = b.clone();
                                move || disk.put(&info, id, &range, &b)
                            });
                        }
                        Ok::<_, VfsError>(b)
                    }
                    .map(move |r| (i, r))
                });
                Ok(futures::future::join_all(reads).await)
            })?;
            // Only the run holding the page asked for must arrive: the rest is read-ahead,
            // whose files retention may already have deleted (the page map points at them
            // until SQLite asks for one of their pages, which is then planned again).
            let own = runs
                .iter()
                .position(|run| run.frames.iter().any(|(p, _)| *p == pgno));
            for (i, b) in fetched {
                match b {
                    Ok(b) => bytes[i] = Some(b),
                    Err(e) if Some(i) == own => return Err(e),
                    Err(e) => tracing::debug!(error = %e, "read-ahead failed"),
                }
            }
        }
        let page_size = inner.map.page_size;
        for (run, bytes) in runs.into_iter().zip(bytes) {
            let Some(bytes) = bytes else {
                continue;
            };
            let file = inner.map.files[run.file as usize].clone();
            let id = inner.map.ids[run.file as usize];
            for (p, f) in run.frames {
                let start = (f.offset - run.range.start) as usize;
                let Some(frame_bytes) = bytes.get(start..start + f.size as usize) else {
                    return Err(self.corrupt(
                        &file,
                        ltx::Error::Truncated {
                            offset: f.offset,
                            what: "page frame",
                        },
                    ));
                };
                let mut page = inner.cache.spare(page_size.bytes());
                f.decode(frame_bytes, p, page_size, &mut page)
                    .map_err(|e| self.corrupt(&file, e))?;
                inner.cache.insert(FrameKey::new(id, f.offset), page);
            }
        }
        Ok(())
    }

    fn corrupt(&self, file: &strata::storage::FileInfo, error: ltx::Error) -> VfsError {
        VfsError::ltx(&self.replica, file, error)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.follow.closed.store(true, Ordering::SeqCst);
        self.follow.wake.notify_one();
        if let Some(hydration) = &self.follow.hydration {
            hydration.wake();
        }
    }
}

/// The reads that fetch page `pgno` and its read-ahead.
///
/// A miss just past the end of a recent stream's read-ahead (past pages at hand, which
/// SQLite may skip) continues that stream with a larger window; any other miss starts a
/// stream of its own and takes only the pages after it that come in its own request (frames
/// next to it in the same file), so a point lookup costs one request and a short run of rows
/// few. Several streams are told apart: a scan reads b-tree interior pages in between its
/// leaves, and an index range scan alternates between the index and the table.
fn read_ahead(inner: &mut Inner, pgno: u32) -> Vec<Run> {
    let max = MAX_WINDOW.min(cache_window(&inner.cache));
    let continued = inner.streams.iter().position(|s| {
        let skipped = s.end.saturating_add(1)..pgno;
        pgno > s.end
            && skipped.len() <= SKIP as usize
            && skipped.into_iter().all(|p| at_hand(inner, p))
    });
    let fresh = continued.is_none();
    let mut stream = match continued {
        Some(i) => inner.streams.remove(i),
        None => {
            if inner.streams.len() == STREAMS {
                inner.streams.remove(0);
            }
            Stream { end: 0, window: 1 }
        }
    };
    // Quadrupled while small: a short run of rows costs few requests.
    let window = if fresh {
        FRESH_WINDOW
    } else if stream.window < 16 {
        stream.window * 4
    } else {
        stream.window * 2
    }
    .min(max)
    .max(1);
    let end = pgno
        .saturating_add(window)
        .min(inner.map.pages().saturating_add(1));
    if fresh {
        // The end stays at the page: what it took on the way is at hand, so a miss past
        // that continues the stream.
        stream.end = pgno;
    } else {
        stream.window = window;
        stream.end = end.saturating_sub(1).max(pgno);
    }
    inner.streams.push(stream);

    // Frames to fetch, by file: the page asked for, and the window's pages not at hand.
    let mut by_file: Vec<(u32, Vec<(u32, Frame)>)> = Vec::new();
    for p in pgno..end {
        let Some(f) = inner.map.frame(p) else {
            continue;
        };
        if p != pgno && at_hand(inner, p) {
            continue;
        }
        match by_file.iter_mut().find(|(i, _)| *i == f.file) {
            Some((_, frames)) => frames.push((p, f)),
            None => by_file.push((f.file, vec![(p, f)])),
        }
    }
    // Each file's frames in runs of ranges close enough to read as one.
    let mut runs: Vec<Run> = Vec::new();
    for (file, mut frames) in by_file {
        frames.sort_by_key(|(_, f)| f.offset);
        for (p, f) in frames {
            let frame_end = f.offset + u64::from(f.size);
            match runs.last_mut() {
                Some(run)
                    if run.file == file
                        && f.offset >= run.range.end
                        && f.offset - run.range.end <= GAP_MAX
                        && run.range.end - run.range.start < CHUNK =>
                {
                    run.range.end = frame_end;
                    run.frames.push((p, f));
                }
                _ => runs.push(Run {
                    file,
                    range: f.offset..frame_end,
                    frames: vec![(p, f)],
                }),
            }
        }
    }
    if fresh {
        runs.retain(|run| run.frames.iter().any(|(p, _)| *p == pgno));
    }
    runs
}

/// A run of misses at ascending pages: the last page its read-ahead fetched, and the size of
/// that read-ahead in pages.
struct Stream {
    end: u32,
    window: u32,
}

/// Frames of one file read in one request: bytes `range` of file `file` of the map.
struct Run {
    file: u32,
    range: std::ops::Range<u64>,
    frames: Vec<(u32, Frame)>,
}

/// Whether page `pgno` reads without a request: no file holds it (zeros), or its frame is
/// cached, or the hydrated copy holds it.
fn at_hand(inner: &Inner, pgno: u32) -> bool {
    let Some(f) = inner.map.frame(pgno) else {
        return true;
    };
    inner
        .cache
        .contains(&FrameKey::new(inner.map.ids[f.file as usize], f.offset))
        || inner
            .hydrated
            .as_ref()
            .is_some_and(|h| h.holds(&inner.map, f))
}

/// The read-ahead window may take at most half the cache.
fn cache_window(cache: &PageCache) -> u32 {
    u32::try_from(cache.capacity() / 2)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Page 1 as SQLite should see it: rollback-journal mode (so it never looks for a WAL), and
/// a change counter that moves with the state shown, with the in-header size valid for it.
fn patch_header(inner: &Inner, within: usize, out: &mut [u8]) {
    let generation = inner.generation.to_be_bytes();
    let pages = inner.map.pages().to_be_bytes();
    let patches: [(usize, &[u8]); 5] = [
        (18, &[1]),
        (19, &[1]),
        (24, &generation),
        (28, &pages),
        (92, &generation),
    ];
    for (at, bytes) in patches {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(slot) = (at + i).checked_sub(within).and_then(|j| out.get_mut(j)) {
                *slot = *b;
            }
        }
    }
}

/// Prepares newer maps while a reader is active; sleeps on `wake` otherwise.
async fn poller(replica: Replica, options: Options, follow: Arc<Follow>) {
    loop {
        if follow.closed.load(Ordering::SeqCst) {
            return;
        }
        let active = follow
            .active_until
            .lock()
            .unwrap()
            .is_some_and(|until| until > Instant::now());
        if !active {
            follow.wake.notified().await;
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use strata::storage::ReplicaUrl;

    /// The fixture restored by strata at every TXID 1..=16, as bytes.
    fn restores() -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        (1..=16u64)
            .map(|t| {
                let out = dir.path().join(format!("{t}.db"));
                rt.block_on(strata::restore::restore(
                    &fixture(),
                    strata::restore::Target::Txid(Txid::new(t)),
                    &out,
                    &strata::restore::RestoreOptions::default(),
                    Arc::new(strata::restore::NoProgress),
                ))
                .unwrap();
                std::fs::read(&out).unwrap()
            })
            .collect()
    }

    /// `restored` with page 1's fields as the VFS presents them (taken from `read`):
    /// journal mode, change counter, size, version-valid-for.
    fn as_presented(read: &[u8], restored: &[u8]) -> Vec<u8> {
        let mut want = restored.to_vec();
        for range in [18..20, 24..32, 92..96] {
            want[range.clone()].copy_from_slice(&read[range]);
        }
        want
    }

    fn fixture() -> Replica {
        dir_replica(&fixture_root())
    }

    /// The replica in directory `root`.
    fn dir_replica(root: &std::path::Path) -> Replica {
        Replica::open(&ReplicaUrl::File {
            root: root.to_owned(),
        })
        .unwrap()
    }

    /// A copy of the fixture replica that a test may damage.
    fn fixture_copy() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        copy_dir(&fixture_root(), root.path());
        root
    }

    /// Every byte a reader sees equals a restore at the same TXID, except page 1's header
    /// fields the VFS presents differently (journal mode, change counter, size).
    #[test]
    fn every_page_at_every_txid_equals_the_restore() {
        for (txid, want) in (1..=16u64).zip(restores()) {
            let target = Target::Txid(Txid::new(txid));
            let db = Db::open(fixture(), Options::default(), target).unwrap();
            db.set_lock(1).unwrap();
            assert_eq!(db.size(), want.len() as u64, "txid {txid}");
            // Read in pieces of odd sizes too: the header read SQLite makes is 100 bytes.
            let mut got = vec![0u8; want.len()];
            let (head, rest) = got.split_at_mut(100);
            assert!(db.read(head, 0).unwrap());
            assert!(db.read(rest, 100).unwrap());
            assert_eq!((got[18], got[19]), (1, 1), "rollback-journal mode");
            assert_eq!(
                got[24..28],
                got[92..96],
                "change counter and version-valid-for"
            );
            assert_eq!(
                u32::from_be_bytes(got[28..32].try_into().unwrap()) as usize,
                want.len() / 4096
            );
            assert!(
                got == as_presented(&got, &want),
                "txid {txid}: pages differ from the restore"
            );
            // Past the end: a short read, zero-filled.
            let mut past = [7u8; 16];
            assert!(!db.read(&mut past, want.len() as u64).unwrap());
            assert_eq!(past, [0; 16]);
        }
    }

    #[test]
    fn a_new_state_is_shown_only_when_a_transaction_starts() {
        let db = Db::open(fixture(), Options::default(), Target::Latest).unwrap();
        assert_eq!(db.txid(), Txid::new(16));
        db.set_lock(1).unwrap();
        let counter = |db: &Db| {
            let mut head = [0u8; 100];
            db.read(&mut head, 0).unwrap();
            u32::from_be_bytes(head[24..28].try_into().unwrap())
        };
        let before = counter(&db);
        // Pinned while a transaction is open: the transaction keeps its state.
        assert_eq!(
            db.set_target(Target::Txid(Txid::new(5))).unwrap(),
            Txid::new(5)
        );
        assert_eq!(counter(&db), before);
        assert_eq!(
            db.txid(),
            Txid::new(16),
            "the TXID the open transaction reads"
        );
        assert_eq!(db.size(), 10 * 4096, "the newest state, after a VACUUM");
        db.set_lock(0).unwrap();
        db.set_lock(1).unwrap();
        assert_ne!(counter(&db), before);
        assert_eq!(db.size(), 16 * 4096);
        assert_eq!(db.txid(), Txid::new(5));
        assert_eq!(db.target(), Target::Txid(Txid::new(5)));
    }

    /// SQLite may call the VFS from a thread of the application's own tokio runtime: the
    /// wait for the VFS's runtime must not depend on the caller's.
    #[test]
    fn reads_from_inside_another_tokio_runtime_complete() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let options = Options {
                    cache_size: 0,
                    ..Options::default()
                };
                let db = Db::open(fixture(), options, Target::Latest).unwrap();
                db.set_lock(1).unwrap();
                let mut page = vec![0u8; 4096];
                for _ in 0..50 {
                    for pgno in 0..10u64 {
                        db.read(&mut page, pgno * 4096).unwrap();
                    }
                }
            });
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("reads from a tokio worker hung");
    }

    #[test]
    fn an_empty_or_missing_replica_fails_to_open_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir_replica(dir.path());
        let e = Db::open(empty, Options::default(), Target::Latest)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no LTX files"), "{e}");
        let e = Db::open(fixture(), Options::default(), Target::Txid(Txid::new(99)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a restore point"), "{e}");
    }

    /// Seeded storage faults under a reader (`STRATA_VFS_FAULT_SEEDS=1,2,3` replays; steps
    /// from `STRATA_VFS_FAULT_STEPS`): failed and delayed GETs and LISTs, bodies broken
    /// mid-transfer, files deleted as they are read, flipped bytes in files fetched whole.
    /// Every read either fails (an error for SQLite) or returns exactly the restore's bytes.
    #[test]
    fn storage_faults_give_errors_never_wrong_bytes() {
        use strata::storage::faults::Fault;
        let expected = restores();
        let seeds: Vec<u64> = std::env::var("STRATA_VFS_FAULT_SEEDS")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                vec![now.as_nanos() as u64, now.as_nanos() as u64 ^ 0xa5a5]
            });
        let steps: u32 = std::env::var("STRATA_VFS_FAULT_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40);
        for seed in seeds {
            eprintln!("storage faults from STRATA_VFS_FAULT_SEEDS={seed}");
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let dir = fixture_copy();
            let (replica, faults) = dir_replica(dir.path()).with_faults();
            let whole = next(2) == 0;
            let options = Options {
                cache_size: 8 * 4096,
                whole_file_max: if whole { 1 << 20 } else { 0 },
                timeout: Duration::from_secs(5),
                ..Options::default()
            };
            let db = Db::open(replica, options, Target::Latest).unwrap();
            let (mut good, mut failed) = (0, 0);
            for step in 0..steps {
                let fault = match next(if whole { 7 } else { 6 }) {
                    0 => Fault::FailGet,
                    1 => Fault::FailList,
                    2 => Fault::Delay(Duration::from_millis(5)),
                    3 => Fault::BreakGetAfter(next(300)),
                    4 => Fault::VanishOnGet,
                    5 => Fault::FailGet,
                    _ => Fault::CorruptGetAt(next(4000)),
                };
                let level = ["", "ltx/0/", "ltx/1/", "ltx/2/", "ltx/9/"][next(5) as usize];
                faults.inject(level, fault.clone(), 1 + next(3) as u32);
                let txid = 1 + next(16);
                let read = db.set_target(Target::Txid(Txid::new(txid))).and_then(|_| {
                    db.set_lock(0)?;
                    db.set_lock(1)?;
                    let mut got = vec![0u8; expected[txid as usize - 1].len()];
                    if db.size() != got.len() as u64 {
                        return Err(VfsError::Config(format!("size {}", db.size())));
                    }
                    db.read(&mut got, 0)?;
                    Ok(got)
                });
                match read {
                    Ok(got) => {
                        let want = &expected[txid as usize - 1];
                        assert!(
                            got == as_presented(&got, want),
                            "seed {seed} step {step}: wrong bytes at TXID {txid} under {fault:?} on {level:?}"
                        );
                        good += 1;
                    }
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        failed += 1;
                    }
                }
                faults.clear();
            }
            eprintln!("seed {seed}: {good} reads right, {failed} failed");
            assert!(good > 0, "seed {seed}: no read succeeded");
        }
    }

    /// Reads the whole database in one transaction.
    fn read_all(db: &Db) -> Vec<u8> {
        db.set_lock(1).unwrap();
        let mut got = vec![0u8; db.size() as usize];
        db.read(&mut got, 0).unwrap();
        db.set_lock(0).unwrap();
        got
    }

    /// Starts transactions until the hydrated copy holds `txid`.
    fn hydrated_to(db: &Db, txid: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.hydrated() != Some(Txid::new(txid)) {
            assert!(
                Instant::now() < deadline,
                "not hydrated to {txid}: {:?}",
                db.hydrated()
            );
            db.set_lock(1).unwrap();
            db.set_lock(0).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Hydration restores the database locally, follows new files into it, and then serves
    /// reads with the replica's files gone; a pin to an older state still reads the replica.
    #[test]
    fn a_hydrated_reader_follows_new_files_and_reads_without_the_replica() {
        let root = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        let l0 = root.path().join("ltx/0");
        std::fs::create_dir_all(&l0).unwrap();
        let copy_l0 = |txids: std::ops::RangeInclusive<u64>| {
            for t in txids {
                let name = format!("{t:016x}-{t:016x}.ltx");
                std::fs::copy(fixture_root().join("ltx/0").join(&name), l0.join(&name)).unwrap();
            }
        };
        copy_l0(1..=8);
        let replica = dir_replica(root.path());
        let options = Options {
            cache_size: 0,
            whole_file_max: 0,
            poll_interval: Duration::from_millis(50),
            hydrate_dir: Some(local.path().to_owned()),
            ..Options::default()
        };
        let restores = restores();
        let db = Db::open(replica, options, Target::Latest).unwrap();
        hydrated_to(&db, 8);
        let got = read_all(&db);
        assert!(got == as_presented(&got, &restores[7]), "at TXID 8");

        copy_l0(9..=16);
        hydrated_to(&db, 16);
        assert_eq!(db.txid(), Txid::new(16));
        db.set_target(Target::Txid(Txid::new(5))).unwrap();
        let got = read_all(&db);
        assert!(got == as_presented(&got, &restores[4]), "pinned at TXID 5");
        db.set_target(Target::Latest).unwrap();

        // Every page of the newest state now comes from the local copy.
        for entry in std::fs::read_dir(&l0).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let got = read_all(&db);
        assert!(
            got == as_presented(&got, &restores[15]),
            "at TXID 16, replica gone"
        );
        assert_eq!(db.hydrated(), Some(Txid::new(16)));
        drop(db);
        assert_eq!(
            std::fs::read_dir(local.path()).unwrap().count(),
            0,
            "the hydrated file is removed on close"
        );
    }

    /// Frames fetched once are read from the on-disk cache by a reader opened later: with
    /// the replica's frames damaged after the first reader, the second still reads the
    /// restore's bytes (and without the cache it does not).
    #[test]
    fn a_later_reader_reads_fetched_frames_from_the_disk_cache() {
        let root = fixture_copy();
        let disk = tempfile::tempdir().unwrap();
        let replica = || dir_replica(root.path());
        let options = |disk_cache_dir| Options {
            cache_size: 0,
            whole_file_max: 0,
            disk_cache_dir,
            ..Options::default()
        };
        let want = &restores()[15];
        let cached = Some(disk.path().to_owned());
        let first = Db::open(replica(), options(cached.clone()), Target::Latest).unwrap();
        let got = read_all(&first);
        assert!(got == as_presented(&got, want));
        drop(first);
        // The entries are written in the background.
        std::thread::sleep(Duration::from_millis(500));

        // Damage every frame byte 10 of every file (headers and indexes stay readable).
        for level in std::fs::read_dir(root.path().join("ltx")).unwrap() {
            for f in std::fs::read_dir(level.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                let mut data = std::fs::read(&path).unwrap();
                data[ltx::HEADER_SIZE + 10] ^= 0x55;
                std::fs::write(&path, data).unwrap();
            }
        }
        let uncached = Db::open(replica(), options(None), Target::Latest).unwrap();
        uncached.set_lock(1).unwrap();
        let mut page = vec![0u8; uncached.size() as usize];
        let damaged = uncached.read(&mut page, 0).is_err() || page != as_presented(&page, want);
        assert!(damaged, "the damage shows without the cache");

        let second = Db::open(replica(), options(cached), Target::Latest).unwrap();
        let got = read_all(&second);
        assert!(got == as_presented(&got, want), "read from the disk cache");
    }

    /// A file whose header covers other TXIDs than its name says is refused, naming it,
    /// read whole or by ranges.
    #[test]
    fn a_misnamed_file_is_an_error_naming_it() {
        let root = fixture_copy();
        for level in ["1", "2", "9"] {
            std::fs::remove_dir_all(root.path().join("ltx").join(level)).unwrap();
        }
        let l0 = root.path().join("ltx/0");
        let (d, e) = (
            l0.join(format!("{0:016x}-{0:016x}.ltx", 13)),
            l0.join(format!("{0:016x}-{0:016x}.ltx", 14)),
        );
        let tmp = l0.join("swap");
        std::fs::rename(&d, &tmp).unwrap();
        std::fs::rename(&e, &d).unwrap();
        std::fs::rename(&tmp, &e).unwrap();
        for whole in [0, 1 << 20] {
            let replica = dir_replica(root.path());
            let options = Options {
                whole_file_max: whole,
                ..Options::default()
            };
            let err = Db::open(replica, options, Target::Txid(Txid::new(14)))
                .err()
                .expect("a misnamed file is refused");
            let text = err.to_string();
            assert!(
                text.contains("the file name says") && text.contains("000000000000000d"),
                "{text}"
            );
        }
    }

    /// A large file that hydration finds corrupt (its checksum), with no other file to
    /// plan around it, is not served by ranged reads either: reads fail naming it.
    #[test]
    fn a_file_hydration_finds_corrupt_is_not_served() {
        let root = fixture_copy();
        let local = tempfile::tempdir().unwrap();
        for level in ["0", "1", "2"] {
            std::fs::remove_dir_all(root.path().join("ltx").join(level)).unwrap();
        }
        let snapshot = root
            .path()
            .join("ltx/9/0000000000000001-0000000000000010.ltx");
        let mut data = std::fs::read(&snapshot).unwrap();
        data[5000] ^= 0x20;
        std::fs::write(&snapshot, data).unwrap();
        let replica = dir_replica(root.path());
        let options = Options {
            cache_size: 0,
            whole_file_max: 0,
            hydrate_dir: Some(local.path().to_owned()),
            ..Options::default()
        };
        let db = Db::open(replica, options, Target::Latest).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let err = loop {
            db.set_lock(1).unwrap();
            let mut got = vec![0u8; db.size() as usize];
            let read = db.read(&mut got, 0);
            db.set_lock(0).unwrap();
            if let Err(e) = read {
                break e;
            }
            assert!(
                Instant::now() < deadline,
                "the corrupt file is still served"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = err.to_string();
        assert!(
            text.contains("is corrupt") && text.contains("0000000000000001-0000000000000010"),
            "{text}"
        );
    }

    fn fixture_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/litestream-0.5.17/replica")
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}
