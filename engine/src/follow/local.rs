//! The follower's local database, written only through SQLite's own pager: pages go in
//! through the `sqlite_dbpage` virtual table inside one write transaction (as SQLite's
//! `sqlite3_rsync` applies pages), so readers in other connections, with any SQLite, see
//! each applied TXID whole or not at all, and never a byte written behind SQLite's back.

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ltx::{Decoder, Header, PageNum, PageSize};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::FollowError;

/// What the database holds, in brief: page 1's checksum and the page count. Kept in the
/// position after each commit, so a database replaced or written by something else is
/// told from the one the follower left (page 1 holds the size, the schema and the free
/// list, so another database, or writes that grow or shrink it, change it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub page1: u64,
    pub pages: u32,
}

/// A WAL-mode database the follower writes.
#[derive(Debug)]
pub(crate) struct LocalDb {
    conn: Connection,
    path: PathBuf,
    page_size: PageSize,
    /// The file opened (device, inode): another file at the path is not this database.
    file: (u64, u64),
    /// `PRAGMA data_version` after the follower's last commit: it changes when any other
    /// connection commits.
    data_version: i64,
    /// The lock that makes this the database's only follower (see `position::lock`).
    lock: Option<std::fs::File>,
}

impl LocalDb {
    /// Opens the database at `path` (it must exist) in WAL mode, each commit synced.
    pub(crate) fn open(path: &Path) -> Result<LocalDb, FollowError> {
        let sql = |error| FollowError::Local {
            path: path.to_owned(),
            error,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        // Readers never block the follower in WAL mode; an application writing to the
        // follower's database would, and is waited for this long.
        conn.busy_timeout(Duration::from_secs(30)).map_err(sql)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(FollowError::NotWal {
                path: path.to_owned(),
                mode,
            });
        }
        // The position file is written after each commit and must never run ahead of it.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql)?;
        let page_size = PageSize::new(page_size).ok_or_else(|| FollowError::Local {
            path: path.to_owned(),
            error: rusqlite::Error::InvalidQuery,
        })?;
        // Fails at once, with SQLite's words, where SQLite was built without it.
        conn.query_row(
            "SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1",
            [],
            |_| Ok(()),
        )
        .map_err(sql)?;
        let meta = std::fs::metadata(path).map_err(|error| FollowError::Position {
            path: path.to_owned(),
            error,
        })?;
        let data_version = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sql)?;
        Ok(LocalDb {
            conn,
            path: path.to_owned(),
            page_size,
            file: (meta.dev(), meta.ino()),
            data_version,
            lock: None,
        })
    }

    /// What the database holds now, in brief (see [`Fingerprint`]).
    pub(crate) fn fingerprint(&self) -> Result<Fingerprint, FollowError> {
        let sql = |error| FollowError::Local {
            path: self.path.clone(),
            error,
        };
        let page1: Vec<u8> = self
            .conn
            .query_row("SELECT data FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
                r.get(0)
            })
            .map_err(sql)?;
        let pages = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(sql)?;
        Ok(Fingerprint {
            page1: ltx::page_checksum(PageNum::ONE, &page1).get(),
            pages,
        })
    }

    /// Fails if the file at the path is no longer the one opened (replaced or removed).
    pub(crate) fn check_file(&self) -> Result<(), FollowError> {
        let now = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if now == Some(self.file) {
            return Ok(());
        }
        Err(FollowError::LocalReplaced {
            path: self.path.clone(),
            what: if now.is_some() {
                "replaced by another file"
            } else {
                "removed"
            },
        })
    }

    /// Takes the database as it is now as the follower's own (after a check that it is).
    pub(crate) fn accept_as_is(&mut self) -> Result<(), FollowError> {
        self.data_version = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|error| FollowError::Local {
                path: self.path.clone(),
                error,
            })?;
        Ok(())
    }

    /// Holds `lock` for as long as the database is open.
    pub(crate) fn holding(mut self, lock: std::fs::File) -> LocalDb {
        self.lock = Some(lock);
        self
    }

    /// The database's page size.
    pub(crate) fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// Applies the LTX files `inputs` yields, in order, as one SQLite transaction: every
    /// page of each, then the database cut to the last one's size. Each file is decoded
    /// to its end and its checksum verified before the commit; any failure rolls the
    /// whole transaction back. Every file must be of `history` (0: any, and the first
    /// file that carries one sets it). Returns the last file's header (`None`: no file).
    ///
    /// Refused before anything is written if the database is not as the follower left
    /// it: another file at the path, or a commit by another connection since its own.
    pub(crate) fn apply<R: BufRead>(
        &mut self,
        inputs: impl IntoIterator<Item = (String, Result<R, FollowError>)>,
        history: &mut u64,
    ) -> Result<Option<Header>, FollowError> {
        let path = self.path.clone();
        let sql = |error| FollowError::Local {
            path: path.clone(),
            error,
        };
        self.check_file()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let data_version: i64 = tx
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sql)?;
        if data_version != self.data_version {
            return Err(FollowError::LocalWritten {
                path: self.path.clone(),
            });
        }
        let mut last = None;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")
                .map_err(sql)?;
            let mut page = vec![0u8; self.page_size.bytes()];
            for (name, input) in inputs {
                let corrupt = |error| FollowError::Corrupt {
                    file: name.clone(),
                    error,
                };
                let mut decoder = Decoder::from_buf_read(input?).map_err(corrupt)?;
                let header = *decoder.header();
                if header.node_id != 0 {
                    if *history != 0 && header.node_id != *history {
                        return Err(FollowError::HistoryChanged {
                            expected: *history,
                            found: header.node_id,
                            file: name,
                        });
                    }
                    *history = header.node_id;
                }
                if header.page_size != self.page_size {
                    return Err(FollowError::PageSizeChanged {
                        local: self.page_size,
                        source_size: header.page_size,
                    });
                }
                while let Some(pgno) = decoder.decode_page(&mut page).map_err(corrupt)? {
                    insert
                        .execute(rusqlite::params![pgno.get(), &page[..]])
                        .map_err(sql)?;
                }
                decoder.finish().map_err(corrupt)?;
                last = Some(header);
            }
        }
        let Some(last) = last else {
            return Ok(None);
        };
        let pages: u32 = tx
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(sql)?;
        if last.commit < pages {
            // A NULL page cuts the database there; SQLite applies it just before the
            // commit, so it must be the transaction's last write.
            tx.execute(
                "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)",
                [last.commit + 1],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        self.data_version = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sql)?;
        Ok(Some(last))
    }
}
