//! Real-Kafka helpers: the broker under test, a fast producer, collectors reading back what the
//! bridge publishes (`read_committed`, as its downstream consumers should), topic sizes, and a
//! broker of a test's own that can be frozen.

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The broker from `KAFKA_BOOTSTRAP_SERVERS` (scripts/test.sh starts one and sets it).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with scripts/test.sh, which starts \
             a real Kafka broker (or start one with scripts/kafka.sh start and export it)"
        )
    })
}

/// Creates one plain topic (an existing one is fine).
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => bail!("create topic {name}: {e}"),
        }
    }
    Ok(())
}

/// A producer for loading: acks=all, lz4, short linger, a deep local queue, and Java's key
/// partitioner (so keyed records land where the bridge's producers put them).
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("partitioner", "murmur2_random")
        .create()?)
}

/// One record to produce: key, value (`None`: tombstone), explicit partition.
pub type Record = (String, Option<Vec<u8>>, Option<i32>);

fn future_record<'a>(topic: &'a str, r: &'a Record) -> FutureRecord<'a, String, Vec<u8>> {
    let (key, value, partition) = r;
    let mut record = FutureRecord::to(topic).key(key);
    if let Some(v) = value.as_ref() {
        record = record.payload(v);
    }
    if let Some(p) = partition {
        record = record.partition(*p);
    }
    record
}

/// Produces `records` with at most `window` awaiting acknowledgement, then flushes. One by one,
/// each would wait for its own acknowledgement (100,000 took 10 minutes).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = Record>,
    window: usize,
) -> anyhow::Result<usize> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let sent = stream::iter(records)
        .map(|r| async move {
            producer
                .send(future_record(topic, &r), TIMEOUT)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))
        })
        .buffer_unordered(window.max(1))
        .try_fold(0usize, |n, _| async move { Ok(n + 1) })
        .await?;
    producer.flush(TIMEOUT)?;
    Ok(sent)
}

/// Enqueues `records` without waiting for their acknowledgement (paced feeding).
pub fn produce_nowait(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = Record>,
) -> anyhow::Result<()> {
    for r in records {
        // The delivery future is dropped: the record is still delivered, unobserved.
        producer
            .send_result(future_record(topic, &r))
            .map_err(|(e, _)| anyhow::anyhow!("enqueue to {topic}: {e}"))?;
    }
    Ok(())
}

fn partitions_of<C: Consumer>(consumer: &C, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

fn assign_from_beginning<C: Consumer>(consumer: &C, topic: &str) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(consumer, topic)? {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(())
}

/// A whole-topic reader's config: its own group (never committed), from the beginning,
/// `read_committed`.
pub fn reader_config(bootstrap: &str) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("testkit-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    cc
}

/// The records a topic holds (sum of high minus low watermarks).
pub fn records_in(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut total = 0;
    for p in partitions_of(&consumer, topic)? {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        total += high - low;
    }
    Ok(total)
}

/// An async reader of a whole topic from the beginning (`read_committed`, no group commits).
pub fn reader(bootstrap: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = reader_config(bootstrap).create()?;
    assign_from_beginning(&consumer, topic)?;
    Ok(consumer)
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Read {
    /// The value as JSON (panics on anything else: for tests).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("record is not JSON ({e}): {self:?}"))
    }
}

/// Reads a topic from the beginning (every partition, `read_committed`) as it grows.
pub struct Collector {
    consumer: BaseConsumer,
    pub records: Vec<Read>,
}

impl Collector {
    /// A collector of `topic` (panics if the broker cannot be reached: for tests).
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        Self::try_new(bootstrap, topic).unwrap_or_else(|e| panic!("collector of {topic}: {e:#}"))
    }

    /// A collector with another reader config (e.g. `read_uncommitted`).
    pub fn with_config(config: &ClientConfig, topic: &str) -> Self {
        let consumer: BaseConsumer = config
            .create()
            .unwrap_or_else(|e| panic!("collector of {topic}: {e}"));
        assign_from_beginning(&consumer, topic)
            .unwrap_or_else(|e| panic!("collector of {topic}: {e:#}"));
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    pub fn try_new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = reader_config(bootstrap).create()?;
        assign_from_beginning(&consumer, topic)?;
        Ok(Self {
            consumer,
            records: Vec::new(),
        })
    }

    /// Reads whatever arrives within `wait`.
    pub fn poll_for(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.records.push(Read {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                }
                Some(Err(e)) => panic!("collector: {e}"),
                None => {}
            }
        }
    }

    /// Reads until `done(records)` holds; panics naming `what` after `timeout` (for tests).
    pub fn until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Read]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({} records read)",
                self.records.len()
            );
            self.poll_for(Duration::from_millis(200));
        }
    }
}

/// A broker of a test's own (`scripts/kafka.sh` with a unique `CAPTAIN_KAFKA_INSTANCE`), so the
/// test can freeze or restart it without disturbing the others. Stopped on drop.
pub struct OwnBroker {
    instance: String,
    repo: PathBuf,
    pub bootstrap: String,
    pub pid: u32,
}

impl OwnBroker {
    /// Starts the broker with `repo`'s `scripts/kafka.sh`; blocks until it answers.
    pub fn start(repo: &Path, name: &str) -> anyhow::Result<Self> {
        let instance = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let script = repo.join("scripts/kafka.sh");
        let out = std::process::Command::new(&script)
            .arg("start")
            .env("CAPTAIN_KAFKA_INSTANCE", &instance)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} start", script.display()))?;
        // Stops the broker even if what follows fails.
        let mut broker = Self {
            instance,
            repo: repo.to_owned(),
            bootstrap: String::new(),
            pid: 0,
        };
        if !out.status.success() {
            bail!("kafka.sh start failed: {}", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        broker.bootstrap = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .with_context(|| format!("unexpected kafka.sh output: {stdout:?}"))?
            .to_owned();
        let kdir = std::env::var("CAPTAIN_KAFKA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo.join(".kafka"));
        let state = std::fs::read_to_string(kdir.join(format!("broker-{}.env", broker.instance)))
            .context("broker state file")?;
        broker.pid = state
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_PID="))
            .and_then(|p| p.trim().parse().ok())
            .context("KAFKA_PID in the broker state file")?;
        Ok(broker)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill {signal} {} failed", self.pid);
        }
        Ok(())
    }

    /// `kill -STOP`: the broker keeps its connections open and answers nothing.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// `kill -CONT`.
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if self.pid != 0 {
            // A frozen broker would not act on the SIGTERM `stop` sends.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(self.pid.to_string())
                .status();
        }
        let _ = std::process::Command::new(self.repo.join("scripts/kafka.sh"))
            .arg("stop")
            .env("CAPTAIN_KAFKA_INSTANCE", &self.instance)
            .status();
    }
}
