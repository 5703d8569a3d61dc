//! Defect 4: one callback used to take gigabytes. A body under the 8 MiB limit with 2,700,000
//! empty results was answered 200 after 31.9 s, published 2.7 M records and left the bridge at
//! 3,924 MiB. Now a callback beyond `callbacks.max_results` is refused with 413 and a reason,
//! and one at the limit is taken with the bridge's memory sampled: bounded while it is
//! published, and returned after. (A publish slower than the deadline is answered 503: see
//! `outage`, Kafka frozen during a callback.)

use crate::probe::*;
use crate::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_beyond_max_results_gets_413_and_one_at_the_limit_is_published_in_bounded_memory(
) {
    let stack = Stack::start("huge", &idle_sim(), |_| {}).await;
    let limit = stack.bridge.settings().callbacks.max_results;
    let max_body = stack.bridge.settings().callbacks.max_body_bytes;
    let run_uid = created_run(&stack, "huge-1").await;
    let pid = stack.bridge.pid().unwrap();
    let url = stack.bridge.callback_url(&token("huge-1"));
    let http = reqwest::Client::new();
    // Let the bridge settle after start-up and the submission before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_mib(pid);

    // The defect's body: 2,700,000 empty results, just under the body limit.
    let empties = 2_700_000;
    let mut body = format!(
        r#"{{"run":{{"run_uid":"{run_uid}","batch_uid":"b-empty","status":"RUNNING"}},"results":["#
    )
    .into_bytes();
    for i in 0..empties {
        body.extend_from_slice(if i == 0 { b"{}" } else { b",{}" });
    }
    body.extend_from_slice(b"]}");
    assert!(body.len() < max_body, "{} bytes", body.len());
    let sampler = RssSampler::start(pid);
    let sent = Instant::now();
    let (code, text) = post(&http, &url, body).await;
    let refused_in = sent.elapsed();
    let peak_refused = sampler.peak();
    drop(sampler);
    assert_eq!(code, 413, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["error"], "too_many_results");
    assert_eq!(
        answer["message"],
        format!("{empties} result items, above the limit of {limit}")
    );

    // At the limit: `limit` results of ~780 bytes, a body of about 7.5 MiB.
    let body = callback_body(&run_uid, "b-full", "RUNNING", limit, 780);
    assert!(body.len() < max_body, "{} bytes", body.len());
    let body_mib = body.len() as f64 / 1048576.0;
    let sampler = RssSampler::start(pid);
    let sent = Instant::now();
    let (code, text) = post(&http, &url, body).await;
    let acked_in = sent.elapsed();
    assert_eq!(code, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer, json!({"status": "accepted", "results": limit}));
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(60), "every result published", |r| {
        r.len() >= limit
    });
    let published_in = sent.elapsed();
    let peak = sampler.peak();
    drop(sampler);
    results.poll_for(Duration::from_millis(500));
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), limit, "every result");
    assert!(counts.values().all(|&n| n == 1), "each once");

    // Memory goes back: jemalloc returns freed pages in the background.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = rss_mib(pid);
    while after > baseline + 48.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_mib(pid);
    }
    eprintln!(
        "e2e huge: {empties} empty results refused with 413 in {:.2} s (peak RSS {peak_refused:.0} \
         MiB over a {baseline:.0} MiB baseline); {limit} results in {body_mib:.1} MiB acknowledged \
         in {:.2} s, published in {:.2} s, peak RSS {peak:.0} MiB, {after:.0} MiB after",
        refused_in.as_secs_f64(),
        acked_in.as_secs_f64(),
        published_in.as_secs_f64()
    );
    assert!(
        peak_refused < baseline + 160.0,
        "refusing the 2.7 M-result body took {peak_refused:.0} MiB (baseline {baseline:.0})"
    );
    assert!(
        peak < baseline + 256.0,
        "publishing {limit} results took {peak:.0} MiB (baseline {baseline:.0})"
    );
    assert!(
        after <= baseline + 48.0,
        "memory not returned: {after:.0} MiB after, {baseline:.0} MiB before"
    );
}
