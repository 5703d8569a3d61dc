//! Commit pacing: when the owner's next periodic commit may start.
//!
//! A commit blocks the owner's loop (records, job reports and timers wait), so the next one
//! waits at least [`COMMIT_SPACING`] − 1 times as long as the last one took, on top of the
//! `processing.commit_interval` tick: the loop spends at most about a quarter of its time
//! committing. At light load a commit takes a few ms and the interval rules (results readable
//! soon after their callback); on a saturated broker commits take tens of ms, and fewer, larger
//! transactions cost the broker fewer requests, markers and state records per result
//! (measured in the README, Performance). The wait is capped so that a commit slowed by a
//! struggling broker never leaves a transaction open for long.

use std::time::Duration;
use tokio::time::Instant;

/// The next commit starts no sooner than this many times the last one's duration after the
/// last one started.
pub(super) const COMMIT_SPACING: u32 = 4;

/// The longest a commit defers the next one.
pub(super) const MAX_DEFERRAL: Duration = Duration::from_secs(1);

/// When the next periodic commit may start.
#[derive(Debug)]
pub(super) struct CommitPacing {
    not_before: Instant,
}

impl CommitPacing {
    pub(super) fn new(now: Instant) -> Self {
        Self { not_before: now }
    }

    /// Whether a commit may start at `now`.
    pub(super) fn due(&self, now: Instant) -> bool {
        now >= self.not_before
    }

    /// The earliest start of the next commit.
    pub(super) fn not_before(&self) -> Instant {
        self.not_before
    }

    /// Records a commit that ran from `started` to `ended`.
    pub(super) fn committed(&mut self, started: Instant, ended: Instant) {
        let took = ended.saturating_duration_since(started);
        let deferral = (took * (COMMIT_SPACING - 1)).min(MAX_DEFERRAL);
        self.not_before = ended + deferral;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_commit_is_due_at_once() {
        let t0 = Instant::now();
        assert!(CommitPacing::new(t0).due(t0));
    }

    #[test]
    fn a_quick_commit_leaves_the_interval_in_charge() {
        let t0 = Instant::now();
        let mut p = CommitPacing::new(t0);
        p.committed(t0, t0 + 2 * MS);
        // Deferred 6 ms: any tick of a 50 ms interval finds it due.
        assert!(!p.due(t0 + 7 * MS));
        assert!(p.due(t0 + 8 * MS));
    }

    #[test]
    fn a_slow_commit_defers_the_next_by_three_times_its_duration() {
        let t0 = Instant::now();
        let mut p = CommitPacing::new(t0);
        p.committed(t0, t0 + 80 * MS);
        assert_eq!(p.not_before(), t0 + 320 * MS);
        assert!(!p.due(t0 + 319 * MS));
        assert!(p.due(t0 + 320 * MS));
    }

    #[test]
    fn a_very_slow_commit_defers_the_next_by_at_most_a_second() {
        let t0 = Instant::now();
        let mut p = CommitPacing::new(t0);
        p.committed(t0, t0 + 5000 * MS);
        assert_eq!(p.not_before(), t0 + 5000 * MS + MAX_DEFERRAL);
    }
}
