//! v3 test support: a simulator configured with two v3 projects and three workflows (one
//! sending its webhooks to the test receiver with a custom header), and a client that sends
//! `Authorization: x-api-key <KEY>` + `x-project-id` on every call.

use captain_sim::v3::{
    V3HeaderConfig, V3ProjectConfig, V3WebhookConfig, V3WebhookEvent, V3WorkflowConfig,
};
use captain_sim::SimConfig;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{eventually, fast_config, spawn_app_with, Received, Resp, TestApp};

pub const V3_KEY: &str = "v3-key-a";
pub const V3_OTHER_KEY: &str = "v3-key-b";
pub const PROJECT: Uuid = Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0001);
pub const OTHER_PROJECT: Uuid = Uuid::from_u128(0x0a11_0000_0000_4000_8000_0000_0000_0002);
/// Sends its webhooks to the receiver, with `Authorization: Bearer hook-secret`.
pub const WORKFLOW: Uuid = Uuid::from_u128(0x0b22_0000_0000_4000_8000_0000_0000_0001);
/// No webhook.
pub const QUIET_WORKFLOW: Uuid = Uuid::from_u128(0x0b22_0000_0000_4000_8000_0000_0000_0002);
/// Visible to the other project only.
pub const OTHER_WORKFLOW: Uuid = Uuid::from_u128(0x0b22_0000_0000_4000_8000_0000_0000_0003);
pub const STEP: Uuid = Uuid::from_u128(0x0c33_0000_0000_4000_8000_0000_0000_0001);
pub const ACCOUNT: &str = "fc457336-63da-47f8-9a3c-53f2581d0ccb";
pub const HOOK_SECRET: &str = "Bearer hook-secret";

/// A v3 config whose first workflow's webhook goes to `receiver_url`.
pub fn v3_config(receiver_url: &str) -> SimConfig {
    let mut config = fast_config();
    config.v3.projects = vec![
        V3ProjectConfig {
            key: V3_KEY.into(),
            project_uid: Some(PROJECT),
        },
        V3ProjectConfig {
            key: V3_OTHER_KEY.into(),
            project_uid: Some(OTHER_PROJECT),
        },
    ];
    config.v3.workflows = vec![
        V3WorkflowConfig {
            uid: Some(WORKFLOW),
            name: "Extract LinkedIn People Profile".into(),
            steps: vec![STEP],
            webhook: Some(V3WebhookConfig {
                url: receiver_url.into(),
                headers: vec![V3HeaderConfig {
                    name: "Authorization".into(),
                    value: HOOK_SECRET.into(),
                }],
                events: vec![
                    V3WebhookEvent::Created,
                    V3WebhookEvent::Succeeded,
                    V3WebhookEvent::Failed,
                ],
            }),
            ..V3WorkflowConfig::default()
        },
        V3WorkflowConfig {
            uid: Some(QUIET_WORKFLOW),
            name: "Search Companies".into(),
            input_key: None,
            action: "linkedin-search-companies".into(),
            results_per_input: 3,
            ..V3WorkflowConfig::default()
        },
        V3WorkflowConfig {
            uid: Some(OTHER_WORKFLOW),
            name: "Private".into(),
            project_uid: Some(OTHER_PROJECT),
            ..V3WorkflowConfig::default()
        },
    ];
    config.v3.runtime.timings.start_after_ms = 1;
    config.v3.runtime.timings.input_interval_ms = 1;
    config.v3.runtime.delivery.backoff_ms = 5;
    config.v3.runtime.delivery.timeout_ms = 2_000;
    config
}

/// The simulator with a v3 config built for its receiver.
pub async fn spawn_v3() -> TestApp {
    spawn_v3_with(|_| {}).await
}

/// Same, with the config adjusted by `tune` first.
pub async fn spawn_v3_with(tune: impl FnOnce(&mut SimConfig)) -> TestApp {
    // The webhook URL is part of the config, so the receiver starts first.
    let receiver = crate::support::Receiver::start().await;
    let mut config = v3_config(&receiver.url);
    tune(&mut config);
    let mut app = spawn_app_with(config).await;
    app.receiver = receiver;
    app
}

/// `n` inputs for the default workflow, each with a `meta` object.
pub fn inputs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "linkedin_profile_url": format!("https://www.linkedin.com/in/person-{i}"),
                "meta": {"row": i}
            })
        })
        .collect()
}

/// A launch body for [`WORKFLOW`].
pub fn launch_body(n: usize) -> Value {
    json!({
        "job_name": "Nightly enrichment",
        "inputs": inputs(n),
        "steps": [{"step_uid": STEP, "accounts": [ACCOUNT], "accounts_rotation_enabled": true, "parameters": {}}],
    })
}

impl TestApp {
    pub fn v3_base(&self) -> String {
        self.root.clone() + "/v3"
    }

    /// A v3 call with the given key and project header (`None` leaves the header out).
    pub async fn v3_call_as(
        &self,
        key: Option<&str>,
        project: Option<Uuid>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.v3_base()));
        if let Some(key) = key {
            request = request.header("Authorization", format!("x-api-key {key}"));
        }
        if let Some(project) = project {
            request = request.header("x-project-id", project.to_string());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() >= 400 {
            assert_v3_error(status.as_u16(), &body);
        }
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn v3_get(&self, path: &str) -> Resp {
        self.v3_call_as(Some(V3_KEY), Some(PROJECT), Method::GET, path, None)
            .await
    }

    pub async fn v3_post(&self, path: &str, body: Value) -> Resp {
        self.v3_call_as(Some(V3_KEY), Some(PROJECT), Method::POST, path, Some(body))
            .await
    }

    /// Launches on `workflow` and returns the job uid (asserting 200).
    pub async fn launch(&self, workflow: Uuid, body: Value) -> String {
        let resp = self
            .v3_post(&format!("/workflows/{workflow}/schedule"), body)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.body["job_uid"].as_str().unwrap().to_owned()
    }

    pub async fn job(&self, uid: &str) -> Value {
        let resp = self.v3_get(&format!("/jobs/{uid}")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.body
    }

    /// Waits until the job has `status`.
    pub async fn wait_job(&self, uid: &str, status: &str) -> Value {
        eventually(|| async {
            let job = self.job(uid).await;
            (job["status"] == status).then_some(job)
        })
        .await
    }

    /// Every result row, paging by `page_size` until an empty page.
    pub async fn all_results(&self, uid: &str, page_size: u64) -> Vec<Value> {
        let mut rows = Vec::new();
        for page in 0.. {
            let resp = self
                .v3_get(&format!(
                    "/jobs/{uid}/results?page={page}&page_size={page_size}"
                ))
                .await;
            assert_eq!(resp.status, 200, "{}", resp.body);
            let batch = resp.body["results"].as_array().unwrap().clone();
            assert!(batch.len() as u64 <= page_size);
            if batch.is_empty() {
                break;
            }
            rows.extend(batch);
        }
        rows
    }

    /// The simulator's ground truth of a job.
    pub async fn truth(&self, uid: &str) -> Value {
        self.client
            .get(format!("{}/_sim/v3/jobs/{uid}", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until no engine or webhook task of the job is left, and returns its ground truth.
    pub async fn wait_settled(&self, uid: &str) -> Value {
        eventually(|| async {
            let truth = self.truth(uid).await;
            (truth["settled"] == true).then_some(truth)
        })
        .await
    }

    /// Reads, adjusts and writes back the runtime v3 config.
    pub async fn tune_v3(&self, tune: impl FnOnce(&mut Value)) {
        let mut config: Value = self
            .client
            .get(format!("{}/_sim/v3/config", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tune(&mut config);
        let resp = self
            .client
            .put(format!("{}/_sim/v3/config", self.root))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    /// Webhooks received for a job, in arrival order.
    pub fn webhooks_of(&self, job_uid: &str) -> Vec<Received> {
        self.receiver
            .all()
            .into_iter()
            .filter(|r| r.body["job_uid"] == job_uid)
            .collect()
    }

    /// Waits until `n` webhooks of the job arrived.
    pub async fn wait_webhooks(&self, job_uid: &str, n: usize) -> Vec<Received> {
        eventually(|| async {
            let all = self.webhooks_of(job_uid);
            (all.len() >= n).then_some(all)
        })
        .await
    }
}

/// A v3 error body: the v4 APIError shape with `status_code` mirroring the status.
pub fn assert_v3_error(status: u16, body: &Value) {
    assert!(body["message"].is_string(), "error without message: {body}");
    assert!(
        body["error_label"].is_string(),
        "error without label: {body}"
    );
    assert_eq!(body["status_code"], status, "{body}");
}
