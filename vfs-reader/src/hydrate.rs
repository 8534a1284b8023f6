//! Hydration (opt-in): the database restored into a local file in the background with the
//! restore pipeline, then read from it, and kept current by applying newer files whole (one
//! read per file, never one per page).
//!
//! The local file holds the database at one TXID `H`. A read of page `p` in the state shown
//! (TXID `M >= H`) may come from it when the file holding `p`'s newest version at `M` ends at
//! or before `H`: nothing rewrote `p` between that file and `M`, so its version at `H` is its
//! version at `M`. Every other page is read from the replica as without hydration. Moving
//! the file on to TXID `M'` is safe while the state shown is at least `M'` (the pages that
//! rewrites are not read from the file at that state), so the reader applies an update only
//! when a read transaction starts on a state at least as new.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ltx::{PageSize, Txid};
use strata::restore::{NoProgress, RestoreOptions, RestorePoint};
use strata::storage::{FileInfo, Replica};

use crate::page_map::{Frame, PageMap};
use crate::state::{self, VfsError};

/// Files to apply adding up to more than this are not fetched whole into memory: the
/// database is restored afresh at the newer state instead.
const UPDATE_MAX_BYTES: u64 = 64 << 20;

/// How long a failed hydration waits before it tries again, doubling up to
/// [`RETRY_MAX`] while it keeps failing (each try may fetch the whole database).
const RETRY_AFTER: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The database at one TXID in a local file, removed when dropped.
pub(crate) struct Hydrated {
    file: std::fs::File,
    path: PathBuf,
    txid: Txid,
    page_size: PageSize,
    /// The epoch of the maps it was made for (see [`PageMap::epoch`]): a state of another
    /// epoch does not continue it, whatever the TXIDs say.
    epoch: u64,
}

impl Hydrated {
    /// The TXID the file holds.
    pub(crate) fn txid(&self) -> Txid {
        self.txid
    }

    /// Whether `frame`, page `pgno`'s frame in `map`, may be read from the file instead.
    pub(crate) fn holds(&self, map: &PageMap, frame: Frame) -> bool {
        map.page_size == self.page_size
            && map.epoch == self.epoch
            && self.txid <= map.txid
            && map.files[frame.file as usize].range.max <= self.txid
    }

    /// Reads bytes `within..within + out.len()` of page `pgno`.
    pub(crate) fn read(&self, pgno: u32, within: usize, out: &mut [u8]) -> std::io::Result<()> {
        let at = u64::from(pgno - 1) * self.page_size.bytes() as u64 + within as u64;
        self.file.read_exact_at(out, at)
    }

    /// Moves the file on to `update`'s TXID.
    fn apply(&mut self, update: &Update) -> std::io::Result<()> {
        let page_size = self.page_size.bytes() as u64;
        for (pgno, page) in &update.pages {
            self.file
                .write_all_at(page, u64::from(pgno - 1) * page_size)?;
        }
        self.txid = update.to;
        Ok(())
    }
}

impl Drop for Hydrated {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pages that move a hydrated file from one TXID to a newer one.
pub(crate) struct Update {
    from: Txid,
    to: Txid,
    pages: Vec<(u32, Box<[u8]>)>,
}

/// What the hydration task hands the reader, in order.
enum Ready {
    /// A new file (the first, or one restored afresh).
    Base(Hydrated),
    /// An update to the last one.
    Update(Update),
}

/// What the hydration task and the reader share.
#[derive(Default)]
pub(crate) struct Shared {
    ready: Mutex<Vec<Ready>>,
    /// Files the poller fetched whole since the task last looked, by content identity: an
    /// update needs no second request for them.
    bodies: Mutex<HashMap<u64, Bytes>>,
    /// Files a restore found corrupt (file as `L<level>/<name>`, and why): their pages are
    /// not served from the replica either, since a ranged read cannot check them.
    corrupt: Mutex<HashMap<String, String>>,
    wake: tokio::sync::Notify,
}

impl Shared {
    /// A newer state is known; `bodies` are files fetched whole for it.
    pub(crate) fn newer(&self, bodies: &[crate::state::Body]) {
        self.bodies
            .lock()
            .unwrap()
            .extend(bodies.iter().map(|(_, id, b)| (*id, b.clone())));
        self.wake.notify_one();
    }

    /// Why `file` is known to be corrupt, if it is.
    pub(crate) fn corrupt(&self, file: &FileInfo) -> Option<String> {
        let corrupt = self.corrupt.lock().unwrap();
        if corrupt.is_empty() {
            return None;
        }
        corrupt.get(&file.to_string()).cloned()
    }

    /// Wakes the task (to see that the reader closed).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Brings `hydrated` up to the newest state ready that is not newer than `shown`. A
    /// failed update drops the file: reads go to the replica until a new one is ready.
    pub(crate) fn adopt(&self, hydrated: &mut Option<Hydrated>, shown: &PageMap) {
        let mut ready = self.ready.lock().unwrap();
        let usable = ready
            .iter()
            .take_while(|r| match r {
                Ready::Base(h) => h.txid <= shown.txid,
                Ready::Update(u) => u.to <= shown.txid,
            })
            .count();
        for r in ready.drain(..usable) {
            match r {
                Ready::Base(h) => *hydrated = Some(h),
                Ready::Update(u) => {
                    let Some(h) = hydrated.as_mut().filter(|h| h.txid == u.from) else {
                        continue;
                    };
                    if let Err(e) = h.apply(&u) {
                        crate::report(
                            crate::ffi::SQLITE_IOERR,
                            &format!(
                                "strata vfs: cannot update the hydrated file {}: {e}; reading from the replica",
                                h.path.display()
                            ),
                        );
                        *hydrated = None;
                    }
                }
            }
        }
    }
}

/// The hydration task: restores the newest state into a file in `dir`, then turns each
/// newer state into an update, until `closed`.
pub(crate) async fn run(
    replica: Replica,
    dir: PathBuf,
    shared: Arc<Shared>,
    newest: impl Fn() -> Arc<PageMap>,
    closed: impl Fn() -> bool,
) {
    // The state the last thing handed over brings the file to.
    let mut base: Option<Arc<PageMap>> = None;
    let mut retry = RETRY_AFTER;
    while !closed() {
        let target = newest();
        let step = match &base {
            Some(b) if b.epoch == target.epoch && b.txid >= target.txid => None,
            Some(b) if b.epoch == target.epoch && b.page_size == target.page_size => {
                let bodies = std::mem::take(&mut *shared.bodies.lock().unwrap());
                Some(match update(&replica, b.txid, &target, bodies).await {
                    Ok(Some(u)) => Ok(Ready::Update(u)),
                    Ok(None) => restore(&replica, &dir, &target, &shared)
                        .await
                        .map(Ready::Base),
                    Err(e) => Err(e),
                })
            }
            _ => Some(
                restore(&replica, &dir, &target, &shared)
                    .await
                    .map(Ready::Base),
            ),
        };
        match step {
            None => shared.wake.notified().await,
            Some(Ok(ready)) => {
                shared.ready.lock().unwrap().push(ready);
                base = Some(target);
                retry = RETRY_AFTER;
            }
            Some(Err(e)) => {
                if closed() {
                    return;
                }
                crate::report(
                    crate::ffi::SQLITE_IOERR,
                    &format!(
                        "strata vfs: cannot hydrate {} into {}: {e}; reading from the replica, trying again in {retry:?}",
                        replica.name(),
                        dir.display()
                    ),
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Removes the hydrated files (and the restores' temporary files) that processes no longer
/// running left in `dir`: one killed before it closed its database leaves them. Best
/// effort; a file of a running process, or of this one, stays.
fn remove_dead_processes_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(hydrated_file_pid) else {
            continue;
        };
        if pid == std::process::id() || strata::restore::process_exists(pid) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed a hydrated file a process that no longer runs left");
        }
    }
}

/// The process that made a hydrated file named `name` (`strata-vfs-PID-N.db`, or a
/// restore's `.strata-vfs-PID-N.db.PID.strata-restore`).
fn hydrated_file_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("strata-vfs-")
        .or_else(|| name.strip_prefix(".strata-vfs-"))?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, rest) = rest.split_once(".db")?;
    n.parse::<u64>().ok()?;
    (rest.is_empty() || rest.ends_with(".strata-restore"))
        .then(|| pid.parse().ok())
        .flatten()
}

/// The database at `map`'s TXID, restored into a new file in `dir`. A file found corrupt is
/// recorded in `shared`.
async fn restore(
    replica: &Replica,
    dir: &Path,
    map: &PageMap,
    shared: &Shared,
) -> Result<Hydrated, VfsError> {
    static FILES: AtomicU64 = AtomicU64::new(0);
    remove_dead_processes_files(dir);
    let path = dir.join(format!(
        "strata-vfs-{}-{}.db",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let options = RestoreOptions {
        force: true,
        ..RestoreOptions::default()
    };
    let restored = strata::restore::restore(
        replica,
        RestorePoint::Txid(map.txid),
        &path,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .map_err(|e| {
        if let strata::restore::RestoreError::Corrupt { file, error } = &e {
            shared
                .corrupt
                .lock()
                .unwrap()
                .insert(file.clone(), error.to_string());
        }
        VfsError::Config(e.to_string())
    })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| VfsError::Config(format!("{}: {e}", path.display())))?;
    Ok(Hydrated {
        file,
        path,
        txid: restored.txid,
        page_size: restored.page_size,
        epoch: map.epoch,
    })
}

/// The pages of `map` newer than `from`, from their files fetched whole (or taken from
/// `bodies`); `None` if those files are too large to hold (restore afresh instead).
async fn update(
    replica: &Replica,
    from: Txid,
    map: &PageMap,
    mut bodies: HashMap<u64, Bytes>,
) -> Result<Option<Update>, VfsError> {
    let newer: Vec<usize> = (0..map.files.len())
        .filter(|&i| map.files[i].range.max > from)
        .collect();
    let total: u64 = newer.iter().map(|&i| map.files[i].size).sum();
    if total > UPDATE_MAX_BYTES {
        return Ok(None);
    }
    let mut fetched: HashMap<usize, Bytes> = HashMap::new();
    for &i in &newer {
        let info = &map.files[i];
        let body = match bodies.remove(&map.ids[i]) {
            Some(body) => body,
            None => state::fetch_whole(replica, info).await?,
        };
        fetched.insert(i, body);
    }
    let page_size = map.page_size;
    let mut pages = Vec::new();
    for pgno in 1..=map.pages() {
        let Some(frame) = map.frame(pgno) else {
            continue;
        };
        let Some(body) = fetched.get(&(frame.file as usize)) else {
            continue;
        };
        let info = &map.files[frame.file as usize];
        let invalid = |error| VfsError::ltx(replica, info, error);
        let start = frame.offset as usize;
        let bytes = body
            .get(start..start + frame.size as usize)
            .ok_or_else(|| {
                invalid(ltx::Error::Truncated {
                    offset: frame.offset,
                    what: "page frame",
                })
            })?;
        let mut page = vec![0u8; page_size.bytes()].into_boxed_slice();
        frame
            .decode(bytes, pgno, page_size, &mut page)
            .map_err(invalid)?;
        pages.push((pgno, page));
    }
    Ok(Some(Update {
        from,
        to: map.txid,
        pages,
    }))
}
