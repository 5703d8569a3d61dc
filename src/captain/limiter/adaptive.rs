//! The adaptive state of one mode and its decisions: the current rate, the cooldown, the hold,
//! and how a 429 or a quiet spell moves them. No I/O, no clock of its own: every decision is
//! given `now`, so the gate (and the tests) drive it in real or paused time.
//!
//! How the rate adapts: a 429 means the API's own bucket is empty, so what it accepted between
//! an earlier 429 and this one is its real limit, less whatever its bucket wasted while full
//! (when the bridge sent below the limit). The first 429 sets the rate to that measurement,
//! lowered by 2 % at least (`MIN_CUT`) and by `decrease_factor` at most: the level, which is
//! held for a while, then probed up additively. After that:
//! - a 429 while probing above the level returns to the level, or to the measurement if it is
//!   higher: the level held without a 429, and a measurement below it is the bridge's own pace
//!   (the hold let the API's bucket fill up and waste its refill), not the API's limit;
//! - a 429 at the level lowers it to the measurement only if that is lower and spans at least
//!   `LONG_SPAN`; otherwise the 429 came from the bridge's burst after a cooldown, and only the
//!   cooldown applies.
//!
//! Each 429 that lands at the same level doubles the hold (up to `max_probe_hold`): a
//! well-learned limit is used at nearly 100 % and probed rarely, while a limit that moved up is
//! found again by probing.

use super::config::LimiterConfig;
use super::meter::{Meter, METER_SPAN};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Shortest cooldown, so that `Retry-After: 0` still spaces the retries of a burst.
const MIN_COOLDOWN: Duration = Duration::from_millis(100);
/// A 429 that lowers the rate lowers it by at least this much, even when the measured rate is
/// higher (which happens when the API's bucket started full).
const MIN_CUT: f64 = 0.98;
/// The first hold after a cut, in probe intervals; it doubles for each 429 at the same level.
const FIRST_HOLD_INTERVALS: u32 = 5;
/// A measured limit above this multiple of the previous one means the limit moved up: the
/// holds start short again.
const SAME_LEVEL: f64 = 1.05;
/// Shortest measurement trusted to lower a held level. A shorter one is mostly the cooldown
/// of the last 429: it misses a whole window of a fixed-window API, or the refill a shallow
/// bucket wasted during the cooldown, and a 429 right after a cooldown is as often the
/// bridge's burst after idling as a level too high.
const LONG_SPAN: Duration = Duration::from_secs(10);
/// Cut times remembered as measurement starts (at most one cut per probe interval).
const MAX_CUTS_KEPT: usize = 16;

/// The adaptive state of one mode.
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
    /// The latest cuts within the meter's span, oldest first: the API's bucket was empty at
    /// each, so each can start a measurement.
    cuts: VecDeque<Instant>,
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
            cuts: VecDeque::new(),
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

    /// The API's bucket is empty: set the rate to the limit as measured, within
    /// `[rate × decrease_factor, rate × MIN_CUT]`, and hold it there. See the module's doc for
    /// when a held level is kept instead.
    fn cut(&mut self, now: Instant) {
        let (measured, long) = self.measure(now);
        let deepest = self.rate * self.config.decrease_factor;
        // Not `clamp`: with a `decrease_factor` above MIN_CUT the bounds cross (the deeper wins).
        let bounded = |target: f64| target.min(self.rate * MIN_CUT).max(deepest);
        let rate = match (self.cut_rate, measured) {
            // Probing above the level: the level held without a 429, so it stands.
            (Some(level), measured) if self.rate > level => {
                bounded(measured.map_or(level, |m| m.max(level)))
            }
            // At the level, but the API accepted at least that much (a burst after the
            // cooldown overflowed it), or over too short a span to tell.
            (Some(level), Some(m)) if m >= level || !long => level,
            (_, measured) => measured.map_or(deepest, bounded),
        };
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
        self.cuts.push_back(now);
        while self.cuts.len() > MAX_CUTS_KEPT
            || self
                .cuts
                .front()
                .is_some_and(|&at| now.saturating_duration_since(at) > METER_SPAN)
        {
            self.cuts.pop_front();
        }
        self.cut_rate = Some(self.rate);
        self.hold_until = self.cooldown_until.max(now) + hold;
    }

    /// What the API accepted per second up to `now`, and whether over a span of at least
    /// `LONG_SPAN`. The span starts at the earliest remembered cut at least `LONG_SPAN` ago
    /// (the API's bucket was empty then as now), else covers the meter's whole span.
    fn measure(&self, now: Instant) -> (Option<f64>, bool) {
        let since = self
            .cuts
            .iter()
            .copied()
            .find(|&at| now.saturating_duration_since(at) <= METER_SPAN)
            .filter(|&at| now.saturating_duration_since(at) >= LONG_SPAN)
            .unwrap_or(self.origin);
        let measured = self.meter.accepted_rate(
            since.duration_since(self.origin),
            now.duration_since(self.origin),
        );
        (measured, now.saturating_duration_since(since) >= LONG_SPAN)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::sim::{
        drive, drive_with_latency, limiter, report, twice_too_high, FixedWindow, MovingBucket,
        TokenBucket,
    };
    use super::*;

    fn config(rate: f64) -> LimiterConfig {
        LimiterConfig {
            rate_per_sec: rate,
            ceiling_per_sec: 100.0,
            decrease_factor: 0.5,
            ..LimiterConfig::default()
        }
    }

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    /// `rate` attempts a second let through (and accepted) from `from` to `to` seconds, after
    /// `burst` at once at `from`.
    fn pass(a: &mut Adaptation, t0: Instant, from: f64, to: f64, rate: f64, burst: u32) {
        for _ in 0..burst {
            a.passed(at(t0, from));
        }
        let n = ((to - from) * rate).round() as u32;
        for i in 0..n {
            a.passed(at(t0, from + f64::from(i) / rate));
        }
    }

    /// One attempt answered 429 at `secs`, asking for a second.
    fn limited(a: &mut Adaptation, t0: Instant, secs: f64) -> RateLimited {
        a.refused(at(t0, secs));
        a.rate_limited(at(t0, secs), Some(Duration::from_secs(1)))
    }

    #[test]
    fn a_429_at_a_level_too_high_soon_after_a_cut_is_measured_over_more_than_its_cooldown() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(config(100.0), t0);
        // The API accepts 40/s; the first cut is bounded by decrease_factor, to 50.
        pass(&mut a, t0, 0.0, 20.0, 40.0, 0);
        assert!(limited(&mut a, t0, 20.0).cut);
        assert_eq!(a.rate(), 50.0);
        // 1.5 s later, 0.5 s after the cooldown, at the level: what passed since the cut is
        // mostly cooldown, so the measurement reaches back to the origin.
        pass(&mut a, t0, 21.0, 21.5, 40.0, 0);
        assert!(limited(&mut a, t0, 21.5).cut);
        let rate = a.rate();
        assert!(
            (37.0..40.0).contains(&rate),
            "{rate}, not a blind cut to 25"
        );
    }

    #[test]
    fn a_429_while_probing_returns_to_the_held_level_when_the_api_accepted_less_than_it() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(config(60.0), t0);
        pass(&mut a, t0, 0.0, 20.0, 50.0, 0);
        limited(&mut a, t0, 20.0);
        let level = a.rate();
        assert!((49.0..50.0).contains(&level), "{level}");
        // After the hold (until 26 s) the rate probes up, while the bridge's own traffic
        // stays at 45/s: the API's bucket is full and wastes its refill.
        for second in 21..40 {
            a.probe_up(at(t0, f64::from(second)));
        }
        assert!(a.rate() > 55.0, "{}", a.rate());
        pass(&mut a, t0, 21.0, 40.0, 45.0, 0);
        limited(&mut a, t0, 40.0);
        assert_eq!(a.rate(), level, "not the 45/s the bridge itself sent");
    }

    #[test]
    fn a_429_at_the_held_level_lowers_it_only_to_a_lower_measurement_over_a_long_span() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(config(60.0), t0);
        pass(&mut a, t0, 0.0, 20.0, 50.0, 0);
        limited(&mut a, t0, 20.0);
        let level = a.rate();
        // The API refilled during the cooldown and the bridge's burst took it: it accepted
        // 50/s, more than the level, so the 429 came from the burst and the level stays.
        pass(&mut a, t0, 21.0, 30.0, 50.0, 50);
        limited(&mut a, t0, 30.0);
        assert_eq!(a.rate(), level);
        // It now accepts 40/s: measured from the cut at 20 s, 44/s.
        pass(&mut a, t0, 31.0, 45.0, 40.0, 40);
        limited(&mut a, t0, 45.0);
        let rate = a.rate();
        assert!((43.0..45.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_429_at_the_held_level_within_the_first_seconds_keeps_it() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(config(60.0), t0);
        pass(&mut a, t0, 0.0, 3.0, 50.0, 0);
        limited(&mut a, t0, 3.0);
        let level = a.rate();
        // 6 s of history, most of it the cooldown and the start: too short to lower a level.
        pass(&mut a, t0, 4.0, 6.0, 40.0, 0);
        assert!(limited(&mut a, t0, 6.0).cut);
        assert_eq!(a.rate(), level);
    }

    #[tokio::test(start_paused = true)]
    async fn like_the_benchmark_a_key_configured_at_twice_its_limit_uses_97_percent_of_it_in_the_second_half_of_90_seconds(
    ) {
        // scripts/bench.sh rate: the API's bucket holds one second, the bridge's half a
        // second of its rate; requests take up to 20 ms to reach the API.
        for limit in [10.0, 50.0, 200.0] {
            let limiter = limiter(LimiterConfig {
                rate_per_sec: 2.0 * limit,
                ceiling_per_sec: 2.0 * limit,
                burst: limit as u32,
                ..LimiterConfig::default()
            });
            let drive = drive_with_latency(
                limiter.clone(),
                TokenBucket::new(limit, limit),
                Duration::from_secs(45),
                Duration::from_secs(90),
                Duration::from_millis(20),
            )
            .await;
            report(
                "token bucket (burst L), bridge at 2×L, 45-90 s",
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
                &format!("token bucket (burst {burst}), bridge at 2×L"),
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
    async fn a_shallow_bucket_or_a_fixed_window_still_yields_97_percent_of_the_limit() {
        let limit = 20.0;
        let limiter_a = limiter(twice_too_high(limit));
        let shallow = drive(
            limiter_a.clone(),
            TokenBucket::new(limit, 5.0),
            Duration::from_secs(60),
            Duration::from_secs(660),
        )
        .await;
        report(
            "token bucket (burst 5), bridge at 2×L",
            limit,
            &shallow,
            &limiter_a,
        );
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
        report("fixed window, bridge at 2×L", limit, &window, &limiter_b);
        for drive in [shallow, window] {
            assert!(
                drive.achieved >= 0.97 * limit,
                "achieved {}",
                drive.achieved
            );
            assert!(drive.share_429 <= 0.02, "429 share {}", drive.share_429);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_that_moves_up_is_found_again_and_one_that_moves_down_is_followed() {
        // 20/s, then 30/s from 200 s on: counted from 400 s.
        let up = limiter(twice_too_high(30.0));
        let raised = drive(
            up.clone(),
            MovingBucket {
                bucket: TokenBucket::new(20.0, 20.0),
                at: Duration::from_secs(200),
                later: 30.0,
            },
            Duration::from_secs(400),
            Duration::from_secs(660),
        )
        .await;
        report(
            "token bucket 20/s, then 30/s, bridge at 60/s",
            30.0,
            &raised,
            &up,
        );
        // 30/s, then 20/s from 200 s on: counted from 260 s.
        let down = limiter(twice_too_high(30.0));
        let lowered = drive(
            down.clone(),
            MovingBucket {
                bucket: TokenBucket::new(30.0, 30.0),
                at: Duration::from_secs(200),
                later: 20.0,
            },
            Duration::from_secs(260),
            Duration::from_secs(660),
        )
        .await;
        report(
            "token bucket 30/s, then 20/s, bridge at 60/s",
            20.0,
            &lowered,
            &down,
        );
        assert!(
            raised.achieved >= 0.95 * 30.0,
            "achieved {}",
            raised.achieved
        );
        assert!(
            lowered.achieved >= 0.97 * 20.0,
            "achieved {}",
            lowered.achieved
        );
        for drive in [raised, lowered] {
            assert!(drive.share_429 <= 0.01, "429 share {}", drive.share_429);
        }
    }
}
