//! In-memory records of runs, callback deliveries and schedules, their wire views (exactly the
//! spec's response shapes), and the bounded retention of runs with their stored payloads.
//! Locks are short and never held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::format_ts;
use crate::lifecycle::StallControl;
use crate::spec::ActionSpec;

/// Run statuses of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Created,
    Invalid,
    Queued,
    Scheduled,
    Blocked,
    Stopped,
    Running,
    Failed,
    PartialSucceeded,
    Succeeded,
}

impl RunStatus {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Created => "CREATED",
            RunStatus::Invalid => "INVALID",
            RunStatus::Queued => "QUEUED",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Blocked => "BLOCKED",
            RunStatus::Stopped => "STOPPED",
            RunStatus::Running => "RUNNING",
            RunStatus::Failed => "FAILED",
            RunStatus::PartialSucceeded => "PARTIAL_SUCCEEDED",
            RunStatus::Succeeded => "SUCCEEDED",
        }
    }

    /// Finished for good (eligible for eviction).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Failed
                | RunStatus::PartialSucceeded
                | RunStatus::Succeeded
                | RunStatus::Invalid
        )
    }
}

/// `LIVE` or `ASYNC` (scheduled firings are `ASYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExecutionMode {
    Live,
    Async,
}

/// Callback record statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CallbackStatus {
    Pending,
    Running,
    Failed,
    Success,
}

/// Schedule statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ScheduleStatus {
    Active,
    Paused,
    Cancelled,
    Completed,
}

impl ScheduleStatus {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleStatus::Active => "ACTIVE",
            ScheduleStatus::Paused => "PAUSED",
            ScheduleStatus::Cancelled => "CANCELLED",
            ScheduleStatus::Completed => "COMPLETED",
        }
    }
}

/// Where and how callbacks of a run are sent.
#[derive(Debug, Clone)]
pub struct CallbackTarget {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// What a run works on: shared by a schedule and each of its firings.
#[derive(Debug)]
pub struct RunRequest {
    pub action: Arc<ActionSpec>,
    pub inputs: Vec<Value>,
    pub parameters: Value,
    pub callback: Option<CallbackTarget>,
}

/// The owner of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub workspace_uid: Uuid,
    pub user_uid: Uuid,
}

/// `last_error` of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunError {
    pub label: String,
    pub message: String,
}

/// One run.
#[derive(Debug)]
pub struct Run {
    pub id: u64,
    pub uid: Uuid,
    pub action: Arc<ActionSpec>,
    pub owner: Owner,
    pub mode: ExecutionMode,
    pub status: RunStatus,
    pub last_error: Option<RunError>,
    pub callback_url: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Present while BLOCKED/STOPPED: resuming notifies the waiting run task.
    pub resume: Option<Arc<Notify>>,
    pub callbacks: Vec<Uuid>,
    /// The outcome drawn for the run (`outcomes.*` key), once drawn; `None` for live runs.
    pub outcome: Option<&'static str>,
    /// Present for runs whose outcome stalls: `POST /_sim/runs/{uid}/finish` goes through it.
    pub stall: Option<Arc<StallControl>>,
    /// Every callback payload the run generated, in order: the ground truth of
    /// `GET /_sim/runs/{uid}/deliveries`. A record's `batch_index` points in here.
    pub batches: Vec<Batch>,
}

/// What a callback payload was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// A page of results of one input.
    Page,
    /// The error callback of a failing input (no results).
    InputError,
    /// The run's final callback.
    Final,
    /// The callback announcing a BLOCKED run.
    Blocked,
    /// The callback announcing a STOPPED run.
    Stopped,
}

/// One callback payload a run generated (whatever became of its deliveries).
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    pub batch_uid: Uuid,
    pub kind: BatchKind,
    /// `run.status` in the payload.
    pub run_status: RunStatus,
    /// Index of the input it belongs to (pages and input errors).
    pub input_index: Option<usize>,
    pub results_count: usize,
    /// Whether any delivery of it (original, automatic retry, duplicate or replay) was
    /// answered 2xx by the receiver.
    pub delivered: bool,
}

/// The spec's run object (`additionalProperties: false`).
#[derive(Debug, Serialize)]
pub struct RunView {
    pub id: u64,
    pub uid: Uuid,
    pub action_id: u64,
    pub action_name: String,
    pub retry_count: u32,
    pub user_uid: Uuid,
    pub workspace_uid: Uuid,
    pub execution_mode: ExecutionMode,
    pub last_error: Option<RunError>,
    pub callback: Option<CallbackUrlView>,
    pub status: RunStatus,
    pub postponed_until: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub synced_at: Option<String>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// `callback` of a run object.
#[derive(Debug, Serialize)]
pub struct CallbackUrlView {
    pub url: String,
}

impl Run {
    /// The wire view.
    pub fn view(&self) -> RunView {
        RunView {
            id: self.id,
            uid: self.uid,
            action_id: self.action.id,
            action_name: self.action.name.clone(),
            retry_count: 0,
            user_uid: self.owner.user_uid,
            workspace_uid: self.owner.workspace_uid,
            execution_mode: self.mode,
            last_error: self.last_error.clone(),
            callback: self
                .callback_url
                .as_ref()
                .map(|url| CallbackUrlView { url: url.clone() }),
            status: self.status,
            postponed_until: None,
            started_at: self.started_at.map(format_ts),
            finished_at: self.finished_at.map(format_ts),
            synced_at: None,
            created_at: format_ts(self.created_at),
            updated_at: self.updated_at.map(format_ts),
        }
    }
}

/// One callback delivery (an original, a duplicate, or a replay).
#[derive(Debug)]
pub struct CallbackRecord {
    pub seq: u64,
    pub uid: Uuid,
    pub parent_uid: Option<Uuid>,
    pub retry_count: u32,
    pub created_at: DateTime<Utc>,
    pub status: CallbackStatus,
    pub target: Arc<CallbackTarget>,
    pub http_status: Option<u16>,
    pub batch_uid: Uuid,
    pub run_uid: Uuid,
    pub workspace_uid: Uuid,
    /// The exact bytes sent, so a replay re-sends the same payload.
    pub payload: Bytes,
    /// Replays made of this record (only originals may be replayed).
    pub replays: u32,
    /// Position of its payload in the run's `batches`.
    pub batch_index: usize,
    pub origin: RecordOrigin,
    /// POSTs made (injected receiver failures included); 0 for a dropped delivery.
    pub attempts: u32,
    /// The drop fault hit: nothing was sent.
    pub dropped: bool,
}

/// Why a callback record exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOrigin {
    /// The delivery of a freshly generated payload.
    Original,
    /// The duplicate fault: the same payload sent again after a success.
    Duplicate,
    /// `POST /runs/callbacks/{uid}/replay`.
    Replay,
}

/// The spec's callback record. `http_status` is omitted (not null) when no HTTP answer was
/// received: the spec types it as a non-nullable integer.
#[derive(Debug, Serialize)]
pub struct CallbackView {
    pub uid: Uuid,
    pub parent_uid: Option<Uuid>,
    pub retry_count: u32,
    pub created_at: String,
    pub status: CallbackStatus,
    pub callback_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub batch_uid: Uuid,
    pub run_uid: Uuid,
    pub workspace_uid: Uuid,
}

impl CallbackRecord {
    /// The wire view.
    pub fn view(&self) -> CallbackView {
        CallbackView {
            uid: self.uid,
            parent_uid: self.parent_uid,
            retry_count: self.retry_count,
            created_at: format_ts(self.created_at),
            status: self.status,
            callback_url: self.target.url.clone(),
            http_status: self.http_status,
            batch_uid: self.batch_uid,
            run_uid: self.run_uid,
            workspace_uid: self.workspace_uid,
        }
    }
}

/// One schedule.
#[derive(Debug)]
pub struct Schedule {
    pub seq: u64,
    pub uid: Uuid,
    pub owner: Owner,
    pub request: Arc<RunRequest>,
    pub status: ScheduleStatus,
    pub cron: Option<(String, croner::Cron)>,
    pub timezone: Tz,
    pub timezone_given: bool,
    pub next_execution_at: Option<DateTime<Utc>>,
    pub last_executed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
    pub firings: u64,
}

/// The spec's schedule object.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub uid: Uuid,
    pub action_id: u64,
    pub action_name: String,
    pub user_uid: Uuid,
    pub workspace_uid: Uuid,
    pub status: ScheduleStatus,
    pub postponed_until: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub next_execution_at: Option<String>,
    pub last_executed_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// The spec's `ActionScheduleResponse`.
#[derive(Debug, Serialize)]
pub struct ScheduleCreatedView {
    pub schedule_uid: Uuid,
    pub status: ScheduleStatus,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub next_execution_at: Option<String>,
    pub created_at: String,
}

impl Schedule {
    /// The wire view.
    pub fn view(&self) -> ScheduleView {
        ScheduleView {
            uid: self.uid,
            action_id: self.request.action.id,
            action_name: self.request.action.name.clone(),
            user_uid: self.owner.user_uid,
            workspace_uid: self.owner.workspace_uid,
            status: self.status,
            postponed_until: None,
            cron: self.cron.as_ref().map(|(text, _)| text.clone()),
            timezone: Some(self.timezone.name().to_owned()),
            next_execution_at: self.next_execution_at.map(format_ts),
            last_executed_at: self.last_executed_at.map(format_ts),
            created_at: Some(format_ts(self.created_at)),
            updated_at: self.updated_at.map(format_ts),
        }
    }

    /// The creation answer.
    pub fn created_view(&self) -> ScheduleCreatedView {
        ScheduleCreatedView {
            schedule_uid: self.uid,
            status: self.status,
            cron: self.cron.as_ref().map(|(text, _)| text.clone()),
            timezone: Some(self.timezone.name().to_owned()),
            next_execution_at: self.next_execution_at.map(format_ts),
            created_at: format_ts(self.created_at),
        }
    }
}

/// Runs in creation order plus an index.
#[derive(Debug, Default)]
pub struct Runs {
    pub by_uid: HashMap<Uuid, Run>,
    order: VecDeque<Uuid>,
}

/// All records. Three independent locks; code never holds two at once.
#[derive(Debug, Default)]
pub struct Store {
    runs: Mutex<Runs>,
    callbacks: Mutex<HashMap<Uuid, CallbackRecord>>,
    schedules: Mutex<HashMap<Uuid, Schedule>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    pub fn runs(&self) -> MutexGuard<'_, Runs> {
        lock(&self.runs)
    }

    pub fn callbacks(&self) -> MutexGuard<'_, HashMap<Uuid, CallbackRecord>> {
        lock(&self.callbacks)
    }

    pub fn schedules(&self) -> MutexGuard<'_, HashMap<Uuid, Schedule>> {
        lock(&self.schedules)
    }

    /// Inserts a run, evicting the oldest finished runs (and their callbacks) beyond `max_runs`.
    pub fn insert_run(&self, run: Run, max_runs: usize) {
        let mut evicted_callbacks = Vec::new();
        {
            let mut runs = self.runs();
            runs.order.push_back(run.uid);
            runs.by_uid.insert(run.uid, run);
            let mut budget = runs.order.len();
            while runs.by_uid.len() > max_runs && budget > 0 {
                budget -= 1;
                let Some(oldest) = runs.order.pop_front() else {
                    break;
                };
                let finished = runs
                    .by_uid
                    .get(&oldest)
                    .is_some_and(|r| r.status.is_final());
                if finished {
                    if let Some(r) = runs.by_uid.remove(&oldest) {
                        evicted_callbacks.extend(r.callbacks);
                    }
                } else {
                    runs.order.push_back(oldest);
                }
            }
        }
        if !evicted_callbacks.is_empty() {
            let mut callbacks = self.callbacks();
            for uid in evicted_callbacks {
                callbacks.remove(&uid);
            }
        }
    }

    /// Applies `f` to a run if it exists.
    pub fn with_run<R>(&self, uid: Uuid, f: impl FnOnce(&mut Run) -> R) -> Option<R> {
        self.runs().by_uid.get_mut(&uid).map(f)
    }
}
