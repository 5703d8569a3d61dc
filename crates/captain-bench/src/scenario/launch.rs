//! Scenario 3 (and its scaling runs): the launch path. Launch requests go on the topic (as a
//! backlog, or paced at a rate), captain-sim (unlimited, no simulated delays) runs them and
//! calls back; the figures come from the status topic: submissions/s from the CREATED events,
//! end-to-end latency from each request's produce time (carried in its metadata) to the Kafka
//! timestamp of its SUCCEEDED event.

use super::{CpuProbe, Ctx};
use crate::kafka;
use crate::procs::{self, Sim};
use crate::stats::Latencies;
use crate::summary::{RunFigures, ScenarioResult};
use anyhow::bail;
use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How requests are offered.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    /// All at once, as fast as the producer goes: throughput.
    Backlog,
    /// At a fixed rate for the scenario's duration: latency below saturation.
    Paced(f64),
}

/// captain-sim with no delays, no limits, one page of `results` per input.
pub fn fast_sim_toml(extra: &str) -> String {
    format!(
        r#"seed = 7
[limits]
max_runs = 2000000
[timings]
queued_after_ms = 0
start_after_ms = 0
page_interval_ms = 0
[outcomes]
succeeded = 1.0
[results.page_size]
"linkedin-search-people" = 10
[delivery]
concurrency = 128
timeout_ms = 10000
max_attempts = 5
backoff_ms = 200
{extra}
"#
    )
}

/// A launch request of one input and `results` results, stamped with its produce time.
pub fn request(id: &str, results: u64) -> Vec<u8> {
    let t0 = chrono::Utc::now().timestamp_micros();
    serde_json::to_vec(&json!({
        "request_id": id,
        "action": "linkedin-search-people",
        "inputs": [{"linkedin_people_search_url": format!("https://www.linkedin.com/search/results/people/?keywords={id}"),
                    "custom_data": {"row": id}}],
        "parameters": {"max_results": results},
        "metadata": {"t0_us": t0.to_string()}
    }))
    .unwrap_or_default()
}

/// What the status topic told about one batch of requests.
#[derive(Debug, Default)]
pub struct Story {
    pub created: usize,
    pub succeeded: usize,
    /// Kafka timestamp (ms) of the last CREATED, of the last SUCCEEDED.
    pub last_created_ms: i64,
    pub last_succeeded_ms: i64,
    /// CREATED timestamps, for rate over a window.
    pub created_ms: Vec<i64>,
    pub e2e: Latencies,
}

/// Reads status events until `n` requests SUCCEEDED (or `timeout`).
pub async fn read_story(
    reader: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Story> {
    let mut story = Story::default();
    let mut stream = reader.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: HashMap<String, ()> = HashMap::new();
    while story.succeeded < n {
        let m = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(m)) => m?,
            Ok(None) => bail!("status stream ended"),
            Err(_) => bail!(
                "timed out after {timeout:?}: {} of {n} requests SUCCEEDED ({} CREATED)",
                story.succeeded,
                story.created
            ),
        };
        let ts = m.timestamp().to_millis().unwrap_or(0);
        let Ok(v) = serde_json::from_slice::<Value>(m.payload().unwrap_or_default()) else {
            continue;
        };
        match v["status"].as_str() {
            Some("CREATED") => {
                story.created += 1;
                story.last_created_ms = story.last_created_ms.max(ts);
                story.created_ms.push(ts);
            }
            Some("SUCCEEDED") => {
                let id = v["request_id"].as_str().unwrap_or_default().to_owned();
                if seen.insert(id, ()).is_some() {
                    continue;
                }
                story.succeeded += 1;
                story.last_succeeded_ms = story.last_succeeded_ms.max(ts);
                let t0_us: i64 = v["metadata"]["t0_us"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let micros = (ts * 1000 - t0_us).max(0);
                story.e2e.record(u64::try_from(micros).unwrap_or(0));
            }
            _ => {}
        }
    }
    Ok(story)
}

/// Produces `n` requests (ids `prefix-i`), all at once or paced.
pub async fn feed(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    prefix: &str,
    n: usize,
    how: Feed,
) -> anyhow::Result<()> {
    match how {
        Feed::Backlog => {
            let records = (0..n).map(|i| {
                let id = format!("{prefix}-{i}");
                let v = request(&id, 10);
                (id, Some(v), None)
            });
            kafka::produce(producer, topic, records, 50_000).await?;
        }
        Feed::Paced(rate) => {
            let began = Instant::now();
            let mut sent = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while sent < n {
                tick.tick().await;
                let due = ((began.elapsed().as_secs_f64() * rate) as usize).min(n);
                let records = (sent..due).map(|i| {
                    let id = format!("{prefix}-{i}");
                    let v = request(&id, 10);
                    (id, Some(v), None)
                });
                kafka::produce_nowait(producer, topic, records)?;
                sent = due;
            }
        }
    }
    Ok(())
}

/// One repeat on fresh topics, sim and bridges.
async fn one_repeat(
    ctx: &Ctx,
    instances: usize,
    how: Feed,
    n: usize,
) -> anyhow::Result<(RunFigures, Story)> {
    let sim = Sim::start(&ctx.work, &fast_sim_toml(""))?;
    let (topics, settings) = ctx.fresh_topics("launch", &sim.api_base()).await?;
    let bridges = procs::start_bridges(&ctx.work, &settings, instances).await?;
    let reader = kafka::reader(&ctx.bootstrap, &topics.run_status)?;
    let producer = kafka::producer(&ctx.bootstrap)?;
    let probe = CpuProbe::start(
        ctx,
        &procs::pids(&bridges),
        &[("sim", sim.pid().to_string())],
    );
    let t_start = chrono::Utc::now().timestamp_millis();
    let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (fed, story) = tokio::join!(
        feed(&producer, &topics.launch_requests, &prefix, n, how),
        read_story(&reader, n, Duration::from_secs(600))
    );
    fed?;
    let mut story = story?;
    let mut f = RunFigures::default();
    probe.finish(&mut f);
    let created_secs = ((story.last_created_ms - t_start) as f64 / 1000.0).max(1e-3);
    let done_secs = ((story.last_succeeded_ms - t_start) as f64 / 1000.0).max(1e-3);
    f.put(
        "submissions_per_s",
        "1/s",
        story.created as f64 / created_secs,
    );
    f.put("succeeded_per_s", "1/s", story.succeeded as f64 / done_secs);
    f.put("e2e_p50_ms", "ms", story.e2e.quantile_ms(0.50));
    f.put("e2e_p99_ms", "ms", story.e2e.quantile_ms(0.99));
    f.put("drain_s", "s", done_secs);
    if let Feed::Paced(rate) = how {
        f.put("offered_per_s", "1/s", rate);
    }
    Ok((f, story))
}

/// Runs the backlog variant, and the paced one if `paced_rate` is given, with `instances`
/// bridges.
/// `label` prefixes the scenario names (`launch`, or `scaling/launch`).
pub async fn run(
    ctx: &mut Ctx,
    label: &str,
    instances: usize,
    paced_rate: Option<f64>,
) -> anyhow::Result<()> {
    // A small backlog first: warms the binaries and page cache, and sizes the measured
    // backlog so it lasts about `duration`.
    let (warm, _) = one_repeat(ctx, instances, Feed::Backlog, 2_000).await?;
    let rate = warm.0.get("submissions_per_s").map_or(200.0, |(_, v)| *v);
    let n = ((rate * ctx.timing.duration.as_secs_f64()) as usize).max(2_000);
    let feeds = std::iter::once(Feed::Backlog).chain(paced_rate.map(Feed::Paced));
    for how in feeds {
        let n = match how {
            Feed::Backlog => n,
            Feed::Paced(r) => (r * ctx.timing.duration.as_secs_f64()) as usize,
        };
        let mut runs = Vec::new();
        for _ in 0..ctx.timing.repeats {
            runs.push(one_repeat(ctx, instances, how, n).await?.0);
        }
        let (feed, pace) = match how {
            Feed::Backlog => ("backlog".to_owned(), Value::from("backlog")),
            Feed::Paced(r) => (format!("rate={r}"), Value::from(r)),
        };
        let name = format!("{label}/{feed}/instances={instances}");
        let params = BTreeMap::from([
            ("requests".to_owned(), Value::from(n)),
            ("feed".to_owned(), pace),
            ("instances".to_owned(), Value::from(instances)),
            ("results_per_request".to_owned(), Value::from(10)),
        ]);
        ctx.summary
            .add(ScenarioResult::from_runs(&name, params, &runs))?;
    }
    Ok(())
}
