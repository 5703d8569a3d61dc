//! Launch events of the owned partitions: whether a request is submitted (and which chunks),
//! the submission jobs in flight and their bound, and applying each chunk's answer to the
//! request's state.

use super::{Core, Job};
use crate::domain::request::{self, derived_request_id, Mode};
use crate::domain::{
    adopt_request, apply_submission, plan_launch, LaunchPlan, RequestInfo, RunState, Submission,
};
use crate::kafka::InboundRecord;
use crate::owner::jobs::JobMessage;
use chrono::Utc;

impl Core {
    pub(super) fn on_launch(&mut self, record: InboundRecord) {
        if self.jobs.len() >= self.config.max_in_flight.max(1) {
            self.waiting.push_back(record);
            return;
        }
        self.start_launch(record);
    }

    pub(super) fn start_launch(&mut self, record: InboundRecord) {
        let fallback = derived_request_id(&record.topic, record.partition, record.offset);
        let request =
            match request::parse_json(record.payload.as_deref().unwrap_or_default(), &fallback) {
                Ok(r) => r,
                Err(rejection) => {
                    return self
                        .dead_letter(&record, format!("launch request unreadable: {rejection}"));
                }
            };
        let (p, offset) = (record.partition, record.offset);
        if let Some(job) = self.jobs.get_mut(&request.request_id) {
            // A redelivery (after a rebalance or an abort) while its submission is in flight.
            job.offsets.push(offset);
            return;
        }
        if matches!(request.mode, Mode::Live | Mode::Auto) {
            return self.start_live(record, request);
        }
        let size = self.submitter.chunk_size(request.mode).max(1);
        let chunk_count = request.inputs.len().div_ceil(size);
        let Some(owned) = self.owned.get_mut(&p) else {
            return;
        };
        let info = RequestInfo {
            request_id: request.request_id.clone(),
            action: request.action.clone(),
            mode: request.mode,
            metadata: request.metadata.clone(),
        };
        if let Some(state) = owned.runs.get_mut(&request.request_id) {
            if adopt_request(state, &info, chunk_count) {
                self.dirty.insert((p, request.request_id.clone()));
            }
        }
        match plan_launch(owned.runs.get(&request.request_id), chunk_count) {
            LaunchPlan::AlreadySubmitted => {
                tracing::info!(request_id = %request.request_id, "request already submitted; not submitting again");
                self.metrics
                    .launches
                    .with_label_values(&["already_submitted"])
                    .inc();
                let topic = record.topic.clone();
                self.complete(&topic, p, offset);
            }
            LaunchPlan::Submit(chunks) => {
                owned
                    .runs
                    .entry(request.request_id.clone())
                    .or_insert_with(|| {
                        RunState::new(
                            &info.request_id,
                            &info.action,
                            info.mode,
                            info.metadata.clone(),
                            chunk_count,
                        )
                    });
                let handle = self
                    .submitter
                    .spawn(request, p, chunks.clone(), self.reports.clone());
                self.metrics.launches_in_flight.inc();
                self.jobs.insert(
                    info.request_id.clone(),
                    Job {
                        partition: p,
                        info,
                        chunk_count,
                        pending: chunks.into_iter().collect(),
                        offsets: vec![offset],
                        failed: false,
                        handle,
                        live: None,
                    },
                );
            }
        }
    }

    /// Applies every job report received so far.
    pub fn drain_reports(&mut self) {
        while let Ok(message) = self.report_rx.try_recv() {
            self.on_job_message(message);
        }
    }

    pub(super) fn on_job_message(&mut self, message: JobMessage) {
        if let JobMessage::Live(message) = message {
            return self.on_live_message(message);
        }
        let p = message.partition();
        if let JobMessage::Commanded(done) = message {
            return self.on_commanded(*done);
        }
        if message.is_reconcile() {
            return self.on_reconcile_message(message);
        }
        if !self.owned.contains_key(&p) {
            let may_come = self.assigned.as_ref().is_none_or(|a| a.contains(&p));
            if may_come {
                self.deferred.push(message);
            } else if let JobMessage::Done { request_id, .. } = message {
                self.finish_job(&request_id);
            } else if let JobMessage::V3Outcome { order, .. } = message {
                self.drop_v3_fetch(&order.job_uid);
            }
            return;
        }
        match message {
            JobMessage::Chunk {
                request_id,
                partition,
                chunk,
                outcome,
            } => {
                self.apply_chunk(&request_id, partition, chunk, &outcome);
                self.applied.push(JobMessage::Chunk {
                    request_id: request_id.clone(),
                    partition,
                    chunk,
                    outcome,
                });
                self.release(&request_id);
            }
            JobMessage::Live(_) => {}
            JobMessage::Done { request_id, .. } => {
                let offsets = self.finish_job(&request_id);
                let topic = self.config.requests_topic.clone();
                for offset in offsets {
                    self.complete(&topic, p, offset);
                }
                self.release(&request_id);
                self.start_waiting();
            }
            JobMessage::V3Outcome { order, outcome } => self.on_v3_outcome(order, outcome),
            other => self.on_reconcile_message(other),
        }
    }

    /// Removes a finished job; returns the launch offsets it answered.
    fn finish_job(&mut self, request_id: &str) -> Vec<i64> {
        let Some(job) = self.jobs.remove(request_id) else {
            return Vec::new();
        };
        self.metrics.launches_in_flight.dec();
        let outcome = if job.failed {
            "submit_failed"
        } else {
            "submitted"
        };
        if !job.offsets.is_empty() {
            self.metrics.launches.with_label_values(&[outcome]).inc();
        }
        job.offsets
    }

    fn apply_chunk(&mut self, request_id: &str, partition: i32, chunk: u32, outcome: &Submission) {
        let job = self.jobs.get_mut(request_id);
        let info = job.as_ref().map(|j| (j.info.clone(), j.chunk_count));
        if let Some(job) = job {
            job.pending.remove(&chunk);
            job.failed |= matches!(outcome, Submission::Failed(_));
        }
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        let state = match (owned.runs.get_mut(request_id), info.as_ref()) {
            (Some(state), _) => state,
            (None, Some((info, chunks))) => {
                owned.runs.entry(request_id.to_owned()).or_insert_with(|| {
                    RunState::new(
                        &info.request_id,
                        &info.action,
                        info.mode,
                        info.metadata.clone(),
                        *chunks,
                    )
                })
            }
            (None, None) => {
                tracing::warn!(
                    request_id,
                    chunk,
                    "submission outcome for a request with no state; recorded without metadata"
                );
                owned.runs.entry(request_id.to_owned()).or_insert_with(|| {
                    RunState::new(request_id, "", Mode::Async, Default::default(), 0)
                })
            }
        };
        let info = info.map(|(i, _)| i).unwrap_or_else(|| RequestInfo {
            request_id: state.request_id.clone(),
            action: state.action.clone(),
            mode: state.mode,
            metadata: state.metadata.clone(),
        });
        let effects = apply_submission(state, &info, chunk, outcome.clone(), Utc::now());
        owned.open_runs += effects.open_runs;
        self.metrics.runs_in_flight.add(effects.open_runs);
        if let Some(event) = effects.status {
            match self.records.status(&event) {
                Ok(record) => self.send(&record),
                Err(e) => {
                    self.encode_failed(&e, "submission status");
                }
            }
        }
        self.dirty.insert((partition, request_id.to_owned()));
    }

    pub(super) fn start_waiting(&mut self) {
        while self.jobs.len() < self.config.max_in_flight.max(1) {
            let Some(record) = self.waiting.pop_front() else {
                break;
            };
            self.start_launch(record);
        }
    }

    /// Launch events waiting for a slot: the caller pauses the requests partitions when they
    /// reach `max_in_flight`, and resumes them when a quarter remain.
    pub fn launches_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }
}
