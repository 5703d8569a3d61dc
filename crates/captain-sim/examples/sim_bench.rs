//! Throughput bench: the simulator in-process, a tiny local axum receiver, N async
//! submissions with C concurrent clients; prints submissions/s, callback deliveries/s,
//! submission latency p50/p99 and peak RSS.
//!
//! `cargo run --release -p captain-sim --example sim_bench -- [N] [C] [INPUTS]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::routing::post;
use axum::Router;
use captain_sim::{SimConfig, Simulator};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("arguments are integers: N C INPUTS")?;
    let submissions = args.first().copied().unwrap_or(20_000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let inputs = args.get(2).copied().unwrap_or(3);
    // BENCH_NO_CALLBACKS=1 measures the submission path alone (callback url null).
    let no_callbacks = std::env::var("BENCH_NO_CALLBACKS").is_ok_and(|v| v == "1");

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = Router::new().route(
        "/cb",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let receiver_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callback_url = format!("http://{}/cb", receiver_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(receiver_listener, receiver).await });

    let mut config = SimConfig::default().with_api_key("bench-key");
    config.runtime.timings.queued_after_ms = 0;
    config.runtime.timings.start_after_ms = 0;
    config.runtime.timings.page_interval_ms = 0;
    config.runtime.delivery.concurrency = 128;
    config.limits.max_runs = 200_000;
    let sim = Simulator::start(config, tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    let url = format!(
        "{}/actions/linkedin-search-people/run/async",
        sim.base_url()
    );
    let body = serde_json::to_vec(&json!({
        "inputs": (0..inputs).map(|i| json!({
            "linkedin_people_search_url": format!("https://www.linkedin.com/search/results/people/?keywords={i}"),
            "custom_data": {"i": i}
        })).collect::<Vec<_>>(),
        "parameters": {"max_results": 10},
        "callback": {"url": if no_callbacks { None } else { Some(&callback_url) }, "headers": {"Authorization": "Bearer bench"}}
    }))?;
    // max_results 10 = one page per input, plus the final callback.
    let expected_callbacks = if no_callbacks {
        0
    } else {
        submissions * (inputs + 1)
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency as usize)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < submissions {
                let t = Instant::now();
                let response = client
                    .post(&url)
                    .header("X-API-Key", "bench-key")
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    _ => errors += 1,
                }
                latencies.push(t.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let submit_elapsed = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < expected_callbacks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_elapsed = start.elapsed();
    let delivered = received.load(Ordering::Relaxed);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("submissions:        {submissions} ({inputs} inputs each, concurrency {concurrency}, errors {errors})");
    println!(
        "submissions/s:      {:.0}",
        submissions as f64 / submit_elapsed.as_secs_f64()
    );
    println!(
        "submit latency:     p50 {:?}  p99 {:?}",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "callbacks:          {delivered}/{expected_callbacks} in {:.2}s",
        all_elapsed.as_secs_f64()
    );
    println!(
        "callback deliveries/s (whole run): {:.0}",
        delivered as f64 / all_elapsed.as_secs_f64()
    );
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "VmHWM: unknown".into());
    println!(
        "peak RSS:           {}",
        hwm.trim_start_matches("VmHWM:").trim()
    );
    sim.shutdown().await;
    Ok(())
}
