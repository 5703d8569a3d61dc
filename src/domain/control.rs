//! Control commands: what an operator may ask of a request's runs and schedules, how a command
//! is read (strictly: a typo must not silently become another command), which runs or
//! schedules of the request it targets given the run state, and the status events that answer
//! it. Pure: the API calls are made by `owner::control`, and applied by the owner.

use super::decide::Effects;
use super::records::{CommandOutcome, RunState, RunStatusEvent, StatusError, StatusSource};
use super::request::{RejectClass, Rejection};
use super::status::RunStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Command ids remembered per request: a command redelivered after more than this many later
/// commands on the same request is executed again.
pub const REMEMBERED_COMMANDS: usize = 64;

/// Longest accepted `command_id`, `request_id`, `run_uid`, `schedule_uid` and `reason`.
const MAX_ID_LEN: usize = 256;
const MAX_REASON_LEN: usize = 1024;

/// What an operator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `POST /runs/{uid}/resume` for a `BLOCKED` or `STOPPED` run (one, or all of the request).
    ResumeRun,
    /// `POST /schedules/{uid}/pause|resume|cancel` (one schedule, or all of the request).
    PauseSchedule,
    ResumeSchedule,
    CancelSchedule,
    /// Replays every delivery the API records as `FAILED` for the request's runs.
    ReplayCallbacks,
    /// Polls every open run of the request now, whatever its timers say.
    ReconcileNow,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::ResumeRun => "resume_run",
            Command::PauseSchedule => "pause_schedule",
            Command::ResumeSchedule => "resume_schedule",
            Command::CancelSchedule => "cancel_schedule",
            Command::ReplayCallbacks => "replay_callbacks",
            Command::ReconcileNow => "reconcile_now",
        }
    }

    /// Every command, for metrics exported at zero.
    pub const ALL: [Command; 6] = [
        Command::ResumeRun,
        Command::PauseSchedule,
        Command::ResumeSchedule,
        Command::CancelSchedule,
        Command::ReplayCallbacks,
        Command::ReconcileNow,
    ];

    fn is_schedule(self) -> bool {
        matches!(
            self,
            Command::PauseSchedule | Command::ResumeSchedule | Command::CancelSchedule
        )
    }
}

/// One record of the control topic (`schemas/ControlCommand.avsc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlCommand {
    pub command_id: String,
    pub command: Command,
    pub request_id: String,
    #[serde(default)]
    pub run_uid: Option<String>,
    #[serde(default)]
    pub schedule_uid: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Reads and checks a JSON command. The errors name the field, for the dead-letter reason.
pub fn parse_json(bytes: &[u8]) -> Result<ControlCommand, Rejection> {
    let command: ControlCommand = serde_json::from_slice(bytes).map_err(|e| Rejection {
        class: if e.is_data() {
            RejectClass::InvalidShape
        } else {
            RejectClass::NotJson
        },
        message: format!("control command: {e}"),
    })?;
    validate(&command)?;
    Ok(command)
}

/// The checks serde cannot make: ids present and short, targets that fit the command.
pub fn validate(c: &ControlCommand) -> Result<(), Rejection> {
    let invalid = |message: String| Rejection {
        class: RejectClass::InvalidValue,
        message,
    };
    for (field, value) in [("command_id", &c.command_id), ("request_id", &c.request_id)] {
        if value.trim().is_empty() {
            return Err(invalid(format!("{field}: must not be empty")));
        }
    }
    let ids = [
        ("command_id", Some(&c.command_id)),
        ("request_id", Some(&c.request_id)),
        ("run_uid", c.run_uid.as_ref()),
        ("schedule_uid", c.schedule_uid.as_ref()),
    ];
    for (field, value) in ids {
        if value.is_some_and(|v| v.len() > MAX_ID_LEN) {
            return Err(invalid(format!("{field}: longer than {MAX_ID_LEN} bytes")));
        }
    }
    if c.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_LEN) {
        return Err(invalid(format!(
            "reason: longer than {MAX_REASON_LEN} bytes"
        )));
    }
    if c.command.is_schedule() && c.run_uid.is_some() {
        return Err(invalid(format!(
            "run_uid: not a target of {} (use schedule_uid)",
            c.command.as_str()
        )));
    }
    if !c.command.is_schedule() && c.schedule_uid.is_some() {
        return Err(invalid(format!(
            "schedule_uid: not a target of {} (use run_uid)",
            c.command.as_str()
        )));
    }
    Ok(())
}

/// A run of the request: its chunk and uid.
pub type RunAt = (u32, String);

/// What a command does, given the request's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing to do: the reason, published as the outcome.
    Refuse {
        label: &'static str,
        message: String,
    },
    /// Resume these runs.
    ResumeRuns(Vec<RunAt>),
    /// Pause, resume or cancel these schedules (chunk, schedule_uid).
    Schedules(Vec<(u32, String)>),
    /// Replay the failed deliveries of these runs.
    Replay(Vec<RunAt>),
    /// Poll these runs now.
    Reconcile(Vec<RunAt>),
}

/// The targets of `command` in `state`: the run or schedule it names (which must belong to the
/// request), or every one the command applies to.
pub fn plan(state: &RunState, command: &ControlCommand) -> Plan {
    let runs = || {
        state.chunks.iter().flat_map(|c| {
            c.runs
                .iter()
                .map(move |(uid, track)| (c.index, uid.clone(), track))
        })
    };
    let wrong_state = |message: String| Plan::Refuse {
        label: "WRONG_STATE",
        message,
    };
    if let Some(uid) = &command.run_uid {
        if !runs().any(|(_, u, _)| &u == uid) {
            return Plan::Refuse {
                label: "UNKNOWN_RUN",
                message: format!("run {uid} is not a run of request {}", state.request_id),
            };
        }
    }
    let named = |uid: &String| command.run_uid.as_ref().is_none_or(|u| u == uid);
    match command.command {
        Command::ResumeRun => {
            let resumable: Vec<RunAt> = runs()
                .filter(|(_, uid, t)| {
                    named(uid) && matches!(t.status, Some(RunStatus::Blocked | RunStatus::Stopped))
                })
                .map(|(c, uid, _)| (c, uid))
                .collect();
            if resumable.is_empty() {
                return wrong_state("no BLOCKED or STOPPED run to resume".into());
            }
            Plan::ResumeRuns(resumable)
        }
        Command::PauseSchedule | Command::ResumeSchedule | Command::CancelSchedule => {
            let schedules: Vec<(u32, String)> = state
                .chunks
                .iter()
                .filter_map(|c| Some((c.index, c.schedule_uid.clone()?)))
                .collect();
            if schedules.is_empty() {
                return wrong_state(format!("request {} has no schedule", state.request_id));
            }
            match &command.schedule_uid {
                Some(uid) => match schedules.into_iter().find(|(_, s)| s == uid) {
                    Some(one) => Plan::Schedules(vec![one]),
                    None => Plan::Refuse {
                        label: "UNKNOWN_SCHEDULE",
                        message: format!(
                            "schedule {uid} is not a schedule of request {}",
                            state.request_id
                        ),
                    },
                },
                None => Plan::Schedules(schedules),
            }
        }
        Command::ReplayCallbacks => {
            let all: Vec<RunAt> = runs()
                .filter(|(_, uid, _)| named(uid))
                .map(|(c, uid, _)| (c, uid))
                .collect();
            if all.is_empty() {
                return wrong_state("no run yet: nothing was delivered".into());
            }
            Plan::Replay(all)
        }
        Command::ReconcileNow => {
            let open: Vec<RunAt> = runs()
                .filter(|(_, uid, t)| named(uid) && t.is_open())
                .map(|(c, uid, _)| (c, uid))
                .collect();
            if open.is_empty() {
                return wrong_state("every run of the request has its final status".into());
            }
            Plan::Reconcile(open)
        }
    }
}

/// Whether `command_id` was already executed on this request.
pub fn already_executed(state: &RunState, command_id: &str) -> bool {
    state.commands.iter().any(|c| c == command_id)
}

/// Records `command_id` as executed (the oldest is forgotten beyond [`REMEMBERED_COMMANDS`]).
pub fn remember(state: &mut RunState, command_id: &str, now: DateTime<Utc>) {
    if already_executed(state, command_id) {
        return;
    }
    state.commands.push_back(command_id.to_owned());
    while state.commands.len() > REMEMBERED_COMMANDS {
        state.commands.pop_front();
    }
    state.updated_at = now;
}

/// How a command ended, for its outcome event and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
        }
    }
}

/// Where an outcome event points: a run, a schedule, or the request as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub chunk: u32,
    pub run_uid: Option<String>,
    pub schedule_uid: Option<String>,
}

/// How a command ended on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub outcome: Outcome,
    /// Why it was refused, or what the API said when it refused.
    pub error: Option<StatusError>,
    /// What was done (e.g. how many deliveries were replayed).
    pub detail: Option<String>,
}

/// Marks `effects`' status event (the change the command caused) as the command's outcome, or,
/// when the command changed no status, builds an event that repeats the target's current
/// status with the outcome (and the error, when refused).
pub fn answer(
    state: &RunState,
    command: &ControlCommand,
    target: &Target,
    effects: Effects,
    reply: Reply,
    now: DateTime<Utc>,
) -> RunStatusEvent {
    let Reply {
        outcome,
        error,
        detail,
    } = reply;
    let mut event = effects
        .status
        .unwrap_or_else(|| unchanged(state, target, now));
    event.source = StatusSource::Control;
    event.error = error.or(event.error);
    event.command = Some(CommandOutcome {
        command_id: command.command_id.clone(),
        command: command.command.as_str().to_owned(),
        outcome: outcome.as_str().to_owned(),
        reason: command.reason.clone(),
        detail,
    });
    event
}

/// The outcome of a command on a request the bridge does not know: `REJECTED`, with the error
/// saying so (the status topic's records all carry a status; this one is about the command).
pub fn unknown_request(command: &ControlCommand, now: DateTime<Utc>) -> RunStatusEvent {
    RunStatusEvent {
        request_id: command.request_id.clone(),
        run_uid: command.run_uid.clone(),
        schedule_uid: command.schedule_uid.clone(),
        chunk: 0,
        action: String::new(),
        mode: super::request::Mode::Async,
        status: RunStatus::Rejected,
        previous_status: None,
        error: Some(refusal(
            "UNKNOWN_REQUEST",
            format!(
                "no request {} on this deployment (never launched, or its state expired)",
                command.request_id
            ),
        )),
        source: StatusSource::Control,
        occurred_at: now,
        metadata: Default::default(),
        schedule_status: None,
        command: Some(CommandOutcome {
            command_id: command.command_id.clone(),
            command: command.command.as_str().to_owned(),
            outcome: Outcome::Refused.as_str().to_owned(),
            reason: command.reason.clone(),
            detail: None,
        }),
    }
}

/// A refusal's error: label, scope `command`, message.
pub fn refusal(label: &str, message: String) -> StatusError {
    StatusError {
        label: Some(label.to_owned()),
        scope: Some("command".into()),
        message,
        http_status: None,
    }
}

/// An event repeating the target's current status (previous = current: no transition).
fn unchanged(state: &RunState, target: &Target, now: DateTime<Utc>) -> RunStatusEvent {
    let chunk = state.chunks.iter().find(|c| c.index == target.chunk);
    let run = target
        .run_uid
        .as_ref()
        .and_then(|uid| chunk.and_then(|c| c.runs.get(uid)));
    let status = run
        .and_then(|r| r.status)
        .or_else(|| chunk.and_then(|c| c.status))
        .unwrap_or(RunStatus::Created);
    RunStatusEvent {
        request_id: state.request_id.clone(),
        run_uid: target.run_uid.clone(),
        schedule_uid: target
            .schedule_uid
            .clone()
            .or_else(|| chunk.and_then(|c| c.schedule_uid.clone())),
        chunk: target.chunk,
        action: state.action.clone(),
        mode: state.mode,
        status,
        previous_status: Some(status),
        error: None,
        source: StatusSource::Control,
        occurred_at: now,
        metadata: state.metadata.clone(),
        schedule_status: chunk.and_then(|c| c.schedule_status.clone()),
        command: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::domain::records::RunTrack;
    use crate::domain::request::Mode;

    fn state(mode: Mode) -> RunState {
        let mut s = RunState::new("r1", "act", mode, Default::default(), 2);
        s.chunks[0].run_uid = Some("u1".into());
        s.chunks[0].runs.insert(
            "u1".into(),
            RunTrack {
                status: Some(RunStatus::Blocked),
                ..Default::default()
            },
        );
        s.chunks[1].runs.insert(
            "u2".into(),
            RunTrack {
                status: Some(RunStatus::Succeeded),
                ..Default::default()
            },
        );
        s
    }

    fn command(json: &str) -> ControlCommand {
        parse_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_command_with_an_unknown_field_or_command_is_refused_naming_it() {
        let typo =
            parse_json(br#"{"command_id":"c","command":"resume_run","request_id":"r","run":"u"}"#)
                .unwrap_err();
        assert!(
            typo.message.contains("unknown field `run`"),
            "{}",
            typo.message
        );
        let unknown =
            parse_json(br#"{"command_id":"c","command":"stop_run","request_id":"r"}"#).unwrap_err();
        assert!(unknown.message.contains("stop_run"), "{}", unknown.message);
        let garbage = parse_json(b"{not json").unwrap_err();
        assert_eq!(garbage.class, RejectClass::NotJson);
    }

    #[test]
    fn ids_must_be_present_and_targets_must_fit_the_command() {
        for (json, field) in [
            (
                r#"{"command_id":" ","command":"reconcile_now","request_id":"r"}"#,
                "command_id",
            ),
            (
                r#"{"command_id":"c","command":"reconcile_now","request_id":""}"#,
                "request_id",
            ),
            (
                r#"{"command_id":"c","command":"pause_schedule","request_id":"r","run_uid":"u"}"#,
                "run_uid",
            ),
            (
                r#"{"command_id":"c","command":"resume_run","request_id":"r","schedule_uid":"s"}"#,
                "schedule_uid",
            ),
        ] {
            let e = parse_json(json.as_bytes()).unwrap_err();
            assert!(e.message.starts_with(field), "{json}: {}", e.message);
        }
    }

    #[test]
    fn resume_targets_the_blocked_or_stopped_runs_only() {
        let s = state(Mode::Async);
        let c = command(r#"{"command_id":"c","command":"resume_run","request_id":"r1"}"#);
        assert_eq!(plan(&s, &c), Plan::ResumeRuns(vec![(0, "u1".into())]));
        let finished = command(
            r#"{"command_id":"c","command":"resume_run","request_id":"r1","run_uid":"u2"}"#,
        );
        assert!(matches!(
            plan(&s, &finished),
            Plan::Refuse {
                label: "WRONG_STATE",
                ..
            }
        ));
    }

    #[test]
    fn a_run_or_schedule_of_another_request_is_refused() {
        let s = state(Mode::Async);
        let c = command(
            r#"{"command_id":"c","command":"replay_callbacks","request_id":"r1","run_uid":"zz"}"#,
        );
        assert!(matches!(
            plan(&s, &c),
            Plan::Refuse {
                label: "UNKNOWN_RUN",
                ..
            }
        ));
        let mut sched = state(Mode::Schedule);
        sched.chunks[0].schedule_uid = Some("s1".into());
        let other = command(
            r#"{"command_id":"c","command":"cancel_schedule","request_id":"r1","schedule_uid":"s9"}"#,
        );
        assert!(matches!(
            plan(&sched, &other),
            Plan::Refuse {
                label: "UNKNOWN_SCHEDULE",
                ..
            }
        ));
        let all = command(r#"{"command_id":"c","command":"cancel_schedule","request_id":"r1"}"#);
        assert_eq!(plan(&sched, &all), Plan::Schedules(vec![(0, "s1".into())]));
    }

    #[test]
    fn a_schedule_command_on_an_async_request_is_a_wrong_state() {
        let s = state(Mode::Async);
        let c = command(r#"{"command_id":"c","command":"pause_schedule","request_id":"r1"}"#);
        assert!(matches!(
            plan(&s, &c),
            Plan::Refuse {
                label: "WRONG_STATE",
                ..
            }
        ));
    }

    #[test]
    fn reconcile_now_polls_the_open_runs_and_refuses_when_all_are_final() {
        let mut s = state(Mode::Async);
        let c = command(r#"{"command_id":"c","command":"reconcile_now","request_id":"r1"}"#);
        assert_eq!(plan(&s, &c), Plan::Reconcile(vec![(0, "u1".into())]));
        s.chunks[0].runs.get_mut("u1").unwrap().status = Some(RunStatus::Failed);
        assert!(matches!(plan(&s, &c), Plan::Refuse { .. }));
    }

    #[test]
    fn a_remembered_command_is_known_until_64_later_ones_push_it_out() {
        let mut s = state(Mode::Async);
        remember(&mut s, "first", Utc::now());
        remember(&mut s, "first", Utc::now());
        assert_eq!(s.commands.len(), 1);
        for i in 0..REMEMBERED_COMMANDS - 1 {
            remember(&mut s, &format!("c{i}"), Utc::now());
        }
        assert!(already_executed(&s, "first"));
        remember(&mut s, "one-more", Utc::now());
        assert!(!already_executed(&s, "first"));
    }

    #[test]
    fn an_answer_without_a_status_change_repeats_the_current_status() {
        let s = state(Mode::Async);
        let c = command(
            r#"{"command_id":"c9","command":"replay_callbacks","request_id":"r1","reason":"ops"}"#,
        );
        let target = Target {
            chunk: 1,
            run_uid: Some("u2".into()),
            schedule_uid: None,
        };
        let e = answer(
            &s,
            &c,
            &target,
            Effects::default(),
            Reply {
                outcome: Outcome::Accepted,
                error: None,
                detail: Some("2 replays".into()),
            },
            Utc::now(),
        );
        assert_eq!(e.status, RunStatus::Succeeded);
        assert_eq!(e.previous_status, Some(RunStatus::Succeeded));
        assert_eq!(e.source, StatusSource::Control);
        let outcome = e.command.unwrap();
        assert_eq!(
            (
                outcome.command_id.as_str(),
                outcome.outcome.as_str(),
                outcome.reason.as_deref()
            ),
            ("c9", "accepted", Some("ops"))
        );
    }
}
