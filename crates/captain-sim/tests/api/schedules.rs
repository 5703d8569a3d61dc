use serde_json::{json, Value};

use crate::support::*;

fn scaled_app_config() -> captain_sim::SimConfig {
    let mut config = fast_config();
    // A minute of simulated time per wall second: `* * * * *` fires every second.
    config.time_scale = 60.0;
    config
}

fn body(app: &TestApp) -> Value {
    json!({
        "inputs": [{"linkedin_profile_url": "https://www.linkedin.com/in/someone", "custom_data": {"s": 1}}],
        "callback": {"url": app.receiver.url},
        "timezone": "Europe/Paris"
    })
}

async fn create(app: &TestApp, body: Value) -> Resp {
    let path = "/actions/linkedin-extract-people/run/schedule";
    let resp = app.post(path, path, body).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp
}

async fn schedule(app: &TestApp, uid: &str) -> Value {
    app.get(
        "/schedules/{scheduled_run_uid}",
        &format!("/schedules/{uid}"),
    )
    .await
    .body
}

async fn manage(app: &TestApp, uid: &str, action: &str) -> Resp {
    app.post(
        "/schedules/{scheduled_run_uid}/{action}",
        &format!("/schedules/{uid}/{action}"),
        json!({}),
    )
    .await
}

async fn runs_of_action(app: &TestApp) -> Vec<Value> {
    app.get(
        "/runs",
        "/runs?action_name=linkedin-extract-people&limit=100",
    )
    .await
    .body
    .as_array()
    .unwrap()
    .clone()
}

#[tokio::test]
async fn a_cron_schedule_fires_async_runs_on_its_cron_in_simulated_time() {
    let app = spawn_app_with(scaled_app_config()).await;
    let mut b = body(&app);
    b["cron"] = json!("* * * * *");
    let created = create(&app, b).await;
    assert_eq!(created.body["status"], "ACTIVE");
    assert_eq!(created.body["cron"], "* * * * *");
    assert_eq!(created.body["timezone"], "Europe/Paris");
    let uid = created.body["schedule_uid"].as_str().unwrap().to_owned();
    let runs = eventually(|| async {
        let runs = runs_of_action(&app).await;
        (runs.len() >= 2).then_some(runs)
    })
    .await;
    assert!(runs.iter().all(|r| r["execution_mode"] == "ASYNC"));
    let s = schedule(&app, &uid).await;
    assert_eq!(s["status"], "ACTIVE");
    assert!(s["last_executed_at"].is_string() && s["next_execution_at"].is_string());
    let first = runs[0]["uid"].as_str().unwrap();
    let received = app
        .wait_final_callback("linkedin-extract-people", first)
        .await;
    assert_eq!(received[0].body["custom_data"], json!({"s": 1}));
    let stats = app.stats().await;
    assert!(stats["schedule_firings"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn a_one_shot_schedule_fires_once_at_schedule_at_then_completes() {
    let app = spawn_app_with(scaled_app_config()).await;
    let mut b = body(&app);
    let at = chrono::Utc::now() + chrono::Duration::seconds(30);
    b["schedule_at"] = json!(at.to_rfc3339());
    let created = create(&app, b).await;
    assert!(created.body["cron"].is_null());
    let uid = created.body["schedule_uid"].as_str().unwrap().to_owned();
    assert_eq!(schedule(&app, &uid).await["status"], "ACTIVE");
    let s = eventually(|| async {
        let s = schedule(&app, &uid).await;
        (s["status"] == "COMPLETED").then_some(s)
    })
    .await;
    assert!(s["next_execution_at"].is_null());
    assert!(s["last_executed_at"].is_string());
    let runs = eventually(|| async {
        let runs = runs_of_action(&app).await;
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1);
    let transition = manage(&app, &uid, "pause").await;
    assert_eq!(
        transition.status, 400,
        "a completed schedule cannot be paused"
    );
}

#[tokio::test]
async fn a_cron_schedule_does_not_fire_before_schedule_at() {
    let app = spawn_app().await;
    let mut b = body(&app);
    b["cron"] = json!("*/5 * * * *");
    b["schedule_at"] = json!("2999-01-01T00:00:00Z");
    let created = create(&app, b).await;
    let next = created.body["next_execution_at"].as_str().unwrap();
    assert!(
        next.starts_with("2999-01-01T00:00") || next.starts_with("2998-12-31T23:"),
        "{next}"
    );
}

#[tokio::test]
async fn schedule_transitions_follow_the_state_machine() {
    let app = spawn_app().await;
    let mut b = body(&app);
    b["cron"] = json!("0 8 * * 1");
    let uid = create(&app, b).await.body["schedule_uid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(manage(&app, &uid, "resume").await.status, 400);
    let paused = manage(&app, &uid, "pause").await;
    assert_eq!(paused.body["status"], "PAUSED");
    assert_eq!(manage(&app, &uid, "pause").await.status, 400);
    assert_eq!(manage(&app, &uid, "resume").await.body["status"], "ACTIVE");
    assert_eq!(
        manage(&app, &uid, "cancel").await.body["status"],
        "CANCELLED"
    );
    for action in ["pause", "resume", "cancel"] {
        let resp = manage(&app, &uid, action).await;
        assert_eq!(resp.status, 400);
        assert_eq!(resp.body["error_label"], "INVALID_SCHEDULE_TRANSITION");
    }
    let listed = app.get("/schedules", "/schedules?status=CANCELLED").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(listed.body[0]["uid"], uid.as_str());
}

#[tokio::test]
async fn a_paused_schedule_does_not_fire() {
    let app = spawn_app_with(scaled_app_config()).await;
    let mut b = body(&app);
    b["cron"] = json!("* * * * *");
    let uid = create(&app, b).await.body["schedule_uid"]
        .as_str()
        .unwrap()
        .to_owned();
    manage(&app, &uid, "pause").await;
    let before = app.stats().await["schedule_firings"].as_u64().unwrap();
    // Two simulated minutes pass: a paused schedule must not fire. (A wait with nothing to
    // observe is the assertion itself.)
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(
        app.stats().await["schedule_firings"].as_u64().unwrap(),
        before
    );
}
