//! The input side: one entry point that turns a launch or control record, JSON or Avro on the
//! same topic, into the JSON shape the bridge validates. An Avro record is decoded with its
//! writer schema (fetched by the id in its header, cached) and resolved to the bridge's reader
//! schema; every way it can fail is either the record's fault, with a precise class and reason
//! for the dead-letter topic, or the registry's, to be retried later.

use super::contract::{is_recursive, Contract, RecordKind};
use super::error::{avro_reason, DecodeError, LaunchDecodeError, RegistryError};
use super::registry::{SchemaById, SchemaRegistryClient};
use super::values::to_json;
use super::wire::{self, InputFormat};
use super::{ROLE_CONTROL, ROLE_LAUNCH_REQUESTS};
use crate::domain::request::{self, reject, RejectClass};
use crate::domain::{LaunchRequest, RejectedContext, Rejection};
use crate::metrics::Metrics;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Writer schemas kept; a topic sees a handful, so the bound only matters against a flood of
/// distinct ids.
const MAX_CACHED_SCHEMAS: usize = 1024;
/// How long an id the registry does not know is answered from memory (so a flood of records
/// with unknown ids does not become a flood of requests); after it, the registry is asked again
/// (a replica that lagged may know it by then).
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(30);
/// After a failed registry request, ids not yet cached get the same error for this long.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Decodes input records, JSON or Avro.
pub struct RecordDecoder {
    registry: Option<Arc<SchemaRegistryClient>>,
    contract: &'static Contract,
    cache: Mutex<SchemaCache>,
    /// One registry request at a time; concurrent records with the same new id wait for it.
    fetch: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

impl std::fmt::Debug for RecordDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct SchemaCache {
    schemas: HashMap<u32, Arc<Schema>>,
    /// Whether writer schema `id` can be read as `kind`: Ok, or why not.
    readable: HashMap<(u32, RecordKind), Result<(), String>>,
    unknown: HashMap<u32, Instant>,
    failure: Option<(Instant, RegistryError)>,
}

impl RecordDecoder {
    /// A decoder; without a registry, Avro records are rejected as `no_schema_registry`.
    pub fn new(
        registry: Option<Arc<SchemaRegistryClient>>,
        metrics: Metrics,
    ) -> Result<Self, super::contract::ContractError> {
        Ok(Self {
            registry,
            contract: Contract::get()?,
            cache: Mutex::new(SchemaCache::default()),
            fetch: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// A launch record as a validated request. `fallback_id` is the request_id of a record
    /// that carries none (see [`request::derived_request_id`]).
    pub async fn decode_launch(
        &self,
        payload: &[u8],
        fallback_id: &str,
    ) -> Result<LaunchRequest, LaunchDecodeError> {
        let value = self
            .decode(RecordKind::LaunchRequest, ROLE_LAUNCH_REQUESTS, payload)
            .await
            .map_err(|e| match e {
                // What a lenient read of the value can tell (a JSON value refused for a
                // duplicate key still names its request), so the REJECTED status is keyed by it.
                DecodeError::Rejected(rejection) => LaunchDecodeError::Rejected {
                    rejection,
                    context: RejectedContext::from_bytes(payload),
                },
                DecodeError::Registry(e) => LaunchDecodeError::Registry(e),
            })?;
        let context = RejectedContext::from_value(&value);
        request::from_value(value, fallback_id)
            .map_err(|rejection| LaunchDecodeError::Rejected { rejection, context })
    }

    /// A control record in the JSON shape of `ControlCommand` (field names of
    /// `schemas/ControlCommand.avsc`); validating the command is the control consumer's.
    pub async fn decode_control(&self, payload: &[u8]) -> Result<Json, DecodeError> {
        self.decode(RecordKind::ControlCommand, ROLE_CONTROL, payload)
            .await
    }

    /// Any record of the contract as its JSON shape: a JSON value as parsed, an Avro value
    /// decoded and resolved to `kind`'s schema. `role` labels the metrics (the topic's key in
    /// `kafka.topics`).
    pub async fn decode(
        &self,
        kind: RecordKind,
        role: &'static str,
        payload: &[u8],
    ) -> Result<Json, DecodeError> {
        let decoded = match wire::input_format(payload) {
            InputFormat::Json => parse_json(payload).map_err(DecodeError::Rejected),
            InputFormat::Avro => self.decode_avro(kind, payload).await,
            InputFormat::Unknown(byte) => Err(DecodeError::Rejected(reject(
                RejectClass::WrongMagicByte,
                format!(
                    "the value starts with byte {byte:#04x}: neither JSON nor the Confluent \
                     wire format (magic byte 0)"
                ),
            ))),
        };
        if let Err(e) = &decoded {
            self.metrics
                .avro_decode_errors
                .with_label_values(&[role, e.class()])
                .inc();
        }
        decoded
    }

    async fn decode_avro(&self, kind: RecordKind, payload: &[u8]) -> Result<Json, DecodeError> {
        let (id, datum) = wire::parse(payload)?;
        let Some(registry) = &self.registry else {
            return Err(rejected(
                RejectClass::NoSchemaRegistry,
                format!("the value is Avro (schema id {id}) and no schema registry is configured"),
            ));
        };
        let writer = self.writer_schema(registry, id).await?;
        self.readable(id, &writer, kind)?;
        let reader = &self.contract.schema(kind).schema;
        let mut rest = datum;
        let value = GenericDatumReader::builder(&writer)
            .build()
            .and_then(|r| r.read_value(&mut rest))
            .map_err(|e| {
                let class = if ends_early(&e) {
                    RejectClass::TruncatedPayload
                } else {
                    RejectClass::MalformedAvro
                };
                rejected(
                    class,
                    format!("not a datum of schema id {id}: {}", avro_reason(&e)),
                )
            })?;
        if !rest.is_empty() {
            return Err(rejected(
                RejectClass::MalformedAvro,
                format!(
                    "{} bytes are left after the datum of schema id {id}: the value is not one \
                     datum of that schema",
                    rest.len()
                ),
            ));
        }
        let value = value.resolve(reader).map_err(|e| {
            rejected(
                RejectClass::IncompatibleSchema,
                format!(
                    "schema id {id} does not resolve to the bridge's {}: {}",
                    self.contract.schema(kind).full_name,
                    avro_reason(&e)
                ),
            )
        })?;
        to_json(kind, value).map_err(DecodeError::Rejected)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SchemaCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer schema `id`, from the cache or the registry.
    async fn writer_schema(
        &self,
        registry: &SchemaRegistryClient,
        id: u32,
    ) -> Result<Arc<Schema>, DecodeError> {
        if let Some(known) = self.cached(id)? {
            return Ok(known);
        }
        let _one_at_a_time = self.fetch.lock().await;
        if let Some(known) = self.cached(id)? {
            return Ok(known);
        }
        if let Some((at, e)) = &self.cache().failure {
            if at.elapsed() < FAILURE_HOLD {
                return Err(DecodeError::Registry(e.clone()));
            }
        }
        let found = registry.schema_by_id(id).await;
        let mut cache = self.cache();
        match found {
            Err(e) => {
                cache.failure = Some((Instant::now(), e.clone()));
                Err(DecodeError::Registry(e))
            }
            Ok(SchemaById::Found(schema)) => {
                cache.failure = None;
                if cache.schemas.len() < MAX_CACHED_SCHEMAS {
                    cache.schemas.insert(id, schema.clone());
                }
                Ok(schema)
            }
            Ok(SchemaById::NotFound) => {
                cache.failure = None;
                cache.unknown.retain(|_, at| at.elapsed() < UNKNOWN_ID_TTL);
                if cache.unknown.len() < MAX_CACHED_SCHEMAS {
                    cache.unknown.insert(id, Instant::now());
                }
                Err(unknown_id(id))
            }
            Ok(SchemaById::Unusable(reason)) => {
                cache.failure = None;
                Err(rejected(
                    RejectClass::IncompatibleSchema,
                    format!("schema id {id} is not a usable Avro schema: {reason}"),
                ))
            }
        }
    }

    fn cached(&self, id: u32) -> Result<Option<Arc<Schema>>, DecodeError> {
        let cache = self.cache();
        if let Some(schema) = cache.schemas.get(&id) {
            return Ok(Some(schema.clone()));
        }
        match cache.unknown.get(&id) {
            Some(at) if at.elapsed() < UNKNOWN_ID_TTL => Err(unknown_id(id)),
            _ => Ok(None),
        }
    }

    /// Whether writer schema `id` can be read as `kind`, checked once per pair.
    fn readable(&self, id: u32, writer: &Schema, kind: RecordKind) -> Result<(), DecodeError> {
        let verdict = self.cache().readable.get(&(id, kind)).cloned();
        let verdict = match verdict {
            Some(v) => v,
            None => {
                let reader = self.contract.schema(kind);
                let v = if is_recursive(writer) {
                    Err(format!(
                        "schema id {id} has a recursive type, which the bridge does not read"
                    ))
                } else {
                    SchemaCompatibility::can_read(writer, &reader.schema)
                        .map(|_| ())
                        .map_err(|e| {
                            format!(
                                "schema id {id} cannot be read as the bridge's {}: {e}",
                                reader.full_name
                            )
                        })
                };
                let mut cache = self.cache();
                if cache.readable.len() < MAX_CACHED_SCHEMAS {
                    cache.readable.insert((id, kind), v.clone());
                }
                v
            }
        };
        verdict.map_err(|reason| rejected(RejectClass::IncompatibleSchema, reason))
    }
}

fn rejected(class: RejectClass, message: String) -> DecodeError {
    DecodeError::Rejected(reject(class, message))
}

fn unknown_id(id: u32) -> DecodeError {
    rejected(
        RejectClass::UnknownSchemaId,
        format!("the schema registry has no schema with id {id}"),
    )
}

/// JSON text as a value, with the messages of [`request::parse_json`].
fn parse_json(payload: &[u8]) -> Result<Json, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(RejectClass::NotJson, "the record has no value"));
    }
    request::strict_value(payload)
}

/// True when decoding failed because the bytes ran out.
fn ends_early(e: &apache_avro::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        source = s.source();
    }
    false
}
