//! The launch router: consumes the launch topic (keyed however its producers like), decodes
//! and validates each record, and writes it either to the internal requests topic, keyed and
//! partitioned by request_id so it reaches the owner of that request's state, or to the
//! dead-letter topic with its reason plus a `REJECTED` status. Outputs and consumed offsets go
//! in one transaction per commit interval: a rejected record is dead-lettered exactly once for
//! `read_committed` readers, across retries and restarts.
//!
//! A poison record (one whose outputs the broker refuses) cannot block its partition: after an
//! abort the records since the last commit are redone one transaction each; the one whose
//! transaction fails again is dead-lettered with its value cut to fit, or, if even that is
//! refused, skipped with an error log and a metric, never retried forever.
//!
//! Records are JSON or Avro on the same topic, decoded through one entry point
//! ([`RecordDecoder::decode_launch`]); an undecodable Avro record is dead-lettered with its
//! class like any invalid request. A record that needs the schema registry while it does not
//! answer (an Avro writer schema not fetched yet, or a `REJECTED` status whose Avro writer
//! schema id is not known yet) is the registry's problem, not the record's: it is held, the
//! launch partitions are paused (the consumer keeps serving the group), and it is tried again
//! with a backoff; nothing at or after it is committed until it goes through. The same
//! decoder reads the control topic ([`RecordDecoder::decode_control`]).

use crate::avro::{DecodeError, EncodeError, LaunchDecodeError, RecordDecoder, RegistryError};
use crate::domain::control::{self, ControlCommand};
use crate::domain::request::{self, derived_request_id, Mode, RejectedContext};
use crate::domain::{
    Admission, LaunchRequest, Rejection, RunStatus, RunStatusEvent, StatusError, StatusSource,
};
use crate::kafka::stats::{CommittedOffsets, LagRecorder};
use crate::kafka::{
    InboundRecord, OutRecord, ProducerConfig, TopicPartition, TxnError, TxnProducer,
};
use crate::metrics::Metrics;
use crate::publish::{Origin, RecordBuilder, H_ORIGINAL_SIZE, H_TRUNCATED};
use crate::telemetry::ErrorChain;
use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The router's settings. The app maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub bootstrap: String,
    /// The launch topic's consumer group (the deployment's `kafka.group_id`).
    pub group_id: String,
    pub launch_topic: String,
    /// Operators' commands, forwarded to the owner of their request.
    pub control_topic: String,
    pub commit_interval: Duration,
    /// Largest request forwarded to the requests topic (its `max.message.bytes`).
    pub max_request_bytes: usize,
    /// What the bridge serves: `auto` resolved, live limits, modes needing callbacks.
    pub admission: Admission,
    pub producer: ProducerConfig,
    pub transactional_id: String,
    pub transaction_timeout: Duration,
    /// librdkafka properties of the consumer, applied last.
    pub consumer_properties: BTreeMap<String, String>,
}

/// Why the router stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("router consumer setup failed")]
    Setup(#[source] KafkaError),
    #[error("router producer setup failed")]
    Producer(#[source] TxnError),
    #[error("fatal router consumer error: {0}")]
    Fatal(String),
}

/// First and longest wait before a record held for the schema registry is tried again.
const REGISTRY_RETRY_MIN: Duration = Duration::from_millis(500);
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(5);
/// The `part` label of `captain_bridge_schema_registry_waiting` for held launch records.
const WAITING_PART: &str = "launch_router";

/// Why a record is held: the schema registry must answer first.
#[derive(Debug)]
struct Wait {
    /// `decode` (its writer schema) or `encode` (its `REJECTED` status's writer schema id).
    stage: &'static str,
    error: RegistryError,
}

/// Records held for the schema registry, and when to try again.
struct Waiting {
    since: Instant,
    attempts: u32,
    delay: Duration,
    next: tokio::time::Instant,
}

/// The router's transaction and positions, shared with the rebalance callbacks.
struct RouterCore {
    producer: TxnProducer,
    records: RecordBuilder,
    metrics: Metrics,
    max_request_bytes: usize,
    admission: Admission,
    control_topic: String,
    /// Next offset to commit per partition (every routed record is done at once).
    positions: HashMap<TopicPartition, i64>,
    advanced: bool,
    /// After an abort, records below these offsets are redone one transaction each.
    isolate_below: HashMap<TopicPartition, i64>,
    /// Where committed offsets are told to the consumer-lag metric.
    committed: Arc<CommittedOffsets>,
    /// Outcomes in the open transaction, counted in the metrics once it commits: a record
    /// redone after an abort is counted once, like its outputs.
    pending_routed: u64,
    pending_rejected: u64,
    /// Records received and not routed because the registry must answer first, in order
    /// (the oldest first); bounded by the consumer's prefetch, since the partitions are
    /// paused while it is not empty.
    held: VecDeque<InboundRecord>,
    waiting: Option<Waiting>,
}

fn lock(core: &Mutex<RouterCore>) -> MutexGuard<'_, RouterCore> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

impl RouterCore {
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

    /// The records one launch record becomes, given what its value decoded to; `Wait` when
    /// they cannot be built before the schema registry answers.
    fn route(
        &self,
        record: &InboundRecord,
        decoded: Result<LaunchRequest, LaunchDecodeError>,
    ) -> Result<Vec<OutRecord>, Wait> {
        let fallback = derived_request_id(&record.topic, record.partition, record.offset);
        // What the record asked for, if it decoded, must also be admitted (mode auto resolved,
        // live limits, a mode this bridge can serve).
        let decoded = decoded.and_then(|request| {
            let context = RejectedContext {
                request_id: Some(request.request_id.clone()),
                action: Some(request.action.clone()),
                mode: Some(request.mode),
                metadata: request.metadata.clone(),
            };
            self.admission
                .admit(request)
                .map_err(|rejection| LaunchDecodeError::Rejected { rejection, context })
        });
        match decoded {
            Ok(request) => {
                let out = self.records.launch(&request, &Self::origin(record));
                let size = out.payload.as_ref().map_or(0, Vec::len);
                if size > self.max_request_bytes {
                    let rejection = Rejection {
                        class: request::RejectClass::InvalidValue,
                        message: format!(
                            "the request is {size} bytes, above the {} bytes the requests topic takes",
                            self.max_request_bytes
                        ),
                    };
                    let context = RejectedContext {
                        request_id: Some(request.request_id),
                        action: Some(request.action),
                        mode: Some(request.mode),
                        metadata: request.metadata,
                    };
                    return self.reject(record, &rejection, context, &fallback);
                }
                Ok(vec![out])
            }
            Err(LaunchDecodeError::Rejected { rejection, context }) => {
                self.reject(record, &rejection, context, &fallback)
            }
            Err(LaunchDecodeError::Registry(error)) => Err(Wait {
                stage: "decode",
                error,
            }),
        }
    }

    /// A control command goes to its request's owner; a malformed one to the dead-letter
    /// topic, with the same headers as a rejected launch (there is no run to give a status).
    fn route_control(
        &self,
        record: &InboundRecord,
        decoded: Result<ControlCommand, Rejection>,
    ) -> Vec<OutRecord> {
        match decoded {
            Ok(command) => vec![self.records.control(&command, &Self::origin(record))],
            Err(rejection) => {
                let key = record.key.as_deref().map(String::from_utf8_lossy);
                let request_id = key.map_or_else(
                    || derived_request_id(&record.topic, record.partition, record.offset),
                    |k| k.into_owned(),
                );
                tracing::warn!(%request_id, class = rejection.class.as_str(), reason = %rejection.message,
                    partition = record.partition, offset = record.offset, "control command rejected");
                self.metrics
                    .reconcile
                    .control_commands
                    .with_label_values(&["unreadable", "malformed"])
                    .inc();
                vec![self
                    .records
                    .dead_letter(&Self::origin(record), &rejection, &request_id)]
            }
        }
    }

    /// Dead-letter record and `REJECTED` status (keyed and labelled by `context`, what could
    /// be read of the record).
    fn reject(
        &self,
        record: &InboundRecord,
        rejection: &Rejection,
        context: RejectedContext,
        fallback: &str,
    ) -> Result<Vec<OutRecord>, Wait> {
        let request_id = context.request_id.unwrap_or_else(|| fallback.to_owned());
        let event = RunStatusEvent {
            request_id: request_id.clone(),
            run_uid: None,
            schedule_uid: None,
            chunk: 0,
            action: context.action.unwrap_or_default(),
            mode: context.mode.unwrap_or(Mode::Async),
            status: RunStatus::Rejected,
            previous_status: None,
            error: Some(StatusError {
                label: Some(rejection.class.as_str().to_uppercase()),
                scope: Some("input".into()),
                message: rejection.message.clone(),
                http_status: None,
            }),
            source: StatusSource::Bridge,
            occurred_at: Utc::now(),
            metadata: context.metadata,
            provider_status: None,
            input_errors: None,
            schedule_status: None,
            command: None,
        };
        let status = match self.records.status(&event) {
            Ok(status) => Some(status),
            Err(EncodeError::Registry(error)) => {
                return Err(Wait {
                    stage: "encode",
                    error,
                })
            }
            Err(e @ EncodeError::Value { .. }) => {
                // Permanent: the dead letter alone still says why, and is never held back.
                tracing::error!(%request_id, error = %e, "REJECTED status cannot be encoded; dead-lettering without it");
                None
            }
        };
        tracing::warn!(%request_id, class = rejection.class.as_str(), reason = %rejection.message,
            partition = record.partition, offset = record.offset, "launch request rejected");
        let mut out = vec![self
            .records
            .dead_letter(&Self::origin(record), rejection, &request_id)];
        out.extend(status);
        Ok(out)
    }

    /// Counts what `out` (the records `record` became) says, until the transaction ends.
    fn count(&mut self, record: &InboundRecord, out: &[OutRecord]) {
        if record.topic == self.control_topic {
            // Control commands have their own metric.
            return;
        }
        if out.iter().any(|r| r.role == "dead_letter") {
            self.pending_rejected += 1;
        } else {
            self.pending_routed += 1;
        }
    }

    /// The transaction ended: committed outcomes reach the metrics, aborted ones are dropped.
    fn settle(&mut self, committed: bool) {
        if committed {
            self.metrics.launches_routed.inc_by(self.pending_routed);
            self.metrics
                .launches
                .with_label_values(&["rejected"])
                .inc_by(self.pending_rejected);
        }
        self.pending_routed = 0;
        self.pending_rejected = 0;
    }

    fn advance(&mut self, record: &InboundRecord) {
        self.positions.insert(
            TopicPartition::new(record.topic.clone(), record.partition),
            record.offset + 1,
        );
        self.advanced = true;
    }

    fn send_all(&mut self, records: &[OutRecord]) -> Result<(), TxnError> {
        for r in records {
            self.producer.send(r)?;
        }
        Ok(())
    }

    fn offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, position) in &self.positions {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*position));
        }
        tpl
    }

    fn commit(&mut self, group: &ConsumerGroupMetadata) -> Result<(), TxnError> {
        if !self.producer.is_open() && !self.advanced {
            return Ok(());
        }
        self.producer.begin()?;
        let offsets = self.offsets();
        self.producer.commit(&offsets, group)?;
        self.settle(true);
        for (tp, position) in &self.positions {
            self.committed.set(&tp.topic, tp.partition, *position);
        }
        self.advanced = false;
        Ok(())
    }

    /// Forgets the held records (revoked, or to be read again after a rewind).
    fn stop_waiting(&mut self) {
        self.held.clear();
        if self.waiting.take().is_some() {
            self.metrics
                .schema_registry_waiting
                .with_label_values(&[WAITING_PART])
                .set(0);
        }
    }

    fn isolating(&self, record: &InboundRecord) -> bool {
        self.isolate_below
            .get(&TopicPartition::new(record.topic.clone(), record.partition))
            .is_some_and(|below| record.offset < *below)
    }
}

struct RouterContext {
    core: Arc<Mutex<RouterCore>>,
    lag: LagRecorder,
}

impl ClientContext for RouterContext {
    /// Every `statistics.interval.ms`: the launch topic's consumer lag.
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let lost = consumer.assignment_lost();
            let group = consumer.group_metadata();
            tokio::task::block_in_place(|| {
                let mut core = lock(&self.core);
                let committed = match (lost, group) {
                    (false, Some(group)) => core.commit(&group).map_err(|e| {
                        tracing::warn!(error = %ErrorChain(&e), "router commit on revocation failed");
                    }),
                    _ => Err(()),
                };
                if committed.is_err() {
                    if let Err(e) = core.producer.abort() {
                        tracing::warn!(error = %ErrorChain(&e), "router abort on revocation failed");
                    }
                    core.settle(false);
                }
                for e in tpl.elements() {
                    let tp = TopicPartition::new(e.topic(), e.partition());
                    core.positions.remove(&tp);
                    core.isolate_below.remove(&tp);
                    core.committed.forget(e.topic(), e.partition());
                }
                core.advanced = false;
                if !core.held.is_empty() {
                    // Never committed: whoever owns the partitions next reads them again.
                    tracing::info!(
                        records = core.held.len(),
                        "launch records waiting for the schema registry left with their partitions"
                    );
                }
                core.stop_waiting();
            });
            tracing::info!(partitions = tpl.count(), lost, "launch partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "launch partitions assigned");
        }
    }
}

type RouterConsumer = StreamConsumer<RouterContext>;

/// The launch router. Build it with [`LaunchRouter::new`], then `run` it.
pub struct LaunchRouter {
    config: RouterConfig,
    consumer: Arc<RouterConsumer>,
    core: Arc<Mutex<RouterCore>>,
    decoder: Arc<RecordDecoder>,
    metrics: Metrics,
}

fn new_producer(config: &RouterConfig, metrics: &Metrics) -> Result<TxnProducer, TxnError> {
    tokio::task::block_in_place(|| {
        TxnProducer::new(
            "router",
            &config.producer,
            &config.transactional_id,
            config.transaction_timeout,
            metrics.clone(),
        )
    })
}

impl LaunchRouter {
    /// Creates the transactional producer (blocking: it initializes its transactions) and the
    /// consumer, subscribed to the launch topic.
    pub fn new(
        config: RouterConfig,
        records: RecordBuilder,
        decoder: Arc<RecordDecoder>,
        metrics: Metrics,
    ) -> Result<Self, RouterError> {
        let producer = new_producer(&config, &metrics).map_err(RouterError::Producer)?;
        let committed = Arc::new(CommittedOffsets::default());
        let core = Arc::new(Mutex::new(RouterCore {
            producer,
            records,
            metrics: metrics.clone(),
            max_request_bytes: config.max_request_bytes,
            admission: config.admission,
            control_topic: config.control_topic.clone(),
            positions: HashMap::new(),
            advanced: false,
            isolate_below: HashMap::new(),
            committed: committed.clone(),
            pending_routed: 0,
            pending_rejected: 0,
            held: VecDeque::new(),
            waiting: None,
        }));
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &config.bootstrap)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // Routing is quick: a small prefetch keeps memory low behind a large backlog (what
            // is prefetched is held decompressed, several times its size on the wire).
            .set("queued.max.messages.kbytes", "1024")
            .set("queued.min.messages", "1000")
            .set("fetch.message.max.bytes", "262144")
            .set("fetch.wait.max.ms", "10")
            // A full prefetch postpones the next fetch by this (default 1 s): keep the backlog
            // flowing as soon as routing has made room (see the owner's consumer).
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &config.consumer_properties {
            cc.set(k, v);
        }
        let consumer: RouterConsumer = cc
            .create_with_context(RouterContext {
                core: core.clone(),
                lag: LagRecorder::with_commits(metrics.consumer_lag.clone(), committed),
            })
            .map_err(RouterError::Setup)?;
        consumer
            .subscribe(&[&config.launch_topic, &config.control_topic])
            .map_err(RouterError::Setup)?;
        Ok(Self {
            config,
            consumer: Arc::new(consumer),
            core,
            decoder,
            metrics,
        })
    }

    /// Routes until `stop` is cancelled, then commits what is done and leaves the group.
    pub async fn run(self, stop: CancellationToken) -> Result<(), RouterError> {
        let mut tick = tokio::time::interval(self.config.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let retry_at = lock(&self.core).waiting.as_ref().map(|w| w.next);
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(()),
                _ = tick.tick() => self.commit(),
                () = sleep_until(retry_at), if retry_at.is_some() => self.retry_held().await,
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        let record = InboundRecord::from_message(&m);
                        drop(m);
                        self.handle(record).await;
                    }
                    Err(e) => {
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            break Err(RouterError::Fatal(format!("{code}: {reason}")));
                        }
                        tracing::warn!(error = %e, "router consumer error");
                    }
                },
            }
        };
        self.commit();
        let consumer = self.consumer;
        if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::warn!(error = %e, "router consumer close failed");
        }
        result
    }

    async fn handle(&self, record: InboundRecord) {
        {
            let mut core = lock(&self.core);
            if !core.held.is_empty() {
                // Behind a held record (fetched before the pause): keeps its place in line.
                core.held.push_back(record);
                return;
            }
        }
        if let Err((record, wait)) = self.process(record).await {
            self.hold(record, wait);
        }
    }

    /// Decodes and routes one record; gives it back when it must wait for the registry.
    async fn process(&self, record: InboundRecord) -> Result<(), (InboundRecord, Wait)> {
        let fallback = derived_request_id(&record.topic, record.partition, record.offset);
        let payload = record.payload.as_deref().unwrap_or_default();
        let routed = if record.topic == self.config.control_topic {
            match self.decode_control(payload).await {
                Ok(decoded) => Ok(lock(&self.core).route_control(&record, decoded)),
                Err(wait) => Err(wait),
            }
        } else {
            let decoded = self.decoder.decode_launch(payload, &fallback).await;
            lock(&self.core).route(&record, decoded)
        };
        let out = match routed {
            Ok(out) => out,
            Err(wait) => return Err((record, wait)),
        };
        let mut core = lock(&self.core);
        if core.isolating(&record) {
            drop(core);
            return match self.isolated(&record, out) {
                Ok(()) => Ok(()),
                Err(wait) => Err((record, wait)),
            };
        }
        match core.send_all(&out) {
            Ok(()) => {
                core.count(&record, &out);
                core.advance(&record);
            }
            Err(e) => {
                drop(core);
                tracing::warn!(error = %ErrorChain(&e), "routed record not enqueued");
                self.recover(&e);
            }
        }
        Ok(())
    }

    /// A control record as a command: JSON as it is, Avro (magic byte 0) through the registry
    /// and the `ControlCommand` contract, then checked the same way; `Wait` while the writer
    /// schema cannot be fetched.
    async fn decode_control(
        &self,
        payload: &[u8],
    ) -> Result<Result<ControlCommand, Rejection>, Wait> {
        if !matches!(
            crate::avro::wire::input_format(payload),
            crate::avro::wire::InputFormat::Avro
        ) {
            return Ok(control::parse_json(payload));
        }
        match self.decoder.decode_control(payload).await {
            Ok(value) => Ok(control::parse_json(value.to_string().as_bytes())),
            Err(DecodeError::Rejected(rejection)) => Ok(Err(rejection)),
            Err(DecodeError::Registry(error)) => Err(Wait {
                stage: "decode",
                error,
            }),
        }
    }

    /// Keeps `record` (first in line) until the registry answers: pauses the launch
    /// partitions and schedules the next attempt, backing off.
    fn hold(&self, record: InboundRecord, wait: Wait) {
        let mut core = lock(&self.core);
        let (partition, offset) = (record.partition, record.offset);
        core.held.push_front(record);
        let now = Instant::now();
        let waiting = core.waiting.get_or_insert(Waiting {
            since: now,
            attempts: 0,
            delay: REGISTRY_RETRY_MIN / 2,
            next: tokio::time::Instant::now(),
        });
        waiting.attempts += 1;
        waiting.delay = (waiting.delay * 2).clamp(REGISTRY_RETRY_MIN, REGISTRY_RETRY_MAX);
        waiting.next = tokio::time::Instant::now() + waiting.delay;
        let (attempts, retry_in) = (waiting.attempts, waiting.delay);
        let held = core.held.len();
        drop(core);
        let retriable = wait.error.is_retriable();
        if attempts == 1 {
            self.metrics
                .schema_registry_waiting
                .with_label_values(&[WAITING_PART])
                .set(1);
            self.pause_all(true);
        }
        if !crate::avro::encode::loud(attempts) {
            tracing::debug!(stage = wait.stage, error = %wait.error, partition, offset, attempts,
                "launch record still waits for the schema registry");
        } else if retriable {
            tracing::warn!(stage = wait.stage, error = %wait.error, partition, offset, attempts,
                held, ?retry_in, "launch record waits for the schema registry; launch partitions paused, nothing after it committed");
        } else {
            tracing::error!(stage = wait.stage, error = %wait.error, partition, offset, attempts,
                held, ?retry_in, "the schema registry refuses: launch record held until an operator acts; launch partitions paused");
        }
    }

    /// Routes the held records in order, until one must wait again.
    async fn retry_held(&self) {
        loop {
            let Some(record) = lock(&self.core).held.pop_front() else {
                break;
            };
            if let Err((record, wait)) = self.process(record).await {
                return self.hold(record, wait);
            }
        }
        let waited = {
            let mut core = lock(&self.core);
            let waited = core
                .waiting
                .as_ref()
                .map(|w| (w.since.elapsed(), w.attempts));
            core.stop_waiting();
            waited
        };
        if let Some((waited, attempts)) = waited {
            self.pause_all(false);
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                attempts,
                "schema registry answered; launch routing resumes"
            );
        }
    }

    /// Pauses (or resumes) every assigned launch partition.
    fn pause_all(&self, pause: bool) {
        let outcome = self.consumer.assignment().and_then(|tpl| {
            if pause {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            }
        });
        if let Err(e) = outcome {
            tracing::warn!(error = %e, pause, "cannot pause or resume the launch partitions");
        }
    }

    /// One record in a transaction of its own, after an abort: if it fails again it is the
    /// poison, and gets the fallback (which needs a `REJECTED` status: `Wait` before anything
    /// is sent if that status cannot be encoded yet).
    fn isolated(&self, record: &InboundRecord, out: Vec<OutRecord>) -> Result<(), Wait> {
        let Some(group) = self.consumer.group_metadata() else {
            return Ok(());
        };
        let mut core = lock(&self.core);
        if !core.records.status_ready() {
            return Err(Wait {
                stage: "encode",
                error: RegistryError::Unavailable {
                    operation: "schema_id",
                    reason: "the run_status writer schema id is not known yet".into(),
                },
            });
        }
        // Everything before this record is committed: the transaction holds it alone.
        let first = tokio::task::block_in_place(|| core.commit(&group));
        if let Err(e) = first {
            drop(core);
            self.recover(&e);
            return Ok(());
        }
        let attempt = core.send_all(&out).map(|()| {
            core.count(record, &out);
            core.advance(record);
        });
        let done = attempt.and_then(|()| tokio::task::block_in_place(|| core.commit(&group)));
        let Err(error) = done else { return Ok(()) };
        tracing::error!(error = %ErrorChain(&error), partition = record.partition, offset = record.offset,
            "launch record refused by Kafka even alone; dead-lettering it with its value cut");
        self.renew_producer(&mut core);
        // A rejected record keeps its own class and reason; a valid one whose forwarded
        // request Kafka refuses is rejected as an invalid record. Either way its dead letter
        // goes without the value, which is what the broker could not take.
        let mut minimal = if out.iter().any(|r| r.role == "dead_letter") {
            out
        } else {
            let rejection = Rejection {
                class: request::RejectClass::InvalidRecord,
                message: format!("its outputs were refused by Kafka: {}", ErrorChain(&error)),
            };
            let fallback = derived_request_id(&record.topic, record.partition, record.offset);
            let context =
                RejectedContext::from_bytes(record.payload.as_deref().unwrap_or_default());
            core.reject(record, &rejection, context, &fallback)
                .unwrap_or_else(|wait| {
                    // Not reached: the status's writer id was known above, and ids are kept.
                    tracing::error!(error = %wait.error, "REJECTED status not encodable; dead letter alone");
                    let origin = RouterCore::origin(record);
                    vec![core.records.dead_letter(&origin, &rejection, &fallback)]
                })
        };
        if let Some(dl) = minimal.iter_mut().find(|r| r.role == "dead_letter") {
            dl.payload = None;
            dl.headers
                .retain(|(k, _)| k != H_TRUNCATED && k != H_ORIGINAL_SIZE);
            dl.headers.push((H_TRUNCATED.into(), b"true".to_vec()));
            let size = record.payload.as_ref().map_or(0, Vec::len);
            dl.headers
                .push((H_ORIGINAL_SIZE.into(), size.to_string().into_bytes()));
        }
        let fallback_done = core
            .send_all(&minimal)
            .map(|()| {
                core.count(record, &minimal);
                core.advance(record);
            })
            .and_then(|()| tokio::task::block_in_place(|| core.commit(&group)));
        if let Err(e) = fallback_done {
            tracing::error!(error = %ErrorChain(&e), partition = record.partition, offset = record.offset,
                "launch record skipped: not even its dead letter could be written");
            self.renew_producer(&mut core);
            self.metrics.launch_records_skipped.inc();
            core.advance(record);
            let skipped = tokio::task::block_in_place(|| core.commit(&group));
            if let Err(e) = skipped {
                drop(core);
                self.recover(&e);
            }
        }
        Ok(())
    }

    fn commit(&self) {
        let Some(group) = self.consumer.group_metadata() else {
            return;
        };
        let mut core = lock(&self.core);
        let mut attempts = 0;
        let outcome = loop {
            match tokio::task::block_in_place(|| core.commit(&group)) {
                Err(TxnError::Retriable(e)) if attempts < 3 => {
                    attempts += 1;
                    tracing::debug!(error = %e, attempts, "router commit will be retried");
                }
                other => break other,
            }
        };
        drop(core);
        if let Err(e) = outcome {
            self.recover(&e);
        }
    }

    /// Replaces the producer after a failed transaction; its open transaction is aborted by
    /// the new producer's initialization (which fences the old one). Aborting alone is not
    /// enough once the broker refused a record: librdkafka keeps that partition's sequence
    /// number past the refused record, the broker then refuses the next record there as out
    /// of order, and only the epoch bump of a new producer resets it. If no producer can be
    /// made, the old one's transaction is aborted and it stays.
    fn renew_producer(&self, core: &mut RouterCore) {
        core.settle(false);
        match new_producer(&self.config, &self.metrics) {
            Ok(p) => core.producer = p,
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "cannot replace the router producer");
                let _ = core.producer.abort();
            }
        }
    }

    /// Aborts (or replaces the producer), then consumes again from the committed offsets,
    /// redoing the records of the failed transaction one transaction each.
    fn recover(&self, error: &TxnError) {
        tracing::warn!(error = %ErrorChain(error), "router transaction failed; redoing it record by record");
        let mut core = lock(&self.core);
        match error {
            // Nothing refused: the same producer can go on once the transaction is aborted.
            TxnError::Retriable(_) if core.producer.abort().is_ok() => core.settle(false),
            _ => self.renew_producer(&mut core),
        }
        let reached: Vec<(TopicPartition, i64)> = core.positions.drain().collect();
        for (tp, below) in reached {
            core.isolate_below.insert(tp, below);
        }
        core.advanced = false;
        // Held records are read again from the committed offsets like the rest.
        let was_waiting = core.waiting.is_some();
        core.stop_waiting();
        drop(core);
        if was_waiting {
            self.pause_all(false);
        }
        let consumer = self.consumer.clone();
        let rewound = tokio::task::block_in_place(move || -> Result<(), KafkaError> {
            let committed = consumer.committed(Duration::from_secs(10))?;
            let mut tpl = TopicPartitionList::new();
            for e in committed.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
            }
            consumer.seek_partitions(tpl, Duration::from_secs(10))?;
            Ok(())
        });
        if let Err(e) = rewound {
            tracing::error!(error = %e, "router cannot rewind to its committed offsets");
        }
    }
}

/// Sleeps until `at` (never, when `None`: the branch using it is disabled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
