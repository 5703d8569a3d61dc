//! The HTTP surface: the `/v4` router (spec paths), the gate every `/v4` request passes
//! (request stats, injected latency, `X-API-Key` auth, rate limits, injected 5xx), the
//! `/_sim` control routes, and helpers shared by handlers (JSON bodies, repeated-key query
//! strings, list sorting and paging).

mod actions;
mod callbacks;
mod control;
mod live;
mod runs;
mod schedules;
mod sim_runs;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ratelimit::{too_many_requests, Bucket};
use crate::state::{Caller, SimState};

/// Builds the whole router (no socket; tests may call it directly).
pub fn router(state: Arc<SimState>) -> Router {
    let v4 = Router::new()
        .route("/v4/actions/{action}/run/live", post(live::live))
        .route("/v4/actions/{action}/run/async", post(actions::run_async))
        .route("/v4/actions/{action}/run/schedule", post(actions::schedule))
        .route("/v4/runs", get(runs::list))
        .route("/v4/runs/{run_uid}", get(runs::get_one))
        .route("/v4/runs/{run_uid}/resume", post(runs::resume))
        .route("/v4/runs/callbacks", get(callbacks::list))
        .route("/v4/runs/callbacks/{callback_uid}", get(callbacks::get_one))
        .route(
            "/v4/runs/callbacks/{callback_uid}/replay",
            post(callbacks::replay),
        )
        .route("/v4/schedules", get(schedules::list))
        .route("/v4/schedules/{scheduled_run_uid}", get(schedules::get_one))
        .route(
            "/v4/schedules/{scheduled_run_uid}/{action}",
            post(schedules::manage),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), gate))
        // axum's default (2 MB) is no limit of the API's: a 100,000-input body is larger.
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes));
    let control = Router::new()
        .route("/_sim/stats", get(control::stats))
        .route(
            "/_sim/config",
            get(control::get_config).put(control::put_config),
        )
        .route("/_sim/reset-stats", post(control::reset_stats))
        .route("/_sim/runs/{run_uid}/finish", post(sim_runs::finish))
        .route("/_sim/runs/{run_uid}/deliveries", get(sim_runs::deliveries));
    v4.merge(control).fallback(fallback).with_state(state)
}

async fn fallback(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "ROUTE_404_NOT_FOUND",
        format!("no route for {method} {}", uri.path()),
    )
}

/// Everything a `/v4` request passes before its handler.
async fn gate(
    State(state): State<Arc<SimState>>,
    mut request: Request<Body>,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let runtime = state.runtime();
    if let Some(delay) = state.faults.latency(&runtime.faults) {
        tokio::time::sleep(delay).await;
    }
    let limit = state.config.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = match authenticate(&state, &request) {
        Err(error) => error.into_response(),
        // A declared size over the limit gets the API's error shape (a chunked body over it
        // meets axum's limit instead: 413 too, in plain text).
        Ok(_) if declared.is_some_and(|n| n > limit as u64) => {
            ApiError::payload_too_large(limit).into_response()
        }
        Ok(caller) => {
            let bucket = bucket_of(&route);
            match state
                .limiter
                .check(&caller.key, bucket, &runtime.rate_limits)
            {
                Err(wait) => {
                    crate::stats::bump(&state.stats.rate_limited);
                    too_many_requests(bucket, wait, runtime.rate_limits.retry_after_format)
                        .into_response()
                }
                Ok(()) => {
                    let injected = if route.starts_with("/v4/actions/") {
                        state.faults.server_error(&runtime.faults)
                    } else {
                        None
                    };
                    match injected {
                        Some(error) => {
                            crate::stats::bump(&state.stats.injected_errors);
                            error.into_response()
                        }
                        None => {
                            request.extensions_mut().insert(caller);
                            next.run(request).await
                        }
                    }
                }
            }
        }
    };
    state
        .stats
        .record_request(method.as_str(), &route, response.status().as_u16());
    response
}

fn authenticate(state: &SimState, request: &Request<Body>) -> Result<Caller, ApiError> {
    let key = request
        .headers()
        .get("x-api-key")
        .ok_or_else(|| ApiError::unauthorized("missing X-API-Key header"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid X-API-Key header"))?;
    let owner = state
        .keys
        .get(key)
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    Ok(Caller {
        key: Arc::from(key),
        owner: *owner,
    })
}

fn bucket_of(route: &str) -> Bucket {
    if route.ends_with("/run/live") {
        Bucket::Live
    } else if route.ends_with("/run/async") {
        Bucket::Async
    } else if route.ends_with("/run/schedule") {
        Bucket::Schedule
    } else {
        Bucket::Api
    }
}

/// Parses a JSON body; an empty body counts as `{}` (management calls).
pub(crate) fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_input(format!("body: invalid JSON: {e}")))
}

/// A management body must be `{}` (`additionalProperties: false`).
pub(crate) fn empty_object_body(bytes: &[u8]) -> Result<(), ApiError> {
    match json_body(bytes)? {
        Value::Object(map) if map.is_empty() => Ok(()),
        Value::Object(map) => Err(ApiError::invalid_param(format!(
            "body: additional properties are not allowed ({} unexpected)",
            map.keys()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Err(ApiError::invalid_param("body: must be a JSON object")),
    }
}

/// A path uuid.
pub(crate) fn parse_uid(text: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::invalid_param(format!("{name}: {text:?} is not a valid UUID"))
            .param("field", name)
    })
}

/// A query string with repeated keys: `a=1&a=2`, `a[]=1`, and comma lists `a=1,2` all give
/// `a -> [1, 2]`.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let key = k.trim_end_matches("[]").to_owned();
            let values = map.entry(key).or_default();
            values.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        Self(map)
    }

    pub(crate) fn list(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Values of an enum filter, each checked.
    pub(crate) fn enum_list(&self, key: &str, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
        let values = self.list(key);
        if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
            return Err(ApiError::invalid_param(format!(
                "{key}: {bad:?} is not one of {}",
                allowed.join(", ")
            ))
            .param("field", key));
        }
        Ok(values.to_vec())
    }

    /// Values of a uuid filter, each checked.
    pub(crate) fn uuid_list(&self, key: &str) -> Result<Vec<Uuid>, ApiError> {
        self.list(key).iter().map(|v| parse_uid(v, key)).collect()
    }

    /// An integer within bounds, or its default.
    pub(crate) fn int(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        let Some(raw) = self.list(key).last() else {
            return Ok(default);
        };
        raw.parse::<u64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                ApiError::invalid_param(format!(
                    "{key}: must be an integer between {min} and {max}, got {raw:?}"
                ))
                .param("field", key)
            })
    }

    /// `sort` keys (max 10), or the default.
    pub(crate) fn sort(&self, default: &str) -> Result<Vec<String>, ApiError> {
        let keys = self.list("sort");
        if keys.len() > 10 || keys.iter().any(|k| k.len() > 128) {
            return Err(ApiError::invalid_param(
                "sort: at most 10 keys of 128 characters",
            ));
        }
        Ok(if keys.is_empty() {
            vec![default.to_owned()]
        } else {
            keys.to_vec()
        })
    }
}

/// Sorts wire views by `sort` keys (`-` prefix = descending; creation order breaks ties in
/// the direction of the first key) and applies offset/limit.
pub(crate) fn sort_and_page(
    mut items: Vec<(u64, Value)>,
    sort: &[String],
    offset: u64,
    limit: u64,
) -> Vec<Value> {
    let keys: Vec<(&str, bool)> = sort
        .iter()
        .map(|k| match k.strip_prefix('-') {
            Some(field) => (field, true),
            None => (k.strip_prefix('+').unwrap_or(k), false),
        })
        .collect();
    let tie_desc = keys.first().is_some_and(|(_, desc)| *desc);
    items.sort_by(|(sa, a), (sb, b)| {
        for (field, desc) in &keys {
            let ord = compare_json(a.get(*field), b.get(*field));
            let ord = if *desc { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        if tie_desc {
            sb.cmp(sa)
        } else {
            sa.cmp(sb)
        }
    });
    items
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|(_, v)| v)
        .collect()
}

fn compare_json(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

/// A JSON 200 answer.
pub(crate) fn ok_json(value: impl serde::Serialize) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}
