//! The codec as the bridge runs it, built from the settings: the registry client (when
//! `schema_registry.url` is set), the output encoder with its writer schema ids asked for at
//! start-up, and the input decoder shared by the launch router (and the control topic).
//!
//! Start-up policy: a registry that *refuses* (credentials, a schema incompatible with what the
//! subject holds, a subject missing with `auto_register = false`) stops the start with its
//! answer, since nothing will change until an operator acts. A registry that does not answer
//! does not: the bridge starts, takes callbacks (they need no registry) and launch records, and
//! its owners hold their partitions until [`RecordEncoder::keep_warm`] has every id.

use super::encode::{EncoderSetupError, OutputTopics, RecordEncoder};
use super::error::{EncodeError, RegistryError};
use super::{RecordDecoder, SchemaRegistryClient};
use crate::config::Settings;
use crate::metrics::Metrics;
use std::sync::Arc;

/// The encoder and decoder of one bridge process.
#[derive(Debug, Clone)]
pub struct Codec {
    pub encoder: Arc<RecordEncoder>,
    pub decoder: Arc<RecordDecoder>,
}

/// The codec could not be set up; the message names the key or the registry's answer.
#[derive(Debug, thiserror::Error)]
pub enum CodecSetupError {
    #[error("schema_registry: {0}")]
    Client(#[source] RegistryError),
    #[error(transparent)]
    Encoder(#[from] EncoderSetupError),
    #[error(transparent)]
    Contract(#[from] super::contract::ContractError),
    /// The registry refused an output schema at start-up.
    #[error("schema registry refused the output schemas: {0}")]
    Refused(#[source] EncodeError),
}

impl Codec {
    /// Builds the codec and asks for the output schema ids (see the module doc for what an
    /// unreachable or refusing registry does).
    pub async fn start(settings: &Settings, metrics: &Metrics) -> Result<Self, CodecSetupError> {
        let registry = if settings.schema_registry.enabled() {
            Some(Arc::new(
                SchemaRegistryClient::new(
                    &settings.schema_registry,
                    &settings.secrets.registry,
                    metrics.clone(),
                )
                .map_err(CodecSetupError::Client)?,
            ))
        } else {
            None
        };
        let topics = &settings.kafka.topics;
        let encoder = Arc::new(RecordEncoder::new(
            &settings.kafka.formats,
            &OutputTopics {
                run_status: topics.run_status.clone(),
                run_results: topics.run_results.clone(),
            },
            &settings.schema_registry,
            registry.clone(),
            metrics.clone(),
        )?);
        let decoder = Arc::new(RecordDecoder::new(registry, metrics.clone())?);
        if encoder.any_avro() {
            match encoder.warm_up().await {
                Ok(()) => tracing::info!(encoder = ?encoder, "output schema ids known"),
                Err(e) if matches!(e, EncodeError::Registry(ref r) if r.is_retriable()) => {
                    metrics
                        .schema_registry_waiting
                        .with_label_values(&[super::encode::WAITING_OUTPUTS])
                        .set(1);
                    tracing::warn!(error = %e,
                        "schema registry unreachable at start-up; starting anyway: callbacks are taken, outputs wait in Kafka until it answers");
                }
                Err(e) => return Err(CodecSetupError::Refused(e)),
            }
        }
        Ok(Self { encoder, decoder })
    }
}
