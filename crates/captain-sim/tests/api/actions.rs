use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn live_list_actions_page_with_full_url_pagination_headers() {
    let app = spawn_app().await;
    let body = json!({"input": {"linkedin_people_search_url": "https://www.linkedin.com/search/results/people/?keywords=x"}});
    let path = "/actions/linkedin-search-people/run/live";
    let first = app.post(path, path, body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.as_array().unwrap().len(), 10);
    let next = first.headers["x-pagination-next"].to_str().unwrap();
    assert_eq!(next, format!("{}{path}?page=2", app.base));
    assert!(first.headers.get("x-pagination-previous").is_none());
    let last = app
        .post(path, &format!("{path}?page=3"), body.clone())
        .await;
    assert_eq!(last.body.as_array().unwrap().len(), 10);
    assert!(last.headers.get("x-pagination-next").is_none());
    assert!(last.headers["x-pagination-previous"]
        .to_str()
        .unwrap()
        .ends_with("page=2"));
    let past = app
        .post(path, &format!("{path}?page=4"), body.clone())
        .await;
    assert_eq!(past.body, json!([]));
    let again = app.post(path, path, body).await;
    assert_eq!(
        again.body, first.body,
        "the same input gives the same results"
    );
    let runs = app.get("/runs", "/runs?execution_mode=LIVE").await;
    assert_eq!(runs.body.as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn live_single_object_actions_answer_one_object() {
    let app = spawn_app().await;
    let path = "/actions/linkedin-extract-people/run/live";
    let resp = app
        .post(
            path,
            path,
            json!({"input": {"linkedin_profile_url": "https://www.linkedin.com/in/x"}}),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_object());
}

#[tokio::test]
async fn every_action_of_the_spec_runs_live_and_async() {
    let app = spawn_app().await;
    let spec = captain_sim::spec::spec().unwrap();
    for action in spec.actions() {
        let path = format!("/actions/{}/run/live", action.name);
        let bad = app.post(&path, &path, json!({"nope": 1})).await;
        assert_eq!(bad.status, 400, "{}", action.name);
        let path = format!("/actions/{}/run/async", action.name);
        let bad = app
            .post(&path, &path, json!({"callback": {"url": "http://x"}}))
            .await;
        assert_eq!(bad.status, 400, "{}: inputs are required", action.name);
    }
    // Input-less actions take one `{custom_data}` input.
    let uid = app
        .submit_ok(
            "linkedin-me",
            json!({"inputs": [{"custom_data": {"a": 1}}], "callback": {"url": app.receiver.url}}),
        )
        .await;
    let received = app.wait_final_callback("linkedin-me", &uid).await;
    assert_eq!(received[0].body["results_count"], 1);
    assert_eq!(received[0].body["custom_data"], json!({"a": 1}));
}

#[tokio::test]
async fn stats_count_requests_by_route_template_and_status() {
    let app = spawn_app().await;
    app.get(
        "/runs/{run_uid}",
        "/runs/00000000-0000-4000-8000-000000000000",
    )
    .await;
    app.get(
        "/runs/{run_uid}",
        "/runs/00000000-0000-4000-8000-000000000001",
    )
    .await;
    let stats = app.stats().await;
    assert_eq!(stats["requests"]["GET /v4/runs/{run_uid}"]["404"], 2);
}
