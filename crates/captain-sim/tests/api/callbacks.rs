use serde_json::json;

use crate::support::*;

async fn replay(app: &TestApp, uid: &str) -> Resp {
    app.post(
        "/runs/callbacks/{callback_uid}/replay",
        &format!("/runs/callbacks/{uid}/replay"),
        json!({}),
    )
    .await
}

#[tokio::test]
async fn every_delivery_is_recorded_and_listed_newest_first() {
    let app = spawn_app().await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 15))
        .await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let records = eventually(|| async {
        let list = app
            .get(
                "/runs/callbacks",
                &format!("/runs/callbacks?run_uid={uid}&status=SUCCESS"),
            )
            .await;
        (list.body.as_array().unwrap().len() == received.len()).then_some(list.body)
    })
    .await;
    let records = records.as_array().unwrap();
    assert!(records
        .iter()
        .all(|r| r["http_status"] == 200 && r["retry_count"] == 0));
    assert!(records.iter().all(|r| r["parent_uid"].is_null()));
    assert!(records[0]["created_at"].as_str() >= records[2]["created_at"].as_str());
    let one = app
        .get(
            "/runs/callbacks/{callback_uid}",
            &format!("/runs/callbacks/{}", records[0]["uid"].as_str().unwrap()),
        )
        .await;
    assert_eq!(one.body, records[0]);
    let paged = app
        .get(
            "/runs/callbacks",
            "/runs/callbacks?limit=1&offset=1&sort=created_at",
        )
        .await;
    assert_eq!(paged.body.as_array().unwrap().len(), 1);
    assert_eq!(paged.body[0], records[1]);
}

#[tokio::test]
async fn a_callback_can_be_replayed_three_times_with_the_same_batch_uid_but_not_a_fourth() {
    let app = spawn_app().await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let original_batch = received[0].body["run"]["batch_uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let records = app
        .get("/runs/callbacks", &format!("/runs/callbacks?run_uid={uid}"))
        .await;
    let original = records
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["batch_uid"] == original_batch.as_str())
        .unwrap()["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut replays = Vec::new();
    for _ in 0..3 {
        let resp = replay(&app, &original).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.body["parent_uid"], original.as_str());
        assert_eq!(resp.body["batch_uid"], original_batch.as_str());
        assert_ne!(resp.body["uid"], original.as_str());
        replays.push(resp.body["uid"].as_str().unwrap().to_owned());
    }
    let fourth = replay(&app, &original).await;
    assert_eq!(fourth.status, 400);
    assert!(fourth.body["message"].as_str().unwrap().contains("3 times"));
    let of_replay = replay(&app, &replays[0]).await;
    assert_eq!(of_replay.status, 400);
    assert!(of_replay.body["message"]
        .as_str()
        .unwrap()
        .contains("replay"));
    let resent = eventually(|| async {
        let same: Vec<_> = app
            .receiver
            .of_run(&uid)
            .into_iter()
            .filter(|r| r.body["run"]["batch_uid"] == original_batch.as_str())
            .collect();
        (same.len() == 4).then_some(same)
    })
    .await;
    assert!(
        resent.iter().all(|r| r.body == resent[0].body),
        "replays re-send the same payload"
    );
}

#[tokio::test]
async fn receiver_failures_are_retried_then_recorded_failed_with_the_http_status() {
    let app = spawn_app().await;
    app.receiver
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let record = eventually(|| async {
        let list = app
            .get(
                "/runs/callbacks",
                &format!("/runs/callbacks?run_uid={uid}&status=FAILED"),
            )
            .await;
        list.body.as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(record["http_status"], 503);
    assert_eq!(record["retry_count"], 2, "3 attempts by default");
    assert!(app.receiver.of_run(&uid).len() >= 3);
    // Once the receiver is back, a replay recovers the batch.
    app.receiver
        .status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let resp = replay(&app, record["uid"].as_str().unwrap()).await;
    assert_eq!(resp.status, 200);
    let new_uid = resp.body["uid"].as_str().unwrap().to_owned();
    eventually(|| async {
        let r = app
            .get(
                "/runs/callbacks/{callback_uid}",
                &format!("/runs/callbacks/{new_uid}"),
            )
            .await;
        (r.body["status"] == "SUCCESS").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_run_without_a_callback_url_sends_nothing_but_still_completes() {
    let app = spawn_app().await;
    let mut body = app.search_body(1, 5);
    body["callback"] = json!({"url": null});
    let uid = app.submit_ok("linkedin-search-people", body).await;
    let run = app.wait_run_status(&uid, "SUCCEEDED").await;
    assert!(run["callback"].is_null());
    assert!(app.receiver.of_run(&uid).is_empty());
}
