use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn requests_without_or_with_an_unknown_api_key_are_refused_with_401() {
    let app = spawn_app().await;
    for key in [None, Some("nope")] {
        let resp = app.call_as(key, Method::GET, "/runs", "/runs", None).await;
        assert_eq!(resp.status, 401);
        assert_eq!(resp.body["error_label"], "UNAUTHORIZED");
    }
    let resp = app
        .call_as(Some(KEY), Method::GET, "/runs", "/runs", None)
        .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn the_api_key_header_name_is_case_insensitive() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/runs", app.base))
        .header("x-api-KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn runs_schedules_and_callbacks_are_only_visible_to_their_own_workspace() {
    let app = spawn_app().await;
    let run = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    app.wait_final_callback("linkedin-search-people", &run)
        .await;
    let mine = app.run(&run).await;
    assert_eq!(mine["uid"], run.as_str());

    let theirs = app
        .call_as(
            Some(OTHER_KEY),
            Method::GET,
            "/runs/{run_uid}",
            &format!("/runs/{run}"),
            None,
        )
        .await;
    assert_eq!(theirs.status, 404);
    let list = app
        .call_as(Some(OTHER_KEY), Method::GET, "/runs", "/runs", None)
        .await;
    assert_eq!(list.body, json!([]));
    let callbacks = app
        .call_as(
            Some(OTHER_KEY),
            Method::GET,
            "/runs/callbacks",
            "/runs/callbacks",
            None,
        )
        .await;
    assert_eq!(callbacks.body, json!([]));
    let own_callbacks = app.get("/runs/callbacks", "/runs/callbacks").await;
    let uid = own_callbacks.body[0]["uid"].as_str().unwrap().to_owned();
    let replay = app
        .call_as(
            Some(OTHER_KEY),
            Method::POST,
            "/runs/callbacks/{callback_uid}/replay",
            &format!("/runs/callbacks/{uid}/replay"),
            Some(json!({})),
        )
        .await;
    assert_eq!(replay.status, 404);
}
