//! Defect 1: launch records the dead-letter topic cannot take as they are. A 5 MiB non-JSON
//! record (on a launch topic that allows it) used to be retried without end, a `REJECTED` per
//! attempt, its partition stuck and SIGTERM waiting out the drain timeout. Now each is
//! dead-lettered once with its value cut to the dead-letter topic's limit (headers say so and
//! give the original size), gets one `REJECTED`, and the partition moves on, across a restart.

use crate::probe::*;
use crate::*;
use captain_testkit::kafka::{alter_topic_config, committed_offsets, produce};
use rand::RngCore;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use std::time::{Duration, Instant};

fn random_bytes(len: usize) -> Vec<u8> {
    // Incompressible, so that compression cannot bring a record under a limit; never JSON.
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = b'~';
    bytes
}

fn big_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.max.bytes", "16000000")
        .set("compression.type", "none")
        .create()
        .unwrap()
}

fn dead_letters_of(dlq: &Collector, prefix: &str) -> usize {
    dlq.records
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(prefix)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_too_large_for_the_dead_letter_topic_are_dead_lettered_once_cut_and_the_partition_moves_on(
) {
    let mut stack = Stack::start("poison", &idle_sim(), |_| {}).await;
    let launch = stack.topics.launch_requests.clone();
    // The launch topic takes 8 MiB records; the dead-letter topic keeps Kafka's 1 MiB default,
    // which the bridge read at start-up.
    alter_topic_config(&stack.bootstrap, &launch, "max.message.bytes", "8388608")
        .await
        .unwrap();
    let a = random_bytes(5 * 1024 * 1024);
    let b = random_bytes(3 * 1024 * 1024);
    let valid = |id: &str| Some(serde_json::to_vec(&search_request(id, 1, 1)).unwrap());
    // Everything on partition 0, in this order: the poison records sit between valid ones, and
    // A and B are adjacent, so one transaction holds both (the broker refuses a batch of two
    // records of ~1 MiB: the router redoes them one per transaction).
    let records = vec![
        ("ok-before".to_owned(), valid("ok-before"), Some(0)),
        ("poison-a".to_owned(), Some(a.clone()), Some(0)),
        ("poison-b".to_owned(), Some(b.clone()), Some(0)),
        ("ok-after".to_owned(), valid("ok-after"), Some(0)),
    ];
    let started = Instant::now();
    produce(&big_producer(&stack.bootstrap), &launch, records, 10)
        .await
        .unwrap();

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(
        Duration::from_secs(60),
        "both valid requests CREATED",
        |r| final_status_count(r, "CREATED") >= 2,
    );
    let mut dlq = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dlq.until(Duration::from_secs(30), "two dead letters", |r| {
        r.len() >= 2
    });
    eprintln!(
        "e2e poison: 5 MiB and 3 MiB records dead-lettered and the next request CREATED in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // Then the dead-letter topic's limit shrinks under the bridge's feet (200 KB): a 600 KB
    // record fits what the bridge believes, and the broker refuses it. Alone in its
    // transaction it is refused again, so it is dead-lettered without its value.
    alter_topic_config(
        &stack.bootstrap,
        &stack.topics.dead_letter,
        "max.message.bytes",
        "200000",
    )
    .await
    .unwrap();
    let c = random_bytes(600_000);
    let records = vec![
        ("poison-c".to_owned(), Some(c.clone()), Some(0)),
        ("ok-last".to_owned(), valid("ok-last"), Some(0)),
    ];
    produce(&big_producer(&stack.bootstrap), &launch, records, 10)
        .await
        .unwrap();
    status.until(
        Duration::from_secs(60),
        "the last valid request CREATED",
        |r| final_status_count(r, "CREATED") >= 3,
    );
    dlq.until(Duration::from_secs(30), "three dead letters", |r| {
        r.len() >= 3
    });

    // The partition's committed offset passes every record (6 of them).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let committed = committed_offsets(&stack.bootstrap, &stack.topics.group, &launch).unwrap();
        if committed.get(&0) == Some(&6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the launch partition's committed offset is stuck at {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = stack.metrics().await;
    assert_eq!(
        metric(&metrics, "captain_bridge_launch_records_skipped_total"),
        Some(0.0),
        "every poison record left a dead letter: none was skipped"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"captain_bridge_launch_requests_total{outcome="rejected"}"#
        ),
        Some(3.0),
        "each poison record rejected once, whatever the retries"
    );

    // SIGTERM is quick: nothing is being retried.
    let drain_timeout = stack.bridge.settings().shutdown.drain_timeout;
    let stopping = Instant::now();
    let exit = stack.bridge.terminate(Duration::from_secs(60)).unwrap();
    let stopped_in = stopping.elapsed();
    assert!(exit.success(), "clean exit: {exit}");
    assert!(
        stopped_in < drain_timeout,
        "SIGTERM took {stopped_in:?}, the whole drain timeout ({drain_timeout:?}) or more"
    );
    // A restart does not route the poison records again: a request produced after them on the
    // same partition is routed, and nothing new reaches the dead-letter or status topics.
    stack.bridge.restart().await.unwrap();
    produce(
        &big_producer(&stack.bootstrap),
        &launch,
        vec![("ok-restart".to_owned(), valid("ok-restart"), Some(0))],
        1,
    )
    .await
    .unwrap();
    status.until(
        Duration::from_secs(60),
        "the request after the restart",
        |r| final_status_count(r, "CREATED") >= 4,
    );
    status.poll_for(Duration::from_millis(500));
    dlq.poll_for(Duration::from_millis(500));

    assert_eq!(dlq.records.len(), 3, "one dead letter per poison record");
    for (key, original) in [("poison-a", &a), ("poison-b", &b), ("poison-c", &c)] {
        let rec = dlq
            .records
            .iter()
            .find(|r| r.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert_eq!(rec.headers["captain.error.class"], "not_json", "{key}");
        assert_eq!(rec.headers["captain.truncated"], "true", "{key}");
        assert_eq!(
            rec.headers["captain.original.size"],
            original.len().to_string(),
            "{key}"
        );
        let kept = rec.value.as_deref().unwrap_or_default();
        assert!(
            original.starts_with(kept),
            "{key}: the value kept is the start of the original"
        );
        if key == "poison-c" {
            assert!(
                kept.is_empty(),
                "poison-c: refused even cut, so kept without its value"
            );
        } else {
            assert!(
                (500_000..1_048_588).contains(&kept.len()),
                "{key}: cut to fit 1 MiB, {} bytes kept",
                kept.len()
            );
        }
        eprintln!(
            "e2e poison: {key} ({} bytes) dead-lettered with {} bytes kept",
            original.len(),
            kept.len()
        );
    }
    let rejected: Vec<Value> = status
        .records
        .iter()
        .map(Read::json)
        .filter(|v| v["status"] == "REJECTED")
        .collect();
    assert_eq!(
        rejected.len(),
        3,
        "exactly one REJECTED per poison record: {rejected:#?}"
    );
    assert_eq!(
        dead_letters_of(&dlq, "ok-"),
        0,
        "no valid request dead-lettered"
    );
    eprintln!(
        "e2e poison: committed offset 6 of 6, SIGTERM in {:.2} s (drain timeout {drain_timeout:?}), \
         3 REJECTED in all across the restart",
        stopped_in.as_secs_f64()
    );
}
