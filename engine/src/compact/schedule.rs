//! When each level runs: at every UTC-aligned multiple of its interval, and once at start.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::storage::Level;

/// The most recent multiple of `interval` since the Unix epoch at or before `now`: for
/// intervals that divide a day, :00 and :30 seconds, every fifth minute, the top of the
/// hour, UTC midnight (Litestream's `PrevCompactionAt`).
pub(super) fn prev_boundary(now: Timestamp, interval: Duration) -> Timestamp {
    let step = interval.as_millis().max(1) as i64;
    let ms = now.as_millisecond();
    Timestamp::from_millisecond(ms - ms.rem_euclid(step)).unwrap_or(now)
}

/// The first multiple of `interval` after `now`.
pub(super) fn next_boundary(now: Timestamp, interval: Duration) -> Timestamp {
    let step = SignedDuration::try_from(interval).unwrap_or(SignedDuration::MAX);
    prev_boundary(now, interval)
        .checked_add(step)
        .unwrap_or(Timestamp::MAX)
}

/// The run times of a set of levels.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Each level, its interval, and when it is next due (`None`: now, the start-up pass).
    levels: Vec<(Level, Duration, Option<Timestamp>)>,
}

impl Schedule {
    /// A schedule for `levels` (level and interval), every one due at once.
    pub fn new(levels: impl IntoIterator<Item = (Level, Duration)>) -> Schedule {
        let mut levels: Vec<_> = levels.into_iter().map(|(l, i)| (l, i, None)).collect();
        levels.sort_by_key(|(l, _, _)| *l);
        Schedule { levels }
    }

    /// The levels due at `now`, lowest first (so a level sees what the one below it just
    /// wrote), each then scheduled for its next boundary after `now`.
    pub fn take_due(&mut self, now: Timestamp) -> Vec<Level> {
        let mut due = Vec::new();
        for (level, interval, next) in &mut self.levels {
            if next.is_none_or(|t| t <= now) {
                due.push(*level);
                *next = Some(next_boundary(now, *interval));
            }
        }
        due
    }

    /// When the next level is due (`None` if there are no levels).
    pub fn next_due(&self) -> Option<Timestamp> {
        self.levels
            .iter()
            .map(|(_, _, next)| next.unwrap_or(Timestamp::MIN))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn boundaries_are_utc_aligned() {
        let now = at("2026-12-01T10:07:43.250Z");
        assert_eq!(
            prev_boundary(now, Duration::from_secs(30)),
            at("2026-12-01T10:07:30Z")
        );
        assert_eq!(
            next_boundary(now, Duration::from_secs(300)),
            at("2026-12-01T10:10:00Z")
        );
        assert_eq!(
            next_boundary(now, Duration::from_secs(3600)),
            at("2026-12-01T11:00:00Z")
        );
        assert_eq!(
            prev_boundary(now, Duration::from_secs(86400)),
            at("2026-12-01T00:00:00Z")
        );
        // Exactly on a boundary: that boundary is the previous one, the next is one later.
        let on = at("2026-12-01T10:10:00Z");
        assert_eq!(prev_boundary(on, Duration::from_secs(300)), on);
        assert_eq!(
            next_boundary(on, Duration::from_secs(300)),
            at("2026-12-01T10:15:00Z")
        );
    }

    #[test]
    fn every_level_runs_at_start_then_at_its_boundaries() {
        let l1 = Level::new(1).unwrap();
        let l2 = Level::new(2).unwrap();
        let mut s = Schedule::new([
            (Level::SNAPSHOT, Duration::from_secs(86400)),
            (l2, Duration::from_secs(300)),
            (l1, Duration::from_secs(30)),
        ]);
        let start = at("2026-12-01T10:07:43Z");
        assert_eq!(s.take_due(start), vec![l1, l2, Level::SNAPSHOT]);
        assert_eq!(s.take_due(start), vec![]);
        assert_eq!(s.next_due(), Some(at("2026-12-01T10:08:00Z")));
        assert_eq!(s.take_due(at("2026-12-01T10:08:00Z")), vec![l1]);
        assert_eq!(s.next_due(), Some(at("2026-12-01T10:08:30Z")));
        // A late wake-up (a suspended machine) runs each level once, not once per missed
        // boundary.
        assert_eq!(s.take_due(at("2026-12-01T10:31:10Z")), vec![l1, l2]);
        assert_eq!(s.next_due(), Some(at("2026-12-01T10:31:30Z")));
        assert_eq!(
            s.take_due(at("2026-12-02T00:00:00Z")),
            vec![l1, l2, Level::SNAPSHOT]
        );
    }
}
