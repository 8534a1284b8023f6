//! The staging directory beside a database, `.<name>-strata/`: L0 files written atomically
//! before upload, and the capture position. One capture owns it at a time: an exclusive
//! `flock` on its `lock` file is held for as long as the `Staging` lives.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ltx::TxidRange;

use super::position::{FileId, Position};
use super::sync::LogRestarted;

/// Where the staging directory of the database at `db` is.
pub(super) fn dir_of(db: &Path) -> io::Result<PathBuf> {
    let name = db.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "database path names no file")
    })?;
    Ok(db.with_file_name(format!(".{}-strata", name.to_string_lossy())))
}

/// A database's staging directory, locked for this process.
#[derive(Clone, Debug)]
pub(super) struct Staging {
    dir: PathBuf,
    l0: PathBuf,
    /// Device and inode of `l0`: removing it loses staged files.
    l0_id: FileId,
    /// The locked file; the lock goes with the last clone.
    lock: Arc<File>,
    /// The capture position's file, saved over in place.
    position: Arc<File>,
}

impl Staging {
    /// The staging directory of the database at `db`, created if missing, and locked.
    /// Fails with `WouldBlock` naming the holder if another capture has it.
    pub(super) fn open(db: &Path) -> io::Result<Staging> {
        let dir = dir_of(db)?;
        let l0 = dir.join("ltx").join("0");
        // Only the directory itself before the lock: what is inside is the holder's.
        std::fs::create_dir_all(&dir)?;
        let lock_path = dir.join("lock");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        // An flock, held for as long as `lock` is open.
        if let Err(e) = lock.try_lock() {
            if let std::fs::TryLockError::Error(err) = e {
                return Err(err);
            }
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "already being captured ({}): one database has one capture",
                    holder(&lock_path)
                ),
            ));
        }
        std::fs::create_dir_all(&l0)?;
        let l0_id = FileId::of(&std::fs::metadata(&l0)?);
        lock.set_len(0)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        write!(
            lock,
            "by pid {} on {}, since {}",
            std::process::id(),
            host.trim(),
            format_args!("{:.0}", jiff::Timestamp::now())
        )?;
        let position = Position::open_file(&dir)?;
        Ok(Staging {
            dir,
            l0,
            l0_id,
            lock: Arc::new(lock),
            position: Arc::new(position),
        })
    }

    /// Fails if the lock file at the path is no longer the one locked, or the directory of
    /// staged files is not the one made: the staging directory was deleted or replaced
    /// (staged files may be lost), and another capture may have locked a new one.
    pub(super) fn check_lock(&self) -> io::Result<()> {
        let held = FileId::of(&self.lock.metadata()?);
        let names =
            |path: &Path, id: FileId| std::fs::metadata(path).is_ok_and(|m| FileId::of(&m) == id);
        if names(&self.dir.join("lock"), held) && names(&self.l0, self.l0_id) {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "the staging directory {} was deleted or replaced while in use; another capture may own it now",
            self.dir.display()
        )))
    }

    /// Where staged L0 files are, named as in the replica.
    pub(super) fn l0_dir(&self) -> PathBuf {
        self.l0.clone()
    }

    /// Whether the staged file for `range` reads whole: a header naming that range, every
    /// page, and the file's checksum. A power loss can leave a file named but torn (see
    /// [`Staging::write`]).
    pub(super) fn intact(&self, range: TxidRange) -> bool {
        super::batch::verify(&self.path(range), range).is_ok()
    }

    /// Saves the capture position (see [`Position::save`]).
    pub(super) fn save_position(&self, position: &Position) -> io::Result<()> {
        position.save(&self.position)
    }

    /// The directory (where the position file lives).
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the L0 file for `range` is staged.
    pub(super) fn path(&self, range: TxidRange) -> PathBuf {
        self.l0.join(range.file_name())
    }

    /// Writes the L0 file for `range`: `write` fills a temporary file, which is renamed into
    /// place, so a staged file is always complete to every reader.
    ///
    /// Not synced: two disk flushes on every commit slowed the application's writer, whose
    /// own flushes waited behind them. A crash of strata loses nothing (the kernel has the
    /// file). A power loss may lose or tear what was not yet on disk; a capture that opens
    /// checks every staged file the replica lacks (see [`Staging::intact`]), and a file lost
    /// or torn only means a full copy follows. Nothing the WAL held is lost meanwhile:
    /// SQLite copies frames into the database, and syncs it, before the log can restart
    /// over them.
    pub(super) fn write<T>(
        &self,
        range: TxidRange,
        write: impl FnOnce(BufWriter<File>) -> io::Result<(BufWriter<File>, T)>,
    ) -> io::Result<T> {
        let path = self.path(range);
        let tmp = path.with_extension("ltx.tmp");
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("staging {}: {e}", path.display()));
        let out = BufWriter::with_capacity(64 << 10, File::create(&tmp).map_err(named)?);
        let result = write(out).and_then(|(out, value)| {
            out.into_inner().map_err(|e| e.into_error())?;
            Ok(value)
        });
        match result {
            Ok(value) => {
                std::fs::rename(&tmp, &path).map_err(named)?;
                Ok(value)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                // A restart of the log under the read is the sync's to handle, as it is.
                let restarted = e.get_ref().is_some_and(|r| r.is::<LogRestarted>());
                Err(if restarted { e } else { named(e) })
            }
        }
    }

    /// Staged L0 files in TXID order (of their max TXIDs).
    pub(super) fn staged(&self) -> io::Result<Vec<TxidRange>> {
        staged_in(&self.l0)
    }

    /// Removes temporary files a crash left half-written. Only when nothing is writing.
    pub(super) fn remove_leftovers(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.l0)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes the staged file for `range`.
    pub(super) fn remove(&self, range: TxidRange) -> io::Result<()> {
        match std::fs::remove_file(self.path(range)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Who holds the staging lock at `lock_path`, as the holder wrote it.
fn holder(lock_path: &Path) -> String {
    let holder = std::fs::read_to_string(lock_path).unwrap_or_default();
    match holder.trim() {
        "" => "by another capture".to_owned(),
        said => said.to_owned(),
    }
}

/// The files of a database's staging directory, which [`reset`] removes.
#[derive(Debug)]
pub struct LocalState {
    /// The staging directory.
    pub dir: PathBuf,
    /// Every file in it, sorted.
    pub files: Vec<PathBuf>,
}

/// The staging directory of the database at `db` and its files (`None` if there is none);
/// with `remove`, the directory is removed, so that the next capture starts with a full
/// copy of a new history. Refused while a capture holds the directory (naming it).
pub fn reset(db: &Path, remove: bool) -> io::Result<Option<LocalState>> {
    let dir = dir_of(db)?;
    if !dir.is_dir() {
        return Ok(None);
    }
    let lock_path = dir.join("lock");
    // Held until the directory is gone, so that no capture starts in it meanwhile.
    let lock = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(lock) = &lock
        && let Err(e) = lock.try_lock()
    {
        return Err(match e {
            std::fs::TryLockError::Error(e) => e,
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is being captured ({}): stop its replication first",
                    db.display(),
                    holder(&lock_path)
                ),
            ),
        });
    }
    let mut files = Vec::new();
    let mut dirs = vec![dir.clone()];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(&next)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    if remove {
        std::fs::remove_dir_all(&dir)?;
    }
    drop(lock);
    Ok(Some(LocalState { dir, files }))
}

/// The L0 files staged in `l0`, in TXID order (of their max TXIDs). For readers that do not
/// hold the staging lock (followers' streams).
pub(super) fn staged_in(l0: &Path) -> io::Result<Vec<TxidRange>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(l0)? {
        if let Ok(range) = TxidRange::parse_file_name(&entry?.file_name().to_string_lossy()) {
            out.push(range);
        }
    }
    out.sort_by_key(|r| (r.max, r.min));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_lists_and_removes_the_staging_directory_but_not_while_captured() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        assert!(reset(&db, true).unwrap().is_none());
        let staging = Staging::open(&db).unwrap();
        std::fs::write(staging.path(TxidRange::single(ltx::Txid::ONE)), b"x").unwrap();
        let err = reset(&db, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(
            err.to_string().contains("stop its replication first"),
            "{err}"
        );
        drop(staging);
        let found = reset(&db, false).unwrap().unwrap();
        let names: Vec<_> = found
            .files
            .iter()
            .map(|f| f.strip_prefix(&found.dir).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "lock",
                "ltx/0/0000000000000001-0000000000000001.ltx",
                "position"
            ]
        );
        assert!(found.dir.is_dir(), "a dry run removes nothing");
        reset(&db, true).unwrap();
        assert!(!found.dir.exists());
    }

    #[test]
    fn a_second_capture_of_one_database_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let first = Staging::open(&db).unwrap();
        let err = Staging::open(&db).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let msg = err.to_string();
        assert!(
            msg.contains("already being captured")
                && msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        let clone = first.clone();
        drop(first);
        assert!(Staging::open(&db).is_err(), "a clone keeps the lock");
        drop(clone);
        Staging::open(&db).expect("the lock goes with the last clone");
    }
}
