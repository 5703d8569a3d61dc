//! Every Prometheus metric the bridge exports, defined in one place, and the text encoder
//! served on `/metrics`. Labels are low-cardinality by construction: never a request id.

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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

/// Buckets for restoring run state (seconds).
const RESTORE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// `outcome` values of `launch_requests_total`.
const LAUNCH_OUTCOMES: &[&str] = &[
    "submitted",
    "rejected",
    "submit_failed",
    "already_submitted",
];
/// `outcome` values of `callbacks_total`.
const CALLBACK_OUTCOMES: &[&str] = &[
    "accepted",
    "unauthorized",
    "malformed",
    "too_large",
    "unavailable",
];
/// `outcome` values of `live_inputs_total`.
const LIVE_INPUT_OUTCOMES: &[&str] = &["succeeded", "failed"];
/// `topic` values (topic roles) of `records_produced_total` and `produce_errors_total`.
const TOPIC_ROLES: &[&str] = &[
    "status",
    "results",
    "dead_letter",
    "state",
    "requests",
    "callbacks",
];

/// `part` values of `schema_registry_waiting`.
pub const REGISTRY_WAITING_PARTS: &[&str] = &["outputs", "launch_router"];

/// The bridge's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Launch requests consumed, by outcome (`submitted`, `rejected`, `submit_failed`,
    /// `already_submitted`).
    pub launches: IntCounterVec,
    /// Calls to the Captain Data API, by endpoint (`run_async`, `run_schedule`, `get_run`, ...)
    /// and HTTP code (`200`, `429`, ..., or `error` when no answer came). The one count of 429
    /// answers: `code="429"`.
    pub api_requests: IntCounterVec,
    /// Latency of single API calls (one attempt), by endpoint.
    pub api_duration: HistogramVec,
    /// Callbacks received, by outcome (`accepted`, `duplicate`, `unauthorized`, `malformed`,
    /// `too_large`, `unavailable`).
    pub callbacks: IntCounterVec,
    /// Callbacks accepted at the endpoint that the owner refused: a valid token of an async
    /// chunk carried with another run than the chunk's (dead-lettered, nothing published).
    pub callbacks_foreign_run: IntCounter,
    /// Time from a callback's arrival to Kafka's acknowledgement of all its records.
    pub callback_ack_duration: Histogram,
    /// Callback and v3 webhook body bytes held in memory (being read, or waiting for Kafka's
    /// acknowledgement), against `callbacks.max_buffered_bytes`.
    pub callback_body_bytes: IntGauge,
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
    /// Seconds the rate limiter held a key's mode in cooldown after 429s, by key name and mode
    /// (`live`, `async`, `schedule`, `api`: each mode has its own budget).
    pub limiter_cooldown_seconds: CounterVec,
    /// Rate the limiter currently lets through (requests per second), by key name (the
    /// configured name, never the secret) and mode.
    pub limiter_permitted_rate: GaugeVec,
    /// Attempts waiting in the rate limiter right now, by key name and mode.
    pub limiter_waiting: IntGaugeVec,
    /// Time one attempt waited in the rate limiter (pacing and cooldown), by key name and mode.
    pub limiter_wait: HistogramVec,
    /// Partitions this instance owns (its share of the run state and of the processing).
    pub owned_partitions: IntGauge,
    /// Time to restore the run state of newly owned partitions.
    pub state_restore_duration: Histogram,
    /// Run states loaded by restores.
    pub states_restored: IntCounter,
    /// Callbacks waiting for their chunk's submission answer to be applied.
    pub callbacks_held: IntGauge,
    /// Callbacks turned into records by the owner, by outcome (`published`, `duplicate`).
    pub callbacks_processed: IntCounterVec,
    /// Time from a callback's receipt to the commit of its records (what a `read_committed`
    /// consumer waits).
    pub callback_commit_latency: Histogram,
    /// Kafka transactions, by loop (`owner`, `router`) and outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Time one transaction commit took, by loop.
    pub transaction_commit_duration: HistogramVec,
    /// Submissions whose outcome could not be recorded by this instance (shutdown past the
    /// drain deadline, or a partition moved while in flight): submitted again by the owner.
    pub launch_jobs_abandoned: IntCounter,
    /// Launch requests taken from Kafka and waiting for a submission slot.
    pub launches_waiting: IntGauge,
    /// Launch records forwarded to the requests topic by the router.
    pub launches_routed: IntCounter,
    /// Launch records skipped because not even their dead letter could be written.
    pub launch_records_skipped: IntCounter,
    /// Output records the codec could not encode, by topic (`run_status`, `run_results`) and
    /// class (`registry_unavailable`, `registry_refused`, `invalid_value`, ...).
    pub avro_encode_errors: IntCounterVec,
    /// Input records that could not be decoded, by topic (`launch_requests`, `control`) and
    /// class (`unknown_schema_id`, `truncated_payload`, `registry_unavailable`, ...).
    pub avro_decode_errors: IntCounterVec,
    /// Schema registry requests, by operation (`register`, `lookup`, `latest`,
    /// `schema_by_id`, `compatibility`).
    pub registry_request_duration: HistogramVec,
    /// Schema registry requests that failed, by operation and class.
    pub registry_request_failures: IntCounterVec,
    /// 1 while records wait for the schema registry, by `part`: `outputs` (an output topic's
    /// writer schema id is not known yet: the owners hold their partitions) and
    /// `launch_router` (an Avro launch record's writer schema cannot be fetched yet).
    pub schema_registry_waiting: IntGaugeVec,
    /// 1 while `/readyz` answers ready, 0 otherwise; set at each scrape of `/metrics`.
    pub ready: IntGauge,
    /// Consumer lag in records, by topic, summed over the partitions this instance fetches
    /// (from librdkafka's statistics, see [`crate::kafka::stats`]).
    pub consumer_lag: IntGaugeVec,
    /// The reconciler's and the control topic's metrics.
    pub reconcile: ReconcileMetrics,
    /// Live pages whose results were published.
    pub live_pages: IntCounter,
    /// Inputs of live requests that ended, by outcome (`succeeded`, `failed`).
    pub live_inputs: IntCounterVec,
    /// Live calls in flight (every live request of the instance together).
    pub live_calls_in_flight: IntGauge,
}

/// What the reconciler does to close runs, and what control commands did.
#[derive(Clone)]
pub struct ReconcileMetrics {
    /// Silent runs polled.
    pub runs_polled: IntCounter,
    /// Polls that found a status the callbacks had not brought.
    pub poll_status_changes: IntCounter,
    /// Replays of failed deliveries asked of the API.
    pub replays_requested: IntCounter,
    /// Replayed batches received.
    pub replays_received: IntCounter,
    /// Result pages lost for good (every delivery and replay failed).
    pub batches_lost: IntCounter,
    /// Runs closed as `TIMED_OUT`.
    pub runs_timed_out: IntCounter,
    /// Age of the oldest run this instance owns that is known and not final.
    pub oldest_open_run_age: prometheus::Gauge,
    /// Reconcile calls that failed, by kind (`poll`, `deliveries`, `schedule`).
    pub errors: IntCounterVec,
    /// Control commands, by command and outcome (`accepted`, `refused`, `duplicate`,
    /// `unknown_request`, `invalid`).
    pub control_commands: IntCounterVec,
}

/// `kind` values of `reconcile_errors_total`.
const RECONCILE_ERROR_KINDS: &[&str] = &["poll", "deliveries", "schedule"];

impl ReconcileMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let m = Self {
            runs_polled: counter("reconcile_runs_polled_total", "Silent runs polled")?,
            poll_status_changes: counter(
                "reconcile_poll_status_changes_total",
                "Polls that found a status no callback had brought",
            )?,
            replays_requested: counter(
                "reconcile_replays_requested_total",
                "Replays of failed callback deliveries asked of the API",
            )?,
            replays_received: counter(
                "reconcile_replays_received_total",
                "Replayed result pages received",
            )?,
            batches_lost: counter(
                "reconcile_batches_lost_total",
                "Result pages lost for good: every delivery and replay failed",
            )?,
            runs_timed_out: counter(
                "runs_timed_out_total",
                "Runs closed as TIMED_OUT after reconcile.run_deadline",
            )?,
            oldest_open_run_age: prometheus::Gauge::new(
                "oldest_nonfinal_run_age_seconds",
                "Age of the oldest known, not final run of the partitions this instance owns",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "reconcile_errors_total",
                    "Reconcile calls to the API that failed, by kind",
                ),
                &["kind"],
            )?,
            control_commands: IntCounterVec::new(
                Opts::new(
                    "control_commands_total",
                    "Control commands, by command and outcome",
                ),
                &["command", "outcome"],
            )?,
        };
        registry.register(Box::new(m.oldest_open_run_age.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.control_commands.clone()))?;
        for kind in RECONCILE_ERROR_KINDS {
            m.errors.with_label_values(&[kind]);
        }
        for command in crate::domain::control::Command::ALL {
            for outcome in ["accepted", "refused", "duplicate"] {
                m.control_commands
                    .with_label_values(&[command.as_str(), outcome]);
            }
        }
        m.control_commands
            .with_label_values(&["unreadable", "malformed"]);
        Ok(m)
    }
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
        let callback_body_bytes = IntGauge::new(
            "callback_body_bytes",
            "Callback and webhook body bytes held in memory (read or awaiting acknowledgement)",
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
        let callbacks_foreign_run = IntCounter::new(
            "callbacks_foreign_run_total",
            "Callbacks refused by the owner: an async chunk's token with another run",
        )?;
        let launches_in_flight =
            IntGauge::new("launches_in_flight", "Launch requests being processed")?;

        let limiter_cooldown_seconds = CounterVec::new(
            Opts::new(
                "api_rate_limit_cooldown_seconds_total",
                "Seconds a key's mode spent in cooldown after 429 answers",
            ),
            &["key", "mode"],
        )?;
        let limiter_permitted_rate = GaugeVec::new(
            Opts::new(
                "api_permitted_requests_per_second",
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

        let owned_partitions = IntGauge::new(
            "owned_partitions",
            "Partitions whose run state and processing this instance owns",
        )?;
        let state_restore_duration = Histogram::with_opts(
            HistogramOpts::new(
                "state_restore_duration_seconds",
                "Time to restore the run state of newly owned partitions",
            )
            .buckets(RESTORE_BUCKETS.to_vec()),
        )?;
        let states_restored = IntCounter::new(
            "states_restored_total",
            "Run states loaded when partitions were assigned",
        )?;
        let callbacks_held = IntGauge::new(
            "callbacks_held",
            "Callbacks waiting for their chunk's submission answer",
        )?;
        let callbacks_processed = IntCounterVec::new(
            Opts::new(
                "callbacks_processed_total",
                "Callbacks turned into records by the partition owner, by outcome",
            ),
            &["outcome"],
        )?;
        let callback_commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "callback_commit_latency_seconds",
                "Callback receipt to the commit of its records",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                "transactions_total",
                "Kafka transactions, by loop and outcome",
            ),
            &["loop", "outcome"],
        )?;
        let transaction_commit_duration = HistogramVec::new(
            HistogramOpts::new(
                "transaction_commit_duration_seconds",
                "Time one transaction commit took",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["loop"],
        )?;
        let launch_jobs_abandoned = IntCounter::new(
            "launch_jobs_abandoned_total",
            "Submissions whose outcome this instance could not record (submitted again)",
        )?;
        let launches_waiting = IntGauge::new(
            "launches_waiting",
            "Launch requests taken from Kafka and waiting for a submission slot",
        )?;
        let launches_routed = IntCounter::new(
            "launches_routed_total",
            "Launch records validated and forwarded to their owner's partition",
        )?;
        let launch_records_skipped = IntCounter::new(
            "launch_records_skipped_total",
            "Launch records skipped because not even their dead letter could be written",
        )?;
        for m in [
            Box::new(launches_routed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(launches_waiting.clone()),
            Box::new(launch_records_skipped.clone()),
            Box::new(owned_partitions.clone()),
            Box::new(state_restore_duration.clone()),
            Box::new(states_restored.clone()),
            Box::new(callbacks_held.clone()),
            Box::new(callbacks_processed.clone()),
            Box::new(callback_commit_latency.clone()),
            Box::new(transactions.clone()),
            Box::new(transaction_commit_duration.clone()),
            Box::new(launch_jobs_abandoned.clone()),
        ] {
            registry.register(m)?;
        }
        let avro_encode_errors = IntCounterVec::new(
            Opts::new(
                "avro_encode_errors_total",
                "Output records not encoded, by topic and class",
            ),
            &["topic", "class"],
        )?;
        let avro_decode_errors = IntCounterVec::new(
            Opts::new(
                "avro_decode_errors_total",
                "Input records not decoded, by topic and class",
            ),
            &["topic", "class"],
        )?;
        let registry_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "schema_registry_request_duration_seconds",
                "One schema registry request, by operation",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let registry_request_failures = IntCounterVec::new(
            Opts::new(
                "schema_registry_request_failures_total",
                "Schema registry requests that failed, by operation and class",
            ),
            &["operation", "class"],
        )?;
        let schema_registry_waiting = IntGaugeVec::new(
            Opts::new(
                "schema_registry_waiting",
                "1 while records wait for the schema registry, by part (outputs, launch_router)",
            ),
            &["part"],
        )?;
        for part in REGISTRY_WAITING_PARTS {
            schema_registry_waiting.with_label_values(&[part]);
        }
        registry.register(Box::new(schema_registry_waiting.clone()))?;
        registry.register(Box::new(avro_encode_errors.clone()))?;
        registry.register(Box::new(avro_decode_errors.clone()))?;
        registry.register(Box::new(registry_request_duration.clone()))?;
        registry.register(Box::new(registry_request_failures.clone()))?;

        let launch_paused_for_cooldown = IntGauge::new(
            "launch_paused_for_cooldown",
            "1 while launch partitions are paused for an API rate-limit cooldown",
        )?;
        let ready = IntGauge::new(
            "ready",
            "1 while the instance answers ready on /readyz, 0 otherwise",
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "Records behind the high watermark (committed offsets), by topic, over the partitions this instance fetches",
            ),
            &["topic"],
        )?;
        let live_pages = IntCounter::new(
            "live_pages_total",
            "Live pages whose results were published",
        )?;
        let live_inputs = IntCounterVec::new(
            Opts::new(
                "live_inputs_total",
                "Inputs of live requests that ended, by outcome",
            ),
            &["outcome"],
        )?;
        let live_calls_in_flight =
            IntGauge::new("live_calls_in_flight", "Live API calls in flight")?;
        registry.register(Box::new(live_pages.clone()))?;
        registry.register(Box::new(live_inputs.clone()))?;
        registry.register(Box::new(live_calls_in_flight.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let reconcile = ReconcileMetrics::register(&registry)?;
        registry.register(Box::new(launch_paused_for_cooldown.clone()))?;
        registry.register(Box::new(launches.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(callbacks.clone()))?;
        registry.register(Box::new(callback_ack_duration.clone()))?;
        registry.register(Box::new(callback_body_bytes.clone()))?;
        registry.register(Box::new(records_produced.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(runs_in_flight.clone()))?;
        registry.register(Box::new(callbacks_foreign_run.clone()))?;
        registry.register(Box::new(launches_in_flight.clone()))?;
        registry.register(Box::new(limiter_cooldown_seconds.clone()))?;
        registry.register(Box::new(limiter_permitted_rate.clone()))?;
        registry.register(Box::new(limiter_waiting.clone()))?;
        registry.register(Box::new(limiter_wait.clone()))?;

        // Every known label value is exported from the start at 0: a counter that appears only
        // at its first increment has no rate until its second sample, and an alert on its
        // rate (produce errors, 503 answers) or on its absence of increase could not fire.
        for outcome in LAUNCH_OUTCOMES {
            launches.with_label_values(&[outcome]);
        }
        for outcome in CALLBACK_OUTCOMES {
            callbacks.with_label_values(&[outcome]);
        }
        for outcome in LIVE_INPUT_OUTCOMES {
            live_inputs.with_label_values(&[outcome]);
        }
        for role in TOPIC_ROLES {
            records_produced.with_label_values(&[role]);
            produce_errors.with_label_values(&[role]);
        }

        Ok(Self {
            registry,
            launches,
            api_requests,
            api_duration,
            callbacks,
            callback_ack_duration,
            callback_body_bytes,
            records_produced,
            produce_errors,
            runs_in_flight,
            callbacks_foreign_run,
            launches_in_flight,
            launch_paused_for_cooldown,
            limiter_cooldown_seconds,
            limiter_permitted_rate,
            limiter_waiting,
            limiter_wait,
            owned_partitions,
            state_restore_duration,
            states_restored,
            callbacks_held,
            callbacks_processed,
            callback_commit_latency,
            transactions,
            transaction_commit_duration,
            launch_jobs_abandoned,
            launches_routed,
            launch_records_skipped,
            launches_waiting,
            avro_encode_errors,
            avro_decode_errors,
            registry_request_duration,
            registry_request_failures,
            schema_registry_waiting,
            ready,
            consumer_lag,
            live_pages,
            live_inputs,
            live_calls_in_flight,
            reconcile,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_known_label_values_are_exported_at_zero_before_any_event() {
        let text = Metrics::new().unwrap().render();

        for line in [
            r#"captain_bridge_produce_errors_total{topic="results"} 0"#,
            r#"captain_bridge_callbacks_total{outcome="unavailable"} 0"#,
            r#"captain_bridge_launch_requests_total{outcome="submit_failed"} 0"#,
            r#"captain_bridge_records_produced_total{topic="state"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
