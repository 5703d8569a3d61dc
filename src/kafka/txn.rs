//! The transactional producer of a consume-transform-produce loop (KIP-447): records and the
//! consumed offsets are committed together, fenced by the consumer group's generation, so a
//! `read_committed` reader sees each output once, across crashes and rebalances, and a zombie
//! (an instance that lost its partitions without knowing) writes nothing such a reader sees.
//!
//! librdkafka's transactional calls block on the network; callers run them off the async
//! workers (`spawn_blocking`, or `block_in_place` inside a rebalance callback).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use super::producer::{future_record, OutRecord, ProducerConfig, QUEUE_FULL_BACKOFF};
use crate::metrics::Metrics;

/// How a failed transactional call is recovered from.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction cannot commit (a record was refused, the group generation moved on, the
    /// coordinator timed it out): abort it and redo its input from the committed offsets.
    #[error("transaction must be aborted")]
    Abortable(#[source] KafkaError),
    /// The producer is unusable (fenced by a newer one, or a fatal broker answer): build a new
    /// producer and redo from the committed offsets.
    #[error("transactional producer failed for good")]
    Fatal(#[source] KafkaError),
    /// A call that may succeed if simply called again (a timeout, a coordinator moving).
    #[error("transactional call failed; it may be retried")]
    Retriable(#[source] KafkaError),
}

impl TxnError {
    fn classify(e: KafkaError) -> Self {
        match &e {
            KafkaError::Transaction(t) if t.is_fatal() => TxnError::Fatal(e),
            KafkaError::Transaction(t) if t.txn_requires_abort() => TxnError::Abortable(e),
            KafkaError::Transaction(t) if t.is_retriable() => TxnError::Retriable(e),
            // A record refused by the broker fails the whole transaction.
            _ => TxnError::Abortable(e),
        }
    }
}

/// One transactional producer and the transaction it has open.
pub struct TxnProducer {
    inner: FutureProducer,
    /// Which loop it serves (`owner`, `router`), the metrics' `loop` label.
    name: &'static str,
    metrics: Metrics,
    /// Records enqueued in the open transaction, by metric role.
    pending: BTreeMap<&'static str, u64>,
    open: bool,
    poisoned: bool,
    timeout: Duration,
}

impl TxnProducer {
    /// Creates the producer with `transactional.id` and `transaction.timeout.ms`, and
    /// initializes its transactions (fencing any earlier producer of the same id). Blocking.
    pub fn new(
        name: &'static str,
        config: &ProducerConfig,
        transactional_id: &str,
        transaction_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, TxnError> {
        // librdkafka refuses a delivery timeout longer than the transaction's.
        let delivery = config.delivery_timeout.min(transaction_timeout);
        let inner: FutureProducer = config
            .client_config(&[
                ("transactional.id", transactional_id.to_owned()),
                (
                    "transaction.timeout.ms",
                    transaction_timeout.as_millis().to_string(),
                ),
                ("message.timeout.ms", delivery.as_millis().to_string()),
            ])
            .create()
            .map_err(TxnError::Fatal)?;
        let timeout = delivery;
        inner
            .init_transactions(timeout)
            .map_err(TxnError::classify)?;
        Ok(Self {
            inner,
            name,
            metrics,
            pending: BTreeMap::new(),
            open: false,
            poisoned: false,
            timeout,
        })
    }

    /// Whether a transaction is open (something was enqueued since the last commit or abort).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Records enqueued in the open transaction.
    pub fn pending_records(&self) -> u64 {
        self.pending.values().sum()
    }

    fn begin_if_needed(&mut self) -> Result<(), TxnError> {
        if !self.open {
            self.inner.begin_transaction().map_err(TxnError::classify)?;
            self.open = true;
        }
        Ok(())
    }

    /// Enqueues `record` in the transaction (opening one if needed). A full local queue is
    /// waited out by blocking briefly: the owner producing faster than librdkafka sends is
    /// exactly when it should slow down. Delivery is settled by [`TxnProducer::commit`]: a
    /// refused record fails it.
    pub fn send(&mut self, record: &OutRecord) -> Result<(), TxnError> {
        self.begin_if_needed()?;
        let give_up = std::time::Instant::now() + self.timeout;
        loop {
            match self.inner.send_result(future_record(record)) {
                // The delivery future is not awaited: committing waits for every delivery.
                Ok(_delivery) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((e, _)) => {
                    self.metrics
                        .produce_errors
                        .with_label_values(&[record.role])
                        .inc();
                    return Err(TxnError::classify(e));
                }
            }
        }
        *self.pending.entry(record.role).or_default() += 1;
        Ok(())
    }

    /// Marks the open transaction as unable to commit (a record could not be enqueued): the
    /// next [`TxnProducer::commit`] fails as abortable instead of committing without it.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Opens a transaction with no record yet, so that offsets alone can be committed.
    pub fn begin(&mut self) -> Result<(), TxnError> {
        self.begin_if_needed()
    }

    /// Adds `offsets` (the next offset to consume, per partition) under the consumer group's
    /// current generation, then commits. Blocking. The two calls are never separated by a
    /// produce: a zombie paused between them holds nothing that a new owner could miss.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxnError> {
        if !self.open {
            return Ok(());
        }
        if self.poisoned {
            return Err(TxnError::Abortable(KafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidArgument,
            )));
        }
        let started = std::time::Instant::now();
        if offsets.count() > 0 {
            self.inner
                .send_offsets_to_transaction(offsets, group, self.timeout)
                .map_err(TxnError::classify)?;
        }
        self.await_deliveries(started + self.timeout);
        self.inner
            .commit_transaction(self.timeout)
            .map_err(TxnError::classify)?;
        self.open = false;
        for (role, n) in std::mem::take(&mut self.pending) {
            self.metrics
                .records_produced
                .with_label_values(&[role])
                .inc_by(n);
        }
        self.metrics
            .transactions
            .with_label_values(&[self.name, "committed"])
            .inc();
        self.metrics
            .transaction_commit_duration
            .with_label_values(&[self.name])
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Waits, in short steps, until every record enqueued is acknowledged (or `give_up`).
    ///
    /// rust-rdkafka's `commit_transaction` flushes first, and its flush polls in steps of
    /// 100 ms while anything is outstanding; with a `FutureProducer` its own thread serves the
    /// delivery reports, so that poll never returns early and each commit with records in
    /// flight took 100 ms more (measured: commits every ~200 ms instead of ~60 ms, results
    /// readable ~200 ms after their callback at 1,000 callbacks/s). Waiting here, the flush
    /// finds nothing outstanding. Errors are not judged here: the commit reports them.
    fn await_deliveries(&self, give_up: std::time::Instant) {
        while self.inner.in_flight_count() > 0 && std::time::Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Aborts the open transaction: nothing enqueued since it began becomes visible to
    /// `read_committed` readers. Blocking.
    pub fn abort(&mut self) -> Result<(), TxnError> {
        if !self.open {
            return Ok(());
        }
        for (role, n) in std::mem::take(&mut self.pending) {
            self.metrics
                .produce_errors
                .with_label_values(&[role])
                .inc_by(n);
        }
        self.metrics
            .transactions
            .with_label_values(&[self.name, "aborted"])
            .inc();
        let result = self
            .inner
            .abort_transaction(self.timeout)
            .map_err(TxnError::classify);
        self.open = false;
        self.poisoned = false;
        result
    }
}
