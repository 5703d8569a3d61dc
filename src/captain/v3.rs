//! `V3Client`: the Captain Data **v3** API (workflows and jobs) for accounts that still run
//! workflows there. It sends `Authorization: x-api-key <KEY>` and `x-project-id` on every call
//! and shares the v4 client's request path: the same error classification
//! ([`SubmitError`]), retry policy, attempt gate (rate limiter) and metrics. Results are read
//! page by page until an empty page ([`V3ResultPages`]). The paths no source spells out
//! (retry, cancel, webhook retry, the page parameters) are configurable ([`V3Paths`]).

use super::client::{identifier, json_body, parse_success};
use super::error::{classify_response, classify_transport, SubmitError, Verdict};
use super::retry::{run_with_retry, AttemptGate, RateMode, RetryPolicy};
use super::v3_wire::{
    V3Ack, V3InputsBody, V3Job, V3ResultsBody, V3ScheduleAccepted, V3ScheduleBody, V3Workflow,
};
use crate::domain::RunStatus;
use crate::metrics::Metrics;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The v3 API root.
pub const V3_DEFAULT_BASE_URL: &str = "https://api.captaindata.co/v3";

/// The placeholder of a job uid in [`V3Paths`] templates.
const JOB_UID: &str = "{job_uid}";

/// Paths and parameter names that no captured source spells out (shared/captaindata-api.md
/// §13, "inferred"). Templates are relative to the base URL and hold one `{job_uid}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Paths {
    /// Default `/jobs/{job_uid}/retry`.
    pub retry_job: String,
    /// Default `/jobs/{job_uid}/cancel`.
    pub cancel_job: String,
    /// Default `/jobs/{job_uid}/webhooks/retry`.
    pub retry_webhook: String,
    /// Query parameter of the page number (from 0) on results, inputs and job lists;
    /// default `page` (the jobs list's documented `?page=0`).
    pub page_param: String,
    /// Query parameter of the page size on results and inputs; default `page_size`.
    pub page_size_param: String,
}

impl Default for V3Paths {
    fn default() -> Self {
        Self {
            retry_job: "/jobs/{job_uid}/retry".into(),
            cancel_job: "/jobs/{job_uid}/cancel".into(),
            retry_webhook: "/jobs/{job_uid}/webhooks/retry".into(),
            page_param: "page".into(),
            page_size_param: "page_size".into(),
        }
    }
}

/// Settings of [`V3Client`].
#[derive(Clone)]
pub struct V3ClientConfig {
    /// API root including the version; default [`V3_DEFAULT_BASE_URL`].
    pub base_url: String,
    /// Sent as `Authorization: x-api-key <KEY>`; never printed.
    pub api_key: SecretString,
    /// The workspace (project) uid, sent as `x-project-id`.
    pub project_uid: String,
    /// Deadline of one attempt.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Rows asked per results / inputs page (sent as `page_size_param`); `None` sends no
    /// size and takes the server's. Paging ends at the first empty page either way.
    pub results_page_size: Option<u32>,
    /// Pages one walk may read before it is refused as runaway (a server that ignores the
    /// page parameter would otherwise answer the same page forever).
    pub max_result_pages: u32,
    /// Wait after a 429 without `Retry-After` when no gate is set; with a gate (the shared
    /// limiter) the gate's own default cooldown applies instead.
    pub default_rate_limit_wait: Duration,
    pub paths: V3Paths,
}

impl V3ClientConfig {
    /// The defaults for a key and a project.
    pub fn new(
        base_url: impl Into<String>,
        api_key: SecretString,
        project_uid: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            project_uid: project_uid.into(),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            results_page_size: Some(100),
            max_result_pages: 100_000,
            default_rate_limit_wait: Duration::from_secs(1),
            paths: V3Paths::default(),
        }
    }
}

impl fmt::Debug for V3ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V3ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("project_uid", &self.project_uid)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("results_page_size", &self.results_page_size)
            .field("max_result_pages", &self.max_result_pages)
            .field("default_rate_limit_wait", &self.default_rate_limit_wait)
            .field("paths", &self.paths)
            .finish()
    }
}

/// Why a [`V3Client`] could not be built; names the setting.
#[derive(Debug, thiserror::Error)]
pub enum V3BuildError {
    #[error("invalid base url {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    /// The key holds characters that cannot travel in a header (the key itself is not shown).
    #[error("api key is not a valid header value")]
    InvalidApiKey,
    #[error("project uid {0:?} is not an identifier of [A-Za-z0-9-]")]
    InvalidProjectUid(String),
    #[error("paths.{name}: {reason}")]
    InvalidPath { name: &'static str, reason: String },
    #[error("{name} must be >= 1")]
    InvalidLimit { name: &'static str },
    #[error("http client could not be built")]
    Http(#[source] reqwest::Error),
}

/// One page of a job's results.
#[derive(Debug, Clone, PartialEq)]
pub struct V3ResultPage {
    /// The page number, from 0.
    pub page: u32,
    /// The rows, each a JSON object.
    pub results: Vec<Value>,
}

/// Client of the Captain Data v3 API. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct V3Client {
    http: reqwest::Client,
    base_url: Arc<str>,
    retry: RetryPolicy,
    page_size: Option<u32>,
    max_result_pages: u32,
    default_rate_limit_wait: Duration,
    paths: Arc<V3Paths>,
    metrics: Metrics,
    gate: Option<Arc<dyn AttemptGate>>,
}

impl fmt::Debug for V3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V3Client")
            .field("base_url", &self.base_url)
            .field("paths", &self.paths)
            .field("gated", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

/// One logical call, possibly sent several times.
struct Call {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Bytes>,
    /// The `endpoint` metric label.
    endpoint: &'static str,
    mode: RateMode,
}

impl Call {
    fn get(path: String, endpoint: &'static str) -> Self {
        Self {
            method: Method::GET,
            path,
            query: Vec::new(),
            body: None,
            endpoint,
            mode: RateMode::Api,
        }
    }

    /// The job-management POSTs send `{}`: the API reference shows no body for them.
    fn post_empty(path: String, endpoint: &'static str) -> Self {
        Self {
            method: Method::POST,
            body: Some(Bytes::from_static(b"{}")),
            ..Self::get(path, endpoint)
        }
    }
}

fn check_template(name: &'static str, template: &str) -> Result<(), V3BuildError> {
    let fail = |reason: String| Err(V3BuildError::InvalidPath { name, reason });
    if !template.starts_with('/') {
        return fail(format!("{template:?} must start with '/'"));
    }
    if template.matches(JOB_UID).count() != 1 {
        return fail(format!("{template:?} must hold {JOB_UID} exactly once"));
    }
    let rest = template.replace(JOB_UID, "");
    if rest
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.')))
    {
        return fail(format!(
            "{template:?} may only hold [A-Za-z0-9/._-] besides {JOB_UID}"
        ));
    }
    Ok(())
}

fn check_param(name: &'static str, param: &str) -> Result<(), V3BuildError> {
    let ok = !param.is_empty()
        && param
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(V3BuildError::InvalidPath {
            name,
            reason: format!("{param:?} is not a query parameter name of [A-Za-z0-9._-]"),
        })
    }
}

impl V3Client {
    /// Builds the client; fails on an unusable base URL, key, project uid or path.
    pub fn new(config: V3ClientConfig, metrics: Metrics) -> Result<Self, V3BuildError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| V3BuildError::InvalidBaseUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(V3BuildError::InvalidBaseUrl {
                url: config.base_url,
                reason: "scheme must be http or https".into(),
            });
        }
        let p = &config.paths;
        check_template("retry_job", &p.retry_job)?;
        check_template("cancel_job", &p.cancel_job)?;
        check_template("retry_webhook", &p.retry_webhook)?;
        check_param("page_param", &p.page_param)?;
        check_param("page_size_param", &p.page_size_param)?;
        if config.results_page_size == Some(0) {
            return Err(V3BuildError::InvalidLimit {
                name: "results_page_size",
            });
        }
        if config.max_result_pages == 0 {
            return Err(V3BuildError::InvalidLimit {
                name: "max_result_pages",
            });
        }
        identifier("project_uid", &config.project_uid)
            .map_err(|_| V3BuildError::InvalidProjectUid(config.project_uid.clone()))?;
        let mut auth =
            HeaderValue::from_str(&format!("x-api-key {}", config.api_key.expose_secret()))
                .map_err(|_| V3BuildError::InvalidApiKey)?;
        // Sensitive values are left out of hyper's and reqwest's debug output.
        auth.set_sensitive(true);
        let project = HeaderValue::from_str(&config.project_uid)
            .map_err(|_| V3BuildError::InvalidProjectUid(config.project_uid.clone()))?;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert("x-project-id", project);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("captain-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(V3BuildError::Http)?;
        Ok(Self {
            http,
            base_url: base_url.into(),
            retry: config.retry,
            page_size: config.results_page_size,
            max_result_pages: config.max_result_pages,
            default_rate_limit_wait: config.default_rate_limit_wait,
            paths: Arc::new(config.paths),
            metrics,
            gate: None,
        })
    }

    /// Puts `gate` (e.g. the v3 key's rate limiter) in front of every attempt.
    pub fn with_gate(mut self, gate: Arc<dyn AttemptGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// `GET /workflows`.
    pub async fn list_workflows(&self) -> Result<Vec<V3Workflow>, SubmitError> {
        self.call(Call::get("/workflows".into(), "v3_list_workflows"))
            .await
    }

    /// `POST /workflows/{workflow_uid}/schedule`: launches a job. Like a v4 submission, a
    /// retry after a timeout may create a second job (the API has no idempotency key).
    pub async fn schedule_workflow(
        &self,
        workflow_uid: &str,
        body: &V3ScheduleBody,
    ) -> Result<V3ScheduleAccepted, SubmitError> {
        let workflow_uid = identifier("workflow_uid", workflow_uid)?;
        if body.inputs.is_empty() {
            return Err(SubmitError::InvalidRequest {
                reason: "inputs must hold at least one input".into(),
            });
        }
        let accepted: V3ScheduleAccepted = self
            .call(Call {
                method: Method::POST,
                path: format!("/workflows/{workflow_uid}/schedule"),
                query: Vec::new(),
                body: Some(json_body(body)?),
                endpoint: "v3_schedule_workflow",
                mode: RateMode::Schedule,
            })
            .await?;
        if identifier("job_uid", &accepted.job_uid).is_err() {
            // Not retried: the job may exist, and a second launch would duplicate it.
            return Err(SubmitError::InvalidResponse {
                http_status: 200,
                reason: format!("job_uid {:?} is not an identifier", accepted.job_uid),
                source: None,
            });
        }
        Ok(accepted)
    }

    /// `GET /jobs/{job_uid}`.
    pub async fn get_job(&self, job_uid: &str) -> Result<V3Job, SubmitError> {
        let job_uid = identifier("job_uid", job_uid)?;
        self.call(Call::get(format!("/jobs/{job_uid}"), "v3_get_job"))
            .await
    }

    /// `GET /workflows/{workflow_uid}/jobs?page=N`: one page of a workflow's jobs of the last
    /// two months.
    pub async fn list_jobs(
        &self,
        workflow_uid: &str,
        page: u32,
    ) -> Result<Vec<V3Job>, SubmitError> {
        let workflow_uid = identifier("workflow_uid", workflow_uid)?;
        let mut call = Call::get(format!("/workflows/{workflow_uid}/jobs"), "v3_list_jobs");
        call.query
            .push((self.paths.page_param.clone(), page.to_string()));
        self.call(call).await
    }

    /// `GET /jobs/{job_uid}/results?page=N[&page_size=M]`: one page of result rows (each a JSON
    /// object). An empty page means there are no more.
    pub async fn results_page(&self, job_uid: &str, page: u32) -> Result<Vec<Value>, SubmitError> {
        let job_uid = identifier("job_uid", job_uid)?;
        let call = self.paged(format!("/jobs/{job_uid}/results"), "v3_job_results", page);
        let body: V3ResultsBody = self.call(call).await?;
        if let Some(i) = body.results.iter().position(|row| !row.is_object()) {
            return Err(SubmitError::InvalidResponse {
                http_status: 200,
                reason: format!("results[{i}] of page {page} is not a json object"),
                source: None,
            });
        }
        Ok(body.results)
    }

    /// Walks a job's results page by page from page 0 until an empty page.
    pub fn results(&self, job_uid: &str) -> V3ResultPages<'_> {
        V3ResultPages {
            client: self,
            job_uid: job_uid.to_owned(),
            next: 0,
            done: false,
            previous: None,
        }
    }

    /// Whether the job has at least one result row (its first page is not empty).
    pub async fn has_results(&self, job_uid: &str) -> Result<bool, SubmitError> {
        Ok(!self.results_page(job_uid, 0).await?.is_empty())
    }

    /// The job and its status in the bridge's vocabulary; a `warning` job is checked for
    /// results (one page read). `None` for a status this client does not know.
    pub async fn job_run_status(
        &self,
        job_uid: &str,
    ) -> Result<(V3Job, Option<RunStatus>), SubmitError> {
        let job = self.get_job(job_uid).await?;
        let results_exist = if job.status.needs_results_check() {
            self.has_results(job_uid).await?
        } else {
            false
        };
        let status = job.status.run_status(results_exist);
        Ok((job, status))
    }

    /// `GET /jobs/{job_uid}/inputs?page=N[&page_size=M]`: one page of the job's inputs with
    /// what became of them (item shape undocumented: kept as JSON).
    pub async fn inputs_page(&self, job_uid: &str, page: u32) -> Result<Vec<Value>, SubmitError> {
        let job_uid = identifier("job_uid", job_uid)?;
        let call = self.paged(format!("/jobs/{job_uid}/inputs"), "v3_job_inputs", page);
        let body: V3InputsBody = self.call(call).await?;
        Ok(body.inputs)
    }

    /// Retries a pending, paused, warning or shutdown job (path: [`V3Paths::retry_job`]).
    pub async fn retry_job(&self, job_uid: &str) -> Result<V3Ack, SubmitError> {
        let path = self.job_path(&self.paths.retry_job, job_uid)?;
        self.call(Call::post_empty(path, "v3_retry_job")).await
    }

    /// Cancels a running, pending, paused, warning or shutdown job (path:
    /// [`V3Paths::cancel_job`]).
    pub async fn cancel_job(&self, job_uid: &str) -> Result<V3Ack, SubmitError> {
        let path = self.job_path(&self.paths.cancel_job, job_uid)?;
        self.call(Call::post_empty(path, "v3_cancel_job")).await
    }

    /// Asks the platform to send the job's webhook again (path: [`V3Paths::retry_webhook`]).
    pub async fn retry_webhook(&self, job_uid: &str) -> Result<V3Ack, SubmitError> {
        let path = self.job_path(&self.paths.retry_webhook, job_uid)?;
        self.call(Call::post_empty(path, "v3_retry_webhook")).await
    }

    fn job_path(&self, template: &str, job_uid: &str) -> Result<String, SubmitError> {
        let job_uid = identifier("job_uid", job_uid)?;
        Ok(template.replacen(JOB_UID, job_uid, 1))
    }

    fn paged(&self, path: String, endpoint: &'static str, page: u32) -> Call {
        let mut call = Call::get(path, endpoint);
        call.query
            .push((self.paths.page_param.clone(), page.to_string()));
        if let Some(size) = self.page_size {
            call.query
                .push((self.paths.page_size_param.clone(), size.to_string()));
        }
        call
    }

    async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T, SubmitError> {
        let url = format!("{}{}", self.base_url, call.path);
        run_with_retry(&self.retry, self.gate.as_deref(), call.mode, || {
            self.attempt(&call, &url)
        })
        .await
    }

    /// Sends the call once and says what came of it; feeds the per-attempt metrics.
    async fn attempt<T: DeserializeOwned>(&self, call: &Call, url: &str) -> Verdict<T> {
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
        let (code, verdict) = match request.send().await {
            Err(err) => ("error".to_owned(), classify_transport(err)),
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await;
                let verdict = classify_response(status, &headers, body, SystemTime::now());
                (
                    status.as_str().to_owned(),
                    parse_success(status.as_u16(), verdict),
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
        match verdict {
            Verdict::RateLimited { mut answer, error } => {
                // No v3 source shows rate-limit headers. With a gate, `None` lets the shared
                // limiter apply its default cooldown; without one, wait the configured default
                // rather than the (short) retry backoff.
                if answer.retry_after.is_none() && self.gate.is_none() {
                    answer.retry_after = Some(self.default_rate_limit_wait);
                }
                Verdict::RateLimited { answer, error }
            }
            other => other,
        }
    }
}

/// A walk over a job's result pages (from [`V3Client::results`]): each call to
/// [`V3ResultPages::next_page`] reads one page, until an empty page ends the walk. One page is
/// held at a time. A page identical to the one before it, or more than `max_result_pages`
/// pages, is refused as [`SubmitError::InvalidResponse`]: the server ignores the page
/// parameter and would otherwise answer the same rows forever.
#[derive(Debug)]
pub struct V3ResultPages<'a> {
    client: &'a V3Client,
    job_uid: String,
    next: u32,
    done: bool,
    previous: Option<u64>,
}

impl V3ResultPages<'_> {
    /// The next non-empty page, or `None` once an empty page came.
    pub async fn next_page(&mut self) -> Result<Option<V3ResultPage>, SubmitError> {
        if self.done {
            return Ok(None);
        }
        let page = self.next;
        if page >= self.client.max_result_pages {
            self.done = true;
            return Err(SubmitError::InvalidResponse {
                http_status: 200,
                reason: format!(
                    "job {} has more than {} result pages; the server may ignore the {:?} parameter",
                    self.job_uid, self.client.max_result_pages, self.client.paths.page_param
                ),
                source: None,
            });
        }
        let results = self.client.results_page(&self.job_uid, page).await?;
        if results.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let fingerprint = fingerprint(&results);
        if self.previous == Some(fingerprint) {
            self.done = true;
            return Err(SubmitError::InvalidResponse {
                http_status: 200,
                reason: format!(
                    "result page {page} of job {} repeats page {}; the server ignores the {:?} parameter",
                    self.job_uid,
                    page - 1,
                    self.client.paths.page_param
                ),
                source: None,
            });
        }
        self.previous = Some(fingerprint);
        self.next += 1;
        Ok(Some(V3ResultPage { page, results }))
    }
}

fn fingerprint(rows: &[Value]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for row in rows {
        row.to_string().hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::captain::retry::RateLimitAnswer;
    use crate::captain::v3_wire::{V3JobStatus, V3Step};
    use axum::extract::{Request, State};
    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::{IntoResponse, Response};
    use axum::Router;
    use serde_json::json;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use tokio::time::Instant as TokioInstant;

    /// A request the scripted server received, and when (tokio's clock).
    struct Seen {
        method: String,
        uri: String,
        headers: AxumHeaders,
        body: Vec<u8>,
        at: TokioInstant,
    }

    /// One scripted answer: status, an extra header, body.
    type Answer = (u16, Option<(&'static str, String)>, Value);

    #[derive(Default)]
    struct Script {
        /// The last one repeats forever.
        answers: Mutex<VecDeque<Answer>>,
        seen: Mutex<Vec<Seen>>,
    }

    async fn scripted(State(script): State<Arc<Script>>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        script.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body: body.to_vec(),
            at: TokioInstant::now(),
        });
        let (status, header, body) = {
            let mut answers = script.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().unwrap()
            }
        };
        let mut response = (
            axum::http::StatusCode::from_u16(status).unwrap(),
            axum::Json(body),
        )
            .into_response();
        if let Some((name, value)) = header {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }

    async fn serve(answers: Vec<Answer>) -> (String, Arc<Script>) {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            seen: Mutex::default(),
        });
        let app = Router::new().fallback(scripted).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/v3"), script)
    }

    fn ok(body: Value) -> Answer {
        (200, None, body)
    }

    fn config(base: &str) -> V3ClientConfig {
        let mut config = V3ClientConfig::new(base, SecretString::from("v3-secret-key"), "proj-1");
        config.retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_rate_limit_wait: Duration::from_secs(30),
        };
        config.results_page_size = Some(2);
        config
    }

    fn client(base: &str) -> V3Client {
        V3Client::new(config(base), Metrics::new().unwrap()).unwrap()
    }

    fn body() -> V3ScheduleBody {
        V3ScheduleBody {
            job_name: Some("run".into()),
            inputs: vec![json!({"linkedin_profile_url": "https://x", "meta": {"row": 1}})],
            steps: Some(vec![V3Step {
                step_uid: "step-1".into(),
                accounts: vec!["acc-1".into()],
                accounts_rotation_enabled: Some(true),
                parameters: None,
            }]),
            delay: None,
        }
    }

    #[tokio::test]
    async fn a_launch_sends_the_key_the_project_and_only_present_keys() {
        let (base, script) = serve(vec![ok(json!({
            "workflow": {"uid": "wf-1", "name": "W"}, "message": "Bot successfully scheduled.",
            "job_uid": "job-1"}))])
        .await;
        let accepted = client(&base)
            .schedule_workflow("wf-1", &body())
            .await
            .unwrap();
        assert_eq!(accepted.job_uid, "job-1");
        assert_eq!(accepted.workflow.unwrap().uid, "wf-1");
        let seen = script.seen.lock().unwrap();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/v3/workflows/wf-1/schedule");
        assert_eq!(seen[0].headers["authorization"], "x-api-key v3-secret-key");
        assert_eq!(seen[0].headers["x-project-id"], "proj-1");
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            sent,
            json!({"job_name": "run", "inputs": [{"linkedin_profile_url": "https://x", "meta": {"row": 1}}],
                   "steps": [{"step_uid": "step-1", "accounts": ["acc-1"], "accounts_rotation_enabled": true}]})
        );
    }

    #[tokio::test]
    async fn a_launch_answer_without_a_usable_job_uid_is_an_invalid_response_not_retried() {
        let (base, script) =
            serve(vec![ok(json!({"message": "Bot successfully scheduled."}))]).await;
        let err = client(&base)
            .schedule_workflow("wf-1", &body())
            .await
            .unwrap_err();
        assert!(
            matches!(err, SubmitError::InvalidResponse { .. }),
            "{err:?}"
        );
        assert!(!err.is_retriable());
        let (base, _) = serve(vec![ok(json!({"job_uid": "../x"}))]).await;
        let err = client(&base)
            .schedule_workflow("wf-1", &body())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("job_uid"), "{err}");
        assert_eq!(script.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_is_permanent_and_a_server_error_is_retried_then_given_up() {
        let (base, script) = serve(vec![(
            400,
            None,
            json!({"error_label": "INVALID_INPUT", "message": "inputs[0].linkedin_profile_url: is required", "status_code": 400}),
        )])
        .await;
        let err = client(&base)
            .schedule_workflow("wf-1", &body())
            .await
            .unwrap_err();
        let SubmitError::Rejected { http_status, error } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*http_status, 400);
        assert_eq!(error.message, "inputs[0].linkedin_profile_url: is required");
        assert_eq!(script.seen.lock().unwrap().len(), 1);

        let (base, script) = serve(vec![(503, None, json!({"message": "down"}))]).await;
        let err = client(&base).get_job("job-1").await.unwrap_err();
        assert!(
            matches!(err, SubmitError::GaveUp { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(err.is_retriable());
        assert_eq!(script.seen.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_waits_the_default_and_with_it_waits_that_long() {
        let (base, script) = serve(vec![
            (429, None, json!({"message": "slow down"})),
            (429, Some(("retry-after", "3".into())), json!({})),
            ok(json!({"uid": "job-1", "status": "running"})),
        ])
        .await;
        let mut config = config(&base);
        config.default_rate_limit_wait = Duration::from_secs(5);
        let client = V3Client::new(config, Metrics::new().unwrap()).unwrap();
        let job = client.get_job("job-1").await.unwrap();
        assert_eq!(job.status, V3JobStatus::Running);
        let seen = script.seen.lock().unwrap();
        assert!(seen[1].at - seen[0].at >= Duration::from_secs(5));
        assert!(seen[2].at - seen[1].at >= Duration::from_secs(3));
        assert!(seen[2].at - seen[1].at < Duration::from_secs(5));
    }

    #[derive(Default)]
    struct RecordingGate {
        limited: Mutex<Vec<Option<Duration>>>,
        modes: Mutex<Vec<RateMode>>,
    }

    #[async_trait::async_trait]
    impl AttemptGate for RecordingGate {
        async fn before_attempt(&self, mode: RateMode) {
            self.modes.lock().unwrap().push(mode);
        }
        fn on_rate_limited(&self, _mode: RateMode, answer: RateLimitAnswer) {
            self.limited.lock().unwrap().push(answer.retry_after);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_gate_a_429_without_retry_after_is_left_to_the_gates_default_cooldown() {
        let (base, _script) = serve(vec![
            (429, None, json!({})),
            ok(json!({"workflow": {"uid": "wf-1"}, "job_uid": "job-1"})),
        ])
        .await;
        let gate = Arc::new(RecordingGate::default());
        let client = client(&base).with_gate(gate.clone());
        client.schedule_workflow("wf-1", &body()).await.unwrap();
        assert_eq!(*gate.limited.lock().unwrap(), [None]);
        assert_eq!(*gate.modes.lock().unwrap(), [RateMode::Schedule; 2]);
    }

    #[tokio::test]
    async fn results_are_read_page_by_page_until_an_empty_page() {
        let (base, script) = serve(vec![
            ok(json!({"results": [{"a": 1}, {"a": 2}]})),
            ok(json!({"results": [{"a": 3}]})),
            ok(json!({"results": []})),
        ])
        .await;
        let client = client(&base);
        let mut pages = client.results("job-1");
        let mut rows = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            rows.extend(page.results);
        }
        assert_eq!(rows, [json!({"a": 1}), json!({"a": 2}), json!({"a": 3})]);
        assert!(
            pages.next_page().await.unwrap().is_none(),
            "the walk stays ended"
        );
        let uris: Vec<String> = script
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.uri.clone())
            .collect();
        assert_eq!(
            uris,
            [
                "/v3/jobs/job-1/results?page=0&page_size=2",
                "/v3/jobs/job-1/results?page=1&page_size=2",
                "/v3/jobs/job-1/results?page=2&page_size=2",
            ]
        );
    }

    #[tokio::test]
    async fn a_server_that_ignores_the_page_parameter_is_caught_instead_of_looping() {
        let (base, _) = serve(vec![ok(json!({"results": [{"a": 1}]}))]).await;
        let client = client(&base);
        let mut pages = client.results("job-1");
        assert!(pages.next_page().await.unwrap().is_some());
        let err = pages.next_page().await.unwrap_err();
        assert!(err.to_string().contains("repeats page 0"), "{err}");
        assert!(!err.is_retriable());

        let (base, _) = serve(vec![
            ok(json!({"results": [{"a": 1}]})),
            ok(json!({"results": [{"a": 2}]})),
            ok(json!({"results": [{"a": 3}]})),
        ])
        .await;
        let mut config = config(&base);
        config.max_result_pages = 2;
        let client = V3Client::new(config, Metrics::new().unwrap()).unwrap();
        let mut pages = client.results("job-1");
        pages.next_page().await.unwrap();
        pages.next_page().await.unwrap();
        let err = pages.next_page().await.unwrap_err();
        assert!(
            err.to_string().contains("more than 2 result pages"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_result_row_that_is_not_an_object_is_refused_naming_it() {
        let (base, _) = serve(vec![ok(json!({"results": [{"a": 1}, 7]}))]).await;
        let err = client(&base).results_page("job-1", 3).await.unwrap_err();
        assert!(err.to_string().contains("results[1] of page 3"), "{err}");
    }

    #[tokio::test]
    async fn job_management_posts_go_to_the_configured_paths_with_an_empty_object() {
        let (base, script) = serve(vec![ok(json!({"message": "ok", "job_uid": "job-1"}))]).await;
        let mut config = config(&base);
        config.paths.cancel_job = "/jobs/cancel/{job_uid}".into();
        config.paths.page_param = "p".into();
        config.results_page_size = None;
        let client = V3Client::new(config, Metrics::new().unwrap()).unwrap();
        client.retry_job("job-1").await.unwrap();
        client.cancel_job("job-1").await.unwrap();
        let ack = client.retry_webhook("job-1").await.unwrap();
        assert_eq!(ack.job_uid.as_deref(), Some("job-1"));
        client.inputs_page("job-1", 4).await.unwrap_err();
        client.list_jobs("wf-1", 1).await.unwrap_err();
        let seen = script.seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "/v3/jobs/job-1/retry",
                "/v3/jobs/cancel/job-1",
                "/v3/jobs/job-1/webhooks/retry",
                "/v3/jobs/job-1/inputs?p=4",
                "/v3/workflows/wf-1/jobs?p=1",
            ]
        );
        assert!(seen[..3]
            .iter()
            .all(|s| s.body == b"{}" && s.method == "POST"));
    }

    #[tokio::test]
    async fn identifiers_that_could_escape_the_path_are_refused_without_a_call() {
        let (base, script) = serve(vec![ok(json!({}))]).await;
        let client = client(&base);
        for bad in ["../x", "", "a/b", "a?b=1"] {
            assert!(matches!(
                client.get_job(bad).await,
                Err(SubmitError::InvalidRequest { .. })
            ));
            assert!(client.retry_job(bad).await.is_err());
            assert!(client.schedule_workflow(bad, &body()).await.is_err());
        }
        let mut empty = body();
        empty.inputs.clear();
        assert!(matches!(
            client.schedule_workflow("wf-1", &empty).await,
            Err(SubmitError::InvalidRequest { .. })
        ));
        assert!(script.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        let build = |tune: &dyn Fn(&mut V3ClientConfig)| {
            let mut c = config("http://localhost/v3");
            tune(&mut c);
            V3Client::new(c, Metrics::new().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert!(build(&|c| c.base_url = "ftp://x".into()).contains("scheme"));
        assert!(build(&|c| c.project_uid = "a b".into()).starts_with("project uid"));
        assert!(build(&|c| c.paths.retry_job = "/jobs/retry".into()).starts_with("paths.retry_job"));
        assert!(build(&|c| c.paths.cancel_job = "jobs/{job_uid}".into())
            .starts_with("paths.cancel_job"));
        assert!(
            build(&|c| c.paths.retry_webhook = "/j/{job_uid}?x=1".into())
                .starts_with("paths.retry_webhook")
        );
        assert!(build(&|c| c.paths.page_param = "".into()).starts_with("paths.page_param"));
        assert!(build(&|c| c.results_page_size = Some(0)).starts_with("results_page_size"));
        assert!(build(&|c| c.api_key = SecretString::from("bad\nkey")).contains("api key"));
    }

    #[test]
    fn the_debug_of_the_config_hides_the_api_key() {
        let dbg = format!("{:?}", config("http://localhost/v3"));
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains("v3-secret-key"));
    }
}
