//! Counters behind `GET /_sim/stats`: requests by route template and status, 429s, callback
//! deliveries by outcome, schedule firings. Run and schedule counts by status are read from
//! the store when the stats are asked for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    requests: Mutex<BTreeMap<(String, String), BTreeMap<u16, u64>>>,
    pub rate_limited: AtomicU64,
    pub injected_errors: AtomicU64,
    pub callbacks_delivered: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub callback_attempts_failed: AtomicU64,
    pub callbacks_dropped: AtomicU64,
    pub callbacks_duplicated: AtomicU64,
    pub callbacks_replayed: AtomicU64,
    pub runs_created: AtomicU64,
    pub schedule_firings: AtomicU64,
    /// The v3 surface's counters.
    pub v3: crate::v3::stats::V3Stats,
}

/// Snapshot of the counters (the `/_sim/stats` body minus store-derived parts).
#[derive(Debug, Serialize)]
pub struct CountersView {
    /// `"METHOD /route/template" -> status -> count`.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    pub rate_limited: u64,
    pub injected_errors: u64,
    pub callbacks: CallbackCounters,
    pub runs_created: u64,
    pub schedule_firings: u64,
    pub v3: crate::v3::stats::V3StatsView,
}

/// Callback delivery counters.
#[derive(Debug, Serialize)]
pub struct CallbackCounters {
    /// Deliveries answered 2xx (duplicates and replays included).
    pub delivered: u64,
    /// Deliveries that ended FAILED after their last attempt (drops included).
    pub failed: u64,
    /// Single attempts that failed (each automatic retry counts).
    pub attempts_failed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub replayed: u64,
}

impl Stats {
    /// Counts one answered request.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *requests
            .entry((method.to_owned(), route.to_owned()))
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// Reads everything.
    pub fn snapshot(&self) -> CountersView {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|((m, r), v)| (format!("{m} {r}"), v.clone()))
            .collect();
        CountersView {
            requests,
            rate_limited: get(&self.rate_limited),
            injected_errors: get(&self.injected_errors),
            callbacks: CallbackCounters {
                delivered: get(&self.callbacks_delivered),
                failed: get(&self.callbacks_failed),
                attempts_failed: get(&self.callback_attempts_failed),
                dropped: get(&self.callbacks_dropped),
                duplicated: get(&self.callbacks_duplicated),
                replayed: get(&self.callbacks_replayed),
            },
            runs_created: get(&self.runs_created),
            schedule_firings: get(&self.schedule_firings),
            v3: self.v3.snapshot(),
        }
    }

    /// Zeroes every counter.
    pub fn reset(&self) {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        self.v3.reset();
        for c in [
            &self.rate_limited,
            &self.injected_errors,
            &self.callbacks_delivered,
            &self.callbacks_failed,
            &self.callback_attempts_failed,
            &self.callbacks_dropped,
            &self.callbacks_duplicated,
            &self.callbacks_replayed,
            &self.runs_created,
            &self.schedule_firings,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Increments a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
