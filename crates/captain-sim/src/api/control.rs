//! `/_sim/*`: test-time control outside the API: counters (with the batch ground truth summed
//! over the stored runs), and the runtime-tunable configuration (rate limits, faults, timings,
//! outcomes, results, delivery).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ok_json;
use super::sim_runs::BatchTotals;
use crate::config::RuntimeConfig;
use crate::error::ApiError;
use crate::state::SimState;

pub(super) async fn stats(State(state): State<Arc<SimState>>) -> Response {
    let mut runs: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut batches = BatchTotals::default();
    let runs_total = {
        let store = state.store.runs();
        for run in store.by_uid.values() {
            *runs.entry(run.status.as_str()).or_default() += 1;
            run.batches.iter().for_each(|b| batches.add(b));
        }
        store.by_uid.len()
    };
    let mut schedules: BTreeMap<&'static str, u64> = BTreeMap::new();
    for schedule in state.store.schedules().values() {
        *schedules.entry(schedule.status.as_str()).or_default() += 1;
    }
    let callback_records = state.store.callbacks().len();
    let counters = state.stats.snapshot();
    ok_json(json!({
        "requests": counters.requests,
        "rate_limited": counters.rate_limited,
        "injected_errors": counters.injected_errors,
        "callbacks": counters.callbacks,
        "callback_records": callback_records,
        "batches": batches,
        "runs_created": counters.runs_created,
        "runs_stored": runs_total,
        "runs_by_status": runs,
        "schedules_by_status": schedules,
        "schedule_firings": counters.schedule_firings,
        "v3": counters.v3,
    }))
}

pub(super) async fn get_config(State(state): State<Arc<SimState>>) -> Response {
    ok_json(&*state.runtime())
}

pub(super) async fn put_config(
    State(state): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let runtime: RuntimeConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_param(format!("config: {e}")))?;
    runtime
        .validate()
        .map_err(|e| ApiError::invalid_param(e.to_string()))?;
    state.set_runtime(runtime);
    Ok(ok_json(&*state.runtime()))
}

pub(super) async fn reset_stats(State(state): State<Arc<SimState>>) -> Response {
    state.stats.reset();
    StatusCode::NO_CONTENT.into_response()
}
