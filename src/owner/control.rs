//! The API calls of control commands, made off the owner's loop like the reconciler's (and
//! paced like them): resuming runs, pausing, resuming or cancelling schedules, replaying a
//! request's failed deliveries. Each command reports once, with one answer per target; the
//! owner turns the answers into outcome events (`owner::core::control`).

use super::jobs::{JobMessage, JobReports};
use super::reconcile::{polled, schedule_status, CheckFailure, Polled, Reconciler};
use crate::captain::{ScheduleCommand, SubmitError};
use crate::domain::control::{Command, ControlCommand};
use crate::domain::reconcile::DeliveryState;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a command's job does, per target.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandWork {
    /// Resume these runs (chunk, run_uid).
    ResumeRuns(Vec<(u32, String)>),
    /// Pause, resume or cancel these schedules (chunk, schedule_uid).
    Schedules(ScheduleCommand, Vec<(u32, String)>),
    /// Replay the failed original deliveries of these runs whose batch was not received
    /// (chunk, run_uid, batches received).
    Replay(Vec<(u32, String, BTreeSet<String>)>),
}

/// What the API answered for one target.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetAnswer {
    Resumed {
        chunk: u32,
        run_uid: String,
        answer: Result<Polled, CheckFailure>,
    },
    Schedule {
        chunk: u32,
        schedule_uid: String,
        answer: Result<String, CheckFailure>,
    },
    Replayed {
        chunk: u32,
        run_uid: String,
        /// The replays, or why the deliveries could not be listed.
        answer: Result<Replays, CheckFailure>,
    },
}

/// Replays a command asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replays {
    /// (original callback_uid, batch_uid) of each replay the API accepted.
    pub requested: Vec<(String, Option<String>)>,
    /// Originals the API refused to replay again (its limit of 3 reached).
    pub refused: Vec<String>,
}

/// A command's job: where its record was, and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandDone {
    pub partition: i32,
    pub offset: i64,
    pub command: ControlCommand,
    pub answers: Vec<TargetAnswer>,
}

impl Reconciler {
    /// Executes `work` for the command read at `partition`/`offset`.
    pub fn spawn_command(
        self: &Arc<Self>,
        partition: i32,
        offset: i64,
        command: ControlCommand,
        work: CommandWork,
        reports: JobReports,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let answers = match work {
                CommandWork::ResumeRuns(runs) => this.resume(runs).await,
                CommandWork::Schedules(action, schedules) => this.manage(action, schedules).await,
                CommandWork::Replay(runs) => this.replay_failed(runs).await,
            };
            reports.send(JobMessage::Commanded(Box::new(CommandDone {
                partition,
                offset,
                command,
                answers,
            })));
        });
    }

    async fn resume(&self, runs: Vec<(u32, String)>) -> Vec<TargetAnswer> {
        let mut answers = Vec::with_capacity(runs.len());
        for (chunk, run_uid) in runs {
            self.pace().await;
            let answer = self
                .client
                .resume_run(&run_uid)
                .await
                .map(polled)
                .map_err(CheckFailure::from);
            answers.push(TargetAnswer::Resumed {
                chunk,
                run_uid,
                answer,
            });
        }
        answers
    }

    async fn manage(
        &self,
        action: ScheduleCommand,
        schedules: Vec<(u32, String)>,
    ) -> Vec<TargetAnswer> {
        let mut answers = Vec::with_capacity(schedules.len());
        for (chunk, schedule_uid) in schedules {
            self.pace().await;
            let answer = self
                .client
                .manage_schedule(&schedule_uid, action)
                .await
                .map(|s| {
                    s.status
                        .map(schedule_status)
                        .unwrap_or("UNKNOWN")
                        .to_owned()
                })
                .map_err(CheckFailure::from);
            answers.push(TargetAnswer::Schedule {
                chunk,
                schedule_uid,
                answer,
            });
        }
        answers
    }

    async fn replay_failed(&self, runs: Vec<(u32, String, BTreeSet<String>)>) -> Vec<TargetAnswer> {
        let mut answers = Vec::with_capacity(runs.len());
        for (chunk, run_uid, received) in runs {
            let listed = match self.deliveries(&[run_uid.as_str()]).await {
                Ok(Some(mut found)) => Ok(found.remove(&run_uid).unwrap_or_default()),
                Ok(None) => Err(CheckFailure {
                    message: "too many deliveries to list at once".into(),
                    permanent: false,
                }),
                Err(e) => Err(CheckFailure::from(e)),
            };
            let answer = match listed {
                Ok(deliveries) => {
                    // Originals that failed and whose batch never arrived (a replay of a
                    // replay is refused by the API; a received batch needs no replay).
                    let failed = deliveries.into_iter().filter(|d| {
                        d.state == DeliveryState::Failed
                            && d.parent_uid.is_none()
                            && d.batch_uid.as_ref().is_none_or(|b| !received.contains(b))
                    });
                    let mut requested = Vec::new();
                    let mut refused = Vec::new();
                    for d in failed {
                        self.pace().await;
                        match self.client.replay_callback(&d.uid).await {
                            Ok(_) => requested.push((d.uid, d.batch_uid)),
                            Err(SubmitError::Rejected { http_status, .. }) if http_status < 500 => {
                                refused.push(d.uid)
                            }
                            Err(e) => {
                                tracing::warn!(%run_uid, callback_uid = %d.uid, error = %e,
                                    "replay asked by a control command not requested");
                            }
                        }
                    }
                    Ok(Replays { requested, refused })
                }
                Err(e) => Err(e),
            };
            answers.push(TargetAnswer::Replayed {
                chunk,
                run_uid,
                answer,
            });
        }
        answers
    }
}

/// The schedule action of a schedule command.
pub fn schedule_action(command: Command) -> Option<ScheduleCommand> {
    match command {
        Command::PauseSchedule => Some(ScheduleCommand::Pause),
        Command::ResumeSchedule => Some(ScheduleCommand::Resume),
        Command::CancelSchedule => Some(ScheduleCommand::Cancel),
        _ => None,
    }
}
