//! Real-Kafka helpers for the end-to-end tests: the broker from `KAFKA_BOOTSTRAP_SERVERS`,
//! per-test topics, a producer of launch requests, and collectors of what the bridge publishes.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The broker started by scripts/test.sh (or by hand with scripts/kafka.sh).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with scripts/test.sh, which starts \
             a real Kafka broker (or start one with scripts/kafka.sh start and export it)"
        )
    })
}

/// One test's topic names, unique per test so tests never see each other's records.
#[derive(Debug, Clone)]
pub struct Topics {
    pub launch: String,
    pub status: String,
    pub results: String,
    pub dead_letter: String,
    pub runs: String,
    pub control: String,
    pub group: String,
}

impl Topics {
    pub fn unique(test: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..10];
        let t = |name: &str| format!("e2e.{test}.{id}.{name}");
        Self {
            launch: t("launch"),
            status: t("status"),
            results: t("results"),
            dead_letter: t("dlq"),
            runs: t("runs"),
            control: t("control"),
            group: format!("e2e-{test}-{id}"),
        }
    }

    /// Creates the topics (3 partitions; the runs topic compacted) before the bridge starts.
    pub async fn create(&self, bootstrap: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("admin client");
        fn plain(name: &str) -> NewTopic<'_> {
            NewTopic::new(name, 3, TopicReplication::Fixed(1))
        }
        let topics = [
            plain(&self.launch),
            plain(&self.status),
            plain(&self.results),
            plain(&self.dead_letter),
            plain(&self.control),
            NewTopic::new(&self.runs, 3, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        ];
        let results = admin
            .create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create topics");
        for r in results {
            r.expect("topic created");
        }
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(key, value)` records and waits for every acknowledgement.
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let futures: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        })
        .collect();
    for f in futures {
        f.await.expect("launch request produced");
    }
}

/// A record read back from an output topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Read {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default()).expect("JSON record")
    }
}

/// Reads a topic from the beginning (all partitions, no group) as it grows.
pub struct Collector {
    consumer: BaseConsumer,
    pub records: Vec<Read>,
}

impl Collector {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("collector-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .expect("collector consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                    .expect("partition");
            }
        }
        consumer.assign(&tpl).expect("assign");
        Self {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads whatever arrived within `wait`.
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

    /// Reads until `done(records)` holds, or panics with `what` after `timeout`.
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
