//! Litestream's directory mode: every SQLite database in a directory (matching a glob,
//! optionally in subdirectories), each replicated under the replica URL joined with its path
//! relative to the directory.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::DirSource;

/// The databases in `dir` now, as `source` selects them, each with its path relative to
/// `dir` (`/`-separated: what its replica URLs are joined with), in path order.
/// Only files that start with SQLite's header are taken (not their `-wal`, `-shm` or
/// strata's staging files, nor anything else the pattern matches).
pub fn scan(dir: &Path, source: &DirSource) -> std::io::Result<Vec<(PathBuf, String)>> {
    scan_around(dir, source, &HashSet::new())
}

/// [`scan`], never opening a file whose (device, inode) is in `captured`: those are
/// databases already (this process captures them), and closing a descriptor of a file drops
/// every POSIX lock the process holds on it, SQLite's included, which would let an
/// application's last connection delete the WAL under the capture.
pub(crate) fn scan_around(
    dir: &Path,
    source: &DirSource,
    captured: &HashSet<(u64, u64)>,
) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut found = Vec::new();
    walk(dir, source, captured, &mut found)?;
    found.sort();
    Ok(found
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(dir).ok()?.to_str()?.to_owned();
            Some((path.clone(), rel))
        })
        .collect())
}

fn walk(
    dir: &Path,
    source: &DirSource,
    captured: &HashSet<(u64, u64)>,
    found: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            // strata's staging directories are never searched.
            if source.recursive && !name.ends_with("-strata") && !name.ends_with("-litestream") {
                // A subdirectory removed meanwhile is skipped.
                let _ = walk(&path, source, captured, found);
            }
        } else if kind.is_file() && glob(&source.pattern, &name) {
            let id = entry.metadata().map(|m| (m.dev(), m.ino()));
            if id.is_ok_and(|id| captured.contains(&id)) || is_sqlite(&path) {
                found.push(path);
            }
        }
    }
    Ok(())
}

/// Whether the file starts with "SQLite format 3\0".
fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == b"SQLite format 3\0")
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ReplicaUrl;

    #[test]
    fn globs_match_as_the_shell_does() {
        assert!(glob("*.db", "a.db"));
        assert!(glob("*.db", ".db"));
        assert!(!glob("*.db", "a.db-wal"));
        assert!(glob("t?.sqlite", "t1.sqlite"));
        assert!(!glob("t?.sqlite", "t12.sqlite"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn only_sqlite_files_matching_the_pattern_are_taken_with_their_relative_replica() {
        let dir = tempfile::tempdir().unwrap();
        let db = |rel: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            rusqlite::Connection::open(&p)
                .unwrap()
                .execute_batch("CREATE TABLE t(x)")
                .unwrap();
        };
        db("a.db");
        db("sub/b.db");
        db("c.sqlite");
        std::fs::write(dir.path().join("fake.db"), b"not a database at all").unwrap();
        std::fs::write(dir.path().join("a.db-wal"), b"").unwrap();
        let replica = ReplicaUrl::parse("s3://bucket/tenants").unwrap();
        let mut source = DirSource::new("*.db");
        let names = |found: Vec<(PathBuf, String)>| -> Vec<String> {
            found
                .into_iter()
                .map(|(_, rel)| replica.join(&rel).to_string())
                .collect()
        };
        assert_eq!(
            names(scan(dir.path(), &source).unwrap()),
            ["s3://bucket/tenants/a.db"]
        );
        source.recursive = true;
        assert_eq!(
            names(scan(dir.path(), &source).unwrap()),
            ["s3://bucket/tenants/a.db", "s3://bucket/tenants/sub/b.db"]
        );
    }
}
