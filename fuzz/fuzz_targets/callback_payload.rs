//! The callback payload decoder (`intake::CallbackPayload`), fed any body an HTTP client can
//! post. It never panics; what it accepts has the shape it promises (object results, an object
//! input, non-empty uids), and the result records the owner splices from its borrowed parts are
//! valid JSON.
#![no_main]

use captain_bridge::domain::{RunResult, RunResultRef};
use captain_bridge::intake::CallbackPayload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::BTreeMap;

fn object(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object())
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = CallbackPayload::parse(data) else {
        return;
    };
    assert!(!payload.run.run_uid.trim().is_empty());
    assert!(!payload.run.batch_uid.trim().is_empty());
    if let Some(input) = payload.input {
        assert!(object(input.get()), "input is an object: {}", input.get());
    }
    let metadata = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    for (index, item) in payload.results.iter().enumerate() {
        assert!(object(item.get()), "results[{index}] is an object");
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let record = RunResultRef {
            result_id: RunResult::result_id(payload.run.run_uid, payload.run.batch_uid, index),
            request_id: "fuzz",
            run_uid: payload.run.run_uid,
            batch_uid: payload.run.batch_uid,
            index,
            action: "linkedin-extract-people",
            input: payload.input,
            custom_data: payload.custom_data,
            result: item,
            received_at: chrono_now(),
            metadata: &metadata,
        };
        let bytes = serde_json::to_vec(&record).expect("a result record serializes");
        let back: Value = serde_json::from_slice(&bytes).expect("a result record is JSON");
        assert_eq!(back["result_id"], Value::String(record.result_id.clone()));
    }
});

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::UNIX_EPOCH
}
