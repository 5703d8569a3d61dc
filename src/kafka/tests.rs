//! Tests against a real broker: `KAFKA_BOOTSTRAP_SERVERS` must be set (scripts/kafka.sh start).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::*;
use crate::domain::{Mode, RunState};
use crate::metrics::Metrics;
use crate::owner::restore::{restore, RestoreConfig, MARKER_KEY};

const WAIT: Duration = Duration::from_secs(60);

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: these tests need a real broker \
             (run scripts/kafka.sh start and export the address it prints)"
        )
    })
}

fn access() -> ClusterAccess {
    ClusterAccess::new(&bootstrap())
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
    ensure_topics(&access(), &[spec], Duration::from_secs(30))
        .await
        .unwrap();
    wait_until("topic metadata", || async {
        partition_count(&access(), name, Duration::from_secs(5))
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

/// Every record of `topic` (all partitions, from the beginning, `read_committed`) until `n`
/// are read.
async fn read_back(topic: &str, partitions: i32, n: usize) -> Vec<InboundRecord> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
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

/// A consumer in `group` subscribed to `topic`, polled until it owns a partition, for the
/// group metadata a transactional commit is fenced with.
async fn group_member(topic: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while consumer.assignment().unwrap().count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no assignment");
        tokio::task::block_in_place(|| {
            let _ = consumer.poll(Duration::from_millis(100));
        });
    }
    consumer
}

fn txn_producer(id: &str) -> TxnProducer {
    let config = ProducerConfig {
        bootstrap: bootstrap(),
        ..ProducerConfig::default()
    };
    tokio::task::block_in_place(|| {
        TxnProducer::new("owner", &config, id, Duration::from_secs(10), metrics()).unwrap()
    })
}

fn state_record(topic: &str, request_id: &str, action: &str) -> OutRecord {
    let state = RunState::new(request_id, action, Mode::Async, Default::default(), 1);
    OutRecord {
        topic: topic.to_owned(),
        role: "state",
        key: Some(request_id.as_bytes().to_vec()),
        payload: Some(serde_json::to_vec(&state).unwrap()),
        headers: Vec::new(),
        partition: Some(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_committed_reader_sees_a_committed_transaction_and_never_an_aborted_one() {
    let input = unique("txn-in");
    let output = unique("txn-out");
    let group = unique("txn-group");
    create_topic(&input, 1, false).await;
    create_topic(&output, 1, false).await;
    let member = group_member(&input, &group).await;
    let cgm = member.group_metadata().unwrap();
    let mut txn = txn_producer(&unique("txn"));

    txn.send(&record(&output, "k", "aborted".into())).unwrap();
    tokio::task::block_in_place(|| txn.abort()).unwrap();
    txn.send(&record(&output, "k", "committed".into())).unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&input, 0, Offset::Offset(0))
        .unwrap();
    tokio::task::block_in_place(|| txn.commit(&offsets, &cgm)).unwrap();

    let back = read_back(&output, 1, 1).await;
    assert_eq!(back[0].payload.as_deref(), Some(&b"committed"[..]));
    // Nothing else becomes readable: the aborted record is skipped for good.
    let more = tokio::time::timeout(Duration::from_secs(2), read_back(&output, 1, 2)).await;
    assert!(more.is_err(), "an aborted record was read");
    // The offsets went in with the records, under the group's generation.
    let committed = tokio::task::block_in_place(|| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&input, 0);
        member
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
    });
    assert_eq!(
        committed.find_partition(&input, 0).map(|e| e.offset()),
        Some(Offset::Offset(0))
    );
}

fn restore_config(runs: &str, input: &str) -> RestoreConfig {
    RestoreConfig {
        bootstrap: bootstrap(),
        runs_topic: runs.to_owned(),
        input_topics: vec![input.to_owned()],
        properties: Default::default(),
        timeout: Duration::from_secs(60),
    }
}

/// Answers "nothing committed yet" for every partition asked.
fn nothing_committed(
    tpl: &TopicPartitionList,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let mut out = TopicPartitionList::new();
    for e in tpl.elements() {
        out.add_partition_offset(e.topic(), e.partition(), Offset::Invalid)?;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reads_every_committed_state_waits_for_an_open_transaction_and_skips_its_aborted_writes(
) {
    let runs = unique("runs");
    let input = unique("restore-in");
    let group = unique("restore-group");
    create_topic(&runs, 1, true).await;
    create_topic(&input, 1, false).await;
    let member = group_member(&input, &group).await;
    let cgm = member.group_metadata().unwrap();
    let no_offsets = TopicPartitionList::new();
    let mut txn = txn_producer(&unique("restore"));
    for (id, action) in [("r1", "a"), ("r2", "a"), ("r1", "b")] {
        txn.send(&state_record(&runs, id, action)).unwrap();
    }
    let mut gone = state_record(&runs, "r2", "x");
    gone.payload = None;
    txn.send(&gone).unwrap();
    tokio::task::block_in_place(|| txn.commit(&no_offsets, &cgm)).unwrap();
    // A zombie's transaction, still open when the restore starts.
    let mut zombie = txn_producer(&unique("zombie"));
    zombie.send(&state_record(&runs, "r3", "zombie")).unwrap();

    let markers = producer();
    let restoring = tokio::spawn({
        let config = restore_config(&runs, &input);
        async move { restore(config, vec![0], &markers, nothing_committed).await }
    });
    // The marker lands after the zombie's records: the restore cannot pass them until the
    // zombie's transaction is resolved.
    let early = tokio::time::timeout(Duration::from_secs(2), async {
        while !restoring.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "the restore finished past an open transaction"
    );
    tokio::task::block_in_place(|| zombie.abort()).unwrap();
    let restored = tokio::time::timeout(WAIT, restoring)
        .await
        .expect("restore finished once the transaction was aborted")
        .unwrap()
        .unwrap();

    assert_eq!(restored.len(), 1);
    let p = &restored[0];
    assert_eq!(p.runs.len(), 1, "{:?}", p.runs.keys().collect::<Vec<_>>());
    assert_eq!(p.runs["r1"].action, "b", "the latest committed value wins");
    assert!(!p.runs.contains_key("r2"), "a tombstone deletes");
    assert!(
        !p.runs.contains_key("r3"),
        "an aborted write is never restored"
    );
    assert!(!p.runs.keys().any(|k| k.as_bytes() == MARKER_KEY));
    // Nothing committed on the input: consumption starts at its beginning.
    assert_eq!(p.starts, vec![(TopicPartition::new(&input, 0), 0)]);
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
    let err = ensure_topics(&access(), &[spec], Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NotCompacted { topic: ref t, .. } if *t == topic));
}
