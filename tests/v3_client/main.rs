//! The bridge's v3 client against the real simulator: `captain-sim` in-process on 127.0.0.1:0
//! serving `/v3`, a real axum receiver for its webhooks, and the simulator's ground truth to
//! check what the client read. No Kafka: the client is not wired into the launch path yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use captain_bridge::captain::v3::{V3Client, V3ClientConfig};
use captain_bridge::captain::v3_wire::{
    V3Job, V3JobStatus, V3ScheduleBody, V3Step, V3WebhookKind, V3WebhookPayload,
};
use captain_bridge::captain::{AdaptiveLimiter, LimiterConfig, RetryPolicy, SubmitError};
use captain_bridge::domain::RunStatus;
use captain_bridge::metrics::Metrics;
use captain_sim::v3::{
    V3HeaderConfig, V3ProjectConfig, V3RuntimeConfig, V3WebhookConfig, V3WebhookEvent,
    V3WorkflowConfig,
};
use captain_sim::{SimConfig, SimHandle, Simulator};
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

const KEY: &str = "bridge-v3-key";
const PROJECT: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
const WORKFLOW: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0002);
const STEP: Uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0003);
const ACCOUNT: &str = "fc457336-63da-47f8-9a3c-53f2581d0ccb";
const SECRET_HEADER: &str = "x-bridge-webhook-secret";
const SECRET: &str = "s3cret-for-v3-webhooks";

/// Webhooks received: headers and raw body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

async fn record(
    State(received): State<Received>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    received.lock().unwrap().push((headers, body.to_vec()));
    StatusCode::OK
}

struct Harness {
    sim: Option<SimHandle>,
    client: V3Client,
    metrics: Metrics,
    received: Received,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            tokio::spawn(sim.shutdown());
        }
    }
}

fn client_config(sim: &SimHandle) -> V3ClientConfig {
    let mut config = V3ClientConfig::new(
        sim.v3_base_url(),
        SecretString::from(KEY),
        PROJECT.to_string(),
    );
    config.retry = RetryPolicy {
        max_attempts: 8,
        initial_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        max_rate_limit_wait: Duration::from_secs(30),
    };
    config.results_page_size = Some(7);
    config
}

/// The simulator (a v3 project and one workflow whose webhook goes to a local receiver with
/// a secret header), and a client for it. `tune` adjusts the simulator config first.
async fn harness(tune: impl FnOnce(&mut SimConfig)) -> Harness {
    let received: Received = Arc::default();
    let receiver = Router::new()
        .route("/v3-webhooks", post(record))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/v3-webhooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let mut config = SimConfig {
        seed: 11,
        ..SimConfig::default()
    };
    config.v3.projects = vec![V3ProjectConfig {
        key: KEY.into(),
        project_uid: Some(PROJECT),
    }];
    config.v3.workflows = vec![V3WorkflowConfig {
        uid: Some(WORKFLOW),
        name: "Extract LinkedIn People Profile".into(),
        steps: vec![STEP],
        webhook: Some(V3WebhookConfig {
            url: hook_url,
            headers: vec![V3HeaderConfig {
                name: SECRET_HEADER.into(),
                value: SECRET.into(),
            }],
            events: vec![
                V3WebhookEvent::Created,
                V3WebhookEvent::Succeeded,
                V3WebhookEvent::Failed,
            ],
        }),
        ..V3WorkflowConfig::default()
    }];
    config.v3.runtime.timings.start_after_ms = 1;
    config.v3.runtime.timings.input_interval_ms = 1;
    config.v3.runtime.delivery.backoff_ms = 5;
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(config, listener).unwrap();
    let metrics = Metrics::new().unwrap();
    let client = V3Client::new(client_config(&sim), metrics.clone()).unwrap();
    Harness {
        sim: Some(sim),
        client,
        metrics,
        received,
    }
}

impl Harness {
    fn sim(&self) -> &SimHandle {
        self.sim.as_ref().unwrap()
    }

    fn set_runtime(&self, tune: impl FnOnce(&mut V3RuntimeConfig)) {
        let mut runtime = V3RuntimeConfig::default();
        runtime.timings.start_after_ms = 1;
        runtime.timings.input_interval_ms = 1;
        runtime.delivery.backoff_ms = 5;
        tune(&mut runtime);
        self.sim().set_v3_runtime_config(runtime).unwrap();
    }

    async fn launch(&self, inputs: usize) -> String {
        self.launch_with(inputs, None).await
    }

    async fn launch_with(&self, inputs: usize, delay: Option<u64>) -> String {
        let body = V3ScheduleBody {
            job_name: Some("bridge test".into()),
            inputs: (0..inputs)
                .map(|i| {
                    json!({"linkedin_profile_url": format!("https://www.linkedin.com/in/p{i}"),
                           "meta": {"row": i}})
                })
                .collect(),
            steps: Some(vec![V3Step {
                step_uid: STEP.to_string(),
                accounts: vec![ACCOUNT.into()],
                accounts_rotation_enabled: Some(false),
                parameters: Some(json!({})),
            }]),
            delay,
        };
        let accepted = self
            .client
            .schedule_workflow(&WORKFLOW.to_string(), &body)
            .await
            .unwrap();
        assert_eq!(
            accepted.message.as_deref(),
            Some("Bot successfully scheduled.")
        );
        accepted.job_uid
    }

    /// Polls the job until its mapped status is `want`.
    async fn wait_status(&self, job: &str, want: RunStatus) -> V3Job {
        eventually(|| async {
            let (job, status) = self.client.job_run_status(job).await.unwrap();
            (status == Some(want)).then_some(job)
        })
        .await
    }

    /// Every row, walking the pages until the empty one.
    async fn all_results(&self, job: &str) -> Vec<Value> {
        let mut pages = self.client.results(job);
        let mut rows = Vec::new();
        while let Some(page) = pages.next_page().await.unwrap() {
            rows.extend(page.results);
        }
        rows
    }

    fn truth(&self, job: &str) -> Value {
        self.sim().v3_job(Uuid::parse_str(job).unwrap()).unwrap()
    }

    async fn wait_settled(&self, job: &str) -> Value {
        eventually(|| async {
            let truth = self.truth(job);
            (truth["settled"] == true).then_some(truth)
        })
        .await
    }

    fn webhooks_of(&self, job: &str) -> Vec<(HeaderMap, V3WebhookPayload)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), V3WebhookPayload::from_slice(b).unwrap()))
            .filter(|(_, p)| p.job_uid == job)
            .collect()
    }

    fn count(&self, endpoint: &str, code: &str) -> u64 {
        self.metrics
            .api_requests
            .with_label_values(&[endpoint, code])
            .get()
    }
}

/// Polls `f` every 10 ms until it answers `Some`, for at most 10 s.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_launched_job_succeeds_and_its_pages_hold_exactly_the_ground_truth() {
    let h = harness(|_| {}).await;
    let job = h.launch(5).await;
    let done = h.wait_status(&job, RunStatus::Succeeded).await;
    assert_eq!(done.status, V3JobStatus::Finished);
    assert_eq!(
        done.workflow_uid.as_deref(),
        Some(WORKFLOW.to_string().as_str())
    );

    let rows = h.all_results(&job).await;
    let truth = h.truth(&job);
    let expected: Vec<Value> = truth["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].clone())
        .collect();
    assert_eq!(rows.len(), 10, "2 rows per input");
    assert_eq!(rows, expected);
    // Each row carries its input's `meta`, which is how a ledger ties rows to inputs.
    for (row, t) in rows.iter().zip(truth["results"].as_array().unwrap()) {
        assert_eq!(row["meta"]["row"], t["input_index"]);
    }
    assert_eq!(
        h.count("v3_job_results", "200"),
        3,
        "pages of 7, 3 and the empty one"
    );
    let inputs = h.client.inputs_page(&job, 0).await.unwrap();
    assert_eq!(inputs.len(), 5);
    assert!(inputs.iter().all(|i| i["status"] == "succeeded"));
}

#[tokio::test]
async fn the_workflow_and_its_jobs_are_listed() {
    let h = harness(|_| {}).await;
    let workflows = h.client.list_workflows().await.unwrap();
    assert_eq!(workflows.len(), 1);
    assert_eq!(workflows[0].uid, WORKFLOW.to_string());
    let first = h.launch(1).await;
    let second = h.launch(1).await;
    let jobs = h.client.list_jobs(&WORKFLOW.to_string(), 0).await.unwrap();
    let uids: Vec<&str> = jobs.iter().map(|j| j.uid.as_str()).collect();
    assert_eq!(uids, [second.as_str(), first.as_str()], "newest first");
    assert!(h
        .client
        .list_jobs(&WORKFLOW.to_string(), 1)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_warning_job_is_partial_succeeded_with_results_and_failed_without() {
    let h = harness(|_| {}).await;
    h.set_runtime(|r| {
        r.outcomes.finished = 0.0;
        r.outcomes.warning = 1.0;
        r.outcomes.input_failure_rate = 0.0;
    });
    let some = h.launch(3).await;
    let job = h.wait_status(&some, RunStatus::PartialSucceeded).await;
    assert_eq!(
        job.status,
        V3JobStatus::Warning,
        "the raw status stays available"
    );
    assert!(job.error_message.unwrap().contains("1 of 3 inputs failed"));
    assert_eq!(h.all_results(&some).await.len(), 4);

    h.set_runtime(|r| {
        r.outcomes.finished = 0.0;
        r.outcomes.warning = 1.0;
        r.outcomes.input_failure_rate = 1.0;
    });
    let none = h.launch(2).await;
    let job = h.wait_status(&none, RunStatus::Failed).await;
    assert_eq!(job.status, V3JobStatus::Warning);
    assert!(!h.client.has_results(&none).await.unwrap());
}

#[tokio::test]
async fn a_paused_job_is_blocked_until_the_client_retries_it() {
    let h = harness(|_| {}).await;
    h.set_runtime(|r| {
        r.outcomes.finished = 0.0;
        r.outcomes.paused = 1.0;
    });
    let job = h.launch(4).await;
    h.wait_status(&job, RunStatus::Blocked).await;
    let ack = h.client.retry_job(&job).await.unwrap();
    assert_eq!(ack.job_uid.as_deref(), Some(job.as_str()));
    assert_eq!(ack.status, Some(V3JobStatus::Pending));
    h.wait_status(&job, RunStatus::Succeeded).await;
    assert_eq!(h.all_results(&job).await.len(), 8);
}

#[tokio::test]
async fn a_cancelled_job_is_stopped_and_cannot_be_cancelled_twice() {
    let h = harness(|_| {}).await;
    let job = h.launch_with(1, Some(3600)).await;
    assert_eq!(
        h.client.job_run_status(&job).await.unwrap().1,
        Some(RunStatus::Queued)
    );
    h.client.cancel_job(&job).await.unwrap();
    h.wait_status(&job, RunStatus::Stopped).await;
    let err = h.client.cancel_job(&job).await.unwrap_err();
    let SubmitError::Rejected { http_status, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*http_status, 400);
    assert_eq!(error.error_label.as_deref(), Some("JOB_NOT_CANCELLABLE"));
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn shutdown_maps_to_failed_and_completed_to_succeeded() {
    let h = harness(|c| {
        c.v3.runtime.behaviour.success_status = captain_sim::v3::V3SuccessStatus::Completed
    })
    .await;
    let job = h.launch(1).await;
    let done = h.wait_status(&job, RunStatus::Succeeded).await;
    assert_eq!(done.status, V3JobStatus::Completed);

    h.set_runtime(|r| {
        r.outcomes.finished = 0.0;
        r.outcomes.shutdown = 1.0;
    });
    let job = h.launch(2).await;
    let down = h.wait_status(&job, RunStatus::Failed).await;
    assert_eq!(down.status, V3JobStatus::Shutdown);
}

#[tokio::test]
async fn the_simulators_refusals_are_permanent_and_name_the_field() {
    let h = harness(|_| {}).await;
    let bad = V3ScheduleBody {
        job_name: None,
        inputs: vec![json!({"name": "no url"})],
        steps: None,
        delay: None,
    };
    let err = h
        .client
        .schedule_workflow(&WORKFLOW.to_string(), &bad)
        .await
        .unwrap_err();
    let SubmitError::Rejected { http_status, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*http_status, 400);
    assert!(error
        .message
        .starts_with("inputs[0].linkedin_profile_url: is required"));
    assert_eq!(h.count("v3_schedule_workflow", "400"), 1, "not retried");

    let unknown = h
        .client
        .get_job("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(unknown.http_status(), Some(404));

    let mut config = client_config(h.sim());
    config.project_uid = Uuid::new_v4().to_string();
    let stranger = V3Client::new(config, Metrics::new().unwrap()).unwrap();
    let err = stranger.list_workflows().await.unwrap_err();
    assert_eq!(err.http_status(), Some(401));
    assert!(!err.is_retriable());
}

fn limiter(metrics: &Metrics) -> Arc<AdaptiveLimiter> {
    Arc::new(
        AdaptiveLimiter::new(
            LimiterConfig {
                key_name: "v3".into(),
                // Under the simulator's 20/s once paced, but a burst of 10 against its 5:
                // the first burst meets 429s, the paced retries do not (a short test).
                rate_per_sec: 15.0,
                ceiling_per_sec: 15.0,
                floor_per_sec: 10.0,
                burst: 10,
                default_cooldown: Duration::from_millis(300),
                ..LimiterConfig::default()
            },
            metrics.clone(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn rate_limits_with_and_without_retry_after_are_waited_out_through_the_shared_limiter() {
    for retry_after in ["none", "seconds"] {
        let h = harness(|_| {}).await;
        h.set_runtime(|r| {
            r.rate_limit = Some(
                serde_json::from_value(
                    json!({"rps": 20.0, "burst": 5, "retry_after": retry_after}),
                )
                .unwrap(),
            );
        });
        let client = h.client.clone().with_gate(limiter(&h.metrics));
        let calls = (0..12).map(|_| client.list_workflows());
        for result in futures::future::join_all(calls).await {
            assert_eq!(result.unwrap().len(), 1, "{retry_after}");
        }
        let cooled = h
            .metrics
            .limiter_cooldown_seconds
            .with_label_values(&["v3", "api"])
            .get();
        assert!(
            cooled > 0.0,
            "{retry_after}: the limiter cooled down on the 429s"
        );
        assert_eq!(h.count("v3_list_workflows", "200"), 12);
    }
}

#[tokio::test]
async fn injected_server_errors_are_retried_until_the_call_succeeds() {
    let h = harness(|_| {}).await;
    h.set_runtime(|r| r.faults.error_rate = 0.3);
    for _ in 0..20 {
        h.client.list_workflows().await.unwrap();
    }
    let failed = h.count("v3_list_workflows", "500") + h.count("v3_list_workflows", "503");
    assert!(failed >= 1, "some attempts met an injected 5xx");
    assert_eq!(h.count("v3_list_workflows", "200"), 20);
}

#[tokio::test]
async fn webhooks_reach_the_receiver_with_their_header_and_a_retry_sends_another() {
    let h = harness(|_| {}).await;
    let job = h.launch(2).await;
    let hooks = eventually(|| async {
        let hooks = h.webhooks_of(&job);
        (hooks.len() == 2).then_some(hooks)
    })
    .await;
    let kinds: Vec<V3WebhookKind> = hooks.iter().map(|(_, p)| p.kind()).collect();
    assert_eq!(kinds, [V3WebhookKind::Created, V3WebhookKind::Succeeded]);
    for (headers, payload) in &hooks {
        assert_eq!(headers[SECRET_HEADER], SECRET);
        payload.check_project(&PROJECT.to_string()).unwrap();
        assert_eq!(payload.workflow_uid, WORKFLOW.to_string());
        assert_eq!(payload.job_name.as_deref(), Some("bridge test"));
    }
    h.wait_settled(&job).await;
    let ack = h.client.retry_webhook(&job).await.unwrap();
    let again = eventually(|| async {
        let hooks = h.webhooks_of(&job);
        (hooks.len() == 3).then_some(hooks)
    })
    .await;
    assert_eq!(again[2].1.kind(), V3WebhookKind::Succeeded);
    assert_eq!(ack.webhook_uid.as_deref(), Some(again[2].1.uid.as_str()));
    assert_ne!(again[2].1.uid, again[1].1.uid);
}

#[tokio::test]
async fn a_failed_job_sends_a_failed_webhook_with_the_error() {
    let h = harness(|_| {}).await;
    h.set_runtime(|r| {
        r.outcomes.finished = 0.0;
        r.outcomes.shutdown = 1.0;
    });
    let job = h.launch(2).await;
    let hooks = eventually(|| async {
        let hooks = h.webhooks_of(&job);
        (hooks.len() == 2).then_some(hooks)
    })
    .await;
    let failed = &hooks[1].1;
    assert_eq!(failed.kind(), V3WebhookKind::Failed);
    let (job_view, status) = h.client.job_run_status(&job).await.unwrap();
    assert_eq!(status, Some(RunStatus::Failed));
    assert_eq!(failed.error, job_view.error_message);
}

#[tokio::test]
async fn the_inferred_paths_must_match_the_servers() {
    let h = harness(|c| c.v3.paths.cancel_job = "/jobs/{job_uid}/stop".into()).await;
    let job = h.launch_with(1, Some(3600)).await;
    let err = h.client.cancel_job(&job).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404));
    let mut config = client_config(h.sim());
    config.paths.cancel_job = "/jobs/{job_uid}/stop".into();
    let matching = V3Client::new(config, Metrics::new().unwrap()).unwrap();
    matching.cancel_job(&job).await.unwrap();
    h.wait_status(&job, RunStatus::Stopped).await;
}
