use serde_json::{json, Value};

use crate::v3_support::*;

async fn refusal(app: &crate::support::TestApp, body: Value) -> (String, String) {
    let resp = app
        .v3_post(&format!("/workflows/{WORKFLOW}/schedule"), body)
        .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    (
        resp.body["params"]["field"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        resp.body["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_launch_answers_the_workflow_a_message_and_the_new_job_uid() {
    let app = spawn_v3().await;
    let resp = app
        .v3_post(&format!("/workflows/{WORKFLOW}/schedule"), launch_body(2))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.body["message"], "Bot successfully scheduled.");
    assert_eq!(resp.body["workflow"]["uid"], WORKFLOW.to_string());
    let job_uid = resp.body["job_uid"].as_str().unwrap();
    uuid::Uuid::parse_str(job_uid).unwrap();
    let created = resp.body["workflow"]["created_at"].as_str().unwrap();
    // Naive ISO 8601 with microseconds, as in the API reference's example.
    assert_eq!(
        created.len(),
        "2024-10-26T22:35:35.803378".len(),
        "{created}"
    );

    let job = app.job(job_uid).await;
    assert_eq!(job["name"], "Nightly enrichment");
    assert_eq!(job["workflow_uid"], WORKFLOW.to_string());
    assert_eq!(job["workflow_name"], "Extract LinkedIn People Profile");
    assert_eq!(job["total_inputs"], 2);
    let truth = app.truth(job_uid).await;
    assert_eq!(truth["steps"][0]["step_uid"], STEP.to_string());
}

#[tokio::test]
async fn a_launch_without_job_name_or_steps_is_accepted_with_a_default_name() {
    let app = spawn_v3().await;
    let job = app.launch(WORKFLOW, json!({"inputs": inputs(1)})).await;
    assert_eq!(app.job(&job).await["name"], "Automated Run");

    app.tune_v3(|c| {
        c["behaviour"]["require_job_name"] = json!(true);
        c["behaviour"]["require_steps"] = json!(true);
    })
    .await;
    assert_eq!(
        refusal(&app, json!({"inputs": inputs(1)})).await.0,
        "job_name"
    );
    assert_eq!(
        refusal(&app, json!({"job_name": "x", "inputs": inputs(1)}))
            .await
            .0,
        "steps"
    );
}

#[tokio::test]
async fn every_malformed_launch_is_refused_naming_the_field() {
    let app = spawn_v3().await;
    let step = |extra: Value| {
        let mut s = json!({"step_uid": STEP, "accounts": [ACCOUNT]});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        json!({"inputs": inputs(1), "steps": [s]})
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([1]), "body", "must be a JSON object"),
        (json!({}), "inputs", "is required"),
        (json!({"inputs": []}), "inputs", "at least one input"),
        (json!({"inputs": {"a": 1}}), "inputs", "must be an array"),
        (json!({"inputs": [1]}), "inputs[0]", "must be an object"),
        (
            json!({"inputs": [{"linkedin_profile_url": "https://x"}, {"name": "n"}]}),
            "inputs[1].linkedin_profile_url",
            "is required by workflow",
        ),
        (
            json!({"inputs": [{"linkedin_profile_url": " "}]}),
            "inputs[0].linkedin_profile_url",
            "must not be empty",
        ),
        (
            json!({"inputs": [{"linkedin_profile_url": "https://x", "meta": 3}]}),
            "inputs[0].meta",
            "must be an object",
        ),
        (
            json!({"inputs": inputs(1), "job_name": 7}),
            "job_name",
            "must be a string",
        ),
        (
            json!({"inputs": inputs(1), "job_name": ""}),
            "job_name",
            "must not be empty",
        ),
        (
            json!({"inputs": inputs(1), "delay": -1}),
            "delay",
            "between 0 and",
        ),
        (
            json!({"inputs": inputs(1), "delay": 1.5}),
            "delay",
            "integer number of seconds",
        ),
        (
            json!({"inputs": inputs(1), "steps": {}}),
            "steps",
            "must be an array",
        ),
        (
            json!({"inputs": inputs(1), "steps": [{"accounts": []}]}),
            "steps[0].step_uid",
            "is required",
        ),
        (
            json!({"inputs": inputs(1), "steps": [{"step_uid": "s1", "accounts": []}]}),
            "steps[0].step_uid",
            "not a valid UUID",
        ),
        (
            json!({"inputs": inputs(1), "steps": [{"step_uid": ACCOUNT, "accounts": []}]}),
            "steps[0].step_uid",
            "is not a step of workflow",
        ),
        (
            step(json!({"accounts": null})),
            "steps[0].accounts",
            "is required",
        ),
        (
            step(json!({"accounts": ["not-a-uid"]})),
            "steps[0].accounts[0]",
            "not an account UUID",
        ),
        (
            step(json!({"accounts_rotation_enabled": "yes"})),
            "steps[0].accounts_rotation_enabled",
            "must be a boolean",
        ),
        (
            step(json!({"parameters": []})),
            "steps[0].parameters",
            "must be an object",
        ),
        (
            step(json!({"retries": 3})),
            "steps[0].retries",
            "unknown field",
        ),
        (
            json!({"inputs": inputs(1), "callback": {}}),
            "callback",
            "unknown field",
        ),
        (
            json!({"inputs": inputs(1), "repeat_option": {"type": "minute", "value": 10}}),
            "repeat_option",
            "not simulated",
        ),
        (
            json!({"inputs": inputs(1), "unstructure_meta": "no"}),
            "unstructure_meta",
            "must be a boolean",
        ),
    ];
    for (body, field, reason) in cases {
        let (got_field, message) = refusal(&app, body.clone()).await;
        assert_eq!(got_field, field, "{body}: {message}");
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
        assert!(message.contains(reason), "{body}: {message}");
    }
    let twice = json!({"inputs": inputs(1), "steps": [
        {"step_uid": STEP, "accounts": []}, {"step_uid": STEP, "accounts": []}]});
    assert_eq!(refusal(&app, twice).await.0, "steps[1].step_uid");

    let raw = app
        .client
        .post(format!("{}/workflows/{WORKFLOW}/schedule", app.v3_base()))
        .header("Authorization", format!("x-api-key {V3_KEY}"))
        .header("x-project-id", PROJECT.to_string())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .starts_with("body: invalid JSON"));
    assert_eq!(app.stats().await["v3"]["jobs_created"], 0);
}

#[tokio::test]
async fn unknown_fields_are_accepted_when_strictness_is_off() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["behaviour"]["strict_fields"] = json!(false))
        .await;
    app.launch(
        WORKFLOW,
        json!({"inputs": inputs(1), "callback": {"url": "x"}}),
    )
    .await;
}

#[tokio::test]
async fn too_many_inputs_and_a_malformed_workflow_uid_are_refused() {
    let app = spawn_v3().await;
    app.tune_v3(|c| c["behaviour"]["max_inputs"] = json!(3))
        .await;
    let (field, message) = refusal(&app, json!({"inputs": inputs(4)})).await;
    assert_eq!(field, "inputs");
    assert!(message.contains("at most 3"), "{message}");
    let bad = app.v3_post("/workflows/w-1/schedule", launch_body(1)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["params"]["field"], "workflow_uid");
}
