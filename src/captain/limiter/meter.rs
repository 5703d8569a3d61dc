//! The accepted-rate meter: attempts let through and 429s received, counted in 100 ms slots over
//! the last minute, so that the rate the API accepted between two 429s can be read back.

use std::collections::VecDeque;
use std::time::Duration;

/// Shortest span, and fewest accepted attempts, from which an accepted rate is believed.
const MIN_MEASURED_SPAN: Duration = Duration::from_secs(2);
const MIN_MEASURED_ATTEMPTS: u64 = 10;

const METER_SLOT: Duration = Duration::from_millis(100);
const METER_SPAN: Duration = Duration::from_secs(60);

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

    /// Attempts accepted (passed minus refused) per second from `from` to `to`, both measured
    /// from the origin; `None` when the span is too short or too sparse to mean anything.
    pub(super) fn accepted_rate(&self, from: Duration, to: Duration) -> Option<f64> {
        let span = to.saturating_sub(from).min(METER_SPAN);
        if span < MIN_MEASURED_SPAN {
            return None;
        }
        let first = Self::slot(to - span);
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
