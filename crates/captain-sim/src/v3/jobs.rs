//! v3 jobs: the record of each job (inputs and their fate, result rows, webhook deliveries),
//! their wire views, bounded retention, retry and cancel, and the engine that drives a job
//! `pending` → `running` → `finished` | `warning` | `shutdown` | `paused` | `stopped`.
//!
//! Every change a job's engine makes is applied under the store lock *and* only if the job's
//! epoch is still the one the engine started with: retry and cancel bump the epoch, so an
//! engine overtaken by either stops without touching the job. The first outcome, cut points
//! and webhook faults come from a generator seeded by (seed, job number, retry count).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use uuid::Uuid;

use super::config::{V3OutcomesConfig, V3SuccessStatus, V3WebhookEvent};
use super::stats::add;
use super::validate::LaunchRequest;
use super::webhooks::{self, WebhookRecord};
use super::{ts, Project, V3State, Workflow};
use crate::error::{ApiError, ErrorScope};
use crate::generate::{generate, rng_for};

/// The v3 job statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Running,
    /// Success; spelled `finished` or `completed` on the wire (`behaviour.success_status`).
    Finished,
    /// Some inputs failed; the others have results. Retry re-runs the failed ones.
    Warning,
    /// A technical error ended the job.
    Shutdown,
    /// An integration error holds the job until it is retried.
    Paused,
    /// Stopped by the user (cancel).
    Stopped,
}

impl JobStatus {
    /// The wire spelling.
    pub fn wire(self, success: V3SuccessStatus) -> &'static str {
        match self {
            JobStatus::Finished => match success {
                V3SuccessStatus::Finished => "finished",
                V3SuccessStatus::Completed => "completed",
            },
            other => other.key(),
        }
    }

    /// A fixed name (the success status is always `finished` here), for counters.
    pub fn key(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Warning => "warning",
            JobStatus::Shutdown => "shutdown",
            JobStatus::Paused => "paused",
            JobStatus::Stopped => "stopped",
        }
    }

    /// Statuses a retry accepts (support article 6067606082461).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Paused | JobStatus::Warning | JobStatus::Shutdown
        )
    }

    /// Statuses a cancel accepts (support article 6067606082461).
    pub fn cancellable(self) -> bool {
        matches!(
            self,
            JobStatus::Running
                | JobStatus::Pending
                | JobStatus::Paused
                | JobStatus::Warning
                | JobStatus::Shutdown
        )
    }

    /// No engine runs for it; it may be evicted.
    pub fn ended(self) -> bool {
        matches!(
            self,
            JobStatus::Finished | JobStatus::Warning | JobStatus::Shutdown | JobStatus::Stopped
        )
    }
}

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputStatus {
    Pending,
    Succeeded,
    Failed,
}

/// One input of a job.
#[derive(Debug, Clone)]
pub struct InputState {
    pub status: InputStatus,
    pub error: Option<String>,
    /// Indexes into the job's result rows.
    pub results: Vec<usize>,
}

/// One result row and the input it came from.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub input: usize,
    pub value: Value,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub seq: u64,
    pub uid: Uuid,
    pub project: Project,
    pub workflow: Arc<Workflow>,
    pub name: String,
    pub inputs: Vec<Value>,
    /// The `steps` of the launch body, as sent (null when absent).
    pub steps: Value,
    pub delay_secs: u64,
    pub unstructure_meta: bool,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub error_message: Option<String>,
    pub input_states: Vec<InputState>,
    pub results: Vec<ResultRow>,
    pub retries: u32,
    /// The Created webhook went out (or would have): a job starts once.
    pub started: bool,
    pub webhooks: Vec<WebhookRecord>,
    /// Engine and webhook-retry tasks still working on the job.
    pub tasks: u32,
    epoch: u64,
    wake: watch::Sender<u64>,
}

impl Job {
    /// The wire view of `GET /jobs/{uid}` and of job lists.
    pub fn view(&self, success: V3SuccessStatus) -> JobView {
        let count = |s: InputStatus| self.input_states.iter().filter(|i| i.status == s).count();
        JobView {
            uid: self.uid,
            name: self.name.clone(),
            workflow_uid: self.workflow.uid,
            workflow_name: self.workflow.name.clone(),
            project_uid: self.project.uid,
            status: self.status.wire(success),
            created_at: ts(self.created_at),
            start_time: self.start_time.map(ts),
            end_time: self.end_time.map(ts),
            error_message: self.error_message.clone(),
            delay: self.delay_secs,
            retries: self.retries,
            total_inputs: self.inputs.len(),
            succeeded_inputs: count(InputStatus::Succeeded),
            failed_inputs: count(InputStatus::Failed),
            total_results: self.results.len(),
        }
    }

    /// Whether at least one input succeeded.
    pub fn any_succeeded(&self) -> bool {
        self.input_states
            .iter()
            .any(|i| i.status == InputStatus::Succeeded)
    }
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub uid: Uuid,
    pub name: String,
    pub workflow_uid: Uuid,
    pub workflow_name: String,
    pub project_uid: Uuid,
    pub status: &'static str,
    pub created_at: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub error_message: Option<String>,
    pub delay: u64,
    pub retries: u32,
    pub total_inputs: usize,
    pub succeeded_inputs: usize,
    pub failed_inputs: usize,
    pub total_results: usize,
}

/// Jobs in memory, oldest first.
#[derive(Debug, Default)]
pub struct JobStore {
    pub by_uid: HashMap<Uuid, Job>,
    order: VecDeque<Uuid>,
}

impl JobStore {
    /// The job of `uid` if `project` owns it.
    pub fn get(&self, uid: Uuid, project: &Project) -> Option<&Job> {
        self.by_uid
            .get(&uid)
            .filter(|j| j.project.uid == project.uid)
    }

    /// Jobs in creation order.
    pub fn in_order(&self) -> impl Iterator<Item = &Job> {
        self.order.iter().filter_map(|uid| self.by_uid.get(uid))
    }
}

/// The 404 for an unknown (or other project's) job.
pub fn job_not_found(uid: Uuid) -> ApiError {
    ApiError::not_found("JOB_404_NOT_FOUND", format!("job {uid} not found"))
        .param("job_uid", uid.to_string())
}

/// Creates a job in `pending` and starts its engine.
pub fn create(
    v3: &Arc<V3State>,
    project: Project,
    workflow: Arc<Workflow>,
    request: LaunchRequest,
) -> Uuid {
    let seq = v3.next_job_seq();
    let uid = Uuid::new_v4();
    let (wake, _) = watch::channel(0);
    let job = Job {
        seq,
        uid,
        project,
        name: request
            .job_name
            .unwrap_or_else(|| "Automated Run".to_owned()),
        input_states: vec![
            InputState {
                status: InputStatus::Pending,
                error: None,
                results: Vec::new(),
            };
            request.inputs.len()
        ],
        inputs: request.inputs,
        steps: request.steps.map(Value::Array).unwrap_or(Value::Null),
        delay_secs: request.delay_secs,
        unstructure_meta: request.unstructure_meta,
        status: JobStatus::Pending,
        created_at: v3.sim.clock.now(),
        start_time: None,
        end_time: None,
        error_message: None,
        results: Vec::new(),
        retries: 0,
        started: false,
        webhooks: Vec::new(),
        tasks: 0,
        epoch: 0,
        wake,
        workflow,
    };
    let stats = &v3.sim.stats.v3;
    {
        let mut store = v3.jobs();
        store.by_uid.insert(uid, job);
        store.order.push_back(uid);
        evict(v3, &mut store);
    }
    add(&stats.jobs_created, 1);
    stats.move_job(None, Some(JobStatus::Pending.key()));
    let guard = TaskGuard::enter(v3, uid);
    tokio::spawn(async move {
        drive(guard.v3.clone(), uid, 0, false).await;
        drop(guard);
    });
    uid
}

/// Counts a task working on a job (`settled` in the ground truth) for as long as it lives.
pub(crate) struct TaskGuard {
    pub v3: Arc<V3State>,
    uid: Uuid,
}

impl TaskGuard {
    pub(crate) fn enter(v3: &Arc<V3State>, uid: Uuid) -> Self {
        if let Some(job) = v3.jobs().by_uid.get_mut(&uid) {
            job.tasks += 1;
        }
        Self {
            v3: v3.clone(),
            uid,
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(job) = self.v3.jobs().by_uid.get_mut(&self.uid) {
            job.tasks = job.tasks.saturating_sub(1);
        }
    }
}

/// Drops the oldest ended jobs beyond `max_jobs` (running, pending and paused jobs stay).
fn evict(v3: &V3State, store: &mut JobStore) {
    let max = v3.max_jobs();
    let mut i = 0;
    while store.by_uid.len() > max && i < store.order.len() {
        let uid = store.order[i];
        let ended = store
            .by_uid
            .get(&uid)
            .map(|j| j.status.ended() && j.tasks == 0);
        match ended {
            Some(true) => {
                if let Some(job) = store.by_uid.remove(&uid) {
                    v3.sim.stats.v3.move_job(Some(job.status.key()), None);
                }
                store.order.remove(i);
            }
            Some(false) => i += 1,
            None => {
                store.order.remove(i);
            }
        }
    }
}

/// Applies `f` to the job if its epoch is still `epoch`; `None` when the engine was overtaken.
fn with_current<R>(
    v3: &V3State,
    uid: Uuid,
    epoch: u64,
    f: impl FnOnce(&mut Job) -> R,
) -> Option<R> {
    let mut store = v3.jobs();
    let job = store.by_uid.get_mut(&uid).filter(|j| j.epoch == epoch)?;
    Some(f(job))
}

/// Moves a job to `to`, keeping the status gauge in step.
fn set_status(v3: &V3State, job: &mut Job, to: JobStatus) {
    if job.status != to {
        v3.sim
            .stats
            .v3
            .move_job(Some(job.status.key()), Some(to.key()));
        job.status = to;
    }
}

/// Bumps the epoch: any engine of the job stops at its next step.
fn overtake(job: &mut Job) -> u64 {
    job.epoch += 1;
    job.wake.send_replace(job.epoch);
    job.epoch
}

/// `POST` retry: re-queues a pending, paused, warning or shutdown job. Failed inputs go back
/// to pending; results already produced stay. The retried run succeeds.
pub fn retry(v3: &Arc<V3State>, project: &Project, uid: Uuid) -> Result<JobView, ApiError> {
    let success = v3.runtime().behaviour.success_status;
    let (epoch, view) = {
        let mut store = v3.jobs();
        let job = store
            .by_uid
            .get_mut(&uid)
            .filter(|j| j.project.uid == project.uid)
            .ok_or_else(|| job_not_found(uid))?;
        if !job.status.retryable() {
            return Err(transition_refused(
                uid,
                job.status.wire(success),
                "retried",
                "pending, paused, warning or shutdown",
            ));
        }
        let epoch = overtake(job);
        for input in &mut job.input_states {
            if input.status == InputStatus::Failed {
                input.status = InputStatus::Pending;
                input.error = None;
            }
        }
        set_status(v3, job, JobStatus::Pending);
        job.error_message = None;
        job.end_time = None;
        job.retries += 1;
        (epoch, job.view(success))
    };
    let guard = TaskGuard::enter(v3, uid);
    tokio::spawn(async move {
        drive(guard.v3.clone(), uid, epoch, true).await;
        drop(guard);
    });
    Ok(view)
}

/// `POST` cancel: stops a running, pending, paused, warning or shutdown job.
pub fn cancel(v3: &V3State, project: &Project, uid: Uuid) -> Result<JobView, ApiError> {
    let success = v3.runtime().behaviour.success_status;
    let now = v3.sim.clock.now();
    let mut store = v3.jobs();
    let job = store
        .by_uid
        .get_mut(&uid)
        .filter(|j| j.project.uid == project.uid)
        .ok_or_else(|| job_not_found(uid))?;
    if !job.status.cancellable() {
        return Err(transition_refused(
            uid,
            job.status.wire(success),
            "cancelled",
            "running, pending, paused, warning or shutdown",
        ));
    }
    overtake(job);
    set_status(v3, job, JobStatus::Stopped);
    job.end_time = Some(now);
    Ok(job.view(success))
}

fn transition_refused(uid: Uuid, status: &'static str, verb: &str, allowed: &str) -> ApiError {
    let label = if verb == "retried" {
        "JOB_NOT_RETRYABLE"
    } else {
        "JOB_NOT_CANCELLABLE"
    };
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        label,
        format!("job {uid} is {status} and cannot be {verb}; only {allowed} jobs can"),
    )
    .scope(ErrorScope::Param)
    .param("job_uid", uid.to_string())
    .param("status", status)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Finished,
    Warning,
    Shutdown,
    Paused,
    Stopped,
}

fn pick_outcome(o: &V3OutcomesConfig, rng: &mut StdRng) -> Outcome {
    let weights = [
        (Outcome::Finished, o.finished),
        (Outcome::Warning, o.warning),
        (Outcome::Shutdown, o.shutdown),
        (Outcome::Paused, o.paused),
        (Outcome::Stopped, o.stopped),
    ];
    let total: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    let mut x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (outcome, w) in weights {
        if x < w.max(0.0) {
            return outcome;
        }
        x -= w.max(0.0);
    }
    Outcome::Finished
}

/// What the engine read from the job when it started.
struct Start {
    seq: u64,
    retries: u32,
    delay_secs: u64,
    wake: watch::Receiver<u64>,
}

/// The engine of one job run (the first one, or one after a retry).
async fn drive(v3: Arc<V3State>, uid: Uuid, epoch: u64, retried: bool) {
    let Some(mut start) = with_current(&v3, uid, epoch, |job| Start {
        seq: job.seq,
        retries: job.retries,
        delay_secs: job.delay_secs,
        wake: job.wake.subscribe(),
    }) else {
        return;
    };
    let runtime = v3.runtime();
    // The request's `delay` holds the first run only; a retry starts at once.
    let delay_ms = if retried {
        0
    } else {
        start.delay_secs.saturating_mul(1_000)
    };
    let wait = v3
        .sim
        .clock
        .real_ms(delay_ms.saturating_add(runtime.timings.start_after_ms));
    if !v3.pause(&mut start.wake, epoch, wait).await {
        return;
    }
    let now = v3.sim.clock.now();
    let Some((first_start, work)) = with_current(&v3, uid, epoch, |job| {
        set_status(&v3, job, JobStatus::Running);
        job.start_time.get_or_insert(now);
        let first_start = !job.started;
        job.started = true;
        let work: Vec<usize> = job
            .input_states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status == InputStatus::Pending)
            .map(|(i, _)| i)
            .collect();
        (first_start, work)
    }) else {
        return;
    };
    let mut rng = rng_for(
        v3.sim.config.seed,
        &[start.seq, 0x7633, u64::from(start.retries)],
    );
    if first_start {
        webhooks::send_event(&v3, uid, V3WebhookEvent::Created, Some(&mut rng), false).await;
    }

    let outcome = if retried {
        Outcome::Finished
    } else {
        pick_outcome(&runtime.outcomes, &mut rng)
    };
    let mut failing = vec![false; work.len()];
    if outcome == Outcome::Warning {
        for f in failing.iter_mut() {
            *f = rng.random_bool(runtime.outcomes.input_failure_rate);
        }
        if !failing.contains(&true) && !failing.is_empty() {
            let i = rng.random_range(0..failing.len());
            failing[i] = true;
        }
    }
    let cut = match outcome {
        Outcome::Shutdown | Outcome::Paused | Outcome::Stopped => {
            Some(rng.random_range(0..=work.len() / 2))
        }
        _ => None,
    };

    for (pos, &input) in work.iter().enumerate() {
        if cut == Some(pos) {
            break;
        }
        let interval = v3.sim.clock.real_ms(v3.runtime().timings.input_interval_ms);
        if !v3.pause(&mut start.wake, epoch, interval).await {
            return;
        }
        let produced = if failing[pos] {
            None
        } else {
            Some(results_for(&v3, uid, start.seq, start.retries, input))
        };
        if with_current(&v3, uid, epoch, |job| record_input(job, input, produced)).is_none() {
            return;
        }
    }

    let now = v3.sim.clock.now();
    let paused_sends_failed = v3.runtime().behaviour.paused_sends_failed;
    let event = with_current(&v3, uid, epoch, |job| {
        let (status, error, event) = match (outcome, cut.is_some()) {
            (Outcome::Shutdown, true) => (
                JobStatus::Shutdown,
                Some("Technical error: the automation stopped (simulated shutdown).".to_owned()),
                Some(V3WebhookEvent::Failed),
            ),
            (Outcome::Paused, true) => (
                JobStatus::Paused,
                Some(
                    "Integration error: invalid session cookie (simulated); update the account and retry the job."
                        .to_owned(),
                ),
                paused_sends_failed.then_some(V3WebhookEvent::Failed),
            ),
            (Outcome::Stopped, true) => (JobStatus::Stopped, None, None),
            _ => {
                let failed = job
                    .input_states
                    .iter()
                    .filter(|i| i.status == InputStatus::Failed)
                    .count();
                if failed == 0 {
                    (JobStatus::Finished, None, Some(V3WebhookEvent::Succeeded))
                } else {
                    let error = format!(
                        "Error while completing action: {failed} of {} inputs failed (simulated).",
                        job.inputs.len()
                    );
                    let event = if job.any_succeeded() {
                        V3WebhookEvent::Succeeded
                    } else {
                        V3WebhookEvent::Failed
                    };
                    (JobStatus::Warning, Some(error), Some(event))
                }
            }
        };
        set_status(&v3, job, status);
        job.error_message = error;
        if status != JobStatus::Paused {
            job.end_time = Some(now);
        }
        event
    });
    // The status is set before the webhook goes out, so a receiver reading the job agrees.
    if let Some(Some(event)) = event {
        webhooks::send_event(&v3, uid, event, Some(&mut rng), false).await;
    }
}

/// Generates the result rows of one succeeded input (deterministic per job, input, retry).
fn results_for(v3: &V3State, uid: Uuid, seq: u64, retries: u32, input: usize) -> Vec<Value> {
    let (workflow, input_value, unstructure) = {
        let store = v3.jobs();
        let Some(job) = store.by_uid.get(&uid) else {
            return Vec::new();
        };
        (
            job.workflow.clone(),
            job.inputs.get(input).cloned().unwrap_or(Value::Null),
            job.unstructure_meta,
        )
    };
    let meta = input_value.get("meta").cloned();
    (0..workflow.results_per_input)
        .map(|k| {
            let mut rng = rng_for(
                v3.sim.config.seed,
                &[seq, input as u64, k, u64::from(retries), 0x7633],
            );
            let generated = generate(&v3.sim.spec, &workflow.action.output_schema, &mut rng);
            let mut row = match generated {
                Value::Object(map) => map,
                other => Map::from_iter([("value".to_owned(), other)]),
            };
            // `meta` travels from the input to its rows: nested by default, or flattened
            // into the row with `unstructure_meta: true`.
            match (&meta, unstructure) {
                (Some(Value::Object(m)), true) => {
                    row.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())))
                }
                (Some(m @ Value::Object(_)), false) => {
                    row.insert("meta".to_owned(), m.clone());
                }
                _ => {}
            }
            Value::Object(row)
        })
        .collect()
}

fn record_input(job: &mut Job, input: usize, produced: Option<Vec<Value>>) {
    let start = job.results.len();
    let Some(state) = job.input_states.get_mut(input) else {
        return;
    };
    match produced {
        Some(rows) => {
            state.status = InputStatus::Succeeded;
            state.error = None;
            state.results.extend(start..start + rows.len());
            job.results
                .extend(rows.into_iter().map(|value| ResultRow { input, value }));
        }
        None => {
            state.status = InputStatus::Failed;
            state.error = Some(format!(
                "Error while completing action: input {input} could not be processed (simulated)."
            ));
        }
    }
}

/// One page of rows of `items`, `page` counted from 0.
pub fn page_of<T: Clone>(items: &[T], page: u64, size: u64) -> Vec<T> {
    let start = page.saturating_mul(size);
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    items.iter().skip(start).take(size).cloned().collect()
}
