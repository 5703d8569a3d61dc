//! Test support: simulated rate-limited APIs (a token bucket like captain-sim's, a shallow
//! bucket, a fixed window) and a virtual-time driver that runs busy workers through a limiter
//! against one of them and reports the share of the limit achieved and of 429 answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{AdaptiveLimiter, LimiterConfig};
use crate::captain::retry::{AttemptGate, RateLimitAnswer, RateMode};
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A limiter on fresh metrics.
pub(super) fn limiter(config: LimiterConfig) -> Arc<AdaptiveLimiter> {
    Arc::new(AdaptiveLimiter::new(config, Metrics::new().unwrap()).unwrap())
}

/// A rate-limited API, answering 429 with the wait it advertises.
pub(super) trait FakeApi: Send + 'static {
    fn call(&mut self, now: Duration) -> Result<(), Duration>;
}

/// A true limit of `limit` requests per fixed one-second window, answering 429 with the
/// time left in the window, like `X-RateLimit-Reset`.
pub(super) struct FixedWindow {
    pub(super) limit: u32,
    pub(super) window: u64,
    pub(super) used: u32,
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
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: f64) -> Self {
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

/// A token bucket whose rate becomes `later` at `at` (the plan changed, or another client
/// started sharing the key).
pub(super) struct MovingBucket {
    pub(super) bucket: TokenBucket,
    pub(super) at: Duration,
    pub(super) later: f64,
}

impl FakeApi for MovingBucket {
    fn call(&mut self, now: Duration) -> Result<(), Duration> {
        if now >= self.at {
            self.bucket.rate = self.later;
        }
        self.bucket.call(now)
    }
}

/// What 50 always-busy workers achieved through `limiter` against `api` after `learning`.
pub(super) struct Drive {
    /// Accepted attempts per second after the learning phase.
    pub(super) achieved: f64,
    /// Share of attempts answered 429 after the learning phase.
    pub(super) share_429: f64,
    pub(super) refused: u64,
}

pub(super) async fn drive(
    limiter: Arc<AdaptiveLimiter>,
    api: impl FakeApi,
    learning: Duration,
    end: Duration,
) -> Drive {
    drive_with_latency(limiter, api, learning, end, Duration::ZERO).await
}

/// As [`drive`], each request taking a pseudo-random time in `[0, latency]` (seeded, so runs
/// repeat) to reach the API, as over a network.
pub(super) async fn drive_with_latency(
    limiter: Arc<AdaptiveLimiter>,
    api: impl FakeApi,
    learning: Duration,
    end: Duration,
    latency: Duration,
) -> Drive {
    let origin = Instant::now();
    let api = Arc::new(Mutex::new(api));
    // (accepted, refused) after the learning phase.
    let tally = Arc::new(Mutex::new((0u64, 0u64)));
    let workers: Vec<_> = (0..50u64)
        .map(|worker| {
            let (limiter, api, tally) = (limiter.clone(), api.clone(), tally.clone());
            tokio::spawn(async move {
                // A linear congruential generator per worker: deterministic jitter.
                let mut seed = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                loop {
                    limiter.before_attempt(RateMode::Async).await;
                    if !latency.is_zero() {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let fraction = (seed >> 11) as f64 / (1u64 << 53) as f64;
                        tokio::time::sleep(latency.mul_f64(fraction)).await;
                    }
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
                            limiter.on_rate_limited(
                                RateMode::Async,
                                RateLimitAnswer {
                                    retry_after: Some(wait),
                                    limit_type: None,
                                },
                            );
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
        achieved: accepted as f64 / (end - learning).as_secs_f64(),
        share_429: refused as f64 / (accepted + refused).max(1) as f64,
        refused,
    }
}

pub(super) fn twice_too_high(limit: f64) -> LimiterConfig {
    LimiterConfig {
        rate_per_sec: 2.0 * limit,
        ceiling_per_sec: 2.0 * limit,
        floor_per_sec: 1.0,
        burst: 5,
        ..LimiterConfig::default()
    }
}

pub(super) fn report(api: &str, limit: f64, drive: &Drive, limiter: &AdaptiveLimiter) {
    println!(
        "{api}, true limit {limit}/s: achieved {:.2}/s = {:.1} % of L, \
         429 share {:.2} % ({} refused), final rate {:.2}/s",
        drive.achieved,
        100.0 * drive.achieved / limit,
        100.0 * drive.share_429,
        drive.refused,
        limiter.current_rate(RateMode::Async)
    );
}
