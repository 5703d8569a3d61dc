//! The API's error answer: the spec's `APIError` body (`components.schemas.def-0`) with the
//! HTTP status it mirrors, plus the extra headers a 429 carries.

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `error_scope` values of the spec.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErrorScope {
    Input,
    Integ,
    Param,
    Config,
}

/// An `APIError` answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub label: &'static str,
    pub scope: Option<ErrorScope>,
    pub message: String,
    pub params: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The wire body, exactly the spec's fields.
#[derive(Debug, Serialize)]
pub struct ApiErrorBody<'a> {
    pub error_label: &'a str,
    pub error_scope: Option<ErrorScope>,
    pub error_ref: String,
    pub message: &'a str,
    pub status_code: u16,
    pub params: &'a BTreeMap<String, String>,
}

impl ApiError {
    /// A bare error.
    pub fn new(status: StatusCode, label: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            label,
            scope: None,
            message: message.into(),
            params: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    /// 400 about the body or inputs.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", message).scope(ErrorScope::Input)
    }

    /// 400 about parameters (query, path, parameters object, schedule settings).
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", message).scope(ErrorScope::Param)
    }

    /// 404 for an unknown resource.
    pub fn not_found(label: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, label, message)
    }

    /// 401 for a missing or unknown key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 413 for a body above `limits.max_body_bytes`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the request body exceeds {limit} bytes"),
        )
        .scope(ErrorScope::Input)
    }

    /// 500 for a simulator bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
    }

    #[must_use]
    pub fn scope(mut self, scope: ErrorScope) -> Self {
        self.scope = Some(scope);
        self
    }

    #[must_use]
    pub fn param(mut self, key: &str, value: impl Into<String>) -> Self {
        self.params.insert(key.to_owned(), value.into());
        self
    }

    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The body as a JSON value (used in callbacks' `error`).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).unwrap_or(serde_json::Value::Null)
    }

    fn body(&self) -> ApiErrorBody<'_> {
        ApiErrorBody {
            error_label: self.label,
            error_scope: self.scope,
            error_ref: format!("ERR-{:08X}", rand::random::<u32>()),
            message: &self.message,
            status_code: self.status.as_u16(),
            params: &self.params,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
