//! spawn_app(), the callback receiver, polling helpers and spec-based response validation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use captain_sim::spec::{pointer_escape, spec};
use captain_sim::{ApiKeyConfig, SimConfig, SimHandle, Simulator};
use serde_json::{json, Value};

pub const KEY: &str = "key-a";
pub const OTHER_KEY: &str = "key-b";

/// A config with fast timings suited to tests.
pub fn fast_config() -> SimConfig {
    let mut config = SimConfig {
        api_keys: vec![ApiKeyConfig::derived(KEY), ApiKeyConfig::derived(OTHER_KEY)],
        seed: 7,
        ..SimConfig::default()
    };
    config.runtime.timings.queued_after_ms = 1;
    config.runtime.timings.start_after_ms = 1;
    config.runtime.timings.page_interval_ms = 1;
    config.runtime.delivery.backoff_ms = 5;
    config.runtime.delivery.timeout_ms = 2_000;
    config
}

/// One received callback.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query the callback was posted to.
    pub uri: String,
    pub headers: HeaderMap,
    /// The exact bytes received.
    pub raw: axum::body::Bytes,
    pub body: Value,
}

/// A local HTTP server recording callbacks; answers `status` (200 by default).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let app = Router::new()
            .route("/cb", post(record))
            .with_state((received.clone(), status.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/cb"),
            received,
            status,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Callbacks of one run, in arrival order.
    pub fn of_run(&self, run_uid: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.body["run"]["run_uid"] == run_uid)
            .collect()
    }
}

type ReceiverState = (Arc<Mutex<Vec<Received>>>, Arc<AtomicU16>);

async fn record(
    State((received, status)): State<ReceiverState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> StatusCode {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    received.lock().unwrap().push(Received {
        uri: uri.to_string(),
        headers,
        raw,
        body,
    });
    StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
}

/// An answer from the simulator.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// The simulator, a receiver and a client.
pub struct TestApp {
    pub sim: Option<SimHandle>,
    pub base: String,
    pub root: String,
    pub client: reqwest::Client,
    pub receiver: Receiver,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(fast_config()).await
}

pub async fn spawn_app_with(config: SimConfig) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Simulator::start(config, listener).unwrap();
    TestApp {
        base: sim.base_url(),
        root: sim.root_url(),
        sim: Some(sim),
        client: reqwest::Client::new(),
        receiver: Receiver::start().await,
    }
}

impl TestApp {
    /// A request with `key`; the body is validated against the spec's schema for
    /// `template` (the spec path, e.g. `/runs/{run_uid}`) and the answered status.
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> Resp {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_matches_spec(method.as_str(), template, status.as_u16(), &body);
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, template: &str, path: &str) -> Resp {
        self.call_as(Some(KEY), reqwest::Method::GET, template, path, None)
            .await
    }

    pub async fn post(&self, template: &str, path: &str, body: Value) -> Resp {
        self.call_as(Some(KEY), reqwest::Method::POST, template, path, Some(body))
            .await
    }

    /// `POST /actions/{action}/run/async`.
    pub async fn submit(&self, action: &str, body: Value) -> Resp {
        self.post(
            &format!("/actions/{action}/run/async"),
            &format!("/actions/{action}/run/async"),
            body,
        )
        .await
    }

    /// Submits and returns the run uid (asserting 200).
    pub async fn submit_ok(&self, action: &str, body: Value) -> String {
        let resp = self.submit(action, body).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.body["run_uid"].as_str().unwrap().to_owned()
    }

    pub async fn run(&self, uid: &str) -> Value {
        let resp = self.get("/runs/{run_uid}", &format!("/runs/{uid}")).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        resp.body
    }

    /// Waits until the run has `status`.
    pub async fn wait_run_status(&self, uid: &str, status: &str) -> Value {
        eventually(|| async {
            let run = self.run(uid).await;
            (run["status"] == status).then_some(run)
        })
        .await
    }

    /// Waits until the receiver got the final callback of `run_uid` and returns them all
    /// (validated against the action's `onSave` schema).
    pub async fn wait_final_callback(&self, action: &str, run_uid: &str) -> Vec<Received> {
        let all = eventually(|| async {
            let all = self.receiver.of_run(run_uid);
            all.iter()
                .any(|r| is_final(&r.body["run"]["status"]))
                .then_some(all)
        })
        .await;
        for r in &all {
            assert_callback_matches_spec(action, &r.body);
        }
        all
    }

    pub async fn put_config(&self, config: Value) {
        let resp = self
            .client
            .put(format!("{}/_sim/config", self.root))
            .json(&config)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    pub async fn sim_config(&self) -> Value {
        self.client
            .get(format!("{}/_sim/config", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /_sim/runs/{uid}/deliveries`: the simulator's ground truth of one run.
    pub async fn deliveries(&self, run_uid: &str) -> Value {
        let resp = self
            .client
            .get(format!("{}/_sim/runs/{run_uid}/deliveries", self.root))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// `POST /_sim/runs/{uid}/finish`; answers the status and body.
    pub async fn finish(&self, run_uid: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/_sim/runs/{run_uid}/finish", self.root))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        // The answers are the spec's run object or APIError, like the API's.
        let template = if status == 200 { "/runs/{run_uid}" } else { "" };
        assert_matches_spec("GET", template, status, &body);
        (status, body)
    }

    /// Waits until the run waits at its stall point; answers its ground truth then.
    pub async fn wait_stalled(&self, run_uid: &str) -> Value {
        eventually(|| async {
            let truth = self.deliveries(run_uid).await;
            (truth["stalled"] == true).then_some(truth)
        })
        .await
    }

    pub async fn stats(&self) -> Value {
        self.client
            .get(format!("{}/_sim/stats", self.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// An async body for `linkedin-search-people` sending callbacks to the receiver.
    pub fn search_body(&self, inputs: usize, max_results: u64) -> Value {
        let inputs: Vec<Value> = (0..inputs)
            .map(|i| {
                json!({
                    "linkedin_people_search_url": format!("https://www.linkedin.com/search/results/people/?keywords=k{i}"),
                    "custom_data": {"row": i}
                })
            })
            .collect();
        json!({
            "inputs": inputs,
            "parameters": {"max_results": max_results},
            "callback": {"url": self.receiver.url, "headers": {"Authorization": "Bearer s3cret"}}
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            tokio::spawn(sim.shutdown());
        }
    }
}

pub fn is_final(status: &Value) -> bool {
    ["SUCCEEDED", "PARTIAL_SUCCEEDED", "FAILED"]
        .iter()
        .any(|s| status == s)
}

/// Polls `f` every 10 ms until it answers `Some`, for at most 10 s.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
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

type Validators = Mutex<HashMap<String, Arc<jsonschema::Validator>>>;

fn validators() -> &'static Validators {
    static V: OnceLock<Validators> = OnceLock::new();
    V.get_or_init(Default::default)
}

fn validator_for(
    key: &str,
    build: impl FnOnce() -> jsonschema::Validator,
) -> Arc<jsonschema::Validator> {
    if let Some(v) = validators().lock().unwrap().get(key) {
        return v.clone();
    }
    let v = Arc::new(build());
    validators()
        .lock()
        .unwrap()
        .insert(key.to_owned(), v.clone());
    v
}

fn check(validator: &jsonschema::Validator, body: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the spec: {errors:?}\n{body}"
    );
}

/// Validates a response body against the official document: 2xx bodies against the
/// operation's 200 schema, error bodies against `APIError` (`def-0`).
pub fn assert_matches_spec(method: &str, template: &str, status: u16, body: &Value) {
    let spec = spec().unwrap();
    if status >= 400 {
        let v = validator_for("def-0", || {
            spec.compile_at("/components/schemas/def-0").unwrap()
        });
        check(&v, body, "error body");
        assert_eq!(
            body["status_code"], status,
            "status_code mirrors the HTTP status"
        );
        return;
    }
    let mut response = format!(
        "/paths/{}/{}/responses/200",
        pointer_escape(template),
        method.to_lowercase()
    );
    // Action responses are `$ref`s to `#/components/responses/...`.
    if let Some(target) = spec
        .document()
        .pointer(&response)
        .and_then(|r| r.get("$ref"))
        .and_then(Value::as_str)
    {
        response = target.trim_start_matches('#').to_owned();
    }
    let pointer = format!("{response}/content/application~1json/schema");
    let v = validator_for(&pointer, || spec.compile_at(&pointer).unwrap());
    check(&v, body, &format!("{method} {template} 200 body"));
}

/// Validates a callback payload against the action's `onSave` schema. One documented
/// relaxation: `error` may be null (the docs' payload example has `"error": null`, the
/// schema references APIError without nullable).
pub fn assert_callback_matches_spec(action: &str, body: &Value) {
    let key = format!("onSave:{action}");
    let v = validator_for(&key, || {
        let spec = spec().unwrap();
        let pointer = format!(
            "/paths/{}/post/callbacks/onSave/{}/post/requestBody/content/application~1json/schema",
            pointer_escape(&format!("/actions/{action}/run/async")),
            pointer_escape("{$request.body#/callback/url}")
        );
        let mut schema = spec.document().pointer(&pointer).unwrap().clone();
        let error = schema["properties"]["error"].clone();
        schema["properties"]["error"] = json!({"anyOf": [error, {"type": "null"}]});
        spec.compile_schema(&schema).unwrap()
    });
    check(&v, body, "callback payload");
}
