//! The owner's state machine, driven by its loop and by the consumer's rebalance callbacks:
//! the run state of the partitions it owns, the events it is processing, the submission jobs
//! in flight, and the open transaction. Every method is synchronous and quick, except
//! [`Core::commit`] and the revocation, which block on Kafka and are called off the async
//! workers.
//!
//! Consistency rule: at any moment, the records enqueued in the open transaction are exactly
//! the effects of the events completed since the last commit, and the offsets it would commit
//! cover only completed events. So a commit is valid whenever it happens (on the interval, on
//! revocation, at shutdown), and an abort is undone by restoring the state from Kafka and
//! consuming again from the committed offsets.

mod callback;
mod control;
mod launch;
mod live;
mod reconcile;
mod workflow;

pub use reconcile::ReconcileConfig;

use super::jobs::{JobMessage, JobReports, Submitter};
use crate::avro::EncodeError;
use crate::domain::request::{derived_request_id, RejectClass};
use crate::domain::{Rejection, RequestInfo, RunState};
use crate::kafka::stats::CommittedOffsets;
use crate::kafka::{InboundRecord, OffsetTracker, TopicPartition, TxnError, TxnProducer};
use crate::metrics::Metrics;
use crate::publish::{Origin, RecordBuilder};
use chrono::{DateTime, Utc};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the core is configured with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The internal requests topic (validated launch requests) and callbacks topic.
    pub requests_topic: String,
    pub callbacks_topic: String,
    /// Submission jobs at once; beyond it launch events wait and the requests partitions pause.
    pub max_in_flight: usize,
    /// Batches remembered per run for duplicate detection.
    pub dedupe_window: usize,
    /// How long a revocation waits for the jobs of revoked partitions to report.
    pub revoke_drain: Duration,
}

/// A submission job in flight.
struct Job {
    partition: i32,
    info: RequestInfo,
    chunk_count: usize,
    /// Chunks whose outcome has not been applied yet; their callbacks wait.
    pending: BTreeSet<u32>,
    /// Offsets of the launch events this job answers (a redelivery attaches to it).
    offsets: Vec<i64>,
    failed: bool,
    handle: tokio::task::JoinHandle<()>,
    /// Set for a live request's job: it resumes from the run state, so it is stopped rather
    /// than drained when its partition leaves or the transaction aborts.
    live: Option<super::live::LiveHandle>,
}

/// One owned, restored partition's run state.
#[derive(Default)]
struct Owned {
    runs: HashMap<String, RunState>,
    /// Runs known and not final, for the `runs_in_flight` gauge.
    open_runs: i64,
}

/// The owner's state.
pub struct Core {
    config: CoreConfig,
    records: RecordBuilder,
    producer: TxnProducer,
    metrics: Metrics,
    submitter: Arc<Submitter>,
    reports: JobReports,
    report_rx: Receiver<JobMessage>,
    /// The partitions of the current assignment; `None` between a revocation and the next
    /// assignment.
    assigned: Option<BTreeSet<i32>>,
    /// Bumped by every assignment change and reset: a restore started before is stale.
    epoch: u64,
    /// Partitions whose restore the loop must start.
    to_restore: Vec<i32>,
    restoring: BTreeSet<i32>,
    owned: HashMap<i32, Owned>,
    trackers: OffsetTracker,
    /// Next offset to commit, per input partition of the owned partitions.
    positions: HashMap<TopicPartition, i64>,
    /// Whether a position moved since the last commit.
    advanced: bool,
    /// Requests whose state changed in the open transaction (written once, at commit).
    dirty: BTreeSet<(i32, String)>,
    jobs: HashMap<String, Job>,
    /// Job reports for partitions being restored (or awaiting an assignment).
    deferred: Vec<JobMessage>,
    /// Chunk outcomes applied in the open transaction: an abort must not lose what the API said.
    applied: Vec<JobMessage>,
    /// Launch events waiting for a job slot.
    waiting: VecDeque<InboundRecord>,
    /// Callbacks waiting, per request, for a chunk submission in flight.
    held: HashMap<String, VecDeque<InboundRecord>>,
    held_count: usize,
    /// Receipt times of the callbacks in the open transaction (commit latency).
    received: Vec<DateTime<Utc>>,
    stopping: bool,
    committed: Arc<CommittedOffsets>,
    /// v3 job fetches in flight and webhooks waiting for one.
    v3: workflow::V3Owner,
    /// The reconciler, when on; the runs and schedules it is checking.
    reconcile: Option<ReconcileConfig>,
    reconciler: Option<Arc<crate::owner::reconcile::Reconciler>>,
    checking: HashSet<crate::owner::reconcile::RunRef>,
    schedules_checking: HashSet<(i32, String, u32)>,
    /// Control commands being executed: (request_id, command_id).
    commands_running: HashSet<(String, String)>,
    /// Commands of a request waiting for its command in execution, by request_id (an entry
    /// exists while one executes).
    commands_waiting: HashMap<String, VecDeque<InboundRecord>>,
    /// Reconcile jobs started and not yet reported (`reconcile.max_in_flight` bounds it).
    reconcile_calls: usize,
}

/// Parts the core is built from.
pub struct CoreParts {
    pub config: CoreConfig,
    pub records: RecordBuilder,
    pub producer: TxnProducer,
    pub metrics: Metrics,
    pub submitter: Arc<Submitter>,
    pub reports: JobReports,
    pub report_rx: Receiver<JobMessage>,
    /// Where committed offsets are told to the consumer-lag metric.
    pub committed: Arc<CommittedOffsets>,
}

impl Core {
    pub fn new(parts: CoreParts) -> Self {
        Self {
            config: parts.config,
            records: parts.records,
            producer: parts.producer,
            metrics: parts.metrics,
            submitter: parts.submitter,
            reports: parts.reports,
            report_rx: parts.report_rx,
            assigned: None,
            epoch: 0,
            to_restore: Vec::new(),
            restoring: BTreeSet::new(),
            owned: HashMap::new(),
            trackers: OffsetTracker::new(),
            positions: HashMap::new(),
            advanced: false,
            dirty: BTreeSet::new(),
            jobs: HashMap::new(),
            deferred: Vec::new(),
            applied: Vec::new(),
            waiting: VecDeque::new(),
            held: HashMap::new(),
            held_count: 0,
            received: Vec::new(),
            stopping: false,
            committed: parts.committed,
            v3: workflow::V3Owner::default(),
            reconcile: None,
            reconciler: None,
            checking: HashSet::new(),
            schedules_checking: HashSet::new(),
            reconcile_calls: 0,
            commands_running: HashSet::new(),
            commands_waiting: HashMap::new(),
        }
    }

    // ---- assignment, restore, reset -------------------------------------------------------

    /// A new assignment: its partitions must be restored before any of their records is
    /// processed (the caller pauses them). Job reports for partitions not assigned any more
    /// are dropped: the new owner submits those requests again (the API window the README
    /// names).
    pub fn assign(&mut self, partitions: BTreeSet<i32>) {
        self.epoch += 1;
        self.deferred
            .retain(|m| partitions.contains(&m.partition()));
        let lost: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| !partitions.contains(&j.partition))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            if let Some(job) = self.jobs.remove(&id) {
                tracing::warn!(request_id = %id, partition = job.partition,
                    "submission still in flight for a partition now owned elsewhere; its new owner submits again");
                self.metrics.launch_jobs_abandoned.inc();
            }
        }
        self.to_restore = partitions.iter().copied().collect();
        self.restoring = partitions.clone();
        self.assigned = Some(partitions);
        self.metrics
            .owned_partitions
            .set(self.assigned.as_ref().map_or(0, |a| a.len() as i64));
    }

    /// The restore to start now, if any: (epoch, partitions). None while an output topic's
    /// Avro writer schema id is not known yet: the partitions stay paused (their events wait
    /// in Kafka) until the schema registry answers, so no event meets an output it cannot
    /// encode.
    pub fn take_restore(&mut self) -> Option<(u64, Vec<i32>)> {
        if self.to_restore.is_empty() || !self.records.outputs_ready() {
            return None;
        }
        Some((self.epoch, std::mem::take(&mut self.to_restore)))
    }

    /// Partitions not processed (restoring), both input topics.
    pub fn restoring(&self) -> Vec<TopicPartition> {
        self.input_partitions(self.restoring.iter().copied())
    }

    /// Partitions owned and restored, both input topics.
    pub fn installed(&self) -> Vec<TopicPartition> {
        self.input_partitions(self.owned.keys().copied())
    }

    fn input_partitions(&self, ps: impl Iterator<Item = i32>) -> Vec<TopicPartition> {
        ps.flat_map(|p| {
            [
                TopicPartition::new(&self.config.requests_topic, p),
                TopicPartition::new(&self.config.callbacks_topic, p),
            ]
        })
        .collect()
    }

    /// A restore of `epoch` failed: asked again (the partitions stay paused).
    pub fn restore_failed(&mut self, epoch: u64, partitions: Vec<i32>) {
        if epoch == self.epoch {
            self.to_restore.extend(partitions);
        }
    }

    /// Installs restored partitions of `epoch` (ignored if the assignment changed since).
    /// Returns where each of their input partitions starts: the caller seeks there, so records
    /// fetched before (or in an aborted transaction) are consumed again, once.
    pub fn install(
        &mut self,
        epoch: u64,
        restored: Vec<super::restore::Restored>,
    ) -> Vec<(TopicPartition, i64)> {
        if epoch != self.epoch {
            return Vec::new();
        }
        let mut seeks = Vec::new();
        for r in restored {
            if !self.restoring.remove(&r.partition) {
                continue;
            }
            let open: i64 = r
                .runs
                .values()
                .map(|s| crate::domain::decide::open_runs(s) as i64)
                .sum();
            self.metrics.runs_in_flight.add(open);
            self.metrics
                .state_restore_duration
                .observe(r.took.as_secs_f64());
            self.metrics.states_restored.inc_by(r.runs.len() as u64);
            tracing::info!(
                partition = r.partition,
                states = r.runs.len(),
                records = r.records,
                took_ms = r.took.as_millis() as u64,
                "partition restored"
            );
            self.owned.insert(
                r.partition,
                Owned {
                    runs: r.runs,
                    open_runs: open,
                },
            );
            for (tp, start) in r.starts {
                self.positions.insert(tp.clone(), start);
                seeks.push((tp, start));
            }
        }
        let deferred = std::mem::take(&mut self.deferred);
        for message in deferred {
            self.on_job_message(message);
        }
        seeks
    }

    /// Forgets `partitions`: state, positions, held and waiting events. Their in-flight jobs
    /// keep running: if the partitions come back, their outcomes are applied after the
    /// restore; otherwise they are dropped at the next assignment.
    fn forget(&mut self, partitions: &BTreeSet<i32>) {
        for p in partitions {
            if let Some(owned) = self.owned.remove(p) {
                self.metrics.runs_in_flight.sub(owned.open_runs);
            }
            self.restoring.remove(p);
        }
        let tps = self.input_partitions(partitions.iter().copied());
        self.trackers.revoke(&tps);
        for tp in &tps {
            self.positions.remove(tp);
            self.committed.forget(&tp.topic, tp.partition);
        }
        self.dirty.retain(|(p, _)| !partitions.contains(p));
        self.waiting.retain(|r| !partitions.contains(&r.partition));
        let before = self.held_count;
        self.held.retain(|_, q| {
            q.retain(|r| !partitions.contains(&r.partition));
            !q.is_empty()
        });
        self.held_count = self.held.values().map(VecDeque::len).sum();
        self.metrics
            .callbacks_held
            .sub(before as i64 - self.held_count as i64);
        for job in self.jobs.values_mut() {
            if partitions.contains(&job.partition) {
                job.offsets.clear();
            }
        }
        self.received.clear();
        self.forget_v3(partitions);
        // Checks in flight for them report to nobody; the next owner checks again.
        self.checking.retain(|r| !partitions.contains(&r.partition));
        self.schedules_checking
            .retain(|(p, _, _)| !partitions.contains(p));
        // Waiting commands are consumed again by the next owner.
        self.commands_waiting
            .retain(|id, _| !partitions.contains(&self.records.partition_of(id)));
    }

    /// After an aborted transaction: drops everything the transaction held, and restores
    /// every assigned partition again from what Kafka committed. Chunk outcomes the aborted
    /// transaction carried are kept to be applied again: the API accepted those runs.
    pub fn reset(&mut self) {
        let all: BTreeSet<i32> = self
            .owned
            .keys()
            .chain(self.restoring.iter())
            .copied()
            .collect();
        let replay = std::mem::take(&mut self.applied);
        self.stop_live_jobs(&all);
        self.forget(&all);
        self.deferred.splice(0..0, replay);
        self.advanced = false;
        if let Some(assigned) = self.assigned.clone() {
            self.epoch += 1;
            self.to_restore = assigned.iter().copied().collect();
            self.restoring = assigned;
        }
    }

    // ---- records ----------------------------------------------------------------------------

    /// Handles one record of an owner input topic.
    pub fn on_record(&mut self, record: InboundRecord) {
        if self.stopping || !self.owned.contains_key(&record.partition) {
            // Not ours (yet): after the restore, consumption starts again from the
            // committed offset.
            return;
        }
        let tp = TopicPartition::new(record.topic.clone(), record.partition);
        if self
            .positions
            .get(&tp)
            .is_some_and(|start| record.offset < *start)
        {
            return;
        }
        self.trackers.track(&tp, record.offset);
        if record.topic == self.config.callbacks_topic {
            self.on_callback(record);
        } else if is_control(&record) {
            self.on_control(record);
        } else {
            self.on_launch(record);
        }
    }

    fn complete(&mut self, topic: &str, partition: i32, offset: i64) {
        let tp = TopicPartition::new(topic, partition);
        if let Some(position) = self.trackers.complete(&tp, offset) {
            self.positions.insert(tp, position);
            self.advanced = true;
        }
    }

    fn origin(record: &InboundRecord) -> Origin<'_> {
        Origin {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            payload: record.payload.as_deref(),
            headers: &record.headers,
        }
    }

    /// A record of an internal topic that cannot be read: dead-lettered once, then passed.
    fn dead_letter(&mut self, record: &InboundRecord, reason: String) {
        tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset,
            reason, "unreadable internal record dead-lettered");
        let key = record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| derived_request_id(&record.topic, record.partition, record.offset));
        let rejection = Rejection {
            class: RejectClass::InvalidRecord,
            message: reason,
        };
        let dl = self
            .records
            .dead_letter(&Self::origin(record), &rejection, &key);
        self.send(&dl);
        self.complete(&record.topic.clone(), record.partition, record.offset);
    }

    /// Enqueues `record` in the open transaction. A failure is noted by the producer and
    /// fails the commit, which aborts and redoes everything since the last one.
    fn send(&mut self, record: &crate::kafka::OutRecord) {
        if let Err(e) = self.producer.send(record) {
            tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "record not enqueued in the transaction");
            self.producer.poison();
        }
    }

    /// Enqueues a record built by the encoder, or, when it could not be encoded, does what
    /// [`Core::encode_failed`] says (a value that does not fit its schema is left out).
    fn send_built(&mut self, built: &Result<crate::kafka::OutRecord, EncodeError>, what: &str) {
        match built {
            Ok(record) => self.send(record),
            Err(e) => {
                self.encode_failed(e, what);
            }
        }
    }

    /// Enqueues a status record, or, when it cannot be encoded, does what
    /// [`Core::encode_failed`] says.
    fn send_status(&mut self, event: &crate::domain::RunStatusEvent, what: &str) {
        match self.records.status(event) {
            Ok(record) => self.send(&record),
            Err(e) => {
                self.encode_failed(&e, what);
            }
        }
    }

    /// An output that could not be encoded. Without its writer schema id (the registry has
    /// not answered; `take_restore` waits for it, so this is a safety net) the open
    /// transaction is poisoned: the commit aborts and every event since the last commit is
    /// redone from Kafka once the registry answers; returns true. A value that does not fit
    /// its schema is permanent: logged (and counted by the encoder), false.
    fn encode_failed(&mut self, error: &EncodeError, what: &str) -> bool {
        match error {
            EncodeError::Registry(e) => {
                tracing::warn!(error = %e, what,
                    "output not encodable without the schema registry; aborting the transaction to redo it later");
                self.producer.poison();
                true
            }
            EncodeError::Value { .. } => {
                tracing::error!(error = %error, what, "output does not fit its Avro schema");
                false
            }
        }
    }

    // ---- transactions -----------------------------------------------------------------------

    /// Whether a commit has anything to do.
    pub fn commit_due(&self) -> bool {
        self.producer.is_open() || self.advanced || !self.dirty.is_empty()
    }

    /// Writes the changed states, then commits the open transaction with the positions of
    /// every owned partition (so even a transaction of timer-driven records is fenced by the
    /// group generation). Blocking. On failure the caller recovers with [`Core::recover`].
    pub fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), TxnError> {
        if !self.commit_due() {
            return Ok(());
        }
        for (p, request_id) in std::mem::take(&mut self.dirty) {
            if let Some(state) = self.owned.get(&p).and_then(|o| o.runs.get(&request_id)) {
                let record = self.records.state(state);
                self.send(&record);
            }
        }
        self.producer.begin()?;
        let mut offsets = TopicPartitionList::new();
        let mut owned: Vec<i32> = self.owned.keys().copied().collect();
        owned.sort_unstable();
        for tp in self.input_partitions(owned.into_iter()) {
            if let Some(position) = self.positions.get(&tp) {
                // An offset that cannot be added is a bug; the commit without it stays valid.
                let _ = offsets.add_partition_offset(
                    &tp.topic,
                    tp.partition,
                    Offset::Offset(*position),
                );
            }
        }
        self.producer.commit(&offsets, group)?;
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.committed.set(e.topic(), e.partition(), o);
            }
        }
        self.advanced = false;
        self.applied.clear();
        let now = Utc::now();
        for at in self.received.drain(..) {
            let seconds = (now - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
            self.metrics
                .callback_commit_latency
                .observe(seconds.max(0.0));
        }
        Ok(())
    }

    /// After a failed commit: abort (or replace the producer when it is unusable), then
    /// restore every partition from what Kafka committed. `rebuild` makes a new producer.
    pub fn recover(
        &mut self,
        error: &TxnError,
        rebuild: impl FnOnce() -> Result<TxnProducer, TxnError>,
    ) -> Result<(), TxnError> {
        tracing::warn!(error = %crate::telemetry::ErrorChain(error), "transaction failed; aborting and restoring from Kafka");
        let aborted = match error {
            TxnError::Fatal(_) => Err(()),
            _ => self.producer.abort().map_err(|e| {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "abort failed; replacing the producer");
            }),
        };
        if aborted.is_err() {
            // A new producer with the same transactional.id fences the old one and aborts
            // whatever it had open.
            self.producer = rebuild()?;
        }
        self.reset();
        Ok(())
    }

    // ---- revocation and shutdown ------------------------------------------------------------

    /// Partitions revoked (with eager rebalancing, all of them). Waits up to `revoke_drain`
    /// for their jobs' reports, commits what is done (unless the assignment was lost: then it
    /// aborts, since a commit would be refused), and forgets them. Blocking.
    pub fn revoke(&mut self, group: Option<&ConsumerGroupMetadata>, lost: bool) {
        let revoked: BTreeSet<i32> = self.assigned.take().unwrap_or_default();
        self.epoch += 1;
        self.stop_live_jobs(&revoked);
        if !lost {
            self.drain_jobs(&revoked, self.config.revoke_drain);
        }
        let committed = match (lost, group) {
            (false, Some(group)) => self.commit(group).map_err(|e| {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "commit on revocation failed; its work is redone by the next owner");
            }),
            _ => Err(()),
        };
        if committed.is_err() {
            if let Err(e) = self.producer.abort() {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "abort on revocation failed");
            }
            self.applied.clear();
        }
        self.forget(&revoked);
        self.to_restore.clear();
        self.metrics.owned_partitions.set(0);
    }

    /// Applies job reports until no job of `partitions` is in flight, or `limit` passed.
    fn drain_jobs(&mut self, partitions: &BTreeSet<i32>, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.drain_reports();
        while self
            .jobs
            .values()
            .any(|j| partitions.contains(&j.partition))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.report_rx.recv_timeout(left) {
                Ok(message) => self.on_job_message(message),
                Err(_) => break,
            }
        }
    }

    /// Stops taking records; submission jobs in flight still report, live jobs stop (their
    /// requests resume from the committed state after restart).
    pub fn stop_taking(&mut self) {
        self.stopping = true;
        let all: BTreeSet<i32> = self.jobs.values().map(|j| j.partition).collect();
        self.stop_live_jobs(&all);
    }

    /// Aborts the jobs still running (past the drain deadline): their requests are submitted
    /// again after restart.
    pub fn abort_jobs(&mut self) {
        for (request_id, job) in self.jobs.drain() {
            tracing::warn!(%request_id, "drain deadline reached; submission abandoned, redone after restart");
            job.handle.abort();
            self.metrics.launches_in_flight.dec();
            self.metrics.launch_jobs_abandoned.inc();
        }
        self.abort_v3_fetches();
    }
}

fn header(record: &InboundRecord, name: &str) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// A control command forwarded by the router (launches have no kind header, or `launch`).
fn is_control(record: &InboundRecord) -> bool {
    record
        .headers
        .iter()
        .any(|(k, v)| k == crate::publish::H_KIND && v == crate::publish::KIND_CONTROL)
}
