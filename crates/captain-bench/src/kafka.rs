//! The bench's Kafka side: the shared harness's producer, topic sizes and readers, plus run
//! states seeded the way the launch path writes them (callbacks then target real states).

use captain_bridge::domain::{Mode, RunState, RunStatus};
use captain_bridge::kafka::partition_for_key;
use rdkafka::producer::FutureProducer;
use std::collections::BTreeMap;

pub use captain_testkit::kafka::{
    create_topic, produce, produce_nowait, producer, reader, records_in,
};

/// The run state the launch path writes once a chunk's async run is created.
pub fn submitted_state(request_id: &str, run_uid: &str) -> RunState {
    let metadata = BTreeMap::from([("ticket".to_owned(), request_id.to_owned())]);
    let mut state = RunState::new(
        request_id,
        "linkedin-search-people",
        Mode::Async,
        metadata,
        1,
    );
    let chunk = state.chunk_mut(0);
    chunk.submitted = true;
    chunk.run_uid = Some(run_uid.to_owned());
    let run = chunk.runs.entry(run_uid.to_owned()).or_default();
    run.status = Some(RunStatus::Created);
    run.first_seen = Some(chrono::Utc::now());
    state
}

/// Writes run states for `ids` (request id, run uid) on the partitions the bridge reads them
/// from; `tombstones` deletes them instead (the bridge's view then frees them).
pub async fn seed_states(
    producer: &FutureProducer,
    runs_topic: &str,
    partitions: i32,
    ids: &[(String, String)],
    tombstones: bool,
) -> anyhow::Result<()> {
    let records = ids.iter().map(|(request_id, run_uid)| {
        let value = (!tombstones)
            .then(|| serde_json::to_vec(&submitted_state(request_id, run_uid)).unwrap_or_default());
        let partition = partition_for_key(request_id.as_bytes(), partitions);
        (request_id.clone(), value, Some(partition))
    });
    produce(producer, runs_topic, records, 10_000).await?;
    Ok(())
}
