//! v3 webhook events of the owned partitions (records of the callbacks topic with `captain.kind
//! = v3-webhook`, routed here by the token in the job name). Created moves the job's run to
//! RUNNING at once; Succeeded / Failed start a fetch (a job, like a submission) of the job's
//! status and every result page, whose outcome publishes the rows not published yet, then the
//! final status, in the open transaction. The webhook's offset completes only then, so a crash
//! mid-fetch redoes the fetch; the state (rows published, final status) makes a replay or a
//! duplicate publish nothing twice. Fetches in flight are bounded by `launch.max_in_flight`;
//! beyond it webhooks wait in memory (each a few hundred bytes).

use super::{header, Core};
use crate::captain::v3_wire::{V3WebhookKind, V3WebhookPayload};
use crate::domain::workflow::V3_RESULTS_BATCH;
use crate::domain::{
    apply_outcome, plan_webhook, JobOutcome, RunResult, RunResultRef, StatusSource, WebhookPlan,
};
use crate::kafka::InboundRecord;
use crate::owner::v3_jobs::{FetchOrder, FetchedJob};
use crate::publish::{H_KIND, H_RECEIVED_AT};
use crate::workflows::webhook::KIND_V3_WEBHOOK;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// A fetch in flight.
pub(super) struct Fetch {
    partition: i32,
    /// Offsets of the webhook events it answers (a duplicate attaches to it).
    offsets: Vec<i64>,
    handle: tokio::task::JoinHandle<()>,
}

/// The owner's v3 bookkeeping.
#[derive(Default)]
pub(super) struct V3Owner {
    /// Fetches in flight by job uid.
    fetches: HashMap<String, Fetch>,
    /// Webhooks waiting for a fetch slot: (request_id, chunk, record).
    waiting: VecDeque<(String, u32, InboundRecord)>,
}

/// Whether a callbacks-topic record is a v3 webhook.
pub(super) fn is_v3_webhook(record: &InboundRecord) -> bool {
    header(record, H_KIND).as_deref() == Some(KIND_V3_WEBHOOK)
}

impl Core {
    /// A v3 webhook whose chunk's submission answer (the job uid) is applied.
    pub(super) fn on_v3_webhook(&mut self, request_id: &str, chunk: u32, record: &InboundRecord) {
        let payload =
            match V3WebhookPayload::from_slice(record.payload.as_deref().unwrap_or_default()) {
                Ok(p) => p,
                Err(e) => return self.dead_letter(record, format!("v3 webhook unreadable: {e}")),
            };
        let (p, offset) = (record.partition, record.offset);
        let topic = record.topic.clone();
        let Some(v3) = self.submitter.v3.clone() else {
            tracing::warn!(request_id, job_uid = %payload.job_uid, "v3 webhook while v3 is disabled; ignored");
            return self.complete(&topic, p, offset);
        };
        if let Some(fetch) = self.v3.fetches.get_mut(&payload.job_uid) {
            // A duplicate (or a redelivery) while the job is being read: answered with it.
            v3.metrics.processed.with_label_values(&["duplicate"]).inc();
            fetch.offsets.push(offset);
            return;
        }
        let received_at = header(record, H_RECEIVED_AT)
            .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let kind = payload.kind();
        let Some(owned) = self.owned.get_mut(&p) else {
            return;
        };
        let plan = match owned.runs.get_mut(request_id) {
            Some(state) => plan_webhook(state, chunk, &payload.job_uid, kind, received_at),
            None => WebhookPlan::UnknownJob,
        };
        match plan {
            WebhookPlan::UnknownJob => {
                tracing::warn!(request_id, chunk, job_uid = %payload.job_uid,
                    "v3 webhook for a job this request did not launch; nothing published");
                v3.metrics
                    .processed
                    .with_label_values(&["unknown_job"])
                    .inc();
                self.complete(&topic, p, offset);
            }
            WebhookPlan::AlreadyFinal => {
                v3.metrics.processed.with_label_values(&["duplicate"]).inc();
                self.complete(&topic, p, offset);
            }
            WebhookPlan::Applied(effects) => {
                owned.open_runs += effects.open_runs;
                self.metrics.runs_in_flight.add(effects.open_runs);
                let outcome = match &effects.status {
                    Some(event) => {
                        self.send_status(event, "v3 webhook status");
                        "applied"
                    }
                    None => "duplicate",
                };
                v3.metrics.processed.with_label_values(&[outcome]).inc();
                self.dirty.insert((p, request_id.to_owned()));
                self.complete(&topic, p, offset);
            }
            WebhookPlan::Fetch { published } => {
                if self.v3.fetches.len() >= self.config.max_in_flight.max(1) {
                    self.v3
                        .waiting
                        .push_back((request_id.to_owned(), chunk, record.clone()));
                    return;
                }
                let order = FetchOrder {
                    request_id: request_id.to_owned(),
                    partition: p,
                    chunk,
                    job_uid: payload.job_uid.clone(),
                    kind: match kind {
                        V3WebhookKind::Created => V3WebhookKind::Unknown,
                        other => other,
                    },
                    published,
                    source: StatusSource::Webhook,
                };
                let handle = v3.spawn_fetch(order, self.reports.clone());
                self.v3.fetches.insert(
                    payload.job_uid,
                    Fetch {
                        partition: p,
                        offsets: vec![offset],
                        handle,
                    },
                );
            }
        }
    }

    /// A fetch reported: publishes the new rows and the status, completes its webhooks.
    pub(super) fn on_v3_outcome(&mut self, order: FetchOrder, outcome: Result<FetchedJob, String>) {
        let offsets = self
            .v3
            .fetches
            .remove(&order.job_uid)
            .map(|f| f.offsets)
            .unwrap_or_default();
        let p = order.partition;
        let metrics = self.submitter.v3.as_ref().map(|v3| v3.metrics.clone());
        match outcome {
            Err(reason) => {
                // Retries are spent (or the answer is refused for good): the run keeps its
                // status; a later webhook (or a job retry in the app) reads it again.
                tracing::error!(request_id = %order.request_id, job_uid = %order.job_uid, reason,
                    "v3 job could not be read; its webhook is passed without publishing");
                if let Some(m) = &metrics {
                    m.processed.with_label_values(&["fetch_failed"]).inc();
                }
            }
            Ok(fetched) => self.apply_fetched(&order, &fetched, metrics.as_ref()),
        }
        let topic = self.config.callbacks_topic.clone();
        for offset in offsets {
            self.complete(&topic, p, offset);
        }
        self.start_waiting_fetches();
    }

    fn apply_fetched(
        &mut self,
        order: &FetchOrder,
        fetched: &FetchedJob,
        metrics: Option<&crate::workflows::V3Metrics>,
    ) {
        let p = order.partition;
        let Some(owned) = self.owned.get_mut(&p) else {
            return;
        };
        let Some(state) = owned.runs.get_mut(&order.request_id) else {
            return;
        };
        let now = Utc::now();
        let out = apply_outcome(
            state,
            &JobOutcome {
                chunk: order.chunk,
                job_uid: &order.job_uid,
                raw_status: &fetched.raw_status,
                status: fetched.status,
                error: fetched.error.as_deref(),
                rows: fetched.total,
                source: order.source,
            },
            now,
        );
        owned.open_runs += out.effects.open_runs;
        self.metrics.runs_in_flight.add(out.effects.open_runs);
        let mut outputs = Vec::new();
        let mut published = 0u64;
        for (i, row) in fetched.rows.iter().enumerate() {
            let index = fetched.first + i as u64;
            if index < out.first_new {
                continue;
            }
            let Ok(raw) = serde_json::value::to_raw_value(row) else {
                continue;
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            outputs.push(self.records.result_ref(&RunResultRef {
                result_id: RunResult::result_id(&order.job_uid, V3_RESULTS_BATCH, index),
                request_id: &order.request_id,
                run_uid: &order.job_uid,
                batch_uid: V3_RESULTS_BATCH,
                index,
                action: &state.action,
                input: None,
                custom_data: None,
                result: &raw,
                received_at: now,
                metadata: &state.metadata,
            }));
            published += 1;
        }
        // Results first: a consumer that sees the final status has the job's rows.
        if let Some(event) = &out.effects.status {
            outputs.push(self.records.status(event));
        }
        for r in &outputs {
            self.send_built(r, "v3 job outputs");
        }
        if let Some(m) = metrics {
            m.results.inc_by(published);
            m.processed.with_label_values(&["fetched"]).inc();
        }
        self.dirty.insert((p, order.request_id.clone()));
    }

    fn start_waiting_fetches(&mut self) {
        while self.v3.fetches.len() < self.config.max_in_flight.max(1) {
            let Some((request_id, chunk, record)) = self.v3.waiting.pop_front() else {
                break;
            };
            if self.owned.contains_key(&record.partition) {
                self.on_v3_webhook(&request_id, chunk, &record);
            }
        }
    }

    /// A fetch's report for a partition no longer owned: forgotten (its webhooks are redone by
    /// the partition's next owner).
    pub(super) fn drop_v3_fetch(&mut self, job_uid: &str) {
        self.v3.fetches.remove(job_uid);
    }

    /// Forgets what `partitions` had waiting, and their fetches in flight (aborted: their
    /// webhooks are consumed again from the committed offsets and fetched anew, by this
    /// instance or the partition's next owner; an entry kept would swallow those webhooks).
    pub(super) fn forget_v3(&mut self, partitions: &BTreeSet<i32>) {
        self.v3
            .waiting
            .retain(|(_, _, r)| !partitions.contains(&r.partition));
        self.v3.fetches.retain(|_, fetch| {
            let keep = !partitions.contains(&fetch.partition);
            if !keep {
                fetch.handle.abort();
            }
            keep
        });
    }

    /// Aborts the fetches still running at shutdown: their webhooks are redone after restart.
    pub(super) fn abort_v3_fetches(&mut self) {
        for (job_uid, fetch) in self.v3.fetches.drain() {
            tracing::warn!(%job_uid, "drain deadline reached; v3 fetch abandoned, redone after restart");
            fetch.handle.abort();
        }
    }

    /// The reconciler found a v3 job silent (no webhook for `reconcile.silence_after`): its
    /// status is read like after a webhook (`GET /jobs/{job_uid}`, and every result page once
    /// it ended), published with source `poll`. Returns whether a fetch started (none when one
    /// is in flight for the job, or the fetch slots are full: the next tick asks again).
    pub(super) fn poll_v3_job(
        &mut self,
        run: &crate::owner::reconcile::RunRef,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(v3) = self.submitter.v3.clone() else {
            return false;
        };
        if self.v3.fetches.contains_key(&run.run_uid)
            || self.v3.fetches.len() >= self.config.max_in_flight.max(1)
        {
            return false;
        }
        let Some(published) = self
            .owned
            .get(&run.partition)
            .and_then(|o| o.runs.get(&run.request_id))
            .and_then(|s| s.chunks.iter().find(|c| c.index == run.chunk))
            .and_then(|c| c.runs.get(&run.run_uid))
            .map(|track| track.results)
        else {
            return false;
        };
        self.with_state(run, |state| {
            crate::domain::reconcile::mark_checked(state, run.chunk, &run.run_uid, now);
            crate::domain::Effects::default()
        });
        let order = FetchOrder {
            request_id: run.request_id.clone(),
            partition: run.partition,
            chunk: run.chunk,
            job_uid: run.run_uid.clone(),
            kind: V3WebhookKind::Unknown,
            published,
            source: StatusSource::Poll,
        };
        let handle = v3.spawn_fetch(order, self.reports.clone());
        self.v3.fetches.insert(
            run.run_uid.clone(),
            Fetch {
                partition: run.partition,
                offsets: Vec::new(),
                handle,
            },
        );
        true
    }
}
