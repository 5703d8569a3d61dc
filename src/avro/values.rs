//! Between the bridge's records and Avro values: the output records (`RunStatusEvent`,
//! `RunResult`) as values of their schema, field by field in schema order, and any decoded
//! Avro record as the JSON shape the bridge's JSON decoders accept (open JSON objects travel
//! as JSON text inside Avro strings and become JSON values again).

use super::contract::{ContractSchema, RecordKind};
use crate::domain::request::{reject, RejectClass};
use crate::domain::strict_json::{self, StrictJsonError};
use crate::domain::{InputError, Rejection, RunResult, RunResultRef, RunStatusEvent, StatusError};
use apache_avro::types::Value;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};

/// A value of the contract that cannot be written (a programming or contract defect, or a
/// number beyond Avro's `int`): the reason names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

/// Positions of enum symbols in one schema, so encoding writes the index the schema gives
/// each symbol rather than one assumed from Rust's declaration order.
#[derive(Debug, Clone)]
pub(crate) struct Symbols {
    name: &'static str,
    symbols: Vec<String>,
}

impl Symbols {
    pub(crate) fn of(schema: &ContractSchema, name: &'static str) -> Result<Self, ValueError> {
        let symbols = schema
            .enum_symbols(name)
            .ok_or_else(|| ValueError(format!("{} has no enum {name}", schema.full_name)))?;
        Ok(Self {
            name,
            symbols: symbols.to_vec(),
        })
    }

    fn value(&self, symbol: &str) -> Result<Value, ValueError> {
        let index = self
            .symbols
            .iter()
            .position(|s| s == symbol)
            .ok_or_else(|| ValueError(format!("{symbol:?} is not a symbol of {}", self.name)))?;
        // At most a few dozen symbols: the index fits.
        Ok(Value::Enum(index as u32, symbol.to_owned()))
    }
}

/// The enum symbols of `RunStatusEvent`.
#[derive(Debug, Clone)]
pub(crate) struct StatusSymbols {
    mode: Symbols,
    status: Symbols,
    source: Symbols,
}

impl StatusSymbols {
    pub(crate) fn of(schema: &ContractSchema) -> Result<Self, ValueError> {
        Ok(Self {
            mode: Symbols::of(schema, "Mode")?,
            status: Symbols::of(schema, "RunStatus")?,
            source: Symbols::of(schema, "StatusSource")?,
        })
    }
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// An optional value of a `["null", X]` union.
fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn int(field: &str, n: u32) -> Result<Value, ValueError> {
    i32::try_from(n)
        .map(Value::Int)
        .map_err(|_| ValueError(format!("{field} = {n} is beyond Avro's int")))
}

fn timestamp(t: &DateTime<Utc>) -> Value {
    // The same text serde writes in the JSON form.
    Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<HashMap<_, _>>(),
    )
}

fn json_text(value: &Json) -> Value {
    Value::String(value.to_string())
}

/// A `RunStatusEvent` as a value of `RunStatusEvent.avsc`.
pub(crate) fn status_value(
    e: &RunStatusEvent,
    symbols: &StatusSymbols,
) -> Result<Value, ValueError> {
    let error = e.error.as_ref().map(status_error);
    let input_errors = e
        .input_errors
        .as_ref()
        .map(|errors| {
            errors
                .iter()
                .map(|InputError { index, error }| {
                    Ok(Value::Record(vec![
                        ("index".into(), int("input_errors.index", *index)?),
                        ("error".into(), status_error(error)),
                    ]))
                })
                .collect::<Result<Vec<_>, ValueError>>()
                .map(Value::Array)
        })
        .transpose()?;
    Ok(Value::Record(vec![
        ("request_id".into(), string(&e.request_id)),
        ("run_uid".into(), optional(e.run_uid.as_deref().map(string))),
        (
            "schedule_uid".into(),
            optional(e.schedule_uid.as_deref().map(string)),
        ),
        ("chunk".into(), int("chunk", e.chunk)?),
        ("action".into(), string(&e.action)),
        ("mode".into(), symbols.mode.value(e.mode.as_str())?),
        ("status".into(), symbols.status.value(e.status.as_str())?),
        (
            "previous_status".into(),
            optional(
                e.previous_status
                    .map(|s| symbols.status.value(s.as_str()))
                    .transpose()?,
            ),
        ),
        ("error".into(), optional(error)),
        ("source".into(), symbols.source.value(e.source.as_str())?),
        ("occurred_at".into(), timestamp(&e.occurred_at)),
        ("metadata".into(), string_map(&e.metadata)),
        ("input_errors".into(), optional(input_errors)),
        (
            "schedule_status".into(),
            optional(e.schedule_status.as_deref().map(string)),
        ),
        (
            "command".into(),
            optional(e.command.as_ref().map(|c| {
                Value::Record(vec![
                    ("command_id".into(), string(&c.command_id)),
                    ("command".into(), string(&c.command)),
                    ("outcome".into(), string(&c.outcome)),
                    ("reason".into(), optional(c.reason.as_deref().map(string))),
                    ("detail".into(), optional(c.detail.as_deref().map(string))),
                ])
            })),
        ),
        (
            "provider_status".into(),
            optional(e.provider_status.as_deref().map(string)),
        ),
    ]))
}

fn status_error(
    StatusError {
        label,
        scope,
        message,
        http_status,
    }: &StatusError,
) -> Value {
    Value::Record(vec![
        ("label".into(), optional(label.as_deref().map(string))),
        ("scope".into(), optional(scope.as_deref().map(string))),
        ("message".into(), string(message)),
        (
            "http_status".into(),
            optional(http_status.map(|s| Value::Int(i32::from(s)))),
        ),
    ])
}

/// A `RunResult` as a value of `RunResult.avsc`; `input`, `custom_data` and `result` become
/// JSON text.
pub(crate) fn result_value(r: &RunResult) -> Result<Value, ValueError> {
    Ok(Value::Record(vec![
        ("result_id".into(), string(&r.result_id)),
        ("request_id".into(), string(&r.request_id)),
        ("run_uid".into(), string(&r.run_uid)),
        ("batch_uid".into(), string(&r.batch_uid)),
        ("index".into(), int("index", r.index)?),
        ("action".into(), string(&r.action)),
        ("input".into(), optional(r.input.as_ref().map(json_text))),
        (
            "custom_data".into(),
            optional(r.custom_data.as_ref().map(json_text)),
        ),
        ("result".into(), json_text(&r.result)),
        ("received_at".into(), timestamp(&r.received_at)),
        ("metadata".into(), string_map(&r.metadata)),
    ]))
}

/// A [`RunResultRef`] as a value of `RunResult.avsc`: its open JSON parts are already JSON text
/// (as they arrived in the callback body), so they are copied, never parsed and written again.
pub(crate) fn result_ref_value(r: &RunResultRef<'_>) -> Result<Value, ValueError> {
    let text = |raw: &serde_json::value::RawValue| Value::String(raw.get().to_owned());
    Ok(Value::Record(vec![
        ("result_id".into(), string(&r.result_id)),
        ("request_id".into(), string(r.request_id)),
        ("run_uid".into(), string(r.run_uid)),
        ("batch_uid".into(), string(r.batch_uid)),
        ("index".into(), int("index", r.index)?),
        ("action".into(), string(r.action)),
        ("input".into(), optional(r.input.map(text))),
        ("custom_data".into(), optional(r.custom_data.map(text))),
        ("result".into(), text(r.result)),
        ("received_at".into(), timestamp(&r.received_at)),
        ("metadata".into(), string_map(r.metadata)),
    ]))
}

/// A decoded record (already resolved to the contract schema of `kind`) as the JSON shape of
/// the same record: the fields of [`RecordKind::json_text_fields`] are parsed back into JSON.
pub(crate) fn to_json(kind: RecordKind, value: Value) -> Result<Json, Rejection> {
    let Value::Record(fields) = value else {
        return Err(reject(
            RejectClass::IncompatibleSchema,
            "the decoded value is not a record",
        ));
    };
    let mut object = serde_json::Map::with_capacity(fields.len());
    for (name, value) in fields {
        let json = if kind.json_text_fields().contains(&name.as_str()) {
            json_text_field(&name, value)?
        } else {
            plain(value)?
        };
        object.insert(name, json);
    }
    Ok(Json::Object(object))
}

fn json_text_field(name: &str, value: Value) -> Result<Json, Rejection> {
    // A key given twice inside the text is as ambiguous there as in a JSON record.
    let parse = |at: String, text: &str| {
        strict_json::from_str(text).map_err(|e| match e {
            StrictJsonError::DuplicateKey { key, path } => reject(
                RejectClass::DuplicateKey,
                format!("{at} holds JSON text in which key {key:?} is given twice in {path}"),
            ),
            StrictJsonError::Syntax(m) => reject(
                RejectClass::InvalidJsonText,
                format!("{at} is not JSON text: {m}"),
            ),
        })
    };
    match unwrap_union(value) {
        Value::Null => Ok(Json::Null),
        Value::String(text) => parse(name.to_owned(), &text),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match unwrap_union(item) {
                Value::String(text) => parse(format!("{name}[{i}]"), &text),
                other => plain(other),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array),
        other => plain(other),
    }
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

/// Avro → JSON for the types the contract's reader schemas use. After resolution a value has
/// the reader schema's types, so the last arm is reached only if a reader schema grows a type
/// this function does not map yet.
fn plain(value: Value) -> Result<Json, Rejection> {
    Ok(match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(n) => Json::from(n),
        Value::Long(n) => Json::from(n),
        Value::Float(x) => {
            serde_json::Number::from_f64(f64::from(x)).map_or(Json::Null, Json::Number)
        }
        Value::Double(x) => serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Union(_, inner) => plain(*inner)?,
        Value::Array(items) => Json::Array(items.into_iter().map(plain).collect::<Result<_, _>>()?),
        Value::Map(map) => Json::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, plain(v)?)))
                .collect::<Result<_, Rejection>>()?,
        ),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, plain(v)?)))
                .collect::<Result<_, Rejection>>()?,
        ),
        other => {
            return Err(reject(
                RejectClass::IncompatibleSchema,
                format!(
                    "an Avro {:?} value has no JSON form here",
                    apache_avro::types::ValueKind::from(&other)
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::avro::contract::Contract;
    use crate::domain::{Mode, RunStatus, StatusSource};
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    pub(crate) fn sample_event() -> RunStatusEvent {
        RunStatusEvent {
            request_id: "r-1".into(),
            run_uid: Some("run-9".into()),
            schedule_uid: None,
            chunk: 2,
            action: "linkedin-extract-people".into(),
            mode: Mode::Schedule,
            status: RunStatus::PartialSucceeded,
            previous_status: Some(RunStatus::Running),
            error: Some(StatusError {
                label: Some("RATE_LIMITED".into()),
                scope: None,
                message: "too many".into(),
                http_status: Some(429),
            }),
            source: StatusSource::Callback,
            occurred_at: "2026-11-29T06:02:32.123456789Z".parse().unwrap(),
            metadata: BTreeMap::from([("crm".into(), "42".into())]),
            provider_status: Some("finished".into()),
            input_errors: None,
            schedule_status: None,
            command: Some(crate::domain::CommandOutcome {
                command_id: "c-1".into(),
                command: "resume_run".into(),
                outcome: "accepted".into(),
                reason: Some("ops ticket 12".into()),
                detail: None,
            }),
        }
    }

    pub(crate) fn sample_result() -> RunResult {
        RunResult {
            result_id: RunResult::result_id("run-9", "b-1", 3),
            request_id: "r-1".into(),
            run_uid: "run-9".into(),
            batch_uid: "b-1".into(),
            index: 3,
            action: "linkedin-extract-people".into(),
            input: Some(json!({"linkedin_profile_url": "https://x/in/a"})),
            custom_data: None,
            result: json!({"full_name": "Ada", "skills": ["rust", 1, null, {"k": 1.5}]}),
            received_at: "2026-11-29T06:02:33Z".parse().unwrap(),
            metadata: BTreeMap::new(),
        }
    }

    fn round_trip(kind: RecordKind, value: &Value) -> Json {
        let schema = &Contract::get().unwrap().schema(kind).schema;
        let mut bytes = Vec::new();
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_ref(&mut bytes, value)
            .unwrap();
        let decoded = GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut bytes.as_slice())
            .unwrap();
        to_json(kind, decoded).unwrap()
    }

    #[test]
    fn a_status_event_in_avro_reads_back_as_its_json_form() {
        let schema = Contract::get().unwrap().schema(RecordKind::RunStatusEvent);
        let symbols = StatusSymbols::of(schema).unwrap();
        for event in [
            sample_event(),
            RunStatusEvent {
                error: None,
                previous_status: None,
                run_uid: None,
                schedule_uid: Some("s-1".into()),
                status: RunStatus::Rejected,
                source: StatusSource::Bridge,
                mode: Mode::Workflow,
                provider_status: None,
                ..sample_event()
            },
            RunStatusEvent {
                run_uid: None,
                status: RunStatus::PartialSucceeded,
                source: StatusSource::Live,
                mode: Mode::Live,
                input_errors: Some(vec![InputError {
                    index: 1,
                    error: StatusError {
                        label: Some("NO_RESULT".into()),
                        scope: Some("integ".into()),
                        message: "nothing".into(),
                        http_status: Some(424),
                    },
                }]),
                ..sample_event()
            },
        ] {
            let value = status_value(&event, &symbols).unwrap();
            assert_eq!(
                round_trip(RecordKind::RunStatusEvent, &value),
                serde_json::to_value(&event).unwrap()
            );
        }
    }

    #[test]
    fn a_run_result_in_avro_reads_back_as_its_json_form() {
        let result = sample_result();
        let value = result_value(&result).unwrap();
        assert_eq!(
            round_trip(RecordKind::RunResult, &value),
            serde_json::to_value(&result).unwrap()
        );
    }

    #[test]
    fn a_run_result_ref_in_avro_reads_back_as_the_json_the_bridge_writes_for_it() {
        let body = r#"{"input": {"linkedin_profile_url": "https://x/in/a"}, "custom_data": null,
                      "result": {"full_name": "Ada", "n": [1, 2.5, null]}}"#;
        #[derive(serde::Deserialize)]
        struct Parts<'a> {
            #[serde(borrow)]
            input: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            custom_data: Option<&'a serde_json::value::RawValue>,
            #[serde(borrow)]
            result: &'a serde_json::value::RawValue,
        }
        let parts: Parts<'_> = serde_json::from_str(body).unwrap();
        let metadata = BTreeMap::from([("crm".to_owned(), "42".to_owned())]);
        let r = RunResultRef {
            result_id: RunResult::result_id("run-9", "b-1", 3),
            request_id: "r-1",
            run_uid: "run-9",
            batch_uid: "b-1",
            index: 3,
            action: "linkedin-extract-people",
            input: parts.input,
            custom_data: parts.custom_data,
            result: parts.result,
            received_at: "2026-11-29T06:02:33.25Z".parse().unwrap(),
            metadata: &metadata,
        };
        let value = result_ref_value(&r).unwrap();
        let json: Json = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(round_trip(RecordKind::RunResult, &value), json);
    }

    #[test]
    fn every_status_source_and_run_status_has_a_symbol_in_the_schema() {
        let schema = Contract::get().unwrap().schema(RecordKind::RunStatusEvent);
        let symbols = StatusSymbols::of(schema).unwrap();
        let statuses = RunStatus::API.into_iter().chain([
            RunStatus::Rejected,
            RunStatus::SubmitFailed,
            RunStatus::TimedOut,
        ]);
        for status in statuses {
            symbols.status.value(status.as_str()).unwrap();
        }
        for source in [
            StatusSource::Submit,
            StatusSource::Callback,
            StatusSource::Poll,
            StatusSource::Bridge,
            StatusSource::Live,
        ] {
            let event = RunStatusEvent {
                source,
                ..sample_event()
            };
            status_value(&event, &symbols).unwrap();
            assert_eq!(
                serde_json::to_value(source).unwrap(),
                Json::String(source.as_str().into())
            );
        }
    }

    #[test]
    fn a_number_beyond_avro_int_is_a_value_error_naming_the_field() {
        let result = RunResult {
            index: u32::MAX,
            ..sample_result()
        };
        let err = result_value(&result).unwrap_err();
        assert!(err.0.starts_with("index = 4294967295"), "{err:?}");
    }

    #[test]
    fn json_text_that_is_not_json_is_rejected_naming_the_item() {
        let value = Value::Record(vec![(
            "inputs".into(),
            Value::Array(vec![
                Value::String("{}".into()),
                Value::String("{nope".into()),
            ]),
        )]);
        let err = to_json(RecordKind::LaunchRequest, value).unwrap_err();
        assert_eq!(err.class, RejectClass::InvalidJsonText);
        assert!(
            err.message.starts_with("inputs[1] is not JSON text"),
            "{}",
            err.message
        );
    }

    #[test]
    fn json_text_naming_a_key_twice_is_rejected_as_a_duplicate_key_naming_it() {
        let value = Value::Record(vec![
            (
                "inputs".into(),
                Value::Array(vec![Value::String(
                    r#"{"custom_data": {"row": "1", "row": "2"}}"#.into(),
                )]),
            ),
            (
                "parameters".into(),
                Value::Union(1, Box::new(Value::String(r#"{"n": 1, "n": 2}"#.into()))),
            ),
        ]);
        let err = to_json(RecordKind::LaunchRequest, value).unwrap_err();
        assert_eq!(err.class, RejectClass::DuplicateKey);
        assert_eq!(
            err.message,
            r#"inputs[0] holds JSON text in which key "row" is given twice in custom_data"#
        );
    }
}
