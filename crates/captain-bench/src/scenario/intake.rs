//! Scenario 1 (and its scaling runs): callback intake → Kafka. Run states for a pool of
//! requests are written to the runs topic first, as the launch path would have, so every
//! callback takes the production path: the endpoint verifies the token and appends the
//! callback, the partition's owner turns it into result records, a status and the new run
//! state in a transaction. Measured: the 2xx rate and ack latency, what a `read_committed`
//! consumer can read per second and how long after the callback (JSON results only).

use super::{CpuProbe, Ctx, PARTITIONS};
use crate::kafka;
use crate::load::{CallbackLoad, Pace};
use crate::procs::{self, Bridge, Topics};
use crate::summary::{RunFigures, ScenarioResult};
use crate::visible::Visibility;
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
    /// Writes the run states of every pool, then starts the bridges: their owners restore the
    /// states when assigned, as after a deployment (an owner reads the runs topic only then).
    async fn start(
        ctx: &Ctx,
        instances: usize,
        avro: Option<&str>,
        pools: &[Pool],
    ) -> anyhow::Result<Self> {
        // No API call happens on this path: the API address is never dialled.
        let (topics, mut settings) = ctx.fresh_topics("intake", "http://127.0.0.1:9/v4").await?;
        if let Some(url) = avro {
            settings.schema_registry.url = url.to_owned();
            settings.kafka.formats.run_status = captain_bridge::avro::Format::Avro;
            settings.kafka.formats.run_results = captain_bridge::avro::Format::Avro;
        }
        let producer = kafka::producer(&ctx.bootstrap)?;
        for pool in pools {
            kafka::seed_states(&producer, &topics.runs, PARTITIONS, pool, false).await?;
        }
        let bridges = procs::start_bridges(&ctx.work, &settings, instances).await?;
        // Every state restored before the first callback.
        let states = pools.iter().map(Vec::len).sum::<usize>() as f64;
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let mut restored = 0.0;
            for b in &bridges {
                restored += procs::metric(b, "captain_bridge_states_restored_total").await?;
            }
            if restored >= states {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{restored} of {states} run states restored in 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            bridges,
            topics,
            keys: TokenKeys::from_config(procs::CALLBACK_KEYS, procs::SIGNING_KID)
                .context("bench callback keys")?,
            producer,
        })
    }
}

/// One repeat's requests: (request id, run uid), each with a submitted async run.
type Pool = Vec<(String, String)>;

fn pool(size: usize) -> Pool {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    (0..size)
        .map(|i| {
            (
                format!("bench-{}-{i}", &tag[..8]),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect()
}

/// Runs every variant × pace on one set of `instances` bridges.
pub async fn run(ctx: &mut Ctx, o: &IntakeOpts) -> anyhow::Result<()> {
    let mut paces: Vec<Pace> = o
        .concurrency
        .iter()
        .map(|c| Pace::Concurrency(*c))
        .collect();
    paces.extend(o.rates.iter().map(|r| Pace::Rate {
        per_sec: *r,
        max_outstanding: 1024,
    }));
    let repeats = o.variants.len() * paces.len() * ctx.timing.repeats;
    let mut pools: Vec<Pool> = (0..repeats).map(|_| pool(o.pool)).collect();
    let rig = Rig::start(ctx, o.instances, o.avro_registry.as_deref(), &pools).await?;
    for &results in &o.variants {
        for &pace in &paces {
            let mut runs = Vec::new();
            for _ in 0..ctx.timing.repeats {
                let pool = pools.pop().unwrap_or_default();
                runs.push(one_repeat(ctx, &rig, o, results, pace, &pool).await?);
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
    pool: &[(String, String)],
) -> anyhow::Result<RunFigures> {
    let bases = rig.bridges.iter().map(Bridge::callback_base).collect();
    let load = Arc::new(CallbackLoad::new(
        &rig.keys,
        pool,
        bases,
        results,
        o.result_bytes,
    ));
    let in_topic_before = kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)?;
    let warm = load
        .run(&ctx.http, pace, Duration::ZERO, ctx.timing.warmup)
        .await;
    let published_before = kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)?;
    let window_start = std::time::Instant::now();
    let reader = match o.avro_registry {
        None => Some(Visibility::start(
            &ctx.bootstrap,
            &rig.topics.run_results,
            PARTITIONS,
            window_start,
            window_start + ctx.timing.duration,
        )?),
        Some(_) => None,
    };
    let probe = CpuProbe::start(ctx, &procs::pids(&rig.bridges), &[]);
    let mut m = load
        .run(&ctx.http, pace, Duration::ZERO, ctx.timing.duration)
        .await;
    let mut f = RunFigures::default();
    probe.finish(&mut f);
    if let Some(reader) = reader {
        let mut seen = reader.finish()?;
        let secs = ctx.timing.duration.as_secs_f64().max(1e-3);
        f.put("results_committed_per_s", "1/s", seen.records as f64 / secs);
        f.put("visible_p50_ms", "ms", seen.visible.quantile_ms(0.50));
        f.put("visible_p99_ms", "ms", seen.visible.quantile_ms(0.99));
    }
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
    // once the owners have caught up: how long that takes after the load stops (the backlog
    // left behind the HTTP answers). Caught up = every callback consumed and its offset
    // committed (no lag on the callbacks topic), so the next variant starts from nothing.
    let acked = (warm.ok + m.ok) as f64 * results as f64;
    let drain_started = std::time::Instant::now();
    let lag_metric = format!(
        "captain_bridge_consumer_lag_records{{topic=\"{}\"}}",
        rig.topics.callbacks
    );
    let mut in_topic;
    loop {
        in_topic =
            (kafka::records_in(&ctx.bootstrap, &rig.topics.run_results)? - in_topic_before) as f64;
        let mut lag = 0.0;
        for b in &rig.bridges {
            lag += procs::metric(b, &lag_metric).await.unwrap_or(1.0);
        }
        if (in_topic >= acked && lag == 0.0) || drain_started.elapsed() > Duration::from_secs(300) {
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
    // Tombstones, so the runs topic compacts; the owners keep the states until restarted.
    kafka::seed_states(&rig.producer, &rig.topics.runs, PARTITIONS, pool, true).await?;
    Ok(f)
}
