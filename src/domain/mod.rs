//! The bridge's own vocabulary, independent of Kafka and HTTP: launch requests and their
//! validation, run statuses and their state machine, and the records published downstream.

pub mod status;

pub use status::{transition, RunStatus, Transition};
