//! Domain events to Kafka records: which topic, which key, which partition, which headers,
//! and the value's format. Every output is keyed by request_id so one request's story stays
//! ordered on one partition; the internal topics (requests, callbacks, run state) are written
//! to the partition the key's owner reads, computed here once, and stay JSON. The status and
//! results topics are JSON, or Avro in the Confluent wire format when an encoder says so
//! ([`RecordBuilder::with_encoder`]): their builders then fail, retriably, while a writer
//! schema id is not known yet, and the caller keeps the event for later.

use crate::avro::{EncodeError, RecordEncoder};
use crate::config::TopicSettings;
use crate::domain::control::ControlCommand;
use crate::domain::{LaunchRequest, Rejection, RunResultRef, RunState, RunStatusEvent};
use crate::kafka::{partition_for_key, OutRecord};
use std::sync::Arc;

/// Dead-letter headers: why the record was refused, and where it came from.
pub const H_ERROR_CLASS: &str = "captain.error.class";
pub const H_ERROR_REASON: &str = "captain.error.reason";
pub const H_SOURCE_TOPIC: &str = "captain.source.topic";
pub const H_SOURCE_PARTITION: &str = "captain.source.partition";
pub const H_SOURCE_OFFSET: &str = "captain.source.offset";
pub const H_REQUEST_ID: &str = "captain.request_id";

/// Headers of the internal topics.
pub const H_CHUNK: &str = "captain.chunk";
pub const H_RECEIVED_AT: &str = "captain.received_at";
pub const H_KIND: &str = "captain.kind";
/// The `captain.kind` of a control command on the requests topic (launches say `launch`).
pub const KIND_CONTROL: &[u8] = b"control";

/// Builds the records of each topic.
#[derive(Debug, Clone)]
pub struct RecordBuilder {
    topics: TopicSettings,
    /// Partitions of the co-partitioned internal topics (requests, callbacks, run state).
    partitions: i32,
    /// Largest record the dead-letter topic takes (its `max.message.bytes`).
    dead_letter_max: usize,
    /// The status and results values' encoder; `None`: JSON.
    encoder: Option<Arc<RecordEncoder>>,
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
    pub fn new(topics: TopicSettings, partitions: i32) -> Self {
        Self {
            topics,
            partitions,
            dead_letter_max: 1_000_000,
            encoder: None,
        }
    }

    /// Status and result values encoded by `encoder` (each topic in its configured format).
    pub fn with_encoder(mut self, encoder: Arc<RecordEncoder>) -> Self {
        self.encoder = Some(encoder);
        self
    }

    /// True when every output record can be built now: JSON everywhere, or every Avro topic's
    /// writer schema id known (then it stays so for the life of the process).
    pub fn outputs_ready(&self) -> bool {
        self.encoder.as_ref().is_none_or(|e| e.ready())
    }

    /// As [`RecordBuilder::outputs_ready`], for status records alone.
    pub fn status_ready(&self) -> bool {
        self.encoder.as_ref().is_none_or(|e| e.status_ready())
    }

    /// The dead-letter topic's record size limit, as read from the cluster at start-up.
    pub fn with_dead_letter_limit(mut self, max_bytes: usize) -> Self {
        self.dead_letter_max = max_bytes;
        self
    }

    /// The partition of the internal topics that holds `request_id`'s story.
    pub fn partition_of(&self, request_id: &str) -> i32 {
        partition_for_key(request_id.as_bytes(), self.partitions)
    }

    /// A result record whose open JSON parts are copied from the callback as they arrived.
    pub fn result_ref(&self, result: &RunResultRef<'_>) -> Result<OutRecord, EncodeError> {
        let payload = match &self.encoder {
            Some(encoder) => encoder.result_ref_now(result)?,
            None => json_bytes(result),
        };
        Ok(OutRecord {
            topic: self.topics.run_results.clone(),
            role: "results",
            key: Some(result.request_id.as_bytes().to_vec()),
            payload: Some(payload),
            headers: vec![(
                "captain.result_id".into(),
                result.result_id.clone().into_bytes(),
            )],
            partition: None,
        })
    }

    /// A request's run state, on the run-state partition its owner reads.
    pub fn state(&self, state: &RunState) -> OutRecord {
        OutRecord {
            topic: self.topics.runs.clone(),
            role: "state",
            key: Some(state.request_id.as_bytes().to_vec()),
            payload: Some(json_bytes(state)),
            headers: Vec::new(),
            partition: Some(self.partition_of(&state.request_id)),
        }
    }

    /// A validated launch request on the internal requests topic, on its owner's partition.
    pub fn launch(&self, request: &LaunchRequest, origin: &Origin<'_>) -> OutRecord {
        OutRecord {
            topic: self.topics.requests.clone(),
            role: "requests",
            key: Some(request.request_id.as_bytes().to_vec()),
            payload: Some(json_bytes(request)),
            headers: source_headers(b"launch", origin),
            partition: Some(self.partition_of(&request.request_id)),
        }
    }

    /// A valid control command on the internal requests topic, on the partition of the
    /// request it is about, so that the request's owner executes it in order with the
    /// request's other events.
    pub fn control(&self, command: &ControlCommand, origin: &Origin<'_>) -> OutRecord {
        OutRecord {
            topic: self.topics.requests.clone(),
            role: "requests",
            key: Some(command.request_id.as_bytes().to_vec()),
            payload: Some(json_bytes(command)),
            headers: source_headers(KIND_CONTROL, origin),
            partition: Some(self.partition_of(&command.request_id)),
        }
    }

    /// A received callback on the internal callbacks topic: its body as it arrived, its
    /// chunk and receipt time in headers, on its owner's partition.
    pub fn callback(
        &self,
        request_id: &str,
        chunk: u32,
        received_at: chrono::DateTime<chrono::Utc>,
        body: Vec<u8>,
    ) -> OutRecord {
        OutRecord {
            topic: self.topics.callbacks.clone(),
            role: "callbacks",
            key: Some(request_id.as_bytes().to_vec()),
            payload: Some(body),
            headers: vec![
                (H_CHUNK.to_owned(), chunk.to_string().into_bytes()),
                (
                    H_RECEIVED_AT.to_owned(),
                    received_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                        .into_bytes(),
                ),
            ],
            partition: Some(self.partition_of(request_id)),
        }
    }

    pub fn topics(&self) -> &TopicSettings {
        &self.topics
    }

    /// A status record.
    pub fn status(&self, event: &RunStatusEvent) -> Result<OutRecord, EncodeError> {
        let payload = match &self.encoder {
            Some(encoder) => encoder.status_now(event)?,
            None => json_bytes(event),
        };
        Ok(OutRecord {
            topic: self.topics.run_status.clone(),
            role: "status",
            key: Some(event.request_id.as_bytes().to_vec()),
            payload: Some(payload),
            headers: Vec::new(),
            partition: None,
        })
    }

    /// The original key and bytes, untouched, with the reason and origin in headers (the
    /// original headers are kept after ours). When the whole would exceed the dead-letter
    /// topic's limit, the value is cut to fit and headers say so and give the
    /// original size: a record too large for the dead-letter topic must still leave a trace
    /// there, once, and never block its partition.
    pub fn dead_letter(
        &self,
        origin: &Origin<'_>,
        rejection: &Rejection,
        request_id: &str,
    ) -> OutRecord {
        let max_bytes = self.dead_letter_max;
        let mut headers = vec![
            (
                H_ERROR_CLASS.to_owned(),
                rejection.class.as_str().as_bytes().to_vec(),
            ),
            (
                H_ERROR_REASON.to_owned(),
                truncate_utf8(&rejection.message, 4096).into_bytes(),
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
        let mut payload = origin.payload.map(<[u8]>::to_vec);
        let overhead = RECORD_OVERHEAD
            + origin.key.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>();
        let room = max_bytes.saturating_sub(overhead + TRUNCATION_HEADERS);
        if let Some(p) = payload.as_mut().filter(|p| p.len() > room) {
            headers.push((H_TRUNCATED.to_owned(), b"true".to_vec()));
            headers.push((H_ORIGINAL_SIZE.to_owned(), p.len().to_string().into_bytes()));
            p.truncate(room);
        }
        OutRecord {
            topic: self.topics.dead_letter.clone(),
            role: "dead_letter",
            key: origin.key.map(<[u8]>::to_vec),
            payload,
            headers,
            partition: None,
        }
    }
}

/// Bytes a record's framing takes besides its key, value and headers (generous: batch and
/// record headers, varints, the attributes).
const RECORD_OVERHEAD: usize = 512;
/// Room kept for the two truncation headers.
const TRUNCATION_HEADERS: usize = 96;
pub const H_TRUNCATED: &str = "captain.truncated";
pub const H_ORIGINAL_SIZE: &str = "captain.original.size";

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn json_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our own records hold only strings, numbers and JSON values: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The headers of a record forwarded to the requests topic: its kind and where it came from.
fn source_headers(kind: &[u8], origin: &Origin<'_>) -> Vec<(String, Vec<u8>)> {
    vec![
        (H_KIND.to_owned(), kind.to_vec()),
        (H_SOURCE_TOPIC.to_owned(), origin.topic.as_bytes().to_vec()),
        (
            H_SOURCE_PARTITION.to_owned(),
            origin.partition.to_string().into_bytes(),
        ),
        (
            H_SOURCE_OFFSET.to_owned(),
            origin.offset.to_string().into_bytes(),
        ),
    ]
}
