//! A downstream consumer that is not ours: records the bridge's encoder wrote to a real Kafka
//! topic are read by Confluent's Python client and its AvroDeserializer.

use crate::support::*;
use crate::{run_result, status_event};
use captain_bridge::metrics::Metrics;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn confluents_own_deserializer_reads_what_the_encoder_wrote() {
    let url = registry_url();
    let bootstrap = bootstrap();
    let metrics = Metrics::new().unwrap();
    let topics = topics("downstream");
    let encoder = avro_encoder(&settings(&url), &topics, &metrics);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();

    let results: Vec<_> = (0..5).map(|i| run_result("r-down", i)).collect();
    for result in &results {
        let value = encoder.encode_result(result).await.unwrap();
        producer
            .send(
                FutureRecord::to(&topics.run_results)
                    .key(&result.request_id)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let event = status_event("r-down");
    let value = encoder.encode_status(&event).await.unwrap();
    producer
        .send(
            FutureRecord::to(&topics.run_status)
                .key(&event.request_id)
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let read = consume(&bootstrap, &url, &topics.run_results, results.len());
    for (line, result) in read.iter().zip(&results) {
        assert_eq!(line["key"], "r-down");
        // JSON objects travel as JSON text: parsed back, the record is the JSON form.
        let mut value = line["value"].clone();
        for field in ["input", "custom_data", "result"] {
            if let Some(text) = value[field].as_str() {
                value[field] = serde_json::from_str(text).unwrap();
            }
        }
        assert_eq!(value, serde_json::to_value(result).unwrap());
    }
    let read = consume(&bootstrap, &url, &topics.run_status, 1);
    assert_eq!(read[0]["value"], serde_json::to_value(&event).unwrap());
}

/// Runs scripts/avro-consumer.sh (which sets up its virtualenv the first time) and returns
/// the records it printed.
fn consume(bootstrap: &str, registry: &str, topic: &str, count: usize) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/avro-consumer.sh");
    let output = std::process::Command::new(script)
        .args(["consume", "--bootstrap", bootstrap, "--registry", registry])
        .args([
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--timeout",
            "60",
        ])
        .output()
        .expect("scripts/avro-consumer.sh runs");
    assert!(
        output.status.success(),
        "the Python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert_eq!(lines.len(), count);
    lines
}
