//! The follower's position, in a small text file beside the local database
//! (`<db>-follow`): the TXID the database holds, its history, and, while a transaction is
//! being applied, the TXID it leads to. Written with `fsync` after each commit (and
//! before, to announce it), so it never claims more than the database holds, and a
//! follower killed between the two knows which two TXIDs the database may be at.
//!
//! Anyone may read it: `txid`, `history`, `newest` (the newest TXID seen in the source),
//! `updated` (when it was written).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ltx::Txid;

use super::local::Fingerprint;

const VERSION: &str = "1";

/// What the local database holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// The TXID the database is at for certain.
    pub txid: Txid,
    /// The history it belongs to (the node ID its files carry; 0 if unknown).
    pub history: u64,
    /// The database's page size.
    pub page_size: u32,
    /// A transaction leading to this TXID was being applied: the database is at `txid` or
    /// at this one.
    pub applying: Option<Txid>,
    /// The newest TXID the source was known to hold.
    pub newest: Txid,
    /// What the database held at `txid`, in brief (`None` before the first commit).
    pub fingerprint: Option<Fingerprint>,
}

/// Where the position of the database at `db` is kept.
pub(crate) fn path_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_owned();
    name.push("-follow");
    db.with_file_name(name)
}

/// Whether a follower is following the database at `db` now (holds its lock). Creates
/// nothing.
pub fn is_followed(db: &Path) -> bool {
    let Ok(file) = File::open(lock_path(db)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// `<db>-follow.lock`.
fn lock_path(db: &Path) -> PathBuf {
    let mut path = path_for(db).into_os_string();
    path.push(".lock");
    PathBuf::from(path)
}

/// Takes the lock that makes a follower the only one of the database at `db` (an flock on
/// `<db>-follow.lock`, held while the file returned is open): two followers of one
/// database would each apply over the other and keep positions that lie.
pub(crate) fn lock(db: &Path) -> io::Result<File> {
    let path = lock_path(db);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another follower holds {}: one database has one follower",
                path.display()
            ),
        )),
    }
}

impl Position {
    /// Saves the position durably (written to a temporary file, synced, renamed).
    pub(crate) fn save(&self, db: &Path) -> io::Result<()> {
        let path = path_for(db);
        let mut text = format!(
            "version={VERSION}\ntxid={}\nhistory={:016x}\npage_size={}\nnewest={}\nupdated={}\n",
            self.txid,
            self.history,
            self.page_size,
            self.newest,
            jiff::Timestamp::now()
        );
        if let Some(f) = self.fingerprint {
            text.push_str(&format!("page1={:016x}\npages={}\n", f.page1, f.pages));
        }
        if let Some(applying) = self.applying {
            text.push_str(&format!("applying={applying}\n"));
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The saved position of the database at `db`: `Ok(None)` if there is none, an error if
    /// the file cannot be read or makes no sense.
    pub(crate) fn load(db: &Path) -> io::Result<Option<Position>> {
        let path = path_for(db);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        if get("version") != Some(VERSION) {
            return Err(bad("not a follower position of this version"));
        }
        let txid = |key: &str| -> io::Result<Txid> {
            get(key)
                .and_then(|t| Txid::from_hex(t).ok())
                .ok_or_else(|| bad(&format!("no valid {key}")))
        };
        Ok(Some(Position {
            txid: txid("txid")?,
            history: get("history")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("no valid history"))?,
            page_size: get("page_size")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("no valid page_size"))?,
            applying: match get("applying") {
                None => None,
                Some(_) => Some(txid("applying")?),
            },
            newest: txid("newest").unwrap_or(Txid::ZERO),
            fingerprint: match (get("page1"), get("pages")) {
                (Some(page1), Some(pages)) => Some(Fingerprint {
                    page1: u64::from_str_radix(page1, 16).map_err(|_| bad("no valid page1"))?,
                    pages: pages.parse().map_err(|_| bad("no valid pages"))?,
                }),
                _ => None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_follower_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        assert!(!is_followed(&db));
        assert!(!lock_path(&db).exists(), "asking creates nothing");
        let held = lock(&db).unwrap();
        assert!(is_followed(&db));
        let err = lock(&db).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        drop(held);
        assert!(!is_followed(&db));
        lock(&db).unwrap();
    }

    #[test]
    fn a_position_survives_a_save_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        assert_eq!(Position::load(&db).unwrap(), None);
        let p = Position {
            txid: Txid::new(0x2a),
            history: 0xdead_beef,
            page_size: 4096,
            applying: Some(Txid::new(0x30)),
            newest: Txid::new(0x31),
            fingerprint: Some(Fingerprint {
                page1: 0xfeed,
                pages: 7,
            }),
        };
        p.save(&db).unwrap();
        assert_eq!(Position::load(&db).unwrap(), Some(p));
        let q = Position {
            applying: None,
            ..p
        };
        q.save(&db).unwrap();
        assert_eq!(Position::load(&db).unwrap(), Some(q));
        std::fs::write(path_for(&db), "version=1\ntxid=zz\n").unwrap();
        assert!(Position::load(&db).is_err());
    }
}
