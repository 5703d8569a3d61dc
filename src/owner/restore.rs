//! Restoring the run state of newly owned partitions from the compacted run-state topic.
//!
//! "Everything committed before we took over" is found with a marker of our own, not with
//! watermarks: the owner appends a marker record to each run-state partition, then reads the
//! partition from the beginning (`read_committed`) until the marker comes back. A
//! `read_committed` reader only passes an offset once every transaction with records before it
//! is resolved, so every state write a previous owner committed (its last transaction
//! included, even one still completing) is read before the marker, and a zombie's
//! uncommitted writes never are. High watermarks could not say as much: transaction markers
//! take offsets that a reader never sees, and a pending transaction holds the readable end
//! below them.

use crate::domain::RunState;
use crate::kafka::{OutRecord, RecordProducer, TopicPartition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Key of the restore markers; run-state keys are request ids, which never hold a control
/// character, so this one cannot collide with a request's state.
pub const MARKER_KEY: &[u8] = b"\0captain.restore-marker";

/// What a restore needs.
#[derive(Clone)]
pub struct RestoreConfig {
    pub bootstrap: String,
    /// The run-state topic.
    pub runs_topic: String,
    /// The owner's input topics, whose committed offsets are the restored partitions' start.
    pub input_topics: Vec<String>,
    /// librdkafka properties of every client.
    pub properties: BTreeMap<String, String>,
    /// Bound on the whole restore of one assignment.
    pub timeout: Duration,
}

/// One restored partition.
#[derive(Debug)]
pub struct Restored {
    pub partition: i32,
    pub runs: HashMap<String, RunState>,
    /// Where consumption of each input partition starts: its committed offset, or its low
    /// watermark when the group has committed nothing there yet.
    pub starts: Vec<(TopicPartition, i64)>,
    /// Run-state records read (values, tombstones and markers).
    pub records: u64,
    pub took: Duration,
}

/// Why a restore failed; it is retried with the partitions kept paused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("kafka request failed during restore")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("restore marker not written")]
    Marker(#[source] crate::kafka::ProduceError),
    #[error("restore did not finish within {0:?}")]
    Timeout(Duration),
    #[error("restore task failed: {0}")]
    Task(String),
}

/// Restores `partitions`: their run states, and where their input consumption starts.
/// `committed` asks the owner's consumer for its group's committed offsets (blocking; with
/// `read_committed` it waits until no transaction holds them).
pub async fn restore(
    config: RestoreConfig,
    partitions: Vec<i32>,
    markers: &RecordProducer,
    committed: impl FnOnce(&TopicPartitionList) -> Result<TopicPartitionList, rdkafka::error::KafkaError>
        + Send
        + 'static,
) -> Result<Vec<Restored>, RestoreError> {
    let started = Instant::now();
    let deadline = started + config.timeout;
    let starts = input_starts(&config, &partitions, committed).await?;
    let marker_offsets = write_markers(&config, &partitions, markers).await?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (mut runs, records) =
        tokio::time::timeout(remaining, read_until_markers(&config, &marker_offsets))
            .await
            .map_err(|_| RestoreError::Timeout(config.timeout))??;
    let took = started.elapsed();
    Ok(partitions
        .into_iter()
        .map(|p| Restored {
            partition: p,
            runs: runs.remove(&p).unwrap_or_default(),
            starts: starts
                .iter()
                .filter(|(tp, _)| tp.partition == p)
                .cloned()
                .collect(),
            records: records.get(&p).copied().unwrap_or(0),
            took,
        })
        .collect())
}

fn client(config: &RestoreConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.bootstrap)
        .set(
            "group.id",
            format!("captain-bridge-restore-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    for (k, v) in &config.properties {
        cc.set(k, v);
    }
    cc
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, RestoreError> + Send + 'static,
) -> Result<R, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RestoreError::Task(e.to_string()))?
}

async fn input_starts(
    config: &RestoreConfig,
    partitions: &[i32],
    committed: impl FnOnce(&TopicPartitionList) -> Result<TopicPartitionList, rdkafka::error::KafkaError>
        + Send
        + 'static,
) -> Result<Vec<(TopicPartition, i64)>, RestoreError> {
    let mut tpl = TopicPartitionList::new();
    for topic in &config.input_topics {
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
    }
    let probe_config = client(config);
    blocking(move || {
        let answered = committed(&tpl)?;
        let probe: StreamConsumer = probe_config.create()?;
        let mut starts = Vec::new();
        for e in answered.elements() {
            let start = match e.offset() {
                Offset::Offset(o) => o,
                // Nothing committed yet: from the beginning, as `auto.offset.reset=earliest`.
                _ => {
                    probe
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?
                        .0
                }
            };
            starts.push((TopicPartition::new(e.topic(), e.partition()), start));
        }
        Ok(starts)
    })
    .await
}

async fn write_markers(
    config: &RestoreConfig,
    partitions: &[i32],
    producer: &RecordProducer,
) -> Result<HashMap<i32, i64>, RestoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let records = partitions
        .iter()
        .map(|p| OutRecord {
            topic: config.runs_topic.clone(),
            role: "state",
            key: Some(MARKER_KEY.to_vec()),
            payload: Some(format!(r#"{{"restore_marker":"{id}"}}"#).into_bytes()),
            headers: Vec::new(),
            partition: Some(*p),
        })
        .collect();
    let delivered = producer
        .send_all(records, config.timeout)
        .await
        .map_err(RestoreError::Marker)?;
    Ok(delivered.iter().map(|d| (d.partition, d.offset)).collect())
}

/// Reads each partition from the beginning until its marker: (states by partition, records
/// read by partition).
async fn read_until_markers(
    config: &RestoreConfig,
    markers: &HashMap<i32, i64>,
) -> Result<(HashMap<i32, HashMap<String, RunState>>, HashMap<i32, u64>), RestoreError> {
    let consumer: StreamConsumer = client(config).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in markers.keys() {
        tpl.add_partition_offset(&config.runs_topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut states: HashMap<i32, HashMap<String, RunState>> = HashMap::new();
    let mut counts: HashMap<i32, u64> = HashMap::new();
    let mut waiting: HashMap<i32, i64> = markers.clone();
    while !waiting.is_empty() {
        let m = consumer.recv().await?;
        let (p, offset) = (m.partition(), m.offset());
        *counts.entry(p).or_default() += 1;
        if waiting.get(&p).is_some_and(|marker| offset >= *marker) {
            waiting.remove(&p);
        }
        let Some(key) = m.key() else { continue };
        if key.first() == Some(&0) {
            continue;
        }
        let key = String::from_utf8_lossy(key).into_owned();
        let map = states.entry(p).or_default();
        match m.payload() {
            None => {
                map.remove(&key);
            }
            Some(bytes) => match serde_json::from_slice::<RunState>(bytes) {
                Ok(state) => {
                    map.insert(key, state);
                }
                Err(e) => tracing::warn!(
                    error = %e, partition = p, offset, "undecodable run state record ignored"
                ),
            },
        }
    }
    Ok((states, counts))
}
