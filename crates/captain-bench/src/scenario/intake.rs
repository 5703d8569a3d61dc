//! Scenario 1 (and its scaling runs): callback intake → Kafka. Run states for a pool of
//! requests are written to the runs topic first, as the launch path would have, so every
//! callback takes the production path: verify the token, read the run state with its
//! read-your-writes barrier, publish the results and the status, write the run state back.

use super::{CpuProbe, Ctx, PARTITIONS};
use crate::kafka;
use crate::load::{CallbackLoad, Pace};
use crate::procs::{self, Bridge, Topics};
use crate::summary::{RunFigures, ScenarioResult};
use anyhow::Context;
use captain_bridge::token::TokenKeys;
use rdkafka::producer::FutureProducer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What to vary.
#[derive(Debug, Clone)]
pub struct IntakeOpts {
    /// Closed-loop concurrency levels.
    pub concurrency: Vec<usize>,
    /// Open-loop rates (callbacks/s), for latency at a given load.
    pub rates: Vec<f64>,
    /// Results per callback (10 and 1 by default).
    pub variants: Vec<usize>,
    pub instances: usize,
    /// Requests whose runs receive the callbacks of one repeat (fresh per repeat).
    pub pool: usize,
    pub result_bytes: usize,
    /// Scenario name prefix (`intake`, or `scaling/intake` so the two never overwrite each other).
    pub label: &'static str,
    /// Both output topics in Avro through this registry (Confluent-compatible API URL).
    pub avro_registry: Option<String>,
}

fn pace_name(p: Pace) -> String {
    match p {
        Pace::Concurrency(n) => format!("c={n}"),
        Pace::Rate { per_sec, .. } => format!("rate={per_sec}"),
    }
}

/// What every repeat of one `run` shares: the bridges, their topics, the signing keys and the
/// producer that writes (and deletes) the pool's run states.
struct Rig {
    bridges: Vec<Bridge>,
    topics: Topics,
    keys: TokenKeys,
    producer: FutureProducer,
}

impl Rig {
    async fn start(ctx: &Ctx, instances: usize, avro: Option<&str>) -> anyhow::Result<Self> {
        // No API call happens on this path: the API address is never dialled.
        let (topics, mut settings) = ctx.fresh_topics("intake", "http://127.0.0.1:9/v4").await?;
        if let Some(url) = avro {
            settings.schema_registry.url = url.to_owned();
            settings.kafka.formats.run_status = captain_bridge::avro::Format::Avro;
            settings.kafka.formats.run_results = captain_bridge::avro::Format::Avro;
        }
        Ok(Self {
            bridges: procs::start_bridges(&ctx.work, &settings, instances).await?,
            topics,
            keys: TokenKeys::from_config(procs::CALLBACK_KEYS, procs::SIGNING_KID)
                .context("bench callback keys")?,
            producer: kafka::producer(&ctx.bootstrap)?,
        })
    }
}

/// Runs every variant × pace on one set of `instances` bridges.
pub async fn run(ctx: &mut Ctx, o: &IntakeOpts) -> anyhow::Result<()> {
    let rig = Rig::start(ctx, o.instances, o.avro_registry.as_deref()).await?;
    let mut paces: Vec<Pace> = o
        .concurrency
        .iter()
        .map(|c| Pace::Concurrency(*c))
        .collect();
    paces.extend(o.rates.iter().map(|r| Pace::Rate {
        per_sec: *r,
        max_outstanding: 1024,
    }));
    for &results in &o.variants {
        for &pace in &paces {
            let mut runs = Vec::new();
            for rep in 0..ctx.timing.repeats {
                runs.push(one_repeat(ctx, &rig, o, results, pace, rep).await?);
            }
            let name = format!(
                "{}/results={results}/{}/instances={}",
                o.label,
                pace_name(pace),
                o.instances
            );
            let params = BTreeMap::from([
                ("results_per_callback".to_owned(), Value::from(results)),
                ("pace".to_owned(), Value::from(pace_name(pace))),
                ("instances".to_owned(), Value::from(o.instances)),
                ("result_bytes".to_owned(), Value::from(o.result_bytes)),
                (
                    "format".to_owned(),
                    Value::from(if o.avro_registry.is_some() {
                        "avro"
                    } else {
                        "json"
                    }),
                ),
                ("pool".to_owned(), Value::from(o.pool)),
            ]);
            ctx.summary
                .add(ScenarioResult::from_runs(&name, params, &runs))?;
        }
    }
    Ok(())
}

async fn one_repeat(
    ctx: &Ctx,
    rig: &Rig,
    o: &IntakeOpts,
    results: usize,
    pace: Pace,
    rep: usize,
) -> anyhow::Result<RunFigures> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let pool: Vec<(String, String)> = (0..o.pool)
        .map(|i| {
            (
                format!("bench-{}-{rep}-{i}", &tag[..8]),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    kafka::seed_states(&rig.producer, &rig.topics.runs, PARTITIONS, &pool, false).await?;
    let bases = rig.bridges.iter().map(Bridge::callback_base).collect();
    let load = Arc::new(CallbackLoad::new(
        &rig.keys,
        &pool,
        bases,
        results,
        o.result_bytes,
    ));
    let in_topic_before = kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)?;
    let warm = load
        .run(&ctx.http, pace, Duration::ZERO, ctx.timing.warmup)
        .await;
    let published_before = kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)?;
    let probe = CpuProbe::start(ctx, &procs::pids(&rig.bridges), &[]);
    let mut m = load
        .run(&ctx.http, pace, Duration::ZERO, ctx.timing.duration)
        .await;
    let mut f = RunFigures::default();
    probe.finish(&mut f);
    let published_after = kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)?;
    let secs = m.elapsed.as_secs_f64().max(1e-3);
    // What the owners turned into result records meanwhile (they publish after the intake
    // acknowledged, in their transactions), and the bridge's CPU per result record.
    let published_per_s = (published_after - published_before) as f64 / secs;
    f.put("results_published_per_s", "1/s", published_per_s);
    if let Some(cpu) = f.get("bridge_cpu_pct") {
        f.put(
            "bridge_cpu_us_per_result",
            "µs",
            cpu / 100.0 * 1e6 / published_per_s.max(1e-3),
        );
    }
    f.put("callbacks_per_s", "1/s", m.ok as f64 / secs);
    f.put(
        "records_per_s",
        "1/s",
        (m.ok as usize * results) as f64 / secs,
    );
    f.put("ack_p50_ms", "ms", m.latencies.quantile_ms(0.50));
    f.put("ack_p99_ms", "ms", m.latencies.quantile_ms(0.99));
    f.put("ack_p999_ms", "ms", m.latencies.quantile_ms(0.999));
    f.put("not_2xx", "count", m.failed as f64);
    // Every acknowledged record must be in the topic (more only if a 503'd callback landed),
    // once the owners have caught up: how long that takes after the load stops.
    let acked = (warm.ok + m.ok) as f64 * results as f64;
    let drain_started = std::time::Instant::now();
    let mut in_topic;
    loop {
        in_topic =
            (kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)? - in_topic_before) as f64;
        if in_topic >= acked || drain_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.put(
        "publish_drain_s",
        "s",
        drain_started.elapsed().as_secs_f64(),
    );
    f.put(
        "topic_records_per_acked",
        "ratio",
        in_topic / acked.max(1.0),
    );
    if let Pace::Rate { per_sec, .. } = pace {
        f.put("offered_per_s", "1/s", per_sec);
    }
    kafka::seed_states(&rig.producer, &rig.topics.runs, PARTITIONS, &pool, true).await?;
    Ok(f)
}
