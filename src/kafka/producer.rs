//! The process-wide producer: idempotent, `acks=all`, Java-compatible key partitioning, and a
//! batch send that reports success only when Kafka has acknowledged every record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::metrics::Metrics;

/// How long to wait before retrying to enqueue when librdkafka's local queue is full.
pub(crate) const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Producer settings. The app maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// librdkafka `message.timeout.ms`: how long librdkafka keeps retrying one record.
    pub delivery_timeout: Duration,
    /// Largest record the producer accepts (librdkafka `message.max.bytes`, at least its
    /// 1,000,000-byte default): callbacks and launch requests can be that large.
    pub max_record_bytes: usize,
    /// Extra librdkafka properties, applied last (they override the defaults above).
    pub properties: BTreeMap<String, String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            delivery_timeout: Duration::from_secs(30),
            max_record_bytes: 1_000_000,
            properties: BTreeMap::new(),
        }
    }
}

impl ProducerConfig {
    /// `acks=all`, `enable.idempotence=true` (no duplicates or reordering from librdkafka's own
    /// retries), `partitioner=murmur2_random` (Java's default, so keys land where Java clients
    /// put them), `linger.ms=5`, `compression.type=lz4`, then `extra`, then the user's
    /// properties.
    pub(crate) fn client_config(&self, extra: &[(&str, String)]) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            )
            .set(
                "message.max.bytes",
                self.max_record_bytes.max(1_000_000).to_string(),
            );
        for (k, v) in extra {
            cc.set(*k, v);
        }
        for (k, v) in &self.properties {
            cc.set(k, v);
        }
        cc
    }
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// The topic's role, used as the metric label (`status`, `results`, `dead_letter`, `state`).
    pub role: &'static str,
    /// Record key; keyed records are partitioned with murmur2 like Java clients.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Explicit partition, overriding the partitioner.
    pub partition: Option<i32>,
}

/// Where Kafka stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition written.
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
}

/// Why a batch is not (known to be) durable.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Some records were refused; the batch is not durable as a whole.
    #[error("{failed} of {total} records not delivered")]
    Delivery {
        /// Records that failed.
        failed: usize,
        /// Records in the batch.
        total: usize,
        /// The first failure.
        #[source]
        first: KafkaError,
    },
    /// Not every acknowledgement arrived in time; records may still land later.
    #[error("delivery not acknowledged within {0:?}")]
    Timeout(Duration),
    /// The producer could not be created.
    #[error("invalid producer configuration")]
    Config(#[source] KafkaError),
}

impl ProduceError {
    /// Whether sending the same batch again may succeed. Callers redo on retriable errors
    /// (at-least-once: a timed-out batch may be written twice).
    pub fn is_retriable(&self) -> bool {
        match self {
            ProduceError::Timeout(_) => true,
            ProduceError::Config(_) => false,
            ProduceError::Delivery { first, .. } => match first.rdkafka_error_code() {
                Some(code) => !matches!(
                    code,
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::InvalidMessage
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::InvalidRecord
                        | RDKafkaErrorCode::Fatal
                        | RDKafkaErrorCode::InvalidArgument
                ),
                None => true,
            },
        }
    }
}

/// The librdkafka record for `record` (borrowing its bytes).
pub(crate) fn future_record(record: &OutRecord) -> FutureRecord<'_, [u8], [u8]> {
    let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic);
    if let Some(key) = &record.key {
        fr = fr.key(key.as_slice());
    }
    if let Some(payload) = &record.payload {
        fr = fr.payload(payload.as_slice());
    }
    if let Some(partition) = record.partition {
        fr = fr.partition(partition);
    }
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        fr = fr.headers(headers);
    }
    fr
}

/// The process-wide producer. Cheap to share behind an `Arc`; `FutureProducer` is thread-safe.
pub struct RecordProducer {
    inner: FutureProducer,
    metrics: Metrics,
}

impl RecordProducer {
    /// Builds the producer (see [`ProducerConfig::client_config`]).
    pub fn new(config: &ProducerConfig, metrics: Metrics) -> Result<Self, ProduceError> {
        let inner: FutureProducer = config
            .client_config(&[])
            .create()
            .map_err(ProduceError::Config)?;
        Ok(Self { inner, metrics })
    }

    /// Sends every record and waits for all acknowledgements. Records are enqueued in the
    /// given order (a full local queue is waited out, never skipped), so records for one
    /// partition keep their order. `Ok` only when every record is acknowledged; on
    /// `Timeout` some may still be delivered later, so callers treat the batch as not durable
    /// and redo it.
    pub async fn send_all(
        &self,
        records: Vec<OutRecord>,
        timeout: Duration,
    ) -> Result<Vec<Delivered>, ProduceError> {
        let total = records.len();
        // Acknowledgements are awaited in order, so the unaccounted records are a suffix.
        let accounted = AtomicUsize::new(0);
        let work = async {
            let mut pending = Vec::with_capacity(total);
            for record in &records {
                pending.push((record.role, self.enqueue(record).await));
            }
            let mut delivered = Vec::with_capacity(total);
            let mut failed = 0;
            let mut first = None;
            for (role, result) in pending {
                let outcome = match result {
                    Ok(future) => match future.await {
                        Ok(Ok(d)) => Ok(Delivered {
                            partition: d.partition,
                            offset: d.offset,
                        }),
                        Ok(Err((e, _))) => Err(e),
                        Err(_canceled) => Err(KafkaError::Canceled),
                    },
                    Err(e) => Err(e),
                };
                accounted.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(d) => {
                        self.metrics
                            .records_produced
                            .with_label_values(&[role])
                            .inc();
                        delivered.push(d);
                    }
                    Err(e) => {
                        self.metrics.produce_errors.with_label_values(&[role]).inc();
                        failed += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                None => Ok(delivered),
                Some(first) => Err(ProduceError::Delivery {
                    failed,
                    total,
                    first,
                }),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                for record in &records[accounted.load(Ordering::Relaxed)..] {
                    self.metrics
                        .produce_errors
                        .with_label_values(&[record.role])
                        .inc();
                }
                Err(ProduceError::Timeout(timeout))
            }
        }
    }

    /// Enqueues one record, waiting while the local queue is full so that later records never
    /// overtake it.
    async fn enqueue(
        &self,
        record: &OutRecord,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        loop {
            match self.inner.send_result(future_record(record)) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits for every queued record to be delivered (or fail), up to `timeout`. Blocking:
    /// call from `spawn_blocking` or at shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))
    }

    /// The underlying producer, for metadata queries.
    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }
}
