//! Kafka: the launch consumer with ordered offset tracking, the producer, the run-state view,
//! consumer lag from librdkafka's statistics.

pub mod admin;
pub mod consumer;
pub mod mock;
pub mod murmur2;
pub mod offsets;
pub mod producer;
pub mod state;
pub mod stats;
#[cfg(test)]
mod tests;

pub use admin::{ensure_topics, partition_count, AdminError, TopicSpec};
pub use consumer::{
    ConsumerConfig, ConsumerError, HandleOutcome, InboundRecord, LaunchConsumer, LaunchHandler,
    PauseControl,
};
pub use mock::EmbeddedKafka;
pub use murmur2::{murmur2, partition_for_key};
pub use offsets::{OffsetTracker, TopicPartition};
pub use producer::{Delivered, OutRecord, ProduceError, ProducerConfig, RecordProducer};
pub use state::{StateConfig, StateError, StateView};
