//! The v3 metrics, registered on the bridge's registry beside the others.

use crate::metrics::Metrics;
use prometheus::{IntCounterVec, Opts};

/// `outcome` values of `v3_webhooks_total` (the HTTP endpoint).
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "accepted",
    "unknown_job",
    "unauthorized",
    "malformed",
    "other_project",
    "too_large",
    "unavailable",
];
/// `outcome` values of `v3_webhooks_processed_total` (the partition owner).
pub const PROCESSED_OUTCOMES: &[&str] = &[
    "applied",
    "fetched",
    "duplicate",
    "unknown_job",
    "fetch_failed",
];

/// Counters of the v3 webhook path.
#[derive(Clone)]
pub struct V3Metrics {
    /// Webhooks received on `POST /webhooks/v3`, by outcome.
    pub webhooks: IntCounterVec,
    /// Webhooks handled by the partition owner, by outcome.
    pub processed: IntCounterVec,
    /// Result rows of v3 jobs published.
    pub results: prometheus::IntCounter,
}

impl V3Metrics {
    /// Registers the counters on `metrics`' registry, every outcome at 0.
    pub fn new(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        // The registry prefixes every name with `captain_bridge_`.
        let prefixed = |name: &str, help: &str| Opts::new(name, help);
        let webhooks = IntCounterVec::new(
            prefixed("v3_webhooks_total", "v3 webhooks received, by outcome"),
            &["outcome"],
        )?;
        let processed = IntCounterVec::new(
            prefixed(
                "v3_webhooks_processed_total",
                "v3 webhooks handled by the partition owner, by outcome",
            ),
            &["outcome"],
        )?;
        let results = prometheus::IntCounter::with_opts(prefixed(
            "v3_results_total",
            "Result rows of v3 jobs published",
        ))?;
        let registry = metrics.registry();
        registry.register(Box::new(webhooks.clone()))?;
        registry.register(Box::new(processed.clone()))?;
        registry.register(Box::new(results.clone()))?;
        for o in WEBHOOK_OUTCOMES {
            webhooks.with_label_values(&[o]);
        }
        for o in PROCESSED_OUTCOMES {
            processed.with_label_values(&[o]);
        }
        Ok(Self {
            webhooks,
            processed,
            results,
        })
    }
}
