//! The callback endpoint as Captain Data (or an attacker) sees it: precise refusals for bad
//! tokens, oversized and malformed bodies; and duplicated or out-of-order deliveries from the
//! simulator's fault injection that publish nothing twice and never move a status backwards.

use crate::*;
use captain_bridge::token::{CallbackClaims, TokenKeys};
use captain_testkit::CALLBACK_KEYS;
use std::time::Duration;

fn claims(request_id: &str) -> CallbackClaims {
    CallbackClaims {
        request_id: request_id.to_owned(),
        chunk: 0,
        expires_at: None,
    }
}

fn callback_body(run_uid: &str, batch_uid: &str, status: &str) -> Value {
    json!({
        "run": {"run_uid": run_uid, "batch_uid": batch_uid, "status": status},
        "input": {"linkedin_profile_url": "https://www.linkedin.com/in/someone"},
        "custom_data": {"row": "1"},
        "error": null,
        "results_count": 1,
        "results": [{"full_name": "Some One"}]
    })
}

async fn post(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("callback POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_oversized_bodies_413_and_malformed_bodies_400() {
    let stack = Stack::start("cbhttp", &fast_sim_config(""), |s| {
        s.callbacks.max_body_bytes = 65536
    })
    .await;
    let bridge = &stack.bridge;
    let keys = TokenKeys::from_config(CALLBACK_KEYS, "k2").unwrap();
    let valid = keys.sign(&claims("cb-1"));
    let body = |batch: &str| serde_json::to_vec(&callback_body("run-1", batch, "RUNNING")).unwrap();

    // Forged: not a token at all, and a well-formed token under a key the bridge never had.
    let forged = post(&bridge.callback_url("v1.k2.Zm9yZ2Vk.AAAA"), body("b1")).await;
    assert_eq!(forged.status(), 401);
    let retired = TokenKeys::from_config("k0:cmV0aXJlZC1rZXktcmV0aXJlZC1rZXk=", "k0")
        .unwrap()
        .sign(&claims("cb-1"));
    assert_eq!(
        post(&bridge.callback_url(&retired), body("b1"))
            .await
            .status(),
        401
    );
    // Tampered: change the signed claims of a valid token.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let other = keys.sign(&claims("someone-else"));
    parts[2] = other.split('.').nth(2).unwrap().to_owned();
    assert_eq!(
        post(&bridge.callback_url(&parts.join(".")), body("b1"))
            .await
            .status(),
        401
    );

    // Rotation: a token of the previous signing key (k1) still verifies.
    let previous = TokenKeys::from_config(CALLBACK_KEYS, "k1")
        .unwrap()
        .sign(&claims("cb-1"));
    assert_eq!(
        post(&bridge.callback_url(&previous), body("b-rot"))
            .await
            .status(),
        200
    );

    // Too large, refused before buffering.
    let huge = vec![b' '; 200_000];
    assert_eq!(post(&bridge.callback_url(&valid), huge).await.status(), 413);

    // Malformed: not JSON, and JSON without run.batch_uid.
    let r = post(&bridge.callback_url(&valid), b"{nope".to_vec()).await;
    assert_eq!(r.status(), 400);
    let mut no_batch = callback_body("run-1", "b2", "RUNNING");
    no_batch["run"].as_object_mut().unwrap().remove("batch_uid");
    let r = post(
        &bridge.callback_url(&valid),
        serde_json::to_vec(&no_batch).unwrap(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("batch_uid"),
        "the 400 names the field: {text}"
    );

    // A valid callback is accepted, and only it reached Kafka.
    assert_eq!(
        post(&bridge.callback_url(&valid), body("b3"))
            .await
            .status(),
        200
    );
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(20), "two accepted results", |r| {
        r.len() >= 2
    });
    results.poll_for(Duration::from_millis(500));
    let ids: HashSet<String> = result_id_counts(&results.records).into_keys().collect();
    assert_eq!(
        ids,
        HashSet::from(["run-1:b-rot:0".to_owned(), "run-1:b3:0".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_publishes_nothing_twice_and_a_late_status_is_not_published() {
    let stack = Stack::start("cbdup", &fast_sim_config(""), |_| {}).await;
    let keys = TokenKeys::from_config(CALLBACK_KEYS, "k2").unwrap();
    let url = stack.bridge.callback_url(&keys.sign(&claims("dup-1")));
    let send = |batch: &str, status: &str| {
        let body = serde_json::to_vec(&callback_body("run-d", batch, status)).unwrap();
        post(&url, body)
    };
    assert_eq!(send("b1", "RUNNING").await.status(), 200);
    assert_eq!(
        send("b1", "RUNNING").await.status(),
        200,
        "a duplicate is acknowledged"
    );
    assert_eq!(send("b2", "SUCCEEDED").await.status(), 200);
    assert_eq!(
        send("b3", "RUNNING").await.status(),
        200,
        "a late page after the final one"
    );
    assert_eq!(send("b2", "SUCCEEDED").await.status(), 200);

    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(20), "three distinct batches", |r| {
        r.len() >= 3
    });
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(20), "SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 1
    });
    results.poll_for(Duration::from_millis(700));
    status.poll_for(Duration::from_millis(300));
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let statuses: Vec<String> = status
        .records
        .iter()
        .map(|r| r.json()["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        ["RUNNING", "SUCCEEDED"],
        "no duplicate, no backward transition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_out_of_order_deliveries_produce_no_duplicate_records_or_backward_transitions(
) {
    let faults = "[faults]\ncallback_duplicate_rate = 0.5\ncallback_out_of_order_rate = 0.5\n";
    let stack = Stack::start("faults", &fast_sim_config(faults), |_| {}).await;
    const REQUESTS: usize = 15;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("f-{i}"), 2, 4))
        .collect();
    stack.produce(&requests).await;
    let expected = REQUESTS * 2 * 4;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(60), "every result", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(500));

    let stats = stack.sim_stats().await;
    assert!(
        stats["callbacks"]["duplicated"].as_u64().unwrap() > 0,
        "the simulator really duplicated deliveries: {stats}"
    );
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), expected);
    assert!(
        counts.values().all(|&n| n == 1),
        "a duplicated delivery was republished"
    );
    for (id, events) in statuses_by_request(&status.records) {
        assert_transitions_in_order(&events);
        let succeeded = events.iter().filter(|e| e["status"] == "SUCCEEDED").count();
        assert_eq!(succeeded, 1, "{id}: {events:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_with_an_invented_run_publishes_nothing_and_an_expired_token_gets_401() {
    // The run stalls, so the only callbacks for it are the ones this test sends.
    let sim = fast_sim_config("").replace(
        "succeeded = 1.0\n",
        "succeeded = 0.0\nstalled_running = 1.0\n",
    );
    let stack = Stack::start("cbbind", &sim, |_| {}).await;
    stack.produce(&[search_request("bind-1", 1, 2)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(30), "CREATED", |r| {
        r.iter().any(|e| e.json()["status"] == "CREATED")
    });
    let keys = TokenKeys::from_config(CALLBACK_KEYS, "k2").unwrap();
    let url = stack.bridge.callback_url(&keys.sign(&claims("bind-1")));
    let invented = serde_json::to_vec(&callback_body("invented-run", "b-x", "SUCCEEDED")).unwrap();
    // The endpoint is stateless: the token is valid, so the callback is taken...
    assert_eq!(post(&url, invented).await.status(), 200);
    // ...and refused by the request's owner, which knows the chunk's run.
    let mut dead = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dead.until(
        Duration::from_secs(30),
        "the invented run dead-lettered",
        |r| !r.is_empty(),
    );
    let reason = &dead.records[0].headers["captain.error.reason"];
    assert!(reason.contains("invented-run"), "{reason}");
    status.poll_for(Duration::from_secs(1));
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.poll_for(Duration::from_millis(500));
    assert!(
        status
            .records
            .iter()
            .all(|e| e.json()["run_uid"] != "invented-run"),
        "no status for the invented run"
    );
    assert!(results.records.is_empty(), "no result for the invented run");
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(&metrics, "captain_bridge_callbacks_foreign_run_total"),
        Some(1.0)
    );

    let expired = keys.sign(&CallbackClaims {
        request_id: "bind-1".into(),
        chunk: 0,
        expires_at: Some(chrono::Utc::now().timestamp() - 1),
    });
    let body = serde_json::to_vec(&callback_body("any", "b-y", "RUNNING")).unwrap();
    assert_eq!(
        post(&stack.bridge.callback_url(&expired), body)
            .await
            .status(),
        401
    );
}
