//! The retry policy (capped exponential backoff with full jitter), rate-limit header parsing,
//! the hook through which a shared rate limiter sees every attempt, and the retry loop itself.
//! All waiting is `tokio::time::sleep`: dropping the future cancels the call and its waits.

use super::error::{error_chain, AttemptError, SubmitError, Verdict};
use reqwest::header::HeaderMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Smallest wait after a 429, so that `Retry-After: 0` answered forever still reaches the
/// `max_rate_limit_wait` cap instead of spinning.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_millis(100);

/// `X-RateLimit-Reset` values below this are read as seconds from now rather than as a Unix
/// time (the header's unit is undocumented; 10^9 s is 2001 as an epoch and 31 years as a delta).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// How hard the client tries before giving up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts allowed for transient failures (5xx, 408, timeouts, connection errors),
    /// the first one included. 429 answers do not count.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubles with each further failure.
    pub initial_backoff: Duration,
    /// Backoff ceiling never exceeds this.
    pub max_backoff: Duration,
    /// Total time one call may spend waiting out 429 answers.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter backoff after the `n`th consecutive failure (n ≥ 1): uniform in
    /// `[0, min(max_backoff, initial_backoff × 2^(n-1))]`.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.backoff_ceiling(n);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }

    fn backoff_ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Which rate-limit budget a call draws on: the API limits each of these separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateMode {
    /// `POST /actions/{action}/run/live`: the plan tier's requests per second.
    Live,
    /// `POST /actions/{action}/run/async`.
    Async,
    /// `POST /actions/{action}/run/schedule`.
    Schedule,
    /// Runs, callbacks and schedules management.
    Api,
}

impl RateMode {
    /// Every mode.
    pub const ALL: [RateMode; 4] = [
        RateMode::Live,
        RateMode::Async,
        RateMode::Schedule,
        RateMode::Api,
    ];

    /// The modes that submit runs: what the launch path waits on.
    pub const SUBMIT: [RateMode; 3] = [RateMode::Live, RateMode::Async, RateMode::Schedule];

    /// The `mode` label of the metrics, and the mode's `X-RateLimit-Type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            RateMode::Live => "live",
            RateMode::Async => "async",
            RateMode::Schedule => "schedule",
            RateMode::Api => "api",
        }
    }

    /// The mode an `X-RateLimit-Type` value names (any case); `None` for a value that names
    /// no mode (the header's values are undocumented; captain-sim sends the four names).
    pub fn from_limit_type(value: &str) -> Option<RateMode> {
        let value = value.trim();
        RateMode::ALL
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(value))
    }
}

/// What a 429 answer said about the limit it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitAnswer {
    /// The wait asked for: `Retry-After`, else `X-RateLimit-Reset`; `None` when neither is
    /// usable.
    pub retry_after: Option<Duration>,
    /// The limit hit, from `X-RateLimit-Type`; `None` when absent or naming no mode.
    pub limit_type: Option<RateMode>,
}

impl RateLimitAnswer {
    /// Read from a 429 answer's headers.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Self {
        Self {
            retry_after: rate_limit_wait(headers, now),
            limit_type: header_str(headers, "x-ratelimit-type").and_then(RateMode::from_limit_type),
        }
    }
}

/// Sees every attempt of every call: where a shared, instance-wide rate limiter plugs in.
#[async_trait::async_trait]
pub trait AttemptGate: Send + Sync {
    /// Awaited before each attempt (first ones and retries alike); may delay it.
    async fn before_attempt(&self, mode: RateMode);
    /// Told of each 429 to a call of `mode`, with what the answer said (the wait asked for,
    /// the limit hit).
    fn on_rate_limited(&self, mode: RateMode, answer: RateLimitAnswer);
    /// Whether `before_attempt(mode)` itself holds the next attempt of a call of `mode` back
    /// for the wait a 429 asked (a cooldown). When true the retry loop does not sleep the wait
    /// as well, so a request never waits twice; the wait still counts against
    /// `max_rate_limit_wait`.
    fn waits_out_rate_limits(&self) -> bool {
        false
    }
}

/// The wait a 429 answer asks for: `Retry-After` (delta-seconds or HTTP-date), else
/// `X-RateLimit-Reset`; `None` when neither header is usable.
pub fn rate_limit_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after(headers, now).or_else(|| rate_limit_reset(headers, now))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn seconds(text: &str) -> Option<Duration> {
    // Integers per RFC 9110; fractions tolerated since the unit is all that is documented.
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = header_str(headers, "retry-after")?;
    seconds(value).or_else(|| {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    })
}

fn rate_limit_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = header_str(headers, "x-ratelimit-reset")?;
    let n: u64 = value.parse().ok()?;
    if n < EPOCH_THRESHOLD {
        return Some(Duration::from_secs(n));
    }
    let at = UNIX_EPOCH + Duration::from_secs(n);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's budgets run out.
pub(crate) async fn run_with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    gate: Option<&dyn AttemptGate>,
    mode: RateMode,
    mut attempt: F,
) -> Result<T, SubmitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Verdict<T>>,
{
    let mut sent = 0u32;
    let mut failures = 0u32;
    let mut limited = 0u32;
    let mut waited = Duration::ZERO;
    loop {
        if let Some(gate) = gate {
            gate.before_attempt(mode).await;
        }
        sent += 1;
        match attempt().await {
            Verdict::Success(value) => return Ok(value),
            Verdict::Permanent(err) => return Err(err),
            Verdict::Transient(err) => {
                failures += 1;
                if failures >= policy.max_attempts.max(1) {
                    return Err(gave_up(sent, err));
                }
                let delay = policy.backoff(failures);
                tracing::debug!(attempt = sent, ?delay, error = %error_chain(&err), "api call failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Verdict::RateLimited { answer, error } => {
                limited += 1;
                if let Some(gate) = gate {
                    gate.on_rate_limited(mode, answer);
                }
                let wait = answer
                    .retry_after
                    .unwrap_or_else(|| policy.backoff(limited))
                    .max(MIN_RATE_LIMIT_WAIT);
                // Waiting past the cap is pointless: give up now and let the caller back off.
                if waited + wait > policy.max_rate_limit_wait {
                    return Err(gave_up(sent, error));
                }
                waited += wait;
                tracing::debug!(
                    attempt = sent,
                    ?wait,
                    mode = mode.as_str(),
                    "api rate limited, waiting"
                );
                if !gate.is_some_and(|g| g.waits_out_rate_limits()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

fn gave_up(attempts: u32, err: AttemptError) -> SubmitError {
    SubmitError::GaveUp {
        attempts,
        last_error: error_chain(&err),
        source: Some(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn backoff_stays_under_a_doubling_ceiling_capped_at_max_backoff() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(200), Duration::from_millis(500));
        for n in 1..10 {
            assert!(p.backoff(n) <= p.backoff_ceiling(n));
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = SystemTime::now();
        assert_eq!(
            rate_limit_wait(&headers("retry-after", "2"), now),
            Some(Duration::from_secs(2))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let wait = rate_limit_wait(&headers("retry-after", &later), now).unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            rate_limit_wait(&headers("retry-after", &past), now),
            Some(Duration::ZERO)
        );
        assert_eq!(rate_limit_wait(&headers("retry-after", "soon"), now), None);
    }

    #[test]
    fn rate_limit_reset_is_used_when_retry_after_is_absent() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            rate_limit_wait(&headers("x-ratelimit-reset", "1700000007"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(&headers("x-ratelimit-reset", "5"), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn x_ratelimit_type_names_the_limit_hit_in_any_case_and_another_value_names_none() {
        let now = SystemTime::now();
        let mut h = headers("retry-after", "3");
        h.insert("x-ratelimit-type", HeaderValue::from_static(" Live "));
        assert_eq!(
            RateLimitAnswer::from_headers(&h, now),
            RateLimitAnswer {
                retry_after: Some(Duration::from_secs(3)),
                limit_type: Some(RateMode::Live),
            }
        );
        for mode in RateMode::ALL {
            assert_eq!(RateMode::from_limit_type(mode.as_str()), Some(mode));
        }
        let daily = headers("x-ratelimit-type", "daily");
        assert_eq!(
            RateLimitAnswer::from_headers(&daily, now),
            RateLimitAnswer::default()
        );
    }

    /// Holds attempts back until the end of the last Retry-After it was told of.
    struct CooldownGate {
        owns_wait: bool,
        until: std::sync::Mutex<Option<tokio::time::Instant>>,
    }

    #[async_trait::async_trait]
    impl AttemptGate for CooldownGate {
        async fn before_attempt(&self, _mode: RateMode) {
            let until = *self.until.lock().unwrap();
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
        }
        fn on_rate_limited(&self, _mode: RateMode, answer: RateLimitAnswer) {
            *self.until.lock().unwrap() =
                Some(tokio::time::Instant::now() + answer.retry_after.unwrap());
        }
        fn waits_out_rate_limits(&self) -> bool {
            self.owns_wait
        }
    }

    async fn elapsed_through_one_429(gate: &CooldownGate) -> Duration {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result: Result<(), SubmitError> =
            run_with_retry(&RetryPolicy::default(), Some(gate), RateMode::Async, || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Verdict::RateLimited {
                            answer: RateLimitAnswer {
                                retry_after: Some(Duration::from_secs(2)),
                                limit_type: None,
                            },
                            error: AttemptError::RateLimited {
                                message: "slow down".into(),
                            },
                        }
                    } else {
                        Verdict::Success(())
                    }
                }
            })
            .await;
        result.unwrap();
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_that_waits_out_rate_limits_is_not_doubled_by_the_retry_loop() {
        let gate = CooldownGate {
            owns_wait: true,
            until: Default::default(),
        };
        let elapsed = elapsed_through_one_429(&gate).await;
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_gate_owning_the_wait_the_retry_loop_sleeps_retry_after_itself() {
        let gate = CooldownGate {
            owns_wait: false,
            until: std::sync::Mutex::new(None),
        };
        // The gate's own cooldown has passed by the time the loop's sleep ends: one wait, 2 s.
        let elapsed = elapsed_through_one_429(&gate).await;
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2100), "{elapsed:?}");
    }
}
