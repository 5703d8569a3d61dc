//! Tests against a real broker: `KAFKA_BOOTSTRAP_SERVERS` must be set (scripts/kafka.sh start).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(60);

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: these tests need a real broker \
             (run scripts/kafka.sh start and export the address it prints)"
        )
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

fn metrics() -> Metrics {
    Metrics::new().unwrap()
}

async fn create_topic(name: &str, partitions: i32, compact: bool) {
    let config = if compact {
        vec![("cleanup.policy".to_owned(), "compact".to_owned())]
    } else {
        Vec::new()
    };
    let spec = TopicSpec {
        name: name.to_owned(),
        partitions,
        replication: 1,
        config,
    };
    ensure_topics(&bootstrap(), &[spec], Duration::from_secs(30))
        .await
        .unwrap();
    wait_until("topic metadata", || async {
        partition_count(&bootstrap(), name, Duration::from_secs(5))
            .await
            .is_ok_and(|n| n == partitions)
    })
    .await;
}

/// Polls `cond` every 50 ms until it holds, failing the test after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn producer() -> RecordProducer {
    let config = ProducerConfig {
        bootstrap: bootstrap(),
        ..ProducerConfig::default()
    };
    RecordProducer::new(&config, metrics()).unwrap()
}

fn record(topic: &str, key: &str, payload: String) -> OutRecord {
    OutRecord {
        topic: topic.to_owned(),
        role: "status",
        key: Some(key.as_bytes().to_vec()),
        payload: Some(payload.into_bytes()),
        headers: vec![("h".to_owned(), b"v".to_vec())],
        partition: None,
    }
}

/// Every record of `topic` (all partitions, from the beginning) until `n` are read.
async fn read_back(topic: &str, partitions: i32, n: usize) -> Vec<InboundRecord> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("records to read back")
            .unwrap();
        out.push(InboundRecord {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: Vec::new(),
            timestamp_ms: None,
        });
    }
    out
}

/// The committed position of `group` for each partition (-1001 when none).
async fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        (0..partitions)
            .map(|p| {
                got.find_partition(&topic, p)
                    .map(|e| e.offset().to_raw().unwrap_or(-1001))
                    .unwrap_or(-1001)
            })
            .collect()
    })
    .await
    .unwrap()
}

async fn high_watermarks(topic: &str, partitions: i32) -> Vec<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    })
    .await
    .unwrap()
}

/// A handler from a closure.
struct FnHandler<F>(F);

#[async_trait]
impl<F> LaunchHandler for FnHandler<F>
where
    F: Fn(InboundRecord) -> BoxFuture<'static, HandleOutcome> + Send + Sync + 'static,
{
    async fn handle(&self, msg: InboundRecord) -> HandleOutcome {
        (self.0)(msg).await
    }
}

fn consumer_config(topic: &str, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap: bootstrap(),
        group_id: group.to_owned(),
        topic: topic.to_owned(),
        max_in_flight: 8,
        drain_timeout: Duration::from_secs(10),
        ..ConsumerConfig::default()
    }
}

async fn produce_numbered(topic: &str, n: usize) {
    let records = (0..n)
        .map(|i| record(topic, &format!("k{}", i % 17), i.to_string()))
        .collect();
    producer()
        .send_all(records, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_acknowledges_every_record_and_keeps_per_key_order_on_java_partitions() {
    let topic = unique("produce");
    create_topic(&topic, 3, false).await;
    let n = 300;
    let records: Vec<OutRecord> = (0..n)
        .map(|i| record(&topic, &format!("key-{}", i % 10), i.to_string()))
        .collect();
    let delivered = producer()
        .send_all(records, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(delivered.len(), n);

    let back = read_back(&topic, 3, n).await;
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for r in &back {
        let key = r.key.clone().unwrap();
        // librdkafka's murmur2_random places keys exactly where Java's partitioner would.
        assert_eq!(r.partition, partition_for_key(&key, 3));
        let seq: i64 = String::from_utf8(r.payload.clone().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let prev = last.insert(key, seq).unwrap_or(-1);
        assert!(seq > prev, "per-key order broken: {seq} after {prev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_commits_the_end_of_every_partition_after_random_order_completion() {
    let topic = unique("launch");
    let group = unique("group");
    create_topic(&topic, 3, false).await;
    let n = 150;
    produce_numbered(&topic, n).await;

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handler = {
        let seen = seen.clone();
        FnHandler(move |r: InboundRecord| {
            let seen = seen.clone();
            async move {
                let delay = rand::rng().random_range(0..30);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                seen.lock().unwrap().insert((r.partition, r.offset));
                HandleOutcome::Done
            }
            .boxed()
        })
    };
    let shutdown = CancellationToken::new();
    let consumer = LaunchConsumer::new(consumer_config(&topic, &group), metrics()).unwrap();
    let run = tokio::spawn(consumer.run(Arc::new(handler), shutdown.clone()));
    wait_until("every record handled", || async {
        seen.lock().unwrap().len() == n
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    assert_eq!(
        committed(&group, &topic, 3).await,
        high_watermarks(&topic, 3).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_record_stops_the_commit_and_is_redelivered_with_everything_after_it() {
    let topic = unique("launch");
    let group = unique("group");
    create_topic(&topic, 1, false).await;
    let n = 30;
    produce_numbered(&topic, n).await;

    let seen = Arc::new(AtomicUsize::new(0));
    let handler = {
        let seen = seen.clone();
        FnHandler(move |r: InboundRecord| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                if r.offset == 10 {
                    HandleOutcome::Abandoned
                } else {
                    HandleOutcome::Done
                }
            }
            .boxed()
        })
    };
    let shutdown = CancellationToken::new();
    let consumer = LaunchConsumer::new(consumer_config(&topic, &group), metrics()).unwrap();
    let run = tokio::spawn(consumer.run(Arc::new(handler), shutdown.clone()));
    wait_until("every record handled once", || async {
        seen.load(Ordering::SeqCst) == n
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(committed(&group, &topic, 1).await, vec![10]);

    // A restarted member of the same group resumes exactly at the abandoned record.
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let offsets = offsets.clone();
        FnHandler(move |r: InboundRecord| {
            offsets.lock().unwrap().push(r.offset);
            async { HandleOutcome::Done }.boxed()
        })
    };
    let shutdown = CancellationToken::new();
    let consumer = LaunchConsumer::new(consumer_config(&topic, &group), metrics()).unwrap();
    let run = tokio::spawn(consumer.run(Arc::new(handler), shutdown.clone()));
    wait_until("redelivery from the abandoned record", || async {
        offsets.lock().unwrap().len() >= n - 10
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let mut got = offsets.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (10..n as i64).collect::<Vec<_>>());
    assert_eq!(committed(&group, &topic, 1).await, vec![n as i64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_consumer_pauses_instead_of_blocking_and_keeps_its_group_membership() {
    let topic = unique("launch");
    let group = unique("group");
    create_topic(&topic, 2, false).await;
    let n = 10;
    produce_numbered(&topic, n).await;

    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (running, max_running, handled) =
            (running.clone(), max_running.clone(), handled.clone());
        FnHandler(move |r: InboundRecord| {
            let (running, max_running, handled) =
                (running.clone(), max_running.clone(), handled.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                handled.lock().unwrap().push((r.partition, r.offset));
                HandleOutcome::Done
            }
            .boxed()
        })
    };
    // 10 records × 1.5 s over 2 slots = 7.5 s, longer than max.poll.interval.ms.
    let mut config = consumer_config(&topic, &group);
    config.max_in_flight = 2;
    config.properties = BTreeMap::from([
        ("max.poll.interval.ms".to_owned(), "6000".to_owned()),
        ("session.timeout.ms".to_owned(), "6000".to_owned()),
    ]);
    let shutdown = CancellationToken::new();
    let consumer = LaunchConsumer::new(config, metrics()).unwrap();
    let run = tokio::spawn(consumer.run(Arc::new(handler), shutdown.clone()));
    wait_until("every record handled", || async {
        handled.lock().unwrap().len() >= n
    })
    .await;
    // Room for a late redelivery to show up if membership had been lost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    assert!(max_running.load(Ordering::SeqCst) <= 2);
    let handled = handled.lock().unwrap().clone();
    let unique_records: HashSet<_> = handled.iter().collect();
    assert_eq!(
        unique_records.len(),
        handled.len(),
        "a record was redelivered"
    );
    assert_eq!(handled.len(), n);
    assert_eq!(
        committed(&group, &topic, 2).await,
        high_watermarks(&topic, 2).await
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunStateStub {
    status: String,
    version: u32,
}

fn state_config(topic: &str) -> StateConfig {
    StateConfig {
        bootstrap: bootstrap(),
        topic: topic.to_owned(),
        ..StateConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_written_on_one_instance_is_read_on_another_and_reloaded_on_restart() {
    let topic = unique("runs");
    create_topic(&topic, 3, true).await;
    let shutdown = CancellationToken::new();
    let producer = producer();
    let a: StateView<RunStateStub> = StateView::start(state_config(&topic), shutdown.clone())
        .await
        .unwrap();
    let b: StateView<RunStateStub> = StateView::start(state_config(&topic), shutdown.clone())
        .await
        .unwrap();

    for i in 0..20u32 {
        let v = RunStateStub {
            status: "QUEUED".into(),
            version: i,
        };
        a.put(&format!("req-{i}"), &v, &producer).await.unwrap();
        // Read-your-writes across instances: no waiting beyond get() itself.
        assert_eq!(b.get(&format!("req-{i}")).await.unwrap(), Some(v));
    }
    let newer = RunStateStub {
        status: "RUNNING".into(),
        version: 100,
    };
    b.put("req-3", &newer, &producer).await.unwrap();
    assert_eq!(a.get("req-3").await.unwrap(), Some(newer.clone()));
    a.remove("req-4", &producer).await.unwrap();
    assert_eq!(a.peek("req-4"), None);
    assert_eq!(b.get("req-4").await.unwrap(), None);
    assert_eq!(b.get("missing").await.unwrap(), None);

    let c: StateView<RunStateStub> = StateView::start(state_config(&topic), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(c.len(), 19);
    assert_eq!(c.peek("req-3"), Some(newer));
    assert_eq!(c.peek("req-4"), None);
    assert_eq!(c.peek("req-7").map(|v| v.version), Some(7));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_topics_rejects_an_existing_topic_that_is_not_compacted() {
    let topic = unique("runs");
    create_topic(&topic, 1, false).await;
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication: 1,
        config: vec![("cleanup.policy".into(), "compact".into())],
    };
    let err = ensure_topics(&bootstrap(), &[spec], Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NotCompacted { topic: ref t, .. } if *t == topic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launch_consumer_reports_its_lag_from_librdkafka_statistics() {
    let topic = unique("launch");
    let group = unique("group");
    create_topic(&topic, 2, false).await;
    produce_numbered(&topic, 10).await;
    let ends = high_watermarks(&topic, 2).await;
    // The first two records of each partition are done; the rest wait until released.
    let expected: i64 = ends.iter().map(|end| (end - 2).max(0)).sum();
    let release = CancellationToken::new();
    let handler = {
        let release = release.clone();
        FnHandler(move |r: InboundRecord| {
            let release = release.clone();
            async move {
                if r.offset < 2 {
                    return HandleOutcome::Done;
                }
                release.cancelled().await;
                HandleOutcome::Abandoned
            }
            .boxed()
        })
    };
    let mut config = consumer_config(&topic, &group);
    config.properties = BTreeMap::from([("statistics.interval.ms".to_owned(), "200".to_owned())]);
    let metrics = metrics();
    let consumer = LaunchConsumer::new(config, metrics.clone()).unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(consumer.run(Arc::new(handler), shutdown.clone()));

    let gauge = metrics.consumer_lag.with_label_values(&[&topic]);
    wait_until("the lag of the stored offsets", || async {
        gauge.get() == expected
    })
    .await;

    release.cancel();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    assert!(
        expected > 0,
        "the test needs waiting records: ends {ends:?}"
    );
}
