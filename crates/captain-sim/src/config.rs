//! Typed simulator settings: the TOML file shape, its defaults, and the split between the
//! static part (keys, seed, clock, memory caps) and the runtime-tunable part that
//! `PUT /_sim/config` replaces while the simulator runs.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Errors reading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole simulator configuration. Every field has a default, so `SimConfig::default()`
/// is a working simulator accepting the key `sim-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// API keys; each is its own workspace. Empty means the single key `sim-key`.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Seed of every random decision (outcomes, faults, generated results).
    pub seed: u64,
    /// Simulated time runs this many times faster than wall time (schedules and timings).
    pub time_scale: f64,
    /// Base URL used in `X-Pagination-*` headers; default: `http://<Host header>/v4`.
    pub public_base_url: Option<String>,
    /// Memory caps.
    pub limits: LimitsConfig,
    /// The v3 API (workflows, jobs, webhooks) served under `/v3`.
    pub v3: crate::v3::V3Config,
    /// Everything `PUT /_sim/config` may replace at run time.
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            seed: 42,
            time_scale: 1.0,
            public_base_url: None,
            limits: LimitsConfig::default(),
            v3: crate::v3::V3Config::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

impl SimConfig {
    /// Parses a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: SimConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Adds a key (workspace and user uids derived from the key) unless already present.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if !self.api_keys.iter().any(|k| k.key == key) {
            self.api_keys.push(ApiKeyConfig::derived(&key));
        }
        self
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(ConfigError::Invalid("time_scale must be > 0".into()));
        }
        self.v3.validate()?;
        self.runtime.validate()
    }

    /// The configured keys, or the default `sim-key`.
    pub fn effective_keys(&self) -> Vec<ApiKeyConfig> {
        if self.api_keys.is_empty() {
            vec![ApiKeyConfig::derived("sim-key")]
        } else {
            self.api_keys.clone()
        }
    }
}

/// One API key and the workspace it opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub key: String,
    /// Default: derived from the key, stable across restarts.
    #[serde(default)]
    pub workspace_uid: Option<Uuid>,
    /// Default: derived from the key, stable across restarts.
    #[serde(default)]
    pub user_uid: Option<Uuid>,
}

impl ApiKeyConfig {
    /// A key whose uids are derived from its text.
    pub fn derived(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            workspace_uid: None,
            user_uid: None,
        }
    }

    /// Workspace uid, configured or derived.
    pub fn workspace(&self) -> Uuid {
        self.workspace_uid
            .unwrap_or_else(|| uuid_from_text("workspace", &self.key))
    }

    /// User uid, configured or derived.
    pub fn user(&self) -> Uuid {
        self.user_uid
            .unwrap_or_else(|| uuid_from_text("user", &self.key))
    }
}

/// A stable v4-shaped uuid from a text (FNV-1a, twice), so a key always maps to one workspace.
fn uuid_from_text(kind: &str, text: &str) -> Uuid {
    let mut bytes = [0u8; 16];
    for (half, salt) in [
        (0usize, 0xcbf2_9ce4_8422_2325u64),
        (8, 0x8422_2325_cbf2_9ce4),
    ] {
        let mut hash = salt;
        for b in kind.bytes().chain([0u8]).chain(text.bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        bytes[half..half + 8].copy_from_slice(&hash.to_be_bytes());
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Memory caps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Runs kept in memory; beyond it the oldest finished runs are evicted together with
    /// their callback records and stored payloads.
    pub max_runs: usize,
    /// Largest `/v4` request body taken; beyond it, 413 with an APIError. The API documents no
    /// byte limit, only 1–100,000 inputs per async run (1–100 per schedule): the default
    /// takes 100,000 inputs of about 600 bytes, so the item limit is the one that binds.
    pub max_body_bytes: usize,
}

/// The default `limits.max_body_bytes`: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_runs: 100_000,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The runtime-tunable part; this is the JSON body of `GET`/`PUT /_sim/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub timings: TimingsConfig,
    pub outcomes: OutcomesConfig,
    pub results: ResultsConfig,
    pub delivery: DeliveryConfig,
    pub rate_limits: RateLimitsConfig,
    pub faults: FaultsConfig,
}

impl RuntimeConfig {
    /// Checks probabilities and bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.faults;
        for (name, p) in [
            ("faults.error_rate", f.error_rate),
            ("faults.callback_drop_rate", f.callback_drop_rate),
            ("faults.callback_duplicate_rate", f.callback_duplicate_rate),
            (
                "faults.callback_out_of_order_rate",
                f.callback_out_of_order_rate,
            ),
            ("faults.callback_failure_rate", f.callback_failure_rate),
            ("faults.live_failure_rate", f.live_failure_rate),
            (
                "outcomes.input_failure_rate",
                self.outcomes.input_failure_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::Invalid(format!("{name} must be within 0..=1")));
            }
        }
        let o = &self.outcomes;
        let weights = [
            o.succeeded,
            o.partial_succeeded,
            o.failed,
            o.blocked,
            o.stopped,
            o.stalled_running,
            o.stalled_blocked,
        ];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0
        {
            return Err(ConfigError::Invalid(
                "outcomes weights must be >= 0 and not all 0".into(),
            ));
        }
        if self.delivery.concurrency == 0 || self.delivery.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "delivery.concurrency and delivery.max_attempts must be >= 1".into(),
            ));
        }
        for (name, limit) in [
            ("live", &self.rate_limits.live),
            ("async", &self.rate_limits.async_),
            ("schedule", &self.rate_limits.schedule),
            ("api", &self.rate_limits.api),
        ] {
            if let Some(l) = limit {
                if !(l.rps.is_finite() && l.rps > 0.0) || l.burst == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "rate_limits.{name}: rps must be > 0 and burst >= 1"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Lifecycle timings in simulated milliseconds (divided by `time_scale` in wall time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimingsConfig {
    /// CREATED -> QUEUED.
    pub queued_after_ms: u64,
    /// QUEUED -> RUNNING (also after a resume).
    pub start_after_ms: u64,
    /// Time to produce each page of results (before its callback is sent).
    pub page_interval_ms: u64,
}

impl Default for TimingsConfig {
    fn default() -> Self {
        Self {
            queued_after_ms: 10,
            start_after_ms: 50,
            page_interval_ms: 20,
        }
    }
}

/// Relative weights of each run's final outcome, drawn per run from the seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutcomesConfig {
    pub succeeded: f64,
    pub partial_succeeded: f64,
    pub failed: f64,
    /// The run stops at BLOCKED until `POST /runs/{uid}/resume`.
    pub blocked: f64,
    /// The run stops at STOPPED until `POST /runs/{uid}/resume`.
    pub stopped: f64,
    /// The run stays RUNNING after a seeded share of its pages (none to all) until
    /// `POST /_sim/runs/{uid}/finish`.
    pub stalled_running: f64,
    /// The run stays BLOCKED (blocking again after each resume) until
    /// `POST /_sim/runs/{uid}/finish`.
    pub stalled_blocked: f64,
    /// In a PARTIAL_SUCCEEDED run, the probability that an input fails (at least one does).
    pub input_failure_rate: f64,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self {
            succeeded: 1.0,
            partial_succeeded: 0.0,
            failed: 0.0,
            blocked: 0.0,
            stopped: 0.0,
            stalled_running: 0.0,
            stalled_blocked: 0.0,
            input_failure_rate: 0.5,
        }
    }
}

/// How many results are generated and how they are paged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResultsConfig {
    /// Results per input for list actions whose `max_results` has no default in the spec.
    pub default_count: u64,
    /// Page size for list actions whose live `page_size` has no default in the spec.
    pub default_page_size: u64,
    /// Per-action page size overrides (action slug -> page size).
    pub page_size: HashMap<String, u64>,
    /// Results a live call pages through (per input) for list actions.
    pub live_total: u64,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            default_count: 10,
            default_page_size: 25,
            page_size: HashMap::new(),
            live_total: 30,
        }
    }
}

/// Callback delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Callback POSTs in flight at once, across all runs.
    pub concurrency: usize,
    /// Timeout of one POST.
    pub timeout_ms: u64,
    /// Attempts per delivery (1 = no automatic retry).
    pub max_attempts: u32,
    /// Backoff before the first retry, doubled for each further one (wall-clock ms).
    pub backoff_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            timeout_ms: 5_000,
            max_attempts: 3,
            backoff_ms: 200,
        }
    }
}

/// One token bucket: `rps` tokens per second, at most `burst` saved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rps: f64,
    pub burst: u32,
}

/// Format of the `Retry-After` header on 429 answers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RetryAfterFormat {
    #[default]
    Seconds,
    HttpDate,
}

/// Per API key and per bucket rate limits; `None` = unlimited.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub retry_after_format: RetryAfterFormat,
    pub live: Option<RateLimit>,
    #[serde(rename = "async")]
    pub async_: Option<RateLimit>,
    pub schedule: Option<RateLimit>,
    /// Runs, schedules and callbacks endpoints.
    pub api: Option<RateLimit>,
}

/// Fault injection; every probability is drawn from the seeded generators.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Extra latency added to every `/v4` answer.
    pub latency_ms: u64,
    /// Extra uniform random latency in `0..=latency_jitter_ms`.
    pub latency_jitter_ms: u64,
    /// Probability that an action endpoint answers 500 or 503 (half each).
    pub error_rate: f64,
    /// Probability that a callback is never sent (recorded FAILED, no http_status).
    pub callback_drop_rate: f64,
    /// Probability that a delivered callback is sent a second time (same payload).
    pub callback_duplicate_rate: f64,
    /// Probability that a run's callbacks (final included) are delivered shuffled.
    pub callback_out_of_order_rate: f64,
    /// Probability that a callback attempt fails as if the receiver were down (no POST made).
    pub callback_failure_rate: f64,
    /// Probability that a live input fails: every live call for it answers 424 (drawn per
    /// action and input, so the same input fails on every page and every retry).
    pub live_failure_rate: f64,
}
