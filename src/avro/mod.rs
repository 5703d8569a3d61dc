//! Avro and the schema registry: the output topics' values in the Confluent wire format when
//! configured (JSON stays the default), and Avro or JSON on the input topics through one entry
//! point. `schemas/*.avsc` is the contract and the only copy of the schemas.
//!
//! - [`contract`]: the `.avsc` files, compiled in and parsed once;
//! - [`values`]: domain records ⇄ Avro values, open JSON objects as JSON text;
//! - [`wire`]: the 5-byte header (magic byte 0, big-endian schema id);
//! - [`registry`]: the registry client (subjects, ids, compatibility), errors by whose fault;
//! - [`encode`]: [`RecordEncoder`], output records to bytes per topic format;
//! - [`decode`]: [`RecordDecoder`], input records (JSON or Avro) to the JSON shape;
//! - [`settings`]: `[schema_registry]`, `[kafka.formats]` and the registry's credentials;
//! - [`setup`]: [`Codec`], the encoder and decoder the app builds from the settings, and
//!   what an unreachable or refusing registry does at start-up;
//! - [`error`]: what failed and whether to dead-letter, retry, or stop.

pub mod contract;
pub mod decode;
pub mod encode;
pub mod error;
pub mod registry;
pub mod settings;
pub mod setup;
pub mod values;
pub mod wire;

pub use contract::{Contract, RecordKind};
pub use decode::RecordDecoder;
pub use encode::{EncoderSetupError, OutputTopics, RecordEncoder};
pub use error::{DecodeError, EncodeError, LaunchDecodeError, RegistryError};
pub use registry::{subject_name, SchemaById, SchemaRegistryClient};
pub use settings::{
    Format, OutputFormats, RegistrySecrets, SchemaRegistrySettings, SubjectNameStrategy,
};
pub use setup::{Codec, CodecSetupError};

/// Metric labels of the topics the codec reads and writes: their keys in `kafka.topics`.
pub const ROLE_RUN_STATUS: &str = "run_status";
pub const ROLE_RUN_RESULTS: &str = "run_results";
pub const ROLE_LAUNCH_REQUESTS: &str = "launch_requests";
pub const ROLE_CONTROL: &str = "control";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RunResult, RunStatusEvent};

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn the_codec_can_be_shared_between_tasks() {
        send_sync::<RecordEncoder>();
        send_sync::<RecordDecoder>();
        send_sync::<SchemaRegistryClient>();
    }

    /// Compiles only if the codec's futures can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn the_codecs_futures_are_send(
        e: &RecordEncoder,
        d: &RecordDecoder,
        s: &RunStatusEvent,
        r: &RunResult,
    ) {
        send(&e.encode_status(s));
        send(&e.encode_result(r));
        send(&e.warm_up());
        send(&d.decode_launch(b"", ""));
        send(&d.decode_control(b""));
    }
}
