//! The launch path: one consumed record becomes either a dead-letter record plus a `REJECTED`
//! status, or one submitted run per chunk with its first status. The consumer may store the
//! record's offset only when this returns `Done`: by then the outcome is acknowledged by Kafka.

use crate::captain::{AsyncRunBody, CallbackTarget, CaptainClient, ScheduleRunBody, SubmitError};
use crate::domain::request::{self, derived_request_id, LaunchRequest, Mode, RejectedContext};
use crate::domain::{
    transition, Rejection, RunState, RunStatus, RunStatusEvent, StatusError, StatusSource,
    Transition,
};
use crate::kafka::{HandleOutcome, InboundRecord, LaunchHandler, RecordProducer, StateView};
use crate::locks::RequestLocks;
use crate::metrics::Metrics;
use crate::publish::{Origin, RecordBuilder};
use crate::telemetry::ErrorChain;
use crate::token::{self, CallbackClaims, TokenKeys};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a submission needs besides the request itself.
#[derive(Clone)]
pub struct SubmitSettings {
    /// `{public_base_url}/callbacks/{token}` is handed to Captain Data.
    pub public_base_url: String,
    /// Sent as a `callback.headers` entry and checked on every callback, when set.
    pub header_secret: Option<(String, SecretString)>,
    pub async_max_inputs: usize,
    pub schedule_max_inputs: usize,
    /// How long to wait for Kafka's acknowledgement of one batch of records.
    pub delivery_timeout: Duration,
}

/// Handles launch records for the consumer.
pub struct LaunchProcessor {
    pub(crate) records: RecordBuilder,
    pub(crate) producer: Arc<RecordProducer>,
    pub(crate) state: Arc<StateView<RunState>>,
    pub(crate) client: Arc<CaptainClient>,
    pub(crate) keys: Arc<TokenKeys>,
    pub(crate) locks: Arc<RequestLocks>,
    pub(crate) metrics: Metrics,
    pub(crate) settings: SubmitSettings,
    pub(crate) shutdown: CancellationToken,
}

/// Shutdown interrupted the work before its outcome was durable.
struct Interrupted;

#[async_trait::async_trait]
impl LaunchHandler for LaunchProcessor {
    async fn handle(&self, record: InboundRecord) -> HandleOutcome {
        // `launches_in_flight` is kept by the consumer, which owns the bound.
        match self.process(&record).await {
            Ok(()) => HandleOutcome::Done,
            Err(Interrupted) => HandleOutcome::Abandoned,
        }
    }
}

impl LaunchProcessor {
    async fn process(&self, record: &InboundRecord) -> Result<(), Interrupted> {
        let fallback = derived_request_id(&record.topic, record.partition, record.offset);
        let payload = record.payload.as_deref().unwrap_or_default();
        match request::parse_json(payload, &fallback) {
            Err(rejection) => self.reject(record, &rejection, &fallback).await,
            Ok(request) => self.launch(request).await,
        }
    }

    /// Dead-letter record and `REJECTED` status, acknowledged together.
    async fn reject(
        &self,
        record: &InboundRecord,
        rejection: &Rejection,
        fallback: &str,
    ) -> Result<(), Interrupted> {
        let ctx = RejectedContext::from_bytes(record.payload.as_deref().unwrap_or_default());
        let request_id = ctx.request_id.unwrap_or_else(|| fallback.to_owned());
        tracing::warn!(%request_id, class = rejection.class.as_str(), reason = %rejection.message,
            partition = record.partition, offset = record.offset, "launch request rejected");
        let origin = Origin {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            payload: record.payload.as_deref(),
            headers: &record.headers,
        };
        let event = RunStatusEvent {
            request_id: request_id.clone(),
            run_uid: None,
            schedule_uid: None,
            chunk: 0,
            action: ctx.action.unwrap_or_default(),
            mode: Mode::Async,
            status: RunStatus::Rejected,
            previous_status: None,
            error: Some(StatusError {
                label: Some(rejection.class.as_str().to_uppercase()),
                scope: Some("input".into()),
                message: rejection.message.clone(),
                http_status: None,
            }),
            source: StatusSource::Bridge,
            occurred_at: Utc::now(),
            metadata: ctx.metadata,
        };
        let records = vec![
            self.records.dead_letter(&origin, rejection, &request_id),
            self.records.status(&event),
        ];
        self.durably("dead-letter", || {
            self.producer
                .send_all(records.clone(), self.settings.delivery_timeout)
        })
        .await?;
        self.metrics.launches.with_label_values(&["rejected"]).inc();
        Ok(())
    }

    async fn launch(&self, request: LaunchRequest) -> Result<(), Interrupted> {
        let span = tracing::info_span!("launch", request_id = %request.request_id, action = %request.action);
        self.submit_chunks(request).instrument(span).await
    }

    async fn submit_chunks(&self, request: LaunchRequest) -> Result<(), Interrupted> {
        let max = match request.mode {
            Mode::Async => self.settings.async_max_inputs,
            Mode::Schedule => self.settings.schedule_max_inputs,
        };
        let chunks = request::chunk_inputs(&request.inputs, max);

        // A request_id already submitted (redelivery, restart, or a producer's retry) is not
        // submitted again; only chunks without an outcome are.
        let existing = self
            .durably("run-state read", || self.state.get(&request.request_id))
            .await?;
        let state = match existing {
            Some(state) if state.fully_submitted() => {
                tracing::info!("request already submitted; not submitting again");
                self.metrics
                    .launches
                    .with_label_values(&["already_submitted"])
                    .inc();
                return Ok(());
            }
            Some(state) => state,
            None => {
                // Recorded before the first submission so that a callback racing the submit
                // response finds the request's metadata on any instance.
                let state = RunState::new(
                    &request.request_id,
                    &request.action,
                    request.mode,
                    request.metadata.clone(),
                    chunks.len(),
                );
                self.durably("run-state write", || {
                    self.state.put(&request.request_id, &state, &self.producer)
                })
                .await?;
                state
            }
        };

        let mut failed = 0usize;
        for (index, inputs) in chunks.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let pending = state
                .chunks
                .iter()
                .find(|c| c.index == index)
                .is_none_or(|c| !c.submitted && c.status != Some(RunStatus::SubmitFailed));
            if !pending {
                continue;
            }
            let outcome = tokio::select! {
                outcome = self.submit(&request, index, inputs) => outcome,
                () = self.shutdown.cancelled() => return Err(Interrupted),
            };
            if outcome.is_err() {
                failed += 1;
            }
            self.record_submission(&request, index, outcome).await?;
        }
        let label = if failed == 0 {
            "submitted"
        } else {
            "submit_failed"
        };
        self.metrics.launches.with_label_values(&[label]).inc();
        Ok(())
    }

    async fn submit(
        &self,
        request: &LaunchRequest,
        chunk: u32,
        inputs: &[serde_json::Value],
    ) -> Result<Submitted, SubmitError> {
        let token = self.keys.sign(&CallbackClaims {
            request_id: request.request_id.clone(),
            chunk,
        });
        let callback = CallbackTarget {
            url: token::callback_url(&self.settings.public_base_url, &token),
            headers: self.settings.header_secret.as_ref().map(|(name, secret)| {
                BTreeMap::from([(name.clone(), secret.expose_secret().to_owned())])
            }),
        };
        match request.mode {
            Mode::Async => {
                let body = AsyncRunBody {
                    inputs: inputs.to_vec(),
                    parameters: request.parameters.clone(),
                    identity_ids: request.identity_ids.clone(),
                    identity_mode: request.identity_mode.clone(),
                    callback,
                };
                let accepted = self.client.submit_async(&request.action, &body).await?;
                Ok(Submitted::Run(accepted.run_uid))
            }
            Mode::Schedule => {
                let schedule = request.schedule.clone().unwrap_or(request::Schedule {
                    cron: None,
                    schedule_at: None,
                    timezone: None,
                });
                let body = ScheduleRunBody {
                    inputs: inputs.to_vec(),
                    parameters: request.parameters.clone(),
                    identity_ids: request.identity_ids.clone(),
                    identity_mode: request.identity_mode.clone(),
                    callback,
                    cron: schedule.cron,
                    schedule_at: schedule.schedule_at,
                    timezone: schedule.timezone,
                };
                let accepted = self.client.submit_schedule(&request.action, &body).await?;
                Ok(Submitted::Schedule(accepted.schedule_uid))
            }
        }
    }

    /// Publishes the chunk's first status and records it in the run state, under the request's
    /// lock (a callback for the same request may be processed at the same moment).
    async fn record_submission(
        &self,
        request: &LaunchRequest,
        index: u32,
        outcome: Result<Submitted, SubmitError>,
    ) -> Result<(), Interrupted> {
        let _guard = self.locks.lock(&request.request_id).await;
        let mut state = self
            .durably("run-state read", || self.state.get(&request.request_id))
            .await?
            .unwrap_or_else(|| {
                RunState::new(
                    &request.request_id,
                    &request.action,
                    request.mode,
                    request.metadata.clone(),
                    0,
                )
            });
        let chunk = state.chunk_mut(index);
        let mut event = RunStatusEvent {
            request_id: request.request_id.clone(),
            run_uid: None,
            schedule_uid: None,
            chunk: index,
            action: request.action.clone(),
            mode: request.mode,
            status: RunStatus::Created,
            previous_status: None,
            error: None,
            source: StatusSource::Submit,
            occurred_at: Utc::now(),
            metadata: request.metadata.clone(),
        };
        let publish = match outcome {
            Ok(Submitted::Run(run_uid)) => {
                chunk.submitted = true;
                chunk.run_uid = Some(run_uid.clone());
                let run = chunk.runs.entry(run_uid.clone()).or_default();
                event.run_uid = Some(run_uid);
                event.previous_status = run.status;
                // A callback may already have moved the run on: then CREATED is stale.
                let publish = transition(run.status, RunStatus::Created) == Transition::Publish;
                if publish {
                    run.status = Some(RunStatus::Created);
                    run.first_seen.get_or_insert_with(Utc::now);
                    self.metrics.runs_in_flight.inc();
                }
                publish
            }
            Ok(Submitted::Schedule(schedule_uid)) => {
                chunk.submitted = true;
                chunk.schedule_uid = Some(schedule_uid.clone());
                event.schedule_uid = Some(schedule_uid);
                event.status = RunStatus::Scheduled;
                event.previous_status = chunk.status;
                let publish = chunk.status.is_none();
                chunk.status.get_or_insert(RunStatus::Scheduled);
                publish
            }
            Err(error) => {
                tracing::warn!(chunk = index, %error, "submission failed for good");
                event.status = RunStatus::SubmitFailed;
                event.previous_status = chunk.status;
                event.error = Some(status_error(&error));
                chunk.status = Some(RunStatus::SubmitFailed);
                true
            }
        };
        state.updated_at = Utc::now();
        if publish {
            let records = vec![self.records.status(&event)];
            self.durably("status", || {
                self.producer
                    .send_all(records.clone(), self.settings.delivery_timeout)
            })
            .await?;
        }
        self.durably("run-state write", || {
            self.state.put(&request.request_id, &state, &self.producer)
        })
        .await
    }

    /// Retries a Kafka operation until it succeeds or shutdown begins: a launch outcome must
    /// become durable before its offset is stored, and giving up would lose it.
    async fn durably<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Interrupted>
    where
        E: std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Interrupted);
            }
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), what, retry_in = ?delay, "kafka write failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return Err(Interrupted),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

enum Submitted {
    Run(String),
    Schedule(String),
}

/// The API's refusal, as carried by a `SUBMIT_FAILED` status event.
fn status_error(error: &SubmitError) -> StatusError {
    match error {
        SubmitError::Rejected { http_status, error } => StatusError {
            label: error.error_label.clone(),
            scope: error.error_scope.clone(),
            message: error.message.clone(),
            http_status: Some(*http_status),
        },
        other => StatusError {
            label: Some("SUBMIT_RETRIES_EXHAUSTED".into()),
            scope: None,
            message: other.to_string(),
            http_status: None,
        },
    }
}
