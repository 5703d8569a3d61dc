//! The shared run-state view: a compacted topic keyed by request_id, read in full by every
//! instance into memory and followed in the background, with read-your-writes across
//! instances (a read first catches up with its key's partition as it is at call time).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::murmur2::partition_for_key;
use super::producer::{OutRecord, ProduceError, RecordProducer};

/// The metric role of state records.
const ROLE: &str = "state";
/// `fetch.wait.max.ms` of the follower (a user's `kafka.properties` still wins).
const FOLLOWER_FETCH_WAIT_MS: &str = "10";

/// State view settings. The app maps its configuration onto this.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The compacted run-state topic.
    pub topic: String,
    /// Bound on the initial catch-up in [`StateView::start`].
    pub catch_up_timeout: Duration,
    /// Bound on one read's catch-up (watermark query plus waiting) in [`StateView::get`].
    pub read_timeout: Duration,
    /// Bound on one write's acknowledgement in [`StateView::put`] / [`StateView::remove`].
    pub write_timeout: Duration,
    /// Extra librdkafka properties for the view's consumer, applied last.
    pub properties: BTreeMap<String, String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            topic: "captain.runs".into(),
            catch_up_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }
}

/// Why the view cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The view could not catch up in time (broker unreachable or slow): retry later.
    #[error("run state unavailable: {0}")]
    Unavailable(String),
    /// Kafka refused a request.
    #[error("run state kafka request failed")]
    Kafka(#[from] KafkaError),
    /// A write was not acknowledged.
    #[error("run state write failed")]
    Write(#[from] ProduceError),
    /// A value could not be encoded.
    #[error("run state not encodable")]
    Encode(#[from] serde_json::Error),
}

impl StateError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            StateError::Unavailable(_) | StateError::Kafka(_) => true,
            StateError::Write(e) => e.is_retriable(),
            StateError::Encode(_) => false,
        }
    }
}

/// One key's latest known value and the offset it came from; `value: None` is a local
/// tombstone kept until the follower reads past it, so an older record cannot resurrect it.
struct Entry<T> {
    value: Option<T>,
    offset: i64,
}

struct Inner<T> {
    topic: String,
    partitions: i32,
    map: RwLock<HashMap<String, Entry<T>>>,
    /// Next offset to read, per partition, as consumed by the follower.
    positions: watch::Sender<Vec<i64>>,
    consumer: Arc<StreamConsumer>,
    config: StateConfig,
    /// One per partition: concurrent reads share one high-watermark query.
    barriers: Vec<WatermarkBarrier>,
}

/// One partition's high-watermark queries, coalesced. A read needs a query *issued after the
/// read began* (then every write acknowledged before the read is below the answer); at most
/// one query is in flight, and every read that arrived while it was in flight is answered by
/// the next one. Under load this turns one broker round trip (and one blocking thread) per
/// read into about one per round trip per partition.
#[derive(Default)]
struct WatermarkBarrier {
    /// Number of the latest query started (numbered from 1).
    started: AtomicU64,
    /// Held while a query is in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Number and answer of the latest finished query.
    done: Mutex<(u64, i64)>,
}

impl WatermarkBarrier {
    /// The number a query must have for a read beginning now: any later one.
    fn ticket(&self) -> u64 {
        self.started.load(Ordering::SeqCst) + 1
    }

    /// The high watermark from a query numbered `ticket` or later, if one has finished.
    fn answered(&self, ticket: u64) -> Option<i64> {
        let (number, high) = *self.done.lock().unwrap_or_else(|e| e.into_inner());
        (number >= ticket).then_some(high)
    }

    /// Returns a high watermark queried after `ticket` was taken, querying only if no such
    /// query has finished by the time this read gets its turn.
    async fn high_watermark<F, Fut>(&self, ticket: u64, query: F) -> Result<i64, StateError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<i64, StateError>>,
    {
        if let Some(high) = self.answered(ticket) {
            return Ok(high);
        }
        let _turn = self.fetching.lock().await;
        if let Some(high) = self.answered(ticket) {
            return Ok(high);
        }
        // Numbered before it is issued, so its number is above every earlier read's snapshot.
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let high = query().await?;
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if number > done.0 {
            *done = (number, high);
        }
        Ok(high)
    }
}

impl<T> Inner<T> {
    fn apply(&self, key: String, value: Option<T>, offset: i64, from_follower: bool) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        apply(&mut map, key, value, offset, from_follower);
    }
}

/// Applies the record at `offset` to `map` unless the key already holds something newer.
fn apply<T>(
    map: &mut HashMap<String, Entry<T>>,
    key: String,
    value: Option<T>,
    offset: i64,
    from_follower: bool,
) {
    if map
        .get(&key)
        .is_some_and(|existing| existing.offset > offset)
    {
        return;
    }
    if value.is_none() && from_follower {
        // The follower has read the tombstone itself: nothing older can follow.
        map.remove(&key);
    } else {
        map.insert(key, Entry { value, offset });
    }
}

/// The bridge's run state, keyed by request_id, shared by every instance through a compacted
/// topic (JSON values, null payload = tombstone).
///
/// Memory: the map is unbounded for now: one entry per live key, roughly
/// `(24 + size_of::<Option<T>>() + 8 + 1) * 8/7` bytes of table plus the key's bytes plus
/// the value's own heap. For a uuid key and a run state of a few hundred bytes of JSON-like
/// data this is about 0.3–0.5 KiB per request, so ~1M live requests cost a few hundred MiB.
/// Tombstoned keys cost nothing once read back. Partitions added to the topic after start are
/// not seen until restart.
pub struct StateView<T> {
    inner: Arc<Inner<T>>,
    /// The background follower, awaited by [`StateView::stopped`] so shutdown can make sure its
    /// consumer has left before the process (or an embedded broker) goes away.
    follower: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for StateView<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            follower: self.follower.clone(),
            _value: PhantomData,
        }
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, KafkaError> + Send + 'static,
) -> Result<R, StateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StateError::Unavailable(format!("blocking task failed: {e}")))?
        .map_err(StateError::from)
}

/// Low and high watermarks of every partition of `topic`, asked again until `timeout` while
/// the broker answers with an error: a topic created a moment ago (by this start-up, or a
/// broker just started) has partitions without a known leader for a while.
async fn initial_watermarks(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i64, i64)>, StateError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (c, t) = (consumer.clone(), topic.to_owned());
        let fetched = blocking(move || {
            let md = c.fetch_metadata(Some(&t), timeout)?;
            let count = md
                .topics()
                .iter()
                .find(|m| m.name() == t && m.error().is_none())
                .map_or(0, |m| m.partitions().len() as i32);
            (0..count)
                .map(|p| c.fetch_watermarks(&t, p, timeout))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        let not_ready = match &fetched {
            Ok(watermarks) => watermarks.is_empty().then(|| "no partitions".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        match not_ready {
            Some(reason) if tokio::time::Instant::now() < deadline => {
                tracing::info!(topic, reason, "run state topic not ready yet, asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return fetched,
        }
    }
}

impl<T> StateView<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Reads the whole topic from the beginning (every partition, assigned, no group
    /// commits) and returns once the view has reached the high watermarks seen at start;
    /// then keeps following the topic until `shutdown` is cancelled.
    pub async fn start(
        config: StateConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, StateError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &config.bootstrap)
            // Never used for commits: the view always re-reads from the beginning.
            .set(
                "group.id",
                format!("captain-bridge-state-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A read waits for the follower to reach the high watermark; a caught-up follower's
            // fetch can sit at the broker for up to this long before new records reach it
            // (librdkafka's 500 ms default put a 0.5 s tail on callback acks).
            .set("fetch.wait.max.ms", FOLLOWER_FETCH_WAIT_MS);
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        let consumer: Arc<StreamConsumer> = Arc::new(cc.create()?);
        let timeout = config.catch_up_timeout;
        let watermarks = initial_watermarks(&consumer, &config.topic, timeout).await?;
        if watermarks.is_empty() {
            return Err(StateError::Unavailable(format!(
                "topic {} has no partitions",
                config.topic
            )));
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..watermarks.len() as i32 {
            tpl.add_partition_offset(&config.topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (positions, _) = watch::channel(watermarks.iter().map(|(low, _)| *low).collect());
        let inner = Arc::new(Inner {
            topic: config.topic.clone(),
            partitions: watermarks.len() as i32,
            map: RwLock::new(HashMap::new()),
            positions,
            consumer,
            config,
            barriers: (0..watermarks.len())
                .map(|_| WatermarkBarrier::default())
                .collect(),
        });
        let follower = tokio::spawn(follow(inner.clone(), shutdown));
        let highs: Vec<i64> = watermarks.iter().map(|(_, high)| *high).collect();
        let mut rx = inner.positions.subscribe();
        let caught_up = rx.wait_for(|pos| pos.iter().zip(&highs).all(|(p, h)| p >= h));
        match tokio::time::timeout(timeout, caught_up).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(StateError::Unavailable("follower stopped".into())),
            Err(_) => {
                return Err(StateError::Unavailable(format!(
                    "initial catch-up not done within {timeout:?}"
                )))
            }
        }
        Ok(Self {
            inner,
            follower: Arc::new(tokio::sync::Mutex::new(Some(follower))),
            _value: PhantomData,
        })
    }

    /// Waits until the follower has ended (after its shutdown token was cancelled).
    pub async fn stopped(&self) {
        if let Some(handle) = self.follower.lock().await.take() {
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "run-state follower ended abnormally");
            }
        }
    }

    /// The partition holding `key` (Java's default partitioner over the topic's partitions).
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_for_key(key.as_bytes(), self.inner.partitions)
    }

    /// Keys currently known (live values only).
    pub fn len(&self) -> usize {
        let map = self.inner.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|e| e.value.is_some()).count()
    }

    /// Whether no live value is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`, after catching up with its partition's high watermark as of this
    /// call, so any write acknowledged before the call (by any instance) is seen. Costs at most
    /// one watermark round trip to the partition leader, shared with concurrent reads of the
    /// same partition (see [`WatermarkBarrier`]).
    pub async fn get(&self, key: &str) -> Result<Option<T>, StateError> {
        let partition = self.partition_of(key);
        let inner = self.inner.clone();
        let timeout = inner.config.read_timeout;
        let work = async {
            let barrier = inner
                .barriers
                .get(partition as usize)
                .ok_or_else(|| StateError::Unavailable(format!("no partition {partition}")))?;
            let ticket = barrier.ticket();
            let high = barrier
                .high_watermark(ticket, || {
                    let (c, topic) = (inner.consumer.clone(), inner.topic.clone());
                    async move {
                        blocking(move || c.fetch_watermarks(&topic, partition, timeout))
                            .await
                            .map(|(_, high)| high)
                    }
                })
                .await?;
            let mut rx = inner.positions.subscribe();
            rx.wait_for(|pos| pos.get(partition as usize).is_some_and(|p| *p >= high))
                .await
                .map_err(|_| StateError::Unavailable("follower stopped".into()))?;
            Ok::<_, StateError>(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(StateError::Unavailable(format!(
                    "partition {partition} not caught up within {timeout:?}"
                )))
            }
        }
        Ok(self.peek(key))
    }

    /// The value of `key` as the view holds it now, without catching up.
    pub fn peek(&self, key: &str) -> Option<T> {
        let map = self.inner.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).and_then(|e| e.value.clone())
    }

    /// Writes `value` for `key`, waits for Kafka's acknowledgement, then applies it locally at
    /// once (write-through); the follower later skips it or anything older.
    pub async fn put(
        &self,
        key: &str,
        value: &T,
        producer: &RecordProducer,
    ) -> Result<(), StateError> {
        let payload = serde_json::to_vec(value)?;
        let offset = self.write(key, Some(payload), producer).await?;
        self.inner
            .apply(key.to_owned(), Some(value.clone()), offset, false);
        Ok(())
    }

    /// Deletes `key` with a tombstone, acknowledged before it is applied locally.
    pub async fn remove(&self, key: &str, producer: &RecordProducer) -> Result<(), StateError> {
        let offset = self.write(key, None, producer).await?;
        self.inner.apply(key.to_owned(), None, offset, false);
        Ok(())
    }

    async fn write(
        &self,
        key: &str,
        payload: Option<Vec<u8>>,
        producer: &RecordProducer,
    ) -> Result<i64, StateError> {
        // Explicit partition: the same one readers compute, whatever the producer's partitioner.
        let record = OutRecord {
            topic: self.inner.topic.clone(),
            role: ROLE,
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers: Vec::new(),
            partition: Some(self.partition_of(key)),
        };
        let delivered = producer
            .send_all(vec![record], self.inner.config.write_timeout)
            .await?;
        delivered
            .first()
            .map(|d| d.offset)
            .ok_or_else(|| StateError::Unavailable("no delivery report".into()))
    }
}

/// The background follower: applies every record in order and publishes positions.
async fn follow<T>(inner: Arc<Inner<T>>, shutdown: CancellationToken)
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = inner.consumer.recv() => received,
        };
        let m = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, topic = %inner.topic, "run state consumer error");
                continue;
            }
        };
        let (partition, offset) = (m.partition(), m.offset());
        match m.key().map(|k| String::from_utf8_lossy(k).into_owned()) {
            None => tracing::warn!(partition, offset, "run state record without key ignored"),
            Some(key) => match m.payload() {
                None => inner.apply(key, None, offset, true),
                Some(bytes) => match serde_json::from_slice::<T>(bytes) {
                    Ok(value) => inner.apply(key, Some(value), offset, true),
                    Err(e) => tracing::warn!(
                        error = %e, partition, offset, "undecodable run state record ignored"
                    ),
                },
            },
        }
        inner.positions.send_modify(|pos| {
            if let Some(p) = pos.get_mut(partition as usize) {
                *p = (*p).max(offset + 1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(map: &HashMap<String, Entry<u32>>, key: &str) -> Option<u32> {
        map.get(key).and_then(|e| e.value)
    }

    #[test]
    fn an_older_record_never_overwrites_a_newer_one() {
        let mut map = HashMap::new();
        apply(&mut map, "k".into(), Some(3), 12, false);
        apply(&mut map, "k".into(), Some(1), 10, true);
        apply(&mut map, "k".into(), Some(2), 11, true);
        assert_eq!(value(&map, "k"), Some(3));
        apply(&mut map, "k".into(), Some(3), 12, true);
        apply(&mut map, "k".into(), Some(4), 13, true);
        assert_eq!(value(&map, "k"), Some(4));
    }

    #[test]
    fn a_local_tombstone_is_not_resurrected_by_an_older_value() {
        let mut map = HashMap::new();
        apply(&mut map, "k".into(), None, 11, false);
        apply(&mut map, "k".into(), Some(1), 10, true);
        assert_eq!(value(&map, "k"), None);
        // The follower reaching the tombstone frees the entry.
        apply(&mut map, "k".into(), None, 11, true);
        assert!(map.is_empty());
    }

    #[tokio::test]
    async fn a_read_is_answered_only_by_a_query_issued_after_it_began() {
        let barrier = WatermarkBarrier::default();
        let early = barrier.ticket();
        assert_eq!(
            barrier.high_watermark(early, || async { Ok(5) }).await.ok(),
            Some(5)
        );
        // The same ticket is answered without a new query ...
        let no_query = || async { Err(StateError::Unavailable("queried".into())) };
        assert_eq!(barrier.high_watermark(early, no_query).await.ok(), Some(5));
        // ... a read that begins after that query finished is not.
        let late = barrier.ticket();
        assert!(barrier.high_watermark(late, no_query).await.is_err());
        assert_eq!(
            barrier.high_watermark(late, || async { Ok(9) }).await.ok(),
            Some(9)
        );
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_query() {
        let barrier = Arc::new(WatermarkBarrier::default());
        let queries = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        // A query in flight, issued before the reads below began.
        let first = {
            let (b, q, g) = (barrier.clone(), queries.clone(), gate.clone());
            tokio::spawn(async move {
                let t = b.ticket();
                b.high_watermark(t, || async move {
                    q.fetch_add(1, Ordering::SeqCst);
                    g.notified().await;
                    Ok(1)
                })
                .await
            })
        };
        while queries.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let reads: Vec<_> = (0..10)
            .map(|_| {
                let (b, q) = (barrier.clone(), queries.clone());
                let t = b.ticket();
                tokio::spawn(async move {
                    b.high_watermark(t, || async move {
                        q.fetch_add(1, Ordering::SeqCst);
                        Ok(2)
                    })
                    .await
                })
            })
            .collect();
        gate.notify_one();
        assert_eq!(first.await.ok().and_then(Result::ok), Some(1));
        for r in reads {
            // Not the in-flight query's answer: it was issued before these reads began.
            assert_eq!(r.await.ok().and_then(Result::ok), Some(2));
        }
        assert_eq!(queries.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn entry_size_estimate_holds_for_a_small_value() {
        // Documents the per-entry table cost the StateView doc comment quotes.
        assert!(std::mem::size_of::<Entry<u64>>() <= 24);
        assert_eq!(std::mem::size_of::<String>(), 24);
    }
}
