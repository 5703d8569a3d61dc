//! `GET /v4/runs`, `GET /v4/runs/{run_uid}`, `POST /v4/runs/{run_uid}/resume`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;

use super::{empty_object_body, ok_json, parse_uid, sort_and_page, Query};
use crate::error::ApiError;
use crate::lifecycle::{self, run_not_found};
use crate::state::{Caller, SimState};

const STATUSES: &[&str] = &[
    "CREATED",
    "INVALID",
    "QUEUED",
    "SCHEDULED",
    "BLOCKED",
    "STOPPED",
    "RUNNING",
    "FAILED",
    "PARTIAL_SUCCEEDED",
    "SUCCEEDED",
];

pub(super) async fn list(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Query::parse(raw.as_deref());
    let statuses = q.enum_list("status", STATUSES)?;
    let modes = q.enum_list("execution_mode", &["LIVE", "ASYNC"])?;
    let actions = q.list("action_name").to_vec();
    let uids = q.uuid_list("uid")?;
    let users = q.uuid_list("user_uid")?;
    let workspaces = q.uuid_list("workspace_uid")?;
    let limit = q.int("limit", 10, 1, 100)?;
    let offset = q.int("offset", 0, 0, u64::MAX)?;
    let sort = q.sort("created_at")?;
    let items: Vec<(u64, serde_json::Value)> = {
        let runs = state.store.runs();
        runs.by_uid
            .values()
            .filter(|r| r.owner.workspace_uid == caller.owner.workspace_uid)
            .filter(|r| statuses.is_empty() || statuses.iter().any(|s| s == r.status.as_str()))
            .filter(|r| {
                modes.is_empty()
                    || modes
                        .iter()
                        .any(|m| (m == "LIVE") == (r.mode == crate::store::ExecutionMode::Live))
            })
            .filter(|r| actions.is_empty() || actions.contains(&r.action.name))
            .filter(|r| uids.is_empty() || uids.contains(&r.uid))
            .filter(|r| users.is_empty() || users.contains(&r.owner.user_uid))
            .filter(|r| workspaces.is_empty() || workspaces.contains(&r.owner.workspace_uid))
            .map(|r| (r.id, serde_json::to_value(r.view()).unwrap_or_default()))
            .collect()
    };
    Ok(ok_json(sort_and_page(items, &sort, offset, limit)))
}

pub(super) async fn get_one(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "run_uid")?;
    let view = state
        .store
        .runs()
        .by_uid
        .get(&uid)
        .filter(|r| r.owner.workspace_uid == caller.owner.workspace_uid)
        .map(|r| r.view())
        .ok_or_else(|| run_not_found(uid))?;
    Ok(ok_json(view))
}

pub(super) async fn resume(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "run_uid")?;
    empty_object_body(&body)?;
    lifecycle::resume(&state, caller.owner, uid)?;
    get_one(State(state), Extension(caller), Path(uid.to_string())).await
}
