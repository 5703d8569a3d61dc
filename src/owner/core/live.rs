//! Live requests of the owned partitions: whether a live request runs (and which inputs, from
//! where), its job, and applying each page and each input's end to the request's state, in
//! the open transaction (results, then the status the page or end decides, then the state at
//! commit).
//!
//! A live job never outlives a change of the state it works from: it is stopped when its
//! partition is revoked, when the transaction aborts (the state is restored from Kafka) and at
//! shutdown. Its launch event was not completed, so it is consumed again (by this owner after
//! the restore, or by the partition's next owner) and the request resumes from the committed
//! progress. Reports of a stopped job are recognised by their job id and dropped.

use super::{Core, Job};
use crate::domain::live::{begin_live, end_live_input, finish_live, plan_live};
use crate::domain::request::Mode;
use crate::domain::{
    Effects, LaunchRequest, LiveIds, LivePlan, RequestInfo, RunResult, RunResultRef, RunState,
    StatusError,
};
use crate::kafka::InboundRecord;
use crate::owner::live::{LiveEvent, LiveMessage, LivePageReport};
use chrono::Utc;
use std::collections::BTreeSet;

impl Core {
    pub(super) fn start_live(&mut self, record: InboundRecord, request: LaunchRequest) {
        if request.mode == Mode::Auto {
            // Only the router writes the requests topic, and it resolves `auto`.
            return self.dead_letter(
                &record,
                "launch request with mode \"auto\" on the requests topic (the launch router \
                 resolves it to \"live\" or \"async\")"
                    .into(),
            );
        }
        let (p, offset) = (record.partition, record.offset);
        let Some(owned) = self.owned.get_mut(&p) else {
            return;
        };
        let id = request.request_id.clone();
        let starts = match plan_live(owned.runs.get(&id), request.inputs.len()) {
            LivePlan::Run(starts) => starts,
            plan => {
                match plan {
                    LivePlan::OtherMode(mode) => {
                        tracing::warn!(request_id = %id, mode = mode.as_str(),
                        "live request with the request_id of an earlier request of another mode; not run")
                    }
                    _ => {
                        tracing::info!(request_id = %id, "live request already finished; not run again")
                    }
                }
                self.metrics
                    .launches
                    .with_label_values(&["already_submitted"])
                    .inc();
                return self.complete(&record.topic, p, offset);
            }
        };
        let info = RequestInfo {
            request_id: id.clone(),
            action: request.action.clone(),
            mode: Mode::Live,
            metadata: request.metadata.clone(),
        };
        let state = owned.runs.entry(id.clone()).or_insert_with(|| {
            RunState::new(&id, &info.action, Mode::Live, info.metadata.clone(), 0)
        });
        let now = Utc::now();
        let begun = begin_live(state, &info, request.inputs.len(), now);
        // Every input ended before a crash, the final status did not: decide it now.
        let finished = if starts.is_empty() {
            finish_live(state, now)
        } else {
            Effects::default()
        };
        if !starts.is_empty() && starts.iter().any(|s| s.pages > 0) {
            tracing::info!(request_id = %id, inputs = starts.len(), "live request resumed from its recorded progress");
        }
        self.publish_effects(p, &id, [begun, finished]);
        if starts.is_empty() {
            self.metrics
                .launches
                .with_label_values(&["submitted"])
                .inc();
            return self.complete(&record.topic, p, offset);
        }
        let live = self.submitter.live.clone();
        let handle = live.handle();
        let join = live.spawn(request, p, &handle, starts, self.reports.clone());
        self.metrics.launches_in_flight.inc();
        self.jobs.insert(
            id,
            Job {
                partition: p,
                info,
                chunk_count: 0,
                pending: BTreeSet::new(),
                offsets: vec![offset],
                failed: false,
                handle: join,
                live: Some(handle),
            },
        );
    }

    pub(super) fn on_live_message(&mut self, message: LiveMessage) {
        let current = self
            .jobs
            .get(&message.request_id)
            .and_then(|j| j.live.as_ref())
            .is_some_and(|h| h.id == message.job);
        if !current {
            // A stopped job's report: its request resumes from the state, without it.
            return;
        }
        let (id, p) = (message.request_id, message.partition);
        match message.event {
            LiveEvent::Page(report) => self.apply_live_page(&id, p, report),
            LiveEvent::InputEnded { input, error } => {
                let effects = self
                    .owned
                    .get_mut(&p)
                    .and_then(|o| o.runs.get_mut(&id))
                    .map(|state| end_live_input(state, input, error, Utc::now()))
                    .unwrap_or_default();
                self.publish_effects(p, &id, [effects]);
            }
            LiveEvent::Done => self.finish_live_job(&id, p),
        }
    }

    /// One page: its results when it is the next page of its input, the final status when it
    /// ended the request's last input, and the page's permit back to the job.
    fn apply_live_page(&mut self, id: &str, p: i32, report: LivePageReport) {
        let acks = self
            .jobs
            .get(id)
            .and_then(|j| j.live.as_ref())
            .map(|h| h.acks.clone());
        let Some(state) = self.owned.get_mut(&p).and_then(|o| o.runs.get_mut(id)) else {
            return;
        };
        let facts = &report.facts;
        let out = crate::domain::live::apply_live_page(state, facts, Utc::now());
        let mut outputs = Vec::with_capacity(report.results.len() + 1);
        if out.publish {
            let run_uid = LiveIds::run_uid(id, facts.input);
            let batch_uid = LiveIds::batch_uid(facts.page);
            for (index, item) in report.results.iter().enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                outputs.push(self.records.result_ref(&RunResultRef {
                    result_id: RunResult::result_id(&run_uid, &batch_uid, index),
                    request_id: id,
                    run_uid: &run_uid,
                    batch_uid: &batch_uid,
                    index,
                    action: &state.action,
                    input: report.input.input.as_deref(),
                    custom_data: report.input.custom_data.as_deref(),
                    result: item,
                    received_at: report.received_at,
                    metadata: &state.metadata,
                }));
            }
            self.metrics.live_pages.inc();
        } else {
            tracing::debug!(
                request_id = id,
                input = facts.input,
                page = facts.page,
                "live page already published or out of order; dropped"
            );
        }
        // Results first: a consumer that sees the final status has every result.
        for record in &outputs {
            self.send_built(record, "live results");
        }
        self.publish_effects(p, id, [out.effects]);
        if let Some(acks) = acks {
            acks.add_permits(1);
        }
    }

    /// Publishes the statuses `effects` decided for request `id`, counts its open runs, and
    /// marks its state to be written at commit.
    fn publish_effects<const N: usize>(&mut self, p: i32, id: &str, effects: [Effects; N]) {
        for effect in effects {
            if let Some(owned) = self.owned.get_mut(&p) {
                owned.open_runs += effect.open_runs;
            }
            self.metrics.runs_in_flight.add(effect.open_runs);
            if let Some(event) = &effect.status {
                self.send_status(event, "live status");
            }
        }
        self.dirty.insert((p, id.to_owned()));
    }

    /// The job ended: its launch events complete. Every input reported its end before, so
    /// the request's final status is out; if one did not, it ends failed rather than never.
    fn finish_live_job(&mut self, id: &str, p: i32) {
        let Some(job) = self.jobs.remove(id) else {
            return;
        };
        self.metrics.launches_in_flight.dec();
        if let Some(state) = self.owned.get_mut(&p).and_then(|o| o.runs.get_mut(id)) {
            let open: Vec<u32> = state
                .live
                .iter()
                .flat_map(|l| l.inputs.iter().enumerate())
                .filter(|(_, input)| !input.done)
                .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
                .collect();
            let now = Utc::now();
            let effects: Vec<Effects> = open
                .into_iter()
                .map(|input| {
                    tracing::error!(
                        request_id = id,
                        input,
                        "live job ended without this input's outcome"
                    );
                    let error = StatusError {
                        label: Some("LIVE_INPUT_UNFINISHED".into()),
                        scope: None,
                        message: "the live job ended without this input's outcome".into(),
                        http_status: None,
                    };
                    end_live_input(state, input, Some(error), now)
                })
                .collect();
            for effect in effects {
                self.publish_effects(p, id, [effect]);
            }
        }
        if !job.offsets.is_empty() {
            self.metrics
                .launches
                .with_label_values(&["submitted"])
                .inc();
        }
        let topic = self.config.requests_topic.clone();
        for offset in job.offsets {
            self.complete(&topic, p, offset);
        }
        self.start_waiting();
    }

    /// Stops the live jobs of `partitions` (their progress so far is in the open transaction
    /// or already committed; their launch events are consumed again and resume from it).
    pub(super) fn stop_live_jobs(&mut self, partitions: &BTreeSet<i32>) {
        let stopped: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.live.is_some() && partitions.contains(&j.partition))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stopped {
            if let Some(job) = self.jobs.remove(&id) {
                job.handle.abort();
                self.metrics.launches_in_flight.dec();
                tracing::info!(request_id = %id, "live request stopped; it resumes from its committed progress");
            }
        }
    }
}
