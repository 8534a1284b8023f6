//! Levels, and where each backend's Litestream client keeps them.

use std::fmt;

use ltx::TxidRange;
use object_store::path::Path;

/// A replica level: 0 holds one file per sync, 1 to 8 hold compactions, 9 holds snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// One file per captured sync.
    pub const L0: Level = Level(0);
    /// Snapshots: every file here starts at TXID 1.
    pub const SNAPSHOT: Level = Level(9);
    /// The highest compaction level.
    pub const MAX_COMPACTION: Level = Level(8);

    /// A level, if `n` is 0 to 9.
    pub const fn new(n: u8) -> Option<Level> {
        if n <= 9 { Some(Level(n)) } else { None }
    }

    /// The level number.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Every level, 0 to 9.
    pub fn all() -> impl DoubleEndedIterator<Item = Level> {
        (0..=9).map(Level)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// How a replica names its level directories. Litestream uses a different layout per
/// backend, and each side must restore the other's replica on the same URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `<root>/ltx/<level>/<min>-<max>.ltx`, level in decimal: file, GCS, Azure, SFTP.
    File,
    /// `<prefix>/<level as %04x>/<min>-<max>.ltx`: S3 and S3-compatible stores.
    S3,
}

impl Layout {
    /// The directory holding `level`'s files under `root`.
    pub fn level_dir(self, root: &Path, level: Level) -> Path {
        match self {
            Layout::File => root.clone().join("ltx").join(level.get().to_string()),
            Layout::S3 => root.clone().join(format!("{:04x}", level.get())),
        }
    }

    /// The object holding the file covering `range` in `level`.
    pub fn file_path(self, root: &Path, level: Level, range: TxidRange) -> Path {
        self.level_dir(root, level).join(range.file_name())
    }

    /// The level and file name of an object listed under `root`, if it sits where this
    /// layout keeps a level's files (a name in a level directory, nothing deeper).
    pub fn locate<'a>(self, root: &Path, location: &'a Path) -> Option<(Level, &'a str)> {
        let parts: Vec<_> = location.prefix_match(root)?.collect();
        let level = match (self, &parts[..]) {
            (Layout::File, [ltx, level, _]) if ltx.as_ref() == "ltx" => {
                let level = level.as_ref();
                let n: u8 = level.parse().ok().filter(|n: &u8| n.to_string() == level)?;
                Level::new(n)?
            }
            (Layout::S3, [level, _]) => {
                let level = level.as_ref();
                let n = u8::from_str_radix(level, 16).ok()?;
                (format!("{n:04x}") == level).then_some(())?;
                Level::new(n)?
            }
            _ => return None,
        };
        Some((level, location.filename()?))
    }

    /// The other layout.
    pub fn other(self) -> Layout {
        match self {
            Layout::File => Layout::S3,
            Layout::S3 => Layout::File,
        }
    }

    /// Whether a top-level directory name under the root belongs to this layout.
    pub(crate) fn owns_top_dir(self, name: &str) -> bool {
        match self {
            Layout::File => name == "ltx",
            Layout::S3 => (0..=9).any(|l| name == format!("{l:04x}")),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::File => "file layout (ltx/<level>/)",
            Layout::S3 => "S3 layout (<level %04x>/)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::Txid;

    #[test]
    fn paths_match_litestream() {
        let range = TxidRange::new(Txid::ONE, Txid::new(0x10));
        let root = Path::from("db");
        assert_eq!(
            Layout::File
                .file_path(&root, Level::SNAPSHOT, range)
                .as_ref(),
            "db/ltx/9/0000000000000001-0000000000000010.ltx"
        );
        assert_eq!(
            Layout::S3
                .file_path(&root, Level::new(2).unwrap(), range)
                .as_ref(),
            "db/0002/0000000000000001-0000000000000010.ltx"
        );
        assert_eq!(
            Layout::File.level_dir(&Path::default(), Level::L0).as_ref(),
            "ltx/0"
        );
    }

    #[test]
    fn listed_objects_are_placed_by_their_path() {
        let root = Path::from("db");
        let name = "0000000000000001-0000000000000010.ltx";
        for layout in [Layout::File, Layout::S3] {
            for level in Level::all() {
                let path =
                    layout.file_path(&root, level, TxidRange::new(Txid::ONE, Txid::new(0x10)));
                assert_eq!(layout.locate(&root, &path), Some((level, name)));
                assert_eq!(layout.other().locate(&root, &path), None);
            }
        }
        for stray in [
            "db/ltx/00/x.ltx",
            "db/ltx/10/x.ltx",
            "db/ltx/1/a/x.ltx",
            "db/000a/x.ltx",
            "db/0001",
            "dbx/0001/x.ltx",
            "db/strata-uploads/x",
        ] {
            let p = Path::from(stray);
            assert_eq!(Layout::File.locate(&root, &p), None, "{stray}");
            assert_eq!(Layout::S3.locate(&root, &p), None, "{stray}");
        }
    }
}
