//! `CaptainClient`: one reused HTTP client, the API key on every call, and one request path
//! (validate, send, time, count, classify, retry) shared by every endpoint.

use super::error::{classify_response, classify_transport, SubmitError, Verdict};
use super::retry::{run_with_retry, AttemptGate, RateMode, RetryPolicy};
use super::wire::{
    AsyncRunAccepted, AsyncRunBody, CallbackDeliveryStatus, CallbackRecord, Run, Schedule,
    ScheduleAccepted, ScheduleRunBody,
};
use crate::metrics::Metrics;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Page size used by [`CaptainClient::list_callbacks`]: the API's maximum for that endpoint.
/// A page shorter than this is the last one.
pub const CALLBACKS_PAGE_SIZE: u32 = 20;

/// Longest action slug or identifier accepted into a URL path.
const MAX_PATH_SEGMENT: usize = 128;

/// Settings of [`CaptainClient`].
#[derive(Clone)]
pub struct ClientConfig {
    /// API root including the version, e.g. `https://api.captaindata.com/v4`.
    pub base_url: String,
    /// Sent as `X-API-Key`; never printed.
    pub api_key: SecretString,
    /// Deadline of one attempt (connect, send, whole answer).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Why a [`CaptainClient`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("invalid base url {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    /// The key holds characters that cannot travel in a header (the key itself is not shown).
    #[error("api key is not a valid header value")]
    InvalidApiKey,
    #[error("http client could not be built")]
    Http(#[source] reqwest::Error),
}

/// State change requested on a schedule (`POST /schedules/{uid}/{command}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleCommand {
    Pause,
    Resume,
    Cancel,
}

impl ScheduleCommand {
    /// The path segment the API expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleCommand::Pause => "pause",
            ScheduleCommand::Resume => "resume",
            ScheduleCommand::Cancel => "cancel",
        }
    }
}

/// Client of the Captain Data v4 API. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct CaptainClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    retry: RetryPolicy,
    metrics: Metrics,
    gate: Option<Arc<dyn AttemptGate>>,
}

impl fmt::Debug for CaptainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptainClient")
            .field("base_url", &self.base_url)
            .field("retry", &self.retry)
            .field("gated", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

/// One logical call, possibly sent several times.
pub(super) struct Call {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Vec<(String, String)>,
    pub(super) body: Option<Bytes>,
    /// The `endpoint` metric label.
    pub(super) endpoint: &'static str,
    pub(super) mode: RateMode,
}

/// Turns a 2xx answer (status, headers, body) into the call's result; an `Err` is permanent.
pub(super) type ReadAnswer<T> = fn(u16, &HeaderMap, Bytes) -> Result<T, SubmitError>;

impl CaptainClient {
    /// Builds the client; fails on an unusable base URL or API key.
    pub fn new(config: ClientConfig, metrics: Metrics) -> Result<Self, ClientBuildError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let parsed =
            reqwest::Url::parse(&base_url).map_err(|e| ClientBuildError::InvalidBaseUrl {
                url: config.base_url.clone(),
                reason: e.to_string(),
            })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientBuildError::InvalidBaseUrl {
                url: config.base_url,
                reason: "scheme must be http or https".into(),
            });
        }
        let mut key = HeaderValue::from_str(config.api_key.expose_secret())
            .map_err(|_| ClientBuildError::InvalidApiKey)?;
        // Sensitive values are left out of hyper's and reqwest's debug output.
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", key);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("captain-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientBuildError::Http)?;
        Ok(Self {
            http,
            base_url: base_url.into(),
            retry: config.retry,
            metrics,
            gate: None,
        })
    }

    /// Puts `gate` (e.g. an instance-wide rate limiter) in front of every attempt.
    pub fn with_gate(mut self, gate: Arc<dyn AttemptGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// `POST /actions/{action}/run/async`: queues a run whose results come by callback.
    /// A retry after a timeout may create a second run (the API has no idempotency key).
    pub async fn submit_async(
        &self,
        action: &str,
        body: &AsyncRunBody,
    ) -> Result<AsyncRunAccepted, SubmitError> {
        let action = action_slug(action)?;
        self.call(Call {
            method: Method::POST,
            path: format!("/actions/{action}/run/async"),
            query: Vec::new(),
            body: Some(json_body(body)?),
            endpoint: "run_async",
            mode: RateMode::Async,
        })
        .await
    }

    /// `POST /actions/{action}/run/schedule`: creates a one-shot or cron schedule.
    pub async fn submit_schedule(
        &self,
        action: &str,
        body: &ScheduleRunBody,
    ) -> Result<ScheduleAccepted, SubmitError> {
        let action = action_slug(action)?;
        self.call(Call {
            method: Method::POST,
            path: format!("/actions/{action}/run/schedule"),
            query: Vec::new(),
            body: Some(json_body(body)?),
            endpoint: "run_schedule",
            mode: RateMode::Schedule,
        })
        .await
    }

    /// `GET /runs/{run_uid}`.
    pub async fn get_run(&self, run_uid: &str) -> Result<Run, SubmitError> {
        let run_uid = identifier("run_uid", run_uid)?;
        self.call(Call {
            method: Method::GET,
            path: format!("/runs/{run_uid}"),
            query: Vec::new(),
            body: None,
            endpoint: "get_run",
            mode: RateMode::Api,
        })
        .await
    }

    /// `GET /schedules/{schedule_uid}`: one schedule, with its state.
    pub async fn get_schedule(&self, schedule_uid: &str) -> Result<Schedule, SubmitError> {
        let schedule_uid = identifier("schedule_uid", schedule_uid)?;
        self.call(Call {
            method: Method::GET,
            path: format!("/schedules/{schedule_uid}"),
            query: Vec::new(),
            body: None,
            endpoint: "get_schedule",
            mode: RateMode::Api,
        })
        .await
    }

    /// `POST /runs/{run_uid}/resume`: restarts a blocked or stopped run.
    pub async fn resume_run(&self, run_uid: &str) -> Result<Run, SubmitError> {
        let run_uid = identifier("run_uid", run_uid)?;
        self.call(empty_post(format!("/runs/{run_uid}/resume"), "resume_run"))
            .await
    }

    /// `POST /runs/callbacks/{callback_uid}/replay`: sends a recorded callback again
    /// (at most three replays per original; a replay cannot be replayed).
    pub async fn replay_callback(&self, callback_uid: &str) -> Result<CallbackRecord, SubmitError> {
        let callback_uid = identifier("callback_uid", callback_uid)?;
        self.call(empty_post(
            format!("/runs/callbacks/{callback_uid}/replay"),
            "replay_callback",
        ))
        .await
    }

    /// `GET /runs/callbacks?run_uid=..&status=..`: one page of a run's callback records,
    /// [`CALLBACKS_PAGE_SIZE`] at most, newest first, starting at `offset`.
    /// An empty `statuses` means every status.
    pub async fn list_callbacks(
        &self,
        run_uids: &[&str],
        statuses: &[CallbackDeliveryStatus],
        offset: u32,
    ) -> Result<Vec<CallbackRecord>, SubmitError> {
        // `run_uid` is an array filter: one call audits many runs.
        let mut query = Vec::with_capacity(run_uids.len() + statuses.len() + 2);
        for run_uid in run_uids {
            query.push((
                "run_uid".to_owned(),
                identifier("run_uid", run_uid)?.to_owned(),
            ));
        }
        // Array filters are repeated keys (OpenAPI form + explode).
        query.extend(
            statuses
                .iter()
                .map(|s| ("status".to_owned(), s.as_str().to_owned())),
        );
        query.push(("limit".to_owned(), CALLBACKS_PAGE_SIZE.to_string()));
        query.push(("offset".to_owned(), offset.to_string()));
        self.call(Call {
            method: Method::GET,
            path: "/runs/callbacks".into(),
            query,
            body: None,
            endpoint: "list_callbacks",
            mode: RateMode::Api,
        })
        .await
    }

    /// `POST /schedules/{schedule_uid}/{pause|resume|cancel}`.
    pub async fn manage_schedule(
        &self,
        schedule_uid: &str,
        command: ScheduleCommand,
    ) -> Result<Schedule, SubmitError> {
        let schedule_uid = identifier("schedule_uid", schedule_uid)?;
        self.call(empty_post(
            format!("/schedules/{schedule_uid}/{}", command.as_str()),
            "manage_schedule",
        ))
        .await
    }

    async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, SubmitError> {
        self.call_with(call, read_json).await
    }

    /// Sends `call` through the gate and the retry policy; `read` turns the 2xx answer into
    /// the result (a JSON body, or more for calls that need the headers).
    pub(super) async fn call_with<T>(
        &self,
        call: Call,
        read: ReadAnswer<T>,
    ) -> Result<T, SubmitError> {
        let url = format!("{}{}", self.base_url, call.path);
        run_with_retry(&self.retry, self.gate.as_deref(), call.mode, || {
            self.attempt(&call, &url, read)
        })
        .await
    }

    /// Sends the call once and says what came of it; feeds the per-attempt metrics.
    async fn attempt<T>(&self, call: &Call, url: &str, read: ReadAnswer<T>) -> Verdict<T> {
        let mut request = self.http.request(call.method.clone(), url);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let started = Instant::now();
        let sent = request.send().await;
        let (code, verdict) = match sent {
            Err(err) => ("error".to_owned(), classify_transport(err)),
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await;
                let verdict = classify_response(status, &headers, body, SystemTime::now());
                (
                    status.as_str().to_owned(),
                    read_success(status.as_u16(), &headers, verdict, read),
                )
            }
        };
        self.metrics
            .api_duration
            .with_label_values(&[call.endpoint])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .api_requests
            .with_label_values(&[call.endpoint, &code])
            .inc();
        verdict
    }
}

fn empty_post(path: String, endpoint: &'static str) -> Call {
    Call {
        method: Method::POST,
        path,
        query: Vec::new(),
        // The management bodies are `{}` with no extra keys allowed.
        body: Some(Bytes::from_static(b"{}")),
        endpoint,
        mode: RateMode::Api,
    }
}

/// The default reader: the body is the JSON of `T`.
fn read_json<T: DeserializeOwned>(
    http_status: u16,
    _headers: &HeaderMap,
    bytes: Bytes,
) -> Result<T, SubmitError> {
    serde_json::from_slice(&bytes).map_err(|e| SubmitError::InvalidResponse {
        http_status,
        reason: format!("body does not match the expected shape: {e}"),
        source: Some(Box::new(e)),
    })
}

/// A success whose body is the JSON of `T` (the v3 client reads its answers so).
pub(super) fn parse_success<T: DeserializeOwned>(
    http_status: u16,
    verdict: Verdict<Bytes>,
) -> Verdict<T> {
    read_success(http_status, &HeaderMap::new(), verdict, read_json)
}

fn read_success<T>(
    http_status: u16,
    headers: &HeaderMap,
    verdict: Verdict<Bytes>,
    read: ReadAnswer<T>,
) -> Verdict<T> {
    match verdict {
        Verdict::Success(bytes) => match read(http_status, headers, bytes) {
            Ok(value) => Verdict::Success(value),
            Err(e) => Verdict::Permanent(e),
        },
        Verdict::Permanent(e) => Verdict::Permanent(e),
        Verdict::Transient(e) => Verdict::Transient(e),
        Verdict::RateLimited { retry_after, error } => Verdict::RateLimited { retry_after, error },
    }
}

pub(super) fn json_body<B: Serialize>(body: &B) -> Result<Bytes, SubmitError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| SubmitError::InvalidRequest {
            reason: format!("body could not be serialized: {e}"),
        })
}

/// An action slug goes into the URL path: only `[a-z0-9-]+` is let through.
pub(super) fn action_slug(action: &str) -> Result<&str, SubmitError> {
    let ok = !action.is_empty()
        && action.len() <= MAX_PATH_SEGMENT
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(action)
    } else {
        Err(SubmitError::InvalidRequest {
            reason: format!("action {action:?} is not a slug of [a-z0-9-]"),
        })
    }
}

/// Uids go into the URL path too: `[A-Za-z0-9-]+` (UUIDs and the simulator's ids).
pub(super) fn identifier<'a>(what: &str, value: &'a str) -> Result<&'a str, SubmitError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_PATH_SEGMENT
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(value)
    } else {
        Err(SubmitError::InvalidRequest {
            reason: format!("{what} {value:?} is not an identifier of [A-Za-z0-9-]"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::captain::scripted::{answer, answer_with, serve};
    use crate::captain::wire::{ApiError, CallbackTarget};
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use tokio::time::Instant as TokioInstant;

    pub(crate) fn config(base_url: &str) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            api_key: SecretString::from("test-key-123"),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                max_rate_limit_wait: Duration::from_secs(10),
            },
        }
    }

    fn client(base_url: &str) -> (CaptainClient, Metrics) {
        let metrics = Metrics::new().unwrap();
        (
            CaptainClient::new(config(base_url), metrics.clone()).unwrap(),
            metrics,
        )
    }

    fn body() -> AsyncRunBody {
        AsyncRunBody {
            inputs: vec![json!({"linkedin_profile_url": "https://www.linkedin.com/in/a"})],
            parameters: None,
            identity_ids: None,
            identity_mode: Some("auto".into()),
            callback: CallbackTarget {
                url: "https://bridge.test/callbacks/tok".into(),
                headers: None,
            },
        }
    }

    fn accepted() -> Value {
        json!({"run_id": 7, "run_uid": "run-1", "workspace_uid": "w", "user_uid": "u",
               "action_name": "linkedin-extract-people", "status": "pending",
               "postponed_until": null, "created_at": "2025-09-01T10:00:00Z",
               "synced_at": null, "updated_at": null})
    }

    #[tokio::test]
    async fn an_async_submission_sends_only_present_keys_and_the_api_key() {
        let (base, script) = serve(vec![answer(200, accepted())]).await;
        let (client, metrics) = client(&base);

        let run = client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap();

        assert_eq!(run.run_uid, "run-1");
        let seen = script.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/v4/actions/linkedin-extract-people/run/async");
        assert_eq!(seen[0].headers["x-api-key"], "test-key-123");
        assert_eq!(seen[0].headers["content-type"], "application/json");
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        let keys: Vec<&str> = sent
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["callback", "identity_mode", "inputs"]);
        assert_eq!(
            sent["callback"],
            json!({"url": "https://bridge.test/callbacks/tok"})
        );
        let ok = metrics
            .api_requests
            .with_label_values(&["run_async", "200"])
            .get();
        assert_eq!(ok, 1);
    }

    #[tokio::test]
    async fn a_schedule_submission_sends_its_timing_and_parses_the_answer() {
        let (base, script) = serve(vec![answer(
            200,
            json!({"schedule_uid": "s-1", "status": "ACTIVE", "cron": "0 8 * * 1",
                   "timezone": "Europe/Paris", "next_execution_at": null, "created_at": "x"}),
        )])
        .await;
        let (client, _) = client(&base);
        let b = body();
        let schedule = ScheduleRunBody {
            inputs: b.inputs,
            parameters: Some(json!({"max_results": 10})),
            identity_ids: None,
            identity_mode: None,
            callback: b.callback,
            cron: Some("0 8 * * 1".into()),
            schedule_at: None,
            timezone: Some("Europe/Paris".into()),
        };

        let accepted = client
            .submit_schedule("linkedin-search-people", &schedule)
            .await
            .unwrap();

        assert_eq!(accepted.schedule_uid, "s-1");
        let seen = script.seen.lock().unwrap();
        assert_eq!(
            seen[0].uri,
            "/v4/actions/linkedin-search-people/run/schedule"
        );
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        let keys: Vec<&str> = sent
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["callback", "cron", "inputs", "parameters", "timezone"]
        );
    }

    #[tokio::test]
    async fn a_bad_request_is_rejected_with_every_api_error_field() {
        let (base, script) = serve(vec![answer(
            400,
            json!({"error_label": "INVALID_INPUT", "error_scope": "input", "error_ref": "ERR-1",
                   "message": "inputs[0].linkedin_profile_url is required", "status_code": 400,
                   "params": {"field": "linkedin_profile_url"}}),
        )])
        .await;
        let (client, _) = client(&base);

        let err = client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap_err();

        let SubmitError::Rejected { http_status, error } = &err else {
            panic!("expected a rejection, got {err:?}");
        };
        assert_eq!(*http_status, 400);
        assert_eq!(
            **error,
            ApiError {
                error_label: Some("INVALID_INPUT".into()),
                error_scope: Some("input".into()),
                error_ref: Some("ERR-1".into()),
                message: "inputs[0].linkedin_profile_url is required".into(),
                status_code: Some(400),
                params: Some([("field".into(), "linkedin_profile_url".into())].into()),
            }
        );
        assert!(!err.is_retriable());
        assert_eq!(script.seen_count(), 1);
    }

    #[tokio::test]
    async fn a_server_error_is_retried_once_then_succeeds() {
        let (base, script) = serve(vec![
            answer(500, json!({"message": "boom"})),
            answer(200, accepted()),
        ])
        .await;
        let (client, metrics) = client(&base);

        let run = client
            .submit_async("linkedin-extract-people", &body())
            .await;

        assert_eq!(run.unwrap().run_uid, "run-1");
        assert_eq!(script.seen_count(), 2);
        let failed = metrics
            .api_requests
            .with_label_values(&["run_async", "500"])
            .get();
        assert_eq!(failed, 1);
    }

    #[tokio::test]
    async fn an_api_always_unavailable_makes_the_client_give_up_after_max_attempts() {
        let (base, script) = serve(vec![answer(503, json!({"message": "down"}))]).await;
        let (client, _) = client(&base);

        let err = client.get_run("run-1").await.unwrap_err();

        assert!(
            matches!(err, SubmitError::GaveUp { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(err.is_retriable());
        assert_eq!(err.http_status(), Some(503));
        assert_eq!(script.seen_count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_in_seconds_delays_the_next_request_by_that_much() {
        let (base, script) = serve(vec![
            answer_with(429, "retry-after", "2".into()),
            answer(200, accepted()),
        ])
        .await;
        let (client, metrics) = client(&base);

        client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap();

        let seen = script.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[1].at - seen[0].at >= Duration::from_secs(2));
        let limited = metrics
            .api_requests
            .with_label_values(&["run_async", "429"])
            .get();
        assert_eq!(limited, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_as_an_http_date_delays_the_next_request_until_then() {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4));
        let (base, script) = serve(vec![
            answer_with(429, "retry-after", at),
            answer(200, json!({"uid": "run-1", "status": "RUNNING"})),
        ])
        .await;
        let (client, _) = client(&base);

        let run = client.get_run("run-1").await.unwrap();

        assert_eq!(run.status, Some(crate::domain::RunStatus::Running));
        let seen = script.seen.lock().unwrap();
        // Whole-second precision plus real time spent connecting: at least 2 s of the 4 remain.
        let waited = seen[1].at - seen[0].at;
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_waits_do_not_consume_attempts() {
        let limited = answer_with(429, "retry-after", "1".into());
        let (base, script) = serve(vec![
            limited.clone(),
            limited.clone(),
            limited.clone(),
            limited,
            answer(200, accepted()),
        ])
        .await;
        let (client, _) = client(&base);

        let run = client
            .submit_async("linkedin-extract-people", &body())
            .await;

        assert!(run.is_ok(), "{run:?}");
        assert_eq!(script.seen_count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_rate_limit_budget_gives_up_at_once() {
        let (base, script) = serve(vec![answer_with(429, "retry-after", "3600".into())]).await;
        let (client, _) = client(&base);
        let started = TokioInstant::now();

        let err = client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap_err();

        assert!(
            matches!(err, SubmitError::GaveUp { attempts: 1, .. }),
            "{err:?}"
        );
        assert_eq!(err.http_status(), Some(429));
        assert_eq!(script.seen_count(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_then_reported_as_retriable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (client, metrics) = client(&format!("http://{addr}/v4"));

        let err = client.get_run("run-1").await.unwrap_err();

        assert!(
            matches!(err, SubmitError::GaveUp { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(err.is_retriable());
        assert!(std::error::Error::source(&err).is_some());
        let errors = metrics
            .api_requests
            .with_label_values(&["get_run", "error"])
            .get();
        assert_eq!(errors, 3);
    }

    #[tokio::test]
    async fn an_unexpected_success_body_is_a_permanent_invalid_response() {
        let (base, script) = serve(vec![answer(200, json!({"nothing": "useful"}))]).await;
        let (client, _) = client(&base);

        let err = client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap_err();

        assert!(matches!(
            err,
            SubmitError::InvalidResponse {
                http_status: 200,
                ..
            }
        ));
        assert!(!err.is_retriable());
        assert_eq!(script.seen_count(), 1);
    }

    #[tokio::test]
    async fn an_action_that_is_not_a_slug_is_refused_without_a_call() {
        let (base, script) = serve(vec![answer(200, accepted())]).await;
        let (client, _) = client(&base);

        for bad in ["../runs", "Linkedin", "", "a/b", "a?b"] {
            let err = client.submit_async(bad, &body()).await.unwrap_err();
            assert!(matches!(err, SubmitError::InvalidRequest { .. }), "{bad}");
        }
        assert!(client.get_run("x/../y").await.is_err());
        assert_eq!(script.seen_count(), 0);
    }

    #[tokio::test]
    async fn management_calls_send_an_empty_object_to_their_paths() {
        let (base, script) = serve(vec![
            answer(200, json!({"uid": "s-1", "status": "PAUSED"})),
            answer(
                200,
                json!({"uid": "cb-2", "parent_uid": "cb-1", "status": "PENDING"}),
            ),
            answer(
                200,
                json!([{"uid": "cb-1", "status": "FAILED", "http_status": 503}]),
            ),
            answer(200, json!({"uid": "run-1", "status": "QUEUED"})),
        ])
        .await;
        let (client, _) = client(&base);

        let schedule = client
            .manage_schedule("s-1", ScheduleCommand::Pause)
            .await
            .unwrap();
        let replay = client.replay_callback("cb-1").await.unwrap();
        let failed = client
            .list_callbacks(&["run-1"], &[CallbackDeliveryStatus::Failed], 0)
            .await
            .unwrap();
        let resumed = client.resume_run("run-1").await.unwrap();

        assert_eq!(
            schedule.status,
            Some(crate::captain::ScheduleStatus::Paused)
        );
        assert_eq!(replay.parent_uid.as_deref(), Some("cb-1"));
        assert_eq!(failed[0].http_status, Some(503));
        assert_eq!(resumed.status, Some(crate::domain::RunStatus::Queued));
        let seen = script.seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "/v4/schedules/s-1/pause",
                "/v4/runs/callbacks/cb-1/replay",
                "/v4/runs/callbacks?run_uid=run-1&status=FAILED&limit=20&offset=0",
                "/v4/runs/run-1/resume",
            ]
        );
        assert_eq!(seen[0].body, b"{}");
        assert!(seen[2].body.is_empty());
    }

    #[derive(Default)]
    struct CountingGate {
        attempts: Mutex<Vec<RateMode>>,
        limited: Mutex<Vec<Option<Duration>>>,
    }

    #[async_trait::async_trait]
    impl AttemptGate for CountingGate {
        async fn before_attempt(&self, mode: RateMode) {
            self.attempts.lock().unwrap().push(mode);
        }
        fn on_rate_limited(&self, _mode: RateMode, retry_after: Option<Duration>) {
            self.limited.lock().unwrap().push(retry_after);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_sees_every_attempt_and_every_rate_limit() {
        let (base, _script) = serve(vec![
            answer_with(429, "retry-after", "1".into()),
            answer(500, json!({"message": "boom"})),
            answer(200, accepted()),
        ])
        .await;
        let gate = Arc::new(CountingGate::default());
        let (client, _) = client(&base);
        let client = client.with_gate(gate.clone());

        client
            .submit_async("linkedin-extract-people", &body())
            .await
            .unwrap();

        assert_eq!(*gate.attempts.lock().unwrap(), [RateMode::Async; 3]);
        assert_eq!(
            *gate.limited.lock().unwrap(),
            [Some(Duration::from_secs(1))]
        );
    }

    #[test]
    fn the_debug_of_the_config_hides_the_api_key() {
        let dbg = format!("{:?}", config("http://localhost/v4"));
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains("test-key-123"));
    }

    #[test]
    fn a_base_url_that_is_not_http_is_refused() {
        let metrics = Metrics::new().unwrap();
        let err = CaptainClient::new(config("ftp://x/v4"), metrics).unwrap_err();
        assert!(matches!(err, ClientBuildError::InvalidBaseUrl { .. }));
    }
}
