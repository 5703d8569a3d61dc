//! The Avro codec against a real schema registry (Apicurio Registry's Confluent-compatible API,
//! started by scripts/test.sh with scripts/registry.sh) and, for the downstream consumer, a real
//! Kafka broker. Every test uses subjects and topics of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod codec;
mod compatibility;
mod downstream;
mod hostile;
mod outage;

use captain_bridge::domain::{
    Mode, RunResult, RunStatus, RunStatusEvent, StatusError, StatusSource,
};
use serde_json::json;
use std::collections::BTreeMap;

pub fn status_event(request_id: &str) -> RunStatusEvent {
    RunStatusEvent {
        request_id: request_id.into(),
        run_uid: Some("run-1".into()),
        schedule_uid: None,
        chunk: 0,
        action: "linkedin-extract-people".into(),
        mode: Mode::Async,
        status: RunStatus::Failed,
        previous_status: Some(RunStatus::Running),
        error: Some(StatusError {
            label: Some("PLATFORM_ERROR".into()),
            scope: Some("run".into()),
            message: "the platform gave up".into(),
            http_status: Some(502),
        }),
        source: StatusSource::Callback,
        occurred_at: "2026-11-29T06:00:00.5Z".parse().unwrap(),
        metadata: BTreeMap::from([
            ("crm".into(), "42".into()),
            ("team".into(), "growth".into()),
        ]),
        schedule_status: None,
        command: None,
    }
}

pub fn run_result(request_id: &str, index: u32) -> RunResult {
    RunResult {
        result_id: RunResult::result_id("run-1", "batch-1", index),
        request_id: request_id.into(),
        run_uid: "run-1".into(),
        batch_uid: "batch-1".into(),
        index,
        action: "linkedin-extract-people".into(),
        input: Some(
            json!({"linkedin_profile_url": format!("https://www.linkedin.com/in/p{index}")}),
        ),
        custom_data: Some(json!({"crm_id": index})),
        result: json!({
            "full_name": "Ada Lovelace",
            "headline": "Analyst \u{2014} engines",
            "positions": [{"company": "Babbage & Co", "years": 2.5}],
            "open_to_work": false,
        }),
        received_at: "2026-11-29T06:00:01Z".parse().unwrap(),
        metadata: BTreeMap::from([("crm".into(), "42".into())]),
    }
}
