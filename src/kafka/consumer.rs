//! The launch consumer: a consumer-group member that hands records to a handler concurrently
//! and stores an offset only once every record before it is durably handled (at-least-once).
//!
//! Offsets are *stored* by us (`enable.auto.offset.store=false`) and *committed* by librdkafka
//! in the background, plus synchronously on revocation and at shutdown. When the in-flight
//! bound is reached the assigned partitions are paused while the consumer keeps being polled,
//! so the group membership (`max.poll.interval.ms`) survives slow handlers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::offsets::{OffsetTracker, TopicPartition};
use super::stats::LagRecorder;
use crate::metrics::Metrics;

/// Launch consumer settings. The app maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Consumer group id.
    pub group_id: String,
    /// The launch-requests topic.
    pub topic: String,
    /// Handlers running at once. Records received while all are busy are held in order;
    /// partitions are paused once as many are held, and resumed when a quarter remain.
    pub max_in_flight: usize,
    /// Records received and not yet committable (running, or finished behind an unfinished
    /// one); partitions are paused at this bound too, which keeps memory bounded when one
    /// record is stuck at the head of a partition.
    pub max_uncommitted: usize,
    /// How long shutdown waits for in-flight handlers before committing what is done.
    pub drain_timeout: Duration,
    /// Extra librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            group_id: "captain-bridge".into(),
            topic: "captain.launch-requests".into(),
            max_in_flight: 16,
            max_uncommitted: 10_000,
            drain_timeout: Duration::from_secs(20),
            properties: BTreeMap::new(),
        }
    }
}

/// A consumed record, owned and detached from the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers, in order; a null header value is an empty vector.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl InboundRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleOutcome {
    /// The outcome is durably in Kafka: the offset may be committed.
    Done,
    /// Stopped midway (shutdown, cancellation): not committed, so it will be redelivered.
    Abandoned,
}

/// Processes one launch record.
#[async_trait]
pub trait LaunchHandler: Send + Sync + 'static {
    /// Handles `msg`; return `Done` only once its outcome is acknowledged by Kafka.
    async fn handle(&self, msg: InboundRecord) -> HandleOutcome;
}

/// External pause requests (e.g. a rate-limit cooldown), shared with the consumer loop.
#[derive(Debug, Default)]
pub struct PauseControl {
    requested: AtomicBool,
    changed: Notify,
}

impl PauseControl {
    /// Pauses every assigned partition until [`PauseControl::resume_all`]. Records already
    /// fetched are held, not dropped; the consumer keeps polling, so it stays in its group.
    pub fn pause_all(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Lifts a pause requested with [`PauseControl::pause_all`] (the in-flight bound may still
    /// keep partitions paused).
    pub fn resume_all(&self) {
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The consumer could not be created or subscribed.
    #[error("consumer setup: {0}")]
    Setup(#[source] KafkaError),
    /// librdkafka raised a fatal error; the consumer cannot continue.
    #[error("fatal consumer error: {0}")]
    Fatal(String),
}

/// State shared between the loop and the rebalance callbacks. Callbacks run inside the loop's
/// own `recv()`, so the mutexes are uncontended; they exist because the context is `Sync`.
#[derive(Default)]
struct Shared {
    tracker: Mutex<OffsetTracker>,
    /// Whether the loop currently holds the partitions paused (applied, not requested).
    paused: AtomicBool,
    /// Partitions revoked since the loop last looked, so it drops records held for them.
    revoked: Mutex<Vec<TopicPartition>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain bookkeeping; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

struct LaunchContext {
    shared: Arc<Shared>,
    lag: LagRecorder,
}

impl ClientContext for LaunchContext {
    /// Called every `statistics.interval.ms` (set by the app from `kafka.statistics_interval`).
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for LaunchContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is stored while we still own the partitions; in-flight work for them
            // is dropped and redone by the new owner (bounded redo, no loss).
            if !consumer.assignment_lost() {
                commit_stored(consumer);
            }
            let tps = tps_of(tpl);
            lock(&self.shared.tracker).revoke(&tps);
            lock(&self.shared.revoked).extend(tps);
            tracing::info!(partitions = tpl.count(), "launch partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Newly assigned partitions start unpaused: keep them in line with the loop.
            if self.shared.paused.load(Ordering::SeqCst) {
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
            }
            tracing::info!(partitions = tpl.count(), "launch partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// Commits the stored offsets synchronously; "nothing to commit" is not an error.
fn commit_stored<C: Consumer<LaunchContext>>(consumer: &C) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, "synchronous offset commit failed"),
    }
}

type Consumed = StreamConsumer<LaunchContext>;

/// The launch-requests consumer. Build it with [`LaunchConsumer::new`], then `run` it.
pub struct LaunchConsumer {
    consumer: Arc<Consumed>,
    shared: Arc<Shared>,
    pause: Arc<PauseControl>,
    config: ConsumerConfig,
    metrics: Metrics,
}

impl LaunchConsumer {
    /// Creates the consumer and subscribes to the launch topic: `enable.auto.commit=true`
    /// with `enable.auto.offset.store=false`, `auto.offset.reset=earliest` and a bounded
    /// prefetch, then the user's properties (which may override the prefetch).
    pub fn new(config: ConsumerConfig, metrics: Metrics) -> Result<Self, ConsumerError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &config.bootstrap)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // librdkafka prefetches up to 64 MiB / 100,000 records per partition by default:
            // with a backlog that is memory spent on records the bridge will not touch for
            // minutes. A few thousand records keep a fast stream fed.
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "2000");
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        let shared = Arc::new(Shared::default());
        let consumer: Consumed = cc
            .create_with_context(LaunchContext {
                shared: shared.clone(),
                lag: LagRecorder::new(metrics.consumer_lag.clone()),
            })
            .map_err(ConsumerError::Setup)?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(ConsumerError::Setup)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            shared,
            pause: Arc::new(PauseControl::default()),
            config,
            metrics,
        })
    }

    /// The pause hooks for other components (rate-limit cooldowns).
    pub fn pause_control(&self) -> Arc<PauseControl> {
        self.pause.clone()
    }

    fn has_capacity(&self, running: usize) -> bool {
        running < self.config.max_in_flight.max(1)
            && lock(&self.shared.tracker).total_tracked() < self.config.max_uncommitted.max(1)
    }

    /// Whether the partitions should be paused, given `held` records waiting for a handler:
    /// on request (a cooldown), or once `max_in_flight` records are held; a pause for that
    /// reason lasts until a quarter remain. Pausing as soon as every handler was busy (and
    /// resuming at each finished one) stopped and restarted librdkafka's fetching at every
    /// finished handler, which capped a backlog at about 2 × `max_in_flight` records/s.
    fn want_pause(&self, held: usize) -> bool {
        if self.pause.is_paused() {
            return true;
        }
        let high = self.config.max_in_flight.max(1);
        if self.shared.paused.load(Ordering::SeqCst) {
            held > high / 4
        } else {
            held >= high
        }
    }

    /// Pauses or resumes the whole assignment when the wanted state differs from the applied.
    fn apply_pause(&self, want: bool) {
        if self.shared.paused.load(Ordering::SeqCst) == want {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause or resume");
                return;
            }
        };
        let result = if want {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.shared.paused.store(want, Ordering::SeqCst);
                tracing::debug!(paused = want, "launch partitions pause state changed");
            }
            Err(e) => tracing::warn!(error = %e, paused = want, "cannot change pause state"),
        }
    }

    /// Stores `position` as the next offset to consume for `tp`.
    fn store(&self, tp: &TopicPartition, position: i64) {
        let mut tpl = TopicPartitionList::new();
        // `store_offsets` stores the position as given; the older `store_offset` would add 1.
        if let Err(e) = tpl
            .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(position))
            .and_then(|()| self.consumer.store_offsets(&tpl))
        {
            // __STATE: the partition was revoked meanwhile; its new owner redoes the work.
            tracing::debug!(error = %e, topic = %tp.topic, partition = tp.partition, "offset not stored");
        }
    }

    fn finish(&self, result: Result<(TopicPartition, i64, HandleOutcome), tokio::task::JoinError>) {
        self.metrics.launches_in_flight.dec();
        match result {
            Ok((tp, offset, HandleOutcome::Done)) => {
                let advanced = lock(&self.shared.tracker).complete(&tp, offset);
                if let Some(position) = advanced {
                    self.store(&tp, position);
                }
            }
            Ok((tp, offset, HandleOutcome::Abandoned)) => {
                // Left tracked on purpose: the position stays before it until redelivery.
                tracing::debug!(topic = %tp.topic, partition = tp.partition, offset, "launch abandoned");
            }
            Err(e) => {
                tracing::error!(error = %e, "launch handler panicked; record left uncommitted")
            }
        }
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<(TopicPartition, i64, HandleOutcome)>,
        handler: &Arc<dyn LaunchHandler>,
        record: InboundRecord,
    ) {
        let handler = handler.clone();
        self.metrics.launches_in_flight.inc();
        tasks.spawn(async move {
            let tp = record.topic_partition();
            let offset = record.offset;
            (tp, offset, handler.handle(record).await)
        });
    }

    /// Consumes until `shutdown` is cancelled, then drains in-flight handlers up to the drain
    /// deadline, commits the stored offsets synchronously, and leaves the group.
    pub async fn run(
        self,
        handler: Arc<dyn LaunchHandler>,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumerError> {
        let mut tasks = JoinSet::new();
        // Records received while paused (already fetched before the pause took effect).
        let mut held: VecDeque<InboundRecord> = VecDeque::new();
        let result = loop {
            self.drop_revoked(&mut held);
            while self.has_capacity(tasks.len()) && !self.pause.is_paused() {
                let Some(record) = held.pop_front() else {
                    break;
                };
                self.spawn(&mut tasks, &handler, record);
            }
            self.apply_pause(self.want_pause(held.len()));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => self.finish(done),
                () = self.pause.changed.notified() => {}
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        let record = InboundRecord::from_message(&m);
                        drop(m);
                        // A rebalance served inside recv() may have revoked held records.
                        self.drop_revoked(&mut held);
                        lock(&self.shared.tracker).track(&record.topic_partition(), record.offset);
                        if held.is_empty() && self.has_capacity(tasks.len()) && !self.pause.is_paused() {
                            self.spawn(&mut tasks, &handler, record);
                        } else {
                            held.push_back(record);
                        }
                    }
                    Err(e) => {
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            break Err(ConsumerError::Fatal(format!("{code}: {reason}")));
                        }
                        tracing::warn!(error = %e, "launch consumer error");
                    }
                },
            }
        };
        self.shut_down(tasks, held).await;
        result
    }

    fn drop_revoked(&self, held: &mut VecDeque<InboundRecord>) {
        let revoked = std::mem::take(&mut *lock(&self.shared.revoked));
        if !revoked.is_empty() {
            held.retain(|r| !revoked.contains(&r.topic_partition()));
        }
    }

    async fn shut_down(
        self,
        mut tasks: JoinSet<(TopicPartition, i64, HandleOutcome)>,
        held: VecDeque<InboundRecord>,
    ) {
        // Stop taking records; held ones were never started and will be redelivered.
        drop(held);
        self.apply_pause(true);
        let deadline = tokio::time::sleep(self.config.drain_timeout);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                biased;
                Some(done) = tasks.join_next() => self.finish(done),
                () = &mut deadline => {
                    tracing::warn!(left = tasks.len(), "drain deadline reached; abandoning launches");
                    break;
                }
                // Keep serving the consumer (rebalances, poll interval); records are ignored.
                _ = self.consumer.recv() => {}
            }
        }
        let abandoned = tasks.len();
        tasks.abort_all();
        for _ in 0..abandoned {
            self.metrics.launches_in_flight.dec();
        }
        let consumer = self.consumer;
        // Commit and close (leaving the group, on drop) block on the network: off the async
        // workers.
        let closed = tokio::task::spawn_blocking(move || {
            commit_stored(consumer.as_ref());
            drop(consumer);
        })
        .await;
        if let Err(e) = closed {
            tracing::warn!(error = %e, "final commit task failed");
        }
    }
}
