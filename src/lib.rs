//! captain-bridge: consumes launch requests from Kafka, submits them as Captain Data v4 runs,
//! receives the runs' callbacks on an embedded HTTP endpoint, and publishes every status
//! transition and result record back to Kafka, committing nothing before Kafka has it.
//!
//! The flow, module by module:
//! - [`router`]: launch topic → validated requests on the internal requests topic (keyed by
//!   request_id), or dead letter + `REJECTED`, in transactions;
//! - [`callbacks`] + [`intake`]: the HTTP endpoint verifies a callback (token, limits, shape)
//!   and appends it to the internal callbacks topic; 2xx once Kafka has it;
//! - [`owner`]: each instance owns a share of the partitions of the requests, callbacks and
//!   run-state topics (co-partitioned): it restores their state, submits launches through the
//!   [`captain`] client, turns callbacks into results and statuses, and commits outputs,
//!   state and offsets in one transaction per interval;
//! - [`domain`]: requests and their validation, statuses and their state machine, records, and
//!   the decisions (state + input → what to publish);
//! - [`kafka`]: producers (plain and transactional), records, offsets, admin;
//! - [`publish`]: domain events → Kafka records; [`token`]: callback tokens;
//! - [`app`]: wiring and ordered shutdown; [`config`], [`metrics`], [`telemetry`],
//!   [`shutdown`]: the supporting cast.
//! - [`avro`]: Avro values in the Confluent wire format, the schema registry client (not
//!   wired into the paths yet);
//! - `demo` (feature `demo`): the whole loop in one process, for `captain-bridge demo`.

pub mod app;
pub mod avro;
pub mod callbacks;
pub mod captain;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod domain;
pub mod intake;
pub mod kafka;
pub mod metrics;
pub mod owner;
pub mod publish;
pub mod router;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod workflows;
