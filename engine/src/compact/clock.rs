//! Where the compaction schedule's time comes from: the wall clock, or tokio's (paused in
//! tests, to drive hours of schedule in a moment).

use std::time::Duration;

use jiff::Timestamp;

/// Where the monitor's clock comes from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `base` plus the time tokio has counted since `start`: under a paused tokio clock,
    /// a schedule can be driven through hours in a test.
    Tokio {
        /// The wall time at `start`.
        base: Timestamp,
        /// When counting began.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock starting at `base` that follows tokio's (possibly paused) time.
    pub fn tokio(base: Timestamp) -> Clock {
        Clock::Tokio {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Tokio { base, start } => {
                let elapsed = jiff::SignedDuration::try_from(start.elapsed()).unwrap_or_default();
                base.checked_add(elapsed).unwrap_or(Timestamp::MAX)
            }
        }
    }

    pub(super) async fn sleep_until(&self, t: Timestamp) {
        let wait = t.duration_since(self.now());
        if let Ok(wait) = Duration::try_from(wait) {
            tokio::time::sleep(wait).await;
        }
    }
}
