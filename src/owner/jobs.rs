//! Submission jobs: the API calls of one launch request, made off the owner's loop. A job
//! submits the chunks it was given one after the other (each through the shared rate limiter
//! and retry policy) and reports every chunk's outcome as it comes, then that it is done; the
//! owner applies the outcomes to the request's state in its transaction.

use crate::captain::{AsyncRunBody, CallbackTarget, CaptainClient, ScheduleRunBody, SubmitError};
use crate::domain::reconcile::Delivery;
use crate::domain::request::{self, LaunchRequest, Mode};
use crate::domain::{StatusError, Submission};
use crate::owner::reconcile::{CheckFailure, Polled, RunRef};
use crate::token::{self, CallbackClaims, TokenKeys};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use tokio::sync::Notify;
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
    /// How long an async run's callback token is accepted (`callbacks.token_ttl`).
    pub token_ttl: std::time::Duration,
}

/// Starts submission jobs.
pub struct Submitter {
    pub client: Arc<CaptainClient>,
    pub keys: Arc<TokenKeys>,
    pub settings: SubmitSettings,
}

/// A job's report to the owner.
#[derive(Debug)]
pub enum JobMessage {
    /// One chunk's outcome.
    Chunk {
        request_id: String,
        partition: i32,
        chunk: u32,
        outcome: Submission,
    },
    /// Every chunk the job was given has an outcome (or the job stopped).
    Done { request_id: String, partition: i32 },
    /// A reconcile check: the run polled (when asked) and its deliveries in flight or failed.
    Checked {
        run: RunRef,
        polled: Option<Result<Polled, CheckFailure>>,
        deliveries: Result<Vec<Delivery>, CheckFailure>,
    },
    /// A control command's job: its answers (boxed: the largest variant by far).
    Commanded(Box<crate::owner::control::CommandDone>),
    /// A batch audit: each run's deliveries in flight or failed.
    Audited {
        checked: Vec<(RunRef, Result<Vec<Delivery>, CheckFailure>)>,
    },
    /// Replays asked for (original callback_uid and its batch), and originals the API
    /// refuses to replay again.
    Replayed {
        run: RunRef,
        requested: Vec<(String, Option<String>)>,
        exhausted: Vec<String>,
    },
    /// A schedule's state (`ACTIVE`, `PAUSED`, `CANCELLED`, `COMPLETED`).
    ScheduleChecked {
        request_id: String,
        partition: i32,
        chunk: u32,
        status: Result<String, String>,
    },
}

impl JobMessage {
    /// A report of the reconciler's checks (applied, or dropped when the partition is not
    /// owned: its owner checks again).
    pub fn is_reconcile(&self) -> bool {
        matches!(
            self,
            JobMessage::Checked { .. }
                | JobMessage::Audited { .. }
                | JobMessage::Replayed { .. }
                | JobMessage::ScheduleChecked { .. }
        )
    }

    pub fn partition(&self) -> i32 {
        match self {
            JobMessage::Chunk { partition, .. }
            | JobMessage::Done { partition, .. }
            | JobMessage::ScheduleChecked { partition, .. } => *partition,
            JobMessage::Checked { run, .. } | JobMessage::Replayed { run, .. } => run.partition,
            JobMessage::Commanded(done) => done.partition,
            // A batch may span the owner's partitions: reconcile reports are not routed by it.
            JobMessage::Audited { checked } => checked.first().map_or(-1, |(run, _)| run.partition),
        }
    }
}

/// The owner's end of the jobs' reports: a channel, and a wake-up for its loop.
#[derive(Clone)]
pub struct JobReports {
    pub tx: Sender<JobMessage>,
    pub wake: Arc<Notify>,
}

impl JobReports {
    pub(crate) fn send(&self, message: JobMessage) {
        // The owner outlives its jobs; a send after it stopped changes nothing.
        let _ = self.tx.send(message);
        self.wake.notify_one();
    }
}

impl Submitter {
    /// The chunk size of `request`'s mode (the API's per-run input limit).
    pub fn chunk_size(&self, mode: Mode) -> usize {
        match mode {
            Mode::Async => self.settings.async_max_inputs,
            Mode::Schedule => self.settings.schedule_max_inputs,
        }
    }

    /// Spawns the job submitting `chunks` of `request`.
    pub fn spawn(
        self: &Arc<Self>,
        request: LaunchRequest,
        partition: i32,
        chunks: Vec<u32>,
        reports: JobReports,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let span = tracing::info_span!("launch", request_id = %request.request_id, action = %request.action);
        tokio::spawn(
            async move {
                let size = this.chunk_size(request.mode);
                let all = request::chunk_inputs(&request.inputs, size);
                for index in chunks {
                    let Some(inputs) = all.get(index as usize) else {
                        continue;
                    };
                    let outcome = match this.submit(&request, index, inputs).await {
                        Ok(submission) => submission,
                        Err(error) => {
                            tracing::warn!(chunk = index, error = %error, "submission failed for good");
                            Submission::Failed(status_error(&error))
                        }
                    };
                    reports.send(JobMessage::Chunk {
                        request_id: request.request_id.clone(),
                        partition,
                        chunk: index,
                        outcome,
                    });
                }
                reports.send(JobMessage::Done {
                    request_id: request.request_id.clone(),
                    partition,
                });
            }
            .instrument(span),
        )
    }

    async fn submit(
        &self,
        request: &LaunchRequest,
        chunk: u32,
        inputs: &[serde_json::Value],
    ) -> Result<Submission, SubmitError> {
        // An async run calls back for a bounded time; a schedule's firings for as long as it
        // lives, with this same token.
        let expires_at = (request.mode == Mode::Async)
            .then(|| chrono::Utc::now().timestamp() + self.settings.token_ttl.as_secs() as i64);
        let token = self.keys.sign(&CallbackClaims {
            request_id: request.request_id.clone(),
            chunk,
            expires_at,
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
                Ok(Submission::Run {
                    run_uid: accepted.run_uid,
                })
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
                Ok(Submission::Schedule {
                    schedule_uid: accepted.schedule_uid,
                })
            }
        }
    }
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
