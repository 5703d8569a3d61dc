//! This build against a real broker: every compression codec a producer may choose is consumed,
//! and clients authenticate over the SASL_SSL listener that `KAFKA_SASL_SSL=1 scripts/kafka.sh
//! start` opens (scripts/test.sh starts its broker so and exports what it prints).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::capabilities::{Capabilities, Codec};
use super::*;
use crate::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(60);
/// A refused login must be reported well within this; a hang would blow through it.
const REFUSAL: Duration = Duration::from_secs(30);

fn var(name: &str, how: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} is not set: these tests need {how}"))
}

fn bootstrap() -> String {
    var(
        "KAFKA_BOOTSTRAP_SERVERS",
        "a real broker (run scripts/kafka.sh start and export the address it prints)",
    )
}

/// The SASL_SSL listener and its credentials, from the lines `scripts/kafka.sh start` prints.
struct SaslSsl {
    bootstrap: String,
    ca_pem: String,
    user: String,
    password: String,
}

fn sasl_ssl() -> SaslSsl {
    let how = "a broker with a SASL_SSL listener (run KAFKA_SASL_SSL=1 scripts/kafka.sh start and \
               export every KEY=VALUE line it prints; scripts/test.sh does both)";
    SaslSsl {
        bootstrap: var("KAFKA_SASL_SSL_BOOTSTRAP", how),
        ca_pem: var("KAFKA_CA_PEM", how),
        user: var("KAFKA_SCRAM_USER", how),
        password: var("KAFKA_SCRAM_PASSWORD", how),
    }
}

impl SaslSsl {
    /// Client properties for `mechanism` with `password`, as a user would put them in
    /// `kafka.properties`.
    fn properties(&self, mechanism: &str, password: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanism".into(), mechanism.into()),
            ("sasl.username".into(), self.user.clone()),
            ("sasl.password".into(), password.into()),
            ("ssl.ca.location".into(), self.ca_pem.clone()),
        ])
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

async fn create_topic(name: &str) {
    let spec = TopicSpec {
        name: name.to_owned(),
        partitions: 1,
        replication: 1,
        config: Vec::new(),
    };
    ensure_topics(
        &ClusterAccess::new(&bootstrap()),
        &[spec],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

/// The payloads of the first `n` records of partition 0 of `topic`, read by a consumer with
/// `properties` on `bootstrap`. A record the consumer cannot read (a codec it lacks) fails here.
async fn read_back(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    n: usize,
) -> Vec<String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false");
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: StreamConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("records to read back")
            .unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
        out.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    out
}

/// Compressible enough that librdkafka compresses it (it sends a batch uncompressed when the
/// codec would not make it smaller).
fn compressible(codec: &str) -> String {
    format!("{codec}:{}", "captain-bridge ".repeat(512))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_a_gzip_a_snappy_and_an_lz4_batch_on_one_topic_are_all_consumed() {
    let topic = unique("codecs");
    create_topic(&topic).await;
    for codec in Codec::ALL {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("compression.type", codec.name())
            .create()
            .unwrap_or_else(|e| panic!("a {} producer: {e}", codec.name()));
        let payload = compressible(codec.name());
        producer
            .send(
                FutureRecord::to(&topic).key(codec.name()).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing with {}: {e}", codec.name()));
    }
    let got = read_back(&bootstrap(), &BTreeMap::new(), &topic, 4).await;
    let expected: Vec<String> = Codec::ALL.iter().map(|c| compressible(c.name())).collect();
    assert_eq!(
        got.iter()
            .map(|p| p.split(':').next().unwrap())
            .collect::<Vec<_>>(),
        ["gzip", "snappy", "lz4", "zstd"]
    );
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_round_trips_over_sasl_ssl_with_scram_sha_512_and_scram_sha_256() {
    let sasl = sasl_ssl();
    let topic = unique("sasl");
    // Provisioned over SASL_SSL too, the way the app creates its topics on a secured cluster.
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication: 1,
        config: Vec::new(),
    };
    let properties = sasl.properties("SCRAM-SHA-512", &sasl.password);
    let access = ClusterAccess {
        bootstrap: sasl.bootstrap.clone(),
        properties: properties.clone(),
    };
    ensure_topics(&access, &[spec], Duration::from_secs(30))
        .await
        .unwrap();
    let caps = Capabilities::of_this_build().unwrap();
    for (i, mechanism) in ["SCRAM-SHA-512", "SCRAM-SHA-256"].into_iter().enumerate() {
        let properties = sasl.properties(mechanism, &sasl.password);
        // What check-config accepts is what works against the broker.
        caps.check(&properties).unwrap();
        // The bridge's own producer, configured the way the app passes kafka.properties.
        let producer = RecordProducer::new(
            &ProducerConfig {
                bootstrap: sasl.bootstrap.clone(),
                properties: properties.clone(),
                ..ProducerConfig::default()
            },
            Metrics::new().unwrap(),
        )
        .unwrap();
        let record = OutRecord {
            topic: topic.clone(),
            role: "status",
            key: Some(mechanism.as_bytes().to_vec()),
            payload: Some(format!("over {mechanism}").into_bytes()),
            headers: Vec::new(),
            partition: None,
        };
        let delivered = producer
            .send_all(vec![record], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("producing over SASL_SSL with {mechanism}: {e}"));
        assert_eq!(delivered[0].offset, i as i64);
        let got = read_back(&sasl.bootstrap, &properties, &topic, i + 1).await;
        assert_eq!(got[i], format!("over {mechanism}"));
    }
}

/// Keeps every error librdkafka reports, so a test can await the one it expects.
#[derive(Default, Clone)]
struct ErrorLog(Arc<Mutex<Vec<(KafkaError, String)>>>);

impl ClientContext for ErrorLog {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap().push((error, reason.to_owned()));
    }
}

impl ConsumerContext for ErrorLog {}

/// Connects a client with `properties` to `bootstrap` and serves its events until librdkafka
/// reports an error with `code`: that error's text and how long it took to come. Fails after
/// [`REFUSAL`] with every error seen.
async fn first_error(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    code: RDKafkaErrorCode,
) -> (String, Duration) {
    let log = ErrorLog::default();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    let client: BaseConsumer<ErrorLog> = config.create_with_context(log.clone()).unwrap();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        loop {
            // Error events reach the context only through polling; the client connects to
            // its bootstrap broker on its own.
            let _ = client.poll(Duration::from_millis(100));
            let seen = log.0.lock().unwrap();
            if let Some((_, reason)) = seen
                .iter()
                .find(|(e, _)| e.rdkafka_error_code() == Some(code))
            {
                return (reason.clone(), t0.elapsed());
            }
            assert!(
                t0.elapsed() < REFUSAL,
                "no {code:?} error within {REFUSAL:?}; saw {:?}",
                seen.iter()
                    .map(|(e, r)| format!("{e}: {r}"))
                    .collect::<Vec<_>>()
            );
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_refused_with_an_authentication_error_not_a_hang() {
    let sasl = sasl_ssl();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
        let properties = sasl.properties(mechanism, "not-the-password");
        let (reason, after) = first_error(
            &sasl.bootstrap,
            &properties,
            RDKafkaErrorCode::Authentication,
        )
        .await;
        assert!(
            reason.contains("invalid credentials") && reason.contains(mechanism),
            "{mechanism}: {reason}"
        );
        assert!(!reason.contains("not-the-password"), "{reason}");
        eprintln!("{mechanism}: refused after {after:?}: {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_brokers_ca_fails_the_tls_handshake() {
    let sasl = sasl_ssl();
    let mut properties = sasl.properties("SCRAM-SHA-512", &sasl.password);
    // The system's CAs instead of the test CA: the broker's certificate is not trusted.
    properties.insert("ssl.ca.location".into(), "probe".into());
    let (reason, _) = first_error(&sasl.bootstrap, &properties, RDKafkaErrorCode::SSL).await;
    assert!(reason.contains("certificate verify failed"), "{reason}");
}
