//! Callback delivery: one record per delivery (PENDING -> RUNNING -> SUCCESS/FAILED), automatic
//! retries with doubling backoff on the same record (`retry_count` counts them), injected
//! drops/duplicates/receiver failures, and replays (a new record with `parent_uid`, the same
//! payload bytes and `batch_uid`, one attempt). A 2xx answer to any of them marks the run's
//! batch delivered (the ground truth of `/_sim/runs/{uid}/deliveries`).
//!
//! A replay is a fresh attempt at the receiver, so injected receiver failures apply to it; the
//! drop fault does not: it models the platform losing a delivery in its own pipeline, and an
//! explicitly requested replay is what recovers such a loss.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::SimState;
use crate::stats::bump;
use crate::store::{
    CallbackRecord, CallbackStatus, CallbackTarget, CallbackView, Owner, RecordOrigin,
};

/// Replays allowed per original callback.
pub const MAX_REPLAYS: u32 = 3;

/// The run a delivery belongs to.
#[derive(Debug, Clone)]
pub struct DeliveryCtx {
    pub run_uid: Uuid,
    pub workspace_uid: Uuid,
    pub target: Arc<CallbackTarget>,
}

/// The payload a record carries: its batch and its position among the run's batches.
#[derive(Debug, Clone, Copy)]
struct BatchRef {
    uid: Uuid,
    index: usize,
}

/// Outcome of one POST.
enum Attempt {
    Answered(u16),
    NoAnswer,
}

/// Delivers one payload, honouring faults and retries; returns when the delivery is settled
/// (so a run's pages go out one at a time, in order).
pub async fn deliver(
    state: &Arc<SimState>,
    ctx: &DeliveryCtx,
    batch_uid: Uuid,
    batch_index: usize,
    payload: Bytes,
    rng: &mut StdRng,
) {
    let batch = BatchRef {
        uid: batch_uid,
        index: batch_index,
    };
    let runtime = state.runtime();
    let faults = &runtime.faults;
    let drop = faults.callback_drop_rate > 0.0 && rng.random_bool(faults.callback_drop_rate);
    let duplicate =
        faults.callback_duplicate_rate > 0.0 && rng.random_bool(faults.callback_duplicate_rate);
    let uid = new_record(
        state,
        ctx,
        None,
        batch,
        payload.clone(),
        RecordOrigin::Original,
    );
    if drop {
        update(state, uid, |r| {
            r.status = CallbackStatus::Failed;
            r.dropped = true;
        });
        bump(&state.stats.callbacks_dropped);
        bump(&state.stats.callbacks_failed);
        return;
    }
    let attempts = runtime.delivery.max_attempts.max(1);
    let mut succeeded = false;
    for attempt in 0..attempts {
        let fail =
            faults.callback_failure_rate > 0.0 && rng.random_bool(faults.callback_failure_rate);
        let last = attempt + 1 == attempts;
        if send_once(state, uid, &ctx.target, &payload, fail, last).await {
            succeeded = true;
            break;
        }
        if !last {
            let backoff = Duration::from_millis(
                runtime
                    .delivery
                    .backoff_ms
                    .saturating_mul(1 << attempt.min(16)),
            );
            if !state.sleep(backoff).await {
                break;
            }
        }
    }
    if !succeeded {
        bump(&state.stats.callbacks_failed);
    }
    if succeeded && duplicate {
        let dup = new_record(
            state,
            ctx,
            None,
            batch,
            payload.clone(),
            RecordOrigin::Duplicate,
        );
        bump(&state.stats.callbacks_duplicated);
        if !send_once(state, dup, &ctx.target, &payload, false, true).await {
            bump(&state.stats.callbacks_failed);
        }
    }
}

/// Replays an original callback: checks the limits, records, and sends in the background.
pub fn replay(state: &Arc<SimState>, owner: Owner, uid: Uuid) -> Result<CallbackView, ApiError> {
    let (ctx, batch, payload) = {
        let mut callbacks = state.store.callbacks();
        let original = callbacks
            .get_mut(&uid)
            .filter(|r| r.workspace_uid == owner.workspace_uid)
            .ok_or_else(|| callback_not_found(uid))?;
        if original.parent_uid.is_some() {
            return Err(ApiError::invalid_param(format!(
                "callback {uid} is itself a replay; only an original callback can be replayed"
            ))
            .param("callback_uid", uid.to_string()));
        }
        if original.replays >= MAX_REPLAYS {
            return Err(ApiError::invalid_param(format!(
                "callback {uid} was already replayed {MAX_REPLAYS} times, the maximum"
            ))
            .param("callback_uid", uid.to_string()));
        }
        original.replays += 1;
        (
            DeliveryCtx {
                run_uid: original.run_uid,
                workspace_uid: original.workspace_uid,
                target: original.target.clone(),
            },
            BatchRef {
                uid: original.batch_uid,
                index: original.batch_index,
            },
            original.payload.clone(),
        )
    };
    let runtime = state.runtime();
    let fail = state.faults.callback_failure(&runtime.faults);
    let new_uid = new_record(
        state,
        &ctx,
        Some(uid),
        batch,
        payload.clone(),
        RecordOrigin::Replay,
    );
    bump(&state.stats.callbacks_replayed);
    let view = state
        .store
        .callbacks()
        .get(&new_uid)
        .map(CallbackRecord::view)
        .ok_or_else(|| ApiError::internal("replayed callback vanished"))?;
    let task_state = state.clone();
    tokio::spawn(async move {
        if !send_once(&task_state, new_uid, &ctx.target, &payload, fail, true).await {
            bump(&task_state.stats.callbacks_failed);
        }
    });
    Ok(view)
}

/// The 404 for an unknown (or other workspace's) callback.
pub fn callback_not_found(uid: Uuid) -> ApiError {
    ApiError::not_found(
        "CALLBACK_404_NOT_FOUND",
        format!("callback {uid} not found"),
    )
    .param("callback_uid", uid.to_string())
}

fn new_record(
    state: &Arc<SimState>,
    ctx: &DeliveryCtx,
    parent_uid: Option<Uuid>,
    batch: BatchRef,
    payload: Bytes,
    origin: RecordOrigin,
) -> Uuid {
    let uid = Uuid::new_v4();
    let record = CallbackRecord {
        seq: state.next_seq(),
        uid,
        parent_uid,
        retry_count: 0,
        created_at: state.clock.now(),
        status: CallbackStatus::Pending,
        target: ctx.target.clone(),
        http_status: None,
        batch_uid: batch.uid,
        run_uid: ctx.run_uid,
        workspace_uid: ctx.workspace_uid,
        payload,
        replays: 0,
        batch_index: batch.index,
        origin,
        attempts: 0,
        dropped: false,
    };
    state.store.callbacks().insert(uid, record);
    state
        .store
        .with_run(ctx.run_uid, |run| run.callbacks.push(uid));
    uid
}

fn update(state: &SimState, uid: Uuid, f: impl FnOnce(&mut CallbackRecord)) {
    if let Some(record) = state.store.callbacks().get_mut(&uid) {
        f(record);
    }
}

/// One POST (or an injected failure); updates the record (a failed attempt that will be
/// retried goes back to PENDING with `retry_count` + 1); true on a 2xx answer.
async fn send_once(
    state: &Arc<SimState>,
    uid: Uuid,
    target: &CallbackTarget,
    payload: &Bytes,
    inject_failure: bool,
    last_attempt: bool,
) -> bool {
    let Ok(_permit) = state.delivery_slots.acquire().await else {
        return false;
    };
    update(state, uid, |r| {
        r.status = CallbackStatus::Running;
        r.attempts += 1;
    });
    let outcome = if inject_failure {
        Attempt::NoAnswer
    } else {
        post(state, target, payload.clone()).await
    };
    let ok = matches!(outcome, Attempt::Answered(s) if (200..300).contains(&s));
    let mut delivered = None;
    update(state, uid, |r| {
        if ok {
            delivered = Some((r.run_uid, r.batch_index));
        }
        r.http_status = match outcome {
            Attempt::Answered(s) => Some(s),
            Attempt::NoAnswer => None,
        };
        if ok {
            r.status = CallbackStatus::Success;
        } else if last_attempt {
            r.status = CallbackStatus::Failed;
        } else {
            r.status = CallbackStatus::Pending;
            r.retry_count += 1;
        }
    });
    if let Some((run_uid, index)) = delivered {
        state.store.with_run(run_uid, |run| {
            if let Some(batch) = run.batches.get_mut(index) {
                batch.delivered = true;
            }
        });
    }
    if ok {
        bump(&state.stats.callbacks_delivered);
    } else {
        bump(&state.stats.callback_attempts_failed);
    }
    ok
}

async fn post(state: &SimState, target: &CallbackTarget, payload: Bytes) -> Attempt {
    let timeout = Duration::from_millis(state.runtime().delivery.timeout_ms);
    let mut request = state
        .http
        .post(&target.url)
        .timeout(timeout)
        .header(CONTENT_TYPE, "application/json")
        .body(payload);
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.send().await {
        Ok(response) => Attempt::Answered(response.status().as_u16()),
        Err(error) => {
            tracing::debug!(url = %target.url, %error, "callback delivery failed");
            Attempt::NoAnswer
        }
    }
}
