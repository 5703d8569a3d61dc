//! Request-level fault injection (extra latency, 5xx answers on action endpoints), drawn from
//! one seeded generator so a given request sequence sees the same faults. Callback-level
//! faults (drops, duplicates, shuffles) are drawn per run in `lifecycle`/`delivery`.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::FaultsConfig;
use crate::error::ApiError;

/// The seeded generator of request faults.
#[derive(Debug)]
pub struct FaultInjector {
    rng: Mutex<StdRng>,
}

impl FaultInjector {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xfa17)),
        }
    }

    /// Extra latency for one request.
    pub fn latency(&self, faults: &FaultsConfig) -> Option<Duration> {
        if faults.latency_ms == 0 && faults.latency_jitter_ms == 0 {
            return None;
        }
        let jitter = if faults.latency_jitter_ms > 0 {
            self.with_rng(|rng| rng.random_range(0..=faults.latency_jitter_ms))
        } else {
            0
        };
        Some(Duration::from_millis(faults.latency_ms + jitter))
    }

    /// An injected 500/503 for an action request, or `None`.
    pub fn server_error(&self, faults: &FaultsConfig) -> Option<ApiError> {
        if faults.error_rate <= 0.0 {
            return None;
        }
        let (hit, unavailable) =
            self.with_rng(|rng| (rng.random_bool(faults.error_rate), rng.random_bool(0.5)));
        if !hit {
            return None;
        }
        Some(if unavailable {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the service is temporarily unavailable (injected fault)",
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal server error (injected fault)",
            )
        })
    }

    /// Whether a replayed callback's attempt fails as if the receiver were down
    /// (`faults.callback_failure_rate`); replays are requests, so drawn in request order.
    pub fn callback_failure(&self, faults: &FaultsConfig) -> bool {
        faults.callback_failure_rate > 0.0
            && self.with_rng(|rng| rng.random_bool(faults.callback_failure_rate))
    }

    fn with_rng<R>(&self, f: impl FnOnce(&mut StdRng) -> R) -> R {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut rng)
    }
}
