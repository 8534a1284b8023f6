//! What retention deletes: files no restore point inside the retention window needs.
//!
//! - L0: from the oldest file up, while a file is older than the L0 retention and covered
//!   by L1 (its max TXID at or below L1's newest); the first file that is not stops the
//!   walk, so the level never gets a hole in the middle. The deleted run ends where an L1
//!   file ends, so every L0 file left still restores to its own TXID. The newest L0 file
//!   stays.
//! - Snapshots older than the snapshot retention, except the newest.
//! - L0 to L8: files ending at or below the oldest kept snapshot (restore points from there
//!   on start from a snapshot), except each level's newest.
//!
//! No file is deleted until whatever makes it unnecessary (the covering L1 file, the kept
//! snapshot) has been in the replica for the grace period, so a reader that listed before
//! that file appeared has time to finish. And nothing is deleted if what remains would not
//! restore to the same newest TXID: a safety net for replicas this code did not write.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use ltx::Txid;

use super::LevelIndex;
use super::select::gaps;
use crate::plan::plan_files;
use crate::storage::{FileInfo, Level};

/// How long files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionOptions {
    /// Deleting at all (`retention.enabled`; false leaves it to bucket lifecycle rules).
    pub enabled: bool,
    /// L0 files are kept at least this long (`l0-retention`; zero: only the time rule is
    /// off, coverage by L1 still applies).
    pub l0: Duration,
    /// Snapshots are kept at least this long (`snapshot.retention`).
    pub snapshots: Duration,
    /// Nothing is deleted before the file that replaces it is this old.
    pub grace: Duration,
}

impl Default for RetentionOptions {
    fn default() -> RetentionOptions {
        RetentionOptions {
            enabled: true,
            l0: Duration::from_secs(5 * 60),
            snapshots: Duration::from_secs(24 * 3600),
            grace: Duration::from_secs(30),
        }
    }
}

fn ago(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// The files retention deletes from `index` at `now`, lowest level first.
pub(super) fn expired(
    index: &LevelIndex,
    options: &RetentionOptions,
    now: Timestamp,
) -> Vec<FileInfo> {
    if !options.enabled {
        return Vec::new();
    }
    let settled = ago(now, options.grace);
    let mut delete = Vec::new();

    // L0: covered by an L1 file that has settled, and old enough.
    let l1 = Level::new(1).expect("level 1");
    let covered_to = settled_max(index, l1, settled);
    let l0_cutoff = ago(now, options.l0);
    let l0 = index.level(Level::L0);
    let mut l0_delete = Vec::new();
    for (i, entry) in l0.iter().enumerate() {
        let f = &entry.file;
        if i + 1 == l0.len()
            || f.range.max > covered_to
            || f.modified > l0_cutoff
            || index.is_pinned(f)
        {
            break;
        }
        l0_delete.push(f.clone());
    }
    // The files left must continue from a restore point L1 has (the end of one of its
    // files), or the first of them would no longer restore to its own TXID.
    let l1_ends: Vec<Txid> = index.level(l1).iter().map(|f| f.file.range.max).collect();
    while l0_delete
        .last()
        .is_some_and(|f| !l1_ends.contains(&f.range.max))
    {
        l0_delete.pop();
    }
    delete.extend(l0_delete);

    // Snapshots past retention, keeping the newest; the oldest kept one (once settled)
    // sets the floor below which L1 and up are not needed.
    let snapshots = index.level(Level::SNAPSHOT);
    let cutoff = ago(now, options.snapshots);
    let mut floor = Txid::ZERO;
    if let Some((_, older)) = snapshots.split_last() {
        let expired: Vec<_> = older
            .iter()
            .filter(|s| s.file.modified < cutoff && !index.is_suspect(&s.file))
            .collect();
        // A snapshot found corrupt is never the floor: what it would replace stays.
        let oldest_kept = snapshots
            .iter()
            .find(|s| !expired.contains(s) && !index.is_suspect(&s.file));
        if let Some(kept) = oldest_kept.filter(|k| k.seen <= settled) {
            floor = kept.file.range.max;
            delete.extend(expired.iter().map(|s| s.file.clone()));
        }
    }
    // L0 files ending at or below the floor lie outside the retention window whatever
    // their age: the levels they chained from are going.
    let l0_kept = &l0[..l0.len().saturating_sub(1)];
    for f in l0_kept.iter().filter(|f| f.file.range.max <= floor) {
        if !delete.contains(&f.file) {
            delete.push(f.file.clone());
        }
    }
    for n in 1..=8 {
        let level = Level::new(n).expect("levels 1 to 8");
        if let Some((_, older)) = index.level(level).split_last() {
            delete.extend(
                older
                    .iter()
                    .filter(|f| f.file.range.max <= floor)
                    .map(|f| f.file.clone()),
            );
        }
    }

    // A merge in progress is reading these: they go on a later pass. Corrupt files stay
    // for a person to look at.
    delete.retain(|f| !index.is_pinned(f) && !index.is_suspect(f));
    if delete.is_empty() || !still_restores(index, &delete) {
        return Vec::new();
    }
    delete
}

/// The highest TXID `level` covers without a gap using only files seen before `settled`.
fn settled_max(index: &LevelIndex, level: Level, settled: Timestamp) -> Txid {
    let files = index.level(level);
    let end = files
        .iter()
        .rposition(|f| f.seen <= settled)
        .map_or(0, |i| i + 1);
    // Coverage counts only above the last gap: below it the level does not cover.
    let top = gaps(index, level)
        .last()
        .map(|g| g.before)
        .unwrap_or(Txid::ZERO);
    files[..end]
        .iter()
        .map(|f| f.file.range.max)
        .filter(|&m| m >= top)
        .max()
        .unwrap_or(Txid::ZERO)
}

/// Whether the index without `delete` restores to the same newest TXID as with it (files
/// found corrupt count as absent either way).
fn still_restores(index: &LevelIndex, delete: &[FileInfo]) -> bool {
    let all = index.all();
    let latest = |exclude: &[FileInfo]| plan_files(&all, Txid::ZERO, None, exclude).map(|p| p.txid);
    match (latest(&[]), latest(delete)) {
        (Ok(before), Ok(after)) if after == before => true,
        (before, after) => {
            tracing::error!(
                ?before,
                ?after,
                files = delete.len(),
                "retention held back: deleting would change what the replica restores to"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::TxidRange;

    const T: i64 = 1_000_000;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(T + s).unwrap()
    }

    /// (level, min, max, written at second, seen at second)
    fn index(files: &[(u8, u64, u64, i64)]) -> LevelIndex {
        let mut index = LevelIndex::default();
        for &(l, a, b, t) in files {
            index.insert(
                FileInfo {
                    level: Level::new(l).unwrap(),
                    range: TxidRange::new(Txid::new(a), Txid::new(b)),
                    size: 1,
                    modified: at(t),
                },
                at(t),
            );
        }
        index
    }

    fn names(files: &[FileInfo]) -> Vec<String> {
        files
            .iter()
            .map(|f| format!("{}:{}", f.level, f.range))
            .collect()
    }

    fn opts() -> RetentionOptions {
        RetentionOptions {
            enabled: true,
            l0: Duration::from_secs(300),
            snapshots: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn l0_goes_when_old_and_covered_never_leaving_a_hole() {
        let i = index(&[
            (0, 1, 1, 0),
            (0, 2, 2, 1),
            (0, 3, 3, 400), // young: stops the walk
            (0, 4, 4, 2),
            (0, 5, 5, 3),
            (1, 1, 2, 10),
            (1, 3, 5, 10),
        ]);
        let d = expired(&i, &opts(), at(600));
        assert_eq!(names(&d).len(), 2);
        assert!(names(&d)[1].starts_with("L0:0000000000000002"));
        // Not covered by L1: nothing.
        let i = index(&[(0, 1, 1, 0), (0, 2, 2, 1), (0, 3, 3, 2), (1, 1, 1, 10)]);
        assert_eq!(expired(&i, &opts(), at(600)).len(), 1);
        // The covering L1 file is too new (grace): nothing.
        let i = index(&[(0, 1, 1, 0), (0, 2, 2, 1), (0, 3, 3, 2), (1, 1, 3, 590)]);
        assert!(expired(&i, &opts(), at(600)).is_empty());
        // The run deleted ends at an L1 file's end: 3-3 is old and covered, but L1 ends at 2
        // and 5, so deleting it would leave 4-4 unrestorable at TXID 4.
        let i = index(&[
            (0, 1, 1, 0),
            (0, 2, 2, 1),
            (0, 3, 3, 2),
            (0, 4, 4, 400),
            (0, 5, 5, 401),
            (1, 1, 2, 10),
            (1, 3, 5, 11),
        ]);
        assert_eq!(expired(&i, &opts(), at(600)).len(), 2);
        // A file a merge is reading stops the walk (and is never deleted).
        let mut i = index(&[
            (0, 1, 1, 0),
            (0, 2, 2, 1),
            (0, 3, 3, 2),
            (1, 1, 2, 10),
            (1, 3, 3, 10),
        ]);
        let two = i.files(Level::L0)[1].clone();
        i.pin(std::slice::from_ref(&two));
        assert!(expired(&i, &opts(), at(600)).is_empty());
        i.unpin(&[two]);
        assert_eq!(expired(&i, &opts(), at(600)).len(), 2);
        // The newest L0 file stays even when covered.
        let i = index(&[
            (0, 1, 1, 0),
            (0, 2, 2, 1),
            (0, 3, 3, 2),
            (1, 1, 2, 10),
            (1, 3, 3, 10),
        ]);
        assert_eq!(expired(&i, &opts(), at(600)).len(), 2);
    }

    #[test]
    fn old_snapshots_and_levels_below_the_oldest_kept_snapshot_go() {
        let i = index(&[
            (9, 1, 10, 0),
            (9, 1, 20, 100),
            (9, 1, 30, 4000),
            (1, 1, 10, 0),
            (1, 11, 20, 100),
            (1, 21, 30, 4000),
            (1, 31, 32, 4001),
            (2, 1, 20, 100),
            (2, 21, 32, 4002),
        ]);
        let d = names(&expired(&i, &opts(), at(4000 + 3600 - 50)));
        // The cutoff is now - 1 h = 3950 s: snapshots 1-10 and 1-20 are past it, 1-30 is the
        // newest and stays, and sets the floor: L1 and L2 files ending at 30 or below go,
        // except each level's newest.
        assert_eq!(
            d,
            vec![
                "L9:0000000000000001-000000000000000a",
                "L9:0000000000000001-0000000000000014",
                "L1:0000000000000001-000000000000000a",
                "L1:000000000000000b-0000000000000014",
                "L1:0000000000000015-000000000000001e",
                "L2:0000000000000001-0000000000000014",
            ]
        );
    }

    #[test]
    fn disabled_deletes_nothing_and_a_broken_result_is_held_back() {
        let i = index(&[(0, 1, 1, 0), (0, 2, 2, 1), (1, 1, 2, 10)]);
        let off = RetentionOptions {
            enabled: false,
            ..opts()
        };
        assert!(expired(&i, &off, at(600)).is_empty());
        // L1 claims coverage but does not start at 1 (another tool's replica, no snapshot):
        // deleting L0 would leave nothing that restores.
        let i = index(&[(0, 1, 1, 0), (0, 2, 2, 1), (0, 3, 3, 1), (1, 2, 2, 10)]);
        assert!(expired(&i, &opts(), at(600)).is_empty());
    }
}
