//! Kafka unavailable while a callback arrives: the bridge answers 503 with `Retry-After` (the
//! callback is not durable, so it must not be acknowledged), and the redelivered callback is
//! published once Kafka is back.

use crate::*;
use captain_bridge::token::{CallbackClaims, TokenKeys};
use captain_testkit::kafka::OwnBroker;
use captain_testkit::CALLBACK_KEYS;
use std::time::{Duration, Instant};

fn callback_body(run_uid: &str, batch_uid: &str, status: &str, name: &str) -> Value {
    json!({
        "run": {"run_uid": run_uid, "batch_uid": batch_uid, "status": status},
        "input": {"linkedin_people_search_url": "https://www.linkedin.com/search/results/people/?keywords=outage-0"},
        "custom_data": {"row": "0"},
        "error": null,
        "results_count": 1,
        "results": [{"full_name": name}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_arriving_while_kafka_is_frozen_gets_503_and_is_published_once_redelivered() {
    // Declared first, dropped last: the bridge and the simulator stop before their broker.
    let broker =
        OwnBroker::start(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), "outage").unwrap();
    // The run stays CREATED: no callback from the simulator interferes with ours.
    let sim = fast_sim_config("").replace("queued_after_ms = 10", "queued_after_ms = 600000");
    let stack = Stack::start_on(broker.bootstrap.clone(), "outage", &sim, |_| {}).await;
    stack.produce(&[search_request("outage-1", 1, 1)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "the run CREATED", |r| {
        final_status_count(r, "CREATED") >= 1
    });
    let run_uid = status.records[0].json()["run_uid"]
        .as_str()
        .expect("run_uid on CREATED")
        .to_owned();

    let keys = TokenKeys::from_config(CALLBACK_KEYS, "k2").expect("callback keys");
    let token = keys.sign(&CallbackClaims {
        request_id: "outage-1".into(),
        chunk: 0,
        expires_at: None,
    });
    let url = stack.bridge.callback_url(&token);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let batch_uid = uuid::Uuid::new_v4().to_string();
    let body = callback_body(&run_uid, &batch_uid, "RUNNING", "during the outage");

    broker.freeze().unwrap();
    let frozen = Instant::now();
    let first = http.post(&url).json(&body).send().await.expect("POST");
    let answered_in = frozen.elapsed();
    let first_status = first.status();
    let retry_after = first
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let first_text = first.text().await.unwrap_or_default();
    broker.thaw().unwrap();
    let thawed = Instant::now();
    assert_eq!(
        first_status.as_u16(),
        503,
        "a callback Kafka cannot take is not acknowledged: {first_text}"
    );
    let retry_after: u64 = retry_after
        .expect("a 503 carries Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    assert!(
        answered_in < Duration::from_secs(10),
        "answered within the ack timeout (3 s) plus slack, not hung: {answered_in:?}"
    );

    // The platform's (or the reconciler's) redelivery: the same bytes, until it is taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused_after_thaw = 0;
    loop {
        let r = http.post(&url).json(&body).send().await.expect("POST");
        if r.status().is_success() {
            break;
        }
        assert_eq!(r.status().as_u16(), 503, "{}", r.text().await.unwrap());
        refused_after_thaw += 1;
        assert!(
            Instant::now() < deadline,
            "still 503 30 s after Kafka came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let accepted_after = thawed.elapsed();

    let result_id = format!("{run_uid}:{batch_uid}:0");
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "the redelivered result", |r| {
        result_id_counts(r).contains_key(&result_id)
    });
    // A record of the refused attempt may still be in the producer's queue: look a while longer.
    results.poll_for(Duration::from_secs(2));
    status.poll_for(Duration::from_millis(500));
    let copies = result_id_counts(&results.records)[&result_id];
    let running = status
        .records
        .iter()
        .filter(|r| r.json()["status"] == "RUNNING")
        .count();
    eprintln!(
        "e2e outage: 503 (Retry-After {retry_after} s) in {:.2} s while frozen; {refused_after_thaw} \
         more 503s after the thaw; 200 {:.2} s after the thaw; result published {copies} time(s), \
         RUNNING published {running} time(s)",
        answered_in.as_secs_f64(),
        accepted_after.as_secs_f64()
    );
    // At least once; a copy the refused attempt left in the producer's queue is the only
    // duplicate allowed, and it carries the same result_id.
    assert!(
        (1..=2).contains(&copies),
        "{result_id} published {copies} times"
    );
    assert!(
        results
            .records
            .iter()
            .all(|r| r.json()["result_id"] == result_id.as_str()),
        "no other result"
    );
    assert!(
        (1..=2).contains(&running),
        "RUNNING published {running} times"
    );

    // The bridge has recovered: ready, and a new batch is taken at once.
    let ready = reqwest::get(format!("http://{}/readyz", stack.bridge.ops_addr))
        .await
        .expect("readyz");
    assert!(ready.status().is_success(), "ready after the outage");
    let second_batch = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let r = http
        .post(&url)
        .json(&callback_body(
            &run_uid,
            &second_batch,
            "SUCCEEDED",
            "after",
        ))
        .send()
        .await
        .expect("POST");
    assert!(
        r.status().is_success(),
        "{}: {}",
        r.status(),
        r.text().await.unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(3), "taken promptly");
    let second_id = format!("{run_uid}:{second_batch}:0");
    results.until(Duration::from_secs(10), "the second result", |r| {
        result_id_counts(r).contains_key(&second_id)
    });
    status.until(Duration::from_secs(10), "SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") == 1
    });
}
