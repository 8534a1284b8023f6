//! File-change notification for the ticker (Linux inotify): a write to a database or its
//! WAL, or a file renamed over it, wakes its capture's probe at once, so an idle database
//! needs no probing at the sync interval.
//!
//! One inotify descriptor per ticker and one watch per directory holding databases (not
//! per database). Events name the file; `app.db`, `app.db-wal` and `app.db-journal` map to
//! the capture of `app.db`. What inotify cannot see (the wal-index is written through shared
//! memory, so a recovery that only rewrites it makes no event) is caught by the slower
//! probe the ticker keeps for watched jobs.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;

use super::job::JobId;

/// Directory watches and the jobs their events wake.
pub(crate) struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    /// Ends [`DirWatch::run`] (the ticker is gone), which frees the descriptor.
    closed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Directory to its watch descriptor and how many jobs use it.
    dirs: HashMap<PathBuf, (i32, usize)>,
    /// (watch descriptor, database file name) to the jobs of that database.
    names: HashMap<(i32, OsString), Vec<JobId>>,
}

/// What makes an event in a watched directory: writes, attribute (link count) changes,
/// files created, renamed in or out, deleted.
const MASK: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE;

impl DirWatch {
    /// A new inotify instance, registered with the current tokio runtime.
    pub(crate) fn new() -> io::Result<DirWatch> {
        // SAFETY: inotify_init1 with valid flags; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd returns its own descriptor, open until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(DirWatch {
            fd,
            state: Mutex::new(State::default()),
            closed: tokio::sync::Notify::new(),
        })
    }

    /// Makes [`DirWatch::run`] return.
    pub(crate) fn close(&self) {
        self.closed.notify_one();
    }

    /// Wakes `id` on changes to `db` (a canonical path) and its companion files.
    pub(crate) fn add(&self, db: &Path, id: JobId) -> io::Result<()> {
        let (dir, name) = split(db)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let wd = match state.dirs.get_mut(dir) {
            Some((wd, refs)) => {
                *refs += 1;
                *wd
            }
            None => {
                let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
                // SAFETY: a valid inotify descriptor and a NUL-terminated path.
                let wd = unsafe {
                    libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), path.as_ptr(), MASK)
                };
                if wd < 0 {
                    return Err(io::Error::last_os_error());
                }
                state.dirs.insert(dir.to_owned(), (wd, 1));
                wd
            }
        };
        state
            .names
            .entry((wd, name.to_owned()))
            .or_default()
            .push(id);
        Ok(())
    }

    /// Stops waking `id` for `db`.
    pub(crate) fn remove(&self, db: &Path, id: JobId) {
        let Ok((dir, name)) = split(db) else { return };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(wd, refs)) = state.dirs.get(dir) else {
            return;
        };
        let key = (wd, name.to_owned());
        if let Some(ids) = state.names.get_mut(&key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                state.names.remove(&key);
            }
        }
        if refs <= 1 {
            state.dirs.remove(dir);
            // SAFETY: a valid inotify descriptor and a watch descriptor it returned.
            unsafe { libc::inotify_rm_watch(self.fd.get_ref().as_raw_fd(), wd) };
        } else if let Some(entry) = state.dirs.get_mut(dir) {
            entry.1 = refs - 1;
        }
    }

    /// Reads events until [`DirWatch::close`], calling `wake` with each job an event
    /// concerns (every job if events were lost to a full queue).
    pub(crate) async fn run(&self, wake: impl Fn(JobId)) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let readable = tokio::select! {
                r = self.fd.readable() => r,
                () = self.closed.notified() => return,
            };
            let Ok(mut ready) = readable else {
                return;
            };
            // SAFETY: reading into a buffer this function owns, at most its length.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                    continue;
                }
                tracing::warn!(error = %e, "reading file-change events failed; probing on the interval only");
                return;
            }
            let woken = self.parse(&buf[..n as usize]);
            for id in woken {
                wake(id);
            }
        }
    }

    /// The jobs the events in `buf` concern.
    fn parse(&self, mut buf: &[u8]) -> Vec<JobId> {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = Vec::new();
        while buf.len() >= HEADER {
            // inotify_event: wd (i32), mask (u32), cookie (u32), len (u32), then the name.
            let field = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
            let (wd, mask, len) = (field(0) as i32, field(4), field(12) as usize);
            let end = (HEADER + len).min(buf.len());
            let name = &buf[HEADER..end];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                woken.extend(state.names.values().flatten().copied());
            } else {
                let db = database_name(OsStr::from_bytes(name));
                if let Some(ids) = state.names.get(&(wd, db.to_owned())) {
                    woken.extend(ids.iter().copied());
                }
            }
            buf = &buf[end..];
        }
        woken.sort_unstable();
        woken.dedup();
        woken
    }
}

/// The database a file name belongs to: `app.db-wal` to `app.db`.
fn database_name(name: &OsStr) -> &OsStr {
    let bytes = name.as_bytes();
    for suffix in [&b"-wal"[..], b"-journal", b"-shm"] {
        if let Some(stem) = bytes.strip_suffix(suffix) {
            return OsStr::from_bytes(stem);
        }
    }
    name
}

fn split(db: &Path) -> io::Result<(&Path, &OsStr)> {
    match (db.parent(), db.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a database path names a file in a directory",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn writes_and_renames_wake_the_database_they_concern_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (a, b) = (root.join("a.db"), root.join("b.db"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let watch = Arc::new(DirWatch::new().unwrap());
        watch.add(&a, 1).unwrap();
        watch.add(&b, 2).unwrap();
        let counts = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let task = {
            let (watch, counts) = (watch.clone(), counts.clone());
            tokio::spawn(async move {
                watch
                    .run(|id| {
                        counts[id as usize].fetch_add(1, Ordering::SeqCst);
                    })
                    .await;
            })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        std::fs::write(root.join("a.db-wal"), b"frames").unwrap();
        settle().await;
        assert!(counts[1].load(Ordering::SeqCst) >= 1);
        assert_eq!(counts[2].load(Ordering::SeqCst), 0);
        std::fs::write(root.join("other"), b"x").unwrap();
        std::fs::write(root.join("new"), b"x").unwrap();
        std::fs::rename(root.join("new"), &b).unwrap();
        settle().await;
        assert!(counts[2].load(Ordering::SeqCst) >= 1);
        let before = counts[1].load(Ordering::SeqCst);
        watch.remove(&a, 1);
        std::fs::write(root.join("a.db-wal"), b"more").unwrap();
        settle().await;
        assert_eq!(counts[1].load(Ordering::SeqCst), before);
        watch.close();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run returns once closed")
            .unwrap();
    }
}
