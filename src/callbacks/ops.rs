//! The operations endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (Kafka and the run-state view are up, as the app reports through [`Readiness`]).

use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether the instance is ready for traffic. Clones share the flag; starts not ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A handle that says "not ready" until [`Readiness::set_ready`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flips readiness (e.g. true once Kafka is up, false when shutdown begins).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
}

/// `GET /metrics`, `GET /healthz`, `GET /readyz`.
pub fn ops_router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(OpsState { metrics, readiness })
}

async fn metrics_text(State(state): State<OpsState>) -> impl IntoResponse {
    // Exported so that "no instance ready" can be alerted on from Prometheus alone.
    state
        .metrics
        .ready
        .set(i64::from(state.readiness.is_ready()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Ready or not, and what waits for the schema registry: callbacks are still taken then (they
/// need no registry), so it is said in the body rather than by a 503 that would turn them away.
async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let waiting: Vec<&str> = crate::metrics::REGISTRY_WAITING_PARTS
        .iter()
        .copied()
        .filter(|part| {
            state
                .metrics
                .schema_registry_waiting
                .with_label_values(&[part])
                .get()
                > 0
        })
        .collect();
    let note = if waiting.is_empty() {
        String::new()
    } else {
        format!("; waiting for the schema registry: {}", waiting.join(", "))
    };
    if state.readiness.is_ready() {
        (StatusCode::OK, format!("ready{note}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready{note}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_flag_while_healthz_stays_up() {
        let readiness = Readiness::new();
        let router = ops_router(Metrics::new().unwrap(), readiness.clone());

        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready(true);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);
        readiness.set_ready(false);
        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_stays_ready_and_names_what_waits_for_the_schema_registry() {
        let readiness = Readiness::new();
        readiness.set_ready(true);
        let metrics = Metrics::new().unwrap();
        let router = ops_router(metrics.clone(), readiness);
        assert_eq!(get(&router, "/readyz").await.2, "ready");
        metrics
            .schema_registry_waiting
            .with_label_values(&["outputs"])
            .set(1);
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "callbacks need no registry");
        assert_eq!(body, "ready; waiting for the schema registry: outputs");
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let metrics = Metrics::new().unwrap();
        metrics.callbacks.with_label_values(&["accepted"]).inc();
        let router = ops_router(metrics, Readiness::new());

        let (status, content_type, body) = get(&router, "/metrics").await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "text/plain; version=0.0.4");
        assert!(body.contains("captain_bridge_callbacks_total{outcome=\"accepted\"} 1"));
    }
}
