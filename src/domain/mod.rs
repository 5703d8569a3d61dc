//! The bridge's own vocabulary, independent of Kafka and HTTP: launch requests and their
//! validation and admission, run statuses and their state machine, the records published
//! downstream, and the decisions that turn a request's state and one input into what to
//! publish (`decide` for async and schedule runs, `live` for live requests).

pub mod admission;
pub mod control;
pub mod decide;
pub mod live;
pub mod reconcile;
pub mod records;
pub mod request;
pub mod status;
pub mod strict_json;
pub mod workflow;

pub use admission::Admission;
pub use decide::{
    adopt_request, apply_callback, apply_submission, plan_launch, CallbackEffects, CallbackFacts,
    Effects, LaunchPlan, RequestInfo, Submission,
};
pub use live::{LiveIds, LivePageFacts, LivePlan, LiveStart, LiveState};
pub use records::{
    ChunkState, CommandOutcome, InputError, PendingFinal, RunResult, RunResultRef, RunState,
    RunStatusEvent, RunTrack, StatusError, StatusSource,
};
pub use request::{LaunchRequest, Mode, RejectClass, RejectedContext, Rejection};
pub use status::{transition, RunStatus, Transition};
pub use workflow::{apply_outcome, plan_webhook, v3_run_status, JobOutcome, WebhookPlan};
