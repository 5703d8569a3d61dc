//! What Avro costs on the callback path: the time to encode one result record with a ~1 KiB
//! result, JSON vs Avro (Confluent wire format, schema id cached), the way the partition owner
//! does (`RecordEncoder::result_ref_now` on a `RunResultRef` borrowing the callback body's
//! raw JSON), and the size of each value. Prints a table; asserts nothing.
//!
//! ```sh
//! scripts/registry.sh start        # prints SCHEMA_REGISTRY_URL=...
//! SCHEMA_REGISTRY_URL=... cargo run --release --example avro_cost [-- RECORDS REPEATS]
//! ```
//! The registry is asked once per topic (the schema id is then cached), so the figures are the
//! steady-state cost per record. Run on an idle machine: other load inflates them.
#![allow(clippy::expect_used)]

use captain_bridge::avro::{
    Format, OutputFormats, OutputTopics, RecordEncoder, RegistrySecrets, SchemaRegistryClient,
    SchemaRegistrySettings,
};
use captain_bridge::domain::{RunResult, RunResultRef};
use captain_bridge::metrics::Metrics;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

fn sample() -> RunResult {
    let positions: Vec<_> = (0..4)
        .map(|i| {
            json!({
                "company_name": format!("Company number {i} Holdings"),
                "title": "Senior Staff Engineer, Platform",
                "start_date": "2019-04-01", "end_date": null,
                "location": "Paris, Île-de-France, France",
            })
        })
        .collect();
    let result = json!({
        "full_name": "Ada Lovelace", "first_name": "Ada", "last_name": "Lovelace",
        "headline": "Analyst of engines, author of the first published algorithm",
        "linkedin_profile_url": "https://www.linkedin.com/in/ada-lovelace-0000000",
        "location": "London, England, United Kingdom", "connections": 500,
        "skills": ["mathematics", "analysis", "algorithms", "poetry of science"],
        "positions": positions,
    });
    RunResult {
        result_id: RunResult::result_id("run-0001", "batch-0001", 17),
        request_id: "req-2026-11-29-0001".into(),
        run_uid: "run-0001".into(),
        batch_uid: "batch-0001".into(),
        index: 17,
        action: "linkedin-extract-people".into(),
        input: Some(json!({"linkedin_profile_url": "https://www.linkedin.com/in/ada-lovelace"})),
        custom_data: Some(json!({"crm_id": "0012345"})),
        result,
        received_at: chrono::Utc::now(),
        metadata: BTreeMap::from([
            ("team".into(), "growth".into()),
            ("crm".into(), "hubspot".into()),
        ]),
    }
}

fn measure(
    encoder: &RecordEncoder,
    result: &RunResultRef<'_>,
    records: usize,
    repeats: usize,
) -> (f64, usize) {
    let mut size = 0;
    for _ in 0..records / 10 {
        size = encoder.result_ref_now(result).expect("encoded").len();
    }
    let mut runs = vec![0.0; repeats];
    for run in &mut runs {
        let started = Instant::now();
        for _ in 0..records {
            let bytes = encoder.result_ref_now(result).expect("encoded");
            std::hint::black_box(bytes);
        }
        *run = started.elapsed().as_nanos() as f64 / records as f64;
    }
    runs.sort_by(f64::total_cmp);
    (runs[runs.len() / 2], size)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| {
        eprintln!("set SCHEMA_REGISTRY_URL (scripts/registry.sh start prints it)");
        std::process::exit(2);
    });
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5).max(1);

    let metrics = Metrics::new().expect("metrics");
    let settings = SchemaRegistrySettings {
        url,
        ..SchemaRegistrySettings::default()
    };
    let registry = Arc::new(
        SchemaRegistryClient::new(&settings, &RegistrySecrets::default(), metrics.clone())
            .expect("registry client"),
    );
    let topics = OutputTopics {
        run_status: "bench.avro-cost.status".into(),
        run_results: "bench.avro-cost.results".into(),
    };
    let encoder = |format| {
        let formats = OutputFormats {
            run_status: Format::Json,
            run_results: format,
        };
        RecordEncoder::new(
            &formats,
            &topics,
            &settings,
            Some(registry.clone()),
            metrics.clone(),
        )
        .expect("encoder")
    };
    let json_encoder = encoder(Format::Json);
    let avro_encoder = encoder(Format::Avro);
    avro_encoder.warm_up().await.expect("schema registered");

    let result = sample();
    // The callback body's parts as the owner holds them: raw JSON text, borrowed.
    let raw = |v: &serde_json::Value| {
        serde_json::value::RawValue::from_string(v.to_string()).expect("raw JSON")
    };
    let (input, custom_data, body) = (
        result.input.as_ref().map(raw),
        result.custom_data.as_ref().map(raw),
        raw(&result.result),
    );
    let borrowed = RunResultRef {
        result_id: result.result_id.clone(),
        request_id: &result.request_id,
        run_uid: &result.run_uid,
        batch_uid: &result.batch_uid,
        index: result.index,
        action: &result.action,
        input: input.as_deref(),
        custom_data: custom_data.as_deref(),
        result: &body,
        received_at: result.received_at,
        metadata: &result.metadata,
    };
    let result_json = body.get().len();
    println!(
        "RunResult with a {result_json}-byte result, {records} records x {repeats} runs (median)"
    );
    println!("{:<6} {:>12} {:>14}", "format", "ns/record", "bytes/record");
    let (json_ns, json_size) = measure(&json_encoder, &borrowed, records, repeats);
    println!("{:<6} {:>12.0} {:>14}", "json", json_ns, json_size);
    let (avro_ns, avro_size) = measure(&avro_encoder, &borrowed, records, repeats);
    println!("{:<6} {:>12.0} {:>14}", "avro", avro_ns, avro_size);
    println!(
        "avro/json: {:.2}x time, {:.2}x size",
        avro_ns / json_ns,
        avro_size as f64 / json_size as f64
    );
}
