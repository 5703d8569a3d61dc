use reqwest::Method;
use serde_json::Value;

use crate::v3_support::*;

#[tokio::test]
async fn a_call_without_the_x_api_key_authorization_is_refused_with_401() {
    let app = spawn_v3().await;
    let missing = app
        .v3_call_as(None, Some(PROJECT), Method::GET, "/workflows", None)
        .await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["error_label"], "UNAUTHORIZED");
    assert!(missing.body["message"]
        .as_str()
        .unwrap()
        .contains("missing Authorization header"));

    let bare = app
        .client
        .get(format!("{}/workflows", app.v3_base()))
        .header("Authorization", V3_KEY)
        .header("x-project-id", PROJECT.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    let body: Value = bare.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key <KEY>"));

    let unknown = app
        .v3_call_as(Some("nope"), Some(PROJECT), Method::GET, "/workflows", None)
        .await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.body["message"], "unknown API key");
}

#[tokio::test]
async fn the_project_header_is_required_and_must_be_the_keys_project() {
    let app = spawn_v3().await;
    let missing = app
        .v3_call_as(Some(V3_KEY), None, Method::GET, "/workflows", None)
        .await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.body["message"], "missing x-project-id header");

    let other = app
        .v3_call_as(
            Some(V3_KEY),
            Some(OTHER_PROJECT),
            Method::GET,
            "/workflows",
            None,
        )
        .await;
    assert_eq!(other.status, 401);
    assert!(other.body["message"]
        .as_str()
        .unwrap()
        .contains("is not the project of this API key"));
    let scheme_case = app
        .client
        .get(format!("{}/workflows", app.v3_base()))
        .header("Authorization", format!("X-API-KEY {V3_KEY}"))
        .header("x-project-id", PROJECT.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(scheme_case.status(), 200, "the scheme is case-insensitive");
}

#[tokio::test]
async fn a_project_sees_its_workflows_and_jobs_only() {
    let app = spawn_v3().await;
    let listed = app.v3_get("/workflows").await;
    let uids: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["uid"].as_str().unwrap())
        .collect();
    let (workflow, quiet, private) = (
        WORKFLOW.to_string(),
        QUIET_WORKFLOW.to_string(),
        OTHER_WORKFLOW.to_string(),
    );
    assert_eq!(uids, [workflow.as_str(), quiet.as_str()]);
    let first = &listed.body[0];
    assert_eq!(first["name"], "Extract LinkedIn People Profile");
    assert_eq!(first["project_id"], 1);
    assert!(first["permalink"]
        .as_str()
        .unwrap()
        .starts_with("extract-linkedin-people-profile"));
    assert!(!uids.contains(&private.as_str()));

    let job = app
        .launch(QUIET_WORKFLOW, serde_json::json!({"inputs": [{"q": "x"}]}))
        .await;
    let theirs = app
        .v3_call_as(
            Some(V3_OTHER_KEY),
            Some(OTHER_PROJECT),
            Method::GET,
            &format!("/jobs/{job}"),
            None,
        )
        .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.body["error_label"], "JOB_404_NOT_FOUND");
    let hidden = app
        .v3_post(
            &format!("/workflows/{OTHER_WORKFLOW}/schedule"),
            launch_body(1),
        )
        .await;
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.body["error_label"], "WORKFLOW_404_NOT_FOUND");
}

#[tokio::test]
async fn without_v3_projects_every_v4_key_opens_its_workspace_and_a_default_workflow() {
    let app = crate::support::spawn_app().await;
    let sim = app.sim.as_ref().unwrap();
    let projects = sim.v3_projects();
    let (key, project) = projects
        .iter()
        .find(|(k, _)| k == crate::support::KEY)
        .unwrap()
        .clone();
    let workflows = app
        .v3_call_as(Some(&key), Some(project), Method::GET, "/workflows", None)
        .await;
    assert_eq!(workflows.status, 200);
    assert_eq!(workflows.body.as_array().unwrap().len(), 1);
    assert_eq!(sim.v3_workflows()[0].1, "Extract LinkedIn People Profile");
}
