//! The history planner: the fewest files that take a database from a starting TXID (0 for
//! nothing) to a target TXID. Restore applies a plan; compaction and retention keep what
//! plans need; the VFS serves pages from one.

use std::collections::HashMap;

use ltx::Txid;

use crate::storage::{FileInfo, Level, Replica, StorageError};

/// The files to apply, in order, and where they lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where the plan starts: 0 for an empty database.
    pub start: Txid,
    /// The TXID the database reaches once every file is applied.
    pub txid: Txid,
    /// Files in the order to apply them.
    pub files: Vec<FileInfo>,
}

impl Plan {
    /// Total bytes to fetch.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Why no plan reaches the target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The replica holds no LTX files at all.
    #[error("the replica holds no LTX files")]
    Empty,
    /// No file starts at TXID 1, so there is nothing to build a database from.
    #[error(
        "no snapshot: every file starts after TXID 1 (the earliest starts at {earliest}), so no database can be built"
    )]
    NoSnapshot {
        /// The smallest min TXID present.
        earliest: Txid,
    },
    /// The chain of files breaks.
    #[error(
        "gap in the replica: no file continues from TXID {reached} (the next file starts at {next}); restorable up to {reached}"
    )]
    Gap {
        /// How far the files reach without a break.
        reached: Txid,
        /// Where the next file starts.
        next: Txid,
    },
    /// The target is not the end of any reachable file.
    #[error("TXID {target} is not a restore point; {available}")]
    Unavailable {
        /// The TXID asked for.
        target: Txid,
        /// What is available, in words.
        available: String,
    },
    /// The timestamp precedes every file.
    #[error("no restore point at or before {timestamp}; the earliest is {earliest}")]
    TooEarly {
        /// The timestamp asked for.
        timestamp: jiff::Timestamp,
        /// The earliest file timestamp.
        earliest: jiff::Timestamp,
    },
}

/// Plans from `start` (0 or a TXID the database already holds) to `target` (`None`: the
/// newest TXID in the replica), never using a file in `exclude`.
///
/// Greedy interval covering across every level at once: from the TXID reached so far, take
/// the file that starts no later than the next TXID and reaches furthest without passing
/// the target (ties go to the smaller file). Snapshots, at level 9 or any level, are the
/// files that start at TXID 1. This gives the fewest files.
///
/// Continuing from a database already at `start`, snapshots (whole databases) are used only
/// if no chain of incremental files reaches the target.
pub fn plan_files(
    files: &[FileInfo],
    start: Txid,
    target: Option<Txid>,
    exclude: &[FileInfo],
) -> Result<Plan, PlanError> {
    let usable: Vec<&FileInfo> = files.iter().filter(|f| !exclude.contains(f)).collect();
    if start > Txid::ZERO {
        let incremental: Vec<&FileInfo> = usable
            .iter()
            .copied()
            .filter(|f| !f.range.is_snapshot())
            .collect();
        if let Ok(plan) = greedy(&incremental, start, target) {
            return Ok(plan);
        }
    }
    greedy(&usable, start, target)
}

fn greedy(usable: &[&FileInfo], start: Txid, target: Option<Txid>) -> Result<Plan, PlanError> {
    let Some(latest) = usable.iter().map(|f| f.range.max).max() else {
        return Err(PlanError::Empty);
    };
    let target_txid = target.unwrap_or(latest);
    if target_txid == Txid::ZERO {
        return Err(PlanError::Unavailable {
            target: target_txid,
            available: "TXIDs start at 1".to_owned(),
        });
    }
    let mut reached = start;
    let mut plan = Vec::new();
    while reached < target_txid {
        let best = usable
            .iter()
            .filter(|f| f.range.continues(reached) && f.range.max <= target_txid)
            .max_by(|a, b| a.range.max.cmp(&b.range.max).then(b.size.cmp(&a.size)));
        match best {
            Some(f) => {
                reached = f.range.max;
                plan.push((*f).clone());
            }
            None => break,
        }
    }
    if reached == target_txid {
        return Ok(Plan {
            start,
            txid: reached,
            files: plan,
        });
    }
    if reached == Txid::ZERO && !usable.iter().any(|f| f.range.is_snapshot()) {
        let earliest = usable.iter().map(|f| f.range.min).min().expect("not empty");
        return Err(PlanError::NoSnapshot { earliest });
    }
    let next = usable
        .iter()
        .filter(|f| f.range.max > reached && f.range.min > reached.next())
        .map(|f| f.range.min)
        .min();
    match (target, next) {
        (None, Some(next)) => Err(PlanError::Gap { reached, next }),
        (Some(t), Some(next)) if next <= t && !covers_without_gap(usable, reached, t) => {
            Err(PlanError::Gap { reached, next })
        }
        _ => Err(PlanError::Unavailable {
            target: target_txid,
            available: describe_available(usable, reached, target_txid, latest),
        }),
    }
}

/// Whether some file continues from `reached` at all (if so, the target was overshot rather
/// than cut off by a gap).
fn covers_without_gap(files: &[&FileInfo], reached: Txid, target: Txid) -> bool {
    files
        .iter()
        .any(|f| f.range.continues(reached) && f.range.min <= target)
}

fn describe_available(files: &[&FileInfo], reached: Txid, target: Txid, latest: Txid) -> String {
    if target > latest {
        return format!("the latest TXID in the replica is {latest}");
    }
    let above = files
        .iter()
        .map(|f| f.range.max)
        .filter(|&m| m > target)
        .min();
    let mut s = if reached > Txid::ZERO {
        format!("the nearest restore point below it is {reached}")
    } else {
        "no restore point lies below it".to_string()
    };
    if let Some(above) = above {
        s.push_str(&format!(" and the nearest above is {above}"));
    }
    s.push_str(" (files compacted into larger ones keep only their end TXIDs)");
    s
}

/// The newest TXID whose state existed at `timestamp`: the largest max TXID of any file whose
/// header timestamp is at or before it. Header timestamps rise with TXID within a level, so
/// each level is binary-searched, reading one 100-byte header per probe.
pub async fn resolve_timestamp(
    replica: &Replica,
    files: &[FileInfo],
    timestamp: jiff::Timestamp,
) -> Result<Result<Txid, PlanError>, StorageError> {
    let mut by_level: HashMap<Level, Vec<&FileInfo>> = HashMap::new();
    for f in files {
        by_level.entry(f.level).or_default().push(f);
    }
    let searches = by_level.into_values().map(|level_files| async move {
        let stamp = |i: usize| {
            let f = level_files[i];
            async move {
                let h = replica.read_header(f).await?;
                Ok::<_, StorageError>(
                    jiff::Timestamp::from_millisecond(h.timestamp).unwrap_or(jiff::Timestamp::MIN),
                )
            }
        };
        // The first file's stamp bounds what this level can offer.
        let first = stamp(0).await?;
        if first > timestamp {
            return Ok((None, first));
        }
        let (mut lo, mut hi) = (0usize, level_files.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if stamp(mid).await? <= timestamp {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok((Some(level_files[lo].range.max), first))
    });
    let results = futures::future::try_join_all(searches).await?;
    let best = results.iter().filter_map(|(t, _)| *t).max();
    Ok(match best {
        Some(txid) => Ok(txid),
        None => Err(PlanError::TooEarly {
            timestamp,
            earliest: results
                .iter()
                .map(|(_, e)| *e)
                .min()
                .unwrap_or(jiff::Timestamp::MAX),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::TxidRange;

    fn f(level: u8, min: u64, max: u64, size: u64) -> FileInfo {
        FileInfo {
            level: Level::new(level).unwrap(),
            range: TxidRange::new(Txid::new(min), Txid::new(max)),
            size,
            modified: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn names(p: &Plan) -> Vec<(u8, u64, u64)> {
        p.files
            .iter()
            .map(|f| (f.level.get(), f.range.min.get(), f.range.max.get()))
            .collect()
    }

    /// The files of the Litestream 0.5.17 fixture replica, with their sizes.
    fn fixture() -> Vec<FileInfo> {
        let l0 = [
            46551, 45509, 44796, 44035, 43289, 42622, 41800, 41127, 40495, 39764, 39106, 38451,
            37804, 7350, 22552, 2748,
        ];
        let mut v: Vec<FileInfo> = (1..=16).map(|t| f(0, t, t, l0[t as usize - 1])).collect();
        for (a, b, size) in [
            (1, 1, 46551),
            (2, 2, 45509),
            (3, 5, 43289),
            (6, 9, 40495),
            (10, 12, 38451),
            (13, 15, 22552),
            (16, 16, 2748),
        ] {
            v.push(f(1, a, b, size));
        }
        for (a, b, size) in [(1, 5, 43831), (6, 12, 38451), (13, 16, 22571)] {
            v.push(f(2, a, b, size));
        }
        for (a, b, size) in [(1, 1, 46551), (1, 15, 22552), (1, 16, 22571)] {
            v.push(f(9, a, b, size));
        }
        v
    }

    #[test]
    fn latest_is_one_snapshot_when_one_reaches_it() {
        let p = plan_files(&fixture(), Txid::ZERO, None, &[]).unwrap();
        assert_eq!(names(&p), [(9, 1, 16)]);
        assert_eq!(p.txid, Txid::new(16));
    }

    #[test]
    fn every_txid_has_a_short_plan() {
        let files = fixture();
        for t in 1..=16 {
            let p = plan_files(&files, Txid::ZERO, Some(Txid::new(t)), &[]).unwrap();
            assert_eq!(p.txid.get(), t);
            assert_eq!(p.files[0].range.min, Txid::ONE);
            assert!(p.files.len() <= 4, "TXID {t}: {:?}", names(&p));
            for w in p.files.windows(2) {
                assert!(w[1].range.continues(w[0].range.max));
            }
        }
        let p = plan_files(&files, Txid::ZERO, Some(Txid::new(8)), &[]).unwrap();
        assert_eq!(names(&p), [(2, 1, 5), (0, 6, 6), (0, 7, 7), (0, 8, 8)]);
    }

    #[test]
    fn ties_go_to_the_smaller_file() {
        let files = vec![f(0, 1, 4, 900), f(1, 1, 4, 300), f(9, 1, 4, 600)];
        let p = plan_files(&files, Txid::ZERO, None, &[]).unwrap();
        assert_eq!(names(&p), [(1, 1, 4)]);
    }

    #[test]
    fn continues_from_a_txid_already_applied() {
        let p = plan_files(&fixture(), Txid::new(7), None, &[]).unwrap();
        assert_eq!(p.start, Txid::new(7));
        assert_eq!(names(&p), [(2, 6, 12), (2, 13, 16)]);
    }

    #[test]
    fn excluded_files_are_avoided() {
        let files = fixture();
        let p = plan_files(&files, Txid::ZERO, None, &[f(9, 1, 16, 22571)]).unwrap();
        // Then the smallest file ending at 16 (L0 and L1 16-16 are both 2748 bytes).
        assert_eq!(p.files.len(), 2);
        assert_eq!(names(&p)[0], (9, 1, 15));
        assert_eq!((p.files[1].range.min.get(), p.files[1].size), (16, 2748));
    }

    #[test]
    fn a_snapshot_is_the_last_resort_when_continuing() {
        // Only the snapshot continues from 7 here; the plan still exists.
        let files = vec![f(9, 1, 16, 1 << 30), f(0, 5, 6, 10)];
        let p = plan_files(&files, Txid::new(7), None, &[]).unwrap();
        assert_eq!(names(&p), [(9, 1, 16)]);
    }

    #[test]
    fn failures_say_what_is_available() {
        assert_eq!(
            plan_files(&[], Txid::ZERO, None, &[]),
            Err(PlanError::Empty)
        );

        let e = plan_files(&[f(0, 5, 5, 1), f(0, 6, 6, 1)], Txid::ZERO, None, &[]).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoSnapshot {
                earliest: Txid::new(5)
            }
        );

        let gap = vec![f(9, 1, 3, 1), f(0, 4, 4, 1), f(0, 7, 7, 1)];
        let e = plan_files(&gap, Txid::ZERO, None, &[]).unwrap_err();
        assert_eq!(
            e,
            PlanError::Gap {
                reached: Txid::new(4),
                next: Txid::new(7)
            }
        );
        assert!(
            e.to_string().contains("restorable up to 0000000000000004"),
            "{e}"
        );
        let e = plan_files(&gap, Txid::ZERO, Some(Txid::new(7)), &[]).unwrap_err();
        assert!(matches!(e, PlanError::Gap { .. }), "{e}");

        // TXID 3 was compacted away: only 1-2 and 1-5 end near it.
        let compacted = vec![f(9, 1, 2, 1), f(1, 1, 5, 1)];
        let e = plan_files(&compacted, Txid::ZERO, Some(Txid::new(3)), &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("below it is 0000000000000002"), "{text}");
        assert!(text.contains("above is 0000000000000005"), "{text}");

        let e = plan_files(&compacted, Txid::ZERO, Some(Txid::new(9)), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("latest TXID in the replica is 0000000000000005"),
            "{e}"
        );
    }
}
