//! Faults between the bridge and Kafka, injected by a real Toxiproxy in front of a broker of
//! the test's own (which advertises the proxy, so the bridge stays behind it after the first
//! metadata answer): latency, a bandwidth cap, a cut, each added in the middle of a stream of
//! launch requests and callbacks, then a broker restart that keeps its data. The test's own
//! producer and readers use a listener that is never proxied. After each fault a
//! `read_committed` ledger: every request SUCCEEDED with every result (nothing lost), duplicates
//! counted. Under the bandwidth cap, a callback whose append cannot finish within
//! `callbacks.ack_timeout` is answered 503 in time (the deadline of defect 4), and its results
//! are published once when it is delivered again. Its body is incompressible: the bridge
//! appends callbacks lz4-compressed, and a repetitive body would pass the cap in time.

use crate::crash::replay_failed_callbacks;
use crate::probe::*;
use crate::*;
use captain_testkit::kafka::OwnBroker;
use captain_testkit::toxiproxy::{Toxic, Toxiproxy};
use std::time::{Duration, Instant};

const WAVE: usize = 30;
const RESULTS: usize = 2;

/// Produces a wave of requests through the unproxied listener.
async fn wave(tools: &str, topics: &Topics, phase: &str) -> Vec<String> {
    let ids: Vec<String> = (0..WAVE).map(|i| format!("{phase}-{i:02}")).collect();
    let producer = captain_testkit::kafka::producer(tools).unwrap();
    let records = ids.iter().map(|id| {
        let r = search_request(id, 1, RESULTS as u64);
        (id.clone(), Some(serde_json::to_vec(&r).unwrap()), None)
    });
    captain_testkit::kafka::produce(&producer, &topics.launch_requests, records, 100)
        .await
        .unwrap();
    ids
}

/// Waits until `n` requests of `ids` have SUCCEEDED (the fault then lands mid-stream).
fn until_succeeded(status: &mut Collector, ids: &[String], n: usize, what: &str) {
    status.until(Duration::from_secs(60), what, |r| {
        r.iter()
            .filter(|r| {
                r.key.as_ref().is_some_and(|k| ids.contains(k)) && r.json()["status"] == "SUCCEEDED"
            })
            .count()
            >= n
    });
}

/// A callback body of `results` items of about `item_bytes` of pseudo-random base64 text each:
/// lz4 finds nothing to shrink in it (4-byte matches are rare among 64⁴ possibilities).
fn incompressible_callback_body(
    run_uid: &str,
    batch_uid: &str,
    results: usize,
    item_bytes: usize,
) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        // xorshift64*: fast, and enough entropy to defeat a dictionary compressor.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let items: Vec<String> = (0..results)
        .map(|i| {
            let text: String = (0..item_bytes.saturating_sub(30))
                .map(|_| ALPHABET[(next() >> 58) as usize] as char)
                .collect();
            format!(r#"{{"n":{i},"name":"{text}"}}"#)
        })
        .collect();
    format!(
        r#"{{"run":{{"run_uid":"{run_uid}","batch_uid":"{batch_uid}","status":"RUNNING"}},"input":{{"linkedin_profile_url":"https://www.linkedin.com/in/x"}},"custom_data":{{"row":"1"}},"error":null,"results_count":{results},"results":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// Each phase's duplicates, read back after it drained.
#[derive(Default)]
struct Phases(Vec<(&'static str, usize, usize)>);

impl Phases {
    /// Reads until every request of `all` SUCCEEDED with its results, records the phase's
    /// duplicate results and repeated statuses, and returns the ledger.
    fn settle(
        &mut self,
        status: &mut Collector,
        results: &mut Collector,
        all: &[String],
        phase: &'static str,
        timeout: Duration,
    ) -> Ledger {
        let ledger = drain(status, results, all, RESULTS, timeout, phase);
        self.0.push((
            phase,
            ledger.duplicate_results(),
            ledger.repeated_statuses(),
        ));
        ledger
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_a_bandwidth_cap_a_cut_and_a_broker_restart_lose_nothing_and_duplicate_nothing() {
    let toxiproxy = Toxiproxy::from_env().unwrap();
    let name = format!("kafka-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Created before the broker: the broker must advertise the proxy's port.
    let mut proxy = toxiproxy
        .create_proxy(&name, "127.0.0.1:0", "127.0.0.1:9")
        .await
        .unwrap();
    let port = proxy.listen().rsplit(':').next().unwrap().to_owned();
    let mut broker = OwnBroker::start_with(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        "faults",
        &[
            ("KAFKA_ADVERTISED_HOST", "127.0.0.1"),
            ("KAFKA_ADVERTISED_PORT", &port),
        ],
    )
    .unwrap();
    proxy
        .set_upstream(&broker.vars["KAFKA_LISTENER"])
        .await
        .unwrap();
    let tools = broker.vars["KAFKA_INTERNAL_BOOTSTRAP"].clone();

    let sim_toml = fast_sim_config("")
        .replace("max_attempts = 5", "max_attempts = 20")
        .replace("backoff_ms = 100", "backoff_ms = 250")
        .replace("page_interval_ms = 2", "page_interval_ms = 50");
    let topics = Topics::unique("e2e", "faults-kafka");
    let sim = SimProcess::start(&work_dir(), &sim_toml).unwrap();
    let settings = bridge_settings(&broker.bootstrap, &topics, &sim, |_| {});
    topics.create(&settings).await.unwrap();
    let bridge = BridgeProcess::start(&work_dir(), &settings, &[])
        .await
        .unwrap();
    let ack_timeout = settings.callbacks.ack_timeout;
    let mut status = Collector::new(&tools, &topics.run_status);
    let mut results = Collector::new(&tools, &topics.run_results);
    let mut all: Vec<String> = Vec::new();
    let mut phases = Phases::default();
    let started = Instant::now();

    // 1. Latency: 300 ms each way on every connection, mid-stream.
    let ids = wave(&tools, &topics, "latency").await;
    until_succeeded(&mut status, &ids, 3, "the latency wave under way");
    let slow = Toxic::latency(Duration::from_millis(300)).jitter(Duration::from_millis(50));
    proxy.add_toxic(&slow).await.unwrap();
    proxy.add_toxic(&slow.clone().upstream()).await.unwrap();
    all.extend(ids);
    let ledger = phases.settle(
        &mut status,
        &mut results,
        &all,
        "latency",
        Duration::from_secs(90),
    );
    proxy.remove_toxic("latency_downstream").await.unwrap();
    proxy.remove_toxic("latency_upstream").await.unwrap();
    eprintln!("e2e faults kafka: latency 300 ms: {}", ledger.summary());

    // 2. Bandwidth: 64 KB/s each way, mid-stream; a 2 MiB callback cannot be durable within
    // the ack timeout and is answered 503 in time.
    let ids = wave(&tools, &topics, "bandwidth").await;
    until_succeeded(&mut status, &ids, 3, "the bandwidth wave under way");
    let narrow = Toxic::bandwidth(64);
    proxy.add_toxic(&narrow).await.unwrap();
    proxy.add_toxic(&narrow.clone().upstream()).await.unwrap();
    // A batch of one of the wave's runs (results of a page may follow the final status).
    let (request_id, run_uid) = status
        .records
        .iter()
        .map(Read::json)
        .find(|v| v["status"] == "CREATED" && ids.iter().any(|id| v["request_id"] == id.as_str()))
        .map(|v| {
            (
                v["request_id"].as_str().unwrap().to_owned(),
                v["run_uid"].as_str().unwrap().to_owned(),
            )
        })
        .expect("a run of the wave CREATED");
    let big = incompressible_callback_body(&run_uid, "b-slow", 2_600, 800);
    let http = reqwest::Client::new();
    let url = bridge.callback_url(&token(&request_id));
    let sent = Instant::now();
    let (code, text) = post(&http, &url, big.clone()).await;
    let answered_in = sent.elapsed();
    assert_eq!(code, 503, "a publish slower than the ack timeout: {text}");
    assert!(
        answered_in < ack_timeout + Duration::from_secs(2),
        "answered 503 after {answered_in:?}, past the {ack_timeout:?} deadline"
    );
    proxy.remove_toxic("bandwidth_downstream").await.unwrap();
    proxy.remove_toxic("bandwidth_upstream").await.unwrap();
    let redelivered = Instant::now();
    loop {
        let (code, text) = post(&http, &url, big.clone()).await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 503, "{text}");
        assert!(redelivered.elapsed() < Duration::from_secs(30), "still 503");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all.extend(ids);
    let ledger = phases.settle(
        &mut status,
        &mut results,
        &all,
        "bandwidth",
        Duration::from_secs(90),
    );
    let big_copies: usize = ledger
        .results
        .iter()
        .filter(|(id, _)| id.contains(":b-slow:"))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "e2e faults kafka: bandwidth 64 KB/s: 2,600-result callback answered 503 in {:.2} s \
         (ack timeout {ack_timeout:?}), then 200; its results read {big_copies} times; {}",
        answered_in.as_secs_f64(),
        ledger.summary()
    );
    assert_eq!(
        big_copies, 2_600,
        "the 503'd callback published once, whole"
    );

    // 3. A cut: no data either way for 5 s, connections held open, mid-stream.
    let ids = wave(&tools, &topics, "cut").await;
    until_succeeded(&mut status, &ids, 3, "the cut wave under way");
    proxy.add_toxic(&Toxic::cut()).await.unwrap();
    proxy.add_toxic(&Toxic::cut().upstream()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.remove_toxic("timeout_downstream").await.unwrap();
    proxy.remove_toxic("timeout_upstream").await.unwrap();
    all.extend(ids);
    let replayed_cut = replay_failed_callbacks(&sim).await;
    let ledger = phases.settle(
        &mut status,
        &mut results,
        &all,
        "cut",
        Duration::from_secs(120),
    );
    eprintln!(
        "e2e faults kafka: 5 s cut: {replayed_cut} failed callbacks replayed; {}",
        ledger.summary()
    );

    // 4. The broker restarts (SIGTERM, same data), mid-stream.
    let ids = wave(&tools, &topics, "restart").await;
    until_succeeded(&mut status, &ids, 3, "the restart wave under way");
    let restarting = Instant::now();
    broker.restart().unwrap();
    let restarted_in = restarting.elapsed();
    all.extend(ids);
    // The readers lost their broker too: read everything again from the start.
    status = Collector::new(&tools, &topics.run_status);
    results = Collector::new(&tools, &topics.run_results);
    let replayed_restart = replay_failed_callbacks(&sim).await;
    let ledger = phases.settle(
        &mut status,
        &mut results,
        &all,
        "restart",
        Duration::from_secs(120),
    );
    eprintln!(
        "e2e faults kafka: broker restarted in {:.1} s: {replayed_restart} failed callbacks \
         replayed; {}; all phases in {:.1} s",
        restarted_in.as_secs_f64(),
        ledger.summary(),
        started.elapsed().as_secs_f64()
    );

    let ready = reqwest::get(format!("http://{}/readyz", bridge.ops_addr))
        .await
        .unwrap();
    assert!(ready.status().is_success(), "ready after every fault");
    for (phase, duplicates, repeated) in phases.0 {
        assert_eq!(duplicates, 0, "{phase}: result records read twice");
        assert_eq!(repeated, 0, "{phase}: statuses read twice");
    }
    assert_eq!(ledger.resubmitted(1), 0, "no request submitted twice");
    drop(bridge);
    drop(sim);
    let _ = proxy.delete().await;
    drop(broker);
}
