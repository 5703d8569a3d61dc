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

/// Produces `(key, value)` records and waits for every acknowledgement. The sends are polled
/// together (one by one, each would wait for its own acknowledgement: 100,000 took 10 min).
pub async fn produce_all(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let sends = records.iter().map(|(key, value)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.expect("launch request produced");
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

/// A broker of a test's own (scripts/kafka.sh with a unique `CAPTAIN_KAFKA_INSTANCE`), so the
/// test can freeze it without disturbing the others. Stopped on drop, even when the test fails.
pub struct OwnBroker {
    instance: String,
    pub bootstrap: String,
    pub pid: u32,
}

impl OwnBroker {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
    }

    /// Starts the broker; blocks until it answers metadata requests.
    pub fn start(name: &str) -> Self {
        let instance = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .env("CAPTAIN_KAFKA_INSTANCE", &instance)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/kafka.sh start");
        // Stops the broker even if what follows panics.
        let mut broker = Self {
            instance,
            bootstrap: String::new(),
            pid: 0,
        };
        assert!(
            out.status.success(),
            "kafka.sh start failed: {}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        broker.bootstrap = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .unwrap_or_else(|| panic!("unexpected kafka.sh output: {stdout:?}"))
            .to_owned();
        let kdir = std::env::var("CAPTAIN_KAFKA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".kafka"));
        let state = std::fs::read_to_string(kdir.join(format!("broker-{}.env", broker.instance)))
            .expect("broker state file");
        broker.pid = state
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_PID="))
            .and_then(|p| p.trim().parse().ok())
            .expect("KAFKA_PID in the broker state file");
        broker
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid);
    }

    /// `kill -STOP`: the broker keeps its connections open and answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`.
    pub fn thaw(&self) {
        self.signal("-CONT");
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
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .env("CAPTAIN_KAFKA_INSTANCE", &self.instance)
            .status();
    }
}
