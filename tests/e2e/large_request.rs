//! The 100,001-input request: split into chunks of 100,000 and 1 (the API's per-run limit), and
//! the 100,000-input chunk used to be refused by captain-sim with 413: axum's 2 MB default body
//! limit, which is no limit of the API's (its documents give 1–100,000 inputs per async run and
//! no byte limit). The simulator now takes bodies up to `limits.max_body_bytes` (64 MiB); the
//! bridge's largest body is bounded by its largest launch request (`kafka.max_record_bytes`,
//! 10 MiB by default), so the two agree: both chunks are submitted.

use crate::probe::*;
use crate::*;
use captain_testkit::kafka::{alter_topic_config, produce};
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_100001_inputs_becomes_two_runs_of_100000_and_1_both_submitted() {
    let stack = Stack::start("big-request", &idle_sim(), |_| {}).await;
    let inputs: Vec<Value> = (0..100_001)
        .map(|i| json!({"linkedin_profile_url": format!("https://www.linkedin.com/in/p-{i:06}")}))
        .collect();
    let request = json!({
        "request_id": "big-1",
        "action": "linkedin-extract-people",
        "inputs": inputs,
    });
    let payload = serde_json::to_vec(&request).unwrap();
    let mib = payload.len() as f64 / 1048576.0;
    assert!(mib > 4.0, "well above axum's 2 MB default: {mib:.1} MiB");
    alter_topic_config(
        &stack.bootstrap,
        &stack.topics.launch_requests,
        "max.message.bytes",
        "16777216",
    )
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap)
        .set("message.max.bytes", "16777216")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let started = Instant::now();
    produce(
        &producer,
        &stack.topics.launch_requests,
        [("big-1".to_owned(), Some(payload), None)],
        1,
    )
    .await
    .unwrap();

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "both chunks answered", |r| {
        r.iter()
            .filter(|r| {
                matches!(
                    r.json()["status"].as_str(),
                    Some("CREATED" | "SUBMIT_FAILED")
                )
            })
            .count()
            >= 2
    });
    let events: Vec<Value> = status.records.iter().map(Read::json).collect();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "SUBMIT_FAILED")
        .collect();
    assert!(failed.is_empty(), "a chunk was refused: {failed:#?}");
    let chunks: HashSet<u64> = events
        .iter()
        .filter(|e| e["status"] == "CREATED")
        .map(|e| e["chunk"].as_u64().unwrap())
        .collect();
    assert_eq!(chunks, HashSet::from([0, 1]), "{events:#?}");
    let stats = stack.sim_stats().await;
    assert_eq!(stats["runs_created"], 2, "{stats}");
    eprintln!(
        "e2e big request: 100,001 inputs ({mib:.1} MiB) submitted as runs of 100,000 and 1 in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
