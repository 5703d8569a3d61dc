//! Scenario 5: memory under backlog. A million launch requests wait on the topic and the API
//! answers slowly (captain-sim with a fixed added latency), so the bridge works at
//! `launch.max_in_flight` with the rest of the backlog in Kafka; its RSS is sampled for the
//! whole window. Each repeat is a fresh consumer group (and run-state topic) on the same backlog.

use super::{CpuProbe, Ctx, PARTITIONS};
use crate::kafka;
use crate::procs::{self, Sim, Topics};
use crate::sample;
use crate::summary::{RunFigures, ScenarioResult};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What to vary.
#[derive(Debug, Clone)]
pub struct BacklogOpts {
    pub requests: usize,
    /// Added latency of every API answer.
    pub api_latency_ms: u64,
}

pub async fn run(ctx: &mut Ctx, o: &BacklogOpts) -> anyhow::Result<()> {
    let launch = Topics::unique("bench", "backlog").launch_requests.clone();
    kafka::create_topic(&ctx.bootstrap, &launch, PARTITIONS).await?;
    let producer = kafka::producer(&ctx.bootstrap)?;
    let t = Instant::now();
    let records = (0..o.requests).map(|i| {
        let id = format!("backlog-{i}");
        let v = super::launch::request(&id, 1);
        (id, Some(v), None)
    });
    kafka::produce(&producer, &launch, records, 100_000).await?;
    println!(
        "backlog: {} requests produced in {:.1} s",
        o.requests,
        t.elapsed().as_secs_f64()
    );
    let sim_toml =
        super::launch::fast_sim_toml(&format!("[faults]\nlatency_ms = {}\n", o.api_latency_ms));
    let sim = Sim::start(&ctx.work, &sim_toml)?;
    let mut runs = Vec::new();
    for _ in 0..ctx.timing.repeats {
        runs.push(one_repeat(ctx, &sim, &launch).await?);
    }
    let params = BTreeMap::from([
        ("requests_waiting".to_owned(), Value::from(o.requests)),
        ("api_latency_ms".to_owned(), Value::from(o.api_latency_ms)),
        ("max_in_flight".to_owned(), Value::from(ctx.max_in_flight)),
    ]);
    let name = format!("backlog/requests={}", o.requests);
    ctx.summary
        .add(ScenarioResult::from_runs(&name, params, &runs))
}

async fn one_repeat(ctx: &Ctx, sim: &Sim, launch: &str) -> anyhow::Result<RunFigures> {
    let mut topics = Topics::unique("bench", "backlog");
    topics.names.launch_requests = launch.to_owned();
    let settings = ctx.bridge_settings(&topics, &sim.api_base());
    topics.create(&settings).await?;
    let bridge = procs::Bridge::start(&ctx.work, &settings, &[]).await?;
    let pids = procs::pids(std::slice::from_ref(&bridge));
    let probe = CpuProbe::start(ctx, &pids, &[]);
    let submitted_before = procs::metric(&bridge, "captain_bridge_launch_requests_total").await?;
    // The first `warmup` lets the consumer fill its buffers; RSS is then sampled each 250 ms.
    tokio::time::sleep(ctx.timing.warmup).await;
    let mut samples = Vec::new();
    let end = Instant::now() + ctx.timing.duration;
    while Instant::now() < end {
        samples.push(sample::rss_mib(&pids).0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let done =
        procs::metric(&bridge, "captain_bridge_launch_requests_total").await? - submitted_before;
    let mut f = RunFigures::default();
    probe.finish(&mut f);
    samples.sort_by(f64::total_cmp);
    f.put(
        "rss_p50_mib",
        "MiB",
        samples.get(samples.len() / 2).copied().unwrap_or(0.0),
    );
    f.put(
        "rss_max_sampled_mib",
        "MiB",
        samples.last().copied().unwrap_or(0.0),
    );
    f.put(
        "launches_done_per_s",
        "1/s",
        done / (ctx.timing.warmup + ctx.timing.duration).as_secs_f64(),
    );
    Ok(f)
}
