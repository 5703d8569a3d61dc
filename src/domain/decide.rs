//! The product's decisions, as pure functions of a request's state and one input: whether a
//! launch request is submitted (and which chunks), what a chunk's submission outcome publishes,
//! and what a callback publishes (results or not, which status transition). They change the
//! state in place and return what to publish; the partition owner turns that into records in
//! one Kafka transaction. Nothing here touches Kafka, HTTP or the clock.

use super::records::{ChunkState, RunState, RunStatusEvent, StatusError, StatusSource};
use super::request::Mode;
use super::status::{transition, RunStatus, Transition};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// What to do with a launch request, given what is known of its request_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchPlan {
    /// Every chunk was accepted by the API or refused for good: a redelivery, a restart or a
    /// producer's retry. Nothing is submitted again.
    AlreadySubmitted,
    /// These chunk indexes still need a submission (all of them for a new request).
    Submit(Vec<u32>),
}

/// Which chunks of a request of `chunk_count` chunks still need a submission.
pub fn plan_launch(state: Option<&RunState>, chunk_count: usize) -> LaunchPlan {
    let pending: Vec<u32> = (0..chunk_count)
        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
        .filter(|index| {
            state.is_none_or(|s| {
                s.chunks
                    .iter()
                    .find(|c| c.index == *index)
                    .is_none_or(|c| !c.submitted && c.status != Some(RunStatus::SubmitFailed))
            })
        })
        .collect();
    if pending.is_empty() {
        LaunchPlan::AlreadySubmitted
    } else {
        LaunchPlan::Submit(pending)
    }
}

/// Gives a state created by a callback before its request was read (a new owner reading the
/// callbacks partition ahead of the requests partition: the state then knows only the run)
/// the request's facts, so that its status events carry the action and metadata like any
/// other. A state that has them is left as it is. Returns whether the state changed.
pub fn adopt_request(state: &mut RunState, info: &RequestInfo, chunk_count: usize) -> bool {
    if !state.action.is_empty() {
        return false;
    }
    state.action.clone_from(&info.action);
    state.mode = info.mode;
    state.metadata.clone_from(&info.metadata);
    for index in 0..chunk_count {
        state.chunk_mut(u32::try_from(index).unwrap_or(u32::MAX));
    }
    state.chunks.sort_by_key(|c| c.index);
    true
}

/// The request-level facts every status event repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub request_id: String,
    pub action: String,
    pub mode: Mode,
    pub metadata: BTreeMap<String, String>,
}

impl RequestInfo {
    /// The facts of `state`'s request.
    pub fn of(state: &RunState) -> Self {
        Self {
            request_id: state.request_id.clone(),
            action: state.action.clone(),
            mode: state.mode,
            metadata: state.metadata.clone(),
        }
    }

    pub(crate) fn event(
        &self,
        chunk: u32,
        status: RunStatus,
        source: StatusSource,
        at: DateTime<Utc>,
    ) -> RunStatusEvent {
        RunStatusEvent {
            request_id: self.request_id.clone(),
            run_uid: None,
            schedule_uid: None,
            chunk,
            action: self.action.clone(),
            mode: self.mode,
            status,
            previous_status: None,
            error: None,
            source,
            occurred_at: at,
            metadata: self.metadata.clone(),
            provider_status: None,
            input_errors: None,
            schedule_status: None,
            command: None,
        }
    }
}

/// What the API answered to one chunk's submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    /// An async run was created.
    Run { run_uid: String },
    /// A schedule was created; its firings will be runs.
    Schedule { schedule_uid: String },
    /// Refused for good (or retries exhausted): the chunk ends `SUBMIT_FAILED`.
    Failed(StatusError),
}

/// What a decision publishes, and how it moved the count of runs not yet final.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effects {
    /// The status transition to publish, if any.
    pub status: Option<RunStatusEvent>,
    /// +1 when a run became known and is not final, -1 when a known run became final.
    pub open_runs: i64,
}

/// Records a chunk's submission outcome in `state` and returns the first status to publish:
/// CREATED for a run (unless a callback already moved the run on: a stale CREATED is not
/// published), SCHEDULED once for a schedule, SUBMIT_FAILED for a refusal.
pub fn apply_submission(
    state: &mut RunState,
    info: &RequestInfo,
    index: u32,
    outcome: Submission,
    now: DateTime<Utc>,
) -> Effects {
    state.updated_at = now;
    let chunk = state.chunk_mut(index);
    if superseded(chunk, info.mode, &outcome) {
        return Effects::default();
    }
    let mut event = info.event(index, RunStatus::Created, StatusSource::Submit, now);
    match outcome {
        Submission::Run { run_uid } => {
            chunk.submitted = true;
            chunk.run_uid = Some(run_uid.clone());
            let run = chunk.runs.entry(run_uid.clone()).or_default();
            event.run_uid = Some(run_uid);
            event.previous_status = run.status;
            if transition(run.status, RunStatus::Created) != Transition::Publish {
                return Effects::default();
            }
            let opened = run.status.is_none();
            run.status = Some(RunStatus::Created);
            run.first_seen.get_or_insert(now);
            run.last_seen = Some(now);
            Effects {
                status: Some(event),
                open_runs: i64::from(opened),
            }
        }
        Submission::Schedule { schedule_uid } => {
            chunk.submitted = true;
            chunk.schedule_uid = Some(schedule_uid.clone());
            event.schedule_uid = Some(schedule_uid);
            event.status = RunStatus::Scheduled;
            event.previous_status = chunk.status;
            let first = chunk.status.is_none();
            chunk.status.get_or_insert(RunStatus::Scheduled);
            Effects {
                status: first.then_some(event),
                open_runs: 0,
            }
        }
        Submission::Failed(error) => {
            event.status = RunStatus::SubmitFailed;
            event.previous_status = chunk.status;
            event.error = Some(error);
            chunk.status = Some(RunStatus::SubmitFailed);
            Effects {
                status: Some(event),
                open_runs: 0,
            }
        }
    }
}

/// Whether a submission outcome comes too late for `chunk`: an async chunk already bound to
/// another run (a later owner's submission of the same request, committed while this one's
/// transaction was aborted, or a run proven by its callbacks), a schedule chunk bound to
/// another schedule, or a failure for a chunk whose submission is proven. Applying it would
/// swap the run whose callbacks flow for one whose callbacks are refused as foreign, and the
/// request would never end. The superseded run is a second run at the API, as any
/// resubmission.
fn superseded(chunk: &ChunkState, mode: Mode, outcome: &Submission) -> bool {
    match outcome {
        Submission::Run { run_uid } => {
            mode == Mode::Async && chunk.run_uid.as_ref().is_some_and(|known| known != run_uid)
        }
        Submission::Schedule { schedule_uid } => chunk
            .schedule_uid
            .as_ref()
            .is_some_and(|known| known != schedule_uid),
        Submission::Failed(_) => chunk.submitted,
    }
}

/// The facts of one callback the decision needs (its results stay where they are).
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackFacts<'a> {
    pub chunk: u32,
    pub run_uid: &'a str,
    pub batch_uid: &'a str,
    pub status: RunStatus,
    pub error: Option<&'a StatusError>,
    pub results: usize,
}

/// What a callback publishes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallbackEffects {
    /// The batch had been published before (a replay or a duplicate delivery): its results are
    /// not published again.
    pub duplicate: bool,
    /// The status transition and the change in open runs.
    pub effects: Effects,
}

/// Whether a callback for `run_uid` may belong to `chunk` of this request. A token binds a
/// request's chunk, not its run (the callback URL is handed over before the run exists): an
/// async chunk has one run, so once its run_uid is known (from the submit answer, or the
/// first callback when the answer was lost) another run_uid with its token is refused. A
/// schedule chunk gets a new run per firing, so any run_uid is taken.
pub fn callback_belongs(state: &RunState, chunk: u32, run_uid: &str) -> Result<(), String> {
    if state.mode != Mode::Async {
        return Ok(());
    }
    match state
        .chunks
        .iter()
        .find(|c| c.index == chunk)
        .and_then(|c| c.run_uid.as_deref())
    {
        Some(known) if known != run_uid => Err(format!(
            "callback for run {run_uid} with the token of request {} chunk {chunk}, whose run is {known}",
            state.request_id
        )),
        _ => Ok(()),
    }
}

/// Records a callback in `state`: its batch (for duplicate detection, the last
/// `dedupe_window` batches of the run), its results count, and the run's status when it moves
/// forward. A callback proves its chunk's submission, even if the submit answer was never seen.
/// With `hold_final`, a final status is not published here: it waits in the run for the
/// reconciler's audit of the run's deliveries (see `domain::reconcile`).
pub fn apply_callback(
    state: &mut RunState,
    facts: &CallbackFacts<'_>,
    dedupe_window: usize,
    hold_final: bool,
    now: DateTime<Utc>,
) -> CallbackEffects {
    let info = RequestInfo::of(state);
    let chunk = state.chunk_mut(facts.chunk);
    chunk.submitted = true;
    if info.mode == Mode::Async && chunk.run_uid.is_none() {
        chunk.run_uid = Some(facts.run_uid.to_owned());
    }
    let schedule_uid = chunk.schedule_uid.clone();
    let run = chunk.runs.entry(facts.run_uid.to_owned()).or_default();
    let duplicate = run.has_batch(facts.batch_uid);
    run.last_seen = Some(now);
    let previous = run.status;
    let mut effects = Effects::default();
    let publish = transition(previous, facts.status) == Transition::Publish;
    if publish && hold_final && facts.status.is_terminal() {
        if run.pending_final.is_none() {
            run.pending_final = Some(super::records::PendingFinal {
                status: facts.status,
                error: facts.error.cloned(),
                source: StatusSource::Callback,
                at: now,
            });
            run.first_seen.get_or_insert(now);
            effects.open_runs = i64::from(previous.is_none());
        }
    } else if publish {
        let mut event = info.event(facts.chunk, facts.status, StatusSource::Callback, now);
        event.run_uid = Some(facts.run_uid.to_owned());
        event.schedule_uid = schedule_uid;
        event.previous_status = previous;
        event.error = facts.error.cloned();
        run.status = Some(facts.status);
        run.first_seen.get_or_insert(now);
        effects.open_runs = open_runs_delta(previous, facts.status);
        effects.status = Some(event);
    }
    if !duplicate {
        run.remember_batch(facts.batch_uid, dedupe_window);
        run.results += facts.results as u64;
    }
    state.updated_at = now;
    CallbackEffects { duplicate, effects }
}

/// +1 when a run first becomes known in a non-final status, -1 when a known run becomes final.
pub(super) fn open_runs_delta(previous: Option<RunStatus>, next: RunStatus) -> i64 {
    match (previous, next.is_terminal()) {
        (None, false) => 1,
        (Some(p), true) if !p.is_terminal() => -1,
        _ => 0,
    }
}

/// Runs of `state` that are known and not final (a final status waiting for its audit is not
/// final yet; a live request running counts as one).
pub fn open_runs(state: &RunState) -> usize {
    let live = state
        .live
        .as_ref()
        .is_some_and(|l| l.status.is_some_and(|s| !s.is_terminal()));
    state
        .chunks
        .iter()
        .flat_map(|c| c.runs.values())
        .filter(|r| r.is_open())
        .count()
        + usize::from(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RequestInfo {
        RequestInfo {
            request_id: "r".into(),
            action: "a".into(),
            mode: Mode::Async,
            metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        }
    }

    fn state(chunks: usize) -> RunState {
        let i = info();
        RunState::new(&i.request_id, &i.action, i.mode, i.metadata, chunks)
    }

    /// A RUNNING callback of `run_uid` (batch `b1`) for `chunk`, its effects left aside.
    fn called_back_running(s: &mut RunState, chunk: u32, run_uid: &str) {
        apply_callback(
            s,
            &callback(chunk, run_uid, "b1", RunStatus::Running),
            8,
            false,
            now(),
        );
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn run(uid: &str) -> Submission {
        Submission::Run {
            run_uid: uid.into(),
        }
    }

    fn callback<'a>(
        chunk: u32,
        run_uid: &'a str,
        batch: &'a str,
        status: RunStatus,
    ) -> CallbackFacts<'a> {
        CallbackFacts {
            chunk,
            run_uid,
            batch_uid: batch,
            status,
            error: None,
            results: 2,
        }
    }

    #[test]
    fn which_chunks_a_launch_submits_depends_on_what_was_recorded() {
        let mut partly = state(3);
        partly.chunk_mut(0).submitted = true;
        partly.chunk_mut(1).status = Some(RunStatus::SubmitFailed);
        let mut done = state(2);
        done.chunk_mut(0).submitted = true;
        done.chunk_mut(1).status = Some(RunStatus::SubmitFailed);
        let cases: [(&str, Option<&RunState>, usize, LaunchPlan); 4] = [
            (
                "a new request submits every chunk",
                None,
                3,
                LaunchPlan::Submit(vec![0, 1, 2]),
            ),
            (
                "a recorded but unsubmitted request submits all",
                Some(&state(2)),
                2,
                LaunchPlan::Submit(vec![0, 1]),
            ),
            (
                "only chunks without an outcome are submitted",
                Some(&partly),
                3,
                LaunchPlan::Submit(vec![2]),
            ),
            (
                "accepted or failed for good is done",
                Some(&done),
                2,
                LaunchPlan::AlreadySubmitted,
            ),
        ];
        for (what, s, n, expected) in cases {
            assert_eq!(plan_launch(s, n), expected, "{what}");
        }
    }

    #[test]
    fn a_created_run_publishes_created_once_and_opens_the_run() {
        let mut s = state(1);
        let first = apply_submission(&mut s, &info(), 0, run("u1"), now());
        let event = first.status.unwrap();
        assert_eq!(
            (event.status, event.previous_status, event.source),
            (RunStatus::Created, None, StatusSource::Submit)
        );
        assert_eq!(event.run_uid.as_deref(), Some("u1"));
        assert_eq!(event.metadata, info().metadata);
        assert_eq!(first.open_runs, 1);
        assert!(s.chunks[0].submitted);
        assert_eq!(plan_launch(Some(&s), 1), LaunchPlan::AlreadySubmitted);
        // The same outcome again (a redelivered launch that found it in flight) publishes nothing.
        assert_eq!(
            apply_submission(&mut s, &info(), 0, run("u1"), now()),
            Effects::default()
        );
    }

    #[test]
    fn a_stale_created_is_not_published_after_a_callback_moved_the_run_on() {
        let mut s = state(1);
        called_back_running(&mut s, 0, "u1");
        let late = apply_submission(&mut s, &info(), 0, run("u1"), now());
        assert_eq!(late, Effects::default());
        assert_eq!(s.chunks[0].runs["u1"].status, Some(RunStatus::Running));
    }

    #[test]
    fn a_late_outcome_for_another_run_does_not_replace_the_chunks_run() {
        // The zombie's submission (u1) replayed after its aborted transaction, once the
        // next owner's run (u2) is committed and calling back.
        let mut s = state(1);
        apply_submission(&mut s, &info(), 0, run("u2"), now());
        called_back_running(&mut s, 0, "u2");

        let late = apply_submission(&mut s, &info(), 0, run("u1"), now());

        assert_eq!(late, Effects::default());
        assert_eq!(s.chunks[0].run_uid.as_deref(), Some("u2"));
        assert!(!s.chunks[0].runs.contains_key("u1"));
        assert!(callback_belongs(&s, 0, "u2").is_ok(), "u2 still calls back");
        assert!(callback_belongs(&s, 0, "u1").is_err());
    }

    #[test]
    fn a_state_created_by_a_callback_takes_the_requests_facts_and_keeps_its_run() {
        let mut s = RunState::new("r", "", Mode::Async, BTreeMap::new(), 0);
        called_back_running(&mut s, 1, "u1");

        assert!(adopt_request(&mut s, &info(), 2));

        assert_eq!(RequestInfo::of(&s), info());
        assert_eq!(s.chunks.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(s.chunks[1].run_uid.as_deref(), Some("u1"));
        assert_eq!(plan_launch(Some(&s), 2), LaunchPlan::Submit(vec![0]));
        // A state with its facts is left alone.
        let before = s.clone();
        let changed = adopt_request(
            &mut s,
            &RequestInfo {
                action: "other".into(),
                ..info()
            },
            3,
        );
        assert!(!changed);
        assert_eq!(s, before);
    }

    #[test]
    fn a_late_failure_does_not_mark_a_proven_submission_failed() {
        let mut s = state(1);
        called_back_running(&mut s, 0, "u1");
        let error = StatusError {
            label: None,
            scope: None,
            message: "timed out".into(),
            http_status: None,
        };

        let late = apply_submission(&mut s, &info(), 0, Submission::Failed(error), now());

        assert_eq!(late, Effects::default());
        assert_eq!(s.chunks[0].status, None);
        assert_eq!(plan_launch(Some(&s), 1), LaunchPlan::AlreadySubmitted);
    }

    #[test]
    fn a_schedule_publishes_scheduled_once_and_opens_no_run() {
        let mut s = state(1);
        let sched = || Submission::Schedule {
            schedule_uid: "s1".into(),
        };
        let first = apply_submission(&mut s, &info(), 0, sched(), now());
        assert_eq!(
            first.status.as_ref().map(|e| e.status),
            Some(RunStatus::Scheduled)
        );
        assert_eq!(first.open_runs, 0);
        assert_eq!(
            apply_submission(&mut s, &info(), 0, sched(), now()).status,
            None
        );
    }

    #[test]
    fn a_refused_chunk_publishes_submit_failed_with_the_api_error() {
        let mut s = state(2);
        let error = StatusError {
            label: Some("INVALID_INPUT".into()),
            scope: Some("input".into()),
            message: "bad url".into(),
            http_status: Some(400),
        };
        let e = apply_submission(&mut s, &info(), 1, Submission::Failed(error.clone()), now());
        let event = e.status.unwrap();
        assert_eq!((event.status, event.chunk), (RunStatus::SubmitFailed, 1));
        assert_eq!(event.error, Some(error));
        assert_eq!(plan_launch(Some(&s), 2), LaunchPlan::Submit(vec![0]));
    }

    #[test]
    fn callbacks_publish_forward_transitions_and_results_once_per_batch() {
        use RunStatus::*;
        // (callback, duplicate?, published status, open-runs delta)
        let steps: [(CallbackFacts<'_>, bool, Option<RunStatus>, i64); 6] = [
            (callback(0, "u1", "b1", Running), false, Some(Running), 1),
            (callback(0, "u1", "b2", Running), false, None, 0),
            (callback(0, "u1", "b1", Running), true, None, 0),
            (callback(0, "u1", "b0", Queued), false, None, 0),
            (
                callback(0, "u1", "b3", Succeeded),
                false,
                Some(Succeeded),
                -1,
            ),
            (callback(0, "u1", "b3", Succeeded), true, None, 0),
        ];
        let mut s = state(1);
        for (i, (facts, duplicate, status, delta)) in steps.iter().enumerate() {
            let out = apply_callback(&mut s, facts, 8, false, now());
            assert_eq!(out.duplicate, *duplicate, "step {i}: duplicate");
            assert_eq!(
                out.effects.status.as_ref().map(|e| e.status),
                *status,
                "step {i}: status"
            );
            assert_eq!(out.effects.open_runs, *delta, "step {i}: open runs");
        }
        let track = &s.chunks[0].runs["u1"];
        assert_eq!(track.results, 8, "four distinct batches of two results");
        assert_eq!(open_runs(&s), 0);
    }

    #[test]
    fn a_callback_event_chains_from_the_previous_status_and_carries_the_error() {
        let mut s = state(1);
        apply_submission(&mut s, &info(), 0, run("u1"), now());
        let error = StatusError {
            label: Some("NO_RESULT".into()),
            ..StatusError::default()
        };
        let facts = CallbackFacts {
            error: Some(&error),
            ..callback(0, "u1", "b9", RunStatus::Failed)
        };
        let out = apply_callback(&mut s, &facts, 8, false, now());
        let event = out.effects.status.unwrap();
        assert_eq!(event.previous_status, Some(RunStatus::Created));
        assert_eq!(event.source, StatusSource::Callback);
        assert_eq!(event.error, Some(error));
        assert_eq!(out.effects.open_runs, -1);
    }

    #[test]
    fn a_callback_proves_its_chunk_was_submitted_even_without_the_submit_answer() {
        let mut s = state(2);
        called_back_running(&mut s, 1, "u2");
        assert!(s.chunks[1].submitted);
        assert_eq!(s.chunks[1].run_uid.as_deref(), Some("u2"));
        assert_eq!(plan_launch(Some(&s), 2), LaunchPlan::Submit(vec![0]));
    }

    #[test]
    fn with_held_finals_a_final_callback_waits_for_the_audit_and_later_pages_still_publish() {
        let mut s = state(1);
        apply_callback(
            &mut s,
            &callback(0, "u1", "b1", RunStatus::Running),
            8,
            true,
            now(),
        );
        let last = apply_callback(
            &mut s,
            &callback(0, "u1", "b2", RunStatus::Succeeded),
            8,
            true,
            now(),
        );
        assert_eq!(last.effects, Effects::default(), "held, not published");
        assert!(!last.duplicate, "its results are published");
        let run = &s.chunks[0].runs["u1"];
        assert_eq!(run.status, Some(RunStatus::Running));
        assert_eq!(
            run.pending_final.as_ref().map(|p| p.status),
            Some(RunStatus::Succeeded)
        );
        assert_eq!(
            open_runs(&s),
            1,
            "waiting for its audit, the run is still open"
        );
        let late = apply_callback(
            &mut s,
            &callback(0, "u1", "b0", RunStatus::Running),
            8,
            true,
            now(),
        );
        assert!(
            !late.duplicate && late.effects.status.is_none(),
            "a late page: results only"
        );
    }

    #[test]
    fn every_firing_of_a_schedule_is_its_own_run_carrying_the_schedule() {
        let mut s = RunState::new("r", "a", Mode::Schedule, BTreeMap::new(), 1);
        let i = RequestInfo {
            mode: Mode::Schedule,
            ..info()
        };
        apply_submission(
            &mut s,
            &i,
            0,
            Submission::Schedule {
                schedule_uid: "s1".into(),
            },
            now(),
        );
        for run_uid in ["f1", "f2"] {
            let out = apply_callback(
                &mut s,
                &callback(0, run_uid, run_uid, RunStatus::Running),
                8,
                false,
                now(),
            );
            let event = out.effects.status.unwrap();
            assert_eq!(event.schedule_uid.as_deref(), Some("s1"));
            assert_eq!(event.previous_status, None);
        }
        assert_eq!(
            s.chunks[0].run_uid, None,
            "a schedule chunk has no single run"
        );
        assert_eq!(open_runs(&s), 2);
    }

    #[test]
    fn an_async_chunks_token_is_refused_for_another_run_once_its_run_is_known() {
        let mut s = state(1);
        assert!(callback_belongs(&s, 0, "u1").is_ok(), "run not known yet");
        s.chunks[0].run_uid = Some("u1".into());
        assert!(callback_belongs(&s, 0, "u1").is_ok());
        let e = callback_belongs(&s, 0, "invented").unwrap_err();
        assert!(e.contains("invented") && e.contains("u1"), "{e}");
        s.mode = Mode::Schedule;
        assert!(
            callback_belongs(&s, 0, "firing-2").is_ok(),
            "every firing of a schedule is a new run"
        );
    }
}
