//! The output side: a `RunStatusEvent` or `RunResult` to the bytes of its topic's value, JSON
//! or Avro in the Confluent wire format as configured per topic. The writer schema's id is
//! asked of the registry once (registered, looked up, or the latest version) and kept; while
//! the registry is away, records whose id is known keep being encoded, and the others fail
//! with a retriable error without piling requests onto the registry.
//!
//! Two ways in: the `async` encoders ask the registry when they must; the `_now` encoders,
//! which the owner and the router call inside their transactions (synchronous code), never
//! do: they use the id [`RecordEncoder::warm_up`] or [`RecordEncoder::keep_warm`] fetched, and
//! fail with a retriable error while there is none yet.

use super::contract::{Contract, ContractSchema, RecordKind};
use super::error::{avro_reason, EncodeError, RegistryError};
use super::registry::{subject_name, SchemaById, SchemaRegistryClient};
use super::settings::{Format, OutputFormats, SchemaRegistrySettings};
use super::values::{result_ref_value, result_value, status_value, StatusSymbols, ValueError};
use super::wire;
use super::{ROLE_RUN_RESULTS, ROLE_RUN_STATUS};
use crate::domain::{RunResult, RunResultRef, RunStatusEvent};
use crate::metrics::Metrics;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// After a failed registry call, callers get the same error without a new request for this
/// long: during an outage every encode would otherwise wait a full request timeout in turn.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// [`RecordEncoder::keep_warm`]'s first and longest wait between two attempts: one request
/// every few seconds is nothing for a registry, and outputs resume soon after it is back.
const WARM_RETRY_MIN: Duration = Duration::from_millis(500);
const WARM_RETRY_MAX: Duration = Duration::from_secs(5);
/// The `part` label of `captain_bridge_schema_registry_waiting` while output ids are missing.
pub const WAITING_OUTPUTS: &str = "outputs";

/// The topic names the subjects are derived from (TopicNameStrategy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTopics {
    pub run_status: String,
    pub run_results: String,
}

/// Encodes the bridge's output records in each topic's configured format.
pub struct RecordEncoder {
    status: Option<AvroWriter>,
    results: Option<AvroWriter>,
    metrics: Metrics,
}

impl std::fmt::Debug for RecordEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = |w: &Option<AvroWriter>| w.as_ref().map_or("json", |_| "avro");
        f.debug_struct("RecordEncoder")
            .field("run_status", &format(&self.status))
            .field("run_results", &format(&self.results))
            .finish()
    }
}

/// The encoder could not be built: the contract or the configuration is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("avro encoder: {0}")]
pub struct EncoderSetupError(pub String);

impl RecordEncoder {
    /// An encoder for `formats`; `registry` is required when any topic is Avro.
    pub fn new(
        formats: &OutputFormats,
        topics: &OutputTopics,
        registry_settings: &SchemaRegistrySettings,
        registry: Option<Arc<SchemaRegistryClient>>,
        metrics: Metrics,
    ) -> Result<Self, EncoderSetupError> {
        let contract = Contract::get().map_err(|e| EncoderSetupError(e.to_string()))?;
        let writer = |format: Format, kind: RecordKind, role: &'static str, topic: &str| {
            if format == Format::Json {
                return Ok(None);
            }
            let registry = registry.clone().ok_or_else(|| {
                EncoderSetupError(format!(
                    "kafka.formats.{role} is avro and no registry is set"
                ))
            })?;
            AvroWriter::new(
                contract.schema(kind),
                role,
                topic,
                registry_settings,
                registry,
            )
            .map(Some)
        };
        Ok(Self {
            status: writer(
                formats.run_status,
                RecordKind::RunStatusEvent,
                ROLE_RUN_STATUS,
                &topics.run_status,
            )?,
            results: writer(
                formats.run_results,
                RecordKind::RunResult,
                ROLE_RUN_RESULTS,
                &topics.run_results,
            )?,
            metrics,
        })
    }

    /// Asks the registry for every Avro topic's schema id now, so that a refused registration
    /// or bad credentials show at start-up rather than on the first callback.
    pub async fn warm_up(&self) -> Result<(), EncodeError> {
        for writer in [&self.status, &self.results].into_iter().flatten() {
            writer
                .current_id()
                .await
                .map_err(|e| self.count(writer.role, e.into()))?;
        }
        Ok(())
    }

    /// The value of a `run_status` record.
    pub async fn encode_status(&self, event: &RunStatusEvent) -> Result<Vec<u8>, EncodeError> {
        match &self.status {
            None => json(ROLE_RUN_STATUS, event),
            Some(writer) => {
                let value = writer
                    .symbols
                    .as_ref()
                    .ok_or_else(|| ValueError("RunStatusEvent symbols are missing".into()))
                    .and_then(|symbols| status_value(event, symbols));
                writer.encode(value).await
            }
        }
        .map_err(|e| self.count(ROLE_RUN_STATUS, e))
    }

    /// The value of a `run_results` record.
    pub async fn encode_result(&self, result: &RunResult) -> Result<Vec<u8>, EncodeError> {
        match &self.results {
            None => json(ROLE_RUN_RESULTS, result),
            Some(writer) => writer.encode(result_value(result)).await,
        }
        .map_err(|e| self.count(ROLE_RUN_RESULTS, e))
    }

    /// The value of a `run_status` record, with the writer schema id already known (never a
    /// registry request): a retriable error while it is not.
    pub fn status_now(&self, event: &RunStatusEvent) -> Result<Vec<u8>, EncodeError> {
        match &self.status {
            None => json(ROLE_RUN_STATUS, event),
            Some(writer) => writer.encode_now(|| {
                writer
                    .symbols
                    .as_ref()
                    .ok_or_else(|| ValueError("RunStatusEvent symbols are missing".into()))
                    .and_then(|symbols| status_value(event, symbols))
            }),
        }
        .map_err(|e| self.count(ROLE_RUN_STATUS, e))
    }

    /// The value of a `run_results` record built from a callback's raw JSON, with the writer
    /// schema id already known (never a registry request).
    pub fn result_ref_now(&self, result: &RunResultRef<'_>) -> Result<Vec<u8>, EncodeError> {
        match &self.results {
            None => json(ROLE_RUN_RESULTS, result),
            Some(writer) => writer.encode_now(|| result_ref_value(result)),
        }
        .map_err(|e| self.count(ROLE_RUN_RESULTS, e))
    }

    /// True when every Avro topic's writer schema id is known: the `_now` encoders then never
    /// fail for want of the registry (ids are kept for the life of the process).
    pub fn ready(&self) -> bool {
        [&self.status, &self.results]
            .into_iter()
            .flatten()
            .all(AvroWriter::has_id)
    }

    /// As [`RecordEncoder::ready`], for the `run_status` topic alone.
    pub fn status_ready(&self) -> bool {
        self.status.as_ref().is_none_or(AvroWriter::has_id)
    }

    /// Whether any output topic is Avro.
    pub fn any_avro(&self) -> bool {
        self.status.is_some() || self.results.is_some()
    }

    /// Fetches the writer schema ids until every Avro topic has one, retrying with a backoff
    /// (0.5 s doubling to 5 s) while the registry does not answer, and, with
    /// `use_latest_version`, asks for the latest version again every `latest_cache_ttl`.
    /// `captain_bridge_schema_registry_waiting{part="outputs"}` is 1 while an id is missing.
    /// Returns when `stop` is cancelled, or once every id is known and none needs refreshing.
    pub async fn keep_warm(&self, stop: CancellationToken) {
        let waiting = self
            .metrics
            .schema_registry_waiting
            .with_label_values(&[WAITING_OUTPUTS]);
        let mut backoff = WARM_RETRY_MIN;
        let mut failures = 0u32;
        loop {
            let wait = match self.warm_up().await {
                Ok(()) => {
                    waiting.set(0);
                    if failures > 0 {
                        tracing::info!(attempts = failures + 1,
                            "schema registry answered: every output schema id is known; outputs flow");
                    }
                    failures = 0;
                    backoff = WARM_RETRY_MIN;
                    match self.refresh_interval() {
                        Some(every) => every,
                        None => return,
                    }
                }
                Err(e) => {
                    waiting.set(i64::from(!self.ready()));
                    failures += 1;
                    if !loud(failures) {
                        tracing::debug!(error = %e, retry_in = ?backoff, attempts = failures,
                            "output schema ids still not known");
                    } else if e.is_retriable() {
                        tracing::warn!(error = %e, retry_in = ?backoff, attempts = failures,
                            "output schema ids not known yet; outputs wait in Kafka until the schema registry answers");
                    } else {
                        tracing::error!(error = %e, retry_in = ?backoff, attempts = failures,
                            "the schema registry refuses the output schemas; outputs wait until an operator acts");
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(WARM_RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How often the writer ids must be asked for again (`use_latest_version` only).
    fn refresh_interval(&self) -> Option<Duration> {
        [&self.status, &self.results]
            .into_iter()
            .flatten()
            .filter_map(|w| match w.registration {
                Registration::Latest { ttl } => Some(ttl),
                _ => None,
            })
            .min()
    }

    fn count(&self, role: &'static str, e: EncodeError) -> EncodeError {
        self.metrics
            .avro_encode_errors
            .with_label_values(&[role, e.class()])
            .inc();
        e
    }
}

/// Whether attempt `n` of a wait is logged above debug: the first three, then one in ten.
pub(crate) fn loud(n: u32) -> bool {
    n <= 3 || n.is_multiple_of(10)
}

fn json<T: serde::Serialize>(role: &'static str, value: &T) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(value).map_err(|e| EncodeError::Value {
        record: role,
        schema_id: 0,
        reason: format!("not serializable as JSON: {e}"),
    })
}

/// How the writer schema's id is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// Register the contract's schema (idempotent: an existing one answers its id).
    Register,
    /// Look the contract's schema up; it must already be registered.
    Lookup,
    /// Write with the latest version registered under the subject, asked again after `ttl`.
    Latest { ttl: Duration },
}

/// The schema a topic's records are written with, and its id.
#[derive(Debug)]
struct WriterId {
    id: u32,
    /// Set when the latest registered version differs from the contract's schema: values are
    /// resolved to it before being written.
    other_schema: Option<Arc<Schema>>,
    fetched: Instant,
}

#[derive(Default)]
struct WriterState {
    current: Option<Arc<WriterId>>,
    failure: Option<(Instant, RegistryError)>,
}

/// The Avro side of one output topic.
struct AvroWriter {
    role: &'static str,
    kind: RecordKind,
    contract: &'static ContractSchema,
    writer: GenericDatumWriter<'static>,
    symbols: Option<StatusSymbols>,
    subject: String,
    registration: Registration,
    registry: Arc<SchemaRegistryClient>,
    state: Mutex<WriterState>,
    /// One registry request at a time per topic; the others wait for its answer.
    refresh: tokio::sync::Mutex<()>,
}

impl AvroWriter {
    fn new(
        contract: &'static ContractSchema,
        role: &'static str,
        topic: &str,
        settings: &SchemaRegistrySettings,
        registry: Arc<SchemaRegistryClient>,
    ) -> Result<Self, EncoderSetupError> {
        let writer = GenericDatumWriter::builder(&contract.schema)
            .build()
            .map_err(|e| EncoderSetupError(format!("{}: {e}", contract.full_name)))?;
        let symbols = match contract.kind {
            RecordKind::RunStatusEvent => {
                Some(StatusSymbols::of(contract).map_err(|e| EncoderSetupError(e.0))?)
            }
            _ => None,
        };
        let registration = if settings.use_latest_version {
            Registration::Latest {
                ttl: settings.latest_cache_ttl,
            }
        } else if settings.auto_register {
            Registration::Register
        } else {
            Registration::Lookup
        };
        Ok(Self {
            role,
            kind: contract.kind,
            contract,
            writer,
            symbols,
            subject: subject_name(settings.subject_name_strategy, topic, &contract.full_name),
            registration,
            registry,
            state: Mutex::new(WriterState::default()),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    async fn encode(&self, value: Result<Value, ValueError>) -> Result<Vec<u8>, EncodeError> {
        let id = self.current_id().await?;
        self.write(&id, value)
    }

    /// Encodes with the id already known; the value is built only when there is one.
    fn encode_now(
        &self,
        value: impl FnOnce() -> Result<Value, ValueError>,
    ) -> Result<Vec<u8>, EncodeError> {
        let id = self.known_id()?;
        self.write(&id, value())
    }

    fn has_id(&self) -> bool {
        self.state().current.is_some()
    }

    /// The id in hand (a stale "latest" included: `keep_warm` refreshes it), else why there
    /// is none: the last registry failure, or that none was asked for yet.
    fn known_id(&self) -> Result<Arc<WriterId>, RegistryError> {
        let state = self.state();
        if let Some(id) = &state.current {
            return Ok(id.clone());
        }
        Err(match &state.failure {
            Some((_, e)) => e.clone(),
            None => RegistryError::Unavailable {
                operation: "schema_id",
                reason: format!(
                    "the writer schema id of subject {} is not known yet",
                    self.subject
                ),
            },
        })
    }

    fn write(
        &self,
        id: &WriterId,
        value: Result<Value, ValueError>,
    ) -> Result<Vec<u8>, EncodeError> {
        let value_error = |reason: String| EncodeError::Value {
            record: self.role,
            schema_id: id.id,
            reason,
        };
        let value = value.map_err(|e| value_error(e.0))?;
        let mut out = Vec::with_capacity(512);
        wire::write_header(&mut out, id.id);
        let written = match &id.other_schema {
            None => self.writer.write_value_ref(&mut out, &value),
            Some(schema) => value.resolve(schema).and_then(|resolved| {
                GenericDatumWriter::builder(schema)
                    .build()?
                    .write_value_ref(&mut out, &resolved)
            }),
        };
        written.map_err(|e| value_error(avro_reason(&e)))?;
        Ok(out)
    }

    fn fresh(&self, id: &WriterId) -> bool {
        match self.registration {
            // Ids never change: one answer is good for the life of the process.
            Registration::Register | Registration::Lookup => true,
            Registration::Latest { ttl } => id.fetched.elapsed() < ttl,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn current_id(&self) -> Result<Arc<WriterId>, RegistryError> {
        if let Some(id) = self.state().current.clone().filter(|id| self.fresh(id)) {
            return Ok(id);
        }
        let _one_at_a_time = self.refresh.lock().await;
        {
            let state = self.state();
            if let Some(id) = state.current.clone().filter(|id| self.fresh(id)) {
                return Ok(id);
            }
            if let Some((at, e)) = &state.failure {
                if at.elapsed() < FAILURE_HOLD {
                    return state
                        .current
                        .clone()
                        .filter(|_| e.is_retriable())
                        .ok_or(e.clone());
                }
            }
        }
        match self.fetch().await {
            Ok(id) => {
                let id = Arc::new(id);
                let mut state = self.state();
                state.current = Some(id.clone());
                state.failure = None;
                Ok(id)
            }
            Err(e) => {
                let mut state = self.state();
                state.failure = Some((Instant::now(), e.clone()));
                match &state.current {
                    // A stale "latest" keeps serving while the registry is away: it was the
                    // subject's schema moments ago, and failing would only hold records back.
                    Some(stale) if e.is_retriable() => {
                        tracing::warn!(subject = %self.subject, error = %e,
                            "schema registry unavailable; writing with the last known latest version");
                        Ok(stale.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<WriterId, RegistryError> {
        let text = &self.contract.registration_text;
        let (id, other_schema) = match self.registration {
            Registration::Register => (self.registry.register(&self.subject, text).await?, None),
            Registration::Lookup => (self.registry.lookup(&self.subject, text).await?, None),
            Registration::Latest { .. } => {
                let id = self.registry.latest_id(&self.subject).await?;
                let schema = match self.registry.schema_by_id(id).await? {
                    SchemaById::Found(schema) => schema,
                    SchemaById::NotFound => {
                        return Err(RegistryError::Invalid {
                            operation: "latest",
                            reason: format!("{}: latest id {id} is not found", self.subject),
                        })
                    }
                    SchemaById::Unusable(reason) => {
                        return Err(RegistryError::Invalid {
                            operation: "latest",
                            reason: format!("{}: latest id {id}: {reason}", self.subject),
                        })
                    }
                };
                // The same schema up to docs and defaults writes the same bytes: keep the
                // contract's prepared writer.
                let same = schema.canonical_form() == self.contract.schema.canonical_form();
                (id, (!same).then_some(schema))
            }
        };
        tracing::info!(subject = %self.subject, record = ?self.kind, schema_id = id,
            "avro writer schema id");
        Ok(WriterId {
            id,
            other_schema,
            fetched: Instant::now(),
        })
    }
}
