//! Every way a callback can be refused, each knowing its HTTP status, its `callbacks_total`
//! outcome and its JSON answer `{"error": "<code>", "message": "<reason>"}`.

use crate::intake::PayloadError;
use crate::token::TokenError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;

/// Why a callback was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The body is larger than the configured limit (413).
    #[error("body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// More result items than one callback may carry (413): each becomes a record.
    #[error("{count} result items, above the limit of {limit}")]
    TooManyResults { count: usize, limit: usize },
    /// The token in the URL was refused (401). The kind is logged, not answered.
    #[error("callback token refused")]
    BadToken(#[source] TokenError),
    /// The configured header secret is missing or wrong (401).
    #[error("callback header secret missing or wrong")]
    BadHeaderSecret,
    /// A content type other than JSON (415).
    #[error("content type {0:?} is not application/json")]
    UnsupportedMediaType(String),
    /// The body could not be read (400).
    #[error("body could not be read: {0}")]
    Unreadable(String),
    /// The body had not arrived whole within `callbacks.body_timeout` (408).
    #[error("body not received whole within {}s", after.as_secs())]
    BodyTimeout { after: Duration },
    /// The body is not JSON or not a valid callback (400).
    #[error(transparent)]
    Malformed(#[from] PayloadError),
    /// The sink refused a well-formed callback for good (422).
    #[error("callback rejected: {reason}")]
    Rejected { reason: String },
    /// The sink could not take the callback in time; the platform should retry (503).
    #[error("temporarily unavailable: {reason}")]
    Unavailable {
        retry_after: Duration,
        reason: String,
    },
}

impl CallbackError {
    /// Whether Captain Data (or the reconciler's replay) delivering it again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, CallbackError::Unavailable { .. })
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            CallbackError::TooLarge { .. } | CallbackError::TooManyResults { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            CallbackError::BadToken(_) | CallbackError::BadHeaderSecret => StatusCode::UNAUTHORIZED,
            CallbackError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CallbackError::Unreadable(_) | CallbackError::Malformed(_) => StatusCode::BAD_REQUEST,
            CallbackError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            CallbackError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CallbackError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` field of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            CallbackError::TooLarge { .. } => "too_large",
            CallbackError::TooManyResults { .. } => "too_many_results",
            CallbackError::BadToken(_) | CallbackError::BadHeaderSecret => "unauthorized",
            CallbackError::UnsupportedMediaType(_) => "unsupported_media_type",
            CallbackError::Unreadable(_) | CallbackError::Malformed(_) => "malformed",
            CallbackError::BodyTimeout { .. } => "body_timeout",
            CallbackError::Rejected { .. } => "rejected",
            CallbackError::Unavailable { .. } => "unavailable",
        }
    }

    /// The `outcome` label of `callbacks_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallbackError::TooLarge { .. } | CallbackError::TooManyResults { .. } => "too_large",
            CallbackError::BadToken(_) | CallbackError::BadHeaderSecret => "unauthorized",
            CallbackError::UnsupportedMediaType(_)
            | CallbackError::Unreadable(_)
            | CallbackError::BodyTimeout { .. }
            | CallbackError::Malformed(_)
            | CallbackError::Rejected { .. } => "malformed",
            CallbackError::Unavailable { .. } => "unavailable",
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        let mut response = (self.status(), Json(body)).into_response();
        if let CallbackError::Unavailable { retry_after, .. } = &self {
            // Whole seconds, rounded up, never 0 (which would invite an immediate retry storm).
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
