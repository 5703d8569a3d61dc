//! Consumer lag from librdkafka's own statistics, so that a deployment needs no lag exporter:
//! a consumer's context hands each statistics report (every `kafka.statistics_interval`) to a
//! [`LagRecorder`], which sets `captain_bridge_consumer_lag_records{topic}`.
//!
//! The gauge is per topic, summed over the partitions this instance is fetching: the label set
//! stays small whatever the partition count, partitions moving between instances leave no
//! stale series behind, and `sum by (topic)` over instances is the group's lag. A partition's
//! lag is the end of the partition (its last stable offset under `read_committed`) minus the
//! offset the group committed. The bridge's consumers commit through transactions, which
//! librdkafka's own `consumer_lag` does not see (its committed offset stays where it was at
//! assignment), so they hand the recorder the offsets they committed ([`CommittedOffsets`]);
//! librdkafka's figure is used for a partition they have not committed yet. A lag unknown
//! (`-1`) until the group has an offset for the partition is left out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus::IntGaugeVec;
use rdkafka::statistics::Statistics;

/// librdkafka's `fetch_state` of a partition it is not fetching for this consumer (never
/// assigned, revoked, or being stopped): its offsets are stale, so its lag is not counted.
const NOT_FETCHING: [&str; 3] = ["none", "stopping", "stopped"];

/// Lag in records by topic over the partitions `stats` says this consumer is fetching.
/// Every topic in the report gets an entry (0 when it has no such partition), so a topic
/// whose partitions all moved to another instance reads 0 here rather than its last value.
pub fn topic_lag(stats: &Statistics, committed: &CommittedOffsets) -> BTreeMap<String, i64> {
    let ours = committed.snapshot();
    stats
        .topics
        .iter()
        .map(|(name, topic)| {
            let lag = topic
                .partitions
                .values()
                // Partition -1 is librdkafka's internal "unassigned" queue, not a partition.
                .filter(|p| p.partition >= 0)
                .filter(|p| !NOT_FETCHING.contains(&p.fetch_state.as_str()))
                .filter_map(|p| match ours.get(&(name.clone(), p.partition)) {
                    Some(offset) => {
                        let end = if p.ls_offset >= 0 {
                            p.ls_offset
                        } else {
                            p.hi_offset
                        };
                        (end >= 0).then(|| (end - offset).max(0))
                    }
                    None => (p.consumer_lag >= 0).then_some(p.consumer_lag),
                })
                .sum();
            (name.clone(), lag)
        })
        .collect()
}

/// The offsets a consumer committed through its transactions, by (topic, partition): the
/// lag's base where librdkafka cannot see the commits. Shared with the recorder.
#[derive(Debug, Default)]
pub struct CommittedOffsets(Mutex<HashMap<(String, i32), i64>>);

impl CommittedOffsets {
    /// Records that `offset` (the next to consume) was committed for `topic`/`partition`.
    pub fn set(&self, topic: &str, partition: i32, offset: i64) {
        self.lock().insert((topic.to_owned(), partition), offset);
    }

    /// Forgets partitions this consumer no longer owns.
    pub fn forget(&self, topic: &str, partition: i32) {
        self.lock().remove(&(topic.to_owned(), partition));
    }

    fn snapshot(&self) -> HashMap<(String, i32), i64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns statistics reports into consumer-lag gauge updates. Cheap to clone.
#[derive(Clone)]
pub struct LagRecorder {
    gauge: IntGaugeVec,
    committed: Arc<CommittedOffsets>,
}

impl LagRecorder {
    /// A recorder setting `gauge` (labelled by `topic`), e.g. `Metrics::consumer_lag`, from
    /// librdkafka's committed offsets alone.
    pub fn new(gauge: IntGaugeVec) -> Self {
        Self::with_commits(gauge, Arc::default())
    }

    /// A recorder counting from the offsets its consumer committed in transactions.
    pub fn with_commits(gauge: IntGaugeVec, committed: Arc<CommittedOffsets>) -> Self {
        Self { gauge, committed }
    }

    /// Applies one statistics report. Reports of producers carry no consumer lag and change
    /// nothing.
    pub fn record(&self, stats: &Statistics) {
        if stats.client_type != "consumer" {
            return;
        }
        for (topic, lag) in topic_lag(stats, &self.committed) {
            self.gauge.with_label_values(&[&topic]).set(lag);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    /// A real report of the bridge's launch consumer (librdkafka 2.12.1 via rdkafka 0.39)
    /// against a real broker: topic `captain.launch-requests`, 3 partitions assigned, with
    /// the lags written in the file; see `testdata/README.md` for how it was taken.
    const CONSUMER_SAMPLE: &str = include_str!("testdata/consumer-stats.json");
    /// A real report of the bridge's producer (same versions), which has no consumer lag.
    const PRODUCER_SAMPLE: &str = include_str!("testdata/producer-stats.json");

    fn parse(json: &str) -> Statistics {
        serde_json::from_str(json).expect("a librdkafka statistics report")
    }

    fn partition_lags(stats: &Statistics, topic: &str) -> Vec<(i32, String, i64)> {
        let mut out: Vec<_> = stats.topics[topic]
            .partitions
            .values()
            .map(|p| (p.partition, p.fetch_state.clone(), p.consumer_lag))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_lag_of_a_real_report_is_the_sum_over_the_fetched_partitions() {
        let stats = parse(CONSUMER_SAMPLE);
        let lags = partition_lags(&stats, "captain.launch-requests");
        // What the sample holds (asserted so the expectation below is not a copy of the code).
        assert_eq!(
            lags,
            vec![
                (-1, "none".into(), -1),
                (0, "active".into(), 7),
                (1, "active".into(), 0),
                (2, "active".into(), 5),
            ]
        );

        assert_eq!(
            topic_lag(&stats, &CommittedOffsets::default()),
            BTreeMap::from([("captain.launch-requests".to_owned(), 12)])
        );
    }

    #[test]
    fn offsets_committed_in_transactions_replace_the_ones_librdkafka_saw() {
        let stats = parse(CONSUMER_SAMPLE);
        let ours = CommittedOffsets::default();
        // Partition 0 ends at 10 and was committed up to 9 by a transaction; librdkafka still
        // believes 3. Partition 2 keeps librdkafka's view (5).
        ours.set("captain.launch-requests", 0, 9);
        assert_eq!(
            topic_lag(&stats, &ours),
            BTreeMap::from([("captain.launch-requests".to_owned(), 1 + 5)])
        );
        ours.forget("captain.launch-requests", 0);
        assert_eq!(topic_lag(&stats, &ours)["captain.launch-requests"], 12);
    }

    #[test]
    fn a_recorder_sets_the_gauge_per_topic_and_ignores_producer_reports() {
        let metrics = Metrics::new().unwrap();
        let recorder = LagRecorder::new(metrics.consumer_lag.clone());

        recorder.record(&parse(CONSUMER_SAMPLE));
        recorder.record(&parse(PRODUCER_SAMPLE));

        let gauge = metrics
            .consumer_lag
            .with_label_values(&["captain.launch-requests"]);
        assert_eq!(gauge.get(), 12);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"captain_bridge_consumer_lag_records{topic="captain.launch-requests"} 12"#
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("captain_bridge_consumer_lag_records{").count(),
            1,
            "a producer report adds no series: {text}"
        );
    }

    #[test]
    fn partitions_not_fetched_or_of_unknown_lag_are_left_out_and_an_emptied_topic_reads_zero() {
        let mut stats = parse(CONSUMER_SAMPLE);
        let topic = stats.topics.get_mut("captain.launch-requests").unwrap();
        for p in topic.partitions.values_mut() {
            match p.partition {
                // Revoked: librdkafka keeps the partition's last figures in the report.
                0 => p.fetch_state = "none".into(),
                // Assigned, but the group has no offset for it yet.
                2 => p.consumer_lag = -1,
                _ => {}
            }
        }
        assert_eq!(
            topic_lag(&stats, &CommittedOffsets::default())["captain.launch-requests"],
            0
        );

        let metrics = Metrics::new().unwrap();
        let recorder = LagRecorder::new(metrics.consumer_lag.clone());
        recorder.record(&parse(CONSUMER_SAMPLE));
        recorder.record(&stats);
        let gauge = metrics
            .consumer_lag
            .with_label_values(&["captain.launch-requests"]);
        assert_eq!(gauge.get(), 0, "the previous report's 12 must not linger");
    }
}
