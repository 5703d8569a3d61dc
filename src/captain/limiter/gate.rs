//! The gate: [`AdaptiveLimiter`], the client's [`AttemptGate`] for one API key. It paces every
//! attempt (first attempts and retries alike) through a GCRA bucket (`governor`) at the rate the
//! adaptive state sets, holds every attempt back during a cooldown, serves waiting attempts in
//! arrival order, and keeps the limiter's metrics.

use super::adaptive::Adaptation;
use super::config::{LimiterConfig, LimiterConfigError};
use crate::captain::retry::{AttemptGate, RateMode};
use crate::metrics::Metrics;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

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

/// The adaptive state and the bucket that paces at its rate, under one lock.
struct Paced {
    adaptation: Adaptation,
    bucket: Arc<Bucket>,
    /// The rate `bucket` paces at; rebuilt when the adaptation's rate moves away from it.
    bucket_rate: f64,
}

/// Paces every attempt on one API key and adapts the pace to the API's 429 answers.
///
/// A 429 starts a cooldown for the whole key (every `before_attempt` waits it out) and, for the
/// first 429 of a burst, sets the rate to what the API accepted since the previous 429 (see
/// the `adaptive` module) and holds it there; after the hold, each quiet `probe_interval` with
/// traffic adds `increase_per_sec × probe_interval`, up to the ceiling. Attempts are served in
/// arrival order.
pub struct AdaptiveLimiter {
    config: LimiterConfig,
    clock: TokioClock,
    state: Mutex<Paced>,
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
            state: Mutex::new(Paced {
                adaptation: Adaptation::new(config.clone(), now),
                bucket,
                bucket_rate: config.rate_per_sec,
            }),
            config,
            clock,
            queue: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Requests per second currently let through.
    pub fn current_rate(&self) -> f64 {
        self.state().adaptation.rate()
    }

    /// Time left in the current cooldown, if any: the consumer pauses its partitions when this
    /// is long, rather than pile attempts up in the limiter.
    pub fn cooling_down(&self) -> Option<Duration> {
        let until = self.state().adaptation.cooldown_until();
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    fn state(&self) -> MutexGuard<'_, Paced> {
        // The state is a few numbers always left consistent: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds the bucket when the adaptation moved the rate.
    fn follow_rate(&self, paced: &mut Paced) {
        let rate = paced.adaptation.rate();
        if rate == paced.bucket_rate {
            return;
        }
        let bucket = bucket(&self.config, rate, &self.clock);
        // A new bucket starts full; drain it so a rate change does not let a whole burst through.
        let _ = bucket.check_n(NonZeroU32::new(self.config.burst).unwrap_or(NonZeroU32::MIN));
        paced.bucket = Arc::new(bucket);
        paced.bucket_rate = rate;
        self.metrics
            .limiter_permitted_rate
            .with_label_values(&[&self.config.key_name])
            .set(rate);
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
                let mut paced = self.state();
                paced.adaptation.probe_up(now);
                self.follow_rate(&mut paced);
                (paced.adaptation.cooldown_until(), paced.bucket.clone())
            };
            // Re-checked after every sleep: a 429 or a rate change may have come meanwhile.
            if cooldown_until > now {
                tokio::time::sleep_until(cooldown_until).await;
                continue;
            }
            match bucket.check() {
                Ok(()) => {
                    self.state().adaptation.passed(Instant::now());
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
        self.metrics
            .limiter_rate_limited
            .with_label_values(&[key, mode.as_str()])
            .inc();
        let now = Instant::now();
        let mut paced = self.state();
        let limited = paced.adaptation.rate_limited(now, retry_after);
        if !limited.cooldown_added.is_zero() {
            self.metrics
                .limiter_cooldown_seconds
                .with_label_values(&[key])
                .inc_by(limited.cooldown_added.as_secs_f64());
        }
        if limited.cut {
            self.follow_rate(&mut paced);
            tracing::info!(
                key,
                mode = mode.as_str(),
                rate = paced.adaptation.rate(),
                wait = ?limited.wait,
                hold = ?paced.adaptation.hold_until().saturating_duration_since(now),
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
    use crate::captain::limiter::sim::limiter;
    use crate::captain::retry::{run_with_retry, RetryPolicy};

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
    async fn repeated_429s_with_nothing_measured_cut_by_decrease_factor_but_never_below_the_floor()
    {
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
}
