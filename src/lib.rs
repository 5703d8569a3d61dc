//! captain-bridge: consumes launch requests from Kafka, submits them as Captain Data v4 runs,
//! receives the runs' callbacks on an embedded HTTP endpoint, and publishes every status
//! transition and result record back to Kafka, committing nothing before Kafka has it.
//!
//! The flow, module by module:
//! - [`kafka`]: the launch consumer (ordered offset storing), the producer, the run-state view;
//! - [`domain`]: launch requests and their validation, statuses and their state machine, records;
//! - [`launch`]: one launch record → dead letter + REJECTED, or submitted runs + first status;
//! - [`captain`]: the Captain Data API client (classification, retries, 429 waits);
//! - [`callbacks`]: the HTTP endpoint (tokens, limits, precise refusals) and ops endpoints;
//! - [`ingest`]: one callback → result records + status event, answered once Kafka has them;
//! - [`publish`]: domain events → Kafka records; [`app`]: wiring and ordered shutdown;
//! - [`config`], [`metrics`], [`telemetry`], [`shutdown`], [`locks`]: the supporting cast;
//! - `demo` (feature `demo`): the whole loop in one process, for `captain-bridge demo`.

pub mod app;
pub mod callbacks;
pub mod captain;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod domain;
pub mod ingest;
pub mod kafka;
pub mod launch;
pub mod locks;
pub mod metrics;
pub mod publish;
pub mod shutdown;
pub mod telemetry;
