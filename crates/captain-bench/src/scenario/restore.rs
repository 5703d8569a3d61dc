//! Scenario 6: state restore on assignment. N run states (one submitted async run each, as the
//! launch path writes them) wait in a fresh runs topic; a bridge starts in its own group, is
//! assigned every partition and restores them before it processes anything. Measured: the
//! restore time the owner reports (`state_restore_duration_seconds`, summed over partitions,
//! restored in parallel), the time from the process's start until every state is loaded, and
//! the memory the states hold (RSS after the restore minus an idle bridge's).

use super::{Ctx, PARTITIONS};
use crate::kafka;
use crate::procs::{self, Bridge};
use crate::sample;
use crate::summary::{RunFigures, ScenarioResult};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub async fn run(ctx: &mut Ctx, states: usize) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for _ in 0..ctx.timing.repeats {
        runs.push(one_repeat(ctx, states).await?);
    }
    let params = BTreeMap::from([
        ("states".to_owned(), Value::from(states)),
        ("partitions".to_owned(), Value::from(PARTITIONS)),
    ]);
    let name = format!("restore/states={states}");
    ctx.summary
        .add(ScenarioResult::from_runs(&name, params, &runs))
}

async fn one_repeat(ctx: &Ctx, states: usize) -> anyhow::Result<RunFigures> {
    // An idle bridge first (empty topics): the baseline of the memory figure.
    let (_, idle_settings) = ctx
        .fresh_topics("restore-idle", "http://127.0.0.1:9/v4")
        .await?;
    let idle = Bridge::start(&ctx.work, &idle_settings, &[]).await?;
    wait_for(
        &idle,
        "captain_bridge_state_restore_duration_seconds_count",
        1.0,
    )
    .await?;
    let idle_rss = sample::rss_mib(&procs::pids(std::slice::from_ref(&idle))).0;
    drop(idle);

    let (topics, settings) = ctx.fresh_topics("restore", "http://127.0.0.1:9/v4").await?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let ids: Vec<(String, String)> = (0..states)
        .map(|i| {
            (
                format!("restore-{}-{i}", &tag[..8]),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    let producer = kafka::producer(&ctx.bootstrap)?;
    kafka::seed_states(&producer, &topics.runs, PARTITIONS, &ids, false).await?;

    let started = Instant::now();
    let bridge = Bridge::start(&ctx.work, &settings, &[]).await?;
    wait_for(
        &bridge,
        "captain_bridge_states_restored_total",
        states as f64,
    )
    .await?;
    let loaded_in = started.elapsed();
    let restore_sum =
        procs::metric(&bridge, "captain_bridge_state_restore_duration_seconds_sum").await?;
    let restore_count = procs::metric(
        &bridge,
        "captain_bridge_state_restore_duration_seconds_count",
    )
    .await?;
    let (rss, hwm) = sample::rss_mib(&procs::pids(std::slice::from_ref(&bridge)));
    let mut f = RunFigures::default();
    f.put("start_to_restored_s", "s", loaded_in.as_secs_f64());
    f.put(
        "restore_mean_per_partition_s",
        "s",
        restore_sum / restore_count.max(1.0),
    );
    f.put(
        "states_per_s",
        "1/s",
        states as f64 / loaded_in.as_secs_f64().max(1e-3),
    );
    f.put("bridge_rss_mib", "MiB", rss);
    f.put("bridge_peak_rss_mib", "MiB", hwm);
    f.put(
        "state_bytes_per_run",
        "B",
        (rss - idle_rss).max(0.0) * 1024.0 * 1024.0 / states.max(1) as f64,
    );
    kafka::seed_states(&producer, &topics.runs, PARTITIONS, &ids, true).await?;
    Ok(f)
}

/// Waits until the sum of `metric` on `bridge` reaches `at_least` (10 minutes at most).
async fn wait_for(bridge: &Bridge, metric: &str, at_least: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if procs::metric(bridge, metric).await.unwrap_or(0.0) >= at_least {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{metric} did not reach {at_least} in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
