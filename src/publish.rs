//! Domain events to Kafka records: which topic, which key, which headers. Every output is
//! keyed by request_id so one request's story stays ordered on one partition.

use crate::config::TopicSettings;
use crate::domain::{Rejection, RunResult, RunStatusEvent};
use crate::kafka::OutRecord;

/// Dead-letter headers: why the record was refused, and where it came from.
pub const H_ERROR_CLASS: &str = "captain.error.class";
pub const H_ERROR_REASON: &str = "captain.error.reason";
pub const H_SOURCE_TOPIC: &str = "captain.source.topic";
pub const H_SOURCE_PARTITION: &str = "captain.source.partition";
pub const H_SOURCE_OFFSET: &str = "captain.source.offset";
pub const H_REQUEST_ID: &str = "captain.request_id";

/// Builds the records of each output topic.
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    topics: TopicSettings,
}

/// Where a rejected record came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
}

impl RecordBuilder {
    pub fn new(topics: TopicSettings) -> Self {
        Self { topics }
    }

    pub fn topics(&self) -> &TopicSettings {
        &self.topics
    }

    pub fn status(&self, event: &RunStatusEvent) -> OutRecord {
        OutRecord {
            topic: self.topics.run_status.clone(),
            role: "status",
            key: Some(event.request_id.as_bytes().to_vec()),
            payload: Some(json_bytes(event)),
            headers: Vec::new(),
            partition: None,
        }
    }

    pub fn result(&self, result: &RunResult) -> OutRecord {
        OutRecord {
            topic: self.topics.run_results.clone(),
            role: "results",
            key: Some(result.request_id.as_bytes().to_vec()),
            payload: Some(json_bytes(result)),
            headers: vec![(
                "captain.result_id".into(),
                result.result_id.clone().into_bytes(),
            )],
            partition: None,
        }
    }

    /// The original key and bytes, untouched, with the reason and origin in headers (the
    /// original headers are kept after ours).
    pub fn dead_letter(
        &self,
        origin: &Origin<'_>,
        rejection: &Rejection,
        request_id: &str,
    ) -> OutRecord {
        let mut headers = vec![
            (
                H_ERROR_CLASS.to_owned(),
                rejection.class.as_str().as_bytes().to_vec(),
            ),
            (
                H_ERROR_REASON.to_owned(),
                rejection.message.clone().into_bytes(),
            ),
            (H_SOURCE_TOPIC.to_owned(), origin.topic.as_bytes().to_vec()),
            (
                H_SOURCE_PARTITION.to_owned(),
                origin.partition.to_string().into_bytes(),
            ),
            (
                H_SOURCE_OFFSET.to_owned(),
                origin.offset.to_string().into_bytes(),
            ),
            (H_REQUEST_ID.to_owned(), request_id.as_bytes().to_vec()),
        ];
        headers.extend(origin.headers.iter().cloned());
        OutRecord {
            topic: self.topics.dead_letter.clone(),
            role: "dead_letter",
            key: origin.key.map(<[u8]>::to_vec),
            payload: origin.payload.map(<[u8]>::to_vec),
            headers,
            partition: None,
        }
    }
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own records hold only strings, numbers and JSON values: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
