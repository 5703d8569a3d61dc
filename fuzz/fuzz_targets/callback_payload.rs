//! The callback payload decoder (`intake::CallbackPayload`), fed any body an HTTP client can
//! post. It never panics; what it accepts has the shape it promises (object results, an object
//! input, non-empty uids), and the result records the owner splices from its borrowed parts are
//! valid JSON.
//!
//! "Valid JSON" is the grammar's (RFC 8259), checked without reading numbers as f64: a result
//! may carry a number no f64 holds (`44E44444`, found by this target), which the bridge passes
//! on verbatim, as it does every value of a result.
#![no_main]

use captain_bridge::domain::{RunResult, RunResultRef};
use captain_bridge::intake::CallbackPayload;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON object, whatever its numbers (raw values are checked against the grammar only).
fn object(text: &str) -> bool {
    serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(text).is_ok()
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
        let back: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(&bytes).expect("a result record is a JSON object");
        let id = back.get("result_id").map(|v| v.get().to_owned());
        assert_eq!(id, serde_json::to_string(&record.result_id).ok());
    }
});

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::UNIX_EPOCH
}
