//! The gate: [`AdaptiveLimiter`], the client's [`AttemptGate`] for one API key. Each mode
//! (live, async, schedule, api) is a lane of its own, since the API limits each separately: its
//! GCRA bucket (`governor`) at the rate its adaptive state sets, its cooldown, its FIFO of
//! waiting attempts and its metrics (`mode` label). Every attempt, first or retry, passes the
//! lane of its call's mode.
//!
//! A 429 cools down and teaches the lane of the limit it names in `X-RateLimit-Type` (the
//! call's own mode when absent or unknown). When that is another mode, the call's own lane
//! cools down for the same wait without learning from it: the API counted this call against
//! the other limit, so the retry (and the mode's other calls) wait too, as the retry loop
//! expects of a gate that waits out rate limits.

use super::adaptive::Adaptation;
use super::config::{LimiterConfig, LimiterConfigError};
use crate::captain::retry::{AttemptGate, RateLimitAnswer, RateMode};
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

/// One mode's budget.
struct Lane {
    mode: RateMode,
    /// The key's settings with this mode's overrides applied.
    config: LimiterConfig,
    state: Mutex<Paced>,
    /// FIFO turn: only the head of the queue polls the bucket, the rest wait their turn.
    queue: tokio::sync::Mutex<()>,
}

impl Lane {
    fn state(&self) -> MutexGuard<'_, Paced> {
        // The state is a few numbers always left consistent: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Paces every attempt on one API key, each mode on its own budget, and adapts each budget's
/// pace to the API's 429 answers.
///
/// A 429 starts a cooldown for the whole mode (every `before_attempt` of that mode waits it
/// out) and, for the first 429 of a burst, sets the mode's rate to what the API accepted since
/// its previous 429 (see the `adaptive` module) and holds it there; after the hold, each quiet
/// `probe_interval` with traffic adds `increase_per_sec × probe_interval`, up to the ceiling.
/// Attempts of one mode are served in arrival order.
pub struct AdaptiveLimiter {
    key_name: String,
    clock: TokioClock,
    /// One per mode, in [`RateMode::ALL`] order.
    lanes: [Lane; 4],
    metrics: Metrics,
}

impl std::fmt::Debug for AdaptiveLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates: Vec<(&str, f64)> = RateMode::ALL
            .iter()
            .map(|&mode| (mode.as_str(), self.current_rate(mode)))
            .collect();
        f.debug_struct("AdaptiveLimiter")
            .field("key_name", &self.key_name)
            .field("rates", &rates)
            .field("cooling_down", &self.cooling_down(&RateMode::ALL))
            .finish()
    }
}

impl AdaptiveLimiter {
    /// A limiter with every mode at its `rate_per_sec`, with its full burst available.
    pub fn new(config: LimiterConfig, metrics: Metrics) -> Result<Self, LimiterConfigError> {
        config.validate()?;
        let now = Instant::now();
        let clock = TokioClock { origin: now };
        let lanes = RateMode::ALL.map(|mode| {
            let config = config.for_mode(mode);
            metrics
                .limiter_permitted_rate
                .with_label_values(&[&config.key_name, mode.as_str()])
                .set(config.rate_per_sec);
            Lane {
                mode,
                state: Mutex::new(Paced {
                    adaptation: Adaptation::new(config.clone(), now),
                    bucket: Arc::new(bucket(&config, config.rate_per_sec, &clock)),
                    bucket_rate: config.rate_per_sec,
                }),
                config,
                queue: tokio::sync::Mutex::new(()),
            }
        });
        Ok(Self {
            key_name: config.key_name,
            clock,
            lanes,
            metrics,
        })
    }

    /// Requests per second currently let through for `mode`.
    pub fn current_rate(&self, mode: RateMode) -> f64 {
        self.lane(mode).state().adaptation.rate()
    }

    /// The longest cooldown running among `modes`, with its mode and the time left: the
    /// consumer pauses its partitions when this is long for a mode it submits with
    /// ([`RateMode::SUBMIT`]), rather than pile attempts up in the limiter.
    pub fn cooling_down(&self, modes: &[RateMode]) -> Option<(RateMode, Duration)> {
        let now = Instant::now();
        modes
            .iter()
            .map(|&mode| (mode, self.lane(mode).state().adaptation.cooldown_until()))
            .filter(|&(_, until)| until > now)
            .max_by_key(|&(_, until)| until)
            .map(|(mode, until)| (mode, until - now))
    }

    fn lane(&self, mode: RateMode) -> &Lane {
        let index = match mode {
            RateMode::Live => 0,
            RateMode::Async => 1,
            RateMode::Schedule => 2,
            RateMode::Api => 3,
        };
        &self.lanes[index]
    }

    /// Rebuilds the lane's bucket when its adaptation moved the rate.
    fn follow_rate(&self, lane: &Lane, paced: &mut Paced) {
        let rate = paced.adaptation.rate();
        if rate == paced.bucket_rate {
            return;
        }
        let bucket = bucket(&lane.config, rate, &self.clock);
        // A new bucket starts full; drain it so a rate change does not let a whole burst through.
        let _ = bucket.check_n(NonZeroU32::new(lane.config.burst).unwrap_or(NonZeroU32::MIN));
        paced.bucket = Arc::new(bucket);
        paced.bucket_rate = rate;
        self.metrics
            .limiter_permitted_rate
            .with_label_values(&[&self.key_name, lane.mode.as_str()])
            .set(rate);
    }

    fn count_cooldown(&self, mode: RateMode, added: Duration) {
        if !added.is_zero() {
            self.metrics
                .limiter_cooldown_seconds
                .with_label_values(&[&self.key_name, mode.as_str()])
                .inc_by(added.as_secs_f64());
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
    async fn before_attempt(&self, mode: RateMode) {
        let started = Instant::now();
        let lane = self.lane(mode);
        let labels = [self.key_name.as_str(), mode.as_str()];
        let gauge = self.metrics.limiter_waiting.with_label_values(&labels);
        gauge.inc();
        let _waiting = Waiting(&gauge);
        let _turn = lane.queue.lock().await;
        loop {
            let now = Instant::now();
            let (cooldown_until, bucket) = {
                let mut paced = lane.state();
                paced.adaptation.probe_up(now);
                self.follow_rate(lane, &mut paced);
                (paced.adaptation.cooldown_until(), paced.bucket.clone())
            };
            // Re-checked after every sleep: a 429 or a rate change may have come meanwhile.
            if cooldown_until > now {
                tokio::time::sleep_until(cooldown_until).await;
                continue;
            }
            match bucket.check() {
                Ok(()) => {
                    lane.state().adaptation.passed(Instant::now());
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
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    fn on_rate_limited(&self, mode: RateMode, answer: RateLimitAnswer) {
        let hit = answer.limit_type.unwrap_or(mode);
        // The 429 itself is counted once, by the client (`api_requests_total{code="429"}`).
        let key = self.key_name.as_str();
        let now = Instant::now();
        // The attempt passed its own lane, so that lane's meter counts it refused.
        self.lane(mode).state().adaptation.refused(now);
        let lane = self.lane(hit);
        let mut paced = lane.state();
        let limited = paced.adaptation.rate_limited(now, answer.retry_after);
        self.count_cooldown(hit, limited.cooldown_added);
        if limited.cut {
            self.follow_rate(lane, &mut paced);
            tracing::info!(
                key,
                mode = hit.as_str(),
                call_mode = mode.as_str(),
                rate = paced.adaptation.rate(),
                wait = ?limited.wait,
                hold = ?paced.adaptation.hold_until().saturating_duration_since(now),
                "api rate limited, rate adjusted"
            );
        }
        drop(paced);
        if hit != mode {
            let added = self
                .lane(mode)
                .state()
                .adaptation
                .cool_down(now, answer.retry_after);
            self.count_cooldown(mode, added);
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
    use crate::captain::limiter::config::ModeOverrides;
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

    /// A 429 that asked for `retry_after` and named no limit.
    fn said(retry_after: Option<Duration>) -> RateLimitAnswer {
        RateLimitAnswer {
            retry_after,
            limit_type: None,
        }
    }

    fn two_secs() -> RateLimitAnswer {
        said(Some(Duration::from_secs(2)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_every_attempt_of_its_mode_back_until_retry_after_has_passed() {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        limiter.on_rate_limited(RateMode::Async, two_secs());
        assert_eq!(
            limiter.cooling_down(&[RateMode::Async]),
            Some((RateMode::Async, Duration::from_secs(2)))
        );

        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    limiter.before_attempt(RateMode::Async).await;
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
        assert_eq!(limiter.cooling_down(&RateMode::ALL), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_on_one_mode_leaves_the_other_modes_paced_as_before() {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        limiter.on_rate_limited(RateMode::Async, two_secs());

        for mode in [RateMode::Live, RateMode::Schedule, RateMode::Api] {
            for _ in 0..10 {
                limiter.before_attempt(mode).await;
            }
            assert_eq!(limiter.current_rate(mode), 100.0, "{mode:?}");
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "each mode had its own burst");
        assert!((limiter.current_rate(RateMode::Async) - 70.0).abs() < 1e-9);
        assert_eq!(
            limiter.cooling_down(&[RateMode::Live, RateMode::Schedule, RateMode::Api]),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_naming_another_limit_teaches_that_mode_and_holds_the_call_s_own_mode_for_the_wait(
    ) {
        let limiter = limiter(config(100.0, 10));
        let t0 = Instant::now();
        limiter.on_rate_limited(
            RateMode::Async,
            RateLimitAnswer {
                retry_after: Some(Duration::from_secs(2)),
                limit_type: Some(RateMode::Api),
            },
        );

        assert!((limiter.current_rate(RateMode::Api) - 70.0).abs() < 1e-9);
        assert_eq!(limiter.current_rate(RateMode::Async), 100.0);
        for mode in [RateMode::Api, RateMode::Async] {
            assert_eq!(
                limiter.cooling_down(&[mode]),
                Some((mode, Duration::from_secs(2)))
            );
        }
        assert_eq!(limiter.cooling_down(&[RateMode::Schedule]), None);
        limiter.before_attempt(RateMode::Async).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn cooling_down_reports_the_longest_cooldown_among_the_modes_asked_about() {
        let limiter = limiter(config(100.0, 10));
        for (mode, secs) in [
            (RateMode::Live, 5),
            (RateMode::Async, 2),
            (RateMode::Api, 30),
        ] {
            limiter.on_rate_limited(mode, said(Some(Duration::from_secs(secs))));
        }
        assert_eq!(
            limiter.cooling_down(&RateMode::SUBMIT),
            Some((RateMode::Live, Duration::from_secs(5)))
        );
        assert_eq!(
            limiter.cooling_down(&RateMode::ALL),
            Some((RateMode::Api, Duration::from_secs(30)))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limiter.cooling_down(&RateMode::SUBMIT), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_mode_runs_at_its_own_configured_rate() {
        let limiter = limiter(LimiterConfig {
            live: Some(ModeOverrides {
                rate_per_sec: Some(10.0),
                ceiling_per_sec: Some(10.0),
                burst: Some(1),
                ..ModeOverrides::default()
            }),
            ..config(100.0, 10)
        });
        let t0 = Instant::now();
        let live = async {
            for _ in 0..21 {
                limiter.before_attempt(RateMode::Live).await;
            }
            t0.elapsed()
        };
        let asynchronous = async {
            for _ in 0..210 {
                limiter.before_attempt(RateMode::Async).await;
            }
            t0.elapsed()
        };
        let (live, asynchronous) = tokio::join!(live, asynchronous);
        assert_eq!(live, Duration::from_secs(2), "20 paced at 10/s after 1");
        assert_eq!(
            asynchronous,
            Duration::from_secs(2),
            "200 at 100/s after 10"
        );
        let permitted = |mode: RateMode| {
            limiter
                .metrics
                .limiter_permitted_rate
                .with_label_values(&["default", mode.as_str()])
                .get()
        };
        assert_eq!(
            RateMode::ALL.map(permitted),
            [10.0, 100.0, 100.0, 100.0],
            "live, async, schedule, api"
        );
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
            limiter.on_rate_limited(RateMode::Async, said(Some(Duration::from_secs(1))));
            seen.push(limiter.current_rate(RateMode::Async));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(seen, [50.0, 25.0, 20.0, 20.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_simultaneous_429s_from_one_burst_cut_the_rate_once() {
        let limiter = limiter(config(100.0, 20));
        for _ in 0..20 {
            limiter.on_rate_limited(RateMode::Async, said(None));
        }
        assert!((limiter.current_rate(RateMode::Async) - 70.0).abs() < 1e-9);
        assert_eq!(
            limiter.cooling_down(&[RateMode::Async]),
            Some((RateMode::Async, Duration::from_secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_period_the_rate_climbs_back_toward_the_ceiling_and_never_above() {
        let limiter = limiter(LimiterConfig {
            rate_per_sec: 10.0,
            ceiling_per_sec: 12.0,
            increase_per_sec: 1.0,
            ..LimiterConfig::default()
        });
        limiter.on_rate_limited(RateMode::Api, said(Some(Duration::from_secs(1))));
        assert!((limiter.current_rate(RateMode::Api) - 7.0).abs() < 1e-9);

        let t0 = Instant::now();
        let mut rates = vec![];
        while t0.elapsed() < Duration::from_secs(15) {
            limiter.before_attempt(RateMode::Api).await;
            rates.push(limiter.current_rate(RateMode::Api));
        }
        println!(
            "rate after the 429: 7.0, after 15 s of traffic: {}",
            limiter.current_rate(RateMode::Api)
        );
        assert!(
            rates.windows(2).all(|w| w[0] <= w[1]),
            "the rate only climbs"
        );
        assert!(rates.iter().all(|&r| r <= 12.0));
        assert_eq!(limiter.current_rate(RateMode::Api), 12.0);
        assert_eq!(
            limiter
                .metrics
                .limiter_permitted_rate
                .with_label_values(&["default", "api"])
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
                            answer: two_secs(),
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
        limiter.on_rate_limited(RateMode::Async, said(Some(Duration::from_secs(1))));
        let rate = limiter.current_rate(RateMode::Async);
        assert!((98.0..100.0).contains(&rate), "{rate}");
    }
}
