//! The bench's own Kafka clients: topic creation, a fast producer of launch requests and run
//! states, high watermarks (what a topic holds), and a reader of status events.

use crate::procs::Topics;
use anyhow::Context;
use captain_bridge::domain::{Mode, RunState, RunStatus};
use captain_bridge::kafka::partition_for_key;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the bridge's topics with `partitions` partitions (the runs topic compacted).
pub async fn create_topics(bootstrap: &str, t: &Topics, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let plain = |name| NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let topics = [
        plain(&t.launch),
        plain(&t.status),
        plain(&t.results),
        plain(&t.dead_letter),
        plain(&t.control),
        plain(&t.runs).set("cleanup.policy", "compact"),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in admin.create_topics(&topics, &opts).await? {
        match r {
            // A scenario may share one topic (the backlog) between repeats.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) | Ok(_) => {}
            Err((name, e)) => anyhow::bail!("create topic {name}: {e}"),
        }
    }
    Ok(())
}

/// Creates one plain topic.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &opts).await? {
        r.map_err(|(name, e)| anyhow::anyhow!("create topic {name}: {e}"))?;
    }
    Ok(())
}

/// A producer tuned for loading: batches, lz4, acks=all.
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("partitioner", "murmur2_random")
        .create()?)
}

/// Produces `records` (key, value, explicit partition) with at most `window` in flight.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (String, Option<Vec<u8>>, Option<i32>)>,
    window: usize,
) -> anyhow::Result<usize> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let sent = stream::iter(records)
        .map(|(key, value, partition)| async move {
            let mut record: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(topic).key(&key);
            if let Some(v) = value.as_ref() {
                record = record.payload(v);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))
        })
        .buffer_unordered(window)
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await?;
    producer.flush(TIMEOUT)?;
    Ok(sent)
}

/// Enqueues `records` without waiting for their acknowledgement (paced feeding).
pub fn produce_nowait(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (String, Option<Vec<u8>>, Option<i32>)>,
) -> anyhow::Result<()> {
    for (key, value, _) in records {
        let mut record: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(topic).key(&key);
        if let Some(v) = value.as_ref() {
            record = record.payload(v);
        }
        // The delivery future is dropped: the record is still delivered, unobserved.
        producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("enqueue to {topic}: {e}"))?;
    }
    Ok(())
}

/// The run state the launch path writes once a chunk's async run is created.
pub fn submitted_state(request_id: &str, run_uid: &str) -> RunState {
    let metadata = BTreeMap::from([("ticket".to_owned(), request_id.to_owned())]);
    let mut state = RunState::new(
        request_id,
        "linkedin-search-people",
        Mode::Async,
        metadata,
        1,
    );
    let chunk = state.chunk_mut(0);
    chunk.submitted = true;
    chunk.run_uid = Some(run_uid.to_owned());
    let run = chunk.runs.entry(run_uid.to_owned()).or_default();
    run.status = Some(RunStatus::Created);
    run.first_seen = Some(chrono::Utc::now());
    state
}

/// Writes run states for `ids` (request id, run uid) on the partitions the bridge reads them
/// from; `tombstones` deletes them instead (the bridge's view then frees them).
pub async fn seed_states(
    producer: &FutureProducer,
    runs_topic: &str,
    partitions: i32,
    ids: &[(String, String)],
    tombstones: bool,
) -> anyhow::Result<()> {
    let records = ids.iter().map(|(request_id, run_uid)| {
        let value = (!tombstones)
            .then(|| serde_json::to_vec(&submitted_state(request_id, run_uid)).unwrap_or_default());
        let partition = partition_for_key(request_id.as_bytes(), partitions);
        (request_id.clone(), value, Some(partition))
    });
    produce(producer, runs_topic, records, 10_000).await?;
    Ok(())
}

/// The number of records a topic holds (sum of high watermarks; nothing is deleted here).
pub fn records_in(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        total += high - low;
    }
    Ok(total)
}

/// A consumer of a whole topic from the beginning (assigned partitions, no group commits).
pub fn reader(bootstrap: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("reader metadata")?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}
