//! The launch body of `POST /workflows/{uid}/schedule`, checked field by field so that a 400
//! names the failing path (`inputs[2].linkedin_profile_url`, `steps[0].accounts[1]`, ...).
//! Shape: `{"job_name"?, "inputs": [object…], "steps"?: [{"step_uid", "accounts": [uid…],
//! "accounts_rotation_enabled"?, "parameters"?, "output_column"?}], "delay"?: seconds,
//! "unstructure_meta"?}` (activepieces `launch-workflow.ts`; the v3 API reference example).

use std::collections::HashSet;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::config::V3BehaviourConfig;
use super::Workflow;
use crate::error::ApiError;

/// Longest `delay` accepted (one year, in seconds).
pub const MAX_DELAY_SECS: u64 = 31_536_000;
/// Longest `job_name` accepted.
pub const MAX_JOB_NAME: usize = 255;

const ROOT_KEYS: &[&str] = &[
    "job_name",
    "inputs",
    "steps",
    "delay",
    "unstructure_meta",
    "repeat_option",
];
const STEP_KEYS: &[&str] = &[
    "step_uid",
    "accounts",
    "accounts_rotation_enabled",
    "parameters",
    "output_column",
];

/// A checked launch body.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub job_name: Option<String>,
    pub inputs: Vec<Value>,
    pub steps: Option<Vec<Value>>,
    pub delay_secs: u64,
    pub unstructure_meta: bool,
}

fn input_error(path: impl Into<String>, reason: impl std::fmt::Display) -> ApiError {
    let path = path.into();
    ApiError::invalid_input(format!("{path}: {reason}")).param("field", path)
}

fn param_error(path: impl Into<String>, reason: impl std::fmt::Display) -> ApiError {
    let path = path.into();
    ApiError::invalid_param(format!("{path}: {reason}")).param("field", path)
}

fn unknown_keys(map: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        return Err(param_error(
            path,
            format!("unknown field; expected one of {}", allowed.join(", ")),
        ));
    }
    Ok(())
}

/// Checks a launch body against the workflow it targets.
pub fn launch_request(
    body: &[u8],
    workflow: &Workflow,
    rules: &V3BehaviourConfig,
) -> Result<LaunchRequest, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        return Err(input_error(
            "body",
            "is empty; a launch needs a JSON object with inputs",
        ));
    } else {
        serde_json::from_slice(body)
            .map_err(|e| input_error("body", format!("invalid JSON: {e}")))?
    };
    let Value::Object(root) = value else {
        return Err(input_error("body", "must be a JSON object"));
    };
    if rules.strict_fields {
        unknown_keys(&root, ROOT_KEYS, "")?;
    }
    if root.get("repeat_option").is_some_and(|v| !v.is_null()) {
        return Err(param_error(
            "repeat_option",
            "repeating jobs are not simulated by captain-sim; launch each job instead",
        ));
    }
    let job_name = match root.get("job_name") {
        None | Some(Value::Null) if rules.require_job_name => {
            return Err(param_error("job_name", "is required"))
        }
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(param_error("job_name", "must not be empty"))
        }
        Some(Value::String(s)) if s.chars().count() > MAX_JOB_NAME => {
            return Err(param_error(
                "job_name",
                format!("must be at most {MAX_JOB_NAME} characters"),
            ))
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(param_error("job_name", "must be a string")),
    };
    let inputs = inputs(root.get("inputs"), workflow, rules.max_inputs)?;
    let steps = match root.get("steps") {
        None | Some(Value::Null) if rules.require_steps => {
            return Err(param_error("steps", "is required"))
        }
        None | Some(Value::Null) => None,
        Some(Value::Array(steps)) => {
            check_steps(steps, workflow, rules.strict_fields)?;
            Some(steps.clone())
        }
        Some(_) => return Err(param_error("steps", "must be an array of step objects")),
    };
    let delay_secs = match root.get("delay") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().filter(|d| *d <= MAX_DELAY_SECS).ok_or_else(|| {
            param_error(
                "delay",
                format!(
                    "must be an integer number of seconds between 0 and {MAX_DELAY_SECS}, got {v}"
                ),
            )
        })?,
    };
    let unstructure_meta = match root.get("unstructure_meta") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(param_error("unstructure_meta", "must be a boolean")),
    };
    Ok(LaunchRequest {
        job_name,
        inputs,
        steps,
        delay_secs,
        unstructure_meta,
    })
}

fn inputs(value: Option<&Value>, workflow: &Workflow, max: usize) -> Result<Vec<Value>, ApiError> {
    let items = match value {
        None | Some(Value::Null) => return Err(input_error("inputs", "is required")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(input_error("inputs", "must be an array of objects")),
    };
    if items.is_empty() {
        return Err(input_error("inputs", "must hold at least one input"));
    }
    if items.len() > max {
        return Err(input_error(
            "inputs",
            format!("holds {} inputs; at most {max} are accepted", items.len()),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            return Err(input_error(format!("inputs[{i}]"), "must be an object"));
        };
        if let Some(key) = &workflow.input_key {
            match map.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                Some(Value::String(_)) => {
                    return Err(input_error(
                        format!("inputs[{i}].{key}"),
                        "must not be empty",
                    ))
                }
                None | Some(Value::Null) => {
                    return Err(input_error(
                        format!("inputs[{i}].{key}"),
                        format!("is required by workflow {}", workflow.uid),
                    ))
                }
                Some(_) => {
                    return Err(input_error(
                        format!("inputs[{i}].{key}"),
                        "must be a string",
                    ))
                }
            }
        }
        match map.get("meta") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(input_error(
                    format!("inputs[{i}].meta"),
                    "must be an object",
                ))
            }
        }
    }
    Ok(items.clone())
}

fn check_steps(steps: &[Value], workflow: &Workflow, strict: bool) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let Value::Object(map) = step else {
            return Err(param_error(at, "must be an object"));
        };
        if strict {
            unknown_keys(map, STEP_KEYS, &at)?;
        }
        let step_uid = match map.get("step_uid") {
            None | Some(Value::Null) => {
                return Err(param_error(format!("{at}.step_uid"), "is required"))
            }
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
                param_error(
                    format!("{at}.step_uid"),
                    format!("{s:?} is not a valid UUID"),
                )
            })?,
            Some(_) => return Err(param_error(format!("{at}.step_uid"), "must be a string")),
        };
        if !workflow.steps.contains(&step_uid) {
            return Err(param_error(
                format!("{at}.step_uid"),
                format!("{step_uid} is not a step of workflow {}", workflow.uid),
            ));
        }
        if !seen.insert(step_uid) {
            return Err(param_error(
                format!("{at}.step_uid"),
                format!("{step_uid} is configured twice"),
            ));
        }
        match map.get("accounts") {
            None | Some(Value::Null) => {
                return Err(param_error(format!("{at}.accounts"), "is required"))
            }
            Some(Value::Array(accounts)) => {
                for (j, account) in accounts.iter().enumerate() {
                    let ok = account.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok());
                    if !ok {
                        return Err(param_error(
                            format!("{at}.accounts[{j}]"),
                            format!("{account} is not an account UUID"),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(param_error(
                    format!("{at}.accounts"),
                    "must be an array of account UUIDs",
                ))
            }
        }
        for (key, kind, ok) in [
            (
                "accounts_rotation_enabled",
                "a boolean",
                map.get("accounts_rotation_enabled")
                    .is_none_or(|v| v.is_null() || v.is_boolean()),
            ),
            (
                "parameters",
                "an object",
                map.get("parameters")
                    .is_none_or(|v| v.is_null() || v.is_object()),
            ),
            (
                "output_column",
                "a string",
                map.get("output_column")
                    .is_none_or(|v| v.is_null() || v.is_string()),
            ),
        ] {
            if !ok {
                return Err(param_error(
                    format!("{at}.{key}"),
                    format!("must be {kind}"),
                ));
            }
        }
    }
    Ok(())
}
