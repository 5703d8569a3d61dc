//! Bodies of the Captain Data **v3** API (workflows, jobs, webhooks), the v3 job statuses and
//! their mapping onto the bridge's [`RunStatus`], and the webhook payload with strict
//! validation. There is no machine-readable v3 spec: shapes follow the v3 docs, the v3 API
//! reference's examples and the activepieces client (shared/captaindata-api.md §13).
//! Requests omit absent options; responses are lenient (unknown fields ignored, unknown
//! statuses kept verbatim) so that an additive API change never breaks a launched job.

use crate::domain::RunStatus;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// Body of `POST /workflows/{workflow_uid}/schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3ScheduleBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The workflow's inputs: open JSON objects (a `meta` object travels to the result rows).
    pub inputs: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<V3Step>>,
    /// Seconds before the job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
}

/// One step's settings in a launch body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3Step {
    pub step_uid: String,
    /// Account (integration user) uids the step may use.
    pub accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts_rotation_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// A workflow as `GET /workflows` and the launch answer show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3Workflow {
    pub uid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// The answer to a launch: `{"workflow": {…}, "message": "Bot successfully scheduled.",
/// "job_uid": "…"}` (v3 API reference, "Launch a workflow").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3ScheduleAccepted {
    /// The new job; the only field the bridge cannot do without.
    pub job_uid: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub workflow: Option<V3Workflow>,
}

/// A v3 job status, with the raw spelling always available ([`V3JobStatus::as_str`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum V3JobStatus {
    Pending,
    Running,
    /// Success, as the support article spells it.
    Finished,
    /// Success, as the quickstart spells it.
    Completed,
    /// Functional error on some inputs; results may exist for the others; retry possible.
    Warning,
    /// Technical error.
    Shutdown,
    /// Integration error (cookies, credits, API keys); waits for a retry.
    Paused,
    /// Stopped by the user.
    Stopped,
    /// A status this client does not know, kept verbatim.
    Other(String),
}

impl V3JobStatus {
    /// Parses a wire status (case-insensitive; unknown values are kept).
    pub fn parse(raw: &str) -> Self {
        match raw.trim().to_ascii_lowercase().as_str() {
            "pending" => V3JobStatus::Pending,
            "running" => V3JobStatus::Running,
            "finished" => V3JobStatus::Finished,
            "completed" => V3JobStatus::Completed,
            "warning" => V3JobStatus::Warning,
            "shutdown" => V3JobStatus::Shutdown,
            "paused" => V3JobStatus::Paused,
            "stopped" => V3JobStatus::Stopped,
            _ => V3JobStatus::Other(raw.to_owned()),
        }
    }

    /// The raw v3 spelling (the bridge carries it beside the mapped status).
    pub fn as_str(&self) -> &str {
        match self {
            V3JobStatus::Pending => "pending",
            V3JobStatus::Running => "running",
            V3JobStatus::Finished => "finished",
            V3JobStatus::Completed => "completed",
            V3JobStatus::Warning => "warning",
            V3JobStatus::Shutdown => "shutdown",
            V3JobStatus::Paused => "paused",
            V3JobStatus::Stopped => "stopped",
            V3JobStatus::Other(raw) => raw,
        }
    }

    /// Whether the mapping of this status depends on results existing (`warning`).
    pub fn needs_results_check(&self) -> bool {
        *self == V3JobStatus::Warning
    }

    /// The bridge's status for this v3 status (§13's proposal): pending→QUEUED,
    /// running→RUNNING, finished/completed→SUCCEEDED, warning→PARTIAL_SUCCEEDED when some
    /// results exist else FAILED, shutdown→FAILED, stopped→STOPPED, paused→BLOCKED. `None`
    /// for an unknown status: the caller keeps the run as it is and looks again later.
    pub fn run_status(&self, results_exist: bool) -> Option<RunStatus> {
        Some(match self {
            V3JobStatus::Pending => RunStatus::Queued,
            V3JobStatus::Running => RunStatus::Running,
            V3JobStatus::Finished | V3JobStatus::Completed => RunStatus::Succeeded,
            V3JobStatus::Warning if results_exist => RunStatus::PartialSucceeded,
            V3JobStatus::Warning | V3JobStatus::Shutdown => RunStatus::Failed,
            V3JobStatus::Stopped => RunStatus::Stopped,
            V3JobStatus::Paused => RunStatus::Blocked,
            V3JobStatus::Other(_) => return None,
        })
    }
}

impl fmt::Display for V3JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for V3JobStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for V3JobStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(V3JobStatus::parse(&String::deserialize(d)?))
    }
}

/// A job (`GET /jobs/{job_uid}`, `GET /workflows/{uid}/jobs`). The status and uid are the only
/// fields relied on; the others are kept when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3Job {
    pub uid: String,
    pub status: V3JobStatus,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub workflow_uid: Option<String>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// "A message to help debug issues and retry Runs" (v3 workflow-logic guide).
    #[serde(default)]
    pub error_message: Option<String>,
}

/// One page of `GET /jobs/{job_uid}/results`: `{"results": [row…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3ResultsBody {
    pub results: Vec<Value>,
}

/// One page of `GET /jobs/{job_uid}/inputs`: `{"inputs": [item…]}` (item shape undocumented).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V3InputsBody {
    pub inputs: Vec<Value>,
}

/// The answer to retry / cancel / webhook retry. Undocumented: every field is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct V3Ack {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub job_uid: Option<String>,
    #[serde(default)]
    pub status: Option<V3JobStatus>,
    #[serde(default)]
    pub webhook_uid: Option<String>,
}

/// The webhook events of a v3 workflow, as far as a payload tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum V3WebhookKind {
    /// "Created": the job started.
    Created,
    /// "Succeeded": at least one input succeeded (`"message": "Job successfully finished."`).
    Succeeded,
    /// "Failed": every input failed, or the job erred (`error` is set).
    Failed,
    /// A message this client does not recognize, without an error.
    Unknown,
}

/// A validated v3 webhook body (dc:/v3/webhooks/create-manage). The webhook carries no
/// results: they are fetched with `GET /jobs/{job_uid}/results`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3WebhookPayload {
    /// This delivery's uid.
    pub uid: String,
    pub job_uid: String,
    pub message: String,
    pub project_uid: String,
    pub error: Option<String>,
    pub recipe_ref: Option<String>,
    pub workflow_uid: String,
    pub workflow_name: Option<String>,
    pub job_name: Option<String>,
}

/// Why a webhook body was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V3WebhookError {
    /// Not JSON at all.
    #[error("body is not valid json: {0}")]
    Json(String),
    /// JSON, but a field is missing or of the wrong kind.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Well formed, but for another project than the bridge's.
    #[error("project_uid: {got:?} is not the configured project")]
    OtherProject { got: String },
}

impl V3WebhookError {
    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        V3WebhookError::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// A webhook refusal is about the body: sending the same body again cannot help.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

impl V3WebhookPayload {
    /// Parses and validates a webhook body.
    pub fn from_slice(body: &[u8]) -> Result<Self, V3WebhookError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| V3WebhookError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Validates an already parsed webhook body. The four identifiers and `message` are
    /// required; `error`, `recipe_ref`, `workflow_name` and `job_name` may be null or absent.
    /// Unknown keys are tolerated: refusing a webhook for an added field would lose the job.
    pub fn from_value(value: Value) -> Result<Self, V3WebhookError> {
        let Value::Object(mut root) = value else {
            return Err(V3WebhookError::invalid("body", "must be a json object"));
        };
        Ok(Self {
            uid: required_id(&mut root, "uid")?,
            job_uid: required_id(&mut root, "job_uid")?,
            message: match root.remove("message") {
                None | Some(Value::Null) => {
                    return Err(V3WebhookError::invalid("message", "is required"))
                }
                Some(Value::String(s)) => s,
                Some(_) => return Err(V3WebhookError::invalid("message", "must be a string")),
            },
            project_uid: required_id(&mut root, "project_uid")?,
            error: optional_string(&mut root, "error")?,
            recipe_ref: optional_string(&mut root, "recipe_ref")?,
            workflow_uid: required_id(&mut root, "workflow_uid")?,
            workflow_name: optional_string(&mut root, "workflow_name")?,
            job_name: optional_string(&mut root, "job_name")?,
        })
    }

    /// Refuses a payload of another project.
    pub fn check_project(&self, project_uid: &str) -> Result<(), V3WebhookError> {
        if self.project_uid == project_uid {
            Ok(())
        } else {
            Err(V3WebhookError::OtherProject {
                got: self.project_uid.clone(),
            })
        }
    }

    /// Which event this probably is. The payload names no event: `error` set means Failed,
    /// otherwise the documented messages tell Succeeded; Created's message is not documented,
    /// so anything mentioning "created" or "started" counts as Created. A heuristic: the job's
    /// status (`GET /jobs/{job_uid}`) is the truth.
    pub fn kind(&self) -> V3WebhookKind {
        let message = self.message.to_ascii_lowercase();
        if self.error.as_deref().is_some_and(|e| !e.trim().is_empty()) || message.contains("failed")
        {
            V3WebhookKind::Failed
        } else if message.contains("finished") || message.contains("succeeded") {
            V3WebhookKind::Succeeded
        } else if message.contains("created") || message.contains("started") {
            V3WebhookKind::Created
        } else {
            V3WebhookKind::Unknown
        }
    }
}

fn required_id(root: &mut Map<String, Value>, key: &str) -> Result<String, V3WebhookError> {
    match root.remove(key) {
        None | Some(Value::Null) => Err(V3WebhookError::invalid(key, "is required")),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(V3WebhookError::invalid(key, "must not be empty"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(V3WebhookError::invalid(key, "must be a string")),
    }
}

fn optional_string(
    root: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<String>, V3WebhookError> {
    match root.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(V3WebhookError::invalid(key, "must be a string or null")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn succeeded() -> Value {
        json!({"uid": "eaab7f39", "job_uid": "b9a260de", "message": "Job successfully finished.",
               "project_uid": "p-1", "error": null, "recipe_ref": "b9a260de",
               "workflow_uid": "edcee5c", "workflow_name": "Extract LinkedIn Messages",
               "job_name": "Automated Run"})
    }

    #[test]
    fn the_documented_payloads_parse_and_tell_their_event() {
        let ok = V3WebhookPayload::from_value(succeeded()).unwrap();
        assert_eq!(ok.job_uid, "b9a260de");
        assert_eq!(ok.kind(), V3WebhookKind::Succeeded);
        let mut failed = succeeded();
        failed["message"] = json!("Job failed.");
        failed["error"] =
            json!("Error while completing action: cannot re-send connection request yet.");
        let failed = V3WebhookPayload::from_value(failed).unwrap();
        assert_eq!(failed.kind(), V3WebhookKind::Failed);
        let mut created = succeeded();
        created["message"] = json!("Job successfully started.");
        created["extra_key_added_later"] = json!(1);
        assert_eq!(
            V3WebhookPayload::from_value(created).unwrap().kind(),
            V3WebhookKind::Created
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            ("uid", json!(null), "uid: is required"),
            ("job_uid", json!(""), "job_uid: must not be empty"),
            ("job_uid", json!(7), "job_uid: must be a string"),
            ("project_uid", json!(null), "project_uid: is required"),
            ("workflow_uid", json!([]), "workflow_uid: must be a string"),
            ("message", json!(null), "message: is required"),
            ("message", json!({}), "message: must be a string"),
            ("error", json!({"m": 1}), "error: must be a string or null"),
            ("job_name", json!(3), "job_name: must be a string or null"),
        ];
        for (field, value, expected) in cases {
            let mut body = succeeded();
            body[field] = value;
            let err = V3WebhookPayload::from_value(body).unwrap_err();
            assert_eq!(err.to_string(), expected);
            assert!(!err.is_retriable());
        }
        let mut absent = succeeded();
        absent.as_object_mut().unwrap().remove("workflow_uid");
        assert_eq!(
            V3WebhookPayload::from_value(absent)
                .unwrap_err()
                .to_string(),
            "workflow_uid: is required"
        );
        assert!(matches!(
            V3WebhookPayload::from_slice(b"{oops"),
            Err(V3WebhookError::Json(_))
        ));
        assert_eq!(
            V3WebhookPayload::from_value(json!([1]))
                .unwrap_err()
                .to_string(),
            "body: must be a json object"
        );
    }

    #[test]
    fn a_payload_of_another_project_is_refused() {
        let p = V3WebhookPayload::from_value(succeeded()).unwrap();
        assert!(p.check_project("p-1").is_ok());
        assert_eq!(
            p.check_project("p-2").unwrap_err().to_string(),
            "project_uid: \"p-1\" is not the configured project"
        );
    }

    #[test]
    fn v3_statuses_map_onto_run_statuses_as_section_13_proposes() {
        use RunStatus::*;
        let table = [
            ("pending", false, Some(Queued)),
            ("running", false, Some(Running)),
            ("finished", false, Some(Succeeded)),
            ("completed", false, Some(Succeeded)),
            ("warning", true, Some(PartialSucceeded)),
            ("warning", false, Some(Failed)),
            ("shutdown", true, Some(Failed)),
            ("stopped", false, Some(Stopped)),
            ("paused", false, Some(Blocked)),
            ("archived", false, None),
        ];
        for (raw, results, expected) in table {
            let status = V3JobStatus::parse(raw);
            assert_eq!(status.run_status(results), expected, "{raw}");
            assert_eq!(status.as_str(), raw, "the raw status is kept");
        }
        assert_eq!(V3JobStatus::parse("FINISHED"), V3JobStatus::Finished);
        assert!(V3JobStatus::Warning.needs_results_check());
    }

    #[test]
    fn a_job_parses_leniently_and_keeps_an_unknown_status() {
        let job: V3Job = serde_json::from_value(json!({
            "uid": "j-1", "status": "archived", "name": "n", "unexpected": true
        }))
        .unwrap();
        assert_eq!(job.status, V3JobStatus::Other("archived".into()));
        assert_eq!(
            serde_json::to_value(&job.status).unwrap(),
            json!("archived")
        );
    }

    #[test]
    fn a_schedule_body_omits_what_is_absent() {
        let body = V3ScheduleBody {
            job_name: None,
            inputs: vec![json!({"linkedin_profile_url": "https://x"})],
            steps: Some(vec![V3Step {
                step_uid: "s".into(),
                accounts: vec!["a".into()],
                accounts_rotation_enabled: None,
                parameters: None,
            }]),
            delay: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"inputs": [{"linkedin_profile_url": "https://x"}],
                   "steps": [{"step_uid": "s", "accounts": ["a"]}]})
        );
    }
}
