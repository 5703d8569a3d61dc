//! The accepted-rate meter: attempts let through and 429s received, counted in 100 ms slots over
//! the last minute, so that the rate the API accepted between two 429s can be read back.

use std::collections::VecDeque;
use std::time::Duration;

/// Shortest span, and fewest accepted attempts, from which an accepted rate is believed.
const MIN_MEASURED_SPAN: Duration = Duration::from_secs(2);
const MIN_MEASURED_ATTEMPTS: u64 = 10;

const METER_SLOT: Duration = Duration::from_millis(100);
pub(super) const METER_SPAN: Duration = Duration::from_secs(60);

/// Attempts let through and 429s received, counted in 100 ms slots over the last minute: the
/// rate the API actually accepted between two 429s is the best estimate of its real limit.
/// Times are durations since the limiter's origin.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// (slot number since the limiter's origin, attempts passed, 429s), oldest first.
    slots: VecDeque<(u64, u32, u32)>,
}

impl Meter {
    fn slot(since_origin: Duration) -> u64 {
        (since_origin.as_millis() / METER_SLOT.as_millis()) as u64
    }

    fn current(&mut self, since_origin: Duration) -> &mut (u64, u32, u32) {
        let slot = Self::slot(since_origin);
        let oldest = Self::slot(since_origin.saturating_sub(METER_SPAN));
        while self.slots.front().is_some_and(|s| s.0 < oldest) {
            self.slots.pop_front();
        }
        if self.slots.back().is_none_or(|s| s.0 != slot) {
            self.slots.push_back((slot, 0, 0));
        }
        // Just pushed or matched: the deque is not empty.
        let last = self.slots.len() - 1;
        &mut self.slots[last]
    }

    /// An attempt was let through.
    pub(super) fn passed(&mut self, since_origin: Duration) {
        self.current(since_origin).1 += 1;
    }

    /// An attempt was answered 429.
    pub(super) fn refused(&mut self, since_origin: Duration) {
        self.current(since_origin).2 += 1;
    }

    /// Attempts accepted (passed minus refused) per second after `from` until `to`, both
    /// measured from the origin; `None` when the span is too short or too sparse to mean
    /// anything. The slot holding `from` is left out: `from` is a 429, whose cooldown (at least
    /// a slot long) let nothing through after it, so that slot only holds what came before.
    pub(super) fn accepted_rate(&self, from: Duration, to: Duration) -> Option<f64> {
        let span = to.saturating_sub(from).min(METER_SPAN);
        if span < MIN_MEASURED_SPAN {
            return None;
        }
        let first = Self::slot(to - span) + 1;
        let (passed, refused) = self
            .slots
            .iter()
            .filter(|s| s.0 >= first)
            .fold((0u64, 0u64), |(p, r), s| {
                (p + u64::from(s.1), r + u64::from(s.2))
            });
        let accepted = passed.saturating_sub(refused);
        (accepted >= MIN_MEASURED_ATTEMPTS).then(|| accepted as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_window_starting_at_a_429_leaves_out_what_passed_just_before_it() {
        let mut meter = Meter::default();
        // A burst of 10, then a 429 in the same 100 ms slot.
        for i in 0..10 {
            meter.passed(at(0.01 + f64::from(i) * 0.004));
        }
        meter.passed(at(0.05));
        meter.refused(at(0.06));
        // After the cooldown, 10/s for two seconds.
        for i in 0..20 {
            meter.passed(at(1.0 + f64::from(i) * 0.1));
        }
        let rate = meter.accepted_rate(at(0.06), at(3.0)).unwrap();
        assert!((rate - 20.0 / 2.94).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_span_too_short_or_too_sparse_measures_nothing() {
        let mut meter = Meter::default();
        for i in 0..30 {
            meter.passed(at(f64::from(i) * 0.1));
        }
        assert_eq!(meter.accepted_rate(at(1.0), at(2.5)), None);
        assert!(meter.accepted_rate(at(0.0), at(3.0)).is_some());
        let mut sparse = Meter::default();
        sparse.passed(at(1.0));
        assert_eq!(sparse.accepted_rate(at(0.0), at(10.0)), None);
    }
}
