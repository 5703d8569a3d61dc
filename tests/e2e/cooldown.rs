//! A cooldown longer than `max.poll.interval.ms` does not cause a rebalance or a redelivery:
//! captain-sim answers 429 with a Retry-After of ~13 s while the bridge's consumer has a
//! 7 s poll interval; the bridge pauses its launch partitions and keeps polling, so it stays
//! the only member of its group, and every request is submitted and reported exactly once.

use crate::*;
use std::time::{Duration, Instant};

const MAX_POLL_INTERVAL_MS: u64 = 7000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_longer_than_the_poll_interval_causes_no_rebalance_and_no_redelivery() {
    const REQUESTS: usize = 6;
    // Burst 2, then one submission per 12.5 s: Retry-After ≈ 13 s > max.poll.interval.ms.
    let sim_toml = fast_sim_config(
        "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.async]\nrps = 0.08\nburst = 2\n",
    );
    let stack = Stack::start("cooldown", &sim_toml, |s| {
        s.captain.rate_limit.pause_consumer_after = Duration::from_secs(1);
        s.captain.max_rate_limit_wait = Duration::from_secs(120);
        s.kafka.properties.extend([
            (
                "max.poll.interval.ms".to_owned(),
                MAX_POLL_INTERVAL_MS.to_string(),
            ),
            ("session.timeout.ms".to_owned(), "6000".to_owned()),
        ]);
    })
    .await;

    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("cd-{i}"), 1, 1))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;

    // Wait for every request to succeed, scraping the pause gauge meanwhile.
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let timeout = Duration::from_secs(180);
    let deadline = started + timeout;
    let mut paused_scrapes = 0u32;
    let mut scrapes = 0u32;
    // The longest stretch the gauge stayed at 1: one pause outlasting the poll interval.
    let mut paused_since: Option<Instant> = None;
    let mut longest_pause = Duration::ZERO;
    while final_status_count(&status.records, "SUCCEEDED") < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {} of {REQUESTS} SUCCEEDED, log {}",
            final_status_count(&status.records, "SUCCEEDED"),
            stack.bridge.log_path().display()
        );
        status.poll_for(Duration::from_millis(200));
        let m = stack.metrics().await;
        scrapes += 1;
        if metric(&m, "captain_bridge_launch_paused_for_cooldown") == Some(1.0) {
            paused_scrapes += 1;
            let since = *paused_since.get_or_insert_with(Instant::now);
            longest_pause = longest_pause.max(since.elapsed());
        } else {
            paused_since = None;
        }
    }
    let elapsed = started.elapsed();
    // Anything published twice would arrive shortly after the last SUCCEEDED.
    status.poll_for(Duration::from_secs(1));

    let stats = stack.sim_stats().await;
    let submits = &stats["requests"]["POST /v4/actions/{action}/run/async"];
    let accepted = submits["200"].as_u64().unwrap_or(0);
    let throttled = submits["429"].as_u64().unwrap_or(0);
    let log = std::fs::read_to_string(stack.bridge.log_path()).expect("bridge log");
    let assigned = log.matches("launch partitions assigned").count();
    let revoked = log.matches("launch partitions revoked").count();
    let pauses = log
        .matches("API cooldown: pausing launch partitions")
        .count();
    let poll_exceeded = log
        .lines()
        .filter(|l| l.to_lowercase().contains("poll interval"))
        .count();
    eprintln!(
        "e2e cooldown: {REQUESTS} requests SUCCEEDED in {:.1} s (max.poll.interval {} s); \
         submits: {accepted} accepted, {throttled} answered 429; paused at {paused_scrapes} of \
         {scrapes} scrapes, {pauses} pauses logged, longest {:.1} s; assignments {assigned}, revocations {revoked}, \
         poll-interval lines {poll_exceeded}",
        elapsed.as_secs_f64(),
        MAX_POLL_INTERVAL_MS / 1000,
        longest_pause.as_secs_f64()
    );

    assert_eq!(
        accepted, REQUESTS as u64,
        "every request submitted exactly once: {stats}"
    );
    assert!(throttled >= 1, "no 429 at all: {stats}");
    assert!(
        paused_scrapes >= 1,
        "launch_paused_for_cooldown never seen at 1 in {scrapes} scrapes"
    );
    assert!(
        longest_pause > Duration::from_millis(MAX_POLL_INTERVAL_MS),
        "no single pause ({longest_pause:?} at most) outlasted max.poll.interval.ms"
    );
    let by_request = statuses_by_request(&status.records);
    assert_eq!(by_request.len(), REQUESTS, "{by_request:#?}");
    for (id, events) in &by_request {
        let runs: std::collections::HashSet<&str> = events
            .iter()
            .filter_map(|e| e["run_uid"].as_str())
            .collect();
        assert_eq!(runs.len(), 1, "{id}: more than one run: {events:#?}");
        let created = events.iter().filter(|e| e["status"] == "CREATED").count();
        assert_eq!(created, 1, "{id}: CREATED {created} times: {events:#?}");
        assert_transitions_in_order(events);
    }
    assert_eq!(
        (assigned, revoked, poll_exceeded),
        (1, 0, 0),
        "a rebalance happened (assignments, revocations, poll-interval lines); log {}",
        stack.bridge.log_path().display()
    );
}
