//! Closing the runs of the owned partitions: on every tick, each run that needs a look (a final
//! status waiting for its delivery audit, a silence, a deadline) and each active schedule gets
//! it, within `reconcile.max_in_flight` checks at once. Checks run as jobs
//! (`owner::reconcile`); their reports come back here and are applied in the transaction like
//! any event. A partition that moves takes its runs' reconcile state with it (it is part of the
//! run state), so the new owner goes on where this one stopped.

use super::Core;
use crate::domain::reconcile::{
    apply_reported, apply_schedule_status, exhaust_replays, finalize, mark_checked, next_check,
    note_replays, oldest_open, plan_audit, schedule_may_change, time_out, Check, Delivery,
    ReconcileTimers,
};
use crate::domain::{Effects, StatusSource};
use crate::kafka::TopicPartition;
use crate::owner::jobs::JobMessage;
use crate::owner::reconcile::{CheckFailure, Polled, Reconciler, RunRef};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// The reconciler's settings inside the owner.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub timers: ReconcileTimers,
    pub max_replays: u8,
    pub max_in_flight: usize,
    pub schedule_interval: chrono::Duration,
    /// How often the owner looks for runs that need a check.
    pub tick: std::time::Duration,
}

/// Runs audited by one listing of deliveries (the API's page holds 20 records; most runs
/// have none in flight or failed, so one page usually answers for the whole batch).
const AUDIT_BATCH: usize = 20;

/// A schedule check to start: (partition, request_id, chunk, schedule_uid).
type ScheduleCheck = (i32, String, u32, String);

impl Core {
    /// One reconcile pass: looks for runs and schedules that need a check, starts what the
    /// budget (`max_in_flight` calls) allows, times out what is past its deadline, and updates
    /// the oldest-open-run gauge. Returns whether due checks were left for lack of a call slot:
    /// the caller then runs the next pass when a slot frees instead of a tick later (a burst of
    /// final statuses waiting for their audit was otherwise audited at most `max_in_flight`
    /// batches per tick: 160 runs/s with the defaults, measured as the cap on SUCCEEDED/s).
    pub fn reconcile_tick(&mut self, now: DateTime<Utc>) -> bool {
        let (Some(config), Some(reconciler)) = (self.reconcile.clone(), self.reconciler.clone())
        else {
            return false;
        };
        let mut left = false;
        let mut oldest = chrono::Duration::zero();
        // The bool: a v3 job (polled through the v3 API, never audited like v4 deliveries).
        let mut due: Vec<(RunRef, Check, bool)> = Vec::new();
        let mut audits: Vec<RunRef> = Vec::new();
        let mut schedules: Vec<ScheduleCheck> = Vec::new();
        for (p, owned) in &self.owned {
            for (request_id, state) in &owned.runs {
                if let Some(age) = oldest_open(state, now) {
                    oldest = oldest.max(age);
                }
                for chunk in &state.chunks {
                    if let Some(schedule_uid) = &chunk.schedule_uid {
                        let checked_long_ago = chunk
                            .schedule_checked_at
                            .is_none_or(|at| now - at >= config.schedule_interval);
                        if checked_long_ago
                            && schedule_may_change(chunk.schedule_status.as_deref())
                            && !self.schedules_checking.contains(&(
                                *p,
                                request_id.clone(),
                                chunk.index,
                            ))
                        {
                            schedules.push((
                                *p,
                                request_id.clone(),
                                chunk.index,
                                schedule_uid.clone(),
                            ));
                        }
                    }
                    for (run_uid, run) in &chunk.runs {
                        let Some(check) = next_check(run, now, &config.timers) else {
                            continue;
                        };
                        let run = RunRef {
                            request_id: request_id.clone(),
                            partition: *p,
                            chunk: chunk.index,
                            run_uid: run_uid.clone(),
                        };
                        if !self.checking.contains(&run) {
                            due.push((run, check, state.mode == crate::domain::Mode::Workflow));
                        }
                    }
                }
            }
        }
        self.metrics
            .reconcile
            .oldest_open_run_age
            .set(oldest.num_milliseconds() as f64 / 1000.0);
        for (run, check, v3) in due {
            match check {
                Check::Poll | Check::Audit if v3 => {
                    self.poll_v3_job(&run, now);
                }
                Check::TimeOut => {
                    let effects = self
                        .with_state(&run, |state| time_out(state, run.chunk, &run.run_uid, now));
                    if effects.status.is_some() {
                        self.metrics.reconcile.runs_timed_out.inc();
                    }
                    self.publish(&run, effects);
                }
                Check::AuditExpired => {
                    let effects = self.with_state(&run, |state| {
                        finalize(
                            state,
                            run.chunk,
                            &run.run_uid,
                            &[],
                            Some("no audit completed within reconcile.audit_timeout"),
                            now,
                        )
                    });
                    self.publish(&run, effects);
                }
                Check::Audit => audits.push(run),
                Check::Poll => {
                    if self.reconcile_calls >= config.max_in_flight {
                        left = true;
                        continue;
                    }
                    self.start_check(&run, now);
                    self.reconcile_calls += 1;
                    reconciler.spawn_check(run, true, self.reports.clone());
                }
            }
        }
        // Audits go in batches: one listing covers up to AUDIT_BATCH runs.
        for batch in audits.chunks(AUDIT_BATCH) {
            if self.reconcile_calls >= config.max_in_flight {
                left = true;
                break;
            }
            for run in batch {
                self.start_check(run, now);
            }
            self.reconcile_calls += 1;
            reconciler.spawn_audit(batch.to_vec(), self.reports.clone());
        }
        for (p, request_id, chunk, schedule_uid) in schedules {
            if self.reconcile_calls >= config.max_in_flight {
                left = true;
                break;
            }
            self.reconcile_calls += 1;
            if let Some(state) = self
                .owned
                .get_mut(&p)
                .and_then(|o| o.runs.get_mut(&request_id))
            {
                state.chunk_mut(chunk).schedule_checked_at = Some(now);
            }
            self.schedules_checking
                .insert((p, request_id.clone(), chunk));
            reconciler.spawn_schedule_check(
                request_id,
                p,
                chunk,
                schedule_uid,
                self.reports.clone(),
            );
        }
        left
    }

    /// Whether a reconcile call could start now.
    pub fn reconcile_slot_free(&self) -> bool {
        self.reconcile
            .as_ref()
            .is_some_and(|c| self.reconcile_calls < c.max_in_flight)
    }

    /// Applies `change` to `run`'s request state (marked to be written), if this instance still
    /// owns it.
    /// Notes that `run` is being checked, so no second check starts before this one reports.
    pub(super) fn start_check(&mut self, run: &RunRef, now: DateTime<Utc>) {
        self.with_state(run, |state| {
            mark_checked(state, run.chunk, &run.run_uid, now);
            Effects::default()
        });
        self.checking.insert(run.clone());
    }

    pub(super) fn with_state(
        &mut self,
        run: &RunRef,
        change: impl FnOnce(&mut crate::domain::RunState) -> Effects,
    ) -> Effects {
        let Some(owned) = self.owned.get_mut(&run.partition) else {
            return Effects::default();
        };
        let Some(state) = owned.runs.get_mut(&run.request_id) else {
            return Effects::default();
        };
        let effects = change(state);
        owned.open_runs += effects.open_runs;
        self.metrics.runs_in_flight.add(effects.open_runs);
        self.dirty.insert((run.partition, run.request_id.clone()));
        effects
    }

    pub(super) fn publish(&mut self, run: &RunRef, effects: Effects) {
        if let Some(event) = effects.status {
            self.send_status(&event, "reconciled status");
            self.dirty.insert((run.partition, run.request_id.clone()));
        }
    }

    /// A reconcile job's report.
    pub(super) fn on_reconcile_message(&mut self, message: JobMessage) {
        // Every reconcile job reports once: its call slot is free again.
        self.reconcile_calls = self.reconcile_calls.saturating_sub(1);
        match message {
            JobMessage::Checked {
                run,
                polled,
                deliveries,
                callbacks_high,
            } => self.on_checked(run, polled, deliveries, callbacks_high),
            JobMessage::Audited { checked, highs } => {
                for (run, deliveries) in checked {
                    let high = highs.get(&run.partition).copied().flatten();
                    self.on_checked(run, None, deliveries, high);
                }
            }
            JobMessage::Replayed {
                run,
                requested,
                exhausted,
            } => {
                self.checking.remove(&run);
                self.metrics
                    .reconcile
                    .replays_requested
                    .inc_by(requested.len() as u64);
                let max = self.reconcile.as_ref().map_or(3, |c| c.max_replays);
                self.with_state(&run, |state| {
                    if let Some(track) = state.chunk_mut(run.chunk).runs.get_mut(&run.run_uid) {
                        note_replays(track, &requested);
                        for uid in &exhausted {
                            exhaust_replays(track, uid, max);
                        }
                    }
                    Effects::default()
                });
            }
            JobMessage::ScheduleChecked {
                request_id,
                partition,
                chunk,
                status,
            } => {
                self.schedules_checking
                    .remove(&(partition, request_id.clone(), chunk));
                let run = RunRef {
                    request_id,
                    partition,
                    chunk,
                    run_uid: String::new(),
                };
                match status {
                    Ok(status) => {
                        let now = Utc::now();
                        let effects = self.with_state(&run, |state| {
                            apply_schedule_status(state, chunk, &status, StatusSource::Poll, now)
                        });
                        self.publish(&run, effects);
                    }
                    Err(e) => {
                        self.metrics
                            .reconcile
                            .errors
                            .with_label_values(&["schedule"])
                            .inc();
                        tracing::warn!(request_id = %run.request_id, chunk, error = %e, "schedule state not read");
                    }
                }
            }
            other => tracing::error!(?other, "not a reconcile report"),
        }
    }

    fn on_checked(
        &mut self,
        run: RunRef,
        polled: Option<Result<Polled, CheckFailure>>,
        deliveries: Result<Vec<Delivery>, CheckFailure>,
        callbacks_high: Option<i64>,
    ) {
        self.checking.remove(&run);
        let now = Utc::now();
        if let Some(polled) = polled {
            self.metrics.reconcile.runs_polled.inc();
            match polled {
                Ok(Polled {
                    status: Some(status),
                    error,
                }) => {
                    let effects = self.with_state(&run, |state| {
                        apply_reported(
                            state,
                            run.chunk,
                            &run.run_uid,
                            status,
                            error,
                            StatusSource::Poll,
                            now,
                        )
                    });
                    if effects.status.is_some() {
                        self.metrics.reconcile.poll_status_changes.inc();
                    }
                    self.publish(&run, effects);
                }
                Ok(Polled { status: None, .. }) => {}
                Err(e) => {
                    self.metrics
                        .reconcile
                        .errors
                        .with_label_values(&["poll"])
                        .inc();
                    tracing::warn!(request_id = %run.request_id, run_uid = %run.run_uid, error = %e.message, "run not polled");
                }
            }
        }
        let deliveries = match deliveries {
            Ok(d) => d,
            Err(e) => {
                self.metrics
                    .reconcile
                    .errors
                    .with_label_values(&["deliveries"])
                    .inc();
                tracing::warn!(request_id = %run.request_id, run_uid = %run.run_uid, error = %e.message, permanent = e.permanent, "deliveries not listed");
                // A retriable failure is audited again at the next retry; a permanent one (the
                // API does not know the run) never will be, so a waiting final status goes out
                // now, saying its audit could not be done.
                if e.permanent {
                    let effects = self.with_state(&run, |state| {
                        finalize(state, run.chunk, &run.run_uid, &[], Some(&e.message), now)
                    });
                    self.publish(&run, effects);
                }
                return;
            }
        };
        let max = self.reconcile.as_ref().map_or(3, |c| c.max_replays);
        let Some(plan) = self
            .owned
            .get(&run.partition)
            .and_then(|o| o.runs.get(&run.request_id))
            .and_then(|s| s.chunks.iter().find(|c| c.index == run.chunk))
            .and_then(|c| c.runs.get(&run.run_uid))
            .map(|track| {
                (
                    plan_audit(track, &deliveries, max),
                    track.pending_final.is_some(),
                )
            })
        else {
            return;
        };
        let (plan, pending) = plan;
        if !plan.replay.is_empty() {
            let originals: Vec<(String, Option<String>)> = plan
                .replay
                .iter()
                .map(|uid| {
                    let batch = deliveries
                        .iter()
                        .find(|d| &d.uid == uid)
                        .and_then(|d| d.batch_uid.clone());
                    (uid.clone(), batch)
                })
                .collect();
            if let Some(reconciler) = self.reconciler.clone() {
                self.checking.insert(run.clone());
                self.reconcile_calls += 1;
                reconciler.spawn_replays(run, originals, self.reports.clone());
            }
            return;
        }
        // A batch looks lost when its deliveries failed and it was not received; but one
        // delivered (answered 2xx) before the listing may still wait in the callbacks topic.
        // Lost is only said once every callback up to the listing has been applied.
        let caught_up = plan.lost.is_empty()
            || callbacks_high.is_some_and(|high| {
                let tp = TopicPartition::new(&self.config.callbacks_topic, run.partition);
                self.positions.get(&tp).is_some_and(|at| *at >= high)
            });
        if pending && !plan.again && caught_up {
            self.metrics
                .reconcile
                .batches_lost
                .inc_by(plan.lost.len() as u64);
            let effects = self.with_state(&run, |state| {
                finalize(state, run.chunk, &run.run_uid, &plan.lost, None, now)
            });
            self.publish(&run, effects);
        }
    }

    /// Installs the API calls of reconciling and control commands; reconciling is on with
    /// `config`.
    pub fn set_reconciler(&mut self, config: Option<ReconcileConfig>, reconciler: Arc<Reconciler>) {
        self.reconcile = config;
        self.reconciler = Some(reconciler);
    }
}
