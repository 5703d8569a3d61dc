use serde_json::{json, Value};

use crate::v3_support::*;

#[tokio::test]
async fn a_job_goes_pending_running_finished_and_its_results_page_until_an_empty_page() {
    let app = spawn_v3().await;
    let job = app
        .launch(
            QUIET_WORKFLOW,
            json!({"inputs": [{"q": "a", "meta": {"crm": 1}}, {"q": "b"}, {"q": "c"}]}),
        )
        .await;
    let first = app.job(&job).await;
    assert!(["pending", "running", "finished"].contains(&first["status"].as_str().unwrap()));
    let done = app.wait_job(&job, "finished").await;
    assert_eq!(done["succeeded_inputs"], 3);
    assert_eq!(done["failed_inputs"], 0);
    assert_eq!(done["total_results"], 9);
    assert!(done["start_time"].is_string() && done["end_time"].is_string());
    assert!(done["error_message"].is_null());

    let rows = app.all_results(&job, 4).await;
    assert_eq!(rows.len(), 9);
    let truth = app.truth(&job).await;
    let expected: Vec<&Value> = truth["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["result"])
        .collect();
    assert_eq!(
        rows.iter().collect::<Vec<_>>(),
        expected,
        "pages hold the ground truth in order"
    );
    // `meta` travels from the input to each of its rows.
    assert_eq!(rows[0]["meta"], json!({"crm": 1}));
    assert!(rows[3].get("meta").is_none());
    let default_page = app.v3_get(&format!("/jobs/{job}/results")).await;
    assert_eq!(default_page.body["results"].as_array().unwrap().len(), 9);
    let past = app.v3_get(&format!("/jobs/{job}/results?page=7")).await;
    assert_eq!(past.body, json!({"results": []}));
    let stats = app.stats().await;
    assert_eq!(stats["v3"]["results_served"], 18);
    assert_eq!(stats["v3"]["jobs_by_status"]["finished"], 1);
    assert_eq!(
        stats["requests"]["GET /v3/jobs/{job_uid}/results"]["200"], 6,
        "4 pages of the walk (the last empty), the default page, the page past the end"
    );
}

#[tokio::test]
async fn unstructured_meta_is_merged_into_each_row() {
    let app = spawn_v3().await;
    let job = app
        .launch(
            QUIET_WORKFLOW,
            json!({"inputs": [{"meta": {"crm": 1}}], "unstructure_meta": true}),
        )
        .await;
    app.wait_job(&job, "finished").await;
    let rows = app.all_results(&job, 50).await;
    assert_eq!(rows[0]["crm"], 1);
    assert!(rows[0].get("meta").is_none());
}

#[tokio::test]
async fn bad_paging_values_are_refused_naming_the_parameter() {
    let app = spawn_v3().await;
    let job = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    for (query, field) in [
        ("page=-1", "page"),
        ("page=x", "page"),
        ("page_size=0", "page_size"),
        ("page_size=501", "page_size"),
    ] {
        let resp = app.v3_get(&format!("/jobs/{job}/results?{query}")).await;
        assert_eq!(resp.status, 400, "{query}");
        assert_eq!(resp.body["params"]["field"], field);
    }
    let missing = app
        .v3_get("/jobs/00000000-0000-4000-8000-000000000000/results")
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_success_status_can_be_spelled_completed() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["behaviour"]["success_status"] = json!("completed"))
        .await;
    let job = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    app.wait_job(&job, "completed").await;
}

#[tokio::test]
async fn a_warning_job_keeps_the_results_of_its_succeeded_inputs_and_a_retry_finishes_it() {
    let app = spawn_v3().await;
    app.tune_v3(|c| {
        c["outcomes"] = json!({"finished": 0.0, "warning": 1.0, "input_failure_rate": 0.5});
    })
    .await;
    let job = app
        .launch(
            QUIET_WORKFLOW,
            json!({"inputs": (0..8).map(|i| json!({"n": i})).collect::<Vec<_>>()}),
        )
        .await;
    let warned = app.wait_job(&job, "warning").await;
    let failed = warned["failed_inputs"].as_u64().unwrap();
    let succeeded = warned["succeeded_inputs"].as_u64().unwrap();
    assert!(failed >= 1 && failed + succeeded == 8, "{warned}");
    assert_eq!(warned["total_results"], succeeded * 3);
    assert!(warned["error_message"]
        .as_str()
        .unwrap()
        .contains(&format!("{failed} of 8 inputs failed")));
    let listed = app
        .v3_get(&format!("/jobs/{job}/inputs?page_size=100"))
        .await;
    let statuses: Vec<&str> = listed.body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "failed").count() as u64,
        failed
    );
    let failed_input = listed.body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "failed")
        .unwrap();
    assert!(failed_input["error"]
        .as_str()
        .unwrap()
        .starts_with("Error while completing action"));
    assert_eq!(failed_input["results_count"], 0);

    let retried = app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.body["message"], "Job successfully retried.");
    let done = app.wait_job(&job, "finished").await;
    assert_eq!(done["total_results"], 24);
    assert_eq!(done["retries"], 1);
    assert!(done["error_message"].is_null());
}

#[tokio::test]
async fn a_shutdown_job_ends_at_a_seeded_input_and_a_retry_runs_the_rest() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["outcomes"] = json!({"finished": 0.0, "shutdown": 1.0}))
        .await;
    let job = app
        .launch(
            QUIET_WORKFLOW,
            json!({"inputs": (0..6).map(|i| json!({"n": i})).collect::<Vec<_>>()}),
        )
        .await;
    let down = app.wait_job(&job, "shutdown").await;
    assert!(down["error_message"]
        .as_str()
        .unwrap()
        .starts_with("Technical error"));
    let processed = down["succeeded_inputs"].as_u64().unwrap();
    assert!(processed <= 3, "the cut is in the first half: {down}");
    assert_eq!(down["failed_inputs"], 0);
    app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    let done = app.wait_job(&job, "finished").await;
    assert_eq!(done["succeeded_inputs"], 6);
    assert_eq!(done["total_results"], 18);
}

#[tokio::test]
async fn a_paused_job_waits_for_a_retry_then_finishes() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["outcomes"] = json!({"finished": 0.0, "paused": 1.0}))
        .await;
    let job = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{"n": 1}, {"n": 2}]}))
        .await;
    let paused = app.wait_job(&job, "paused").await;
    assert!(paused["end_time"].is_null(), "a paused job has not ended");
    assert!(paused["error_message"]
        .as_str()
        .unwrap()
        .starts_with("Integration error"));
    app.wait_settled(&job).await;
    assert_eq!(app.job(&job).await["status"], "paused", "it stays paused");
    let resp = app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    assert_eq!(resp.status, 200);
    app.wait_job(&job, "finished").await;
}

#[tokio::test]
async fn a_running_job_can_be_cancelled_and_a_stopped_job_can_be_neither_cancelled_nor_retried() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["timings"]["input_interval_ms"] = json!(60_000))
        .await;
    let job = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{}, {}]}))
        .await;
    app.wait_job(&job, "running").await;
    let resp = app.v3_post(&format!("/jobs/{job}/cancel"), json!({})).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.body["status"], "stopped");
    let truth = app.wait_settled(&job).await;
    assert_eq!(truth["job"]["status"], "stopped");
    assert_eq!(
        truth["job"]["total_results"], 0,
        "the engine stopped with the job"
    );

    let again = app.v3_post(&format!("/jobs/{job}/cancel"), json!({})).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.body["error_label"], "JOB_NOT_CANCELLABLE");
    assert_eq!(again.body["params"]["status"], "stopped");
    let retry = app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    assert_eq!(retry.status, 400);
    assert_eq!(retry.body["error_label"], "JOB_NOT_RETRYABLE");
}

#[tokio::test]
async fn a_delayed_job_stays_pending_until_retried_or_cancelled() {
    let app = spawn_v3().await;
    let job = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{}], "delay": 3600}))
        .await;
    let pending = app.job(&job).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["delay"], 3600);
    // A retry starts a pending job at once.
    app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    app.wait_job(&job, "finished").await;

    let other = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{}], "delay": 3600}))
        .await;
    app.v3_post(&format!("/jobs/{other}/cancel"), json!({}))
        .await;
    let truth = app.wait_settled(&other).await;
    assert_eq!(truth["job"]["status"], "stopped");
    assert!(truth["job"]["start_time"].is_null());
}

#[tokio::test]
async fn a_finished_job_cannot_be_retried() {
    let app = spawn_v3().await;
    let job = app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await;
    app.wait_job(&job, "finished").await;
    let resp = app.v3_post(&format!("/jobs/{job}/retry"), json!({})).await;
    assert_eq!(resp.status, 400);
    assert!(resp.body["message"]
        .as_str()
        .unwrap()
        .contains("only pending, paused, warning or shutdown jobs can"));
    let wrong_method = app.v3_get(&format!("/jobs/{job}/retry")).await;
    assert_eq!(wrong_method.status, 405);
    let nowhere = app.v3_post(&format!("/jobs/{job}/resume"), json!({})).await;
    assert_eq!(nowhere.status, 404);
}

#[tokio::test]
async fn the_jobs_of_a_workflow_are_listed_newest_first_by_page() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["results"]["jobs_page_size"] = json!(2))
        .await;
    let mut uids = Vec::new();
    for _ in 0..3 {
        uids.push(app.launch(QUIET_WORKFLOW, json!({"inputs": [{}]})).await);
    }
    app.launch(WORKFLOW, launch_body(1)).await;
    let page0 = app
        .v3_get(&format!("/workflows/{QUIET_WORKFLOW}/jobs?page=0"))
        .await;
    let page1 = app
        .v3_get(&format!("/workflows/{QUIET_WORKFLOW}/jobs?page=1"))
        .await;
    let page2 = app
        .v3_get(&format!("/workflows/{QUIET_WORKFLOW}/jobs?page=2"))
        .await;
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["uid"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&page0.body), [uids[2].clone(), uids[1].clone()]);
    assert_eq!(ids(&page1.body), [uids[0].clone()]);
    assert!(ids(&page2.body).is_empty());
    for field in ["uid", "name", "workflow_name", "status", "start_time"] {
        assert!(page0.body[0].get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn the_retry_cancel_and_webhook_retry_paths_are_configurable() {
    let app = spawn_v3_with(|c| {
        c.v3.paths.cancel_job = "/jobs/cancel/{job_uid}".into();
        c.v3.paths.retry_job = "/jobs/{job_uid}/relaunch".into();
    })
    .await;
    let job = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{}], "delay": 3600}))
        .await;
    let old = app.v3_post(&format!("/jobs/{job}/cancel"), json!({})).await;
    assert_eq!(old.status, 404);
    let relaunched = app
        .v3_post(&format!("/jobs/{job}/relaunch"), json!({}))
        .await;
    assert_eq!(relaunched.status, 200, "{}", relaunched.body);
    app.wait_job(&job, "finished").await;
    let next = app
        .launch(QUIET_WORKFLOW, json!({"inputs": [{}], "delay": 3600}))
        .await;
    let cancelled = app
        .v3_post(&format!("/jobs/cancel/{next}"), json!({}))
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let stats = app.stats().await;
    assert_eq!(
        stats["requests"]["POST /v3/jobs/cancel/{job_uid}"]["200"],
        1
    );
}

#[tokio::test]
async fn outcomes_are_the_same_for_the_same_seed() {
    let statuses = |app: crate::support::TestApp| async move {
        app.tune_v3(|c| {
            c["outcomes"] = json!({"finished": 1.0, "warning": 1.0, "shutdown": 1.0, "input_failure_rate": 0.5});
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..6 {
            let job = app
                .launch(QUIET_WORKFLOW, json!({"inputs": [{}, {}, {}]}))
                .await;
            let truth = app.wait_settled(&job).await;
            out.push((
                truth["job"]["status"].as_str().unwrap().to_owned(),
                truth["job"]["total_results"].as_u64().unwrap(),
            ));
        }
        out
    };
    let a = statuses(spawn_v3().await).await;
    let b = statuses(spawn_v3().await).await;
    assert_eq!(a, b);
    assert!(a.iter().any(|(s, _)| s != "finished"), "{a:?}");
}
