//! `kill -9` in the middle of a stream of launch requests and callbacks: nothing is lost, and a
//! `read_committed` reader sees no result and no status twice (the owner's transactions); the
//! one window left, a submission the API accepted just before the kill, is counted and bounded.

use crate::ledger::Ledger;
use crate::*;
use captain_testkit::API_KEY;
use std::time::{Duration, Instant};

const REQUESTS: usize = 1_000;
const RESULTS_PER_REQUEST: usize = 2;
/// The bridge's default `launch.max_in_flight`: submissions that can be awaiting the API's answer.
const LAUNCH_MAX_IN_FLIGHT: usize = 64;
/// The simulator's `delivery.concurrency`: callbacks that can be inside the bridge at once.
const DELIVERY_CONCURRENCY: usize = 32;

fn sim_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-API-Key", API_KEY.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Replays every original callback the simulator gave up on (status FAILED). This is what the
/// bridge's reconciler will do in production: the platform's own retries are finite, so a
/// callback that failed while no bridge was listening must be fetched again.
async fn replay_failed_callbacks(sim: &SimProcess) -> usize {
    let client = sim_client();
    let api = sim.api_base();
    // Collect first, replay after: a replay that fails is itself a FAILED record, and paging a
    // list that grows under us would skip or repeat entries.
    let mut failed = Vec::new();
    let mut offset = 0;
    loop {
        let page: Vec<Value> = client
            .get(format!(
                "{api}/runs/callbacks?status=FAILED&sort=created_at&limit=20&offset={offset}"
            ))
            .send()
            .await
            .expect("list failed callbacks")
            .json()
            .await
            .expect("callback list JSON");
        let n = page.len();
        failed.extend(
            page.into_iter()
                .filter(|c| c["parent_uid"].is_null())
                .map(|c| c["uid"].as_str().unwrap().to_owned()),
        );
        if n < 20 {
            break;
        }
        offset += n;
    }
    for uid in &failed {
        let r = client
            .post(format!("{api}/runs/callbacks/{uid}/replay"))
            .json(&json!({}))
            .send()
            .await
            .expect("replay callback");
        assert!(
            r.status().is_success(),
            "replay of {uid} refused: {}",
            r.text().await.unwrap_or_default()
        );
    }
    failed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_with_sigkill_mid_stream_loses_no_request_and_no_result_once_restarted() {
    // While the bridge is dead its callback port refuses connections: the simulator retries with
    // a doubling backoff (0.5 s, 1 s, 2 s, ...), far more often than the outage lasts. A little API
    // latency keeps submissions in flight, so the kill lands inside the launch window too; runs
    // that last a few hundred ms keep callbacks in flight across the kill and the outage.
    let sim_toml = fast_sim_config("[faults]\nlatency_ms = 150\nlatency_jitter_ms = 100\n")
        .replace("start_after_ms = 10", "start_after_ms = 300")
        .replace("page_interval_ms = 2", "page_interval_ms = 200")
        .replace("max_attempts = 5", "max_attempts = 20")
        .replace("backoff_ms = 100", "backoff_ms = 500")
        .replace(
            "concurrency = 32",
            &format!("concurrency = {DELIVERY_CONCURRENCY}"),
        );
    let mut stack = Stack::start("crash", &sim_toml, |_| {}).await;
    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("crash-{i:04}")).collect();
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| search_request(id, 1, RESULTS_PER_REQUEST as u64))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "150 requests SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 150
    });
    stack.bridge.kill_hard();
    let killed = Instant::now();
    let succeeded_at_kill = final_status_count(&status.records, "SUCCEEDED");
    let sim_runs_at_kill = stack.sim_stats().await["runs_created"].clone();
    assert!(
        succeeded_at_kill < REQUESTS,
        "the stream finished before the kill ({succeeded_at_kill} SUCCEEDED): nothing was tested"
    );
    eprintln!(
        "e2e crash: kill -9 after {:.2} s, {succeeded_at_kill} SUCCEEDED, {sim_runs_at_kill} runs created",
        started.elapsed().as_secs_f64()
    );

    // Stay dead until callbacks have failed against the closed port (the restart alone takes
    // well under a second, too short for the runs in progress to notice).
    let dead_until = Instant::now() + Duration::from_secs(10);
    while stack.sim_stats().await["callbacks"]["attempts_failed"]
        .as_u64()
        .unwrap_or(0)
        < 20
        && Instant::now() < dead_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "e2e crash: restarting after {:.2} s dead",
        killed.elapsed().as_secs_f64()
    );
    stack.bridge.restart().await.unwrap();
    let restarted = Instant::now();
    eprintln!(
        "e2e crash: bridge log {}",
        stack.bridge.log_path().display()
    );
    let replayed = replay_failed_callbacks(&stack.sim).await;

    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        status.poll_for(Duration::from_millis(200));
        results.poll_for(Duration::from_millis(200));
        let ledger = Ledger::read(&status.records, &results.records);
        if ledger.all_succeeded(&ids) && ledger.all_results(&ids, RESULTS_PER_REQUEST) {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !ledger.all_succeeded(std::slice::from_ref(id)))
                .take(10)
                .collect();
            let without_results: Vec<&String> = ids
                .iter()
                .filter(|id| !ledger.all_results(std::slice::from_ref(id), RESULTS_PER_REQUEST))
                .take(10)
                .collect();
            panic!(
                "not drained 75 s after the restart: not SUCCEEDED {missing:?}, results missing \
                 {without_results:?}; sim {}; bridge log {}",
                stack.sim_stats().await,
                stack.bridge.log_path().display()
            );
        }
    }
    let drained = Instant::now();
    // Late duplicates arrive within the callbacks' retry delay: look a little longer.
    status.poll_for(Duration::from_secs(1));
    results.poll_for(Duration::from_secs(1));

    let ledger = Ledger::read(&status.records, &results.records);
    let mut resubmitted = 0;
    for id in &ids {
        let runs = &ledger.runs[id];
        if runs.len() > 1 {
            resubmitted += 1;
        }
        for (run, statuses) in runs {
            assert_eq!(
                statuses.last().map(String::as_str),
                Some("SUCCEEDED"),
                "{id} run {run}: the last status is the final one: {statuses:?}"
            );
            let got = ledger.results.get(run).map_or(0, HashSet::len);
            assert_eq!(
                got, RESULTS_PER_REQUEST,
                "{id} run {run}: every result, and only those of this run"
            );
        }
    }
    let distinct_results: usize = ledger.results.values().map(HashSet::len).sum();
    let duplicate_results = ledger.duplicate_results();
    let duplicate_statuses = ledger.duplicate_statuses();
    let by_request = statuses_by_request(&status.records);
    for (id, runs) in ledger
        .runs
        .iter()
        .filter(|(_, runs)| {
            runs.values()
                .any(|s| s.len() != s.iter().collect::<HashSet<_>>().len())
        })
        .take(3)
    {
        let events: Vec<String> = by_request[id]
            .iter()
            .map(|e| {
                format!(
                    "{}<-{} by {}",
                    e["status"], e["previous_status"], e["source"]
                )
            })
            .collect();
        eprintln!(
            "e2e crash: repeated status in {id} ({} runs): {events:?}",
            runs.len()
        );
    }
    let stray: Vec<&String> = ledger.runs.keys().filter(|id| !ids.contains(id)).collect();
    assert!(stray.is_empty(), "statuses for unknown requests: {stray:?}");
    eprintln!(
        "e2e crash: {REQUESTS} requests; {resubmitted} submitted twice; {duplicate_results} \
         duplicate result records ({} records, {distinct_results} distinct); {duplicate_statuses} \
         repeated status events; {replayed} FAILED callbacks replayed; drained {:.2} s after \
         the kill ({:.2} s after the restart), {:.2} s in all",
        ledger.result_records,
        drained.duration_since(killed).as_secs_f64(),
        drained.duration_since(restarted).as_secs_f64(),
        drained.duration_since(started).as_secs_f64()
    );
    eprintln!("e2e crash: sim {}", stack.sim_stats().await["callbacks"]);
    assert!(
        resubmitted <= LAUNCH_MAX_IN_FLIGHT,
        "{resubmitted} requests were submitted twice: only a submission in flight at the kill \
         (answered by the API, its outcome not yet committed) may be submitted again, and at \
         most launch.max_in_flight = {LAUNCH_MAX_IN_FLIGHT} are in flight"
    );
    assert_eq!(
        duplicate_results, 0,
        "a read_committed reader sees every result once: results, state and offsets commit together"
    );
    assert_eq!(
        duplicate_statuses, 0,
        "no status is published twice for a run, even across the kill"
    );
}
