//! Launch requests: decoding a Kafka record into a [`LaunchRequest`], and the validation that
//! decides, before anything is sent to the API, whether it goes to the dead-letter topic.

use super::strict_json::{self, StrictJsonError};
use chrono::DateTime;
use croner::parser::{CronParser, Seconds};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Longest accepted `request_id`: it is a Kafka key and part of every callback URL.
pub const MAX_REQUEST_ID_LEN: usize = 200;

/// How a request is run by Captain Data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One run for (a chunk of) the inputs; results arrive by callback.
    Async,
    /// A schedule whose firings are async runs.
    Schedule,
    /// A v3 workflow launched as a v3 job (`POST /v3/workflows/{workflow_uid}/schedule`).
    Workflow,
    /// One `run/live` call per input and page; results in the answers, no callback.
    Live,
    /// `live` at or under `live.auto_max_inputs` inputs, `async` above: resolved by the
    /// launch router (see [`super::admission`]), never run as such.
    Auto,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Schedule => "schedule",
            Mode::Workflow => "workflow",
            Mode::Live => "live",
            Mode::Auto => "auto",
        }
    }

    /// The mode named `name` on the wire.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "async" => Some(Mode::Async),
            "schedule" => Some(Mode::Schedule),
            "live" => Some(Mode::Live),
            "auto" => Some(Mode::Auto),
            "workflow" => Some(Mode::Workflow),
            _ => None,
        }
    }

    /// Whether the API answers this mode by callback (so the bridge needs its listener).
    pub fn needs_callbacks(self) -> bool {
        matches!(self, Mode::Async | Mode::Schedule)
    }
}

/// Longest `job_name` a workflow request may carry: the bridge appends its signed routing
/// token to it, and the whole must fit the v3 API's limit, assumed to be 255 characters (see
/// README, "v3 workflows").
pub const MAX_JOB_NAME_LEN: usize = 80;
/// Longest `request_id` of a workflow request: it travels inside the job name's token.
pub const MAX_WORKFLOW_REQUEST_ID_LEN: usize = 64;
/// Longest `delay` of a workflow request: one year, in seconds.
pub const MAX_WORKFLOW_DELAY_SECS: u64 = 31_536_000;

/// One step setting of a workflow request (`steps[]` of the v3 launch body).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStep {
    pub step_uid: String,
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts_rotation_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// What a `mode: "workflow"` request launches.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub workflow_uid: String,
    pub steps: Option<Vec<WorkflowStep>>,
    pub job_name: Option<String>,
    pub delay: Option<u64>,
}

/// When a schedule-mode request fires.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub cron: Option<String>,
    pub schedule_at: Option<String>,
    pub timezone: Option<String>,
}

/// A validated launch request, ready to be submitted. It serializes to the wire shape
/// [`parse_json`] accepts (the internal requests topic carries it so).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LaunchRequest {
    pub request_id: String,
    pub action: String,
    pub mode: Mode,
    pub inputs: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Set in workflow mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<WorkflowStep>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
    pub metadata: BTreeMap<String, String>,
}

impl LaunchRequest {
    /// The workflow a `mode: "workflow"` request launches (`None` in the other modes).
    pub fn workflow(&self) -> Option<Workflow> {
        let workflow_uid = self.workflow_uid.clone()?;
        (self.mode == Mode::Workflow).then(|| Workflow {
            workflow_uid,
            steps: self.steps.clone(),
            job_name: self.job_name.clone(),
            delay: self.delay,
        })
    }
}

/// Why a record was rejected: a stable class (dead-letter header `captain.error.class`) and a
/// message for humans naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub class: RejectClass,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectClass {
    /// The value is not JSON (or empty).
    NotJson,
    /// JSON, but not the LaunchRequest shape: missing or unknown field, wrong type.
    InvalidShape,
    /// An object names a key twice (at any depth): which value was meant is unknowable.
    DuplicateKey,
    /// `inputs` is empty.
    EmptyInputs,
    /// `mode` is not one of `async`, `schedule`, `live`, `auto`, `workflow`.
    UnknownMode,
    /// A live request with more inputs than `live.max_inputs`.
    TooManyInputs,
    /// A mode this bridge cannot serve: `async` or `schedule` (or `auto` resolved to `async`)
    /// on a bridge without a callback listener (`callbacks.enabled = false`).
    ModeUnavailable,
    /// `schedule.cron`, `schedule.schedule_at` or `schedule.timezone` is not valid.
    InvalidSchedule,
    /// A field has a value the API would refuse (action slug, request_id, identity_mode).
    InvalidValue,
    /// A record of an internal topic the bridge cannot read (written by another version, or
    /// damaged): dead-lettered rather than retried forever.
    InvalidRecord,
    /// The value starts with neither JSON nor the Confluent wire format's magic byte 0.
    WrongMagicByte,
    /// Avro: the value ends inside the 5-byte header or inside the Avro datum.
    TruncatedPayload,
    /// Avro: the schema registry has no schema with the record's schema id.
    UnknownSchemaId,
    /// Avro: the bytes after the header are not one datum of the writer schema.
    MalformedAvro,
    /// Avro: the writer schema cannot be read as the bridge's schema (another record type, an
    /// incompatible change, not an Avro schema).
    IncompatibleSchema,
    /// Avro: a field carrying a JSON object as text (`inputs`, `parameters`) is not JSON.
    InvalidJsonText,
    /// An Avro record arrived and no schema registry is configured to read it.
    NoSchemaRegistry,
}

impl RejectClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectClass::NotJson => "not_json",
            RejectClass::InvalidShape => "invalid_shape",
            RejectClass::DuplicateKey => "duplicate_key",
            RejectClass::EmptyInputs => "empty_inputs",
            RejectClass::UnknownMode => "unknown_mode",
            RejectClass::TooManyInputs => "too_many_inputs",
            RejectClass::ModeUnavailable => "mode_unavailable",
            RejectClass::InvalidSchedule => "invalid_schedule",
            RejectClass::InvalidValue => "invalid_value",
            RejectClass::InvalidRecord => "invalid_record",
            RejectClass::WrongMagicByte => "wrong_magic_byte",
            RejectClass::TruncatedPayload => "truncated_payload",
            RejectClass::UnknownSchemaId => "unknown_schema_id",
            RejectClass::MalformedAvro => "malformed_avro",
            RejectClass::IncompatibleSchema => "incompatible_schema",
            RejectClass::InvalidJsonText => "invalid_json_text",
            RejectClass::NoSchemaRegistry => "no_schema_registry",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.message)
    }
}

/// A rejection of class `class` because of `message`.
pub fn reject(class: RejectClass, message: impl Into<String>) -> Rejection {
    Rejection {
        class,
        message: message.into(),
    }
}

/// The wire shape; unknown fields are refused so that a producer's typo (`input` for
/// `inputs`) is reported instead of silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    request_id: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    inputs: Vec<Value>,
    parameters: Option<Value>,
    identity_ids: Option<Vec<String>>,
    identity_mode: Option<String>,
    schedule: Option<Schedule>,
    #[serde(default)]
    workflow_uid: Option<String>,
    #[serde(default)]
    steps: Option<Vec<WorkflowStep>>,
    #[serde(default)]
    job_name: Option<String>,
    /// Checked by hand so that a wrong value is reported naming the field.
    #[serde(default)]
    delay: Option<Value>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Best-effort `request_id` and `metadata` of a record that failed validation, so that its
/// `REJECTED` status event is keyed and labelled like the rest of the request's story.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RejectedContext {
    pub request_id: Option<String>,
    pub action: Option<String>,
    /// The mode asked for, when it is one the bridge knows.
    pub mode: Option<Mode>,
    pub metadata: BTreeMap<String, String>,
}

impl RejectedContext {
    pub fn from_bytes(payload: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(payload) {
            Ok(value) => Self::from_value(&value),
            Err(_) => Self::default(),
        }
    }

    /// As [`RejectedContext::from_bytes`], from a value already decoded (JSON or Avro).
    pub fn from_value(value: &Value) -> Self {
        let Value::Object(map) = value else {
            return Self::default();
        };
        let text = |key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .filter(|s| valid_request_id(s))
                .map(str::to_owned)
        };
        let metadata = map
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            request_id: text("request_id"),
            action: text("action"),
            mode: map
                .get("mode")
                .and_then(Value::as_str)
                .and_then(Mode::parse),
            metadata,
        }
    }
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && !id.chars().any(|c| c.is_control())
}

fn valid_action_slug(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= 128
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Decodes and validates a JSON launch request. `fallback_id` becomes the request_id when the
/// record carries none (derived from topic/partition/offset so redelivery maps to the same id).
pub fn parse_json(payload: &[u8], fallback_id: &str) -> Result<LaunchRequest, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(RejectClass::NotJson, "the record has no value"));
    }
    let value = strict_value(payload)?;
    from_value(value, fallback_id)
}

/// The record's value as JSON, refusing a key given twice anywhere in it (class
/// `duplicate_key`, naming the key and where) as well as text that is not JSON (`not_json`).
pub fn strict_value(payload: &[u8]) -> Result<Value, Rejection> {
    strict_json::from_slice(payload).map_err(|e| match e {
        StrictJsonError::DuplicateKey { .. } => reject(RejectClass::DuplicateKey, e.to_string()),
        StrictJsonError::Syntax(m) => {
            reject(RejectClass::NotJson, format!("value is not JSON: {m}"))
        }
    })
}

/// Validates an already-decoded request (JSON or Avro decode into the same value shape).
pub fn from_value(value: Value, fallback_id: &str) -> Result<LaunchRequest, Rejection> {
    if !value.is_object() {
        return Err(reject(
            RejectClass::InvalidShape,
            "a launch request must be a JSON object",
        ));
    }
    let wire: WireRequest = serde_json::from_value(value)
        .map_err(|e| reject(RejectClass::InvalidShape, e.to_string()))?;
    validate(wire, fallback_id)
}

fn validate(mut wire: WireRequest, fallback_id: &str) -> Result<LaunchRequest, Rejection> {
    let request_id = match wire.request_id.take() {
        Some(id) if !valid_request_id(&id) => {
            return Err(reject(
                RejectClass::InvalidValue,
                format!(
                "request_id must be 1..={MAX_REQUEST_ID_LEN} characters without control characters"
            ),
            ))
        }
        Some(id) => id,
        None => fallback_id.to_owned(),
    };
    let mode = match wire.mode.as_deref() {
        None => Mode::Async,
        Some(name) => Mode::parse(name).ok_or_else(|| {
            reject(
                RejectClass::UnknownMode,
                format!("mode {name:?} is not one of \"async\", \"schedule\", \"live\", \"auto\", \"workflow\""),
            )
        })?,
    };
    if mode == Mode::Workflow {
        return validate_workflow(wire, request_id);
    }
    let Some(action) = wire.action else {
        return Err(reject(
            RejectClass::InvalidShape,
            "missing field `action` (required unless mode is \"workflow\")",
        ));
    };
    if !valid_action_slug(&action) {
        return Err(reject(
            RejectClass::InvalidValue,
            format!("action {action:?} is not an action slug (lowercase letters, digits and '-')"),
        ));
    }
    for (field, present) in [
        ("workflow_uid", wire.workflow_uid.is_some()),
        ("steps", wire.steps.is_some()),
        ("job_name", wire.job_name.is_some()),
        ("delay", wire.delay.as_ref().is_some_and(|d| !d.is_null())),
    ] {
        if present {
            return Err(reject(
                RejectClass::InvalidShape,
                format!("{field} is only allowed with mode \"workflow\""),
            ));
        }
    }
    if wire.inputs.is_empty() {
        return Err(reject(
            RejectClass::EmptyInputs,
            "inputs must hold at least one input",
        ));
    }
    if let Some(i) = wire.inputs.iter().position(|v| !v.is_object()) {
        return Err(reject(
            RejectClass::InvalidShape,
            format!("inputs[{i}] must be an object"),
        ));
    }
    if let Some(p) = &wire.parameters {
        if !p.is_object() {
            return Err(reject(
                RejectClass::InvalidShape,
                "parameters must be an object",
            ));
        }
    }
    if let Some(m) = &wire.identity_mode {
        if !matches!(m.as_str(), "direct" | "auto" | "managed") {
            return Err(reject(
                RejectClass::InvalidValue,
                format!("identity_mode {m:?} is not one of \"direct\", \"auto\", \"managed\""),
            ));
        }
    }
    let schedule = match (mode, wire.schedule) {
        (Mode::Schedule, None) => {
            return Err(reject(
                RejectClass::InvalidSchedule,
                "mode \"schedule\" needs a schedule with cron or schedule_at",
            ))
        }
        (Mode::Schedule, Some(s)) => Some(validate_schedule(s)?),
        (_, Some(_)) => {
            return Err(reject(
                RejectClass::InvalidSchedule,
                "schedule is only allowed with mode \"schedule\"",
            ))
        }
        (_, None) => None,
    };
    Ok(LaunchRequest {
        request_id,
        action,
        mode,
        inputs: wire.inputs,
        parameters: wire.parameters,
        identity_ids: wire.identity_ids,
        identity_mode: wire.identity_mode,
        schedule,
        workflow_uid: None,
        steps: None,
        job_name: None,
        delay: None,
        metadata: wire.metadata,
    })
}

/// An identifier the v3 API puts in a path or a body (`workflow_uid`, `step_uid`, account
/// uids): 1..=128 characters of `[A-Za-z0-9_-]`.
fn valid_v3_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// A `mode: "workflow"` request: `workflow_uid` and `inputs` required; `steps`, `job_name`,
/// `delay` optional; the v4 fields refused. `action` is only a label here (it defaults to the
/// workflow uid) since the workflow defines what runs.
fn validate_workflow(wire: WireRequest, request_id: String) -> Result<LaunchRequest, Rejection> {
    let shape = |message: String| Err(reject(RejectClass::InvalidShape, message));
    let value = |message: String| Err(reject(RejectClass::InvalidValue, message));
    for (field, present) in [
        ("parameters", wire.parameters.is_some()),
        ("identity_ids", wire.identity_ids.is_some()),
        ("identity_mode", wire.identity_mode.is_some()),
        ("schedule", wire.schedule.is_some()),
    ] {
        if present {
            return shape(format!(
                "{field} is not allowed with mode \"workflow\" (a v3 workflow takes steps)"
            ));
        }
    }
    let Some(workflow_uid) = wire.workflow_uid else {
        return shape("mode \"workflow\" needs workflow_uid".into());
    };
    if !valid_v3_identifier(&workflow_uid) {
        return value(format!(
            "workflow_uid {workflow_uid:?} must be 1..=128 characters of [A-Za-z0-9_-]"
        ));
    }
    if request_id.len() > MAX_WORKFLOW_REQUEST_ID_LEN {
        return value(format!(
            "request_id must be at most {MAX_WORKFLOW_REQUEST_ID_LEN} characters with mode \"workflow\" (it travels in the v3 job name)"
        ));
    }
    let action = wire.action.unwrap_or_else(|| workflow_uid.clone());
    if action.is_empty() || action.len() > 128 || action.chars().any(char::is_control) {
        return value("action must be 1..=128 characters without control characters".into());
    }
    if wire.inputs.is_empty() {
        return Err(reject(
            RejectClass::EmptyInputs,
            "inputs must hold at least one input",
        ));
    }
    if let Some(i) = wire.inputs.iter().position(|v| !v.is_object()) {
        return shape(format!("inputs[{i}] must be an object"));
    }
    if let Some(steps) = &wire.steps {
        for (i, step) in steps.iter().enumerate() {
            if !valid_v3_identifier(&step.step_uid) {
                return value(format!(
                    "steps[{i}].step_uid {:?} must be 1..=128 characters of [A-Za-z0-9_-]",
                    step.step_uid
                ));
            }
            if let Some(j) = step.accounts.iter().position(|a| !valid_v3_identifier(a)) {
                return value(format!(
                    "steps[{i}].accounts[{j}] must be 1..=128 characters of [A-Za-z0-9_-]"
                ));
            }
            if step.parameters.as_ref().is_some_and(|p| !p.is_object()) {
                return shape(format!("steps[{i}].parameters must be an object"));
            }
        }
    }
    if let Some(name) = &wire.job_name {
        if name.trim().is_empty()
            || name.chars().count() > MAX_JOB_NAME_LEN
            || name.chars().any(char::is_control)
        {
            return value(format!(
                "job_name must be 1..={MAX_JOB_NAME_LEN} characters without control characters"
            ));
        }
    }
    let delay = match &wire.delay {
        None | Some(Value::Null) => None,
        Some(d) => match d.as_u64() {
            Some(secs) if secs <= MAX_WORKFLOW_DELAY_SECS => Some(secs),
            Some(_) => {
                return value(format!(
                    "delay must be at most {MAX_WORKFLOW_DELAY_SECS} seconds (one year)"
                ))
            }
            None => return shape(format!("delay must be a whole number of seconds, got {d}")),
        },
    };
    Ok(LaunchRequest {
        request_id,
        action,
        mode: Mode::Workflow,
        inputs: wire.inputs,
        parameters: None,
        identity_ids: None,
        identity_mode: None,
        schedule: None,
        workflow_uid: Some(workflow_uid),
        steps: wire.steps,
        job_name: wire.job_name,
        delay,
        metadata: wire.metadata,
    })
}

fn validate_schedule(s: Schedule) -> Result<Schedule, Rejection> {
    if s.cron.is_none() && s.schedule_at.is_none() {
        return Err(reject(
            RejectClass::InvalidSchedule,
            "schedule needs cron or schedule_at",
        ));
    }
    if let Some(cron) = &s.cron {
        // The API takes POSIX 5-field expressions only; a seconds field would be refused there.
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        if cron.is_empty() || cron.len() > 256 {
            return Err(reject(
                RejectClass::InvalidSchedule,
                "schedule.cron must be 1..=256 characters",
            ));
        }
        parser.parse(cron).map_err(|e| {
            reject(
                RejectClass::InvalidSchedule,
                format!("schedule.cron {cron:?} is not a 5-field cron expression: {e}"),
            )
        })?;
    }
    if let Some(at) = &s.schedule_at {
        DateTime::parse_from_rfc3339(at).map_err(|e| {
            reject(
                RejectClass::InvalidSchedule,
                format!("schedule.schedule_at {at:?} is not an RFC 3339 date-time: {e}"),
            )
        })?;
    }
    if let Some(tz) = &s.timezone {
        tz.parse::<chrono_tz::Tz>().map_err(|_| {
            reject(
                RejectClass::InvalidSchedule,
                format!("schedule.timezone {tz:?} is not an IANA time zone"),
            )
        })?;
    }
    Ok(s)
}

/// Splits inputs into chunks of at most `max` (the API's per-run limit for the mode).
pub fn chunk_inputs(inputs: &[Value], max: usize) -> Vec<&[Value]> {
    inputs.chunks(max.max(1)).collect()
}

/// The request_id of a record that has none: stable across redeliveries of the same record.
pub fn derived_request_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}-{partition}-{offset}")
}

/// `metadata` must be a string map; used by callers building records from raw JSON.
pub fn string_map(map: &Map<String, Value>) -> BTreeMap<String, String> {
    map.iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_validated_request_serializes_to_what_the_decoder_reads_back() {
        let raw = br#"{"request_id":"r1","action":"linkedin-extract-people","mode":"schedule",
            "inputs":[{"linkedin_profile_url":"u","custom_data":{"a":1}}],"parameters":{"x":true},
            "identity_mode":"auto","schedule":{"cron":"0 8 * * 1","timezone":"UTC"},
            "metadata":{"k":"v"}}"#;
        let parsed = parse_json(raw, "fallback").unwrap();
        let again = parse_json(&serde_json::to_vec(&parsed).unwrap(), "other").unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn an_input_number_keeps_its_exact_value_through_the_requests_topic_and_to_the_api() {
        // Found by the launch_request fuzz target: without serde_json's exact float parsing,
        // this number was read 1 ULP off, and read again after the trip through the requests
        // topic as yet another value (-92.33720368547719). The exact parser was only on by
        // accident (captain-sim's jsonschema asks for it, through the `demo` feature): a build
        // without `demo`, like the fuzz targets', changed inputs. It is now asked for here
        // (`float_roundtrip` in Cargo.toml). Test builds of this workspace always have it (the
        // dev-dependencies bring captain-sim), so the case is also in the fuzz corpus
        // (`launch_request/float-roundtrip-1ulp.json`), replayed by every fuzz run in a build
        // without them; here it guards the decoder's own handling of numbers.
        let raw = br#"{"action":"a","inputs":[{"f":0.300000000000000041615,"neg":-92.3372036854771970,"e":1e-320000000000000}]}"#;
        let parsed = parse_json(raw, "fallback").unwrap();
        let exact: f64 = "-92.3372036854771970".parse().unwrap();
        assert_eq!(parsed.inputs[0]["neg"].as_f64(), Some(exact));
        let again = parse_json(&serde_json::to_vec(&parsed).unwrap(), "other").unwrap();
        assert_eq!(again, parsed);
    }

    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<LaunchRequest, Rejection> {
        parse_json(v.to_string().as_bytes(), "t-0-7")
    }

    fn class_of(v: Value) -> RejectClass {
        match parse(v) {
            Err(r) => r.class,
            Ok(r) => panic!("accepted {r:?}"),
        }
    }

    #[test]
    fn a_minimal_request_defaults_to_async_with_a_derived_request_id() {
        let r = parse(
            json!({"action": "linkedin-extract-people", "inputs": [{"linkedin_profile_url": "u"}]}),
        )
        .unwrap();
        assert_eq!(r.mode, Mode::Async);
        assert_eq!(r.request_id, "t-0-7");
    }

    #[test]
    fn a_full_schedule_request_is_accepted() {
        let r = parse(json!({
            "request_id": "r1", "action": "linkedin-extract-people", "mode": "schedule",
            "inputs": [{"linkedin_profile_url": "u", "custom_data": {"crm": "1"}}],
            "parameters": {"skills": true}, "identity_mode": "managed",
            "schedule": {"cron": "*/5 * * * *", "timezone": "Europe/Paris"},
            "metadata": {"team": "growth"}
        }))
        .unwrap();
        assert_eq!(r.mode, Mode::Schedule);
        assert_eq!(r.metadata.get("team").map(String::as_str), Some("growth"));
    }

    #[test]
    fn a_value_that_is_not_json_is_rejected_as_not_json() {
        let r = parse_json(b"{nope", "x").unwrap_err();
        assert_eq!(r.class, RejectClass::NotJson);
        assert_eq!(
            parse_json(b"", "x").unwrap_err().class,
            RejectClass::NotJson
        );
    }

    #[test]
    fn a_missing_action_is_rejected_naming_the_field() {
        let r = parse(json!({"inputs": [{}]})).unwrap_err();
        assert_eq!(r.class, RejectClass::InvalidShape);
        assert!(r.message.contains("action"), "{}", r.message);
    }

    #[test]
    fn empty_inputs_are_rejected() {
        assert_eq!(
            class_of(json!({"action": "a", "inputs": []})),
            RejectClass::EmptyInputs
        );
    }

    #[test]
    fn an_unknown_mode_is_rejected() {
        assert_eq!(
            class_of(json!({"action": "a", "inputs": [{}], "mode": "sync"})),
            RejectClass::UnknownMode
        );
    }

    #[test]
    fn every_mode_name_is_read_and_a_schedule_is_refused_outside_schedule_mode() {
        for (name, mode) in [
            ("async", Mode::Async),
            ("schedule", Mode::Schedule),
            ("live", Mode::Live),
            ("auto", Mode::Auto),
        ] {
            assert_eq!(Mode::parse(name), Some(mode));
            assert_eq!(mode.as_str(), name);
            assert_eq!(serde_json::to_value(mode).unwrap(), json!(name));
        }
        let r = parse(json!({"action": "a", "inputs": [{}], "mode": "live"})).unwrap();
        assert_eq!(r.mode, Mode::Live);
        for mode in ["live", "auto", "async"] {
            assert_eq!(
                class_of(json!({"action": "a", "inputs": [{}], "mode": mode,
                                "schedule": {"cron": "0 8 * * 1"}})),
                RejectClass::InvalidSchedule,
                "{mode}"
            );
        }
    }

    #[test]
    fn wrong_types_are_rejected_as_invalid_shape() {
        assert_eq!(
            class_of(json!({"action": 3, "inputs": [{}]})),
            RejectClass::InvalidShape
        );
        assert_eq!(
            class_of(json!({"action": "a", "inputs": "x"})),
            RejectClass::InvalidShape
        );
        assert_eq!(
            class_of(json!({"action": "a", "inputs": [1]})),
            RejectClass::InvalidShape
        );
        assert_eq!(
            class_of(json!({"action": "a", "inputs": [{}], "metadata": {"k": 1}})),
            RejectClass::InvalidShape
        );
        assert_eq!(class_of(json!([1, 2])), RejectClass::InvalidShape);
    }

    #[test]
    fn an_unknown_field_is_rejected_instead_of_ignored() {
        let r = parse(json!({"action": "a", "input": [{}], "inputs": [{}]})).unwrap_err();
        assert_eq!(r.class, RejectClass::InvalidShape);
        assert!(r.message.contains("input"), "{}", r.message);
    }

    #[test]
    fn a_key_given_twice_is_rejected_at_any_depth_naming_the_key() {
        let twice = |raw: &str| parse_json(raw.as_bytes(), "t-0-1").unwrap_err();
        let r = twice(
            r#"{"action": "linkedin-extract-people", "inputs": [{}], "action": "linkedin-connect-profile"}"#,
        );
        assert_eq!(r.class, RejectClass::DuplicateKey);
        assert_eq!(r.message, r#"key "action" is given twice in the top level"#);
        let r = twice(
            r#"{"action": "a", "inputs": [{"u": 1}, {"custom_data": {"row": "1", "row": "2"}}]}"#,
        );
        assert_eq!(r.class, RejectClass::DuplicateKey);
        assert!(
            r.message.contains(r#""row""#) && r.message.contains("inputs[1].custom_data"),
            "{}",
            r.message
        );
        for raw in [
            r#"{"action": "a", "inputs": [{}], "parameters": {"max_results": 1, "max_results": 9}}"#,
            r#"{"action": "a", "inputs": [{}], "metadata": {"k": "a", "k": "b"}}"#,
            r#"{"action": "a", "inputs": [{}], "mode": "schedule", "schedule": {"cron": "* * * * *", "cron": "0 8 * * 1"}}"#,
            r#"{"request_id": "r", "request_id": "r", "action": "a", "inputs": [{}]}"#,
        ] {
            assert_eq!(twice(raw).class, RejectClass::DuplicateKey, "{raw}");
        }
    }

    #[test]
    fn a_bad_cron_is_rejected() {
        let bad = |cron: &str| {
            class_of(
                json!({"action": "a", "inputs": [{}], "mode": "schedule", "schedule": {"cron": cron}}),
            )
        };
        assert_eq!(bad("every monday"), RejectClass::InvalidSchedule);
        assert_eq!(bad("0 0 8 * * 1"), RejectClass::InvalidSchedule, "6 fields");
        assert_eq!(bad("61 * * * *"), RejectClass::InvalidSchedule);
    }

    #[test]
    fn schedule_mode_needs_cron_or_schedule_at_and_a_real_timezone() {
        let s = |schedule: Value| {
            class_of(
                json!({"action": "a", "inputs": [{}], "mode": "schedule", "schedule": schedule}),
            )
        };
        assert_eq!(s(json!({})), RejectClass::InvalidSchedule);
        assert_eq!(
            s(json!({"cron": "0 8 * * 1", "timezone": "Mars/Olympus"})),
            RejectClass::InvalidSchedule
        );
        assert_eq!(
            s(json!({"schedule_at": "tomorrow"})),
            RejectClass::InvalidSchedule
        );
        assert_eq!(
            class_of(json!({"action": "a", "inputs": [{}], "mode": "schedule"})),
            RejectClass::InvalidSchedule
        );
    }

    #[test]
    fn an_action_that_is_not_a_slug_is_rejected() {
        assert_eq!(
            class_of(json!({"action": "../runs", "inputs": [{}]})),
            RejectClass::InvalidValue
        );
    }

    #[test]
    fn inputs_above_the_limit_become_several_chunks() {
        let inputs: Vec<Value> = (0..250).map(|i| json!({"i": i})).collect();
        let chunks = chunk_inputs(&inputs, 100);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
    }

    #[test]
    fn a_rejected_record_keeps_its_request_id_and_metadata_when_readable() {
        let ctx = RejectedContext::from_bytes(
            br#"{"request_id": "r9", "mode": "live", "inputs": [], "metadata": {"a": "b"}}"#,
        );
        assert_eq!(ctx.request_id.as_deref(), Some("r9"));
        assert_eq!(ctx.mode, Some(Mode::Live));
        assert_eq!(ctx.metadata.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn a_workflow_request_carries_its_workflow_and_defaults_its_action_to_the_workflow_uid() {
        let r = parse(json!({
            "request_id": "w1", "mode": "workflow", "workflow_uid": "0b9e-wf",
            "inputs": [{"linkedin_profile_url": "u"}],
            "steps": [{"step_uid": "s-1", "accounts": ["a-1"], "parameters": {"k": 1}}],
            "job_name": "Nightly", "delay": 30, "metadata": {"k": "v"}
        }))
        .unwrap();
        assert_eq!(r.mode, Mode::Workflow);
        assert_eq!(r.action, "0b9e-wf");
        let w = r.workflow().unwrap();
        assert_eq!(
            (w.workflow_uid.as_str(), w.job_name.as_deref(), w.delay),
            ("0b9e-wf", Some("Nightly"), Some(30))
        );
        assert_eq!(w.steps.unwrap()[0].accounts, vec!["a-1".to_owned()]);
        let again = parse_json(&serde_json::to_vec(&r).unwrap(), "other").unwrap();
        assert_eq!(
            again, r,
            "the internal requests topic reads it back the same"
        );
    }

    #[test]
    fn workflow_requests_are_checked_field_by_field() {
        let base = || json!({"mode": "workflow", "workflow_uid": "wf-1", "inputs": [{}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let cases: Vec<(&str, Value, RejectClass, &str)> = vec![
            (
                "no workflow_uid",
                json!({"mode": "workflow", "inputs": [{}]}),
                RejectClass::InvalidShape,
                "workflow_uid",
            ),
            (
                "a path in the uid",
                with("workflow_uid", json!("a/b")),
                RejectClass::InvalidValue,
                "workflow_uid",
            ),
            (
                "v4 parameters",
                with("parameters", json!({})),
                RejectClass::InvalidShape,
                "parameters",
            ),
            (
                "a schedule",
                with("schedule", json!({"cron": "* * * * *"})),
                RejectClass::InvalidShape,
                "schedule",
            ),
            (
                "no inputs",
                with("inputs", json!([])),
                RejectClass::EmptyInputs,
                "inputs",
            ),
            (
                "a bad step uid",
                with("steps", json!([{"step_uid": ""}])),
                RejectClass::InvalidValue,
                "steps[0].step_uid",
            ),
            (
                "an unknown step key",
                with("steps", json!([{"step_uid": "s", "x": 1}])),
                RejectClass::InvalidShape,
                "x",
            ),
            (
                "a long job name",
                with("job_name", json!("n".repeat(81))),
                RejectClass::InvalidValue,
                "job_name",
            ),
            (
                "a delay beyond a year",
                with("delay", json!(40_000_000)),
                RejectClass::InvalidValue,
                "delay",
            ),
            (
                "a negative delay",
                with("delay", json!(-1)),
                RejectClass::InvalidShape,
                "delay",
            ),
            (
                "a long request_id",
                with("request_id", json!("r".repeat(65))),
                RejectClass::InvalidValue,
                "request_id",
            ),
        ];
        for (what, value, class, field) in cases {
            let r = parse(value).unwrap_err();
            assert_eq!(r.class, class, "{what}: {}", r.message);
            assert!(r.message.contains(field), "{what}: {}", r.message);
        }
    }

    #[test]
    fn workflow_fields_are_refused_outside_workflow_mode() {
        let r = parse(json!({"action": "a", "inputs": [{}], "workflow_uid": "wf"})).unwrap_err();
        assert_eq!(r.class, RejectClass::InvalidShape);
        assert!(r.message.contains("workflow_uid"), "{}", r.message);
    }
}
