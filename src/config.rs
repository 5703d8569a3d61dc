//! Typed settings: one TOML or YAML file, every key defaulted, overridden by environment
//! variables (`CAPTAIN_BRIDGE_<SECTION>__<KEY>`); secrets only from the environment or from
//! files named in the config, wrapped so they never print. Errors name the offending key.

use figment::providers::{Format, Serialized, Toml, Yaml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Prefix of every environment override, e.g. `CAPTAIN_BRIDGE_KAFKA__BOOTSTRAP_SERVERS`.
pub const ENV_PREFIX: &str = "CAPTAIN_BRIDGE_";
/// The Captain Data API key.
pub const ENV_API_KEY: &str = "CAPTAIN_BRIDGE_API_KEY";
/// Callback token keys, `kid:base64secret[,kid:base64secret...]`.
pub const ENV_CALLBACK_KEYS: &str = "CAPTAIN_BRIDGE_CALLBACK_KEYS";
/// Optional shared secret sent in `callback.headers` and checked on every callback.
pub const ENV_CALLBACK_HEADER_SECRET: &str = "CAPTAIN_BRIDGE_CALLBACK_HEADER_SECRET";

const SECRET_ENVS: [&str; 3] = [ENV_API_KEY, ENV_CALLBACK_KEYS, ENV_CALLBACK_HEADER_SECRET];

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Parse(String),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Room for headers and framing around a callback body in its intake record.
pub const RECORD_HEADROOM: usize = 64 * 1024;

/// Everything the bridge is configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub captain: CaptainSettings,
    pub callbacks: CallbackSettings,
    pub ops: OpsSettings,
    pub launch: LaunchSettings,
    pub live: LiveSettings,
    pub processing: ProcessingSettings,
    pub reconcile: ReconcileSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
    /// v3 workflows (`mode: "workflow"`, `POST /webhooks/v3`); off by default.
    pub v3: crate::workflows::V3Settings,
    /// The Confluent-compatible schema registry of the Avro topics (`kafka.formats`).
    pub schema_registry: crate::avro::SchemaRegistrySettings,
    /// Secrets, read from the environment or files, never from the config file itself.
    #[serde(skip)]
    pub secrets: Secrets,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group of the launch consumer; every instance of one deployment shares it.
    pub group_id: String,
    pub client_id: String,
    pub topics: TopicSettings,
    /// The value format of each output topic (`json`, the default, or `avro`).
    pub formats: crate::avro::OutputFormats,
    /// Create missing topics at start-up (the runs topic compacted).
    pub create_topics: bool,
    /// Partitions and replication of topics the bridge creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer tries to deliver a record before reporting failure.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Consumer group session timeout: how soon a crashed instance's partitions move to the
    /// others (librdkafka's 45 s default stalls launches that long after a `kill -9`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `transaction.timeout.ms`: how long a transaction may stay open. After a crash, the new
    /// owner of a partition waits for the dead instance's open transaction: this long, plus up
    /// to the broker's `transaction.abort.timed.out.transaction.cleanup.interval.ms` (10 s by
    /// default), unless `instance_id` lets the restarted instance fence it at once.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// A stable name for this instance, unique among the running ones (e.g. the pod's name):
    /// its transactional ids derive from it, so the instance restarted after a crash aborts its
    /// predecessor's open transaction at start-up and `read_committed` readers do not wait out
    /// `transaction_timeout`. Unset: a random name per start. Two running instances with the
    /// same name fence each other.
    pub instance_id: Option<String>,
    /// Largest record the bridge writes to (and creates) its internal topics: a callback body
    /// or a launch request. Internal topics get it as `max.message.bytes`.
    pub max_record_bytes: usize,
    /// How often the consumer reports librdkafka's statistics, from which
    /// `captain_bridge_consumer_lag_records` is set; `0s` turns them off.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "captain-bridge".into(),
            client_id: "captain-bridge".into(),
            topics: TopicSettings::default(),
            formats: crate::avro::OutputFormats::default(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            delivery_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(15),
            instance_id: None,
            max_record_bytes: 10 * 1024 * 1024,
            statistics_interval: Duration::from_secs(15),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    pub launch_requests: String,
    pub run_status: String,
    pub run_results: String,
    pub dead_letter: String,
    /// Compacted run state, keyed by request_id (internal).
    pub runs: String,
    pub control: String,
    /// Received callbacks, the durable intake log (internal).
    pub callbacks: String,
    /// Validated launch requests keyed by request_id (internal): the launch topic may be
    /// keyed otherwise, and each request must reach the owner of its state.
    pub requests: String,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            launch_requests: "captain.launch-requests".into(),
            run_status: "captain.run-status".into(),
            run_results: "captain.run-results".into(),
            dead_letter: "captain.dead-letter".into(),
            runs: "captain.runs".into(),
            control: "captain.control".into(),
            callbacks: "captain.callbacks".into(),
            requests: "captain.requests".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptainSettings {
    /// API base including the version, e.g. `https://api.captaindata.com/v4`.
    pub base_url: String,
    /// File holding the API key (alternative to `CAPTAIN_BRIDGE_API_KEY`).
    pub api_key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per API call for 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Longest total wait on 429 answers for one call before it fails.
    #[serde(with = "humantime_serde")]
    pub max_rate_limit_wait: Duration,
    /// Inputs per async run (the API allows 100,000).
    pub async_max_inputs: usize,
    /// Inputs per schedule (the API allows 100).
    pub schedule_max_inputs: usize,
    /// The shared, adaptive rate limiter every API call of this instance goes through.
    pub rate_limit: crate::captain::LimiterConfig,
}

impl Default for CaptainSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.captaindata.com/v4".into(),
            api_key_file: None,
            request_timeout: Duration::from_secs(30),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_rate_limit_wait: Duration::from_secs(600),
            async_max_inputs: 100_000,
            schedule_max_inputs: 100,
            rate_limit: crate::captain::LimiterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackSettings {
    /// Whether the callback endpoint runs. Off: no listener, no callback keys needed, and only
    /// live requests are served (async and schedule requests are rejected `mode_unavailable`):
    /// for a bridge that cannot receive inbound HTTP.
    pub enabled: bool,
    /// Where the callback endpoint listens.
    pub listen: SocketAddr,
    /// How Captain Data reaches this endpoint (behind the load balancer), without `/callbacks`.
    /// Unset: `http://` + the bound listen address (loopback when listening on every
    /// interface), which only a local API (captain-sim) can reach; set it in production.
    pub public_base_url: Option<String>,
    /// Key id (from the callback keys) that signs new tokens; the others only verify.
    pub signing_key_id: String,
    /// File holding callback keys (alternative to `CAPTAIN_BRIDGE_CALLBACK_KEYS`).
    pub keys_file: Option<PathBuf>,
    /// File holding the header secret (alternative to `CAPTAIN_BRIDGE_CALLBACK_HEADER_SECRET`).
    pub header_secret_file: Option<PathBuf>,
    /// Header carrying the header secret on callbacks.
    pub header_name: String,
    /// Bodies above this are refused with 413 before being buffered.
    pub max_body_bytes: usize,
    /// How long a body may take to arrive whole once its headers are in; past it, 408 (a
    /// stalled or trickling sender cannot hold its buffer forever).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Body bytes the instance holds in memory at once, over every callback and v3 webhook
    /// being read or waiting for Kafka's acknowledgement; a body that would pass it is
    /// answered 503 with `Retry-After` (the platform delivers it again).
    pub max_buffered_bytes: usize,
    /// Most result items one callback may carry (each becomes a record); beyond it, 413.
    pub max_results: usize,
    /// How long a callback waits for Kafka's acknowledgement before answering 503.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// `Retry-After` of a 503 (Kafka could not take the callback in time).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Batches remembered per run for duplicate detection.
    pub dedupe_window: usize,
    /// How long an async run's callback token is accepted after submission (a callback, a
    /// platform retry or a replay after it gets 401). Schedule tokens do not expire: every
    /// firing calls back with the schedule's token.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Ignored, kept so that configurations written for earlier versions still load: a
    /// callback that overtakes its submit answer now waits in its partition's owner, which
    /// applies the answer first.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub submit_wait: Option<Duration>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_base_url: None,
            signing_key_id: "k1".into(),
            keys_file: None,
            header_secret_file: None,
            header_name: "x-captain-bridge-secret".into(),
            max_body_bytes: 8 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            max_buffered_bytes: 256 * 1024 * 1024,
            max_results: 10_000,
            ack_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            dedupe_window: 512,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            submit_wait: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsSettings {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchSettings {
    /// Launch requests processed at once per instance; beyond it partitions are paused.
    pub max_in_flight: usize,
}

impl Default for LaunchSettings {
    fn default() -> Self {
        Self { max_in_flight: 64 }
    }
}

/// `[live]`: live requests (one `run/live` call per input and page, results in the answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveSettings {
    /// Most inputs of one live request; larger ones are rejected (`too_many_inputs`). Each
    /// input's progress is part of the request's run state, so this bounds that record too.
    pub max_inputs: usize,
    /// Inputs of one live request paged at once (each one page at a time).
    pub concurrency: usize,
    /// Live calls in flight on this instance, every live request together.
    pub max_calls_in_flight: usize,
    /// `mode: "auto"` runs live at or under this many inputs, async above (live whatever
    /// the count when `callbacks.enabled` is false).
    pub auto_max_inputs: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            max_inputs: 100,
            concurrency: 4,
            max_calls_in_flight: 32,
            auto_max_inputs: 10,
        }
    }
}

/// Largest `live.max_inputs`: a live request's run state keeps a few hundred bytes per input
/// (its next-page cursor among them) in one record of the run-state topic.
pub const LIVE_MAX_INPUTS: usize = 10_000;

/// `[processing]`: the partition owners (and the launch router).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingSettings {
    /// How often the open transaction is committed: what a `read_committed` consumer waits
    /// for at most, beyond the processing itself. Shorter costs the broker more commits. A
    /// slow commit spaces the next further (see `owner::pacing`).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On a rebalance, how long the submissions in flight of the partitions leaving may take
    /// to answer (their outcome is committed before the partitions go; past it, the new
    /// owner submits them again).
    #[serde(with = "humantime_serde")]
    pub revoke_drain: Duration,
    /// Bound on restoring the run state of newly owned partitions (then retried).
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(50),
            revoke_drain: Duration::from_secs(5),
            restore_timeout: Duration::from_secs(120),
        }
    }
}

/// `[reconcile]`: closing every run. Each partition owner watches the runs of its partitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Off: runs close only through their callbacks (nothing is polled or replayed, nothing
    /// times out, final statuses are published as they arrive).
    pub enabled: bool,
    /// A run with no news for this long is polled (`GET /runs/{uid}`) and its failed
    /// deliveries replayed.
    #[serde(with = "humantime_serde")]
    pub silence_after: Duration,
    /// A run without a final status this long after it was first seen becomes `TIMED_OUT`.
    #[serde(with = "humantime_serde")]
    pub run_deadline: Duration,
    /// A final status waits this long, then for the audit of the run's deliveries (failed
    /// ones replayed), so that it can say which pages were lost.
    #[serde(with = "humantime_serde")]
    pub audit_delay: Duration,
    /// Between two audits of one run while deliveries are in flight or replays were asked.
    #[serde(with = "humantime_serde")]
    pub audit_retry: Duration,
    /// A final status whose audit cannot complete is published this long after it arrived,
    /// with an error saying so.
    #[serde(with = "humantime_serde")]
    pub audit_timeout: Duration,
    /// Replays per original delivery (the API allows 3).
    pub max_replays: u8,
    /// Reconcile calls in flight at once per instance.
    pub max_in_flight: usize,
    /// Share of the API key's current rate the reconcile calls may use, so a backlog of
    /// silent runs cannot starve launches.
    pub max_rate_share: f64,
    /// How often each active schedule's state is asked for (paused, cancelled, completed are
    /// published when they change).
    #[serde(with = "humantime_serde")]
    pub schedule_interval: Duration,
    /// How often the owner looks for runs that need a check.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            silence_after: Duration::from_secs(300),
            run_deadline: Duration::from_secs(24 * 3600),
            audit_delay: Duration::from_secs(2),
            audit_retry: Duration::from_secs(10),
            audit_timeout: Duration::from_secs(900),
            max_replays: 3,
            max_in_flight: 8,
            max_rate_share: 0.2,
            schedule_interval: Duration::from_secs(600),
            tick: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long in-flight launch requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (production) or `text`.
    pub format: String,
    /// A tracing filter, e.g. `info,captain_bridge=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// Secrets, each from its environment variable or from the file named in the config.
#[derive(Clone, Default)]
pub struct Secrets {
    pub api_key: Option<SecretString>,
    pub callback_keys: Option<SecretString>,
    pub callback_header_secret: Option<SecretString>,
    /// The schema registry's basic-auth password or bearer token.
    pub registry: crate::avro::RegistrySecrets,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |s: &Option<SecretString>| if s.is_some() { "[set]" } else { "[unset]" };
        f.debug_struct("Secrets")
            .field("api_key", &shown(&self.api_key))
            .field("callback_keys", &shown(&self.callback_keys))
            .field(
                "callback_header_secret",
                &shown(&self.callback_header_secret),
            )
            .field("registry", &self.registry)
            .finish()
    }
}

impl Settings {
    /// Loads defaults, then the file (if any), then environment overrides, then secrets, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given as name/value pairs (tests inject
    /// theirs instead of changing the process's).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist", path.display()),
                ));
            }
            figment = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => figment.merge(Yaml::file_exact(path)),
                _ => figment.merge(Toml::file_exact(path)),
            };
        }
        // Secrets must never sit in the config file, where they end up in git.
        for key in [
            "captain.api_key",
            "callbacks.keys",
            "callbacks.header_secret",
        ]
        .into_iter()
        .chain(crate::workflows::settings::SECRET_KEYS)
        .chain(crate::avro::settings::SECRET_KEYS)
        {
            if figment.find_value(key).is_ok() {
                return Err(invalid(
                    key,
                    "secrets are not read from the config file; use the environment \
                     variable or the *_file key (see README, Configuration)",
                ));
            }
        }
        for (name, value) in &env {
            let Some(key) = override_key(name) else {
                continue;
            };
            figment = match key.strip_prefix("kafka.properties.") {
                // librdkafka names hold dots: `..._PROPERTIES__SECURITY__PROTOCOL` is one
                // key, `security.protocol`, not a nested table; its value stays text ("5000").
                Some(property) => {
                    let entry = BTreeMap::from([(property.to_owned(), value.clone())]);
                    figment.merge(Serialized::default("kafka.properties", entry))
                }
                // Parsed as figment's own environment provider would (numbers, booleans,
                // arrays), so "7" fills a usize and "10s" a duration.
                None => {
                    let value = figment::value::Value::from_str(value)
                        .unwrap_or_else(|never| match never {});
                    figment.merge(Serialized::default(&key, value))
                }
            };
        }
        let mut settings: Settings = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                ConfigError::Parse(e.to_string())
            } else {
                invalid(&key, e.kind.to_string())
            }
        })?;
        let lookup = |name: &str| env.get(name).cloned();
        settings.secrets = Secrets {
            api_key: secret(
                &lookup,
                ENV_API_KEY,
                settings.captain.api_key_file.as_deref(),
                "captain.api_key_file",
            )?,
            callback_keys: secret(
                &lookup,
                ENV_CALLBACK_KEYS,
                settings.callbacks.keys_file.as_deref(),
                "callbacks.keys_file",
            )?,
            callback_header_secret: secret(
                &lookup,
                ENV_CALLBACK_HEADER_SECRET,
                settings.callbacks.header_secret_file.as_deref(),
                "callbacks.header_secret_file",
            )?,
            registry: crate::avro::RegistrySecrets::load(&settings.schema_registry, lookup)?,
        };
        settings
            .v3
            .load_secrets(&lookup)
            .map_err(|e| invalid(&e.key, e.message))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot: required secrets, URLs, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        let t = &self.kafka.topics;
        for (key, name) in [
            ("kafka.topics.launch_requests", &t.launch_requests),
            ("kafka.topics.run_status", &t.run_status),
            ("kafka.topics.run_results", &t.run_results),
            ("kafka.topics.dead_letter", &t.dead_letter),
            ("kafka.topics.runs", &t.runs),
            ("kafka.topics.control", &t.control),
            ("kafka.topics.callbacks", &t.callbacks),
            ("kafka.topics.requests", &t.requests),
        ] {
            if !valid_topic(name) {
                return Err(invalid(
                    key,
                    format!("{name:?} is not a valid Kafka topic name"),
                ));
            }
        }
        if !(Duration::from_secs(6)..=Duration::from_secs(300))
            .contains(&self.kafka.session_timeout)
        {
            return Err(invalid(
                "kafka.session_timeout",
                "must be within 6s..=300s (the broker's group limits)",
            ));
        }
        if self.kafka.statistics_interval > Duration::from_secs(86_400) {
            return Err(invalid(
                "kafka.statistics_interval",
                "must be at most 24h (librdkafka's limit); 0s turns statistics off",
            ));
        }
        if self.kafka.partitions < 1 {
            return Err(invalid("kafka.partitions", "must be at least 1"));
        }
        if self.kafka.replication_factor < 1 {
            return Err(invalid("kafka.replication_factor", "must be at least 1"));
        }
        // What this build of librdkafka cannot serve fails here, not when a client starts.
        crate::kafka::capabilities::check_properties(&self.kafka.properties)
            .map_err(|e| invalid("kafka.properties", e))?;
        http_url("captain.base_url", &self.captain.base_url)?;
        if let Some(url) = &self.callbacks.public_base_url {
            http_url("callbacks.public_base_url", url)?;
        }
        if self.captain.max_attempts == 0 {
            return Err(invalid("captain.max_attempts", "must be at least 1"));
        }
        if !(1..=100_000).contains(&self.captain.async_max_inputs) {
            return Err(invalid(
                "captain.async_max_inputs",
                "must be within 1..=100000 (the API's limit)",
            ));
        }
        if !(1..=100).contains(&self.captain.schedule_max_inputs) {
            return Err(invalid(
                "captain.schedule_max_inputs",
                "must be within 1..=100 (the API's limit)",
            ));
        }
        self.captain
            .rate_limit
            .validate()
            .map_err(|e| invalid(&format!("captain.rate_limit.{}", e.field), e.reason))?;
        if self.callbacks.max_body_bytes < 1024 {
            return Err(invalid("callbacks.max_body_bytes", "must be at least 1024"));
        }
        if self.callbacks.max_body_bytes + RECORD_HEADROOM > self.kafka.max_record_bytes {
            return Err(invalid(
                "callbacks.max_body_bytes",
                format!(
                    "must leave {RECORD_HEADROOM} bytes under kafka.max_record_bytes ({}): a \
                     callback is one record of the internal callbacks topic",
                    self.kafka.max_record_bytes
                ),
            ));
        }
        if let Some(id) = &self.kafka.instance_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if id.is_empty() || id.len() > 100 || !id.chars().all(allowed) {
                return Err(invalid(
                    "kafka.instance_id",
                    "must be 1 to 100 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
                ));
            }
        }
        if self.callbacks.max_buffered_bytes < self.callbacks.max_body_bytes {
            return Err(invalid(
                "callbacks.max_buffered_bytes",
                format!(
                    "must be at least callbacks.max_body_bytes ({}): a callback of that size \
                     could never be read",
                    self.callbacks.max_body_bytes
                ),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600))
            .contains(&self.callbacks.body_timeout)
        {
            return Err(invalid(
                "callbacks.body_timeout",
                "must be between 1s and 10m",
            ));
        }
        if self.callbacks.max_results == 0 {
            return Err(invalid("callbacks.max_results", "must be at least 1"));
        }
        let r = &self.reconcile;
        if r.enabled && self.callbacks.token_ttl <= r.run_deadline {
            return Err(invalid(
                "callbacks.token_ttl",
                "must be longer than reconcile.run_deadline: replays of a run's deliveries call back with its token",
            ));
        }
        if !(r.max_rate_share > 0.0 && r.max_rate_share <= 1.0) {
            return Err(invalid(
                "reconcile.max_rate_share",
                "must be within (0, 1]: a share of the key's rate",
            ));
        }
        if !(1..=3).contains(&r.max_replays) {
            return Err(invalid(
                "reconcile.max_replays",
                "must be within 1..=3 (the API allows 3 replays per delivery)",
            ));
        }
        if r.max_in_flight == 0 {
            return Err(invalid("reconcile.max_in_flight", "must be at least 1"));
        }
        if r.tick.is_zero() || r.audit_retry.is_zero() || r.silence_after.is_zero() {
            return Err(invalid(
                "reconcile",
                "tick, audit_retry and silence_after must be longer than 0s",
            ));
        }
        if r.run_deadline <= r.silence_after {
            return Err(invalid(
                "reconcile.run_deadline",
                "must be longer than reconcile.silence_after",
            ));
        }
        let p = &self.processing;
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&p.commit_interval) {
            return Err(invalid(
                "processing.commit_interval",
                "must be within 1ms..=10s",
            ));
        }
        if self.kafka.transaction_timeout
            < p.commit_interval + p.revoke_drain + Duration::from_secs(5)
        {
            return Err(invalid(
                "kafka.transaction_timeout",
                "must exceed processing.commit_interval + processing.revoke_drain by at least \
                 5s: a transaction stays open that long",
            ));
        }
        self.schema_registry.validate(&self.kafka.formats)?;
        if self.callbacks.dedupe_window == 0 {
            return Err(invalid("callbacks.dedupe_window", "must be at least 1"));
        }
        if self.launch.max_in_flight == 0 {
            return Err(invalid("launch.max_in_flight", "must be at least 1"));
        }
        self.v3.validate().map_err(|e| invalid(&e.key, e.message))?;
        if self.v3.enabled && self.v3.max_webhook_bytes > self.callbacks.max_buffered_bytes {
            return Err(invalid(
                "v3.max_webhook_bytes",
                format!(
                    "must not exceed callbacks.max_buffered_bytes ({}): webhooks are read \
                     within that budget",
                    self.callbacks.max_buffered_bytes
                ),
            ));
        }
        let live = &self.live;
        if !(1..=LIVE_MAX_INPUTS).contains(&live.max_inputs) {
            return Err(invalid(
                "live.max_inputs",
                format!("must be within 1..={LIVE_MAX_INPUTS}"),
            ));
        }
        if live.concurrency == 0 {
            return Err(invalid("live.concurrency", "must be at least 1"));
        }
        if live.max_calls_in_flight == 0 {
            return Err(invalid("live.max_calls_in_flight", "must be at least 1"));
        }
        if live.auto_max_inputs > live.max_inputs {
            return Err(invalid(
                "live.auto_max_inputs",
                format!(
                    "must be at most live.max_inputs ({}): auto would send larger requests live",
                    live.max_inputs
                ),
            ));
        }
        if !matches!(self.log.format.as_str(), "json" | "text") {
            return Err(invalid("log.format", "must be \"json\" or \"text\""));
        }
        if self
            .secrets
            .api_key
            .as_ref()
            .is_none_or(|k| k.expose_secret().trim().is_empty())
        {
            return Err(invalid(
                "captain.api_key",
                format!("no API key: set {ENV_API_KEY} or captain.api_key_file"),
            ));
        }
        if self.callbacks.enabled && self.secrets.callback_keys.is_none() {
            return Err(invalid(
                "callbacks.keys",
                format!("no callback signing keys: set {ENV_CALLBACK_KEYS} (kid:base64secret,...) or callbacks.keys_file"),
            ));
        }
        Ok(())
    }
}

/// `CAPTAIN_BRIDGE_LAUNCH__MAX_IN_FLIGHT` → `launch.max_in_flight`; `None` for the secrets,
/// which are not settings.
fn override_key(name: &str) -> Option<String> {
    if SECRET_ENVS.contains(&name)
        || crate::avro::settings::SECRET_ENVS.contains(&name)
        || crate::workflows::settings::SECRET_ENVS.contains(&name)
    {
        return None;
    }
    let rest = name.strip_prefix(ENV_PREFIX)?;
    (!rest.is_empty()).then(|| rest.to_ascii_lowercase().replace("__", "."))
}

fn secret(
    env: &impl Fn(&str) -> Option<String>,
    var: &str,
    file: Option<&Path>,
    file_key: &str,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = env(var) {
        return Ok(Some(SecretString::from(value.trim().to_owned())));
    }
    match file {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(|s| Some(SecretString::from(s.trim().to_owned())))
            .map_err(|e| invalid(file_key, format!("cannot read {}: {e}", path.display()))),
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid(key, format!("{url:?} is not an http(s) URL")))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(invalid(key, format!("{url:?} has no host")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_secrets() -> Vec<(String, String)> {
        env(&[
            (ENV_API_KEY, "key"),
            (ENV_CALLBACK_KEYS, "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQ="),
        ])
    }

    fn file(text: &str, ext: &str) -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::new(text, ext)
    }

    #[test]
    fn defaults_load_when_secrets_are_set() {
        let s = Settings::load_from(None, with_secrets()).unwrap();
        assert_eq!(s.kafka.topics.launch_requests, "captain.launch-requests");
        assert_eq!(s.captain.async_max_inputs, 100_000);
    }

    #[test]
    fn a_missing_api_key_names_the_key() {
        let err = Settings::load_from(None, env(&[(ENV_CALLBACK_KEYS, "k1:x")])).unwrap_err();
        assert!(err.to_string().starts_with("captain.api_key:"), "{err}");
    }

    #[test]
    fn a_wrong_type_in_the_file_names_the_key() {
        let f = file("[launch]\nmax_in_flight = \"many\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string().starts_with("launch.max_in_flight:"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused() {
        let f = file("[kafka]\nbootstrap = \"x:1\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(err.to_string().contains("bootstrap"), "{err}");
    }

    #[test]
    fn a_secret_in_the_file_is_refused() {
        let f = file("[captain]\napi_key = \"oops\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(err.to_string().starts_with("captain.api_key:"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = file("[kafka]\nbootstrap_servers = \"file:1\"\n", "yaml.toml");
        let e = env(&[
            (ENV_API_KEY, "key"),
            (ENV_CALLBACK_KEYS, "k1:x"),
            ("CAPTAIN_BRIDGE_LAUNCH__MAX_IN_FLIGHT", "7"),
            ("CAPTAIN_BRIDGE_SHUTDOWN__DRAIN_TIMEOUT", "3s"),
        ]);
        let s = Settings::load_from(Some(f.path()), e).unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "file:1");
        assert_eq!(s.launch.max_in_flight, 7);
        assert_eq!(s.shutdown.drain_timeout, Duration::from_secs(3));
    }

    #[test]
    fn a_librdkafka_property_with_dots_can_be_set_from_the_environment() {
        let e = env(&[
            (ENV_API_KEY, "key"),
            (ENV_CALLBACK_KEYS, "k1:x"),
            (
                "CAPTAIN_BRIDGE_KAFKA__PROPERTIES__SECURITY__PROTOCOL",
                "SASL_SSL",
            ),
            (
                "CAPTAIN_BRIDGE_KAFKA__PROPERTIES__SASL__MECHANISM",
                "SCRAM-SHA-512",
            ),
            ("CAPTAIN_BRIDGE_KAFKA__PROPERTIES__SASL__USERNAME", "bridge"),
            ("CAPTAIN_BRIDGE_KAFKA__PROPERTIES__SASL__PASSWORD", "secret"),
            (
                "CAPTAIN_BRIDGE_KAFKA__PROPERTIES__STATISTICS__INTERVAL__MS",
                "5000",
            ),
        ]);
        let s = Settings::load_from(None, e).unwrap();
        assert_eq!(
            s.kafka
                .properties
                .get("statistics.interval.ms")
                .map(String::as_str),
            Some("5000"),
            "a number stays text: librdkafka properties are strings"
        );
        assert_eq!(
            s.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(
            s.kafka.properties.get("sasl.mechanism").map(String::as_str),
            Some("SCRAM-SHA-512")
        );
    }

    #[test]
    fn a_secret_variable_is_not_read_as_a_setting() {
        // CAPTAIN_BRIDGE_API_KEY would otherwise be the unknown key `api_key` and be refused.
        let s = Settings::load_from(None, with_secrets()).unwrap();
        assert!(s.secrets.api_key.is_some());
    }

    #[test]
    fn yaml_files_are_read_too() {
        let f = file("captain:\n  base_url: http://127.0.0.1:1/v4\n", "yaml");
        let s = Settings::load_from(Some(f.path()), with_secrets()).unwrap();
        assert_eq!(s.captain.base_url, "http://127.0.0.1:1/v4");
    }

    #[test]
    fn an_instance_id_that_cannot_name_a_transactional_id_is_refused_naming_the_key() {
        let f = file("[kafka]\ninstance_id = \"pod 1/a\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(err.to_string().starts_with("kafka.instance_id:"), "{err}");
        let f = file(
            "[kafka]\ninstance_id = \"captain-bridge-7d9f-x2k.1\"\n",
            "toml",
        );
        let s = Settings::load_from(Some(f.path()), with_secrets()).unwrap();
        assert_eq!(
            s.kafka.instance_id.as_deref(),
            Some("captain-bridge-7d9f-x2k.1")
        );
    }

    #[test]
    fn a_body_budget_smaller_than_one_body_or_a_body_timeout_out_of_range_names_the_key() {
        let f = file(
            "[callbacks]\nmax_body_bytes = 65536\nmax_buffered_bytes = 65535\n",
            "toml",
        );
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string().starts_with("callbacks.max_buffered_bytes:"),
            "{err}"
        );
        let f = file("[callbacks]\nbody_timeout = \"0s\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string().starts_with("callbacks.body_timeout:"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_url_names_the_key() {
        let f = file("[callbacks]\npublic_base_url = \"bridge:8080\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string().starts_with("callbacks.public_base_url:"),
            "{err}"
        );
    }

    #[test]
    fn a_kafka_property_this_build_cannot_serve_is_refused_by_key_and_value() {
        let f = file(
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"GSSAPI\"\n",
            "toml",
        );
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kafka.properties: sasl.mechanism=GSSAPI: "),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/captain-bridge.example.toml");
        let s = Settings::load_from(Some(&path), with_secrets()).unwrap();
        let defaults = Settings::load_from(None, with_secrets()).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::to_value(&defaults).unwrap(),
            "deploy/captain-bridge.example.toml must list every key with its default"
        );
    }

    #[test]
    fn an_avro_output_topic_without_a_registry_names_both_keys() {
        let mut e = with_secrets();
        e.push((
            "CAPTAIN_BRIDGE_KAFKA__FORMATS__RUN_RESULTS".into(),
            "avro".into(),
        ));
        let err = Settings::load_from(None, e.clone())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("schema_registry.url:"), "{err}");
        assert!(err.contains("kafka.formats.run_results"), "{err}");
        e.push((
            "CAPTAIN_BRIDGE_SCHEMA_REGISTRY__URL".into(),
            "http://127.0.0.1:8081".into(),
        ));
        let s = Settings::load_from(None, e).unwrap();
        assert_eq!(s.kafka.formats.run_results, crate::avro::Format::Avro);
        assert_eq!(s.kafka.formats.run_status, crate::avro::Format::Json);
    }

    #[test]
    fn a_registry_secret_in_the_file_is_refused_and_one_in_the_environment_is_read() {
        let f = file("[schema_registry]\ntoken = \"oops\"\n", "toml");
        let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
        assert!(
            err.to_string().starts_with("schema_registry.token:"),
            "{err}"
        );
        let mut e = with_secrets();
        e.push((
            crate::avro::settings::ENV_REGISTRY_TOKEN.into(),
            "t0ken-value".into(),
        ));
        let s = Settings::load_from(None, e).unwrap();
        assert!(s.secrets.registry.token.is_some());
        assert!(!format!("{s:?}").contains("t0ken-value"));
    }

    #[test]
    fn the_readmes_configuration_block_is_the_shipped_example_verbatim() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example =
            std::fs::read_to_string(root.join("deploy/captain-bridge.example.toml")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let block = format!("```toml\n{}\n```\n", example.trim_end());
        assert!(
            readme.contains(&block),
            "README.md's Configuration block must equal deploy/captain-bridge.example.toml"
        );
    }

    #[test]
    fn a_bridge_without_callback_listener_needs_no_callback_keys() {
        let off = file("[callbacks]\nenabled = false\n", "toml");
        let only_api_key = env(&[(ENV_API_KEY, "key")]);
        let s = Settings::load_from(Some(off.path()), only_api_key.clone()).unwrap();
        assert!(!s.callbacks.enabled);
        let err = Settings::load_from(None, only_api_key).unwrap_err();
        assert!(err.to_string().starts_with("callbacks.keys:"), "{err}");
    }

    #[test]
    fn live_settings_out_of_range_name_their_key() {
        for (text, key) in [
            ("[live]\nmax_inputs = 0\n", "live.max_inputs:"),
            ("[live]\nmax_inputs = 10001\n", "live.max_inputs:"),
            ("[live]\nconcurrency = 0\n", "live.concurrency:"),
            (
                "[live]\nmax_calls_in_flight = 0\n",
                "live.max_calls_in_flight:",
            ),
            (
                "[live]\nmax_inputs = 5\nauto_max_inputs = 6\n",
                "live.auto_max_inputs:",
            ),
        ] {
            let f = file(text, "toml");
            let err = Settings::load_from(Some(f.path()), with_secrets()).unwrap_err();
            assert!(err.to_string().starts_with(key), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Settings::load_from(None, with_secrets()).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("[set]"));
    }

    /// A file removed on drop, so config tests read real files.
    mod tempfile_lite {
        use super::*;
        pub struct TempFile(PathBuf);
        impl TempFile {
            pub fn new(text: &str, ext: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "captain-bridge-config-{}.{ext}",
                    uuid::Uuid::new_v4()
                ));
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(text.as_bytes()).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
