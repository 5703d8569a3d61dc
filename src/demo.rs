//! `captain-bridge demo`: the whole loop in one process with no external service, so that an
//! installed binary or the container image can show what the bridge does. An embedded Kafka
//! (librdkafka's mock cluster), captain-sim in process and the bridge itself; a few launch
//! requests go in, and every status, result and dead-letter record is printed as it arrives.
//! For trying the bridge only: the mock cluster proves nothing about delivery guarantees (see
//! docs/quickstart.md). Behind the `demo` cargo feature (on by default), which brings in
//! captain-sim.

use crate::app::Application;
use crate::config::{Settings, ENV_API_KEY, ENV_CALLBACK_KEYS};
use crate::domain::RunStatus;
use crate::kafka::EmbeddedKafka;
use crate::publish::{H_ERROR_CLASS, H_ERROR_REASON};
use anyhow::{bail, Context};
use base64::Engine;
use captain_sim::{SimConfig, SimHandle, Simulator};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a finished demo saw on the output topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoSummary {
    /// Records read from the status topic.
    pub status_records: usize,
    /// Records read from the results topic.
    pub result_records: usize,
    /// Records read from the dead-letter topic.
    pub dead_letter_records: usize,
    /// From start to the last record.
    pub elapsed: Duration,
}

const API_KEY: &str = "demo-key";
const PARTITIONS: i32 = 3;
/// Everything (four runs, a dozen callbacks) normally settles in a few seconds.
const DEADLINE: Duration = Duration::from_secs(60);

/// What each sample request must end with for the demo to pass.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Final,
    Rejected,
}

/// Runs the demo to its end, writing what happens to `out`: an embedded Kafka, captain-sim
/// in process and the bridge, four sample requests in, every output record printed as it
/// arrives. Fails when a request does not reach its expected end within a minute.
pub async fn run<W: Write>(out: &mut W) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let mut settings = bridge_settings()?;

    let topics = settings.kafka.topics.clone();
    // The mock cluster has no admin API, so the bridge cannot create its topics: they are made
    // here. Its create_topic takes no topic config, so the runs topic is not compacted (nor is
    // anything: the mock keeps at most ~5 MiB / 100,000 messages per partition).
    let kafka = EmbeddedKafka::start(
        1,
        &[
            (topics.launch_requests.as_str(), PARTITIONS),
            (topics.run_status.as_str(), PARTITIONS),
            (topics.run_results.as_str(), PARTITIONS),
            (topics.dead_letter.as_str(), PARTITIONS),
            (topics.control.as_str(), PARTITIONS),
            (topics.runs.as_str(), PARTITIONS),
            (topics.callbacks.as_str(), PARTITIONS),
            (topics.requests.as_str(), PARTITIONS),
        ],
    )
    .context("starting the embedded Kafka (librdkafka mock cluster)")?;
    let bootstrap = kafka.bootstrap_servers();
    writeln!(out, "embedded Kafka (librdkafka mock cluster): {bootstrap}")?;
    writeln!(out, "  other clients can connect while this runs, e.g. kcat -b {bootstrap} -C -t {} -o beginning", topics.run_status)?;

    let sim = start_sim().await?;
    writeln!(out, "captain-sim (in process): {}", sim.base_url())?;

    settings.kafka.bootstrap_servers = bootstrap.clone();
    settings.captain.base_url = sim.base_url();
    settings.validate().context("demo settings")?;
    let app = Application::build(settings)
        .await
        .context("building the bridge")?;
    writeln!(
        out,
        "captain-bridge (in process): callbacks on {}, /metrics on {}",
        app.callback_addr()?
            .map_or_else(|| "nothing".to_owned(), |a| a.to_string()),
        app.ops_addr()?
    )?;
    let stop = CancellationToken::new();
    let mut bridge = tokio::spawn(app.run_until_stopped(stop.clone()));

    // Assigned before anything is produced, from the beginning: nothing can be missed.
    let watcher = output_consumer(
        &bootstrap,
        &[&topics.run_status, &topics.run_results, &topics.dead_letter],
    )?;
    let requests = sample_requests();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .create()
        .context("creating the sample producer")?;
    writeln!(out, "\nlaunch requests → {}:", topics.launch_requests)?;
    for (id, request, _) in &requests {
        let payload = serde_json::to_vec(request)?;
        producer
            .send(
                FutureRecord::to(&topics.launch_requests)
                    .key(id.as_str())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing launch request {id}"))?;
        writeln!(out, "  {id:<10} {}", request_summary(request))?;
    }
    writeln!(out, "\nrecords as they arrive:")?;

    let mut pending: BTreeMap<String, Expect> = requests
        .iter()
        .map(|(id, _, expect)| (id.clone(), *expect))
        .collect();
    let mut dead_letters_missing = requests
        .iter()
        .filter(|(_, _, e)| *e == Expect::Rejected)
        .count();
    let mut summary = DemoSummary::default();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Results of the last page can land just after the final status (another topic): once
    // everything is final, keep reading briefly.
    let mut settle_until: Option<tokio::time::Instant> = None;
    loop {
        let until = settle_until.unwrap_or(deadline);
        let message = tokio::select! {
            m = watcher.recv() => m.context("reading the output topics")?,
            () = tokio::time::sleep_until(until) => {
                if settle_until.is_some() {
                    break;
                }
                if bridge.is_finished() {
                    break;
                }
                bail!(
                    "timed out after {DEADLINE:?}; still waiting for {:?} and {dead_letters_missing} dead-letter record(s)",
                    pending.keys().collect::<Vec<_>>()
                );
            }
            r = &mut bridge => {
                return Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the bridge stopped on its own"),
                    Ok(Err(e)) => e.context("the bridge failed"),
                    Err(e) => anyhow::Error::from(e).context("the bridge task failed"),
                });
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let topic = message.topic();
        if topic == topics.run_status {
            summary.status_records += 1;
            let v = json_of(&message);
            writeln!(
                out,
                "+{elapsed:5.2}s  {topic:<20} {key:<10} {}",
                status_line(&v)
            )?;
            let status = serde_json::from_value::<RunStatus>(v["status"].clone()).ok();
            let done = match (pending.get(&key), status) {
                (Some(Expect::Final), Some(s)) => s.is_terminal(),
                (Some(Expect::Rejected), Some(s)) => s == RunStatus::Rejected,
                _ => false,
            };
            if done {
                pending.remove(&key);
            }
        } else if topic == topics.run_results {
            summary.result_records += 1;
            writeln!(
                out,
                "+{elapsed:5.2}s  {topic:<20} {key:<10} {}",
                result_line(&json_of(&message))
            )?;
        } else {
            summary.dead_letter_records += 1;
            dead_letters_missing = dead_letters_missing.saturating_sub(1);
            writeln!(
                out,
                "+{elapsed:5.2}s  {topic:<20} {key:<10} {}",
                dead_letter_line(&message)
            )?;
        }
        if settle_until.is_none() && pending.is_empty() && dead_letters_missing == 0 {
            settle_until = Some(tokio::time::Instant::now() + Duration::from_millis(500));
        }
    }

    let loop_time = started.elapsed();
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(30), bridge).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the bridge stopped with an error")),
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("the bridge task failed")),
        Err(_) => bail!("the bridge did not stop within 30 s"),
    }
    sim.shutdown().await;
    drop(watcher);
    drop(producer);
    // Last: dropping the cluster stops the brokers the clients above talked to.
    drop(kafka);

    writeln!(
        out,
        "\nDone in {:.1} s: {} status, {} result and {} dead-letter records; every valid request \
         reached a final status, the invalid one was REJECTED and dead-lettered.",
        loop_time.as_secs_f64(),
        summary.status_records,
        summary.result_records,
        summary.dead_letter_records
    )?;
    writeln!(out, "{}", closing_words())?;
    summary.elapsed = loop_time;
    Ok(summary)
}

/// Defaults and validation from the library, then everything local: the secrets are made up
/// for this process, and every listener is on 127.0.0.1.
fn bridge_settings() -> anyhow::Result<Settings> {
    let secret: Vec<u8> = (0..2)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    let callback_keys = format!(
        "k1:{}",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    // The process's CAPTAIN_BRIDGE_* variables (e.g. topic names) still apply, under the
    // demo's own secrets; the fields set below win over them.
    let env = std::env::vars()
        .filter(|(name, _)| name != ENV_API_KEY && name != ENV_CALLBACK_KEYS)
        .chain([
            (ENV_API_KEY.to_owned(), API_KEY.to_owned()),
            (ENV_CALLBACK_KEYS.to_owned(), callback_keys),
        ]);
    let mut settings = Settings::load_from(None, env).context("loading the default settings")?;
    settings.callbacks.signing_key_id = "k1".into();
    // Bound on port 0; the callback URL handed to the sim is derived from the bound port.
    settings.callbacks.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.callbacks.public_base_url = None;
    settings.ops.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // The mock cluster has no admin API: topics are created with EmbeddedKafka instead.
    settings.kafka.create_topics = false;
    settings.kafka.partitions = PARTITIONS;
    settings.kafka.group_id = "captain-bridge-demo".into();
    settings.shutdown.drain_timeout = Duration::from_secs(5);
    settings.log.format = "text".into();
    settings.log.level = "warn".into();
    Ok(settings)
}

/// A simulator that answers fast and pages results two at a time, so progress is visible.
async fn start_sim() -> anyhow::Result<SimHandle> {
    let mut config = SimConfig::default().with_api_key(API_KEY);
    let runtime = &mut config.runtime;
    runtime.timings.queued_after_ms = 100;
    runtime.timings.start_after_ms = 200;
    runtime.timings.page_interval_ms = 150;
    runtime
        .results
        .page_size
        .insert("linkedin-search-people".into(), 2);
    runtime.outcomes.succeeded = 1.0;
    runtime.outcomes.partial_succeeded = 0.0;
    runtime.outcomes.failed = 0.0;
    runtime.outcomes.blocked = 0.0;
    runtime.outcomes.stopped = 0.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding captain-sim")?;
    Simulator::start(config, listener).context("starting captain-sim")
}

/// `(request_id, request, what it must end with)`: two searches, one profile extraction, and
/// one request with no inputs, which the bridge refuses without calling the API.
fn sample_requests() -> Vec<(String, Value, Expect)> {
    let search = |id: &str, keywords: &str, max: u64| {
        json!({
            "request_id": id,
            "action": "linkedin-search-people",
            "inputs": [{
                "linkedin_people_search_url":
                    format!("https://www.linkedin.com/search/results/people/?keywords={keywords}"),
                "custom_data": {"row": "1"}
            }],
            "parameters": {"max_results": max},
            "metadata": {"source": "demo"}
        })
    };
    vec![
        ("demo-1".into(), search("demo-1", "cto", 4), Expect::Final),
        (
            "demo-2".into(),
            search("demo-2", "founder", 3),
            Expect::Final,
        ),
        (
            "demo-3".into(),
            json!({
                "request_id": "demo-3",
                "action": "linkedin-extract-people",
                "inputs": [
                    {"linkedin_profile_url": "https://www.linkedin.com/in/ada-lovelace", "custom_data": {"row": "1"}},
                    {"linkedin_profile_url": "https://www.linkedin.com/in/alan-turing", "custom_data": {"row": "2"}}
                ],
                "metadata": {"source": "demo"}
            }),
            Expect::Final,
        ),
        (
            "demo-bad".into(),
            json!({
                "request_id": "demo-bad",
                "action": "linkedin-extract-people",
                "inputs": [],
                "metadata": {"source": "demo"}
            }),
            Expect::Rejected,
        ),
    ]
}

fn output_consumer(bootstrap: &str, topics: &[&str]) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "demo-printer")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the output consumer")?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer
        .assign(&assignment)
        .context("assigning the output topics")?;
    Ok(consumer)
}

fn json_of(message: &BorrowedMessage<'_>) -> Value {
    message
        .payload()
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or(Value::Null)
}

fn request_summary(request: &Value) -> String {
    let inputs = request["inputs"].as_array().map_or(0, Vec::len);
    format!(
        "{} with {inputs} input(s){}",
        request["action"].as_str().unwrap_or("?"),
        if inputs == 0 {
            " (invalid on purpose)"
        } else {
            ""
        }
    )
}

fn status_line(v: &Value) -> String {
    let mut line = format!("{:<18}", v["status"].as_str().unwrap_or("?"));
    if let Some(previous) = v["previous_status"].as_str() {
        line.push_str(&format!(" from {previous:<9}"));
    } else {
        line.push_str(&format!(" {:<14}", ""));
    }
    if let Some(run) = v["run_uid"].as_str() {
        line.push_str(&format!(" run {}", short(run)));
    }
    if let Some(source) = v["source"].as_str() {
        line.push_str(&format!(" ({source})"));
    }
    if let Some(message) = v["error"]["message"].as_str() {
        line.push_str(&format!(" error: {}", clip(message, 70)));
    }
    line
}

fn result_line(v: &Value) -> String {
    let fields: Vec<String> = v["result"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, value)| value.is_string() || value.is_number())
                .take(2)
                .map(|(k, value)| match value.as_str() {
                    Some(s) => format!("{k}={:?}", clip(s, 28)),
                    None => format!("{k}={value}"),
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "result #{} of run {} row={} {}",
        v["index"],
        short(v["run_uid"].as_str().unwrap_or("?")),
        v["custom_data"]["row"].as_str().unwrap_or("-"),
        fields.join(" ")
    )
}

fn dead_letter_line(message: &BorrowedMessage<'_>) -> String {
    let header = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "dead letter: {} ({})",
        header(H_ERROR_REASON),
        header(H_ERROR_CLASS)
    )
}

fn short(uid: &str) -> &str {
    uid.get(..8).unwrap_or(uid)
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn closing_words() -> &'static str {
    "
Against a real broker: start one (scripts/kafka.sh start prints KAFKA_BOOTSTRAP_SERVERS), then
  CAPTAIN_BRIDGE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
  CAPTAIN_BRIDGE_API_KEY=<your Captain Data key, or captain-sim's> \\
  CAPTAIN_BRIDGE_CALLBACK_KEYS=k1:<base64 secret, 16 bytes or more> \\
  captain-bridge run --config FILE
(with captain.base_url and callbacks.public_base_url set in FILE; see the README).
The embedded Kafka here is librdkafka's mock cluster: no admin API, stub transactions, no
compaction, at most ~5 MiB / 100,000 messages per partition, gone on exit. It is for this
demo only and proves nothing about the bridge's delivery guarantees; the end-to-end
tests (scripts/test.sh) run against a real Kafka for that."
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_brings_every_valid_request_to_a_final_status_and_dead_letters_the_invalid_one(
    ) {
        let mut out = Vec::new();

        let summary = run(&mut out).await.unwrap();

        let text = String::from_utf8(out).unwrap();
        assert_eq!(summary.dead_letter_records, 1, "{text}");
        // CREATED and a final status for each of the three valid requests, and REJECTED.
        assert!(summary.status_records >= 7, "{text}");
        // demo-1 and demo-2 return 4 and 3 results, demo-3 one per profile.
        assert!(summary.result_records >= 4 + 3 + 2, "{text}");
        assert!(text.contains("demo-bad   REJECTED"), "{text}");
        assert!(text.contains("(empty_inputs)"), "{text}");
        assert!(text.contains("SUCCEEDED"), "{text}");
        assert!(text.contains("Done in "), "{text}");
    }
}
