//! The callback path behind the HTTP endpoint: a verified callback becomes one result record per
//! item plus, when the run moved forward, one status event; the run state remembers the batch so
//! a duplicate delivery publishes nothing twice. Success is returned only once Kafka has
//! acknowledged every record, so the endpoint's 2xx means "durable".

use crate::callbacks::{CallbackPayload, CallbackSink, SinkAck, SinkError};
use crate::domain::{
    transition, Mode, RunResult, RunState, RunStatusEvent, StatusSource, Transition,
};
use crate::kafka::{RecordProducer, StateView};
use crate::locks::RequestLocks;
use crate::metrics::Metrics;
use crate::publish::RecordBuilder;
use crate::telemetry::ErrorChain;
use crate::token::CallbackClaims;
use chrono::Utc;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Turns callbacks into records.
pub struct CallbackProcessor {
    pub(crate) records: RecordBuilder,
    pub(crate) producer: Arc<RecordProducer>,
    pub(crate) state: Arc<StateView<RunState>>,
    pub(crate) locks: Arc<RequestLocks>,
    pub(crate) metrics: Metrics,
    /// Longest wait for Kafka before answering 503.
    pub(crate) ack_timeout: Duration,
    /// Batches remembered per run for duplicate detection.
    pub(crate) dedupe_window: usize,
    /// Longest wait for the launch path to record a submission whose callback came first.
    pub(crate) submit_wait: Duration,
}

impl CallbackSink for CallbackProcessor {
    fn accept(
        &self,
        claims: CallbackClaims,
        payload: CallbackPayload,
    ) -> BoxFuture<'_, Result<SinkAck, SinkError>> {
        Box::pin(self.process(claims, payload))
    }
}

fn unavailable(reason: &str) -> SinkError {
    SinkError::Unavailable {
        retry_after: Duration::from_secs(5),
        reason: reason.to_owned(),
    }
}

/// A Kafka failure as a 503, its cause kept in the reason.
fn kafka_unavailable(error: impl std::error::Error + 'static) -> SinkError {
    unavailable(&ErrorChain(&error).to_string())
}

impl CallbackProcessor {
    /// A callback can overtake the submit answer it belongs to, and the two may be handled by
    /// different instances, which the per-request lock does not serialise. Waiting (briefly,
    /// without the lock) until the launch path has recorded the chunk's submission keeps the
    /// run's story in order: CREATED is published before the callback's status. Past the wait
    /// the callback is processed anyway: the launch path then finds the run already moved on
    /// and publishes no stale CREATED (same instance), or may (another instance, see README).
    /// Returns whether its last read caught up with the run state (no error).
    async fn await_submission_record(&self, claims: &CallbackClaims) -> bool {
        let deadline = tokio::time::Instant::now() + self.submit_wait;
        loop {
            let (pending, caught_up) = match self.state.get(&claims.request_id).await {
                Ok(Some(state)) => (
                    state.chunks.iter().any(|c| {
                        c.index == claims.chunk
                            && !c.submitted
                            && c.status != Some(crate::domain::RunStatus::SubmitFailed)
                    }),
                    true,
                ),
                Ok(None) => (false, true),
                Err(_) => (false, false),
            };
            if !pending || tokio::time::Instant::now() >= deadline {
                return caught_up;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The run state under the request's lock. When the wait above caught up with the state
    /// after this callback arrived, the local view is enough: this instance's own writes since
    /// are applied locally before they return, and the lock orders this read after them; a
    /// write by another instance in between is the cross-instance window the README names.
    /// Otherwise read again, with the read-your-writes barrier.
    async fn locked_read(
        &self,
        request_id: &str,
        caught_up: bool,
    ) -> Result<Option<RunState>, SinkError> {
        if caught_up {
            return Ok(self.state.peek(request_id));
        }
        tokio::time::timeout(self.ack_timeout, self.state.get(request_id))
            .await
            .map_err(|_| unavailable("run state not readable in time"))?
            .map_err(kafka_unavailable)
    }

    async fn process(
        &self,
        claims: CallbackClaims,
        payload: CallbackPayload,
    ) -> Result<SinkAck, SinkError> {
        let request_id = claims.request_id.as_str();
        let run_uid = payload.run.run_uid.as_str();
        let batch_uid = payload.run.batch_uid.as_str();
        // Bounded as a whole: a state read stuck on an unavailable broker must not stretch it.
        let caught_up =
            tokio::time::timeout(self.submit_wait, self.await_submission_record(&claims))
                .await
                .unwrap_or(false);
        // Serialises with the launch path and other callbacks of this request on this instance.
        let _guard = self.locks.lock(request_id).await;
        let mut state = self
            .locked_read(request_id, caught_up)
            .await?
            .unwrap_or_else(|| {
                // A valid token proves the request is ours; its state is gone (deleted, or a
                // different state topic). Publish what the callback itself carries.
                tracing::warn!(
                    request_id,
                    run_uid,
                    "callback for a request with no run state"
                );
                RunState::new(request_id, "", Mode::Async, BTreeMap::new(), 0)
            });
        let action = state.action.clone();
        let mode = state.mode;
        let metadata = state.metadata.clone();
        let chunk = state.chunk_mut(claims.chunk);
        // The callback proves the submission succeeded, even if its response was never seen.
        chunk.submitted = true;
        if mode == Mode::Async && chunk.run_uid.is_none() {
            chunk.run_uid = Some(run_uid.to_owned());
        }
        let schedule_uid = chunk.schedule_uid.clone();
        let run = chunk.runs.entry(run_uid.to_owned()).or_default();
        let new_run = run.status.is_none();

        let duplicate = run.has_batch(batch_uid);
        let now = Utc::now();
        let mut out = Vec::new();
        let mut results_published = 0usize;
        if !duplicate {
            for (index, item) in payload.results.iter().flatten().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let result = RunResult {
                    result_id: RunResult::result_id(run_uid, batch_uid, index),
                    request_id: request_id.to_owned(),
                    run_uid: run_uid.to_owned(),
                    batch_uid: batch_uid.to_owned(),
                    index,
                    action: action.clone(),
                    input: payload.input.clone(),
                    custom_data: payload.custom_data.clone(),
                    result: item.clone(),
                    received_at: now,
                    metadata: metadata.clone(),
                };
                out.push(self.records.result(&result));
                results_published += 1;
            }
        }

        let previous = run.status;
        let status = payload.run.status;
        let status_published = transition(previous, status) == Transition::Publish;
        if status_published {
            let event = RunStatusEvent {
                request_id: request_id.to_owned(),
                run_uid: Some(run_uid.to_owned()),
                schedule_uid,
                chunk: claims.chunk,
                action: action.clone(),
                mode,
                status,
                previous_status: previous,
                error: payload.error.clone(),
                source: StatusSource::Callback,
                occurred_at: now,
                metadata,
            };
            // Results first: a consumer that sees the final status has the batch's results.
            out.push(self.records.status(&event));
            run.status = Some(status);
            run.first_seen.get_or_insert(now);
        }
        if !duplicate {
            run.remember_batch(batch_uid, self.dedupe_window);
            run.results += results_published as u64;
        }
        let became_terminal = status_published && status.is_terminal();
        let ack = SinkAck {
            results_published,
            duplicate,
            status_published,
        };
        if duplicate && !status_published {
            return Ok(ack);
        }
        state.updated_at = now;

        if !out.is_empty() {
            self.producer
                .send_all(out, self.ack_timeout)
                .await
                .map_err(kafka_unavailable)?;
        }
        // Written after the records: a crash in between republishes the batch on redelivery
        // (same result_ids), never loses it.
        tokio::time::timeout(
            self.ack_timeout,
            self.state.put(request_id, &state, &self.producer),
        )
        .await
        .map_err(|_| unavailable("run state not written in time"))?
        .map_err(kafka_unavailable)?;
        if new_run && !status.is_terminal() {
            self.metrics.runs_in_flight.inc();
        }
        if became_terminal && !new_run {
            self.metrics.runs_in_flight.dec();
        }
        Ok(ack)
    }
}
