//! Closing every run: the reconciler's decisions, as pure functions of a run's track and the
//! clock. When a run needs a look (a final status waiting for its delivery audit, a silence,
//! a deadline), what a poll's answer does, which failed deliveries to replay within the API's
//! budget, and the final status once the audit is done (saying which pages were lost).

use super::decide::{Effects, RequestInfo};
use super::records::{PendingFinal, RunState, RunTrack, StatusError, StatusSource};
use super::status::{transition, RunStatus, Transition};
use chrono::{DateTime, Duration, Utc};

/// The reconciler's timers.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileTimers {
    /// A run with no news for this long is polled (and its deliveries audited).
    pub silence_after: Duration,
    /// A run without a final status this long after it was first seen becomes `TIMED_OUT`.
    pub run_deadline: Duration,
    /// How long after a final status arrives its audit starts (the platform's own retries of
    /// earlier pages finish first).
    pub audit_delay: Duration,
    /// How long between two audits of one run while deliveries are in flight or replays were
    /// requested.
    pub audit_retry: Duration,
    /// A final status whose audit has not completed this long after it arrived is published
    /// anyway, with an error saying the audit could not be done.
    pub audit_timeout: Duration,
}

/// What a run needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A final status waits: list the run's deliveries, replay what was lost, then publish.
    Audit,
    /// The audit could not complete in time: publish the final status with that said.
    AuditExpired,
    /// Silent: ask the API for the run, and audit its deliveries.
    Poll,
    /// Past its deadline without a final status.
    TimeOut,
}

/// What `run` needs at `now`, if anything. A run being checked (a job in flight) is not
/// checked again: the caller tracks that.
pub fn next_check(run: &RunTrack, now: DateTime<Utc>, t: &ReconcileTimers) -> Option<Check> {
    if run.status.is_some_and(RunStatus::is_terminal) {
        return None;
    }
    let since = |at: Option<DateTime<Utc>>| at.map(|at| now - at);
    if let Some(pending) = &run.pending_final {
        // A waiting final status is handled by its audit, whatever the deadline.
        if now - pending.at >= t.audit_timeout {
            return Some(Check::AuditExpired);
        }
        let due = now - pending.at >= t.audit_delay
            && since(run.checked_at).is_none_or(|d| d >= t.audit_retry);
        return due.then_some(Check::Audit);
    }
    if since(run.first_seen).is_some_and(|d| d >= t.run_deadline) {
        return Some(Check::TimeOut);
    }
    let silent = since(run.last_seen.or(run.first_seen)).is_some_and(|d| d >= t.silence_after);
    let not_just_checked = since(run.checked_at).is_none_or(|d| d >= t.silence_after);
    (silent && not_just_checked).then_some(Check::Poll)
}

/// The age of the oldest run of `state` that is known and not final.
pub fn oldest_open(state: &RunState, now: DateTime<Utc>) -> Option<Duration> {
    state
        .chunks
        .iter()
        .flat_map(|c| c.runs.values())
        .filter(|r| r.status.is_some_and(|s| !s.is_terminal()))
        .filter_map(|r| r.first_seen.map(|f| now - f))
        .max()
}

/// A delivery record of the platform, as the audit needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub uid: String,
    /// The original delivery this one replays; `None` for an original.
    pub parent_uid: Option<String>,
    pub batch_uid: Option<String>,
    pub state: DeliveryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Pending or running: the platform is still trying.
    InFlight,
    Failed,
}

/// What an audit found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditPlan {
    /// Original deliveries to replay now (their callback_uid).
    pub replay: Vec<String>,
    /// Deliveries still in flight, or replays just requested: audit again later.
    pub again: bool,
    /// Batches lost for good: every delivery the API allows failed.
    pub lost: Vec<String>,
}

/// Decides from a run's deliveries still in flight and failed ones: each failed original whose
/// batch was never received is replayed while the budget (`max_replays` per original) lasts;
/// once spent, its batch is lost.
pub fn plan_audit(run: &RunTrack, deliveries: &[Delivery], max_replays: u8) -> AuditPlan {
    let mut plan = AuditPlan {
        again: deliveries
            .iter()
            .any(|d| d.state == DeliveryState::InFlight),
        ..AuditPlan::default()
    };
    // A replay in flight keeps its original waiting, whatever the original says.
    let replay_in_flight = |uid: &str| {
        deliveries
            .iter()
            .any(|d| d.parent_uid.as_deref() == Some(uid) && d.state == DeliveryState::InFlight)
    };
    for d in deliveries {
        if d.parent_uid.is_some() || d.state != DeliveryState::Failed {
            continue;
        }
        let received = d.batch_uid.as_deref().is_some_and(|b| run.has_batch(b));
        if received || replay_in_flight(&d.uid) {
            continue;
        }
        let used = run.replays.get(&d.uid).copied().unwrap_or(0);
        if used < max_replays {
            plan.replay.push(d.uid.clone());
        } else if let Some(batch) = &d.batch_uid {
            plan.lost.push(batch.clone());
        } else {
            plan.lost.push(d.uid.clone());
        }
    }
    plan.again |= !plan.replay.is_empty();
    plan
}

/// Records replays requested for `run` (by original delivery uid, with the batch each
/// carries, so the batch's arrival can be told apart).
pub fn note_replays(run: &mut RunTrack, requested: &[(String, Option<String>)]) {
    for (uid, batch) in requested {
        *run.replays.entry(uid.clone()).or_default() += 1;
        if let Some(batch) = batch {
            run.replayed_batches.insert(batch.clone());
        }
    }
    while run.replayed_batches.len() > 256 {
        let Some(first) = run.replayed_batches.iter().next().cloned() else {
            break;
        };
        run.replayed_batches.remove(&first);
    }
    // Bounded: a run replays at most what its audits found, but keep the record small.
    while run.replays.len() > 256 {
        let Some(first) = run.replays.keys().next().cloned() else {
            break;
        };
        run.replays.remove(&first);
    }
}

/// A run's status change: what the event built by [`run_event`] says.
struct Change {
    status: RunStatus,
    previous: Option<RunStatus>,
    source: StatusSource,
}

fn run_event(
    info: &RequestInfo,
    chunk: u32,
    run_uid: &str,
    schedule_uid: Option<String>,
    change: Change,
    at: DateTime<Utc>,
) -> super::records::RunStatusEvent {
    let Change {
        status,
        previous,
        source,
    } = change;
    super::records::RunStatusEvent {
        request_id: info.request_id.clone(),
        run_uid: Some(run_uid.to_owned()),
        schedule_uid,
        chunk,
        action: info.action.clone(),
        mode: info.mode,
        status,
        previous_status: previous,
        error: None,
        source,
        occurred_at: at,
        metadata: info.metadata.clone(),
        schedule_status: None,
        command: None,
    }
}

fn info_of(state: &RunState) -> RequestInfo {
    RequestInfo {
        request_id: state.request_id.clone(),
        action: state.action.clone(),
        mode: state.mode,
        metadata: state.metadata.clone(),
    }
}

/// Applies a status the API reported for a run (a poll, or a control command's answer):
/// a forward non-final status is published; a final one waits for the audit (it becomes the
/// run's pending final status, unless one is already waiting).
pub fn apply_reported(
    state: &mut RunState,
    chunk: u32,
    run_uid: &str,
    reported: RunStatus,
    error: Option<StatusError>,
    source: StatusSource,
    now: DateTime<Utc>,
) -> Effects {
    let info = info_of(state);
    let chunk_state = state.chunk_mut(chunk);
    let schedule_uid = chunk_state.schedule_uid.clone();
    let run = chunk_state.runs.entry(run_uid.to_owned()).or_default();
    run.checked_at = Some(now);
    if reported.is_terminal() {
        if run.status.is_none_or(|s| !s.is_terminal()) && run.pending_final.is_none() {
            let opened = !run.is_open();
            run.pending_final = Some(PendingFinal {
                status: reported,
                error,
                source,
                at: now,
            });
            run.first_seen.get_or_insert(now);
            return Effects {
                status: None,
                open_runs: i64::from(opened),
            };
        }
        return Effects::default();
    }
    let previous = run.status;
    if transition(previous, reported) != Transition::Publish {
        return Effects::default();
    }
    run.status = Some(reported);
    run.first_seen.get_or_insert(now);
    run.last_seen = Some(now);
    let mut event = run_event(
        &info,
        chunk,
        run_uid,
        schedule_uid,
        Change {
            status: reported,
            previous,
            source,
        },
        now,
    );
    event.error = error;
    state.updated_at = now;
    Effects {
        status: Some(event),
        open_runs: i64::from(previous.is_none()),
    }
}

/// Publishes a run's pending final status once its audit is done. Batches lost for good (or
/// an audit that could not be done) turn into the event's `error`, keeping the API's error's
/// label when there was one in the message.
pub fn finalize(
    state: &mut RunState,
    chunk: u32,
    run_uid: &str,
    lost: &[String],
    audit_failed: Option<&str>,
    now: DateTime<Utc>,
) -> Effects {
    let info = info_of(state);
    let chunk_state = state.chunk_mut(chunk);
    let schedule_uid = chunk_state.schedule_uid.clone();
    let Some(run) = chunk_state.runs.get_mut(run_uid) else {
        return Effects::default();
    };
    let Some(pending) = run.pending_final.take() else {
        return Effects::default();
    };
    // The run was open (the pending final counted it) whatever it published before.
    let previous = run.status;
    if transition(previous, pending.status) != Transition::Publish {
        return Effects::default();
    }
    run.status = Some(pending.status);
    run.checked_at = Some(now);
    let mut event = run_event(
        &info,
        chunk,
        run_uid,
        schedule_uid,
        Change {
            status: pending.status,
            previous,
            source: pending.source,
        },
        now,
    );
    let bridge_error = match (lost.is_empty(), audit_failed) {
        (false, _) => Some((
            "MISSING_BATCHES",
            format!(
                "{} {} could not be recovered (every delivery and replay failed): {}",
                lost.len(),
                // The API's delivery records do not say what a batch carried: when the final
                // status came by callback, the lost ones are result pages; otherwise one of
                // them may be the final status callback itself.
                match pending.source {
                    StatusSource::Callback => "result page(s)",
                    _ => "batch(es) (result pages, or the final status callback)",
                },
                lost.join(", ")
            ),
        )),
        (true, Some(reason)) => Some((
            "AUDIT_INCOMPLETE",
            format!("the run's deliveries could not be audited: {reason}"),
        )),
        (true, None) => None,
    };
    event.error = match (pending.error, bridge_error) {
        (api, None) => api,
        (None, Some((label, message))) => Some(StatusError {
            label: Some(label.into()),
            scope: Some("bridge".into()),
            message,
            http_status: None,
        }),
        (Some(api), Some((label, message))) => Some(StatusError {
            label: Some(label.into()),
            scope: Some("bridge".into()),
            message: format!(
                "{message}; the run's own error: {}{}",
                api.label.map(|l| format!("{l}: ")).unwrap_or_default(),
                api.message
            ),
            http_status: api.http_status,
        }),
    };
    state.updated_at = now;
    Effects {
        status: Some(event),
        open_runs: -1,
    }
}

/// A run past its deadline without a final status becomes `TIMED_OUT`; what arrives later
/// still publishes its results, never a status (nothing leaves a final status).
pub fn time_out(state: &mut RunState, chunk: u32, run_uid: &str, now: DateTime<Utc>) -> Effects {
    let info = info_of(state);
    let chunk_state = state.chunk_mut(chunk);
    let schedule_uid = chunk_state.schedule_uid.clone();
    let Some(run) = chunk_state.runs.get_mut(run_uid) else {
        return Effects::default();
    };
    let previous = run.status;
    if transition(previous, RunStatus::TimedOut) != Transition::Publish {
        return Effects::default();
    }
    run.status = Some(RunStatus::TimedOut);
    run.pending_final = None;
    run.checked_at = Some(now);
    let mut event = run_event(
        &info,
        chunk,
        run_uid,
        schedule_uid,
        Change {
            status: RunStatus::TimedOut,
            previous,
            source: StatusSource::Bridge,
        },
        now,
    );
    let age = run.first_seen.map(|f| (now - f).num_seconds()).unwrap_or(0);
    event.error = Some(StatusError {
        label: Some("TIMED_OUT".into()),
        scope: Some("bridge".into()),
        message: format!("no final status {age} s after the run was first seen"),
        http_status: None,
    });
    state.updated_at = now;
    Effects {
        status: Some(event),
        open_runs: if previous.is_some_and(|p| !p.is_terminal()) {
            -1
        } else {
            0
        },
    }
}

/// Exhausts the replay budget of an original delivery the API refuses to replay again.
pub fn exhaust_replays(run: &mut RunTrack, uid: &str, max_replays: u8) {
    run.replays.insert(uid.to_owned(), max_replays);
}

/// A schedule's state as the API reported it: published (on a chunk-level event, status
/// unchanged, `schedule_status` set) when it differs from the last one published.
pub fn apply_schedule_status(
    state: &mut RunState,
    chunk: u32,
    reported: &str,
    source: StatusSource,
    now: DateTime<Utc>,
) -> Effects {
    let info = info_of(state);
    let chunk_state = state.chunk_mut(chunk);
    chunk_state.schedule_checked_at = Some(now);
    if chunk_state.schedule_status.as_deref() == Some(reported) || reported == "UNKNOWN" {
        return Effects::default();
    }
    let first = chunk_state.schedule_status.is_none() && reported == "ACTIVE";
    chunk_state.schedule_status = Some(reported.to_owned());
    if first {
        // A schedule is ACTIVE from its SCHEDULED event on: no news.
        return Effects::default();
    }
    let status = chunk_state.status.unwrap_or(RunStatus::Scheduled);
    let event = super::records::RunStatusEvent {
        request_id: info.request_id,
        run_uid: None,
        schedule_uid: chunk_state.schedule_uid.clone(),
        chunk,
        action: info.action,
        mode: info.mode,
        status,
        previous_status: Some(status),
        error: None,
        source,
        occurred_at: now,
        metadata: info.metadata,
        schedule_status: Some(reported.to_owned()),
        command: None,
    };
    state.updated_at = now;
    Effects {
        status: Some(event),
        open_runs: 0,
    }
}

/// Whether a schedule's state can still change (it is neither cancelled nor completed).
pub fn schedule_may_change(status: Option<&str>) -> bool {
    !matches!(status, Some("CANCELLED" | "COMPLETED"))
}

/// Records that a check of `run_uid` started (so it is not started again before its
/// interval).
pub fn mark_checked(state: &mut RunState, chunk: u32, run_uid: &str, now: DateTime<Utc>) {
    if let Some(run) = state.chunk_mut(chunk).runs.get_mut(run_uid) {
        run.checked_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decide::{apply_callback, apply_submission, CallbackFacts, Submission};
    use crate::domain::request::Mode;
    use std::collections::BTreeMap;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn timers() -> ReconcileTimers {
        ReconcileTimers {
            silence_after: Duration::seconds(300),
            run_deadline: Duration::seconds(3600),
            audit_delay: Duration::seconds(5),
            audit_retry: Duration::seconds(10),
            audit_timeout: Duration::seconds(600),
        }
    }

    fn info() -> RequestInfo {
        RequestInfo {
            request_id: "r".into(),
            action: "a".into(),
            mode: Mode::Async,
            metadata: BTreeMap::new(),
        }
    }

    /// A request whose one run was created at 0 s and got a RUNNING page at `seen` s.
    fn running(seen: i64) -> RunState {
        let mut s = RunState::new("r", "a", Mode::Async, BTreeMap::new(), 1);
        apply_submission(
            &mut s,
            &info(),
            0,
            Submission::Run {
                run_uid: "u".into(),
            },
            at(0),
        );
        let facts = CallbackFacts {
            chunk: 0,
            run_uid: "u",
            batch_uid: "b1",
            status: RunStatus::Running,
            error: None,
            results: 1,
        };
        apply_callback(&mut s, &facts, 8, false, at(seen));
        s
    }

    fn run(s: &RunState) -> &RunTrack {
        &s.chunks[0].runs["u"]
    }

    #[test]
    fn when_a_run_needs_a_look_depends_on_its_silence_its_age_and_a_waiting_final() {
        let t = timers();
        let s = running(10);
        let cases = [
            ("news 100 s ago: nothing", 110, None),
            (
                "silent for the silence period: poll",
                310,
                Some(Check::Poll),
            ),
            ("past the deadline: time out", 3600, Some(Check::TimeOut)),
        ];
        for (what, now, expected) in cases {
            assert_eq!(next_check(run(&s), at(now), &t), expected, "{what}");
        }
        let mut checked = s.clone();
        mark_checked(&mut checked, 0, "u", at(310));
        assert_eq!(
            next_check(run(&checked), at(400), &t),
            None,
            "polled 90 s ago: not again before another silence period"
        );
        assert_eq!(next_check(run(&checked), at(610), &t), Some(Check::Poll));

        let mut waiting = s.clone();
        apply_reported(
            &mut waiting,
            0,
            "u",
            RunStatus::Succeeded,
            None,
            StatusSource::Poll,
            at(20),
        );
        assert_eq!(next_check(run(&waiting), at(22), &t), None, "audit delay");
        assert_eq!(next_check(run(&waiting), at(40), &t), Some(Check::Audit));
        assert_eq!(
            next_check(run(&waiting), at(700), &t),
            Some(Check::AuditExpired),
            "an audit that never completes does not hold the final status forever"
        );
    }

    fn failed(uid: &str, batch: &str) -> Delivery {
        Delivery {
            uid: uid.into(),
            parent_uid: None,
            batch_uid: Some(batch.into()),
            state: DeliveryState::Failed,
        }
    }

    #[test]
    fn failed_deliveries_are_replayed_within_the_budget_and_then_counted_lost() {
        let mut s = running(10);
        let received = failed("c1", "b1");
        let lost_once = failed("c2", "b2");
        let mut replay_of_c3 = failed("c3r", "b3");
        replay_of_c3.parent_uid = Some("c3".into());
        replay_of_c3.state = DeliveryState::InFlight;
        let waiting_on_replay = failed("c3", "b3");
        let plan = plan_audit(
            run(&s),
            &[received, lost_once.clone(), replay_of_c3, waiting_on_replay],
            3,
        );
        assert_eq!(
            plan.replay,
            vec!["c2"],
            "b1 was received; c3 has a replay in flight"
        );
        assert!(plan.again);
        assert!(plan.lost.is_empty());

        let track = s.chunks[0].runs.get_mut("u").unwrap();
        for _ in 0..3 {
            note_replays(track, &[("c2".to_owned(), Some("b2".to_owned()))]);
        }
        assert!(track.replayed_batches.contains("b2"));
        let plan = plan_audit(run(&s), &[lost_once], 3);
        assert_eq!(plan.replay, Vec::<String>::new());
        assert_eq!(plan.lost, vec!["b2"], "three replays failed: lost");
        assert!(!plan.again);
    }

    #[test]
    fn a_final_status_waits_for_its_audit_and_says_which_pages_were_lost() {
        let mut s = running(10);
        let api = StatusError {
            label: Some("PARTIAL_FAILURE".into()),
            message: "one input failed".into(),
            ..StatusError::default()
        };
        let held = apply_reported(
            &mut s,
            0,
            "u",
            RunStatus::PartialSucceeded,
            Some(api),
            StatusSource::Callback,
            at(20),
        );
        assert_eq!(
            held,
            Effects::default(),
            "nothing published before the audit"
        );
        let done = finalize(&mut s, 0, "u", &["b7".to_owned()], None, at(30));
        let event = done.status.unwrap();
        assert_eq!(
            (event.status, event.previous_status, event.source),
            (
                RunStatus::PartialSucceeded,
                Some(RunStatus::Running),
                StatusSource::Callback
            )
        );
        let error = event.error.unwrap();
        assert_eq!(error.label.as_deref(), Some("MISSING_BATCHES"));
        assert!(error.message.contains("1 result page(s)") && error.message.contains("b7"));
        assert!(error.message.contains("PARTIAL_FAILURE: one input failed"));
        assert_eq!(done.open_runs, -1);
        assert_eq!(
            finalize(&mut s, 0, "u", &[], None, at(31)),
            Effects::default(),
            "once"
        );
    }

    #[test]
    fn a_clean_audit_publishes_the_final_status_as_reported() {
        let mut s = running(10);
        apply_reported(
            &mut s,
            0,
            "u",
            RunStatus::Succeeded,
            None,
            StatusSource::Poll,
            at(20),
        );
        let event = finalize(&mut s, 0, "u", &[], None, at(30)).status.unwrap();
        assert_eq!(
            (event.status, event.source, event.error),
            (RunStatus::Succeeded, StatusSource::Poll, None)
        );
    }

    #[test]
    fn a_poll_publishes_forward_moves_only() {
        let mut s = running(10);
        let back = apply_reported(
            &mut s,
            0,
            "u",
            RunStatus::Queued,
            None,
            StatusSource::Poll,
            at(20),
        );
        assert_eq!(
            back,
            Effects::default(),
            "RUNNING does not go back to QUEUED"
        );
        let blocked = apply_reported(
            &mut s,
            0,
            "u",
            RunStatus::Blocked,
            None,
            StatusSource::Poll,
            at(21),
        );
        assert_eq!(
            blocked.status.map(|e| (e.status, e.source)),
            Some((RunStatus::Blocked, StatusSource::Poll))
        );
    }

    #[test]
    fn a_timed_out_run_stays_timed_out_whatever_arrives_later() {
        let mut s = running(10);
        let out = time_out(&mut s, 0, "u", at(4000));
        let event = out.status.unwrap();
        assert_eq!(
            (event.status, event.previous_status),
            (RunStatus::TimedOut, Some(RunStatus::Running))
        );
        assert_eq!(out.open_runs, -1);
        assert_eq!(next_check(run(&s), at(9000), &timers()), None);
        let late = CallbackFacts {
            chunk: 0,
            run_uid: "u",
            batch_uid: "b9",
            status: RunStatus::Succeeded,
            error: None,
            results: 2,
        };
        let after = apply_callback(&mut s, &late, 8, true, at(4100));
        assert!(!after.duplicate, "its results are published");
        assert_eq!(after.effects, Effects::default(), "but no status");
        assert_eq!(run(&s).status, Some(RunStatus::TimedOut));
    }

    #[test]
    fn a_schedule_state_is_published_when_it_changes_and_never_again_once_final() {
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
            at(0),
        );
        assert_eq!(
            apply_schedule_status(&mut s, 0, "ACTIVE", StatusSource::Poll, at(1)),
            Effects::default()
        );
        let paused = apply_schedule_status(&mut s, 0, "PAUSED", StatusSource::Poll, at(2))
            .status
            .unwrap();
        assert_eq!(paused.schedule_status.as_deref(), Some("PAUSED"));
        assert_eq!(
            (
                paused.status,
                paused.run_uid,
                paused.schedule_uid.as_deref()
            ),
            (RunStatus::Scheduled, None, Some("s1"))
        );
        assert_eq!(
            apply_schedule_status(&mut s, 0, "PAUSED", StatusSource::Poll, at(3)),
            Effects::default()
        );
        assert!(
            apply_schedule_status(&mut s, 0, "CANCELLED", StatusSource::Control, at(4))
                .status
                .is_some()
        );
        assert!(!schedule_may_change(s.chunks[0].schedule_status.as_deref()));
    }

    #[test]
    fn the_oldest_open_run_is_measured_from_its_first_sighting() {
        let s = running(10);
        assert_eq!(oldest_open(&s, at(100)), Some(Duration::seconds(100)));
        let mut done = s.clone();
        time_out(&mut done, 0, "u", at(100));
        assert_eq!(oldest_open(&done, at(200)), None);
    }
}
