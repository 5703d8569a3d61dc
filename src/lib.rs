//! captain-bridge: consumes launch requests from Kafka, submits them as Captain Data v4 runs,
//! receives the runs' callbacks on an embedded HTTP endpoint, and publishes every status
//! transition and result record back to Kafka, committing nothing before Kafka has it.

pub mod callbacks;
pub mod captain;
pub mod config;
pub mod domain;
pub mod kafka;
pub mod metrics;
