//! 429 end to end: captain-sim limits the key to L submissions/s, the bridge is configured at
//! 2×L; the shared adaptive limiter learns the real limit, every one of 2,000 requests is
//! submitted exactly once and the stream completes, with 429s only while it learns.

use crate::*;
use std::time::{Duration, Instant};

/// Submissions the simulator answered 200 and 429 so far.
async fn submissions(stack: &Stack) -> (u64, u64) {
    let stats = stack.sim_stats().await;
    let submits = &stats["requests"]["POST /v4/actions/{action}/run/async"];
    (
        submits["200"].as_u64().unwrap_or(0),
        submits["429"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_configured_twice_too_high_converges_and_every_request_is_submitted_once() {
    const LIMIT: f64 = 50.0;
    const REQUESTS: usize = 2_000;
    let sim = fast_sim_config(&format!(
        "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.async]\nrps = {LIMIT}\nburst = {LIMIT}\n"
    ));
    let stack = Stack::start("ratelimit", &sim, |s| {
        s.captain.rate_limit.rate_per_sec = 2.0 * LIMIT;
        s.captain.rate_limit.ceiling_per_sec = 2.0 * LIMIT;
        s.captain.rate_limit.burst = 5;
    })
    .await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("rl-{i}"), 1, 1))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    // The first quarter is the learning phase; the rest is steady state.
    status.until(Duration::from_secs(60), "a quarter SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS / 4
    });
    let (learned_ok, learned_429) = submissions(&stack).await;
    let learned_at = started.elapsed().as_secs_f64();
    status.until(Duration::from_secs(180), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let elapsed = started.elapsed().as_secs_f64();

    let (accepted, throttled) = submissions(&stack).await;
    assert_eq!(
        accepted, REQUESTS as u64,
        "every request submitted exactly once"
    );
    let share = throttled as f64 / (accepted + throttled) as f64;
    let steady_429 = throttled - learned_429;
    let steady_share = steady_429 as f64 / (accepted - learned_ok + steady_429) as f64;
    let steady_rate = (accepted - learned_ok) as f64 / (elapsed - learned_at);
    let ideal = REQUESTS as f64 / LIMIT;
    eprintln!(
        "e2e rate limit: L={LIMIT}/s, bridge at {}/s: {REQUESTS} submitted in {elapsed:.1} s \
         (ideal {ideal:.1} s); {throttled} answered 429 ({:.2}%), {learned_429} of them in the first \
         {learned_at:.1} s; steady state: {:.0}% of L, {steady_429} answered 429 ({:.2}%)",
        2.0 * LIMIT,
        100.0 * share,
        100.0 * steady_rate / LIMIT,
        100.0 * steady_share
    );
    assert!(
        steady_share <= 0.01,
        "429s beyond the learning phase: {steady_429} ({:.2}%)",
        100.0 * steady_share
    );
    for events in statuses_by_request(&status.records).values() {
        assert_transitions_in_order(events);
    }
}
