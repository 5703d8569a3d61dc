//! `POST /v4/actions/{action}/run/{async|schedule}` for every action of the spec: body
//! validation against the operation's schema (shared with `live`), then a started run or a
//! schedule.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{json_body, ok_json};
use crate::error::ApiError;
use crate::lifecycle::start_run;
use crate::schedules::{self, parse_cron, parse_schedule_at, parse_timezone, NewSchedule};
use crate::spec::{ActionSpec, Mode};
use crate::state::{Caller, SimState};
use crate::store::{CallbackTarget, RunRequest};

/// The spec's `ActionAsyncResponse`.
#[derive(Debug, Serialize)]
struct AsyncAccepted {
    run_id: u64,
    run_uid: Uuid,
    workspace_uid: Uuid,
    user_uid: Uuid,
    action_name: String,
    status: &'static str,
    postponed_until: Option<String>,
    created_at: String,
    synced_at: Option<String>,
    updated_at: Option<String>,
}

pub(super) fn find_action(state: &SimState, name: &str) -> Result<Arc<ActionSpec>, ApiError> {
    state.spec.action(name).cloned().ok_or_else(|| {
        ApiError::not_found("ACTION_404_NOT_FOUND", format!("action {name:?} not found"))
            .param("action", name)
    })
}

/// Validates a body against the operation's request schema; the error names the failing path.
pub(super) fn validate(
    state: &SimState,
    action: &ActionSpec,
    mode: Mode,
    body: &Value,
) -> Result<(), ApiError> {
    let validator = state
        .spec
        .body_validator(action, mode)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut errors = validator.iter_errors(body).peekable();
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let path = first.instance_path().to_string();
    let first_message = first.to_string();
    let mut messages = vec![describe(&path, &first_message)];
    messages.extend(
        errors
            .take(4)
            .map(|e| describe(&e.instance_path().to_string(), &e.to_string())),
    );
    let about_inputs = path.starts_with("/input")
        || (path.is_empty()
            && (first_message.contains("\"input") || first_message.contains("'input")));
    let error = if about_inputs {
        ApiError::invalid_input(messages.join("; "))
    } else {
        ApiError::invalid_param(messages.join("; "))
    };
    Err(error.param("path", if path.is_empty() { "/" } else { &path }))
}

fn describe(path: &str, message: &str) -> String {
    if path.is_empty() {
        format!("body: {message}")
    } else {
        format!("{path}: {message}")
    }
}

/// Reads `callback` (url may be null: the run then sends no callbacks).
fn callback_target(body: &Value) -> Result<Option<CallbackTarget>, ApiError> {
    let Some(callback) = body.get("callback") else {
        return Ok(None);
    };
    let Some(url) = callback.get("url").and_then(Value::as_str) else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    if let Some(map) = callback.get("headers").and_then(Value::as_object) {
        for (name, value) in map {
            let value = value.as_str().unwrap_or_default();
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value).is_err()
            {
                return Err(ApiError::invalid_param(format!(
                    "/callback/headers/{name}: not a valid HTTP header"
                ))
                .param("path", format!("/callback/headers/{name}")));
            }
            headers.push((name.clone(), value.to_owned()));
        }
    }
    Ok(Some(CallbackTarget {
        url: url.to_owned(),
        headers,
    }))
}

fn run_request(action: Arc<ActionSpec>, body: &Value) -> Result<RunRequest, ApiError> {
    Ok(RunRequest {
        action,
        inputs: body
            .get("inputs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        parameters: body
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default())),
        callback: callback_target(body)?,
    })
}

pub(super) async fn run_async(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let action = find_action(&state, &action)?;
    let body = json_body(&body)?;
    validate(&state, &action, Mode::Async, &body)?;
    let request = run_request(action.clone(), &body)?;
    let run = start_run(&state, caller.owner, Arc::new(request));
    Ok(ok_json(AsyncAccepted {
        run_id: run.id,
        run_uid: run.uid,
        workspace_uid: caller.owner.workspace_uid,
        user_uid: caller.owner.user_uid,
        action_name: action.name.clone(),
        status: "pending",
        postponed_until: None,
        created_at: crate::clock::format_ts(run.created_at),
        synced_at: None,
        updated_at: None,
    }))
}

pub(super) async fn schedule(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let action = find_action(&state, &action)?;
    let body = json_body(&body)?;
    if body.is_object() && body.get("cron").is_none() && body.get("schedule_at").is_none() {
        return Err(ApiError::invalid_param(
            "body: either cron or schedule_at is required (neither was given)",
        )
        .param("path", "/cron"));
    }
    validate(&state, &action, Mode::Schedule, &body)?;
    let cron = match body.get("cron").and_then(Value::as_str) {
        Some(text) => Some((text.to_owned(), parse_cron(text)?)),
        None => None,
    };
    let timezone_text = body.get("timezone").and_then(Value::as_str);
    let timezone = match timezone_text {
        Some(text) => parse_timezone(text)?,
        None => chrono_tz::UTC,
    };
    let schedule_at = match body.get("schedule_at").and_then(Value::as_str) {
        Some(text) => Some(parse_schedule_at(text)?),
        None => None,
    };
    let request = run_request(action, &body)?;
    let schedule = schedules::create(
        &state,
        caller.owner,
        Arc::new(request),
        NewSchedule {
            cron,
            timezone,
            timezone_given: timezone_text.is_some(),
            schedule_at,
        },
    )?;
    let view = schedule.created_view();
    state.store.schedules().insert(schedule.uid, schedule);
    state.schedule_wake.notify_one();
    Ok(ok_json(view))
}
