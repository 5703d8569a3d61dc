//! The body Captain Data posts to a callback URL (`callbacks.onSave` in the OpenAPI document,
//! plus the root `custom_data` the docs describe), parsed field by field so that a refusal names
//! the field and the reason. Unknown top-level keys are tolerated: the platform may add fields,
//! and refusing a callback for that would lose its results (a replay would be refused too).

use crate::domain::{RunStatus, StatusError};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which run and batch a callback belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRun {
    pub run_uid: String,
    /// Unique per delivered batch; a replay carries the same one.
    pub batch_uid: String,
    /// One of the ten API statuses (never a bridge-only one).
    pub status: RunStatus,
}

/// A validated callback body.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackPayload {
    pub run: CallbackRun,
    /// The input this batch belongs to (an object), if the platform sent it.
    pub input: Option<Value>,
    /// The input's `custom_data`, copied to the root by the platform (any JSON value).
    pub custom_data: Option<Value>,
    /// The run's or the input's error (the API's error object), as status events carry it.
    pub error: Option<StatusError>,
    /// Number of results the platform says this callback holds (not checked against `results`).
    pub results_count: Option<u64>,
    /// Result items, each a JSON object.
    pub results: Option<Vec<Value>>,
}

/// Why a callback body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all.
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

impl CallbackPayload {
    /// Parses and validates a callback body.
    pub fn from_slice(body: &[u8]) -> Result<Self, PayloadError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Validates an already parsed callback body.
    pub fn from_value(value: Value) -> Result<Self, PayloadError> {
        let Value::Object(mut root) = value else {
            return Err(PayloadError::invalid("body", "must be a json object"));
        };
        let run = parse_run(root.remove("run"))?;
        let input = match non_null(root.remove("input")) {
            None => None,
            Some(v @ Value::Object(_)) => Some(v),
            Some(_) => return Err(PayloadError::invalid("input", "must be an object or null")),
        };
        let custom_data = non_null(root.remove("custom_data"));
        let error = match non_null(root.remove("error")) {
            None => None,
            Some(v @ Value::Object(_)) => Some(
                serde_json::from_value::<WireError>(v)
                    .map_err(|e| PayloadError::invalid("error", e.to_string()))?
                    .into(),
            ),
            Some(_) => return Err(PayloadError::invalid("error", "must be an object or null")),
        };
        let results_count = match non_null(root.remove("results_count")) {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                PayloadError::invalid("results_count", "must be a non-negative integer")
            })?),
        };
        let results = match non_null(root.remove("results")) {
            None => None,
            Some(Value::Array(items)) => {
                if let Some(i) = items.iter().position(|item| !item.is_object()) {
                    return Err(PayloadError::invalid(
                        format!("results[{i}]"),
                        "must be a json object",
                    ));
                }
                Some(items)
            }
            Some(_) => return Err(PayloadError::invalid("results", "must be an array or null")),
        };
        Ok(Self {
            run,
            input,
            custom_data,
            error,
            results_count,
            results,
        })
    }
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

fn non_null(value: Option<Value>) -> Option<Value> {
    value.filter(|v| !v.is_null())
}

fn parse_run(run: Option<Value>) -> Result<CallbackRun, PayloadError> {
    let mut run: Map<String, Value> = match non_null(run) {
        None => return Err(PayloadError::invalid("run", "is required")),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(PayloadError::invalid("run", "must be an object")),
    };
    let run_uid = required_string(&mut run, "run_uid")?;
    let batch_uid = required_string(&mut run, "batch_uid")?;
    let status = required_string(&mut run, "status")?;
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

fn required_string(run: &mut Map<String, Value>, key: &str) -> Result<String, PayloadError> {
    let field = format!("run.{key}");
    match run.remove(key) {
        None | Some(Value::Null) => Err(PayloadError::invalid(field, "is required")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(PayloadError::invalid(field, "must not be empty"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(PayloadError::invalid(field, "must be a string")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

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
        CallbackPayload::from_value(value).unwrap_err().to_string()
    }

    #[test]
    fn a_documented_callback_parses_and_extra_keys_are_tolerated() {
        let p = CallbackPayload::from_value(full()).unwrap();
        assert_eq!(p.run.status, RunStatus::Running);
        assert_eq!(p.run.batch_uid, "b1");
        assert_eq!(p.custom_data, Some(json!({"crm_id": "42"})));
        assert_eq!(p.results.unwrap().len(), 1);
        assert_eq!(p.results_count, Some(1));
    }

    #[test]
    fn the_reduced_form_with_only_run_parses() {
        let p = CallbackPayload::from_value(
            json!({"run": {"run_uid": "r", "batch_uid": "b", "status": "SUCCEEDED"}, "results": null}),
        )
        .unwrap();
        assert_eq!(p.results, None);
        assert_eq!(p.input, None);
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
        v["results"] = json!([{"a": 1}, 3]);
        assert_eq!(refusal(v), "results[1]: must be a json object");
        let mut v = full();
        v["results_count"] = json!(-1);
        assert!(refusal(v).starts_with("results_count:"));
        assert_eq!(refusal(json!([])), "body: must be a json object");
        assert_eq!(refusal(json!({})), "run: is required");
    }

    #[test]
    fn a_callback_error_uses_the_api_error_shape() {
        let mut v = full();
        v["run"]["status"] = json!("FAILED");
        v["error"] = json!({"error_label": "NO_RESULT", "message": "nothing found"});
        let p = CallbackPayload::from_value(v).unwrap();
        assert_eq!(p.error.unwrap().label.as_deref(), Some("NO_RESULT"));
    }

    #[test]
    fn a_body_that_is_not_json_is_a_json_error() {
        assert!(matches!(
            CallbackPayload::from_slice(b"{nope"),
            Err(PayloadError::Json(_))
        ));
    }
}
