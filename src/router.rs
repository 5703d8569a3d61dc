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

use crate::domain::control;
use crate::domain::request::{self, derived_request_id, Mode, RejectedContext};
use crate::domain::{Admission, Rejection, RunStatus, RunStatusEvent, StatusError, StatusSource};
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
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
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

    /// The records one launch or control record becomes.
    fn route(&self, record: &InboundRecord) -> Vec<OutRecord> {
        if record.topic == self.control_topic {
            return self.route_control(record);
        }
        let fallback = derived_request_id(&record.topic, record.partition, record.offset);
        let payload = record.payload.as_deref().unwrap_or_default();
        match request::parse_json(payload, &fallback).and_then(|r| self.admission.admit(r)) {
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
                    return self.reject(record, &rejection, &fallback);
                }
                vec![out]
            }
            Err(rejection) => self.reject(record, &rejection, &fallback),
        }
    }

    /// A control command goes to its request's owner; a malformed one to the dead-letter
    /// topic, with the same headers as a rejected launch (there is no run to give a status).
    fn route_control(&self, record: &InboundRecord) -> Vec<OutRecord> {
        let payload = record.payload.as_deref().unwrap_or_default();
        match control::parse_json(payload) {
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

    /// Dead-letter record and `REJECTED` status.
    fn reject(
        &self,
        record: &InboundRecord,
        rejection: &Rejection,
        fallback: &str,
    ) -> Vec<OutRecord> {
        let ctx = RejectedContext::from_bytes(record.payload.as_deref().unwrap_or_default());
        let request_id = ctx.request_id.unwrap_or_else(|| fallback.to_owned());
        tracing::warn!(%request_id, class = rejection.class.as_str(), reason = %rejection.message,
            partition = record.partition, offset = record.offset, "launch request rejected");
        let event = RunStatusEvent {
            request_id: request_id.clone(),
            run_uid: None,
            schedule_uid: None,
            chunk: 0,
            action: ctx.action.unwrap_or_default(),
            mode: ctx.mode.unwrap_or(Mode::Async),
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
            metadata: ctx.metadata,
            provider_status: None,
            input_errors: None,
            schedule_status: None,
            command: None,
        };
        vec![
            self.records
                .dead_letter(&Self::origin(record), rejection, &request_id),
            self.records.status(&event),
        ]
    }

    /// Counts what `out` (the records `record` became) says, until the transaction ends.
    fn count(&mut self, out: &[OutRecord]) {
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
            .set("fetch.wait.max.ms", "10");
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
            metrics,
        })
    }

    /// Routes until `stop` is cancelled, then commits what is done and leaves the group.
    pub async fn run(self, stop: CancellationToken) -> Result<(), RouterError> {
        let mut tick = tokio::time::interval(self.config.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(()),
                _ = tick.tick() => self.commit(),
                received = self.consumer.recv() => match received {
                    Ok(m) => {
                        let record = InboundRecord::from_message(&m);
                        drop(m);
                        self.handle(&record);
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

    fn handle(&self, record: &InboundRecord) {
        let mut core = lock(&self.core);
        let out = core.route(record);
        if core.isolating(record) {
            drop(core);
            return self.isolated(record, out);
        }
        match core.send_all(&out) {
            Ok(()) => {
                core.count(&out);
                core.advance(record);
            }
            Err(e) => {
                drop(core);
                tracing::warn!(error = %ErrorChain(&e), "routed record not enqueued");
                self.recover(&e);
            }
        }
    }

    /// One record in a transaction of its own, after an abort: if it fails again it is the
    /// poison, and gets the fallback.
    fn isolated(&self, record: &InboundRecord, out: Vec<OutRecord>) {
        let Some(group) = self.consumer.group_metadata() else {
            return;
        };
        let mut core = lock(&self.core);
        // Everything before this record is committed: the transaction holds it alone.
        let first = tokio::task::block_in_place(|| core.commit(&group));
        if let Err(e) = first {
            drop(core);
            return self.recover(&e);
        }
        let attempt = core.send_all(&out).map(|()| {
            core.count(&out);
            core.advance(record);
        });
        let done = attempt.and_then(|()| tokio::task::block_in_place(|| core.commit(&group)));
        let Err(error) = done else { return };
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
            core.reject(record, &rejection, &fallback)
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
                core.count(&minimal);
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
        drop(core);
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
