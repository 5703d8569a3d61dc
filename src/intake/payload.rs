//! The body Captain Data posts to a callback URL (`callbacks.onSave` in the OpenAPI document,
//! plus the root `custom_data` the docs describe), validated field by field so a refusal names
//! the field and the reason. Parsing borrows from the body: `input`, `custom_data` and every
//! result stay the exact JSON text that arrived, so the owner copies them into result records
//! without building and re-serializing a tree per item. Unknown top-level keys are tolerated
//! (the platform may add fields; refusing would lose results, and a replay would be refused
//! too); a key given twice is refused, since which one was meant is unknowable.

use crate::domain::{RunStatus, StatusError};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Which run and batch a callback belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRun<'a> {
    pub run_uid: &'a str,
    /// Unique per delivered batch; a replay carries the same one.
    pub batch_uid: &'a str,
    /// One of the ten API statuses (never a bridge-only one).
    pub status: RunStatus,
}

/// A validated callback body, borrowing from the bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct CallbackPayload<'a> {
    pub run: CallbackRun<'a>,
    /// The input this batch belongs to (a JSON object), if the platform sent it.
    pub input: Option<&'a RawValue>,
    /// The input's `custom_data`, copied to the root by the platform (any JSON value).
    pub custom_data: Option<&'a RawValue>,
    /// The run's or the input's error, as status events carry it.
    pub error: Option<StatusError>,
    /// Number of results the platform says this callback holds (not checked against `results`).
    pub results_count: Option<u64>,
    /// Result items, each a JSON object, in order.
    pub results: Vec<&'a RawValue>,
}

/// Why a callback body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all (or a key given twice).
    #[error("body is not valid json: {0}")]
    Json(String),
    /// JSON, but a field is missing or of the wrong kind.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl PayloadError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PayloadError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The body's top level; every part borrowed, checked below. Absent and `null` are alike.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    run: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    custom_data: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    results_count: Option<&'a RawValue>,
    #[serde(borrow)]
    results: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireRun<'a> {
    #[serde(borrow)]
    run_uid: Option<&'a RawValue>,
    #[serde(borrow)]
    batch_uid: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
}

/// The API's error object as a callback carries it (`APIError`); other keys are ignored.
#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    error_label: Option<String>,
    /// `input`, `integ`, `param`, `config` per the spec; the docs show others, so any string.
    #[serde(default)]
    error_scope: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status_code: Option<u16>,
}

impl From<WireError> for StatusError {
    fn from(e: WireError) -> Self {
        StatusError {
            label: e.error_label,
            scope: e.error_scope,
            message: e.message.unwrap_or_default(),
            http_status: e.status_code,
        }
    }
}

/// `raw` unless it is JSON `null`.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn starts_with(raw: &RawValue, c: char) -> bool {
    raw.get().starts_with(c)
}

impl<'a> CallbackPayload<'a> {
    /// Parses and validates a callback body.
    pub fn parse(body: &'a [u8]) -> Result<Self, PayloadError> {
        let text =
            std::str::from_utf8(body).map_err(|e| PayloadError::Json(format!("not utf-8: {e}")))?;
        let root: &RawValue =
            serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
        if !starts_with(root, '{') {
            return Err(PayloadError::invalid("body", "must be a json object"));
        }
        let wire: Wire<'a> = serde_json::from_str(root.get()).map_err(|e| {
            // serde names the key in "duplicate field `run`"; every other shape error below
            // names its own field.
            PayloadError::Json(e.to_string())
        })?;
        let run = parse_run(present(wire.run))?;
        let input = match present(wire.input) {
            Some(raw) if !starts_with(raw, '{') => {
                return Err(PayloadError::invalid("input", "must be an object or null"))
            }
            other => other,
        };
        let error = match present(wire.error) {
            None => None,
            Some(raw) if starts_with(raw, '{') => Some(
                serde_json::from_str::<WireError>(raw.get())
                    .map_err(|e| PayloadError::invalid("error", e.to_string()))?
                    .into(),
            ),
            Some(_) => return Err(PayloadError::invalid("error", "must be an object or null")),
        };
        let results_count = match present(wire.results_count) {
            None => None,
            Some(raw) => Some(raw.get().parse::<u64>().map_err(|_| {
                PayloadError::invalid("results_count", "must be a non-negative integer")
            })?),
        };
        let results = match present(wire.results) {
            None => Vec::new(),
            Some(raw) if starts_with(raw, '[') => {
                let items: Vec<&'a RawValue> = serde_json::from_str(raw.get())
                    .map_err(|e| PayloadError::invalid("results", e.to_string()))?;
                if let Some(i) = items.iter().position(|item| !starts_with(item, '{')) {
                    return Err(PayloadError::invalid(
                        format!("results[{i}]"),
                        "must be a json object",
                    ));
                }
                items
            }
            Some(_) => return Err(PayloadError::invalid("results", "must be an array or null")),
        };
        Ok(Self {
            run,
            input,
            custom_data: present(wire.custom_data),
            error,
            results_count,
            results,
        })
    }
}

fn parse_run(run: Option<&RawValue>) -> Result<CallbackRun<'_>, PayloadError> {
    let run = match run {
        None => return Err(PayloadError::invalid("run", "is required")),
        Some(raw) if starts_with(raw, '{') => raw,
        Some(_) => return Err(PayloadError::invalid("run", "must be an object")),
    };
    let wire: WireRun<'_> =
        serde_json::from_str(run.get()).map_err(|e| PayloadError::invalid("run", e.to_string()))?;
    let run_uid = required_string(wire.run_uid, "run_uid")?;
    let batch_uid = required_string(wire.batch_uid, "batch_uid")?;
    let status = required_string(wire.status, "status")?;
    let status = match RunStatus::API.into_iter().find(|s| s.as_str() == status) {
        Some(s) => s,
        None if [
            RunStatus::Rejected,
            RunStatus::SubmitFailed,
            RunStatus::TimedOut,
        ]
        .iter()
        .any(|s| s.as_str() == status) =>
        {
            return Err(PayloadError::invalid(
                "run.status",
                format!("{status} is a bridge-only status, not an api one"),
            ))
        }
        None => {
            return Err(PayloadError::invalid(
                "run.status",
                format!("unknown status {status:?}"),
            ))
        }
    };
    Ok(CallbackRun {
        run_uid,
        batch_uid,
        status,
    })
}

/// A required, non-empty JSON string without escapes, borrowed as is. Escapes would need an
/// owned copy; the platform's uids and statuses never hold any, so one is refused as malformed.
fn required_string<'a>(raw: Option<&'a RawValue>, key: &str) -> Result<&'a str, PayloadError> {
    let field = format!("run.{key}");
    let raw = present(raw).ok_or_else(|| PayloadError::invalid(&field, "is required"))?;
    let text = raw
        .get()
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(|| PayloadError::invalid(&field, "must be a string"))?;
    if text.contains('\\') {
        return Err(PayloadError::invalid(&field, "must not contain escapes"));
    }
    if text.trim().is_empty() {
        return Err(PayloadError::invalid(&field, "must not be empty"));
    }
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn full() -> Value {
        json!({
            "run": {"run_uid": "r1", "batch_uid": "b1", "status": "RUNNING"},
            "input": {"linkedin_profile_url": "https://x"},
            "custom_data": {"crm_id": "42"},
            "error": null,
            "results_count": 1,
            "results": [{"full_name": "Ada"}],
            "added_by_the_platform_later": true
        })
    }

    fn refusal(value: Value) -> String {
        let bytes = serde_json::to_vec(&value).unwrap();
        CallbackPayload::parse(&bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_documented_callback_parses_and_extra_keys_are_tolerated() {
        let bytes = serde_json::to_vec(&full()).unwrap();
        let p = CallbackPayload::parse(&bytes).unwrap();
        assert_eq!(p.run.status, RunStatus::Running);
        assert_eq!(p.run.batch_uid, "b1");
        assert_eq!(p.custom_data.unwrap().get(), r#"{"crm_id":"42"}"#);
        assert_eq!(p.results.len(), 1);
        assert_eq!(p.results_count, Some(1));
        assert!(p.error.is_none());
    }

    #[test]
    fn results_keep_the_exact_text_that_arrived() {
        let body = br#"{"run":{"run_uid":"r","batch_uid":"b","status":"RUNNING"},
            "results":[ {"b": 2,  "a": [1, 2.50]} , {"\u00e9": "\n"} ]}"#;
        let p = CallbackPayload::parse(body).unwrap();
        let texts: Vec<&str> = p.results.iter().map(|r| r.get()).collect();
        assert_eq!(
            texts,
            [r#"{"b": 2,  "a": [1, 2.50]}"#, r#"{"\u00e9": "\n"}"#]
        );
    }

    #[test]
    fn the_reduced_form_with_only_run_parses() {
        let body = br#"{"run": {"run_uid": "r", "batch_uid": "b", "status": "SUCCEEDED"}, "results": null}"#;
        let p = CallbackPayload::parse(body).unwrap();
        assert!(p.results.is_empty());
        assert!(p.input.is_none());
    }

    #[test]
    fn each_refusal_names_its_field() {
        let mut v = full();
        v["run"].as_object_mut().unwrap().remove("batch_uid");
        assert_eq!(refusal(v), "run.batch_uid: is required");
        let mut v = full();
        v["run"]["status"] = json!("TIMED_OUT");
        assert!(refusal(v).starts_with("run.status: TIMED_OUT is a bridge-only status"));
        let mut v = full();
        v["run"]["status"] = json!("DONE");
        assert_eq!(refusal(v), "run.status: unknown status \"DONE\"");
        let mut v = full();
        v["run"]["run_uid"] = json!(7);
        assert_eq!(refusal(v), "run.run_uid: must be a string");
        let mut v = full();
        v["results"] = json!([{"a": 1}, 3]);
        assert_eq!(refusal(v), "results[1]: must be a json object");
        let mut v = full();
        v["results"] = json!({"a": 1});
        assert_eq!(refusal(v), "results: must be an array or null");
        let mut v = full();
        v["input"] = json!("x");
        assert_eq!(refusal(v), "input: must be an object or null");
        let mut v = full();
        v["results_count"] = json!(-1);
        assert!(refusal(v).starts_with("results_count:"));
        assert_eq!(refusal(json!([])), "body: must be a json object");
        assert_eq!(refusal(json!({})), "run: is required");
    }

    #[test]
    fn a_key_given_twice_is_refused_not_guessed() {
        let body = br#"{"run":{"run_uid":"r","batch_uid":"b","status":"RUNNING"},
            "run":{"run_uid":"x","batch_uid":"b","status":"SUCCEEDED"}}"#;
        let err = CallbackPayload::parse(body).unwrap_err().to_string();
        assert!(err.contains("duplicate field `run`"), "{err}");
        let body =
            br#"{"run":{"run_uid":"r","batch_uid":"b","status":"RUNNING","status":"FAILED"}}"#;
        let err = CallbackPayload::parse(body).unwrap_err().to_string();
        assert!(err.contains("duplicate field `status`"), "{err}");
    }

    #[test]
    fn non_json_and_non_utf8_bodies_are_refused() {
        assert!(matches!(
            CallbackPayload::parse(b"{nope"),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            CallbackPayload::parse(b"\xff\xfe"),
            Err(PayloadError::Json(_))
        ));
    }

    #[test]
    fn a_callback_error_becomes_the_status_error() {
        let mut v = full();
        v["run"]["status"] = json!("FAILED");
        v["error"] = json!({"error_label": "NO_RESULT", "error_scope": "input", "message": "nothing found", "status_code": 404, "params": {"n": 1}});
        let bytes = serde_json::to_vec(&v).unwrap();
        let p = CallbackPayload::parse(&bytes).unwrap();
        let e = p.error.unwrap();
        assert_eq!(e.label.as_deref(), Some("NO_RESULT"));
        assert_eq!(e.message, "nothing found");
        assert_eq!(e.http_status, Some(404));
    }
}
