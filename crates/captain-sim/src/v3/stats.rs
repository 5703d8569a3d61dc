//! The v3 counters shown under `v3` in `GET /_sim/stats`: jobs created and by status (a gauge
//! kept on every transition), webhooks by outcome, results served, 429s and injected errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Live v3 counters.
#[derive(Debug, Default)]
pub struct V3Stats {
    pub jobs_created: AtomicU64,
    /// Jobs in memory by wire status; moved on every transition, never reset.
    jobs_by_status: Mutex<BTreeMap<&'static str, u64>>,
    pub webhooks_delivered: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhook_attempts_failed: AtomicU64,
    pub webhooks_dropped: AtomicU64,
    pub webhooks_duplicated: AtomicU64,
    pub webhooks_retried: AtomicU64,
    pub results_served: AtomicU64,
    pub result_pages_served: AtomicU64,
    pub rate_limited: AtomicU64,
    pub injected_errors: AtomicU64,
}

/// The `v3` object of `/_sim/stats`.
#[derive(Debug, Serialize)]
pub struct V3StatsView {
    pub jobs_created: u64,
    pub jobs_by_status: BTreeMap<&'static str, u64>,
    pub webhooks: V3WebhookCounters,
    /// Result rows answered by `GET /jobs/{uid}/results` (a row served twice counts twice).
    pub results_served: u64,
    pub result_pages_served: u64,
    pub rate_limited: u64,
    pub injected_errors: u64,
}

/// Webhook delivery counters.
#[derive(Debug, Serialize)]
pub struct V3WebhookCounters {
    /// Deliveries answered 2xx (duplicates and retries included).
    pub delivered: u64,
    /// Deliveries that ended without a 2xx after their last attempt (drops included).
    pub failed: u64,
    /// Single attempts that failed (each automatic retry counts).
    pub attempts_failed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Deliveries started by the webhook-retry route.
    pub retried: u64,
}

impl V3Stats {
    /// Moves one job from `from` (none: a new job) to `to` (none: evicted).
    pub fn move_job(&self, from: Option<&'static str>, to: Option<&'static str>) {
        let mut by_status = self
            .jobs_by_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(from) = from {
            if let Some(n) = by_status.get_mut(from) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_status.remove(from);
                }
            }
        }
        if let Some(to) = to {
            *by_status.entry(to).or_default() += 1;
        }
    }

    /// Reads everything.
    pub fn snapshot(&self) -> V3StatsView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        V3StatsView {
            jobs_created: get(&self.jobs_created),
            jobs_by_status: self
                .jobs_by_status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            webhooks: V3WebhookCounters {
                delivered: get(&self.webhooks_delivered),
                failed: get(&self.webhooks_failed),
                attempts_failed: get(&self.webhook_attempts_failed),
                dropped: get(&self.webhooks_dropped),
                duplicated: get(&self.webhooks_duplicated),
                retried: get(&self.webhooks_retried),
            },
            results_served: get(&self.results_served),
            result_pages_served: get(&self.result_pages_served),
            rate_limited: get(&self.rate_limited),
            injected_errors: get(&self.injected_errors),
        }
    }

    /// Zeroes the counters (not the jobs-by-status gauge, which describes what is stored).
    pub fn reset(&self) {
        for c in [
            &self.jobs_created,
            &self.webhooks_delivered,
            &self.webhooks_failed,
            &self.webhook_attempts_failed,
            &self.webhooks_dropped,
            &self.webhooks_duplicated,
            &self.webhooks_retried,
            &self.results_served,
            &self.result_pages_served,
            &self.rate_limited,
            &self.injected_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
