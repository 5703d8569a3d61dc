//! v3 workflows end to end: `mode: "workflow"` requests launched as v3 jobs on captain-sim's
//! `/v3` API, its per-workflow webhooks (configured as the Captain Data app would) into
//! `POST /webhooks/v3`, the job's result pages read by the partition owner, and what is
//! published, checked against the simulator's ground truth.

use crate::*;
use captain_bridge::token::{CallbackClaims, TokenKeys};
use captain_testkit::config::{API_KEY, CALLBACK_KEYS, SIGNING_KID};
use std::time::{Duration, Instant};

const PROJECT: &str = "6f1c2d3e-0000-4000-8000-00000000b3b3";
const WORKFLOW: &str = "7a2b3c4d-0000-4000-8000-00000000f10f";
/// The header the workflow's webhook carries, and its two accepted values (a rotation).
const HEADER: &str = "x-captain-bridge-secret";
const SECRET: &str = "v3-webhook-secret-new-0001";
const OLD_SECRET: &str = "v3-webhook-secret-old-0002";
const RESULTS_PER_INPUT: usize = 3;

/// A simulator serving one v3 project (the harness's key) and one workflow; v3 jobs are fast.
fn v3_sim_config(extra: &str) -> String {
    fast_sim_config(&format!(
        r#"
[v3]
[[v3.projects]]
key = "{API_KEY}"
project_uid = "{PROJECT}"
[[v3.workflows]]
uid = "{WORKFLOW}"
name = "Extract LinkedIn People Profile"
input_key = "linkedin_profile_url"
action = "linkedin-extract-people"
results_per_input = {RESULTS_PER_INPUT}
[v3.timings]
start_after_ms = 20
input_interval_ms = 5
{extra}
"#
    ))
}

/// A stack whose bridge has v3 enabled against the simulator, with the workflow's webhook
/// pointed at the bridge's `/webhooks/v3` with the header secret.
async fn v3_stack(test: &str, sim_extra: &str) -> Stack {
    v3_stack_with(test, sim_extra, |_| {}).await
}

/// As [`v3_stack`], with the bridge's settings changed by `configure` too.
async fn v3_stack_with(
    test: &str,
    sim_extra: &str,
    configure: impl FnOnce(&mut Settings),
) -> Stack {
    let topics = Topics::unique("e2e", test);
    let sim = SimProcess::start(&work_dir(), &v3_sim_config(sim_extra)).expect("captain-sim");
    let settings = bridge_settings(&bootstrap(), &topics, &sim, |s| {
        s.v3.enabled = true;
        s.v3.base_url = format!("{}/v3", sim.base);
        s.v3.project_uid = PROJECT.into();
        // Two rows a page: every job's results span several pages.
        s.v3.results_page_size = 2;
        s.v3.rate_limit.rate_per_sec = 2000.0;
        s.v3.rate_limit.ceiling_per_sec = 2000.0;
        s.v3.rate_limit.burst = 200;
        configure(s);
    });
    topics.create(&settings).await.expect("topics");
    let secrets = format!("{SECRET},{OLD_SECRET}");
    let bridge = BridgeProcess::start(
        &work_dir(),
        &settings,
        &[
            ("CAPTAIN_BRIDGE_V3_API_KEY", API_KEY),
            ("CAPTAIN_BRIDGE_V3_WEBHOOK_SECRETS", &secrets),
        ],
    )
    .await
    .expect("captain-bridge");
    let hook = json!({
        "url": format!("{}/webhooks/v3", bridge.callback_base()),
        "headers": [{"name": HEADER, "value": SECRET}],
    });
    let answer = reqwest::Client::new()
        .put(format!("{}/_sim/v3/workflows/{WORKFLOW}/webhook", sim.base))
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
    Stack {
        topics,
        sim,
        bridge,
        bootstrap: bootstrap(),
    }
}

fn workflow_request(id: &str, inputs: usize) -> Value {
    json!({
        "request_id": id,
        "mode": "workflow",
        "workflow_uid": WORKFLOW,
        "job_name": "e2e",
        "inputs": (0..inputs).map(|i| json!({
            "linkedin_profile_url": format!("https://www.linkedin.com/in/{id}-{i}")
        })).collect::<Vec<_>>(),
        "metadata": {"ticket": id}
    })
}

/// Merges `patch` into the simulator's v3 runtime config.
async fn patch_v3(stack: &Stack, patch: Value) {
    let http = reqwest::Client::new();
    let url = format!("{}/_sim/v3/config", stack.sim.base);
    let mut config: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(b), Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }
    merge(&mut config, patch);
    let answer = http.put(&url).json(&config).send().await.unwrap();
    assert!(
        answer.status().is_success(),
        "{}",
        answer.text().await.unwrap()
    );
}

/// Every job outcome weight at 0 but `outcome`'s.
async fn only_outcome(stack: &Stack, outcome: &str) {
    let mut outcomes =
        json!({"finished": 0.0, "warning": 0.0, "shutdown": 0.0, "paused": 0.0, "stopped": 0.0});
    outcomes[outcome] = json!(1.0);
    patch_v3(stack, json!({"outcomes": outcomes})).await;
}

/// The simulator's ground truth of a job.
async fn truth(stack: &Stack, job_uid: &str) -> Value {
    reqwest::get(format!("{}/_sim/v3/jobs/{job_uid}", stack.sim.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Calls the simulator's v3 API as the account would (retry a job, retry a webhook).
async fn v3_post(stack: &Stack, path: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{}/v3{path}", stack.sim.base))
        .header("authorization", format!("x-api-key {API_KEY}"))
        .header("x-project-id", PROJECT)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{path}: {}",
        answer.text().await.unwrap()
    );
}

/// The job uid of a request (the run_uid of its first event that has one).
fn job_of(events: &[Value]) -> String {
    events
        .iter()
        .find_map(|e| e["run_uid"].as_str())
        .expect("a job uid")
        .to_owned()
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect()
}

fn raw_statuses(events: &[Value]) -> Vec<Option<&str>> {
    events
        .iter()
        .map(|e| e["provider_status"].as_str())
        .collect()
}

/// The results of `request_id`, each once, equal (by index) to the job's rows in the ground
/// truth; returns how many.
fn assert_results_match_truth(results: &[Read], request_id: &str, job: &Value) -> usize {
    let mine: Vec<Value> = results
        .iter()
        .map(Read::json)
        .filter(|v| v["request_id"] == request_id)
        .collect();
    let rows = job["results"].as_array().unwrap();
    assert_eq!(
        mine.len(),
        rows.len(),
        "{request_id}: every row once, no more"
    );
    let job_uid = job["job"]["uid"].as_str().unwrap();
    let mut seen = HashSet::new();
    for r in &mine {
        let index = r["index"].as_u64().unwrap() as usize;
        assert!(
            seen.insert(index),
            "{request_id}: row {index} published twice"
        );
        assert_eq!(
            r["result_id"],
            format!("{job_uid}:v3-results:{index}"),
            "stable result ids"
        );
        assert_eq!(r["run_uid"], job_uid);
        assert_eq!(
            r["result"], rows[index]["result"],
            "{request_id} row {index}"
        );
        assert_eq!(r["metadata"]["ticket"], request_id);
    }
    mine.len()
}

async fn metric_at_least(stack: &Stack, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = metric(&stack.metrics().await, name).unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {value}, expected >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_requests_publish_every_result_once_and_their_statuses_in_order_with_the_raw_v3_status(
) {
    const REQUESTS: usize = 6;
    const INPUTS: usize = 3;
    let stack = v3_stack("v3-flow", "").await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| workflow_request(&format!("wf-{i}"), INPUTS))
        .collect();
    stack.produce(&requests).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every job SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let expected = REQUESTS * INPUTS * RESULTS_PER_INPUT;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every row", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(500));

    let by_request = statuses_by_request(&status.records);
    assert_eq!(by_request.len(), REQUESTS);
    let mut published = 0;
    for (id, events) in &by_request {
        assert_transitions_in_order(events);
        assert_eq!(
            statuses(events),
            ["CREATED", "RUNNING", "SUCCEEDED"],
            "{id}"
        );
        assert_eq!(
            raw_statuses(events),
            [None, Some("running"), Some("finished")],
            "{id}: the raw v3 status is kept"
        );
        for e in events {
            assert_eq!(e["mode"], "workflow");
            assert_eq!(
                e["action"], WORKFLOW,
                "the action defaults to the workflow uid"
            );
            assert_eq!(e["metadata"]["ticket"], id.as_str());
        }
        let job = truth(&stack, &job_of(events)).await;
        assert!(
            job["job"]["name"].as_str().unwrap().starts_with("e2e [cb:"),
            "the job name carries the routing token: {}",
            job["job"]["name"]
        );
        published += assert_results_match_truth(&results.records, id, &job);
    }
    assert_eq!(published, expected);
    assert_eq!(result_id_counts(&results.records).len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_shutdown_and_paused_jobs_end_as_the_mapping_says_and_a_retried_paused_job_completes(
) {
    let stack = v3_stack("v3-outcomes", "").await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);

    // warning: some inputs fail; with rows left it is PARTIAL_SUCCEEDED, else FAILED.
    only_outcome(&stack, "warning").await;
    stack.produce(&[workflow_request("warn", 6)]).await;
    status.until(Duration::from_secs(60), "warn ended", |r| {
        statuses_by_request(r).get("warn").is_some_and(|e| {
            e.iter()
                .any(|e| matches!(e["status"].as_str(), Some("PARTIAL_SUCCEEDED" | "FAILED")))
        })
    });
    let events = &statuses_by_request(&status.records)["warn"];
    let job = truth(&stack, &job_of(events)).await;
    let rows = job["results"].as_array().unwrap().len();
    let last = events.last().unwrap();
    let expected = if rows > 0 {
        "PARTIAL_SUCCEEDED"
    } else {
        "FAILED"
    };
    assert_eq!(last["status"], expected, "{rows} rows: {events:#?}");
    assert_eq!(last["provider_status"], "warning");
    assert_eq!(last["error"]["label"], "V3_WARNING");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("inputs failed"));
    results.until(Duration::from_secs(30), "warn rows", |r| r.len() >= rows);
    assert_results_match_truth(&results.records, "warn", &job);

    // shutdown: a technical error; FAILED, whatever rows came before it.
    only_outcome(&stack, "shutdown").await;
    stack.produce(&[workflow_request("down", 4)]).await;
    status.until(Duration::from_secs(60), "down FAILED", |r| {
        statuses_by_request(r)
            .get("down")
            .is_some_and(|e| e.iter().any(|e| e["status"] == "FAILED"))
    });
    let events = &statuses_by_request(&status.records)["down"];
    assert_eq!(
        raw_statuses(events).last().copied().flatten(),
        Some("shutdown")
    );
    assert_eq!(events.last().unwrap()["error"]["label"], "V3_SHUTDOWN");
    assert_transitions_in_order(events);

    // paused: BLOCKED with the rows produced so far; retried in the app, it finishes and only
    // the rows produced after the pause are published on top.
    only_outcome(&stack, "paused").await;
    stack.produce(&[workflow_request("pause", 6)]).await;
    status.until(Duration::from_secs(60), "pause BLOCKED", |r| {
        statuses_by_request(r)
            .get("pause")
            .is_some_and(|e| e.iter().any(|e| e["status"] == "BLOCKED"))
    });
    let events = statuses_by_request(&status.records)["pause"].clone();
    assert_eq!(
        raw_statuses(&events).last().copied().flatten(),
        Some("paused")
    );
    let job_uid = job_of(&events);
    let before = truth(&stack, &job_uid).await["results"]
        .as_array()
        .unwrap()
        .len();
    only_outcome(&stack, "finished").await;
    v3_post(&stack, &format!("/jobs/{job_uid}/retry")).await;
    status.until(
        Duration::from_secs(60),
        "pause SUCCEEDED after its retry",
        |r| {
            statuses_by_request(r)
                .get("pause")
                .is_some_and(|e| e.iter().any(|e| e["status"] == "SUCCEEDED"))
        },
    );
    let job = truth(&stack, &job_uid).await;
    let rows = job["results"].as_array().unwrap().len();
    assert!(rows > before, "the retry produced the remaining rows");
    let events = &statuses_by_request(&status.records)["pause"];
    assert_transitions_in_order(events);
    assert_eq!(
        raw_statuses(events).last().copied().flatten(),
        Some("finished")
    );
    results.until(Duration::from_secs(30), "pause rows", |r| {
        r.iter()
            .filter(|r| r.json()["request_id"] == "pause")
            .count()
            >= rows
    });
    results.poll_for(Duration::from_millis(500));
    assert_results_match_truth(&results.records, "pause", &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_with_a_wrong_secret_bad_input_or_an_unknown_job_are_answered_and_publish_nothing()
{
    let stack = v3_stack("v3-http", "").await;
    stack.produce(&[workflow_request("known", 2)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "known SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 1
    });
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "known rows", |r| {
        r.len() >= 2 * RESULTS_PER_INPUT
    });
    let (events_before, rows_before) = (status.records.len(), results.records.len());

    let keys = TokenKeys::from_config(CALLBACK_KEYS, SIGNING_KID).unwrap();
    let routed = |request_id: &str| {
        let token = keys.sign(&CallbackClaims {
            request_id: request_id.into(),
            chunk: 0,
            expires_at: None,
        });
        format!("Automated Run [cb:{token}]")
    };
    let payload = |job_uid: &str, job_name: &str| {
        json!({"uid": "5b1e0f3a-0000-4000-8000-000000000001", "job_uid": job_uid,
            "message": "Job successfully finished.", "project_uid": PROJECT, "error": null,
            "recipe_ref": job_uid, "workflow_uid": WORKFLOW,
            "workflow_name": "Extract LinkedIn People Profile", "job_name": job_name})
    };
    let http = reqwest::Client::new();
    let url = format!("{}/webhooks/v3", stack.bridge.callback_base());
    let post = |secret: Option<&str>, body: String| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(secret) = secret {
            request = request.header(HEADER, secret);
        }
        async move {
            let answer = request.send().await.unwrap();
            let code = answer.status().as_u16();
            (code, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let known_job = payload("0c0ffee0-0000-4000-8000-000000000000", &routed("known"));

    for secret in [None, Some("not-the-secret-at-all"), Some(&SECRET[1..])] {
        let (code, answer) = post(secret, known_job.to_string()).await;
        assert_eq!(
            (code, answer["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    let (code, answer) = post(Some(SECRET), "{\"uid\": ".into()).await;
    assert_eq!(code, 400, "not JSON: {answer}");
    let mut no_job = known_job.clone();
    no_job.as_object_mut().unwrap().remove("job_uid");
    let (code, answer) = post(Some(SECRET), no_job.to_string()).await;
    assert_eq!(code, 422);
    assert!(
        answer["message"].as_str().unwrap().contains("job_uid"),
        "{answer}"
    );

    // A job started in the app (no routing token), with the old secret of the rotation.
    let (code, answer) = post(
        Some(OLD_SECRET),
        payload("0c0ffee0-0000-4000-8000-000000000001", "Automated Run").to_string(),
    )
    .await;
    assert_eq!((code, answer["status"].as_str()), (200, Some("ignored")));
    // A routed webhook naming a job the request did not launch: durable, then dropped by the
    // request's owner.
    let (code, answer) = post(Some(SECRET), known_job.to_string()).await;
    assert_eq!((code, answer["status"].as_str()), (200, Some("accepted")));
    metric_at_least(
        &stack,
        "captain_bridge_v3_webhooks_processed_total{outcome=\"unknown_job\"}",
        1.0,
    )
    .await;
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "captain_bridge_v3_webhooks_total{outcome=\"unauthorized\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "captain_bridge_v3_webhooks_total{outcome=\"unknown_job\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "captain_bridge_v3_webhooks_total{outcome=\"malformed\"}"
        ),
        Some(2.0)
    );
    status.poll_for(Duration::from_millis(1500));
    results.poll_for(Duration::from_millis(500));
    assert_eq!(status.records.len(), events_before, "no status published");
    assert_eq!(results.records.len(), rows_before, "no result published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_webhooks_publish_once_and_a_dropped_webhook_sent_again_completes_the_job() {
    let stack = v3_stack("v3-faults", "[v3.faults]\nwebhook_duplicate_rate = 1.0\n").await;
    const REQUESTS: usize = 4;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| workflow_request(&format!("dup-{i}"), 2))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "every job SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let expected = REQUESTS * 2 * RESULTS_PER_INPUT;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every row", |r| {
        r.len() >= expected
    });
    metric_at_least(
        &stack,
        "captain_bridge_v3_webhooks_total{outcome=\"accepted\"}",
        (REQUESTS * 4) as f64,
    )
    .await;
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(500));
    for (id, events) in &statuses_by_request(&status.records) {
        assert_eq!(
            statuses(events),
            ["CREATED", "RUNNING", "SUCCEEDED"],
            "{id}"
        );
        let job = truth(&stack, &job_of(events)).await;
        let duplicates = job["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["duplicate"] == true)
            .count();
        assert!(duplicates >= 2, "{id}: the sim sent each webhook twice");
        assert_results_match_truth(&results.records, id, &job);
    }

    // Every webhook dropped: the job ends unseen (CREATED only) until its webhook is sent
    // again (the app's "retry webhook"), which completes it.
    patch_v3(
        &stack,
        json!({"faults": {"webhook_duplicate_rate": 0.0, "webhook_drop_rate": 1.0}}),
    )
    .await;
    stack.produce(&[workflow_request("dropped", 2)]).await;
    status.until(Duration::from_secs(30), "dropped CREATED", |r| {
        statuses_by_request(r).contains_key("dropped")
    });
    let job_uid = job_of(&statuses_by_request(&status.records)["dropped"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = truth(&stack, &job_uid).await;
        if job["settled"] == true && job["job"]["status"] == "finished" {
            let hooks = job["webhooks"].as_array().unwrap();
            assert!(hooks.iter().all(|w| w["status"] == "dropped"), "{hooks:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "the dropped job never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status.poll_for(Duration::from_millis(500));
    assert_eq!(
        statuses(&statuses_by_request(&status.records)["dropped"]),
        ["CREATED"]
    );
    patch_v3(&stack, json!({"faults": {"webhook_drop_rate": 0.0}})).await;
    v3_post(&stack, &format!("/jobs/{job_uid}/webhooks/retry")).await;
    status.until(Duration::from_secs(30), "dropped SUCCEEDED", |r| {
        statuses_by_request(r)
            .get("dropped")
            .is_some_and(|e| e.iter().any(|e| e["status"] == "SUCCEEDED"))
    });
    let events = &statuses_by_request(&status.records)["dropped"];
    assert_eq!(statuses(events), ["CREATED", "SUCCEEDED"]);
    assert_transitions_in_order(events);
    let job = truth(&stack, &job_uid).await;
    results.until(Duration::from_secs(30), "dropped rows", |r| {
        r.iter()
            .filter(|r| r.json()["request_id"] == "dropped")
            .count()
            >= 2 * RESULTS_PER_INPUT
    });
    assert_results_match_truth(&results.records, "dropped", &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_and_v4_requests_mixed_on_one_launch_topic_each_complete_through_their_own_api() {
    let stack = v3_stack("v3-mixed", "").await;
    const EACH: usize = 4;
    let mut requests = Vec::new();
    for i in 0..EACH {
        requests.push(search_request(&format!("v4-{i}"), 2, 2));
        requests.push(workflow_request(&format!("v3-{i}"), 2));
    }
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 2 * EACH
    });
    let expected = EACH * 2 * 2 + EACH * 2 * RESULTS_PER_INPUT;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every result", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_secs(1));
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), expected);
    assert!(counts.values().all(|&n| n == 1), "a result published twice");
    for (id, events) in &statuses_by_request(&status.records) {
        assert_transitions_in_order(events);
        let (mode, raw) = if id.starts_with("v3-") {
            ("workflow", Some("finished"))
        } else {
            ("async", None)
        };
        let last = events.last().unwrap();
        assert_eq!(
            (last["status"].as_str(), last["mode"].as_str()),
            (Some("SUCCEEDED"), Some(mode)),
            "{id}"
        );
        assert_eq!(last["provider_status"].as_str(), raw, "{id}");
        if mode == "workflow" {
            let job = truth(&stack, &job_of(events)).await;
            assert_results_match_truth(&results.records, id, &job);
        }
    }
    let metrics = stack.metrics().await;
    assert!(
        metric(
            &metrics,
            "captain_bridge_api_requests_total{code=\"200\",endpoint=\"v3_schedule_workflow\"}"
        )
        .is_some_and(|n| n >= EACH as f64),
        "v3 launches went through the v3 client"
    );
    assert!(
        metric(
            &metrics,
            "captain_bridge_api_permitted_requests_per_second{key=\"v3\",mode=\"schedule\"}"
        )
        .is_some(),
        "the v3 key has a limiter of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_calls_ride_out_server_errors_and_429s_without_retry_after_and_every_job_completes() {
    let stack = v3_stack(
        "v3-faulty-api",
        "[v3.faults]\nerror_rate = 0.1\n[v3.rate_limit]\nrps = 20.0\nburst = 2\nretry_after = \"none\"\n",
    )
    .await;
    const REQUESTS: usize = 4;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| workflow_request(&format!("rough-{i}"), 3))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every job SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let expected = REQUESTS * 3 * RESULTS_PER_INPUT;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every row", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_millis(500));
    for (id, events) in &statuses_by_request(&status.records) {
        assert_eq!(
            statuses(events),
            ["CREATED", "RUNNING", "SUCCEEDED"],
            "{id}"
        );
        let job = truth(&stack, &job_of(events)).await;
        assert_results_match_truth(&results.records, id, &job);
    }
    let metrics = stack.metrics().await;
    let answered = |code: &str| {
        captain_testkit::metrics::sum(
            &metrics,
            &format!("captain_bridge_api_requests_total{{code=\"{code}\",endpoint=\"v3_"),
        )
    };
    assert!(
        answered("429") + answered("500") + answered("503") > 0.0,
        "the simulator's faults were met and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_mid_way_publishes_every_v3_row_and_status_once_after_its_restart() {
    // The simulator keeps retrying webhook deliveries (0.2 s doubling, 12 attempts) far longer
    // than the restart takes; inputs take a while, so jobs are running across the kill.
    let mut stack = v3_stack(
        "v3-crash",
        "[v3.delivery]\nmax_attempts = 12\nbackoff_ms = 200\nconcurrency = 32\ntimeout_ms = 5000\n",
    )
    .await;
    patch_v3(&stack, json!({"timings": {"input_interval_ms": 60}})).await;
    const REQUESTS: usize = 12;
    const INPUTS: usize = 4;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| workflow_request(&format!("crash-{i}"), INPUTS))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "a first job SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 1
    });
    stack.bridge.kill_hard();
    stack.bridge.restart().await.expect("bridge restarted");
    status.until(Duration::from_secs(120), "every job SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let expected = REQUESTS * INPUTS * RESULTS_PER_INPUT;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every row", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(500));
    let by_request = statuses_by_request(&status.records);
    assert_eq!(by_request.len(), REQUESTS);
    for (id, events) in &by_request {
        // Forward only, each status at most once (read_committed: aborted work is unseen).
        assert_transitions_in_order(events);
        assert_eq!(events.last().unwrap()["status"], "SUCCEEDED", "{id}");
        let job = truth(&stack, &job_of(events)).await;
        assert_results_match_truth(&results.records, id, &job);
    }
    assert_eq!(result_id_counts(&results.records).len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_jobs_are_polled_by_the_reconciler_and_closed_with_their_rows() {
    // Every webhook is lost: only the reconciler's polls (GET /jobs/{uid}) tell the bridge.
    let stack = v3_stack_with("v3-silent", "[v3.faults]\nwebhook_drop_rate = 1.0\n", |s| {
        s.reconcile.silence_after = Duration::from_secs(2);
        s.reconcile.tick = Duration::from_millis(200);
    })
    .await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);

    // A job stopped in the app sends no webhook at all.
    only_outcome(&stack, "stopped").await;
    stack.produce(&[workflow_request("quiet-stop", 6)]).await;
    status.until(Duration::from_secs(60), "quiet-stop STOPPED", |r| {
        statuses_by_request(r)
            .get("quiet-stop")
            .is_some_and(|e| e.iter().any(|e| e["status"] == "STOPPED"))
    });
    let events = &statuses_by_request(&status.records)["quiet-stop"];
    let last = events.last().unwrap();
    assert_eq!(
        (last["source"].as_str(), last["provider_status"].as_str()),
        (Some("poll"), Some("stopped"))
    );
    let job = truth(&stack, &job_of(events)).await;
    let rows = job["results"].as_array().unwrap().len();
    results.until(Duration::from_secs(30), "quiet-stop rows", |r| {
        r.len() >= rows
    });
    assert_results_match_truth(&results.records, "quiet-stop", &job);

    // A finished job whose webhooks were all dropped.
    only_outcome(&stack, "finished").await;
    stack.produce(&[workflow_request("quiet-done", 3)]).await;
    status.until(Duration::from_secs(60), "quiet-done SUCCEEDED", |r| {
        statuses_by_request(r)
            .get("quiet-done")
            .is_some_and(|e| e.iter().any(|e| e["status"] == "SUCCEEDED"))
    });
    let events = &statuses_by_request(&status.records)["quiet-done"];
    assert_eq!(statuses(events), ["CREATED", "SUCCEEDED"]);
    assert_eq!(events[1]["source"], "poll");
    assert_eq!(events[1]["provider_status"], "finished");
    let job = truth(&stack, &job_of(events)).await;
    results.until(Duration::from_secs(30), "quiet-done rows", |r| {
        r.iter()
            .filter(|r| r.json()["request_id"] == "quiet-done")
            .count()
            >= 3 * RESULTS_PER_INPUT
    });
    results.poll_for(Duration::from_secs(3));
    assert_results_match_truth(&results.records, "quiet-done", &job);
    status.poll_for(Duration::from_secs(1));
    for events in statuses_by_request(&status.records).values() {
        assert_transitions_in_order(events);
    }
}
