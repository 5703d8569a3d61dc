//! The main loop, end to end: launch requests in, runs submitted, callbacks in, statuses and
//! results out — async and schedule modes.

use crate::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_async_request_succeeds_and_every_result_is_published_exactly_once() {
    const REQUESTS: usize = 20;
    const INPUTS: usize = 3;
    const RESULTS: u64 = 5;
    let stack = Stack::start("async", &fast_sim_config(""), |_| {}).await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("req-{i}"), INPUTS, RESULTS))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let expected_results = REQUESTS * INPUTS * RESULTS as usize;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(60), "every result", |r| {
        r.len() >= expected_results
    });
    let elapsed = started.elapsed();
    // Late duplicates would arrive within the callbacks' retry delay: look a little longer.
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(500));

    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), expected_results, "distinct result ids");
    assert!(
        counts.values().all(|&n| n == 1),
        "a result was published twice"
    );
    for r in &results.records {
        let v = r.json();
        let id = v["request_id"].as_str().unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(id),
            "results are keyed by request_id"
        );
        assert_eq!(v["metadata"]["ticket"], id, "metadata is echoed on results");
        assert_eq!(v["action"], "linkedin-search-people");
        assert!(
            v["custom_data"]["row"].is_string(),
            "custom_data is carried: {v}"
        );
        assert!(v["result"].is_object());
    }
    let by_request = statuses_by_request(&status.records);
    assert_eq!(by_request.len(), REQUESTS);
    for (id, events) in &by_request {
        assert_transitions_in_order(events);
        let last = events.last().unwrap();
        assert_eq!(last["status"], "SUCCEEDED", "{id}: {events:#?}");
        assert_eq!(last["metadata"]["ticket"], id.as_str());
        assert_eq!(
            final_status_count(
                &status
                    .records
                    .iter()
                    .filter(|r| r.key.as_deref() == Some(id))
                    .cloned()
                    .collect::<Vec<_>>(),
                "SUCCEEDED"
            ),
            1,
            "{id} reached SUCCEEDED once"
        );
    }
    eprintln!(
        "e2e async: {REQUESTS} requests x {INPUTS} inputs, {expected_results} results drained in {:.2} s ({:.1} requests/s, {:.0} results/s)",
        elapsed.as_secs_f64(),
        REQUESTS as f64 / elapsed.as_secs_f64(),
        expected_results as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_the_per_run_input_limit_becomes_several_runs_under_one_request_id() {
    let stack = Stack::start("chunks", &fast_sim_config(""), |s| {
        s.captain.async_max_inputs = 2
    })
    .await;
    stack.produce(&[search_request("big", 5, 1)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "three chunks SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 3
    });
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "five results", |r| r.len() >= 5);
    let events = &statuses_by_request(&status.records)["big"];
    let chunks: HashSet<u64> = events
        .iter()
        .map(|e| e["chunk"].as_u64().unwrap())
        .collect();
    assert_eq!(chunks, HashSet::from([0, 1, 2]));
    let runs: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["run_uid"].as_str())
        .collect();
    assert_eq!(runs.len(), 3, "one run per chunk");
    assert_transitions_in_order(events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_firings_produce_runs_whose_callbacks_map_back_to_the_request() {
    // time_scale 60: the simulator's `* * * * *` fires every real second.
    let sim = fast_sim_config("").replace("time_scale = 1.0", "time_scale = 60.0");
    let stack = Stack::start("schedule", &sim, |_| {}).await;
    let mut request = search_request("sched-1", 1, 2);
    request["mode"] = json!("schedule");
    request["schedule"] = json!({"cron": "* * * * *", "timezone": "Europe/Paris"});
    stack.produce(&[request]).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "two firings SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 2
    });
    let events = &statuses_by_request(&status.records)["sched-1"];
    assert_eq!(events[0]["status"], "SCHEDULED");
    let schedule_uid = events[0]["schedule_uid"]
        .as_str()
        .expect("schedule_uid on SCHEDULED");
    let fired: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "SUCCEEDED")
        .collect();
    let runs: HashSet<&str> = fired
        .iter()
        .map(|e| e["run_uid"].as_str().unwrap())
        .collect();
    assert!(runs.len() >= 2, "each firing is its own run: {events:#?}");
    for e in &fired {
        assert_eq!(
            e["schedule_uid"], schedule_uid,
            "firing runs carry the schedule: {e}"
        );
        assert_eq!(e["mode"], "schedule");
        assert_eq!(e["metadata"]["ticket"], "sched-1");
    }
    assert_transitions_in_order(events);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "results of two firings", |r| {
        r.len() >= 4
    });
    assert!(request_ids(&results.records)
        .iter()
        .all(|id| id == "sched-1"));
}
