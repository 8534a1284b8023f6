//! The output database: written to a temporary file beside it, then synced and renamed, so
//! a failed restore leaves nothing behind and a finished one is complete.
//!
//! The temporary file is `.<name>.<pid>.strata-restore`, `flock`ed for as long as its
//! restore runs. A restore killed before it could remove its file leaves it behind; the next
//! restore into the same directory removes such files once it can take their lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::RestoreError;

/// SQLite files that belong to a database and would be replayed against a new one.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A temporary file that becomes the output on [`Output::commit`] and is removed otherwise.
#[derive(Debug)]
pub(crate) struct Output {
    pub file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Output {
    /// Checks the target can be written and creates the temporary file beside it.
    pub(super) fn create(target: &Path, force: bool) -> Result<Output, RestoreError> {
        let err = |error| RestoreError::Output {
            path: target.to_owned(),
            error,
        };
        if !force {
            for path in std::iter::once(target.to_owned()).chain(sidecars(target)) {
                if path.exists() {
                    return Err(RestoreError::OutputExists { path });
                }
            }
        }
        let name = target.file_name().ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "output path names no file",
            ))
        })?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = name.to_string_lossy();
        remove_stale_temps(&dir, &name);
        let temp = dir.join(format!(".{name}.{}{TEMP_SUFFIX}", std::process::id()));
        let at_temp = |error| RestoreError::Output {
            path: temp.clone(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(at_temp)?;
        if !try_lock(&file).map_err(at_temp)? {
            let _ = std::fs::remove_file(&temp);
            return Err(at_temp(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the new temporary file is locked by another process",
            )));
        }
        Ok(Output {
            file,
            temp,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// The temporary file's path (for an integrity check before the rename).
    pub(super) fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// A failure to write or read the temporary file.
    pub(super) fn error(&self, error: io::Error) -> RestoreError {
        RestoreError::Output {
            path: self.temp.clone(),
            error,
        }
    }

    /// The temporary file opened again for direct (uncached) writes, where the platform and
    /// filesystem allow it.
    pub(super) fn open_direct(&self) -> Option<File> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&self.temp)
                .ok()
        }
        #[cfg(not(target_os = "linux"))]
        None
    }

    /// Empties the temporary file to start over.
    pub(super) fn reset(&self) -> Result<(), RestoreError> {
        self.file.set_len(0).map_err(|error| self.error(error))
    }

    /// Syncs the data (on the blocking pool), removes stale sidecar files, renames over the
    /// target and syncs the directory so the rename survives a crash. The rename happens in
    /// this future, so a caller that drops it (on a signal, say) either has the output or,
    /// once the `Output` drops, nothing.
    pub(super) async fn commit(mut self) -> Result<(), RestoreError> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |error| RestoreError::Output { path, error }
        };
        let file = self.file.try_clone().map_err(at(&self.temp))?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .expect("sync panicked")
            .map_err(at(&self.temp))?;
        for sidecar in sidecars(&self.target) {
            match std::fs::remove_file(&sidecar) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&sidecar)(e)),
                _ => {}
            }
        }
        std::fs::rename(&self.temp, &self.target).map_err(at(&self.target))?;
        self.committed = true;
        let dir = match self.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

const TEMP_SUFFIX: &str = ".strata-restore";

/// Takes the exclusive lock of `file` (`flock`) without waiting: false if another holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether a process `pid` exists (one of another user counts): files named after a process
/// that does not are left over from one that died.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the temporary files of earlier restores of `name` in `dir` that died before
/// removing them: a file whose lock can be taken and whose process is gone (or is this
/// one: a file of this pid that nobody holds is a dead process's whose pid was reused).
/// Best effort: what cannot be read or removed is left.
fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && process_exists(pid) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if try_lock(&file).unwrap_or(false) && std::fs::remove_file(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed a temporary file left by a restore that no longer runs");
        }
    }
}

fn sidecars(db: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    SIDECARS.iter().map(move |suffix| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    })
}

/// A path for a `file:` URI: every byte but unreserved ones and `/` percent-encoded, so `?`,
/// `#` and `%` in a file name stay part of the name.
#[cfg(feature = "sqlite")]
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs SQLite's `quick_check` or `integrity_check` on a restored file. The file is opened
/// immutable: it has no WAL, and nothing else may touch it yet.
#[cfg(feature = "sqlite")]
pub(crate) fn integrity_check(path: &Path, full: bool) -> Result<(), RestoreError> {
    use rusqlite::{Connection, OpenFlags};
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let check = || -> rusqlite::Result<Vec<String>> {
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )?;
        let pragma = if full {
            "PRAGMA integrity_check"
        } else {
            "PRAGMA quick_check"
        };
        let mut stmt = conn.prepare(pragma)?;
        stmt.query_map([], |row| row.get::<_, String>(0))?.collect()
    };
    match check() {
        Ok(rows) if rows == ["ok"] => Ok(()),
        Ok(rows) => Err(RestoreError::IntegrityCheck {
            result: rows.into_iter().take(10).collect::<Vec<_>>().join("; "),
        }),
        Err(e) => Err(RestoreError::IntegrityCheck {
            result: e.to_string(),
        }),
    }
}

#[cfg(not(feature = "sqlite"))]
pub(crate) fn integrity_check(_: &Path, _: bool) -> Result<(), RestoreError> {
    Err(RestoreError::IntegrityCheck {
        result: "this build of strata has no SQLite (feature \"sqlite\")".into(),
    })
}
