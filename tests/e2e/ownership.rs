//! Partition ownership under change, while callbacks flow: an instance joining and one leaving
//! (rebalances: state restored by the new owners, in-flight work committed or redone), and a
//! fenced zombie (an instance frozen past its session timeout, then resumed), each checked
//! with a `read_committed` ledger: nothing lost, nothing seen twice.

use crate::ledger::Ledger;
use crate::*;
use captain_testkit::kafka::{reader_config, Collector};
use std::time::{Duration, Instant};

const RESULTS_PER_REQUEST: usize = 6;

/// Submissions accepted at 40/s (the bridge paced to match), and runs whose 6 results come in
/// 3 callbacks spread over ~1 s: launches and callbacks are in flight whenever ownership
/// changes.
fn streaming_sim() -> String {
    fast_sim_config(
        "[faults]\nlatency_ms = 20\n[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.async]\nrps = 40.0\nburst = 40\n",
    )
        .replace("start_after_ms = 10", "start_after_ms = 200")
        .replace("page_interval_ms = 2", "page_interval_ms = 300")
        .replace("max_attempts = 5", "max_attempts = 20")
        .replace("backoff_ms = 100", "backoff_ms = 300")
}

/// Paced at the simulator's rate.
fn paced(s: &mut Settings) {
    s.captain.rate_limit.rate_per_sec = 40.0;
    s.captain.rate_limit.ceiling_per_sec = 40.0;
    s.captain.rate_limit.burst = 40;
}

/// Polls `bridge`'s owned-partitions gauge until it reads `n`.
async fn await_owned(bridge: &BridgeProcess, n: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let owned = metric(
            &bridge.metrics().await.unwrap(),
            "captain_bridge_owned_partitions",
        );
        if owned == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "owned partitions {owned:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn requests(prefix: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    let requests = ids
        .iter()
        .map(|id| search_request(id, 1, RESULTS_PER_REQUEST as u64))
        .collect();
    (ids, requests)
}

/// Reads until every request SUCCEEDED with all its results, or panics after `timeout`; then
/// a little longer, for late duplicates.
fn drain(
    status: &mut Collector,
    results: &mut Collector,
    ids: &[String],
    timeout: Duration,
) -> Ledger {
    let deadline = Instant::now() + timeout;
    loop {
        status.poll_for(Duration::from_millis(200));
        results.poll_for(Duration::from_millis(200));
        let ledger = Ledger::read(&status.records, &results.records);
        if ledger.all_succeeded(ids) && ledger.all_results(ids, RESULTS_PER_REQUEST) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained in {timeout:?}: {} of {} requests SUCCEEDED",
            ids.iter()
                .filter(|id| ledger.all_succeeded(std::slice::from_ref(id)))
                .count(),
            ids.len()
        );
    }
    status.poll_for(Duration::from_secs(1));
    results.poll_for(Duration::from_secs(1));
    Ledger::read(&status.records, &results.records)
}

fn assert_exactly_once(what: &str, ledger: &Ledger, ids: &[String]) {
    for id in ids {
        for (run, statuses) in &ledger.runs[id] {
            assert_eq!(
                statuses.last().map(String::as_str),
                Some("SUCCEEDED"),
                "{what}: {id} run {run} ends SUCCEEDED: {statuses:?}"
            );
            assert_eq!(
                ledger.results.get(run).map_or(0, |r| r.len()),
                RESULTS_PER_REQUEST,
                "{what}: {id} run {run} has every result, and only its own"
            );
        }
    }
    assert_eq!(ledger.duplicate_results(), 0, "{what}: a result read twice");
    assert_eq!(
        ledger.duplicate_statuses(),
        0,
        "{what}: a status read twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_joining_and_one_leaving_while_callbacks_flow_loses_and_repeats_nothing() {
    const REQUESTS: usize = 800;
    let stack = Stack::start("rebalance", &streaming_sim(), paced).await;
    let (ids, requests) = requests("rb", REQUESTS);
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let started = Instant::now();
    stack.produce(&requests).await;
    status.until(Duration::from_secs(60), "a tenth SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS / 10
    });

    // B joins mid-stream (every partition is revoked and reassigned, eager rebalancing): its
    // callbacks go to A's endpoint, so both instances' callbacks keep arriving while B owns
    // partitions whose state it restored.
    let a_callbacks = stack.bridge.callback_base();
    let mut b = stack
        .another_bridge(|s| {
            paced(s);
            s.callbacks.public_base_url = Some(a_callbacks);
        })
        .await;
    let owners = format!("{}-owners", stack.topics.group);
    await_group_members(&stack.bootstrap, &owners, 2);
    let joined_at = final_status_count(&status.records, "SUCCEEDED");
    // B works as an owner for a while: it restored its partitions and turns callbacks into
    // records, in its own transactions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let processed = r#"captain_bridge_callbacks_processed_total{outcome="published"}"#;
    while metric(&b.metrics().await.unwrap(), processed).unwrap_or(0.0) < 100.0 {
        assert!(Instant::now() < deadline, "B processed no callbacks");
        status.poll_for(Duration::from_millis(200));
    }
    let b_metrics = b.metrics().await.unwrap();
    let b_owned = metric(&b_metrics, "captain_bridge_owned_partitions").unwrap_or(0.0);
    let b_restored =
        captain_testkit::metrics::sum(&b_metrics, "captain_bridge_states_restored_total");
    let b_processed = metric(&b_metrics, processed).unwrap_or(0.0);
    assert!(b_owned > 0.0, "B owns partitions after joining");

    // B leaves mid-stream (SIGTERM): it drains its submissions, commits, and its partitions
    // move back to A, which restores what B committed.
    let left_at = final_status_count(&status.records, "SUCCEEDED");
    let exit = b.terminate(Duration::from_secs(40)).unwrap();
    assert!(exit.success(), "B stops cleanly: {exit}");
    assert!(
        left_at < REQUESTS,
        "the stream ended before B left: nothing was tested"
    );

    let ledger = drain(&mut status, &mut results, &ids, Duration::from_secs(120));
    assert_exactly_once("join and leave", &ledger, &ids);
    let resubmitted = ledger.resubmitted();
    eprintln!(
        "e2e rebalance: {REQUESTS} requests; B joined at {joined_at} SUCCEEDED, owned {b_owned} \
         partitions, restored {b_restored} states, processed {b_processed} callbacks; B left at {left_at}; {resubmitted} submitted \
         twice; {} results, 0 duplicate; drained in {:.1} s",
        ledger.result_records,
        started.elapsed().as_secs_f64()
    );
    // B waits for its submissions in flight before leaving (processing.revoke_drain), so a
    // second submission needs the API to outlast that drain: none here.
    assert_eq!(
        resubmitted, 0,
        "no request submitted twice across the rebalances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_frozen_past_its_session_resumes_fenced_and_writes_nothing_a_read_committed_reader_sees(
) {
    const REQUESTS: usize = 600;
    // Short session and transaction timeouts: the group gives B's partitions to A after 6 s,
    // and the broker aborts B's open transaction (which holds the partitions' readable end)
    // once it is older than 8 s.
    let quick = |s: &mut Settings| {
        paced(s);
        s.kafka.session_timeout = Duration::from_secs(6);
        s.kafka.transaction_timeout = Duration::from_secs(8);
        s.processing.revoke_drain = Duration::from_secs(1);
    };
    let stack = Stack::start("zombie", &streaming_sim(), quick).await;
    let a_callbacks = stack.bridge.callback_base();
    let b = stack
        .another_bridge(|s| {
            quick(s);
            s.callbacks.public_base_url = Some(a_callbacks);
        })
        .await;
    let owners = format!("{}-owners", stack.topics.group);
    await_group_members(&stack.bootstrap, &owners, 2);

    let (ids, requests) = requests("zb", REQUESTS);
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    // What a reader that does not wait for commits sees: the zombie's writes, if any, land here.
    let mut uncommitted = Collector::with_config(
        reader_config(&stack.bootstrap).set("isolation.level", "read_uncommitted"),
        &stack.topics.run_results,
    );
    stack.produce(&requests).await;
    status.until(Duration::from_secs(60), "a fifth SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= REQUESTS / 5
    });
    let b_owned = metric(
        &b.metrics().await.unwrap(),
        "captain_bridge_owned_partitions",
    )
    .unwrap_or(0.0);
    assert!(b_owned > 0.0, "B owns partitions before it freezes");
    assert!(
        final_status_count(&status.records, "SUCCEEDED") < REQUESTS / 2,
        "the stream is mid-way when B freezes"
    );

    // Frozen mid-transaction: B keeps its sockets and answers nothing.
    b.signal("-STOP").unwrap();
    let frozen = Instant::now();
    let frozen_at = final_status_count(&status.records, "SUCCEEDED");
    // A takes B's partitions after the session timeout; their restore waits until B's open
    // transaction is aborted by the broker. Then the stream goes on without B.
    await_owned(&stack.bridge, 3.0, Duration::from_secs(60)).await;
    let taken_over_in = frozen.elapsed();
    let before = final_status_count(&status.records, "SUCCEEDED");
    status.until(Duration::from_secs(90), "progress without B", |r| {
        final_status_count(r, "SUCCEEDED") >= before + REQUESTS / 10
    });
    // B wakes up: whatever its loop still writes belongs to a transaction of a generation that
    // is gone, and is aborted.
    b.signal("-CONT").unwrap();
    let ledger = drain(&mut status, &mut results, &ids, Duration::from_secs(120));
    assert_exactly_once("zombie", &ledger, &ids);
    // B rejoins and is again a working member (not a crashed one).
    await_group_members(&stack.bootstrap, &owners, 2);
    let b_metrics = b.metrics().await.unwrap();
    let b_aborted = metric(
        &b_metrics,
        r#"captain_bridge_transactions_total{loop="owner",outcome="aborted"}"#,
    )
    .unwrap_or(0.0);
    uncommitted.poll_for(Duration::from_secs(2));
    let visible_uncommitted = uncommitted.records.len();
    eprintln!(
        "e2e zombie: B frozen at {frozen_at} SUCCEEDED; A went on after {:.1} s; B aborted {b_aborted} \
         owner transactions after waking; read_committed saw {} results, 0 duplicate; \
         read_uncommitted saw {visible_uncommitted}",
        taken_over_in.as_secs_f64(),
        ledger.result_records
    );
    assert!(
        visible_uncommitted >= ledger.result_records,
        "a read_uncommitted reader sees at least what a read_committed one does"
    );
}
