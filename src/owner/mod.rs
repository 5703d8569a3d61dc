//! The partition owner: the consumer-group member that owns a share of the requests' state.
//!
//! The internal requests topic (validated launch requests), the callbacks topic (received
//! callbacks) and the run-state topic are co-partitioned by request_id. Through its consumer
//! group (range assignment, so partition `p` of both input topics goes to one member) each
//! instance owns a set of partitions: it restores their run state when they are assigned,
//! processes their events in order, and writes results, status events, the new state and the
//! consumed offsets in one Kafka transaction per commit interval (many events per
//! transaction). It drops their state when they are revoked. Nothing here coordinates with
//! other instances: the group does.
//!
//! The loop: records in, job reports in, restores done, commit on the interval (paced by how
//! long the last commit took, see `pacing`); the rebalance
//! callbacks (run inside the consumer's `recv`) commit what is done before partitions leave.

pub mod control;
mod core;
pub mod jobs;
pub mod live;
mod pacing;
pub mod reconcile;
pub mod restore;
pub mod v3_jobs;

pub use self::core::ReconcileConfig;
use self::core::{Core, CoreConfig, CoreParts};
use crate::kafka::stats::{CommittedOffsets, LagRecorder};
use crate::kafka::{
    InboundRecord, PauseControl, ProducerConfig, RecordProducer, TopicPartition, TxnError,
    TxnProducer,
};
use crate::metrics::Metrics;
use crate::publish::RecordBuilder;
use crate::telemetry::ErrorChain;
use jobs::{JobReports, Submitter};
use pacing::CommitPacing;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use restore::{RestoreConfig, Restored};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// After a reconcile pass that left due checks waiting for a call slot, the next pass comes
/// this soon instead of a tick later, if a slot has freed by then (a pass scans every owned
/// run; with every slot still busy it is skipped, and a full tick later it runs anyway, for
/// the deadlines). Against a healthy API a backlog of final statuses is then audited at up to
/// `max_in_flight` × 20 runs per 50 ms.
const RECONCILE_BACKLOG_PASS: Duration = Duration::from_millis(50);

/// The owner's settings. The app maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub bootstrap: String,
    /// The owners' consumer group (every instance of one deployment shares it).
    pub group_id: String,
    pub requests_topic: String,
    pub callbacks_topic: String,
    pub runs_topic: String,
    /// How often the open transaction is committed.
    pub commit_interval: Duration,
    pub max_in_flight: usize,
    pub dedupe_window: usize,
    pub revoke_drain: Duration,
    /// How long shutdown waits for submissions in flight.
    pub drain_timeout: Duration,
    pub restore_timeout: Duration,
    pub transaction_timeout: Duration,
    /// The transactional producer (its `transactional.id` is made unique per process).
    pub producer: ProducerConfig,
    /// librdkafka properties of the consumers, applied last.
    pub consumer_properties: BTreeMap<String, String>,
    /// `transactional.id`, unique per process: two live instances must not fence each other
    /// (zombies are fenced by the group generation instead, KIP-447). A producer replaced
    /// after a fatal error reuses it, which fences and aborts what the old one left open.
    pub transactional_id: String,
}

/// Why the owner stopped.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("owner consumer setup failed")]
    Setup(#[source] KafkaError),
    #[error("transactional producer setup failed")]
    Producer(#[source] TxnError),
    #[error("fatal consumer error: {0}")]
    Fatal(String),
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A panic while holding the lock leaves bookkeeping that a reset can repair; keep going.
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rebalance callbacks, run inside the consumer's `recv` on the loop's own task.
struct OwnerContext {
    core: Arc<Mutex<Core>>,
    requests_topic: String,
    lag: LagRecorder,
}

impl ClientContext for OwnerContext {
    /// Every `statistics.interval.ms`: the requests and callbacks topics' consumer lag.
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for OwnerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let lost = consumer.assignment_lost();
            let group = consumer.group_metadata();
            // Commits and waits for jobs: blocking, so off the async worker's duties.
            tokio::task::block_in_place(|| lock(&self.core).revoke(group.as_ref(), lost));
            tracing::info!(partitions = tpl.count(), lost, "owned partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let requests: BTreeSet<i32> = tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.requests_topic)
                .map(|e| e.partition())
                .collect();
            if requests != partitions {
                tracing::error!(?partitions, ?requests,
                    "the owner topics are not co-partitioned in this assignment (different partition counts?)");
            }
            // Nothing of them is processed before their state is restored.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "cannot pause newly assigned partitions");
            }
            lock(&self.core).assign(partitions);
            tracing::info!(
                partitions = tpl.count(),
                "owned partitions assigned; restoring"
            );
        }
    }
}

type OwnerConsumer = StreamConsumer<OwnerContext>;

/// A finished restore: its epoch, the partitions asked for, and what it found.
type RestoreDone = (u64, Vec<i32>, Result<Vec<Restored>, restore::RestoreError>);

/// The partition owner. Build it with [`PartitionOwner::new`], then `run` it.
pub struct PartitionOwner {
    config: OwnerConfig,
    consumer: Arc<OwnerConsumer>,
    core: Arc<Mutex<Core>>,
    wake: Arc<Notify>,
    markers: Arc<RecordProducer>,
    pause: Arc<PauseControl>,
    metrics: Metrics,
    /// How often runs are looked at by the reconciler (`None`: it is off).
    reconcile_tick: Option<Duration>,
}

impl PartitionOwner {
    /// Creates the transactional producer (blocking: it initializes its transactions) and the
    /// consumer, subscribed to the requests and callbacks topics.
    pub fn new(
        config: OwnerConfig,
        records: RecordBuilder,
        submitter: Arc<Submitter>,
        markers: Arc<RecordProducer>,
        pause: Arc<PauseControl>,
        metrics: Metrics,
    ) -> Result<Self, OwnerError> {
        let producer = new_producer(&config, &metrics).map_err(OwnerError::Producer)?;
        let (tx, report_rx) = std::sync::mpsc::channel();
        let wake = Arc::new(Notify::new());
        let committed = Arc::new(CommittedOffsets::default());
        let core = Arc::new(Mutex::new(Core::new(CoreParts {
            config: CoreConfig {
                requests_topic: config.requests_topic.clone(),
                callbacks_topic: config.callbacks_topic.clone(),
                max_in_flight: config.max_in_flight,
                dedupe_window: config.dedupe_window,
                revoke_drain: config.revoke_drain,
            },
            records,
            producer,
            metrics: metrics.clone(),
            submitter,
            reports: JobReports {
                tx,
                wake: wake.clone(),
            },
            report_rx,
            committed: committed.clone(),
        })));
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &config.bootstrap)
            .set("group.id", &config.group_id)
            // Offsets are committed by the transactions only.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Outputs of aborted transactions (the router's) are never read; committed offsets
            // are only read once stable (KIP-447).
            .set("isolation.level", "read_committed")
            // Partition p of both topics to one member: the precondition of owning state.
            .set("partition.assignment.strategy", "range")
            .set("fetch.wait.max.ms", "10")
            // The prefetch is shared by both topics: records taken from it while launches
            // wait for a job slot are held in memory, so it stays small (a few ms of
            // callbacks at full speed).
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "2000")
            // Past those thresholds librdkafka postpones a partition's next fetch by this much
            // (default 1 s). Pausing the requests partitions (launches waiting for a job slot)
            // drops what was prefetched, so after the resume the launches waited out that
            // backoff: 150 submissions/s at 64 in flight against an API answering in 11 ms.
            // With 10 ms: 1,007/s.
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &config.consumer_properties {
            cc.set(k, v);
        }
        let consumer: OwnerConsumer = cc
            .create_with_context(OwnerContext {
                core: core.clone(),
                requests_topic: config.requests_topic.clone(),
                lag: LagRecorder::with_commits(metrics.consumer_lag.clone(), committed),
            })
            .map_err(OwnerError::Setup)?;
        consumer
            .subscribe(&[&config.requests_topic, &config.callbacks_topic])
            .map_err(OwnerError::Setup)?;
        Ok(Self {
            config,
            consumer: Arc::new(consumer),
            core,
            wake,
            markers,
            pause,
            metrics,
            reconcile_tick: None,
        })
    }

    /// Gives the owner its API calls for control commands, and with `config` turns the
    /// reconciler on: the runs of owned partitions are polled, audited, replayed and timed out
    /// (see `core::reconcile`).
    pub fn with_reconciler(
        mut self,
        config: Option<ReconcileConfig>,
        reconciler: Arc<reconcile::Reconciler>,
    ) -> Self {
        self.reconcile_tick = config.as_ref().map(|c| c.tick);
        lock(&self.core).set_reconciler(config, reconciler);
        self
    }

    /// Runs until `stop` is cancelled, then stops taking records, waits up to the drain
    /// timeout for submissions in flight, commits, and leaves the group.
    pub async fn run(self, stop: CancellationToken) -> Result<(), OwnerError> {
        let mut tick = tokio::time::interval(self.config.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pacing = CommitPacing::new(tokio::time::Instant::now());
        let mut restores: JoinSet<RestoreDone> = JoinSet::new();
        let mut paused: HashSet<TopicPartition> = HashSet::new();
        let mut reconcile =
            tokio::time::interval(self.reconcile_tick.unwrap_or(Duration::from_secs(3600)));
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Due checks left by the last pass for lack of a call slot, and when that pass ran.
        let mut backlog = false;
        let mut last_pass = tokio::time::Instant::now();
        let result = loop {
            self.start_restores(&mut restores);
            self.apply_pauses(&mut paused, false);
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(()),
                () = self.wake.notified() => lock(&self.core).drain_reports(),
                Some(done) = restores.join_next(), if !restores.is_empty() => {
                    self.restored(done, &mut paused).await;
                }
                _ = tick.tick() => {
                    let started = tokio::time::Instant::now();
                    if !pacing.due(started) {
                        // The next commit when the pacing allows it, not a tick later.
                        tick.reset_at(pacing.not_before());
                    } else if self.commit() {
                        pacing.committed(started, tokio::time::Instant::now());
                    }
                }
                _ = reconcile.tick(), if self.reconcile_tick.is_some() => {
                    let mut core = lock(&self.core);
                    let period = reconcile.period();
                    if backlog && !core.reconcile_slot_free() && last_pass.elapsed() < period {
                        // Every call slot still busy (a slow API): nothing could start, so
                        // no scan; look again shortly.
                        reconcile.reset_after(RECONCILE_BACKLOG_PASS.min(period));
                    } else {
                        backlog = core.reconcile_tick(chrono::Utc::now());
                        last_pass = tokio::time::Instant::now();
                        if backlog {
                            // Due checks wait for a slot: the next pass when one is likely
                            // free, not a whole tick later.
                            reconcile.reset_after(RECONCILE_BACKLOG_PASS.min(period));
                        }
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        let record = InboundRecord::from_message(&m);
                        drop(m);
                        lock(&self.core).on_record(record);
                    }
                    Err(e) => {
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            break Err(OwnerError::Fatal(format!("{code}: {reason}")));
                        }
                        tracing::warn!(error = %e, "owner consumer error");
                    }
                },
            }
        };
        tracing::debug!("owner: stopping restores");
        restores.shutdown().await;
        tracing::debug!("owner: draining");
        self.shut_down(paused).await;
        result
    }

    fn start_restores(&self, restores: &mut JoinSet<RestoreDone>) {
        let Some((epoch, partitions)) = lock(&self.core).take_restore() else {
            return;
        };
        let config = RestoreConfig {
            bootstrap: self.config.bootstrap.clone(),
            runs_topic: self.config.runs_topic.clone(),
            input_topics: vec![
                self.config.requests_topic.clone(),
                self.config.callbacks_topic.clone(),
            ],
            properties: self.config.consumer_properties.clone(),
            timeout: self.config.restore_timeout,
        };
        let consumer = self.consumer.clone();
        let markers = self.markers.clone();
        let timeout = self.config.restore_timeout;
        restores.spawn(async move {
            let committed =
                move |tpl: &TopicPartitionList| consumer.committed_offsets(tpl.clone(), timeout);
            let result = restore::restore(config, partitions.clone(), &markers, committed).await;
            (epoch, partitions, result)
        });
    }

    async fn restored(
        &self,
        done: Result<RestoreDone, tokio::task::JoinError>,
        paused: &mut HashSet<TopicPartition>,
    ) {
        let (epoch, partitions, result) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "restore task failed");
                return;
            }
        };
        let restored = match result {
            Ok(restored) => restored,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), ?partitions, "restore failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                lock(&self.core).restore_failed(epoch, partitions);
                return;
            }
        };
        let seeks = lock(&self.core).install(epoch, restored);
        if seeks.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in &seeks {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
        }
        let consumer = self.consumer.clone();
        let sought = tokio::task::spawn_blocking(move || {
            consumer.seek_partitions(tpl, Duration::from_secs(10))
        })
        .await;
        match sought {
            Ok(Ok(result)) => {
                for e in result.elements() {
                    if let Err(err) = e.error() {
                        tracing::warn!(topic = e.topic(), partition = e.partition(), error = %err, "seek after restore failed");
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "seek after restore failed"),
            Err(e) => tracing::warn!(error = %e, "seek task failed"),
        }
        // Resumed by the next pause pass (unless launches must stay paused).
        for (tp, _) in seeks {
            paused.insert(tp);
        }
        self.apply_pauses(paused, true);
    }

    /// Pauses or resumes partitions so that: restoring partitions are paused; the requests
    /// partitions are paused while launches wait for a job slot (from `max_in_flight` waiting
    /// until a quarter remain) or the API key cools down; everything is paused when stopping.
    fn apply_pauses(&self, paused: &mut HashSet<TopicPartition>, force: bool) {
        let core = lock(&self.core);
        let waiting = core.launches_waiting();
        self.metrics.launches_waiting.set(waiting as i64);
        let high = self.config.max_in_flight.max(1);
        let launches_paused_now = paused
            .iter()
            .any(|tp| tp.topic == self.config.requests_topic);
        let hold_launches = self.pause.is_paused()
            || if launches_paused_now {
                waiting > high / 4
            } else {
                waiting >= high
            };
        let restoring: HashSet<TopicPartition> = core.restoring().into_iter().collect();
        let installed = core.installed();
        drop(core);
        let mut want: HashSet<TopicPartition> = restoring;
        for tp in installed {
            if hold_launches && tp.topic == self.config.requests_topic {
                want.insert(tp);
            }
        }
        if !force && want == *paused {
            return;
        }
        let to_pause: Vec<&TopicPartition> = want.difference(paused).collect();
        let to_resume: Vec<&TopicPartition> = paused.difference(&want).collect();
        let list = |tps: &[&TopicPartition]| {
            let mut tpl = TopicPartitionList::new();
            for tp in tps {
                tpl.add_partition(&tp.topic, tp.partition);
            }
            tpl
        };
        if !to_pause.is_empty() {
            if let Err(e) = self.consumer.pause(&list(&to_pause)) {
                tracing::debug!(error = %e, "pause failed");
            }
        }
        if !to_resume.is_empty() {
            if let Err(e) = self.consumer.resume(&list(&to_resume)) {
                tracing::debug!(error = %e, "resume failed");
            }
        }
        *paused = want;
    }

    /// Commits the open transaction; on failure aborts (or replaces the producer) and
    /// restores every partition from Kafka.
    /// Commits what is done, if anything; returns whether a commit was attempted.
    fn commit(&self) -> bool {
        let Some(group) = self.consumer.group_metadata() else {
            return false;
        };
        let mut core = lock(&self.core);
        if !core.commit_due() {
            return false;
        }
        let mut attempts = 0;
        let outcome = loop {
            let result = tokio::task::block_in_place(|| core.commit(&group));
            match result {
                Err(TxnError::Retriable(e)) if attempts < 3 => {
                    attempts += 1;
                    tracing::debug!(error = %e, attempts, "commit will be retried");
                }
                other => break other,
            }
        };
        if let Err(error) = outcome {
            let rebuilt = tokio::task::block_in_place(|| {
                core.recover(&error, || new_producer(&self.config, &self.metrics))
            });
            if let Err(e) = rebuilt {
                tracing::error!(error = %ErrorChain(&e), "cannot replace the transactional producer; retrying at the next commit");
            }
        }
        true
    }

    async fn shut_down(self, mut paused: HashSet<TopicPartition>) {
        lock(&self.core).stop_taking();
        paused.clear();
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        while lock(&self.core).jobs_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.wake.notified() => lock(&self.core).drain_reports(),
                () = tokio::time::sleep_until(deadline) => {}
                // Keep serving the group (rebalances) while draining; records are not taken.
                received = self.consumer.recv() => { drop(received); }
            }
        }
        lock(&self.core).abort_jobs();
        tracing::debug!("owner: final commit");
        let _ = self.commit();
        tracing::debug!("owner: leaving the group");
        // Leaving the group revokes (and commits, nothing left) inside close: off the workers.
        let consumer = self.consumer;
        let closed = tokio::task::spawn_blocking(move || drop(consumer)).await;
        if let Err(e) = closed {
            tracing::warn!(error = %e, "owner consumer close failed");
        }
    }
}

fn new_producer(config: &OwnerConfig, metrics: &Metrics) -> Result<TxnProducer, TxnError> {
    tokio::task::block_in_place(|| {
        TxnProducer::new(
            "owner",
            &config.producer,
            &config.transactional_id,
            config.transaction_timeout,
            metrics.clone(),
        )
    })
}
