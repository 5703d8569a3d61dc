//! v3 webhooks: the documented payload (`uid`, `job_uid`, `message`, `project_uid`, `error`,
//! `recipe_ref`, `workflow_uid`, `workflow_name`, `job_name`) POSTed to the workflow's URL with
//! its custom headers, automatic retries with doubling backoff, injected drops / duplicates /
//! receiver failures, one record per delivery on the job, and the webhook-retry route.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use uuid::Uuid;

use super::config::{V3WebhookConfig, V3WebhookEvent};
use super::jobs::{job_not_found, JobStatus};
use super::stats::add;
use super::{ts, Project, V3State};
use crate::error::{ApiError, ErrorScope};

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
    Dropped,
}

/// One webhook delivery of a job (ground truth; the v3 API shows none of this).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    /// The payload's `uid`; a duplicate carries the same.
    pub uid: Uuid,
    pub event: V3WebhookEvent,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// Status of the last answer; none when no answer came.
    pub http_status: Option<u16>,
    /// An injected second send of a delivered webhook.
    pub duplicate: bool,
    /// Started by the webhook-retry route.
    pub retry: bool,
    pub created_at: String,
}

/// The payload of the v3 docs (dc:/v3/webhooks/create-manage).
#[derive(Debug, Serialize)]
struct Payload<'a> {
    uid: Uuid,
    job_uid: Uuid,
    message: &'a str,
    project_uid: Uuid,
    error: Option<&'a str>,
    recipe_ref: Uuid,
    workflow_uid: Uuid,
    workflow_name: &'a str,
    job_name: &'a str,
}

fn message(event: V3WebhookEvent) -> &'static str {
    match event {
        // The docs show the Succeeded and Failed messages; Created's is a guess.
        V3WebhookEvent::Created => "Job successfully started.",
        V3WebhookEvent::Succeeded => "Job successfully finished.",
        V3WebhookEvent::Failed => "Job failed.",
    }
}

/// A delivery ready to go: the bytes, the target and the record index.
struct Prepared {
    uid: Uuid,
    body: Bytes,
    hook: Arc<V3WebhookConfig>,
    event: V3WebhookEvent,
}

/// Builds the payload of `event` for the job and records a pending delivery; `None` when the
/// workflow has no webhook, or does not enable `event`.
fn prepare(v3: &V3State, job_uid: Uuid, event: V3WebhookEvent, retry: bool) -> Option<Prepared> {
    let now = ts(v3.sim.clock.now());
    let mut store = v3.jobs();
    let job = store.by_uid.get_mut(&job_uid)?;
    let hook = job.workflow.webhook().filter(|h| h.enabled(event))?;
    let uid = Uuid::new_v4();
    let error = match event {
        V3WebhookEvent::Failed => Some(
            job.error_message
                .as_deref()
                .unwrap_or("Error while completing action: every input failed."),
        ),
        _ => None,
    };
    let payload = Payload {
        uid,
        job_uid,
        message: message(event),
        project_uid: job.project.uid,
        error,
        // The docs' example shows `recipe_ref` equal to the job uid.
        recipe_ref: job_uid,
        workflow_uid: job.workflow.uid,
        workflow_name: &job.workflow.name,
        job_name: &job.name,
    };
    let body = match serde_json::to_vec(&payload) {
        Ok(body) => Bytes::from(body),
        Err(error) => {
            tracing::error!(%error, "cannot serialize a v3 webhook payload");
            return None;
        }
    };
    job.webhooks.push(WebhookRecord {
        uid,
        event,
        status: DeliveryStatus::Pending,
        attempts: 0,
        http_status: None,
        duplicate: false,
        retry,
        created_at: now,
    });
    Some(Prepared {
        uid,
        body,
        hook,
        event,
    })
}

/// Sends `event` for the job if its workflow enables it; returns when the delivery is settled
/// (so a job's webhooks go out in order). `rng` draws the injected faults; `None` = no faults.
pub async fn send_event(
    v3: &Arc<V3State>,
    job_uid: Uuid,
    event: V3WebhookEvent,
    rng: Option<&mut StdRng>,
    retry: bool,
) -> Option<Uuid> {
    let prepared = prepare(v3, job_uid, event, retry)?;
    deliver(v3, job_uid, prepared, rng).await
}

async fn deliver(
    v3: &Arc<V3State>,
    job_uid: Uuid,
    prepared: Prepared,
    mut rng: Option<&mut StdRng>,
) -> Option<Uuid> {
    let runtime = v3.runtime();
    let faults = &runtime.faults;
    let stats = &v3.sim.stats.v3;
    let mut draw = |p: f64| p > 0.0 && rng.as_deref_mut().is_some_and(|r| r.random_bool(p));
    let drop = draw(faults.webhook_drop_rate);
    let duplicate = draw(faults.webhook_duplicate_rate);
    let uid = prepared.uid;
    if drop {
        update(v3, job_uid, uid, false, |r| {
            r.status = DeliveryStatus::Dropped
        });
        add(&stats.webhooks_dropped, 1);
        add(&stats.webhooks_failed, 1);
        return Some(uid);
    }
    let attempts = runtime.delivery.max_attempts.max(1);
    let mut delivered = false;
    for attempt in 0..attempts {
        let fail = draw(faults.webhook_failure_rate);
        let last = attempt + 1 == attempts;
        if send_once(v3, job_uid, &prepared, false, fail, last).await {
            delivered = true;
            break;
        }
        if !last {
            let backoff = Duration::from_millis(
                runtime
                    .delivery
                    .backoff_ms
                    .saturating_mul(1 << attempt.min(16)),
            );
            if !v3.sim.sleep(backoff).await {
                break;
            }
        }
    }
    if !delivered {
        add(&stats.webhooks_failed, 1);
    }
    if delivered && duplicate {
        let now = ts(v3.sim.clock.now());
        if let Some(job) = v3.jobs().by_uid.get_mut(&job_uid) {
            job.webhooks.push(WebhookRecord {
                uid,
                event: prepared.event,
                status: DeliveryStatus::Pending,
                attempts: 0,
                http_status: None,
                duplicate: true,
                retry: false,
                created_at: now,
            });
        }
        add(&stats.webhooks_duplicated, 1);
        if !send_once(v3, job_uid, &prepared, true, false, true).await {
            add(&stats.webhooks_failed, 1);
        }
    }
    Some(uid)
}

/// Updates the delivery record `(uid, duplicate)` of the job.
fn update(
    v3: &V3State,
    job_uid: Uuid,
    uid: Uuid,
    duplicate: bool,
    f: impl FnOnce(&mut WebhookRecord),
) {
    if let Some(job) = v3.jobs().by_uid.get_mut(&job_uid) {
        if let Some(record) = job
            .webhooks
            .iter_mut()
            .rev()
            .find(|r| r.uid == uid && r.duplicate == duplicate)
        {
            f(record);
        }
    }
}

/// One POST (or an injected failure); true on a 2xx answer.
async fn send_once(
    v3: &Arc<V3State>,
    job_uid: Uuid,
    prepared: &Prepared,
    duplicate: bool,
    inject_failure: bool,
    last_attempt: bool,
) -> bool {
    let Ok(_permit) = v3.delivery_slots.acquire().await else {
        return false;
    };
    let answer = if inject_failure {
        None
    } else {
        post(v3, &prepared.hook, prepared.body.clone()).await
    };
    let ok = answer.is_some_and(|s| (200..300).contains(&s));
    update(v3, job_uid, prepared.uid, duplicate, |r| {
        r.attempts += 1;
        r.http_status = answer;
        r.status = if ok {
            DeliveryStatus::Delivered
        } else if last_attempt {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Pending
        };
    });
    let stats = &v3.sim.stats.v3;
    if ok {
        add(&stats.webhooks_delivered, 1);
    } else {
        add(&stats.webhook_attempts_failed, 1);
    }
    ok
}

async fn post(v3: &V3State, hook: &V3WebhookConfig, body: Bytes) -> Option<u16> {
    let timeout = Duration::from_millis(v3.runtime().delivery.timeout_ms);
    let mut request = v3.sim.http.post(&hook.url).timeout(timeout).body(body);
    if !hook
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-type"))
    {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    for h in &hook.headers {
        request = request.header(h.name.as_str(), h.value.as_str());
    }
    match request.send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(error) => {
            tracing::debug!(url = %hook.url, %error, "v3 webhook delivery failed");
            None
        }
    }
}

/// The event a job's current status stands for: what the webhook-retry route re-sends.
fn event_of(
    status: JobStatus,
    any_succeeded: bool,
    paused_sends_failed: bool,
) -> Option<V3WebhookEvent> {
    match status {
        JobStatus::Pending | JobStatus::Stopped => None,
        JobStatus::Running => Some(V3WebhookEvent::Created),
        JobStatus::Finished => Some(V3WebhookEvent::Succeeded),
        JobStatus::Warning if any_succeeded => Some(V3WebhookEvent::Succeeded),
        JobStatus::Warning | JobStatus::Shutdown => Some(V3WebhookEvent::Failed),
        JobStatus::Paused => paused_sends_failed.then_some(V3WebhookEvent::Failed),
    }
}

/// The webhook-retry route: sends again the webhook of the job's current state (a fresh
/// delivery `uid`, automatic retries, no injected faults), in the background.
pub fn retry(v3: &Arc<V3State>, project: &Project, job_uid: Uuid) -> Result<Uuid, ApiError> {
    let runtime = v3.runtime();
    let event = {
        let store = v3.jobs();
        let job = store
            .get(job_uid, project)
            .ok_or_else(|| job_not_found(job_uid))?;
        let status = job.status.wire(runtime.behaviour.success_status);
        let hook = job.workflow.webhook().ok_or_else(|| {
            refused(
                "WEBHOOK_NOT_CONFIGURED",
                format!(
                    "workflow {} of job {job_uid} has no webhook configured",
                    job.workflow.uid
                ),
                job_uid,
                status,
            )
        })?;
        let event = event_of(
            job.status,
            job.any_succeeded(),
            runtime.behaviour.paused_sends_failed,
        )
        .ok_or_else(|| {
            refused(
                "NO_WEBHOOK_TO_RETRY",
                format!("job {job_uid} is {status}: no webhook event stands for that status"),
                job_uid,
                status,
            )
        })?;
        if !hook.enabled(event) {
            return Err(refused(
                "WEBHOOK_EVENT_DISABLED",
                format!(
                    "job {job_uid} is {status}, whose {} event is not enabled on its workflow's webhook",
                    event.as_str()
                ),
                job_uid,
                status,
            ));
        }
        event
    };
    let prepared = prepare(v3, job_uid, event, true)
        .ok_or_else(|| ApiError::internal("the webhook vanished while being retried"))?;
    let uid = prepared.uid;
    add(&v3.sim.stats.v3.webhooks_retried, 1);
    let guard = super::jobs::TaskGuard::enter(v3, job_uid);
    tokio::spawn(async move {
        deliver(&guard.v3, job_uid, prepared, None).await;
        drop(guard);
    });
    Ok(uid)
}

fn refused(label: &'static str, message: String, job_uid: Uuid, status: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, label, message)
        .scope(ErrorScope::Param)
        .param("job_uid", job_uid.to_string())
        .param("status", status)
}
