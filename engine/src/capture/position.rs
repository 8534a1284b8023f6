//! Where capture stands: the last TXID written and the WAL position it reached, kept in a
//! small file in the staging directory so a restart resumes exactly there.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ltx::Txid;

use super::wal::{Checksum, Generation};

/// The WAL position the last L0 file reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WalPosition {
    /// The log generation.
    pub generation: Generation,
    /// Offset just after the last captured commit frame.
    pub offset: u64,
    /// The cumulative checksum at `offset`.
    pub checksum: Checksum,
}

/// Which file a database path named: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub(super) fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The capture state after a TXID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Position {
    /// The last TXID written.
    pub txid: Txid,
    /// Database size in pages at that TXID.
    pub commit: u32,
    /// Database page size at that TXID.
    pub page_size: u32,
    /// The database file it was read from.
    pub db: FileId,
    /// Where in the WAL it ends; `None` if the log held nothing committed that was not also
    /// captured (the position stands at the start of whatever generation comes next).
    pub wal: Option<WalPosition>,
    /// The identity of the history the files belong to (their header's node ID).
    pub history: u64,
}

const FILE: &str = "position";
/// Positions saved by earlier versions (which trusted the checksum chain alone, or named
/// no history) are not resumed from; version 3 (renamed into place, with no sum) is.
const VERSION: &str = "4";
/// The size of every record: each save overwrites all of the one before.
const RECORD: usize = 512;

/// FNV-1a, 64 bits: enough to tell a torn or stale-mixed record from a whole one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Position {
    /// Saves in place, over the record before: one write of [`RECORD`] bytes at offset 0,
    /// no new file and no rename (each costs the file system far more than the write, on
    /// every sync). Not synced: a position lost or torn by a power loss fails its sum when
    /// loaded, and a lost position only means the next file is a full copy.
    pub(super) fn save(&self, file: &File) -> io::Result<()> {
        let mut s = format!(
            "version={VERSION}\ntxid={}\ncommit={}\npage_size={}\ndev={}\nino={}\nhistory={:016x}\n",
            self.txid, self.commit, self.page_size, self.db.dev, self.db.ino, self.history
        );
        if let Some(w) = &self.wal {
            let g = &w.generation;
            let _ = write!(
                s,
                "big_endian={}\nsalt1={}\nsalt2={}\noffset={}\nchecksum={},{}\n",
                g.big_endian, g.salt1, g.salt2, w.offset, w.checksum.0, w.checksum.1,
            );
        }
        let _ = writeln!(s, "sum={:016x}", fnv1a(s.as_bytes()));
        let mut record = s.into_bytes();
        debug_assert!(record.len() <= RECORD);
        record.resize(RECORD, b'\n');
        file.write_all_at(&record, 0)
    }

    /// Opens (creating) the position file in `dir`, for [`Position::save`].
    pub(super) fn open_file(dir: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE))
    }

    /// Loads the saved position; `None` if there is none or it cannot be read (then capture
    /// starts with a full copy, which is always safe).
    pub(super) fn load(dir: &Path) -> Option<Position> {
        let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        match get("version")? {
            // Saved by renaming a whole file over the last: never torn.
            "3" => {}
            VERSION => {
                // Its own line ("checksum=" holds "sum=" too).
                let at = text.find("\nsum=")? + 1;
                let sum = u64::from_str_radix(text[at + 4..].lines().next()?.trim(), 16).ok()?;
                if fnv1a(&text.as_bytes()[..at]) != sum {
                    return None;
                }
            }
            _ => return None,
        }
        let page_size = get("page_size")?.parse().ok()?;
        let wal = match get("offset") {
            None => None,
            Some(offset) => {
                let (c0, c1) = get("checksum")?.split_once(',')?;
                Some(WalPosition {
                    generation: Generation {
                        big_endian: get("big_endian")?.parse().ok()?,
                        page_size,
                        salt1: get("salt1")?.parse().ok()?,
                        salt2: get("salt2")?.parse().ok()?,
                    },
                    offset: offset.parse().ok()?,
                    checksum: (c0.parse().ok()?, c1.parse().ok()?),
                })
            }
        };
        Some(Position {
            txid: Txid::from_hex(get("txid")?).ok()?,
            commit: get("commit")?.parse().ok()?,
            page_size,
            db: FileId {
                dev: get("dev")?.parse().ok()?,
                ino: get("ino")?.parse().ok()?,
            },
            wal,
            history: u64::from_str_radix(get("history")?, 16)
                .ok()
                .filter(|h| *h != 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Position::load(dir.path()), None);
        let p = Position {
            txid: Txid::new(0x2a),
            commit: 17,
            page_size: 4096,
            db: FileId { dev: 2049, ino: 77 },
            wal: Some(WalPosition {
                generation: Generation {
                    big_endian: false,
                    page_size: 4096,
                    salt1: 0xdead_beef,
                    salt2: 7,
                },
                offset: 32 + 5 * 4120,
                checksum: (1, u32::MAX),
            }),
            history: 0x1234_5678_9abc_def0,
        };
        let file = Position::open_file(dir.path()).unwrap();
        p.save(&file).unwrap();
        assert_eq!(Position::load(dir.path()), Some(p));
        let none = Position { wal: None, ..p };
        none.save(&file).unwrap();
        assert_eq!(Position::load(dir.path()), Some(none));
        // Torn by a power loss: the start of one record over the rest of another.
        let next = Position {
            txid: Txid::new(0x2b),
            commit: 18,
            ..p
        };
        next.save(&file).unwrap();
        let whole = std::fs::read(dir.path().join(FILE)).unwrap();
        p.save(&file).unwrap();
        file.write_all_at(&whole[..40], 0).unwrap();
        assert_eq!(Position::load(dir.path()), None);
        p.save(&file).unwrap();
        assert_eq!(Position::load(dir.path()), Some(p));
        // Version 3's whole-file records (no sum) are resumed from.
        let v3 = String::from_utf8(std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        let v3 = v3[..v3.find("\nsum=").unwrap() + 1].replace("version=4", "version=3");
        std::fs::write(dir.path().join(FILE), v3).unwrap();
        assert_eq!(Position::load(dir.path()), Some(p));
        std::fs::write(dir.path().join(FILE), "txid=zz\n").unwrap();
        assert_eq!(Position::load(dir.path()), None);
        // A position from the version that trusted the checksum chain is not resumed from.
        std::fs::write(
            dir.path().join(FILE),
            "txid=000000000000002a\ncommit=17\noffset=32\nchecksum=1,2\n",
        )
        .unwrap();
        assert_eq!(Position::load(dir.path()), None);
    }
}
