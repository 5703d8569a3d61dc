//! Defect 3: a secured cluster. The bridge runs against the test broker's SASL_SSL listener
//! (SCRAM-SHA-512, the broker's certificate verified against the test CA, host name checked)
//! with only that listener as its bootstrap: topics created, a launch request routed, submitted,
//! its callbacks appended and its results and final status published, all over TLS + SCRAM.
//! The test's own producer and readers use the broker's PLAINTEXT listener.

use crate::*;
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the broker with KAFKA_SASL_SSL=1 scripts/kafka.sh start and \
             export every KEY=VALUE line it prints (scripts/test.sh does)"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_runs_end_to_end_over_sasl_ssl_with_scram_and_a_private_ca() {
    let secured = env("KAFKA_SASL_SSL_BOOTSTRAP");
    let topics = Topics::unique("e2e", "secured");
    let sim = SimProcess::start(&work_dir(), &fast_sim_config("")).unwrap();
    let settings = bridge_settings(&secured, &topics, &sim, |s| {
        let p = &mut s.kafka.properties;
        p.insert("security.protocol".into(), "SASL_SSL".into());
        p.insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        p.insert("sasl.username".into(), env("KAFKA_SCRAM_USER"));
        p.insert("sasl.password".into(), env("KAFKA_SCRAM_PASSWORD"));
        p.insert("ssl.ca.location".into(), env("KAFKA_CA_PEM"));
    });
    // Created over SASL_SSL too (the topic specs use kafka.properties).
    topics
        .create(&settings)
        .await
        .expect("topics over SASL_SSL");
    let started = Instant::now();
    let bridge = BridgeProcess::start(&work_dir(), &settings, &[])
        .await
        .expect("the bridge starts against the SASL_SSL listener");
    let ready_in = started.elapsed();

    let plain = bootstrap();
    let producer = captain_testkit::kafka::producer(&plain).unwrap();
    let request = search_request("secured-1", 2, 3);
    captain_testkit::kafka::produce(
        &producer,
        &topics.launch_requests,
        [(
            "secured-1".to_owned(),
            Some(serde_json::to_vec(&request).unwrap()),
            None,
        )],
        1,
    )
    .await
    .unwrap();
    let mut status = Collector::new(&plain, &topics.run_status);
    status.until(Duration::from_secs(60), "SUCCEEDED", |r| {
        final_status_count(r, "SUCCEEDED") >= 1
    });
    let mut results = Collector::new(&plain, &topics.run_results);
    results.until(Duration::from_secs(30), "six results", |r| r.len() >= 6);
    let events = &statuses_by_request(&status.records)["secured-1"];
    assert_transitions_in_order(events);
    assert_eq!(events[0]["status"], "CREATED");
    assert_eq!(result_id_counts(&results.records).len(), 6);

    // Everything went through the secured listener: the bridge was given no other address, and
    // its log shows no authentication or TLS failure.
    let log = std::fs::read_to_string(bridge.log_path()).unwrap_or_default();
    for bad in [
        "Authentication failed",
        "SSL handshake failed",
        "certificate verify failed",
    ] {
        assert!(
            !log.contains(bad),
            "{bad} in {}",
            bridge.log_path().display()
        );
    }
    eprintln!(
        "e2e secured: bridge ready in {:.2} s over SASL_SSL (SCRAM-SHA-512, test CA); CREATED to \
         SUCCEEDED with 6 results in {:.2} s",
        ready_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
