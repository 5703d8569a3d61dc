//! The callback HTTP server embedded in the bridge (tokens are verified with [`crate::token`]):
//! the `POST /callbacks/{token}` router and its errors, the operations
//! endpoints, and [`serve`], which runs any of these routers until shutdown.

pub(crate) mod body;
mod error;
mod ops;
mod router;

pub use error::CallbackError;
pub use ops::{ops_router, Readiness};
pub use router::{callback_router, CallbackSink, CallbackState, SinkAck, SinkError};

use axum::Router;
use std::future::Future;

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish (callbacks mid-publish still get their answer).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn serve_answers_until_shutdown_then_returns() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = ops_router(Metrics::new().unwrap(), Readiness::new());
        let server = tokio::spawn(serve(listener, router, async {
            let _ = stopped.await;
        }));

        let health = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
