//! An in-process Kafka for the embedded quick-start: librdkafka's mock cluster, reachable by
//! any client on localhost, with topics created up front.

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A librdkafka mock cluster listening on 127.0.0.1 (ephemeral ports).
///
/// Limits: no admin API (topics must be created here, [`ensure_topics`] does not work against
/// it), transactions are stubs, each partition keeps at most ~5 MiB / 100,000 messages, no
/// log compaction, nothing survives the process. It is not `Send`: keep it on the thread (or
/// in the `main`) that created it; dropping it stops the brokers. For the quick-start and
/// fast tests only; real Kafka everywhere else.
///
/// [`ensure_topics`]: super::admin::ensure_topics
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers and creates `topics` as `(name, partitions)`.
    pub fn start(brokers: i32, topics: &[(&str, i32)]) -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(brokers.max(1))?;
        let kafka = Self { cluster };
        for (name, partitions) in topics {
            kafka.create_topic(name, *partitions)?;
        }
        Ok(kafka)
    }

    /// Creates a topic (replication factor 1; the mock cluster has no admin API).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster.create_topic(name, partitions, 1)
    }

    /// The `bootstrap.servers` value for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kafka::{OutRecord, ProducerConfig, RecordProducer};
    use crate::metrics::Metrics;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_embedded_cluster_acknowledges_records_from_a_separate_client() {
        let kafka = EmbeddedKafka::start(1, &[("quick-start", 2)]).unwrap();
        let config = ProducerConfig {
            bootstrap: kafka.bootstrap_servers(),
            ..ProducerConfig::default()
        };
        let producer = RecordProducer::new(&config, Metrics::new().unwrap()).unwrap();
        let records = (0..10)
            .map(|i| OutRecord {
                topic: "quick-start".into(),
                role: "status",
                key: Some(format!("k{i}").into_bytes()),
                payload: Some(b"{}".to_vec()),
                headers: Vec::new(),
                partition: None,
            })
            .collect();
        let delivered = producer
            .send_all(records, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(delivered.len(), 10);
    }
}
