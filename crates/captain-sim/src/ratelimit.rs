//! Token buckets per API key and per bucket kind (`live`, `async`, `schedule`, `api`), and the
//! 429 answer with `Retry-After`, `X-RateLimit-Type` and `X-RateLimit-Reset`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderName, HeaderValue, StatusCode};

use crate::config::{RateLimit, RateLimitsConfig, RetryAfterFormat};
use crate::error::ApiError;

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Live,
    Async,
    Schedule,
    Api,
}

impl Bucket {
    /// Value of `X-RateLimit-Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Live => "live",
            Bucket::Async => "async",
            Bucket::Schedule => "schedule",
            Bucket::Api => "api",
        }
    }

    fn limit(self, config: &RateLimitsConfig) -> Option<RateLimit> {
        match self {
            Bucket::Live => config.live,
            Bucket::Async => config.async_,
            Bucket::Schedule => config.schedule,
            Bucket::Api => config.api,
        }
    }
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
    limit: RateLimit,
}

/// All buckets. A bucket is created full on first use and re-created when its limit changes.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(String, Bucket), TokenBucket>>,
}

impl RateLimiter {
    /// Takes one token, or answers how long until one is available.
    pub fn check(
        &self,
        key: &str,
        bucket: Bucket,
        config: &RateLimitsConfig,
    ) -> Result<(), Duration> {
        let Some(limit) = bucket.limit(config) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = buckets
            .entry((key.to_owned(), bucket))
            .or_insert_with(|| TokenBucket {
                tokens: f64::from(limit.burst),
                last: now,
                limit,
            });
        if entry.limit != limit {
            *entry = TokenBucket {
                tokens: f64::from(limit.burst),
                last: now,
                limit,
            };
        }
        let refill = now.duration_since(entry.last).as_secs_f64() * limit.rps;
        entry.tokens = (entry.tokens + refill).min(f64::from(limit.burst));
        entry.last = now;
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - entry.tokens) / limit.rps))
        }
    }

    /// Forgets every bucket (used when limits are replaced).
    pub fn reset(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

/// The 429 answer for a wait of `wait`.
pub fn too_many_requests(bucket: Bucket, wait: Duration, format: RetryAfterFormat) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let reset_at = SystemTime::now() + Duration::from_secs(secs);
    let reset_epoch = reset_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let retry_after = match format {
        RetryAfterFormat::Seconds => secs.to_string(),
        RetryAfterFormat::HttpDate => httpdate::fmt_http_date(reset_at),
    };
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMIT_EXCEEDED",
        format!(
            "rate limit exceeded for {} requests; retry in {secs}s",
            bucket.as_str()
        ),
    )
    .param("rate_limit_type", bucket.as_str());
    for (name, value) in [
        ("retry-after", retry_after),
        ("x-ratelimit-type", bucket.as_str().to_owned()),
        ("x-ratelimit-reset", reset_epoch.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            error = error.header(HeaderName::from_static(name), v);
        }
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limiter = RateLimiter::default();
        let config = RateLimitsConfig {
            live: Some(RateLimit { rps: 2.0, burst: 3 }),
            ..Default::default()
        };
        for _ in 0..3 {
            assert!(limiter.check("k", Bucket::Live, &config).is_ok());
        }
        let wait = limiter.check("k", Bucket::Live, &config).unwrap_err();
        assert!(wait <= Duration::from_millis(500));
        assert!(limiter.check("other", Bucket::Live, &config).is_ok());
        assert!(limiter.check("k", Bucket::Async, &config).is_ok());
    }
}
