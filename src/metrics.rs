//! Every Prometheus metric the bridge exports, defined in one place, and the text encoder
//! served on `/metrics`. Labels are low-cardinality by construction: never a request id.

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for HTTP calls to the API and callback acknowledgement (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for time spent waiting in the API rate limiter (seconds): pacing waits are
/// milliseconds, cooldowns after a 429 seconds to minutes.
const LIMITER_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The bridge's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Launch requests consumed, by outcome (`submitted`, `rejected`, `submit_failed`,
    /// `already_submitted`).
    pub launches: IntCounterVec,
    /// Calls to the Captain Data API, by endpoint (`run_async`, `run_schedule`, `get_run`, ...)
    /// and HTTP code (`200`, `429`, ..., or `error` when no answer came).
    pub api_requests: IntCounterVec,
    /// 429 answers, by mode (`async`, `schedule`, `api`).
    pub api_rate_limited: IntCounterVec,
    /// Latency of single API calls (one attempt), by endpoint.
    pub api_duration: HistogramVec,
    /// Callbacks received, by outcome (`accepted`, `duplicate`, `unauthorized`, `malformed`,
    /// `too_large`, `unavailable`).
    pub callbacks: IntCounterVec,
    /// Time from a callback's arrival to Kafka's acknowledgement of all its records.
    pub callback_ack_duration: Histogram,
    /// Records acknowledged by Kafka, by topic role (`status`, `results`, `dead_letter`, `state`).
    pub records_produced: IntCounterVec,
    /// Records Kafka failed to take, by topic role.
    pub produce_errors: IntCounterVec,
    /// Runs submitted and not yet in a terminal status, as seen by this instance.
    pub runs_in_flight: IntGauge,
    /// Launch requests being processed right now (validated, submitting, publishing).
    pub launches_in_flight: IntGauge,
    /// 1 while the launch partitions are paused because the API key is cooling down.
    pub launch_paused_for_cooldown: IntGauge,
    /// 429 answers seen by the rate limiter, by key name (the configured name, never the
    /// secret) and mode.
    pub limiter_rate_limited: IntCounterVec,
    /// Seconds the rate limiter held a key's mode in cooldown after 429s, by key name and mode.
    pub limiter_cooldown_seconds: CounterVec,
    /// Rate the limiter currently lets through (requests per second), by key name and mode.
    pub limiter_permitted_rate: GaugeVec,
    /// Attempts waiting in the rate limiter right now, by key name and mode.
    pub limiter_waiting: IntGaugeVec,
    /// Time one attempt waited in the rate limiter (pacing and cooldown), by key name and mode.
    pub limiter_wait: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("captain_bridge".into()), None)?;
        let launches = IntCounterVec::new(
            Opts::new(
                "launch_requests_total",
                "Launch requests consumed, by outcome",
            ),
            &["outcome"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "Captain Data API calls, by endpoint and code",
            ),
            &["endpoint", "code"],
        )?;
        let api_rate_limited = IntCounterVec::new(
            Opts::new(
                "api_rate_limited_total",
                "Captain Data API 429 answers, by mode",
            ),
            &["mode"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "One Captain Data API call")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let callbacks = IntCounterVec::new(
            Opts::new("callbacks_total", "Callbacks received, by outcome"),
            &["outcome"],
        )?;
        let callback_ack_duration = Histogram::with_opts(
            HistogramOpts::new(
                "callback_ack_duration_seconds",
                "Callback arrival to Kafka acknowledgement of all its records",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let records_produced = IntCounterVec::new(
            Opts::new(
                "records_produced_total",
                "Records acknowledged by Kafka, by topic role",
            ),
            &["topic"],
        )?;
        let produce_errors = IntCounterVec::new(
            Opts::new(
                "produce_errors_total",
                "Records Kafka failed to take, by topic role",
            ),
            &["topic"],
        )?;
        let runs_in_flight = IntGauge::new("runs_in_flight", "Submitted runs not yet final")?;
        let launches_in_flight =
            IntGauge::new("launches_in_flight", "Launch requests being processed")?;

        let limiter_rate_limited = IntCounterVec::new(
            Opts::new(
                "api_limiter_rate_limited_total",
                "429 answers seen by the rate limiter, by key name and the mode whose limit was hit",
            ),
            &["key", "mode"],
        )?;
        let limiter_cooldown_seconds = CounterVec::new(
            Opts::new(
                "api_rate_limit_cooldown_seconds_total",
                "Seconds a key's mode spent in cooldown after 429 answers",
            ),
            &["key", "mode"],
        )?;
        let limiter_permitted_rate = GaugeVec::new(
            Opts::new(
                "api_permitted_rate",
                "Requests per second the rate limiter currently lets through",
            ),
            &["key", "mode"],
        )?;
        let limiter_waiting = IntGaugeVec::new(
            Opts::new(
                "api_requests_waiting",
                "Attempts waiting in the rate limiter",
            ),
            &["key", "mode"],
        )?;
        let limiter_wait = HistogramVec::new(
            HistogramOpts::new(
                "api_limiter_wait_seconds",
                "Time one attempt waited in the rate limiter",
            )
            .buckets(LIMITER_WAIT_BUCKETS.to_vec()),
            &["key", "mode"],
        )?;

        let launch_paused_for_cooldown = IntGauge::new(
            "launch_paused_for_cooldown",
            "1 while launch partitions are paused for an API rate-limit cooldown",
        )?;
        registry.register(Box::new(launch_paused_for_cooldown.clone()))?;
        registry.register(Box::new(launches.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_rate_limited.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(callback_ack_duration.clone()))?;
        registry.register(Box::new(records_produced.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(runs_in_flight.clone()))?;
        registry.register(Box::new(launches_in_flight.clone()))?;
        registry.register(Box::new(limiter_rate_limited.clone()))?;
        registry.register(Box::new(limiter_cooldown_seconds.clone()))?;
        registry.register(Box::new(limiter_permitted_rate.clone()))?;
        registry.register(Box::new(limiter_waiting.clone()))?;
        registry.register(Box::new(limiter_wait.clone()))?;

        Ok(Self {
            registry,
            launches,
            api_requests,
            api_rate_limited,
            api_duration,
            callbacks,
            callback_ack_duration,
            records_produced,
            produce_errors,
            runs_in_flight,
            launches_in_flight,
            launch_paused_for_cooldown,
            limiter_rate_limited,
            limiter_cooldown_seconds,
            limiter_permitted_rate,
            limiter_waiting,
            limiter_wait,
        })
    }

    /// The registry, for collectors added by other modules (e.g. process metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a broken metric family; serve what we have.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
