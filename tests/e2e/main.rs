//! End-to-end tests: the real `captain-bridge` binary against a real Kafka broker (started by
//! scripts/test.sh) and a real `captain-sim` process. Each test has its own topics and group.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abandoned;
mod avro;
mod backlog;
mod callbacks_http;
mod codecs;
mod cooldown;
mod crash;
mod dead_letter;
mod faults_api;
mod faults_kafka;
mod flow;
mod huge_callback;
mod large_request;
mod ledger;
mod live;
mod outage;
mod ownership;
mod poison;
mod probe;
mod rate_limit;
mod reconcile;
mod repeated_crash;
mod scaling;
mod secured;
mod slow_callbacks;
mod v3;

pub use captain_bridge::config::Settings;
pub use captain_testkit::kafka::{Collector, Read};
pub use captain_testkit::{metrics, BridgeProcess, SimProcess, Topics};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// A simulator whose runs all succeed quickly: `max_results` results per input, in pages of 2.
pub fn fast_sim_config(extra: &str) -> String {
    format!(
        r#"
seed = 7
time_scale = 1.0
[timings]
queued_after_ms = 10
start_after_ms = 10
page_interval_ms = 2
[outcomes]
succeeded = 1.0
partial_succeeded = 0.0
failed = 0.0
blocked = 0.0
stopped = 0.0
input_failure_rate = 0.0
[results.page_size]
"linkedin-search-people" = 2
[delivery]
concurrency = 32
timeout_ms = 5000
max_attempts = 5
backoff_ms = 100
{extra}
"#
    )
}

/// Where the processes' configs and logs go.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join("captain-e2e")
}

/// The broker under test.
pub fn bootstrap() -> String {
    captain_testkit::kafka::bootstrap()
}

/// One test's world: its topics, a simulator, a bridge, on the shared broker.
pub struct Stack {
    pub topics: Topics,
    pub sim: SimProcess,
    pub bridge: BridgeProcess,
    pub bootstrap: String,
}

impl Stack {
    /// Topics named for `test`, a captain-sim with `sim_toml`, and a bridge whose settings
    /// `configure` may change (typed: the harness writes them as the bridge's own Settings).
    pub async fn start(test: &str, sim_toml: &str, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::start_on(bootstrap(), test, sim_toml, configure).await
    }

    /// As [`Stack::start`], on the broker at `bootstrap` (a test's own broker).
    pub async fn start_on(
        bootstrap: String,
        test: &str,
        sim_toml: &str,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let topics = Topics::unique("e2e", test);
        let sim = SimProcess::start(&work_dir(), sim_toml).expect("captain-sim");
        let settings = bridge_settings(&bootstrap, &topics, &sim, configure);
        topics.create(&settings).await.expect("topics");
        let bridge = BridgeProcess::start(&work_dir(), &settings, &[])
            .await
            .expect("captain-bridge");
        Self {
            topics,
            sim,
            bridge,
            bootstrap,
        }
    }

    /// Another instance of this stack's bridge (same topics and group).
    pub async fn another_bridge(&self, configure: impl FnOnce(&mut Settings)) -> BridgeProcess {
        let settings = bridge_settings(&self.bootstrap, &self.topics, &self.sim, configure);
        BridgeProcess::start(&work_dir(), &settings, &[])
            .await
            .expect("another captain-bridge")
    }

    pub async fn produce(&self, requests: &[Value]) {
        let producer = captain_testkit::kafka::producer(&self.bootstrap).expect("producer");
        let records = requests.iter().map(|r| {
            (
                r["request_id"].as_str().unwrap_or("no-id").to_owned(),
                Some(serde_json::to_vec(r).unwrap()),
                None,
            )
        });
        captain_testkit::kafka::produce(&producer, &self.topics.launch_requests, records, 10_000)
            .await
            .expect("launch requests produced");
    }

    pub async fn metrics(&self) -> String {
        self.bridge.metrics().await.expect("bridge metrics")
    }

    pub async fn sim_stats(&self) -> Value {
        self.sim.stats().await.expect("sim stats")
    }
}

/// The harness's bridge settings for this test's topics and simulator, then `configure`.
pub fn bridge_settings(
    bootstrap: &str,
    topics: &Topics,
    sim: &SimProcess,
    configure: impl FnOnce(&mut Settings),
) -> Settings {
    let mut settings = captain_testkit::bridge_settings(bootstrap, &sim.api_base());
    topics.apply(&mut settings);
    // Stable across the process's restarts, unique per bridge: a bridge restarted after
    // `kill -9` fences its predecessor's open transaction at start-up, as in production with
    // the pod name.
    settings.kafka.instance_id = Some(format!("e2e-{}", uuid::Uuid::new_v4().simple()));
    configure(&mut settings);
    settings
}

/// The value of a gauge or counter in a Prometheus text scrape; `name` includes any labels
/// exactly as scraped (e.g. `x{key="default"}`).
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    captain_testkit::metrics::value(metrics, name)
}

/// Launch requests a bridge has finished with, whatever the outcome.
pub fn launches_consumed(metrics: &str) -> u64 {
    captain_testkit::metrics::sum(metrics, "captain_bridge_launch_requests_total{") as u64
}

/// An async search request: `inputs` searches, `max_results` results each.
pub fn search_request(id: &str, inputs: usize, max_results: u64) -> Value {
    json!({
        "request_id": id,
        "action": "linkedin-search-people",
        "inputs": (0..inputs).map(|i| json!({
            "linkedin_people_search_url": format!("https://www.linkedin.com/search/results/people/?keywords={id}-{i}"),
            "custom_data": {"row": i.to_string()}
        })).collect::<Vec<_>>(),
        "parameters": {"max_results": max_results},
        "metadata": {"ticket": id}
    })
}

/// Status events grouped by request_id, in topic order.
pub fn statuses_by_request(records: &[Read]) -> BTreeMap<String, Vec<Value>> {
    let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut sorted: Vec<&Read> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let v = r.json();
        by.entry(v["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    by
}

pub fn final_status_count(records: &[Read], status: &str) -> usize {
    records
        .iter()
        .filter(|r| r.json()["status"] == status)
        .count()
}

/// Per run: statuses only move forward, each event's previous_status is the one before it,
/// and nothing is published twice.
pub fn assert_transitions_in_order(events: &[Value]) {
    let rank = |s: &str| match s {
        "CREATED" | "SCHEDULED" => 0,
        "QUEUED" => 1,
        "RUNNING" | "BLOCKED" | "STOPPED" => 2,
        _ => 3,
    };
    let mut last: HashMap<String, String> = HashMap::new();
    for e in events {
        let run = e["run_uid"].as_str().unwrap_or("-").to_owned();
        let status = e["status"].as_str().unwrap().to_owned();
        let previous = e["previous_status"].as_str().map(str::to_owned);
        let before = last.get(&run).cloned();
        assert_eq!(
            previous, before,
            "previous_status chain broken in {events:#?}"
        );
        if let Some(before) = &before {
            let resumed = matches!(before.as_str(), "BLOCKED" | "STOPPED")
                && matches!(status.as_str(), "QUEUED" | "RUNNING");
            assert!(
                (rank(&status) >= rank(before) && status != *before) || resumed,
                "backward or duplicate transition {before} -> {status} in {events:#?}"
            );
        }
        last.insert(run, status);
    }
}

/// Result ids, and how many times each was seen.
pub fn result_id_counts(records: &[Read]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts
            .entry(r.json()["result_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

pub fn request_ids(records: &[Read]) -> HashSet<String> {
    records
        .iter()
        .map(|r| r.json()["request_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the consumer group has `n` members with an assignment (a stable group).
pub fn await_group_members(bootstrap: &str, group: &str, n: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = probe
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .unwrap();
        let ready = list.groups().iter().any(|g| {
            g.state() == "Stable"
                && g.members().len() == n
                && g.members()
                    .iter()
                    .all(|m| m.assignment().is_some_and(|a| !a.is_empty()))
        });
        if ready {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {group} never had {n} members"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
