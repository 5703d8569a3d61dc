//! The `[v3]` section of the simulator config: projects (API key + project uid), workflows
//! (steps, input key, result shape, webhook), the inferred paths of the retry / cancel /
//! webhook-retry routes, and the runtime-tunable part that `PUT /_sim/v3/config` replaces.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ConfigError;

/// The whole `[v3]` section. Every key is optional: with nothing configured, each v4 API key
/// also opens a v3 project (its workspace uid as project uid) holding one default workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V3Config {
    /// `[[v3.projects]]`: API keys and the project each opens.
    pub projects: Vec<V3ProjectConfig>,
    /// `[[v3.workflows]]`: the workflows `GET /workflows` lists and jobs run.
    pub workflows: Vec<V3WorkflowConfig>,
    /// Paths of the routes whose exact path no source shows.
    pub paths: V3PathsConfig,
    /// Jobs kept in memory; beyond it the oldest ended jobs are evicted.
    pub max_jobs: usize,
    /// Everything `PUT /_sim/v3/config` may replace at run time.
    #[serde(flatten)]
    pub runtime: V3RuntimeConfig,
}

impl Default for V3Config {
    fn default() -> Self {
        Self {
            projects: Vec::new(),
            workflows: Vec::new(),
            paths: V3PathsConfig::default(),
            max_jobs: 10_000,
            runtime: V3RuntimeConfig::default(),
        }
    }
}

impl V3Config {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.max_jobs == 0 {
            return invalid("v3.max_jobs must be >= 1".into());
        }
        let mut keys = HashSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            if p.key.trim().is_empty() {
                return invalid(format!("v3.projects[{i}].key must not be empty"));
            }
            if !keys.insert(p.key.as_str()) {
                return invalid(format!("v3.projects[{i}].key is configured twice"));
            }
        }
        let mut uids = HashSet::new();
        for (i, w) in self.workflows.iter().enumerate() {
            let at = format!("v3.workflows[{i}]");
            if w.name.trim().is_empty() {
                return invalid(format!("{at}.name must not be empty"));
            }
            if !uids.insert(w.uid()) {
                return invalid(format!("{at}.uid {} is configured twice", w.uid()));
            }
            let mut steps = HashSet::new();
            for step in w.step_uids() {
                if !steps.insert(step) {
                    return invalid(format!("{at}.steps holds {step} twice"));
                }
            }
            if w.input_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return invalid(format!("{at}.input_key must not be empty"));
            }
            if let Some(hook) = &w.webhook {
                hook.validate()
                    .map_err(|e| ConfigError::Invalid(format!("{at}.webhook.{e}")))?;
            }
        }
        self.paths.validate()?;
        self.runtime.validate()
    }

    /// The configured workflows, or the default one.
    pub fn effective_workflows(&self) -> Vec<V3WorkflowConfig> {
        if self.workflows.is_empty() {
            vec![V3WorkflowConfig::default()]
        } else {
            self.workflows.clone()
        }
    }
}

/// One API key and the project (workspace) it opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V3ProjectConfig {
    pub key: String,
    /// Sent by clients as `x-project-id`. Default: derived from the key, stable.
    #[serde(default)]
    pub project_uid: Option<Uuid>,
}

impl V3ProjectConfig {
    /// The project uid, configured or derived.
    pub fn project(&self) -> Uuid {
        self.project_uid
            .unwrap_or_else(|| uuid_from_text("v3-project", &self.key))
    }
}

/// One workflow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3WorkflowConfig {
    /// Default: derived from the name, stable.
    pub uid: Option<Uuid>,
    pub name: String,
    /// Only this project sees the workflow; default: every project.
    pub project_uid: Option<Uuid>,
    /// The workflow's step uids (what `steps[].step_uid` may name). Default: one step whose
    /// uid is derived from the workflow's.
    pub steps: Vec<Uuid>,
    /// When set, every input must hold this key as a non-empty string.
    pub input_key: Option<String>,
    /// The v4 action whose output schema shapes the generated result rows.
    pub action: String,
    /// Result rows per succeeded input.
    pub results_per_input: u64,
    /// Where and how the workflow's webhooks are sent; none by default. Also settable at run
    /// time with `PUT /_sim/v3/workflows/{uid}/webhook`.
    pub webhook: Option<V3WebhookConfig>,
}

impl Default for V3WorkflowConfig {
    fn default() -> Self {
        Self {
            uid: None,
            name: "Extract LinkedIn People Profile".into(),
            project_uid: None,
            steps: Vec::new(),
            input_key: Some("linkedin_profile_url".into()),
            action: "linkedin-extract-people".into(),
            results_per_input: 2,
            webhook: None,
        }
    }
}

impl V3WorkflowConfig {
    /// The workflow uid, configured or derived from the name.
    pub fn uid(&self) -> Uuid {
        self.uid
            .unwrap_or_else(|| uuid_from_text("v3-workflow", &self.name))
    }

    /// The step uids, configured or the one derived step.
    pub fn step_uids(&self) -> Vec<Uuid> {
        if self.steps.is_empty() {
            vec![uuid_from_text("v3-step", &self.uid().to_string())]
        } else {
            self.steps.clone()
        }
    }
}

/// A workflow's webhook, as set in the Captain Data app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct V3WebhookConfig {
    pub url: String,
    /// Custom headers (name/value), added to every POST.
    #[serde(default)]
    pub headers: Vec<V3HeaderConfig>,
    /// Enabled events; default: all three.
    #[serde(default = "all_events")]
    pub events: Vec<V3WebhookEvent>,
}

impl V3WebhookConfig {
    /// Checks the URL and the headers; the error starts with the failing key.
    pub fn validate(&self) -> Result<(), String> {
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => return Err(format!("url: {:?} must be http or https", self.url)),
            Err(e) => return Err(format!("url: {:?} is not a URL: {e}", self.url)),
        }
        for (i, h) in self.headers.iter().enumerate() {
            if axum::http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(format!(
                    "headers[{i}].name: {:?} is not a header name",
                    h.name
                ));
            }
            if axum::http::HeaderValue::from_str(&h.value).is_err() {
                return Err(format!("headers[{i}].value: not a valid header value"));
            }
        }
        Ok(())
    }

    /// Whether `event` is enabled.
    pub fn enabled(&self, event: V3WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

fn all_events() -> Vec<V3WebhookEvent> {
    vec![
        V3WebhookEvent::Created,
        V3WebhookEvent::Succeeded,
        V3WebhookEvent::Failed,
    ]
}

/// One custom webhook header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct V3HeaderConfig {
    pub name: String,
    pub value: String,
}

/// The three webhook events of a v3 workflow.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum V3WebhookEvent {
    /// The job started (its first task launched).
    Created,
    /// The job ended with at least one input succeeded.
    Succeeded,
    /// The job ended with every input failed, or in error.
    Failed,
}

impl V3WebhookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            V3WebhookEvent::Created => "created",
            V3WebhookEvent::Succeeded => "succeeded",
            V3WebhookEvent::Failed => "failed",
        }
    }
}

/// The inferred paths (relative to `/v3`, with a `{job_uid}` segment) of the three POST routes
/// no captured source spells out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3PathsConfig {
    pub retry_job: String,
    pub cancel_job: String,
    pub retry_webhook: String,
}

impl Default for V3PathsConfig {
    fn default() -> Self {
        Self {
            retry_job: "/jobs/{job_uid}/retry".into(),
            cancel_job: "/jobs/{job_uid}/cancel".into(),
            retry_webhook: "/jobs/{job_uid}/webhooks/retry".into(),
        }
    }
}

impl V3PathsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let all = [
            ("retry_job", &self.retry_job),
            ("cancel_job", &self.cancel_job),
            ("retry_webhook", &self.retry_webhook),
        ];
        for (name, path) in all {
            path_segments(path)
                .map_err(|e| ConfigError::Invalid(format!("v3.paths.{name}: {e}")))?;
        }
        if self.retry_job == self.cancel_job
            || self.retry_job == self.retry_webhook
            || self.cancel_job == self.retry_webhook
        {
            return Err(ConfigError::Invalid(
                "v3.paths: retry_job, cancel_job and retry_webhook must differ".into(),
            ));
        }
        Ok(())
    }
}

/// The segments of a path template: static segments of `[A-Za-z0-9._-]` and exactly one
/// `{job_uid}`.
pub(crate) fn path_segments(template: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = template.strip_prefix('/') else {
        return Err(format!("{template:?} must start with '/'"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut placeholders = 0;
    for s in &segments {
        if *s == "{job_uid}" {
            placeholders += 1;
        } else if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{template:?}: segment {s:?} must be {{job_uid}} or [A-Za-z0-9._-]+"
            ));
        }
    }
    if placeholders != 1 {
        return Err(format!(
            "{template:?} must hold exactly one {{job_uid}} segment"
        ));
    }
    Ok(segments)
}

/// The runtime-tunable part; the JSON body of `GET`/`PUT /_sim/v3/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3RuntimeConfig {
    pub timings: V3TimingsConfig,
    pub outcomes: V3OutcomesConfig,
    pub results: V3ResultsConfig,
    pub delivery: V3DeliveryConfig,
    /// One token bucket per API key over every `/v3` call; none = unlimited.
    pub rate_limit: Option<V3RateLimit>,
    pub faults: V3FaultsConfig,
    pub behaviour: V3BehaviourConfig,
}

impl V3RuntimeConfig {
    /// Checks probabilities and bounds; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let f = &self.faults;
        for (name, p) in [
            ("v3.faults.error_rate", f.error_rate),
            ("v3.faults.webhook_drop_rate", f.webhook_drop_rate),
            ("v3.faults.webhook_duplicate_rate", f.webhook_duplicate_rate),
            ("v3.faults.webhook_failure_rate", f.webhook_failure_rate),
            (
                "v3.outcomes.input_failure_rate",
                self.outcomes.input_failure_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(format!("{name} must be within 0..=1"));
            }
        }
        let o = &self.outcomes;
        let weights = [o.finished, o.warning, o.shutdown, o.paused, o.stopped];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0
        {
            return invalid("v3.outcomes weights must be >= 0 and not all 0".into());
        }
        let r = &self.results;
        if r.page_size == 0 || r.max_page_size < r.page_size || r.jobs_page_size == 0 {
            return invalid(
                "v3.results: page_size and jobs_page_size must be >= 1, max_page_size >= page_size"
                    .into(),
            );
        }
        if self.delivery.concurrency == 0 || self.delivery.max_attempts == 0 {
            return invalid(
                "v3.delivery.concurrency and v3.delivery.max_attempts must be >= 1".into(),
            );
        }
        if self.behaviour.max_inputs == 0 {
            return invalid("v3.behaviour.max_inputs must be >= 1".into());
        }
        if let Some(l) = &self.rate_limit {
            if !(l.rps.is_finite() && l.rps > 0.0) || l.burst == 0 {
                return invalid("v3.rate_limit: rps must be > 0 and burst >= 1".into());
            }
        }
        Ok(())
    }
}

/// Job timings in simulated milliseconds (divided by `time_scale` in wall time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3TimingsConfig {
    /// pending -> running, after the request's `delay` (also after a retry).
    pub start_after_ms: u64,
    /// Time to process each input.
    pub input_interval_ms: u64,
}

impl Default for V3TimingsConfig {
    fn default() -> Self {
        Self {
            start_after_ms: 50,
            input_interval_ms: 20,
        }
    }
}

/// Relative weights of each job's first outcome, drawn per job from the seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3OutcomesConfig {
    /// Every input succeeds.
    pub finished: f64,
    /// Some inputs fail (each with `input_failure_rate`, at least one; possibly all).
    pub warning: f64,
    /// A technical error ends the job at a seeded input; earlier inputs keep their results.
    pub shutdown: f64,
    /// An integration error pauses the job at a seeded input until it is retried.
    pub paused: f64,
    /// The job is stopped at a seeded input, as if a user stopped it in the app.
    pub stopped: f64,
    /// In a `warning` job, the probability that an input fails.
    pub input_failure_rate: f64,
}

impl Default for V3OutcomesConfig {
    fn default() -> Self {
        Self {
            finished: 1.0,
            warning: 0.0,
            shutdown: 0.0,
            paused: 0.0,
            stopped: 0.0,
            input_failure_rate: 0.5,
        }
    }
}

/// Paging of results, inputs and job lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3ResultsConfig {
    /// Rows per page of `/jobs/{uid}/results` and `/jobs/{uid}/inputs` without `page_size`.
    pub page_size: u64,
    /// Largest `page_size` a client may ask for.
    pub max_page_size: u64,
    /// Jobs per page of `/workflows/{uid}/jobs`.
    pub jobs_page_size: u64,
}

impl Default for V3ResultsConfig {
    fn default() -> Self {
        Self {
            page_size: 50,
            max_page_size: 500,
            jobs_page_size: 20,
        }
    }
}

/// Webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3DeliveryConfig {
    /// Webhook POSTs in flight at once; it can only grow at run time.
    pub concurrency: usize,
    /// Timeout of one POST.
    pub timeout_ms: u64,
    /// Attempts per delivery (1 = no automatic retry).
    pub max_attempts: u32,
    /// Wall-clock backoff before the first retry, doubled for each further one.
    pub backoff_ms: u64,
}

impl Default for V3DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            timeout_ms: 5_000,
            max_attempts: 3,
            backoff_ms: 200,
        }
    }
}

/// One per-key token bucket and how its 429 says when to come back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct V3RateLimit {
    pub rps: f64,
    pub burst: u32,
    #[serde(default)]
    pub retry_after: V3RetryAfter,
}

/// The `Retry-After` header of a v3 429; `none` sends no header at all (no source shows v3
/// rate-limit headers).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum V3RetryAfter {
    #[default]
    Seconds,
    HttpDate,
    None,
}

/// Fault injection on the v3 surface, drawn from seeded generators.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3FaultsConfig {
    /// Probability that a `/v3` call answers 500 or 503 (half each) before its handler runs.
    pub error_rate: f64,
    /// Probability that a webhook is never sent (recorded as dropped).
    pub webhook_drop_rate: f64,
    /// Probability that a delivered webhook is sent a second time (same bytes, same `uid`).
    pub webhook_duplicate_rate: f64,
    /// Probability that one delivery attempt fails as if the receiver were unreachable.
    pub webhook_failure_rate: f64,
}

/// Guesses about the server that the sources leave open, each switchable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct V3BehaviourConfig {
    /// Spelling of the success status: the support article says `finished`, the quickstart
    /// `completed`.
    pub success_status: V3SuccessStatus,
    /// A `paused` job sends the Failed webhook (it "encounters an error").
    pub paused_sends_failed: bool,
    /// The API reference marks `job_name` required; the activepieces client omits it.
    pub require_job_name: bool,
    /// The API reference marks `steps` required; the activepieces client omits it.
    pub require_steps: bool,
    /// Refuse keys no source shows in a launch body (400 naming the key).
    pub strict_fields: bool,
    /// Most inputs one launch may carry.
    pub max_inputs: usize,
}

impl Default for V3BehaviourConfig {
    fn default() -> Self {
        Self {
            success_status: V3SuccessStatus::Finished,
            paused_sends_failed: true,
            require_job_name: false,
            require_steps: false,
            strict_fields: true,
            max_inputs: 10_000,
        }
    }
}

/// `finished` or `completed`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum V3SuccessStatus {
    #[default]
    Finished,
    Completed,
}

/// A stable uuid from a text (FNV-1a, twice), so a key or a name always maps to one uid.
pub(crate) fn uuid_from_text(kind: &str, text: &str) -> Uuid {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_path_template_needs_exactly_one_job_uid_and_plain_segments() {
        assert!(path_segments("/jobs/{job_uid}/retry").is_ok());
        assert!(path_segments("/jobs/retry/{job_uid}").is_ok());
        assert!(path_segments("jobs/{job_uid}").is_err());
        assert!(path_segments("/jobs/retry").is_err());
        assert!(path_segments("/jobs/{job_uid}/{job_uid}").is_err());
        assert!(path_segments("/jobs/{id}/retry").is_err());
        assert!(path_segments("/jobs//{job_uid}").is_err());
    }

    #[test]
    fn defaults_validate_and_derived_uids_are_stable() {
        V3Config::default().validate().unwrap();
        let w = V3WorkflowConfig::default();
        assert_eq!(w.uid(), V3WorkflowConfig::default().uid());
        assert_eq!(w.step_uids().len(), 1);
    }

    #[test]
    fn a_webhook_url_that_is_not_http_is_refused_naming_the_key() {
        let hook = V3WebhookConfig {
            url: "ftp://x".into(),
            headers: vec![],
            events: all_events(),
        };
        assert!(hook.validate().unwrap_err().starts_with("url:"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod toml_tests {
    use crate::config::SimConfig;

    #[test]
    fn a_full_v3_section_parses_and_an_unknown_key_is_refused() {
        let config = SimConfig::from_toml_str(
            r#"
            [v3]
            max_jobs = 5
            [[v3.projects]]
            key = "v3-key"
            [[v3.workflows]]
            name = "Enrich"
            input_key = "url"
            results_per_input = 3
            [v3.workflows.webhook]
            url = "http://127.0.0.1:9/hook"
            headers = [{ name = "Authorization", value = "Bearer s" }]
            events = ["succeeded", "failed"]
            [v3.paths]
            cancel_job = "/jobs/{job_uid}/stop"
            [v3.outcomes]
            warning = 1.0
            [v3.rate_limit]
            rps = 2.0
            burst = 3
            retry_after = "none"
            [v3.behaviour]
            success_status = "completed"
            "#,
        )
        .unwrap();
        let v3 = &config.v3;
        assert_eq!(v3.max_jobs, 5);
        assert_eq!(v3.workflows[0].results_per_input, 3);
        assert_eq!(v3.workflows[0].webhook.as_ref().unwrap().events.len(), 2);
        assert_eq!(v3.paths.cancel_job, "/jobs/{job_uid}/stop");
        assert_eq!(v3.paths.retry_job, "/jobs/{job_uid}/retry");
        assert_eq!(v3.runtime.outcomes.warning, 1.0);
        assert_eq!(
            v3.runtime.rate_limit.unwrap().retry_after,
            super::V3RetryAfter::None
        );

        let err = SimConfig::from_toml_str("[v3]\nmax_job = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_job"), "{err}");
        let err = SimConfig::from_toml_str("[v3.paths]\nretry_job = \"/jobs/x\"\n").unwrap_err();
        assert!(err.to_string().contains("v3.paths.retry_job"), "{err}");
    }
}
