//! `GET /v4/runs/callbacks`, `GET /v4/runs/callbacks/{uid}`, `POST .../{uid}/replay`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;

use super::{empty_object_body, ok_json, parse_uid, sort_and_page, Query};
use crate::delivery::{self, callback_not_found};
use crate::error::ApiError;
use crate::state::{Caller, SimState};

pub(super) async fn list(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Query::parse(raw.as_deref());
    let statuses = q.enum_list("status", &["PENDING", "RUNNING", "FAILED", "SUCCESS"])?;
    let runs = q.uuid_list("run_uid")?;
    let limit = q.int("limit", 10, 1, 20)?;
    let offset = q.int("offset", 0, 0, u64::MAX)?;
    let sort = q.sort("-created_at")?;
    let items: Vec<(u64, serde_json::Value)> = {
        let callbacks = state.store.callbacks();
        callbacks
            .values()
            .filter(|c| c.workspace_uid == caller.owner.workspace_uid)
            .filter(|c| runs.is_empty() || runs.contains(&c.run_uid))
            .map(|c| (c.seq, serde_json::to_value(c.view()).unwrap_or_default()))
            .filter(|(_, v)| {
                statuses.is_empty()
                    || statuses
                        .iter()
                        .any(|s| v.get("status").and_then(|x| x.as_str()) == Some(s.as_str()))
            })
            .collect()
    };
    Ok(ok_json(sort_and_page(items, &sort, offset, limit)))
}

pub(super) async fn get_one(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "callback_uid")?;
    let view = state
        .store
        .callbacks()
        .get(&uid)
        .filter(|c| c.workspace_uid == caller.owner.workspace_uid)
        .map(|c| c.view())
        .ok_or_else(|| callback_not_found(uid))?;
    Ok(ok_json(view))
}

pub(super) async fn replay(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "callback_uid")?;
    empty_object_body(&body)?;
    Ok(ok_json(delivery::replay(&state, caller.owner, uid)?))
}
