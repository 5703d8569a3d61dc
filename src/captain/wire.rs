//! Request and response bodies of the Captain Data v4 API, shaped exactly after the official
//! OpenAPI document. Requests are strict (the API rejects unknown keys, so absent options are
//! omitted); responses are lenient (unknown fields ignored, nulls accepted, unknown enum values
//! kept as `Unknown`) so that an additive API change never breaks a submission already accepted.

use crate::domain::RunStatus;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Where Captain Data posts a run's callbacks (`callback` in async and schedule bodies).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackTarget {
    pub url: String,
    /// Extra headers the platform adds to every callback (the bridge's second secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

impl fmt::Debug for CallbackTarget {
    // Header values may carry a shared secret: print their names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Option<Vec<&str>> = self
            .headers
            .as_ref()
            .map(|h| h.keys().map(String::as_str).collect());
        f.debug_struct("CallbackTarget")
            .field("url", &self.url)
            .field("header_names", &names)
            .finish()
    }
}

/// Body of `POST /actions/{action}/run/async`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncRunBody {
    /// 1 to 100,000 action inputs (open JSON objects, each may carry `custom_data`).
    pub inputs: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ids: Option<Vec<String>>,
    /// `direct`, `auto` or `managed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_mode: Option<String>,
    pub callback: CallbackTarget,
}

/// Body of `POST /actions/{action}/run/live`: one input. Live `parameters` never hold
/// `max_results` (the API refuses it; paging is the caller's, see `LivePager`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRunBody {
    /// The one input; `None` for input-less actions (e.g. `linkedin-me`), which have no
    /// `input` key at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ids: Option<Vec<String>>,
    /// `direct`, `auto` or `managed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_mode: Option<String>,
}

/// Body of `POST /actions/{action}/run/schedule`: the async fields plus when to run.
/// The API requires at least one of `cron` and `schedule_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRunBody {
    /// 1 to 100 action inputs.
    pub inputs: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_mode: Option<String>,
    pub callback: CallbackTarget,
    /// POSIX 5-field cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// RFC 3339 date-time of a one-shot run or of the first firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_at: Option<String>,
    /// IANA time zone name; the API defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// The lowercase status of an accepted async run (a different enum from [`RunStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedStatus {
    Pending,
    Running,
    Completed,
    Failed,
    /// A value this client does not know yet.
    #[serde(other)]
    Unknown,
}

/// `ActionAsyncResponse`: the API's answer to an async submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncRunAccepted {
    #[serde(default)]
    pub run_id: Option<i64>,
    /// The run's identifier; the only field the bridge cannot do without.
    pub run_uid: String,
    #[serde(default)]
    pub workspace_uid: Option<String>,
    #[serde(default)]
    pub user_uid: Option<String>,
    #[serde(default)]
    pub action_name: Option<String>,
    #[serde(default)]
    pub status: Option<AcceptedStatus>,
    #[serde(default)]
    pub postponed_until: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub synced_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A schedule's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScheduleStatus {
    Active,
    Cancelled,
    Paused,
    Completed,
    #[serde(other)]
    Unknown,
}

/// `ActionScheduleResponse`: the API's answer to a schedule submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleAccepted {
    pub schedule_uid: String,
    #[serde(default)]
    pub status: Option<ScheduleStatus>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub next_execution_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A schedule object (`GET /schedules/{uid}`, `POST /schedules/{uid}/{action}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub uid: String,
    #[serde(default)]
    pub action_id: Option<i64>,
    #[serde(default)]
    pub action_name: Option<String>,
    #[serde(default)]
    pub user_uid: Option<String>,
    #[serde(default)]
    pub workspace_uid: Option<String>,
    #[serde(default)]
    pub status: Option<ScheduleStatus>,
    #[serde(default)]
    pub postponed_until: Option<String>,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub next_execution_at: Option<String>,
    #[serde(default)]
    pub last_executed_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A run's execution mode (scheduled firings report `ASYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionMode {
    Live,
    Async,
    #[serde(other)]
    Unknown,
}

/// A run's last failure, as reported on the run object (not the [`ApiError`] shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLastError {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The callback recorded on an async run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCallback {
    #[serde(default)]
    pub url: Option<String>,
}

/// A run object (`GET /runs/{run_uid}`, `POST /runs/{run_uid}/resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    #[serde(default)]
    pub id: Option<i64>,
    pub uid: String,
    #[serde(default)]
    pub action_id: Option<i64>,
    #[serde(default)]
    pub action_name: Option<String>,
    #[serde(default)]
    pub retry_count: Option<u32>,
    #[serde(default)]
    pub user_uid: Option<String>,
    #[serde(default)]
    pub workspace_uid: Option<String>,
    #[serde(default)]
    pub execution_mode: Option<ExecutionMode>,
    #[serde(default)]
    pub last_error: Option<RunLastError>,
    #[serde(default)]
    pub callback: Option<RunCallback>,
    /// One of the ten API statuses; `None` when null or a value this client does not know
    /// (a new status must not make every poll of the run fail).
    #[serde(default, deserialize_with = "api_status_or_none")]
    pub status: Option<RunStatus>,
    #[serde(default)]
    pub postponed_until: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub synced_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Delivery status of a callback record (note `SUCCESS`, not `SUCCEEDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallbackDeliveryStatus {
    Pending,
    Running,
    Failed,
    Success,
    #[serde(other)]
    Unknown,
}

impl CallbackDeliveryStatus {
    /// The value used in query filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Failed => "FAILED",
            Self::Success => "SUCCESS",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// A callback delivery record (`GET /runs/callbacks`, replay answer). It does not hold the
/// payload that was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackRecord {
    pub uid: String,
    #[serde(default)]
    pub parent_uid: Option<String>,
    #[serde(default)]
    pub retry_count: Option<u32>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub status: Option<CallbackDeliveryStatus>,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub batch_uid: Option<String>,
    #[serde(default)]
    pub run_uid: Option<String>,
    #[serde(default)]
    pub workspace_uid: Option<String>,
}

/// `APIError`: the body of every 4xx/5xx answer, and the `error` of a callback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub error_label: Option<String>,
    /// `input`, `integ`, `param`, `config` per the spec; the docs show others, so any string.
    #[serde(default)]
    pub error_scope: Option<String>,
    #[serde(default)]
    pub error_ref: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub message: String,
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default, deserialize_with = "lenient_string_map")]
    pub params: Option<BTreeMap<String, String>>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error_label {
            Some(label) => write!(f, "{label}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// `params` is a string map in the spec; a number or boolean slipping in must not turn a whole
/// callback into a parse error, so scalars are kept as their JSON text.
fn lenient_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let raw = Option::<BTreeMap<String, Value>>::deserialize(d)?;
    Ok(raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()
    }))
}

fn api_status_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RunStatus>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    Ok(raw.and_then(|s| RunStatus::API.into_iter().find(|st| st.as_str() == s)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_async_body_omits_every_absent_option() {
        let body = AsyncRunBody {
            inputs: vec![json!({"linkedin_profile_url": "https://x"})],
            parameters: None,
            identity_ids: None,
            identity_mode: None,
            callback: CallbackTarget {
                url: "https://h/cb".into(),
                headers: None,
            },
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            json!({"inputs": [{"linkedin_profile_url": "https://x"}], "callback": {"url": "https://h/cb"}})
        );
    }

    #[test]
    fn an_accepted_async_run_tolerates_nulls_unknown_fields_and_new_statuses() {
        let v: AsyncRunAccepted = serde_json::from_value(json!({
            "run_id": 1, "run_uid": "r", "workspace_uid": null, "status": "paused",
            "postponed_until": null, "brand_new_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(v.run_uid, "r");
        assert_eq!(v.status, Some(AcceptedStatus::Unknown));
        assert_eq!(v.workspace_uid, None);
    }

    #[test]
    fn a_run_with_an_unknown_status_parses_with_no_status() {
        let run: Run = serde_json::from_value(json!({"uid": "u", "status": "EXPLODED"})).unwrap();
        assert_eq!(run.status, None);
        let run: Run = serde_json::from_value(json!({"uid": "u", "status": "PARTIAL_SUCCEEDED",
            "last_error": {"label": "L", "message": "m"}, "execution_mode": "ASYNC"}))
        .unwrap();
        assert_eq!(run.status, Some(RunStatus::PartialSucceeded));
        assert_eq!(run.execution_mode, Some(ExecutionMode::Async));
    }

    #[test]
    fn a_run_never_reports_a_bridge_only_status() {
        let run: Run = serde_json::from_value(json!({"uid": "u", "status": "TIMED_OUT"})).unwrap();
        assert_eq!(run.status, None);
    }

    #[test]
    fn an_api_error_parses_with_a_missing_message_and_scalar_params() {
        let e: ApiError = serde_json::from_value(json!({
            "error_label": "X", "error_scope": "auth", "message": null, "params": {"n": 3}
        }))
        .unwrap();
        assert_eq!(e.message, "");
        assert_eq!(e.error_scope.as_deref(), Some("auth"));
        assert_eq!(e.params.unwrap().get("n").map(String::as_str), Some("3"));
    }

    #[test]
    fn the_debug_of_a_callback_target_hides_header_values() {
        let t = CallbackTarget {
            url: "https://h/cb".into(),
            headers: Some(BTreeMap::from([(
                "X-Secret".into(),
                "hunter2hunter2".into(),
            )])),
        };
        let dbg = format!("{t:?}");
        assert!(dbg.contains("X-Secret"));
        assert!(!dbg.contains("hunter2"));
    }
}
