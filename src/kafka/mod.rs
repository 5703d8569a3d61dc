//! Kafka: the producers (plain and transactional), consumed records, offset tracking, topic
//! administration, what this build of librdkafka can serve, consumer lag from its statistics,
//! Java-compatible partitioning, and the embedded mock cluster of the demo.

pub mod admin;
pub mod capabilities;
pub mod inbound;
pub mod mock;
pub mod murmur2;
pub mod offsets;
pub mod producer;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod txn;
#[cfg(test)]
mod wire_tests;

pub use admin::{ensure_topics, partition_count, AdminError, ClusterAccess, TopicSpec};
pub use capabilities::{Capabilities, CapabilitiesError, PropertyError};
pub use inbound::{InboundRecord, PauseControl};
pub use mock::EmbeddedKafka;
pub use murmur2::{murmur2, partition_for_key};
pub use offsets::{OffsetTracker, TopicPartition};
pub use producer::{Delivered, OutRecord, ProduceError, ProducerConfig, RecordProducer};
pub use txn::{TxnError, TxnProducer};
