//! `POST /v4/actions/{action}/run/live`: one input answered at once. List actions page through
//! `results.live_total` results by their fixed `page_size`, by `page` number or, on the 8 actions
//! that declare it, by the `token` cursor; the next page is announced in `X-Pagination-Next` (and
//! the previous one in `X-Pagination-Previous` where the spec declares it). An input hit by
//! `faults.live_failure_rate` answers the spec's 424.
//!
//! Where the real API returns the next `token` is undocumented. The only place the spec leaves
//! for it is the one header it declares for those actions: `X-Pagination-Next` is
//! `.../run/live?token=<cursor>`, so following the header and passing the token back are the
//! same thing. The cursor is opaque, bound to the action and input it was issued for.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use rand::Rng;
use serde_json::Value;

use super::actions::{find_action, validate};
use super::{json_body, ok_json, Query};
use crate::error::{ApiError, ErrorScope};
use crate::generate::{generate, rng_for};
use crate::lifecycle::{page_size, record_live_run};
use crate::spec::{ActionSpec, Mode};
use crate::state::{Caller, SimState};

pub(super) async fn live(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(action_name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let action = find_action(&state, &action_name)?;
    let body = json_body(&body)?;
    validate(&state, &action, Mode::Live, &body)?;
    let query = Query::parse(raw.as_deref());
    let runtime = state.runtime();
    let size = page_size(&action, &runtime.results);
    let page = if action.paginated {
        query.int("page", 1, 1, u64::from(u32::MAX))?
    } else {
        1
    };
    if let (Some(requested), Some(fixed)) = (query.list("page_size").last(), action.page_size) {
        if requested.parse::<u64>().ok() != Some(fixed) {
            return Err(ApiError::invalid_param(format!(
                "page_size: fixed to {fixed} for {action_name} (read-only)"
            ))
            .scope(ErrorScope::Param)
            .param("field", "page_size"));
        }
    }
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let input_hash = fnv(input.to_string().as_bytes());
    let seed = state.config.seed;
    // The token, when given, says where the last call ended; it wins over `page`.
    let start = match query.list("token").last() {
        Some(token) if action.cursor => read_cursor(seed, &action, input_hash, token)?,
        _ => (page - 1).saturating_mul(size),
    };
    let rate = runtime.faults.live_failure_rate;
    // Drawn per input, not per request: a failing input fails on every page and every retry.
    if rate > 0.0 && rng_for(seed, &[action.id, input_hash, 0x424]).random_bool(rate) {
        let error = ApiError::new(
            StatusCode::FAILED_DEPENDENCY,
            "NO_RESULT",
            format!("{action_name} failed or returned nothing for this input (simulated failure)"),
        )
        .scope(ErrorScope::Integ)
        .param("action", action_name.as_str());
        record_live_run(&state, caller.owner, action, Some(&error));
        return Err(error);
    }
    record_live_run(&state, caller.owner, action.clone(), None);
    if !action.output_is_array {
        let mut rng = rng_for(seed, &[action.id, input_hash]);
        return Ok(ok_json(generate(
            &state.spec,
            &action.output_schema,
            &mut rng,
        )));
    }
    let total = runtime.results.live_total;
    let end = start.saturating_add(size).min(total);
    let results: Vec<Value> = (start..end.max(start))
        .map(|i| {
            let mut rng = rng_for(seed, &[action.id, input_hash, i]);
            generate(&state.spec, &action.output_schema, &mut rng)
        })
        .collect();
    let mut response = ok_json(results);
    if action.paginated {
        let base = match &state.config.public_base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None => format!(
                "http://{}/v4",
                headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost")
            ),
        };
        let url = |query: String| format!("{base}/actions/{action_name}/run/live?{query}");
        let mut add = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), v);
            }
        };
        if end < total && action.next_header {
            let next = if action.cursor {
                format!("token={}", cursor(seed, &action, input_hash, end))
            } else {
                format!("page={}", page + 1)
            };
            add("x-pagination-next", url(next));
        }
        if page > 1 && action.previous_header {
            add("x-pagination-previous", url(format!("page={}", page - 1)));
        }
    }
    Ok(response.into_response())
}

/// The opaque cursor of the result at `offset`: the offset and a check bound to the seed,
/// action and input, so a token is only good for the search that issued it.
fn cursor(seed: u64, action: &ActionSpec, input_hash: u64, offset: u64) -> String {
    format!(
        "{offset:x}.{:016x}",
        cursor_check(seed, action, input_hash, offset)
    )
}

fn cursor_check(seed: u64, action: &ActionSpec, input_hash: u64, offset: u64) -> u64 {
    let mut bytes = Vec::with_capacity(32);
    for part in [seed, action.id, input_hash, offset] {
        bytes.extend_from_slice(&part.to_le_bytes());
    }
    fnv(&bytes)
}

fn read_cursor(
    seed: u64,
    action: &ActionSpec,
    input_hash: u64,
    token: &str,
) -> Result<u64, ApiError> {
    let offset = token
        .split_once('.')
        .and_then(|(offset, check)| {
            let offset = u64::from_str_radix(offset, 16).ok()?;
            let check = u64::from_str_radix(check, 16).ok()?;
            (check == cursor_check(seed, action, input_hash, offset)).then_some(offset)
        })
        .ok_or_else(|| {
            ApiError::invalid_param(format!(
                "token: {token:?} is not a cursor issued for this action and input"
            ))
            .param("field", "token")
        })?;
    Ok(offset)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
