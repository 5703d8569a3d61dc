//! `POST /webhooks/v3`: the webhooks of v3 workflows (Created, Succeeded, Failed). Checked in
//! order of cost: declared size, header secret (constant time, against every accepted secret
//! so a rotation has no gap), content type, size while reading, payload shape, project. The
//! job name's token says which request (and partition) the job belongs to; the body is then
//! appended, as it arrived, to the internal callbacks topic (header `captain.kind =
//! v3-webhook`) and answered 200 once Kafka has it, exactly like a v4 callback. A webhook
//! whose job name carries no valid token is for a job the bridge did not launch (e.g. one
//! started in the app): it is answered 200 `ignored` and counted, and nothing is written.

use super::job_name;
use super::metrics::V3Metrics;
use crate::callbacks::body::{read_limited, BodyError, BodyLimits};
use crate::callbacks::SinkError;
use crate::captain::v3_wire::{V3WebhookError, V3WebhookPayload};
use crate::intake::CallbackIntake;
use crate::publish::H_KIND;
use crate::telemetry::ErrorChain;
use crate::token::{CallbackClaims, TokenKeys};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The `captain.kind` header value of a v3 webhook on the internal callbacks topic.
pub const KIND_V3_WEBHOOK: &str = "v3-webhook";
/// The endpoint's path on the callback listener.
pub const WEBHOOK_PATH: &str = "/webhooks/v3";

/// Where accepted webhooks go (the durable intake).
pub trait WebhookSink: Send + Sync + 'static {
    /// Makes the webhook durable on the partition of `claims.request_id`; resolves once Kafka
    /// acknowledged it.
    fn accept(&self, claims: CallbackClaims, body: Bytes) -> BoxFuture<'_, Result<(), SinkError>>;
}

impl WebhookSink for CallbackIntake {
    fn accept(&self, claims: CallbackClaims, body: Bytes) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let mut record = self.records.callback(
                &claims.request_id,
                claims.chunk,
                chrono::Utc::now(),
                body.to_vec(),
            );
            record
                .headers
                .push((H_KIND.to_owned(), KIND_V3_WEBHOOK.as_bytes().to_vec()));
            match self.producer.send_all(vec![record], self.ack_timeout).await {
                Ok(_) => Ok(()),
                Err(e) => Err(SinkError::Unavailable {
                    retry_after: self.retry_after,
                    reason: ErrorChain(&e).to_string(),
                }),
            }
        })
    }
}

/// Everything the webhook handler needs.
#[derive(Clone)]
pub struct WebhookState {
    pub keys: Arc<TokenKeys>,
    pub sink: Arc<dyn WebhookSink>,
    /// The custom header configured on the workflow's webhook.
    pub header_name: HeaderName,
    /// Every accepted value of that header.
    pub secrets: Arc<[SecretString]>,
    /// Webhooks of other projects are refused.
    pub project_uid: Arc<str>,
    /// Largest body, its time to arrive, and the instance's budget (shared with callbacks).
    pub body: BodyLimits,
    /// `Retry-After` when the budget is full.
    pub retry_after: Duration,
    pub metrics: V3Metrics,
}

/// The webhook router, merged into the callback listener's.
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(state)
}

/// Why a webhook was refused; each knows its status and outcome label.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefusal {
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("webhook header secret missing or wrong")]
    Unauthorized,
    #[error("content type {0:?} is not application/json")]
    UnsupportedMediaType(String),
    #[error("body could not be read: {0}")]
    Unreadable(String),
    #[error("body not received whole within {}s", after.as_secs())]
    BodyTimeout { after: Duration },
    /// Not JSON (400) or not the documented payload (422).
    #[error(transparent)]
    Payload(V3WebhookError),
    #[error("temporarily unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
}

impl WebhookRefusal {
    /// Whether sending the same webhook again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, WebhookRefusal::Unavailable { .. })
    }

    fn status(&self) -> StatusCode {
        match self {
            WebhookRefusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookRefusal::Unauthorized => StatusCode::UNAUTHORIZED,
            WebhookRefusal::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebhookRefusal::Unreadable(_) | WebhookRefusal::Payload(V3WebhookError::Json(_)) => {
                StatusCode::BAD_REQUEST
            }
            WebhookRefusal::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            WebhookRefusal::Payload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            WebhookRefusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            WebhookRefusal::TooLarge { .. } => "too_large",
            WebhookRefusal::Unauthorized => "unauthorized",
            WebhookRefusal::Payload(V3WebhookError::OtherProject { .. }) => "other_project",
            WebhookRefusal::UnsupportedMediaType(_)
            | WebhookRefusal::Unreadable(_)
            | WebhookRefusal::BodyTimeout { .. }
            | WebhookRefusal::Payload(_) => "malformed",
            WebhookRefusal::Unavailable { .. } => "unavailable",
        }
    }
}

impl IntoResponse for WebhookRefusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.outcome(), "message": self.to_string()});
        let mut response = (self.status(), Json(body)).into_response();
        if let WebhookRefusal::Unavailable { retry_after, .. } = &self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// What became of a webhook that passed the checks.
enum Accepted {
    /// Durable on the callbacks topic.
    Queued,
    /// For a job the bridge did not launch: nothing written.
    UnknownJob,
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Body) -> Response {
    match handle(&state, &headers, body).await {
        Ok(Accepted::Queued) => {
            state
                .metrics
                .webhooks
                .with_label_values(&["accepted"])
                .inc();
            Json(serde_json::json!({"status": "accepted"})).into_response()
        }
        Ok(Accepted::UnknownJob) => {
            state
                .metrics
                .webhooks
                .with_label_values(&["unknown_job"])
                .inc();
            Json(serde_json::json!({"status": "ignored", "reason": "unknown_job"})).into_response()
        }
        Err(refusal) => {
            state
                .metrics
                .webhooks
                .with_label_values(&[refusal.outcome()])
                .inc();
            tracing::warn!(error = %refusal, "v3 webhook refused");
            refusal.into_response()
        }
    }
}

fn authorized(state: &WebhookState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(&state.header_name)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    // Every secret is compared, matched or not, so timing tells nothing about which.
    state.secrets.iter().fold(false, |ok, secret| {
        ok | bool::from(given.ct_eq(secret.expose_secret().as_bytes()))
    })
}

async fn handle(
    state: &WebhookState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, WebhookRefusal> {
    let limit = state.body.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(WebhookRefusal::TooLarge { limit });
    }
    // Authentication before reading the body: strangers cannot make us buffer.
    if !authorized(state, headers) {
        return Err(WebhookRefusal::Unauthorized);
    }
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let text = value.to_str().unwrap_or_default();
        let essence = text
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(WebhookRefusal::UnsupportedMediaType(text.to_owned()));
        }
    }
    // Held until the answer: the body's share of the budget, while its record is in flight.
    let (bytes, _budget_share) = read_limited(body, &state.body)
        .await
        .map_err(|e| body_refusal(e, state.retry_after))?
        .into_parts();
    let bytes = bytes.freeze();
    let payload = V3WebhookPayload::from_slice(&bytes).map_err(WebhookRefusal::Payload)?;
    payload
        .check_project(&state.project_uid)
        .map_err(WebhookRefusal::Payload)?;
    let claims = match payload.job_name.as_deref().and_then(job_name::token_of) {
        None => {
            tracing::info!(job_uid = %payload.job_uid, workflow_uid = %payload.workflow_uid,
                "v3 webhook for a job the bridge did not launch (no routing token); ignored");
            return Ok(Accepted::UnknownJob);
        }
        Some(token) => match state.keys.verify(token) {
            Ok(claims) => claims,
            Err(e) => {
                tracing::warn!(job_uid = %payload.job_uid, kind = e.kind(),
                    "v3 webhook whose routing token is refused; ignored");
                return Ok(Accepted::UnknownJob);
            }
        },
    };
    tracing::debug!(request_id = %claims.request_id, chunk = claims.chunk,
        job_uid = %payload.job_uid, kind = ?payload.kind(), "v3 webhook accepted");
    state
        .sink
        .accept(claims, bytes)
        .await
        .map(|()| Accepted::Queued)
        .map_err(|e| match e {
            SinkError::Unavailable {
                retry_after,
                reason,
            } => WebhookRefusal::Unavailable {
                retry_after,
                reason,
            },
            SinkError::Rejected { reason } => WebhookRefusal::Unreadable(reason),
        })
}

fn body_refusal(e: BodyError, retry_after: Duration) -> WebhookRefusal {
    match e {
        BodyError::Unreadable(reason) => WebhookRefusal::Unreadable(reason),
        BodyError::TooLarge { limit } => WebhookRefusal::TooLarge { limit },
        BodyError::TimedOut { after } => WebhookRefusal::BodyTimeout { after },
        BodyError::OverBudget { budget } => WebhookRefusal::Unavailable {
            retry_after,
            reason: format!("bodies in memory would pass callbacks.max_buffered_bytes ({budget})"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::http::Request;
    use secrecy::SecretSlice;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[derive(Default)]
    struct Recorded {
        calls: Mutex<Vec<(CallbackClaims, Bytes)>>,
        unavailable: bool,
    }

    impl WebhookSink for Recorded {
        fn accept(
            &self,
            claims: CallbackClaims,
            body: Bytes,
        ) -> BoxFuture<'_, Result<(), SinkError>> {
            Box::pin(async move {
                if self.unavailable {
                    return Err(SinkError::Unavailable {
                        retry_after: Duration::from_millis(1500),
                        reason: "broker down".into(),
                    });
                }
                self.calls.lock().unwrap().push((claims, body));
                Ok(())
            })
        }
    }

    fn keys() -> Arc<TokenKeys> {
        Arc::new(
            TokenKeys::new(
                vec![(
                    "k1".into(),
                    SecretSlice::from(b"0123456789abcdef0123".to_vec()),
                )],
                "k1",
            )
            .unwrap(),
        )
    }

    fn state(sink: Arc<Recorded>) -> WebhookState {
        WebhookState {
            keys: keys(),
            sink,
            header_name: HeaderName::from_static("x-hook-secret"),
            secrets: vec![
                SecretString::from("new-secret-0123456789"),
                SecretString::from("old-secret-0123456789"),
            ]
            .into(),
            project_uid: "proj-1".into(),
            body: BodyLimits {
                max_bytes: 2048,
                timeout: Duration::from_secs(30),
                budget: crate::callbacks::body::BodyBudget::new(1 << 20),
            },
            retry_after: Duration::from_secs(5),
            metrics: V3Metrics::new(&Metrics::new().unwrap()).unwrap(),
        }
    }

    fn payload(job_name: &str) -> Value {
        json!({"uid": "hook-1", "job_uid": "job-1", "message": "Job successfully finished.",
            "project_uid": "proj-1", "error": null, "recipe_ref": "job-1",
            "workflow_uid": "wf-1", "workflow_name": "W", "job_name": job_name})
    }

    fn routed_name() -> String {
        let token = keys().sign(&CallbackClaims {
            request_id: "req-7".into(),
            chunk: 2,
            expires_at: None,
        });
        job_name::compose(Some("Nightly"), &token, 255).unwrap()
    }

    async fn post(state: WebhookState, secret: Option<&str>, body: String) -> (u16, Value) {
        let mut request = Request::post(WEBHOOK_PATH).header("content-type", "application/json");
        if let Some(secret) = secret {
            request = request.header("x-hook-secret", secret);
        }
        let response = webhook_router(state)
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_routed_webhook_with_either_secret_is_queued_for_its_request_as_it_arrived() {
        for secret in ["new-secret-0123456789", "old-secret-0123456789"] {
            let sink = Arc::new(Recorded::default());
            let body = payload(&routed_name()).to_string();
            let (status, answer) = post(state(sink.clone()), Some(secret), body.clone()).await;
            assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
            let calls = sink.calls.lock().unwrap();
            assert_eq!(calls[0].0.request_id, "req-7");
            assert_eq!(calls[0].0.chunk, 2);
            assert_eq!(calls[0].1, body.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_missing_or_wrong_secret_is_401_and_nothing_is_queued() {
        for secret in [None, Some("new-secret-012345678"), Some("")] {
            let sink = Arc::new(Recorded::default());
            let (status, answer) = post(
                state(sink.clone()),
                secret,
                payload(&routed_name()).to_string(),
            )
            .await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (401, Some("unauthorized"))
            );
            assert!(sink.calls.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn bad_input_gets_a_precise_4xx() {
        let secret = Some("new-secret-0123456789");
        let mut no_job = payload(&routed_name());
        no_job.as_object_mut().unwrap().remove("job_uid");
        let mut other = payload(&routed_name());
        other["project_uid"] = json!("proj-2");
        let cases = [
            ("{not json".to_owned(), 400, "body is not valid json"),
            (no_job.to_string(), 422, "job_uid"),
            (other.to_string(), 422, "project_uid"),
            ("x".repeat(3000), 413, "2048"),
        ];
        for (body, code, says) in cases {
            let sink = Arc::new(Recorded::default());
            let (status, answer) = post(state(sink.clone()), secret, body).await;
            assert_eq!(status, code, "{answer}");
            assert!(
                answer["message"].as_str().unwrap().contains(says),
                "{answer}"
            );
            assert!(sink.calls.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_job_the_bridge_did_not_launch_is_answered_and_not_queued() {
        for name in [
            "Automated Run".to_owned(),
            "x [cb:v1.k1.forged.mac]".to_owned(),
        ] {
            let sink = Arc::new(Recorded::default());
            let s = state(sink.clone());
            let metrics = s.metrics.clone();
            let (status, answer) =
                post(s, Some("old-secret-0123456789"), payload(&name).to_string()).await;
            assert_eq!(
                (status, answer["reason"].as_str()),
                (200, Some("unknown_job"))
            );
            assert!(sink.calls.lock().unwrap().is_empty());
            assert_eq!(
                metrics.webhooks.with_label_values(&["unknown_job"]).get(),
                1
            );
        }
    }

    #[tokio::test]
    async fn kafka_unavailable_is_503_with_retry_after() {
        let sink = Arc::new(Recorded {
            unavailable: true,
            ..Recorded::default()
        });
        let request = Request::post(WEBHOOK_PATH)
            .header("x-hook-secret", "new-secret-0123456789")
            .body(Body::from(payload(&routed_name()).to_string()))
            .unwrap();
        let response = webhook_router(state(sink)).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
