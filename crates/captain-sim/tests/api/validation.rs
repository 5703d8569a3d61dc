use serde_json::{json, Value};

use crate::support::*;

fn people_input() -> Value {
    json!({"linkedin_profile_url": "https://www.linkedin.com/in/someone"})
}

async fn assert_400(resp: Resp, scope: &str, mentions: &str) {
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(resp.body["error_scope"], scope, "{}", resp.body);
    let message = resp.body["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn an_unknown_body_key_is_rejected_naming_the_key() {
    let app = spawn_app().await;
    let mut body = app.search_body(1, 5);
    body["integration_users"] = json!(["x"]);
    let resp = app.submit("linkedin-search-people", body).await;
    assert_400(resp, "param", "integration_users").await;
}

#[tokio::test]
async fn an_unknown_input_key_is_rejected_as_an_input_error() {
    let app = spawn_app().await;
    let mut body = app.search_body(1, 5);
    body["inputs"][0]["surprise"] = json!(1);
    let resp = app.submit("linkedin-search-people", body).await;
    assert_eq!(resp.body["error_label"], "INVALID_INPUT");
    assert_400(resp, "input", "surprise").await;
}

#[tokio::test]
async fn empty_inputs_are_rejected() {
    let app = spawn_app().await;
    let mut body = app.search_body(1, 5);
    body["inputs"] = json!([]);
    assert_400(
        app.submit("linkedin-search-people", body).await,
        "input",
        "/inputs",
    )
    .await;
}

#[tokio::test]
async fn a_missing_required_input_field_is_rejected() {
    let app = spawn_app().await;
    let body = json!({"inputs": [{"custom_data": {}}], "callback": {"url": app.receiver.url}});
    assert_400(
        app.submit("linkedin-extract-people", body).await,
        "input",
        "linkedin_profile_url",
    )
    .await;
}

#[tokio::test]
async fn max_results_above_the_action_maximum_is_rejected() {
    let app = spawn_app().await;
    let body = app.search_body(1, 1001);
    assert_400(
        app.submit("linkedin-search-people", body).await,
        "param",
        "max_results",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_action_is_404() {
    let app = spawn_app().await;
    let resp = app.submit("linkedin-teleport", json!({})).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body["error_label"], "ACTION_404_NOT_FOUND");
}

async fn schedule(app: &TestApp, body: Value) -> Resp {
    app.post(
        "/actions/linkedin-extract-people/run/schedule",
        "/actions/linkedin-extract-people/run/schedule",
        body,
    )
    .await
}

fn schedule_body(app: &TestApp, inputs: usize) -> Value {
    json!({
        "inputs": vec![people_input(); inputs],
        "callback": {"url": app.receiver.url},
        "cron": "0 8 * * 1",
        "timezone": "Europe/Paris"
    })
}

#[tokio::test]
async fn a_schedule_accepts_100_inputs_but_not_101() {
    let app = spawn_app().await;
    assert_eq!(schedule(&app, schedule_body(&app, 100)).await.status, 200);
    assert_400(
        schedule(&app, schedule_body(&app, 101)).await,
        "input",
        "/inputs",
    )
    .await;
}

#[tokio::test]
async fn a_bad_cron_is_rejected() {
    let app = spawn_app().await;
    for cron in ["not a cron", "* * * * * *", "61 * * * *"] {
        let mut body = schedule_body(&app, 1);
        body["cron"] = json!(cron);
        assert_400(schedule(&app, body).await, "param", "cron").await;
    }
}

#[tokio::test]
async fn a_bad_timezone_is_rejected() {
    let app = spawn_app().await;
    let mut body = schedule_body(&app, 1);
    body["timezone"] = json!("Mars/Olympus_Mons");
    assert_400(schedule(&app, body).await, "param", "timezone").await;
}

#[tokio::test]
async fn a_schedule_needs_cron_or_schedule_at() {
    let app = spawn_app().await;
    let mut body = schedule_body(&app, 1);
    body.as_object_mut().unwrap().remove("cron");
    assert_400(schedule(&app, body).await, "param", "schedule_at").await;
}

#[tokio::test]
async fn list_limits_are_enforced() {
    let app = spawn_app().await;
    let resp = app.get("/runs/callbacks", "/runs/callbacks?limit=21").await;
    assert_400(resp, "param", "limit").await;
    let resp = app.get("/runs", "/runs?limit=0").await;
    assert_400(resp, "param", "limit").await;
    let resp = app.get("/runs", "/runs?status=DONE").await;
    assert_400(resp, "param", "status").await;
}

#[tokio::test]
async fn a_full_async_run_of_100000_inputs_above_axums_2_mb_default_is_accepted() {
    // The run is accepted and never starts: 100,000 inputs would mean as many callbacks.
    let mut config = fast_config();
    config.runtime.timings.queued_after_ms = 600_000;
    let app = spawn_app_with(config).await;
    let inputs: Vec<Value> = (0..100_000)
        .map(|i| json!({"linkedin_profile_url": format!("https://www.linkedin.com/in/someone-{i:06}")}))
        .collect();
    let body = json!({"inputs": inputs, "callback": {"url": app.receiver.url}});
    assert!(
        body.to_string().len() > 4 * 1024 * 1024,
        "a body of several MB"
    );
    let resp = app.submit("linkedin-extract-people", body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[tokio::test]
async fn a_body_above_limits_max_body_bytes_is_413_with_an_api_error() {
    let mut config = fast_config();
    config.limits.max_body_bytes = 64 * 1024;
    let app = spawn_app_with(config).await;
    let inputs: Vec<Value> = (0..2_000).map(|_| people_input()).collect();
    let body = json!({"inputs": inputs, "callback": {"url": app.receiver.url}});
    let resp = app.submit("linkedin-extract-people", body).await;
    assert_eq!(resp.status, 413, "{}", resp.body);
    assert_eq!(resp.body["error_label"], "PAYLOAD_TOO_LARGE");
    assert_eq!(resp.body["error_scope"], "input");
    assert_eq!(resp.body["status_code"], 413);
}
