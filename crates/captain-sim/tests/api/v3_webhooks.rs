use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::support::eventually;
use crate::v3_support::*;

const PAYLOAD_KEYS: [&str; 9] = [
    "error",
    "job_name",
    "job_uid",
    "message",
    "project_uid",
    "recipe_ref",
    "uid",
    "workflow_name",
    "workflow_uid",
];

fn keys(body: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[tokio::test]
async fn a_job_sends_created_then_succeeded_with_the_documented_payload_and_custom_headers() {
    let app = spawn_v3().await;
    let job = app.launch(WORKFLOW, launch_body(2)).await;
    let hooks = app.wait_webhooks(&job, 2).await;
    let (created, succeeded) = (&hooks[0], &hooks[1]);
    for hook in [created, succeeded] {
        assert_eq!(keys(&hook.body), PAYLOAD_KEYS);
        assert_eq!(hook.headers["authorization"], HOOK_SECRET);
        assert_eq!(hook.headers["content-type"], "application/json");
        assert_eq!(hook.body["project_uid"], PROJECT.to_string());
        assert_eq!(hook.body["workflow_uid"], WORKFLOW.to_string());
        assert_eq!(
            hook.body["workflow_name"],
            "Extract LinkedIn People Profile"
        );
        assert_eq!(hook.body["job_name"], "Nightly enrichment");
        assert_eq!(hook.body["recipe_ref"], job.as_str());
        assert!(hook.body["error"].is_null());
    }
    assert_eq!(created.body["message"], "Job successfully started.");
    assert_eq!(succeeded.body["message"], "Job successfully finished.");
    assert_ne!(
        created.body["uid"], succeeded.body["uid"],
        "a fresh uid per delivery"
    );
    // The status is set before the final webhook leaves.
    assert_eq!(app.job(&job).await["status"], "finished");
    let truth = app.wait_settled(&job).await;
    let events: Vec<&str> = truth["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["created", "succeeded"]);
    assert!(truth["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["status"] == "delivered" && w["http_status"] == 200));
    assert_eq!(app.stats().await["v3"]["webhooks"]["delivered"], 2);
}

#[tokio::test]
async fn a_job_whose_inputs_all_fail_sends_failed_with_the_error() {
    let app = spawn_v3().await;
    app.tune_v3(|c| {
        c["outcomes"] = json!({"finished": 0.0, "warning": 1.0, "input_failure_rate": 1.0});
    })
    .await;
    let job = app.launch(WORKFLOW, launch_body(3)).await;
    let hooks = app.wait_webhooks(&job, 2).await;
    assert_eq!(hooks[1].body["message"], "Job failed.");
    assert!(hooks[1].body["error"]
        .as_str()
        .unwrap()
        .starts_with("Error while completing action: 3 of 3 inputs failed"));
    let job_view = app.job(&job).await;
    assert_eq!(job_view["status"], "warning");
    assert_eq!(job_view["total_results"], 0);
}

#[tokio::test]
async fn a_warning_job_with_some_results_sends_succeeded() {
    let app = spawn_v3().await;
    app.tune_v3(|c| {
        c["outcomes"] = json!({"finished": 0.0, "warning": 1.0, "input_failure_rate": 0.0});
    })
    .await;
    // With a failure rate of 0, exactly one input is forced to fail.
    let job = app.launch(WORKFLOW, launch_body(3)).await;
    let hooks = app.wait_webhooks(&job, 2).await;
    assert_eq!(hooks[1].body["message"], "Job successfully finished.");
    let view = app.job(&job).await;
    assert_eq!(view["status"], "warning");
    assert_eq!(view["failed_inputs"], 1);
}

#[tokio::test]
async fn shutdown_and_paused_jobs_send_failed_but_a_stopped_one_sends_nothing() {
    let app = spawn_v3().await;
    for (outcome, event_count) in [("shutdown", 2), ("paused", 2), ("stopped", 1)] {
        app.tune_v3(|c| c["outcomes"] = json!({"finished": 0.0, outcome: 1.0}))
            .await;
        let job = app.launch(WORKFLOW, launch_body(2)).await;
        let truth = app.wait_settled(&job).await;
        assert_eq!(truth["job"]["status"], outcome);
        let events: Vec<&str> = truth["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["event"].as_str().unwrap())
            .collect();
        assert_eq!(events.len(), event_count, "{outcome}: {events:?}");
        if event_count == 2 {
            assert_eq!(events[1], "failed");
            let hooks = app.wait_webhooks(&job, 2).await;
            assert_eq!(hooks[1].body["error"], truth["job"]["error_message"]);
        }
    }
    app.tune_v3(|c| {
        c["outcomes"] = json!({"finished": 0.0, "paused": 1.0});
        c["behaviour"]["paused_sends_failed"] = json!(false);
    })
    .await;
    let job = app.launch(WORKFLOW, launch_body(1)).await;
    let truth = app.wait_settled(&job).await;
    assert_eq!(
        truth["webhooks"].as_array().unwrap().len(),
        1,
        "created only"
    );
}

#[tokio::test]
async fn only_the_enabled_events_are_sent_and_a_workflow_webhook_can_be_set_at_run_time() {
    let app = spawn_v3().await;
    let url = app.receiver.url.clone();
    let resp = app
        .client
        .put(format!("{}/_sim/v3/workflows/{QUIET_WORKFLOW}/webhook", app.root))
        .json(&json!({"url": url, "events": ["succeeded"], "headers": [{"name": "X-Token", "value": "t"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let job = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    let truth = app.wait_settled(&job).await;
    assert_eq!(truth["webhooks"].as_array().unwrap().len(), 1);
    let hooks = app.wait_webhooks(&job, 1).await;
    assert_eq!(hooks[0].body["message"], "Job successfully finished.");
    assert_eq!(hooks[0].headers["x-token"], "t");

    let bad = app
        .client
        .put(format!(
            "{}/_sim/v3/workflows/{QUIET_WORKFLOW}/webhook",
            app.root
        ))
        .json(&json!({"url": "not a url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let removed = app
        .client
        .delete(format!(
            "{}/_sim/v3/workflows/{QUIET_WORKFLOW}/webhook",
            app.root
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let quiet = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    let truth = app.wait_settled(&quiet).await;
    assert!(truth["webhooks"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_receiver_gets_every_attempt_then_the_webhook_retry_route_delivers() {
    let app = spawn_v3().await;
    app.receiver.status.store(503, Ordering::SeqCst);
    let job = app.launch(WORKFLOW, launch_body(1)).await;
    let truth = app.wait_settled(&job).await;
    let records = truth["webhooks"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    for (record, event) in records.iter().zip(["created", "succeeded"]) {
        assert_eq!(record["event"], event);
        assert_eq!(record["status"], "failed");
        assert_eq!(record["attempts"], 3);
        assert_eq!(record["http_status"], 503);
    }
    let hooks = app.webhooks_of(&job);
    assert_eq!(hooks.len(), 6);
    assert_eq!(
        hooks[0].body["uid"], hooks[2].body["uid"],
        "retries resend the same delivery"
    );
    let stats = app.stats().await["v3"]["webhooks"].clone();
    assert_eq!(
        (stats["failed"].as_u64(), stats["attempts_failed"].as_u64()),
        (Some(2), Some(6))
    );

    app.receiver.status.store(200, Ordering::SeqCst);
    let resp = app
        .v3_post(&format!("/jobs/{job}/webhooks/retry"), json!({}))
        .await;
    assert_eq!(resp.status, 200);
    let hooks = app.wait_webhooks(&job, 7).await;
    assert_eq!(hooks[6].body["message"], "Job successfully finished.");
    assert_ne!(
        hooks[6].body["uid"], hooks[3].body["uid"],
        "a retried webhook is a new delivery"
    );
}

#[tokio::test]
async fn injected_receiver_failures_count_as_failed_attempts() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["faults"]["webhook_failure_rate"] = json!(1.0))
        .await;
    let job = app.launch(WORKFLOW, launch_body(1)).await;
    let truth = app.wait_settled(&job).await;
    let records = truth["webhooks"].as_array().unwrap();
    assert!(records
        .iter()
        .all(|r| r["status"] == "failed" && r["http_status"].is_null()));
    assert!(app.webhooks_of(&job).is_empty());
    assert_eq!(app.stats().await["v3"]["webhooks"]["attempts_failed"], 6);
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent_and_duplicated_ones_arrive_twice_with_the_same_uid() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["faults"]["webhook_drop_rate"] = json!(1.0))
        .await;
    let dropped = app.launch(WORKFLOW, launch_body(1)).await;
    let truth = app.wait_settled(&dropped).await;
    assert!(truth["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "dropped"));
    assert!(app.webhooks_of(&dropped).is_empty());

    app.tune_v3(|c| c["faults"] = json!({"webhook_duplicate_rate": 1.0}))
        .await;
    let duplicated = app.launch(WORKFLOW, launch_body(1)).await;
    let hooks = app.wait_webhooks(&duplicated, 4).await;
    assert_eq!(hooks[0].body, hooks[1].body);
    assert_eq!(hooks[2].body, hooks[3].body);
    let v3 = app.stats().await["v3"].clone();
    assert_eq!(v3["webhooks"]["dropped"], 2);
    assert_eq!(v3["webhooks"]["duplicated"], 2);
}

#[tokio::test]
async fn the_webhook_of_a_jobs_current_state_can_be_retried() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["faults"]["webhook_drop_rate"] = json!(1.0))
        .await;
    let job = app.launch(WORKFLOW, launch_body(1)).await;
    app.wait_settled(&job).await;
    app.tune_v3(|c| c["faults"] = json!({})).await;
    let resp = app
        .v3_post(&format!("/jobs/{job}/webhooks/retry"), json!({}))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.body["message"], "Webhook successfully retried.");
    let hooks = app.wait_webhooks(&job, 1).await;
    assert_eq!(hooks[0].body["message"], "Job successfully finished.");
    assert_eq!(hooks[0].body["uid"], resp.body["webhook_uid"]);
    let truth = app.wait_settled(&job).await;
    let last = truth["webhooks"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["retry"], true);
    assert_eq!(last["status"], "delivered");
    assert_eq!(app.stats().await["v3"]["webhooks"]["retried"], 1);

    let quiet = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    app.wait_job(&quiet, "finished").await;
    let refused = app
        .v3_post(&format!("/jobs/{quiet}/webhooks/retry"), json!({}))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error_label"], "WEBHOOK_NOT_CONFIGURED");
    let pending = app
        .launch(WORKFLOW, json!({"inputs": inputs(1), "delay": 3600}))
        .await;
    let early = app
        .v3_post(&format!("/jobs/{pending}/webhooks/retry"), json!({}))
        .await;
    assert_eq!(early.body["error_label"], "NO_WEBHOOK_TO_RETRY");
}

#[tokio::test]
async fn concurrent_jobs_each_send_created_before_succeeded() {
    let app = spawn_v3().await;
    let jobs: Vec<String> =
        futures::future::join_all((0..5).map(|_| app.launch(WORKFLOW, launch_body(2)))).await;
    for job in &jobs {
        let hooks = eventually(|| async {
            let h = app.webhooks_of(job);
            (h.len() == 2).then_some(h)
        })
        .await;
        assert_eq!(hooks[0].body["message"], "Job successfully started.");
        assert_eq!(hooks[1].body["message"], "Job successfully finished.");
    }
}
