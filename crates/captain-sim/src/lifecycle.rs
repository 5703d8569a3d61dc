//! The run engine: creates ASYNC runs (from async submissions and schedule firings) and drives
//! each through CREATED -> QUEUED -> RUNNING -> final status, producing one callback per page
//! of results per input, then one final callback per run, and recording each payload as a batch
//! of the run (the ground truth tests read). Outcomes, cut points and callback faults come from
//! a generator seeded by (seed, run sequence number), so concurrency does not change what
//! happens to a given run. Stalled runs wait, RUNNING or BLOCKED, until the test-control route
//! finishes them. Every wait and send answers `Result<(), Aborted>`, so a run task ends with `?`
//! wherever shutdown finds it.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{OutcomesConfig, ResultsConfig, RuntimeConfig};
use crate::delivery::{deliver, DeliveryCtx};
use crate::error::{ApiError, ErrorScope};
use crate::generate::{generate, rng_for};
use crate::spec::ActionSpec;
use crate::state::SimState;
use crate::stats::bump;
use crate::store::{
    Batch, BatchKind, ExecutionMode, Owner, Run, RunError, RunRequest, RunStatus, RunView,
};

/// Identity of a freshly created run.
#[derive(Debug, Clone, Copy)]
pub struct NewRun {
    pub id: u64,
    pub uid: Uuid,
    pub created_at: DateTime<Utc>,
}

/// Creates an ASYNC run in CREATED and starts driving it.
pub fn start_run(state: &Arc<SimState>, owner: Owner, request: Arc<RunRequest>) -> NewRun {
    let seq = state.next_run_seq();
    let new = NewRun {
        id: seq,
        uid: Uuid::new_v4(),
        created_at: state.clock.now(),
    };
    let runtime = state.runtime();
    let mut driver = Driver::new(state.clone(), new.uid, seq, owner, request.clone());
    // Drawn now, not in the task: a stalled run can be told to finish as soon as it exists.
    let outcome = pick_outcome(&runtime.outcomes, &mut driver.rng);
    let stall = outcome
        .stalls()
        .then(|| Arc::new(StallControl::new(request.inputs.len())));
    let run = Run {
        id: new.id,
        uid: new.uid,
        action: request.action.clone(),
        owner,
        mode: ExecutionMode::Async,
        status: RunStatus::Created,
        last_error: None,
        callback_url: request.callback.as_ref().map(|c| c.url.clone()),
        started_at: None,
        finished_at: None,
        updated_at: None,
        created_at: new.created_at,
        resume: None,
        callbacks: Vec::new(),
        outcome: Some(outcome.as_str()),
        stall: stall.clone(),
        batches: Vec::new(),
    };
    state.store.insert_run(run, state.config.limits.max_runs);
    bump(&state.stats.runs_created);
    tokio::spawn(async move {
        if let Err(aborted) = driver.run(&runtime, outcome, stall).await {
            tracing::debug!(run_uid = %new.uid, %aborted, "run task stopped early");
        }
    });
    new
}

/// Records a finished LIVE run: SUCCEEDED, or FAILED with `failure` as its `last_error`.
pub fn record_live_run(
    state: &SimState,
    owner: Owner,
    action: Arc<ActionSpec>,
    failure: Option<&ApiError>,
) {
    let now = state.clock.now();
    let seq = state.next_run_seq();
    let run = Run {
        id: seq,
        uid: Uuid::new_v4(),
        action,
        owner,
        mode: ExecutionMode::Live,
        status: if failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        },
        last_error: failure.map(|error| RunError {
            label: error.label.to_owned(),
            message: error.message.clone(),
        }),
        callback_url: None,
        started_at: Some(now),
        finished_at: Some(now),
        updated_at: Some(now),
        created_at: now,
        resume: None,
        callbacks: Vec::new(),
        outcome: None,
        stall: None,
        batches: Vec::new(),
    };
    state.store.insert_run(run, state.config.limits.max_runs);
    bump(&state.stats.runs_created);
}

/// Resumes a BLOCKED or STOPPED run (it goes back to QUEUED and continues).
pub fn resume(state: &SimState, owner: Owner, uid: Uuid) -> Result<(), ApiError> {
    let now = state.clock.now();
    let mut runs = state.store.runs();
    let run = runs
        .by_uid
        .get_mut(&uid)
        .filter(|r| r.owner.workspace_uid == owner.workspace_uid)
        .ok_or_else(|| run_not_found(uid))?;
    match (run.status, run.resume.take()) {
        (RunStatus::Blocked | RunStatus::Stopped, Some(notify)) => {
            run.status = RunStatus::Queued;
            run.updated_at = Some(now);
            notify.notify_one();
            Ok(())
        }
        (status, resume) => {
            run.resume = resume;
            Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "RUN_NOT_RESUMABLE",
                format!(
                    "run {uid} is {} and cannot be resumed; only BLOCKED or STOPPED runs can",
                    status.as_str()
                ),
            )
            .scope(ErrorScope::Param)
            .param("status", status.as_str()))
        }
    }
}

/// The 404 for an unknown (or other workspace's) run.
pub fn run_not_found(uid: Uuid) -> ApiError {
    ApiError::not_found("RUN_404_NOT_FOUND", format!("run {uid} not found"))
        .param("run_uid", uid.to_string())
}

/// The final status a stalled run is told to reach (`POST /_sim/runs/{uid}/finish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishRequest {
    /// SUCCEEDED, PARTIAL_SUCCEEDED or FAILED.
    pub status: RunStatus,
    /// Indices of the inputs that fail (PARTIAL_SUCCEEDED only; default: the last input).
    pub failed_inputs: Vec<usize>,
}

#[derive(Debug)]
enum FinishSlot {
    Open,
    Requested(FinishRequest),
    Taken,
}

/// How a stalled run is finished. Its `notify` is also the resume handle of a stalled BLOCKED
/// run, so the run's one wait sees a resume and a finish alike.
#[derive(Debug)]
pub struct StallControl {
    inputs: usize,
    slot: Mutex<FinishSlot>,
    notify: Arc<Notify>,
    /// The run reached its stall point and has not taken a finish request yet.
    stalled: AtomicBool,
}

impl StallControl {
    fn new(inputs: usize) -> Self {
        Self {
            inputs,
            slot: Mutex::new(FinishSlot::Open),
            notify: Arc::new(Notify::new()),
            stalled: AtomicBool::new(false),
        }
    }

    /// Whether the run waits at its stall point (for `/_sim/runs/{uid}/deliveries`).
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, FinishSlot> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The finish request, once (the run task takes it).
    fn take(&self) -> Option<FinishRequest> {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, FinishSlot::Taken) {
            FinishSlot::Requested(request) => Some(request),
            other => {
                *slot = other;
                None
            }
        }
    }
}

/// Tells a stalled run to finish with `status` (test control): it sends its remaining pages
/// (PARTIAL_SUCCEEDED: the failing inputs' error callbacks instead of their pages; FAILED: no
/// more pages) and its final callback. A BLOCKED one goes back to QUEUED first. Allowed once,
/// on runs whose drawn outcome stalls, also before they reach their stall point.
pub fn request_finish(
    state: &SimState,
    uid: Uuid,
    status: RunStatus,
    failed_inputs: Option<Vec<usize>>,
) -> Result<RunView, ApiError> {
    use axum::http::StatusCode;
    if !matches!(
        status,
        RunStatus::Succeeded | RunStatus::PartialSucceeded | RunStatus::Failed
    ) {
        return Err(ApiError::invalid_param(format!(
            "status: {} is not a final status (SUCCEEDED, PARTIAL_SUCCEEDED or FAILED)",
            status.as_str()
        ))
        .param("field", "status"));
    }
    if failed_inputs.is_some() && status != RunStatus::PartialSucceeded {
        return Err(ApiError::invalid_param(
            "failed_inputs: only allowed with status PARTIAL_SUCCEEDED",
        )
        .param("field", "failed_inputs"));
    }
    let now = state.clock.now();
    let mut runs = state.store.runs();
    let run = runs
        .by_uid
        .get_mut(&uid)
        .ok_or_else(|| run_not_found(uid))?;
    let Some(control) = run.stall.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "RUN_NOT_STALLED",
            format!(
                "run {uid} does not stall (outcome {}); only stalled_running and stalled_blocked runs can be finished",
                run.outcome.unwrap_or("not drawn yet")
            ),
        )
        .param("run_uid", uid.to_string()));
    };
    let failed_inputs = match (status, failed_inputs) {
        (RunStatus::PartialSucceeded, None) => vec![control.inputs.saturating_sub(1)],
        (RunStatus::PartialSucceeded, Some(mut list)) => {
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                return Err(ApiError::invalid_param(
                    "failed_inputs: PARTIAL_SUCCEEDED needs at least one failing input",
                )
                .param("field", "failed_inputs"));
            }
            if let Some(bad) = list.iter().find(|i| **i >= control.inputs) {
                return Err(ApiError::invalid_param(format!(
                    "failed_inputs: {bad} is not an input index (the run has {} inputs)",
                    control.inputs
                ))
                .param("field", "failed_inputs"));
            }
            list
        }
        _ => Vec::new(),
    };
    {
        let mut slot = control.slot();
        if !matches!(*slot, FinishSlot::Open) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "RUN_FINISH_ALREADY_REQUESTED",
                format!("run {uid} was already told to finish"),
            )
            .param("run_uid", uid.to_string()));
        }
        *slot = FinishSlot::Requested(FinishRequest {
            status,
            failed_inputs,
        });
    }
    if run.status == RunStatus::Blocked {
        // Unblocked by the platform: back in the queue, as after a resume.
        run.status = RunStatus::Queued;
        run.updated_at = Some(now);
        run.resume = None;
    }
    control.notify.notify_one();
    Ok(run.view())
}

/// Results per input and page size of an action for given parameters.
pub fn result_plan(action: &ActionSpec, parameters: &Value, results: &ResultsConfig) -> (u64, u64) {
    if !action.output_is_array {
        return (1, 1);
    }
    let total = parameters
        .get("max_results")
        .and_then(Value::as_u64)
        .or_else(|| action.max_results.and_then(|m| m.default))
        .unwrap_or(results.default_count);
    (total, page_size(action, results))
}

/// The page size used for an action (config override, spec default, config default).
pub fn page_size(action: &ActionSpec, results: &ResultsConfig) -> u64 {
    results
        .page_size
        .get(&action.name)
        .copied()
        .or(action.page_size)
        .unwrap_or(results.default_page_size)
        .max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Partial,
    Failed,
    Blocked,
    Stopped,
    /// Stays RUNNING after a seeded share of its pages until finished through `/_sim`.
    StalledRunning,
    /// Blocks after a seeded share of its pages, and again after every resume, until
    /// finished through `/_sim`.
    StalledBlocked,
}

impl Outcome {
    /// The `outcomes.*` key of the outcome.
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Partial => "partial_succeeded",
            Outcome::Failed => "failed",
            Outcome::Blocked => "blocked",
            Outcome::Stopped => "stopped",
            Outcome::StalledRunning => "stalled_running",
            Outcome::StalledBlocked => "stalled_blocked",
        }
    }

    fn stalls(self) -> bool {
        matches!(self, Outcome::StalledRunning | Outcome::StalledBlocked)
    }
}

fn pick_outcome(o: &OutcomesConfig, rng: &mut StdRng) -> Outcome {
    // New outcomes go last: with their weights at 0 every earlier draw is unchanged.
    let weights = [
        (Outcome::Succeeded, o.succeeded),
        (Outcome::Partial, o.partial_succeeded),
        (Outcome::Failed, o.failed),
        (Outcome::Blocked, o.blocked),
        (Outcome::Stopped, o.stopped),
        (Outcome::StalledRunning, o.stalled_running),
        (Outcome::StalledBlocked, o.stalled_blocked),
    ];
    let total: f64 = weights.iter().map(|(_, w)| w.max(0.0)).sum();
    let mut x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (outcome, w) in weights {
        if x < w.max(0.0) {
            return outcome;
        }
        x -= w.max(0.0);
    }
    Outcome::Succeeded
}

/// One callback to produce.
#[derive(Debug, Clone, Copy)]
enum Item {
    Page {
        input: usize,
        page: u64,
        start: u64,
        count: u64,
    },
    InputError {
        input: usize,
    },
    Final,
}

#[derive(Serialize)]
struct PayloadRun {
    run_uid: Uuid,
    batch_uid: Uuid,
    status: RunStatus,
}

/// The callback body: the spec's `onSave` schema plus root `custom_data`.
#[derive(Serialize)]
struct Payload<'a> {
    run: PayloadRun,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a Value>,
    custom_data: Option<&'a Value>,
    error: Option<Value>,
    results_count: usize,
    results: &'a [Value],
}

struct Driver {
    state: Arc<SimState>,
    uid: Uuid,
    seq: u64,
    request: Arc<RunRequest>,
    ctx: Option<DeliveryCtx>,
    rng: StdRng,
    /// Inputs as echoed in callbacks: without `custom_data` (it is at the payload root), so
    /// the payload matches the `onSave` schema even for input-less actions (`EmptyInput`).
    echoed_inputs: Vec<Value>,
}

/// Why a run task stopped before its end: every wait and send of the driver answers this, so
/// `?` ends the task wherever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Aborted {
    #[error("the simulator is shutting down")]
    Shutdown,
    #[error("the run is no longer stored")]
    RunGone,
}

/// One phase of a run: done, or aborted.
type Step = Result<(), Aborted>;

/// The final status of a run and the error its final callback carries.
type Ending = (RunStatus, Option<ApiError>);

impl Driver {
    fn new(
        state: Arc<SimState>,
        uid: Uuid,
        seq: u64,
        owner: Owner,
        request: Arc<RunRequest>,
    ) -> Self {
        let ctx = request.callback.as_ref().map(|target| DeliveryCtx {
            run_uid: uid,
            workspace_uid: owner.workspace_uid,
            target: Arc::new(target.clone()),
        });
        let echoed_inputs = request
            .inputs
            .iter()
            .map(|input| match input {
                Value::Object(map) => Value::Object(
                    map.iter()
                        .filter(|(k, _)| k.as_str() != "custom_data")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect();
        Driver {
            echoed_inputs,
            rng: rng_for(state.config.seed, &[seq, 0x5eed]),
            state,
            uid,
            seq,
            request,
            ctx,
        }
    }

    /// The whole run, once its outcome is drawn. The seeded draws happen in a fixed order
    /// (outcome, plan, cut, shuffle, then each delivery's faults), which is what makes the n-th
    /// run's fate reproducible.
    async fn run(
        &mut self,
        runtime: &RuntimeConfig,
        outcome: Outcome,
        stall: Option<Arc<StallControl>>,
    ) -> Step {
        self.queue(runtime.timings.queued_after_ms).await?;
        self.start(runtime.timings.start_after_ms).await?;
        let items = self.plan(outcome, &runtime.outcomes, &runtime.results);
        if let Some(control) = stall {
            return self.stall(outcome, items, &control, runtime).await;
        }
        match outcome {
            Outcome::Blocked | Outcome::Stopped => {
                self.block_then_resume(outcome, items, runtime).await
            }
            _ => self.complete(outcome, items, runtime).await,
        }
    }

    /// A stalled run: a seeded share of its pages (any number for a RUNNING stall, at most
    /// half for a BLOCKED one), then nothing until it is told to finish. A stalled BLOCKED run
    /// accepts resumes but blocks again (a fresh BLOCKED callback) after each.
    async fn stall(
        &mut self,
        outcome: Outcome,
        mut items: Vec<Item>,
        control: &StallControl,
        runtime: &RuntimeConfig,
    ) -> Step {
        let cut = if outcome == Outcome::StalledRunning {
            self.rng.random_range(0..=items.len())
        } else {
            self.cut(&items)
        };
        let rest = items.split_off(cut);
        self.send_pages(&items, runtime.timings.page_interval_ms)
            .await?;
        control.stalled.store(true, Ordering::Relaxed);
        let request = loop {
            if let Some(request) = control.take() {
                break request;
            }
            if outcome == Outcome::StalledBlocked {
                self.block(outcome, control.notify.clone()).await?;
                self.wait_resume(&control.notify).await?;
                // Resumed or finished: either way it was queued again and starts.
                self.start(self.state.runtime().timings.start_after_ms)
                    .await?;
            } else {
                self.wait_resume(&control.notify).await?;
            }
        };
        control.stalled.store(false, Ordering::Relaxed);
        self.finish_stalled(request, rest).await
    }

    async fn finish_stalled(&mut self, request: FinishRequest, rest: Vec<Item>) -> Step {
        let interval = self.state.runtime().timings.page_interval_ms;
        match request.status {
            RunStatus::Failed => {
                let (status, error) = self.ending(Outcome::Failed, 0);
                self.finish(status, error.as_ref()).await
            }
            RunStatus::PartialSucceeded => {
                let items = fail_inputs(rest, &request.failed_inputs);
                self.send_pages(&items, interval).await?;
                let (status, error) = self.ending(Outcome::Partial, request.failed_inputs.len());
                self.finish(status, error.as_ref()).await
            }
            _ => {
                self.send_pages(&rest, interval).await?;
                self.finish(RunStatus::Succeeded, None).await
            }
        }
    }

    /// CREATED -> QUEUED.
    async fn queue(&mut self, after_ms: u64) -> Step {
        self.pause_ms(after_ms).await?;
        self.set_status(RunStatus::Queued, None)
    }

    /// QUEUED -> RUNNING (at the start, and after a resume).
    async fn start(&mut self, after_ms: u64) -> Step {
        self.pause_ms(after_ms).await?;
        self.set_status(RunStatus::Running, None)
    }

    /// A seeded cut point: how many items go out before a failure or a block.
    fn cut(&mut self, items: &[Item]) -> usize {
        self.rng.random_range(0..=items.len() / 2)
    }

    /// Sends pages (and the error callbacks of failing inputs), then the final callback;
    /// shuffled when the out-of-order fault hits.
    async fn complete(
        &mut self,
        outcome: Outcome,
        mut items: Vec<Item>,
        runtime: &RuntimeConfig,
    ) -> Step {
        let failed_inputs = items
            .iter()
            .filter(|i| matches!(i, Item::InputError { .. }))
            .count();
        if outcome == Outcome::Failed {
            let cut = self.cut(&items);
            items.truncate(cut);
        }
        let (status, error) = self.ending(outcome, failed_inputs);
        let interval = runtime.timings.page_interval_ms;
        let faults = &runtime.faults;
        let shuffled = faults.callback_out_of_order_rate > 0.0
            && self.rng.random_bool(faults.callback_out_of_order_rate);
        if shuffled {
            // The final callback joins the shuffle: it may arrive before pages.
            items.push(Item::Final);
            items.shuffle(&mut self.rng);
            self.mark_final(status, error.as_ref())?;
            for item in items {
                self.send_item(item, interval, status, error.as_ref())
                    .await?;
            }
            return Ok(());
        }
        self.send_pages(&items, interval).await?;
        self.finish(status, error.as_ref()).await
    }

    /// The final status and error of a run that completes on its own.
    fn ending(&self, outcome: Outcome, failed_inputs: usize) -> Ending {
        let uid = self.uid;
        match outcome {
            Outcome::Failed => (
                RunStatus::Failed,
                Some(
                    ApiError::new(
                        axum::http::StatusCode::FAILED_DEPENDENCY,
                        "NO_RESULT",
                        format!("run {uid} failed (simulated outcome)"),
                    )
                    .scope(ErrorScope::Integ),
                ),
            ),
            Outcome::Partial => (
                RunStatus::PartialSucceeded,
                Some(
                    ApiError::new(
                        axum::http::StatusCode::FAILED_DEPENDENCY,
                        "PARTIAL_FAILURE",
                        format!(
                            "{failed_inputs} of {} inputs failed",
                            self.request.inputs.len()
                        ),
                    )
                    .scope(ErrorScope::Input),
                ),
            ),
            _ => (RunStatus::Succeeded, None),
        }
    }

    /// Sends a cut of the pages, blocks (or stops) with a callback saying so, waits for a
    /// resume, then sends the rest and succeeds.
    async fn block_then_resume(
        &mut self,
        outcome: Outcome,
        mut items: Vec<Item>,
        runtime: &RuntimeConfig,
    ) -> Step {
        let cut = self.cut(&items);
        let rest = items.split_off(cut);
        self.send_pages(&items, runtime.timings.page_interval_ms)
            .await?;
        let notify = Arc::new(Notify::new());
        self.block(outcome, notify.clone()).await?;
        self.wait_resume(&notify).await?;
        self.start(self.state.runtime().timings.start_after_ms)
            .await?;
        self.send_pages(&rest, self.state.runtime().timings.page_interval_ms)
            .await?;
        self.finish(RunStatus::Succeeded, None).await
    }

    /// Sets BLOCKED or STOPPED with its `last_error` and the resume handle `notify`, then
    /// sends the callback that says so.
    async fn block(&mut self, outcome: Outcome, notify: Arc<Notify>) -> Step {
        let (status, kind, label) = if outcome == Outcome::Stopped {
            (RunStatus::Stopped, BatchKind::Stopped, "STOPPED")
        } else {
            (RunStatus::Blocked, BatchKind::Blocked, "BLOCKED")
        };
        let hint = if outcome.stalls() {
            ""
        } else {
            "; resume it to continue"
        };
        let error = ApiError::new(
            axum::http::StatusCode::FAILED_DEPENDENCY,
            label,
            format!(
                "run {} was {} by the simulator{hint}",
                self.uid,
                label.to_lowercase()
            ),
        )
        .scope(ErrorScope::Integ);
        self.set_status(status, Some((&error, Some(notify))))?;
        self.send(kind, status, None, Some(error.body_json()), &[])
            .await
    }

    fn plan(
        &mut self,
        outcome: Outcome,
        outcomes: &OutcomesConfig,
        results: &ResultsConfig,
    ) -> Vec<Item> {
        let (total, size) = result_plan(&self.request.action, &self.request.parameters, results);
        let n = self.request.inputs.len();
        let mut failing = vec![false; n];
        if outcome == Outcome::Partial {
            for f in failing.iter_mut() {
                *f = self.rng.random_bool(outcomes.input_failure_rate);
            }
            if !failing.contains(&true) {
                let i = self.rng.random_range(0..n.max(1));
                if let Some(f) = failing.get_mut(i) {
                    *f = true;
                }
            }
        }
        let mut items = Vec::new();
        for (input, fails) in failing.into_iter().enumerate() {
            if fails {
                items.push(Item::InputError { input });
                continue;
            }
            // An input with no results still gets one (empty) page, so every input is seen.
            let pages = total.div_ceil(size).max(1);
            for page in 0..pages {
                let start = page * size;
                items.push(Item::Page {
                    input,
                    page,
                    start,
                    count: size.min(total.saturating_sub(start)),
                });
            }
        }
        items
    }

    /// Pages per input (and input errors), in order, each after its production time.
    async fn send_pages(&mut self, items: &[Item], interval_ms: u64) -> Step {
        for item in items {
            self.send_item(*item, interval_ms, RunStatus::Running, None)
                .await?;
        }
        Ok(())
    }

    async fn send_item(
        &mut self,
        item: Item,
        interval_ms: u64,
        final_status: RunStatus,
        final_error: Option<&ApiError>,
    ) -> Step {
        match item {
            Item::Page {
                input,
                page,
                start,
                count,
            } => {
                self.pause_ms(interval_ms).await?;
                let spec = &self.state.spec;
                let action = &self.request.action;
                let results: Vec<Value> = (start..start + count)
                    .map(|i| {
                        let mut rng =
                            rng_for(self.state.config.seed, &[self.seq, input as u64, i, page]);
                        generate(spec, &action.output_schema, &mut rng)
                    })
                    .collect();
                self.send(
                    BatchKind::Page,
                    RunStatus::Running,
                    Some(input),
                    None,
                    &results,
                )
                .await
            }
            Item::InputError { input } => {
                self.pause_ms(interval_ms).await?;
                let error = ApiError::new(
                    axum::http::StatusCode::FAILED_DEPENDENCY,
                    "NO_RESULT",
                    format!("input {input} could not be processed (simulated failure)"),
                )
                .scope(ErrorScope::Input)
                .param("input_index", input.to_string());
                self.send(
                    BatchKind::InputError,
                    RunStatus::Running,
                    Some(input),
                    Some(error.body_json()),
                    &[],
                )
                .await
            }
            Item::Final => {
                self.send(
                    BatchKind::Final,
                    final_status,
                    None,
                    final_error.map(ApiError::body_json),
                    &[],
                )
                .await
            }
        }
    }

    /// Sleeps `sim_ms` simulated milliseconds.
    async fn pause_ms(&self, sim_ms: u64) -> Step {
        if self.state.sleep(self.state.clock.real_ms(sim_ms)).await {
            Ok(())
        } else {
            Err(Aborted::Shutdown)
        }
    }

    /// Waits for a resume.
    async fn wait_resume(&self, notify: &Notify) -> Step {
        if self.state.wait(notify).await {
            Ok(())
        } else {
            Err(Aborted::Shutdown)
        }
    }

    /// Generates one callback payload, records it as a batch of the run, and delivers it.
    async fn send(
        &mut self,
        kind: BatchKind,
        status: RunStatus,
        input: Option<usize>,
        error: Option<Value>,
        results: &[Value],
    ) -> Step {
        let Some(ctx) = self.ctx.clone() else {
            return self.alive();
        };
        let input_value = input.and_then(|i| self.echoed_inputs.get(i));
        let custom_data = input
            .and_then(|i| self.request.inputs.get(i))
            .and_then(|v| v.get("custom_data"));
        let batch_uid = Uuid::new_v4();
        let payload = Payload {
            run: PayloadRun {
                run_uid: self.uid,
                batch_uid,
                status,
            },
            input: input_value,
            custom_data,
            error,
            results_count: results.len(),
            results,
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                // Not reachable with JSON values; the run cannot go on without its payload.
                tracing::error!(%error, "cannot serialize callback payload");
                return Err(Aborted::RunGone);
            }
        };
        let batch = Batch {
            batch_uid,
            kind,
            run_status: status,
            input_index: input,
            results_count: results.len(),
            delivered: false,
        };
        let batch_index = self
            .state
            .store
            .with_run(self.uid, |run| {
                run.batches.push(batch);
                run.batches.len() - 1
            })
            .ok_or(Aborted::RunGone)?;
        deliver(
            &self.state,
            &ctx,
            batch_uid,
            batch_index,
            body,
            &mut self.rng,
        )
        .await;
        self.alive()
    }

    fn alive(&self) -> Step {
        if self.state.is_shutting_down() {
            Err(Aborted::Shutdown)
        } else {
            Ok(())
        }
    }

    fn set_status(
        &self,
        status: RunStatus,
        blocked: Option<(&ApiError, Option<Arc<Notify>>)>,
    ) -> Step {
        let now = self.state.clock.now();
        self.state
            .store
            .with_run(self.uid, |run| {
                run.status = status;
                run.updated_at = Some(now);
                if status == RunStatus::Running && run.started_at.is_none() {
                    run.started_at = Some(now);
                }
                if let Some((error, notify)) = blocked {
                    run.last_error = Some(RunError {
                        label: error.label.to_owned(),
                        message: error.message.clone(),
                    });
                    run.resume = notify;
                }
            })
            .ok_or(Aborted::RunGone)
    }

    fn mark_final(&self, status: RunStatus, error: Option<&ApiError>) -> Step {
        let now = self.state.clock.now();
        self.state
            .store
            .with_run(self.uid, |run| {
                run.status = status;
                run.updated_at = Some(now);
                run.finished_at = Some(now);
                if let Some(error) = error {
                    run.last_error = Some(RunError {
                        label: error.label.to_owned(),
                        message: error.message.clone(),
                    });
                }
            })
            .ok_or(Aborted::RunGone)
    }

    /// Sets the final status, then sends the final callback (so a receiver reading the run on
    /// receipt of the final callback sees the same status).
    async fn finish(&mut self, status: RunStatus, error: Option<&ApiError>) -> Step {
        self.mark_final(status, error)?;
        self.send(
            BatchKind::Final,
            status,
            None,
            error.map(ApiError::body_json),
            &[],
        )
        .await
    }
}

/// The remaining items of a stalled run finishing PARTIAL_SUCCEEDED: a failing input's pages
/// give way to one error callback (where its first page would have gone, or at the end when
/// all its pages were already out).
fn fail_inputs(rest: Vec<Item>, failed: &[usize]) -> Vec<Item> {
    let mut errored = Vec::new();
    let mut items = Vec::with_capacity(rest.len() + failed.len());
    for item in rest {
        match item {
            Item::Page { input, .. } if failed.contains(&input) => {
                if !errored.contains(&input) {
                    errored.push(input);
                    items.push(Item::InputError { input });
                }
            }
            other => items.push(other),
        }
    }
    items.extend(
        failed
            .iter()
            .filter(|input| !errored.contains(input))
            .map(|&input| Item::InputError { input }),
    );
    items
}
