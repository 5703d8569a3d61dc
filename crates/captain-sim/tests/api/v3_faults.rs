use reqwest::Method;
use serde_json::json;

use crate::v3_support::*;

#[tokio::test]
async fn a_key_over_its_bucket_gets_429_with_retry_after_in_seconds() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["rate_limit"] = json!({"rps": 0.5, "burst": 2}))
        .await;
    for _ in 0..2 {
        assert_eq!(app.v3_get("/workflows").await.status, 200);
    }
    let limited = app.v3_get("/workflows").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["error_label"], "RATE_LIMIT_EXCEEDED");
    let secs: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    // The bucket is per key: the other project's key is untouched.
    let other = app
        .v3_call_as(
            Some(V3_OTHER_KEY),
            Some(OTHER_PROJECT),
            Method::GET,
            "/workflows",
            None,
        )
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(app.stats().await["v3"]["rate_limited"], 1);
}

#[tokio::test]
async fn a_429_can_come_without_retry_after_or_with_an_http_date() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["rate_limit"] = json!({"rps": 0.1, "burst": 1, "retry_after": "none"}))
        .await;
    app.v3_get("/workflows").await;
    let bare = app.v3_get("/workflows").await;
    assert_eq!(bare.status, 429);
    assert!(bare.headers.get("retry-after").is_none());

    app.tune_v3(|c| c["rate_limit"] = json!({"rps": 0.1, "burst": 1, "retry_after": "http-date"}))
        .await;
    app.v3_get("/workflows").await;
    let dated = app.v3_get("/workflows").await;
    let at = httpdate::parse_http_date(dated.headers["retry-after"].to_str().unwrap()).unwrap();
    assert!(at > std::time::SystemTime::now());
}

#[tokio::test]
async fn injected_server_errors_answer_500_or_503_on_v3_calls() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["faults"]["error_rate"] = json!(1.0))
        .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(app.v3_get("/workflows").await.status.as_u16());
    }
    assert_eq!(seen, [500u16, 503].into_iter().collect());
    assert_eq!(app.stats().await["v3"]["injected_errors"], 20);
    // The v4 surface is not affected.
    assert_eq!(app.get("/runs", "/runs").await.status, 200);
}

#[tokio::test]
async fn an_invalid_runtime_config_is_refused_naming_the_key() {
    let app = spawn_v3().await;
    let resp = app
        .client
        .put(format!("{}/_sim/v3/config", app.root))
        .json(&json!({"faults": {"webhook_drop_rate": 2.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("v3.faults.webhook_drop_rate"));
    let unknown = app
        .client
        .put(format!("{}/_sim/v3/config", app.root))
        .json(&json!({"fault": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
}

#[tokio::test]
async fn old_jobs_beyond_max_jobs_are_evicted_once_ended() {
    let app = spawn_v3_with(|c| c.v3.max_jobs = 2).await;
    let first = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    app.wait_settled(&first).await;
    let second = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    app.wait_settled(&second).await;
    let third = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    assert_eq!(app.v3_get(&format!("/jobs/{first}")).await.status, 404);
    assert_eq!(app.v3_get(&format!("/jobs/{third}")).await.status, 200);
    let stats = app.stats().await;
    let by_status = stats["v3"]["jobs_by_status"].as_object().unwrap();
    assert_eq!(
        by_status.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        2
    );
}
