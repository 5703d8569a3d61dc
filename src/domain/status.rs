//! Run statuses (Captain Data's ten plus the bridge's own three) and the rule that decides
//! which status changes are published: forward only, never out of a terminal status, never twice.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A run's status as published on the status topic.
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
    /// Bridge only: the request was invalid and never submitted.
    Rejected,
    /// Bridge only: the API refused the submission for good.
    SubmitFailed,
    /// Bridge only: no final status arrived in time.
    TimedOut,
}

impl RunStatus {
    /// The ten statuses the Captain Data API itself reports.
    pub const API: [RunStatus; 10] = [
        RunStatus::Created,
        RunStatus::Invalid,
        RunStatus::Queued,
        RunStatus::Scheduled,
        RunStatus::Blocked,
        RunStatus::Stopped,
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::PartialSucceeded,
        RunStatus::Succeeded,
    ];

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
            RunStatus::Rejected => "REJECTED",
            RunStatus::SubmitFailed => "SUBMIT_FAILED",
            RunStatus::TimedOut => "TIMED_OUT",
        }
    }

    /// Final: no further transition is ever published. BLOCKED and STOPPED are not final,
    /// because `resume` brings such a run back to QUEUED.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Invalid
                | RunStatus::Failed
                | RunStatus::PartialSucceeded
                | RunStatus::Succeeded
                | RunStatus::Rejected
                | RunStatus::SubmitFailed
                | RunStatus::TimedOut
        )
    }

    /// Progress order used to ignore late (out-of-order) callbacks: a run that is RUNNING does
    /// not go back to QUEUED because a stale event arrived late. BLOCKED/STOPPED share
    /// RUNNING's rank so that resume (→ QUEUED) is the only way back, and it comes from the API.
    fn rank(self) -> u8 {
        match self {
            RunStatus::Created | RunStatus::Scheduled => 0,
            RunStatus::Queued => 1,
            RunStatus::Running | RunStatus::Blocked | RunStatus::Stopped => 2,
            _ => 3,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a status observed for a run whose last published status is `previous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Publish `previous → next`.
    Publish,
    /// Same status again (duplicate callback): nothing to publish.
    Duplicate,
    /// The run already ended, or `next` is older than what was published: nothing to publish.
    Stale,
}

/// Decides whether `next` is a new, forward transition from `previous`.
pub fn transition(previous: Option<RunStatus>, next: RunStatus) -> Transition {
    let Some(previous) = previous else {
        return Transition::Publish;
    };
    if previous == next {
        return Transition::Duplicate;
    }
    if previous.is_terminal() {
        return Transition::Stale;
    }
    // Resume: a BLOCKED or STOPPED run legitimately goes back to QUEUED (or RUNNING).
    let resumed = matches!(previous, RunStatus::Blocked | RunStatus::Stopped)
        && matches!(next, RunStatus::Queued | RunStatus::Running);
    if resumed || next.rank() >= previous.rank() {
        Transition::Publish
    } else {
        Transition::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_status_is_always_published() {
        assert_eq!(transition(None, RunStatus::Running), Transition::Publish);
    }

    #[test]
    fn the_same_status_twice_is_a_duplicate() {
        assert_eq!(
            transition(Some(RunStatus::Running), RunStatus::Running),
            Transition::Duplicate
        );
    }

    #[test]
    fn nothing_moves_a_run_out_of_a_terminal_status() {
        for next in RunStatus::API {
            if next != RunStatus::Succeeded {
                assert_eq!(
                    transition(Some(RunStatus::Succeeded), next),
                    Transition::Stale,
                    "{next}"
                );
            }
        }
    }

    #[test]
    fn a_late_queued_after_running_is_stale() {
        assert_eq!(
            transition(Some(RunStatus::Running), RunStatus::Queued),
            Transition::Stale
        );
    }

    #[test]
    fn a_resumed_run_goes_back_to_queued() {
        assert_eq!(
            transition(Some(RunStatus::Blocked), RunStatus::Queued),
            Transition::Publish
        );
    }

    #[test]
    fn a_final_status_ends_a_running_run() {
        assert_eq!(
            transition(Some(RunStatus::Running), RunStatus::PartialSucceeded),
            Transition::Publish
        );
    }

    #[test]
    fn statuses_serialize_as_the_api_spells_them() {
        let json = serde_json::to_string(&RunStatus::PartialSucceeded).ok();
        assert_eq!(json.as_deref(), Some("\"PARTIAL_SUCCEEDED\""));
    }
}
