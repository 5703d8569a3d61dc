//! Consumed records and the pause requests other parts send the consumers: the types the
//! router and the partition owner share.

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::offsets::TopicPartition;

/// A consumed record, owned and detached from the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers, in order; a null header value is an empty vector.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl InboundRecord {
    /// Copies a consumed message out of the consumer's buffer.
    pub fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// External pause requests (e.g. a rate-limit cooldown), shared with the consumer loop.
#[derive(Debug, Default)]
pub struct PauseControl {
    requested: AtomicBool,
}

impl PauseControl {
    /// Pauses every assigned partition until [`PauseControl::resume_all`]. Records already
    /// fetched are held, not dropped; the consumer keeps polling, so it stays in its group.
    pub fn pause_all(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Lifts a pause requested with [`PauseControl::pause_all`] (the in-flight bound may still
    /// keep partitions paused).
    pub fn resume_all(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }

    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}
