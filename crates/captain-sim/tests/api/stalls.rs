//! Runs that never finish on their own (`outcomes.stalled_*`) and `POST /_sim/runs/{uid}/finish`.

use captain_sim::TimingsConfig;
use serde_json::{json, Value};

use crate::support::*;

fn statuses(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.body["run"]["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn resume(app: &TestApp, uid: &str) -> Resp {
    app.post(
        "/runs/{run_uid}/resume",
        &format!("/runs/{uid}/resume"),
        json!({}),
    )
    .await
}

fn seconds_between(from: &Value, to: &Value) -> f64 {
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    (parse(to) - parse(from)).num_milliseconds() as f64 / 1000.0
}

#[tokio::test]
async fn a_stalled_running_run_stays_running_until_finished_then_sends_the_rest_and_its_final_callback(
) {
    let mut config = fast_config();
    // Simulated minutes in wall seconds: 6 s queued + 6 s to start + 3 s per page.
    config.time_scale = 60.0;
    config.runtime.timings = TimingsConfig {
        queued_after_ms: 6_000,
        start_after_ms: 6_000,
        page_interval_ms: 3_000,
    };
    config.runtime.outcomes.succeeded = 0.0;
    config.runtime.outcomes.stalled_running = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(2, 25))
        .await;

    let truth = app.wait_stalled(&uid).await;
    assert_eq!(truth["outcome"], "stalled_running");
    assert_eq!(truth["status"], "RUNNING");
    let sent = truth["batches"].as_array().unwrap().len();
    assert!(sent <= 6, "at most the 6 pages: {truth}");
    assert!(truth["batches"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["kind"] == "page" && b["run_status"] == "RUNNING"));
    let received = eventually(|| async {
        let r = app.receiver.of_run(&uid);
        (r.len() == sent).then_some(r)
    })
    .await;
    assert!(statuses(&received).iter().all(|s| s == "RUNNING"));
    let run = app.run(&uid).await;
    assert_eq!(run["status"], "RUNNING");
    assert!(run["finished_at"].is_null());
    let refused = resume(&app, &uid).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error_label"], "RUN_NOT_RESUMABLE");

    let (code, answer) = app.finish(&uid, json!({"status": "SUCCEEDED"})).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "RUNNING");
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    assert_eq!(received.len(), 7, "6 pages, then the final callback");
    assert_eq!(statuses(&received).last().unwrap(), "SUCCEEDED");
    let results: u64 = received
        .iter()
        .map(|r| r.body["results_count"].as_u64().unwrap())
        .sum();
    assert_eq!(results, 50, "every result of both inputs arrives");

    let run = app.wait_run_status(&uid, "SUCCEEDED").await;
    assert!(
        seconds_between(&run["created_at"], &run["started_at"]) >= 12.0,
        "timings are simulated time: {run}"
    );
    let truth = app.deliveries(&uid).await;
    assert_eq!(truth["stalled"], false);
    assert_eq!(
        truth["totals"],
        json!({"generated": 7, "delivered": 7, "undelivered": 0, "results": 50, "results_delivered": 50})
    );
}

#[tokio::test]
async fn a_stalled_blocked_run_accepts_resumes_but_blocks_again_until_finished() {
    let mut config = fast_config();
    config.runtime.outcomes.succeeded = 0.0;
    config.runtime.outcomes.stalled_blocked = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(3, 5))
        .await;

    let run = app.wait_run_status(&uid, "BLOCKED").await;
    assert_eq!(run["last_error"]["label"], "BLOCKED");
    assert_eq!(app.wait_stalled(&uid).await["outcome"], "stalled_blocked");
    let resumed = resume(&app, &uid).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.body["status"], "QUEUED");
    // It starts again and blocks again, with a fresh BLOCKED callback.
    eventually(|| async {
        let blocked = statuses(&app.receiver.of_run(&uid))
            .iter()
            .filter(|s| *s == "BLOCKED")
            .count();
        (blocked == 2).then_some(())
    })
    .await;
    app.wait_run_status(&uid, "BLOCKED").await;

    let (code, answer) = app
        .finish(
            &uid,
            json!({"status": "PARTIAL_SUCCEEDED", "failed_inputs": [1]}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["status"], "QUEUED",
        "unblocked runs are queued again"
    );
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let last = &received.last().unwrap().body;
    assert_eq!(last["run"]["status"], "PARTIAL_SUCCEEDED");
    assert_eq!(last["error"]["error_label"], "PARTIAL_FAILURE");
    let errors: Vec<&Value> = received
        .iter()
        .map(|r| &r.body)
        .filter(|b| b["run"]["status"] == "RUNNING" && b["error"].is_object())
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_data"], json!({"row": 1}));
    assert_eq!(errors[0]["results_count"], 0);
    // A blocked stall sends at most half its pages first, so input 1's page never went out.
    assert!(!received
        .iter()
        .any(|r| r.body["custom_data"] == json!({"row": 1}) && r.body["results_count"] != 0));
    let run = app.run(&uid).await;
    assert_eq!(run["status"], "PARTIAL_SUCCEEDED");
    assert_eq!(resume(&app, &uid).await.status, 400);
}

#[tokio::test]
async fn finishing_is_refused_for_runs_that_do_not_stall_and_for_bad_bodies() {
    let app = spawn_app().await;
    let plain = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    app.wait_run_status(&plain, "SUCCEEDED").await;
    let (code, body) = app.finish(&plain, json!({"status": "SUCCEEDED"})).await;
    assert_eq!(
        (code, body["error_label"].clone()),
        (409, json!("RUN_NOT_STALLED"))
    );
    let (code, body) = app
        .finish(
            "00000000-0000-4000-8000-000000000000",
            json!({"status": "SUCCEEDED"}),
        )
        .await;
    assert_eq!(
        (code, body["error_label"].clone()),
        (404, json!("RUN_404_NOT_FOUND"))
    );

    let mut config = app.sim_config().await;
    config["outcomes"]["succeeded"] = json!(0.0);
    config["outcomes"]["stalled_running"] = json!(1.0);
    app.put_config(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 25))
        .await;
    for bad in [
        json!({"status": "RUNNING"}),
        json!({"status": "DONE"}),
        json!({"status": "SUCCEEDED", "extra": 1}),
        json!({"status": "SUCCEEDED", "failed_inputs": [0]}),
        json!({"status": "PARTIAL_SUCCEEDED", "failed_inputs": [1]}),
        json!({"status": "PARTIAL_SUCCEEDED", "failed_inputs": []}),
        json!({}),
    ] {
        let (code, body) = app.finish(&uid, bad.clone()).await;
        assert_eq!(code, 400, "{bad} -> {body}");
    }
    // Told to finish right away, possibly before it reaches its stall point.
    let (code, _) = app.finish(&uid, json!({"status": "FAILED"})).await;
    assert_eq!(code, 200);
    let (code, body) = app.finish(&uid, json!({"status": "SUCCEEDED"})).await;
    assert_eq!(
        (code, body["error_label"].clone()),
        (409, json!("RUN_FINISH_ALREADY_REQUESTED"))
    );
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let last = &received.last().unwrap().body;
    assert_eq!(last["run"]["status"], "FAILED");
    assert_eq!(last["error"]["error_label"], "NO_RESULT");
    let run = app.wait_run_status(&uid, "FAILED").await;
    assert_eq!(run["last_error"]["label"], "NO_RESULT");
}
