use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn an_async_submission_answers_pending_and_the_run_reaches_succeeded() {
    let app = spawn_app().await;
    let resp = app
        .submit("linkedin-search-people", app.search_body(2, 5))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body["status"], "pending");
    assert_eq!(resp.body["action_name"], "linkedin-search-people");
    let uid = resp.body["run_uid"].as_str().unwrap();
    app.wait_final_callback("linkedin-search-people", uid).await;
    let run = app.run(uid).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["execution_mode"], "ASYNC");
    assert_eq!(run["callback"]["url"], app.receiver.url.as_str());
    assert_eq!(run["id"], resp.body["run_id"]);
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    let listed = app
        .get(
            "/runs",
            &format!("/runs?uid={uid}&status=SUCCEEDED&execution_mode=ASYNC"),
        )
        .await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn async_run_delivers_one_callback_per_page_then_a_final_one() {
    let app = spawn_app().await;
    // linkedin-search-people pages by 10: 25 results -> pages of 10, 10, 5 per input.
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(2, 25))
        .await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    assert_eq!(received.len(), 7, "3 pages x 2 inputs + 1 final");
    let (pages, last) = received.split_at(6);
    for (i, page) in pages.iter().enumerate() {
        let body = &page.body;
        assert_eq!(body["run"]["status"], "RUNNING");
        assert!(body["error"].is_null());
        let expected = [10, 10, 5][i % 3];
        assert_eq!(body["results_count"], expected);
        assert_eq!(body["results"].as_array().unwrap().len(), expected);
        assert_eq!(body["custom_data"], json!({"row": i / 3}));
        assert!(body["input"]["linkedin_people_search_url"].is_string());
        assert!(
            body["input"].get("custom_data").is_none(),
            "custom_data is at the root"
        );
        assert_eq!(page.headers["authorization"], "Bearer s3cret");
        assert_eq!(page.headers["content-type"], "application/json");
    }
    let last = &last[0].body;
    assert_eq!(last["run"]["status"], "SUCCEEDED");
    assert_eq!(last["results_count"], 0);
    assert_eq!(last["results"], json!([]));
    let mut batches: Vec<&str> = received
        .iter()
        .map(|r| r.body["run"]["batch_uid"].as_str().unwrap())
        .collect();
    batches.sort();
    batches.dedup();
    assert_eq!(batches.len(), 7, "every callback has a fresh batch_uid");
}

#[tokio::test]
async fn single_object_actions_send_one_result_per_input() {
    let app = spawn_app().await;
    let body = json!({
        "inputs": [
            {"linkedin_profile_url": "https://www.linkedin.com/in/a"},
            {"linkedin_profile_url": "https://www.linkedin.com/in/b"}
        ],
        "callback": {"url": app.receiver.url}
    });
    let uid = app.submit_ok("linkedin-extract-people", body).await;
    let received = app
        .wait_final_callback("linkedin-extract-people", &uid)
        .await;
    let counts: Vec<_> = received
        .iter()
        .map(|r| r.body["results_count"].clone())
        .collect();
    assert_eq!(counts, vec![json!(1), json!(1), json!(0)]);
}

#[tokio::test]
async fn a_blocked_run_waits_for_resume_then_completes() {
    let mut config = fast_config();
    config.runtime.outcomes.succeeded = 0.0;
    config.runtime.outcomes.blocked = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 30))
        .await;
    let run = app.wait_run_status(&uid, "BLOCKED").await;
    assert_eq!(run["last_error"]["label"], "BLOCKED");
    let resumed = app
        .post(
            "/runs/{run_uid}/resume",
            &format!("/runs/{uid}/resume"),
            json!({}),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let statuses: Vec<_> = received
        .iter()
        .map(|r| r.body["run"]["status"].clone())
        .collect();
    assert!(statuses.contains(&json!("BLOCKED")));
    assert_eq!(statuses.last().unwrap(), "SUCCEEDED");
    let pages: u64 = received
        .iter()
        .map(|r| r.body["results_count"].as_u64().unwrap())
        .sum();
    assert_eq!(pages, 30, "every result is delivered across the block");
    assert_eq!(app.run(&uid).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn resuming_a_run_that_is_not_blocked_or_stopped_is_400() {
    let app = spawn_app().await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    app.wait_run_status(&uid, "SUCCEEDED").await;
    let resp = app
        .post(
            "/runs/{run_uid}/resume",
            &format!("/runs/{uid}/resume"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body["error_label"], "RUN_NOT_RESUMABLE");
}

#[tokio::test]
async fn a_partial_run_sends_errors_for_failing_inputs_and_ends_partial_succeeded() {
    let mut config = fast_config();
    config.runtime.outcomes.succeeded = 0.0;
    config.runtime.outcomes.partial_succeeded = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(4, 5))
        .await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let failed: Vec<_> = received
        .iter()
        .filter(|r| r.body["run"]["status"] == "RUNNING" && r.body["error"].is_object())
        .collect();
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|r| r.body["results_count"] == 0));
    assert_eq!(
        received.last().unwrap().body["run"]["status"],
        "PARTIAL_SUCCEEDED"
    );
    assert_eq!(app.run(&uid).await["status"], "PARTIAL_SUCCEEDED");
}

#[tokio::test]
async fn a_failed_run_sends_a_final_callback_with_an_error() {
    let mut config = fast_config();
    config.runtime.outcomes.succeeded = 0.0;
    config.runtime.outcomes.failed = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 50))
        .await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let last = &received.last().unwrap().body;
    assert_eq!(last["run"]["status"], "FAILED");
    assert_eq!(last["error"]["error_label"], "NO_RESULT");
    let run = app.run(&uid).await;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(run["last_error"]["label"], "NO_RESULT");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_outcomes_whatever_the_concurrency() {
    async fn outcomes(sequential: bool) -> Vec<String> {
        let mut config = fast_config();
        config.runtime.outcomes.partial_succeeded = 1.0;
        config.runtime.outcomes.failed = 1.0;
        let app = spawn_app_with(config).await;
        let mut uids = Vec::new();
        for _ in 0..12 {
            uids.push(
                app.submit_ok("linkedin-search-people", app.search_body(2, 3))
                    .await,
            );
            if sequential {
                app.wait_final_callback("linkedin-search-people", uids.last().unwrap())
                    .await;
            }
        }
        let mut out = Vec::new();
        for uid in &uids {
            let received = app.wait_final_callback("linkedin-search-people", uid).await;
            out.push(
                received.last().unwrap().body["run"]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        out
    }
    let a = outcomes(true).await;
    let b = outcomes(false).await;
    assert_eq!(a, b);
    assert!(
        a.iter().any(|s| s != &a[0]),
        "the mix produced several outcomes: {a:?}"
    );
}
