//! The bridge's own vocabulary, independent of Kafka and HTTP: launch requests and their
//! validation, run statuses and their state machine, and the records published downstream.

pub mod records;
pub mod request;
pub mod status;

pub use records::{
    ChunkState, RunResult, RunState, RunStatusEvent, RunTrack, StatusError, StatusSource,
};
pub use request::{LaunchRequest, Mode, RejectClass, RejectedContext, Rejection};
pub use status::{transition, RunStatus, Transition};
