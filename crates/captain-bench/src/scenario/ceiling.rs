//! Scenario 2: the broker's own ceiling for the bridge's result records. Kafka's
//! `ProducerPerformance` (the jars `scripts/kafka.sh` fetched) sends records with the same
//! bytes as the bridge's result records (payload file), with the bridge's producer settings
//! (acks=all, idempotence, lz4, linger.ms=5), to a topic with the same partitions.

use super::{Ctx, PARTITIONS};
use crate::kafka;
use crate::load::result_item;
use crate::summary::{RunFigures, ScenarioResult};
use anyhow::{bail, Context};
use captain_bridge::domain::RunResult;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the ceiling's summary entry; the intake ratio looks it up.
pub const NAME: &str = "ceiling/producer-perf";

fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka.sh")
}

/// A result record exactly as the bridge would publish it for the bench's callbacks.
fn bridge_record(i: usize, result_bytes: usize) -> anyhow::Result<Vec<u8>> {
    let r = RunResult {
        result_id: RunResult::result_id(
            &uuid::Uuid::new_v4().to_string(),
            &uuid::Uuid::new_v4().to_string(),
            (i % 10) as u32,
        ),
        request_id: format!("bench-0123abcd-0-{i}"),
        run_uid: uuid::Uuid::new_v4().to_string(),
        batch_uid: uuid::Uuid::new_v4().to_string(),
        index: (i % 10) as u32,
        action: "linkedin-search-people".into(),
        input: Some(
            serde_json::json!({"linkedin_people_search_url": "https://www.linkedin.com/search/results/people/?keywords=bench"}),
        ),
        custom_data: Some(serde_json::json!({"row": i.to_string()})),
        result: result_item(i % 10, result_bytes),
        received_at: chrono::Utc::now(),
        metadata: BTreeMap::from([("ticket".to_owned(), format!("bench-0123abcd-0-{i}"))]),
    };
    Ok(serde_json::to_vec(&r)?)
}

/// Writes a payload file of bridge-shaped records (one per line) and returns its mean size.
fn payload_file(dir: &Path, result_bytes: usize) -> anyhow::Result<(PathBuf, usize)> {
    let path = dir.join("ceiling-payloads.jsonl");
    let mut text = Vec::new();
    let mut total = 0;
    let n = 1000;
    for i in 0..n {
        let r = bridge_record(i, result_bytes)?;
        total += r.len();
        text.extend_from_slice(&r);
        text.push(b'\n');
    }
    std::fs::write(&path, text)?;
    Ok((path, total / n))
}

/// records/s, MB/s, avg, p50, p99, p999 (ms) from ProducerPerformance's final line.
pub fn parse_final_line(out: &str) -> Option<[f64; 6]> {
    let line = out.lines().rev().find(|l| l.contains("records sent"))?;
    let num_before = |marker: &str| -> Option<f64> {
        let head = &line[..line.find(marker)?];
        head.rsplit([' ', '(', ','])
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    Some([
        num_before(" records/sec")?,
        num_before(" MB/sec")?,
        num_before(" ms avg latency")?,
        num_before(" ms 50th")?,
        num_before(" ms 99th")?,
        num_before(" ms 99.9th")?,
    ])
}

fn producer_perf(
    bootstrap: &str,
    topic: &str,
    payloads: &Path,
    records: u64,
) -> anyhow::Result<[f64; 6]> {
    let out = Command::new(kafka_script())
        .args([
            "tool",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
        ])
        .args(["--num-records", &records.to_string(), "--throughput", "-1"])
        .arg("--payload-file")
        .arg(payloads)
        .args([
            "--producer-props",
            &format!("bootstrap.servers={bootstrap}"),
        ])
        .args([
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "compression.type=lz4",
        ])
        .output()
        .context("run ProducerPerformance")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ProducerPerformance failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_final_line(&stdout)
        .with_context(|| format!("unexpected ProducerPerformance output: {stdout}"))
}

pub async fn run(ctx: &mut Ctx, result_bytes: usize) -> anyhow::Result<()> {
    let topic = format!(
        "bench.ceiling.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    kafka::create_topic(&ctx.bootstrap, &topic, PARTITIONS).await?;
    let (payloads, mean_bytes) = payload_file(&ctx.work, result_bytes)?;
    // Warm-up run, also sizing the measured runs to last `duration`.
    let warm = producer_perf(&ctx.bootstrap, &topic, &payloads, 100_000)?;
    let records = (warm[0] * ctx.timing.duration.as_secs_f64()).max(50_000.0) as u64;
    let mut runs = Vec::new();
    for _ in 0..ctx.timing.repeats {
        let r = producer_perf(&ctx.bootstrap, &topic, &payloads, records)?;
        let mut f = RunFigures::default();
        f.put("records_per_s", "1/s", r[0]);
        f.put("mb_per_s", "MB/s", r[1]);
        f.put("latency_avg_ms", "ms", r[2]);
        f.put("latency_p50_ms", "ms", r[3]);
        f.put("latency_p99_ms", "ms", r[4]);
        f.put("latency_p999_ms", "ms", r[5]);
        f.put("record_bytes", "B", mean_bytes as f64);
        runs.push(f);
    }
    let params = BTreeMap::from([
        ("records_per_run".to_owned(), Value::from(records)),
        ("record_bytes".to_owned(), Value::from(mean_bytes)),
        ("acks".to_owned(), Value::from("all")),
    ]);
    ctx.summary
        .add(ScenarioResult::from_runs(NAME, params, &runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_line_of_producer_performance_parses() {
        let out = "12 records sent, 2.4 records/sec\n500000 records sent, 123456.7 records/sec (120.57 MB/sec), 12.34 ms avg latency, 456.00 ms max latency, 10 ms 50th, 30 ms 95th, 40 ms 99th, 50 ms 99.9th.\n";
        assert_eq!(
            parse_final_line(out),
            Some([123456.7, 120.57, 12.34, 10.0, 40.0, 50.0])
        );
    }
}
