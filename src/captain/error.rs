//! The client's errors and the one place that classifies an HTTP exchange: success, permanent
//! refusal, transient failure worth retrying, or rate limiting worth waiting for.

use super::retry::RateLimitAnswer;
use super::wire::ApiError;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::error::Error as StdError;
use std::time::SystemTime;

/// Longest piece of a non-JSON error body kept in an error message.
const MAX_BODY_EXCERPT: usize = 512;

/// Why a call to the Captain Data API did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The call was never sent: a bad action slug or identifier, or an unserializable body.
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    /// The API refused the request for good (4xx other than 408 and 429). The body is boxed to
    /// keep every `Result<_, SubmitError>` small.
    #[error("rejected by the api with {http_status}: {error}")]
    Rejected {
        http_status: u16,
        error: Box<ApiError>,
    },
    /// The API answered 2xx but the body could not be read or parsed. For a submission the run
    /// may exist anyway, so this is not retried (a retry could create a second run).
    #[error("invalid api response with {http_status}: {reason}")]
    InvalidResponse {
        http_status: u16,
        reason: String,
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },
    /// Transient failures (5xx, 408, timeouts, connection errors) outlasted the retry budget,
    /// or rate limiting outlasted the allowed wait.
    #[error("gave up after {attempts} attempts: {last_error}")]
    GaveUp {
        attempts: u32,
        last_error: String,
        #[source]
        source: Option<AttemptError>,
    },
}

impl SubmitError {
    /// Whether the same call may succeed later. Only [`SubmitError::GaveUp`] is: the API or the
    /// network was unhealthy, not the request.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SubmitError::GaveUp { .. })
    }

    /// The HTTP status the API answered, when it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            SubmitError::Rejected { http_status, .. }
            | SubmitError::InvalidResponse { http_status, .. } => Some(*http_status),
            SubmitError::GaveUp {
                source: Some(AttemptError::Status { http_status, .. }),
                ..
            } => Some(*http_status),
            SubmitError::GaveUp {
                source: Some(AttemptError::RateLimited { .. }),
                ..
            } => Some(429),
            _ => None,
        }
    }
}

/// One failed attempt that is worth repeating.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("no answer from the api")]
    Transport(#[source] reqwest::Error),
    /// A 5xx or 408 answer.
    #[error("api answered {http_status}: {message}")]
    Status { http_status: u16, message: String },
    /// A 429 answer.
    #[error("rate limited: {message}")]
    RateLimited { message: String },
}

impl AttemptError {
    /// Whether another attempt may succeed (always, by construction).
    pub fn is_retriable(&self) -> bool {
        true
    }
}

/// What one attempt amounted to; the retry loop acts on it.
#[derive(Debug)]
pub(crate) enum Verdict<T> {
    Success(T),
    Permanent(SubmitError),
    Transient(AttemptError),
    /// 429, with what the API said: how long to wait, which limit was hit.
    RateLimited {
        answer: RateLimitAnswer,
        error: AttemptError,
    },
}

/// Classifies a transport-level failure (no HTTP answer).
pub(crate) fn classify_transport<T>(err: reqwest::Error) -> Verdict<T> {
    if err.is_builder() {
        // The request itself could not be built (e.g. an invalid URL): retrying cannot help.
        return Verdict::Permanent(SubmitError::InvalidRequest {
            reason: error_chain(&err),
        });
    }
    Verdict::Transient(AttemptError::Transport(err))
}

/// Classifies an HTTP answer. `body` is the result of reading the body, which can fail on its own.
pub(crate) fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Bytes, reqwest::Error>,
    now: SystemTime,
) -> Verdict<Bytes> {
    let code = status.as_u16();
    if status.is_success() {
        return match body {
            Ok(bytes) => Verdict::Success(bytes),
            Err(e) => Verdict::Permanent(SubmitError::InvalidResponse {
                http_status: code,
                reason: "body could not be read".into(),
                source: Some(Box::new(e)),
            }),
        };
    }
    // A body that cannot be read does not change what the status says.
    let body = body.unwrap_or_default();
    match code {
        429 => Verdict::RateLimited {
            answer: RateLimitAnswer::from_headers(headers, now),
            error: AttemptError::RateLimited {
                message: api_error_from_body(code, &body).message,
            },
        },
        408 | 500..=599 => Verdict::Transient(AttemptError::Status {
            http_status: code,
            message: api_error_from_body(code, &body).message,
        }),
        // 1xx/3xx are not expected (redirects are followed by reqwest): treat like a refusal.
        _ => Verdict::Permanent(SubmitError::Rejected {
            http_status: code,
            error: Box::new(api_error_from_body(code, &body)),
        }),
    }
}

/// Parses an `APIError` body; a body that is not one becomes the message, truncated.
pub(crate) fn api_error_from_body(code: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) if !(e.message.is_empty() && e.error_label.is_none()) => e,
        _ => ApiError {
            message: excerpt(&String::from_utf8_lossy(body)),
            status_code: Some(code),
            ..ApiError::default()
        },
    }
}

/// The first [`MAX_BODY_EXCERPT`] characters of `text`, cut on a character boundary.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `err: source: source...`, for messages that must stand alone (e.g. `GaveUp::last_error`).
pub(crate) fn error_chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn classify(code: u16, body: &str) -> Verdict<Bytes> {
        classify_response(
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            Ok(Bytes::from(body.to_owned())),
            SystemTime::now(),
        )
    }

    #[test]
    fn client_errors_are_permanent_but_timeouts_and_server_errors_are_not() {
        assert!(matches!(classify(400, "{}"), Verdict::Permanent(_)));
        assert!(matches!(classify(404, ""), Verdict::Permanent(_)));
        assert!(matches!(classify(408, ""), Verdict::Transient(_)));
        assert!(matches!(classify(500, ""), Verdict::Transient(_)));
        assert!(matches!(classify(503, ""), Verdict::Transient(_)));
        assert!(matches!(classify(429, ""), Verdict::RateLimited { .. }));
        assert!(matches!(classify(200, "{}"), Verdict::Success(_)));
    }

    #[test]
    fn a_non_json_error_body_becomes_a_truncated_message() {
        let long = "x".repeat(2000);
        let Verdict::Permanent(SubmitError::Rejected { error, .. }) = classify(403, &long) else {
            panic!("expected a rejection");
        };
        assert_eq!(error.message.chars().count(), MAX_BODY_EXCERPT + 1);
        assert_eq!(error.status_code, Some(403));
    }

    #[test]
    fn only_gave_up_is_retriable() {
        let gave_up = SubmitError::GaveUp {
            attempts: 3,
            last_error: "x".into(),
            source: None,
        };
        assert!(gave_up.is_retriable());
        let rejected = SubmitError::Rejected {
            http_status: 400,
            error: Box::default(),
        };
        assert!(!rejected.is_retriable());
        assert_eq!(rejected.to_string(), "rejected by the api with 400: ");
    }
}
