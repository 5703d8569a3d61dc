use serde_json::{json, Value};

use crate::support::*;

async fn with_faults(app: &TestApp, faults: Value) {
    let mut config = app.sim_config().await;
    config["faults"] = faults;
    app.put_config(config).await;
}

#[tokio::test]
async fn injected_server_errors_answer_500_or_503_on_action_endpoints_only() {
    let app = spawn_app().await;
    with_faults(&app, json!({"error_rate": 1.0})).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let resp = app
            .submit("linkedin-search-people", app.search_body(1, 1))
            .await;
        seen.insert(resp.status.as_u16());
    }
    assert_eq!(seen, [500u16, 503].into_iter().collect());
    assert_eq!(app.get("/runs", "/runs").await.status, 200);
    assert_eq!(app.stats().await["injected_errors"], 20);
}

#[tokio::test]
async fn duplicated_callbacks_are_sent_twice_with_the_same_batch_uid() {
    let app = spawn_app().await;
    with_faults(&app, json!({"callback_duplicate_rate": 1.0})).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 15))
        .await;
    let received = eventually(|| async {
        let r = app.receiver.of_run(&uid);
        (r.len() == 6).then_some(r)
    })
    .await;
    let mut batches: Vec<&str> = received
        .iter()
        .map(|r| r.body["run"]["batch_uid"].as_str().unwrap())
        .collect();
    batches.sort();
    for pair in batches.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    assert_eq!(app.stats().await["callbacks"]["duplicated"], 3);
}

#[tokio::test]
async fn dropped_callbacks_are_never_sent_but_recorded_failed_and_replayable() {
    let app = spawn_app().await;
    with_faults(&app, json!({"callback_drop_rate": 1.0})).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let failed = eventually(|| async {
        let list = app
            .get(
                "/runs/callbacks",
                &format!("/runs/callbacks?run_uid={uid}&status=FAILED"),
            )
            .await;
        (list.body.as_array().unwrap().len() == 2).then_some(list.body)
    })
    .await;
    assert!(app.receiver.of_run(&uid).is_empty());
    assert!(
        failed[0].get("http_status").is_none(),
        "no HTTP answer: no http_status"
    );
    with_faults(&app, json!({})).await;
    let uid0 = failed[0]["uid"].as_str().unwrap();
    let replay = app
        .post(
            "/runs/callbacks/{callback_uid}/replay",
            &format!("/runs/callbacks/{uid0}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(replay.status, 200);
    eventually(|| async { (app.receiver.of_run(&uid).len() == 1).then_some(()) }).await;
    assert_eq!(app.stats().await["callbacks"]["dropped"], 2);
}

#[tokio::test]
async fn out_of_order_delivery_shuffles_pages_and_the_final_callback() {
    let app = spawn_app().await;
    with_faults(&app, json!({"callback_out_of_order_rate": 1.0})).await;
    let mut final_not_last = false;
    for _ in 0..5 {
        let uid = app
            .submit_ok("linkedin-search-people", app.search_body(1, 60))
            .await;
        let received = eventually(|| async {
            let r = app.receiver.of_run(&uid);
            (r.len() == 7).then_some(r)
        })
        .await;
        let finals = received
            .iter()
            .filter(|r| r.body["run"]["status"] == "SUCCEEDED")
            .count();
        assert_eq!(finals, 1);
        final_not_last |= received.last().unwrap().body["run"]["status"] != "SUCCEEDED";
    }
    assert!(
        final_not_last,
        "in 5 shuffled runs the final callback came early at least once"
    );
}

#[tokio::test]
async fn latency_can_be_injected() {
    let app = spawn_app().await;
    with_faults(&app, json!({"latency_ms": 150})).await;
    let start = std::time::Instant::now();
    app.get("/runs", "/runs").await;
    assert!(start.elapsed() >= std::time::Duration::from_millis(150));
}
