//! captain-bench: measures the bridge (release build, real processes) against this machine's
//! ceilings on the broker in `KAFKA_BOOTSTRAP_SERVERS`, and writes a table and
//! `summary.json`. `scripts/bench.sh` builds everything, starts a broker and runs this.
//!
//! Modules: [`scenario`] (one per measured path), [`load`] (the callback load generator),
//! [`procs`] (sim and bridge processes), [`kafka`] (the bench's own clients), [`sample`]
//! (CPU/RSS from /proc), [`stats`] and [`summary`] (the arithmetic and the output).

mod kafka;
mod load;
mod procs;
mod sample;
mod scenario;
mod stats;
mod summary;
mod visible;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use scenario::{backlog, ceiling, intake, launch, rate, restore, Ctx, Timing};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use summary::{RunFigures, ScenarioResult, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// 1: callback intake → Kafka, at each concurrency and rate, 10 and 1 results per callback.
    Intake,
    /// 2: the broker's ceiling for the same records (kafka ProducerPerformance).
    Ceiling,
    /// 3: launch requests → submissions → SUCCEEDED.
    Launch,
    /// 4: intake (10 results, one concurrency) and the launch backlog with 1, 2, 4 instances.
    Scaling,
    /// 5: RSS with a large backlog and a slow API.
    Backlog,
    /// Issue 4: submit rate against a rate-limited API, right and wrong configured rates.
    Rate,
    /// 6: run-state restore on assignment (time, memory per state).
    Restore,
    /// Everything above, in that order.
    All,
}

/// Measures captain-bridge against this machine's ceilings (see README, Performance).
#[derive(Debug, Parser)]
#[command(name = "captain-bench")]
struct Cli {
    /// Scenarios to run.
    #[arg(value_enum, required = true)]
    scenarios: Vec<Which>,
    /// Smoke run: 2 s warm-up, 5 s windows, 1 repeat, small backlog, two rate limits.
    #[arg(long)]
    quick: bool,
    /// Warm-up before each measured window (s). Default 5 (quick: 2).
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured window (s). Default 20 (quick: 5).
    #[arg(long)]
    duration: Option<f64>,
    /// Repeats of each scenario variant. Default 3 (quick: 1).
    #[arg(long)]
    repeats: Option<usize>,
    /// Where summary.json and the processes' logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Keep the entries of an existing summary.json that this run does not measure again.
    #[arg(long)]
    append: bool,
    /// Intake: closed-loop concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 64])]
    concurrency: Vec<usize>,
    /// Intake: open-loop rates (callbacks/s), for latency at a fixed load.
    #[arg(long, value_delimiter = ',', default_values_t = [1000.0f64])]
    intake_rates: Vec<f64>,
    /// Intake: results per callback.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 1])]
    results: Vec<usize>,
    /// Intake: bytes of each result item (JSON).
    #[arg(long, default_value_t = 1024)]
    result_bytes: usize,
    /// Intake: output formats to measure, one after the other in this run (`json`, `avro`:
    /// both output topics in Avro through the registry in `SCHEMA_REGISTRY_URL`).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("json")])]
    formats: Vec<String>,
    /// Intake: requests whose runs share one repeat's callbacks.
    #[arg(long, default_value_t = 2000)]
    pool: usize,
    /// Scaling: instance counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    instances: Vec<usize>,
    /// Scaling: the intake concurrency used.
    #[arg(long, default_value_t = 64)]
    scaling_concurrency: usize,
    /// Scaling: measure intake only (no launch backlog), for quick A/B runs.
    #[arg(long)]
    scaling_intake_only: bool,
    /// Launch: the paced variant's rate (requests/s).
    #[arg(long, default_value_t = 200.0)]
    launch_rate: f64,
    /// The bridges' `launch.max_in_flight`.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Backlog: requests waiting. Default 1,000,000 (quick: 100,000).
    #[arg(long)]
    backlog_requests: Option<usize>,
    /// Backlog: latency added to every API answer (ms).
    #[arg(long, default_value_t = 1000)]
    api_latency_ms: u64,
    /// Rate: API limits L (requests/s). Default 10,50,200 (quick: 10,50).
    #[arg(long, value_delimiter = ',')]
    rate_limits: Option<Vec<f64>>,
    /// Restore: run states waiting in the runs topic. Default 100,000 (quick: 20,000).
    #[arg(long)]
    restore_states: Option<usize>,
    /// Rate: bridge rate as multiples of L.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0f64, 2.0])]
    rate_factors: Vec<f64>,
    /// Extra librdkafka property for every bridge client, KEY=VALUE (repeatable; experiments).
    #[arg(long = "bridge-prop", value_parser = parse_prop)]
    bridge_props: Vec<(String, String)>,
    /// Rate: the bridge's burst, in seconds of its configured rate.
    #[arg(long, default_value_t = 0.5)]
    rate_bridge_burst_secs: f64,
}

fn parse_prop(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl Cli {
    fn timing(&self) -> Timing {
        let (w, d, r) = if self.quick {
            (2.0, 5.0, 1)
        } else {
            (5.0, 20.0, 3)
        };
        Timing {
            warmup: Duration::from_secs_f64(self.warmup.unwrap_or(w)),
            duration: Duration::from_secs_f64(self.duration.unwrap_or(d)),
            repeats: self.repeats.unwrap_or(r).max(1),
        }
    }

    fn runs(&self, which: Which) -> bool {
        self.scenarios.contains(&which) || self.scenarios.contains(&Which::All)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").context(
        "KAFKA_BOOTSTRAP_SERVERS is not set: run scripts/bench.sh, which starts a broker",
    )?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut ctx = Ctx {
        bootstrap,
        work: cli.out.join("work"),
        timing: cli.timing(),
        broker_pid: std::env::var("BENCH_BROKER_PID").ok(),
        http,
        summary: Summary::open(&cli.out, cli.append)?,
        bridge_properties: cli.bridge_props.clone(),
        max_in_flight: cli.max_in_flight,
    };
    std::fs::create_dir_all(&ctx.work)?;
    println!("captain-bench: {:?}, broker {}", ctx.timing, ctx.bootstrap);
    run_all(&cli, &mut ctx).await?;
    ctx.summary.print_table();
    Ok(())
}

async fn run_all(cli: &Cli, ctx: &mut Ctx) -> anyhow::Result<()> {
    let intake_opts =
        |label, instances, concurrency: Vec<usize>, rates: Vec<f64>, variants| intake::IntakeOpts {
            label,
            concurrency,
            rates,
            variants,
            instances,
            pool: cli.pool,
            result_bytes: cli.result_bytes,
            avro_registry: None,
        };
    if cli.runs(Which::Intake) {
        for format in &cli.formats {
            let (label, avro_registry) = match format.as_str() {
                "json" => ("intake", None),
                "avro" => (
                    "intake/avro",
                    Some(std::env::var("SCHEMA_REGISTRY_URL").context(
                        "--formats avro needs a schema registry: SCHEMA_REGISTRY_URL is not set \
                     (scripts/bench.sh starts one when an argument mentions avro)",
                    )?),
                ),
                other => anyhow::bail!("--formats: {other:?} is neither json nor avro"),
            };
            let o = intake::IntakeOpts {
                avro_registry,
                ..intake_opts(
                    label,
                    1,
                    cli.concurrency.clone(),
                    cli.intake_rates.clone(),
                    cli.results.clone(),
                )
            };
            intake::run(ctx, &o).await?;
        }
    }
    if cli.runs(Which::Ceiling) {
        ceiling::run(ctx, cli.result_bytes).await?;
        ratio_to_ceiling(ctx)?;
    }
    if cli.runs(Which::Launch) {
        launch::run(ctx, "launch", 1, Some(cli.launch_rate)).await?;
    }
    if cli.runs(Which::Scaling) {
        for &n in &cli.instances {
            let o = intake_opts(
                "scaling/intake",
                n,
                vec![cli.scaling_concurrency],
                Vec::new(),
                vec![10],
            );
            intake::run(ctx, &o).await?;
            if !cli.scaling_intake_only {
                // Throughput only: the paced variant's latency is scenario 3's question.
                launch::run(ctx, "scaling/launch", n, None).await?;
            }
        }
    }
    if cli.runs(Which::Backlog) {
        let requests = cli
            .backlog_requests
            .unwrap_or(if cli.quick { 100_000 } else { 1_000_000 });
        let o = backlog::BacklogOpts {
            requests,
            api_latency_ms: cli.api_latency_ms,
        };
        backlog::run(ctx, &o).await?;
    }
    if cli.runs(Which::Rate) {
        let default = if cli.quick {
            vec![10.0, 50.0]
        } else {
            vec![10.0, 50.0, 200.0]
        };
        let o = rate::RateOpts {
            limits: cli.rate_limits.clone().unwrap_or(default),
            factors: cli.rate_factors.clone(),
            bridge_burst_secs: cli.rate_bridge_burst_secs,
        };
        rate::run(ctx, &o).await?;
    }
    if cli.runs(Which::Restore) {
        let states = cli
            .restore_states
            .unwrap_or(if cli.quick { 20_000 } else { 100_000 });
        restore::run(ctx, states).await?;
    }
    Ok(())
}

/// Scenario 1's records/s over the ceiling's, per intake variant of this run (same broker,
/// same session: the ratio is the figure that survives the machine's noise).
fn ratio_to_ceiling(ctx: &mut Ctx) -> anyhow::Result<()> {
    let results = ctx.summary.results();
    let Some(ceiling) = results
        .iter()
        .find(|r| r.scenario == ceiling::NAME)
        .and_then(|r| r.figures.get("records_per_s"))
        .map(|f| f.median)
    else {
        return Ok(());
    };
    let mut runs: Vec<RunFigures> = Vec::new();
    for r in results.iter().filter(|r| r.scenario.starts_with("intake/")) {
        let Some(f) = r.figures.get("records_per_s") else {
            continue;
        };
        for (i, v) in f.runs.iter().enumerate() {
            if runs.len() <= i {
                runs.push(RunFigures::default());
            }
            runs[i].put(&r.scenario, "ratio", v / ceiling.max(1e-9));
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    let params = BTreeMap::from([(
        "ceiling_records_per_s".to_owned(),
        serde_json::Value::from(ceiling),
    )]);
    ctx.summary.add(ScenarioResult::from_runs(
        "ratio/intake-to-ceiling",
        params,
        &runs,
    ))
}
