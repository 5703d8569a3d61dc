//! Defect 2: producers compress as they like. A zstd batch used to wedge its launch partition
//! ("Decompression (codec 0x4) … Not implemented"); now a zstd, a gzip, a snappy and an lz4
//! record on one partition of the launch topic all go through the bridge, end to end.

use crate::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_a_gzip_a_snappy_and_an_lz4_record_on_one_launch_partition_all_succeed() {
    let stack = Stack::start("codecs", &fast_sim_config(""), |_| {}).await;
    let codecs = ["zstd", "gzip", "snappy", "lz4", "none"];
    let started = Instant::now();
    for codec in codecs {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &stack.bootstrap)
            .set("compression.type", codec)
            .create()
            .unwrap();
        let id = format!("codec-{codec}");
        // Compressible, so that the codec really compresses the batch.
        let mut request = search_request(&id, 1, 2);
        request["metadata"]["padding"] = json!("captain ".repeat(200));
        let payload = serde_json::to_vec(&request).unwrap();
        // One partition, in order: the records after a stuck one would never be routed.
        producer
            .send(
                FutureRecord::to(&stack.topics.launch_requests)
                    .key(&id)
                    .payload(&payload)
                    .partition(0),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(
        Duration::from_secs(60),
        "every codec's request SUCCEEDED",
        |r| final_status_count(r, "SUCCEEDED") >= codecs.len(),
    );
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(Duration::from_secs(30), "two results per request", |r| {
        r.len() >= 2 * codecs.len()
    });
    let succeeded: HashSet<String> = statuses_by_request(&status.records)
        .into_iter()
        .filter(|(_, events)| events.iter().any(|e| e["status"] == "SUCCEEDED"))
        .map(|(id, _)| id)
        .collect();
    for codec in codecs {
        assert!(
            succeeded.contains(&format!("codec-{codec}")),
            "{codec}: {succeeded:?}"
        );
    }
    let mut dlq = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dlq.poll_for(Duration::from_millis(300));
    assert!(dlq.records.is_empty(), "nothing dead-lettered");
    eprintln!(
        "e2e codecs: zstd, gzip, snappy, lz4 and uncompressed records on one partition SUCCEEDED \
         in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
