//! The rate limiter for one API key, shared by every task of the instance: a GCRA bucket
//! (`governor`) at a rate that adapts to the API's 429 answers, and a key-wide cooldown after
//! each 429. It is the client's `AttemptGate`, so first attempts and retries alike pass it.
//!
//! How the rate adapts: a 429 means the API's own bucket is empty, so the rate it accepted since
//! the previous 429 is its real limit. The rate is set to that measurement (cut by at most
//! `decrease_factor`), held there for a while, then probed up additively. Each 429 that lands
//! at the same level doubles the hold (up to `max_probe_hold`): a well-learned limit is used at
//! nearly 100 % and probed rarely, while a limit that moved up is found again by probing.

use super::retry::{AttemptGate, RateMode};
use crate::metrics::Metrics;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest cooldown, so that `Retry-After: 0` still spaces the retries of a burst.
const MIN_COOLDOWN: Duration = Duration::from_millis(100);
/// Shortest span, and fewest accepted attempts, from which an accepted rate is believed.
const MIN_MEASURED_SPAN: Duration = Duration::from_secs(2);
const MIN_MEASURED_ATTEMPTS: u64 = 10;
/// A 429 always cuts the rate by at least this much, even when the measured rate is higher
/// (which happens when the API's bucket started full).
const MIN_CUT: f64 = 0.98;
/// The first hold after a cut, in probe intervals; it doubles for each 429 at the same level.
const FIRST_HOLD_INTERVALS: u32 = 5;
/// A measured limit above this multiple of the previous one means the limit moved up: the
/// holds start short again.
const SAME_LEVEL: f64 = 1.05;

/// How the limiter of one key paces attempts and adapts to 429 answers: the
/// `[captain.rate_limit]` table of the configuration. Set `rate_per_sec`/`ceiling_per_sec` to
/// the plan's rate; a rate above the real limit converges down to it on 429s (to the rate the
/// API accepted between two 429s), holds there, and probes back up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterConfig {
    /// Name of the key in metrics (`key` label): a configured name, never the secret.
    pub key_name: String,
    /// Starting rate (requests per second); may be above the API's real limit.
    pub rate_per_sec: f64,
    /// Attempts allowed back to back before pacing applies.
    pub burst: u32,
    /// The rate never drops below this, however many 429s come.
    pub floor_per_sec: f64,
    /// The rate never probes above this.
    pub ceiling_per_sec: f64,
    /// Deepest cut of a 429 (rate multiplier), and the cut applied when the accepted rate
    /// cannot be measured: at most once per cooldown and once per `probe_interval`, since the
    /// 429s of one burst arrive together and one cut is enough.
    pub decrease_factor: f64,
    /// Requests per second added back for each second without a 429 (additive increase).
    pub increase_per_sec: f64,
    /// Quiet time (no 429, no rate change) before each additive step.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Longest hold at a measured limit before probing above it again.
    #[serde(with = "humantime_serde")]
    pub max_probe_hold: Duration,
    /// Cooldown after a 429 that says neither `Retry-After` nor `X-RateLimit-Reset`.
    #[serde(with = "humantime_serde")]
    pub default_cooldown: Duration,
    /// Longest cooldown honoured, whatever the API asks; the client gives up on its own budget.
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
    /// Not the limiter's own: a cooldown longer than this pauses the launch partitions (the
    /// consumer keeps polling, so it stays in its group) instead of piling requests up in
    /// memory.
    #[serde(with = "humantime_serde")]
    pub pause_consumer_after: Duration,
}

impl Default for LimiterConfig {
    /// Sized for the "Mid" plan tier (10 req/s): the rate starts at the ceiling, drops to the
    /// measured limit (by 30 % at most) per 429 and, after a hold, climbs back by 5 % of it per
    /// quiet second.
    fn default() -> Self {
        Self {
            key_name: "default".into(),
            rate_per_sec: 10.0,
            burst: 5,
            floor_per_sec: 0.5,
            ceiling_per_sec: 10.0,
            decrease_factor: 0.7,
            increase_per_sec: 0.5,
            probe_interval: Duration::from_secs(1),
            max_probe_hold: Duration::from_secs(60),
            default_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(300),
            pause_consumer_after: Duration::from_secs(2),
        }
    }
}

/// A limiter setting out of range; names the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid limiter setting {field}: {reason}")]
pub struct LimiterConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl LimiterConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), LimiterConfigError> {
        let fail = |field, reason: String| Err(LimiterConfigError { field, reason });
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.key_name.trim().is_empty() {
            return fail("key_name", "must not be empty".into());
        }
        if !positive(self.floor_per_sec) {
            return fail(
                "floor_per_sec",
                format!("must be > 0, got {}", self.floor_per_sec),
            );
        }
        if !positive(self.ceiling_per_sec) || self.ceiling_per_sec < self.floor_per_sec {
            return fail(
                "ceiling_per_sec",
                format!(
                    "must be ≥ floor_per_sec ({}), got {}",
                    self.floor_per_sec, self.ceiling_per_sec
                ),
            );
        }
        if !(self.rate_per_sec.is_finite()
            && (self.floor_per_sec..=self.ceiling_per_sec).contains(&self.rate_per_sec))
        {
            return fail(
                "rate_per_sec",
                format!(
                    "must be within [{}, {}], got {}",
                    self.floor_per_sec, self.ceiling_per_sec, self.rate_per_sec
                ),
            );
        }
        if self.burst == 0 {
            return fail("burst", "must be ≥ 1".into());
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return fail(
                "decrease_factor",
                format!("must be within (0, 1), got {}", self.decrease_factor),
            );
        }
        if !(self.increase_per_sec.is_finite() && self.increase_per_sec >= 0.0) {
            return fail(
                "increase_per_sec",
                format!("must be ≥ 0, got {}", self.increase_per_sec),
            );
        }
        if self.probe_interval.is_zero() {
            return fail("probe_interval", "must be > 0".into());
        }
        if self.max_probe_hold < self.probe_interval {
            return fail(
                "max_probe_hold",
                format!("must be ≥ probe_interval ({:?})", self.probe_interval),
            );
        }
        if self.default_cooldown > self.max_cooldown {
            return fail(
                "default_cooldown",
                format!("must be ≤ max_cooldown ({:?})", self.max_cooldown),
            );
        }
        Ok(())
    }
}

/// governor's clock reading tokio's, so that paused test time drives the bucket too.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Instant::now().duration_since(self.origin)
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

struct State {
    rate: f64,
    bucket: Arc<Bucket>,
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

/// Paces every attempt on one API key and adapts the pace to the API's 429 answers.
///
/// A 429 starts a cooldown for the whole key (every `before_attempt` waits it out) and, once per
/// cooldown, multiplies the rate by `decrease_factor`; each quiet `probe_interval` with traffic
/// adds `increase_per_sec × probe_interval` back, up to the ceiling. Attempts are served in
/// arrival order.
pub struct AdaptiveLimiter {
    config: LimiterConfig,
    clock: TokioClock,
    state: Mutex<State>,
    /// FIFO turn: only the head of the queue polls the bucket, the rest wait their turn.
    queue: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

impl std::fmt::Debug for AdaptiveLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("key_name", &self.config.key_name)
            .field("rate", &self.current_rate())
            .field("cooling_down", &self.cooling_down())
            .finish()
    }
}

impl AdaptiveLimiter {
    /// A limiter at `config.rate_per_sec`, with its full burst available.
    pub fn new(config: LimiterConfig, metrics: Metrics) -> Result<Self, LimiterConfigError> {
        config.validate()?;
        let now = Instant::now();
        let clock = TokioClock { origin: now };
        let bucket = Arc::new(bucket(&config, config.rate_per_sec, &clock));
        metrics
            .limiter_permitted_rate
            .with_label_values(&[&config.key_name])
            .set(config.rate_per_sec);
        Ok(Self {
            state: Mutex::new(State {
                rate: config.rate_per_sec,
                bucket,
                cooldown_until: now,
                last_change: now,
                last_decrease: None,
                cut_rate: None,
                same_level_cuts: 0,
                hold_until: now,
                meter: Meter::default(),
            }),
            config,
            clock,
            queue: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Requests per second currently let through.
    pub fn current_rate(&self) -> f64 {
        self.state().rate
    }

    /// Time left in the current cooldown, if any: the consumer pauses its partitions when this
    /// is long, rather than pile attempts up in the limiter.
    pub fn cooling_down(&self) -> Option<Duration> {
        let until = self.state().cooldown_until;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few numbers always left consistent: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_rate(&self, state: &mut State, rate: f64, now: Instant) {
        let rate = rate.clamp(self.config.floor_per_sec, self.config.ceiling_per_sec);
        state.last_change = now;
        if rate == state.rate {
            return;
        }
        let bucket = bucket(&self.config, rate, &self.clock);
        // A new bucket starts full; drain it so a rate change does not let a whole burst through.
        let _ = bucket.check_n(NonZeroU32::new(self.config.burst).unwrap_or(NonZeroU32::MIN));
        state.rate = rate;
        state.bucket = Arc::new(bucket);
        self.metrics
            .limiter_permitted_rate
            .with_label_values(&[&self.config.key_name])
            .set(rate);
    }

    /// Additive increase, evaluated lazily as attempts come: an idle key does not climb.
    fn probe_up(&self, state: &mut State, now: Instant) {
        let quiet_since = state
            .last_change
            .max(state.cooldown_until)
            .max(state.hold_until);
        if state.rate >= self.config.ceiling_per_sec
            || now < quiet_since + self.config.probe_interval
        {
            return;
        }
        let step = self.config.increase_per_sec * self.config.probe_interval.as_secs_f64();
        if step > 0.0 {
            let rate = state.rate + step;
            self.set_rate(state, rate, now);
        }
    }

    /// The API's bucket is empty: set the rate to what it accepted since the previous cut (its
    /// real limit), within `[rate × decrease_factor, rate × MIN_CUT]`, and hold it there.
    fn cut(&self, state: &mut State, now: Instant) {
        let since = state.last_decrease.unwrap_or(self.clock.origin);
        let measured = state.meter.accepted_rate(
            since.duration_since(self.clock.origin),
            now.duration_since(self.clock.origin),
        );
        let deepest = state.rate * self.config.decrease_factor;
        // Not `clamp`: with a `decrease_factor` above MIN_CUT the bounds cross (the deeper wins).
        let rate = measured.map_or(deepest, |m| m.min(state.rate * MIN_CUT).max(deepest));
        // The limit did not move if the API accepted no more than at the previous cut.
        let same_level = state
            .cut_rate
            .is_some_and(|previous| rate <= previous * SAME_LEVEL);
        state.same_level_cuts = if same_level {
            state.same_level_cuts.saturating_add(1)
        } else {
            0
        };
        let hold = self
            .config
            .probe_interval
            .saturating_mul(FIRST_HOLD_INTERVALS)
            .saturating_mul(1u32 << state.same_level_cuts.min(16))
            .min(self.config.max_probe_hold);
        self.set_rate(state, rate, now);
        state.last_decrease = Some(now);
        state.cut_rate = Some(state.rate);
        state.hold_until = state.cooldown_until.max(now) + hold;
    }
}

/// Attempts let through and 429s received, counted in 100 ms slots over the last minute: the
/// rate the API actually accepted between two 429s is the best estimate of its real limit.
#[derive(Debug, Default)]
struct Meter {
    /// (slot number since the limiter's origin, attempts passed, 429s), oldest first.
    slots: VecDeque<(u64, u32, u32)>,
}

const METER_SLOT: Duration = Duration::from_millis(100);
const METER_SPAN: Duration = Duration::from_secs(60);

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

    fn passed(&mut self, since_origin: Duration) {
        self.current(since_origin).1 += 1;
    }

    fn refused(&mut self, since_origin: Duration) {
        self.current(since_origin).2 += 1;
    }

    /// Attempts accepted (passed minus refused) per second from `from` to `to`, both measured
    /// from the origin; `None` when the span is too short or too sparse to mean anything.
    fn accepted_rate(&self, from: Duration, to: Duration) -> Option<f64> {
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

fn bucket(config: &LimiterConfig, rate: f64, clock: &TokioClock) -> Bucket {
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
    // `period` is never zero, so `with_period` always answers.
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock.clone())
}

/// Counts an attempt as waiting for as long as it is alive (cancellation included).
struct Waiting<'a>(&'a prometheus::IntGauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait::async_trait]
impl AttemptGate for AdaptiveLimiter {
    async fn before_attempt(&self, _mode: RateMode) {
        let started = Instant::now();
        let gauge = self
            .metrics
            .limiter_waiting
            .with_label_values(&[&self.config.key_name]);
        gauge.inc();
        let _waiting = Waiting(&gauge);
        let _turn = self.queue.lock().await;
        loop {
            let now = Instant::now();
            let (cooldown_until, bucket) = {
                let mut state = self.state();
                self.probe_up(&mut state, now);
                (state.cooldown_until, state.bucket.clone())
            };
            // Re-checked after every sleep: a 429 or a rate change may have come meanwhile.
            if cooldown_until > now {
                tokio::time::sleep_until(cooldown_until).await;
                continue;
            }
            match bucket.check() {
                Ok(()) => {
                    let at = self.clock.now();
                    self.state().meter.passed(at);
                    break;
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.metrics
            .limiter_wait
            .with_label_values(&[&self.config.key_name])
            .observe(started.elapsed().as_secs_f64());
    }

    fn on_rate_limited(&self, mode: RateMode, retry_after: Option<Duration>) {
        let key = self.config.key_name.as_str();
        let now = Instant::now();
        let wait = retry_after
            .unwrap_or(self.config.default_cooldown)
            .clamp(MIN_COOLDOWN, self.config.max_cooldown);
        let mut state = self.state();
        let cooling = state.cooldown_until > now;
        let until = now + wait;
        if until > state.cooldown_until {
            let added = until - state.cooldown_until.max(now);
            self.metrics
                .limiter_cooldown_seconds
                .with_label_values(&[key])
                .inc_by(added.as_secs_f64());
            state.cooldown_until = until;
        }
        state.meter.refused(self.clock.now());
        // The 429s of one burst arrive together: cut the rate for the first only, and not twice
        // within a probe interval, lest one burst collapse the rate to the floor.
        let recently_cut = state
            .last_decrease
            .is_some_and(|at| now < at + self.config.probe_interval);
        if !cooling && !recently_cut {
            self.cut(&mut state, now);
            tracing::info!(
                key,
                mode = mode.as_str(),
                rate = state.rate,
                ?wait,
                hold = ?state.hold_until.saturating_duration_since(now),
                "api rate limited, slowing down"
            );
        }
    }

    fn waits_out_rate_limits(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::captain::error::{AttemptError, SubmitError, Verdict};
    use crate::captain::retry::{run_with_retry, RetryPolicy};

    fn limiter(config: LimiterConfig) -> Arc<AdaptiveLimiter> {
        Arc::new(AdaptiveLimiter::new(config, Metrics::new().unwrap()).unwrap())
    }

    fn config(rate: f64, burst: u32) -> LimiterConfig {
        LimiterConfig {
            rate_per_sec: rate,
            burst,
            ceiling_per_sec: rate,
            ..LimiterConfig::default()
        }
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_every_attempt_on_the_key_back_until_retry_after_has_passed() {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        limiter.on_rate_limited(RateMode::Async, Some(Duration::from_secs(2)));
        assert_eq!(limiter.cooling_down(), Some(Duration::from_secs(2)));

        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let limiter = limiter.clone();
                let mode = [RateMode::Async, RateMode::Schedule, RateMode::Api][i % 3];
                tokio::spawn(async move {
                    limiter.before_attempt(mode).await;
                    Instant::now()
                })
            })
            .collect();
        for task in tasks {
            let passed_at = task.await.unwrap();
            assert!(
                passed_at - t0 >= Duration::from_secs(2),
                "{:?}",
                passed_at - t0
            );
        }
        assert_eq!(limiter.cooling_down(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_attempts_at_100_per_second_with_a_burst_of_10_take_about_9_9_seconds() {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        let attempts = (0..1000).map(|_| limiter.before_attempt(RateMode::Async));
        futures::future::join_all(attempts).await;
        let elapsed = secs(t0.elapsed());
        println!("1000 attempts at 100/s, burst 10: {elapsed:.3} s");
        assert!((9.85..=9.95).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_429s_cut_the_rate_multiplicatively_but_never_below_the_floor() {
        let limiter = limiter(LimiterConfig {
            floor_per_sec: 20.0,
            decrease_factor: 0.5,
            increase_per_sec: 0.0,
            ..config(100.0, 1)
        });
        let mut seen = vec![];
        for _ in 0..4 {
            limiter.on_rate_limited(RateMode::Async, Some(Duration::from_secs(1)));
            seen.push(limiter.current_rate());
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(seen, [50.0, 25.0, 20.0, 20.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_simultaneous_429s_from_one_burst_cut_the_rate_once() {
        let limiter = limiter(config(100.0, 20));
        for _ in 0..20 {
            limiter.on_rate_limited(RateMode::Async, None);
        }
        assert!((limiter.current_rate() - 70.0).abs() < 1e-9);
        assert_eq!(limiter.cooling_down(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_period_the_rate_climbs_back_toward_the_ceiling_and_never_above() {
        let limiter = limiter(LimiterConfig {
            rate_per_sec: 10.0,
            ceiling_per_sec: 12.0,
            increase_per_sec: 1.0,
            ..LimiterConfig::default()
        });
        limiter.on_rate_limited(RateMode::Api, Some(Duration::from_secs(1)));
        assert!((limiter.current_rate() - 7.0).abs() < 1e-9);

        let t0 = Instant::now();
        let mut rates = vec![];
        while t0.elapsed() < Duration::from_secs(15) {
            limiter.before_attempt(RateMode::Api).await;
            rates.push(limiter.current_rate());
        }
        println!(
            "rate after the 429: 7.0, after 15 s of traffic: {}",
            limiter.current_rate()
        );
        assert!(
            rates.windows(2).all(|w| w[0] <= w[1]),
            "the rate only climbs"
        );
        assert!(rates.iter().all(|&r| r <= 12.0));
        assert_eq!(limiter.current_rate(), 12.0);
        assert_eq!(
            limiter
                .metrics
                .limiter_permitted_rate
                .with_label_values(&["default"])
                .get(),
            12.0
        );
    }

    /// A rate-limited API, answering 429 with the wait it advertises.
    trait FakeApi: Send + 'static {
        fn call(&mut self, now: Duration) -> Result<(), Duration>;
    }

    /// A true limit of `limit` requests per fixed one-second window, answering 429 with the
    /// time left in the window, like `X-RateLimit-Reset`.
    struct FixedWindow {
        limit: u32,
        window: u64,
        used: u32,
    }

    impl FakeApi for FixedWindow {
        fn call(&mut self, now: Duration) -> Result<(), Duration> {
            let window = now.as_secs();
            if window != self.window {
                self.window = window;
                self.used = 0;
            }
            self.used += 1;
            if self.used <= self.limit {
                Ok(())
            } else {
                Err(Duration::from_secs(window + 1) - now)
            }
        }
    }

    /// A token bucket like captain-sim's: `rate` per second, `burst` deep, starting full, and
    /// `Retry-After` in whole seconds, at least 1 (so every 429 costs a second of cooldown).
    struct TokenBucket {
        rate: f64,
        burst: f64,
        tokens: f64,
        last: Duration,
    }

    impl TokenBucket {
        fn new(rate: f64, burst: f64) -> Self {
            Self {
                rate,
                burst,
                tokens: burst,
                last: Duration::ZERO,
            }
        }
    }

    impl FakeApi for TokenBucket {
        fn call(&mut self, now: Duration) -> Result<(), Duration> {
            let refill = (now - self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                Ok(())
            } else {
                let wait = ((1.0 - self.tokens) / self.rate).ceil().max(1.0);
                Err(Duration::from_secs_f64(wait))
            }
        }
    }

    /// What 50 always-busy workers achieved through `limiter` against `api` after `learning`.
    struct Drive {
        /// Accepted attempts per second after the learning phase.
        achieved: f64,
        /// Share of attempts answered 429 after the learning phase.
        share_429: f64,
        refused: u64,
    }

    async fn drive(
        limiter: Arc<AdaptiveLimiter>,
        api: impl FakeApi,
        learning: Duration,
        end: Duration,
    ) -> Drive {
        let origin = Instant::now();
        let api = Arc::new(Mutex::new(api));
        // (accepted, refused) after the learning phase.
        let tally = Arc::new(Mutex::new((0u64, 0u64)));
        let workers: Vec<_> = (0..50)
            .map(|_| {
                let (limiter, api, tally) = (limiter.clone(), api.clone(), tally.clone());
                tokio::spawn(async move {
                    loop {
                        limiter.before_attempt(RateMode::Async).await;
                        let at = Instant::now() - origin;
                        if at >= end {
                            return;
                        }
                        let answer = api.lock().unwrap().call(at);
                        let mut tally = tally.lock().unwrap();
                        let counted = at >= learning;
                        match answer {
                            Ok(()) => tally.0 += u64::from(counted),
                            Err(wait) => {
                                tally.1 += u64::from(counted);
                                limiter.on_rate_limited(RateMode::Async, Some(wait));
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let (accepted, refused) = *tally.lock().unwrap();
        Drive {
            achieved: accepted as f64 / secs(end - learning),
            share_429: refused as f64 / (accepted + refused).max(1) as f64,
            refused,
        }
    }

    fn twice_too_high(limit: f64) -> LimiterConfig {
        LimiterConfig {
            rate_per_sec: 2.0 * limit,
            ceiling_per_sec: 2.0 * limit,
            floor_per_sec: 1.0,
            burst: 5,
            ..LimiterConfig::default()
        }
    }

    fn report(api: &str, limit: f64, drive: &Drive, limiter: &AdaptiveLimiter) {
        println!(
            "{api}, true limit {limit}/s, configured {}/s: achieved {:.2}/s = {:.1} % of L, \
             429 share {:.2} % ({} refused), final rate {:.2}/s",
            2.0 * limit,
            drive.achieved,
            100.0 * drive.achieved / limit,
            100.0 * drive.share_429,
            drive.refused,
            limiter.current_rate()
        );
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

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_call_through_the_limiter_waits_retry_after_once_not_twice() {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        let mut calls = 0;
        let result: Result<(), SubmitError> = run_with_retry(
            &RetryPolicy::default(),
            Some(limiter.as_ref()),
            RateMode::Async,
            || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Verdict::RateLimited {
                            retry_after: Some(Duration::from_secs(2)),
                            error: AttemptError::RateLimited {
                                message: "slow down".into(),
                            },
                        }
                    } else {
                        Verdict::Success(())
                    }
                }
            },
        )
        .await;
        result.unwrap();
        let elapsed = t0.elapsed();
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_decrease_factor_gentler_than_the_minimum_cut_still_cuts_without_panicking() {
        let limiter = limiter(LimiterConfig {
            decrease_factor: 0.99,
            ..config(100.0, 10)
        });
        for _ in 0..300 {
            limiter.before_attempt(RateMode::Async).await;
        }
        limiter.on_rate_limited(RateMode::Async, Some(Duration::from_secs(1)));
        let rate = limiter.current_rate();
        assert!((98.0..100.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_config_out_of_range_is_refused_with_the_field_named() {
        let floor_above_ceiling = LimiterConfig {
            floor_per_sec: 20.0,
            ..LimiterConfig::default()
        };
        assert_eq!(
            floor_above_ceiling.validate().unwrap_err().field,
            "ceiling_per_sec"
        );
        let no_decrease = LimiterConfig {
            decrease_factor: 1.0,
            ..LimiterConfig::default()
        };
        let err = no_decrease.validate().unwrap_err();
        assert_eq!(err.field, "decrease_factor");
        assert!(err.to_string().contains("decrease_factor"));
        let rate_above_ceiling = LimiterConfig {
            rate_per_sec: 11.0,
            ..LimiterConfig::default()
        };
        assert_eq!(
            rate_above_ceiling.validate().unwrap_err().field,
            "rate_per_sec"
        );
        assert_eq!(LimiterConfig::default().validate(), Ok(()));
    }
}
