//! What a downstream consumer sees of a measured window: a `read_committed` reader of the
//! results topic, started at its end, counts the result records that became readable during the
//! window (committed throughput: records still in an open transaction are not readable yet) and,
//! for each callback, how long after it was sent its first result became readable (end-to-end
//! latency: the callback's append, the owner's processing and the transaction's commit).
//!
//! The send time travels in the callback's `custom_data.sent_at_us` (wall clock, µs), which the
//! bridge copies verbatim into every result record; only JSON result records are read.

use crate::stats::Latencies;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, as the load generator stamps callbacks.
pub fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the reader saw within the window.
#[derive(Debug, Default)]
pub struct Seen {
    /// Result records readable (committed) within the window.
    pub records: u64,
    /// Per callback (its result of index 0): send → readable.
    pub visible: Latencies,
}

/// A reader running on its own thread until [`Visibility::finish`].
pub struct Visibility {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<Seen>>,
}

impl Visibility {
    /// Starts reading `topic` from its current end; counts what arrives between `start` and
    /// `end`. Returns once the reader is assigned, so nothing of the window is missed.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        start: Instant,
        end: Instant,
    ) -> anyhow::Result<Self> {
        let mut config = captain_testkit::kafka::reader_config(bootstrap);
        // Small fetch waits: a record is counted when it becomes readable, not 500 ms later.
        config
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "1");
        let consumer: BaseConsumer = config.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::End)?;
        }
        consumer.assign(&tpl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || read(&consumer, &flag, start, end));
        Ok(Self { stop, handle })
    }

    /// Stops the reader (call after the window) and returns what it saw.
    pub fn finish(self) -> anyhow::Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the visibility reader panicked"))?
    }
}

fn read(
    consumer: &BaseConsumer,
    stop: &AtomicBool,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message?;
        let now = Instant::now();
        if now < start || now > end {
            continue;
        }
        seen.records += 1;
        if let Some(micros) = message.payload().and_then(first_result_latency) {
            seen.visible.record(micros);
        }
    }
    Ok(seen)
}

/// For the result of index 0 of a stamped callback: µs from its send to now.
fn first_result_latency(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Stamped {
        index: u32,
        custom_data: Option<Stamp>,
    }
    #[derive(serde::Deserialize)]
    struct Stamp {
        sent_at_us: u64,
    }
    let record: Stamped = serde_json::from_slice(payload).ok()?;
    let sent = record.custom_data?.sent_at_us;
    (record.index == 0).then(|| wall_micros().saturating_sub(sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_result_of_a_stamped_callback_gives_a_latency() {
        let sent = wall_micros() - 2_000;
        let first = format!(r#"{{"index":0,"custom_data":{{"row":"1","sent_at_us":{sent}}}}}"#);
        let later = format!(r#"{{"index":3,"custom_data":{{"row":"1","sent_at_us":{sent}}}}}"#);
        let latency = first_result_latency(first.as_bytes()).unwrap_or_default();
        assert!((2_000..60_000_000).contains(&latency), "{latency}");
        assert_eq!(first_result_latency(later.as_bytes()), None);
        assert_eq!(
            first_result_latency(br#"{"index":0,"custom_data":null}"#),
            None
        );
        assert_eq!(first_result_latency(b"\x00avro"), None);
    }
}
