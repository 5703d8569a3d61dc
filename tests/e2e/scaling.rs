//! Scaling out the Kafka way: two instances in one consumer group share the launch stream, any
//! instance takes any callback, and one leaving (SIGTERM) hands its partitions over with no loss.

use crate::*;
use std::time::Duration;

fn callbacks_accepted(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(r#"captain_bridge_callbacks_total{outcome="accepted"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_stream_and_one_leaving_loses_nothing() {
    const REQUESTS: usize = 300;
    let stack = Stack::start("scale", &fast_sim_config(""), |_| {}).await;
    // Every callback goes to instance A, including those of runs B submitted: any instance can
    // take any callback (a load balancer would spread them; this makes it observable).
    let a_callbacks = stack.bridge.callback_base();
    let mut b = stack
        .another_bridge(|s| s.callbacks.public_base_url = Some(a_callbacks))
        .await;
    // Both groups: the router's (launch topic) and the owners' (requests and callbacks).
    await_group_members(&stack.bootstrap, &stack.topics.group, 2);
    await_group_members(
        &stack.bootstrap,
        &format!("{}-owners", stack.topics.group),
        2,
    );
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("s-{i}"), 1, 1))
        .collect();
    stack.produce(&requests).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(
        Duration::from_secs(90),
        "a third of the requests SUCCEEDED",
        |r| final_status_count(r, "SUCCEEDED") >= REQUESTS / 3,
    );
    let b_metrics = b.metrics().await.unwrap();
    let b_consumed = launches_consumed(&b_metrics);
    assert!(b_consumed > 0, "instance B consumed part of the stream");
    assert_eq!(callbacks_accepted(&b_metrics), 0, "B received no callback");

    // B leaves gracefully mid-stream; A gets its partitions.
    let exit = b.terminate(Duration::from_secs(40)).unwrap();
    assert!(exit.success(), "SIGTERM ends the bridge cleanly: {exit}");

    status.until(Duration::from_secs(120), "every request SUCCEEDED", |r| {
        request_ids(r).len() >= REQUESTS && {
            let by = statuses_by_request(r);
            by.values()
                .all(|e| e.iter().any(|s| s["status"] == "SUCCEEDED"))
        }
    });
    let a_metrics = stack.metrics().await;
    assert!(launches_consumed(&a_metrics) > 0);
    assert!(
        callbacks_accepted(&a_metrics) >= REQUESTS as u64,
        "A took the callbacks of runs submitted by both instances"
    );
    for (id, events) in statuses_by_request(&status.records) {
        assert_transitions_in_order(&events);
        let runs: HashSet<&str> = events
            .iter()
            .filter_map(|e| e["run_uid"].as_str())
            .collect();
        assert_eq!(
            runs.len(),
            1,
            "{id} submitted once despite the rebalance: {events:#?}"
        );
    }
    eprintln!("e2e scaling: B consumed {b_consumed} of {REQUESTS} before leaving");
}
