//! Kafka: the launch consumer with ordered offset tracking, the producer, the run-state view.

pub mod admin;
pub mod capabilities;
pub mod consumer;
pub mod mock;
pub mod murmur2;
pub mod offsets;
pub mod producer;
pub mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;

pub use admin::{ensure_topics, ensure_topics_with, partition_count, AdminError, TopicSpec};
pub use capabilities::{Capabilities, CapabilitiesError, PropertyError};
pub use consumer::{
    ConsumerConfig, ConsumerError, HandleOutcome, InboundRecord, LaunchConsumer, LaunchHandler,
    PauseControl,
};
pub use mock::EmbeddedKafka;
pub use murmur2::{murmur2, partition_for_key};
pub use offsets::{OffsetTracker, TopicPartition};
pub use producer::{Delivered, OutRecord, ProduceError, ProducerConfig, RecordProducer};
pub use state::{StateConfig, StateError, StateView};
