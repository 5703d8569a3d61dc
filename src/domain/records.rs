//! The records the bridge publishes (status events, results) and the run state it keeps in
//! the compacted `runs` topic. JSON field names are the contract of design.md section 3.

use super::request::Mode;
use super::status::RunStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Where a status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    Submit,
    Callback,
    Poll,
    Live,
    Webhook,
    Control,
    Bridge,
}

impl StatusSource {
    /// The JSON (and Avro enum) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusSource::Submit => "submit",
            StatusSource::Callback => "callback",
            StatusSource::Poll => "poll",
            StatusSource::Live => "live",
            StatusSource::Webhook => "webhook",
            StatusSource::Control => "control",
            StatusSource::Bridge => "bridge",
        }
    }
}

/// The error attached to a status event (API error fields, or the bridge's own reason).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusError {
    pub label: Option<String>,
    pub scope: Option<String>,
    pub message: String,
    pub http_status: Option<u16>,
}

/// One status transition of one run (or of a request that never became a run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatusEvent {
    pub request_id: String,
    pub run_uid: Option<String>,
    pub schedule_uid: Option<String>,
    pub chunk: u32,
    pub action: String,
    pub mode: Mode,
    pub status: RunStatus,
    pub previous_status: Option<RunStatus>,
    pub error: Option<StatusError>,
    pub source: StatusSource,
    pub occurred_at: DateTime<Utc>,
    pub metadata: BTreeMap<String, String>,
    /// A schedule's own state (`ACTIVE`, `PAUSED`, `CANCELLED`, `COMPLETED`) on the events
    /// of a schedule chunk that reflect it (run_uid null); null otherwise.
    pub schedule_status: Option<String>,
    /// The control command this event answers (`source: control`); null otherwise.
    pub command: Option<CommandOutcome>,
}

/// What became of a control command: on the event it produced, whether it changed a status
/// or not (then `status` repeats the current one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub command_id: String,
    pub command: String,
    /// `accepted` (the API took it) or `refused` (the reason is in the event's `error`).
    pub outcome: String,
    /// The command's `reason`, echoed.
    #[serde(default)]
    pub reason: Option<String>,
    /// What was done, when there is more to say than the status (replays requested, runs
    /// polled).
    #[serde(default)]
    pub detail: Option<String>,
}

/// One result item of one callback batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `run_uid:batch_uid:index`: stable across replays, for downstream deduplication.
    pub result_id: String,
    pub request_id: String,
    pub run_uid: String,
    pub batch_uid: String,
    pub index: u32,
    pub action: String,
    pub input: Option<Value>,
    pub custom_data: Option<Value>,
    pub result: Value,
    pub received_at: DateTime<Utc>,
    pub metadata: BTreeMap<String, String>,
}

impl RunResult {
    pub fn result_id(run_uid: &str, batch_uid: &str, index: u32) -> String {
        format!("{run_uid}:{batch_uid}:{index}")
    }
}

/// A [`RunResult`] whose open JSON parts (`input`, `custom_data`, `result`) are borrowed as
/// they arrived in the callback body: serialized, they are copied verbatim instead of being
/// parsed into a tree and written again. Same fields, same order, same JSON as `RunResult`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResultRef<'a> {
    pub result_id: String,
    pub request_id: &'a str,
    pub run_uid: &'a str,
    pub batch_uid: &'a str,
    pub index: u32,
    pub action: &'a str,
    pub input: Option<&'a RawValue>,
    pub custom_data: Option<&'a RawValue>,
    pub result: &'a RawValue,
    pub received_at: DateTime<Utc>,
    pub metadata: &'a BTreeMap<String, String>,
}

/// What the bridge knows of one request: its runs and their last published status. Written to
/// the compacted `runs` topic (key = request_id) so that any instance can answer a callback,
/// and so that a redelivered launch request is not submitted twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub request_id: String,
    pub action: String,
    pub mode: Mode,
    pub metadata: BTreeMap<String, String>,
    pub chunks: Vec<ChunkState>,
    pub updated_at: DateTime<Utc>,
    /// Control commands already executed (their command_id), most recent last, bounded: a
    /// redelivered command is not executed twice.
    #[serde(default)]
    pub commands: VecDeque<String>,
}

/// One chunk of a request: one async run, or one schedule (whose firings are runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkState {
    pub index: u32,
    /// Set once the API accepted the chunk (or a callback proved it did).
    pub submitted: bool,
    pub run_uid: Option<String>,
    pub schedule_uid: Option<String>,
    /// The chunk's own status before any run exists (SCHEDULED, SUBMIT_FAILED, ...).
    pub status: Option<RunStatus>,
    /// Runs of this chunk by run_uid (one for async; one per firing for schedules).
    pub runs: BTreeMap<String, RunTrack>,
    /// The schedule's own state as last published (`ACTIVE`, `PAUSED`, ...), and when the
    /// reconciler last asked for it.
    #[serde(default)]
    pub schedule_status: Option<String>,
    #[serde(default)]
    pub schedule_checked_at: Option<DateTime<Utc>>,
}

/// One run's published status and the batches already published for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunTrack {
    pub status: Option<RunStatus>,
    pub results: u64,
    /// The most recent batch_uids published, oldest first, bounded (see `remember_batch`).
    pub batches: VecDeque<String>,
    pub first_seen: Option<DateTime<Utc>>,
    /// When the bridge last heard of the run (submission answer or callback).
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// A final status reported (by a callback or a poll) and not published yet: it waits for
    /// the audit of the run's deliveries, so that it can say which pages were lost.
    #[serde(default)]
    pub pending_final: Option<PendingFinal>,
    /// When the reconciler last looked at the run (poll or audit).
    #[serde(default)]
    pub checked_at: Option<DateTime<Utc>>,
    /// Replays requested, by the callback_uid of the original delivery.
    #[serde(default)]
    pub replays: BTreeMap<String, u8>,
    /// Batches whose delivery was replayed and has not arrived yet.
    #[serde(default)]
    pub replayed_batches: std::collections::BTreeSet<String>,
}

/// A final status waiting for the delivery audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingFinal {
    pub status: RunStatus,
    pub error: Option<StatusError>,
    pub source: StatusSource,
    pub at: DateTime<Utc>,
}

impl RunTrack {
    /// Known and not final: a status is published and it is not final, or a final status
    /// waits for its audit.
    pub fn is_open(&self) -> bool {
        match self.status {
            Some(s) => !s.is_terminal(),
            None => self.pending_final.is_some(),
        }
    }

    pub fn has_batch(&self, batch_uid: &str) -> bool {
        self.batches.iter().any(|b| b == batch_uid)
    }

    /// Remembers a published batch, forgetting the oldest beyond `window` so the state record
    /// stays small; a replay of a batch older than the window is published again (its
    /// `result_id`s are unchanged, so downstream deduplication still works).
    pub fn remember_batch(&mut self, batch_uid: &str, window: usize) {
        self.batches.push_back(batch_uid.to_owned());
        while self.batches.len() > window.max(1) {
            self.batches.pop_front();
        }
    }
}

impl RunState {
    /// A fresh state for a request about to be submitted in `chunks` chunks.
    pub fn new(
        request_id: &str,
        action: &str,
        mode: Mode,
        metadata: BTreeMap<String, String>,
        chunks: usize,
    ) -> Self {
        Self {
            request_id: request_id.to_owned(),
            action: action.to_owned(),
            mode,
            metadata,
            chunks: (0..chunks)
                .map(|i| ChunkState {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    ..ChunkState::default()
                })
                .collect(),
            updated_at: Utc::now(),
            commands: VecDeque::new(),
        }
    }

    /// True when every chunk was accepted by the API or failed for good.
    pub fn fully_submitted(&self) -> bool {
        self.chunks
            .iter()
            .all(|c| c.submitted || c.status == Some(RunStatus::SubmitFailed))
    }

    /// The chunk with this index, created if a callback names one the state has not seen.
    pub fn chunk_mut(&mut self, index: u32) -> &mut ChunkState {
        let pos = match self.chunks.iter().position(|c| c.index == index) {
            Some(pos) => pos,
            None => {
                self.chunks.push(ChunkState {
                    index,
                    ..ChunkState::default()
                });
                self.chunks.len() - 1
            }
        };
        &mut self.chunks[pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_forgets_its_oldest_batches_beyond_the_window() {
        let mut run = RunTrack::default();
        for i in 0..5 {
            run.remember_batch(&format!("b{i}"), 3);
        }
        assert!(!run.has_batch("b1"));
        assert!(run.has_batch("b2") && run.has_batch("b4"));
    }

    #[test]
    fn result_ids_are_run_batch_and_index() {
        assert_eq!(RunResult::result_id("r", "b", 3), "r:b:3");
    }

    #[test]
    fn a_request_is_fully_submitted_when_every_chunk_is_accepted_or_failed() {
        let mut s = RunState::new("r", "a", Mode::Async, BTreeMap::new(), 2);
        assert!(!s.fully_submitted());
        s.chunk_mut(0).submitted = true;
        s.chunk_mut(1).status = Some(RunStatus::SubmitFailed);
        assert!(s.fully_submitted());
    }

    #[test]
    fn a_status_event_serializes_with_the_contract_field_names() {
        let e = RunStatusEvent {
            request_id: "r".into(),
            run_uid: None,
            schedule_uid: None,
            chunk: 0,
            action: "a".into(),
            mode: Mode::Async,
            status: RunStatus::Rejected,
            previous_status: None,
            error: None,
            source: StatusSource::Bridge,
            occurred_at: Utc::now(),
            metadata: BTreeMap::new(),
            schedule_status: None,
            command: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        for key in [
            "request_id",
            "run_uid",
            "schedule_uid",
            "chunk",
            "action",
            "mode",
            "status",
            "previous_status",
            "error",
            "source",
            "occurred_at",
            "metadata",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["status"], "REJECTED");
        assert_eq!(v["source"], "bridge");
    }

    fn schema_fields(avsc: &str) -> Vec<String> {
        let schema: Value = serde_json::from_str(avsc).unwrap();
        let mut names: Vec<String> = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    fn json_fields<T: Serialize>(value: &T) -> Vec<String> {
        let mut names: Vec<String> = serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    #[test]
    fn published_records_have_exactly_the_fields_of_the_schema_contract() {
        let event = RunStatusEvent {
            request_id: "r".into(),
            run_uid: Some("u".into()),
            schedule_uid: None,
            chunk: 0,
            action: "a".into(),
            mode: Mode::Async,
            status: RunStatus::Running,
            previous_status: Some(RunStatus::Created),
            error: None,
            source: StatusSource::Callback,
            occurred_at: Utc::now(),
            metadata: BTreeMap::new(),
            schedule_status: None,
            command: None,
        };
        assert_eq!(
            json_fields(&event),
            schema_fields(include_str!("../../schemas/RunStatusEvent.avsc"))
        );
        let result = RunResult {
            result_id: RunResult::result_id("u", "b", 0),
            request_id: "r".into(),
            run_uid: "u".into(),
            batch_uid: "b".into(),
            index: 0,
            action: "a".into(),
            input: None,
            custom_data: None,
            result: serde_json::json!({}),
            received_at: Utc::now(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            json_fields(&result),
            schema_fields(include_str!("../../schemas/RunResult.avsc"))
        );
    }

    #[test]
    fn every_launch_request_field_of_the_schema_contract_is_accepted() {
        let mut request = serde_json::Map::new();
        for name in schema_fields(include_str!("../../schemas/LaunchRequest.avsc")) {
            let value = match name.as_str() {
                "action" => serde_json::json!("linkedin-extract-people"),
                "mode" => serde_json::json!("schedule"),
                "inputs" => serde_json::json!([{"linkedin_profile_url": "u"}]),
                "parameters" => serde_json::json!({}),
                "identity_ids" => serde_json::json!(["i"]),
                "identity_mode" => serde_json::json!("auto"),
                "schedule" => {
                    serde_json::json!({"cron": "0 8 * * 1", "schedule_at": null, "timezone": "UTC"})
                }
                "metadata" => serde_json::json!({"k": "v"}),
                other => serde_json::json!(other),
            };
            request.insert(name, value);
        }
        let parsed = crate::domain::request::from_value(Value::Object(request), "x");
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
