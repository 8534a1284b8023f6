//! Which files a compaction merges, and whether a level is contiguous.

use ltx::Txid;

use super::LevelIndex;
use crate::plan::{PlanError, plan_files};
use crate::storage::{FileInfo, Level};

/// What one pass of a level would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Merge these files, in order, into one file of the level.
    Merge(Vec<FileInfo>),
    /// Nothing new below the level, or only one file (copied verbatim it would be a
    /// byte-for-byte duplicate of a file that stays restorable where it is).
    Nothing,
}

/// A break in a level's chain of files: no file covers `after + 1 ..= before - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The level.
    pub level: Level,
    /// The end of the file before the gap.
    pub after: Txid,
    /// The start of the file after it.
    pub before: Txid,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has a gap: no file covers TXIDs {} to {}",
            self.level,
            self.after.next(),
            self.before.prev()
        )
    }
}

/// The files of `src` to merge into `dst` (a compaction level, 1 to 8): the chain of `src`
/// files that continues `dst`'s newest file, as far as it reaches without a break.
///
/// An empty `dst` starts from the newest snapshot rather than TXID 1, so the first
/// compaction into a level is not a rewrite of the whole database. A full copy (a file
/// starting at 1) in `src` that reaches further than the incremental files supersedes
/// them, as in a restore plan.
pub(super) fn select(index: &LevelIndex, src: Level, dst: Level) -> Selection {
    let snapshot = index
        .newest(Level::SNAPSHOT)
        .map_or(Txid::ZERO, |s| s.range.max);
    let files = index.files(src);
    let inputs = match index.newest(dst) {
        // The level continues from its newest file, or, once the source does not (a full
        // copy restarted the history as a snapshot), from the newest snapshot.
        Some(newest) => {
            let from_level = chain_from(&files, newest.range.max);
            let from_snapshot = (snapshot > newest.range.max)
                .then(|| chain_from(&files, snapshot))
                .flatten();
            let reach = |c: &Option<Vec<FileInfo>>| {
                c.as_ref()
                    .and_then(|c| c.last())
                    .map_or(Txid::ZERO, |f| f.range.max)
            };
            if reach(&from_snapshot) > reach(&from_level) {
                from_snapshot
            } else {
                from_level
            }
        }
        // An empty level starts after the newest whole database it can build on: the newest
        // snapshot, or a full copy in the level below other than L0 (where retention would
        // not keep it): the first L2 file starts after L1's full copy instead of merging it
        // again. Failing that, where the source's history starts.
        None => {
            let base = if src == Level::L0 {
                Txid::ZERO
            } else {
                files
                    .iter()
                    .filter(|f| f.range.min == Txid::ONE)
                    .map(|f| f.range.max)
                    .max()
                    .unwrap_or(Txid::ZERO)
            };
            let seeds = [base.max(snapshot), snapshot, Txid::ZERO];
            seeds
                .iter()
                .enumerate()
                .filter(|&(i, seed)| i == 0 || *seed < seeds[i - 1])
                .find_map(|(_, &seed)| chain_from(&files, seed))
        }
    };
    match inputs {
        Some(inputs) if inputs.len() > 1 => Selection::Merge(inputs),
        _ => Selection::Nothing,
    }
}

/// The files that take a database from `floor` as far as `files` reach without a gap.
fn chain_from(files: &[FileInfo], floor: Txid) -> Option<Vec<FileInfo>> {
    let plan = match plan_files(files, floor, None, &[]) {
        Ok(plan) => plan,
        Err(PlanError::Gap { reached, .. }) if reached > floor => {
            plan_files(files, floor, Some(reached), &[]).ok()?
        }
        Err(_) => return None,
    };
    (plan.txid > floor).then_some(plan.files)
}

/// The files that could repair `gap` from the level below: a chain of `src` files from the
/// gap's start to just before its end.
pub(super) fn repair(index: &LevelIndex, src: Level, gap: Gap) -> Option<Vec<FileInfo>> {
    let files = index.files(src);
    let plan = plan_files(&files, gap.after, Some(gap.before.prev()), &[]).ok()?;
    (!plan.files.is_empty()).then_some(plan.files)
}

/// The gaps in `level`: consecutive files (by max TXID) where the next starts more than one
/// TXID after the previous ends. A file starting at TXID 1 (a full copy) restarts the
/// chain, and so does one continuing a snapshot: neither is a gap.
pub(super) fn gaps(index: &LevelIndex, level: Level) -> Vec<Gap> {
    let snapshot_ends: Vec<Txid> = index
        .level(Level::SNAPSHOT)
        .iter()
        .map(|s| s.file.range.max)
        .collect();
    index
        .level(level)
        .windows(2)
        .filter_map(|pair| {
            let (prev, next) = (&pair[0].file.range, &pair[1].file.range);
            let restarts = next.min == Txid::ONE || snapshot_ends.contains(&next.min.prev());
            (!restarts && next.min > prev.max.next()).then_some(Gap {
                level,
                after: prev.max,
                before: next.min,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::TxidRange;

    /// The range a merge of `inputs` covers.
    fn merged_range(inputs: &[FileInfo]) -> TxidRange {
        let min = inputs
            .iter()
            .map(|f| f.range.min)
            .min()
            .unwrap_or(Txid::ZERO);
        let max = inputs
            .iter()
            .map(|f| f.range.max)
            .max()
            .unwrap_or(Txid::ZERO);
        TxidRange::new(min, max)
    }

    fn file(level: u8, min: u64, max: u64) -> FileInfo {
        FileInfo {
            level: Level::new(level).unwrap(),
            range: TxidRange::new(Txid::new(min), Txid::new(max)),
            size: 100,
            modified: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn index(files: &[(u8, u64, u64)]) -> LevelIndex {
        LevelIndex::from_files(
            files.iter().map(|&(l, a, b)| file(l, a, b)),
            jiff::Timestamp::UNIX_EPOCH,
        )
    }

    fn ranges(s: Selection) -> Vec<(u64, u64)> {
        match s {
            Selection::Merge(files) => files
                .iter()
                .map(|f| (f.range.min.get(), f.range.max.get()))
                .collect(),
            Selection::Nothing => vec![],
        }
    }

    const L0: Level = Level::L0;
    const L1: Level = Level::new(1).unwrap();
    const L2: Level = Level::new(2).unwrap();

    #[test]
    fn merges_what_continues_the_level() {
        let i = index(&[(0, 1, 1), (0, 2, 2), (0, 3, 4), (1, 1, 2)]);
        assert_eq!(select(&i, L0, L1), Selection::Nothing, "one new file waits");
        let i = index(&[(0, 1, 1), (0, 2, 2), (0, 3, 4), (0, 5, 5), (1, 1, 2)]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(3, 4), (5, 5)]);
    }

    #[test]
    fn an_empty_level_starts_from_the_newest_snapshot() {
        let i = index(&[
            (1, 1, 50),
            (1, 51, 100),
            (1, 101, 110),
            (1, 111, 120),
            (9, 1, 100),
        ]);
        assert_eq!(ranges(select(&i, L1, L2)), vec![(101, 110), (111, 120)]);
        // No snapshot: after L1's full copy, not merging it again.
        let i = index(&[(1, 1, 50), (1, 51, 100), (1, 101, 120)]);
        assert_eq!(ranges(select(&i, L1, L2)), vec![(51, 100), (101, 120)]);
        // From L0 (whose full copies retention may delete), from TXID 1.
        let i = index(&[(0, 1, 1), (0, 2, 2)]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn a_single_file_is_not_copied_up() {
        let i = index(&[(0, 1, 1), (0, 2, 2), (1, 1, 1)]);
        assert_eq!(select(&i, L0, L1), Selection::Nothing);
        let i = index(&[(0, 1, 1), (1, 1, 1)]);
        assert_eq!(select(&i, L0, L1), Selection::Nothing);
    }

    #[test]
    fn a_full_copy_supersedes_the_files_it_covers() {
        // A page-size change or a replaced database: the incremental chain breaks at 12.
        let i = index(&[(0, 9, 9), (0, 10, 12), (0, 1, 13), (0, 14, 14), (1, 1, 8)]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(1, 13), (14, 14)]);
    }

    #[test]
    fn a_full_copy_as_snapshot_restarts_the_levels() {
        // The capture's full copy 1-12 went to L9; L0 goes on from 13.
        let i = index(&[
            (0, 9, 9),
            (0, 10, 10),
            (9, 1, 12),
            (0, 13, 13),
            (0, 14, 14),
            (1, 1, 10),
        ]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(13, 13), (14, 14)]);
        let i = index(&[(9, 1, 12), (1, 1, 10), (1, 13, 14)]);
        assert!(gaps(&i, L1).is_empty());
        // One old file still continues the level (11), but the files after the snapshot
        // reach further: those are taken, or the level would wait on 12 forever.
        let i = index(&[
            (0, 11, 11),
            (9, 1, 12),
            (0, 13, 13),
            (0, 14, 14),
            (1, 1, 10),
        ]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(13, 13), (14, 14)]);
    }

    #[test]
    fn a_gap_below_stops_the_chain() {
        let i = index(&[(0, 5, 5), (0, 6, 6), (0, 8, 8), (1, 1, 4)]);
        assert_eq!(ranges(select(&i, L0, L1)), vec![(5, 5), (6, 6)]);
        let i = index(&[(0, 6, 6), (0, 7, 7), (1, 1, 4)]);
        assert_eq!(select(&i, L0, L1), Selection::Nothing);
    }

    #[test]
    fn gaps_are_found_and_repaired_from_below() {
        let i = index(&[
            (0, 5, 5),
            (0, 6, 7),
            (0, 8, 8),
            (1, 1, 4),
            (1, 8, 9),
            (1, 1, 12),
            (1, 13, 14),
        ]);
        let g = gaps(&i, L1);
        assert_eq!(
            g,
            vec![Gap {
                level: L1,
                after: Txid::new(4),
                before: Txid::new(8)
            }]
        );
        let fix = repair(&i, L0, g[0]).unwrap();
        assert_eq!(
            merged_range(&fix),
            TxidRange::new(Txid::new(5), Txid::new(7))
        );
        assert!(repair(&index(&[(0, 6, 7)]), L0, g[0]).is_none());
    }
}
