//! The adaptive state of one key and its decisions: the current rate, the cooldown, the hold,
//! and how a 429 or a quiet spell moves them. No I/O, no clock of its own: every decision is
//! given `now`, so the gate (and the tests) drive it in real or paused time.
//!
//! How the rate adapts: a 429 means the API's own bucket is empty, so the rate it accepted since
//! the previous 429 is its real limit. The rate is set to that measurement (cut by at least
//! `MIN_CUT` and at most `decrease_factor`), held there for a while, then probed up additively.
//! Each 429 that lands at the same level doubles the hold (up to `max_probe_hold`): a
//! well-learned limit is used at nearly 100 % and probed rarely, while a limit that moved up is
//! found again by probing.

use super::config::LimiterConfig;
use super::meter::Meter;
use std::time::Duration;
use tokio::time::Instant;

/// Shortest cooldown, so that `Retry-After: 0` still spaces the retries of a burst.
const MIN_COOLDOWN: Duration = Duration::from_millis(100);
/// A 429 always cuts the rate by at least this much, even when the measured rate is higher
/// (which happens when the API's bucket started full).
const MIN_CUT: f64 = 0.98;
/// The first hold after a cut, in probe intervals; it doubles for each 429 at the same level.
const FIRST_HOLD_INTERVALS: u32 = 5;
/// A measured limit above this multiple of the previous one means the limit moved up: the
/// holds start short again.
const SAME_LEVEL: f64 = 1.05;

/// The adaptive state of one key.
#[derive(Debug)]
pub(super) struct Adaptation {
    config: LimiterConfig,
    /// The meter's time zero.
    origin: Instant,
    rate: f64,
    /// No attempt starts before this; in the past when not cooling down.
    cooldown_until: Instant,
    /// Last rate change (up or down): probing waits a quiet `probe_interval` after it.
    last_change: Instant,
    last_decrease: Option<Instant>,
    /// The rate set by the last cut: the limit as last measured.
    cut_rate: Option<f64>,
    /// Consecutive cuts at about the same level; the hold doubles with each.
    same_level_cuts: u32,
    /// No probing up before this (the hold after a cut).
    hold_until: Instant,
    meter: Meter,
}

/// What one 429 did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RateLimited {
    /// The cooldown it asked for, bounded by `MIN_COOLDOWN` and `max_cooldown`.
    pub wait: Duration,
    /// Cooldown time it added beyond the one already running.
    pub cooldown_added: Duration,
    /// Whether it cut the rate (only the first 429 of a burst does).
    pub cut: bool,
}

impl Adaptation {
    /// At `config.rate_per_sec`, not cooling down, with `origin` as the meter's time zero.
    /// `config` is assumed valid.
    pub(super) fn new(config: LimiterConfig, origin: Instant) -> Self {
        Self {
            rate: config.rate_per_sec,
            cooldown_until: origin,
            last_change: origin,
            last_decrease: None,
            cut_rate: None,
            same_level_cuts: 0,
            hold_until: origin,
            meter: Meter::default(),
            origin,
            config,
        }
    }

    /// Requests per second currently let through.
    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// No attempt starts before this.
    pub(super) fn cooldown_until(&self) -> Instant {
        self.cooldown_until
    }

    /// No probing up before this.
    pub(super) fn hold_until(&self) -> Instant {
        self.hold_until
    }

    /// An attempt was let through at `now`.
    pub(super) fn passed(&mut self, now: Instant) {
        self.meter.passed(now.duration_since(self.origin));
    }

    fn set_rate(&mut self, rate: f64, now: Instant) {
        self.rate = rate.clamp(self.config.floor_per_sec, self.config.ceiling_per_sec);
        self.last_change = now;
    }

    /// Additive increase, evaluated lazily as attempts come: an idle key does not climb.
    pub(super) fn probe_up(&mut self, now: Instant) {
        let quiet_since = self
            .last_change
            .max(self.cooldown_until)
            .max(self.hold_until);
        if self.rate >= self.config.ceiling_per_sec
            || now < quiet_since + self.config.probe_interval
        {
            return;
        }
        let step = self.config.increase_per_sec * self.config.probe_interval.as_secs_f64();
        if step > 0.0 {
            self.set_rate(self.rate + step, now);
        }
    }

    /// An attempt this state let through was answered 429 at `now`.
    pub(super) fn refused(&mut self, now: Instant) {
        self.meter.refused(now.duration_since(self.origin));
    }

    /// The wait a 429 asking for `retry_after` (if it said) imposes.
    fn wait(&self, retry_after: Option<Duration>) -> Duration {
        retry_after
            .unwrap_or(self.config.default_cooldown)
            .clamp(MIN_COOLDOWN, self.config.max_cooldown)
    }

    /// Starts (or extends) the cooldown for a 429 at `now` without learning from it; answers
    /// the cooldown time added beyond the one already running.
    pub(super) fn cool_down(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        let until = now + self.wait(retry_after);
        if until <= self.cooldown_until {
            return Duration::ZERO;
        }
        let added = until - self.cooldown_until.max(now);
        self.cooldown_until = until;
        added
    }

    /// A 429 at `now` on this state's limit, asking for `retry_after` if it said: starts (or
    /// extends) the cooldown and, for the first 429 of a burst, cuts the rate. The refused
    /// attempt is counted by [`Adaptation::refused`] of the state that let it through.
    pub(super) fn rate_limited(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
    ) -> RateLimited {
        let cooling = self.cooldown_until > now;
        let cooldown_added = self.cool_down(now, retry_after);
        // The 429s of one burst arrive together: cut the rate for the first only, and not twice
        // within a probe interval, lest one burst collapse the rate to the floor.
        let recently_cut = self
            .last_decrease
            .is_some_and(|at| now < at + self.config.probe_interval);
        let cut = !cooling && !recently_cut;
        if cut {
            self.cut(now);
        }
        RateLimited {
            wait: self.wait(retry_after),
            cooldown_added,
            cut,
        }
    }

    /// The API's bucket is empty: set the rate to what it accepted since the previous cut (its
    /// real limit), within `[rate × decrease_factor, rate × MIN_CUT]`, and hold it there.
    fn cut(&mut self, now: Instant) {
        let since = self.last_decrease.unwrap_or(self.origin);
        let measured = self.meter.accepted_rate(
            since.duration_since(self.origin),
            now.duration_since(self.origin),
        );
        let deepest = self.rate * self.config.decrease_factor;
        // Not `clamp`: with a `decrease_factor` above MIN_CUT the bounds cross (the deeper wins).
        let rate = measured.map_or(deepest, |m| m.min(self.rate * MIN_CUT).max(deepest));
        // The limit did not move if the API accepted no more than at the previous cut.
        let same_level = self
            .cut_rate
            .is_some_and(|previous| rate <= previous * SAME_LEVEL);
        self.same_level_cuts = if same_level {
            self.same_level_cuts.saturating_add(1)
        } else {
            0
        };
        let hold = self
            .config
            .probe_interval
            .saturating_mul(FIRST_HOLD_INTERVALS)
            .saturating_mul(1u32 << self.same_level_cuts.min(16))
            .min(self.config.max_probe_hold);
        self.set_rate(rate, now);
        self.last_decrease = Some(now);
        self.cut_rate = Some(self.rate);
        self.hold_until = self.cooldown_until.max(now) + hold;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::sim::{drive, limiter, report, twice_too_high, FixedWindow, TokenBucket};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_key_driven_at_twice_its_token_bucket_limit_uses_97_percent_of_it_with_under_1_percent_429s(
    ) {
        for (limit, burst) in [(10.0, 10.0), (20.0, 20.0), (200.0, 200.0)] {
            let limiter = limiter(twice_too_high(limit));
            let api = TokenBucket::new(limit, burst);
            let drive = drive(
                limiter.clone(),
                api,
                Duration::from_secs(60),
                Duration::from_secs(660),
            )
            .await;
            report(
                &format!("token bucket (burst {burst})"),
                limit,
                &drive,
                &limiter,
            );
            assert!(
                drive.achieved >= 0.97 * limit,
                "achieved {}",
                drive.achieved
            );
            assert!(drive.share_429 <= 0.01, "429 share {}", drive.share_429);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shallow_bucket_or_a_fixed_window_still_yields_most_of_the_limit() {
        let limit = 20.0;
        let limiter_a = limiter(twice_too_high(limit));
        let shallow = drive(
            limiter_a.clone(),
            TokenBucket::new(limit, 5.0),
            Duration::from_secs(60),
            Duration::from_secs(660),
        )
        .await;
        report("token bucket (burst 5)", limit, &shallow, &limiter_a);
        let limiter_b = limiter(twice_too_high(limit));
        let window = drive(
            limiter_b.clone(),
            FixedWindow {
                limit: 20,
                window: 0,
                used: 0,
            },
            Duration::from_secs(60),
            Duration::from_secs(660),
        )
        .await;
        report("fixed window", limit, &window, &limiter_b);
        for drive in [shallow, window] {
            assert!(drive.achieved >= 0.9 * limit, "achieved {}", drive.achieved);
            assert!(drive.share_429 <= 0.02, "429 share {}", drive.share_429);
        }
    }
}
