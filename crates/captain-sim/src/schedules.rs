//! Schedules: cron (POSIX 5-field, croner) and timezone (chrono-tz) checks, next-firing
//! computation, the state machine (ACTIVE <-> PAUSED, -> CANCELLED, one-shot -> COMPLETED) and
//! the scheduler task that fires due schedules in simulated time, each firing an ASYNC run.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use uuid::Uuid;

use crate::error::ApiError;
use crate::lifecycle::start_run;
use crate::state::SimState;
use crate::stats::bump;
use crate::store::{Owner, RunRequest, Schedule, ScheduleStatus};

/// Parses a POSIX 5-field cron expression; anything else (seconds, years, `@nicknames`) is
/// refused because the API documents POSIX cron.
pub fn parse_cron(text: &str) -> Result<Cron, ApiError> {
    let fields = text.split_whitespace().count();
    let invalid = |why: String| {
        ApiError::invalid_param(format!("cron: invalid cron expression {text:?}: {why}"))
            .param("field", "cron")
    };
    if fields != 5 || text.contains('@') {
        return Err(invalid(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), got {fields}"
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| invalid(e.to_string()))
}

/// Parses an IANA timezone name.
pub fn parse_timezone(text: &str) -> Result<Tz, ApiError> {
    Tz::from_str(text).map_err(|_| {
        ApiError::invalid_param(format!("timezone: unknown IANA timezone {text:?}"))
            .param("field", "timezone")
    })
}

/// Parses `schedule_at` (RFC 3339 date-time).
pub fn parse_schedule_at(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::invalid_param(format!(
                "schedule_at: {text:?} is not an RFC 3339 date-time: {e}"
            ))
            .param("field", "schedule_at")
        })
}

/// First cron occurrence at or after `from` (strictly after when `inclusive` is false).
pub fn next_cron(
    cron: &Cron,
    tz: Tz,
    from: DateTime<Utc>,
    inclusive: bool,
) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&from.with_timezone(&tz), inclusive)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Settings of a new schedule, already checked.
pub struct NewSchedule {
    pub cron: Option<(String, Cron)>,
    pub timezone: Tz,
    pub timezone_given: bool,
    pub schedule_at: Option<DateTime<Utc>>,
}

/// Creates an ACTIVE schedule and wakes the scheduler.
pub fn create(
    state: &Arc<SimState>,
    owner: Owner,
    request: Arc<RunRequest>,
    settings: NewSchedule,
) -> Result<Schedule, ApiError> {
    let now = state.clock.now();
    let next = match (&settings.cron, settings.schedule_at) {
        (Some((_, cron)), at) => {
            let from = at.map_or(now, |at| at.max(now));
            Some(
                next_cron(cron, settings.timezone, from, at.is_some_and(|a| a >= now))
                    .ok_or_else(|| ApiError::invalid_param("cron: the expression never fires"))?,
            )
        }
        (None, Some(at)) => Some(at),
        (None, None) => {
            return Err(ApiError::invalid_param(
                "either cron or schedule_at is required",
            ))
        }
    };
    let schedule = Schedule {
        seq: state.next_seq(),
        uid: Uuid::new_v4(),
        owner,
        request,
        status: ScheduleStatus::Active,
        cron: settings.cron,
        timezone: settings.timezone,
        timezone_given: settings.timezone_given,
        next_execution_at: next,
        last_executed_at: None,
        created_at: now,
        updated_at: None,
        firings: 0,
    };
    Ok(schedule)
}

/// The transitions `pause`, `resume`, `cancel`.
pub fn transition(
    state: &SimState,
    owner: Owner,
    uid: Uuid,
    action: &str,
) -> Result<crate::store::ScheduleView, ApiError> {
    let now = state.clock.now();
    let mut schedules = state.store.schedules();
    let schedule = schedules
        .get_mut(&uid)
        .filter(|s| s.owner.workspace_uid == owner.workspace_uid)
        .ok_or_else(|| schedule_not_found(uid))?;
    let from = schedule.status;
    let to = match (action, from) {
        ("pause", ScheduleStatus::Active) => ScheduleStatus::Paused,
        ("resume", ScheduleStatus::Paused) => ScheduleStatus::Active,
        ("cancel", ScheduleStatus::Active | ScheduleStatus::Paused) => ScheduleStatus::Cancelled,
        ("pause" | "resume" | "cancel", _) => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "INVALID_SCHEDULE_TRANSITION",
                format!("cannot {action} schedule {uid}: it is {}", from.as_str()),
            )
            .scope(crate::error::ErrorScope::Param)
            .param("status", from.as_str()))
        }
        _ => {
            return Err(ApiError::invalid_param(format!(
                "action: {action:?} is not one of pause, resume, cancel"
            )))
        }
    };
    schedule.status = to;
    schedule.updated_at = Some(now);
    match to {
        ScheduleStatus::Cancelled => schedule.next_execution_at = None,
        ScheduleStatus::Active => {
            // A resumed cron schedule skips the firings it missed while paused.
            if let Some((_, cron)) = &schedule.cron {
                schedule.next_execution_at = next_cron(cron, schedule.timezone, now, false);
            }
            state.schedule_wake.notify_one();
        }
        _ => {}
    }
    Ok(schedule.view())
}

/// The 404 for an unknown (or other workspace's) schedule.
pub fn schedule_not_found(uid: Uuid) -> ApiError {
    ApiError::not_found(
        "SCHEDULE_404_NOT_FOUND",
        format!("schedule {uid} not found"),
    )
    .param("scheduled_run_uid", uid.to_string())
}

/// Fires due schedules until shutdown.
pub async fn run(state: Arc<SimState>) {
    loop {
        let now = state.clock.now();
        let mut due = Vec::new();
        let mut next_wake: Option<DateTime<Utc>> = None;
        {
            let mut schedules = state.store.schedules();
            for schedule in schedules.values_mut() {
                if schedule.status != ScheduleStatus::Active {
                    continue;
                }
                let Some(at) = schedule.next_execution_at else {
                    continue;
                };
                if at > now {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                schedule.last_executed_at = Some(now);
                schedule.updated_at = Some(now);
                schedule.firings += 1;
                match &schedule.cron {
                    Some((_, cron)) => {
                        // Missed occurrences (e.g. a slow tick) collapse into one firing.
                        schedule.next_execution_at =
                            next_cron(cron, schedule.timezone, now.max(at), false);
                        if let Some(n) = schedule.next_execution_at {
                            next_wake = Some(next_wake.map_or(n, |w| w.min(n)));
                        }
                    }
                    None => {
                        schedule.status = ScheduleStatus::Completed;
                        schedule.next_execution_at = None;
                    }
                }
                due.push((schedule.owner, schedule.request.clone()));
            }
        }
        for (owner, request) in due {
            bump(&state.stats.schedule_firings);
            start_run(&state, owner, request);
        }
        let wait = next_wake
            .map(|at| state.clock.real_until(at))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            alive = state.sleep(wait) => if !alive { return },
            _ = state.schedule_wake.notified() => {}
        }
        if state.is_shutting_down() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posix_five_field_cron_is_accepted() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("0 8 * * MON").is_ok());
        assert!(parse_cron("* * * * * *").is_err());
        assert!(parse_cron("@daily").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn cron_follows_the_timezone() {
        let cron = parse_cron("0 8 * * *").unwrap();
        let from = DateTime::parse_from_rfc3339("2025-01-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = next_cron(&cron, parse_timezone("Europe/Paris").unwrap(), from, false).unwrap();
        assert_eq!(next.to_rfc3339(), "2025-01-10T07:00:00+00:00");
    }
}
