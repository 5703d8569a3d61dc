use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn exceeding_the_async_rate_limit_answers_429_with_retry_headers() {
    let app = spawn_app().await;
    let mut config = app.sim_config().await;
    config["rate_limits"]["async"] = json!({"rps": 1.0, "burst": 3});
    app.put_config(config).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let resp = app
            .submit("linkedin-search-people", app.search_body(1, 1))
            .await;
        statuses.push(resp.status.as_u16());
        if resp.status == 429 {
            limited = Some(resp);
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    let resp = limited.expect("a 429 after the burst");
    assert_eq!(resp.body["error_label"], "RATE_LIMIT_EXCEEDED");
    let retry_after: u64 = resp.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_eq!(resp.headers["x-ratelimit-type"], "async");
    let reset: u64 = resp.headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset >= now && reset <= now + 3);
    // Other buckets are independent.
    assert_eq!(app.get("/runs", "/runs").await.status, 200);
    assert!(app.stats().await["rate_limited"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn retry_after_can_be_sent_as_an_http_date() {
    let app = spawn_app().await;
    let mut config = app.sim_config().await;
    config["rate_limits"]["api"] = json!({"rps": 0.5, "burst": 1});
    config["rate_limits"]["retry_after_format"] = json!("http-date");
    app.put_config(config).await;
    assert_eq!(app.get("/runs", "/runs").await.status, 200);
    let resp = app.get("/runs", "/runs").await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.headers["x-ratelimit-type"], "api");
    let date = resp.headers["retry-after"].to_str().unwrap();
    let parsed = httpdate::parse_http_date(date).unwrap();
    assert!(parsed > std::time::SystemTime::now() - std::time::Duration::from_secs(1));
}

#[tokio::test]
async fn rate_limits_are_per_api_key() {
    let app = spawn_app().await;
    let mut config = app.sim_config().await;
    config["rate_limits"]["api"] = json!({"rps": 0.1, "burst": 1});
    app.put_config(config).await;
    assert_eq!(app.get("/runs", "/runs").await.status, 200);
    assert_eq!(app.get("/runs", "/runs").await.status, 429);
    let other = app
        .call_as(
            Some(OTHER_KEY),
            reqwest::Method::GET,
            "/runs",
            "/runs",
            None,
        )
        .await;
    assert_eq!(other.status, 200);
}
