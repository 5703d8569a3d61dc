//! 429 end to end: captain-sim limits the key to L submissions/s, the bridge is configured at
//! 2×L; the shared adaptive limiter learns the real limit, every request is submitted exactly
//! once and the stream completes, with 429s only while it learns.

use crate::support::kafka::Collector;
use crate::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_configured_twice_too_high_converges_and_every_request_is_submitted_once() {
    const LIMIT: f64 = 20.0;
    const REQUESTS: usize = 300;
    let sim = fast_sim_config(&format!(
        "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.async]\nrps = {LIMIT}\nburst = 5\n"
    ));
    let configured = (2.0 * LIMIT).to_string();
    let stack = Stack::start(
        "ratelimit",
        &sim,
        &[
            (
                "CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__RATE_PER_SEC",
                configured.as_str(),
            ),
            (
                "CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__CEILING_PER_SEC",
                configured.as_str(),
            ),
            ("CAPTAIN_BRIDGE_CAPTAIN__RATE_LIMIT__BURST", "5"),
        ],
    )
    .await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("rl-{i}"), 1, 1))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.status);
    status.until(Duration::from_secs(120), "every request SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS
    });
    let elapsed = started.elapsed().as_secs_f64();

    let stats = stack.sim.stats().await;
    let submits = &stats["requests"]["POST /v4/actions/{action}/run/async"];
    let accepted = submits["200"].as_u64().unwrap_or(0);
    let throttled = submits["429"].as_u64().unwrap_or(0);
    assert_eq!(
        accepted, REQUESTS as u64,
        "every request submitted exactly once: {stats}"
    );
    let share = throttled as f64 / (accepted + throttled) as f64;
    let ideal = REQUESTS as f64 / LIMIT;
    eprintln!(
        "e2e rate limit: L={LIMIT}/s, bridge at {configured}/s: {REQUESTS} submitted in {elapsed:.1} s \
         (ideal {ideal:.1} s, {:.0}% of L), {throttled} answered 429 ({:.1}%)",
        100.0 * ideal / elapsed,
        100.0 * share
    );
    assert!(
        share < 0.15,
        "429s beyond a learning phase: {throttled} of {}",
        accepted + throttled
    );
    for events in statuses_by_request(&status.records).values() {
        assert_transitions_in_order(events);
    }
}
