//! Control commands in the owner: a command forwarded by the router arrives on the requests
//! topic, in order with its request's other events. It is checked against the run state
//! (unknown request, already executed, wrong state: answered at once), then executed by a job
//! (`owner::control`) when it needs the API; the answers become outcome events (`source:
//! control`) in the transaction that also records the command id in the run state, and only
//! then does the command's offset complete. A command whose partition moves before its answer
//! is applied is executed again by the new owner (the API side is at least once, like
//! submissions).

use super::Core;
use crate::domain::control::{
    self, already_executed, answer, plan, refusal, remember, unknown_request, ControlCommand,
    Outcome, Plan, Reply, Target,
};
use crate::domain::reconcile::{
    apply_reported, apply_schedule_status, exhaust_replays, note_replays,
};
use crate::domain::{Effects, StatusSource};
use crate::kafka::InboundRecord;
use crate::owner::control::{schedule_action, CommandDone, CommandWork, Replays, TargetAnswer};
use crate::owner::reconcile::RunRef;
use chrono::Utc;

impl Core {
    /// A control command read from the requests topic.
    pub(super) fn on_control(&mut self, record: InboundRecord) {
        // A request's commands run one after the other, in topic order (a resume then a
        // cancel must reach the API in that order): a command waits while another of its
        // request is executing.
        let key = record.key.as_deref().map(String::from_utf8_lossy);
        if let Some(waiting) = key.and_then(|k| self.commands_waiting.get_mut(k.as_ref())) {
            waiting.push_back(record);
            return;
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        let command = match control::parse_json(payload) {
            Ok(c) => c,
            Err(rejection) => {
                return self
                    .dead_letter(&record, format!("control command unreadable: {rejection}"))
            }
        };
        let (p, offset) = (record.partition, record.offset);
        let topic = record.topic;
        let now = Utc::now();
        let running = (command.request_id.clone(), command.command_id.clone());
        let Some(state) = self
            .owned
            .get(&p)
            .and_then(|o| o.runs.get(&command.request_id))
        else {
            self.count_command(&command, "refused");
            let event = unknown_request(&command, now);
            self.send_status(&event, "control command status");
            return self.complete(&topic, p, offset);
        };
        if already_executed(state, &command.command_id) || self.commands_running.contains(&running)
        {
            // Executed (or being executed): its outcome is, or will be, on the status topic.
            self.count_command(&command, "duplicate");
            return self.complete(&topic, p, offset);
        }
        let work = match plan(state, &command) {
            Plan::Refuse { label, message } => {
                let target = Target {
                    chunk: 0,
                    run_uid: command.run_uid.clone(),
                    schedule_uid: command.schedule_uid.clone(),
                };
                let reply = Reply {
                    outcome: Outcome::Refused,
                    error: Some(refusal(label, message)),
                    detail: None,
                };
                self.answer_command(p, &command, vec![(target, Effects::default(), reply)]);
                return self.complete(&topic, p, offset);
            }
            Plan::Reconcile(runs) => {
                let polled = self.reconcile_now(p, &command.request_id, &runs);
                let target = Target {
                    chunk: runs.first().map_or(0, |(c, _)| *c),
                    run_uid: command.run_uid.clone(),
                    schedule_uid: None,
                };
                let reply = Reply {
                    outcome: Outcome::Accepted,
                    error: None,
                    detail: Some(format!("{polled} run(s) polled now")),
                };
                self.answer_command(p, &command, vec![(target, Effects::default(), reply)]);
                return self.complete(&topic, p, offset);
            }
            Plan::ResumeRuns(runs) => CommandWork::ResumeRuns(runs),
            Plan::Schedules(schedules) => match schedule_action(command.command) {
                Some(action) => CommandWork::Schedules(action, schedules),
                None => return self.complete(&topic, p, offset),
            },
            Plan::Replay(runs) => CommandWork::Replay(
                runs.into_iter()
                    .map(|(chunk, uid)| {
                        let received = state
                            .chunks
                            .iter()
                            .find(|c| c.index == chunk)
                            .and_then(|c| c.runs.get(&uid))
                            .map(|t| t.batches.iter().cloned().collect())
                            .unwrap_or_default();
                        (chunk, uid, received)
                    })
                    .collect(),
            ),
        };
        let Some(reconciler) = self.reconciler.clone() else {
            // Not reached in the product (app.rs always installs it); refused rather than
            // leaving the command's offset pending forever.
            let target = Target {
                chunk: 0,
                run_uid: command.run_uid.clone(),
                schedule_uid: command.schedule_uid.clone(),
            };
            let reply = Reply {
                outcome: Outcome::Refused,
                error: Some(refusal("API_ERROR", "no API client in this process".into())),
                detail: None,
            };
            self.answer_command(p, &command, vec![(target, Effects::default(), reply)]);
            return self.complete(&topic, p, offset);
        };
        self.commands_waiting
            .insert(command.request_id.clone(), Default::default());
        self.commands_running.insert(running);
        reconciler.spawn_command(p, offset, command, work, self.reports.clone());
    }

    /// A command's job reported: its answers become outcome events, and its offset completes.
    pub(super) fn on_commanded(&mut self, done: CommandDone) {
        let CommandDone {
            partition: p,
            offset,
            command,
            answers,
        } = done;
        self.commands_running
            .remove(&(command.request_id.clone(), command.command_id.clone()));
        let waiting = self.commands_waiting.remove(&command.request_id);
        if !self.owned.contains_key(&p) {
            // Revoked meanwhile: the new owner executes it (and those waiting) again, their
            // offsets are not committed.
            return;
        }
        let now = Utc::now();
        let max_replays = self.reconcile.as_ref().map_or(3, |c| c.max_replays);
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            let reply = match answer {
                TargetAnswer::Resumed {
                    chunk,
                    run_uid,
                    answer,
                } => {
                    let run = self.run_ref(p, &command, chunk, &run_uid);
                    let target = Target {
                        chunk,
                        run_uid: Some(run_uid.clone()),
                        schedule_uid: None,
                    };
                    match answer {
                        Ok(polled) => {
                            let effects = match polled.status {
                                Some(status) => self.with_state(&run, |state| {
                                    apply_reported(
                                        state,
                                        chunk,
                                        &run_uid,
                                        status,
                                        polled.error,
                                        StatusSource::Control,
                                        now,
                                    )
                                }),
                                None => Effects::default(),
                            };
                            (target, effects, accepted(None))
                        }
                        Err(e) => (target, Effects::default(), api_refused(&e.message)),
                    }
                }
                TargetAnswer::Schedule {
                    chunk,
                    schedule_uid,
                    answer,
                } => {
                    let run = self.run_ref(p, &command, chunk, "");
                    let target = Target {
                        chunk,
                        run_uid: None,
                        schedule_uid: Some(schedule_uid),
                    };
                    match answer {
                        Ok(status) => {
                            let effects = self.with_state(&run, |state| {
                                apply_schedule_status(
                                    state,
                                    chunk,
                                    &status,
                                    StatusSource::Control,
                                    now,
                                )
                            });
                            (
                                target,
                                effects,
                                accepted(Some(format!("schedule {status}"))),
                            )
                        }
                        Err(e) => (target, Effects::default(), api_refused(&e.message)),
                    }
                }
                TargetAnswer::Replayed {
                    chunk,
                    run_uid,
                    answer,
                } => {
                    let run = self.run_ref(p, &command, chunk, &run_uid);
                    let target = Target {
                        chunk,
                        run_uid: Some(run_uid.clone()),
                        schedule_uid: None,
                    };
                    match answer {
                        Ok(Replays { requested, refused }) => {
                            self.metrics
                                .reconcile
                                .replays_requested
                                .inc_by(requested.len() as u64);
                            self.with_state(&run, |state| {
                                if let Some(track) = state.chunk_mut(chunk).runs.get_mut(&run_uid) {
                                    note_replays(track, &requested);
                                    for uid in &refused {
                                        exhaust_replays(track, uid, max_replays);
                                    }
                                }
                                Effects::default()
                            });
                            let detail = format!(
                                "{} failed deliveries replayed, {} refused by the API",
                                requested.len(),
                                refused.len()
                            );
                            (target, Effects::default(), accepted(Some(detail)))
                        }
                        Err(e) => (target, Effects::default(), api_refused(&e.message)),
                    }
                }
            };
            replies.push(reply);
        }
        self.answer_command(p, &command, replies);
        let topic = self.config.requests_topic.clone();
        self.complete(&topic, p, offset);
        for record in waiting.into_iter().flatten() {
            self.on_control(record);
        }
    }

    /// Publishes one outcome event per target and records the command as executed.
    fn answer_command(
        &mut self,
        p: i32,
        command: &ControlCommand,
        replies: Vec<(Target, Effects, Reply)>,
    ) {
        let now = Utc::now();
        let Some(state) = self
            .owned
            .get_mut(&p)
            .and_then(|o| o.runs.get_mut(&command.request_id))
        else {
            return;
        };
        remember(state, &command.command_id, now);
        let mut events = Vec::with_capacity(replies.len());
        let mut refused = false;
        for (target, effects, reply) in replies {
            refused |= reply.outcome == Outcome::Refused;
            events.push(answer(state, command, &target, effects, reply, now));
        }
        self.dirty.insert((p, command.request_id.clone()));
        for event in &events {
            self.send_status(event, "control command status");
        }
        self.count_command(command, if refused { "refused" } else { "accepted" });
    }

    /// Polls `runs` now, whatever their timers say (a run already being checked is left to
    /// that check). Returns how many polls started.
    fn reconcile_now(&mut self, p: i32, request_id: &str, runs: &[(u32, String)]) -> usize {
        let Some(reconciler) = self.reconciler.clone() else {
            return 0;
        };
        let now = Utc::now();
        let mut started = 0;
        for (chunk, run_uid) in runs {
            let run = RunRef {
                request_id: request_id.to_owned(),
                partition: p,
                chunk: *chunk,
                run_uid: run_uid.clone(),
            };
            if self.checking.contains(&run) {
                continue;
            }
            self.start_check(&run, now);
            self.reconcile_calls += 1;
            reconciler.spawn_check(run, true, self.reports.clone());
            started += 1;
        }
        started
    }

    fn run_ref(&self, p: i32, command: &ControlCommand, chunk: u32, run_uid: &str) -> RunRef {
        RunRef {
            request_id: command.request_id.clone(),
            partition: p,
            chunk,
            run_uid: run_uid.to_owned(),
        }
    }

    fn count_command(&self, command: &ControlCommand, outcome: &str) {
        self.metrics
            .reconcile
            .control_commands
            .with_label_values(&[command.command.as_str(), outcome])
            .inc();
    }
}

fn accepted(detail: Option<String>) -> Reply {
    Reply {
        outcome: Outcome::Accepted,
        error: None,
        detail,
    }
}

fn api_refused(message: &str) -> Reply {
    Reply {
        outcome: Outcome::Refused,
        error: Some(refusal("API_ERROR", message.to_owned())),
        detail: None,
    }
}
