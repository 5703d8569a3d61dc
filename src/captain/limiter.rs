//! The rate limiter for one API key, shared by every task of the instance: a GCRA bucket
//! (`governor`) at a rate that adapts to the API's 429 answers (AIMD), and a key-wide cooldown
//! after each 429. It is the client's `AttemptGate`, so first attempts and retries alike pass it.

use super::retry::{AttemptGate, RateMode};
use crate::metrics::Metrics;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest cooldown, so that `Retry-After: 0` still spaces the retries of a burst.
const MIN_COOLDOWN: Duration = Duration::from_millis(100);

/// How the limiter of one key paces attempts and adapts to 429 answers.
#[derive(Debug, Clone, PartialEq)]
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
    /// Multiplier applied to the rate on a 429: at most once per cooldown and once per
    /// `probe_interval`, since the 429s of one burst arrive together and one cut is enough.
    pub decrease_factor: f64,
    /// Requests per second added back for each second without a 429 (additive increase).
    pub increase_per_sec: f64,
    /// Quiet time (no 429, no rate change) before each additive step.
    pub probe_interval: Duration,
    /// Cooldown after a 429 that says neither `Retry-After` nor `X-RateLimit-Reset`.
    pub default_cooldown: Duration,
    /// Longest cooldown honoured, whatever the API asks; the client gives up on its own budget.
    pub max_cooldown: Duration,
}

impl Default for LimiterConfig {
    /// Sized for the "Mid" plan tier (10 req/s): the rate starts at the ceiling, drops by 30 %
    /// per 429 and climbs back by 5 % of it per quiet second.
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
            default_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(300),
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
        let quiet_since = state.last_change.max(state.cooldown_until);
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
                Ok(()) => break,
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
        self.metrics
            .limiter_rate_limited
            .with_label_values(&[key, mode.as_str()])
            .inc();
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
        // The 429s of one burst arrive together: cut the rate for the first only, and not twice
        // within a probe interval, lest one burst collapse the rate to the floor.
        let recently_cut = state
            .last_decrease
            .is_some_and(|at| now < at + self.config.probe_interval);
        if !cooling && !recently_cut {
            let rate = state.rate * self.config.decrease_factor;
            self.set_rate(&mut state, rate, now);
            state.last_decrease = Some(now);
            tracing::info!(
                key,
                mode = mode.as_str(),
                rate = state.rate,
                ?wait,
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

    /// An API with a true limit of `limit` requests per fixed one-second window, answering 429
    /// with the time left in the window, like `X-RateLimit-Reset`.
    struct FakeApi {
        limit: u32,
        origin: Instant,
        window: u64,
        used: u32,
    }

    impl FakeApi {
        fn call(&mut self) -> Result<(), Duration> {
            let elapsed = Instant::now() - self.origin;
            let window = elapsed.as_secs();
            if window != self.window {
                self.window = window;
                self.used = 0;
            }
            self.used += 1;
            if self.used <= self.limit {
                Ok(())
            } else {
                Err(Duration::from_secs(window + 1) - elapsed)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_driven_at_twice_its_true_limit_converges_to_it_with_few_429s() {
        const L: u32 = 20;
        let limiter = limiter(LimiterConfig {
            rate_per_sec: 2.0 * f64::from(L),
            ceiling_per_sec: 2.0 * f64::from(L),
            floor_per_sec: 1.0,
            burst: 5,
            increase_per_sec: 0.05 * f64::from(L),
            ..LimiterConfig::default()
        });
        let origin = Instant::now();
        let api = Arc::new(Mutex::new(FakeApi {
            limit: L,
            origin,
            window: 0,
            used: 0,
        }));
        let learning = Duration::from_secs(30);
        let end = Duration::from_secs(330);
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
                        let answer = api.lock().unwrap().call();
                        let counted = at >= learning;
                        match answer {
                            Ok(()) if counted => tally.lock().unwrap().0 += 1,
                            Ok(()) => {}
                            Err(wait) => {
                                if counted {
                                    tally.lock().unwrap().1 += 1;
                                }
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
        let measured = secs(end - learning);
        let achieved = accepted as f64 / measured;
        let share_429 = refused as f64 / (accepted + refused) as f64;
        println!(
            "true limit {L}/s, configured {}/s: achieved {achieved:.2}/s = {:.1} % of L, \
             429 share {:.2} % ({refused} of {}), final rate {:.2}/s",
            2 * L,
            100.0 * achieved / f64::from(L),
            100.0 * share_429,
            accepted + refused,
            limiter.current_rate()
        );
        assert!(achieved >= 0.8 * f64::from(L), "achieved {achieved}");
        assert!(share_429 < 0.05, "429 share {share_429}");
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
