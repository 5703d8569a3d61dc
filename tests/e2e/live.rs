//! Live mode end to end: `mode: "live"` requests paged through captain-sim's `/run/live`, every
//! page's results published once and in order with ids derived from the request, the input,
//! the page and the position; the live budget of the limiter at twice the simulator's live
//! limit; `kill -9` in the middle of multi-page inputs; a bridge without a callback listener.

use crate::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// A live search request: `inputs` searches, at most `max_results` results each if set.
fn live_request(id: &str, inputs: usize, max_results: Option<u64>) -> Value {
    let mut request = search_request(id, inputs, 0);
    request["mode"] = json!("live");
    request["parameters"] = match max_results {
        Some(max) => json!({ "max_results": max }),
        None => json!({}),
    };
    request
}

/// A simulator whose list actions page `total` live results per input, 2 per page.
fn live_sim(total: u64, extra: &str) -> String {
    fast_sim_config(&format!("[results]\nlive_total = {total}\n{extra}"))
}

/// Live calls the simulator answered, by HTTP status.
async fn live_calls(stack: &Stack) -> (u64, u64, u64) {
    let stats = stack.sim_stats().await;
    let calls = &stats["requests"]["POST /v4/actions/{action}/run/live"];
    let n = |code: &str| calls[code].as_u64().unwrap_or(0);
    (n("200"), n("429"), n("400"))
}

/// `live:{request}:{input}:page-{page}:{index}` → (request, input, page, index).
fn parse_live_id(id: &str) -> (String, u32, u32, u32) {
    let mut parts = id.rsplitn(4, ':');
    let index = parts.next().unwrap().parse().unwrap();
    let page = parts.next().unwrap().strip_prefix("page-").unwrap();
    let input = parts.next().unwrap().parse().unwrap();
    let request = parts.next().unwrap().strip_prefix("live:").unwrap();
    (request.to_owned(), input, page.parse().unwrap(), index)
}

/// Per (request, input): its results' (page, index) in topic order.
fn pages_by_input(results: &[Read]) -> BTreeMap<(String, u32), Vec<(u32, u32)>> {
    let mut sorted: Vec<&Read> = results.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut by: BTreeMap<(String, u32), Vec<(u32, u32)>> = BTreeMap::new();
    for r in sorted {
        let (request, input, page, index) = parse_live_id(r.json()["result_id"].as_str().unwrap());
        by.entry((request, input)).or_default().push((page, index));
    }
    by
}

/// The (page, index) sequence of an input with `results` results in pages of 2.
fn expected_pages(results: u32) -> Vec<(u32, u32)> {
    (0..results).map(|i| (i / 2 + 1, i % 2)).collect()
}

fn final_statuses(records: &[Read]) -> BTreeMap<String, Value> {
    statuses_by_request(records)
        .into_iter()
        .filter_map(|(id, events)| {
            let last = events.last()?.clone();
            matches!(
                last["status"].as_str(),
                Some("SUCCEEDED" | "PARTIAL_SUCCEEDED" | "FAILED" | "REJECTED")
            )
            .then_some((id, last))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_requests_publish_every_page_once_in_order_and_end_with_each_inputs_outcome() {
    const TOTAL: u32 = 9;
    let stack = Stack::start("live", &live_sim(u64::from(TOTAL), ""), |_| {}).await;
    let mut partial = live_request("live-partial", 3, None);
    // An input the API refuses (unknown key): that input fails, the others go on.
    partial["inputs"][1]["unexpected"] = json!(true);
    let mut failed = live_request("live-failed", 1, None);
    failed["inputs"][0]["unexpected"] = json!(true);
    let capped = live_request("live-capped", 2, Some(5));
    let mut auto = live_request("live-auto", 1, None);
    auto["mode"] = json!("auto");
    let started = Instant::now();
    stack.produce(&[partial, failed, capped, auto]).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "every live request final", |r| {
        final_statuses(r).len() >= 4
    });
    // 2 full inputs of live-partial, 2 capped inputs, 1 auto input.
    let expected = 2 * TOTAL + 2 * 5 + TOTAL;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every live result", |r| {
        r.len() >= expected as usize
    });
    let elapsed = started.elapsed();
    results.poll_for(Duration::from_millis(500));
    status.poll_for(Duration::from_millis(200));

    let counts = result_id_counts(&results.records);
    assert_eq!(results.records.len(), expected as usize, "no result twice");
    assert_eq!(counts.len(), expected as usize);
    let by_input = pages_by_input(&results.records);
    let inputs: Vec<(&str, u32)> = by_input.keys().map(|(r, i)| (r.as_str(), *i)).collect();
    assert_eq!(
        inputs,
        [
            ("live-auto", 0),
            ("live-capped", 0),
            ("live-capped", 1),
            ("live-partial", 0),
            ("live-partial", 2)
        ],
        "results of every input that succeeded, none of those that failed"
    );
    for ((request, input), pages) in &by_input {
        let want = if request == "live-capped" { 5 } else { TOTAL };
        assert_eq!(
            pages,
            &expected_pages(want),
            "{request} input {input}: every page once, in order"
        );
    }
    for r in &results.records {
        let v = r.json();
        let (request, input, page, _) = parse_live_id(v["result_id"].as_str().unwrap());
        assert_eq!(
            r.key.as_deref(),
            Some(request.as_str()),
            "keyed by request_id"
        );
        assert_eq!(v["request_id"], request);
        assert_eq!(v["run_uid"], format!("live:{request}:{input}"));
        assert_eq!(v["batch_uid"], format!("page-{page}"));
        assert_eq!(v["custom_data"]["row"], input.to_string(), "{v}");
        assert!(
            v["input"]["linkedin_people_search_url"].is_string()
                && v["input"].get("custom_data").is_none(),
            "the input without custom_data: {v}"
        );
        assert!(v["result"].is_object(), "{v}");
        assert_eq!(v["metadata"]["ticket"], request);
    }

    let by_request = statuses_by_request(&status.records);
    for (id, events) in &by_request {
        let statuses: Vec<&str> = events
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        let last = match id.as_str() {
            "live-partial" => "PARTIAL_SUCCEEDED",
            "live-failed" => "FAILED",
            _ => "SUCCEEDED",
        };
        assert_eq!(statuses, ["RUNNING", last], "{id}: {events:#?}");
        assert_transitions_in_order(events);
        for e in events {
            assert_eq!(e["mode"], "live", "{id}: auto runs live at 1 input");
            assert_eq!(e["source"], "live");
            assert!(e["run_uid"].is_null());
        }
    }
    let errors = |id: &str| by_request[id].last().unwrap()["input_errors"].clone();
    let partial_errors = errors("live-partial");
    assert_eq!(
        partial_errors.as_array().unwrap().len(),
        1,
        "{partial_errors}"
    );
    assert_eq!(partial_errors[0]["index"], 1);
    assert_eq!(partial_errors[0]["error"]["http_status"], 400);
    assert_eq!(
        by_request["live-partial"].last().unwrap()["error"],
        partial_errors[0]["error"],
        "the first input error is the event's error"
    );
    assert_eq!(errors("live-failed")[0]["index"], 0);
    assert!(errors("live-capped").is_null());

    // Every page was fetched once: 5 pages for 9 results, 3 for 5 (the third cut to 1).
    let (ok, throttled, refused) = live_calls(&stack).await;
    assert_eq!((ok, throttled), (3 * 5 + 2 * 3, 0), "one call per page");
    assert_eq!(refused, 2, "a refused input is not retried");
    eprintln!(
        "e2e live: 4 requests, {expected} results on {ok} pages in {:.2} s",
        elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_at_twice_the_live_limit_completes_every_input_and_429s_stay_few() {
    const LIMIT: f64 = 20.0;
    const REQUESTS: usize = 60;
    const INPUTS: usize = 2;
    // 6 results in pages of 2: 3 calls per input.
    const PAGES: u64 = 3;
    let sim = live_sim(
        6,
        &format!(
            "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.live]\nrps = {LIMIT}\nburst = {LIMIT}\n"
        ),
    );
    let stack = Stack::start("live-rate", &sim, |s| {
        s.captain.rate_limit.live = Some(captain_bridge::captain::ModeOverrides {
            rate_per_sec: Some(2.0 * LIMIT),
            ceiling_per_sec: Some(2.0 * LIMIT),
            burst: Some(5),
            ..Default::default()
        });
        s.captain.max_rate_limit_wait = Duration::from_secs(120);
    })
    .await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| live_request(&format!("lr-{i}"), INPUTS, None))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(
        Duration::from_secs(180),
        "every live request SUCCEEDED",
        |r| final_status_count(r, "SUCCEEDED") >= REQUESTS,
    );
    let elapsed = started.elapsed().as_secs_f64();
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let expected = REQUESTS * INPUTS * 6;
    results.until(Duration::from_secs(30), "every result", |r| {
        r.len() >= expected
    });
    results.poll_for(Duration::from_millis(500));

    let (ok, throttled, _) = live_calls(&stack).await;
    let calls = (REQUESTS * INPUTS) as u64 * PAGES;
    assert_eq!(ok, calls, "every page fetched once");
    assert_eq!(
        results.records.len(),
        expected,
        "every result published once"
    );
    assert_eq!(result_id_counts(&results.records).len(), expected);
    let share = throttled as f64 / (ok + throttled) as f64;
    let m = stack.metrics().await;
    let limited = metric(
        &m,
        "captain_bridge_api_requests_total{code=\"429\",endpoint=\"run_live\"}",
    )
    .unwrap_or(0.0);
    let cooldown = |mode: &str| {
        metric(
            &m,
            &format!("captain_bridge_api_rate_limit_cooldown_seconds_total{{key=\"default\",mode=\"{mode}\"}}"),
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "e2e live rate: L={LIMIT}/s, live budget at {}/s: {calls} live calls in {elapsed:.1} s \
         ({:.1} calls/s, {:.0}% of L; ideal {:.1} s); {throttled} answered 429 ({:.2}%)",
        2.0 * LIMIT,
        calls as f64 / elapsed,
        100.0 * calls as f64 / elapsed / LIMIT,
        calls as f64 / LIMIT,
        100.0 * share
    );
    assert_eq!(limited as u64, throttled, "every 429 seen by the bridge");
    if throttled > 0 {
        assert!(cooldown("live") > 0.0, "the live budget cooled down");
    }
    assert_eq!(cooldown("async"), 0.0, "the async budget never did");
    assert!(
        share <= 0.10,
        "{throttled} of {} live calls answered 429 ({:.1}%): the live budget did not learn",
        ok + throttled,
        100.0 * share
    );
}

/// Reads `topic` from the beginning with `read_uncommitted`: the records of aborted
/// transactions too (what the bridge produced before it was killed and never committed).
fn read_uncommitted(bootstrap: &str, topic: &str, wait: Duration) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("live-uncommitted-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_mid_page_resumes_each_input_after_its_last_committed_page() {
    const REQUESTS: usize = 4;
    const INPUTS: usize = 2;
    const TOTAL: u32 = 40;
    // 20 pages per input, each call 60-100 ms: inputs page for a couple of seconds.
    let sim = live_sim(
        u64::from(TOTAL),
        "[faults]\nlatency_ms = 60\nlatency_jitter_ms = 40\n",
    );
    let mut stack = Stack::start("live-crash", &sim, |s| {
        s.live.concurrency = 1;
    })
    .await;
    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("lc-{i}")).collect();
    let requests: Vec<Value> = ids
        .iter()
        .map(|id| live_request(id, INPUTS, None))
        .collect();
    stack.produce(&requests).await;
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let total = REQUESTS * INPUTS * TOTAL as usize;
    results.until(Duration::from_secs(60), "a third of the results", |r| {
        r.len() >= total / 3
    });
    stack.bridge.kill_hard();
    let at_kill = results.records.len();
    let (calls_at_kill, _, _) = live_calls(&stack).await;
    assert!(
        at_kill < total,
        "finished before the kill: nothing was tested"
    );
    stack.bridge.restart().await.unwrap();

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(90), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    results.until(Duration::from_secs(30), "every result", |r| {
        r.len() >= total
    });
    results.poll_for(Duration::from_secs(1));
    status.poll_for(Duration::from_millis(300));

    // The committed ledger: every result once, every input's pages in order.
    let counts = result_id_counts(&results.records);
    assert_eq!(counts.len(), total, "no result lost");
    let committed_duplicates = results.records.len() - counts.len();
    assert_eq!(
        committed_duplicates, 0,
        "a resumed input starts after its last committed page"
    );
    for ((request, input), pages) in pages_by_input(&results.records) {
        assert_eq!(pages, expected_pages(TOTAL), "{request} input {input}");
    }
    for (id, events) in statuses_by_request(&status.records) {
        let statuses: Vec<&str> = events
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["RUNNING", "SUCCEEDED"], "{id}: said once each");
    }
    // What was produced and never committed (the pages of the transaction open at the kill)
    // was fetched and published again after the restart under the same result ids.
    let all = read_uncommitted(
        &stack.bootstrap,
        &stack.topics.run_results,
        Duration::from_secs(3),
    );
    let mut seen: HashMap<String, Vec<&Value>> = HashMap::new();
    for v in &all {
        seen.entry(v["result_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    assert_eq!(
        seen.len(),
        total,
        "aborted records carry the ids of committed ones"
    );
    let mut repeated = 0;
    for copies in seen.values().filter(|c| c.len() > 1) {
        repeated += copies.len() - 1;
        for copy in &copies[1..] {
            assert_eq!(copy["result"], copies[0]["result"], "same id, same result");
            assert_eq!(copy["run_uid"], copies[0]["run_uid"]);
        }
    }
    let (calls, _, _) = live_calls(&stack).await;
    let pages = (REQUESTS * INPUTS) as u64 * u64::from(TOTAL / 2);
    eprintln!(
        "e2e live crash: killed at {at_kill}/{total} committed results ({calls_at_kill} live calls); \
         {} records in all incl. aborted, {repeated} re-published under their result_id; \
         {calls} live calls for {pages} pages ({} fetched again)",
        all.len(),
        calls.saturating_sub(pages)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_without_a_callback_listener_serves_live_requests_and_refuses_async_ones() {
    let stack = Stack::start("live-only", &live_sim(4, ""), |s| {
        s.callbacks.enabled = false;
    })
    .await;
    let mut auto = live_request("lo-auto", 20, Some(1));
    auto["mode"] = json!("auto");
    stack
        .produce(&[
            live_request("lo-live", 2, None),
            auto,
            search_request("lo-async", 1, 1),
        ])
        .await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "three final statuses", |r| {
        final_statuses(r).len() >= 3
    });
    let finals = final_statuses(&status.records);
    assert_eq!(finals["lo-live"]["status"], "SUCCEEDED");
    assert_eq!(
        finals["lo-auto"]["status"], "SUCCEEDED",
        "auto runs live on a live-only bridge"
    );
    assert_eq!(finals["lo-auto"]["mode"], "live");
    let refused = &finals["lo-async"];
    assert_eq!(refused["status"], "REJECTED");
    assert_eq!(refused["error"]["label"], "MODE_UNAVAILABLE", "{refused}");
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "every live result", |r| {
        r.len() >= 2 * 4 + 20
    });
    assert_eq!(
        request_ids(&results.records),
        HashSet::from(["lo-live".to_owned(), "lo-auto".to_owned()])
    );
    let stats = stack.sim_stats().await;
    assert_eq!(
        stats["requests"]["POST /v4/actions/{action}/run/async"],
        Value::Null,
        "nothing submitted async: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_live_cooldown_pauses_the_launch_partitions_and_every_request_still_succeeds_once() {
    const REQUESTS: usize = 4;
    // Burst 2, then one live call per 12.5 s: Retry-After ≈ 13 s, far above the 1 s after
    // which a cooldown pauses the launch partitions.
    let sim = live_sim(
        2,
        "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.live]\nrps = 0.08\nburst = 2\n",
    );
    let stack = Stack::start("live-cooldown", &sim, |s| {
        s.captain.rate_limit.pause_consumer_after = Duration::from_secs(1);
        s.captain.max_rate_limit_wait = Duration::from_secs(120);
    })
    .await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| live_request(&format!("lcd-{i}"), 1, None))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut paused_seen = false;
    while final_status_count(&status.records, "SUCCEEDED") < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {REQUESTS} SUCCEEDED, log {}",
            final_status_count(&status.records, "SUCCEEDED"),
            stack.bridge.log_path().display()
        );
        status.poll_for(Duration::from_millis(200));
        let m = stack.metrics().await;
        paused_seen |= metric(&m, "captain_bridge_launch_paused_for_cooldown") == Some(1.0);
    }
    assert!(paused_seen, "a live cooldown paused the launch partitions");
    status.poll_for(Duration::from_millis(500));
    for (id, events) in statuses_by_request(&status.records) {
        let statuses: Vec<&str> = events
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["RUNNING", "SUCCEEDED"], "{id}: once each");
    }
    let (ok, throttled, _) = live_calls(&stack).await;
    assert_eq!(ok, REQUESTS as u64, "one page each, fetched once");
    eprintln!(
        "e2e live cooldown: {REQUESTS} requests, {throttled} answered 429, partitions paused"
    );
}
