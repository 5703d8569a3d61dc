//! `GET /v4/schedules`, `GET /v4/schedules/{uid}`, `POST /v4/schedules/{uid}/{pause|resume|cancel}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;

use super::{empty_object_body, ok_json, parse_uid, sort_and_page, Query};
use crate::error::ApiError;
use crate::schedules::{schedule_not_found, transition};
use crate::state::{Caller, SimState};

pub(super) async fn list(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = Query::parse(raw.as_deref());
    let statuses = q.enum_list("status", &["ACTIVE", "CANCELLED", "PAUSED", "COMPLETED"])?;
    let uids = q.uuid_list("uid")?;
    let users = q.uuid_list("user_uid")?;
    let workspaces = q.uuid_list("workspace_uid")?;
    let actions = q.list("action_name").to_vec();
    let limit = q.int("limit", 10, 1, 100)?;
    let offset = q.int("offset", 0, 0, u64::MAX)?;
    let sort = q.sort("created_at")?;
    let items: Vec<(u64, serde_json::Value)> = {
        let schedules = state.store.schedules();
        schedules
            .values()
            .filter(|s| s.owner.workspace_uid == caller.owner.workspace_uid)
            .filter(|s| statuses.is_empty() || statuses.iter().any(|x| x == s.status.as_str()))
            .filter(|s| uids.is_empty() || uids.contains(&s.uid))
            .filter(|s| users.is_empty() || users.contains(&s.owner.user_uid))
            .filter(|s| workspaces.is_empty() || workspaces.contains(&s.owner.workspace_uid))
            .filter(|s| actions.is_empty() || actions.contains(&s.request.action.name))
            .map(|s| (s.seq, serde_json::to_value(s.view()).unwrap_or_default()))
            .collect()
    };
    Ok(ok_json(sort_and_page(items, &sort, offset, limit)))
}

pub(super) async fn get_one(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "scheduled_run_uid")?;
    let view = state
        .store
        .schedules()
        .get(&uid)
        .filter(|s| s.owner.workspace_uid == caller.owner.workspace_uid)
        .map(|s| s.view())
        .ok_or_else(|| schedule_not_found(uid))?;
    Ok(ok_json(view))
}

pub(super) async fn manage(
    State(state): State<Arc<SimState>>,
    Extension(caller): Extension<Caller>,
    Path((uid, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "scheduled_run_uid")?;
    empty_object_body(&body)?;
    Ok(ok_json(transition(&state, caller.owner, uid, &action)?))
}
