//! `POST /callbacks/{token}`: checks a callback in order of cost (declared size, token, header
//! secret, content type, size while reading, JSON, shape, result count), hands its bytes to
//! the [`CallbackSink`], and answers 200 only once the sink has it (Kafka acknowledged it).

use super::body::{read_limited, BodyError, BodyLimits};
use super::error::CallbackError;
use crate::intake::CallbackPayload;
use crate::metrics::Metrics;
use crate::token::{CallbackClaims, TokenKeys};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tracing::field::Empty;
use tracing::Instrument;

/// What the sink did with an accepted callback: it is durable; its results are published by
/// the request's owner (once, even if the callback is delivered again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkAck {
    /// Result items the callback carried.
    pub results: usize,
}

/// Why the sink did not take a callback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Kafka could not take the records in time: answered 503 with `Retry-After`.
    #[error("sink unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
    /// A shape problem found past payload validation: answered 422. Callbacks for requests the
    /// bridge has no record of are not this: the sink accepts them (nothing may be lost).
    #[error("sink rejected the callback: {reason}")]
    Rejected { reason: String },
}

impl SinkError {
    /// Whether delivering the callback again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }
}

/// Where verified callbacks go (the durable intake). What follows must be idempotent per
/// (`run_uid`, `batch_uid`): the platform and the reconciler may deliver a batch again.
pub trait CallbackSink: Send + Sync + 'static {
    /// Makes the callback durable; resolves once Kafka has acknowledged it. `body` was
    /// validated as a callback holding `results` result items.
    fn accept(
        &self,
        claims: CallbackClaims,
        body: bytes::Bytes,
        results: usize,
    ) -> BoxFuture<'_, Result<SinkAck, SinkError>>;
}

/// Everything the callback handler needs.
#[derive(Clone)]
pub struct CallbackState {
    pub keys: Arc<TokenKeys>,
    pub sink: Arc<dyn CallbackSink>,
    /// Largest accepted body (checked before buffering), its time to arrive, and the
    /// instance's budget of body bytes in memory.
    pub body: BodyLimits,
    /// `Retry-After` when the budget is full.
    pub retry_after: Duration,
    /// Most result items one callback may carry (each becomes a record).
    pub max_results: usize,
    /// Optional second check: this header (set through `callback.headers`) must hold the secret.
    pub header_secret: Option<(HeaderName, SecretString)>,
    pub metrics: Metrics,
}

/// The callback router, built apart from serving so that tests can call it without a socket.
pub fn callback_router(state: CallbackState) -> Router {
    Router::new()
        .route("/callbacks/{token}", post(receive))
        .with_state(state)
}

async fn receive(
    State(state): State<CallbackState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let span = tracing::info_span!(
        "callback",
        request_id = Empty,
        chunk = Empty,
        run_uid = Empty,
        batch_uid = Empty
    );
    let outcome = handle(&state, &token, &headers, body)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match outcome {
        Ok(ack) => {
            state
                .metrics
                .callback_ack_duration
                .observe(arrived.elapsed().as_secs_f64());
            state
                .metrics
                .callbacks
                .with_label_values(&["accepted"])
                .inc();
            tracing::debug!(results = ack.results, "callback accepted");
            Json(serde_json::json!({
                "status": "accepted",
                "results": ack.results,
            }))
            .into_response()
        }
        Err(err) => {
            state
                .metrics
                .callbacks
                .with_label_values(&[err.outcome()])
                .inc();
            match &err {
                CallbackError::BadToken(e) => {
                    tracing::warn!(kind = e.kind(), error = %e, "callback token refused");
                }
                CallbackError::Unavailable { .. } => {
                    tracing::warn!(error = %err, "callback deferred")
                }
                _ => tracing::warn!(error = %err, "callback refused"),
            }
            err.into_response()
        }
    }
}

async fn handle(
    state: &CallbackState,
    token: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<SinkAck, CallbackError> {
    let limit = state.body.max_bytes;
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(CallbackError::TooLarge { limit });
    }
    // Authentication comes before reading the body, so strangers cannot make us buffer.
    let claims = state.keys.verify(token).map_err(CallbackError::BadToken)?;
    let span = tracing::Span::current();
    span.record("request_id", claims.request_id.as_str());
    span.record("chunk", claims.chunk);
    if let Some((name, secret)) = &state.header_secret {
        let given = headers.get(name).map(|v| v.as_bytes()).unwrap_or_default();
        if !bool::from(given.ct_eq(secret.expose_secret().as_bytes())) {
            return Err(CallbackError::BadHeaderSecret);
        }
    }
    check_content_type(headers)?;
    // Held until the answer: the body's share of the budget, while its record is in flight.
    let (bytes, _budget_share) = read_limited(body, &state.body)
        .await
        .map_err(|e| body_refusal(e, state.retry_after))?
        .into_parts();
    let bytes = bytes.freeze();
    let results = {
        let payload = CallbackPayload::parse(&bytes)?;
        span.record("run_uid", payload.run.run_uid);
        span.record("batch_uid", payload.run.batch_uid);
        if payload.results.len() > state.max_results {
            return Err(CallbackError::TooManyResults {
                count: payload.results.len(),
                limit: state.max_results,
            });
        }
        payload.results.len()
    };
    state
        .sink
        .accept(claims, bytes, results)
        .await
        .map_err(|e| match e {
            SinkError::Unavailable {
                retry_after,
                reason,
            } => CallbackError::Unavailable {
                retry_after,
                reason,
            },
            SinkError::Rejected { reason } => CallbackError::Rejected { reason },
        })
}

/// JSON (`application/json`, `*/*+json`) or no declared type (the body decides); else 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), CallbackError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(CallbackError::UnsupportedMediaType(text.to_owned()))
    }
}

fn body_refusal(e: BodyError, retry_after: Duration) -> CallbackError {
    match e {
        BodyError::Unreadable(reason) => CallbackError::Unreadable(reason),
        BodyError::TooLarge { limit } => CallbackError::TooLarge { limit },
        BodyError::TimedOut { after } => CallbackError::BodyTimeout { after },
        BodyError::OverBudget { budget } => CallbackError::Unavailable {
            retry_after,
            reason: format!(
                "callback bodies in memory would pass callbacks.max_buffered_bytes ({budget})"
            ),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::callbacks::body::BodyBudget;
    use axum::http::{Request, StatusCode};
    use futures::StreamExt;
    use secrecy::SecretSlice;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use tower::ServiceExt;

    const LIMIT: usize = 4096;

    /// Records what it was given and answers as told.
    #[derive(Default)]
    struct FakeSink {
        calls: Mutex<Vec<(CallbackClaims, bytes::Bytes, usize)>>,
        fail_with: Mutex<Option<SinkError>>,
    }

    impl CallbackSink for FakeSink {
        fn accept(
            &self,
            claims: CallbackClaims,
            body: bytes::Bytes,
            results: usize,
        ) -> BoxFuture<'_, Result<SinkAck, SinkError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push((claims, body, results));
                match self.fail_with.lock().unwrap().clone() {
                    Some(e) => Err(e),
                    None => Ok(SinkAck { results }),
                }
            })
        }
    }

    struct Fixture {
        router: Router,
        sink: Arc<FakeSink>,
        keys: Arc<TokenKeys>,
        metrics: Metrics,
    }

    fn fixture(header_secret: Option<&str>) -> Fixture {
        fixture_with_budget(header_secret, BodyBudget::new(1 << 20))
    }

    fn fixture_with_budget(header_secret: Option<&str>, budget: BodyBudget) -> Fixture {
        let keys = Arc::new(
            TokenKeys::new(vec![("k1".into(), SecretSlice::from(vec![7u8; 32]))], "k1").unwrap(),
        );
        let sink = Arc::new(FakeSink::default());
        let metrics = Metrics::new().unwrap();
        let router = callback_router(CallbackState {
            keys: keys.clone(),
            sink: sink.clone(),
            body: BodyLimits {
                max_bytes: LIMIT,
                timeout: Duration::from_secs(30),
                budget,
            },
            retry_after: Duration::from_secs(5),
            max_results: 3,
            header_secret: header_secret
                .map(|s| (HeaderName::from_static("x-bridge-secret"), s.into())),
            metrics: metrics.clone(),
        });
        Fixture {
            router,
            sink,
            keys,
            metrics,
        }
    }

    impl Fixture {
        fn token(&self) -> String {
            self.keys.sign(&CallbackClaims {
                request_id: "req-1".into(),
                chunk: 0,
                expires_at: None,
            })
        }

        fn calls(&self) -> usize {
            self.sink.calls.lock().unwrap().len()
        }

        fn outcome(&self, outcome: &str) -> u64 {
            self.metrics.callbacks.with_label_values(&[outcome]).get()
        }

        async fn post(
            &self,
            token: &str,
            body: Body,
            extra: &[(&str, &str)],
        ) -> (StatusCode, HeaderMap, Value) {
            let mut req = Request::post(format!("/callbacks/{token}"))
                .header("content-type", "application/json");
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            let response = self
                .router
                .clone()
                .oneshot(req.body(body).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                headers,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }

        async fn post_json(&self, value: Value) -> (StatusCode, HeaderMap, Value) {
            self.post(&self.token(), Body::from(value.to_string()), &[])
                .await
        }
    }

    fn callback() -> Value {
        json!({
            "run": {"run_uid": "r1", "batch_uid": "b1", "status": "RUNNING"},
            "input": {"linkedin_profile_url": "https://x"},
            "custom_data": {"crm_id": "42"},
            "error": null,
            "results": [{"full_name": "Ada"}, {"full_name": "Grace"}]
        })
    }

    #[tokio::test]
    async fn a_valid_callback_is_handed_to_the_sink_and_answered_200() {
        let f = fixture(None);

        let (status, _, body) = f.post_json(callback()).await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "accepted");
        assert_eq!(body["results"], 2);
        let calls = f.sink.calls.lock().unwrap();
        let (claims, bytes, results) = &calls[0];
        assert_eq!(claims.request_id, "req-1");
        assert_eq!(*results, 2);
        assert_eq!(
            serde_json::from_slice::<Value>(bytes).unwrap(),
            callback(),
            "the body is handed on as it arrived"
        );
        drop(calls);
        assert_eq!(f.outcome("accepted"), 1);
        assert_eq!(f.metrics.callback_ack_duration.get_sample_count(), 1);
    }

    #[tokio::test]
    async fn a_callback_past_the_instances_body_budget_is_deferred_with_retry_after() {
        // A budget smaller than the callback: as if other bodies held the rest.
        let budget = BodyBudget::new(64);
        let f = fixture_with_budget(None, budget.clone());

        let (status, headers, body) = f.post_json(callback()).await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "unavailable");
        assert_eq!(headers[header::RETRY_AFTER], "5");
        assert_eq!(f.calls(), 0);
        assert_eq!(f.outcome("unavailable"), 1);
        assert_eq!(
            budget.available(),
            64,
            "the refused body gave its share back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_answered_408_after_the_body_timeout() {
        let budget = BodyBudget::new(1 << 20);
        let f = fixture_with_budget(None, budget.clone());
        let first_half = bytes::Bytes::from(callback().to_string()[..20].to_owned());
        let stalled = futures::stream::iter([Ok::<_, std::io::Error>(first_half)])
            .chain(futures::stream::pending());

        let (status, _, body) = f.post(&f.token(), Body::from_stream(stalled), &[]).await;

        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"], "body_timeout");
        assert_eq!(f.calls(), 0);
        assert_eq!(f.outcome("malformed"), 1);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[tokio::test]
    async fn a_forged_token_is_unauthorized_and_never_reaches_the_sink() {
        let f = fixture(None);
        let other = TokenKeys::new(vec![("k1".into(), SecretSlice::from(vec![8u8; 32]))], "k1")
            .unwrap()
            .sign(&CallbackClaims {
                request_id: "req-1".into(),
                chunk: 0,
                expires_at: None,
            });

        let (status, _, body) = f
            .post(&other, Body::from(callback().to_string()), &[])
            .await;

        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(f.calls(), 0);
        assert_eq!(f.outcome("unauthorized"), 1);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let f = fixture(None);
        // The body is tiny: only the declared length can have triggered the refusal.
        let (status, _, body) = f
            .post(
                &f.token(),
                Body::from("{}"),
                &[("content-length", "1000000")],
            )
            .await;

        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "too_large");
        assert_eq!(f.calls(), 0);
        assert_eq!(f.outcome("too_large"), 1);
    }

    #[tokio::test]
    async fn a_chunked_body_growing_past_the_limit_is_refused() {
        let f = fixture(None);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..10)
            .map(|_| Ok(bytes::Bytes::from(vec![b' '; 1024])))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));

        let (status, _, _) = f.post(&f.token(), body, &[]).await;

        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(f.calls(), 0);
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_saying_why() {
        let f = fixture(None);

        let (status, _, body) = f.post(&f.token(), Body::from("{\"run\": "), &[]).await;

        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "malformed");
        assert!(body["message"].as_str().unwrap().contains("not valid json"));
        assert_eq!(f.outcome("malformed"), 1);
    }

    #[tokio::test]
    async fn a_missing_batch_uid_is_a_400_naming_the_field() {
        let f = fixture(None);
        let mut cb = callback();
        cb["run"].as_object_mut().unwrap().remove("batch_uid");

        let (status, _, body) = f.post_json(cb).await;

        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["message"], "run.batch_uid: is required");
        assert_eq!(f.calls(), 0);
    }

    #[tokio::test]
    async fn a_bridge_only_status_is_a_400() {
        let f = fixture(None);
        let mut cb = callback();
        cb["run"]["status"] = json!("SUBMIT_FAILED");

        let (status, _, body) = f.post_json(cb).await;

        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["message"].as_str().unwrap().starts_with("run.status:"));
    }

    #[tokio::test]
    async fn a_sink_that_cannot_take_it_makes_a_503_with_retry_after() {
        let f = fixture(None);
        *f.sink.fail_with.lock().unwrap() = Some(SinkError::Unavailable {
            retry_after: Duration::from_millis(2500),
            reason: "kafka timed out".into(),
        });

        let (status, headers, body) = f.post_json(callback()).await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "3");
        assert_eq!(body["error"], "unavailable");
        assert_eq!(f.outcome("unavailable"), 1);
    }

    #[tokio::test]
    async fn a_sink_rejection_is_a_422() {
        let f = fixture(None);
        *f.sink.fail_with.lock().unwrap() = Some(SinkError::Rejected {
            reason: "chunk out of range".into(),
        });

        let (status, _, body) = f.post_json(callback()).await;

        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"], "rejected");
    }

    #[tokio::test]
    async fn a_wrong_or_missing_header_secret_is_unauthorized() {
        let f = fixture(Some("open-sesame-0123"));
        let payload = || Body::from(callback().to_string());

        let (wrong, _, _) = f
            .post(
                &f.token(),
                payload(),
                &[("x-bridge-secret", "open-sesame-9999")],
            )
            .await;
        let (missing, _, _) = f.post(&f.token(), payload(), &[]).await;
        let (right, _, _) = f
            .post(
                &f.token(),
                payload(),
                &[("x-bridge-secret", "open-sesame-0123")],
            )
            .await;

        assert_eq!(wrong, StatusCode::UNAUTHORIZED);
        assert_eq!(missing, StatusCode::UNAUTHORIZED);
        assert_eq!(right, StatusCode::OK);
        assert_eq!(f.calls(), 1);
    }

    #[tokio::test]
    async fn more_result_items_than_the_limit_is_a_413_saying_how_many() {
        let f = fixture(None);
        let mut cb = callback();
        cb["results"] = json!([{}, {}, {}, {}]);

        let (status, _, body) = f.post_json(cb).await;

        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "too_many_results");
        assert_eq!(body["message"], "4 result items, above the limit of 3");
        assert_eq!(f.calls(), 0);
        assert_eq!(f.outcome("too_large"), 1);
    }

    #[tokio::test]
    async fn a_body_declared_as_another_type_is_a_415() {
        let f = fixture(None);
        let response = f
            .router
            .clone()
            .oneshot(
                Request::post(format!("/callbacks/{}", f.token()))
                    .header("content-type", "text/plain")
                    .body(Body::from(callback().to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(f.calls(), 0);
    }
}
