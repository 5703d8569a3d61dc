//! `/_sim/v3/*`: test control outside the API (no auth): the runtime-tunable `[v3]` config,
//! a workflow's webhook (set in the app on the real platform), and the ground truth of every
//! job: each input's fate, every result row it produced, every webhook delivery.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde_json::{json, Value};
use uuid::Uuid;

use super::config::{V3RuntimeConfig, V3WebhookConfig};
use super::jobs::Job;
use super::V3State;
use crate::error::ApiError;

/// Builds the `/_sim/v3` routes.
pub fn routes(v3: Arc<V3State>) -> Router {
    Router::new()
        .route("/_sim/v3/config", get(get_config).put(put_config))
        .route(
            "/_sim/v3/workflows/{workflow_uid}/webhook",
            put(put_webhook).delete(delete_webhook),
        )
        .route("/_sim/v3/jobs", get(list_jobs))
        .route("/_sim/v3/jobs/{job_uid}", get(get_job))
        .with_state(v3)
}

fn ok_json(value: impl serde::Serialize) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

async fn get_config(State(v3): State<Arc<V3State>>) -> Response {
    ok_json(&*v3.runtime())
}

async fn put_config(State(v3): State<Arc<V3State>>, body: Bytes) -> Result<Response, ApiError> {
    let runtime: V3RuntimeConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_param(format!("config: {e}")))?;
    runtime
        .validate()
        .map_err(|e| ApiError::invalid_param(e.to_string()))?;
    v3.set_runtime(runtime);
    Ok(ok_json(&*v3.runtime()))
}

fn workflow_uid(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::invalid_param(format!("workflow_uid: {raw:?} is not a valid UUID")))
}

async fn put_webhook(
    State(v3): State<Arc<V3State>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let uid = workflow_uid(&raw)?;
    let workflow = v3.workflow(uid).ok_or_else(|| {
        ApiError::not_found(
            "WORKFLOW_404_NOT_FOUND",
            format!("workflow {uid} not found"),
        )
    })?;
    let hook: V3WebhookConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_param(format!("webhook: {e}")))?;
    hook.validate()
        .map_err(|e| ApiError::invalid_param(format!("webhook.{e}")))?;
    workflow.set_webhook(Some(hook));
    Ok(ok_json(workflow.webhook().as_deref()))
}

async fn delete_webhook(
    State(v3): State<Arc<V3State>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let uid = workflow_uid(&raw)?;
    let workflow = v3.workflow(uid).ok_or_else(|| {
        ApiError::not_found(
            "WORKFLOW_404_NOT_FOUND",
            format!("workflow {uid} not found"),
        )
    })?;
    workflow.set_webhook(None);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_jobs(State(v3): State<Arc<V3State>>) -> Response {
    let success = v3.runtime().behaviour.success_status;
    let jobs: Vec<Value> = v3
        .jobs()
        .in_order()
        .map(|job| {
            json!({
                "uid": job.uid,
                "workflow_uid": job.workflow.uid,
                "project_uid": job.project.uid,
                "status": job.status.wire(success),
                "inputs": job.inputs.len(),
                "results": job.results.len(),
                "webhooks": job.webhooks.len(),
            })
        })
        .collect();
    ok_json(jobs)
}

async fn get_job(
    State(v3): State<Arc<V3State>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let uid = Uuid::parse_str(&raw)
        .map_err(|_| ApiError::invalid_param(format!("job_uid: {raw:?} is not a valid UUID")))?;
    ground_truth(&v3, uid)
        .map(ok_json)
        .ok_or_else(|| super::jobs::job_not_found(uid))
}

/// Everything the simulator knows of a job: the API view, each input with its status, error
/// and the indexes of its rows, every result row in serving order with its input, every
/// webhook delivery, and `settled` (no engine or webhook task left working on it). `None`
/// for an unknown (or evicted) job.
pub fn ground_truth(v3: &V3State, uid: Uuid) -> Option<Value> {
    let success = v3.runtime().behaviour.success_status;
    let store = v3.jobs();
    let job: &Job = store.by_uid.get(&uid)?;
    let inputs: Vec<Value> = job
        .inputs
        .iter()
        .zip(&job.input_states)
        .enumerate()
        .map(|(index, (input, state))| {
            json!({
                "index": index,
                "input": input,
                "status": state.status,
                "error": state.error,
                "results": state.results,
            })
        })
        .collect();
    let results: Vec<Value> = job
        .results
        .iter()
        .enumerate()
        .map(|(index, row)| json!({"index": index, "input_index": row.input, "result": row.value}))
        .collect();
    Some(json!({
        "job": job.view(success),
        "steps": job.steps,
        "inputs": inputs,
        "results": results,
        "webhooks": job.webhooks,
        "settled": job.tasks == 0,
    }))
}
