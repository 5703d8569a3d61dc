//! Invalid launch records: each class lands in the dead-letter topic with its reason and origin,
//! gets a REJECTED status, and the valid records around it still go through.

use crate::*;
use captain_testkit::kafka::{produce, producer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_record_class_is_dead_lettered_with_its_reason_and_the_stream_goes_on() {
    let stack = Stack::start("dlq", &fast_sim_config(""), |_| {}).await;
    let bad: Vec<(&str, &str, Vec<u8>)> = vec![
        ("bad-json", "not_json", b"{this is not json".to_vec()),
        ("bad-action", "invalid_shape", br#"{"request_id":"bad-action","inputs":[{}]}"#.to_vec()),
        ("bad-empty", "empty_inputs", br#"{"request_id":"bad-empty","action":"linkedin-extract-people","inputs":[]}"#.to_vec()),
        ("bad-mode", "unknown_mode", br#"{"request_id":"bad-mode","action":"linkedin-extract-people","mode":"turbo","inputs":[{}]}"#.to_vec()),
        ("bad-cron", "invalid_schedule", br#"{"request_id":"bad-cron","action":"linkedin-extract-people","mode":"schedule","inputs":[{}],"schedule":{"cron":"every day"}}"#.to_vec()),
        ("bad-type", "invalid_shape", br#"{"request_id":"bad-type","action":"linkedin-extract-people","inputs":"all of them"}"#.to_vec()),
        ("bad-dup", "duplicate_key", br#"{"request_id":"bad-dup","action":"linkedin-extract-people","inputs":[{"linkedin_profile_url":"u","custom_data":{"row":"1","row":"2"}}]}"#.to_vec()),
    ];
    // Valid requests before, between and after the bad ones.
    let mut records = vec![(
        "good-0".to_owned(),
        serde_json::to_vec(&search_request("good-0", 1, 1)).unwrap(),
    )];
    for (key, _, value) in &bad {
        records.push((key.to_string(), value.clone()));
    }
    records.push((
        "good-1".to_owned(),
        serde_json::to_vec(&search_request("good-1", 1, 1)).unwrap(),
    ));
    let p = producer(&stack.bootstrap).unwrap();
    let records = records.into_iter().map(|(k, v)| (k, Some(v), None));
    produce(&p, &stack.topics.launch_requests, records, 100)
        .await
        .unwrap();

    let mut dlq = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dlq.until(
        Duration::from_secs(60),
        "every bad record dead-lettered",
        |r| r.len() >= bad.len(),
    );
    for (key, class, value) in &bad {
        let rec = dlq
            .records
            .iter()
            .find(|r| r.key.as_deref() == Some(*key))
            .unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert_eq!(
            rec.value.as_deref(),
            Some(value.as_slice()),
            "{key}: original bytes kept"
        );
        assert_eq!(rec.headers["captain.error.class"], *class, "{key}");
        assert!(
            !rec.headers["captain.error.reason"].is_empty(),
            "{key}: reason given"
        );
        assert_eq!(
            rec.headers["captain.source.topic"],
            stack.topics.launch_requests
        );
        assert!(rec.headers["captain.source.partition"]
            .parse::<i32>()
            .is_ok());
        assert!(rec.headers["captain.source.offset"].parse::<i64>().is_ok());
    }
    let reason = &dlq
        .records
        .iter()
        .find(|r| r.key.as_deref() == Some("bad-action"))
        .unwrap()
        .headers["captain.error.reason"];
    assert!(
        reason.contains("action"),
        "the reason names the missing field: {reason}"
    );
    let reason = &dlq
        .records
        .iter()
        .find(|r| r.key.as_deref() == Some("bad-dup"))
        .unwrap()
        .headers["captain.error.reason"];
    assert_eq!(
        reason, r#"key "row" is given twice in inputs[0].custom_data"#,
        "the reason names the key and where it is"
    );

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(
        Duration::from_secs(60),
        "REJECTED for each bad record and SUCCEEDED for the good ones",
        |r| {
            final_status_count(r, "REJECTED") >= bad.len()
                && final_status_count(r, "SUCCEEDED") >= 2
        },
    );
    let by = statuses_by_request(&status.records);
    for id in [
        "bad-action",
        "bad-empty",
        "bad-mode",
        "bad-cron",
        "bad-type",
        "bad-dup",
    ] {
        let events = &by[id];
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        assert_eq!(events[0]["status"], "REJECTED");
        assert_eq!(events[0]["source"], "bridge");
        assert!(events[0]["error"]["message"].is_string());
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"captain_bridge_launch_requests_total{outcome="rejected"} 7"#),
        "{metrics}"
    );
}
