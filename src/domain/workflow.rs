//! Decisions for v3 workflow jobs (`mode: "workflow"`): what a v3 webhook does to a request's
//! state, how a v3 job status maps onto the bridge's [`RunStatus`], and what a job's fetched
//! outcome (status + result rows) publishes. A job is one run of its chunk: `run_uid` is the
//! v3 `job_uid`. Pure functions, like [`super::decide`]; the owner applies them.

use super::decide::{Effects, RequestInfo};
use super::records::{RunState, StatusError, StatusSource};
use super::status::{transition, RunStatus, Transition};
use crate::captain::v3_wire::{V3JobStatus, V3WebhookKind};
use chrono::{DateTime, Utc};

/// The `batch_uid` of every result row of a v3 job: rows are numbered across the job's
/// result pages, so `result_id` is `{job_uid}:v3-results:{index}`.
pub const V3_RESULTS_BATCH: &str = "v3-results";

/// What the owner does with a v3 webhook for one of its requests.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookPlan {
    /// The request has no run with this job uid (a second job of a retried launch, or a job
    /// of another request): nothing is published, the metric counts it.
    UnknownJob,
    /// The run already reached a final status: a duplicate or a replay; nothing published.
    AlreadyFinal,
    /// Applied in place (Created → RUNNING), possibly with nothing to publish (a duplicate).
    Applied(Box<Effects>),
    /// The job's status and results must be read from the API (Succeeded, Failed, or a
    /// webhook whose message is not recognized); `published` rows were published before.
    Fetch { published: u64 },
}

/// The run of `chunk` in `state` whose uid is `job_uid`, if the request launched that job.
fn known_job(state: &RunState, chunk: u32, job_uid: &str) -> bool {
    state
        .chunks
        .iter()
        .find(|c| c.index == chunk)
        .is_some_and(|c| c.run_uid.as_deref() == Some(job_uid))
}

/// Decides what a webhook of kind `kind` for job `job_uid` (chunk `chunk` of the request) does.
/// A Created webhook moves the run to RUNNING (raw status `running`) here; the others ask for a
/// fetch unless the run is already final.
pub fn plan_webhook(
    state: &mut RunState,
    chunk: u32,
    job_uid: &str,
    kind: V3WebhookKind,
    now: DateTime<Utc>,
) -> WebhookPlan {
    if !known_job(state, chunk, job_uid) {
        return WebhookPlan::UnknownJob;
    }
    let info = info_of(state);
    let Some(run) = state
        .chunks
        .iter_mut()
        .find(|c| c.index == chunk)
        .and_then(|c| c.runs.get_mut(job_uid))
    else {
        return WebhookPlan::UnknownJob;
    };
    run.last_seen = Some(now);
    if run.status.is_some_and(RunStatus::is_terminal) {
        return WebhookPlan::AlreadyFinal;
    }
    match kind {
        V3WebhookKind::Created => {
            let effects = move_run(
                state,
                &info,
                Move {
                    chunk,
                    job_uid,
                    next: RunStatus::Running,
                    raw: "running",
                    error: None,
                    source: StatusSource::Webhook,
                },
                now,
            );
            WebhookPlan::Applied(Box::new(effects))
        }
        V3WebhookKind::Succeeded | V3WebhookKind::Failed | V3WebhookKind::Unknown => {
            WebhookPlan::Fetch {
                published: run.results,
            }
        }
    }
}

/// The bridge's status for a v3 job read after a webhook of kind `kind`, holding `rows` result
/// rows in all:
///
/// | v3 status | bridge status |
/// |---|---|
/// | `pending` | QUEUED |
/// | `running` | RUNNING |
/// | `finished`, `completed` | SUCCEEDED |
/// | `warning` with at least one result row | PARTIAL_SUCCEEDED |
/// | `warning` without results, `shutdown` | FAILED |
/// | `stopped` | STOPPED |
/// | `paused` | BLOCKED |
///
/// A job still `pending`/`running` (or in a status this bridge does not know) when a Succeeded
/// or Failed webhook came is taken at the webhook's word (SUCCEEDED or FAILED); after any
/// other webhook it stays QUEUED/RUNNING (RUNNING for a status this bridge does not know).
pub fn v3_run_status(status: &V3JobStatus, rows: u64, kind: V3WebhookKind) -> RunStatus {
    let mapped = status.run_status(rows > 0);
    match (mapped, kind) {
        (Some(RunStatus::Queued | RunStatus::Running) | None, V3WebhookKind::Succeeded) => {
            RunStatus::Succeeded
        }
        (Some(RunStatus::Queued | RunStatus::Running) | None, V3WebhookKind::Failed) => {
            RunStatus::Failed
        }
        (Some(status), _) => status,
        (None, _) => RunStatus::Running,
    }
}

/// A job's outcome as fetched by the owner's job: its raw status, its error message, and how
/// many result rows it holds in all.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome<'a> {
    pub chunk: u32,
    pub job_uid: &'a str,
    pub raw_status: &'a str,
    pub status: RunStatus,
    pub error: Option<&'a str>,
    /// Rows the job holds now (the first `published` of them were published before).
    pub rows: u64,
    /// `webhook` after a webhook, `poll` when the reconciler polled a silent job.
    pub source: StatusSource,
}

/// What a fetched outcome publishes: result rows from `first_new` (rows before it were
/// published by an earlier outcome of the same job) and the status transition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutcomeEffects {
    /// Index of the first row to publish; rows up to `rows` after it are new.
    pub first_new: u64,
    pub effects: Effects,
}

/// Records a fetched job outcome in `state`: the rows not published yet, then the status (with
/// the raw v3 status kept in `provider_status`, and the job's error when it did not succeed).
/// A replay (the run already final, or the same status again with no new rows) publishes
/// nothing.
pub fn apply_outcome(
    state: &mut RunState,
    outcome: &JobOutcome<'_>,
    now: DateTime<Utc>,
) -> OutcomeEffects {
    if !known_job(state, outcome.chunk, outcome.job_uid) {
        return OutcomeEffects::default();
    }
    let info = info_of(state);
    let Some(run) = state
        .chunks
        .iter_mut()
        .find(|c| c.index == outcome.chunk)
        .and_then(|c| c.runs.get_mut(outcome.job_uid))
    else {
        return OutcomeEffects::default();
    };
    if run.status.is_some_and(RunStatus::is_terminal) {
        return OutcomeEffects {
            first_new: outcome.rows,
            effects: Effects::default(),
        };
    }
    let first_new = run.results.min(outcome.rows);
    run.results = run.results.max(outcome.rows);
    let error = match outcome.status {
        RunStatus::Succeeded | RunStatus::Running | RunStatus::Queued => None,
        _ => outcome.error.map(|message| StatusError {
            label: Some(format!("V3_{}", outcome.raw_status.to_ascii_uppercase())),
            scope: Some("job".into()),
            message: message.to_owned(),
            http_status: None,
        }),
    };
    let effects = move_run(
        state,
        &info,
        Move {
            chunk: outcome.chunk,
            job_uid: outcome.job_uid,
            next: outcome.status,
            raw: outcome.raw_status,
            error,
            source: outcome.source,
        },
        now,
    );
    OutcomeEffects { first_new, effects }
}

fn info_of(state: &RunState) -> RequestInfo {
    RequestInfo {
        request_id: state.request_id.clone(),
        action: state.action.clone(),
        mode: state.mode,
        metadata: state.metadata.clone(),
    }
}

/// A status change of one job.
struct Move<'a> {
    chunk: u32,
    job_uid: &'a str,
    next: RunStatus,
    /// The v3 status, kept in the event's `provider_status`.
    raw: &'a str,
    error: Option<StatusError>,
    source: StatusSource,
}

/// Moves the run to `m.next` when that is a forward transition.
fn move_run(state: &mut RunState, info: &RequestInfo, m: Move<'_>, now: DateTime<Utc>) -> Effects {
    let Move {
        chunk,
        job_uid,
        next,
        raw,
        error,
        source,
    } = m;
    state.updated_at = now;
    let Some(run) = state
        .chunks
        .iter_mut()
        .find(|c| c.index == chunk)
        .and_then(|c| c.runs.get_mut(job_uid))
    else {
        return Effects::default();
    };
    let previous = run.status;
    if transition(previous, next) != Transition::Publish {
        return Effects::default();
    }
    run.status = Some(next);
    run.first_seen.get_or_insert(now);
    let mut event = info.event(chunk, next, source, now);
    event.run_uid = Some(job_uid.to_owned());
    event.previous_status = previous;
    event.error = error;
    event.provider_status = Some(raw.to_owned());
    let open_runs = match (previous, next.is_terminal()) {
        (None, false) => 1,
        (Some(p), true) if !p.is_terminal() => -1,
        _ => 0,
    };
    Effects {
        status: Some(event),
        open_runs,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::decide::{apply_submission, Submission};
    use crate::domain::request::Mode;
    use std::collections::BTreeMap;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    /// A workflow request whose chunk 0 launched job `job-1` (CREATED published).
    fn launched() -> RunState {
        let info = RequestInfo {
            request_id: "r".into(),
            action: "wf".into(),
            mode: Mode::Workflow,
            metadata: BTreeMap::new(),
        };
        let mut state = RunState::new("r", "wf", Mode::Workflow, BTreeMap::new(), 1);
        apply_submission(
            &mut state,
            &info,
            0,
            Submission::Run {
                run_uid: "job-1".into(),
            },
            now(),
        );
        state
    }

    #[test]
    fn every_v3_status_maps_onto_the_bridge_vocabulary() {
        use V3JobStatus as S;
        use V3WebhookKind as K;
        let cases = [
            (S::Pending, 0, K::Unknown, RunStatus::Queued),
            (S::Running, 0, K::Created, RunStatus::Running),
            (S::Finished, 3, K::Succeeded, RunStatus::Succeeded),
            (S::Completed, 0, K::Succeeded, RunStatus::Succeeded),
            (S::Warning, 2, K::Succeeded, RunStatus::PartialSucceeded),
            (S::Warning, 0, K::Failed, RunStatus::Failed),
            (S::Shutdown, 1, K::Failed, RunStatus::Failed),
            (S::Stopped, 0, K::Unknown, RunStatus::Stopped),
            (S::Paused, 1, K::Failed, RunStatus::Blocked),
            (S::Running, 4, K::Succeeded, RunStatus::Succeeded),
            (S::Pending, 0, K::Failed, RunStatus::Failed),
            (
                S::Other("archived".into()),
                0,
                K::Succeeded,
                RunStatus::Succeeded,
            ),
            (
                S::Other("archived".into()),
                0,
                K::Unknown,
                RunStatus::Running,
            ),
        ];
        for (status, rows, kind, expected) in cases {
            assert_eq!(
                v3_run_status(&status, rows, kind),
                expected,
                "{status} with {rows} rows after {kind:?}"
            );
        }
    }

    #[test]
    fn created_moves_the_job_to_running_once_with_the_raw_status() {
        let mut s = launched();
        let WebhookPlan::Applied(first) =
            plan_webhook(&mut s, 0, "job-1", V3WebhookKind::Created, now())
        else {
            panic!("created is applied in place")
        };
        let event = first.status.unwrap();
        assert_eq!(
            (event.status, event.previous_status, event.provider_status),
            (
                RunStatus::Running,
                Some(RunStatus::Created),
                Some("running".into())
            )
        );
        let again = plan_webhook(&mut s, 0, "job-1", V3WebhookKind::Created, now());
        assert_eq!(again, WebhookPlan::Applied(Box::default()));
    }

    #[test]
    fn a_webhook_for_a_job_the_request_did_not_launch_is_unknown() {
        let mut s = launched();
        for (chunk, job) in [(0, "job-2"), (1, "job-1")] {
            assert_eq!(
                plan_webhook(&mut s, chunk, job, V3WebhookKind::Succeeded, now()),
                WebhookPlan::UnknownJob
            );
        }
    }

    #[test]
    fn an_ended_job_publishes_its_rows_then_its_final_status_once() {
        let mut s = launched();
        assert_eq!(
            plan_webhook(&mut s, 0, "job-1", V3WebhookKind::Succeeded, now()),
            WebhookPlan::Fetch { published: 0 }
        );
        let outcome = JobOutcome {
            chunk: 0,
            job_uid: "job-1",
            raw_status: "warning",
            status: RunStatus::PartialSucceeded,
            error: Some("2 of 3 inputs failed"),
            rows: 5,
            source: StatusSource::Webhook,
        };
        let out = apply_outcome(&mut s, &outcome, now());
        assert_eq!(out.first_new, 0);
        let event = out.effects.status.unwrap();
        assert_eq!(event.status, RunStatus::PartialSucceeded);
        assert_eq!(event.provider_status.as_deref(), Some("warning"));
        assert_eq!(event.error.unwrap().label.as_deref(), Some("V3_WARNING"));
        assert_eq!(out.effects.open_runs, -1);
        // A replay of the same outcome, and any later webhook, publish nothing.
        let replay = apply_outcome(&mut s, &outcome, now());
        assert_eq!((replay.first_new, replay.effects), (5, Effects::default()));
        assert_eq!(
            plan_webhook(&mut s, 0, "job-1", V3WebhookKind::Succeeded, now()),
            WebhookPlan::AlreadyFinal
        );
    }

    #[test]
    fn a_paused_job_publishes_its_rows_and_a_retry_publishes_only_the_new_ones() {
        let mut s = launched();
        let paused = JobOutcome {
            chunk: 0,
            job_uid: "job-1",
            raw_status: "paused",
            status: RunStatus::Blocked,
            error: Some("invalid cookie"),
            rows: 2,
            source: StatusSource::Webhook,
        };
        let out = apply_outcome(&mut s, &paused, now());
        assert_eq!(out.first_new, 0);
        assert_eq!(out.effects.status.unwrap().status, RunStatus::Blocked);
        assert_eq!(
            plan_webhook(&mut s, 0, "job-1", V3WebhookKind::Succeeded, now()),
            WebhookPlan::Fetch { published: 2 }
        );
        let finished = JobOutcome {
            raw_status: "finished",
            status: RunStatus::Succeeded,
            error: None,
            rows: 6,
            ..paused
        };
        let out = apply_outcome(&mut s, &finished, now());
        assert_eq!(out.first_new, 2, "rows 0 and 1 were published while paused");
        let event = out.effects.status.unwrap();
        assert_eq!(
            (event.previous_status, event.status, event.error),
            (Some(RunStatus::Blocked), RunStatus::Succeeded, None)
        );
    }
}
