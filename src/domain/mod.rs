//! The bridge's own vocabulary, independent of Kafka and HTTP: launch requests and their
//! validation, run statuses and their state machine, the records published downstream, and
//! the decisions that turn a request's state and one input into what to publish.

pub mod control;
pub mod decide;
pub mod reconcile;
pub mod records;
pub mod request;
pub mod status;

pub use decide::{
    apply_callback, apply_submission, plan_launch, CallbackEffects, CallbackFacts, Effects,
    LaunchPlan, RequestInfo, Submission,
};
pub use records::{
    ChunkState, CommandOutcome, PendingFinal, RunResult, RunResultRef, RunState, RunStatusEvent,
    RunTrack, StatusError, StatusSource,
};
pub use request::{LaunchRequest, Mode, RejectClass, RejectedContext, Rejection};
pub use status::{transition, RunStatus, Transition};
