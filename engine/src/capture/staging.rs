//! The staging directory beside a database, `.<name>-strata/`: L0 files written atomically
//! before upload, and the capture position.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use ltx::{Txid, TxidRange};

/// A database's staging directory.
#[derive(Clone, Debug)]
pub struct Staging {
    dir: PathBuf,
    l0: PathBuf,
}

impl Staging {
    /// The staging directory of the database at `db`, created if missing.
    pub fn open(db: &Path) -> io::Result<Staging> {
        let name = db.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "database path names no file")
        })?;
        let dir = db.with_file_name(format!(".{}-strata", name.to_string_lossy()));
        let l0 = dir.join("ltx").join("0");
        std::fs::create_dir_all(&l0)?;
        Ok(Staging { dir, l0 })
    }

    /// The directory (where the position file lives).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the L0 file for `txid` is staged.
    pub fn path(&self, txid: Txid) -> PathBuf {
        self.l0.join(TxidRange::single(txid).file_name())
    }

    /// Writes the L0 file for `txid`: `write` fills a temporary file, which is synced and
    /// renamed into place, so a staged file is always complete.
    pub fn write<T>(
        &self,
        txid: Txid,
        write: impl FnOnce(BufWriter<File>) -> io::Result<(BufWriter<File>, T)>,
    ) -> io::Result<T> {
        let path = self.path(txid);
        let tmp = path.with_extension("ltx.tmp");
        let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let result = write(out).and_then(|(out, value)| {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(value)
        });
        match result {
            Ok(value) => {
                std::fs::rename(&tmp, &path)?;
                File::open(&self.l0)?.sync_all()?;
                Ok(value)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Staged L0 files in TXID order.
    pub fn staged(&self) -> io::Result<Vec<Txid>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.l0)? {
            if let Ok(range) = TxidRange::parse_file_name(&entry?.file_name().to_string_lossy()) {
                out.push(range.max);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes temporary files a crash left half-written. Only when nothing is writing.
    pub fn remove_leftovers(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.l0)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes the staged file for `txid`.
    pub fn remove(&self, txid: Txid) -> io::Result<()> {
        match std::fs::remove_file(self.path(txid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
