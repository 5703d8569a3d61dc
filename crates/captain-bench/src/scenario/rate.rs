//! Issue 4's benchmark: the bridge against captain-sim limiting async submissions to L/s
//! (burst L, i.e. 1 s), with the bridge's limiter configured at L (right) or at a multiple of
//! L (wrong). N = L × duration requests wait on the topic when the bridge starts. The sim's
//! counters are sampled every 250 ms, so the steady state (the second half of the drain) is
//! reported apart from the whole run, which includes the limiter's learning phase.

use super::{CpuProbe, Ctx};
use crate::kafka;
use crate::procs::{self, Sim};
use crate::summary::{RunFigures, ScenarioResult};
use anyhow::bail;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SUBMIT_ROUTE: &str = "POST /v4/actions/{action}/run/async";

/// What to vary.
#[derive(Debug, Clone)]
pub struct RateOpts {
    /// API limits L (requests/s).
    pub limits: Vec<f64>,
    /// Bridge rate = factor × L (1 = right, 2 = wrong by 2×).
    pub factors: Vec<f64>,
    /// Bridge burst in seconds of its configured rate.
    pub bridge_burst_secs: f64,
}

/// One sample of the sim's submission counters.
#[derive(Debug, Clone, Copy)]
struct Tick {
    at: f64,
    accepted: f64,
    throttled: f64,
}

/// Accepted rate and 429 share between two instants of a series (seconds since start).
fn window(series: &[Tick], from: f64, to: f64) -> (f64, f64) {
    let at = |t: f64| {
        series
            .iter()
            .min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
            .copied()
    };
    let (Some(a), Some(b)) = (at(from), at(to)) else {
        return (0.0, 0.0);
    };
    let secs = (b.at - a.at).max(1e-3);
    let accepted = b.accepted - a.accepted;
    let throttled = b.throttled - a.throttled;
    (accepted / secs, throttled / (accepted + throttled).max(1.0))
}

fn counters(stats: &Value) -> (f64, f64) {
    let route = &stats["requests"][SUBMIT_ROUTE];
    let n = |code: &str| route[code].as_f64().unwrap_or(0.0);
    (n("200") + n("201"), n("429"))
}

pub async fn run(ctx: &mut Ctx, o: &RateOpts) -> anyhow::Result<()> {
    for &limit in &o.limits {
        for &factor in &o.factors {
            let mut runs = Vec::new();
            for _ in 0..ctx.timing.repeats {
                runs.push(one_repeat(ctx, o, limit, factor).await?);
            }
            let name = format!("rate/L={limit}/bridge={factor}xL");
            let params = BTreeMap::from([
                ("limit_per_s".to_owned(), Value::from(limit)),
                ("bridge_rate_per_s".to_owned(), Value::from(limit * factor)),
                ("requests".to_owned(), Value::from(requests(ctx, limit))),
                ("sim_burst".to_owned(), Value::from(limit)),
            ]);
            ctx.summary
                .add(ScenarioResult::from_runs(&name, params, &runs))?;
        }
    }
    Ok(())
}

fn requests(ctx: &Ctx, limit: f64) -> usize {
    (limit * ctx.timing.duration.as_secs_f64()).ceil() as usize
}

async fn one_repeat(
    ctx: &Ctx,
    o: &RateOpts,
    limit: f64,
    factor: f64,
) -> anyhow::Result<RunFigures> {
    let n = requests(ctx, limit);
    let sim = Sim::start(
        &ctx.work,
        &super::launch::fast_sim_toml(&format!(
            "[rate_limits]\nretry_after_format = \"seconds\"\n[rate_limits.async]\nrps = {limit}\nburst = {}\n",
            limit.ceil().max(1.0)
        )),
    )?;
    let (topics, mut settings) = ctx.fresh_topics("rate", &sim.api_base()).await?;
    let producer = kafka::producer(&ctx.bootstrap)?;
    let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let records = (0..n).map(|i| {
        let id = format!("{prefix}-{i}");
        let v = super::launch::request(&id, 1);
        (id, Some(v), None)
    });
    kafka::produce(&producer, &topics.launch_requests, records, 10_000).await?;
    let bridge_rate = limit * factor;
    settings.captain.rate_limit.rate_per_sec = bridge_rate;
    settings.captain.rate_limit.ceiling_per_sec = bridge_rate;
    settings.captain.rate_limit.burst = (bridge_rate * o.bridge_burst_secs).ceil().max(1.0) as u32;
    let started = Instant::now();
    let bridge = procs::Bridge::start(&ctx.work, &settings, &[]).await?;
    let probe = CpuProbe::start(ctx, &procs::pids(std::slice::from_ref(&bridge)), &[]);
    let series = sample_until_done(&sim, n, started, limit).await?;
    let mut f = RunFigures::default();
    probe.finish(&mut f);
    figures(&mut f, &series, n, limit);
    Ok(f)
}

/// Samples the sim's counters until `n` submissions were accepted (or far past the ideal).
async fn sample_until_done(
    sim: &Sim,
    n: usize,
    started: Instant,
    limit: f64,
) -> anyhow::Result<Vec<Tick>> {
    let give_up = Duration::from_secs_f64(n as f64 / limit * 4.0 + 60.0);
    let mut series = Vec::new();
    loop {
        let (accepted, throttled) = counters(&sim.stats().await?);
        series.push(Tick {
            at: started.elapsed().as_secs_f64(),
            accepted,
            throttled,
        });
        if accepted >= n as f64 {
            return Ok(series);
        }
        if started.elapsed() > give_up {
            bail!("rate: only {accepted} of {n} submitted after {give_up:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn figures(f: &mut RunFigures, series: &[Tick], n: usize, limit: f64) {
    let first = series
        .iter()
        .find(|t| t.accepted > 0.0)
        .map_or(0.0, |t| t.at);
    let last = series.last().map_or(0.0, |t| t.at);
    let drain = (last - first).max(1e-3);
    // The sim's burst (L) lets the first second's worth through at once.
    let ideal = ((n as f64 - limit) / limit).max(1e-3);
    let (throttled_total, accepted_total) = series
        .last()
        .map_or((0.0, 0.0), |t| (t.throttled, t.accepted));
    let (steady_rate, steady_429) = window(series, first + drain / 2.0, last);
    // Past the burst, like the ideal: both count from the first accepted submission.
    f.put(
        "achieved_over_L",
        "ratio",
        (accepted_total - limit).max(0.0) / drain / limit,
    );
    f.put("steady_achieved_over_L", "ratio", steady_rate / limit);
    f.put(
        "share_429_pct",
        "%",
        100.0 * throttled_total / (throttled_total + accepted_total).max(1.0),
    );
    f.put("steady_share_429_pct", "%", 100.0 * steady_429);
    f.put("drain_s", "s", drain);
    f.put("ideal_drain_s", "s", ideal);
    f.put("ideal_over_drain", "ratio", ideal / drain);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_measures_the_rate_and_the_429_share_between_two_samples() {
        let series: Vec<Tick> = (0..=10)
            .map(|i| Tick {
                at: f64::from(i),
                accepted: 10.0 * f64::from(i),
                throttled: if i > 5 { 1.0 } else { 0.0 },
            })
            .collect();
        let (rate, share) = window(&series, 4.0, 10.0);
        assert!((rate - 10.0).abs() < 1e-9);
        assert!((share - 1.0 / 61.0).abs() < 1e-9);
    }
}
