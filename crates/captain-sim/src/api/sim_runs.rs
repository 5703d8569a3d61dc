//! `/_sim/runs/{run_uid}/*`: test control of one run outside the API. `finish` ends a stalled
//! run; `deliveries` is the simulator's own ground truth of what the run generated and what
//! reached the receiver, for tests that must not trust the client's counters.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ok_json, parse_uid};
use crate::error::ApiError;
use crate::lifecycle::{request_finish, run_not_found};
use crate::state::SimState;
use crate::store::{Batch, CallbackStatus, RecordOrigin, RunStatus};

/// Body of `POST /_sim/runs/{run_uid}/finish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishBody {
    status: RunStatus,
    #[serde(default)]
    failed_inputs: Option<Vec<usize>>,
}

pub(super) async fn finish(
    State(state): State<Arc<SimState>>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "run_uid")?;
    let body: FinishBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_param(format!("body: {e}")))?;
    let view = request_finish(&state, uid, body.status, body.failed_inputs)?;
    Ok(ok_json(view))
}

/// One delivery record of a batch.
#[derive(Debug, Serialize)]
struct RecordTruth {
    uid: Uuid,
    parent_uid: Option<Uuid>,
    origin: RecordOrigin,
    status: CallbackStatus,
    /// The last answer's status; null when no HTTP answer came.
    http_status: Option<u16>,
    retry_count: u32,
    attempts: u32,
    dropped: bool,
}

#[derive(Debug, Serialize)]
struct BatchTruth {
    #[serde(flatten)]
    batch: Batch,
    deliveries: Vec<RecordTruth>,
}

/// Totals over a run's batches (also summed over every stored run in `/_sim/stats`).
#[derive(Debug, Default, Serialize)]
pub(super) struct BatchTotals {
    pub generated: u64,
    pub delivered: u64,
    pub undelivered: u64,
    pub results: u64,
    pub results_delivered: u64,
}

impl BatchTotals {
    pub(super) fn add(&mut self, batch: &Batch) {
        let results = batch.results_count as u64;
        self.generated += 1;
        self.results += results;
        if batch.delivered {
            self.delivered += 1;
            self.results_delivered += results;
        } else {
            self.undelivered += 1;
        }
    }
}

#[derive(Debug, Serialize)]
struct DeliveriesTruth {
    run_uid: Uuid,
    status: RunStatus,
    outcome: Option<&'static str>,
    /// The run waits at its stall point for `POST /_sim/runs/{uid}/finish`.
    stalled: bool,
    callback_url: Option<String>,
    totals: BatchTotals,
    batches: Vec<BatchTruth>,
}

pub(super) async fn deliveries(
    State(state): State<Arc<SimState>>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid = parse_uid(&uid, "run_uid")?;
    // The two locks are taken one after the other, never together.
    let (status, outcome, stalled, callback_url, batches, record_uids) = {
        let runs = state.store.runs();
        let run = runs.by_uid.get(&uid).ok_or_else(|| run_not_found(uid))?;
        (
            run.status,
            run.outcome,
            run.stall.as_ref().is_some_and(|s| s.is_stalled()),
            run.callback_url.clone(),
            run.batches.clone(),
            run.callbacks.clone(),
        )
    };
    let mut records: Vec<(u64, usize, RecordTruth)> = {
        let callbacks = state.store.callbacks();
        record_uids
            .iter()
            .filter_map(|uid| callbacks.get(uid))
            .map(|r| {
                (
                    r.seq,
                    r.batch_index,
                    RecordTruth {
                        uid: r.uid,
                        parent_uid: r.parent_uid,
                        origin: r.origin,
                        status: r.status,
                        http_status: r.http_status,
                        retry_count: r.retry_count,
                        attempts: r.attempts,
                        dropped: r.dropped,
                    },
                )
            })
            .collect()
    };
    records.sort_by_key(|(seq, _, _)| *seq);
    let mut totals = BatchTotals::default();
    let mut truth: Vec<BatchTruth> = batches
        .into_iter()
        .map(|batch| {
            totals.add(&batch);
            BatchTruth {
                batch,
                deliveries: Vec::new(),
            }
        })
        .collect();
    for (_, index, record) in records {
        if let Some(batch) = truth.get_mut(index) {
            batch.deliveries.push(record);
        }
    }
    Ok(ok_json(DeliveriesTruth {
        run_uid: uid,
        status,
        outcome,
        stalled,
        callback_url,
        totals,
        batches: truth,
    }))
}
