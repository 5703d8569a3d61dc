//! Defect 6: a final status repeated after a crash. Across three `kill -9` runs, 8 runs used to
//! get a second, identical `SUCCEEDED`. Now a callback's results, status and state change
//! commit in one Kafka transaction with its consumed offset: the bridge is killed three times
//! under callback load (a wave of requests before each kill) and restarted, and a
//! `read_committed` consumer sees no final status twice, no status twice and no result twice.
//! Requests submitted twice (the API-side window: the API answered, the bridge died before
//! committing it) are a second run, counted.

use crate::crash::replay_failed_callbacks;
use crate::probe::*;
use crate::*;
use std::time::{Duration, Instant};

const REQUESTS: usize = 300;
const RESULTS: usize = 6;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_under_callback_load_repeat_no_final_status_for_read_committed_consumers() {
    // Runs of ~1.5 s (three pages of two results, 400 ms apart) keep callbacks inside the
    // bridge at each kill; the simulator retries a refused delivery with a doubling backoff from 300 ms.
    let sim_toml = fast_sim_config("[faults]\nlatency_ms = 50\nlatency_jitter_ms = 50\n")
        .replace("start_after_ms = 10", "start_after_ms = 200")
        .replace("page_interval_ms = 2", "page_interval_ms = 400")
        .replace("max_attempts = 5", "max_attempts = 20")
        .replace("backoff_ms = 100", "backoff_ms = 300");
    // The shortest session and transaction timeouts the bridge allows: a killed instance's
    // partitions and open transaction are released within seconds.
    let mut stack = Stack::start("kill3", &sim_toml, |s| {
        s.kafka.session_timeout = Duration::from_secs(6);
        s.processing.revoke_drain = Duration::from_secs(1);
        s.kafka.transaction_timeout = Duration::from_secs(7);
    })
    .await;
    // A wave of requests before each kill, so that every kill lands while its wave's callbacks
    // are arriving (one wave up front finished within a restart on a fast machine).
    let wave = REQUESTS / KILLS;
    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("k3-{i:03}")).collect();
    let started = Instant::now();
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    let mut killed_at = Vec::new();
    for (kill, wave_ids) in ids.chunks(wave).enumerate() {
        let requests: Vec<Value> = wave_ids
            .iter()
            .map(|id| search_request(id, 1, RESULTS as u64))
            .collect();
        stack.produce(&requests).await;
        // The wave's first results out: its runs are being submitted or called back.
        let succeeded = |r: &[Read]| {
            r.iter()
                .filter(|r| {
                    r.key.as_ref().is_some_and(|k| wave_ids.contains(k))
                        && r.json()["status"] == "SUCCEEDED"
                })
                .count()
        };
        // Results, not statuses: final statuses wait for the reconciler's delivery audit (a
        // couple of seconds), by which time a whole wave can be done.
        results.until(
            Duration::from_secs(90),
            &format!("a first result of wave {kill}"),
            |r| {
                r.iter()
                    .any(|r| r.key.as_ref().is_some_and(|k| wave_ids.contains(k)))
            },
        );
        let failed_before = stack.sim_stats().await["callbacks"]["attempts_failed"]
            .as_u64()
            .unwrap_or(0);
        stack.bridge.kill_hard();
        status.poll_for(Duration::from_millis(100));
        killed_at.push(succeeded(&status.records));
        // Dead until deliveries have failed against the closed port.
        let dead_until = Instant::now() + Duration::from_secs(5);
        while stack.sim_stats().await["callbacks"]["attempts_failed"]
            .as_u64()
            .unwrap_or(0)
            < failed_before + 10
            && Instant::now() < dead_until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stack.bridge.restart().await.unwrap();
    }
    assert!(
        killed_at.iter().all(|&n| n < wave),
        "a wave ended before its kill (SUCCEEDED per wave at each kill: {killed_at:?})"
    );
    let replayed = replay_failed_callbacks(&stack.sim).await;
    let ledger = drain(
        &mut status,
        &mut results,
        &ids,
        RESULTS,
        Duration::from_secs(120),
        "after three kills",
    );
    eprintln!(
        "e2e kill3: {REQUESTS} requests x {RESULTS} results, kill -9 at {killed_at:?} SUCCEEDED of each wave of {wave}, \
         {replayed} failed callbacks replayed, drained in {:.1} s; {}; {} requests submitted \
         twice (a second run)",
        started.elapsed().as_secs_f64(),
        ledger.summary(),
        ledger.resubmitted(1)
    );
    assert_eq!(ledger.repeated_finals(), 0, "a final status was repeated");
    assert_eq!(ledger.repeated_statuses(), 0, "a status was repeated");
    assert_eq!(ledger.duplicate_results(), 0, "a result was repeated");
    for (id, events) in statuses_by_request(&status.records) {
        let mut by_run: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for e in events {
            by_run
                .entry(e["run_uid"].as_str().unwrap_or("-").to_owned())
                .or_default()
                .push(e);
        }
        for (run, events) in by_run {
            assert_transitions_in_order(&events);
            assert_eq!(
                events.last().unwrap()["status"],
                "SUCCEEDED",
                "{id} run {run}: {events:#?}"
            );
        }
    }
    // The API-side window is bounded by what can be in flight at a kill.
    let in_flight = stack.bridge.settings().launch.max_in_flight;
    assert!(
        ledger.resubmitted(1) <= KILLS * in_flight,
        "{} requests submitted twice",
        ledger.resubmitted(1)
    );
}
