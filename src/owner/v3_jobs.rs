//! The v3 API calls of the partition owner, made off its loop like v4 submissions: launching a
//! workflow chunk as a v3 job (`POST /workflows/{uid}/schedule`, with the routing token in the
//! job name), and, after a job's Succeeded / Failed webhook, reading the job's status and
//! every page of its results. Each fetch reports one [`JobMessage::V3Outcome`].

use super::jobs::{JobMessage, JobReports};
use crate::captain::v3::V3Client;
use crate::captain::v3_wire::{V3ScheduleBody, V3Step, V3WebhookKind};
use crate::captain::SubmitError;
use crate::domain::request::{LaunchRequest, Workflow};
use crate::domain::{v3_run_status, RunStatus, StatusError, Submission};
use crate::workflows::job_name;
use crate::workflows::V3Metrics;
use serde_json::Value;
use std::time::Duration;
use tracing::Instrument;

/// Rounds of a fetch whose calls gave up on retriable errors (each round has the client's own
/// retries); the wait between rounds doubles from [`FETCH_ROUND_WAIT`].
const FETCH_ROUNDS: u32 = 4;
const FETCH_ROUND_WAIT: Duration = Duration::from_secs(2);

/// What the owner needs to run v3 jobs.
pub struct V3Jobs {
    pub client: V3Client,
    /// Inputs per job (a request with more becomes several chunks, each a job).
    pub max_inputs: usize,
    pub max_job_name_len: usize,
    pub metrics: V3Metrics,
}

/// A job's status and the result rows not published yet, as read after a webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedJob {
    /// The v3 status as the API spelled it.
    pub raw_status: String,
    /// Mapped onto the bridge's vocabulary ([`v3_run_status`]).
    pub status: RunStatus,
    /// The job's `error_message`.
    pub error: Option<String>,
    /// Index of the first row in `rows` (rows before it were published before the fetch).
    pub first: u64,
    pub rows: Vec<Value>,
    /// Rows the job holds in all.
    pub total: u64,
}

/// What one fetch is about.
#[derive(Debug, Clone)]
pub struct FetchOrder {
    pub request_id: String,
    pub partition: i32,
    pub chunk: u32,
    pub job_uid: String,
    pub kind: V3WebhookKind,
    /// Rows already published for the job (kept out of memory).
    pub published: u64,
    /// `webhook`, or `poll` when the reconciler asked (a silent job).
    pub source: crate::domain::StatusSource,
}

impl V3Jobs {
    /// Launches one chunk of a workflow request. A job name that cannot carry the routing
    /// token is a refusal for good (`SUBMIT_FAILED`, label `V3_JOB_NAME_TOO_LONG`).
    pub async fn submit(
        &self,
        request: &LaunchRequest,
        workflow: Workflow,
        inputs: &[Value],
        token: &str,
    ) -> Result<Submission, SubmitError> {
        let name =
            match job_name::compose(workflow.job_name.as_deref(), token, self.max_job_name_len) {
                Ok(name) => name,
                Err(e) => {
                    return Ok(Submission::Failed(StatusError {
                        label: Some("V3_JOB_NAME_TOO_LONG".into()),
                        scope: Some("request".into()),
                        message: format!("{e}; shorten job_name or request_id"),
                        http_status: None,
                    }))
                }
            };
        let body = V3ScheduleBody {
            job_name: Some(name),
            inputs: inputs.to_vec(),
            steps: workflow.steps.map(|steps| {
                steps
                    .into_iter()
                    .map(|s| V3Step {
                        step_uid: s.step_uid,
                        accounts: s.accounts,
                        accounts_rotation_enabled: s.accounts_rotation_enabled,
                        parameters: s.parameters,
                    })
                    .collect()
            }),
            delay: workflow.delay,
        };
        let accepted = self
            .client
            .schedule_workflow(&workflow.workflow_uid, &body)
            .await?;
        tracing::info!(request_id = %request.request_id, job_uid = %accepted.job_uid, "v3 job launched");
        Ok(Submission::Run {
            run_uid: accepted.job_uid,
        })
    }

    /// Spawns the fetch of `order`'s job; it reports one [`JobMessage::V3Outcome`].
    pub fn spawn_fetch(
        self: &std::sync::Arc<Self>,
        order: FetchOrder,
        reports: JobReports,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let span = tracing::info_span!("v3_fetch", request_id = %order.request_id, job_uid = %order.job_uid);
        tokio::spawn(
            async move {
                let mut round = 0;
                let outcome = loop {
                    match this.fetch(&order).await {
                        Ok(fetched) => break Ok(fetched),
                        // An outage outlasting the client's retries: the webhook must not be
                        // lost, so the whole read is tried again a few times before giving up.
                        Err(e) if e.is_retriable() && round + 1 < FETCH_ROUNDS => {
                            tracing::warn!(error = %e, round, "v3 job read gave up; trying again");
                            tokio::time::sleep(FETCH_ROUND_WAIT * 2u32.pow(round)).await;
                            round += 1;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "v3 job status or results could not be read");
                            break Err(e.to_string());
                        }
                    }
                };
                reports.send(JobMessage::V3Outcome { order, outcome });
            }
            .instrument(span),
        )
    }

    /// Reads the job, then (after Succeeded / Failed, or when the job reads as ended) every
    /// result page; keeps the rows from `published` on.
    async fn fetch(&self, order: &FetchOrder) -> Result<FetchedJob, SubmitError> {
        let job = self.client.get_job(&order.job_uid).await?;
        let mapped = job.status.run_status(false);
        let ended = matches!(order.kind, V3WebhookKind::Succeeded | V3WebhookKind::Failed)
            || !matches!(mapped, Some(RunStatus::Queued | RunStatus::Running) | None);
        let mut rows = Vec::new();
        let mut total = 0u64;
        if ended {
            let mut pages = self.client.results(&order.job_uid);
            while let Some(page) = pages.next_page().await? {
                for row in page.results {
                    if total >= order.published {
                        rows.push(row);
                    }
                    total += 1;
                }
            }
        }
        Ok(FetchedJob {
            raw_status: job.status.as_str().to_owned(),
            status: v3_run_status(&job.status, total, order.kind),
            error: job.error_message,
            first: order.published.min(total),
            rows,
            total,
        })
    }
}
